//! `pkce-proxy` in front of an `https` legacy server whose certificate comes from a private CA:
//! trusted with `--upstream-ca`, refused without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use reqwest::StatusCode;
use support::{Legacy, Pkce, CLIENT, REDIRECT};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio_rustls::rustls;

/// A private CA (its PEM) and an `https://localhost:PORT` legacy server with a certificate it
/// signed.
async fn tls_legacy() -> (String, SocketAddr) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Legacy::default().router();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                    .await;
            });
        }
    });
    (ca.pem(), addr)
}

async fn start_proxy(
    upstream: &str,
    ca: Option<&std::path::Path>,
) -> (tokio::process::Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pkce-proxy"));
    cmd.args(["--upstream", upstream, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(ca) = ca {
        cmd.arg("--upstream-ca").arg(ca);
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on ").unwrap().to_owned();
    (child, format!("http://{addr}"))
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca() {
    let (ca_pem, addr) = tls_legacy().await;
    let dir = std::env::temp_dir().join(format!("pkce-proxy-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let upstream = format!("https://localhost:{}", addr.port());

    // Trusted: a whole flow works over TLS.
    let (_child, base) = start_proxy(&upstream, Some(&ca_file)).await;
    let pkce = Pkce::new();
    let query = support::authorize_query(CLIENT, REDIRECT, Some("tls"), Some(&pkce.challenge));
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = browser
        .get(format!("{base}/authorize?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::FOUND);
    let next = support::query_of(login.headers()["location"].to_str().unwrap())["next"].clone();
    let back = browser
        .post(format!("{base}/login"))
        .form(&[("user", "alice"), ("next", next.as_str())])
        .send()
        .await
        .unwrap();
    let back = back.headers()["location"].to_str().unwrap().to_owned();
    let done = browser
        .get(format!("{base}{back}"))
        .header("cookie", "sid=alice")
        .send()
        .await
        .unwrap();
    let params = support::query_of(done.headers()["location"].to_str().unwrap());
    assert_eq!(params["state"], "tls");
    let token = browser
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", params["code"].as_str()),
            ("client_id", CLIENT),
            ("redirect_uri", REDIRECT),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), StatusCode::OK);

    // Not trusted: the certificate is refused, and so is the request.
    let (_child, base) = start_proxy(&upstream, None).await;
    let response = reqwest::get(format!("{base}/resource")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}
