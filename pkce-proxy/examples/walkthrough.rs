//! A guided tour of `pkce-proxy`: what it adds to an OAuth 2.0 server that lacks PKCE.
//!
//! Run it with `cargo run --example walkthrough`. It starts, in this one process, a small
//! legacy authorization server that knows nothing of PKCE and the proxy in front of it, then
//! plays an app's sign-in flow and two attacks against the proxy with a real HTTP client,
//! printing each step. Every step checks what it shows: if the proxy does not behave as
//! described the example exits with an error (CI runs it as a smoke test).

use std::collections::HashMap;
use std::error::Error;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use pkce_proxy::{Config, Proxy};
use reqwest::Url;
use serde_json::{json, Value};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, Reason};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const CLIENT_ID: &str = "app";
const REDIRECT_URI: &str = "https://app.example/cb";

// ---------------------------------------------------------------------------------------------
// The legacy server: codes for anyone who asks (sign-in omitted), no PKCE, no single use.
// ---------------------------------------------------------------------------------------------

/// Codes issued, with the client each was issued to. Never removed: like many legacy servers,
/// this one accepts a code as often as it is presented.
type Codes = Arc<Mutex<HashMap<String, String>>>;

async fn authorize(
    State(codes): State<Codes>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // Only the one registered client and redirect URI; `code_challenge` is not even read.
    let client = q.get("client_id").map(String::as_str);
    let redirect_uri = q.get("redirect_uri").map(String::as_str);
    if client != Some(CLIENT_ID) || redirect_uri.is_some_and(|r| r != REDIRECT_URI) {
        return (StatusCode::BAD_REQUEST, "unknown client or redirect_uri").into_response();
    }
    let code = format!("{:032x}", rand::random::<u128>());
    if let Ok(mut codes) = codes.lock() {
        codes.insert(code.clone(), CLIENT_ID.to_owned());
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("code", &code);
    if let Some(state) = q.get("state") {
        query.append_pair("state", state); // echoed exactly as received
    }
    let location = format!("{REDIRECT_URI}?{}", query.finish());
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn token(State(codes): State<Codes>, Form(f): Form<HashMap<String, String>>) -> Response {
    let known = |code: &String| {
        codes
            .lock()
            .is_ok_and(|codes| codes.get(code) == f.get("client_id"))
    };
    let grant_ok = f
        .get("grant_type")
        .is_some_and(|g| g == "authorization_code");
    if grant_ok && f.get("code").is_some_and(known) {
        let access_token = format!("legacy-{:016x}", rand::random::<u64>());
        Json(json!({"access_token": access_token, "token_type": "Bearer"})).into_response()
    } else {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        )
            .into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// The tour.
// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    println!("tower-pkce walkthrough: PKCE (RFC 7636) for an OAuth server that lacks it\n");

    // 1. The legacy server, on a free local port.
    let codes = Codes::default();
    let legacy_app = Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(codes.clone());
    let legacy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let legacy_addr = legacy_listener.local_addr()?;
    tokio::spawn(async move { axum::serve(legacy_listener, legacy_app).await });
    let legacy = format!("http://{legacy_addr}");
    println!("1. A legacy OAuth server without PKCE listens on {legacy}");
    println!("   (it ignores code_challenge and accepts a code more than once)\n");

    // 2. pkce-proxy in front of it, with the default (strict) settings: S256 only, PKCE
    //    required for every client.
    let mut config = Config::new(legacy.parse()?);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy = Proxy::bind(config).await?;
    let base = format!("http://{}", proxy.local_addr());
    // `serve` consumes the proxy: keep a handle on its layer to read the counters at the end.
    let layer = proxy.layer().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve(async {
        let _ = stopped.await;
    }));
    println!("2. pkce-proxy listens on {base} and forwards to {legacy}");
    println!("   From here on the app talks only to the proxy, as it would in production.\n");

    // The app's HTTP client. Redirects are not followed: the authorize response's Location
    // is what a browser would take back to the app, and we want to read it.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    // 3. A complete, honest flow.
    println!("3. The app signs a user in, with PKCE");
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256).encoded();
    println!(
        "   code_verifier  (kept secret by the app) = {}",
        verifier.secret()
    );
    println!("   code_challenge (sent in the request)    = {challenge}  (S256 of the verifier)");
    let (code, state) = authorize_via(&http, &base, "xyz", &challenge).await?;
    println!("   → the app gets back code={code} and state={state}");
    check(
        state == "xyz",
        "the proxy should give the app its own state back",
    )?;
    // On the way up the proxy swapped `state` for a random handle under which it recorded
    // the challenge; on the way back it bound the code to that challenge and swapped back.
    println!("     (the server saw a random handle instead; the proxy swapped it back)");

    let (status, body) = redeem(&http, &base, &code, Some(verifier.secret())).await?;
    println!("   POST /token with code and code_verifier → {status} {body}");
    check(
        status == StatusCode::OK && body["access_token"].is_string(),
        "the token request with the right verifier should succeed",
    )?;
    println!("   The verifier matches the challenge, so the proxy let the request through.\n");

    // 4. Attack 1: a stolen code. The attacker intercepted the redirect (a malicious app
    //    registered for the same URL scheme, a leaked log, a proxy) and so has the code, but
    //    never saw the verifier, which stayed inside the real app.
    println!(
        "4. Attack: an attacker intercepts the redirect of another sign-in and redeems the code"
    );
    let victim_verifier = CodeVerifier::generate();
    let victim_challenge =
        CodeChallenge::from_verifier(&victim_verifier, ChallengeMethod::S256).encoded();
    let (stolen, _) = authorize_via(&http, &base, "victim-state", &victim_challenge).await?;
    let (status, body) = redeem(&http, &base, &stolen, None).await?;
    println!("   via the proxy, without code_verifier    → {status} {body}");
    check(
        status == StatusCode::BAD_REQUEST && body["error"] == "invalid_grant",
        "a code redeemed without its verifier should be refused with invalid_grant",
    )?;
    // What the same request would have got with no proxy in front. (In a deployment the
    // legacy server is reachable only through the proxy; here we go around it to compare.)
    let (status, body) = redeem(&http, &legacy, &stolen, None).await?;
    println!("   the same request straight to the server → {status} {body}");
    check(
        status == StatusCode::OK,
        "the legacy server itself should accept the stolen code (that is why the proxy exists)",
    )?;
    println!("   Without the proxy the attacker would now hold the victim's token.");
    // The refused attempt does not lock the real app out (a code is burned only after
    // several failed attempts).
    let (status, _) = redeem(&http, &base, &stolen, Some(victim_verifier.secret())).await?;
    println!("   the victim's app, with its verifier     → {status}");
    check(
        status == StatusCode::OK,
        "the legitimate client should still redeem its code after one refused attempt",
    )?;
    println!();

    // 5. Attack 2: a PKCE downgrade (RFC 9700 §4.8.2). An attacker starts a flow without
    //    code_challenge, so that the code it gets back is tied to no verifier and can be
    //    injected into a victim's session. The proxy requires PKCE, so the flow never starts.
    println!("5. Attack: an authorization request without code_challenge (a PKCE downgrade)");
    let issued_before = codes.lock().map(|c| c.len()).unwrap_or_default();
    let url = Url::parse_with_params(
        &format!("{base}/authorize"),
        [
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("state", "abc"),
        ],
    )?;
    let response = http.get(url).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    println!("   GET /authorize without code_challenge → {status} {body}");
    check(
        status == StatusCode::BAD_REQUEST && body["error"] == "invalid_request",
        "an authorization request without PKCE should be refused with invalid_request",
    )?;
    let issued_after = codes.lock().map(|c| c.len()).unwrap_or_default();
    check(
        issued_after == issued_before,
        "a refused authorization request should never reach the legacy server",
    )?;
    println!("   Refused before it reached the server: no code was issued.\n");

    // 6. Attack 3: a replay. Someone who got hold of the first flow's code and verifier (from
    //    a log, say) presents them again after the app has used them.
    println!("6. Attack: the code from step 3 replayed, with its verifier");
    let (status, body) = redeem(&http, &base, &code, Some(verifier.secret())).await?;
    println!("   via the proxy                           → {status} {body}");
    check(
        status == StatusCode::BAD_REQUEST && body["error"] == "invalid_grant",
        "a code redeemed twice should be refused with invalid_grant",
    )?;
    let (status, body) = redeem(&http, &legacy, &code, Some(verifier.secret())).await?;
    println!("   the same request straight to the server → {status} {body}");
    check(
        status == StatusCode::OK,
        "the legacy server itself should accept the code again (it does not enforce single use)",
    )?;
    println!("   The proxy enforces single use, which the server does not (RFC 6749 §4.1.2).\n");

    // 7. What the proxy counted. Operators watch these (also on the admin listener's
    //    /metrics, with `--admin-listen`) to see attacks and misbehaving clients.
    println!("7. The proxy's decision counters:");
    let metrics = layer.metrics();
    for (outcome, reason, count) in metrics.snapshot() {
        println!("   {:<8} {reason:<24} {count}", outcome.as_str());
    }
    for (reason, expected) in [
        (Reason::VerifierRequired, 1),
        (Reason::ChallengeRequired, 1),
        (Reason::CodeReused, 1),
    ] {
        check(
            metrics.refused(reason) == expected,
            &format!("expected {expected} refusal(s) for {}", reason.as_str()),
        )?;
    }

    // Shut down cleanly: signal the proxy and wait for it to drain.
    drop(http);
    let _ = stop.send(());
    serving.await??;
    println!("\nThe proxy shut down cleanly. Done.");
    Ok(())
}

