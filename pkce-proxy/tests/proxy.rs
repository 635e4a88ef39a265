//! End to end: the `pkce-proxy` binary, started as a process, in front of the legacy server on
//! a real socket, driven by a real HTTP client (reqwest) — flows, attacks, cookies, relative
//! redirects, pass-through, HTTP/2, timeouts, errors, configuration, admin, shutdown, logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod proxy_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use proxy_support::*;

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;
use support::{Legacy, Pkce, CLIENT, CONFIDENTIAL, CONFIDENTIAL_SECRET, REDIRECT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

#[tokio::test]
async fn a_full_flow_then_the_resource_and_a_refresh() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let base = proxy.url("");
    let (code, pkce) = new_code(&base).await;

    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap();
    // The form reaches the upstream as sent (it ignores the verifier, RFC 6749 §3.2).
    assert!(body["received"]
        .as_str()
        .unwrap()
        .contains("code_verifier="));

    let resource = reqwest::Client::new()
        .get(proxy.url("/resource"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(resource.status(), StatusCode::OK);
    assert_eq!(resource.text().await.unwrap(), "protected resource");

    // Other grants pass through byte for byte.
    let refresh = body["refresh_token"].as_str().unwrap();
    let (status, body) = token(
        &base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", CLIENT),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["received"],
        format!("grant_type=refresh_token&refresh_token={refresh}&client_id={CLIENT}")
    );
    assert_eq!(legacy.token_bodies.lock().unwrap().len(), 2);
}

/// The names of the process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn flows_complete_whichever_worker_each_connection_lands_on() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--workers", "4"]).await;
    if cfg!(target_os = "linux") {
        let names = thread_names(proxy.child.id().unwrap());
        let workers = names
            .iter()
            .filter(|n| n.starts_with("pkce-proxy-"))
            .count();
        assert_eq!(
            workers, 3,
            "three more worker threads besides the main one: {names:?}"
        );
    }
    let base = proxy.url("");
    // Each flow's authorize and token requests go over different connections (a new client
    // each), which the kernel spreads over the four listening sockets: a flow recorded on one
    // worker is finished on another, through the one store.
    let flows: Vec<_> = (0..24)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let (code, pkce) = new_code(&base).await;
                let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "a replay: {body}");
                assert_eq!(body["error"], "invalid_grant");
            })
        })
        .collect();
    for flow in flows {
        flow.await.unwrap();
    }
    assert_eq!(legacy.token_bodies.lock().unwrap().len(), 24);
    let (status, log) = proxy.stop().await;
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test]
async fn attacks_are_refused_that_the_legacy_server_alone_would_allow() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let base = proxy.url("");
    let direct = format!("http://{upstream}");

    // A stolen code without the verifier: the bare server takes it, the proxy does not.
    let (code, pkce) = new_code(&base).await;
    assert_eq!(redeem(&direct, &code, None).await.0, StatusCode::OK);
    let (status, body) = redeem(&base, &code, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");

    // A wrong verifier.
    let wrong = Pkce::new();
    let (status, body) = redeem(&base, &code, Some(&wrong.verifier)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // The owner still redeems it, once; a replay is refused though the server would allow it.
    assert_eq!(
        redeem(&base, &code, Some(&pkce.verifier)).await.0,
        StatusCode::OK
    );
    assert_eq!(redeem(&direct, &code, None).await.0, StatusCode::OK);
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // No challenge: refused at authorize, never a redirect with a code.
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), None);
    let refused = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(proxy.url(&format!("/authorize?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.headers().get("location").is_none());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");

    // A code the proxy never saw issued (taken straight from the server) is refused.
    let unknown = params(&direct_code(&direct).await)["code"].clone();
    let (status, body) = redeem(&base, &unknown, Some(&pkce.verifier)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn an_exempt_confidential_client_goes_through_without_pkce() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--exempt-client", CONFIDENTIAL]).await;
    let base = proxy.url("");
    let query = support::authorize_query(
        CONFIDENTIAL,
        support::CONFIDENTIAL_REDIRECT,
        Some("s"),
        None,
    );
    let location = sign_in_flow(&browser(), &base, &query).await;
    let code = params(&location)["code"].clone();
    let response = reqwest::Client::new()
        .post(proxy.url("/token"))
        .basic_auth(CONFIDENTIAL, Some(CONFIDENTIAL_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", support::CONFIDENTIAL_REDIRECT),
            ("client_secret", CONFIDENTIAL_SECRET),
        ])
        .send()
        .await
        .unwrap();
    // Basic plus a body secret is two authentication methods: refused.
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, body) = token(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", support::CONFIDENTIAL_REDIRECT),
            ("client_id", CONFIDENTIAL),
            ("client_secret", CONFIDENTIAL_SECRET),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Recorded as unbound: a verifier now would be a downgrade, and the code is used anyway.
    let (status, _) = token(
        &base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", CONFIDENTIAL),
            ("client_secret", CONFIDENTIAL_SECRET),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn discovery_advertises_s256() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    // At the root and at an issuer's path (RFC 8414 §3.1, OpenID Discovery).
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/tenant1",
        "/tenant1/.well-known/openid-configuration",
    ] {
        let doc: Value = reqwest::get(proxy.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            doc["code_challenge_methods_supported"],
            serde_json::json!(["S256"]),
            "{path}"
        );
        assert_eq!(doc["issuer"], "https://as.example");
    }
}

#[tokio::test]
async fn everything_else_passes_through_untouched() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let client = reqwest::Client::new();

    let response = client
        .request(
            reqwest::Method::PATCH,
            proxy.url("/headers?a=1&b=%2F&state=not-oauth"),
        )
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    let cookies: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/; HttpOnly"]);
    assert_eq!(response.headers()["x-upstream"], "legacy");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["uri"], "/headers?a=1&b=%2F&state=not-oauth");
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("host"), [proxy.addr.to_string()], "Host is preserved");
    assert_eq!(get("x-custom"), ["kept"]);
    assert!(get("x-hop").is_empty(), "named by Connection: hop-by-hop");
    assert_eq!(
        get("x-forwarded-for"),
        ["127.0.0.1"],
        "the client's claim is dropped"
    );
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), [proxy.addr.to_string()]);
    assert!(get("forwarded").is_empty() && get("x-real-ip").is_empty());

    // A large body (just under the legacy server's own 2 MB limit) streams through both ways
    // unchanged.
    let big: Vec<u8> = (0..1_900_000).map(|i| (i * 7 % 251) as u8).collect();
    let echoed = client
        .post(proxy.url("/echo"))
        .header("content-type", "application/octet-stream")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), StatusCode::OK);
    assert_eq!(
        echoed.headers()["x-content-type"],
        "application/octet-stream"
    );
    assert_eq!(echoed.bytes().await.unwrap(), big);

    // An absolute Location to elsewhere is left as it is.
    let go = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(proxy.url("/go?to=https%3A%2F%2Felsewhere.example%2Fx%3Fy%3D1"))
        .send()
        .await
        .unwrap();
    assert_eq!(go.status(), StatusCode::FOUND);
    assert_eq!(go.headers()["location"], "https://elsewhere.example/x?y=1");
}

