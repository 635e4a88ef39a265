# Doorkeeper as a legacy deployment configures it. PKCE is whatever the schema says: without the
# code_challenge columns (mode A) Doorkeeper ignores code_challenge altogether; with them (mode B)
# it stores a challenge it receives and verifies it, but requires none (5.5 has no force_pkce).
Doorkeeper.configure do
  orm :active_record

  # Devise-style: remember where the user was going, send them to the sign-in page.
  resource_owner_authenticator do
    User.find_by(id: session[:user_id]) || begin
      session[:return_to] = request.fullpath
      redirect_to "/login"
      nil
    end
  end

  grant_flows %w[authorization_code]
  default_scopes :read
  use_refresh_token
  force_ssl_in_redirect_uri false
  access_token_expires_in 2.hours
  authorization_code_expires_in 10.minutes
end
