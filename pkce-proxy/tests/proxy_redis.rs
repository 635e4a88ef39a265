//! End to end with a shared store: two `pkce-proxy` processes on one real `redis-server`, in
//! front of the legacy server. Every flow and attack the single-replica tests play, with the
//! steps spread over both replicas; a replica restarted mid-flow; Redis killed, and back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod proxy_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use proxy_support::*;
use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;
use support::redis::{shared, RedisServer};
use support::{Pkce, CLIENT, CONFIDENTIAL, CONFIDENTIAL_REDIRECT, CONFIDENTIAL_SECRET, REDIRECT};

/// Starts a replica on `url` with keys under `prefix`.
async fn replica(upstream: std::net::SocketAddr, url: &str, prefix: &str, extra: &[&str]) -> Proxy {
    let mut args = vec!["--store", url, "--store-prefix", prefix];
    args.extend_from_slice(extra);
    Proxy::start(upstream, &args).await
}

/// Authorize through `first`, sign in and come back through `second`: the pending flow is
/// created by one replica and taken (the code bound) by the other.
async fn code_across(first: &str, second: &str) -> (String, Pkce) {
    let browser = browser();
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("st 1/é"), Some(&pkce.challenge));
    let next = open_sign_in(&browser, first, &query).await;
    // The sign-in form is posted to the other replica; its redirect back to /authorize (with
    // the handle) is followed there too.
    let location = submit_sign_in(&browser, second, &next).await;
    assert!(location.starts_with(REDIRECT), "{location}");
    let p = params(&location);
    assert_eq!(p["state"], "st 1/é", "the client's own state, exactly");
    (p["code"].clone(), pkce)
}

fn error_of(body: &Value) -> Option<&str> {
    body["error"].as_str()
}

