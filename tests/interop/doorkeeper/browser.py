#!/usr/bin/env python3
"""Drives a real Rails + Doorkeeper 5.5 deployment (dkapp/) as a browser and as real client
libraries do, through pkce-proxy and directly (the controls).

    browser.py --mode A|B --dk http://127.0.0.1:D --proxy http://127.0.0.1:P \
        --db DB.sqlite3 --request-log requests.jsonl [--exempt-proxy URL] \
        [--other-route-proxy URL | --other-route-error TEXT]

Mode A: the PKCE columns were never migrated, Doorkeeper ignores code_challenge. Mode B: they
were, so Doorkeeper stores a challenge it receives and verifies it itself (PKCE optional): a
refusal is the proxy's only if the request never reached Doorkeeper, which --request-log (one
JSON line per controller action, with the parameters Rails read; dkapp/lib/recorder.rb) tells.
--db (Doorkeeper's SQLite file, read only) tells whether a code was redeemed (revoked_at).

A browser is a `requests.Session` that scrapes each form (authenticity token and hidden inputs),
posts it as a browser would (with Origin and Referer) and follows every redirect by hand, so that
every response can be inspected: the proxy's handle (the `state` Doorkeeper sees) must never
reach the client, neither in a Location to the redirect URI nor in the "You are being
redirected" body Rails writes under a Location that does not carry it.

Prints `RESULT|doorkeeper-MODE|check|PASS/FAIL|detail` and a last line `N passed, N failed`;
exits 1 on any failure. Every check of a flow is printed: those a failed step did not reach FAIL
as "not reached".
"""
import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sqlite3
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

import requests  # noqa: E402

TIMEOUT = 10  # seconds, every HTTP request
CALLBACK = "http://127.0.0.1:9/cb"
PUBLIC, CONF, CONF_SECRET = "dk-public", "dk-conf", "dk-conf-secret"
USER, PASSWORD = "alice", "alice-password"
AUTHORIZE, TOKEN, TOKEN_INFO = "/oauth/authorize", "/oauth/token", "/oauth/token/info"
RESERVED_STATE = "a b&c=d/é+%"
HANDLE_RE = re.compile(r"[A-Za-z0-9_-]{22,}")  # >= 128 bits, base64url
REDIRECTS = (301, 302, 303, 307, 308)
BROWSER_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) pkce-proxy-interop-doorkeeper",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en",
}

SUITE = "doorkeeper"
RESULTS = []  # (check, ok)
SECRETS = set()  # values that must never appear in the proxy's logs


RESUBMIT = ("consent page posted again after the code was issued: no code, and only the state "
            "the browser posted comes back")


def result(check, ok, detail=""):
    detail = " ".join(str(detail).replace("|", "/").split())[:500]
    RESULTS.append((check, ok))
    print(f"RESULT|{SUITE}|{check}|{'PASS' if ok else 'FAIL'}|{detail}", flush=True)


def secret(value):
    if value and len(value) >= 8:
        SECRETS.add(value)
    return value


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_pair():
    verifier = secret(b64url(secrets.token_bytes(48)))
    return verifier, b64url(hashlib.sha256(verifier.encode()).digest())


def snippet(text, n=200):
    return " ".join(re.sub(r"<[^>]+>", " ", text or "").split())[:n]


def describe(resp):
    parts = [f"{resp.request.method} {urlsplit(resp.url).path} -> {resp.status_code}"]
    if resp.headers.get("Location"):
        parts.append(f"Location {resp.headers['Location'][:200]}")
    ctype = resp.headers.get("Content-Type", "")
    if ctype:
        parts.append(ctype.split(";")[0])
    body = snippet(resp.text)
    if body:
        parts.append(f"body: {body}")
    return "; ".join(parts)


def as_json(resp):
    try:
        j = resp.json()
    except ValueError:
        return {}
    return j if isinstance(j, dict) else {}


def query(url):
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


class Stop(Exception):
    """A step failed: the flow cannot go on."""


