//! Secrets never reach the logs, at any level. In a test binary of its own, with a global
//! subscriber: tracing caches callsite interest process-wide, so a scoped subscriber in a
//! binary whose other tests run on other threads can miss events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use support::*;
use tower_pkce::{PkceLayer, Reason};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_reaches_the_logs_at_trace_level() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let legacy = Legacy::default();
    let app = legacy
        .router()
        .layer(PkceLayer::new().exempt_client(CONFIDENTIAL));
    let mut secrets: Vec<String> = vec![CONFIDENTIAL_SECRET.into()];

    // A successful flow with a state worth hiding, then failures of every kind.
    let pkce = Pkce::new();
    let state = "csrf-token-8c1f2e";
    let params = browser_flow(
        &app,
        &authorize_query(CLIENT, REDIRECT, Some(state), Some(&pkce.challenge)),
    )
    .await;
    let code = params["code"].clone();
    secrets.extend([code.clone(), pkce.verifier.clone(), state.to_owned()]);
    let wrong = Pkce::new();
    secrets.push(wrong.verifier.clone());
    assert_eq!(
        redeem(&app, &code, Some(&wrong.verifier), CLIENT)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        redeem(&app, &code, Some(&pkce.verifier), CLIENT)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        redeem(&app, &code, Some(&pkce.verifier), CLIENT)
            .await
            .status(),
        StatusCode::BAD_REQUEST
    );

    // An exempt client with a secret in the body and by Basic, and a downgrade attempt.
    let params = browser_flow(
        &app,
        &authorize_query(CONFIDENTIAL, CONFIDENTIAL_REDIRECT, None, None),
    )
    .await;
    secrets.push(params["code"].clone());
    let response = app
        .send(token_request(&[
            ("grant_type", "authorization_code"),
            ("code", &params["code"]),
            ("client_id", CONFIDENTIAL),
            ("client_secret", CONFIDENTIAL_SECRET),
            ("code_verifier", &wrong.verifier),
        ]))
        .await;
    assert_eq!(
        response.extensions().get::<Reason>(),
        Some(&Reason::Downgrade)
    );
    let mut req = token_request(&[
        ("grant_type", "authorization_code"),
        ("code", &params["code"]),
    ]);
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{CONFIDENTIAL}:{CONFIDENTIAL_SECRET}"))
    );
    req.headers_mut()
        .insert(header::AUTHORIZATION, basic.parse().unwrap());
    assert_eq!(
        app.send(req).await.status(),
        StatusCode::UNAUTHORIZED,
        "legacy wants the secret in the body"
    );
    // JSON, a malformed body, an unknown code and a refresh grant.
    let json = serde_json::json!({"grant_type":"authorization_code","code":"json-code-secret-1","client_id":CLIENT,"code_verifier":pkce.verifier});
    secrets.push("json-code-secret-1".into());
    let req = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json.to_string()))
        .unwrap();
    app.send(req).await;
    app.send(form_post(
        "/token",
        "grant_type=refresh_token&refresh_token=rt-secret-refresh",
    ))
    .await;
    secrets.push("rt-secret-refresh".into());
    secrets.extend(legacy.issued.lock().unwrap().iter().cloned());

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The decisions are there…
    for expected in [
        "flow_recorded",
        "code_bound",
        "verifier_mismatch",
        "verified",
        "code_reused",
        "downgrade",
        "client_id",
    ] {
        assert!(
            logs.contains(expected),
            "missing {expected} in logs:\n{logs}"
        );
    }
    // …and not one secret.
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "secret {secret:?} leaked into logs:\n{logs}"
        );
    }
}
