//! A small legacy OAuth 2.0 authorization server without PKCE, as an axum router, and a test
//! client that plays flows through whatever wraps it.
//!
//! The server behaves like the servers tower-pkce is for: it ignores `code_challenge`, sends
//! an unauthenticated browser to a sign-in page that redirects back to `/authorize` with the
//! same query, accepts a code twice (it does not enforce single use), and has a refresh
//! grant, a discovery document and a protected resource.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Query, RawQuery, State};
use axum::http::{header, HeaderMap, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{self, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use rand::RngCore as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

#[cfg(feature = "redis")]
pub mod redis;

pub const CLIENT: &str = "app";
pub const REDIRECT: &str = "https://app.example/cb";
pub const OTHER_CLIENT: &str = "other";
pub const OTHER_REDIRECT: &str = "https://other.example/cb";
pub const CONFIDENTIAL: &str = "backend";
pub const CONFIDENTIAL_SECRET: &str = "backend-secret-value";
pub const CONFIDENTIAL_REDIRECT: &str = "https://backend.example/cb";
/// A client id that reads differently raw and form-decoded.
pub const PLUS_CLIENT: &str = "svc+prod";
pub const PLUS_REDIRECT: &str = "https://svc.example/cb";

#[derive(Clone, Default)]
pub struct Legacy {
    codes: Arc<Mutex<HashMap<String, (String, String)>>>,
    /// Every token request body the server received, to check what reached it.
    pub token_bodies: Arc<Mutex<Vec<Bytes>>>,
    /// Tokens issued, to check none leaks into logs.
    pub issued: Arc<Mutex<Vec<String>>>,
    /// Pushed authorization requests (RFC 9126) by `request_uri`, as the server received them.
    pub pushed: Arc<Mutex<HashMap<String, HashMap<String, String>>>>,
}

fn random() -> String {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn registered(client: &str) -> Option<&'static str> {
    match client {
        CLIENT => Some(REDIRECT),
        OTHER_CLIENT => Some(OTHER_REDIRECT),
        CONFIDENTIAL => Some(CONFIDENTIAL_REDIRECT),
        PLUS_CLIENT => Some(PLUS_REDIRECT),
        _ => None,
    }
}

impl Legacy {
    pub fn router(&self) -> Router {
        Router::new()
            .route("/authorize", routing::get(authorize))
            .route("/login", routing::get(login_page).post(login))
            .route("/token", post(token))
            .route("/par", post(par))
            // A page that posts whatever it is given wherever it is told (as a legacy app's
            // generic "continue" page might): a form_post look-alike to another URI.
            .route(
                "/echo-form",
                routing::get(|Query(q): Query<HashMap<String, String>>| async move {
                    let action = q.get("action").cloned().unwrap_or_default();
                    let mut params = form_urlencoded::Serializer::new(String::new());
                    for name in ["code", "state"] {
                        if let Some(v) = q.get(name) {
                            params.append_pair(name, v);
                        }
                    }
                    form_post_page(&action, &params.finish())
                }),
            )
            // Another tenant's discovery document, for endpoints the layer does not guard.
            .route(
                "/t2/.well-known/openid-configuration",
                routing::get(|| async {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        r#"{"issuer":"https://as.example/t2","authorization_endpoint":"https://as.example/t2/authorize","token_endpoint":"https://as.example/t2/token"}"#,
                    )
                }),
            )
            .route("/.well-known/openid-configuration", routing::get(discovery))
            // Discovery for an issuer with a path: RFC 8414 §3.1 and OpenID Discovery forms.
            .route(
                "/.well-known/oauth-authorization-server/tenant1",
                routing::get(discovery),
            )
            .route(
                "/tenant1/.well-known/openid-configuration",
                routing::get(discovery),
            )
            .route("/resource", routing::get(|| async { "protected resource" }))
            // An open redirector, as many legacy apps have one (a logout `next`, say).
            .route(
                "/go",
                routing::get(|Query(q): Query<HashMap<String, String>>| async move {
                    redirect(StatusCode::FOUND, q.get("to").map_or("/", String::as_str))
                }),
            )
            // What reached the server: method, target and headers.
            .route(
                "/headers",
                routing::any(|req: Request<Body>| async move {
                    let headers: Vec<(String, String)> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                        .collect();
                    let mut response = Json(json!({
                        "method": req.method().as_str(),
                        "uri": req.uri().to_string(),
                        "headers": headers,
                    }))
                    .into_response();
                    let h = response.headers_mut();
                    h.append(header::SET_COOKIE, "a=1; Path=/".parse().unwrap());
                    h.append(header::SET_COOKIE, "b=2; Path=/; HttpOnly".parse().unwrap());
                    h.insert("x-upstream", "legacy".parse().unwrap());
                    (StatusCode::IM_A_TEAPOT, response)
                }),
            )
            // A slow page, for timeouts and graceful shutdown.
            .route(
                "/slow",
                routing::get(|Query(q): Query<HashMap<String, String>>| async move {
                    let ms = q.get("ms").and_then(|m| m.parse().ok()).unwrap_or(1000);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    "slow"
                }),
            )
            .route(
                "/echo",
                post(|headers: HeaderMap, body: Bytes| async move {
                    let ct = headers
                        .get(header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    ([("x-content-type", ct)], body)
                }),
            )
            .with_state(self.clone())
    }
}

/// RFC 9126: the request's parameters, kept under a fresh `request_uri`.
async fn par(
    State(server): State<Legacy>,
    Form(form): Form<HashMap<String, String>>,
) -> Response<Body> {
    if form.get("client_id").and_then(|c| registered(c)).is_none() {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    }
    let request_uri = format!("urn:ietf:params:oauth:request_uri:{}", random());
    server
        .pushed
        .lock()
        .unwrap()
        .insert(request_uri.clone(), form);
    (
        StatusCode::CREATED,
        Json(json!({"request_uri": request_uri, "expires_in": 60})),
    )
        .into_response()
}

async fn authorize(
    State(server): State<Legacy>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    // A request by reference takes every parameter from the pushed request.
    let q = match q.get("request_uri") {
        Some(uri) => match server.pushed.lock().unwrap().get(uri) {
            Some(pushed) if pushed.get("client_id") == q.get("client_id") => pushed.clone(),
            _ => return (StatusCode::BAD_REQUEST, "invalid_request_uri").into_response(),
        },
        None => q,
    };
    let signed_in = headers
        .get(header::COOKIE)
        .is_some_and(|c| c.to_str().unwrap().contains("sid=alice"));
    if !signed_in {
        // The legacy sign-in page gets the whole authorize URL to come back to.
        let next = format!("/authorize?{}", raw.unwrap_or_default());
        let location = format!("/login?next={}", urlencode(&next));
        return redirect(StatusCode::FOUND, &location);
    }
    let client = q.get("client_id").cloned().unwrap_or_default();
    let Some(redirect_uri) = registered(&client) else {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    };
    if q.get("redirect_uri").is_some_and(|r| r != redirect_uri) {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    }
    let response_type = q.get("response_type").cloned().unwrap_or_default();
    let hybrid = response_type.split(' ').count() > 1;
    let sep = if hybrid { '#' } else { '?' };
    let mut params = form_urlencoded::Serializer::new(String::new());
    if q.get("scope").is_some_and(|s| s.contains("forbidden")) {
        params.append_pair("error", "access_denied");
    } else {
        let code = random();
        server
            .codes
            .lock()
            .unwrap()
            .insert(code.clone(), (client.clone(), redirect_uri.to_owned()));
        params.append_pair("code", &code);
        if hybrid {
            params.append_pair("id_token", "header.payload.sig");
        }
    }
    if let Some(state) = q.get("state") {
        params.append_pair("state", state);
    }
    // RFC 9207: the issuer in every authorization response.
    params.append_pair("iss", ISSUER);
    if q.get("response_mode").map(String::as_str) == Some("form_post") {
        return form_post_page(redirect_uri, &params.finish());
    }
    let location = format!("{redirect_uri}{sep}{}", params.finish());
    redirect(StatusCode::FOUND, &location)
}

pub const ISSUER: &str = "https://as.example";

/// The form_post response mode: a page that POSTs the response parameters to the client.
fn form_post_page(redirect_uri: &str, params: &str) -> Response<Body> {
    let mut inputs = String::new();
    for (name, value) in form_urlencoded::parse(params.as_bytes()) {
        inputs.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\"/>",
            html_escape(&name),
            html_escape(&value)
        ));
    }
    let page = format!(
        "<!DOCTYPE html><html><head><title>Submit This Form</title></head>\
         <body onload=\"javascript:document.forms[0].submit()\">\
         <form method=\"post\" action=\"{}\">{inputs}</form></body></html>",
        html_escape(redirect_uri)
    );
    let mut response = axum::response::Html(page).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-cache".parse().unwrap());
    response
}

