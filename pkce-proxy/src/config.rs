//! `pkce-proxy`'s settings: command line, environment and TOML file, merged.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use http::Uri;
use serde::Deserialize;

use tower_pkce::store::DEFAULT_CAPACITY;
use tower_pkce::{Mode, PkceLayer};
use tower_pkce::{DEFAULT_CODE_TTL, DEFAULT_MAX_BODY_BYTES, DEFAULT_PENDING_TTL};

/// Default address the proxy listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where pending flows and code bindings are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// In this process ([`MemoryStore`](tower_pkce::MemoryStore)); flows do not survive a restart
    /// and are not shared between replicas.
    Memory,
    /// A Redis or Valkey server shared by every replica (`RedisStore`, cargo feature
    /// `redis`).
    Redis(RedisUrl),
}

/// A `redis://`, `rediss://` or `redis+unix://` URL. It may carry a password (in its user
/// information, or in a `pass`/`password` query parameter), so its `Debug` and `Display` show
/// `***` in its place, and a URL that does not parse is shown as its scheme only.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks the scheme, and refuses `#insecure` (a TLS connection that does not verify the
    /// server); the rest is checked when the store is built.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        const SCHEMES: [&str; 4] = ["redis://", "rediss://", "redis+unix://", "unix://"];
        let candidate = Self(url.to_owned());
        if !SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Err(ConfigError::new(format!(
                "invalid --store {candidate}: expected memory or a redis://, rediss:// or \
                 redis+unix:// URL"
            )));
        }
        if url::Url::parse(url).is_ok_and(|u| u.fragment().is_some()) {
            return Err(ConfigError::new(format!(
                "invalid --store {candidate}: a #fragment (such as #insecure, which turns off \
                 certificate checks) is not accepted"
            )));
        }
        Ok(candidate)
    }

    /// The URL itself, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Ok(mut url) = url::Url::parse(&self.0) else {
            // Never the raw text: a password with a `/` or `#` in it is what breaks parsing.
            let scheme = self.0.split_once("://").map_or("", |(s, _)| s);
            let scheme = if scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
            {
                scheme
            } else {
                ""
            };
            return write!(f, "{scheme}://<URL that does not parse>");
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        // A password with unencoded `@`, `/` or `?` spills into the path or the query: show
        // a path only when it is a database number (or a socket path for `redis+unix`), and
        // query values only for the settings known to be harmless.
        let unix = url.scheme().ends_with("unix");
        if !unix
            && !url
                .path()
                .trim_start_matches('/')
                .chars()
                .all(|c| c.is_ascii_digit())
        {
            url.set_path("/***");
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let harmless = ["db", "protocol"].iter().any(|s| k.eq_ignore_ascii_case(s));
                    let v = if harmless {
                        v.into_owned()
                    } else {
                        "***".into()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        if url.fragment().is_some() {
            url.set_fragment(Some("***"));
        }
        f.write_str(url.as_str())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// How log lines are written (to standard error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One client's settings from the `[clients.ID]` tables of the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Allowed to skip PKCE (a confidential client); see
    /// [`PkceLayer::exempt_client`].
    #[serde(default)]
    pub exempt: bool,
    /// Redirect URIs registered for the client; see [`PkceLayer::client_redirect_uris`].
    #[serde(default)]
    pub redirect_uris: Vec<String>,
}

/// The proxy's complete, validated configuration.
///
/// Build one with [`Config::new`] and its setters, or from a command line, the environment and
/// a file with [`Config::from_args`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The legacy authorization server: `http://` or `https://`, scheme and authority only.
    pub upstream: Uri,
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`); off when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// The upstream's authorization endpoint path.
    pub authorize_path: String,
    /// The upstream's token endpoint path.
    pub token_path: String,
    /// The upstream's pushed authorization request endpoint (RFC 9126), if it has one.
    pub par_path: Option<String>,
    /// Per-client settings; `--exempt-client` adds exempt entries.
    pub clients: BTreeMap<String, ClientConfig>,
    /// Accept `plain` challenges.
    pub allow_plain: bool,
    /// Enforce, or only report.
    pub mode: Mode,
    /// Lifetime of a pending authorization.
    pub pending_ttl: Duration,
    /// Lifetime of a code binding.
    pub code_ttl: Duration,
    /// Capacity of the in-memory store (pending flows plus codes).
    pub max_pending: usize,
    /// Largest request body the layer reads on the OAuth endpoints.
    pub max_body: usize,
    /// Where flows are kept.
    pub store: StoreSpec,
    /// Prefix of every key in a Redis store.
    pub store_prefix: String,
    /// Longest a Redis store operation may take (connecting included); OAuth requests get 503
    /// after it.
    pub store_timeout: Duration,
    /// Keep `X-Forwarded-*` and `Forwarded` headers sent by clients (only behind a trusted
    /// proxy); otherwise they are dropped and replaced.
    pub trust_forwarded: bool,
    /// Query parameters the upstream's token endpoint needs, forwarded re-encoded; see
    /// [`PkceLayer::token_query_param`].
    pub token_query_params: Vec<String>,
    /// Request headers forwarded to the token endpoint besides the ones it always gets; see
    /// [`PkceLayer::token_forward_header`].
    pub token_forward_headers: Vec<String>,
    /// Paths under an endpoint's path that the upstream routes elsewhere; see
    /// [`PkceLayer::other_route`].
    pub other_routes: Vec<String>,
    /// A PEM file of CA certificates to trust for an `https` upstream, in addition to the
    /// system's and the webpki roots.
    pub upstream_ca: Option<PathBuf>,
    /// Longest wait for a client's request headers; the connection is closed after it.
    pub header_timeout: Duration,
    /// Longest pause while a request body arrives; the request gets 408 after it.
    pub body_timeout: Duration,
    /// Longest wait for a connection to the upstream; 502 after it.
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers; 504 after it.
    pub upstream_timeout: Duration,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a client connection may stay open without a request in flight.
    pub idle_timeout: Duration,
    /// Most client connections open at once; beyond it the proxy stops accepting until one
    /// closes.
    pub max_connections: usize,
    /// Threads serving client connections, each with its own runtime, listening socket
    /// (`SO_REUSEPORT`) and upstream connection pool, so a request never changes threads; `0`
    /// is one per CPU. Used by [`main`](super::main); [`Proxy::serve`](super::Proxy::serve)
    /// serves on the runtime it is called from.
    pub workers: usize,
    /// How log lines are written.
    pub log_format: LogFormat,
}

impl Config {
    /// The defaults, in front of `upstream`.
    pub fn new(upstream: Uri) -> Self {
        Self {
            upstream,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            authorize_path: "/authorize".into(),
            token_path: "/token".into(),
            par_path: None,
            clients: BTreeMap::new(),
            allow_plain: false,
            mode: Mode::Enforce,
            pending_ttl: DEFAULT_PENDING_TTL,
            code_ttl: DEFAULT_CODE_TTL,
            max_pending: DEFAULT_CAPACITY,
            max_body: DEFAULT_MAX_BODY_BYTES,
            store: StoreSpec::Memory,
            store_prefix: "pkce:".into(),
            store_timeout: Duration::from_secs(1),
            trust_forwarded: false,
            token_query_params: Vec::new(),
            token_forward_headers: Vec::new(),
            other_routes: Vec::new(),
            upstream_ca: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            workers: 0,
            log_format: LogFormat::Text,
        }
    }

    /// Reads the configuration from a command line (`args`, program name first), the
    /// `PKCE_PROXY_*` environment variables and the file named by `--config`, in that order of
    /// precedence, over the defaults.
    ///
    /// `--help` and `--version` come back as a [`ConfigError`] whose
    /// [`exit_code`](ConfigError::exit_code) is 0.
    pub fn from_args<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        load(args).map(|(config, _)| config)
    }

    /// The [`PkceLayer`] these settings describe, with the store they name. Fails only for a
    /// Redis URL the `redis` crate cannot read, or a Redis store in a build without the
    /// `redis` feature.
    pub fn layer(&self) -> Result<PkceLayer, ConfigError> {
        self.layer_and_store().map(|(layer, _)| layer)
    }

    /// The layer, and a handle on its store for the readiness check.
    pub(crate) fn layer_and_store(&self) -> Result<(PkceLayer, super::Store), ConfigError> {
        let store = match &self.store {
            StoreSpec::Memory => {
                super::Store::Memory(tower_pkce::MemoryStore::with_capacity(self.max_pending))
            }
            #[cfg(feature = "redis")]
            StoreSpec::Redis(url) => super::Store::Redis(
                tower_pkce::RedisStore::open(url.expose())
                    .map_err(|e| ConfigError::new(format!("invalid --store {url}: {e}")))?
                    .key_prefix(&self.store_prefix)
                    .timeout(self.store_timeout),
            ),
            #[cfg(not(feature = "redis"))]
            StoreSpec::Redis(_) => {
                return Err(ConfigError::new(
                    "--store redis://… needs pkce-proxy built with the redis feature",
                ))
            }
        };
        let invalid =
            |e: tower_pkce::ConfigError| ConfigError::new(format!("invalid setting: {e}"));
        let mut layer = PkceLayer::new()
            .authorize_path(&self.authorize_path)
            .and_then(|l| l.token_path(&self.token_path))
            .and_then(|l| l.pending_ttl(self.pending_ttl))
            .and_then(|l| l.code_ttl(self.code_ttl))
            .and_then(|l| l.max_body_bytes(self.max_body))
            .map_err(invalid)?
            .allow_plain(self.allow_plain)
            .mode(self.mode);
        if let Some(par) = &self.par_path {
            layer = layer.par_path(par).map_err(invalid)?;
        }
        for name in &self.token_query_params {
            layer = layer
                .token_query_param(name)
                .map_err(|e| ConfigError::new(format!("invalid --token-query-param: {e}")))?;
        }
        for name in &self.token_forward_headers {
            let header = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::new(format!(
                    "invalid --token-forward-header {name:?}: not a header name"
                ))
            })?;
            layer = layer.token_forward_header(header);
        }
        for route in &self.other_routes {
            layer = layer.other_route(route);
        }
        layer = match &store {
            super::Store::Memory(memory) => layer.with_store(memory.clone()),
            #[cfg(feature = "redis")]
            super::Store::Redis(redis) => layer.with_store(redis.clone()),
        };
        for (id, client) in &self.clients {
            if client.exempt {
                layer = layer.exempt_client(id.clone());
            }
            if !client.redirect_uris.is_empty() {
                layer = layer.client_redirect_uris(id.clone(), client.redirect_uris.clone());
            }
        }
        Ok((layer, store))
    }

    /// The effective settings as `key = value` lines, one per setting, in the configuration
    /// file's syntax; what `--print-config` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let list = |items: &[String]| {
            let items: Vec<String> = items.iter().map(|i| quoted(i)).collect();
            format!("[{}]", items.join(", "))
        };
        let lines: [(&str, String); 29] = [
            ("upstream", quoted(&self.upstream.to_string())),
            ("listen", quoted(&self.listen.to_string())),
            (
                "admin_listen",
                quoted(&self.admin_listen.map_or(String::new(), |a| a.to_string())),
            ),
            ("authorize_path", quoted(&self.authorize_path)),
            ("token_path", quoted(&self.token_path)),
            (
                "par_path",
                quoted(self.par_path.as_deref().unwrap_or_default()),
            ),
            ("allow_plain", self.allow_plain.to_string()),
            ("mode", quoted(self.mode.as_str())),
            ("pending_ttl", quoted(&d(self.pending_ttl))),
            ("code_ttl", quoted(&d(self.code_ttl))),
            ("max_pending", self.max_pending.to_string()),
            ("max_body", self.max_body.to_string()),
            ("store", quoted(&self.store.to_string())),
            ("store_prefix", quoted(&self.store_prefix)),
            ("store_timeout", quoted(&d(self.store_timeout))),
            ("trust_forwarded", self.trust_forwarded.to_string()),
            ("token_query_params", list(&self.token_query_params)),
            ("token_forward_headers", list(&self.token_forward_headers)),
            ("other_routes", list(&self.other_routes)),
            (
                "upstream_ca",
                quoted(
                    &self
                        .upstream_ca
                        .as_ref()
                        .map_or(String::new(), |p| p.display().to_string()),
                ),
            ),
            ("header_timeout", quoted(&d(self.header_timeout))),
            ("body_timeout", quoted(&d(self.body_timeout))),
            ("connect_timeout", quoted(&d(self.connect_timeout))),
            ("upstream_timeout", quoted(&d(self.upstream_timeout))),
            ("shutdown_grace", quoted(&d(self.shutdown_grace))),
            ("idle_timeout", quoted(&d(self.idle_timeout))),
            ("max_connections", self.max_connections.to_string()),
            ("workers", self.workers.to_string()),
            (
                "log_format",
                quoted(match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }),
            ),
        ];
        for (key, value) in lines {
            let _ = writeln!(out, "{key} = {value}");
        }
        for (id, client) in &self.clients {
            let uris: Vec<String> = client.redirect_uris.iter().map(|u| quoted(u)).collect();
            let _ = writeln!(
                out,
                "\n[clients.{}]\nexempt = {}\nredirect_uris = [{}]",
                quoted(id),
                client.exempt,
                uris.join(", ")
            );
        }
        out
    }
}

fn quoted(s: &str) -> String {
    // A TOML basic string: JSON's escaping is a subset TOML accepts.
    serde_json::to_string(s).unwrap_or_default()
}

impl fmt::Display for StoreSpec {
    /// `memory`, or the Redis URL with its password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Redis(url) => url.fmt(f),
        }
    }
}

/// A configuration that cannot be used, or a request for help or the version.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConfigError {
    message: String,
    exit_code: i32,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code: 2,
        }
    }

    fn from_clap(error: clap::Error) -> Self {
        use clap::error::ErrorKind;
        match error.kind() {
            // What the user asked for, printed in full.
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Self {
                message: error.render().to_string(),
                exit_code: 0,
            },
            // One line: clap's first, without its usage and tips.
            _ => {
                let rendered = error.render().to_string();
                let line = rendered.lines().next().unwrap_or("invalid arguments");
                Self::new(line.trim_start_matches("error: ").to_owned())
            }
        }
    }

    /// The process exit status: 2 for a bad configuration, 0 for `--help` and `--version`.
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The command line. Every setting is optional here so that a missing flag (and missing
/// variable) falls through to the file, then to the default.
#[derive(Debug, Parser)]
#[command(
    name = "pkce-proxy",
    version,
    about = "A reverse proxy that adds PKCE (RFC 7636) to an OAuth 2.0 authorization server",
    long_about = None
)]
struct Args {
    /// TOML file with the same settings (snake_case keys) and `[clients.ID]` tables.
    #[arg(long, env = "PKCE_PROXY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The legacy authorization server, e.g. `http://127.0.0.1:9000` (required).
    #[arg(long, env = "PKCE_PROXY_UPSTREAM", value_name = "URL")]
    upstream: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "PKCE_PROXY_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Address for /healthz, /readyz and /metrics [default: off].
    #[arg(long, env = "PKCE_PROXY_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<String>,
    /// The upstream's authorization endpoint [default: /authorize].
    #[arg(long, env = "PKCE_PROXY_AUTHORIZE_PATH", value_name = "PATH")]
    authorize_path: Option<String>,
    /// The upstream's token endpoint [default: /token].
    #[arg(long, env = "PKCE_PROXY_TOKEN_PATH", value_name = "PATH")]
    token_path: Option<String>,
    /// The upstream's pushed authorization request endpoint (RFC 9126), if it has one
    /// [default: none].
    #[arg(long, env = "PKCE_PROXY_PAR_PATH", value_name = "PATH")]
    par_path: Option<String>,
    /// A confidential client allowed to skip PKCE (repeatable; comma-separated in the
    /// environment).
    #[arg(
        long = "exempt-client",
        env = "PKCE_PROXY_EXEMPT_CLIENT",
        value_name = "ID",
        value_delimiter = ','
    )]
    exempt_clients: Vec<String>,
    /// A query parameter the upstream's token endpoint needs, e.g. ADFS's `api-version`
    /// (repeatable; comma-separated in the environment). Every other query parameter at the
    /// token endpoint is refused; OAuth parameter names cannot be allowed.
    #[arg(
        long = "token-query-param",
        env = "PKCE_PROXY_TOKEN_QUERY_PARAM",
        value_name = "NAME",
        value_delimiter = ','
    )]
    token_query_params: Vec<String>,
    /// A request header forwarded to the token endpoint besides Host, Authorization, Accept,
    /// Accept-Encoding, User-Agent, Origin and the X-Forwarded-* the proxy sets, e.g. `DPoP`
    /// (repeatable; comma-separated in the environment).
    #[arg(
        long = "token-forward-header",
        env = "PKCE_PROXY_TOKEN_FORWARD_HEADER",
        value_name = "NAME",
        value_delimiter = ','
    )]
    token_forward_headers: Vec<String>,
    /// A path under an endpoint's path that the upstream routes elsewhere, e.g. Doorkeeper's
    /// `/oauth/token/info`: passed through, where other such paths are refused (repeatable;
    /// comma-separated in the environment).
    #[arg(
        long = "other-route",
        env = "PKCE_PROXY_OTHER_ROUTE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    other_routes: Vec<String>,
    /// Accept `plain` challenges [default: false].
    #[arg(long, env = "PKCE_PROXY_ALLOW_PLAIN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    allow_plain: Option<bool>,
    /// `enforce` refuses; `report` logs and counts what it would refuse, and forwards it
    /// [default: enforce].
    #[arg(long, env = "PKCE_PROXY_MODE", value_name = "MODE")]
    mode: Option<String>,
    /// Lifetime of a pending authorization, e.g. `10m` [default: 10m].
    #[arg(long, env = "PKCE_PROXY_PENDING_TTL", value_name = "DURATION")]
    pending_ttl: Option<String>,
    /// Lifetime of a code binding, at least the upstream's code lifetime [default: 10m].
    #[arg(long, env = "PKCE_PROXY_CODE_TTL", value_name = "DURATION")]
    code_ttl: Option<String>,
    /// Most pending flows and codes kept at once; when full, new flows get 503
    /// [default: 100000].
    #[arg(long, env = "PKCE_PROXY_MAX_PENDING", value_name = "N")]
    max_pending: Option<usize>,
    /// Largest OAuth request body read, in bytes or with a unit (`64KiB`) [default: 64KiB].
    #[arg(long, env = "PKCE_PROXY_MAX_BODY", value_name = "SIZE")]
    max_body: Option<String>,
    /// Where flows are kept: `memory`, or a Redis/Valkey URL shared by every replica
    /// (`redis://[:password@]host:port/db`, `rediss://…` for TLS) [default: memory].
    #[arg(
        long,
        env = "PKCE_PROXY_STORE",
        value_name = "STORE",
        hide_env_values = true
    )]
    store: Option<String>,
    /// Prefix of every Redis key [default: pkce:].
    #[arg(long, env = "PKCE_PROXY_STORE_PREFIX", value_name = "PREFIX")]
    store_prefix: Option<String>,
    /// Longest a Redis operation may take before OAuth requests get 503 [default: 1s].
    #[arg(long, env = "PKCE_PROXY_STORE_TIMEOUT", value_name = "DURATION")]
    store_timeout: Option<String>,
    /// Keep clients' `X-Forwarded-*` and `Forwarded` headers (only behind a trusted proxy)
    /// [default: false].
    #[arg(long, env = "PKCE_PROXY_TRUST_FORWARDED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    trust_forwarded: Option<bool>,
    /// PEM file of extra CA certificates for an https upstream.
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_CA", value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// Longest wait for request headers [default: 10s].
    #[arg(long, env = "PKCE_PROXY_HEADER_TIMEOUT", value_name = "DURATION")]
    header_timeout: Option<String>,
    /// Longest pause in a request body before 408 [default: 10s].
    #[arg(long, env = "PKCE_PROXY_BODY_TIMEOUT", value_name = "DURATION")]
    body_timeout: Option<String>,
    /// Longest wait to connect to the upstream before 502 [default: 5s].
    #[arg(long, env = "PKCE_PROXY_CONNECT_TIMEOUT", value_name = "DURATION")]
    connect_timeout: Option<String>,
    /// Longest wait for the upstream's response before 504 [default: 30s].
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    upstream_timeout: Option<String>,
    /// How long in-flight requests may finish after SIGINT or SIGTERM [default: 30s].
    #[arg(long, env = "PKCE_PROXY_SHUTDOWN_GRACE", value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// Longest a client connection may stay open without a request [default: 60s].
    #[arg(long, env = "PKCE_PROXY_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// Most client connections open at once [default: 10000].
    #[arg(long, env = "PKCE_PROXY_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Threads serving client connections, each with its own listening socket; 0 is one per
    /// CPU [default: 0].
    #[arg(long, env = "PKCE_PROXY_WORKERS", value_name = "N")]
    workers: Option<usize>,
    /// `text` or `json` [default: text]. `RUST_LOG` sets the filter (default `info`).
    #[arg(long, env = "PKCE_PROXY_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

