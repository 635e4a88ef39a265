"""Parser-differential tricks against real legacy stacks, directly and through pkce-proxy.

    tricks.py --suite express|php|gunicorn --stack http://127.0.0.1:A --proxy http://127.0.0.1:B

For each trick: DIRECT (the stack alone redeems a code with it: the differential is real) and
PROXY (the same trick through the proxy, without the code_verifier, gets no token and the
stack redeems nothing). Prints RESULT|suite|check|PASS/FAIL|detail; exit status 0 always
(run.sh counts the lines). Requests are written byte for byte on a socket: no client library
re-encodes the odd targets and names.
"""
import argparse
import base64
import gzip
import hashlib
import http.client
import json
import secrets
import socket
import sys
import time
from collections import namedtuple
from urllib.parse import parse_qs, quote, urlsplit

CLIENT = "app"
REDIRECT = "http://client.example/cb"
TIMEOUT = 10
Req = namedtuple("Req", "method target headers body", defaults=((), b""))
Resp = namedtuple("Resp", "status headers body")


def render(host, req):
    """The bytes of req, as written: target, header names and body untouched."""
    body = req.body.encode() if isinstance(req.body, str) else req.body
    names = {k.lower() for k, _ in req.headers}
    head = [f"{req.method} {req.target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in req.headers]
    if "content-length" not in names and "transfer-encoding" not in names:
        if body or req.method == "POST":
            head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def send(base, req):
    """Sends req byte for byte on a new connection and reads the answer."""
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=TIMEOUT) as sock:
        sock.sendall(render(u.netloc, req))
        resp = http.client.HTTPResponse(sock, method=req.method)
        resp.begin()
        data = resp.read()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def as_json(resp):
    try:
        return json.loads(resp.body)
    except ValueError:
        return {}


def pkce():
    verifier = secrets.token_urlsafe(48)  # 64 chars of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def enc(value):
    return quote(value, safe="")


def form(*pairs):
    """name=value&...: names are written as given (the trick), values percent-encoded."""
    return "&".join(f"{name}={enc(value)}" for name, value in pairs)


class Stack:
    def __init__(self, suite, base, proxy, authorize, token, seen):
        self.suite, self.base, self.proxy = suite, base, proxy
        self.authorize_path, self.token, self.seen_path = authorize, token, seen

    def seen(self):
        return as_json(send(self.base, Req("GET", self.seen_path)))

    def authorize(self, via):
        """Runs /authorize (with an S256 challenge and a state) on `via`; returns (code,
        verifier) or raises AssertionError saying what went wrong."""
        verifier, challenge = pkce()
        state = secrets.token_urlsafe(12)
        query = form(("response_type", "code"), ("client_id", CLIENT),
                     ("redirect_uri", REDIRECT), ("state", state),
                     ("code_challenge", challenge), ("code_challenge_method", "S256"))
        resp = send(via, Req("GET", f"{self.authorize_path}?{query}"))
        location = resp.headers.get("location", "")
        assert resp.status == 302, f"authorize: status {resp.status}, {resp.body[:120]!r}"
        got = parse_qs(urlsplit(location).query)
        assert location.startswith(REDIRECT + "?"), f"authorize: redirected to {location!r}"
        assert got.get("state") == [state], f"authorize: state {got.get('state')} != {state!r}"
        assert got.get("code"), f"authorize: no code in {location!r}"
        return got["code"][0], verifier


def token_form(code, verifier=None, names=("grant_type", "code", "client_id", "redirect_uri")):
    pairs = list(zip(names, ("authorization_code", code, CLIENT, REDIRECT)))
    if verifier:
        pairs.append(("code_verifier", verifier))
    return form(*pairs)


FORM = ("Content-Type", "application/x-www-form-urlencoded")


def post(path, body, *headers, query=None):
    target = f"{path}?{query}" if query is not None else path
    return Req("POST", target, (FORM,) + headers, body)


def multipart(body):
    boundary = "b" + secrets.token_hex(8)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v[0]}\r\n'
             for k, v in parse_qs(body).items()]
    data = "".join(parts) + f"--{boundary}--\r\n"
    return ("Content-Type", f"multipart/form-data; boundary={boundary}"), data


