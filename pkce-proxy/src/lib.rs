//! `pkce-proxy`: a reverse proxy with [`PkceLayer`] inside, to put in front of a legacy OAuth
//! 2.0 authorization server without changing it (feature `proxy`, on by default).
//!
//! The binary is a thin wrapper around [`main`]. [`Proxy`] runs the same server inside another
//! program or a test:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use pkce_proxy::{Config, Proxy};
//!
//! let mut config = Config::new("http://127.0.0.1:9000".parse().unwrap());
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! let proxy = Proxy::bind(config).await?;
//! println!("listening on {}", proxy.local_addr());
//! proxy
//!     .serve(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await
//! # }
//! ```
//!
//! # What it does to traffic
//!
//! - Requests to the authorize and token endpoints and the discovery documents go through
//!   [`PkceLayer`]; everything else is streamed through untouched, in both directions, without
//!   buffering: any method, path, query, header (hop-by-hop headers removed, RFC 9110 §7.6.1),
//!   body and status.
//! - `Host` is kept. `X-Forwarded-For`, `-Proto` and `-Host` are set; the ones a client sent,
//!   and `Forwarded` and `X-Real-IP`, are dropped unless `--trust-forwarded` (RFC 9700 §4.13).
//! - Clients speak HTTP/1.1 or HTTP/2: in cleartext (HTTP/2 by prior knowledge), or over TLS
//!   1.2/1.3 with ALPN when [`Config::tls_cert`] and [`Config::tls_key`] are set (cleartext is
//!   then refused). The upstream is spoken to over HTTP/1.1 (plain or TLS, rustls) from a
//!   keep-alive pool.
//! - The `pkce-proxy` binary serves on `--workers` threads (one per CPU by default), each with
//!   its own current-thread runtime, listening socket (`SO_REUSEPORT`) and upstream pool: a
//!   request is handled start to end on one thread. [`Proxy::serve`] serves on the runtime it
//!   is called from.
//! - Protocol upgrades (WebSocket) and `CONNECT` are not proxied.
//! - `X-Original-URL` and `X-Rewrite-URL`, which some frameworks route by instead of the
//!   request line, are always dropped: the layer classifies the request line.
//! - At most `--max-connections` client connections are open at once.
//!
//! # Timeouts and errors
//!
//! | what | default | then |
//! |---|---|---|
//! | the TLS handshake and the first request on a connection | 10 s | the connection is closed |
//! | request headers | 10 s | the connection is closed |
//! | a connection without a request in flight | 60 s | the connection is closed |
//! | a pause in a request body | 10 s | `408`, the connection is closed |
//! | connecting to the upstream | 5 s | `502` |
//! | the upstream's response headers | 30 s | `504` |
//! | in-flight requests after SIGINT/SIGTERM | 30 s | connections are dropped |
//!
//! On the OAuth endpoints these errors are RFC 6749 JSON (`temporarily_unavailable`, or
//! `invalid_request` for 408); elsewhere they are plain text. A code whose token request never
//! reached the upstream (`502` on connect) goes back to bound; one whose request may have
//! reached it (timeout, broken connection) stays redeemed: fail closed.

#![forbid(unsafe_code)]
// No panic reachable from input: outside tests, no unwrap or expect.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::convert::Infallible;
use std::ffi::OsString;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

mod admin;
mod config;
mod headers;
mod pool;
mod reload;
mod server;
mod stats;
mod tls;
mod upstream;

pub use config::{
    ClientConfig, Config, ConfigError, LogFormat, RedisUrl, StoreSpec, DEFAULT_LISTEN,
};

use tower_pkce::Endpoint;
use tower_pkce::PkceLayer;

/// The store inside the layer, kept for the readiness check.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    Memory(tower_pkce::MemoryStore),
    #[cfg(feature = "redis")]
    Redis(tower_pkce::RedisStore),
}

impl Store {
    /// Whether the store can serve requests now: always for memory, a `PING` within the
    /// store timeout for Redis.
    pub(crate) async fn check(&self) -> Result<(), tower_pkce::StoreError> {
        match self {
            Self::Memory(_) => Ok(()),
            #[cfg(feature = "redis")]
            Self::Redis(redis) => redis.ping().await,
        }
    }
}

/// State shared by every connection of one proxy.
pub(crate) struct Shared {
    /// The layer as bound: its routing (endpoint paths do not change on a reload) and its
    /// metrics, which every reloaded layer shares.
    layer: PkceLayer,
    /// What requests go through: `layer` with the client policy of the last reload.
    policy: RwLock<PkceLayer>,
    /// TLS on the listener, if it has a certificate.
    tls: Option<tls::Listener>,
    store: Store,
    stats: stats::Stats,
    trust_forwarded: bool,
    body_timeout: std::time::Duration,
    shutting_down: AtomicBool,
    /// One permit per client connection that may be open (`--max-connections`), shared by
    /// the workers.
    connections: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn endpoint(&self, path: &str) -> Endpoint {
        self.layer.endpoint(path)
    }

