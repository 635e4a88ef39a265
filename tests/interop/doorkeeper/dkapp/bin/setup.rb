# Creates the SQLite database: migrations (mode A stops before EnablePkce), user alice, a public
# and a confidential client.
#   DK_DB=/tmp/x.sqlite3 ruby bin/setup.rb --mode A|B --redirect-uri URI
require "optparse"
opts = { mode: "B", redirect_uri: "http://127.0.0.1:9/cb" }
OptionParser.new do |o|
  o.on("--mode MODE", %w[A B]) { |v| opts[:mode] = v }
  o.on("--redirect-uri URI") { |v| opts[:redirect_uri] = v }
end.parse!
ENV["DK_MODE"] = opts[:mode]
require_relative "../config/environment"

ActiveRecord::Migration.verbose = false
paths = [File.expand_path("../db/migrate", __dir__)]
target = opts[:mode] == "A" ? 20240101000002 : nil # A: the PKCE columns never migrated
ActiveRecord::MigrationContext.new(paths, ActiveRecord::SchemaMigration).migrate(target)

User.create!(username: "alice", password: "alice-password")
Doorkeeper::Application.create!(name: "Public app", uid: "dk-public", secret: "unused-public-secret",
                                redirect_uri: opts[:redirect_uri], scopes: "read", confidential: false)
Doorkeeper::Application.create!(name: "Confidential app", uid: "dk-conf", secret: "dk-conf-secret",
                                redirect_uri: opts[:redirect_uri], scopes: "read", confidential: true)
columns = Doorkeeper::AccessGrant.column_names
$stderr.puts "mode #{opts[:mode]}: oauth_access_grants has code_challenge: #{columns.include?("code_challenge")}; " \
     "pkce_supported?=#{Doorkeeper::AccessGrant.pkce_supported?}"