#[tokio::test]
async fn forwarding_headers_are_kept_when_trusted() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--trust-forwarded"]).await;
    let seen: Value = reqwest::Client::new()
        .get(proxy.url("/headers"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "login.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(get("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(get("x-forwarded-host").as_deref(), Some("login.example"));
}

#[tokio::test]
async fn http2_clients_complete_flows() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let base = proxy.url("");
    let h2 = browser_builder().http2_prior_knowledge().build().unwrap();
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("h2"), Some(&pkce.challenge));
    let location = sign_in_flow(&h2, &base, &query).await;
    let p = params(&location);
    assert_eq!(p["state"], "h2");
    let response = h2
        .post(proxy.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", p["code"].as_str()),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    // Host comes from :authority.
    let seen: Value = h2
        .get(proxy.url("/headers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers: Vec<(String, String)> = serde_json::from_value(seen["headers"].clone()).unwrap();
    assert!(
        headers.contains(&("host".into(), proxy.addr.to_string())),
        "{headers:?}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_json_on_oauth_endpoints() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(closed, &["--connect-timeout", "2s"]).await;
    let (status, body) = redeem(&proxy.url(""), "some-code", Some(&Pkce::new().verifier)).await;
    // An unknown code is refused before anything is forwarded.
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge));
    let response = reqwest::get(proxy.url(&format!("/authorize?{query}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");

    let response = reqwest::get(proxy.url("/resource")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(
        upstream,
        &[
            "--upstream-timeout",
            "300ms",
            "--connect-timeout",
            "200ms",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let started = Instant::now();
    let response = reqwest::get(proxy.url("/slow?ms=3000")).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Fast requests are unaffected.
    let response = reqwest::get(proxy.url("/slow?ms=10")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "pkce_proxy_upstream_errors_total{kind=\"timeout\"} 1",
        "pkce_proxy_upstream_errors_total{kind=\"connect\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

/// Writes `head` and part of a body on a raw connection, then stalls; returns what the proxy
/// answered and whether it closed the connection.
async fn stall(addr: SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy kept a stalled connection open")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_others_are_not_delayed() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--body-timeout", "500ms"]).await;
    let addr = proxy.addr;
    let pass_through = tokio::spawn(stall(
        addr,
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part",
    ));
    let token = tokio::spawn(stall(
        addr,
        "POST /token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type=auth",
    ));
    // Meanwhile, another client is served at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let response = reqwest::get(proxy.url("/resource")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(400));

    let answer = pass_through.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let answer = token.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"invalid_request\""), "{answer}");
}

#[tokio::test]
async fn stalled_request_headers_close_the_connection() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--header-timeout", "500ms"]).await;
    let started = Instant::now();
    let answer = stall(proxy.addr, "GET /resource HTTP/1.1\r\nHost: x\r\n").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn bad_configuration_is_one_line_and_exit_status_2() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "upstream = \"http://127.0.0.1:1\"\nmode = [\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--no-such-flag".into(),
            ],
            "unexpected argument",
        ),
        (
            vec!["--upstream".into(), "not a url".into()],
            "invalid --upstream",
        ),
        (
            vec!["--upstream".into(), "ftp://127.0.0.1".into()],
            "http or https",
        ),
        (
            vec![
                "--config".into(),
                dir.join("missing.toml").display().to_string(),
            ],
            "cannot read config file",
        ),
        (
            vec!["--config".into(), bad_toml.display().to_string()],
            "line ",
        ),
        (
            vec![
                "--upstream".into(),
                "http://127.0.0.1:1".into(),
                "--pending-ttl".into(),
                "soon".into(),
            ],
            "invalid --pending-ttl",
        ),
        (vec![], "--upstream URL is required"),
    ];
    for (args, expected) in cases {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("PKCE_PROXY_UPSTREAM")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(expected),
            "{args:?}: {stderr:?} lacks {expected:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // An address already in use is a runtime failure, status 1.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let out = Command::new(BIN)
        .args([
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}

#[tokio::test]
async fn precedence_is_flag_then_environment_then_file_then_default() {
    let dir = std::env::temp_dir().join(format!("pkce-proxy-prec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        r#"
upstream = "http://file.example:9000"
listen = "127.0.0.1:7001"
mode = "report"
pending_ttl = "3m"
code_ttl = "4m"
[clients.backend]
exempt = true
redirect_uris = ["https://backend.example/cb"]
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "--config",
            &file.display().to_string(),
            "--print-config",
            "--pending-ttl",
            "1m",
        ])
        .env("PKCE_PROXY_PENDING_TTL", "2m")
        .env("PKCE_PROXY_CODE_TTL", "5m")
        .env("PKCE_PROXY_MODE", "enforce")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing in {text}"))
            .to_owned()
    };
    assert_eq!(value("pending_ttl"), "\"1m\"", "flag over env over file");
    assert_eq!(value("code_ttl"), "\"5m\"", "env over file");
    assert_eq!(value("mode"), "\"enforce\"", "env over file");
    assert_eq!(value("listen"), "\"127.0.0.1:7001\"", "file over default");
    assert_eq!(value("upstream"), "\"http://file.example:9000/\"");
    assert_eq!(value("max_pending"), "100000", "default");
    assert!(
        text.contains(
            "[clients.backend]\nexempt = true\nredirect_uris = [\"https://backend.example/cb\"]"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn admin_endpoints_report_health_and_decisions() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--admin-listen", "127.0.0.1:0"]).await;
    let base = proxy.url("");
    let (code, pkce) = new_code(&base).await;
    assert_eq!(redeem(&base, &code, None).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        redeem(&base, &code, Some(&pkce.verifier)).await.0,
        StatusCode::OK
    );

    let health = reqwest::get(proxy.admin_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = reqwest::get(proxy.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = reqwest::get(proxy.admin_url("/metrics")).await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text().await.unwrap();
    for line in [
        "pkce_decisions_total{outcome=\"refused\",reason=\"verifier_required\"} 1",
        "pkce_decisions_total{outcome=\"allowed\",reason=\"verified\"} 1",
        "pkce_proxy_request_duration_seconds_count{endpoint=\"token\"} 2",
        "pkce_proxy_requests_in_flight 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    assert_eq!(
        reqwest::get(proxy.admin_url("/nope"))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    // The admin endpoints are not on the public listener.
    let public = reqwest::get(proxy.url("/metrics")).await.unwrap();
    assert!(!public
        .text()
        .await
        .unwrap()
        .contains("pkce_decisions_total"));
}

/// A client that hangs up while its request is with the upstream does not cancel the
/// exchange: the proxy finishes it (its duration is recorded, nothing counts as an upstream
/// error) and drops the answer. Without hyper's `half_close`, the proxy noticed the hang-up and
/// dropped the request half-way, so nothing was recorded.
#[tokio::test]
async fn a_client_hanging_up_mid_request_does_not_cancel_the_exchange() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--admin-listen", "127.0.0.1:0"]).await;
    let count = "pkce_proxy_request_duration_seconds_count{endpoint=\"other\"}";
    let metrics = || async {
        reqwest::get(proxy.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;
    assert!(
        before.lines().any(|l| l == format!("{count} 0")),
        "{before}"
    );

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /slow?ms=400 HTTP/1.1\r\nHost: legacy\r\n\r\n")
        .await
        .unwrap();
    // Let the request reach the upstream, then hang up before the answer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metrics().await;
        if now.lines().any(|l| l == format!("{count} 1")) {
            for kind in ["timeout", "connect", "failed"] {
                let line = format!("pkce_proxy_upstream_errors_total{{kind=\"{kind}\"}} 0");
                assert!(now.lines().any(|l| l == line), "{line} in\n{now}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the exchange was not finished after the client hung up:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let slow = tokio::spawn(reqwest::get(proxy.url("/slow?ms=800")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = proxy.addr;
    let (status, _) = proxy.stop().await;
    assert!(status.success(), "{status}");
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "slow");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn logs_hold_no_secrets_even_at_trace() {
    let (legacy, upstream) = legacy().await;
    let proxy =
        Proxy::start_with(&format!("http://{upstream}"), &[], &[("RUST_LOG", "trace")]).await;
    let base = proxy.url("");
    let (code, pkce) = new_code(&base).await;
    let wrong = Pkce::new();
    redeem(&base, &code, Some(&wrong.verifier)).await;
    let (status, _) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK);
    redeem(&base, &code, Some(&pkce.verifier)).await;
    // HTTP/2 too, whose library logs frames at trace level.
    let (code2, pkce2) = new_code(&base).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(proxy.url("/token"))
        .basic_auth(CLIENT, Some("a-client-secret-value"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code2.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", pkce2.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let (_, log) = proxy.stop().await;

    assert!(
        log.contains("h2"),
        "h2 traced nothing: the test would prove little"
    );
    assert!(
        log.contains("verifier_mismatch") && log.contains("code_reused"),
        "{log}"
    );
    let mut secrets = vec![
        code,
        pkce.verifier,
        wrong.verifier,
        code2,
        pkce2.verifier,
        "a-client-secret-value".to_owned(),
        "st 1/é".to_owned(),
        support::urlencode("st 1/é"),
    ];
    secrets.extend(legacy.issued.lock().unwrap().iter().cloned());
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{secret:?} leaked into the log"
        );
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--log-format", "json"]).await;
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), None);
    reqwest::get(proxy.url(&format!("/authorize?{query}")))
        .await
        .unwrap();
    let (_, log) = proxy.stop().await;
    assert!(log.lines().count() >= 2, "{log}");
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(log.contains("challenge_required"));
}

#[tokio::test]
async fn a_token_request_the_upstream_never_received_leaves_the_code_usable() {
    let legacy = Legacy::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, legacy.router())
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let proxy = Proxy::start(upstream, &[]).await;
    let base = proxy.url("");
    let (code, pkce) = new_code(&base).await;

    // The legacy server goes away; the token request cannot be delivered.
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");

    // It comes back on the same port with the same codes: the client's retry succeeds, once.
    let listener = TcpListener::bind(upstream).await.unwrap();
    tokio::spawn(axum::serve(listener, legacy.router()).into_future());
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = redeem(&base, &code, Some(&pkce.verifier)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn connect_tunnels_are_refused() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0; 64];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}

/// Reads until the proxy closes the connection; panics if it does not within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut seen))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the proxy kept {what} open: {:?}",
                String::from_utf8_lossy(&seen)
            )
        })
        .unwrap();
    seen
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(
        upstream,
        &["--header-timeout", "400ms", "--idle-timeout", "600ms"],
    )
    .await;
    // Connected, silent.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    // An HTTP/2 preface and nothing more.
    let mut h2 = TcpStream::connect(proxy.addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // One request, then keep-alive silence.
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    kept.write_all(b"GET /resource HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    closed_within(&mut silent, Duration::from_secs(3), "a silent connection").await;
    closed_within(&mut h2, Duration::from_secs(3), "an HTTP/2 connection").await;
    let answer = closed_within(&mut kept, Duration::from_secs(3), "a keep-alive connection").await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() >= Duration::from_millis(350));
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_for_a_free_slot() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(
        upstream,
        // The limit is the process's, whichever worker's socket a connection lands on.
        &[
            "--max-connections",
            "2",
            "--header-timeout",
            "700ms",
            "--workers",
            "3",
        ],
    )
    .await;
    let _hog1 = TcpStream::connect(proxy.addr).await.unwrap();
    let _hog2 = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The third is not served while two silent connections hold the slots, and is served
    // once they are closed for idling.
    let started = Instant::now();
    let response = reqwest::get(proxy.url("/resource")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn form_post_and_hybrid_clients_complete_flows_and_their_attacks_fail() {
    let (_legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &[]).await;
    let base = proxy.url("");

    // form_post: the page the browser gets posts the code and the client's own state.
    let form_post_browser = browser();
    let pkce = Pkce::new();
    let state = "fp <&\"> state";
    let query = format!(
        "{}&response_mode=form_post",
        support::authorize_query(CLIENT, REDIRECT, Some(state), Some(&pkce.challenge))
    );
    let next = open_sign_in(&form_post_browser, &base, &query).await;
    let page = form_post_browser
        .post(format!("{base}/login"))
        .form(&[("user", "alice"), ("next", next.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let inputs = support::form_inputs(&page.bytes().await.unwrap());
    let value = |name: &str| {
        inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(value("state").as_deref(), Some(state));
    assert_eq!(value("iss").as_deref(), Some(support::ISSUER));
    let code = value("code").unwrap();
    for verifier in [None, Some(Pkce::new().verifier)] {
        let (status, body) = redeem(&base, &code, verifier.as_deref()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
    }
    assert_eq!(
        redeem(&base, &code, Some(&pkce.verifier)).await.0,
        StatusCode::OK
    );

    // Hybrid: code and state in the fragment, iss beside them; then an error in the fragment.
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("h"), Some(&pkce.challenge))
        .replace("response_type=code", "response_type=code+id_token");
    let location = sign_in_flow(&browser(), &base, &query).await;
    assert!(location.starts_with(&format!("{REDIRECT}#")), "{location}");
    let p = params(&location);
    assert_eq!(
        (p["state"].as_str(), p["iss"].as_str()),
        ("h", support::ISSUER)
    );
    assert_eq!(
        redeem(&base, &p["code"], None).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        redeem(&base, &p["code"], Some(&pkce.verifier)).await.0,
        StatusCode::OK
    );
    let query = support::authorize_query(CLIENT, REDIRECT, Some("h err"), Some(&pkce.challenge))
        .replace("response_type=code", "response_type=code+id_token")
        .replace("scope=openid", "scope=forbidden");
    let location = sign_in_flow(&browser(), &base, &query).await;
    let p = params(&location);
    assert!(location.contains("#error=access_denied"), "{location}");
    assert_eq!(p["state"], "h err");
}

#[tokio::test]
async fn a_par_client_completes_flows_and_cannot_override_the_pushed_challenge() {
    let (legacy, upstream) = legacy().await;
    let proxy = Proxy::start(upstream, &["--par-path", "/par"]).await;
    let base = proxy.url("");
    let push = |challenge: String, with_challenge: bool| {
        let base = base.clone();
        async move {
            let mut form = vec![
                ("response_type", "code".to_owned()),
                ("client_id", CLIENT.to_owned()),
                ("redirect_uri", REDIRECT.to_owned()),
                ("scope", "openid".to_owned()),
                ("state", "pushed/state".to_owned()),
            ];
            if with_challenge {
                form.push(("code_challenge", challenge));
                form.push(("code_challenge_method", "S256".to_owned()));
            }
            let response = reqwest::Client::new()
                .post(format!("{base}/par"))
                .form(&form)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    // Without a challenge: 400 in JSON, nothing pushed upstream.
    let (status, body) = push(String::new(), false).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert!(legacy.pushed.lock().unwrap().is_empty());

    let pkce = Pkce::new();
    let (status, body) = push(pkce.challenge.clone(), true).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let request_uri = body["request_uri"].as_str().unwrap().to_owned();
    let by_reference = format!(
        "client_id={CLIENT}&request_uri={}",
        support::urlencode(&request_uri)
    );
    // Overriding the pushed challenge at authorize is refused.
    let attacker = Pkce::new();
    let refused = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
        .get(proxy.url(&format!(
            "/authorize?{by_reference}&code_challenge={}&code_challenge_method=S256",
            attacker.challenge
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.headers().get("location").is_none());

    // The flow by reference completes, with the client's own state.
    let location = sign_in_flow(&browser(), &base, &by_reference).await;
    let p = params(&location);
    assert_eq!(p["state"], "pushed/state");
    for verifier in [None, Some(attacker.verifier.as_str())] {
        let (status, body) = redeem(&base, &p["code"], verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
    }
    assert_eq!(
        redeem(&base, &p["code"], Some(&pkce.verifier)).await.0,
        StatusCode::OK
    );
}

/// A redirect whose `Location` the layer rewrites loses its body, which is read to its end
/// first: the upstream connection stays reusable (it was closed, one per flow, before).
#[tokio::test]
async fn a_rewritten_redirect_keeps_its_upstream_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::RawQuery;
    use axum::http::header::LOCATION;
    use axum::serve::ListenerExt as _;

    let router = axum::Router::new().route(
        "/authorize",
        axum::routing::get(|RawQuery(query): RawQuery| async move {
            let query = query.unwrap_or_default();
            let state = form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "state")
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default();
            let target = format!(
                "{REDIRECT}?code=c{}&state={}",
                rand::random::<u64>(),
                support::urlencode(&state)
            );
            let page = format!("You are being redirected to {target}");
            (StatusCode::FOUND, [(LOCATION, target)], page)
        }),
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let proxy = Proxy::start(upstream, &["--workers", "1"]).await;
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    for _ in 0..5 {
        let pkce = Pkce::new();
        let query = support::authorize_query(CLIENT, REDIRECT, Some("s"), Some(&pkce.challenge));
        let res = client
            .get(proxy.url(&format!("/authorize?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FOUND);
        let location = res.headers()[reqwest::header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(location.ends_with("&state=s"), "{location}");
        assert_eq!(
            res.text().await.unwrap(),
            "",
            "the body repeated the handle"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
}
