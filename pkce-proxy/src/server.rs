//! The server side: accepting connections, the per-request front (errors, timing), graceful
//! shutdown. The headers in and out are `headers.rs`'s.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower_service::Service;

use super::config::Config;
use super::headers::{prepare_request, strip_hop_by_hop};
use super::stats::{HandshakeFailure, UpstreamFailure};
use super::upstream::{
    is_body_stall, is_client_body_failure, ErrorChain, TimeoutBody, Upstream, UpstreamBody,
    UpstreamError,
};
use super::{ProxyResult, Shared};
use tower_pkce::{Pkce, PkceBody};

/// What the proxy answers with: the upstream's response through the layer, or its own error.
pub(crate) type ProxyBody = Either<PkceBody<UpstreamBody>, Full<Bytes>>;

/// Accepts connections until `shutdown`, then drains them for up to the grace period.
pub(crate) async fn serve(
    config: &Config,
    listener: TcpListener,
    shared: Arc<Shared>,
    upstream: Upstream,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        // A client that hangs up mid-request still gets its exchange finished with the
        // upstream (bounded by `--upstream-timeout`), as a half-closed connection would. The
        // point is speed: without it hyper reads ahead after every request head to look for
        // an EOF, and since the request still holds its slice of the read buffer, that read
        // allocates a new 8 KiB buffer for every request.
        .half_close(true)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    // Shared with the TLS connections' tasks, which start serving after their handshake.
    let builder = Arc::new(builder);
    let permits = shared.connections.clone();
    let (stop, stopped) = watch::channel(false);
    // Every connection task holds a sender; when all are gone, every connection is closed.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let limits = Limits {
        first_request: config.header_timeout,
        idle: config.idle_timeout,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        // At the connection limit, stop accepting (the kernel's backlog holds the rest) until
        // a connection closes; idle ones are closed by `limits`. The permits are shared by
        // the workers: one waits for a free one before it accepts, and takes it after, so no
        // worker holds a permit while its backlog is empty. When one permit frees, several
        // waiting workers may accept: all but one then hold their connection, unserved, until
        // the next permit frees (at most `workers - 1` such connections).
        tokio::select! {
            permit = permits.acquire() => match permit {
                Ok(permit) => drop(permit),
                Err(_) => break,
            },
            () = &mut shutdown => break,
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning, and
                    // say so once a second at most.
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(target: "pkce_proxy", error = %e, "accept failed");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // Another worker took the free one meanwhile: this connection waits for the next.
            Err(_) => tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            },
        };
        let _ = stream.set_nodelay(true);
        shared.stats.connection_accepted();
        let activity = Arc::new(Activity::new());
        let front = Front {
            shared: shared.clone(),
            upstream: upstream.clone(),
            // Formatted once per connection, not per request.
            peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
            activity: activity.clone(),
        };
        let service = hyper::service::service_fn(move |req| front.clone().handle(req));
        let stopped = stopped.clone();
        let alive = alive.clone();
        let Some(tls) = &shared.tls else {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(async move {
                watch_connection(connection, activity, limits, stopped).await;
                drop((permit, alive));
            });
            continue;
        };
        let acceptor = tls.acceptor.clone();
        let (builder, shared) = (builder.clone(), shared.clone());
        tokio::spawn(async move {
            // The handshake and the first request's headers share the header timeout: the
            // connection's clock (`activity`) started at accept.
            let handshake =
                tokio::time::timeout(limits.first_request, acceptor.accept(stream)).await;
            let failure = match handshake {
                Ok(Ok(stream)) => {
                    let connection = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    watch_connection(connection, activity, limits, stopped).await;
                    None
                }
                Ok(Err(e)) => {
                    tracing::debug!(target: "pkce_proxy", error = %e, "TLS handshake failed");
                    Some(super::tls::failure(&e))
                }
                Err(_) => {
                    tracing::debug!(target: "pkce_proxy", "TLS handshake timed out");
                    Some(HandshakeFailure::Timeout)
                }
            };
            if let Some(failure) = failure {
                shared.stats.handshake_failed(failure);
            }
            drop((permit, alive));
        });
    }
    drop(listener);
    drop(alive);
    shared.shutting_down.store(true, Ordering::Relaxed);
    tracing::info!(target: "pkce_proxy", "shutting down: no new connections, draining in-flight requests");
    let _ = stop.send(true);
    tokio::select! {
        _ = all_closed.recv() => {
            tracing::info!(target: "pkce_proxy", "all connections closed");
        }
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!(target: "pkce_proxy", "grace period over: dropping the remaining connections");
        }
    }
    Ok(())
}

