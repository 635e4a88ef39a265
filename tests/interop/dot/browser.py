#!/usr/bin/env python3
"""Drives a real Django OAuth Toolkit (DOT) deployment as a browser would, through pkce-proxy
and directly (the control).

    browser.py --proxy http://127.0.0.1:P --dot http://127.0.0.1:D --db /tmp/.../db.sqlite3

A `requests.Session` per flow is the browser: it keeps cookies, scrapes each form (CSRF token and
hidden inputs included) from the HTML and submits it as a browser does (to the form's action, or
to the page's own URL, query string included, when the form has none; with Origin and Referer),
and follows redirects one at a time so that every Location can be inspected. The token requests
are the client application's back-channel calls.

Prints `RESULT|dot|check|PASS/FAIL|detail` lines and a last line `N passed, N failed`; exits 1 on
any failure. Every check is always printed: a flow that stops early reports the checks it did
not reach as FAIL ("not reached").

The DOT database (--db) is read, never written: it tells whether the grant DOT stored for a code
carries a code_challenge. It does (the proxy forwards the challenge), and DOT with
PKCE_REQUIRED=False still verifies a challenge it received (oauthlib), so a wrong verifier
forwarded by a broken proxy would be refused by DOT anyway: --dot-log (serve.py's access log)
tells the proxy's refusals from DOT's, and a refused token request that reached DOT FAILs.
"""
import argparse
import base64
import hashlib
import os
import re
import secrets
import sqlite3
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests

TIMEOUT = 10  # seconds, every HTTP request
SUITE = "dot"
BROWSER_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) pkce-proxy-interop-dot",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en",
}
HANDLE_RE = re.compile(r"^[A-Za-z0-9_-]{22,}$")  # >= 128 bits, base64url

RESULTS = []  # (check, ok, detail)
SECRETS = []  # values that must never appear in the proxy's logs


def result(check, ok, detail=""):
    detail = " ".join(str(detail).split())
    RESULTS.append((check, ok, detail))
    print(f"RESULT|{SUITE}|{check}|{'PASS' if ok else 'FAIL'}|{detail}", flush=True)


def secret(value):
    if value:
        SECRETS.append(value)
    return value


def pkce_pair():
    verifier = secret(base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode())
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def snippet(resp, n=240):
    body = " ".join(resp.text.split()) if resp.content else ""
    body = re.sub(r"<[^>]+>", " ", body)
    body = " ".join(body.split())
    return body[:n]


def describe(resp):
    loc = resp.headers.get("Location")
    parts = [f"{resp.request.method} {urlsplit(resp.url).path} -> {resp.status_code}"]
    if loc:
        parts.append(f"Location {loc[:200]}")
    ctype = resp.headers.get("Content-Type", "")
    if ctype:
        parts.append(ctype.split(";")[0])
    body = snippet(resp)
    if body:
        parts.append(f"body: {body}")
    return "; ".join(parts)


class Stop(Exception):
    """A step failed: the flow cannot go on."""


# ------------------------------------------------------------------------------------ HTML forms
class FormParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms = []
        self._form = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = {"attrs": a, "inputs": []}
            self.forms.append(self._form)
        elif tag in ("input", "button") and self._form is not None:
            a.setdefault("type", "submit" if tag == "button" else "text")
            self._form["inputs"].append(a)

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def parse_forms(html):
    p = FormParser()
    p.feed(html)
    return p.forms


def submission(form, page_url, fill=None, click=None):
    """What a browser sends for `form`: (method, action URL, fields in document order).

    `fill` gives values for text/password inputs by name; `click` is the submit button pressed,
    chosen by its name, or by its value for a button without a name (only a named button's
    name=value is sent, as in a browser)."""
    fill = fill or {}
    fields = []
    clicked = False
    for inp in form["inputs"]:
        name, typ = inp.get("name", ""), inp.get("type", "text").lower()
        if typ in ("submit", "image", "button", "reset"):
            if not clicked and click is not None and click in (inp.get("name"), inp.get("value")):
                clicked = True
                if name:
                    fields.append((name, inp.get("value", "")))
            continue
        if not name or "disabled" in inp:
            continue
        if typ in ("checkbox", "radio") and "checked" not in inp:
            continue
        fields.append((name, fill.get(name, inp.get("value", ""))))
    if click is not None and not clicked:
        raise Stop(f"no submit button {click!r} in the form")
    # An absent or empty action is the document's own URL, query string included.
    action = urljoin(page_url, form["attrs"].get("action") or page_url)
    method = form["attrs"].get("method", "get").lower()
    return method, action, fields


