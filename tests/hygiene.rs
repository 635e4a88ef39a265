//! Store failures fail closed; faults that are not the store's are not counted as its.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use support::*;
use tower_pkce::store::{CodeBinding, CodeRecord, CodeState, PendingFlow, StoreKey};
use tower_pkce::{ChallengeStore, MemoryStore, PkceLayer, Reason, StoreError};

/// A store that delegates to a `MemoryStore` until it is told to fail.
#[derive(Clone, Default)]
struct Flaky {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::backend("connection refused"))
        } else {
            Ok(())
        }
    }
}

impl ChallengeStore for Flaky {
    async fn create_flow(
        &self,
        h: StoreKey,
        f: PendingFlow,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.create_flow(h, f, ttl).await
    }
    async fn flow(&self, h: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        self.check()?;
        self.inner.flow(h).await
    }
    async fn take_flow(&self, h: StoreKey) -> Result<Option<PendingFlow>, StoreError> {
        self.check()?;
        self.inner.take_flow(h).await
    }
    async fn bind_code(
        &self,
        c: StoreKey,
        b: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.bind_code(c, b, ttl).await
    }
    async fn record_redemption(
        &self,
        c: StoreKey,
        b: CodeBinding,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.record_redemption(c, b, ttl).await
    }
    async fn code(&self, c: StoreKey) -> Result<Option<CodeRecord>, StoreError> {
        self.check()?;
        self.inner.code(c).await
    }
    async fn redeem(&self, c: StoreKey) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.redeem(c).await
    }
    async fn unredeem(&self, c: StoreKey) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.unredeem(c).await
    }
    async fn record_failure(&self, c: StoreKey, max: u32) -> Result<Option<CodeState>, StoreError> {
        self.check()?;
        self.inner.record_failure(c, max).await
    }
}

#[tokio::test]
async fn store_failures_fail_closed() {
    let store = Flaky::default();
    let legacy = Legacy::default();
    let layer = PkceLayer::new()
        .exempt_client(CONFIDENTIAL)
        .with_store(store.clone());
    let app = legacy.router().layer(layer.clone());
    let (code, pkce) = code_for(&app, CLIENT, REDIRECT).await;

    store.down.store(true, Ordering::SeqCst);
    // Token: 503, nothing forwarded, even with the right verifier or for an exempt client.
    let response = redeem(&app, &code, Some(&pkce.verifier), CLIENT).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json_body(&response)["error"], "temporarily_unavailable");
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    let exempt = token_request(&[
        ("grant_type", "authorization_code"),
        ("code", "c"),
        ("client_id", CONFIDENTIAL),
        ("client_secret", CONFIDENTIAL_SECRET),
    ]);
    assert_eq!(
        app.send(exempt).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(legacy.token_bodies.lock().unwrap().is_empty());
    // Authorize: 503, not forwarded unrecorded.
    let pkce2 = Pkce::new();
    let response = app
        .send(get(&format!(
            "/authorize?{}",
            authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce2.challenge))
        )))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.extensions().get::<Reason>(),
        Some(&Reason::StoreUnavailable)
    );
    // Pass-through traffic keeps flowing.
    assert_eq!(app.send(get("/resource")).await.status(), StatusCode::OK);

    // A redirect carrying a code while the store is down: the code is not delivered unbound.
    store.down.store(false, Ordering::SeqCst);
    let first = app
        .send(get(&format!(
            "/authorize?{}",
            authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce2.challenge))
        )))
        .await;
    let next = query_of(&location(&first)).remove("next").unwrap();
    let back = sign_in(&app, &next).await;
    store.down.store(true, Ordering::SeqCst);
    let done = reenter(&app, &back).await;
    assert_eq!(done.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!done.headers().contains_key(header::LOCATION));

    // Back up: the first code still redeems, exactly once.
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        redeem(&app, &code, Some(&pkce.verifier), CLIENT)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(layer.metrics().refused(Reason::StoreUnavailable), 4);
}

/// A body that sends a few bytes, then fails the way a stalled upload does in `pkce-proxy`.
struct Stalled(bool);

impl http_body::Body for Stalled {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "stalled",
            ))))
        } else {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data("grant_type=auth".into()))))
        }
    }
}

