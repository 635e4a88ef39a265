"""Python client driver: real OAuth client libraries, through pkce-proxy, against the
Authlib legacy server (legacy_server.py).

Clients: Authlib `OAuth2Session` (public client, S256) and requests-oauthlib `OAuth2Session`
(confidential client, client_secret_basic, pkce="S256"). Attacks are raw HTTP requests so the
exact request and response can be reported.

Every check prints one line:  RESULT|<suite>|<check>|PASS or FAIL|<detail>
Exit status: 0 if every check passed, 1 otherwise.

Usage: python driver.py --proxy URL --legacy URL [--exempt-proxy URL]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import re
import secrets
import sys
import traceback
from urllib.parse import parse_qs, urlencode, urljoin, urlparse

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")

import requests  # noqa: E402
from authlib.common.security import generate_token  # noqa: E402
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession  # noqa: E402
from requests.auth import HTTPBasicAuth  # noqa: E402
from requests_oauthlib import OAuth2Session as RoSession  # noqa: E402

CALLBACK = "http://127.0.0.1:9/callback"
USER, PASSWORD = "alice", "wonderland"
TIMEOUT = 10

RESULTS: list[tuple[str, str, bool, str]] = []

# ---------------------------------------------------------------- secrets seen on the wire
# Every code, verifier, token, client state and secret that crosses the wire is remembered, so
# run.sh can check that none of them appears in the proxy's logs.
SECRET_KEYS = {"code", "code_verifier", "state", "access_token", "refresh_token",
               "client_secret"}
SECRETS: set[str] = set()


def _remember_pairs(pairs):
    for key, values in pairs.items():
        if key in SECRET_KEYS:
            SECRETS.update(v for v in values if len(v) >= 8)


_original_send = requests.Session.send


def _recording_send(self, request, **kwargs):
    _remember_pairs(parse_qs(urlparse(request.url).query))
    body = request.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        _remember_pairs(parse_qs(body))
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        SECRETS.add(base64.b64decode(auth[6:]).decode().partition(":")[2])
    elif auth.startswith("Bearer "):
        SECRETS.add(auth[7:])
    resp = _original_send(self, request, **kwargs)
    if "Location" in resp.headers:
        _remember_pairs(parse_qs(urlparse(resp.headers["Location"]).query))
    if resp.headers.get("Content-Type", "").startswith("application/json"):
        try:
            data = resp.json()
            if isinstance(data, dict):
                _remember_pairs({k: [v] for k, v in data.items() if isinstance(v, str)})
        except ValueError:
            pass
    return resp


requests.Session.send = _recording_send


def record(suite, check, ok, detail="", word=None):
    RESULTS.append((suite, check, ok, detail))
    detail = detail.replace("|", "/").replace("\n", " ")[:300]
    word = word or ("PASS" if ok else "FAIL")
    print(f"RESULT|{suite}|{check}|{word}|{detail}", flush=True)


class CheckFailed(Exception):
    pass


class KnownIssue(Exception):
    """A reproduced, reported divergence between the proxy and a real library: shown as
    KNOWN, not counted as a failure. If the behaviour changes, the check passes or fails."""


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def check(suite, name):
    """Decorator: run the function as one check; an exception is a FAIL with its message."""

    def wrap(fn):
        try:
            detail = fn() or ""
            record(suite, name, True, detail)
        except CheckFailed as e:
            record(suite, name, False, str(e))
        except KnownIssue as e:
            record(suite, name, True, str(e), word="KNOWN")
        except Exception as e:  # a library raised: report it as it is
            record(suite, name, False, f"{type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stderr)
        return fn

    return wrap


def show(resp: requests.Response) -> str:
    """One-line description of a response, for reports."""
    body = resp.text[:200].replace("\n", " ")
    loc = resp.headers.get("Location")
    return f"{resp.status_code} {resp.headers.get('Content-Type', '-')}" + (
        f" Location={loc}" if loc else ""
    ) + f" body={body}"


# ---------------------------------------------------------------- the "browser"


class BrowseRefused(Exception):
    def __init__(self, resp):
        super().__init__(show(resp))
        self.resp = resp


def browse(browser: requests.Session, url: str, redirect_uri: str = CALLBACK, hops: int = 10,
           headers=None, consent: str = "yes") -> str:
    """Follow an authorization URL as a browser would: redirects, the sign-in form (with a
    cookie), the consent form (answering `consent`), until a redirect to `redirect_uri`.
    Returns that callback URL unchanged."""
    for _ in range(hops):
        resp = browser.get(url, allow_redirects=False, timeout=TIMEOUT, headers=headers)
        while resp.status_code == 200 and 'name="confirm"' in resp.text:
            m = re.search(r'<form method="post" action="([^"]*)"', resp.text)
            expect(m, f"consent form without action: {resp.text[:200]}")
            resp = browser.post(urljoin(url, html.unescape(m.group(1))),
                                data={"confirm": consent}, allow_redirects=False,
                                timeout=TIMEOUT, headers=headers)
        if resp.is_redirect:
            loc = urljoin(url, resp.headers["Location"])
            if loc.startswith(redirect_uri):
                return loc
            url = loc
            continue
        if resp.status_code == 200 and urlparse(url).path == "/login":
            m = re.search(r'name="next" value="([^"]*)"', resp.text)
            expect(m, f"login form without next: {resp.text[:200]}")
            post = browser.post(
                urljoin(url, "/login"),
                data={"next": html.unescape(m.group(1)), "username": USER, "password": PASSWORD},
                allow_redirects=False,
                timeout=TIMEOUT,
            )
            expect(post.is_redirect, f"sign-in did not redirect: {show(post)}")
            url = urljoin(url, post.headers["Location"])
            continue
        raise BrowseRefused(resp)
    raise CheckFailed("too many redirects")


def callback_params(cb: str) -> dict[str, list[str]]:
    return parse_qs(urlparse(cb).query, keep_blank_values=True)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def token_post(url, data, auth=None, headers=None):
    return requests.post(url, data=data, auth=auth, timeout=TIMEOUT, allow_redirects=False,
                         headers=headers)


def oauth_error(resp) -> str | None:
    try:
        return resp.json().get("error")
    except ValueError:
        return None


def expect_refused(resp, error, who="proxy"):
    expect(resp.status_code == 400, f"expected 400 {error}, got {show(resp)}")
    # The legacy server (Werkzeug) sends a Server header; the proxy's own answers do not.
    expect("Werkzeug" not in resp.headers.get("Server", ""),
           f"the refusal came from the legacy server, not the proxy: {show(resp)}")
    expect(oauth_error(resp) == error, f"expected error={error}, got {show(resp)}")
    expect("access_token" not in resp.text, f"a token leaked: {show(resp)}")
    desc = resp.json().get("error_description", "")
    return f"400 {error} ({who}: {desc!r})"


# ---------------------------------------------------------------- flows


def public_flow(proxy: str, state: str | None = None):
    """Authlib OAuth2Session, public client: up to the callback. Returns (client, verifier,
    state, callback URL)."""
    client = AuthlibSession(
        client_id="public-app",
        redirect_uri=CALLBACK,
        scope="profile",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = generate_token(64)
    url, state = client.create_authorization_url(proxy + "/authorize", state=state,
                                                 code_verifier=verifier)
    cb = browse(requests.Session(), url)
    return client, verifier, state, cb


def run(proxy: str, legacy: str, exempt_proxy: str | None):
    S = "py-authlib"

    # ---- discovery
    @check("discovery", "proxy adds code_challenge_methods_supported=[S256]")
    def _():
        via = requests.get(proxy + "/.well-known/oauth-authorization-server", timeout=TIMEOUT)
        direct = requests.get(legacy + "/.well-known/oauth-authorization-server", timeout=TIMEOUT)
        expect(via.status_code == 200, show(via))
        expect("code_challenge_methods_supported" not in direct.json(), "legacy advertises PKCE?")
        got = via.json().get("code_challenge_methods_supported")
        expect(got == ["S256"], f"via proxy: {got!r}")
        return f"legacy: absent; via proxy: {got}"

    # ---- Authlib OAuth2Session, public client, full flow
    tricky_state = "st ate/&=+%é~" + secrets.token_urlsafe(8)
    ctx = {}

    @check(S, "authorize -> sign-in -> callback, state exact")
    def _():
        client, verifier, state, cb = public_flow(proxy, state=tricky_state)
        params = callback_params(cb)
        expect(params.get("state") == [tricky_state],
               f"state sent {tricky_state!r}, came back {params.get('state')!r} in {cb}")
        expect(len(params.get("code", [])) == 1, f"no code in {cb}")
        ctx.update(client=client, verifier=verifier, state=state, cb=cb,
                   code=params["code"][0])
        return f"state round-tripped: {tricky_state!r}"

    @check(S, "token exchange with code_verifier")
    def _():
        expect("client" in ctx, "no flow")
        token = ctx["client"].fetch_token(proxy + "/token", authorization_response=ctx["cb"],
                                          code_verifier=ctx["verifier"], state=ctx["state"])
        expect(token.get("access_token") and token.get("refresh_token"), f"token: {token}")
        ctx["token"] = token
        return f"token_type={token.get('token_type')} expires_in={token.get('expires_in')}"

    @check(S, "protected resource with the token")
    def _():
        expect("token" in ctx, "no token")
        r = ctx["client"].get(proxy + "/api/me", timeout=TIMEOUT)
        expect(r.status_code == 200 and r.json().get("sub") == USER, show(r))
        return f"{r.status_code} {r.json()}"

    @check(S, "refresh_token grant (passes through)")
    def _():
        expect("token" in ctx, "no token")
        old = ctx["token"]["access_token"]
        new = ctx["client"].refresh_token(proxy + "/token")
        expect(new.get("access_token") and new["access_token"] != old, f"refresh: {new}")
        r = ctx["client"].get(proxy + "/api/me", timeout=TIMEOUT)
        expect(r.status_code == 200, show(r))
        return "new access token works"

    @check("attack", "replay a used code (correct verifier)")
    def _():
        expect("code" in ctx and "token" in ctx, "no redeemed code")
        r = token_post(proxy + "/token", {"grant_type": "authorization_code", "code": ctx["code"],
                                          "redirect_uri": CALLBACK, "client_id": "public-app",
                                          "code_verifier": ctx["verifier"]})
        return expect_refused(r, "invalid_grant")

    # ---- attacks on fresh codes
    @check("attack", "intercepted code, no code_verifier")
    def _():
        client, verifier, state, cb = public_flow(proxy)
        code = callback_params(cb)["code"][0]
        r = token_post(proxy + "/token", {"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": CALLBACK, "client_id": "public-app"})
        detail = expect_refused(r, "invalid_grant")
        # The code stays bound after one refused attempt: the rightful client still redeems it.
        token = client.fetch_token(proxy + "/token", authorization_response=cb,
                                   code_verifier=verifier, state=state)
        expect(token.get("access_token"), f"rightful redemption after the attack failed: {token}")
        return detail + "; rightful client still redeems it"

    @check("attack", "intercepted code, wrong code_verifier")
    def _():
        _client, _verifier, _state, cb = public_flow(proxy)
        code = callback_params(cb)["code"][0]
        r = token_post(proxy + "/token", {"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": CALLBACK, "client_id": "public-app",
                                          "code_verifier": generate_token(64)})
        return expect_refused(r, "invalid_grant")

    @check("attack", "code redeemed by another client (conf-app, right verifier)")
    def _():
        _client, verifier, _state, cb = public_flow(proxy)
        code = callback_params(cb)["code"][0]
        r = token_post(proxy + "/token", {"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": CALLBACK, "code_verifier": verifier},
                       auth=HTTPBasicAuth("conf-app", "conf-secret"))
        return expect_refused(r, "invalid_grant")

    def authorize_refused(name, extra, accept, want_html=False):
        @check("attack", name)
        def _():
            q = {"response_type": "code", "client_id": "public-app", "redirect_uri": CALLBACK,
                 "scope": "profile", "state": "s1", **extra}
            browser = requests.Session()
            # signed in already, so the legacy server would issue a code at once
            browse(browser, proxy + "/authorize?" + urlencode(
                {**q, "code_challenge": s256(generate_token(64)), "code_challenge_method": "S256"}))
            try:
                cb = browse(browser, proxy + "/authorize?" + urlencode(q),
                            headers={"Accept": accept})
            except BrowseRefused as e:
                r = e.resp
                expect(r.status_code == 400, f"expected 400, got {show(r)}")
                expect("Location" not in r.headers, f"redirected: {show(r)}")
                if want_html:
                    expect(r.headers.get("Content-Type", "").startswith("text/html"), show(r))
                    return f"400 HTML page, no redirect ({len(r.text)} bytes)"
                return expect_refused(r, "invalid_request")
            raise CheckFailed(f"got a redirect with a code: {cb}")

    authorize_refused("authorize without code_challenge (JSON)", {}, "application/json")
    authorize_refused("authorize without code_challenge (browser: HTML)", {},
                      "text/html,application/xhtml+xml,*/*;q=0.8", want_html=True)
    authorize_refused("authorize with code_challenge_method=plain",
                      {"code_challenge": generate_token(64), "code_challenge_method": "plain"},
                      "application/json")
    authorize_refused("authorize with a challenge but no method (plain)",
                      {"code_challenge": generate_token(64)}, "application/json")

    @check("attack", "HEAD /authorize without code_challenge (signed in)")
    def _():
        browser = requests.Session()
        q = {"response_type": "code", "client_id": "public-app", "redirect_uri": CALLBACK,
             "scope": "profile", "state": "s1"}
        browse(browser, proxy + "/authorize?" + urlencode(
            {**q, "code_challenge": s256(generate_token(64)), "code_challenge_method": "S256"}))
        r = browser.head(proxy + "/authorize?" + urlencode(q), allow_redirects=False,
                         timeout=TIMEOUT)
        expect(r.status_code == 400 and "Location" not in r.headers, show(r))
        return "400, no Location"

    @check("attack", "forged state handle re-entry with another challenge")
    def _():
        # A flow's handle (the state the legacy server sees) re-used with a different
        # challenge must be refused, not bound to the attacker's challenge.
        browser = requests.Session()
        q = {"response_type": "code", "client_id": "public-app", "redirect_uri": CALLBACK,
             "scope": "profile", "state": "victim", "code_challenge": s256(generate_token(64)),
             "code_challenge_method": "S256"}
        first = browser.get(proxy + "/authorize?" + urlencode(q), allow_redirects=False,
                            timeout=TIMEOUT)  # not signed in: 302 to /login?next=...handle...
        expect(first.is_redirect, show(first))
        nxt = parse_qs(urlparse(first.headers["Location"]).query)["next"][0]
        handle = parse_qs(urlparse(nxt).query)["state"][0]
        expect(handle != "victim", f"the legacy server saw the client's own state: {nxt}")
        evil = {**q, "state": handle, "code_challenge": s256("attacker" * 8)}
        r = requests.get(proxy + "/authorize?" + urlencode(evil), allow_redirects=False,
                         timeout=TIMEOUT)
        return expect_refused(r, "invalid_request")

    @check("flow", "authorize without state: callback carries no state")
    def _():
        verifier = generate_token(64)
        q = {"response_type": "code", "client_id": "public-app", "redirect_uri": CALLBACK,
             "scope": "profile", "code_challenge": s256(verifier), "code_challenge_method": "S256"}
        cb = browse(requests.Session(), proxy + "/authorize?" + urlencode(q))
        params = callback_params(cb)
        expect("state" not in params, f"state appeared: {cb}")
        r = token_post(proxy + "/token", {"grant_type": "authorization_code",
                                          "code": params["code"][0], "redirect_uri": CALLBACK,
                                          "client_id": "public-app", "code_verifier": verifier})
        expect(r.status_code == 200 and "access_token" in r.json(), show(r))
        return "no state param; redemption 200"

    # ---- the bare legacy server: proves the proxy is what protects
    @check("legacy-direct", "bare legacy: no-PKCE code redeemed WITHOUT verifier -> token")
    def _():
        q = {"response_type": "code", "client_id": "public-app", "redirect_uri": CALLBACK,
             "scope": "profile", "state": "s"}
        cb = browse(requests.Session(), legacy + "/authorize?" + urlencode(q))
        code = callback_params(cb)["code"][0]
        r = token_post(legacy + "/token", {"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": CALLBACK, "client_id": "public-app"})
        expect(r.status_code == 200 and "access_token" in r.json(),
               f"legacy refused?! {show(r)}")
        return "legacy issued a token (it has no PKCE)"

    @check("legacy-direct", "bare legacy: proxy-issued code redeemed there WITHOUT verifier")
    def _():
        # Documents the deployment requirement: clients must not reach the upstream directly.
        _client, _verifier, _state, cb = public_flow(proxy)
        code = callback_params(cb)["code"][0]
        r = token_post(legacy + "/token", {"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": CALLBACK, "client_id": "public-app"})
        expect(r.status_code == 200 and "access_token" in r.json(),
               f"legacy refused?! {show(r)}")
        return "legacy issued a token: the upstream must be unreachable except via the proxy"

    # ---- requests-oauthlib, confidential client, client_secret_basic, pkce=S256
    R = "py-requests-oauthlib"
    rctx = {}

    @check(R, "confidential client: authorize (pkce=S256) -> callback, state exact")
    def _():
        oauth = RoSession("conf-app", redirect_uri=CALLBACK, scope=["profile"], pkce="S256")
        url, state = oauth.authorization_url(proxy + "/authorize")
        expect("code_challenge_method=S256" in url, f"no S256 challenge in {url}")
        cb = browse(requests.Session(), url)
        expect(callback_params(cb).get("state") == [state], f"state {state!r} vs {cb}")
        rctx.update(oauth=oauth, cb=cb)
        return "state round-tripped"

    @check(R, "token exchange (client_secret_basic + code_verifier)")
    def _():
        expect("oauth" in rctx, "no flow")
        token = rctx["oauth"].fetch_token(proxy + "/token", authorization_response=rctx["cb"],
                                          client_secret="conf-secret")
        expect(token.get("access_token"), f"token: {token}")
        return f"token_type={token.get('token_type')}"

    @check(R, "protected resource + refresh")
    def _():
        expect("oauth" in rctx and rctx["oauth"].token, "no token")
        oauth = rctx["oauth"]
        r = oauth.get(proxy + "/api/me", timeout=TIMEOUT)
        expect(r.status_code == 200 and r.json().get("client_id") == "conf-app", show(r))
        new = oauth.refresh_token(proxy + "/token", auth=HTTPBasicAuth("conf-app", "conf-secret"))
        expect(new.get("access_token"), f"refresh: {new}")
        r = oauth.get(proxy + "/api/me", timeout=TIMEOUT)
        expect(r.status_code == 200, show(r))
        return "resource 200, refreshed, resource 200"

    @check("attack", "confidential client without PKCE (not exempt) refused at authorize")
    def _():
        oauth = RoSession("conf-app", redirect_uri=CALLBACK, scope=["profile"])
        url, _ = oauth.authorization_url(proxy + "/authorize")
        try:
            cb = browse(requests.Session(), url, headers={"Accept": "application/json"})
        except BrowseRefused as e:
            return expect_refused(e.resp, "invalid_request")
        raise CheckFailed(f"got a redirect: {cb}")

    # ---- what a legacy server's own UI and errors do through the proxy
    L = "legacy-ui"

    def authlib_public(client_id, base=proxy, scope="profile"):
        client = AuthlibSession(client_id=client_id, redirect_uri=CALLBACK, scope=scope,
                                code_challenge_method="S256", token_endpoint_auth_method="none")
        verifier = generate_token(64)
        state = "client-state-" + secrets.token_urlsafe(6)
        url, _ = client.create_authorization_url(base + "/authorize", state=state,
                                                 code_verifier=verifier)
        return client, verifier, state, url

    @check(L, "consent page POSTs back to /authorize (query + form body): code, state exact")
    def _():
        client, verifier, state, url = authlib_public("consent-app")
        cb = browse(requests.Session(), url, consent="yes")
        expect(callback_params(cb).get("state") == [state], f"state {state!r} vs {cb}")
        token = client.fetch_token(proxy + "/token", authorization_response=cb,
                                   code_verifier=verifier, state=state)
        expect(token.get("access_token"), f"token: {token}")
        return "consent POST re-entered the flow; token issued"

    @check(L, "user denies consent: error=access_denied with the client's state")
    def _():
        _client, _verifier, state, url = authlib_public("consent-app")
        cb = browse(requests.Session(), url, consent="no")
        params = callback_params(cb)
        expect(params.get("error") == ["access_denied"] and "code" not in params, cb)
        expect(params.get("state") == [state], f"state {state!r} vs {cb}")
        return "access_denied, state restored"

    @check(L, "legacy rejects the scope: error=invalid_scope with the client's state")
    def _():
        _client, _verifier, state, url = authlib_public("public-app", scope="admin")
        cb = browse(requests.Session(), url)
        params = callback_params(cb)
        expect(params.get("error") == ["invalid_scope"] and "code" not in params, cb)
        expect(params.get("state") == [state], f"state {state!r} vs {cb}")
        return "invalid_scope, state restored"

    @check(L, "client_secret_post client (Authlib OAuth2Session): full flow")
    def _():
        client = AuthlibSession(client_id="post-app", client_secret="post-secret",
                                redirect_uri=CALLBACK, scope="profile",
                                code_challenge_method="S256",
                                token_endpoint_auth_method="client_secret_post")
        verifier = generate_token(64)
        url, state = client.create_authorization_url(proxy + "/authorize",
                                                     code_verifier=verifier)
        cb = browse(requests.Session(), url)
        token = client.fetch_token(proxy + "/token", authorization_response=cb,
                                   code_verifier=verifier, state=state)
        r = client.get(proxy + "/api/me", timeout=TIMEOUT)
        expect(r.status_code == 200 and r.json().get("client_id") == "post-app", show(r))
        return f"token + resource 200 ({token.get('token_type')})"

    class EncodedBasic(requests.auth.AuthBase):
        """HTTP Basic with RFC 6749 §2.3.1 form-encoding of id and secret."""

        def __init__(self, user, password):
            from urllib.parse import quote_plus
            raw = f"{quote_plus(user)}:{quote_plus(password)}".encode()
            self.value = "Basic " + base64.b64encode(raw).decode()

        def __call__(self, r):
            r.headers["Authorization"] = self.value
            return r

    def plus_flow(base, auth):
        oauth = RoSession("svc+prod", redirect_uri=CALLBACK, scope=["profile"], pkce="S256")
        url, _ = oauth.authorization_url(base + "/authorize")
        cb = browse(requests.Session(), url)
        return oauth.fetch_token(base + "/token", authorization_response=cb, auth=auth)

    @check(L, "client_id 'svc+prod', Basic form-encoded per RFC 6749 (svc%2Bprod)")
    def _():
        token = plus_flow(proxy, EncodedBasic("svc+prod", "plus-secret"))
        expect(token.get("access_token"), f"token: {token}")
        return "token issued"

    @check(L, "client_id 'svc+prod', raw Basic as requests-oauthlib/Authlib send it")
    def _():
        # Both Python client libraries put the client_id into Basic unencoded; Authlib's server
        # percent-decodes it (urllib unquote: '+' stays '+'). Direct to the legacy server the
        # flow works.
        direct = plus_flow(legacy, HTTPBasicAuth("svc+prod", "plus-secret"))
        expect(direct.get("access_token"), f"legacy direct: {direct}")
        try:
            token = plus_flow(proxy, HTTPBasicAuth("svc+prod", "plus-secret"))
        except Exception as e:  # requests-oauthlib raises InvalidGrantError
            desc = getattr(e, "description", str(e))
            if "another client" in str(desc):
                raise KnownIssue(
                    "works direct; via proxy 400 invalid_grant "
                    f"({desc!r}): the proxy form-decodes the Basic user ('+' -> ' '), "
                    "the legacy server does not") from e
            raise
        expect(token.get("access_token"), f"token: {token}")
        return "token issued (proxy and legacy read the Basic user alike)"

    # ---- a second proxy with --exempt-client conf-app
    if exempt_proxy:
        E = "exempt-proxy"

        @check(E, "exempt confidential client without PKCE: full flow")
        def _():
            oauth = RoSession("conf-app", redirect_uri=CALLBACK, scope=["profile"])
            url, state = oauth.authorization_url(exempt_proxy + "/authorize")
            cb = browse(requests.Session(), url)
            expect(callback_params(cb).get("state") == [state], f"state {state!r} vs {cb}")
            token = oauth.fetch_token(exempt_proxy + "/token", authorization_response=cb,
                                      client_secret="conf-secret")
            r = oauth.get(exempt_proxy + "/api/me", timeout=TIMEOUT)
            expect(r.status_code == 200, show(r))
            return f"token + resource 200 ({token.get('token_type')})"

        @check(E, "exempt client, PKCE downgrade (challenge sent, verifier dropped)")
        def _():
            oauth = RoSession("conf-app", redirect_uri=CALLBACK, scope=["profile"], pkce="S256")
            url, _ = oauth.authorization_url(exempt_proxy + "/authorize")
            cb = browse(requests.Session(), url)
            code = callback_params(cb)["code"][0]
            r = token_post(exempt_proxy + "/token", {"grant_type": "authorization_code",
                                                     "code": code, "redirect_uri": CALLBACK},
                           auth=HTTPBasicAuth("conf-app", "conf-secret"))
            return expect_refused(r, "invalid_grant")

        @check(E, "exempt client, unbound code + a verifier (downgrade the other way)")
        def _():
            oauth = RoSession("conf-app", redirect_uri=CALLBACK, scope=["profile"])
            url, _ = oauth.authorization_url(exempt_proxy + "/authorize")
            cb = browse(requests.Session(), url)
            code = callback_params(cb)["code"][0]
            r = token_post(exempt_proxy + "/token", {"grant_type": "authorization_code",
                                                     "code": code, "redirect_uri": CALLBACK,
                                                     "code_verifier": generate_token(64)},
                           auth=HTTPBasicAuth("conf-app", "conf-secret"))
            return expect_refused(r, "invalid_grant")

        @check(E, "public client still needs PKCE on the exempting proxy")
        def _():
            q = {"response_type": "code", "client_id": "public-app", "redirect_uri": CALLBACK,
                 "scope": "profile", "state": "s"}
            try:
                cb = browse(requests.Session(), exempt_proxy + "/authorize?" + urlencode(q),
                            headers={"Accept": "application/json"})
            except BrowseRefused as e:
                return expect_refused(e.resp, "invalid_request")
            raise CheckFailed(f"got a redirect: {cb}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--legacy", required=True)
    ap.add_argument("--exempt-proxy")
    args = ap.parse_args()
    run(args.proxy.rstrip("/"), args.legacy.rstrip("/"), args.exempt_proxy)
    secrets_file = os.environ.get("INTEROP_SECRETS_FILE")
    if secrets_file:
        with open(secrets_file, "w") as f:
            f.write("".join(s + "\n" for s in sorted(SECRETS) if "\n" not in s))
    failed = [r for r in RESULTS if not r[2]]  # KNOWN counts as not failed
    print(f"python driver: {len(RESULTS) - len(failed)} passed, {len(failed)} failed",
          file=sys.stderr)
    return 1 if failed or not RESULTS else 0


if __name__ == "__main__":
    sys.exit(main())
