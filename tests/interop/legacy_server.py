"""A "legacy" OAuth 2.0 authorization server built on Authlib + Flask, WITHOUT PKCE.

It is what pkce-proxy is meant to sit in front of: Authlib's AuthorizationCodeGrant with no
`CodeChallenge` extension registered (so `code_challenge` and `code_verifier` are ignored),
plus RefreshTokenGrant, a bearer-protected resource, an RFC 8414 discovery document that does
NOT advertise `code_challenge_methods_supported`, and a sign-in step with a session cookie.

Storage is a few in-memory dicts. Clients:

- `public-app`: public client, token_endpoint_auth_method "none"
- `conf-app` / `conf-secret`: confidential client, client_secret_basic
- `post-app` / `post-secret`: confidential client, client_secret_post
- `svc+prod` / `plus-secret`: confidential client, client_secret_basic, a "+" in its id
- `consent-app`: public client that gets a consent page (a POST back to /authorize)

User `alice` / password `wonderland`. Consent is automatic once signed in, except for
`consent-app`.

Run: python legacy_server.py --port 0   (prints "listening on 127.0.0.1:PORT" once bound)
"""

from __future__ import annotations

import argparse
import hmac
import os
import secrets
import sys
import threading
import time
from urllib.parse import urlencode

# Plain HTTP on loopback only: Authlib refuses non-TLS unless told otherwise.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

from authlib.integrations.flask_oauth2 import (  # noqa: E402
    AuthorizationServer,
    ResourceProtector,
    current_token,
)
from authlib.oauth2.rfc6749 import (  # noqa: E402
    AuthorizationCodeMixin,
    OAuth2Error,
    ClientMixin,
    TokenMixin,
    grants,
    list_to_scope,
    scope_to_list,
)
from authlib.oauth2.rfc6750 import BearerTokenValidator  # noqa: E402
from flask import Flask, jsonify, redirect, request, session  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

CALLBACK = "http://127.0.0.1:9/callback"  # never served: clients read the Location header

# ---------------------------------------------------------------- in-memory "database"

LOCK = threading.Lock()
USERS = {"alice": {"id": "alice", "password": "wonderland", "name": "Alice Liddell"}}
CODES: dict[str, "AuthCode"] = {}
TOKENS: dict[str, "Token"] = {}  # by access token
REFRESH: dict[str, "Token"] = {}  # by refresh token
STATS = {"codes_issued": 0, "tokens_issued": 0, "code_redemptions": 0}


class Client(ClientMixin):
    def __init__(self, client_id, secret, redirect_uris, auth_method, scope="profile email"):
        self.client_id = client_id
        self.client_secret = secret
        self.redirect_uris = redirect_uris
        self.auth_method = auth_method
        self.scope = scope

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope):
        if not scope:
            return ""
        allowed = set(scope_to_list(self.scope))
        return list_to_scope([s for s in scope_to_list(scope) if s in allowed])

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return self.client_secret is not None and hmac.compare_digest(
            self.client_secret.encode(), (client_secret or "").encode()
        )

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint == "token":
            return method == self.auth_method
        return True

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


CLIENTS = {
    "public-app": Client("public-app", None, [CALLBACK], "none"),
    "conf-app": Client("conf-app", "conf-secret", [CALLBACK], "client_secret_basic"),
    "post-app": Client("post-app", "post-secret", [CALLBACK], "client_secret_post"),
    # A client_id with a VSCHAR that RFC 6749 §2.3.1 form-encoding changes ("+" is a space).
    "svc+prod": Client("svc+prod", "plus-secret", [CALLBACK], "client_secret_basic"),
    # Public, and asks the user for consent on a page that POSTs back to /authorize.
    "consent-app": Client("consent-app", None, [CALLBACK], "none"),
}
NEEDS_CONSENT = {"consent-app"}


class AuthCode(AuthorizationCodeMixin):
    def __init__(self, code, client_id, redirect_uri, scope, user_id):
        self.code = code
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.user_id = user_id
        self.auth_time = time.time()

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_auth_time(self):
        return int(self.auth_time)

    def get_nonce(self):
        return None

    def is_expired(self):
        return time.time() - self.auth_time > 300


class Token(TokenMixin):
    def __init__(self, data, client_id, user_id):
        self.access_token = data["access_token"]
        self.refresh_token = data.get("refresh_token")
        self.scope = data.get("scope", "")
        self.expires_in = data.get("expires_in", 3600)
        self.issued_at = time.time()
        self.client_id = client_id
        self.user_id = user_id
        self.revoked = False

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return USERS[self.user_id]

    def get_client(self):
        return CLIENTS[self.client_id]


