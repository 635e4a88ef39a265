//! Keep-alive HTTP/1.1 connections to the upstream, each driven by the request that holds it.
//!
//! A connection has no task of its own: the request that takes it from the pool polls it while
//! it waits for the response head, and the response body keeps polling it until the body ends;
//! then the connection goes back to the pool. A proxied request therefore stays in the task of
//! the client connection that made it, with no hand-off to another task and back. hyper-util's
//! pooled client makes that hand-off; a minimal proxy built both ways spent 31.7 µs of CPU per
//! request with it and 21.7 µs like this (BENCHMARKS.md).
//!
//! A pooled connection is checked when it is taken: one that the upstream closed, that is not
//! ready for a request, or that sat idle longer than the idle timeout is dropped, and the next
//! one is tried. A request the upstream never received (a reused connection that turned out to
//! be closing) is sent again, on another connection.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower_service::Service;

use super::upstream::UpstreamRequestBody;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type Sender = http1::SendRequest<UpstreamRequestBody>;
type Connection = http1::Connection<Io, UpstreamRequestBody>;

/// One connection: the handle requests are sent on, and the connection itself, which whoever
/// holds it polls.
struct Conn {
    sender: Sender,
    /// `None` once it has ended: dropping it hands back a request still queued on it.
    connection: Option<Connection>,
    /// When it went back to the pool.
    idle_since: Instant,
}

impl Conn {
    /// Whether the connection can take a request now, without waiting. Polls it once, so
    /// whatever it still had to do for the previous exchange is done first.
    ///
    /// A `true` here can still be wrong (the upstream may close the connection the moment
    /// after, or tokio's cooperative budget may have kept the socket from being read):
    /// [`Pool::send`] copes with a request the connection then hands back unwritten.
    fn ready_now(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.drive(cx) {
            return false;
        }
        matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }

    /// Polls the connection; drops it once it has ended (closed by the upstream, or failed).
    /// Returns whether it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(connection) = self.connection.as_mut() {
            if Pin::new(connection).poll(cx).is_ready() {
                self.connection = None;
            }
        }
        self.connection.is_some()
    }

    /// Whether the exchange on it is over and it can take the next request: open, and not
    /// still sending a request body the upstream answered before reading (an early `401` or
    /// `413` during an upload).
    fn reusable(&self) -> bool {
        self.connection.is_some() && self.sender.is_ready()
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The upstream could not be connected to; the request was not sent.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The exchange failed; the request may have reached the upstream.
    Failed(hyper::Error),
}