# ------------------------------------------------------------------------------------ Doorkeeper
class Upstream:
    """What Doorkeeper saw and stored: its request log (dkapp/lib/recorder.rb) and its database."""

    def __init__(self, base, db, request_log):
        self.base, self.db, self.request_log = base, db, request_log

    def records(self):
        with open(self.request_log, errors="replace") as f:
            return [json.loads(line) for line in f if line.strip()]

    def token_actions(self):
        return [r for r in self.records() if r.get("kind") == "action"
                and r.get("controller") == "Doorkeeper::TokensController" and r.get("action") == "create"]

    def token_hits(self):
        return len(self.token_actions())

    def read_code(self, code):
        """How many token requests Doorkeeper's controller ran with params[:code] == code."""
        return sum(1 for r in self.token_actions() if r.get("code") == code)

    def last_authorize_state(self):
        for r in reversed(self.records()):
            if r.get("kind") == "action" and r.get("controller") == "Doorkeeper::AuthorizationsController":
                return r.get("state")
        return None

    def grant(self, code):
        """{'revoked': bool, 'challenge': str|None|'(no column)'} for a code, or None."""
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            cols = [r[1] for r in con.execute("PRAGMA table_info(oauth_access_grants)")]
            has = "code_challenge" in cols
            row = con.execute(
                "SELECT revoked_at" + (", code_challenge" if has else "") +
                " FROM oauth_access_grants WHERE token = ?", (code,)).fetchone()
        finally:
            con.close()
        if row is None:
            return None
        return {"revoked": row[0] is not None, "challenge": row[1] if has else "(no column)"}

    def redeemed(self, code):
        g = self.grant(code)
        return bool(g and g["revoked"])


# ------------------------------------------------------------------------------------ HTML forms
class FormParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms, self._form = [], None

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


def hidden(form):
    return {i.get("name"): i.get("value", "") for i in form["inputs"] if i.get("type", "").lower() == "hidden"}


def submit_values(form):
    return [i.get("value", "") for i in form["inputs"] if i.get("type", "").lower() == "submit"]


def submission(form, page_url, fill=None, click=None):
    """What a browser sends for `form`: (method, action URL, fields in document order); `click`
    is the value of the submit button pressed (its name=value is sent, as a browser does)."""
    fill = fill or {}
    fields, clicked = [], False
    for inp in form["inputs"]:
        name, typ = inp.get("name", ""), inp.get("type", "text").lower()
        if typ in ("submit", "image", "button", "reset"):
            if not clicked and click is not None and click == inp.get("value"):
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
    action = urljoin(page_url, form["attrs"].get("action") or page_url)
    return form["attrs"].get("method", "get").lower(), action, fields


# ------------------------------------------------------------------------------------ the browser
class Browser:
    """A browser: cookies, every response kept (history) for the handle checks."""

    def __init__(self):
        self.s = requests.Session()
        self.s.headers.update(BROWSER_HEADERS)
        self.history = []

    def get(self, url, referer=None):
        headers = {"Referer": referer} if referer else {}
        r = self.s.get(url, headers=headers, allow_redirects=False, timeout=TIMEOUT)
        self.history.append(r)
        return r

    def submit(self, page_url, form, fill=None, click=None):
        method, action, fields = submission(form, page_url, fill, click)
        o = urlsplit(page_url)
        headers = {"Origin": f"{o.scheme}://{o.netloc}", "Referer": page_url}
        if method == "post":
            r = self.s.post(action, data=fields, headers=headers, allow_redirects=False, timeout=TIMEOUT)
        else:
            sep = "&" if urlsplit(action).query else "?"
            r = self.s.get(action + sep + urlencode(fields), headers=headers, allow_redirects=False,
                           timeout=TIMEOUT)
        self.history.append(r)
        return r


def login_form(resp):
    forms = [f for f in parse_forms(resp.text) if any(i.get("name") == "password" for i in f["inputs"])]
    return forms[0] if forms else None


def consent_form(resp, click):
    """Doorkeeper's stock consent page has two forms to /oauth/authorize: Authorize (POST) and
    Deny (POST with _method=delete)."""
    for f in parse_forms(resp.text):
        if urlsplit(f["attrs"].get("action", "")).path == AUTHORIZE and click in submit_values(f):
            return f
    return None


def browse(b, url, click="Authorize", hops=12):
    """Follows an authorization URL as a user would (sign in, press `click` on the consent page)
    until a redirect to the callback; returns (that response, its absolute Location)."""
    r = b.get(url)
    for _ in range(hops):
        if r.status_code in REDIRECTS and r.headers.get("Location"):
            target = urljoin(r.url, r.headers["Location"])
            if target.startswith(CALLBACK):
                return r, target
            r = b.get(target, referer=r.url)
            continue
        if r.status_code == 200 and login_form(r):
            r = b.submit(r.url, login_form(r), fill={"username": USER, "password": PASSWORD})
            continue
        if r.status_code == 200 and consent_form(r, click):
            r = b.submit(r.url, consent_form(r, click), click=click)
            continue
        raise Stop(f"browse: {describe(r)}")
    raise Stop("browse: too many steps")