def hidden(form):
    return {i.get("name"): i.get("value", "") for i in form["inputs"] if i.get("type", "").lower() == "hidden"}


# ------------------------------------------------------------------------------------ the browser
class Browser:
    def __init__(self):
        self.s = requests.Session()
        self.s.headers.update(BROWSER_HEADERS)

    def get(self, url, referer=None):
        headers = {"Referer": referer} if referer else {}
        return self.s.get(url, headers=headers, allow_redirects=False, timeout=TIMEOUT)

    def submit(self, page_url, form, fill=None, click=None):
        method, action, fields = submission(form, page_url, fill, click)
        o = urlsplit(page_url)
        headers = {"Origin": f"{o.scheme}://{o.netloc}", "Referer": page_url}
        if method == "post":
            return self.s.post(action, data=fields, headers=headers, allow_redirects=False, timeout=TIMEOUT)
        sep = "&" if urlsplit(action).query else "?"
        return self.s.get(action + sep + urlencode(fields), headers=headers, allow_redirects=False,
                          timeout=TIMEOUT)


def location(resp, flow, step, note=""):
    """The redirect's target; a response that is no redirect fails `step` of `flow`."""
    loc = resp.headers.get("Location")
    if resp.status_code not in (301, 302, 303, 307, 308) or not loc:
        flow.fail(step, f"expected a redirect: {describe(resp)}{note}")
    return urljoin(resp.url, loc)


def query(url):
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


# ------------------------------------------------------------------------------------ a flow
class Flow:
    """A fixed list of named checks; the ones not reached when a step stops the flow FAIL."""

    def __init__(self, prefix, names):
        self.prefix, self.names, self.done = prefix, list(names), set()

    def ok(self, name, detail=""):
        self.record(name, True, detail)

    def fail(self, name, detail):
        self.record(name, False, detail)
        raise Stop(f"{self.prefix}: {name}")

    def check(self, name, cond, detail):
        if cond:
            self.ok(name, detail)
        else:
            self.fail(name, detail)

    def record(self, name, ok, detail):
        assert name in self.names and name not in self.done, name
        self.done.add(name)
        result(f"{self.prefix}: {name}", ok, detail)

    def finish(self, why):
        for name in self.names:
            if name not in self.done:
                self.done.add(name)
                result(f"{self.prefix}: {name}", False, f"not reached ({why})")


def run(flow, fn, *args):
    try:
        fn(flow, *args)
    except Stop as e:
        flow.finish(str(e))
    except requests.RequestException as e:
        flow.finish(f"HTTP error: {type(e).__name__}: {e}")
    except Exception as e:  # a bug in the driver must not hide the other flows
        flow.finish(f"driver error: {type(e).__name__}: {e}")
    else:
        flow.finish("the flow ended early")


STEPS = [
    "authorize GET redirects to the login page",
    "the upstream's authorize URL carries the expected state",
    "login POST redirects back to authorize (re-entry)",
    "re-entry shows DOT's stock consent page",
    "consent POST redirects to redirect_uri with exactly state=S",
]
TOKEN_STEPS = [
    "token: wrong code_verifier is refused",
    "token: no code_verifier is refused",
    "token: right code_verifier gets an access token",
    "token: replay of the redeemed code is refused",
]


