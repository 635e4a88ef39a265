#!/usr/bin/env python3
"""Checks each target before any load: the benchmark must measure real, accepted flows.

For every target (name=host:port):
  - one full flow with the right verifier: authorize -> 302 to the redirect_uri with a code
    and the client's state exactly, then token -> 200 with an access token;
  - one flow with a wrong verifier: pkce-proxy must refuse it (400 invalid_grant), while
    nginx and the bare upstream, which know nothing of PKCE, let it through (200);
  - for pkce-proxy, an authorization request without code_challenge is refused (400);
  - GET of the static path -> 200 with the expected body.

With --cafile (run.sh's LOAD_TLS=1) every request goes over HTTPS, and the target's
certificate must verify against that CA and name the host (an IP address SAN for 127.0.0.1).
Like wrk, the client offers no ALPN, so HTTP/1.1 is spoken. With --tls-report, one line per
target goes to that file: the TLS version, cipher suite, ALPN and the certificate's SHA-256
as this client (Python's ssl, OpenSSL) negotiated them.

Exits 1 with a message on the first failure.

usage: preflight.py --pairs PAIRS.lua --client-id ID --redirect-uri URI
                    [--cafile CA.pem [--tls-report FILE]]
                    --target NAME=HOST:PORT[:enforces] ...
"""

import argparse
import hashlib
import http.client
import json
import ssl
import sys
import urllib.parse


def load_pairs(path):
    pairs = []
    with open(path, encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and len(parts[0]) == 43:
                pairs.append((parts[0], parts[1]))
    if len(pairs) < 2:
        sys.exit(f"preflight: fewer than 2 pairs in {path}")
    return pairs


class Check:
    def __init__(self, name, host, port, args, context=None):
        self.name, self.host, self.port, self.args = name, host, port, args
        self.context = context      # an ssl.SSLContext: HTTPS
        self.tls = None             # what the first HTTPS connection negotiated
        self.certificate = None     # the SHA-256 of the certificate it got

    def fail(self, what):
        sys.exit(f"preflight: {self.name} ({self.host}:{self.port}): {what}")

    def request(self, method, path, body=None, headers=None):
        if self.context is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        else:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=5, context=self.context)
        try:
            try:
                conn.request(method, path, body=body, headers=headers or {})
            except ssl.SSLError as e:
                self.fail(f"TLS: {e}")
            if self.context is not None and self.tls is None:
                s = conn.sock
                self.certificate = hashlib.sha256(s.getpeercert(True)).hexdigest()
                self.tls = (f"{s.version()} {s.cipher()[0]}, ALPN {s.selected_alpn_protocol() or 'none'}, "
                            f"certificate sha256 {self.certificate[:16]}")
            r = conn.getresponse()
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
        finally:
            conn.close()

    def authorize(self, state, challenge):
        q = {
            "response_type": "code",
            "client_id": self.args.client_id,
            "redirect_uri": self.args.redirect_uri,
            "scope": "openid",
            "state": state,
        }
        if challenge is not None:
            q["code_challenge"] = challenge
            q["code_challenge_method"] = "S256"
        path = "/authorize?" + urllib.parse.urlencode(q, quote_via=urllib.parse.quote)
        return self.request("GET", path, headers={"Accept": "application/json"})

    def code_from(self, status, headers, body, state):
        if status != 302:
            self.fail(f"authorize: expected 302, got {status}: {body[:200]!r}")
        location = headers.get("location", "")
        if not location.startswith(self.args.redirect_uri + "?"):
            self.fail(f"authorize: Location does not go to the redirect_uri: {location}")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        raw_state = [p.split("=", 1)[1] for p in urllib.parse.urlsplit(location).query.split("&")
                     if p.startswith("state=")]
        if raw_state != [state]:
            self.fail(f"authorize: state did not come back exactly: {location}")
        codes = query.get("code", [])
        if len(codes) != 1 or not codes[0]:
            self.fail(f"authorize: no code in {location}")
        return codes[0]

    def token(self, code, verifier, flow):
        body = urllib.parse.urlencode({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.args.redirect_uri,
            "client_id": self.args.client_id,
            "code_verifier": verifier,
        })
        return self.request("POST", "/token", body=body, headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "X-Load-Flow": flow,
        })

    def run(self, enforces, pairs):
        (v1, c1), (v2, _) = pairs[0], pairs[1]
        # A good flow.
        state = "preflight-good-0123456789abcdef"
        code = self.code_from(*self.authorize(state, c1), state)
        status, headers, body = self.token(code, v1, state)
        if status != 200 or b'"access_token"' not in body:
            self.fail(f"token: expected 200 with an access_token, got {status}: {body[:200]!r}")
        if headers.get("x-load-flow") != state:
            self.fail("token: the upstream's X-Load-Flow echo did not come through")
        # A wrong verifier.
        state = "preflight-bad-0123456789abcdef"
        code = self.code_from(*self.authorize(state, c1), state)
        status, _, body = self.token(code, v2, state)
        if enforces:
            try:
                error = json.loads(body).get("error")
            except ValueError:
                error = None
            if status != 400 or error != "invalid_grant":
                self.fail(f"a wrong verifier must get 400 invalid_grant, got {status}: {body[:200]!r}")
            # No challenge at all.
            status, _, body = self.authorize("preflight-none-0123456789abcdef", None)
            if status != 400:
                self.fail(f"authorize without code_challenge must get 400, got {status}")
        elif status != 200:
            self.fail(f"expected the non-PKCE target to accept any verifier (200), got {status}")
        # Pass-through.
        status, _, body = self.request("GET", self.args.static_path)
        if status != 200 or body != self.args.static_body.encode():
            self.fail(f"GET {self.args.static_path}: expected 200 with the static body, got {status}: {body[:200]!r}")
        what = "enforces PKCE (wrong verifier refused)" if enforces else "no PKCE (wrong verifier accepted)"
        over = f", over HTTPS: {self.tls}" if self.tls else ""
        print(f"preflight: {self.name}: flow ok, pass-through ok, {what}{over}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--redirect-uri", required=True)
    ap.add_argument("--static-path", default="/static/x")
    ap.add_argument("--static-body", default="hello from upstream\n")
    ap.add_argument("--target", action="append", required=True)
    ap.add_argument("--cafile", help="HTTPS, verifying the targets' certificates with this CA")
    ap.add_argument("--tls-report", help="with --cafile: write what each target negotiated here")
    args = ap.parse_args()
    pairs = load_pairs(args.pairs)
    context = None
    if args.cafile:
        # Verifies the chain and the host (an IP address SAN here); no ALPN, as wrk.
        context = ssl.create_default_context(cafile=args.cafile)
    report, certificates = [], set()
    for spec in args.target:
        name, addr = spec.split("=", 1)
        parts = addr.split(":")
        enforces = len(parts) == 3 and parts[2] == "enforces"
        check = Check(name, parts[0], int(parts[1]), args, context)
        check.run(enforces, pairs)
        if check.tls:
            report.append(f"{name}: {check.tls}")
            certificates.add(check.certificate)
    if len(certificates) > 1:
        sys.exit("preflight: the targets do not serve the same certificate: " + "; ".join(report))
    if args.tls_report:
        with open(args.tls_report, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in report))


if __name__ == "__main__":
    main()
