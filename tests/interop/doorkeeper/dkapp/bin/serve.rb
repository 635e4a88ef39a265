# Serves the app with puma (Puma::Server, the server the puma CLI runs) on 127.0.0.1 and a free
# port; prints "listening on HOST:PORT" once the socket is bound. Stops on TERM/INT.
#   DK_DB=... ruby bin/serve.rb [--port N]
require "optparse"
port = 0
OptionParser.new { |o| o.on("--port N", Integer) { |v| port = v } }.parse!
require_relative "../config/environment"
require "puma"
require "puma/server"

events = Puma::Events.new($stderr, $stderr)
server = Puma::Server.new(Rails.application, events, min_threads: 2, max_threads: 8)
server.add_tcp_listener("127.0.0.1", port)
bound = server.connected_ports.first
%w[TERM INT].each { |sig| Signal.trap(sig) { Thread.new { server.stop(true) } } }
$stdout.puts "puma #{Puma::Const::PUMA_VERSION}, rails #{Rails.version}, doorkeeper #{Doorkeeper::VERSION::STRING}, " \
             "rack #{Rack.release}; pkce_supported?=#{Doorkeeper::AccessGrant.pkce_supported?}"
$stdout.puts "listening on 127.0.0.1:#{bound}"
$stdout.flush
server.run.join