#[tokio::test]
async fn a_body_that_times_out_is_408_and_nothing_is_forwarded() {
    let legacy = Legacy::default();
    let app = legacy.router().layer(PkceLayer::new());
    for path in ["/token", "/authorize"] {
        let req = axum::http::Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(axum::body::Body::new(Stalled(false)))
            .unwrap();
        let response = app.send(req).await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT, "{path}");
        assert_eq!(
            response.extensions().get::<Reason>(),
            Some(&Reason::BodyTimeout)
        );
        assert_eq!(json_body(&response)["error"], "invalid_request", "{path}");
    }
    assert!(legacy.token_bodies.lock().unwrap().is_empty());
}

/// An upstream whose authorization endpoint redirects at once with the same code every time,
/// and whose PAR endpoint answers with `par_answer`.
fn misbehaving_upstream(par_answer: &'static str) -> axum::Router {
    use axum::extract::RawQuery;
    use axum::response::IntoResponse;
    let authorize = |RawQuery(query): RawQuery| async move {
        let state = query
            .as_deref()
            .map(|q| query_of(&format!("/authorize?{q}")))
            .and_then(|mut q| q.remove("state"))
            .unwrap_or_default();
        let location = format!(
            "{REDIRECT}?code=always-the-same&state={}",
            urlencode(&state)
        );
        (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
    };
    let par = move || async move {
        (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            par_answer,
        )
            .into_response()
    };
    axum::Router::new()
        .route("/authorize", axum::routing::get(authorize))
        .route("/par", axum::routing::post(par))
}

/// Faults that are not the store's get reasons of their own: the store's metric counts only
/// its failures.
#[tokio::test]
async fn upstream_faults_are_not_store_failures() {
    // A code issued twice: the second redirect is not delivered.
    let layer = PkceLayer::new();
    let app = misbehaving_upstream("{}").layer(layer.clone());
    let query = |pkce: &Pkce| authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge));
    let first = app
        .send(get(&format!("/authorize?{}", query(&Pkce::new()))))
        .await;
    assert_eq!(first.status(), StatusCode::FOUND);
    assert_eq!(query_of(&location(&first))["state"], "s");
    let second = app
        .send(get(&format!("/authorize?{}", query(&Pkce::new()))))
        .await;
    assert_eq!(second.status(), StatusCode::BAD_GATEWAY);
    assert!(!second.headers().contains_key(header::LOCATION));
    assert_eq!(
        second.extensions().get::<Reason>(),
        Some(&Reason::DuplicateCode)
    );
    assert_eq!(layer.metrics().refused(Reason::DuplicateCode), 1);
    assert_eq!(layer.metrics().refused(Reason::StoreUnavailable), 0);

    // A PAR answer without request_uri, or not JSON: 502, try again.
    let pushed = |pkce: &Pkce| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "code"),
                ("client_id", CLIENT),
                ("redirect_uri", REDIRECT),
                ("code_challenge", pkce.challenge.as_str()),
                ("code_challenge_method", "S256"),
            ])
            .finish()
    };
    for answer in ["{\"expires_in\":60}", "not json"] {
        let layer = PkceLayer::new().par_path("/par").unwrap();
        let app = misbehaving_upstream(answer).layer(layer.clone());
        let response = app.send(form_post("/par", &pushed(&Pkce::new()))).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{answer}");
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json_body(&response)["error"], "temporarily_unavailable");
        assert_eq!(
            response.extensions().get::<Reason>(),
            Some(&Reason::UpstreamParUnreadable)
        );
        assert_eq!(layer.metrics().refused(Reason::StoreUnavailable), 0);
    }

    // The same request_uri for two pushed requests: the second is not remembered.
    let layer = PkceLayer::new().par_path("/par").unwrap();
    let app = misbehaving_upstream("{\"request_uri\":\"urn:x:same\",\"expires_in\":60}")
        .layer(layer.clone());
    let first = app.send(form_post("/par", &pushed(&Pkce::new()))).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let second = app.send(form_post("/par", &pushed(&Pkce::new()))).await;
    assert_eq!(second.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json_body(&second)["error"], "server_error");
    assert_eq!(
        second.extensions().get::<Reason>(),
        Some(&Reason::DuplicateRequestUri)
    );
    assert_eq!(layer.metrics().refused(Reason::StoreUnavailable), 0);
}
