//! Readings of a token request that real legacy servers make and that cannot all run here
//! (ASP.NET's `%uXXXX` names, IIS's `%uXXXX` paths, Unicode lowercasing in routers, servers
//! that percent-decode a whole target or body before splitting it, bodies read as forms
//! whatever their content type), emulated by one lenient server on a real socket. For each
//! trick: against the server alone it redeems a code (so the differential is real), and
//! through pkce-proxy a code bound to a challenge is refused and never reaches the server.
//! The real stacks (Express, PHP, gunicorn, Django OAuth Toolkit) are in `tests/interop/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod proxy_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use proxy_support::Proxy;
use support::{Pkce, CLIENT, REDIRECT};

/// What the lenient server issued and redeemed.
#[derive(Clone, Default)]
struct Lenient {
    minted: Arc<std::sync::atomic::AtomicUsize>,
    issued: Arc<Mutex<HashSet<String>>>,
    redeemed: Arc<Mutex<Vec<String>>>,
    /// The last request to the token endpoint: its target, headers and body.
    last_token: Arc<Mutex<Option<(String, HeaderMap, Bytes)>>>,
}

/// Decodes `%uXXXX` (ASP.NET's `UrlDecode`) and `%XX` escapes and `+`, as far as they go.
fn decode_all(input: &str) -> String {
    let mut text = input.replace('+', " ");
    for _ in 0..3 {
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            let wide = tail
                .get(1..6)
                .filter(|e| e.starts_with(['u', 'U']))
                .and_then(|e| u32::from_str_radix(&e[1..], 16).ok())
                .and_then(char::from_u32);
            if let Some(c) = wide {
                out.push(c);
                rest = &tail[6..];
            } else {
                out.push('%');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        let decoded = percent_encoding::percent_decode_str(&out)
            .decode_utf8_lossy()
            .into_owned();
        if decoded == text {
            break;
        }
        text = decoded;
    }
    text
}

/// The laxest reading of parameters: the whole input decoded first, then split on `&` and
/// `;`, names compared without case; the last copy wins.
fn lenient_params(input: &str) -> Vec<(String, String)> {
    decode_all(input)
        .split(['&', ';'])
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.trim().to_lowercase(), value.to_owned()))
        })
        .collect()
}

fn last<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl Lenient {
    async fn start(&self) -> SocketAddr {
        let state = self.clone();
        let router = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.handle(method, uri, headers, body) }
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        // The whole target decoded before it is split (and Unicode-lowercased, as routers in
        // Python, JavaScript and Java compare paths): `/to%E2%84%AAen` is `/token`.
        let target = decode_all(&uri.to_string());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let path = path.to_lowercase();
        let mut params = lenient_params(query);
        if path == "/authorize" && method == Method::GET {
            let code = self.mint();
            let state = last(&params, "state").unwrap_or_default();
            let to = format!("{REDIRECT}?code={code}&state={}", support::urlencode(state));
            return (StatusCode::FOUND, [("location", to)]).into_response();
        }
        if path != "/token" {
            return StatusCode::NOT_FOUND.into_response();
        }
        *self.last_token.lock().unwrap() = Some((uri.to_string(), headers, body.clone()));
        if method != Method::POST {
            return StatusCode::NO_CONTENT.into_response();
        }
        // The body as a form, whatever its content type.
        params.extend(lenient_params(&String::from_utf8_lossy(&body)));
        let grant = last(&params, "grant_type").unwrap_or_default();
        let code = last(&params, "code").unwrap_or_default().to_owned();
        if grant == "authorization_code" && self.issued.lock().unwrap().remove(&code) {
            self.redeemed.lock().unwrap().push(code);
            let token = r#"{"access_token":"at","token_type":"Bearer"}"#;
            return ([("content-type", "application/json")], token).into_response();
        }
        (StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#).into_response()
    }

    /// A fresh code, issued.
    fn mint(&self) -> String {
        let n = self
            .minted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let code = format!("code-{n}");
        self.issued.lock().unwrap().insert(code.clone());
        code
    }

    fn redeemed(&self, code: &str) -> bool {
        self.redeemed.lock().unwrap().iter().any(|c| c == code)
    }
}