# ---------------------------------------------------------------- the tricks
# Each trick is (name, make) with make(stack, code, fresh) -> Req; `code` is the victim's code,
# `fresh()` runs another flow on the same way in and returns its (code, verifier): the
# attacker's own, valid request, which some tricks carry the victim's code on top of.

def qs_names(prefix, suffix):
    return tuple(f"{prefix}{n}{suffix}" for n in ("grant_type", "code", "client_id", "redirect_uri"))


PCT_NAMES = ("%67rant_type", "%63ode", "%63lient_id", "redirect_uri")


def in_query(names=("grant_type", "code", "client_id", "redirect_uri")):
    return lambda s, code, fresh: post(s.token, "", query=token_form(code, names=names))


def in_body(names):
    return lambda s, code, fresh: post(s.token, token_form(code, names=names))


def query_code_body_rest(s, code, fresh):  # the code in the query, the rest in the body
    body = form(("grant_type", "authorization_code"), ("client_id", CLIENT),
                ("redirect_uri", REDIRECT))
    return post(s.token, body, query=form(("code", code)))


def own_body_and_query_code(s, code, fresh):
    own, verifier = fresh()
    return post(s.token, token_form(own, verifier), query=form(("code", code)))


def own_body_and_cookie_code(s, code, fresh):
    own, verifier = fresh()
    return post(s.token, token_form(own, verifier), ("Cookie", f"code={code}"))


def at_path(path, *headers):
    return lambda s, code, fresh: post(path, token_form(code), *headers)


def multipart_body(s, code, fresh):
    ctype, data = multipart(token_form(code))
    return Req("POST", s.token, (ctype,), data)


def repeated_code(victim_first):
    def make(s, code, fresh):
        codes = (code, "0" * 32) if victim_first else ("0" * 32, code)
        return post(s.token, form(("grant_type", "authorization_code"), ("code", codes[0]),
                                  ("client_id", CLIENT), ("code", codes[1])))
    return make


def json_repeated_code(s, code, fresh):  # JSON.parse keeps the last of repeated keys
    own, verifier = fresh()
    members = [("grant_type", "authorization_code"), ("client_id", CLIENT),
               ("redirect_uri", REDIRECT), ("code_verifier", verifier), ("code", own),
               ("code", code)]
    body = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in members) + "}"
    return Req("POST", s.token, (("Content-Type", "application/json"),), body)


def two_content_types(form_first):
    """The attacker's own request as a form, then a multipart part set with the victim's code
    (a form reader takes it for one more value; a multipart reader skips it as preamble), under
    two Content-Type headers: the proxy reads one, the stack the other."""
    def make(s, code, fresh):
        own, verifier = fresh()
        ctype, parts = multipart(token_form(code))
        body = token_form(own, verifier) + "&z=\r\n" + parts
        return Req("POST", s.token, (FORM, ctype) if form_first else (ctype, FORM), body)
    return make


def json_form_polyglot(content_type):
    """A JSON body (the attacker's own request) whose one string member is a form with the
    victim's code: PHP cuts the Content-Type at the first ' ' or ',' and reads a form, a
    reader that takes `...+json` for JSON reads the JSON."""
    def make(s, code, fresh):
        own, verifier = fresh()
        body = json.dumps({"grant_type": "authorization_code", "code": own,
                           "client_id": CLIENT, "redirect_uri": REDIRECT,
                           "code_verifier": verifier, "x": f"&{token_form(code)}&y="})
        return Req("POST", s.token, (("Content-Type", content_type),), body)
    return make


def other_grant_carrying_code(s, code, fresh):
    """A refresh_token grant (no PKCE to check) that PHP reads as an authorization_code grant:
    `grant.type` becomes grant_type, and the last one wins."""
    return post(s.token, form(("grant_type", "refresh_token"), ("refresh_token", "r1"),
                              ("client_id", CLIENT), ("grant.type", "authorization_code"),
                              ("code", code)))