/// Sends the app's authorization request through `base` and returns the `code` and `state`
/// from the redirect back to the app.
async fn authorize_via(
    http: &reqwest::Client,
    base: &str,
    state: &str,
    challenge: &str,
) -> Result<(String, String)> {
    let url = Url::parse_with_params(
        &format!("{base}/authorize"),
        [
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let response = http.get(url).send().await?;
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    println!("   GET /authorize → {status} Location: {location}");
    check(
        status == StatusCode::FOUND && location.starts_with(REDIRECT_URI),
        "the authorization request should redirect to the app",
    )?;
    let params: HashMap<String, String> =
        Url::parse(&location)?.query_pairs().into_owned().collect();
    let code = params.get("code").cloned().unwrap_or_default();
    let state = params.get("state").cloned().unwrap_or_default();
    check(!code.is_empty(), "the redirect should carry a code")?;
    Ok((code, state))
}

/// Posts an authorization code token request to `base` and returns the status and JSON body.
async fn redeem(
    http: &reqwest::Client,
    base: &str,
    code: &str,
    verifier: Option<&str>,
) -> Result<(StatusCode, Value)> {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
    ];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier));
    }
    let response = http
        .post(format!("{base}/token"))
        .form(&form)
        .send()
        .await?;
    let status = response.status();
    let body = response.json().await?;
    Ok((status, body))
}

/// Fails the walkthrough with `message` unless `ok`.
fn check(ok: bool, message: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected behaviour: {message}").into())
    }
}
