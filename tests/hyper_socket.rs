//! The layer in the shape of a reverse proxy, over real sockets: a hyper server whose service
//! is `PkceLayer` around a hyper client that forwards to a legacy server on another socket,
//! and a hyper client playing the OAuth client and the browser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use support::*;
use tokio::net::TcpListener;
use tower::{Layer as _, ServiceExt as _};
use tower_pkce::{PkceBody, PkceLayer, Reason};

type HttpClient<B> = Client<HttpConnector, B>;

/// Serves the legacy server on a socket of its own.
async fn start_legacy() -> (SocketAddr, Legacy) {
    let legacy = Legacy::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = legacy.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, legacy)
}

/// Serves `PkceLayer` around a forwarding hyper client with hyper's HTTP/1 server.
async fn start_front(layer: PkceLayer, upstream: SocketAddr) -> SocketAddr {
    let client: HttpClient<PkceBody<hyper::body::Incoming>> =
        Client::builder(TokioExecutor::new()).build_http();
    let forward = tower::service_fn(move |mut req: Request<PkceBody<hyper::body::Incoming>>| {
        let client = client.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            *req.uri_mut() = Uri::try_from(format!("http://{upstream}{path}")).unwrap();
            let response = client.request(req).await.unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let service = layer.layer(forward);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Socket {
    addr: SocketAddr,
    client: HttpClient<Full<Bytes>>,
}

impl Transport for Socket {
    async fn send(&self, req: Request<Body>) -> Response<Bytes> {
        let (mut parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        parts.uri = Uri::try_from(format!("http://{}{path}", self.addr)).unwrap();
        let response = self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
    }
}

async fn setup(layer: PkceLayer) -> (Socket, Legacy) {
    let (upstream, legacy) = start_legacy().await;
    let addr = start_front(layer, upstream).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    (Socket { addr, client }, legacy)
}

fn error_of(response: &Response<Bytes>) -> String {
    json_body(response)["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn full_flow_and_attacks_over_sockets() {
    let (front, legacy) = setup(PkceLayer::new()).await;
    let (code, pkce) = code_for(&front, CLIENT, REDIRECT).await;

    // An attacker who intercepted the code, without the verifier.
    let stolen = redeem(&front, &code, None, CLIENT).await;
    assert_eq!(stolen.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&stolen), "invalid_grant");
    assert_eq!(stolen.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(stolen.headers()[header::PRAGMA], "no-cache");
    // … or with a verifier of their own.
    let guessed = redeem(&front, &code, Some(&Pkce::new().verifier), CLIENT).await;
    assert_eq!(error_of(&guessed), "invalid_grant");
    assert!(legacy.token_bodies.lock().unwrap().is_empty());

    // The client with its verifier.
    let ok = redeem(&front, &code, Some(&pkce.verifier), CLIENT).await;
    assert_eq!(ok.status(), StatusCode::OK, "{:?}", ok.body());
    assert!(json_body(&ok)["access_token"].is_string());
    // Replay.
    assert_eq!(
        error_of(&redeem(&front, &code, Some(&pkce.verifier), CLIENT).await),
        "invalid_grant"
    );

    // Pass-through, discovery.
    let resource = front.send(get("/resource")).await;
    assert_eq!(resource.body(), "protected resource");
    let discovery = front.send(get("/.well-known/openid-configuration")).await;
    assert_eq!(
        json_body(&discovery)["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let length: usize = discovery.headers()[header::CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, discovery.body().len());
}

#[tokio::test]
async fn pkce_downgrade_over_sockets() {
    let (front, _) = setup(PkceLayer::new().exempt_client(CONFIDENTIAL)).await;
    let params = browser_flow(
        &front,
        &authorize_query(CONFIDENTIAL, CONFIDENTIAL_REDIRECT, Some("s"), None),
    )
    .await;
    let response = front
        .send(token_request(&[
            ("grant_type", "authorization_code"),
            ("code", &params["code"]),
            ("client_id", CONFIDENTIAL),
            ("client_secret", CONFIDENTIAL_SECRET),
            ("code_verifier", &Pkce::new().verifier),
        ]))
        .await;
    assert_eq!(error_of(&response), "invalid_grant");
    let response = front
        .send(token_request(&[
            ("grant_type", "authorization_code"),
            ("code", &params["code"]),
            ("client_id", CONFIDENTIAL),
            ("client_secret", CONFIDENTIAL_SECRET),
        ]))
        .await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", response.body());
}

#[tokio::test]
async fn oversized_and_chunked_bodies() {
    let (front, legacy) = setup(PkceLayer::new().max_body_bytes(1024).unwrap()).await;
    let response = front
        .send(form_post(
            "/token",
            &format!("grant_type=authorization_code&code={}", "x".repeat(4096)),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&response), "invalid_request");
    assert!(legacy.token_bodies.lock().unwrap().is_empty());

    // A chunked body (no Content-Length) over the limit is stopped while reading.
    let stream = futures_stream(vec![
        Bytes::from("grant_type=authorization_code&code="),
        Bytes::from("y".repeat(4096)),
    ]);
    let req = hyper::Request::post(format!("http://{}/token", front.addr))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(stream)
        .unwrap();
    let client: HttpClient<http_body_util::StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

type Frames = std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, Infallible>>;

fn futures_stream(
    chunks: Vec<Bytes>,
) -> http_body_util::StreamBody<tokio_stream_shim::Iter<Frames>> {
    let frames: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = chunks
        .into_iter()
        .map(|c| Ok(hyper::body::Frame::data(c)))
        .collect();
    http_body_util::StreamBody::new(tokio_stream_shim::iter(frames))
}

/// A minimal `Stream` over an iterator, to send a chunked body without another dependency.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) struct Iter<I>(I);

    pub(super) fn iter<I: IntoIterator>(i: I) -> Iter<I::IntoIter> {
        Iter(i.into_iter())
    }

    impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
        type Item = I::Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
            Poll::Ready(self.0.next())
        }
    }
}

#[tokio::test]
async fn refusals_are_responses_not_errors() {
    // `Error = S::Error` (here Infallible): the refusal comes back as a response.
    let service =
        PkceLayer::new().layer(tower::service_fn(|_req: Request<PkceBody<Body>>| async {
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
    let response = service
        .oneshot(
            Request::get("/authorize?response_type=code&client_id=a")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.extensions().get::<Reason>(),
        Some(&Reason::ChallengeRequired)
    );
}