fn html_escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn login_page(Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let next = q.get("next").cloned().unwrap_or_default();
    axum::response::Html(format!(
        "<form method=post action=/login><input name=next value=\"{next}\"><input name=user></form>"
    ))
}

async fn login(Form(form): Form<HashMap<String, String>>) -> Response<Body> {
    let next = form.get("next").cloned().unwrap_or_default();
    let mut response = redirect(StatusCode::SEE_OTHER, &next);
    response.headers_mut().insert(
        header::SET_COOKIE,
        "sid=alice; Path=/; HttpOnly".parse().unwrap(),
    );
    response
}

/// A redirect with the small HTML body Rails (and others) write, which repeats the target.
fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let page = format!(
        "<html><body>You are being <a href=\"{}\">redirected</a>.</body></html>",
        location.replace('&', "&amp;")
    );
    let mut response = Response::new(Body::from(page));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::LOCATION, location.parse().unwrap());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().unwrap(),
    );
    response
}

fn oauth_error(error: &str) -> Response<Body> {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

async fn token(State(server): State<Legacy>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    server.token_bodies.lock().unwrap().push(body.clone());
    let is_form = headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.to_str()
            .unwrap()
            .starts_with("application/x-www-form-urlencoded")
    });
    if !is_form {
        return oauth_error("invalid_request");
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let basic = headers.get(header::AUTHORIZATION).map(|v| {
        let raw = STANDARD
            .decode(v.to_str().unwrap().trim_start_matches("Basic "))
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (user, _) = raw.split_once(':').unwrap();
        form_urlencoded::parse(format!("u={user}").as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned()
    });
    let client = basic
        .or_else(|| form.get("client_id").cloned())
        .unwrap_or_default();
    let access_token = format!("at-{}", random());
    let refresh_token = format!("rt-{}", random());
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            // Deliberately legacy: a code is not removed when redeemed.
            let Some((owner, redirect_uri)) = server.codes.lock().unwrap().get(&code).cloned()
            else {
                return oauth_error("invalid_grant");
            };
            if owner != client {
                return oauth_error("invalid_grant");
            }
            if form.get("redirect_uri").is_some_and(|r| *r != redirect_uri) {
                return oauth_error("invalid_grant");
            }
            if client == CONFIDENTIAL
                && form.get("client_secret").map(String::as_str) != Some(CONFIDENTIAL_SECRET)
            {
                return (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "invalid_client"})),
                )
                    .into_response();
            }
        }
        Some("refresh_token") => {}
        _ => return oauth_error("unsupported_grant_type"),
    }
    server.issued.lock().unwrap().push(access_token.clone());
    server.issued.lock().unwrap().push(refresh_token.clone());
    let mut response = Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": refresh_token,
        "received": String::from_utf8_lossy(&body),
    }))
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
    response
}