def handle_in_history(b, proxy):
    """The state the upstream saw: the proxy's handle, as it appears in a Location back to the
    authorize endpoint (the sign-in redirect)."""
    for r in b.history:
        loc = r.headers.get("Location", "")
        if r.url.startswith(proxy) and urlsplit(loc).path == AUTHORIZE:
            got = query(urljoin(r.url, loc)).get("state", [])
            if len(got) == 1:
                return got[0]
    return None


def around(text, handle, n=70):
    """Where the handle sits in a text, the handle itself shown as <HANDLE>."""
    i = text.find(handle)
    part = text[max(0, i - n):i + len(handle) + 20].replace(handle, "<HANDLE>")
    return " ".join(re.sub(r"code=[^&\"]+", "code=…", part).split())


def leaks(b, handle, proxy):
    """Responses through the proxy that hand the handle to the client: a redirect to the
    callback carrying it anywhere, or a redirect body carrying it under a Location without it."""
    out = []
    if not handle:
        return out
    for r in b.history:
        if not r.url.startswith(proxy):
            continue
        loc = urljoin(r.url, r.headers.get("Location", ""))
        if loc.startswith(CALLBACK) and handle in loc:
            out.append(f"{r.status_code} to the callback, Location carries the handle: {around(loc, handle)}")
        elif loc.startswith(CALLBACK) and handle in r.text:
            out.append(f"{r.status_code} to the callback (Location clean), its body carries the handle: "
                       f"...{around(r.text, handle)}")
        elif r.status_code in REDIRECTS and handle in r.text and handle not in loc:
            out.append(f"{r.status_code} body carries the handle, its Location does not: ...{around(r.text, handle)}")
    return out


def leak_check(flow, name, b, handle, proxy):
    """Recorded, never stops the flow: the token checks still run."""
    found = leaks(b, handle, proxy)
    flow.record(name, not found, "; ".join(found) if found else
                f"{len(b.history)} responses checked (Location and body of every redirect)")


# ------------------------------------------------------------------------------------ flows
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
        (self.ok if cond else self.fail)(name, detail)

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
    except Exception as e:  # noqa: BLE001 - a driver bug must not hide the other flows
        flow.finish(f"driver error: {type(e).__name__}: {e}")
    else:
        flow.finish("the flow ended early")


S_LOGIN = "authorize GET redirects to the sign-in page"
S_BACK = "sign-in POST redirects back to authorize"
S_CONSENT = "re-entry shows Doorkeeper's stock consent page"
S_FINAL = "consent {} redirects to redirect_uri with {}"
S_LEAK = "no response hands the proxy's handle to the client"


def steps(click, state, through_proxy):
    what = ("code and exactly the client's state" if click == "Authorize" else
            "error=access_denied and exactly the client's state")
    if state is None:
        what = what.replace("exactly the client's state", "no state")
    names = [S_LOGIN, S_BACK, S_CONSENT, S_FINAL.format(click.upper(), what)]
    return names + ([S_LEAK] if through_proxy else [])


def strip_challenge(form, how):
    """The consent form as a template that predates PKCE would write it: without the challenge
    fields ("absent"), or with them empty ("empty")."""
    inputs = []
    for i in form["inputs"]:
        if i.get("name") in ("code_challenge", "code_challenge_method"):
            if how == "absent":
                continue
            i = {**i, "value": ""}
        inputs.append(i)
    return {**form, "inputs": inputs}