/// How long a connection may sit without a request in flight.
#[derive(Clone, Copy)]
struct Limits {
    /// Before its first request: a client that connects and sends nothing.
    first_request: Duration,
    /// Between requests (HTTP/1.1 keep-alive, an HTTP/2 connection without streams).
    idle: Duration,
}

/// A connection's requests in flight and when it last had one.
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    last: std::sync::Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = Instant::now();
        }
    }

    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.touch();
    }

    fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// When the connection may be closed if nothing happens meanwhile; `None` while a request
    /// is in flight.
    fn deadline(&self, limits: Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let limit = if self.served.load(Ordering::Relaxed) {
            limits.idle
        } else {
            limits.first_request
        };
        let last = self
            .last
            .lock()
            .map(|l| *l)
            .unwrap_or_else(|_| Instant::now());
        Some(last + limit)
    }
}

/// Drives one connection; closes it gracefully when it idles past its limit or the proxy
/// shuts down.
///
/// The connection task wakes several times per request (the request arrives, the upstream
/// answers, the response is written). The idle timer and the stop signal are therefore each
/// polled once to register the task's waker, and after that only when they may be ready (the
/// timer has fired, a stop value was sent), not at every wake as `select!` would.
async fn watch_connection<C>(
    connection: C,
    activity: Arc<Activity>,
    limits: Limits,
    stopped: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulClose,
{
    let mut connection = std::pin::pin!(connection);
    // A cheap look at whether a stop value was sent; `stop` is what waits for it.
    let mut probe = stopped.clone();
    let mut stop = std::pin::pin!(stop_signal(stopped));
    let mut stop_registered = false;
    let mut closing = false;
    // A peer that never acknowledges the HTTP/2 GOAWAY's ping keeps a gracefully closing
    // connection open: after this long, it is dropped.
    let mut drop_at: Option<Instant> = None;
    // While requests are in flight, look again after the idle limit.
    let first = activity
        .deadline(limits)
        .unwrap_or_else(|| Instant::now() + limits.idle);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(first.into()));
    // Whether the timer was polled since it was last set (so it will wake the task).
    let mut timer_registered = false;
    std::future::poll_fn(|cx| loop {
        if let std::task::Poll::Ready(result) = connection.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!(target: "pkce_proxy", error = %ErrorChain(&*e), "connection ended with an error");
            }
            return std::task::Poll::Ready(());
        }
        if !closing && (!stop_registered || probe.has_changed().unwrap_or(true)) {
            probe.borrow_and_update();
            stop_registered = true;
            if poll_unconstrained(stop.as_mut(), cx).is_ready() {
                connection.as_mut().close_gracefully();
                closing = true;
                // The connection acts on the close when polled again.
                continue;
            }
        }
        // Closing on a stop signal (no drop deadline), the timer has nothing left to do.
        let timer_done = closing && drop_at.is_none();
        if timer_done || (timer_registered && !timer.is_elapsed()) {
            return std::task::Poll::Pending;
        }
        timer_registered = true;
        if poll_unconstrained(timer.as_mut(), cx).is_pending() {
            return std::task::Poll::Pending;
        }
        // The timer fired.
        let now = Instant::now();
        if drop_at.is_some() {
            tracing::debug!(target: "pkce_proxy", "dropping a connection that did not close");
            return std::task::Poll::Ready(());
        }
        let next = match activity.deadline(limits) {
            Some(deadline) if deadline <= now => {
                tracing::debug!(target: "pkce_proxy", "closing an idle connection");
                connection.as_mut().close_gracefully();
                closing = true;
                let at = now + limits.first_request;
                drop_at = Some(at);
                at
            }
            Some(deadline) => deadline,
            None => now + limits.idle,
        };
        timer.as_mut().reset(next.into());
        timer_registered = false;
    })
    .await;
}

