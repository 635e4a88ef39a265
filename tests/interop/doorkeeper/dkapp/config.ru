# Rails root marker; `puma config.ru` also serves the app by hand (bin/serve.rb is what run.sh uses).
require_relative "config/environment"
run Rails.application