/// Sends raw bytes and returns the status: no client library normalises the target.
async fn send_raw(addr: SocketAddr, request: String) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("an answer within 10 s")
    .unwrap();
    let head = String::from_utf8_lossy(&response);
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn post(target: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: as.example\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

const FORM: &str = "application/x-www-form-urlencoded";

/// A trick: a request that redeems `code` without its verifier on a lenient reading.
type Trick = fn(&str) -> String;

const TRICKS: &[(&str, Trick)] = &[
    ("%uXXXX in a parameter name (ASP.NET)", |code| {
        post(
            "/token",
            FORM,
            &format!("grant_type=authorization_code&%u0063ode={code}&client_id={CLIENT}"),
        )
    }),
    ("%uXXXX in the path (IIS)", |code| {
        post(
            "/%u0074oken",
            FORM,
            &format!("grant_type=authorization_code&code={code}&client_id={CLIENT}"),
        )
    }),
    ("the Kelvin sign lowercased in the path", |code| {
        post(
            "/to%E2%84%AAen",
            FORM,
            &format!("grant_type=authorization_code&code={code}&client_id={CLIENT}"),
        )
    }),
    ("a body decoded whole before it is split", |code| {
        post(
            "/token",
            FORM,
            &format!(
                "grant_type=refresh_token&refresh_token=x%26grant_type%3Dauthorization_code\
                 %26code%3D{code}%26client_id%3D{CLIENT}"
            ),
        )
    }),
    ("a target decoded whole before it is split", |code| {
        post(
            &format!(
                "/token%3Fgrant_type%3Dauthorization_code%26code%3D{code}%26client_id%3D{CLIENT}"
            ),
            FORM,
            "",
        )
    }),
    ("a JSON body of another grant read as a form", |code| {
        post(
            "/token",
            "application/json",
            &format!(
                r#"{{"grant_type":"refresh_token","refresh_token":"&grant_type=authorization_code&code={code}&client_id={CLIENT}&"}}"#
            ),
        )
    }),
    ("a lowercase-insensitive duplicate name", |code| {
        post(
            "/token",
            FORM,
            &format!("grant_type=refresh_token&refresh_token=x&GRANT_TYPE=authorization_code&CODE={code}&client_id={CLIENT}"),
        )
    }),
];

/// An authorization request through the proxy with an S256 challenge: the code it binds.
async fn bound_code(proxy: &Proxy) -> String {
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge));
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(proxy.url(&format!("/authorize?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let params = support::query_of(&location);
    assert_eq!(params["state"], "s", "the client's own state comes back");
    params["code"].clone()
}

#[tokio::test]
async fn each_lenient_reading_redeems_alone_and_is_refused_through_the_proxy() {
    let lenient = Lenient::default();
    let addr = lenient.start().await;
    let proxy = Proxy::start(addr, &[]).await;
    let mut direct_failures = Vec::new();
    let mut proxy_failures = Vec::new();
    for (name, trick) in TRICKS {
        // Alone: a code issued without any challenge is redeemed by the trick.
        let code = lenient.mint();
        let status = send_raw(addr, trick(&code)).await;
        if status != 200 || !lenient.redeemed(&code) {
            direct_failures.push(format!("{name}: {status}"));
        }
        // Through the proxy: a bound code, the same trick, no verifier.
        let code = bound_code(&proxy).await;
        let status = send_raw(proxy.addr, trick(&code)).await;
        if status != 400 || lenient.redeemed(&code) {
            proxy_failures.push(format!("{name}: {status}"));
        }
    }
    assert!(
        direct_failures.is_empty(),
        "tricks that no longer work against the lenient server: {direct_failures:?}"
    );
    assert!(
        proxy_failures.is_empty(),
        "tricks that got through the proxy: {proxy_failures:?}"
    );
    // The codes stay redeemable with their verifier is shown by the other suites; here, the
    // proxy decided and logged every one of these requests.
    let (_, log) = proxy.stop().await;
    assert!(
        log.matches("endpoint=\"token\"").count() + log.matches("endpoint=\"lookalike\"").count()
            >= TRICKS.len(),
        "one decision logged per token request: {log}"
    );
}

/// What reaches the upstream's token endpoint is what the layer read: the token path as
/// configured, the allowed query parameter, a form encoded afresh, and only the allowed
/// headers (no cookie, no routing or spoofed forwarding header, nothing unknown).
#[tokio::test]
async fn the_upstream_gets_the_token_request_rebuilt() {
    let lenient = Lenient::default();
    let addr = lenient.start().await;
    let proxy = Proxy::start(
        addr,
        &[
            "--token-path",
            "/token",
            "--token-query-param",
            "api-version",
            "--token-forward-header",
            "dpop",
        ],
    )
    .await;
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, None, Some(&pkce.challenge));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = http
        .get(proxy.url(&format!("/authorize?{query}")))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let code = support::query_of(&location)["code"].clone();
    let body = format!(
        "grant_type=authorization_code&code={code}&client_id={CLIENT}&code_verifier={}\
         &redirect_uri={}&scope=a%20b&extra=%7E",
        pkce.verifier,
        support::urlencode(REDIRECT)
    );
    let request = format!(
        "POST //Token/?api-version=2.0 HTTP/1.1\r\nHost: as.example\r\n\
         Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Cookie: code=stolen\r\nSCRIPT_NAME: /x\r\nX-Real-IP: 6.6.6.6\r\n\
         X-Custom: kept-out\r\nDPoP: proof\r\nAccept: application/json\r\n\
         Origin: https://app.example\r\nUser-Agent: test\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(send_raw(proxy.addr, request).await, 200);
    assert!(lenient.redeemed(&code));
    let (target, headers, received) = lenient.last_token.lock().unwrap().take().unwrap();
    assert_eq!(target, "/token?api-version=2.0");
    assert_eq!(
        std::str::from_utf8(&received).unwrap(),
        format!(
            "grant_type=authorization_code&code={code}&client_id={CLIENT}&code_verifier={}\
             &redirect_uri={}&scope=a+b&extra=%7E",
            pkce.verifier,
            support::urlencode(REDIRECT)
        )
    );
    let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accept",
            "content-length",
            "content-type",
            "dpop",
            "host",
            "origin",
            "user-agent",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
        ]
    );
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(
        headers["content-length"],
        received.len().to_string().as_str()
    );

    // A CORS preflight goes to the token path with no body and the questions it asks.
    let preflight =
        "OPTIONS /token HTTP/1.1\r\nHost: as.example\r\nOrigin: https://app.example\r\n\
                     Access-Control-Request-Method: POST\r\nCookie: a=b\r\n\
                     Connection: close\r\n\r\n";
    assert_eq!(send_raw(proxy.addr, preflight.to_owned()).await, 204);
    let (target, headers, received) = lenient.last_token.lock().unwrap().take().unwrap();
    assert_eq!(target, "/token");
    assert!(received.is_empty());
    assert!(headers.contains_key("access-control-request-method"));
    assert!(!headers.contains_key("cookie"));

    // A query parameter that is not allowed, a GET: refused, and nothing reaches the upstream.
    for request in [
        "POST /token?tenant=x HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\nConnection: close\r\n\r\ngrant_type=client_credentials",
        "GET /token?grant_type=client_credentials HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        assert_eq!(send_raw(proxy.addr, request.to_owned()).await, 400, "{request}");
    }
    assert!(lenient.last_token.lock().unwrap().is_none());
}