/// Polls `future` with tokio's cooperative budget lifted. Out of budget, a tokio timer or
/// channel asks to be polled again instead of registering the task's waker; `watch_connection`
/// polls those only once to register, so they must register whatever the budget.
fn poll_unconstrained<F: Future>(
    mut future: std::pin::Pin<&mut F>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<F::Output> {
    let unconstrained =
        tokio::task::unconstrained(std::future::poll_fn(|cx| future.as_mut().poll(cx)));
    std::pin::pin!(unconstrained).poll(cx)
}

/// Resolves once the proxy is stopping: `true` is sent, or the sender is gone.
async fn stop_signal(mut stopped: watch::Receiver<bool>) {
    loop {
        if *stopped.borrow_and_update() {
            return;
        }
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// A connection that can be asked to finish its requests and close.
trait GracefulClose {
    fn close_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E, B> GracefulClose for auto::Connection<'static, I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// One connection's request handler.
#[derive(Clone)]
struct Front {
    shared: Arc<Shared>,
    upstream: Upstream,
    /// The client's address, as an `X-Forwarded-For` value.
    peer_ip: Option<HeaderValue>,
    activity: Arc<Activity>,
}

impl Front {
    async fn handle(self, mut req: Request<Incoming>) -> ProxyResult<ProxyBody> {
        let started = Instant::now();
        let shared = self.shared.clone();
        // Counted down on drop too: a client may hang up before its response.
        let _in_flight = InFlight::new(&shared, &self.activity);
        if req.method() == http::Method::CONNECT {
            // A reverse proxy for one server does not open tunnels.
            let response = shared.error_response(
                false,
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "CONNECT is not supported",
            );
            return Ok(response.map(Either::Right));
        }
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            // RFC 9112 §3.2: a request with more than one Host is answered 400.
            let response = shared.error_response(
                shared.is_oauth(req.uri().path()),
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one Host header",
            );
            return Ok(response.map(Either::Right));
        }
        let method = req.method().clone();
        prepare_request(&shared, self.peer_ip.as_ref(), &mut req);
        let req = req.map(|body| TimeoutBody::new(body, shared.body_timeout));
        // The current client policy (a reload swaps it), for this request.
        let mut pkce = Pkce::new(self.upstream, shared.current_layer());
        // `Upstream` is always ready; the contract is kept all the same.
        let (endpoint, result) = match std::future::poll_fn(|cx| pkce.poll_ready(cx)).await {
            Ok(()) => {
                // Classified once, by the layer: its endpoint labels this request's metrics.
                let (endpoint, future) = pkce.call_classified(req);
                (endpoint, future.await)
            }
            Err(e) => (shared.endpoint(req.uri().path()), Err(e)),
        };
        let oauth = endpoint != tower_pkce::Endpoint::Other;
        let response = match result {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                // The upstream's HTTP version describes its connection, not ours.
                *response.version_mut() = http::Version::HTTP_11;
                if response.extensions().get::<tower_pkce::Reason>()
                    == Some(&tower_pkce::Reason::BodyTimeout)
                {
                    // The rest of a stalled body may still come: do not read it as a request.
                    shared.stats.body_timeout();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response.map(Either::Left)
            }
            Err(e) => error_response(&shared, oauth, &e).map(Either::Right),
        };
        shared.stats.observe(endpoint, started.elapsed());
        tracing::debug!(
            target: "pkce_proxy::access",
            method = %method,
            endpoint = ?endpoint,
            status = response.status().as_u16(),
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
        Ok(response)
    }
}

/// Counts a request in flight, for the proxy and its connection, for as long as it lives.
struct InFlight<'a>(&'a Shared, Arc<Activity>);

impl<'a> InFlight<'a> {
    fn new(shared: &'a Shared, activity: &Arc<Activity>) -> Self {
        shared.stats.request_started();
        activity.started();
        Self(shared, activity.clone())
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.stats.request_finished();
        self.1.finished();
    }
}

fn error_response(shared: &Shared, oauth: bool, error: &UpstreamError) -> Response<Full<Bytes>> {
    match error {
        UpstreamError::Failed(e) if is_body_stall(e) => {
            shared.stats.body_timeout();
            shared.error_response(
                oauth,
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "the request body was not received in time",
            )
        }
        UpstreamError::Failed(e) if is_client_body_failure(e) => {
            tracing::info!(target: "pkce_proxy", error = %ErrorChain(e), "a client's request body failed");
            shared.error_response(
                oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
            )
        }
        UpstreamError::Failed(e) => {
            shared.stats.upstream_error(UpstreamFailure::Failed);
            tracing::warn!(target: "pkce_proxy", error = %ErrorChain(e), "upstream exchange failed");
            shared.error_response(
                oauth,
                StatusCode::BAD_GATEWAY,
                "temporarily_unavailable",
                "the authorization server did not answer; try again later",
            )
        }
        UpstreamError::Timeout => {
            shared.stats.upstream_error(UpstreamFailure::Timeout);
            tracing::warn!(target: "pkce_proxy", "upstream timed out");
            shared.error_response(
                oauth,
                StatusCode::GATEWAY_TIMEOUT,
                "temporarily_unavailable",
                "the authorization server did not answer in time; try again later",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that, on its first poll, uses up the task's cooperative budget, and then
    /// only waits to be closed.
    struct BudgetEater {
        first: bool,
        closed: Arc<AtomicBool>,
    }

    impl Future for BudgetEater {
        type Output = Result<(), Box<dyn std::error::Error + Send + Sync>>;

        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            if self.closed.load(Ordering::Relaxed) {
                return std::task::Poll::Ready(Ok(()));
            }
            if std::mem::take(&mut self.first) {
                loop {
                    let spend = std::pin::pin!(tokio::task::consume_budget());
                    if spend.poll(cx).is_pending() {
                        break;
                    }
                }
            }
            std::task::Poll::Pending
        }
    }

    impl GracefulClose for BudgetEater {
        fn close_gracefully(self: std::pin::Pin<&mut Self>) {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    /// Watches a [`BudgetEater`] whose idle limits are `limit`, in a task of its own; returns
    /// the task, the stop sender and whether the connection was closed.
    fn watch_eater(
        limit: Duration,
    ) -> (
        tokio::task::JoinHandle<()>,
        watch::Sender<bool>,
        Arc<AtomicBool>,
    ) {
        let closed = Arc::new(AtomicBool::new(false));
        let connection = BudgetEater {
            first: true,
            closed: closed.clone(),
        };
        let limits = Limits {
            first_request: limit,
            idle: limit,
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(watch_connection(
            connection,
            Arc::new(Activity::new()),
            limits,
            stopped,
        ));
        (task, stop, closed)
    }

    /// The idle timer and the stop signal are polled only once to register; out of budget,
    /// tokio would not register them, and an idle connection would never be closed.
    #[tokio::test]
    async fn an_idle_connection_is_closed_even_if_its_task_ran_out_of_budget() {
        let (task, _stop, closed) = watch_eater(Duration::from_millis(100));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the idle connection was never closed")
            .unwrap();
        assert!(closed.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_stop_reaches_a_connection_whose_task_ran_out_of_budget() {
        // No idle limit to speak of: only the stop can close it.
        let (task, stop, closed) = watch_eater(Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the stop never reached the connection")
            .unwrap();
        assert!(closed.load(Ordering::Relaxed));
    }
}