def authorize_steps(flow, ctx, base, through_proxy, state, challenge, click="Authorize", client=PUBLIC,
                    consent_challenge=None):
    """The browser part of a flow, step by step. Returns (browser, callback URL, handle, consent
    page URL, consent form). consent_challenge="absent"/"empty" changes the consent form's
    challenge fields before it is posted (a pre-PKCE consent template)."""
    b = Browser()
    params = {"response_type": "code", "client_id": client, "redirect_uri": CALLBACK, "scope": "read"}
    if state is not None:
        params["state"] = state
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    names = steps(click, state, through_proxy)

    r = b.get(f"{base}{AUTHORIZE}?{urlencode(params)}")
    login = urljoin(r.url, r.headers.get("Location", ""))
    flow.check(names[0], r.status_code in REDIRECTS and urlsplit(login).path == "/login", describe(r))

    r = b.get(login)
    form = login_form(r) if r.status_code == 200 else None
    if not form or not hidden(form).get("authenticity_token"):
        flow.fail(names[1], f"no sign-in form with an authenticity token: {describe(r)}")
    r = b.submit(login, form, fill={"username": USER, "password": PASSWORD})
    back = urljoin(r.url, r.headers.get("Location", ""))
    seen = query(back).get("state", [])
    logged = ctx.up.last_authorize_state()
    if r.status_code not in REDIRECTS or urlsplit(back).path != AUTHORIZE:
        flow.fail(names[1], describe(r))
    if through_proxy:
        handle = seen[0] if len(seen) == 1 else ""
        good = bool(HANDLE_RE.fullmatch(handle)) and handle != state and logged == handle
        flow.check(names[1], good,
                   f"{r.status_code} -> {AUTHORIZE} with the proxy's handle as state ({len(handle)} chars, "
                   f"the state in Doorkeeper's log too)" if good else
                   f"state seen upstream {seen!r}, in Doorkeeper's log {logged!r}, client's {state!r}")
    else:
        handle = None
        want = [] if state is None else [state]
        flow.check(names[1], seen == want, f"{r.status_code} -> {AUTHORIZE}, state {seen!r}")

    r = b.get(back, referer=login)
    form = consent_form(r, click) if r.status_code == 200 else None
    if not form:
        flow.fail(names[2], f"no consent form with {click!r}: {describe(r)}")
    h = hidden(form)
    cc = ("absent" if "code_challenge" not in h else "empty" if not h["code_challenge"] else
          "the forwarded challenge" if h["code_challenge"] == challenge else f"{h['code_challenge']!r}")
    flow.check(names[2], h.get("state") == (seen[0] if seen else "") and bool(h.get("authenticity_token")),
               f"200, form POST {form['attrs'].get('action')}; hidden state = "
               f"{'the handle' if through_proxy else 'S'}; code_challenge field: {cc}; "
               f"fields: {', '.join(n for n in h if n != 'authenticity_token')}"
               + (f"; the browser posts it with the challenge fields {consent_challenge}" if consent_challenge else ""))
    consent_url = back
    if consent_challenge:
        form = strip_challenge(form, consent_challenge)

    r = b.submit(consent_url, form, click=click)
    final = urljoin(r.url, r.headers.get("Location", ""))
    q = query(final)
    if r.status_code not in REDIRECTS or not final.startswith(CALLBACK + "?"):
        flow.fail(names[3], describe(r))
    want_state = [] if state is None else [state]
    if click == "Authorize":
        good = len(q.get("code", [])) == 1 and "error" not in q
    else:
        good = q.get("error") == ["access_denied"] and "code" not in q
    good = good and q.get("state", []) == want_state
    shown = ", ".join(f"{k}={'…' if k == 'code' else repr(v[0])}" for k, v in q.items()
                      if k != "error_description")
    flow.check(names[3], good, f"{r.status_code} -> redirect_uri with {shown}" if good else
               f"client state {state!r}; got {describe(r)}")
    for v in q.get("code", []):
        secret(v)
    if through_proxy:
        leak_check(flow, names[4], b, handle, ctx.proxy)
    return b, final, handle, consent_url, form


def tok_desc(r, j):
    if r.status_code == 200 and j.get("access_token"):
        return f"200 {j.get('token_type')} scope={j.get('scope')}"
    if j.get("error"):
        return f"{r.status_code} {j.get('error')}: {j.get('error_description', '')!r}"
    return describe(r)


def token(base, code, verifier, client=PUBLIC, auth=None):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    if auth is None:
        data["client_id"] = client
    if verifier is not None:
        data["code_verifier"] = verifier
    r = requests.post(f"{base}{TOKEN}", data=data, auth=auth, headers={"Accept": "application/json"},
                      allow_redirects=False, timeout=TIMEOUT)
    j = as_json(r)
    secret(j.get("access_token"))
    secret(j.get("refresh_token"))
    return r, j


TOKEN_STEPS = [
    "token: wrong code_verifier refused by the proxy (never reaches Doorkeeper)",
    "token: no code_verifier refused by the proxy (never reaches Doorkeeper)",
    "token: right code_verifier gets an access token",
    "token: replay refused by the proxy",
]


