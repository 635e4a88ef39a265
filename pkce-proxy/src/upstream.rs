//! The client side: a pooled HTTP/1.1 (and, over TLS with ALPN, HTTP/2) client to the legacy
//! server, and the request body wrapper that times out a stalled upload.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::config::Config;
use super::pool::{Pool, PooledBody, SendError};
use super::stats::UpstreamFailure;
use super::Shared;
use tower_pkce::PkceBody;

/// The body of a request on its way upstream.
pub(crate) type UpstreamRequestBody = PkceBody<TimeoutBody<Incoming>>;
/// The body of an upstream response, or of the 502 the proxy answers when it cannot connect.
pub(crate) type UpstreamBody = Either<PooledBody, Full<Bytes>>;

/// Builds the connection pool for `config.upstream`.
fn pool(config: &Config) -> io::Result<Pool> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(config)?)
        .https_or_http()
        // HTTP/1.1 only: what legacy servers speak, and `Host` reaches them as sent.
        .enable_http1()
        .wrap_connector(http);
    Ok(Pool::new(
        https,
        config.upstream.clone(),
        256,
        // Shorter than common server keep-alives (Apache's is 5 s), so the pool rarely hands
        // out a connection the upstream is closing.
        Duration::from_secs(4),
    ))
}

/// The roots an `https` upstream is checked against: the system's, the webpki set, and the
/// operator's `--upstream-ca` file.
fn tls_config(config: &Config) -> io::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if config.upstream.scheme() == Some(&Scheme::HTTPS) {
        // The system store is read only when it can matter; unreadable entries are skipped.
        let native = rustls_native_certs::load_native_certs();
        let _ = roots.add_parsable_certificates(native.certs);
    }
    if let Some(path) = &config.upstream_ca {
        let invalid = |e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("--upstream-ca {}: {e}", path.display()),
            )
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| invalid(&e))? {
            roots
                .add(cert.map_err(|e| invalid(&e))?)
                .map_err(|e| invalid(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(invalid(&"no certificate in the file"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Why a forwarded request has no response. A request the upstream never received (it could
/// not be connected to) is not an error: it is answered with 502 by [`Upstream`] itself, so
/// the layer gives a redeemed code back.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// No response headers within `--upstream-timeout`.
    Timeout,
    /// The exchange failed after the request may have been sent.
    Failed(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("the upstream did not answer in time"),
            Self::Failed(_) => f.write_str("the upstream exchange failed"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Timeout => None,
            Self::Failed(e) => Some(e),
        }
    }
}

/// The innermost service: sends a request to the upstream.
#[derive(Clone)]
pub(crate) struct Upstream {
    pool: Arc<Pool>,
    /// The upstream's authority, for the `Host` of a request that has none (HTTP/1.0).
    host: HeaderValue,
    timeout: Duration,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub(crate) fn new(config: &Config, shared: Arc<Shared>) -> io::Result<Self> {
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, "upstream URL");
        let authority = config.upstream.authority().ok_or_else(bad)?;
        Ok(Self {
            pool: Arc::new(pool(config)?),
            host: HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?,
            timeout: config.upstream_timeout,
            shared,
        })
    }
}

impl Upstream {
    /// The same upstream with a connection pool of its own, for another worker thread.
    pub(crate) fn with_own_pool(&self) -> Self {
        Self {
            pool: Arc::new(self.pool.empty_copy()),
            ..self.clone()
        }
    }
}

impl Service<Request<UpstreamRequestBody>> for Upstream {
    type Response = Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool queues; readiness is per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<UpstreamRequestBody>) -> Self::Future {
        // Origin-form, as HTTP/1.1 wants it: an absolute-form target (or HTTP/2's scheme and
        // authority) loses all but its path and query; the authority is in `Host` already.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        // The legacy server is spoken to in HTTP/1.1 whatever the client spoke to the proxy.
        *req.version_mut() = Version::HTTP_11;
        let pool = self.pool.clone();
        let timeout = self.timeout;
        let shared = self.shared.clone();
        Box::pin(async move {
            // Kept (a cheap shared-bytes copy) so the path is classified only if an error needs it.
            let target = req.uri().clone();
            match tokio::time::timeout(timeout, pool.send(req)).await {
                Ok(Ok(response)) => Ok(response.map(Either::Left)),
                Ok(Err(SendError::Connect(e))) => {
                    // Never delivered: safe to answer here, and the layer may undo a
                    // redemption on this non-2xx answer.
                    shared.stats.upstream_error(UpstreamFailure::Connect);
                    tracing::warn!(target: "pkce_proxy", error = %ErrorChain(&*e), "cannot connect to the upstream");
                    let response = shared.error_response(
                        shared.is_oauth(target.path()),
                        http::StatusCode::BAD_GATEWAY,
                        "temporarily_unavailable",
                        "the authorization server cannot be reached; try again later",
                    );
                    Ok(response.map(Either::Right))
                }
                Ok(Err(SendError::Failed(e))) => Err(UpstreamError::Failed(e)),
                Err(_) => Err(UpstreamError::Timeout),
            }
        })
    }
}

/// Formats an error with its sources, for logs. Errors here never carry request data.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// The marker inside the [`io::Error`] a stalled request body fails with.
#[derive(Debug)]
pub(crate) struct BodyStalled;

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body stalled")
    }
}

impl std::error::Error for BodyStalled {}

/// The marker inside the [`io::Error`] a request body fails with when the client's body
/// itself failed (a malformed chunked encoding, a connection cut mid-body): the client's
/// fault, not the upstream's.
#[derive(Debug)]
pub(crate) struct ClientBodyFailed(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for ClientBodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client's request body could not be read")
    }
}

impl std::error::Error for ClientBodyFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Whether `error` (or one of its sources) carries the marker `M`, itself or inside an
/// [`io::Error`].
fn has_marker<M: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<M>()) {
                return true;
            }
        }
        if e.is::<M>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Whether `error` (or one of its sources) is a stalled request body.
pub(crate) fn is_body_stall(error: &(dyn std::error::Error + 'static)) -> bool {
    has_marker::<BodyStalled>(error)
}

/// Whether `error` (or one of its sources) is a client's request body that failed.
pub(crate) fn is_client_body_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    has_marker::<ClientBodyFailed>(error)
}

pin_project! {
    /// A request body that fails with an [`io::ErrorKind::TimedOut`] error when no frame
    /// arrives for `idle`. The timer is made only when the body first has to wait, so bodies
    /// that arrive with their headers (most, and every empty one) cost nothing.
    pub(crate) struct TimeoutBody<B> {
        #[pin]
        body: B,
        idle: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> TimeoutBody<B> {
    pub(crate) fn new(body: B, idle: Duration) -> Self {
        Self {
            body,
            idle,
            sleep: None,
        }
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(Instant::now() + *this.idle);
                }
                Poll::Ready(
                    frame.map(|f| f.map_err(|e| io::Error::other(ClientBodyFailed(e.into())))),
                )
            }
            Poll::Pending => {
                let idle = *this.idle;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        BodyStalled,
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