def overlap(page_url, form, click):
    """Which fields the stock form sends in both the query string and the body, and whether the
    copies are identical (what the proxy decides on)."""
    _, action, fields = submission(form, page_url, click=click)
    q = query(action)
    both = [n for n, _ in fields if n in q]
    same = all(q[n] == [v for k, v in fields if k == n] for n in both)
    return (f" [the stock form sends {len(both)} fields in both query and body"
            f" ({', '.join(both)}), {'all identical' if same else 'NOT all identical'}]") if both else ""


def authorize_to_redirect(flow, args, base, state, challenge, allow, through_proxy):
    """Runs the browser part of the flow; returns (final redirect URL, handle seen upstream)."""
    b = Browser()
    params = {"response_type": "code", "client_id": args.client_id, "redirect_uri": args.redirect_uri,
              "scope": "read", "state": state}
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    url = f"{base}/o/authorize/?{urlencode(params)}"

    # 1. Not signed in: DOT redirects to LOGIN_URL?next=<its own authorize URL>.
    r = b.get(url)
    login = location(r, flow, STEPS[0])
    nxt = query(login).get("next", [""])[0]
    flow.check(STEPS[0], urlsplit(login).path == "/accounts/login/" and nxt.startswith("/o/authorize/"),
               f"{r.status_code} -> {urlsplit(login).path}?next=/o/authorize/?…")

    # 2. What DOT saw: through the proxy, a handle in place of the client's state.
    upstream_q = query(nxt)
    seen = upstream_q.get("state", [])
    fwd = "code_challenge forwarded to DOT" if upstream_q.get("code_challenge") else "no code_challenge sent to DOT"
    if through_proxy:
        handle = seen[0] if len(seen) == 1 else ""
        flow.check(STEPS[1], handle != state and bool(HANDLE_RE.match(handle)),
                   f"proxy handle ({len(handle)} chars) in place of the client's state; {fwd}"
                   if handle != state else f"DOT saw the client's own state {seen!r}")
    else:
        handle = None
        flow.check(STEPS[1], seen == [state], f"DOT saw the client's own state; {fwd}")

    # 3. The sign-in form, then back to authorize.
    login_url = login
    r = b.get(login_url)
    if r.status_code != 200:
        flow.fail(STEPS[2], f"login page: {describe(r)}")
    forms = [f for f in parse_forms(r.text) if any(i.get("name") == "password" for i in f["inputs"])]
    if not forms:
        flow.fail(STEPS[2], f"no login form: {describe(r)}")
    if not hidden(forms[0]).get("csrfmiddlewaretoken"):
        flow.fail(STEPS[2], "no CSRF token in the login form")
    r = b.submit(login_url, forms[0], fill={"username": args.username, "password": args.password})
    back = location(r, flow, STEPS[2])
    flow.check(STEPS[2], urlsplit(back).path == "/o/authorize/" and query(back).get("state") == seen,
               f"{r.status_code} -> /o/authorize/ with state={'the handle' if through_proxy else 'S'}"
               if query(back).get("state") == seen else f"state changed: {describe(r)}")

    # 4. The re-entry: DOT's stock consent form, its hidden fields carrying the (handle) state.
    r = b.get(back, referer=login_url)
    if r.status_code != 200:
        flow.fail(STEPS[3], describe(r))
    forms = [f for f in parse_forms(r.text) if f["attrs"].get("id") == "authorizationForm"]
    if not forms:
        flow.fail(STEPS[3], f"no authorizationForm: {describe(r)}")
    form = forms[0]
    h = hidden(form)
    flow.check(STEPS[3], h.get("state") == seen[0] and bool(h.get("csrfmiddlewaretoken")),
               f"200, form action={form['attrs'].get('action', '(none: the page URL)')!r}, hidden: "
               + ", ".join(sorted(k for k in h if k != "csrfmiddlewaretoken")))

    # 5. Allow or Cancel: the stock form posts back to the authorize URL, query string included.
    r = b.submit(back, form, click="allow" if allow else "Cancel")
    final = location(r, flow, STEPS[4], overlap(back, form, click="allow" if allow else "Cancel"))
    body = r.text
    return final, handle, r, body