pub const DISCOVERY: &str = r#"{"issuer":"https://as.example","authorization_endpoint":"https://as.example/authorize","token_endpoint":"https://as.example/token","response_types_supported":["code"]}"#;

async fn discovery() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ETAG, "\"v1\""),
        ],
        DISCOVERY,
    )
}

pub fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// A client

/// A verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = tower_pkce::CodeVerifier::generate();
        let challenge =
            tower_pkce::CodeChallenge::from_verifier(&verifier, tower_pkce::ChallengeMethod::S256)
                .encoded();
        Self {
            verifier: verifier.secret().to_owned(),
            challenge,
        }
    }
}

/// Something that answers HTTP requests: a router in process, or a server over a socket.
pub trait Transport {
    fn send(&self, req: Request<Body>)
        -> impl std::future::Future<Output = Response<Bytes>> + Send;
}

impl Transport for Router {
    async fn send(&self, req: Request<Body>) -> Response<Bytes> {
        let response = self.clone().oneshot(req).await.unwrap();
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
    }
}

pub fn query_of(location: &str) -> HashMap<String, String> {
    let component = location
        .split_once('#')
        .map(|(_, f)| f)
        .filter(|f| f.contains("code=") || f.contains("error="))
        .or_else(|| {
            location
                .split_once('?')
                .map(|(_, q)| q.split('#').next().unwrap())
        })
        .unwrap_or_default();
    form_urlencoded::parse(component.as_bytes())
        .into_owned()
        .collect()
}

