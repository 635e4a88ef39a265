#!/usr/bin/env python3
"""Rails / Rack 2.2 / puma parser differentials at Doorkeeper's token endpoint, directly and
through pkce-proxy.

    tricks.py --mode A|B --dk http://127.0.0.1:D --proxy http://127.0.0.1:P \
        --db DB.sqlite3 --request-log requests.jsonl

Each trick runs twice:
- DIRECT: Doorkeeper alone redeems a victim's code with it (a code from a direct authorize,
  without a challenge: in mode B PKCE is optional). It must get a token and Doorkeeper's DB must
  show the code redeemed; a trick that does not work directly FAILs (it is stale, not skipped).
- PROXY: through the proxy, with a victim's code bound to a challenge and no verifier for it.
  Doorkeeper's token controller must never read the victim's code (its request log has the
  parameters Rails parsed), the code must stay unredeemed in the DB, and, where the trick is not
  carried by the attacker's own valid request, the answer is a 4xx without a token. In mode B
  Doorkeeper would refuse a forwarded victim code itself (it stored the challenge): only the log
  tells the proxy's refusal from Doorkeeper's.

Requests are written byte for byte on a socket: no client library re-encodes the odd names,
paths and headers. Prints RESULT|doorkeeper-MODE|check|PASS/FAIL|detail; exit status 0 always
(run.sh counts the lines).
"""
import argparse
import http.client
import json
import secrets
import socket
import sys
from collections import namedtuple
from urllib.parse import quote, urlencode, urlsplit

import browser as br

TIMEOUT = 10
Req = namedtuple("Req", "method target headers body", defaults=((), b""))
Resp = namedtuple("Resp", "status headers body")
FORM = ("Content-Type", "application/x-www-form-urlencoded")
SUITE = "doorkeeper"


def render(host, req):
    body = req.body.encode() if isinstance(req.body, str) else req.body
    names = {k.lower() for k, _ in req.headers}
    head = [f"{req.method} {req.target} HTTP/1.1", f"Host: {host}", "Connection: close",
            "Accept: application/json"]
    head += [f"{k}: {v}" for k, v in req.headers]
    if "content-length" not in names and (body or req.method == "POST"):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def send(base, req):
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=TIMEOUT) as sock:
        sock.sendall(render(u.netloc, req))
        resp = http.client.HTTPResponse(sock, method=req.method)
        resp.begin()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())


def as_json(resp):
    try:
        j = json.loads(resp.body)
    except ValueError:
        return {}
    return j if isinstance(j, dict) else {}


def enc(value):
    return quote(value, safe="")


def form(*pairs):
    """name=value&...: names written as given (the trick), values percent-encoded."""
    return "&".join(f"{name}={enc(value)}" for name, value in pairs)


def token_pairs(code, verifier=None, code_name="code"):
    pairs = [("grant_type", "authorization_code"), (code_name, code), ("client_id", br.PUBLIC),
             ("redirect_uri", br.CALLBACK)]
    return pairs + ([("code_verifier", verifier)] if verifier else [])


def post(body, *headers, query=None, path=br.TOKEN):
    return Req("POST", f"{path}?{query}" if query is not None else path, (FORM,) + headers, body)


def multipart(pairs, subtype):
    boundary = "b" + secrets.token_hex(8)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in pairs]
    return ("Content-Type", f"multipart/{subtype}; boundary={boundary}"), "".join(parts) + f"--{boundary}--\r\n"


# ---------------------------------------------------------------- the tricks
# make(code, fresh) -> Req: `code` is the victim's code; fresh() runs another flow the same way
# (directly: no challenge, verifier None; through the proxy: bound, with its verifier) and returns
# (code, verifier): the attacker's own valid request, which some tricks carry the victim's code on.

def bracket_in_body(name):
    return lambda code, fresh: post(form(*token_pairs(code, code_name=name)))


def bracket_in_query(name):
    def make(code, fresh):
        rest = [p for p in token_pairs(code) if p[0] != "code"]
        return post(form(*rest), query=f"{name}={enc(code)}")
    return make


def own_body_and_query(name):
    def make(code, fresh):
        own, verifier = fresh()
        return post(form(*token_pairs(own, verifier)), query=f"{name}={enc(code)}")
    return make


def repeated_code(code, fresh):
    own, verifier = fresh()
    return post(form(*token_pairs(own, verifier), ("code", code)))