EXPRESS = [
    ("qs [name]= in the query, empty body", in_query(qs_names("[", "]"))),
    ("qs %5Bname%5D= in the query, empty body", in_query(qs_names("%5B", "%5D"))),
    ("qs [name]]= in the query, empty body", in_query(qs_names("[", "]]"))),
    ("qs [code]= in the body", in_body(("grant_type", "[code]", "client_id", "redirect_uri"))),
    ("qs code[]= in the body (array as key)",
     in_body(("grant_type", "code[]", "client_id", "redirect_uri"))),
    ("qs code[0]= in the body (array as key)",
     in_body(("grant_type", "code[0]", "client_id", "redirect_uri"))),
    ("plain params in the query, empty body", in_query()),
    ("percent-encoded names in the query, empty body", in_query(PCT_NAMES)),
    ("code in the query, the rest in the body", query_code_body_rest),
    ("JSON body (express.json)", lambda s, c, f: Req(
        "POST", s.token, (("Content-Type", "application/json"),),
        json.dumps({"grant_type": "authorization_code", "code": c, "client_id": CLIENT}))),
    ("JSON body with code as an array (a key all the same)", lambda s, c, f: Req(
        "POST", s.token, (("Content-Type", "application/json"),),
        json.dumps({"grant_type": "authorization_code", "code": [c], "client_id": CLIENT}))),
    ("own JSON request + repeated \"code\" key (last wins)", json_repeated_code),
    ("gzip form body (Content-Encoding: gzip)", lambda s, c, f: Req(
        "POST", s.token, (FORM, ("Content-Encoding", "gzip")),
        gzip.compress(token_form(c).encode()))),
    ("path /TOKEN (case-insensitive router)", at_path("/TOKEN")),
    ("path /token/ (trailing slash)", at_path("/token/")),
]

PHP = [
    ("names ending in %00 in the query, empty body", in_query(qs_names("", "%00"))),
    ("code%00= in the body", in_body(("grant_type", "code%00", "client_id", "redirect_uri"))),
    ("grant.type / +code / client[id in the query, empty body",
     in_query(("grant.type", "+code", "client[id", "redirect_uri"))),
    ("params in a Cookie header (no request_order)", lambda s, c, f: post(
        s.token, "", ("Cookie", f"grant_type=authorization_code; code={c}; client_id={CLIENT}"))),
    ("own valid body + Cookie: code=VICTIM", own_body_and_cookie_code),
    ("PATH_INFO: POST /token.php/x", at_path("/token.php/x")),
    ("PATH_INFO: POST /token.php%2Fx", at_path("/token.php%2Fx")),
    ("grant.type / client.id in the body (dots to _)",
     in_body(("grant.type", "code", "client.id", "redirect.uri"))),
    ("grant+type / +code in the body (spaces to _, leading stripped)",
     in_body(("grant+type", "+code", "client_id", "redirect_uri"))),
    ("grant[type / client[id in the body (unclosed [ to _)",
     in_body(("grant[type", "code", "client[id", "redirect[uri"))),
    ("repeated code, PHP takes the last", repeated_code(victim_first=False)),
    ("refresh_token grant + grant.type=authorization_code + code", other_grant_carrying_code),
    ("GET /token.php?params ($_REQUEST)", lambda s, c, f: Req("GET", f"{s.token}?{token_form(c)}")),
    ("plain params in the query, empty body", in_query()),
    ("percent-encoded names in the query, empty body", in_query(PCT_NAMES)),
    ("multipart/form-data body", multipart_body),
    ("own form + multipart, two Content-Types (PHP reads the first)",
     two_content_types(form_first=False)),
    ("own JSON with a form inside, Content-Type 'form x+json'",
     json_form_polyglot("application/x-www-form-urlencoded x+json")),
    ("own JSON with a form inside, Content-Type 'form,x+json'",
     json_form_polyglot("application/x-www-form-urlencoded,x+json")),
    ("path /%74oken.php (decoded by the server)", at_path("/%74oken.php")),
    ("path /x/../token.php (dot segments resolved)", at_path("/x/../token.php")),
]

GUNICORN = [
    ("SCRIPT_NAME: /x header, POST /x/token", at_path("/x/token", ("SCRIPT_NAME", "/x"))),
    ("plain params in the query, empty body", in_query()),
    ("percent-encoded names in the query, empty body", in_query(PCT_NAMES)),
    ("code in the query, the rest in the body", query_code_body_rest),
    ("own valid body + ?code=VICTIM (request.values: args first)", own_body_and_query_code),
    ("repeated code, Flask takes the first", repeated_code(victim_first=True)),
    ("multipart/form-data body", multipart_body),
    ("own form + multipart, two Content-Types (gunicorn keeps the last)",
     two_content_types(form_first=True)),
    ("path /%74oken (decoded by gunicorn)", at_path("/%74oken")),
    ("path //token (merged by werkzeug)", at_path("//token")),
]

