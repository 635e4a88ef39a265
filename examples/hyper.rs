//! PKCE in front of a legacy authorization server written directly on hyper.
//!
//! Run it with `cargo run --example hyper`. The legacy server is a plain function; the layer
//! wraps it as a tower service and hyper serves the result. The example then plays a flow
//! with a wrong and a right verifier over the socket, prints each step, and exits.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::Layer as _;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceBody, PkceLayer};

/// The legacy server: one fixed code for everyone, no PKCE, accepts the code forever.
async fn legacy(req: Request<PkceBody<Incoming>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match req.uri().path() {
        "/authorize" => {
            let state = form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                .find(|(k, _)| k == "state")
                .map(|(_, v)| format!("&state={v}"))
                .unwrap_or_default();
            Response::builder()
                .status(StatusCode::FOUND)
                .header(
                    header::LOCATION,
                    format!("myapp://callback?code=legacy-code{state}"),
                )
                .body(Full::default())
        }
        "/token" => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"access_token":"t","token_type":"Bearer"}"#,
            ))),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::default()),
    };
    Ok(response.unwrap_or_default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = PkceLayer::new().layer(tower::service_fn(legacy));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    println!("hyper server with PKCE listening on {base}\n");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256).encoded();
    let uri = format!("{base}/authorize?response_type=code&client_id=cli&code_challenge={challenge}&code_challenge_method=S256");
    let response = client.get(uri.parse()?).await?;
    println!(
        "authorize           → {} {:?}",
        response.status(),
        response.headers()[header::LOCATION]
    );

    for (label, verifier) in [
        ("wrong verifier", CodeVerifier::generate()),
        ("right verifier", verifier),
    ] {
        let form = format!(
            "grant_type=authorization_code&code=legacy-code&client_id=cli&code_verifier={}",
            verifier.secret()
        );
        let req = Request::post(format!("{base}/token"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))?;
        let response = client.request(req).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "token, {label} → {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}