/// The configuration file: the same settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    upstream: Option<String>,
    listen: Option<String>,
    admin_listen: Option<String>,
    authorize_path: Option<String>,
    token_path: Option<String>,
    par_path: Option<String>,
    #[serde(default)]
    exempt_clients: Vec<String>,
    #[serde(default)]
    token_query_params: Vec<String>,
    #[serde(default)]
    token_forward_headers: Vec<String>,
    #[serde(default)]
    other_routes: Vec<String>,
    allow_plain: Option<bool>,
    mode: Option<String>,
    pending_ttl: Option<String>,
    code_ttl: Option<String>,
    max_pending: Option<usize>,
    max_body: Option<SizeValue>,
    store: Option<String>,
    store_prefix: Option<String>,
    store_timeout: Option<String>,
    trust_forwarded: Option<bool>,
    upstream_ca: Option<PathBuf>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    shutdown_grace: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    workers: Option<usize>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    clients: BTreeMap<String, ClientConfig>,
}

/// `max_body` in the file: a number of bytes or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(usize),
    Text(String),
}

impl FileConfig {
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text)
            .map_err(|e| ConfigError::new(format!("config file {}: {e}", path.display())))
    }

    fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| {
            // toml's messages span several lines with a source excerpt; keep the first.
            let message = e.message().lines().collect::<Vec<_>>().join("; ");
            match e.span() {
                Some(span) => {
                    let line = text
                        .get(..span.start)
                        .map_or(0, |t| t.lines().count().max(1));
                    format!("line {line}: {message}")
                }
                None => message,
            }
        })
    }
}