    /// The layer for the next request: the current client policy.
    pub(crate) fn current_layer(&self) -> PkceLayer {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `X-Forwarded-Proto` for requests that came to this listener.
    pub(crate) fn forwarded_proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls.is_some() { "https" } else { "http" })
    }

    /// Whether errors on `path` are answered in RFC 6749 JSON.
    pub(crate) fn is_oauth(&self, path: &str) -> bool {
        self.endpoint(path) != Endpoint::Other
    }

    /// A response the proxy makes itself: RFC 6749 JSON on the OAuth endpoints, plain text
    /// elsewhere.
    pub(crate) fn error_response(
        &self,
        oauth: bool,
        status: StatusCode,
        error: &'static str,
        description: &'static str,
    ) -> Response<Full<Bytes>> {
        let (body, content_type) = if oauth {
            let json = serde_json::json!({"error": error, "error_description": description});
            (json.to_string(), "application/json")
        } else {
            (format!("{description}\n"), "text/plain; charset=utf-8")
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::BAD_GATEWAY || status == StatusCode::GATEWAY_TIMEOUT {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

/// A bound, not yet serving, proxy.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    upstream: upstream::Upstream,
}

impl Proxy {
    /// Binds the listeners (and the admin listener, if configured) and prepares the upstream
    /// client. Fails with [`io::ErrorKind::InvalidInput`] (the [`ConfigError`] inside) for a
    /// configuration that [`Config::validate`] refuses, or if an address is taken. A Redis
    /// store is not connected here: the proxy starts without it, answers OAuth requests 503
    /// and reports not ready until it answers.
    pub async fn bind(config: Config) -> io::Result<Self> {
        Self::bind_with(config, false).await
    }

    /// [`bind`](Self::bind), with `SO_REUSEPORT` on the listener when other worker threads
    /// are to listen on the same address.
    async fn bind_with(config: Config, reuse_port: bool) -> io::Result<Self> {
        let invalid = |e: ConfigError| io::Error::new(io::ErrorKind::InvalidInput, e);
        config.validate().map_err(invalid)?;
        let (layer, store) = config.layer_and_store().map_err(invalid)?;
        let stats = stats::Stats::default();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let invalid = |e: String| invalid(ConfigError::new(e));
                let loaded = tls::Loaded::read(cert, key).map_err(invalid)?;
                stats.set_cert_not_after(loaded.not_after());
                Some(tls::Listener::new(loaded).map_err(invalid)?)
            }
            _ => None,
        };
        let shared = Arc::new(Shared {
            policy: RwLock::new(layer.clone()),
            layer,
            tls,
            store,
            stats,
            trust_forwarded: config.trust_forwarded,
            body_timeout: config.body_timeout,
            shutting_down: AtomicBool::new(false),
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
        });
        let upstream = upstream::Upstream::new(&config, shared.clone())?;
        let listener = if reuse_port {
            reuse_port_listener(config.listen)
        } else {
            TcpListener::bind(config.listen).await
        }
        .map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let admin =
            match config.admin_listen {
                Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?),
                None => None,
            };
        Ok(Self {
            config,
            listener,
            admin,
            shared,
            upstream,
        })
    }

    /// The address the proxy accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The layer inside, e.g. to read its [`metrics`](PkceLayer::metrics), as bound: a
    /// reload (SIGHUP, in [`main`]) changes the client policy of the layer requests go
    /// through, which shares these metrics.
    pub fn layer(&self) -> &PkceLayer {
        &self.shared.layer
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish for up to the configured grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let Self {
            config,
            listener,
            admin,
            shared,
            upstream,
        } = self;
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let admin_task = admin.map(|listener| {
            let shared = shared.clone();
            let mut stopped = admin_stopped.clone();
            tokio::spawn(admin::serve(listener, shared, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        });
        let result = server::serve(&config, listener, shared.clone(), upstream, shutdown).await;
        let _ = stop_admin.send(true);
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        result
    }
}

impl Proxy {
    /// Starts `workers - 1` more worker threads besides the caller's, each with its own
    /// current-thread runtime, its own listening socket on the proxy's address (the kernel
    /// spreads connections over them) and its own upstream pool, serving until `stopped` says
    /// [`Phase::Stopping`]; a worker's runtime ends at [`Phase::Released`]. A request is
    /// handled start to end on the thread that accepted its connection, with no hand-off
    /// between threads. The proxy's listener must have been bound with `SO_REUSEPORT`.
    /// Returns when every worker listens; each receiver says how one ended.
    async fn start_workers(
        &self,
        workers: usize,
        stopped: &tokio::sync::watch::Receiver<Phase>,
    ) -> io::Result<Vec<tokio::sync::oneshot::Receiver<io::Result<()>>>> {
        let addr = self.local_addr();
        let mut finished = Vec::new();
        for i in 1..workers {
            let config = self.config.clone();
            let shared = self.shared.clone();
            let upstream = self.upstream.with_own_pool();
            let mut stopped = stopped.clone();
            let (listening, started) = tokio::sync::oneshot::channel::<io::Result<()>>();
            let (done, ended) = tokio::sync::oneshot::channel::<io::Result<()>>();
            let worker = move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = listening.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match reuse_port_listener(addr) {
                        Ok(listener) => listener,
                        Err(e) => {
                            let _ = listening.send(Err(e));
                            return;
                        }
                    };
                    let _ = listening.send(Ok(()));
                    let mut released = stopped.clone();
                    let stop = async move {
                        let _ = stopped.wait_for(|s| *s >= Phase::Stopping).await;
                    };
                    let served = server::serve(&config, listener, shared, upstream, stop).await;
                    let _ = done.send(served);
                    // This runtime may run tasks others still need while they drain (the
                    // Redis connection's, if it reconnected here): it ends with the last.
                    let _ = released.wait_for(|s| *s == Phase::Released).await;
                });
            };
            std::thread::Builder::new()
                .name(format!("pkce-proxy-{i}"))
                .spawn(worker)?;
            match started.await {
                Ok(Ok(())) => finished.push(ended),
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("worker {i} cannot listen on {addr}: {e}"),
                    ))
                }
                Err(_) => return Err(io::Error::other(format!("worker {i} did not start"))),
            }
        }
        Ok(finished)
    }
}

