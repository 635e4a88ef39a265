# A minimal Rails 6.1 application with Doorkeeper 5.5, from Debian's packages only (no Bundler,
# no Gemfile: the gems come from rubygems-integration). Environment:
#   DK_DB           the SQLite file (required)
#   DK_LOG          Rails' log file (default: standard error)
#   DK_REQUEST_LOG  JSON lines, one per request and one per controller action (lib/recorder.rb)
#   DK_MODE         a label only (A or B): the PKCE mode is what the database's schema says
require "rails"
require "active_record/railtie"
require "action_controller/railtie"
require "action_view/railtie"
require "doorkeeper"
require "securerandom"
require_relative "../lib/recorder"

module DkApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.eager_load = true
    config.consider_all_requests_local = false
    config.hosts.clear
    config.secret_key_base = ENV.fetch("DK_SECRET_KEY_BASE") { SecureRandom.hex(64) }
    config.session_store :cookie_store, key: "_dk_#{ENV.fetch("DK_MODE", "x").downcase}_session"
    config.log_level = :info
    config.logger = ActiveSupport::Logger.new(ENV["DK_LOG"] || $stderr)
    config.active_record.migration_error = false
    config.middleware.insert_before 0, Recorder::Rack
  end
end
