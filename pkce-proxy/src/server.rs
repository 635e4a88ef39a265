//! The server side: accepting connections, the per-request front (headers in and out, errors,
//! timing), graceful shutdown.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tower_service::Service;

use super::config::Config;
use super::stats::UpstreamFailure;
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
    let pkce = Pkce::new(upstream, shared.layer.clone());
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
            pkce: pkce.clone(),
            // Formatted once per connection, not per request.
            peer_ip: HeaderValue::from_str(&peer.ip().to_string()).ok(),
            activity: activity.clone(),
        };
        let service = hyper::service::service_fn(move |req| front.clone().handle(req));
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let stopped = stopped.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            watch_connection(connection, activity, limits, stopped).await;
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
    pkce: Pkce<Upstream>,
    /// The client's address, as an `X-Forwarded-For` value.
    peer_ip: Option<HeaderValue>,
    activity: Arc<Activity>,
}

impl Front {
    async fn handle(mut self, mut req: Request<Incoming>) -> ProxyResult<ProxyBody> {
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
        let endpoint = shared.endpoint(req.uri().path());
        let oauth = endpoint != tower_pkce::Endpoint::Other;
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            // RFC 9112 §3.2: a request with more than one Host is answered 400.
            let response = shared.error_response(
                oauth,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one Host header",
            );
            return Ok(response.map(Either::Right));
        }
        let method = req.method().clone();
        prepare_request(&shared, self.peer_ip.as_ref(), &mut req);
        let req = req.map(|body| TimeoutBody::new(body, shared.body_timeout));
        // `Upstream` is always ready; the contract is kept all the same.
        let result = match std::future::poll_fn(|cx| self.pkce.poll_ready(cx)).await {
            Ok(()) => self.pkce.call(req).await,
            Err(e) => Err(e),
        };
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

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), and `Upgrade`.
/// `Connection` must stay first: see [`strip_hop_by_hop`]. A `static`, not a `const`: a
/// `const` array would be built and dropped again at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers `Connection` may not remove: the message's identity and framing, and what the
/// proxy itself vouches for. `name` is as it came, in any case.
fn protected(name: &str) -> bool {
    const PREFIX: &str = "x-forwarded-";
    ["host", "content-length", "content-type", "authorization"]
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p))
        || name
            .get(..PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(PREFIX))
}

