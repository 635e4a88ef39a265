# A trivial sign-in page: a form with Rails' authenticity token, a session cookie, then back to
# where Doorkeeper sent the user from (session[:return_to]).
class SessionsController < ApplicationController
  def new; end

  def create
    user = User.find_by(username: params[:username].to_s)
    if user&.password_matches?(params[:password].to_s)
      reset_session_keeping_return_to
      session[:user_id] = user.id
      redirect_to(session.delete(:return_to) || "/")
    else
      flash.now[:alert] = "Invalid username or password"
      render :new, status: :unauthorized
    end
  end

  private

  def reset_session_keeping_return_to
    back = session[:return_to]
    reset_session
    session[:return_to] = back
  end
end