# ---------------------------------------------------------------- grants (no PKCE!)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code, request):
        with LOCK:
            CODES[code] = AuthCode(
                code,
                request.client.get_client_id(),
                request.payload.redirect_uri,
                request.scope,
                request.user["id"],
            )
            STATS["codes_issued"] += 1

    def query_authorization_code(self, code, client):
        with LOCK:
            item = CODES.get(code)
        if item and item.client_id == client.get_client_id() and not item.is_expired():
            return item
        return None

    def delete_authorization_code(self, authorization_code):
        with LOCK:
            CODES.pop(authorization_code.code, None)
            STATS["code_redemptions"] += 1

    def authenticate_user(self, authorization_code):
        return USERS.get(authorization_code.user_id)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        with LOCK:
            token = REFRESH.get(refresh_token)
        if token and not token.is_revoked():
            return token
        return None

    def authenticate_user(self, credential):
        return USERS.get(credential.user_id)

    def revoke_old_credential(self, credential):
        credential.revoked = True


def save_token(token_data, request):
    user = request.user
    token = Token(token_data, request.client.get_client_id(), user["id"])
    with LOCK:
        TOKENS[token.access_token] = token
        if token.refresh_token:
            REFRESH[token.refresh_token] = token
        STATS["tokens_issued"] += 1


class MyBearerTokenValidator(BearerTokenValidator):
    def authenticate_token(self, token_string):
        with LOCK:
            return TOKENS.get(token_string)


# ---------------------------------------------------------------- the Flask app

app = Flask(__name__)
app.secret_key = secrets.token_hex(32)
app.config.update(
    OAUTH2_REFRESH_TOKEN_GENERATOR=True,
    OAUTH2_SCOPES_SUPPORTED=["profile", "email"],  # anything else: error=invalid_scope
    OAUTH2_TOKEN_EXPIRES_IN={"authorization_code": 3600, "refresh_token": 3600},
    SESSION_COOKIE_NAME="legacy_session",
)

server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=save_token)
server.register_grant(AuthorizationCodeGrant)  # NOTE: no CodeChallenge extension
server.register_grant(RefreshTokenGrant)

require_oauth = ResourceProtector()
require_oauth.register_token_validator(MyBearerTokenValidator())


def current_user():
    uid = session.get("uid")
    return USERS.get(uid) if uid else None


CONSENT_FORM = """<!doctype html><title>Consent</title>
<p>{client} asks for: {scope}</p>
<form method="post" action="{action}">
<button name="confirm" value="yes">Allow</button><button name="confirm" value="no">Deny</button>
</form>"""


@app.route("/authorize", methods=["GET", "POST"])
def authorize():
    from markupsafe import escape

    user = current_user()
    if user is None:
        # Sign in first; come back to this very request afterwards (relative URL, so the
        # browser comes back through whatever host it used, e.g. the proxy).
        return redirect("/login?" + urlencode({"next": request.full_path}), code=302)
    try:
        grant = server.get_consent_grant(end_user=user)
    except OAuth2Error as error:
        return server.handle_error_response(None, error)
    client_id = grant.client.get_client_id()
    if client_id in NEEDS_CONSENT:
        if request.method == "GET":
            # The consent form posts back to this same URL, query string and all, as
            # Authlib's example server does.
            return CONSENT_FORM.format(client=escape(client_id),
                                       scope=escape(grant.request.scope or ""),
                                       action=escape(request.full_path))
        grant_user = user if request.form.get("confirm") == "yes" else None
    else:
        grant_user = user  # automatic consent
    return server.create_authorization_response(grant_user=grant_user, grant=grant)


LOGIN_FORM = """<!doctype html><title>Sign in</title>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<input name="username"><input name="password" type="password">
<button>Sign in</button></form>"""


@app.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        from markupsafe import escape

        return LOGIN_FORM.format(next=escape(request.args.get("next", "/")))
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    user = USERS.get(username)
    if not user or not hmac.compare_digest(user["password"], password):
        return "bad credentials", 401
    session["uid"] = user["id"]
    nxt = request.form.get("next", "/")
    if not nxt.startswith("/") or nxt.startswith("//"):
        nxt = "/"
    return redirect(nxt, code=302)


@app.route("/token", methods=["POST"])
def issue_token():
    return server.create_token_response()


@app.route("/.well-known/oauth-authorization-server")
def metadata():
    # Issuer follows the Host the request came with (the proxy keeps Host), as many
    # deployments behind a reverse proxy do.
    issuer = request.host_url.rstrip("/")
    return jsonify(
        issuer=issuer,
        authorization_endpoint=issuer + "/authorize",
        token_endpoint=issuer + "/token",
        response_types_supported=["code"],
        grant_types_supported=["authorization_code", "refresh_token"],
        token_endpoint_auth_methods_supported=["client_secret_basic", "none"],
        scopes_supported=["profile", "email"],
        # deliberately no code_challenge_methods_supported: this server has no PKCE
    )


@app.route("/api/me")
@require_oauth("profile")
def api_me():
    user = current_token.get_user()
    return jsonify(sub=user["id"], name=user["name"], client_id=current_token.client_id,
                   scope=current_token.scope)


@app.route("/_stats")
def stats():
    with LOCK:
        return jsonify(STATS)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    httpd = make_server(args.host, args.port, app, threaded=True)
    print(f"listening on {args.host}:{httpd.server_port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
