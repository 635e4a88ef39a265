//! `pkce-proxy`'s settings: one struct, [`Config`], read in layers — its defaults, then the
//! TOML file, then the environment and the command line (`cli.rs`) — and checked by
//! [`Config::validate`] (`validate.rs`) however it was built.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use tower_pkce::store::DEFAULT_CAPACITY;
use tower_pkce::{Mode, PkceLayer};
use tower_pkce::{DEFAULT_CODE_TTL, DEFAULT_MAX_BODY_BYTES, DEFAULT_PENDING_TTL};

mod cli;
mod store;
#[cfg(test)]
mod tests;
mod validate;
mod values;

pub(crate) use cli::load;
pub use store::{RedisUrl, StoreSpec};

/// Default address the proxy listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How log lines are written (to standard error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One client's settings from the `[clients.ID]` tables of the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Allowed to skip PKCE (a confidential client).
    ///
    /// # Security
    ///
    /// Its codes redeem without a verifier: see [`PkceLayer::exempt_client`].
    #[serde(default)]
    pub exempt: bool,
    /// Redirect URIs registered for the client; see [`PkceLayer::client_redirect_uris`].
    #[serde(default)]
    pub redirect_uris: Vec<String>,
}

/// The proxy's complete configuration. Its serde form is the configuration file's syntax
/// (snake_case keys, a missing key is its default), and what `--print-config` prints; a Redis
/// password is `***` there, in `Debug` and in logs.
///
/// Build one with [`Config::new`] and its fields, by deserializing a file, or from a command
/// line, the environment and a file with [`Config::from_args`]. [`Config::validate`] checks
/// it; [`Proxy::bind`](super::Proxy::bind) and [`Config::layer`] refuse one that fails.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default = "Config::defaults")]
#[non_exhaustive]
pub struct Config {
    /// The legacy authorization server: `http://` or `https://`, scheme and authority only.
    #[serde(with = "values::uri")]
    pub upstream: Uri,
    /// Address the proxy listens on.
    #[serde(with = "values::addr")]
    pub listen: SocketAddr,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`); off when `None`.
    #[serde(with = "values::optional_addr")]
    pub admin_listen: Option<SocketAddr>,
    /// A PEM file with the listener's certificate chain, leaf first: with
    /// [`tls_key`](Self::tls_key), the listener speaks TLS only (HTTP/1.1 and HTTP/2 by
    /// ALPN, TLS 1.2 and 1.3). Read again on SIGHUP.
    #[serde(with = "values::optional")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM file with [`tls_cert`](Self::tls_cert)'s private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(with = "values::optional")]
    pub tls_key: Option<PathBuf>,
    /// The upstream's authorization endpoint path.
    pub authorize_path: String,
    /// The upstream's token endpoint path.
    pub token_path: String,
    /// The upstream's pushed authorization request endpoint (RFC 9126), if it has one.
    #[serde(with = "values::optional")]
    pub par_path: Option<String>,
    /// Accept `plain` challenges.
    ///
    /// # Security
    ///
    /// A plain challenge is the verifier: see [`PkceLayer::allow_plain`].
    pub allow_plain: bool,
    /// Enforce, or only report.
    ///
    /// # Security
    ///
    /// `report` protects nothing: see [`Mode::Report`].
    #[serde(with = "values::mode")]
    pub mode: Mode,
    /// Lifetime of a pending authorization.
    #[serde(with = "values::duration")]
    pub pending_ttl: Duration,
    /// Lifetime of a code binding.
    #[serde(with = "values::duration")]
    pub code_ttl: Duration,
    /// Capacity of the in-memory store (pending flows plus codes).
    pub max_pending: usize,
    /// Largest request body the layer reads on the OAuth endpoints.
    #[serde(with = "values::size")]
    pub max_body: usize,
    /// Where flows are kept.
    pub store: StoreSpec,
    /// Prefix of every key in a Redis store.
    pub store_prefix: String,
    /// Longest a Redis store operation may take (connecting included); OAuth requests get 503
    /// after it.
    #[serde(with = "values::duration")]
    pub store_timeout: Duration,
    /// Keep `X-Forwarded-*` and `Forwarded` headers sent by clients (only behind a trusted
    /// proxy); otherwise they are dropped and replaced.
    ///
    /// # Security
    ///
    /// With it on, any client that reaches pkce-proxy directly chooses the address, scheme
    /// and host the upstream sees: the upstream's redirect URIs, issuer and IP checks then
    /// trust what the client wrote. Turn it on only when every request comes through a proxy
    /// that overwrites these headers.
    pub trust_forwarded: bool,
    /// Query parameters the upstream's token endpoint needs, forwarded re-encoded; see
    /// [`PkceLayer::token_query_param`].
    #[serde(deserialize_with = "values::trimmed")]
    pub token_query_params: Vec<String>,
    /// Request headers forwarded to the token endpoint besides the ones it always gets; see
    /// [`PkceLayer::token_forward_header`].
    #[serde(deserialize_with = "values::trimmed")]
    pub token_forward_headers: Vec<String>,
    /// Paths under an endpoint's path that the upstream routes elsewhere; see
    /// [`PkceLayer::other_route`].
    #[serde(deserialize_with = "values::trimmed")]
    pub other_routes: Vec<String>,
    /// A PEM file of CA certificates to trust for an `https` upstream, in addition to the
    /// system's and the webpki roots.
    #[serde(with = "values::optional")]
    pub upstream_ca: Option<PathBuf>,
    /// Longest wait for a client's request headers; the connection is closed after it.
    #[serde(with = "values::duration")]
    pub header_timeout: Duration,
    /// Longest pause while a request body arrives; the request gets 408 after it.
    #[serde(with = "values::duration")]
    pub body_timeout: Duration,
    /// Longest wait for a connection to the upstream; 502 after it.
    #[serde(with = "values::duration")]
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers; 504 after it.
    #[serde(with = "values::duration")]
    pub upstream_timeout: Duration,
    /// How long in-flight requests may run after a shutdown signal.
    #[serde(with = "values::duration")]
    pub shutdown_grace: Duration,
    /// How long a client connection may stay open without a request in flight.
    #[serde(with = "values::duration")]
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
    /// Per-client settings (`[clients.ID]` tables); `--exempt-client` adds exempt entries.
    pub clients: BTreeMap<String, ClientConfig>,
}

impl Config {
    /// The defaults, in front of `upstream`.
    pub fn new(upstream: Uri) -> Self {
        Self {
            upstream,
            ..Self::defaults()
        }
    }

    /// Every setting's default, the one place they are written. The upstream has none: this
    /// one (`/`) does not pass [`validate`](Self::validate).
    fn defaults() -> Self {
        Self {
            upstream: Uri::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            tls_cert: None,
            tls_key: None,
            authorize_path: "/authorize".into(),
            token_path: "/token".into(),
            par_path: None,
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
            clients: BTreeMap::new(),
        }
    }

    /// Reads the configuration from a command line (`args`, program name first), the
    /// `PKCE_PROXY_*` environment variables and the file named by `--config`, in that order of
    /// precedence, over the defaults, and [validates](Self::validate) it.
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

    /// The effective settings in the configuration file's syntax, one `key = value` line per
    /// setting and a `[clients.ID]` table per client; what `--print-config` prints. Reading
    /// it back gives the same configuration, but for a Redis password, shown as `***`.
    pub fn render(&self) -> String {
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# the configuration cannot be written: {e}\n"))
    }

    /// The [`PkceLayer`] these settings describe, with the store they name, for settings that
    /// pass [`validate`](Self::validate).
    pub fn layer(&self) -> Result<PkceLayer, ConfigError> {
        self.validate()?;
        self.layer_and_store().map(|(layer, _)| layer)
    }

    /// The layer, and a handle on its store for the readiness check; for validated settings.
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
        let mut layer = self.layer_settings()?;
        layer = match &store {
            super::Store::Memory(memory) => layer.with_store(memory.clone()),
            #[cfg(feature = "redis")]
            super::Store::Redis(redis) => layer.with_store(redis.clone()),
        };
        Ok((layer, store))
    }

    /// The layer with every setting but its store: where the layer's own checks (an
    /// endpoint on another's path or on `/`, names it never reads from the query) refuse a
    /// configuration, for [`validate`](Self::validate) too.
    fn layer_settings(&self) -> Result<PkceLayer, ConfigError> {
        let invalid = |flag: &str, e: tower_pkce::ConfigError| {
            ConfigError::new(format!("invalid --{flag}: {e}"))
        };
        let mut layer = PkceLayer::new()
            .authorize_path(&self.authorize_path)
            .map_err(|e| invalid("authorize-path", e))?
            .token_path(&self.token_path)
            .map_err(|e| invalid("token-path", e))?
            .pending_ttl(self.pending_ttl)
            .map_err(|e| invalid("pending-ttl", e))?
            .code_ttl(self.code_ttl)
            .map_err(|e| invalid("code-ttl", e))?
            .max_body_bytes(self.max_body)
            .map_err(|e| invalid("max-body", e))?;
        if let Some(par) = &self.par_path {
            layer = layer.par_path(par).map_err(|e| invalid("par-path", e))?;
        }
        for name in &self.token_query_params {
            layer = layer
                .token_query_param(name)
                .map_err(|e| invalid("token-query-param", e))?;
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
        Ok(self.with_policy(layer))
    }

    /// `layer` with these settings' client policy: `allow_plain`, `mode` and the clients'
    /// exemptions and redirect URIs, the settings a reload changes.
    pub(crate) fn with_policy(&self, layer: PkceLayer) -> PkceLayer {
        let mut layer = layer
            .without_clients()
            .allow_plain(self.allow_plain)
            .mode(self.mode);
        for (id, client) in &self.clients {
            if client.exempt {
                layer = layer.exempt_client(id.clone());
            }
            if !client.redirect_uris.is_empty() {
                layer = layer.client_redirect_uris(id.clone(), client.redirect_uris.clone());
            }
        }
        layer
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
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code: 2,
        }
    }

    pub(crate) fn from_clap(error: clap::Error) -> Self {
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
