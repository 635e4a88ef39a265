//! The whole layer, driven by arbitrary sequences of requests in front of an in-process legacy
//! server that knows nothing of PKCE. The legacy server itself checks the invariants, reading
//! requests as leniently as a careless server would (DESIGN.md, "Forward only what was
//! verified"):
//!
//! - it routes a request to its token (or authorize) endpoint when any lenient router would:
//!   the path percent-decoded again and again (`%uXXXX` too), in any case (Unicode's: the
//!   Kelvin sign is `k`), full-width letters read as ASCII, `;` parameters dropped, dot
//!   segments resolved, `\` read as `/`, repeated slashes collapsed, cut at a NUL, `?` or `#`,
//!   segments trimmed, a PATH_INFO suffix after the endpoint's path (`/token/x`,
//!   `/token.php/x`), a `SCRIPT_NAME` header cut from the front (gunicorn before 22), or the
//!   path taken from `X-Original-URL` or `X-Rewrite-URL`;
//! - it reads a token request from the query string, the body (as a form, and as JSON where it
//!   is JSON) and the `Cookie` header (PHP's `$_REQUEST`, ASP.NET's `Request[]`), any of them
//!   alone or together in that order, under every reading of `tower_pkce::fuzzing::READINGS`
//!   (and this target's own: any case with a `[...]` suffix dropped), taking the first or the
//!   last copy of each name;
//! - under each of these readings it never redeems a code whose authorization request carried
//!   a challenge unless the `code_verifier` that same reading finds matches it (S256), never
//!   redeems a code of a client that is not exempt without one, and never redeems a code twice;
//!
//! and the client checks that a redirect carrying a code brings back exactly the `state` it
//! sent. A panic anywhere, and a 500 from the layer, are crashes too.
#![no_main]

// Under layer/, so that fuzz_targets/ holds only targets.
#[path = "layer/ops.rs"]
mod ops;
#[path = "layer/readings.rs"]
mod readings;
#[path = "layer/requests.rs"]
mod requests;
#[path = "layer/routing.rs"]
mod routing;
#[path = "layer/upstream.rs"]
mod upstream;

use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http::header::{AUTHORIZATION, COOKIE, LOCATION};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use tower::{Layer as _, ServiceExt as _};
use tower_pkce::{MemoryStore, PkceLayer};

use ops::{spell, target_path, Challenge, Op, Path, Place, Target, Verifier};
use readings::lenient;
use requests::{add_extras, add_script_name, build, join, params_of};
use upstream::{legacy, Legacy};