# Authorization requests WITHOUT a code_challenge at a path the stack routes to its authorize
# endpoint: the stack issues a code; through the proxy they must be refused (PKCE required).
AUTHORIZE = {
    "express": [("/AUTHORIZE", ())],
    "php": [("/authorize.php/x", ()), ("/authorize.php%2Fx", ())],
    "gunicorn": [("/x/authorize", (("SCRIPT_NAME", "/x"),)), ("/%61uthorize", ())],
}


# ---------------------------------------------------------------- checks
def report(suite, check, ok, detail=""):
    print(f"RESULT|{suite}|{check}|{'PASS' if ok else 'FAIL'}|{detail}", flush=True)


def describe(resp):
    j = as_json(resp)
    if "access_token" in j:
        return f"{resp.status} with an access_token"
    if 300 <= resp.status < 400:
        return f"{resp.status} redirect"
    return f"{resp.status} {j.get('error') or resp.body[:60]!r}"


def direct(s, make):
    """The stack alone: the trick redeems the victim's code."""
    code, _ = s.authorize(s.base)
    resp = send(s.base, make(s, code, lambda: s.authorize(s.base)))
    redeemed = code in s.seen().get("redeemed", [])
    ok = resp.status == 200 and "access_token" in as_json(resp) and redeemed
    return ok, f"{describe(resp)}; victim code redeemed: {redeemed}"


def proxied(s, make):
    """Through the proxy, without the victim's verifier: the victim's code is not redeemed, and
    the answer is a 4xx without a token. (A trick that carries the attacker's own valid request
    may get the attacker's own token: there only the victim's code counts.)"""
    code, _ = s.authorize(s.proxy)
    own = []

    def fresh():
        flow = s.authorize(s.proxy)
        own.append(flow[0])
        return flow

    req = make(s, code, fresh)
    before = s.seen().get("token_requests", 0)
    resp = send(s.proxy, req)
    after = s.seen()
    reached = after.get("token_requests", 0) - before
    redeemed = code in after.get("redeemed", [])
    ok = not redeemed and (own or (400 <= resp.status < 500 and "access_token" not in as_json(resp)))
    extra = f"; own code redeemed: {own[0] in after.get('redeemed', [])}" if own else ""
    return bool(ok), (f"{describe(resp)}; victim code redeemed: {redeemed}{extra}; "
                      f"token requests upstream: {reached}")


def run_check(suite, check, fn, *args):
    try:
        ok, detail = fn(*args)
    except Exception as e:  # noqa: BLE001 - one broken check must not stop the others
        ok, detail = False, f"{type(e).__name__}: {e}"
    report(suite, check, ok, detail)


def controls(s):
    def direct_normal():
        code, _ = s.authorize(s.base)
        resp = send(s.base, post(s.token, token_form(code)))
        return resp.status == 200 and "access_token" in as_json(resp), describe(resp)

    def proxy_with_verifier():
        code, verifier = s.authorize(s.proxy)
        resp = send(s.proxy, post(s.token, token_form(code, verifier)))
        redeemed = code in s.seen().get("redeemed", [])
        ok = resp.status == 200 and "access_token" in as_json(resp) and redeemed
        return ok, f"{describe(resp)}; redeemed: {redeemed}"

    def proxy_without_verifier():
        code, _ = s.authorize(s.proxy)
        resp = send(s.proxy, post(s.token, token_form(code)))
        redeemed = code in s.seen().get("redeemed", [])
        ok = resp.status == 400 and as_json(resp).get("error") in ("invalid_request", "invalid_grant")
        return ok and not redeemed, f"{describe(resp)}; redeemed: {redeemed}"

    run_check(s.suite, "control DIRECT: normal token request", direct_normal)
    run_check(s.suite, "control PROXY: with the code_verifier gets a token", proxy_with_verifier)
    run_check(s.suite, "control PROXY: without the code_verifier is refused", proxy_without_verifier)


