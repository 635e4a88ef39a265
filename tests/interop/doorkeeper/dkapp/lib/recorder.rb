# Test instrumentation, outside Doorkeeper's code: what reached the app, and what Doorkeeper's
# controllers read. One JSON object a line in $DK_REQUEST_LOG (nothing if unset):
#   {"kind":"http", "method", "path", "query", "status"}           every request (outermost Rack)
#   {"kind":"action", "controller", "action", "method", "original_method", "path", "status",
#    "code", "grant_type", "client_id", "state", "challenge", "has_verifier", "keys"}
#                                    every controller action, with the parameters as Rails parsed
#                                    them (unfiltered: this log is the test's ground truth)
require "json"

module Recorder
  LOCK = Mutex.new
  PATH = ENV["DK_REQUEST_LOG"]

  def self.write(record)
    return unless PATH

    line = JSON.generate(record) + "\n"
    LOCK.synchronize { File.open(PATH, "a") { |f| f.write(line) } }
  end

  class Rack
    def initialize(app)
      @app = app
    end

    def call(env)
      method, path, query = env["REQUEST_METHOD"], env["PATH_INFO"], env["QUERY_STRING"]
      status, headers, body = @app.call(env)
      Recorder.write(kind: "http", method: method, path: path, query: query, status: status)
      [status, headers, body]
    end
  end

  def self.scalar(value)
    value.is_a?(String) ? value : value&.to_s
  end

  ActiveSupport::Notifications.subscribe("process_action.action_controller") do |*args|
    payload = args.last
    env = payload[:headers]&.env || {}
    params = env["action_dispatch.request.parameters"] || {}
    Recorder.write(
      kind: "action",
      controller: payload[:controller], action: payload[:action],
      method: payload[:method], original_method: env["rack.methodoverride.original_method"],
      path: payload[:path], status: payload[:status],
      code: scalar(params["code"]), grant_type: scalar(params["grant_type"]),
      client_id: scalar(params["client_id"]), state: scalar(params["state"]),
      challenge: scalar(params["code_challenge"]), has_verifier: params["code_verifier"].present?,
      keys: params.keys - %w[controller action],
    )
  end
end