/// Flag (or its variable) over file over default.
fn merge(args: Args, file: FileConfig) -> Result<Config, ConfigError> {
    let upstream = args
        .upstream
        .or(file.upstream)
        .ok_or_else(|| ConfigError::new("--upstream URL is required"))?;
    let mut config = Config::new(parse_upstream(&upstream)?);
    if let Some(listen) = args.listen.or(file.listen) {
        config.listen = parse_addr("listen", &listen)?;
    }
    if let Some(admin) = args.admin_listen.or(file.admin_listen) {
        config.admin_listen = if admin.is_empty() {
            None
        } else {
            Some(parse_addr("admin-listen", &admin)?)
        };
    }
    if let Some(path) = args.authorize_path.or(file.authorize_path) {
        config.authorize_path = parse_path("authorize-path", path)?;
    }
    if let Some(path) = args.token_path.or(file.token_path) {
        config.token_path = parse_path("token-path", path)?;
    }
    if let Some(path) = args.par_path.or(file.par_path).filter(|p| !p.is_empty()) {
        config.par_path = Some(parse_path("par-path", path)?);
    }
    config.clients = file.clients;
    let exempt = if args.exempt_clients.is_empty() {
        file.exempt_clients
    } else {
        args.exempt_clients
    };
    for id in exempt {
        let id = id.trim().to_owned();
        if id.is_empty() {
            return Err(ConfigError::new("invalid --exempt-client: empty client id"));
        }
        config.clients.entry(id).or_default().exempt = true;
    }
    config.token_query_params = if args.token_query_params.is_empty() {
        file.token_query_params
    } else {
        args.token_query_params
    };
    config.token_forward_headers = if args.token_forward_headers.is_empty() {
        file.token_forward_headers
    } else {
        args.token_forward_headers
    };
    config.other_routes = if args.other_routes.is_empty() {
        file.other_routes
    } else {
        args.other_routes
    };
    for route in &mut config.other_routes {
        *route = parse_path("other-route", route.trim().to_owned())?;
    }
    // Checked here, so a bad name is a configuration error before anything starts.
    for name in &mut config.token_query_params {
        *name = name.trim().to_owned();
        if PkceLayer::new().token_query_param(name.as_str()).is_err() {
            return Err(ConfigError::new(format!(
                "invalid --token-query-param {name:?}: not an RFC 6749 name, or a token \
                 request parameter, which is only read from the body"
            )));
        }
    }
    for name in &mut config.token_forward_headers {
        *name = name.trim().to_owned();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::new(format!(
                "invalid --token-forward-header {name:?}: not a header name"
            )));
        }
    }
    if let Some(allow) = args.allow_plain.or(file.allow_plain) {
        config.allow_plain = allow;
    }
    if let Some(mode) = args.mode.or(file.mode) {
        config.mode = match mode.to_ascii_lowercase().as_str() {
            "enforce" => Mode::Enforce,
            "report" => Mode::Report,
            _ => {
                return Err(ConfigError::new(format!(
                    "invalid --mode {mode:?}: expected enforce or report"
                )))
            }
        };
    }
    let durations: [(&str, Option<String>, Option<String>, &mut Duration); 9] = [
        (
            "idle-timeout",
            args.idle_timeout,
            file.idle_timeout,
            &mut config.idle_timeout,
        ),
        (
            "pending-ttl",
            args.pending_ttl,
            file.pending_ttl,
            &mut config.pending_ttl,
        ),
        (
            "code-ttl",
            args.code_ttl,
            file.code_ttl,
            &mut config.code_ttl,
        ),
        (
            "header-timeout",
            args.header_timeout,
            file.header_timeout,
            &mut config.header_timeout,
        ),
        (
            "body-timeout",
            args.body_timeout,
            file.body_timeout,
            &mut config.body_timeout,
        ),
        (
            "connect-timeout",
            args.connect_timeout,
            file.connect_timeout,
            &mut config.connect_timeout,
        ),
        (
            "upstream-timeout",
            args.upstream_timeout,
            file.upstream_timeout,
            &mut config.upstream_timeout,
        ),
        (
            "shutdown-grace",
            args.shutdown_grace,
            file.shutdown_grace,
            &mut config.shutdown_grace,
        ),
        (
            "store-timeout",
            args.store_timeout,
            file.store_timeout,
            &mut config.store_timeout,
        ),
    ];
    for (name, flag, from_file, slot) in durations {
        if let Some(text) = flag.or(from_file) {
            *slot = parse_duration(name, &text)?;
        }
    }
    if let Some(n) = args.max_connections.or(file.max_connections) {
        if n == 0 {
            return Err(ConfigError::new(
                "invalid --max-connections 0: must be at least 1",
            ));
        }
        config.max_connections = n;
    }
    if let Some(n) = args.workers.or(file.workers) {
        config.workers = n;
    }
    if let Some(n) = args.max_pending.or(file.max_pending) {
        if n == 0 {
            return Err(ConfigError::new(
                "invalid --max-pending 0: must be at least 1",
            ));
        }
        config.max_pending = n;
    }
    let max_body = match (args.max_body, file.max_body) {
        (Some(text), _) | (None, Some(SizeValue::Text(text))) => Some(parse_size(&text)?),
        (None, Some(SizeValue::Bytes(n))) => Some(n),
        (None, None) => None,
    };
    if let Some(n) = max_body {
        if n == 0 {
            return Err(ConfigError::new("invalid --max-body 0: must be at least 1"));
        }
        config.max_body = n;
    }
    if let Some(store) = args.store.or(file.store) {
        config.store = match store.as_str() {
            "memory" => StoreSpec::Memory,
            url => StoreSpec::Redis(RedisUrl::new(url)?),
        };
    }
    if let Some(prefix) = args.store_prefix.or(file.store_prefix) {
        config.store_prefix = prefix;
    }

    if let Some(trust) = args.trust_forwarded.or(file.trust_forwarded) {
        config.trust_forwarded = trust;
    }
    let ca = args.upstream_ca.or(file.upstream_ca);
    if let Some(ca) = ca.filter(|p| !p.as_os_str().is_empty()) {
        if config.upstream.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(ConfigError::new("--upstream-ca needs an https:// upstream"));
        }
        check_pem(&ca)?;
        config.upstream_ca = Some(ca);
    }
    if let Some(format) = args.log_format.or(file.log_format) {
        config.log_format = format;
    }
    if config.connect_timeout >= config.upstream_timeout {
        // A connect that outlasts the upstream timeout turns a request that was never sent
        // into a 504, and a code into a redeemed one.
        return Err(ConfigError::new(
            "--connect-timeout must be shorter than --upstream-timeout",
        ));
    }
    // Build the store once now, so a URL the redis crate refuses is a configuration error.
    let _checked = config.layer()?;
    Ok(config)
}