def json_body(content_type):
    def make(code, fresh):
        return Req("POST", br.TOKEN, (("Content-Type", content_type),), json.dumps(dict(token_pairs(code))))
    return make


def json_repeated_key(code, fresh):
    own, verifier = fresh()
    members = token_pairs(own, verifier) + [("code", code)]
    body = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"
    return Req("POST", br.TOKEN, (("Content-Type", "application/json"),), body)


def multipart_body(subtype):
    def make(code, fresh):
        ctype, body = multipart(token_pairs(code), subtype)
        return Req("POST", br.TOKEN, (ctype,), body)
    return make


def with_header(name, value):
    return lambda code, fresh: post(form(*token_pairs(code)), (name, value))


def at_path(path):
    return lambda code, fresh: post(form(*token_pairs(code)), path=path)


BRACKETS = ["[code]", "]code", "code]", "[]code", "%5Bcode%5D"]
TRICKS = (
    [(f"body name {n} (Rack reads code)", bracket_in_body(n), None) for n in BRACKETS]
    + [(f"query {n}=VICTIM, the rest in the body", bracket_in_query(n), None) for n in BRACKETS]
    + [
        ("own valid body + ?code=VICTIM (Rails: the query overrides the body)", own_body_and_query("code"), None),
        ("own valid body + ?[code]=VICTIM", own_body_and_query("[code]"), None),
        ("own valid body + a second code=VICTIM (Rack keeps the last)", repeated_code, None),
    ]
    + [(f"JSON body, Content-Type {ct}", json_body(ct), None)
       for ct in ("application/json", "text/x-json", "application/jsonrequest")]
    + [("own valid JSON + a repeated \"code\" key = VICTIM (Ruby's JSON keeps the last)", json_repeated_key, None)]
    + [(f"multipart/{sub} body", multipart_body(sub), None) for sub in ("form-data", "mixed", "related")]
    + [
        ("_method=post in the body (Rack::MethodOverride)",
         lambda code, fresh: post(form(*token_pairs(code), ("_method", "post"))), "override"),
        ("X-HTTP-Method-Override: POST", with_header("X-HTTP-Method-Override", "POST"), "override"),
        ("X_HTTP_Method_Override: POST (puma turns _ into the same variable)",
         with_header("X_HTTP_Method_Override", "POST"), "override"),
    ]
    + [(f"path {p}", at_path(p), None)
       for p in ("/oauth/token.json", "/oauth/token.xml", "/oauth/token/", "//oauth/token", "/oauth//token")]
)


# ---------------------------------------------------------------- checks
def report(check, ok, detail=""):
    detail = " ".join(str(detail).replace("|", "/").split())[:500]
    print(f"RESULT|{SUITE}|{check}|{'PASS' if ok else 'FAIL'}|{detail}", flush=True)


def describe(resp):
    j = as_json(resp)
    if "access_token" in j:
        return f"{resp.status} with an access_token"
    if 300 <= resp.status < 400:
        return f"{resp.status} redirect to {resp.headers.get('location', '')[:80]}"
    return f"{resp.status} {j.get('error') or resp.body[:80]!r}" + (
        f" ({j.get('error_description')!r})" if j.get("error_description") else "")


class Codes:
    """Codes from a signed-in browser session: consent once per code, as a user would."""

    def __init__(self, base, bound):
        self.base, self.bound, self.b = base, bound, br.Browser()

    def get(self):
        verifier, challenge = br.pkce_pair() if self.bound else (None, None)
        params = {"response_type": "code", "client_id": br.PUBLIC, "redirect_uri": br.CALLBACK,
                  "scope": "read", "state": "S-" + secrets.token_urlsafe(8)}
        if challenge:
            params.update(code_challenge=challenge, code_challenge_method="S256")
        _, cb = br.browse(self.b, f"{self.base}{br.AUTHORIZE}?{urlencode(params)}")
        code = br.query(cb).get("code", [None])[0]
        if not code:
            raise br.Stop(f"no code: {cb[:120]}")
        return br.secret(code), verifier


def overrides(up, n_before):
    return [r.get("original_method") for r in up.token_actions()[n_before:] if r.get("original_method")]


