//! The legacy server: issues codes, and checks the invariants under every reading of a token
//! request.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{AUTHORIZATION, LOCATION};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};

use crate::readings::{cookies_as_form, form, json_as_form, key, lenient, one, readings};
use crate::routing::route;
use crate::{s256, EXEMPT, REDIRECT};

/// What the legacy server issued a code for, as it read the authorization request.
struct Issued {
    client: Option<String>,
    challenge: Option<String>,
    method: Option<String>,
}

/// One lenient server's way of reading a token request: which reading, which body, which
/// sources, which copy of each name, and where the client comes from. It redeems a code at
/// most once.
type ServerKey = (usize, usize, u8, [u8; 3]);

#[derive(Default)]
pub struct Legacy {
    next: u64,
    issued: HashMap<String, Issued>,
    redeemed: HashSet<(ServerKey, String)>,
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

const SOURCES: [&str; 3] = ["query", "body", "cookies"];

/// The first or the last copy, an empty one being absent (RFC 6749 §3.1).
fn pick<'a>(copies: &[&'a [u8]], last: bool) -> Option<&'a [u8]> {
    let copy = if last { copies.last() } else { copies.first() };
    copy.copied().filter(|v| !v.is_empty())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The token endpoint under every reading: asserts the invariants for each code some reading
/// redeems, and records it redeemed for that reading. Whether any reading redeemed a code.
fn token_endpoint(
    legacy: &mut Legacy,
    route: &str,
    query: &[u8],
    body: &[u8],
    headers: &HeaderMap,
) -> bool {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|c| STANDARD.decode(c).ok())
        .and_then(|c| String::from_utf8(c).ok())
        .and_then(|c| c.split_once(':').map(|(user, _)| user.to_owned()));
    let json = json_as_form(body);
    let cookies = cookies_as_form(headers);
    let mut hashes: HashMap<Vec<u8>, String> = HashMap::new();
    let mut redeemed_any = false;
    for (r, (label, reading)) in readings().into_iter().enumerate() {
        let (code_key, verifier_key, client_key) = (
            key(reading, "code"),
            key(reading, "code_verifier"),
            key(reading, "client_id"),
        );
        let q = reading(query);
        let c = reading(&cookies);
        let mut bodies = vec![("a form", reading(body))];
        if let Some(json) = &json {
            bodies.push(("JSON", reading(json)));
        }
        for (b, (body_as, body_pairs)) in bodies.iter().enumerate() {
            let parts: [&[(String, Vec<u8>)]; 3] = [&q, body_pairs, &c];
            for mask in 1u8..8 {
                // A source with nothing in it adds no server of its own.
                if (0..3).any(|i| mask & (1 << i) != 0 && parts[i].is_empty()) && mask != 2 {
                    continue;
                }
                let copies = |key: &str| -> Vec<&[u8]> {
                    (0..3)
                        .filter(|i| mask & (1 << i) != 0)
                        .flat_map(|i| parts[i].iter())
                        .filter(|(n, _)| n == key)
                        .map(|(_, v)| v.as_slice())
                        .collect()
                };
                let (codes, verifiers, ids) = (
                    copies(&code_key),
                    copies(&verifier_key),
                    copies(&client_key),
                );
                if codes.is_empty() {
                    continue;
                }
                for code_last in [false, true] {
                    let Some(code) = pick(&codes, code_last).map(lossy) else {
                        continue;
                    };
                    let Some(issued) = legacy.issued.get(&code) else {
                        continue;
                    };
                    for verifier_last in [false, true] {
                        // The client: Basic's user first or the parameter's first or last.
                        for client_from in 0u8..4 {
                            let id = pick(&ids, client_from % 2 == 1).map(lossy);
                            let client = if client_from < 2 {
                                basic.clone().or(id)
                            } else {
                                id.or_else(|| basic.clone())
                            };
                            // Like any server, the legacy one redeems a code only for the
                            // client it was issued to.
                            if client.is_none() || client != issued.client {
                                continue;
                            }
                            let verifier = pick(&verifiers, verifier_last);
                            let sources: Vec<&str> = (0..3)
                                .filter(|i| mask & (1 << i) != 0)
                                .map(|i| SOURCES[i])
                                .collect();
                            let server = || {
                                format!(
                                    "reading {label:?}, the body as {body_as}, from {sources:?}, \
                                     the {} code and the {} verifier; routed to the token endpoint from {route}",
                                    if code_last { "last" } else { "first" },
                                    if verifier_last { "last" } else { "first" },
                                )
                            };
                            match (&issued.challenge, issued.client.as_deref()) {
                                (Some(challenge), _) => {
                                    assert_eq!(
                                        issued.method.as_deref(),
                                        Some("S256"),
                                        "a plain or unnamed method got through"
                                    );
                                    let verifier = verifier.unwrap_or_else(|| {
                                        panic!("{code} redeemed without a verifier: {}", server())
                                    });
                                    let hash = hashes
                                        .entry(verifier.to_vec())
                                        .or_insert_with(|| s256(&lossy(verifier)));
                                    assert_eq!(
                                        hash,
                                        challenge,
                                        "{code} redeemed with the wrong verifier {:?}: {}",
                                        lossy(verifier),
                                        server()
                                    );
                                }
                                (None, Some(EXEMPT)) => {}
                                (None, client) => panic!(
                                    "{code} of {client:?} was issued and redeemed without PKCE: {}",
                                    server()
                                ),
                            }
                            let key: ServerKey = (
                                r,
                                b,
                                mask,
                                [u8::from(code_last), u8::from(verifier_last), client_from],
                            );
                            assert!(
                                legacy.redeemed.insert((key, code.clone())),
                                "{code} redeemed twice: {}",
                                server()
                            );
                            redeemed_any = true;
                        }
                    }
                }
            }
        }
    }
    redeemed_any
}

pub async fn legacy(
    state: Arc<Mutex<Legacy>>,
    req: Request<tower_pkce::PkceBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    let (token, authorize) = route(parts.uri.path(), &parts.headers);
    let mut legacy = state.lock().unwrap();
    let mut redeemed = false;
    if let Some(route) = &token {
        redeemed = token_endpoint(&mut legacy, route, query, &body, &parts.headers);
    }
    if authorize.is_some() {
        let mut pairs = form(query);
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
    if token.is_some() {
        return Ok(if redeemed {
            reply(
                StatusCode::OK,
                None,
                r#"{"access_token":"t","token_type":"Bearer"}"#,
            )
        } else {
            reply(
                StatusCode::BAD_REQUEST,
                None,
                r#"{"error":"invalid_grant"}"#,
            )
        });
    }
    if parts
        .uri
        .path()
        .to_ascii_lowercase()
        .contains(".well-known")
    {
        return Ok(reply(
            StatusCode::OK,
            None,
            r#"{"issuer":"https://as.example","authorization_endpoint":"https://as.example/authorize","token_endpoint":"https://as.example/token"}"#,
        ));
    }
    Ok(reply(StatusCode::OK, None, "resource"))
}