#[tokio::test]
async fn two_replicas_act_as_one() {
    let (url, prefix) = shared().await;
    let (legacy, upstream) = legacy().await;
    let exempt = ["--exempt-client", CONFIDENTIAL];
    let a = replica(upstream, &url, &prefix, &exempt).await;
    let b = replica(upstream, &url, &prefix, &exempt).await;
    let (a, b) = (a.url(""), b.url(""));
    let direct = format!("http://{upstream}");

    // A flow started on A, finished on B, redeemed on A; a replay on B is refused.
    let (code, pkce) = code_across(&a, &b).await;
    let (status, body) = redeem(&a, &code, Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["access_token"].is_string());
    let (status, body) = redeem(&b, &code, Some(&pkce.verifier)).await;
    assert_eq!(
        (status, error_of(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Each replica's whole flow also works on its own.
    for base in [&a, &b] {
        let (code, pkce) = new_code(base).await;
        assert_eq!(
            redeem(base, &code, Some(&pkce.verifier)).await.0,
            StatusCode::OK
        );
    }

    // A stolen code: the bare server takes it without a verifier, neither replica does.
    let (code, pkce) = code_across(&b, &a).await;
    assert_eq!(redeem(&direct, &code, None).await.0, StatusCode::OK);
    for base in [&a, &b] {
        let (status, body) = redeem(base, &code, None).await;
        assert_eq!(
            (status, error_of(&body)),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
    }
    // Wrong verifiers are counted across replicas: five refusals (3 on A, 2 on B; the default
    // limit) burn the code, and then even its own verifier is refused.
    for (i, base) in [&a, &a, &a, &b, &b].into_iter().enumerate() {
        let (status, body) = redeem(base, &code, Some(&Pkce::new().verifier)).await;
        assert_eq!(
            (status, error_of(&body)),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "attempt {i}"
        );
    }
    let (status, body) = redeem(&a, &code, Some(&pkce.verifier)).await;
    assert_eq!(
        (status, error_of(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Racing redemptions of one code on both replicas: exactly one token.
    let (code, pkce) = code_across(&a, &b).await;
    let before = legacy.token_bodies.lock().unwrap().len();
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let base = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (code, verifier) = (code.clone(), pkce.verifier.clone());
            tokio::spawn(async move { redeem(&base, &code, Some(&verifier)).await.0 })
        })
        .collect();
    let mut ok = 0;
    for racer in racers {
        let status = racer.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{status}"
        );
        ok += usize::from(status == StatusCode::OK);
    }
    assert_eq!(ok, 1);
    assert_eq!(
        legacy.token_bodies.lock().unwrap().len(),
        before + 1,
        "one request forwarded"
    );

    // No challenge: refused at authorize by either replica.
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), None);
    let plain = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    for base in [&a, &b] {
        let refused = plain
            .get(format!("{base}/authorize?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert!(refused.headers().get("location").is_none());
    }

    // A code the proxies never saw issued is refused by both.
    let unknown = params(&direct_code(&direct).await)["code"].clone();
    for base in [&a, &b] {
        let (status, body) = redeem(base, &unknown, Some(&pkce.verifier)).await;
        assert_eq!(
            (status, error_of(&body)),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
    }

    // An exempt confidential client: its flow without PKCE is bound on one replica and
    // single-use on both; a verifier added later (a downgrade the other way) is refused.
    let query = support::authorize_query(CONFIDENTIAL, CONFIDENTIAL_REDIRECT, Some("c"), None);
    let location = sign_in_flow(&browser(), &b, &query).await;
    let code = params(&location)["code"].clone();
    let redeem_confidential = |base: String, verifier: Option<String>| {
        let code = code.clone();
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", CONFIDENTIAL_REDIRECT.to_owned()),
                ("client_id", CONFIDENTIAL.to_owned()),
                ("client_secret", CONFIDENTIAL_SECRET.to_owned()),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v));
            }
            let fields: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token(&base, &fields).await.0
        }
    };
    // Recorded as unbound on B: a verifier on A is a downgrade and refused...
    assert_eq!(
        redeem_confidential(a.clone(), Some(Pkce::new().verifier)).await,
        StatusCode::BAD_REQUEST
    );
    // ...the client's own request goes through on A, once: a replay on B is refused.
    assert_eq!(redeem_confidential(a.clone(), None).await, StatusCode::OK);
    assert_eq!(
        redeem_confidential(b.clone(), None).await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_replica_restarted_mid_flow_loses_nothing() {
    let (url, prefix) = shared().await;
    let (_legacy, upstream) = legacy().await;

    // Authorize on A; A restarts; the sign-in comes back to the new A.
    let a = replica(upstream, &url, &prefix, &[]).await;
    let browser = browser();
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("keep me"), Some(&pkce.challenge));
    let next = open_sign_in(&browser, &a.url(""), &query).await;
    let (status, _) = a.stop().await;
    assert!(status.success());
    let a = replica(upstream, &url, &prefix, &[]).await;
    let location = submit_sign_in(&browser, &a.url(""), &next).await;
    let p = params(&location);
    assert_eq!(p["state"], "keep me");

    // A restarts again between the code and the token request.
    let (status, _) = a.stop().await;
    assert!(status.success());
    let a = replica(upstream, &url, &prefix, &[]).await;
    let (status, body) = redeem(&a.url(""), &p["code"], Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = redeem(&a.url(""), &p["code"], Some(&pkce.verifier)).await;
    assert_eq!(
        (status, error_of(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

/// Sends `request`, and checks it was answered (whatever the status) well within `limit`.
async fn answered_within(request: reqwest::RequestBuilder, limit: Duration) -> reqwest::Response {
    let started = Instant::now();
    let response = request.send().await.unwrap();
    assert!(
        started.elapsed() < limit,
        "answered after {:?}",
        started.elapsed()
    );
    response
}

async fn assert_unavailable(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.headers().get("location").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
}

#[tokio::test]
async fn a_dead_redis_means_503_and_nothing_unverified() {
    let mut redis = RedisServer::start().await;
    let (legacy, upstream) = legacy().await;
    let proxy = replica(
        upstream,
        &redis.url(),
        "pkce:",
        &["--store-timeout", "300ms", "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let base = proxy.url("");
    let ready = || async {
        reqwest::get(proxy.admin_url("/readyz"))
            .await
            .unwrap()
            .status()
    };
    assert_eq!(ready().await, StatusCode::OK);

    // A code issued while Redis was up.
    let (code, pkce) = new_code(&base).await;
    let forwarded = legacy.token_bodies.lock().unwrap().len();
    redis.kill();

    let limit = Duration::from_secs(5);
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    // The right verifier, no verifier, a wrong one: 503 each, none forwarded.
    for verifier in [
        Some(pkce.verifier.as_str()),
        None,
        Some("x".repeat(43).as_str()),
    ] {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        let response =
            answered_within(client.post(format!("{base}/token")).form(&form), limit).await;
        assert_unavailable(response).await;
    }
    assert_eq!(
        legacy.token_bodies.lock().unwrap().len(),
        forwarded,
        "nothing reached the server"
    );
    // New authorizations too, before the server sees them.
    let fresh = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), Some(&fresh.challenge));
    let response = answered_within(client.get(format!("{base}/authorize?{query}")), limit).await;
    assert_unavailable(response).await;
    // Everything else keeps flowing, and the proxy says it is not ready.
    let passing = answered_within(client.get(format!("{base}/resource")), limit).await;
    assert_eq!(passing.text().await.unwrap(), "protected resource");
    assert_eq!(ready().await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reqwest::get(proxy.admin_url("/healthz"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // Redis comes back (empty): the proxy reconnects by itself and is ready again.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready().await != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready after Redis came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New flows work; the code whose record Redis lost fails closed.
    let (fresh_code, fresh) = new_code(&base).await;
    assert_eq!(
        redeem(&base, &fresh_code, Some(&fresh.verifier)).await.0,
        StatusCode::OK
    );
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(
        (status, error_of(&body)),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let (_, log) = proxy.stop().await;
    assert!(log.contains("challenge store failed"), "{log}");
}

#[tokio::test]
async fn a_password_protected_redis_works_and_its_password_is_never_logged() {
    let redis = RedisServer::start().await;
    let password = "Zq9-redis-password-Kx";
    let reply = redis
        .command(&["CONFIG", "SET", "requirepass", password])
        .await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let (_legacy, upstream) = legacy().await;
    let good = format!("redis://:{password}@127.0.0.1:{}/0", redis.port());
    let bad = format!("redis://:wrong-{password}@127.0.0.1:{}/0", redis.port());

    let proxy = Proxy::start(
        upstream,
        &["--store", &good, "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let base = proxy.url("");
    let (code, pkce) = new_code(&base).await;
    assert_eq!(
        redeem(&base, &code, Some(&pkce.verifier)).await.0,
        StatusCode::OK
    );
    let (_, log) = proxy.stop().await;
    assert!(!log.contains(password), "{log}");

    // The wrong password: OAuth requests fail closed, the proxy is not ready, and the
    // password it was given is not in its logs either.
    let proxy = Proxy::start_with(
        &format!("http://{upstream}"),
        &[
            "--store",
            &bad,
            "--store-timeout",
            "300ms",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "trace")],
    )
    .await;
    let fresh = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), Some(&fresh.challenge));
    let response = reqwest::get(proxy.url(&format!("/authorize?{query}")))
        .await
        .unwrap();
    assert_unavailable(response).await;
    assert_eq!(
        reqwest::get(proxy.admin_url("/readyz"))
            .await
            .unwrap()
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (_, log) = proxy.stop().await;
    assert!(log.contains("challenge store failed"), "{log}");
    assert!(!log.contains(password), "{log}");

    // Given in the environment (as the README suggests), it is not in --help or
    // --print-config either.
    for flag in ["--help", "--print-config"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pkce-proxy"))
            .args(["--upstream", "http://127.0.0.1:1", flag])
            .env("PKCE_PROXY_STORE", &good)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{flag}");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains("--store") || printed.contains("store = "),
            "{printed}"
        );
        assert!(!printed.contains(password), "{flag}: {printed}");
    }
}
