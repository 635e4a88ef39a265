//! PKCE in front of a legacy authorization server written with axum.
//!
//! Run it with `cargo run --example axum`. It serves the protected server on a local port,
//! plays one PKCE flow and one stolen-code attack against it with a real HTTP client, prints
//! each step, and exits. Pass `--serve` to keep serving on 127.0.0.1:3000 afterwards.

#![allow(clippy::unwrap_used)] // the demo server's mutex is never poisoned

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceLayer};

type Codes = Arc<Mutex<HashMap<String, String>>>;

/// The legacy server: issues a code to anyone who asks (sign-in omitted), knows nothing of
/// PKCE.
async fn authorize(
    State(codes): State<Codes>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let code = format!("code-{}", codes.lock().unwrap().len() + 1);
    let client = q.get("client_id").cloned().unwrap_or_default();
    codes.lock().unwrap().insert(code.clone(), client);
    let mut location = format!("https://app.example/callback?code={code}");
    if let Some(state) = q.get("state") {
        location.push_str(&format!("&state={state}"));
    }
    Redirect::to(&location).into_response()
}

async fn token(State(codes): State<Codes>, Form(f): Form<HashMap<String, String>>) -> Response {
    let code = f.get("code").cloned().unwrap_or_default();
    match codes.lock().unwrap().get(&code) {
        Some(client) if f.get("client_id") == Some(client) => {
            Json(serde_json::json!({"access_token": "legacy-token", "token_type": "Bearer"}))
                .into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "invalid_grant"})),
        )
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");

    // The whole integration: one `.layer(...)` on the legacy router.
    let app = Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(Codes::default())
        .layer(PkceLayer::new());

    let listener = tokio::net::TcpListener::bind(if serve {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    })
    .await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("legacy server with PKCE listening on {base}\n");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256).encoded();

    // 1. Authorize with a challenge.
    let uri = format!("{base}/authorize?response_type=code&client_id=app&state=xyz&code_challenge={challenge}&code_challenge_method=S256");
    let response = client.get(uri.parse()?).await?;
    let location = response.headers()[header::LOCATION].to_str()?.to_owned();
    println!("1. authorize          → {} {location}", response.status());
    let query: HashMap<String, String> =
        form_urlencoded::parse(location.split_once('?').map_or("", |(_, q)| q).as_bytes())
            .into_owned()
            .collect();
    let code = &query["code"];

    // 2. An attacker who intercepted the code tries it without the verifier.
    let (status, body) = post_form(
        &client,
        &format!("{base}/token"),
        &format!("grant_type=authorization_code&code={code}&client_id=app"),
    )
    .await?;
    println!("2. token, no verifier → {status} {body}");

    // 3. The client redeems it with its verifier.
    let form = format!(
        "grant_type=authorization_code&code={code}&client_id=app&code_verifier={}",
        verifier.secret()
    );
    let (status, body) = post_form(&client, &format!("{base}/token"), &form).await?;
    println!("3. token, verifier    → {status} {body}");

    // 4. A replay of the same code.
    let (status, body) = post_form(&client, &format!("{base}/token"), &form).await?;
    println!("4. token, replay      → {status} {body}");

    // 5. An authorization request without PKCE never reaches the legacy server.
    let response = client
        .get(format!("{base}/authorize?response_type=code&client_id=app").parse()?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!(
        "5. authorize, no PKCE → {status} {}",
        String::from_utf8_lossy(&body)
    );

    if serve {
        println!("\nserving on {base}; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

async fn post_form(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>,
    uri: &str,
    form: &str,
) -> Result<(StatusCode, String), Box<dyn std::error::Error>> {
    let req = axum::http::Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(bytes::Bytes::from(form.to_owned())))?;
    let response = client.request(req).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