def proxy_token_checks(flow, ctx, code, verifier):
    g = ctx.up.grant(code)
    stored = ("no grant in Doorkeeper's DB" if g is None else
              "Doorkeeper has no PKCE columns" if g["challenge"] == "(no column)" else
              "Doorkeeper stored the challenge (it verifies too)" if g["challenge"] else
              "Doorkeeper stored no challenge")

    def refused(name, v, note=""):
        before = ctx.up.token_hits()
        r, j = token(ctx.proxy, code, v)
        reached = ctx.up.token_hits() - before
        ok = r.status_code == 400 and j.get("error") == "invalid_grant" and not reached
        flow.record(name, ok, f"{tok_desc(r, j)}; token requests reaching Doorkeeper: {reached}{note}")

    refused(TOKEN_STEPS[0], secret(b64url(secrets.token_bytes(48))), f"; {stored}")
    refused(TOKEN_STEPS[1], None)
    before = ctx.up.token_hits()
    r, j = token(ctx.proxy, code, verifier)
    reached = ctx.up.token_hits() - before
    ok = r.status_code == 200 and bool(j.get("access_token")) and ctx.up.redeemed(code)
    flow.check(TOKEN_STEPS[2], ok, f"200 {j.get('token_type')} scope={j.get('scope')}; reached Doorkeeper {reached}x; "
               f"grant revoked in the DB" if ok else describe(r))
    ctx.bearer = ctx.bearer or j.get("access_token")
    refused(TOKEN_STEPS[3], verifier)


def proxy_flow(flow, ctx, state, click="Authorize", resubmit=False, consent_challenge=None):
    verifier, challenge = pkce_pair()
    secret(state)
    b, final, handle, consent_url, _ = authorize_steps(flow, ctx, ctx.proxy, True, state, challenge, click,
                                                       consent_challenge=consent_challenge)
    secret(handle)
    if click != "Authorize":
        return
    code = query(final)["code"][0]
    proxy_token_checks(flow, ctx, code, verifier)
    if resubmit:
        # The consent page is still open (back button, a second tab): its Deny form, with the
        # now consumed handle as `state`, is posted again.
        name = RESUBMIT
        r0 = b.get(consent_url)
        form = consent_form(r0, "Deny") if r0.status_code == 200 else None
        if form is None:
            r = r0
        else:
            r = b.submit(consent_url, form, click="Deny")
        loc = urljoin(r.url, r.headers.get("Location", ""))
        # The spent handle is no longer a flow's: the proxy takes the browser's `state` for a
        # client's own and starts a new flow with it, so what comes back is exactly the state
        # the browser posted (README, "Limits today"). What must hold: no code comes of it,
        # and no live handle (another flow's) reaches the client.
        got = query(loc)
        states = got.get("state", [])
        bad = "code" in got or any(st != handle for st in states) or (
            r.text and handle in r.text)
        flow.check(name, not bad, describe(r).replace(handle, "<HANDLE>")
                   + ("" if form else " (the consent page was not shown again)"))


def direct_flow(flow, ctx, with_challenge, click="Authorize"):
    """Doorkeeper alone: the mode's control."""
    state = secret("S-" + secrets.token_urlsafe(12))
    verifier, challenge = pkce_pair() if with_challenge else (None, None)
    _, final, _, _, _ = authorize_steps(flow, ctx, ctx.dk, False, state, challenge, click)
    if click != "Authorize":
        return
    code = query(final)["code"][0]
    g = ctx.up.grant(code)
    if ctx.mode == "A":
        flow.check("Doorkeeper stored no challenge (no PKCE columns)", g and g["challenge"] == "(no column)", str(g))
        r, j = token(ctx.dk, code, None)
        flow.check("token WITHOUT code_verifier gets an access token (Doorkeeper ignores code_challenge)",
                   r.status_code == 200 and bool(j.get("access_token")), tok_desc(r, j))
    elif with_challenge:
        flow.check("Doorkeeper stored the challenge", g and g["challenge"] == challenge, str(g))
        r, j = token(ctx.dk, code, None)
        flow.check("token without code_verifier refused by Doorkeeper itself",
                   r.status_code == 400 and "access_token" not in j, tok_desc(r, j))
        r, j = token(ctx.dk, code, b64url(secrets.token_bytes(48)))
        flow.check("token with a wrong code_verifier refused by Doorkeeper itself",
                   r.status_code == 400 and "access_token" not in j, tok_desc(r, j))
        r, j = token(ctx.dk, code, verifier)
        flow.check("token with the right code_verifier gets an access token",
                   r.status_code == 200 and bool(j.get("access_token")), tok_desc(r, j))
    else:
        r, j = token(ctx.dk, code, None)
        flow.check("token without code_verifier gets an access token (PKCE optional)",
                   r.status_code == 200 and bool(j.get("access_token")), tok_desc(r, j))


