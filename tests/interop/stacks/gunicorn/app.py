"""A legacy OAuth 2.0 server on Flask behind gunicorn 21.2.0, without PKCE.

Token parameters come from request.values (query string first, then the form), and gunicorn
< 22 takes a SCRIPT_NAME request header as the WSGI SCRIPT_NAME. Run:
    gunicorn --bind 127.0.0.1:PORT --chdir tests/interop/stacks/gunicorn app:app
(one worker: the codes live in this process's memory).
"""
import secrets
from urllib.parse import urlencode

from flask import Flask, jsonify, redirect, request

app = Flask(__name__)
codes = {}  # code -> {"client_id", "redirect_uri", "used"}
seen = {"token_requests": 0, "redeemed": []}


@app.get("/authorize")
def authorize():  # auto-approves: no login page
    p = request.args
    if p.get("response_type") != "code" or not p.get("client_id") or not p.get("redirect_uri"):
        return jsonify(error="invalid_request"), 400
    code = secrets.token_hex(16)
    codes[code] = {"client_id": p["client_id"], "redirect_uri": p["redirect_uri"], "used": False}
    q = {"code": code, **({"state": p["state"]} if "state" in p else {})}
    sep = "&" if "?" in p["redirect_uri"] else "?"
    return redirect(p["redirect_uri"] + sep + urlencode(q), 302)


@app.post("/token")
def token():
    seen["token_requests"] += 1
    p = request.values
    if p.get("grant_type") != "authorization_code":
        return jsonify(error="unsupported_grant_type"), 400
    entry = codes.get(p.get("code"))
    if not entry or entry["used"] or entry["client_id"] != p.get("client_id"):
        return jsonify(error="invalid_grant"), 400
    entry["used"] = True
    seen["redeemed"].append(p["code"])
    body = {"access_token": secrets.token_hex(16), "token_type": "Bearer", "expires_in": 3600}
    return jsonify(body), 200, {"Cache-Control": "no-store"}


@app.get("/_seen")
def seen_view():
    return jsonify(seen)


@app.get("/_environ")
def environ_view():
    """The routing and forwarding keys of the WSGI environ, as the app sees them."""
    keys = {k: v for k, v in request.environ.items()
            if k.startswith("HTTP_X_") or k in ("SCRIPT_NAME", "PATH_INFO", "REMOTE_ADDR")}
    return jsonify(keys)
