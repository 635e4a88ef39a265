# Doorkeeper 5.5's generator template (enable_pkce_migration.rb.erb). Mode A never runs it:
# Doorkeeper then ignores code_challenge (AccessGrant.pkce_supported? is false).
class EnablePkce < ActiveRecord::Migration[6.1]
  def change
    add_column :oauth_access_grants, :code_challenge, :string, null: true
    add_column :oauth_access_grants, :code_challenge_method, :string, null: true
  end
end