/// An upstream is `http` or `https`, a host, maybe a port, and nothing else: the proxy
/// forwards every path as it came.
fn parse_upstream(text: &str) -> Result<Uri, ConfigError> {
    // Never echo a URL that may carry a password.
    let shown = if text.contains('@') {
        "[redacted]"
    } else {
        text
    };
    let bad = |why: &str| ConfigError::new(format!("invalid --upstream {shown:?}: {why}"));
    let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(_) => return Err(bad("the scheme must be http or https")),
        None => return Err(bad("expected http://HOST[:PORT] or https://HOST[:PORT]")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "a path or query is not supported; give scheme, host and port only",
        ));
    }
    Ok(uri)
}

/// An `--upstream-ca` file must hold at least one PEM certificate.
fn check_pem(path: &Path) -> Result<(), ConfigError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;
    let bad =
        |why: String| ConfigError::new(format!("invalid --upstream-ca {}: {why}", path.display()));
    let mut count = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        cert.map_err(|e| bad(e.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(())
}

fn parse_addr(name: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        ConfigError::new(format!(
            "invalid --{name} {text:?}: expected IP:PORT, e.g. 127.0.0.1:8080"
        ))
    })
}

fn parse_path(name: &str, path: String) -> Result<String, ConfigError> {
    if path.starts_with('/') && !path.contains(['?', '#']) {
        Ok(path)
    } else {
        Err(ConfigError::new(format!(
            "invalid --{name} {path:?}: expected a path starting with /"
        )))
    }
}

