class User < ApplicationRecord
  # A test fixture, not a password store: the password is compared as stored.
  def password_matches?(candidate)
    ActiveSupport::SecurityUtils.secure_compare(password, candidate)
  end
end