def underscore_headers(s):
    """X_Forwarded_Host / X_Real_IP reach a WSGI app as HTTP_X_FORWARDED_HOST / HTTP_X_REAL_IP."""
    req = Req("GET", "/_environ", (("X_Forwarded_Host", "evil.example"), ("X_Real_IP", "6.6.6.6")))

    def check(via, expect_seen):
        env = as_json(send(via, req))
        got = (env.get("HTTP_X_FORWARDED_HOST"), env.get("HTTP_X_REAL_IP"))
        seen = got == ("evil.example", "6.6.6.6")
        leaked = "evil.example" in got or "6.6.6.6" in got
        return (seen if expect_seen else not leaked), f"app saw HOST={got[0]!r} REAL_IP={got[1]!r}"

    name = "X_Forwarded_Host / X_Real_IP headers reach the app"
    run_check(s.suite, f"DIRECT {name}", check, s.base, True)
    run_check(s.suite, f"PROXY {name.replace('reach', 'do not reach')}", check, s.proxy, False)


def authorize_without_challenge(s, path, headers):
    query = form(("response_type", "code"), ("client_id", CLIENT), ("redirect_uri", REDIRECT),
                 ("state", "s1"))

    def check(via, expect_code):
        resp = send(via, Req("GET", f"{path}?{query}", headers))
        location = resp.headers.get("location", "")
        issued = "code" in parse_qs(urlsplit(location).query)
        ok = issued if expect_code else not issued and resp.status < 500
        return ok, f"{describe(resp)}; code issued: {issued}"

    name = f"authorize without code_challenge at {path}" + (" + SCRIPT_NAME" if headers else "")
    run_check(s.suite, f"DIRECT {name} gets a code", check, s.base, True)
    run_check(s.suite, f"PROXY {name} is refused", check, s.proxy, False)


def smuggled_token_request(s):
    """CL.TE: a verifier-less token request hidden after the end of a chunked body (PROXY only:
    there is no differential to show directly)."""
    def check():
        code, _ = s.authorize(s.proxy)
        inner = render(urlsplit(s.base).netloc, post(s.token, token_form(code))).decode()
        body = "0\r\n\r\n" + inner
        headers = (("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked"))
        resp = send(s.proxy, Req("POST", s.seen_path, headers, body))
        time.sleep(0.3)  # a desynchronised upstream connection would answer it by now
        redeemed = code in s.seen().get("redeemed", [])
        return not redeemed, f"{resp.status}; victim code redeemed: {redeemed}"

    run_check(s.suite, "PROXY CL+TE smuggled token request after a chunked body", check)


def json_rebuilt_as_form(s):
    """A JSON token request goes upstream as a form: a value holding '&code=VICTIM' must stay
    one value (PHP takes the last `code`). PROXY only: PHP reads no JSON."""
    def check():
        code, _ = s.authorize(s.proxy)
        own, verifier = s.authorize(s.proxy)
        body = json.dumps({"grant_type": "authorization_code", "code": own, "client_id": CLIENT,
                           "redirect_uri": f"{REDIRECT}&code={code}", "code_verifier": verifier})
        resp = send(s.proxy, Req("POST", s.token, (("Content-Type", "application/json"),), body))
        redeemed = code in s.seen().get("redeemed", [])
        return not redeemed, f"{describe(resp)}; victim code redeemed: {redeemed}"

    run_check(s.suite, "PROXY JSON rebuilt as a form: '&code=VICTIM' in a value stays a value",
              check)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", required=True, choices=("express", "php", "gunicorn"))
    ap.add_argument("--stack", required=True)
    ap.add_argument("--proxy", required=True)
    a = ap.parse_args()
    suite = "stack-" + a.suite
    if a.suite == "php":
        s = Stack(suite, a.stack, a.proxy, "/authorize.php", "/token.php", "/seen.php")
    else:
        s = Stack(suite, a.stack, a.proxy, "/authorize", "/token", "/_seen")
    controls(s)
    for name, make in {"express": EXPRESS, "php": PHP, "gunicorn": GUNICORN}[a.suite]:
        run_check(suite, f"DIRECT {name}", direct, s, make)
        run_check(suite, f"PROXY {name}", proxied, s, make)
    for path, headers in AUTHORIZE[a.suite]:
        authorize_without_challenge(s, path, headers)
    smuggled_token_request(s)
    if a.suite == "php":
        json_rebuilt_as_form(s)
    if a.suite == "gunicorn":
        underscore_headers(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