def direct(ctx, make, kind):
    code, _ = ctx.direct_codes.get()
    n = ctx.up.token_hits()
    resp = send(ctx.dk, make(code, ctx.direct_codes.get))
    redeemed = ctx.up.redeemed(code)
    read = ctx.up.read_code(code)
    ok = resp.status == 200 and "access_token" in as_json(resp) and redeemed and read == 1
    detail = f"{describe(resp)}; victim code read by Doorkeeper: {read}, redeemed: {redeemed}"
    if kind == "override":
        applied = overrides(ctx.up, n)
        ok = ok and bool(applied)
        detail += f"; Rack applied a method override: {bool(applied)}"
    return ok, detail


def proxied(ctx, make, kind):
    code, verifier = ctx.proxy_codes.get()
    own = []

    def fresh():
        flow = ctx.proxy_codes.get()
        own.append(flow[0])
        return flow

    req = make(code, fresh)
    n = ctx.up.token_hits()
    resp = send(ctx.proxy, req)
    reached = ctx.up.token_hits() - n
    read = ctx.up.read_code(code)
    redeemed = ctx.up.redeemed(code)
    ok = not read and not redeemed and (bool(own) or (400 <= resp.status < 500 and "access_token" not in as_json(resp)))
    detail = (f"{describe(resp)}; token requests reaching Doorkeeper: {reached}; victim code read by "
              f"Doorkeeper: {read}, redeemed: {redeemed}")
    if own:
        detail += f"; attacker's own code redeemed: {ctx.up.redeemed(own[0])}"
    if kind == "override":
        detail += f"; method override reached Rack: {bool(overrides(ctx.up, n))}"
    # The rightful client still redeems the victim's code (one refused attempt does not burn it).
    r, j = br.token(ctx.proxy, code, verifier)
    detail += f"; rightful redemption afterwards: {r.status_code}{' ' + j.get('error', '') if j.get('error') else ''}"
    return ok, detail


def run_check(check, fn, *args):
    try:
        ok, detail = fn(*args)
    except Exception as e:  # noqa: BLE001 - one broken check must not stop the others
        ok, detail = False, f"{type(e).__name__}: {e}"
    report(check, ok, detail)


def controls(ctx):
    def direct_plain():
        code, _ = ctx.direct_codes.get()
        resp = send(ctx.dk, post(form(*token_pairs(code))))
        return resp.status == 200 and "access_token" in as_json(resp) and ctx.up.redeemed(code), describe(resp)

    def proxy_with_verifier():
        code, verifier = ctx.proxy_codes.get()
        resp = send(ctx.proxy, post(form(*token_pairs(code, verifier))))
        ok = resp.status == 200 and "access_token" in as_json(resp) and ctx.up.redeemed(code)
        return ok, f"{describe(resp)}; redeemed: {ctx.up.redeemed(code)}"

    def proxy_without_verifier():
        code, _ = ctx.proxy_codes.get()
        n = ctx.up.token_hits()
        resp = send(ctx.proxy, post(form(*token_pairs(code))))
        reached = ctx.up.token_hits() - n
        ok = resp.status == 400 and as_json(resp).get("error") == "invalid_grant" and not reached
        return ok, f"{describe(resp)}; reached Doorkeeper: {reached}"

    run_check("tricks control DIRECT: a plain token request redeems a direct code", direct_plain)
    run_check("tricks control PROXY: with the code_verifier gets a token", proxy_with_verifier)
    run_check("tricks control PROXY: without the code_verifier refused by the proxy", proxy_without_verifier)


class Ctx:
    def __init__(self, a):
        self.dk, self.proxy = a.dk.rstrip("/"), a.proxy.rstrip("/")
        self.up = br.Upstream(self.dk, a.db, a.request_log)
        self.direct_codes = Codes(self.dk, bound=False)
        self.proxy_codes = Codes(self.proxy, bound=True)


def main():
    global SUITE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", required=True, choices=("A", "B"))
    ap.add_argument("--dk", required=True)
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--request-log", required=True)
    a = ap.parse_args()
    SUITE = f"doorkeeper-{a.mode}"
    ctx = Ctx(a)
    controls(ctx)
    for name, make, kind in TRICKS:
        run_check(f"DIRECT {name}", direct, ctx, make, kind)
        run_check(f"PROXY {name}", proxied, ctx, make, kind)
    return 0


if __name__ == "__main__":
    sys.exit(main())