/// A path under the token path is refused as a lookalike, unless the operator names it as a
/// route of its own (`--other-route`): then it passes through, untouched.
#[tokio::test]
async fn paths_under_an_endpoint_are_refused_unless_named_as_other_routes() {
    let lenient = Lenient::default();
    let addr = lenient.start().await;
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: as.example\r\nConnection: close\r\n\r\n")
    };
    let strict = Proxy::start(addr, &[]).await;
    let with_route = Proxy::start(addr, &["--other-route", "/token/info"]).await;
    for target in [
        "/token/info",
        "/Token/Info/",
        "/token.php/info",
        "/to%E2%84%AAen/info",
    ] {
        assert_eq!(send_raw(strict.addr, get(target)).await, 400, "{target}");
    }
    // The lenient server answers 404 for what is not its token endpoint: it was reached.
    assert_eq!(send_raw(with_route.addr, get("/token/info")).await, 404);
    assert_eq!(send_raw(with_route.addr, get("/Token/Info")).await, 404);
    // Other paths under the endpoint stay refused, and so does the route spelled so that a
    // router merging or stripping less than the layer could run the endpoint for it.
    for target in [
        "/token/x",
        "/token/info/",
        "/token//info",
        "/token;x/info",
        "/token/x/../info",
        "/token%2Finfo",
    ] {
        assert_eq!(
            send_raw(with_route.addr, get(target)).await,
            400,
            "{target}"
        );
    }
    assert!(lenient.last_token.lock().unwrap().is_none());
}
