Rails.application.routes.draw do
  use_doorkeeper
  get "/login", to: "sessions#new"
  post "/login", to: "sessions#create"
end