def check_final(flow, args, final, handle, resp, body, state, allow):
    q = query(final)
    base_ok = final.split("?", 1)[0] == args.redirect_uri
    leak = handle and (handle in final or handle in body)
    if allow:
        good = base_ok and len(q.get("code", [])) == 1 and q.get("state") == [state] and "error" not in q
        what = "code and state=S"
    else:
        good = base_ok and q.get("error") == ["access_denied"] and q.get("state") == [state] and "code" not in q
        what = "error=access_denied and state=S"
    if leak:
        flow.fail(STEPS[4], f"the proxy's handle reached the client: {describe(resp)}")
    flow.check(STEPS[4], good, f"{resp.status_code} -> redirect_uri with {what}" if good else
               f"expected {what}, got {describe(resp)}")
    return q.get("code", [None])[0]


def grant_challenge(args, code):
    """What DOT stored for this code: (challenge, method), or None if there is no such grant."""
    if not args.db:
        return "unknown"
    try:
        con = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT code_challenge, code_challenge_method FROM oauth2_provider_grant "
                              "WHERE code = ?", (code,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        return f"unknown ({e})"
    return row


def token(base, args, code, verifier):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": args.redirect_uri,
            "client_id": args.client_id}
    if verifier is not None:
        data["code_verifier"] = verifier
    r = requests.post(f"{base}/o/token/", data=data, headers={"Accept": "application/json"},
                      allow_redirects=False, timeout=TIMEOUT)
    try:
        j = r.json()
    except ValueError:
        j = {}
    return r, j if isinstance(j, dict) else {}


def dot_token_hits(args):
    """How many token requests reached DOT so far (from serve.py's access log), or None."""
    if not args.dot_log:
        return None
    with open(args.dot_log, errors="replace") as f:
        return sum(1 for line in f if line.startswith("POST /o/token/"))


def token_checks(flow, args, base, code, verifier, through_proxy):
    # Wrong and missing verifiers first: a refused attempt must not burn the code (a code that
    # was redeemed would be refused for reuse, which would prove nothing about verification).
    stored = grant_challenge(args, code)
    if isinstance(stored, tuple):
        dot_note = (f"DOT's grant has code_challenge ({stored[1]}): DOT verifies it too" if stored[0]
                    else "DOT's grant has no code_challenge: only the proxy verifies")
    else:
        dot_note = f"DOT's grant: {stored}"
    # Directly, DOT itself is the verifier (it checks a challenge it received even with
    # PKCE_REQUIRED=False): it answers invalid_request (oauthlib's MissingCodeVerifierError)
    # for a missing verifier. Through the proxy the answer is the proxy's: invalid_grant.
    accept_missing = ("invalid_grant",) if through_proxy else ("invalid_grant", "invalid_request")
    wrong = secret(base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode())
    # Through the proxy, a refusal must be the proxy's own: DOT, which got the challenge, would
    # refuse a wrong verifier too, so a proxy that forwarded it would still "pass" on the status
    # alone. DOT's access log tells whether the request reached it.
    def refused(name, v, accepted, note=""):
        before = dot_token_hits(args)
        r, j = token(base, args, code, v)
        after = dot_token_hits(args)
        ok = r.status_code == 400 and j.get("error") in accepted and "access_token" not in j
        if not ok:
            return flow.record(name, False, f"expected 400 {'/'.join(accepted)}: {describe(r)}")
        detail = f"400 {j.get('error')}: {j.get('error_description', '')}"
        if through_proxy and before is not None:
            if after != before:
                return flow.record(name, False, f"{detail}, but the proxy forwarded it: DOT refused it, not the proxy")
            detail += " (by the proxy: DOT never saw it)"
        flow.record(name, True, detail + note)

    refused(TOKEN_STEPS[0], wrong, ("invalid_grant",), f"; {dot_note}")
    refused(TOKEN_STEPS[1], None, accept_missing)
    r, j = token(base, args, code, verifier)
    secret(j.get("access_token"))
    secret(j.get("refresh_token"))
    flow.check(TOKEN_STEPS[2], r.status_code == 200 and bool(j.get("access_token")),
               f"200 token_type={j.get('token_type')} scope={j.get('scope')}" if r.status_code == 200
               else describe(r))
    refused(TOKEN_STEPS[3], verifier, ("invalid_grant",))