/// The pool of idle connections to one upstream.
pub(crate) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/` of the upstream: what is connected to.
    target: Uri,
    // Boxed on purpose: a connection moves between the pool and a response body as a pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Conn>>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether the task that closes connections idle past `idle_timeout` runs.
    reaper: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.target)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        target: Uri,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            connector,
            target,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            reaper: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An empty pool to the same upstream, with the same settings: one per worker thread, so
    /// a connection is only ever used from the runtime that opened it.
    pub(crate) fn empty_copy(&self) -> Self {
        Self::new(
            self.connector.clone(),
            self.target.clone(),
            self.max_idle,
            self.idle_timeout,
        )
    }

    /// Sends `req` (origin-form target, `Host` set) and waits for the response head, on a
    /// pooled connection or a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamRequestBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut conn, reused) = match self.take().await {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare, and its future (TLS included) would otherwise
                // make every request's future several kilobytes larger.
                None => (
                    Box::pin(self.connect()).await.map_err(SendError::Connect)?,
                    false,
                ),
            };
            let sent = conn.sender.try_send_request(req);
            let mut sent = std::pin::pin!(sent);
            let result = poll_fn(|cx| {
                // Once the connection has ended it is dropped, which completes `sent`: with
                // the response, with an error, or with the request back if it was never
                // written.
                conn.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    let conn = conn.connection.is_some().then_some(conn);
                    return Ok(response.map(|body| PooledBody {
                        body,
                        conn,
                        pool: Arc::downgrade(self),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a reused connection the upstream was closing. Once more,
                    // on another one.
                    Some(back) if reused => req = back,
                    // A new connection that would not take a request: as good as no connection.
                    Some(_) => return Err(SendError::Connect(e.into_error().into())),
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }

    /// An idle connection that is ready now, if there is one; the ones that are not are
    /// dropped (closed).
    async fn take(&self) -> Option<Box<Conn>> {
        loop {
            let mut conn = self.idle.lock().ok()?.pop()?;
            if conn.idle_since.elapsed() >= self.idle_timeout {
                continue;
            }
            if poll_fn(|cx| Poll::Ready(conn.ready_now(cx))).await {
                return Some(conn);
            }
        }
    }

    async fn connect(
        self: &Arc<Self>,
    ) -> Result<Box<Conn>, Box<dyn std::error::Error + Send + Sync>> {
        self.start_reaper();
        let io = self.connector.clone().call(self.target.clone()).await?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        // Boxed: a connection is big (its buffers), and the response body that carries it
        // is moved several times on its way out.
        Ok(Box::new(Conn {
            sender,
            connection: Some(connection),
            idle_since: Instant::now(),
        }))
    }

    /// Puts a connection back if its exchange is over, unless the pool is full.
    fn put(&self, mut conn: Box<Conn>) {
        if !conn.reusable() {
            return;
        }
        conn.idle_since = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
    }

    /// Starts, once, the task that closes connections idle past the idle timeout, so sockets
    /// the upstream has closed are not held until the next request.
    fn start_reaper(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.reaper.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool = Arc::downgrade(self);
        let every = self.idle_timeout;
        tokio::spawn(async move {
            loop {
                // Every half timeout, so none stays more than 1.5 timeouts.
                tokio::time::sleep(every / 2).await;
                let Some(pool) = pool.upgrade() else { return };
                let stale: Vec<Box<Conn>> = match pool.idle.lock() {
                    Ok(mut idle) => {
                        let (stale, fresh) = std::mem::take(&mut *idle)
                            .into_iter()
                            .partition(|c| c.idle_since.elapsed() >= every);
                        *idle = fresh;
                        stale
                    }
                    Err(_) => return,
                };
                drop(stale);
            }
        });
    }

    /// How many connections are idle in the pool (tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }
}

pin_project! {
    /// An upstream response body. It drives its connection while it is read, and gives the
    /// connection back to the pool once the body has ended.
    pub(crate) struct PooledBody {
        #[pin]
        body: Incoming,
        conn: Option<Box<Conn>>,
        pool: Weak<Pool>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A body dropped before its end leaves the connection mid-message: it is closed.
            if this.body.is_end_stream() {
                give_back(this.conn, this.pool);
            }
        }
    }
}

fn give_back(conn: &mut Option<Box<Conn>>, pool: &Weak<Pool>) {
    if let (Some(conn), Some(pool)) = (conn.take(), pool.upgrade()) {
        pool.put(conn);
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        if let Some(conn) = this.conn.as_mut() {
            if !conn.drive(cx) {
                *this.conn = None;
            }
        }
        let frame = this.body.poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // Once more, so the connection finishes the exchange (and asks for the next
            // request) before it is judged reusable.
            if let Some(conn) = this.conn.as_mut() {
                conn.drive(cx);
            }
            give_back(this.conn, this.pool);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use tokio::net::TcpListener;

    use super::*;
    use tower_pkce::PkceBody;

    /// How the test upstream treats a connection after each response.
    #[derive(Clone, Copy)]
    enum After {
        /// Keeps it open.
        KeepAlive,
        /// Closes it without saying so (no `Connection: close`), as a server whose keep-alive
        /// timeout has passed does.
        SilentClose,
    }

    /// The test upstream: where it listens, how many connections it accepted and closed, and
    /// the signal that closes a `SilentClose` connection.
    struct Upstream {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        close_now: Arc<tokio::sync::Notify>,
    }

    /// A real HTTP/1.1 server on a socket that counts the connections it accepts and answers
    /// every request with `200 ok <n>`.
    async fn upstream(after: After) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let closed = Arc::new(AtomicUsize::new(0));
        let closes = closed.clone();
        let close_now = Arc::new(tokio::sync::Notify::new());
        let close_signal = close_now.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let closes = closes.clone();
                let close_signal = close_signal.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            format!("ok {n}"),
                        ))))
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.keep_alive(matches!(after, After::KeepAlive));
                    if matches!(after, After::SilentClose) {
                        // hyper would add `Connection: close`; answer by hand instead.
                        let mut stream = stream;
                        let mut buf = vec![0u8; 4096];
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let _ = stream.read(&mut buf).await;
                        let body = format!("ok {n}");
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                        // Closed when the test says: after the pool has taken the connection
                        // back.
                        close_signal.notified().await;
                        drop(stream);
                        closes.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            accepted,
            closed,
            close_now,
        }
    }

    fn pool_for(addr: std::net::SocketAddr, idle_timeout: Duration) -> Arc<Pool> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let target: Uri = format!("http://{addr}/").parse().unwrap();
        Arc::new(Pool::new(https, target, 4, idle_timeout))
    }

    fn get(addr: std::net::SocketAddr) -> Request<UpstreamRequestBody> {
        Request::builder()
            .uri("/x")
            .header(http::header::HOST, addr.to_string())
            .body(PkceBody::full(Bytes::new()))
            .unwrap()
    }

    async fn body_of(response: Response<PooledBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_in_sequence() {
        let Upstream { addr, accepted, .. } = upstream(After::KeepAlive).await;
        let pool = pool_for(addr, Duration::from_secs(60));
        for _ in 0..20 {
            let response = pool.send(get(addr)).await.unwrap();
            assert_eq!(body_of(response).await, "ok 1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_get_connections_of_their_own_and_the_pool_keeps_at_most_max_idle()
    {
        let Upstream { addr, accepted, .. } = upstream(After::KeepAlive).await;
        let pool = pool_for(addr, Duration::from_secs(60));
        // All eight hold their connection (their bodies unread) at the same time.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(pool.send(get(addr)).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
        for response in held {
            assert!(body_of(response).await.starts_with("ok "));
        }
        assert_eq!(pool.idle_count(), 4, "max_idle is 4");
        // The next ones reuse what was kept.
        for _ in 0..4 {
            body_of(pool.send(get(addr)).await.unwrap()).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused_and_no_request_fails() {
        let Upstream {
            addr,
            accepted,
            closed,
            close_now,
        } = upstream(After::SilentClose).await;
        let pool = pool_for(addr, Duration::from_secs(60));
        for i in 1..=5 {
            let response = pool.send(get(addr)).await.unwrap();
            assert_eq!(body_of(response).await, format!("ok {i}"));
            assert_eq!(
                pool.idle_count(),
                1,
                "pooled while the upstream still has it open"
            );
            close_now.notify_one();
            // The next request only once the upstream has closed this connection (and the
            // FIN, on loopback, has arrived).
            let deadline = Instant::now() + Duration::from_secs(5);
            while closed.load(Ordering::SeqCst) < i {
                assert!(Instant::now() < deadline, "the upstream did not close");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_replaced() {
        let Upstream { addr, accepted, .. } = upstream(After::KeepAlive).await;
        let pool = pool_for(addr, Duration::from_millis(500));
        body_of(pool.send(get(addr)).await.unwrap()).await;
        body_of(pool.send(get(addr)).await.unwrap()).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let response = pool.send(get(addr)).await.unwrap();
        assert_eq!(body_of(response).await, "ok 2");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_reaper_closes_idle_connections() {
        let Upstream { addr, .. } = upstream(After::KeepAlive).await;
        let pool = pool_for(addr, Duration::from_millis(50));
        body_of(pool.send(get(addr)).await.unwrap()).await;
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
        let Upstream { addr, accepted, .. } = upstream(After::KeepAlive).await;
        let pool = pool_for(addr, Duration::from_secs(60));
        let response = pool.send(get(addr)).await.unwrap();
        assert!(!response.body().is_end_stream());
        drop(response);
        assert_eq!(pool.idle_count(), 0);
        let response = pool.send(get(addr)).await.unwrap();
        assert_eq!(body_of(response).await, "ok 2");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A server that reads a request head, answers at once without reading the body, and
    /// keeps the connection open.
    async fn answers_before_reading_the_body() -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_still_sending_a_body_the_upstream_answered_early_is_not_pooled() {
        let addr = answers_before_reading_the_body().await;
        let pool = pool_for(addr, Duration::from_secs(60));
        // Far more than the socket buffers hold, so the upload is still going when the 413
        // has been read to its end.
        let upload = Request::builder()
            .method(http::Method::POST)
            .uri("/upload")
            .header(http::header::HOST, addr.to_string())
            .body(PkceBody::full(Bytes::from(vec![b'x'; 64 << 20])))
            .unwrap();
        let response = pool.send(upload).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_of(response).await, "");
        assert_eq!(pool.idle_count(), 0, "mid-upload: not reusable");
    }

    #[tokio::test]
    async fn an_upstream_that_closes_new_connections_at_once_is_an_error_not_a_hang() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let pool = pool_for(addr, Duration::from_secs(60));
        for _ in 0..20 {
            let sent = tokio::time::timeout(Duration::from_secs(5), pool.send(get(addr))).await;
            assert!(matches!(sent, Ok(Err(_))), "an error, at once");
        }
    }

    #[tokio::test]
    async fn no_upstream_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = pool_for(addr, Duration::from_secs(60));
        assert!(matches!(
            pool.send(get(addr)).await,
            Err(SendError::Connect(_))
        ));
    }
}
