//! `pkce-proxy` with TLS on its listener (`--tls-cert`, `--tls-key`), over real sockets, with
//! clients that trust a CA made here: flows over HTTP/1.1 and HTTP/2, cleartext and silent
//! clients, and SIGHUP (the certificate rotated, a broken one refused, client policy reloaded).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod proxy_support;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use proxy_support::{browser_builder, open_sign_in, params, sign_in_flow, submit_sign_in, Proxy};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use reqwest::StatusCode;
use support::{Legacy, Pkce, CLIENT, REDIRECT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// 2030-01-01T00:00:00Z and 2031-01-01T00:00:00Z, the two leaves' `notAfter`.
const FIRST_NOT_AFTER: i64 = 1_893_456_000;
const SECOND_NOT_AFTER: i64 = 1_924_992_000;

/// A test CA, and a directory for the proxy's files.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (curl) takes a leaf named as its issuer for self-signed.
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pkce-proxy test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let dir =
            std::env::temp_dir().join(format!("pkce-proxy-https-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { ca, ca_key, dir }
    }

    /// A leaf for `127.0.0.1` and `localhost` expiring at the start of `year`, written to
    /// `cert.pem` and `key.pem`; returns its DER.
    fn issue(&self, year: i32) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        // The chain: the leaf, then the CA.
        std::fs::write(self.cert(), format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(self.key(), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn tls_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert().display().to_string(),
            "--tls-key".into(),
            self.key().display().to_string(),
        ]
    }

    fn reqwest_ca(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap()
    }

    /// A browser (cookies, redirects on the proxy followed) that trusts the CA.
    fn browser(&self, http1: bool) -> reqwest::Client {
        let builder = browser_builder().add_root_certificate(self.reqwest_ca());
        let builder = if http1 { builder.http1_only() } else { builder };
        builder.build().unwrap()
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The legacy server, plus `/proto`, which answers with the `X-Forwarded-Proto` it got.
async fn legacy() -> SocketAddr {
    let router = Legacy::default().router().route(
        "/proto",
        axum::routing::get(|headers: http::HeaderMap| async move {
            headers
                .get("x-forwarded-proto")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn start(upstream: SocketAddr, pki: &Pki, extra: &[&str]) -> Proxy {
    let mut args: Vec<String> = pki.tls_args();
    args.extend(["--admin-listen", "127.0.0.1:0", "--workers", "1"].map(String::from));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proxy::start(upstream, &args).await
}

fn base(proxy: &Proxy) -> String {
    format!("https://127.0.0.1:{}", proxy.addr.port())
}

/// A sample of `/metrics`, by its whole name and labels.
async fn metric(proxy: &Proxy, name: &str) -> Option<f64> {
    let text = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until a sample reaches `value`.
async fn wait_for_metric(proxy: &Proxy, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(proxy, name).await;
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, not {value}; log:\n{}",
            proxy.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RELOADS_OK: &str = "pkce_proxy_reloads_total{outcome=\"ok\"}";
const RELOADS_ERROR: &str = "pkce_proxy_reloads_total{outcome=\"error\"}";
const NOT_AFTER: &str = "pkce_proxy_tls_cert_not_after_seconds";

/// A whole flow through the proxy with `browser`; the token response's status.
async fn flow(browser: &reqwest::Client, base: &str) -> StatusCode {
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("s t"), Some(&pkce.challenge));
    let location = sign_in_flow(browser, base, &query).await;
    assert!(location.starts_with(REDIRECT), "{location}");
    let p = params(&location);
    assert_eq!(p["state"], "s t");
    redeem(browser, base, &p["code"], &pkce).await
}

async fn redeem(browser: &reqwest::Client, base: &str, code: &str, pkce: &Pkce) -> StatusCode {
    let response = browser
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    response.status()
}

/// An HTTP/1.1 connection over TLS, and the certificate the proxy showed on it.
async fn connect(
    pki: &Pki,
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    Vec<u8>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = pki.connector().connect(name, tcp).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    (sender, leaf)
}

async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, path: &str) {
    sender.ready().await.unwrap();
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    response.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn full_flows_over_https_with_http1_and_http2() {
    let upstream = legacy().await;
    let pki = Pki::new("flows");
    pki.issue(2030);
    let proxy = start(upstream, &pki, &[]).await;
    let base = base(&proxy);
    for (http1, version) in [
        (true, reqwest::Version::HTTP_11),
        (false, reqwest::Version::HTTP_2),
    ] {
        let browser = pki.browser(http1);
        assert_eq!(flow(&browser, &base).await, StatusCode::OK, "{version:?}");
        let proto = browser.get(format!("{base}/proto")).send().await.unwrap();
        assert_eq!(proto.version(), version);
        assert_eq!(proto.text().await.unwrap(), "https", "X-Forwarded-Proto");
    }
    assert_eq!(
        metric(&proxy, NOT_AFTER).await,
        Some(FIRST_NOT_AFTER as f64)
    );
    // Nothing failed.
    for reason in ["timeout", "closed", "malformed", "refused", "other"] {
        let name = format!("pkce_proxy_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&proxy, &name).await, Some(0.0), "{reason}");
    }
}

#[tokio::test]
async fn cleartext_to_the_tls_port_is_refused_and_the_worker_lives() {
    let upstream = legacy().await;
    let pki = Pki::new("cleartext");
    pki.issue(2030);
    let proxy = start(upstream, &pki, &[]).await;
    for sent in [
        &b"GET /resource HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5][..],
    ] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .expect("the connection was not closed");
        // At most a TLS alert; never an HTTP response.
        let _ = read;
        assert!(!answer.starts_with(b"HTTP"), "{answer:?}");
        assert!(answer.len() < 16, "{answer:?}");
    }
    // The one worker still serves.
    let response = pki
        .browser(true)
        .get(format!("{}/resource", base(&proxy)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    wait_for_metric(
        &proxy,
        "pkce_proxy_tls_handshake_failures_total{reason=\"malformed\"}",
        3.0,
    )
    .await;
}

#[tokio::test]
async fn a_silent_or_slow_tls_client_is_dropped_at_the_header_timeout() {
    let upstream = legacy().await;
    let pki = Pki::new("silent");
    pki.issue(2030);
    let proxy = start(upstream, &pki, &["--header-timeout", "1s"]).await;
    let started = Instant::now();
    // Says nothing; starts a record and stops.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Finishes the handshake, then sends no request.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut idle = pki.connector().connect(name, tcp).await.unwrap();
    // Meanwhile others are served.
    let response = pki
        .browser(false)
        .get(format!("{}/resource", base(&proxy)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for tcp in [&mut silent, &mut slow] {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
            .await
            .expect("not dropped")
            .ok();
    }
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("not dropped")
        .ok();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    wait_for_metric(
        &proxy,
        "pkce_proxy_tls_handshake_failures_total{reason=\"timeout\"}",
        2.0,
    )
    .await;
}

#[tokio::test]
async fn sighup_rotates_the_certificate_and_open_connections_keep_theirs() {
    let upstream = legacy().await;
    let pki = Pki::new("rotate");
    let first = pki.issue(2030);
    let proxy = start(upstream, &pki, &[]).await;
    let (mut open, shown) = connect(&pki, proxy.addr).await;
    assert_eq!(shown, first);
    get(&mut open, "/resource").await;

    let second = pki.issue(2031);
    assert_ne!(first, second);
    proxy.signal("HUP");
    wait_for_metric(&proxy, RELOADS_OK, 1.0).await;
    assert_eq!(
        metric(&proxy, NOT_AFTER).await,
        Some(SECOND_NOT_AFTER as f64)
    );

    // The open connection goes on; a new one gets the new certificate.
    get(&mut open, "/resource").await;
    let (mut new, shown) = connect(&pki, proxy.addr).await;
    assert_eq!(shown, second);
    get(&mut new, "/resource").await;
    get(&mut open, "/resource").await;
    let (status, log) = proxy.stop().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
}

/// A configuration file with `[clients.app]` exempt or not.
fn write_config(path: &Path, exempt: bool, extra: &str) {
    std::fs::write(
        path,
        format!(
            "{extra}\n[clients.{CLIENT}]\nexempt = {exempt}\nredirect_uris = [\"{REDIRECT}\"]\n"
        ),
    )
    .unwrap();
}

/// Where an authorization request without a challenge from `CLIENT` goes: the sign-in page
/// (forwarded) or the proxy's own 400.
async fn authorize_without_challenge(browser: &reqwest::Client, base: &str) -> StatusCode {
    let query = support::authorize_query(CLIENT, REDIRECT, Some("x"), None);
    let response = browser
        .get(format!("{base}/authorize?{query}"))
        .send()
        .await
        .unwrap();
    if response.status() == StatusCode::FOUND {
        // The error, redirected to the registered URI.
        assert!(params(response.headers()["location"].to_str().unwrap()).contains_key("error"));
        return StatusCode::BAD_REQUEST;
    }
    response.status()
}

#[tokio::test]
async fn a_policy_change_on_reload_applies_to_the_next_authorize_request_and_flows_survive() {
    let upstream = legacy().await;
    let pki = Pki::new("policy");
    pki.issue(2030);
    let config = pki.dir.join("proxy.toml");
    write_config(&config, false, "");
    let config_arg = config.display().to_string();
    let proxy = start(upstream, &pki, &["--config", &config_arg]).await;
    let base = base(&proxy);
    let browser = pki.browser(true);
    assert_eq!(
        authorize_without_challenge(&browser, &base).await,
        StatusCode::BAD_REQUEST
    );
    // A flow started before the reload.
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("before"), Some(&pkce.challenge));
    let next = open_sign_in(&browser, &base, &query).await;

    // Exempt now; and a setting that needs a restart.
    write_config(&config, true, "max_connections = 5");
    proxy.signal("HUP");
    wait_for_metric(&proxy, RELOADS_OK, 1.0).await;
    assert_eq!(
        authorize_without_challenge(&browser, &base).await,
        StatusCode::OK,
        "forwarded to the sign-in page"
    );
    let location = submit_sign_in(&browser, &base, &next).await;
    let p = params(&location);
    assert_eq!(p["state"], "before");
    assert_eq!(
        redeem(&browser, &base, &p["code"], &pkce).await,
        StatusCode::OK
    );

    // And back.
    write_config(&config, false, "max_connections = 5");
    proxy.signal("HUP");
    wait_for_metric(&proxy, RELOADS_OK, 2.0).await;
    assert_eq!(
        authorize_without_challenge(&browser, &base).await,
        StatusCode::BAD_REQUEST
    );
    let (_, log) = proxy.stop().await;
    assert!(log.contains("need a restart"), "{log}");
    assert!(log.contains("--max-connections"), "{log}");
}

#[tokio::test]
async fn a_broken_certificate_on_reload_changes_nothing() {
    let upstream = legacy().await;
    let pki = Pki::new("broken");
    let first = pki.issue(2030);
    let config = pki.dir.join("proxy.toml");
    write_config(&config, false, "");
    let config_arg = config.display().to_string();
    let proxy = start(upstream, &pki, &["--config", &config_arg]).await;
    let base = base(&proxy);
    let browser = pki.browser(false);

    // A policy change and a broken certificate in one reload: neither is applied.
    write_config(&config, true, "");
    std::fs::write(
        pki.cert(),
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n",
    )
    .unwrap();
    proxy.signal("HUP");
    wait_for_metric(&proxy, RELOADS_ERROR, 1.0).await;
    assert_eq!(metric(&proxy, RELOADS_OK).await, Some(0.0));
    assert_eq!(
        metric(&proxy, NOT_AFTER).await,
        Some(FIRST_NOT_AFTER as f64)
    );
    let (mut new, shown) = connect(&pki, proxy.addr).await;
    assert_eq!(shown, first, "still the first certificate");
    get(&mut new, "/resource").await;
    assert_eq!(
        authorize_without_challenge(&browser, &base).await,
        StatusCode::BAD_REQUEST,
        "still not exempt"
    );
    assert_eq!(flow(&browser, &base).await, StatusCode::OK);

    // A key that is not the certificate's: refused too.
    let other = KeyPair::generate().unwrap().serialize_pem();
    pki.issue(2031);
    std::fs::write(pki.key(), &other).unwrap();
    proxy.signal("HUP");
    wait_for_metric(&proxy, RELOADS_ERROR, 2.0).await;
    let (_, shown) = connect(&pki, proxy.addr).await;
    assert_eq!(shown, first);

    let (status, log) = proxy.stop().await;
    assert!(status.success(), "{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload failed"))
        .collect();
    assert_eq!(errors.len(), 2, "{log}");
    assert!(errors[0].contains("--tls-cert"), "{log}");
    assert!(errors[1].contains("--tls-key"), "{log}");
    let key_line = other.lines().nth(1).unwrap();
    assert!(!log.contains(key_line), "no key material in the log");
}

/// curl's `-w` output for one request through the proxy, trusting the test CA; `None` where
/// there is no curl.
async fn curl(pki: &Pki, version: &str, args: &[&str]) -> Option<String> {
    let jar = pki.dir.join(format!("jar{version}"));
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", version, "--cacert"])
        .arg(pki.dir.join("ca.pem"))
        .arg("-c")
        .arg(&jar)
        .arg("-b")
        .arg(&jar)
        .args(["-w", "%{http_version} %{http_code} %{redirect_url}"])
        .args(args)
        .output()
        .await;
    match output {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        output => {
            let output = output.unwrap();
            assert!(output.status.success(), "{output:?}");
            Some(String::from_utf8(output.stdout).unwrap())
        }
    }
}

#[tokio::test]
async fn full_flows_with_curl_over_http1_and_http2() {
    let upstream = legacy().await;
    let pki = Pki::new("curl");
    pki.issue(2030);
    std::fs::write(pki.dir.join("ca.pem"), pki.ca.pem()).unwrap();
    let proxy = start(upstream, &pki, &[]).await;
    let base = base(&proxy);
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let pkce = Pkce::new();
        let query = support::authorize_query(CLIENT, REDIRECT, Some("c"), Some(&pkce.challenge));
        let Some(out) = curl(&pki, flag, &[&format!("{base}/authorize?{query}")]).await else {
            eprintln!("no curl: skipped");
            return;
        };
        let (seen, login) = out.split_once(" 302 ").unwrap();
        assert_eq!(seen, version, "{out}");
        let next = &support::query_of(login)["next"];
        let out = curl(
            &pki,
            flag,
            &[
                "--data-urlencode",
                "user=alice",
                "--data-urlencode",
                &format!("next={next}"),
                &format!("{base}/login"),
            ],
        )
        .await
        .unwrap();
        let back = out.split_once(" 303 ").unwrap().1.to_owned();
        let out = curl(&pki, flag, &[&back]).await.unwrap();
        let done = out.split_once(" 302 ").unwrap().1;
        assert!(done.starts_with(REDIRECT), "{done}");
        let p = params(done);
        assert_eq!(p["state"], "c");
        let out = curl(
            &pki,
            flag,
            &[
                "-d",
                "grant_type=authorization_code",
                "-d",
                &format!("code={}", support::urlencode(&p["code"])),
                "-d",
                &format!("client_id={CLIENT}"),
                "--data-urlencode",
                &format!("redirect_uri={REDIRECT}"),
                "-d",
                &format!("code_verifier={}", pkce.verifier),
                &format!("{base}/token"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(out.trim(), format!("{version} 200"), "the token response");
    }
}
