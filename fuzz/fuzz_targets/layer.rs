//! The whole layer, driven by arbitrary sequences of requests in front of an in-process legacy
//! server that knows nothing of PKCE. The legacy server itself checks the invariants, reading
//! requests as leniently as a careless server would:
//!
//! - it never redeems a code whose authorization request carried a challenge unless the
//!   forwarded `code_verifier` matches it (S256), and never redeems a code of a client that is
//!   not exempt without one;
//! - it never redeems a code twice;
//!
//! and the client checks that a redirect carrying a code brings back exactly the `state` it
//! sent. A panic anywhere, and a 500 from the layer, are crashes too.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use tower::{Layer as _, ServiceExt as _};
use tower_pkce::{MemoryStore, PkceLayer};

const REDIRECT: &str = "https://app.example/cb";
const EXEMPT: &str = "conf";

/// Verifiers the client picks from, by index.
fn verifier(i: u8) -> String {
    format!(
        "{:0>43}",
        format!("v{i}-verifier-for-the-layer-fuzz-target")
    )
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Client {
    App,
    Exempt,
    Other,
    Missing,
}

impl Client {
    fn id(self) -> Option<&'static str> {
        match self {
            Client::App => Some("app"),
            Client::Exempt => Some(EXEMPT),
            Client::Other => Some("other"),
            Client::Missing => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Challenge {
    S256(u8),
    Plain(u8),
    MethodOnly,
    None,
    Raw(String, Option<String>),
}

#[derive(Arbitrary, Debug)]
enum Verifier {
    /// The verifier of the flow that issued the code.
    Own,
    Pair(u8),
    None,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Path {
    Authorize,
    Token,
    Metadata,
    Resource,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A client's authorization request; the code from its redirect is remembered.
    Authorize {
        client: Client,
        challenge: Challenge,
        state: Option<String>,
        post: bool,
        extra: Vec<u8>,
    },
    /// A token request for a remembered code.
    Token {
        code: u8,
        verifier: Verifier,
        client: Client,
        basic: bool,
        json: bool,
        extra: Vec<u8>,
    },
    /// Anything at all.
    Raw {
        path: Path,
        post: bool,
        query: Vec<u8>,
        body: Vec<u8>,
        content_type: Option<String>,
    },
}

/// What the legacy server issued a code for, as it read the authorization request.
struct Issued {
    client: Option<String>,
    challenge: Option<String>,
    method: Option<String>,
}

#[derive(Default)]
struct Legacy {
    next: u64,
    issued: HashMap<String, Issued>,
    redeemed: HashSet<String>,
}

/// Every value whose name a lenient server reads as `name`: decoded, any case, a `[...]`
/// suffix dropped.
fn lenient(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(n, _)| n.to_ascii_lowercase().split('[').next() == Some(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn one(pairs: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<String> = lenient(pairs, name)
        .into_iter()
        .filter(|v| !v.is_empty())
        .collect();
    let mut distinct = values.clone();
    distinct.sort();
    distinct.dedup();
    assert!(
        distinct.len() <= 1,
        "the upstream could read {name} as any of {values:?}"
    );
    distinct.pop()
}

fn form(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect()
}

fn json_or_form(bytes: &[u8]) -> Vec<(String, String)> {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(bytes) {
        return map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
    }
    form(bytes)
}

fn reply(
    status: StatusCode,
    location: Option<String>,
    body: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    if let Some(location) = location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

async fn legacy(
    state: Arc<Mutex<Legacy>>,
    req: Request<tower_pkce::PkceBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_ascii_lowercase();
    let mut pairs = form(parts.uri.query().unwrap_or_default().as_bytes());
    let mut legacy = state.lock().unwrap();
    if path.starts_with("/authorize") {
        pairs.extend(form(&body));
        let client = one(&pairs, "client_id");
        let redirect = one(&pairs, "redirect_uri").unwrap_or_else(|| REDIRECT.to_owned());
        legacy.next += 1;
        let code = format!("code{}", legacy.next);
        legacy.issued.insert(
            code.clone(),
            Issued {
                client,
                challenge: one(&pairs, "code_challenge"),
                method: one(&pairs, "code_challenge_method"),
            },
        );
        let mut location = format!("{redirect}?code={code}");
        if let Some(state) = lenient(&pairs, "state").first() {
            location.push_str("&state=");
            location.extend(form_urlencoded::byte_serialize(state.as_bytes()));
        }
        return Ok(reply(StatusCode::FOUND, Some(location), ""));
    }
    if path.starts_with("/token") {
        pairs.extend(json_or_form(&body));
        let Some(code) = one(&pairs, "code") else {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                None,
                r#"{"error":"invalid_request"}"#,
            ));
        };
        let Some(issued) = legacy.issued.get(&code) else {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                None,
                r#"{"error":"invalid_grant"}"#,
            ));
        };
        // Like any server, the legacy one redeems a code only for the client it was issued to.
        let basic = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|c| STANDARD.decode(c).ok())
            .and_then(|c| String::from_utf8(c).ok())
            .and_then(|c| c.split_once(':').map(|(user, _)| user.to_owned()));
        let client = basic.or_else(|| one(&pairs, "client_id"));
        if client.is_none() || client != issued.client {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                None,
                r#"{"error":"invalid_grant"}"#,
            ));
        }
        let verifier = one(&pairs, "code_verifier");
        match (&issued.challenge, issued.client.as_deref()) {
            (Some(challenge), _) => {
                assert_eq!(
                    issued.method.as_deref(),
                    Some("S256"),
                    "a plain or unnamed method got through"
                );
                let verifier =
                    verifier.unwrap_or_else(|| panic!("{code} redeemed without a verifier"));
                assert_eq!(
                    &s256(&verifier),
                    challenge,
                    "{code} redeemed with the wrong verifier"
                );
            }
            (None, Some(EXEMPT)) => {}
            (None, client) => panic!("{code} of {client:?} was issued and redeemed without PKCE"),
        }
        assert!(
            legacy.redeemed.insert(code.clone()),
            "{code} redeemed twice"
        );
        return Ok(reply(
            StatusCode::OK,
            None,
            r#"{"access_token":"t","token_type":"Bearer"}"#,
        ));
    }
    if path.contains(".well-known") {
        return Ok(reply(
            StatusCode::OK,
            None,
            r#"{"issuer":"https://as.example","authorization_endpoint":"https://as.example/authorize","token_endpoint":"https://as.example/token"}"#,
        ));
    }
    Ok(reply(StatusCode::OK, None, "resource"))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A code the client saw, with the verifier of the flow it came from.
struct Seen {
    code: String,
    verifier: Option<String>,
}

fn params_of(location: &str) -> Vec<(String, String)> {
    let after = location.split_once(['?', '#']).map_or("", |(_, rest)| rest);
    form(after.replace('#', "&").as_bytes())
}

fn build(
    method: &Method,
    path: &str,
    query: &[u8],
    body: Vec<u8>,
    content_type: Option<&str>,
) -> Option<Request<Full<Bytes>>> {
    let mut uri = path.to_owned();
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(std::str::from_utf8(query).ok()?);
    }
    let mut builder = Request::builder().method(method.clone()).uri(uri);
    if let Some(content_type) = content_type {
        builder = builder.header(CONTENT_TYPE, content_type);
    }
    builder.body(Full::new(Bytes::from(body))).ok()
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() > 64 {
        return;
    }
    let state = Arc::new(Mutex::new(Legacy::default()));
    let inner = {
        let state = state.clone();
        tower::service_fn(move |req| legacy(state.clone(), req))
    };
    let layer = PkceLayer::new()
        .exempt_client(EXEMPT)
        .client_redirect_uris("app", [REDIRECT])
        .max_failed_attempts(3)
        .with_store(MemoryStore::with_capacity(1024));
    let svc = layer.layer(inner);
    let mut seen: Vec<Seen> = Vec::new();

    runtime().block_on(async {
        for op in ops {
            match op {
                Op::Authorize {
                    client,
                    challenge,
                    state: client_state,
                    post,
                    extra,
                } => {
                    let mut fields: Vec<(&str, String)> = vec![("response_type", "code".into())];
                    if let Some(id) = client.id() {
                        fields.push(("client_id", id.into()));
                    }
                    fields.push(("redirect_uri", REDIRECT.into()));
                    let mut own = None;
                    match challenge {
                        Challenge::S256(i) => {
                            let v = verifier(i);
                            fields.push(("code_challenge", s256(&v)));
                            fields.push(("code_challenge_method", "S256".into()));
                            own = Some(v);
                        }
                        Challenge::Plain(i) => {
                            let v = verifier(i);
                            fields.push(("code_challenge", v.clone()));
                            fields.push(("code_challenge_method", "plain".into()));
                            own = Some(v);
                        }
                        Challenge::MethodOnly => {
                            fields.push(("code_challenge_method", "S256".into()))
                        }
                        Challenge::None => {}
                        Challenge::Raw(c, m) => {
                            fields.push(("code_challenge", c));
                            if let Some(m) = m {
                                fields.push(("code_challenge_method", m));
                            }
                        }
                    }
                    if let Some(s) = &client_state {
                        fields.push(("state", s.clone()));
                    }
                    let mut encoded = form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(fields.iter().map(|(n, v)| (*n, v.as_str())))
                        .finish()
                        .into_bytes();
                    if !extra.is_empty() {
                        encoded.push(b'&');
                        encoded.extend_from_slice(&extra);
                    }
                    let request = if post {
                        build(
                            &Method::POST,
                            "/authorize",
                            b"",
                            encoded,
                            Some("application/x-www-form-urlencoded"),
                        )
                    } else {
                        build(&Method::GET, "/authorize", &encoded, Vec::new(), None)
                    };
                    let Some(request) = request else { continue };
                    let Ok(response) = svc.clone().oneshot(request).await;
                    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                    let Some(location) = response
                        .headers()
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                    else {
                        continue;
                    };
                    let back = params_of(location);
                    let Some(code) = lenient(&back, "code").into_iter().next() else {
                        continue;
                    };
                    // The client's state, and only it, comes back with a code. (Extra bytes
                    // may have carried a state of their own, which the layer refuses.)
                    let states = lenient(&back, "state");
                    match &client_state {
                        Some(s) => assert_eq!(states, vec![s.clone()], "state not restored"),
                        None if extra.is_empty() => assert!(states.is_empty(), "a state appeared"),
                        None => {}
                    }
                    seen.push(Seen {
                        code,
                        verifier: own,
                    });
                }
                Op::Token {
                    code,
                    verifier: which,
                    client,
                    basic,
                    json,
                    extra,
                } => {
                    let Some(flow) = seen.get(usize::from(code) % seen.len().max(1)) else {
                        continue;
                    };
                    let verifier = match which {
                        Verifier::Own => flow.verifier.clone(),
                        Verifier::Pair(i) => Some(verifier(i)),
                        Verifier::None => None,
                        Verifier::Raw(v) => Some(v),
                    };
                    let mut fields: Vec<(&str, String)> = vec![
                        ("grant_type", "authorization_code".into()),
                        ("code", flow.code.clone()),
                        ("redirect_uri", REDIRECT.into()),
                    ];
                    if let (Some(id), false) = (client.id(), basic) {
                        fields.push(("client_id", id.into()));
                    }
                    if let Some(v) = verifier {
                        fields.push(("code_verifier", v));
                    }
                    let (body, content_type) = if json {
                        let map: serde_json::Map<String, serde_json::Value> = fields
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.clone().into()))
                            .collect();
                        let mut body = serde_json::to_vec(&map).unwrap();
                        body.extend_from_slice(&extra);
                        (body, "application/json")
                    } else {
                        let mut body = form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(fields.iter().map(|(n, v)| (*n, v.as_str())))
                            .finish()
                            .into_bytes();
                        if !extra.is_empty() {
                            body.push(b'&');
                            body.extend_from_slice(&extra);
                        }
                        (body, "application/x-www-form-urlencoded")
                    };
                    let Some(mut request) =
                        build(&Method::POST, "/token", b"", body, Some(content_type))
                    else {
                        continue;
                    };
                    if let (Some(id), true) = (client.id(), basic) {
                        let credentials = STANDARD.encode(format!("{id}:secret"));
                        if let Ok(value) = format!("Basic {credentials}").parse() {
                            request.headers_mut().insert(AUTHORIZATION, value);
                        }
                    }
                    let Ok(response) = svc.clone().oneshot(request).await;
                    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                }
                Op::Raw {
                    path,
                    post,
                    query,
                    body,
                    content_type,
                } => {
                    let path = match &path {
                        Path::Authorize => "/authorize",
                        Path::Token => "/token",
                        Path::Metadata => "/.well-known/openid-configuration",
                        Path::Resource => "/resource",
                        Path::Raw(p) if p.starts_with('/') => p.as_str(),
                        Path::Raw(_) => continue,
                    };
                    let method = if post { Method::POST } else { Method::GET };
                    let Some(request) = build(&method, path, &query, body, content_type.as_deref())
                    else {
                        continue;
                    };
                    let Ok(response) = svc.clone().oneshot(request).await;
                    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                    if let Some(location) = response
                        .headers()
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                    {
                        let back = params_of(location);
                        if let Some(code) = lenient(&back, "code").into_iter().next() {
                            seen.push(Seen {
                                code,
                                verifier: None,
                            });
                        }
                    }
                    let _ = response.into_body().collect().await;
                }
            }
        }
    });
});