/// Removes the hop-by-hop headers, including every header `Connection` names (but not the
/// protected ones: `Connection: host` must not strip `Host`). One pass over the names finds
/// which are there, so a message without any (most requests) costs no lookup, and with one
/// `Connection` header (the usual case) this allocates nothing.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut connection = headers.get_all(header::CONNECTION).iter();
        if connection.next().is_some() && connection.next().is_some() {
            let values: Vec<HeaderValue> = headers
                .get_all(header::CONNECTION)
                .iter()
                .cloned()
                .collect();
            for value in &values {
                remove_named(headers, value);
            }
        } else if let Some(value) = headers.remove(header::CONNECTION) {
            remove_named(headers, &value);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Where a (lowercase) header name is in [`HOP_BY_HOP`]. A `match` on the name: one length
/// switch and at most a few comparisons, where comparing with each entry would cost nine.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes the headers a `Connection` value names, except the protected ones.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(value) = connection.to_str() else {
        return;
    };
    for name in value.split(',').map(str::trim) {
        if !name.is_empty() && !protected(name) {
            // By `&str`: parsed on the stack, and a token that is no header name removes
            // nothing. A hop-by-hop name (`keep-alive`) goes here or in the caller's pass,
            // whichever comes first.
            headers.remove(name);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Makes a client's request fit to forward: hop-by-hop headers out, `Host` kept (or made from
/// an HTTP/2 `:authority`), forwarding headers set.
fn prepare_request(shared: &Shared, peer_ip: Option<&HeaderValue>, req: &mut Request<Incoming>) {
    // An absolute-form target (HTTP/1) or `:authority` (HTTP/2) names the host: it wins over
    // a `Host` header (RFC 9112 §3.2.2, RFC 9113 §8.3.1).
    let authority = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    drop_untrusted_headers(headers, shared.trust_forwarded);
    headers.remove(header::EXPECT);
    if let Some(value) = authority {
        headers.insert(header::HOST, value);
    }
    if shared.trust_forwarded {
        if let Some(ip) = peer_ip {
            let chain = match (headers.get(&X_FORWARDED_FOR), ip.to_str()) {
                (Some(prior), Ok(ip)) => prior
                    .to_str()
                    .ok()
                    .and_then(|prior| HeaderValue::from_str(&format!("{prior}, {ip}")).ok()),
                _ => None,
            };
            headers.insert(X_FORWARDED_FOR, chain.unwrap_or_else(|| ip.clone()));
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = headers.get(header::HOST).cloned() {
                headers.insert(X_FORWARDED_HOST, host);
            }
        }
    } else {
        if let Some(ip) = peer_ip {
            headers.insert(X_FORWARDED_FOR, ip.clone());
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

/// Whether a client could use the header to claim another address, scheme or host, in any
/// of the spellings servers read (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `True-Client-IP`
/// and the like).
fn is_forwarding(name: &str) -> bool {
    name.starts_with("x-forwarded-")
        || matches!(
            name,
            "forwarded"
                | "x-forwarded"
                | "forwarded-for"
                | "x-real-ip"
                | "x-client-ip"
                | "client-ip"
                | "true-client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-cluster-client-ip"
                | "x-proxyuser-ip"
                | "x-host"
                | "x-original-host"
                | "x-scheme"
                | "x-url-scheme"
                | "front-end-https"
        )
}

/// Drops the forwarding headers a client sent unless they are trusted. (The routing headers,
/// trusted or not, are the layer's to drop: `oauth::headers`.)
fn drop_untrusted_headers(headers: &mut HeaderMap, trust_forwarded: bool) {
    // Checked before collecting: most requests carry none (no allocation then).
    if !trust_forwarded && headers.keys().any(|n| is_forwarding(n.as_str())) {
        let names: Vec<http::HeaderName> = headers
            .keys()
            .filter(|n| is_forwarding(n.as_str()))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
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

    #[test]
    fn the_hop_by_hop_match_agrees_with_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        for name in ["host", "content-length", "connections", "x-keep-alive", ""] {
            assert_eq!(hop_by_hop_index(name), None, "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_including_the_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "set-cookie"]);
    }

    #[test]
    fn spoofable_forwarding_headers_go_unless_trusted() {
        let forwarding = [
            "x-forwarded-for",
            "x-forwarded-host",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-forwarded",
        ];
        let kept = ["accept", "x-forwardedness", "x-request-id"];
        let left = |trust| {
            let mut h = HeaderMap::new();
            for name in forwarding.iter().chain(&kept) {
                h.insert(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_static("x"),
                );
            }
            drop_untrusted_headers(&mut h, trust);
            let mut left: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
            left.sort_unstable();
            left
        };
        assert_eq!(left(false), kept);
        let mut all: Vec<&str> = forwarding.iter().chain(&kept).copied().collect();
        all.sort_unstable();
        assert_eq!(left(true), all);
    }

    #[test]
    fn connection_cannot_remove_protected_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, content-length, x-forwarded-for, authorization"),
        );
        h.insert(header::HOST, HeaderValue::from_static("login.example"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 4);
    }

    /// `Connection` tokens are matched whatever their case, and every `Connection` header
    /// counts.
    #[test]
    fn connection_tokens_are_read_in_any_case_and_from_every_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Host, X-Forwarded-For, X-Hop-One"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("AUTHORIZATION,x-hop-TWO"),
        );
        h.insert(header::HOST, HeaderValue::from_static("login.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("x-hop-one", HeaderValue::from_static("1"));
        h.insert("x-hop-two", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "host", "x-forwarded-for"]);
    }
}