pub fn location(response: &Response<Bytes>) -> String {
    response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn form_post(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

pub fn json_body(response: &Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap_or(Value::Null)
}

/// The query of an authorization request.
pub fn authorize_query(
    client: &str,
    redirect: &str,
    state: Option<&str>,
    challenge: Option<&str>,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", client)
        .append_pair("redirect_uri", redirect)
        .append_pair("scope", "openid");
    if let Some(state) = state {
        q.append_pair("state", state);
    }
    if let Some(challenge) = challenge {
        q.append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
    }
    q.finish()
}

/// Signs in on the legacy page with its `next`; returns where it sends the browser back to.
pub async fn sign_in(t: &impl Transport, next: &str) -> String {
    let signed_in = t
        .send(form_post(
            "/login",
            &format!("user=alice&next={}", urlencode(next)),
        ))
        .await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    location(&signed_in)
}

/// Follows the sign-in page's redirect back to `/authorize`, signed in.
pub async fn reenter(t: &impl Transport, back: &str) -> Response<Bytes> {
    let mut req = get(back);
    req.headers_mut()
        .insert(header::COOKIE, "sid=alice".parse().unwrap());
    t.send(req).await
}

/// Plays a browser through authorize → sign-in → re-entry for `response_mode=form_post`;
/// returns the final page.
pub async fn form_post_flow(t: &impl Transport, query: &str) -> Response<Bytes> {
    let first = t.send(get(&format!("/authorize?{query}"))).await;
    assert_eq!(first.status(), StatusCode::FOUND, "{:?}", first.body());
    let next = query_of(&location(&first)).remove("next").unwrap();
    let back = sign_in(t, &next).await;
    let page = reenter(t, &back).await;
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.body());
    page
}

/// The hidden inputs of a form_post page, decoded, in order.
pub fn form_inputs(page: &[u8]) -> Vec<(String, String)> {
    let html = std::str::from_utf8(page).unwrap();
    html.split("<input ")
        .skip(1)
        .map(|tag| {
            let attr = |name: &str| {
                let start = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                let end = start + tag[start..].find('"').unwrap();
                tag[start..end]
                    .replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&#x27;", "'")
                    .replace("&amp;", "&")
            };
            (attr("name"), attr("value"))
        })
        .collect()
}

/// Plays a browser through authorize → sign-in → re-entry → redirect. Returns the final
/// redirect's parameters.
pub async fn browser_flow(t: &impl Transport, query: &str) -> HashMap<String, String> {
    let first = t.send(get(&format!("/authorize?{query}"))).await;
    assert_eq!(
        first.status(),
        StatusCode::FOUND,
        "authorize: {:?}",
        first.body()
    );
    let login = location(&first);
    assert!(login.starts_with("/login?next="), "{login}");
    let next = query_of(&login).remove("next").unwrap();
    let back = sign_in(t, &next).await;
    let done = reenter(t, &back).await;
    assert_eq!(
        done.status(),
        StatusCode::FOUND,
        "re-entry: {:?}",
        done.body()
    );
    // The upstream's redirect body repeats its target: a handle in it never reaches the
    // client.
    if let Some(handle) = query_of(&next).get("state").filter(|h| h.len() == 22) {
        let body = String::from_utf8_lossy(done.body());
        assert!(!body.contains(handle.as_str()), "{body}");
    }
    let location = location(&done);
    let mut params = query_of(&location);
    params.insert("_location".into(), location);
    params
}

/// Starts a flow for `client` with a fresh challenge and returns the code and the PKCE pair.
pub async fn code_for(t: &impl Transport, client: &str, redirect: &str) -> (String, Pkce) {
    let pkce = Pkce::new();
    let params = browser_flow(
        t,
        &authorize_query(client, redirect, Some("st"), Some(&pkce.challenge)),
    )
    .await;
    assert_eq!(params.get("state").map(String::as_str), Some("st"));
    (params["code"].clone(), pkce)
}

pub fn token_request(fields: &[(&str, &str)]) -> Request<Body> {
    let mut body = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        body.append_pair(k, v);
    }
    form_post("/token", &body.finish())
}

pub async fn redeem(
    t: &impl Transport,
    code: &str,
    verifier: Option<&str>,
    client: &str,
) -> Response<Bytes> {
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", client),
        ("redirect_uri", REDIRECT),
    ];
    if client == OTHER_CLIENT {
        fields[3].1 = OTHER_REDIRECT;
    }
    if let Some(v) = verifier {
        fields.push(("code_verifier", v));
    }
    t.send(token_request(&fields)).await
}