/// The longest duration any setting takes: beyond it, deadlines overflow the clock.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn parse_duration(name: &str, text: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d > MAX_DURATION => Err(ConfigError::new(format!(
            "invalid --{name} {text:?}: must be at most 24h"
        ))),
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ConfigError::new(format!(
            "invalid --{name} {text:?}: must be longer than zero"
        ))),
        Err(e) => Err(ConfigError::new(format!(
            "invalid --{name} {text:?}: {e} (expected e.g. 30s, 10m, 1h)"
        ))),
    }
}

/// A size: bytes, or a number with `KiB`/`MiB` (or `K`/`M`, also binary) suffix.
fn parse_size(text: &str) -> Result<usize, ConfigError> {
    let bad = || {
        ConfigError::new(format!(
            "invalid --max-body {text:?}: expected bytes or a size such as 64KiB or 1MiB"
        ))
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits.parse().map_err(|_| bad())?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// The configuration, and whether the command line asks only to print it.
pub(crate) fn load<I, T>(args: I) -> Result<(Config, bool), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args).map_err(ConfigError::from_clap)?;
    let print = args.print_config;
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    Ok((merge(args, file)?, print))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], file: &str) -> Result<Config, ConfigError> {
        let mut argv = vec!["pkce-proxy"];
        argv.extend_from_slice(args);
        let args = Args::try_parse_from(argv).map_err(ConfigError::from_clap)?;
        let file = FileConfig::parse(file).map_err(ConfigError::new)?;
        merge(args, file)
    }

    #[test]
    fn token_forwarding_settings_are_checked_and_reach_the_layer() {
        let up = ["--upstream", "http://127.0.0.1:9"];
        let with = |extra: &[&str]| parse(&[&up[..], extra].concat(), "");
        let c = with(&[
            "--token-query-param",
            "api-version",
            "--token-forward-header",
            "DPoP",
            "--other-route",
            "/oauth/token/info",
        ])
        .unwrap();
        assert_eq!(c.token_query_params, ["api-version"]);
        assert_eq!(c.token_forward_headers, ["DPoP"]);
        assert_eq!(c.other_routes, ["/oauth/token/info"]);
        let layer = c.layer().unwrap();
        let layer = format!("{layer:?}");
        assert!(
            layer.contains(r#"token_forward_headers: ["dpop"]"#),
            "{layer}"
        );
        assert!(
            layer.contains(r#"other_routes: ["/oauth/token/info"]"#),
            "{layer}"
        );
        // OAuth names (or their lookalikes) are never read from the query; bad names and
        // paths are configuration errors.
        for bad in [
            &["--token-query-param", "code"][..],
            &["--token-query-param", "Client.Id"],
            &["--token-query-param", "a b"],
            &["--token-forward-header", "bad header"],
            &["--other-route", "oauth/token/info"],
        ] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
        let file = "upstream = \"http://127.0.0.1:9\"\ntoken_query_params = [\"api-version\"]\nother_routes = [\"/t/x\"]\n";
        let c = parse(&[], file).unwrap();
        assert_eq!(c.token_query_params, ["api-version"]);
        assert_eq!(c.other_routes, ["/t/x"]);
        let printed = c.render();
        assert!(
            printed.contains("token_query_params = [\"api-version\"]"),
            "{printed}"
        );
        assert_eq!(parse(&[], &printed).unwrap().other_routes, ["/t/x"]);
    }

    #[test]
    fn defaults_are_strict() {
        let c = parse(&["--upstream", "http://127.0.0.1:9000"], "").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.admin_listen, None);
        assert_eq!(c.mode, Mode::Enforce);
        assert!(!c.allow_plain);
        assert!(!c.trust_forwarded);
        assert_eq!(c.pending_ttl, DEFAULT_PENDING_TTL);
        assert_eq!(c.code_ttl, DEFAULT_CODE_TTL);
        assert_eq!(c.max_body, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.max_pending, DEFAULT_CAPACITY);
        assert_eq!(c.store, StoreSpec::Memory);
        assert!(c.clients.is_empty());
    }

    #[test]
    fn flags_are_read() {
        let c = parse(
            &[
                "--upstream",
                "https://legacy.example:8443",
                "--listen",
                "0.0.0.0:9999",
                "--admin-listen",
                "127.0.0.1:9100",
                "--authorize-path",
                "/oauth/authorize",
                "--token-path",
                "/oauth/token",
                "--exempt-client",
                "a",
                "--exempt-client",
                "b",
                "--allow-plain",
                "--mode",
                "report",
                "--pending-ttl",
                "5m",
                "--code-ttl",
                "1m 30s",
                "--max-pending",
                "42",
                "--max-body",
                "1MiB",
                "--store",
                "memory",
                "--trust-forwarded",
                "--log-format",
                "json",
            ],
            "",
        )
        .unwrap();
        assert_eq!(c.upstream.to_string(), "https://legacy.example:8443/");
        assert_eq!(c.listen.to_string(), "0.0.0.0:9999");
        assert_eq!(c.admin_listen.unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(c.authorize_path, "/oauth/authorize");
        assert_eq!(c.token_path, "/oauth/token");
        assert!(c.clients["a"].exempt && c.clients["b"].exempt);
        assert!(c.allow_plain);
        assert_eq!(c.mode, Mode::Report);
        assert_eq!(c.pending_ttl, Duration::from_secs(300));
        assert_eq!(c.code_ttl, Duration::from_secs(90));
        assert_eq!(c.max_pending, 42);
        assert_eq!(c.max_body, 1 << 20);
        assert!(c.trust_forwarded);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn the_file_is_read_and_flags_win() {
        let file = r#"
            upstream = "http://10.0.0.1:9000"
            listen = "127.0.0.1:7000"
            mode = "report"
            pending_ttl = "2m"
            max_body = 1024
            allow_plain = true
            exempt_clients = ["from-file"]

            [clients.backend]
            exempt = true

            [clients.spa]
            redirect_uris = ["https://app.example/cb"]
        "#;
        let c = parse(&[], file).unwrap();
        assert_eq!(c.upstream.to_string(), "http://10.0.0.1:9000/");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.mode, Mode::Report);
        assert_eq!(c.pending_ttl, Duration::from_secs(120));
        assert_eq!(c.max_body, 1024);
        assert!(c.allow_plain);
        assert!(c.clients["from-file"].exempt);
        assert!(c.clients["backend"].exempt);
        assert!(!c.clients["spa"].exempt);
        assert_eq!(c.clients["spa"].redirect_uris, ["https://app.example/cb"]);

        let c = parse(
            &[
                "--upstream",
                "http://10.0.0.2:9000",
                "--mode",
                "enforce",
                "--allow-plain=false",
                "--exempt-client",
                "from-flag",
            ],
            file,
        )
        .unwrap();
        assert_eq!(c.upstream.to_string(), "http://10.0.0.2:9000/");
        assert_eq!(c.mode, Mode::Enforce);
        assert!(!c.allow_plain);
        // The flag's list replaces the file's list; the client tables stay.
        assert!(c.clients["from-flag"].exempt);
        assert!(!c.clients.contains_key("from-file"));
        assert!(c.clients["backend"].exempt);
        // Not given on the command line: from the file.
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(c.pending_ttl, Duration::from_secs(120));
    }

    #[test]
    fn bad_settings_are_one_line_errors() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&[], "", "--upstream URL is required"),
            (
                &["--upstream", "ftp://x"],
                "",
                "scheme must be http or https",
            ),
            (&["--upstream", "127.0.0.1:9000"], "", "expected http://"),
            (&["--upstream", "http://x/oauth"], "", "a path or query"),
            (&["--upstream", "http://u:p@x"], "", "credentials"),
            (
                &["--upstream", "http://x", "--body-timeout", "300000000000y"],
                "",
                "at most 24h",
            ),
            (
                &[
                    "--upstream",
                    "http://x",
                    "--connect-timeout",
                    "1m",
                    "--upstream-timeout",
                    "30s",
                ],
                "",
                "shorter than",
            ),
            (
                &["--upstream", "https://x", "--upstream-ca", "Cargo.toml"],
                "",
                "no PEM certificate",
            ),
            (
                &["--upstream", "https://x", "--upstream-ca", "/nonexistent"],
                "",
                "invalid --upstream-ca",
            ),
            (
                &["--upstream", "http://x", "--listen", "nowhere"],
                "",
                "invalid --listen",
            ),
            (
                &["--upstream", "http://x", "--pending-ttl", "ten"],
                "",
                "invalid --pending-ttl",
            ),
            (
                &["--upstream", "http://x", "--code-ttl", "0s"],
                "",
                "longer than zero",
            ),
            (
                &["--upstream", "http://x", "--mode", "lax"],
                "",
                "enforce or report",
            ),
            (
                &["--upstream", "http://x", "--max-body", "lots"],
                "",
                "invalid --max-body",
            ),
            (
                &["--upstream", "http://x", "--max-pending", "0"],
                "",
                "at least 1",
            ),
            (
                &["--upstream", "http://x", "--store", "mongo"],
                "",
                "invalid --store",
            ),
            (
                &["--upstream", "http://x", "--token-path", "token"],
                "",
                "starting with /",
            ),
            (
                &["--upstream", "http://x", "--upstream-ca", "/nonexistent"],
                "",
                "https:// upstream",
            ),
            (
                &["--upstream", "http://x", "--frobnicate"],
                "",
                "unexpected argument",
            ),
            (
                &["--upstream", "http://x"],
                "pending_tll = \"1m\"",
                "unknown field",
            ),
            (&["--upstream", "http://x"], "mode = ", "line 1"),
            (
                &["--upstream", "http://x"],
                "max_body = \"x\"",
                "invalid --max-body",
            ),
        ];
        for (args, file, expected) in cases {
            let err = parse(args, file).expect_err(&format!("{args:?} {file:?} should fail"));
            let message = err.to_string();
            assert!(!message.contains("u:p@"), "{message}: a password echoed");
            assert!(
                message.contains(expected),
                "{args:?} {file:?}: {message:?} lacks {expected:?}"
            );
            assert!(
                !message.contains('\n'),
                "{args:?}: {message:?} is not one line"
            );
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn help_is_not_an_error() {
        let err = parse(&["--help"], "").unwrap_err();
        assert_eq!(err.exit_code(), 0);
        assert!(err.to_string().contains("--upstream"));
    }

    #[test]
    fn sizes() {
        for (text, n) in [
            ("100", 100),
            ("64KiB", 65536),
            ("64k", 65536),
            ("2 MiB", 2 << 20),
        ] {
            assert_eq!(parse_size(text).unwrap(), n, "{text}");
        }
        for text in ["", "KiB", "1GiB", "-1", "99999999999999999999"] {
            assert!(parse_size(text).is_err(), "{text}");
        }
    }

    #[test]
    fn rendered_config_reads_back() {
        let file = "upstream = \"http://10.0.0.1:9000\"\n[clients.\"odd \\\"id\\\"\"]\nexempt = true\nredirect_uris = [\"https://a/cb\"]\n";
        let c = parse(&[], file).unwrap();
        let again = parse(&[], &c.render()).unwrap();
        assert_eq!(again.render(), c.render());
        assert!(again.clients["odd \"id\""].exempt);
    }

    #[test]
    fn a_redis_store_is_read_and_its_password_never_shown() {
        let c = parse(
            &[
                "--upstream",
                "http://x",
                "--store",
                "redis://pkce:s3cret-pw@cache.internal:6380/2",
                "--store-prefix",
                "login:",
                "--store-timeout",
                "250ms",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            c.store,
            StoreSpec::Redis(
                RedisUrl::new("redis://pkce:s3cret-pw@cache.internal:6380/2").unwrap()
            )
        );
        let StoreSpec::Redis(url) = &c.store else {
            unreachable!()
        };
        assert_eq!(url.expose(), "redis://pkce:s3cret-pw@cache.internal:6380/2");
        assert_eq!(c.store_prefix, "login:");
        assert_eq!(c.store_timeout, Duration::from_millis(250));
        for shown in [format!("{c:?}"), c.render(), c.store.to_string()] {
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert!(c
            .render()
            .contains("store = \"redis://pkce:***@cache.internal:6380/2\""));
        assert!(c.render().contains("store_prefix = \"login:\""));
        assert_eq!(
            RedisUrl::new("rediss://:pw@h/0").unwrap().to_string(),
            "rediss://:***@h/0"
        );
        assert_eq!(
            RedisUrl::new("redis://h:6379/0?x=a@b").unwrap().to_string(),
            "redis://h:6379/0?x=***"
        );
        assert_eq!(
            RedisUrl::new("redis+unix:///run/redis.sock?db=1&pass=S3CRETunix")
                .unwrap()
                .to_string(),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert!(RedisUrl::new("rediss://h:6379/0#insecure").is_err());
        // From the file too; a URL the redis crate cannot read is refused at load time, and
        // the message hides the password.
        let c = parse(&[], "upstream = \"http://x\"\nstore = \"rediss://h:6379\"").unwrap();
        assert!(matches!(c.store, StoreSpec::Redis(_)));
        for bad in [
            "redis://:hunter2@[::1",
            "mongodb://:hunter2@h",
            "redis",
            "redis://:ab#cdhunter2@host:6379/0",
            "redis://:a/b?hunter2@host:6379/0",
            "redis://:a@b/hunter2@host:6379/0",
            "redis+unix:///s?pass=hunter2#x",
        ] {
            let err = parse(&["--upstream", "http://x", "--store", bad], "").unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("invalid --store"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