const REDIRECT: &str = "https://app.example/cb";
const EXEMPT: &str = "conf";
const TOKEN: &str = "/token";
const AUTHORIZE: &str = "/authorize";

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
        .unwrap_or_else(|e| panic!("3 attempts: {e}"))
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
                    target,
                    headers,
                } => {
                    let Some((path, script)) = target_path(&target, AUTHORIZE) else {
                        continue;
                    };
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
                            &path,
                            b"",
                            encoded,
                            Some("application/x-www-form-urlencoded"),
                        )
                    } else {
                        build(&Method::GET, &path, &encoded, Vec::new(), None)
                    };
                    let Some(mut request) = request else { continue };
                    add_script_name(&mut request, script);
                    add_extras(&mut request, &headers, AUTHORIZE);
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
                    target,
                    moves,
                    query,
                    headers,
                } => {
                    let Some(flow) = seen.get(usize::from(code) % seen.len().max(1)) else {
                        continue;
                    };
                    let Some((path, script)) = target_path(&target, TOKEN) else {
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
                    // Parameters moved or copied elsewhere, their names respelt.
                    let (mut in_body, mut in_query, mut in_cookie) =
                        (Vec::new(), Vec::new(), Vec::new());
                    let mut removed: Vec<&str> = Vec::new();
                    for m in moves.iter().take(8) {
                        let name = m.field.name();
                        let Some((_, value)) = fields.iter().find(|(n, _)| *n == name) else {
                            continue;
                        };
                        let pair = spell(name, value, m.spelling);
                        match m.place {
                            Place::Body => in_body.push(pair),
                            Place::Query => in_query.push(pair),
                            Place::Cookie => in_cookie.push(pair),
                        }
                        if !m.keep {
                            removed.push(name);
                        }
                    }
                    fields.retain(|(n, _)| !removed.contains(n));
                    let (body, content_type) = if json {
                        let mut map: serde_json::Map<String, serde_json::Value> = fields
                            .iter()
                            .map(|(n, v)| (n.to_string(), v.clone().into()))
                            .collect();
                        for pair in &in_body {
                            if let Some((n, v)) = form_urlencoded::parse(pair.as_bytes()).next() {
                                map.insert(n.into_owned(), v.into_owned().into());
                            }
                        }
                        let mut body = serde_json::to_vec(&map).unwrap();
                        body.extend_from_slice(&extra);
                        (body, "application/json")
                    } else {
                        let mut body = form_urlencoded::Serializer::new(String::new())
                            .extend_pairs(fields.iter().map(|(n, v)| (*n, v.as_str())))
                            .finish()
                            .into_bytes();
                        for pair in &in_body {
                            if !body.is_empty() {
                                body.push(b'&');
                            }
                            body.extend_from_slice(pair.as_bytes());
                        }
                        if !extra.is_empty() {
                            body.push(b'&');
                            body.extend_from_slice(&extra);
                        }
                        (body, "application/x-www-form-urlencoded")
                    };
                    let mut full_query = query;
                    for pair in &in_query {
                        if !full_query.is_empty() {
                            full_query.push(b'&');
                        }
                        full_query.extend_from_slice(pair.as_bytes());
                    }
                    let Some(mut request) =
                        build(&Method::POST, &path, &full_query, body, Some(content_type))
                    else {
                        continue;
                    };
                    if let (Some(id), true) = (client.id(), basic) {
                        let credentials = STANDARD.encode(format!("{id}:secret"));
                        if let Ok(value) = format!("Basic {credentials}").parse() {
                            request.headers_mut().insert(AUTHORIZATION, value);
                        }
                    }
                    if !in_cookie.is_empty() {
                        if let Ok(value) = HeaderValue::from_bytes(&join(&in_cookie, "; ")) {
                            request.headers_mut().append(COOKIE, value);
                        }
                    }
                    add_script_name(&mut request, script);
                    add_extras(&mut request, &headers, TOKEN);
                    let Ok(response) = svc.clone().oneshot(request).await;
                    assert_ne!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
                }
                Op::Raw {
                    path,
                    post,
                    query,
                    body,
                    content_type,
                    headers,
                } => {
                    let (path, script) = match &path {
                        Path::Authorize => (AUTHORIZE.to_owned(), None),
                        Path::Token => (TOKEN.to_owned(), None),
                        Path::Metadata => ("/.well-known/openid-configuration".to_owned(), None),
                        Path::Resource => ("/resource".to_owned(), None),
                        Path::TokenTrick(i) => {
                            let Some(t) = target_path(&Target::Trick(*i), TOKEN) else {
                                continue;
                            };
                            t
                        }
                        Path::AuthorizeTrick(i) => {
                            let Some(t) = target_path(&Target::Trick(*i), AUTHORIZE) else {
                                continue;
                            };
                            t
                        }
                        Path::Raw(p) if p.starts_with('/') => (p.clone(), None),
                        Path::Raw(_) => continue,
                    };
                    let method = if post { Method::POST } else { Method::GET };
                    let Some(mut request) =
                        build(&method, &path, &query, body, content_type.as_deref())
                    else {
                        continue;
                    };
                    add_script_name(&mut request, script);
                    add_extras(&mut request, &headers, TOKEN);
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
