//! `pkce-proxy` as a child process in front of the legacy server, and a browser and a client
//! that play flows through it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::redirect::Policy;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::support::{Legacy, Pkce, CLIENT, REDIRECT};

pub const BIN: &str = env!("CARGO_BIN_EXE_pkce-proxy");

/// The legacy server on a real socket.
pub async fn legacy() -> (Legacy, SocketAddr) {
    let legacy = Legacy::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = legacy.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (legacy, addr)
}

/// A running `pkce-proxy` process; killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub stderr: Arc<Mutex<String>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, extra: &[&str]) -> Self {
        Self::start_with(&format!("http://{upstream}"), extra, &[]).await
    }

    pub async fn start_with(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["--upstream", upstream, "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut admin = None;
        let wanted_admin = extra.contains(&"--admin-listen");
        let deadline = Instant::now() + Duration::from_secs(20);
        while addr.is_none() || (wanted_admin && admin.is_none()) {
            let line = tokio::time::timeout_at(deadline.into(), out.next_line())
                .await
                .expect("pkce-proxy did not say where it listens")
                .unwrap()
                .unwrap_or_else(|| panic!("pkce-proxy exited: {}", stderr.lock().unwrap()));
            if let Some(a) = line.strip_prefix("admin listening on ") {
                admin = Some(a.parse().unwrap());
            } else if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.parse().unwrap());
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        Self {
            child,
            addr: addr.unwrap(),
            admin,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.unwrap())
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the proxy with SIGTERM; returns its exit status and everything it logged.
    pub async fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("pkce-proxy did not stop on SIGTERM")
            .unwrap();
        // Let the reader drain what was written before exit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = self.stderr.lock().unwrap().clone();
        (status, log)
    }
}

/// A browser: keeps cookies, follows redirects that stay on the proxy (relative ones
/// included), stops at the redirect back to the client app.
pub fn browser() -> reqwest::Client {
    browser_builder().build().unwrap()
}

pub fn browser_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::custom(|attempt| {
            if attempt.url().host_str() == Some("127.0.0.1") {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
}

pub fn params(url: &str) -> std::collections::HashMap<String, String> {
    crate::support::query_of(url)
}

/// Plays a browser through authorize → sign-in page → sign-in → re-entry; returns the final
/// redirect's `Location`.
pub async fn sign_in_flow(browser: &reqwest::Client, base: &str, query: &str) -> String {
    let next = open_sign_in(browser, base, query).await;
    submit_sign_in(browser, base, &next).await
}

/// Sends the authorization request and follows it to the sign-in page; returns the page's
/// `next` (the authorization request to come back to).
pub async fn open_sign_in(browser: &reqwest::Client, base: &str, query: &str) -> String {
    let page = browser
        .get(format!("{base}/authorize?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK, "the sign-in page");
    assert_eq!(page.url().path(), "/login", "a relative redirect, followed");
    page.url()
        .query_pairs()
        .find(|(k, _)| k == "next")
        .unwrap()
        .1
        .into_owned()
}

/// Signs in and follows the way back to `/authorize`; returns the `Location` of the redirect
/// to the client.
pub async fn submit_sign_in(browser: &reqwest::Client, base: &str, next: &str) -> String {
    let done = browser
        .post(format!("{base}/login"))
        .form(&[("user", "alice"), ("next", next)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        done.status(),
        StatusCode::FOUND,
        "the redirect to the client"
    );
    done.headers()["location"].to_str().unwrap().to_owned()
}

/// A flow with a fresh challenge; returns the code and the pair.
pub async fn new_code(base: &str) -> (String, Pkce) {
    let pkce = Pkce::new();
    let query =
        crate::support::authorize_query(CLIENT, REDIRECT, Some("st 1/é"), Some(&pkce.challenge));
    let location = sign_in_flow(&browser(), base, &query).await;
    assert!(location.starts_with(REDIRECT), "{location}");
    let p = params(&location);
    assert_eq!(p["state"], "st 1/é", "the client's own state, exactly");
    (p["code"].clone(), pkce)
}

pub async fn token(base: &str, fields: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/token"))
        .form(fields)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn redeem(base: &str, code: &str, verifier: Option<&str>) -> (StatusCode, Value) {
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", CLIENT),
        ("redirect_uri", REDIRECT),
    ];
    if let Some(v) = verifier {
        fields.push(("code_verifier", v));
    }
    token(base, &fields).await
}

/// A code obtained from the legacy server directly, around the proxy.
pub async fn direct_code(direct: &str) -> String {
    let query = crate::support::authorize_query(CLIENT, REDIRECT, Some("s"), None);
    sign_in_flow(&browser(), direct, &query).await
}