/// Where the workers are in a shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Stop accepting and drain.
    Stopping,
    /// Every worker has drained: their runtimes may end.
    Released,
}

/// A listening socket on `addr` that other sockets can share (`SO_REUSEPORT`): each worker
/// thread has one, and the kernel spreads incoming connections over them.
fn reuse_port_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// How many worker threads `workers` (the setting) means: `0` is one per CPU. Where there is
/// no `SO_REUSEPORT`, one.
fn worker_count(workers: usize) -> usize {
    if cfg!(unix) {
        match workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    } else {
        1
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (within a
/// runtime), not when the future is first polled, so a signal that arrives while the proxy
/// binds is not lost to the default action.
fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt()).ok();
        let terminate = signal(SignalKind::terminate()).ok();
        async move {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {},
                () = wait(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()));
    // A second initialization (a test calling `main` twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The `pkce-proxy` program: reads the configuration from `args` (program name first), the
/// environment and `--config`, and serves until SIGINT or SIGTERM. SIGHUP reads them again,
/// and the TLS certificate, and applies what can change without a restart (see `reload.rs`).
///
/// Exit status: 0 after a clean shutdown (or `--help`, `--version`, `--print-config`), 2 for a
/// bad configuration (one line on standard error), 1 when serving fails (an address in use).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (config, print) = match config::load(args.clone()) {
        Ok(loaded) => loaded,
        Err(e) if e.exit_code() == 0 => {
            let _ = write!(io::stdout(), "{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pkce-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if print {
        let _ = write!(io::stdout(), "{}", config.render());
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    // `rediss://` goes through the redis crate's rustls client, which takes the process's
    // default provider: ring, as for the upstream.
    #[cfg(feature = "redis")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One current-thread runtime per worker (this thread is the first): see `start_workers`.
    let workers = worker_count(config.workers);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pkce-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async move {
        let shutdown = shutdown_signal();
        // Installed before binding: SIGHUP's default action would end the process.
        let hangup = reload::hangup_signal();
        let proxy = Proxy::bind_with(config, workers > 1).await?;
        let (stop, stopped) = tokio::sync::watch::channel(Phase::Serving);
        let others = match proxy.start_workers(workers, &stopped).await {
            Ok(others) => others,
            Err(e) => {
                // The ones that did start stop.
                let _ = stop.send(Phase::Released);
                return Err(e);
            }
        };
        // Printed, not logged: scripts wait for this line whatever the log settings. A closed
        // standard output is no reason to stop.
        let mut out = io::stdout();
        let _ = writeln!(out, "listening on {}", proxy.local_addr());
        if let Some(admin) = proxy.admin_addr() {
            let _ = writeln!(out, "admin listening on {admin}");
        }
        tracing::info!(
            target: "pkce_proxy",
            listen = %proxy.local_addr(),
            upstream = %proxy.config.upstream,
            mode = ?proxy.config.mode,
            tls = proxy.shared.tls.is_some(),
            store = %proxy.config.store,
            workers,
            "pkce-proxy started"
        );
        tokio::spawn(
            reload::Reloader::new(proxy.shared.clone(), proxy.config.clone(), args).run(hangup),
        );
        // Connect to the store now rather than on the first login, and say if it is down.
        let store = proxy.shared.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.check().await {
                tracing::error!(target: "pkce_proxy", error = %e, "the store does not answer; OAuth requests get 503 until it does");
            }
        });
        let stopping = stop.clone();
        let served = proxy
            .serve(async move {
                shutdown.await;
                let _ = stopping.send(Phase::Stopping);
            })
            .await;
        // The other workers drain within the same grace period.
        for ended in others {
            if let Ok(Err(e)) = ended.await {
                tracing::error!(target: "pkce_proxy", error = %e, "a worker failed");
            }
        }
        let _ = stop.send(Phase::Released);
        served
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pkce-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The proxy's response type; `Infallible` because every failure is a response.
pub(crate) type ProxyResult<B> = Result<Response<B>, Infallible>;

impl Shared {
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}