def allow_flow(flow, args, base, through_proxy):
    state = secret("S-" + secrets.token_urlsafe(12))
    verifier, challenge = pkce_pair()
    final, handle, resp, body = authorize_to_redirect(flow, args, base, state, challenge, True, through_proxy)
    code = secret(check_final(flow, args, final, handle, resp, body, state, True))
    token_checks(flow, args, base, code, verifier, through_proxy)


def deny_flow(flow, args, base, through_proxy):
    state = secret("S-" + secrets.token_urlsafe(12))
    _, challenge = pkce_pair()
    final, handle, resp, body = authorize_to_redirect(flow, args, base, state, challenge, False, through_proxy)
    check_final(flow, args, final, handle, resp, body, state, False)


def legacy_flow(flow, args, base):
    """Directly against DOT, no PKCE at all: DOT (PKCE_REQUIRED=False) must not require it."""
    state = secret("S-" + secrets.token_urlsafe(12))
    final, _, resp, body = authorize_to_redirect(flow, args, base, state, None, True, False)
    code = secret(check_final(flow, args, final, None, resp, body, state, True))
    stored = grant_challenge(args, code)
    r, j = token(base, args, code, None)
    secret(j.get("access_token"))
    secret(j.get("refresh_token"))
    flow.check("token without code_verifier gets an access token (DOT does not require PKCE)",
               r.status_code == 200 and bool(j.get("access_token")),
               f"200; DOT's grant code_challenge={stored[0]!r}" if r.status_code == 200 and isinstance(stored, tuple)
               else describe(r))


def proxy_requires_pkce(flow, args, base):
    """The proxy adds what DOT does not: an authorize request without a challenge is refused."""
    b = Browser()
    params = {"response_type": "code", "client_id": args.client_id, "redirect_uri": args.redirect_uri,
              "scope": "read", "state": "S-" + secrets.token_urlsafe(12)}
    r = b.get(f"{base}/o/authorize/?{urlencode(params)}")
    name = "authorize without code_challenge is refused by the proxy (not redirected anywhere)"
    flow.check(name, r.status_code == 400 and "Location" not in r.headers, describe(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--proxy", required=True, help="pkce-proxy in front of DOT, e.g. http://127.0.0.1:8080")
    ap.add_argument("--dot", required=True, help="DOT itself (the control), e.g. http://127.0.0.1:8000")
    ap.add_argument("--db", help="DOT's SQLite file, read-only (what DOT stored for a code)")
    ap.add_argument("--dot-log", help="serve.py's stderr (access log): tells which token requests reached DOT")
    ap.add_argument("--client-id", default="dot-public")
    ap.add_argument("--redirect-uri", default="http://127.0.0.1:9/cb")
    ap.add_argument("--username", default="alice")
    ap.add_argument("--password", default="alice-password")
    args = ap.parse_args()
    proxy, dot = args.proxy.rstrip("/"), args.dot.rstrip("/")

    run(Flow("direct allow", STEPS + TOKEN_STEPS), allow_flow, args, dot, False)
    run(Flow("direct legacy (no PKCE)", STEPS + [
        "token without code_verifier gets an access token (DOT does not require PKCE)"]), legacy_flow, args, dot)
    run(Flow("proxy allow", STEPS + TOKEN_STEPS), allow_flow, args, proxy, True)
    run(Flow("proxy deny", STEPS), deny_flow, args, proxy, True)
    run(Flow("proxy", ["authorize without code_challenge is refused by the proxy (not redirected anywhere)"]),
        proxy_requires_pkce, args, proxy)

    path = os.environ.get("DOT_INTEROP_SECRETS_FILE")
    if path:
        with open(path, "a") as f:
            for s in SECRETS:
                f.write(s + "\n")

    passed = sum(1 for _, ok, _ in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