# ------------------------------------------------------------------------------------ libraries
def authlib_flow(flow, ctx):
    from authlib.common.security import generate_token
    from authlib.integrations.requests_client import OAuth2Session

    client = OAuth2Session(client_id=PUBLIC, redirect_uri=CALLBACK, scope="read",
                           code_challenge_method="S256", token_endpoint_auth_method="none")
    verifier = secret(generate_token(64))
    state = secret("authlib-" + secrets.token_urlsafe(12))
    url, state = client.create_authorization_url(ctx.proxy + AUTHORIZE, state=state, code_verifier=verifier)
    b = Browser()
    _, cb = browse(b, url)
    got = query(cb)
    handle = secret(handle_in_history(b, ctx.proxy))
    flow.check("authorize (S256) -> sign-in -> consent -> callback with exactly the client's state",
               got.get("state") == [state] and len(got.get("code", [])) == 1,
               f"state {got.get('state')!r}; handle seen upstream: {bool(handle)}")
    leak_check(flow, S_LEAK, b, handle, ctx.proxy)
    secret(got["code"][0])
    before = ctx.up.token_hits()
    tok = client.fetch_token(ctx.proxy + TOKEN, authorization_response=cb, code_verifier=verifier, state=state)
    secret(tok.get("access_token"))
    secret(tok.get("refresh_token"))
    flow.check("fetch_token with code_verifier", bool(tok.get("access_token")),
               f"token_type={tok.get('token_type')} scope={tok.get('scope')}; "
               f"reached Doorkeeper {ctx.up.token_hits() - before}x")
    ctx.bearer = ctx.bearer or tok.get("access_token")
    new = client.refresh_token(ctx.proxy + TOKEN)
    secret(new.get("access_token"))
    secret(new.get("refresh_token"))
    flow.check("refresh_token grant through the proxy", bool(new.get("access_token"))
               and new.get("access_token") != tok.get("access_token"), f"new token_type={new.get('token_type')}")


def oauthlib_flow(flow, ctx):
    from requests_oauthlib import OAuth2Session

    oauth = OAuth2Session(CONF, redirect_uri=CALLBACK, scope=["read"], pkce="S256")
    url, state = oauth.authorization_url(ctx.proxy + AUTHORIZE)
    secret(state)
    b = Browser()
    _, cb = browse(b, url)
    got = query(cb)
    handle = secret(handle_in_history(b, ctx.proxy))
    flow.check("confidential client: authorize (pkce=S256) -> callback with exactly the client's state",
               got.get("state") == [state] and len(got.get("code", [])) == 1 and "code_challenge_method=S256" in url,
               f"state round-tripped; S256 challenge in the URL; handle seen upstream: {bool(handle)}")
    leak_check(flow, S_LEAK, b, handle, ctx.proxy)
    secret(got["code"][0])
    tok = oauth.fetch_token(ctx.proxy + TOKEN, authorization_response=cb, client_secret=CONF_SECRET)
    secret(tok.get("access_token"))
    secret(tok.get("refresh_token"))
    flow.check("fetch_token (client_secret_basic + code_verifier)", bool(tok.get("access_token")),
               f"token_type={tok.get('token_type')}")


# ------------------------------------------------------------------------------------ single checks
def check(name, fn, *args):
    try:
        ok, detail = fn(*args)
    except Stop as e:
        ok, detail = False, str(e)
    except Exception as e:  # noqa: BLE001
        ok, detail = False, f"{type(e).__name__}: {e}"
    result(name, ok, detail)


def authorize_without_challenge(ctx):
    b = Browser()
    params = {"response_type": "code", "client_id": PUBLIC, "redirect_uri": CALLBACK, "scope": "read",
              "state": "S-" + secrets.token_urlsafe(8)}
    r = b.get(f"{ctx.proxy}{AUTHORIZE}?{urlencode(params)}")
    return r.status_code == 400 and "Location" not in r.headers, describe(r)


def bearer_token(ctx):
    """An access token (from a flow through the proxy), for /oauth/token/info."""
    if not ctx.bearer:
        b = Browser()
        verifier, challenge = pkce_pair()
        params = {"response_type": "code", "client_id": PUBLIC, "redirect_uri": CALLBACK, "scope": "read",
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        _, cb = browse(b, f"{ctx.proxy}{AUTHORIZE}?{urlencode(params)}")
        _, j = token(ctx.proxy, query(cb)["code"][0], verifier)
        ctx.bearer = j.get("access_token")
    if not ctx.bearer:
        raise Stop("no access token from a flow through the proxy")
    return ctx.bearer


def token_info(base, bearer):
    r = requests.get(base + TOKEN_INFO, headers={"Authorization": f"Bearer {bearer}",
                                                 "Accept": "application/json"},
                     allow_redirects=False, timeout=TIMEOUT)
    return r, as_json(r)


def token_info_direct(ctx):
    r, j = token_info(ctx.dk, bearer_token(ctx))
    return r.status_code == 200 and j.get("application", {}).get("uid") == PUBLIC, describe(r)


def token_info_default_proxy(ctx):
    bearer = bearer_token(ctx)
    before = len([x for x in ctx.up.records() if x.get("path") == TOKEN_INFO])
    r, j = token_info(ctx.proxy, bearer)
    reached = len([x for x in ctx.up.records() if x.get("path") == TOKEN_INFO]) - before
    ok = 400 <= r.status_code < 500 and not reached
    return ok, f"{r.status_code} {j.get('error')} {j.get('error_description', '')!r}; reached Doorkeeper: {reached} " \
               f"(README: routes under an endpoint's path are refused)" if j else describe(r)


def token_info_other_route(ctx, proxy, error):
    if not proxy:
        return False, f"no proxy with --other-route {TOKEN_INFO}: {error}"
    r, j = token_info(proxy, bearer_token(ctx))
    ok = r.status_code == 200 and j.get("application", {}).get("uid") == PUBLIC
    return ok, f"200 {json.dumps(j)[:160]}" if ok else describe(r)


def other_route_keeps_token_endpoint(ctx, proxy, error):
    if not proxy:
        return False, f"no proxy with --other-route {TOKEN_INFO}: {error}"
    b = Browser()
    verifier, challenge = pkce_pair()
    params = {"response_type": "code", "client_id": PUBLIC, "redirect_uri": CALLBACK, "scope": "read",
              "code_challenge": challenge, "code_challenge_method": "S256"}
    _, cb = browse(b, f"{proxy}{AUTHORIZE}?{urlencode(params)}")
    code = secret(query(cb)["code"][0])
    before = ctx.up.read_code(code)
    r, j = token(proxy, code, None)
    read = ctx.up.read_code(code) - before
    ok = r.status_code == 400 and j.get("error") == "invalid_grant" and not read
    return ok, f"{r.status_code} {j.get('error')}; Doorkeeper read the code {read}x"


def exempt_flow(flow, ctx):
    """--exempt-client dk-conf: the confidential client without PKCE; a downgrade refused."""
    from requests.auth import HTTPBasicAuth
    from requests_oauthlib import OAuth2Session

    oauth = OAuth2Session(CONF, redirect_uri=CALLBACK, scope=["read"])
    url, state = oauth.authorization_url(ctx.exempt + AUTHORIZE)
    secret(state)
    _, cb = browse(Browser(), url)
    flow.check("exempt confidential client without PKCE: callback with its state",
               query(cb).get("state") == [state], cb[:120])
    tok = oauth.fetch_token(ctx.exempt + TOKEN, authorization_response=cb, client_secret=CONF_SECRET)
    secret(tok.get("access_token"))
    flow.check("exempt confidential client without PKCE: token", bool(tok.get("access_token")),
               f"token_type={tok.get('token_type')}")
    verifier, challenge = pkce_pair()
    params = {"response_type": "code", "client_id": CONF, "redirect_uri": CALLBACK, "scope": "read",
              "state": "S-" + secrets.token_urlsafe(8), "code_challenge": challenge,
              "code_challenge_method": "S256"}
    _, cb = browse(Browser(), f"{ctx.exempt}{AUTHORIZE}?{urlencode(params)}")
    code = secret(query(cb)["code"][0])
    before = ctx.up.token_hits()
    r, j = token(ctx.exempt, code, None, auth=HTTPBasicAuth(CONF, CONF_SECRET))
    reached = ctx.up.token_hits() - before
    flow.check("exempt client, PKCE downgrade (challenge sent, verifier dropped) refused by the proxy",
               r.status_code == 400 and j.get("error") == "invalid_grant" and not reached,
               f"{r.status_code} {j.get('error')} {j.get('error_description', '')!r}; reached Doorkeeper: {reached}")


# ------------------------------------------------------------------------------------ main
class Ctx:
    def __init__(self, a):
        self.mode, self.dk, self.proxy = a.mode, a.dk.rstrip("/"), a.proxy.rstrip("/")
        self.exempt = a.exempt_proxy.rstrip("/") if a.exempt_proxy else None
        self.up = Upstream(self.dk, a.db, a.request_log)
        self.bearer = None


def main():
    global SUITE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", required=True, choices=("A", "B"))
    ap.add_argument("--dk", required=True, help="Doorkeeper itself")
    ap.add_argument("--proxy", required=True, help="pkce-proxy in front of it")
    ap.add_argument("--db", required=True)
    ap.add_argument("--request-log", required=True)
    ap.add_argument("--exempt-proxy", help="a pkce-proxy with --exempt-client dk-conf")
    ap.add_argument("--other-route-proxy", help=f"a pkce-proxy with --other-route {TOKEN_INFO}")
    ap.add_argument("--other-route-error", default="not started", help="why there is none")
    a = ap.parse_args()
    SUITE = f"doorkeeper-{a.mode}"
    ctx = Ctx(a)

    d = "direct (Doorkeeper alone)"
    run(Flow(f"{d} allow with a challenge", steps("Authorize", "S", False) + (
        ["Doorkeeper stored no challenge (no PKCE columns)",
         "token WITHOUT code_verifier gets an access token (Doorkeeper ignores code_challenge)"] if a.mode == "A" else
        ["Doorkeeper stored the challenge", "token without code_verifier refused by Doorkeeper itself",
         "token with a wrong code_verifier refused by Doorkeeper itself",
         "token with the right code_verifier gets an access token"])), direct_flow, ctx, True)
    if a.mode == "B":
        run(Flow(f"{d} allow without a challenge", steps("Authorize", "S", False) + [
            "token without code_verifier gets an access token (PKCE optional)"]), direct_flow, ctx, False)
    run(Flow(f"{d} deny", steps("Deny", "S", False)), direct_flow, ctx, True, "Deny")

    p = "proxy"
    resubmit = RESUBMIT
    run(Flow(f"{p} allow", steps("Authorize", "S", True) + TOKEN_STEPS + [resubmit]), proxy_flow, ctx,
        "S-" + secrets.token_urlsafe(12), "Authorize", True)
    run(Flow(f"{p} deny", steps("Deny", "S", True)), proxy_flow, ctx, "S-" + secrets.token_urlsafe(12), "Deny")
    run(Flow(f"{p} no state", steps("Authorize", None, True) + TOKEN_STEPS), proxy_flow, ctx, None)
    run(Flow(f"{p} state {RESERVED_STATE!r}", steps("Authorize", RESERVED_STATE, True) + TOKEN_STEPS),
        proxy_flow, ctx, RESERVED_STATE)
    for how in ("absent", "empty"):
        # Doorkeeper 5.5's stock form repeats the challenge; older templates did not. Such a
        # template goes with mode A only: with Doorkeeper's own PKCE on (B), the code it then
        # issues carries no challenge and Doorkeeper refuses every verifier for it, proxy or
        # not (it refuses the PKCE downgrade itself).
        if a.mode == "A":
            run(Flow(f"{p} allow, consent form with the challenge fields {how} (pre-PKCE template)",
                     steps("Authorize", "S", True) + TOKEN_STEPS), proxy_flow, ctx,
                "S-" + secrets.token_urlsafe(12), "Authorize", False, how)
        run(Flow(f"{p} deny, consent form with the challenge fields {how} (pre-PKCE template)",
                 steps("Deny", "S", True)), proxy_flow, ctx, "S-" + secrets.token_urlsafe(12), "Deny", False, how)
    check(f"{p}: authorize without code_challenge refused (400, no redirect)", authorize_without_challenge, ctx)

    run(Flow("Authlib OAuth2Session (public, S256)", [
        "authorize (S256) -> sign-in -> consent -> callback with exactly the client's state", S_LEAK,
        "fetch_token with code_verifier", "refresh_token grant through the proxy"]), authlib_flow, ctx)
    run(Flow("requests-oauthlib (confidential, pkce=S256)", [
        "confidential client: authorize (pkce=S256) -> callback with exactly the client's state", S_LEAK,
        "fetch_token (client_secret_basic + code_verifier)"]), oauthlib_flow, ctx)

    if ctx.exempt:
        run(Flow("exempt proxy (--exempt-client dk-conf)", [
            "exempt confidential client without PKCE: callback with its state",
            "exempt confidential client without PKCE: token",
            "exempt client, PKCE downgrade (challenge sent, verifier dropped) refused by the proxy"]),
            exempt_flow, ctx)

    check(f"direct: GET {TOKEN_INFO} with a bearer token -> 200", token_info_direct, ctx)
    check(f"proxy (no --other-route): GET {TOKEN_INFO} refused, never reaches Doorkeeper",
          token_info_default_proxy, ctx)
    check(f"proxy --other-route {TOKEN_INFO}: GET with a bearer token -> 200 token info",
          token_info_other_route, ctx, a.other_route_proxy, a.other_route_error)
    check(f"proxy --other-route {TOKEN_INFO}: {TOKEN} still needs the verifier",
          other_route_keeps_token_endpoint, ctx, a.other_route_proxy, a.other_route_error)

    path = os.environ.get("DK_SECRETS_FILE")
    if path:
        with open(path, "a") as f:
            f.write("".join(s + "\n" for s in sorted(SECRETS) if "\n" not in s))
    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
