use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::metrics::Metrics;
use http::HeaderName;

use crate::oauth::form;
use crate::oauth::path::{self, EndpointPath};
use crate::service::Pkce;
use crate::store::{ChallengeStore, LayerStore, MemoryStore};

/// Whether the layer refuses what breaks the policy, or only reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Refuse (the default).
    #[default]
    Enforce,
    /// Forward what `Enforce` would refuse, and log and count it
    /// ([`Outcome::Reported`](crate::Outcome::Reported)), so an operator can see what
    /// enforcement would break before turning it on over a live server.
    ///
    /// Store failures are forwarded too in this mode. Flows that pass are still correlated
    /// and verified exactly as under `Enforce`.
    ///
    /// # Security
    ///
    /// This mode protects nothing: a stolen code, a missing or wrong verifier, the PKCE
    /// downgrade and a replay all reach the upstream, which redeems them as it did without
    /// the layer. Use it to learn what enforcement would refuse, for a bounded time.
    Report,
}

impl Mode {
    /// The mode's name: `enforce` or `report`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Report => "report",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;

    /// Reads a mode's name, as [`as_str`](Self::as_str) writes it.
    fn from_str(name: &str) -> Result<Self, ConfigError> {
        match name {
            "enforce" => Ok(Self::Enforce),
            "report" => Ok(Self::Report),
            _ => Err(ConfigError::UnknownMode(name.to_owned())),
        }
    }
}

/// Default lifetime of a pending authorization (the user's time to sign in).
pub const DEFAULT_PENDING_TTL: Duration = Duration::from_secs(600);
/// Default lifetime of a code binding; keep it at least the upstream's code lifetime.
pub const DEFAULT_CODE_TTL: Duration = Duration::from_secs(600);
/// Default number of refused token requests after which a code is burned.
pub const DEFAULT_MAX_FAILED_ATTEMPTS: u32 = 5;
/// Default limit on the request bodies the layer reads (authorize POST and token requests).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) authorize_path: EndpointPath,
    pub(crate) token_path: EndpointPath,
    pub(crate) par_path: Option<EndpointPath>,
    pub(crate) exempt: HashSet<Box<str>>,
    pub(crate) allow_plain: bool,
    pub(crate) mode: Mode,
    pub(crate) pending_ttl: Duration,
    pub(crate) code_ttl: Duration,
    pub(crate) max_failed_attempts: u32,
    pub(crate) max_body_bytes: usize,
    pub(crate) redirect_uris: HashMap<Box<str>, Vec<Box<str>>>,
    /// Query parameters forwarded to the token endpoint (none by default).
    pub(crate) token_query_params: Vec<Box<str>>,
    /// Headers forwarded to the token endpoint besides the ones it always gets.
    pub(crate) token_forward_headers: Vec<HeaderName>,
    /// Normalized paths under an endpoint's path that are routes of their own upstream.
    pub(crate) other_routes: Vec<Box<str>>,
}

impl Config {
    pub(crate) fn is_exempt(&self, client_id: &str) -> bool {
        self.exempt.contains(client_id)
    }

    /// The methods advertised in discovery documents.
    pub(crate) fn methods(&self) -> &'static [&'static str] {
        if self.allow_plain {
            &["S256", "plain"]
        } else {
            &["S256"]
        }
    }
}

/// What every clone of a layer, and every service made from it, shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: LayerStore,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) form_post: Arc<FormPostWindow>,
}

/// Until when HTML pages are read for form_post responses: as long as a flow this layer saw
/// asked for `response_mode=form_post` may still be pending. Outside that window ordinary
/// HTML costs nothing more than a header check.
#[derive(Debug)]
pub(crate) struct FormPostWindow {
    epoch: std::time::Instant,
    /// Milliseconds after `epoch`.
    until: std::sync::atomic::AtomicU64,
}

impl FormPostWindow {
    fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            until: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Keeps the window open for at least `ttl` from now.
    pub(crate) fn open(&self, ttl: std::time::Duration) {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let until = self.now().saturating_add(ttl);
        self.until
            .fetch_max(until, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn is_open(&self) -> bool {
        // Never opened (no form_post flow yet): no clock read on the pass-through path.
        let until = self.until.load(std::sync::atomic::Ordering::Relaxed);
        until != 0 && self.now() < until
    }
}

/// A setting [`PkceLayer`] cannot take.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A token query parameter that is, or reads like, an OAuth token request parameter, or
    /// that is not an RFC 6749 name.
    OAuthQueryParameter(String),
    /// A mode name other than `enforce` or `report`.
    UnknownMode(String),
    /// Two endpoints (authorize, token, PAR) on one path, after normalization: requests to
    /// it could only ever reach one of them.
    SharedEndpointPath(String),
    /// An endpoint at the root path, which every request path would go on past.
    RootEndpointPath,
    /// A count, lifetime or size of zero, which would refuse every flow: the setting's name.
    Zero(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OAuthQueryParameter(name) => write!(
                f,
                "{name:?} cannot be a token query parameter: it is not an RFC 6749 name, or it \
                 reads like a token request parameter, which is only read from the body"
            ),
            Self::UnknownMode(name) => {
                write!(f, "unknown mode {name:?}: expected enforce or report")
            }
            Self::SharedEndpointPath(path) => {
                write!(f, "two endpoints on the path {path:?}")
            }
            Self::RootEndpointPath => f.write_str("an endpoint path cannot be the root, /"),
            Self::Zero(setting) => write!(f, "{setting} cannot be zero"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// An endpoint's path as configured, refused if it is the root.
fn endpoint_path(path: &str) -> Result<EndpointPath, ConfigError> {
    let path = EndpointPath::new(path);
    if path.normalized().trim_matches('/').is_empty() {
        return Err(ConfigError::RootEndpointPath);
    }
    Ok(path)
}

fn nonzero(setting: &'static str, zero: bool) -> Result<(), ConfigError> {
    if zero {
        return Err(ConfigError::Zero(setting));
    }
    Ok(())
}

/// A tower [`Layer`] that adds PKCE (RFC 7636) to the authorization server it wraps.
///
/// Built by value from strict defaults: S256 only, PKCE required for every client, enforce
/// mode, 10-minute lifetimes, 5 failed attempts, 64 KiB bodies, and a fresh
/// [`MemoryStore`] of [`DEFAULT_CAPACITY`](crate::store::DEFAULT_CAPACITY) entries.
///
/// **Every clone of a layer, and every service it makes, shares one store**, so the layer
/// can be applied per route (as `axum::Router::layer` does) without splitting authorize and
/// token apart.
///
/// ```
/// use std::time::Duration;
/// use tower_pkce::{Mode, PkceLayer};
///
/// let layer = PkceLayer::new()
///     .authorize_path("/oauth2/authorize")?
///     .token_path("/oauth2/token")?
///     .exempt_client("backend-service")
///     .pending_ttl(Duration::from_secs(300))?
///     .mode(Mode::Enforce);
/// # let _ = layer;
/// # Ok::<(), tower_pkce::ConfigError>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct PkceLayer {
    pub(crate) shared: Arc<Shared>,
}

impl Default for PkceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl PkceLayer {
    /// Strict defaults and a fresh in-memory store.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                config: Config {
                    authorize_path: EndpointPath::new("/authorize"),
                    token_path: EndpointPath::new("/token"),
                    par_path: None,
                    exempt: HashSet::new(),
                    allow_plain: false,
                    mode: Mode::Enforce,
                    pending_ttl: DEFAULT_PENDING_TTL,
                    code_ttl: DEFAULT_CODE_TTL,
                    max_failed_attempts: DEFAULT_MAX_FAILED_ATTEMPTS,
                    max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                    redirect_uris: HashMap::new(),
                    token_query_params: Vec::new(),
                    token_forward_headers: Vec::new(),
                    other_routes: Vec::new(),
                },
                store: LayerStore::Memory(MemoryStore::new()),
                metrics: Arc::new(Metrics::default()),
                form_post: Arc::new(FormPostWindow::new()),
            }),
        }
    }

    fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut Arc::make_mut(&mut self.shared).config);
        self
    }

    /// Refuses a configuration with two endpoints on one path.
    fn distinct_paths(self) -> Result<Self, ConfigError> {
        let c = &self.shared.config;
        let mut paths = [
            Some(&c.authorize_path),
            Some(&c.token_path),
            c.par_path.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(EndpointPath::normalized);
        while let Some(path) = paths.next() {
            if paths.clone().any(|other| other == path) {
                return Err(ConfigError::SharedEndpointPath(path.to_owned()));
            }
        }
        drop(paths);
        Ok(self)
    }

    /// The path of the authorization endpoint (default `/authorize`). Requests match it after
    /// normalization: case, repeated and trailing slashes, percent-encoding, dot segments and
    /// `;` parameters do not matter, as they do not to many routers. A request that matches
    /// is forwarded on the path as written here.
    ///
    /// A path that some server could still route to an endpoint without being its path (one
    /// that goes on past it, `/authorize/x`, or whose non-ASCII characters fold onto it) is
    /// refused with 400 `invalid_request`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::SharedEndpointPath`] for the path of another endpoint;
    /// [`ConfigError::RootEndpointPath`] for `/`.
    pub fn authorize_path(self, path: impl AsRef<str>) -> Result<Self, ConfigError> {
        let path = endpoint_path(path.as_ref())?;
        self.config(|c| c.authorize_path = path).distinct_paths()
    }

    /// The path of the token endpoint (default `/token`), matched like
    /// [`authorize_path`](Self::authorize_path).
    ///
    /// # Security
    ///
    /// A token request is forwarded only as the layer read it: on this path, with no query
    /// string but the parameters named with [`token_query_param`](Self::token_query_param),
    /// a form body encoded afresh from the parameters read, and only the headers an
    /// authorization server needs (`Host`, `Authorization`, `Accept`, `Accept-Encoding`,
    /// `User-Agent`, `Origin`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`)
    /// and those named with [`token_forward_header`](Self::token_forward_header). A token
    /// request the layer cannot read completely is refused.
    ///
    /// # Errors
    ///
    /// As [`authorize_path`](Self::authorize_path).
    pub fn token_path(self, path: impl AsRef<str>) -> Result<Self, ConfigError> {
        let path = endpoint_path(path.as_ref())?;
        self.config(|c| c.token_path = path).distinct_paths()
    }

    /// A query parameter the upstream's token endpoint needs (ADFS's `api-version`, say):
    /// forwarded, re-encoded, where every other query parameter is refused. Names are
    /// matched exactly. Repeatable.
    ///
    /// # Security
    ///
    /// The upstream reads this parameter's value as the client sent it. Name only what the
    /// upstream cannot read as a token request parameter: a server that merges the query
    /// into the body under another spelling would read it as one.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OAuthQueryParameter`] for a name that is, or reads like, a parameter of
    /// a token request (`code`, `Client.Id`): those are never read from the query.
    pub fn token_query_param(self, name: impl Into<String>) -> Result<Self, ConfigError> {
        let name = name.into();
        if form::is_oauth_name(&name) || !form::is_rfc_name(name.as_bytes()) {
            return Err(ConfigError::OAuthQueryParameter(name));
        }
        let name = name.into_boxed_str();
        Ok(self.config(|c| {
            if !c.token_query_params.contains(&name) {
                c.token_query_params.push(name);
            }
        }))
    }

    /// A path under an endpoint's path that the upstream routes elsewhere (Doorkeeper's
    /// `/oauth/token/info`, a token information endpoint): passed through like any other
    /// request, where every other path that goes on past an endpoint's is refused as a
    /// lookalike. Matched only when the request spells it plainly (ASCII case aside): no
    /// escapes, `;` parameters, dot segments, repeated or trailing slashes, which a router
    /// stripping less than the layer could still take for the endpoint. Repeatable.
    ///
    /// # Security
    ///
    /// Only for a server that routes the path to something other than the endpoint: on one
    /// that runs the endpoint for it (PHP's `/token.php/info`, a prefix router), requests to
    /// it reach the endpoint unchecked.
    pub fn other_route(self, path: impl AsRef<str>) -> Self {
        let path = path::normalize(path.as_ref()).into_boxed_str();
        self.config(|c| {
            if !c.other_routes.contains(&path) {
                c.other_routes.push(path);
            }
        })
    }

    /// A request header forwarded to the token endpoint besides the ones it always gets (see
    /// [`token_path`](Self::token_path)), e.g. `DPoP`. Repeatable.
    ///
    /// # Security
    ///
    /// The layer does not read this header. Never name one the upstream takes a token
    /// request parameter, a method or a path from (`X-HTTP-Method-Override`,
    /// `X-Original-URL`, a header carrying `code` or `client_id`): the rebuilt request would
    /// then say what the layer did not check.
    pub fn token_forward_header(self, name: HeaderName) -> Self {
        self.config(|c| {
            if !c.token_forward_headers.contains(&name) {
                c.token_forward_headers.push(name);
            }
        })
    }

    /// The path of the upstream's pushed authorization request endpoint (RFC 9126), matched
    /// like [`authorize_path`](Self::authorize_path); off by default.
    ///
    /// When set, a pushed request is checked like an authorization request (its errors in the
    /// PAR JSON format, 400), its `state` is swapped for a handle in the pushed body, and the
    /// `request_uri` the upstream answers with (201) is remembered, for the pushed request's
    /// lifetime (`expires_in`, at most the pending TTL). An authorization request by
    /// `request_uri` is then let through only for the client that pushed it and without PKCE
    /// parameters that differ from the pushed ones. When unset, `request_uri` is refused for
    /// clients that are not exempt.
    ///
    /// # Errors
    ///
    /// As [`authorize_path`](Self::authorize_path).
    pub fn par_path(self, path: impl AsRef<str>) -> Result<Self, ConfigError> {
        let path = endpoint_path(path.as_ref())?;
        self.config(|c| c.par_path = Some(path)).distinct_paths()
    }

    /// Lets a (confidential) client use the authorization code flow without PKCE. Its flows
    /// without a challenge are recorded as unbound, so a verifier sent for one of its codes is
    /// still refused (the PKCE downgrade attack), and its codes stay single-use and bound to
    /// it. Repeatable.
    ///
    /// # Security
    ///
    /// An exempt client's codes can be redeemed without a verifier, by whoever holds one:
    /// exempt only confidential clients that authenticate at the token endpoint (the
    /// upstream must check their secret), never a public client. An unknown code (expired,
    /// or issued while the layer was not in front) from an exempt client is forwarded to
    /// the upstream, which then decides alone.
    pub fn exempt_client(self, client_id: impl Into<String>) -> Self {
        let id = client_id.into().into_boxed_str();
        self.config(|c| {
            c.exempt.insert(id);
        })
    }

    /// Accepts `plain` challenges (default: no, S256 only). A challenge sent without a method
    /// is plain (RFC 7636 §4.3), so it is refused unless this is on.
    ///
    /// # Security
    ///
    /// A `plain` challenge is the verifier itself: anyone who sees the authorization request
    /// (a log, a referrer, a malicious app on the device) can redeem the code. RFC 9700 §2.1.1
    /// and OAuth 2.1 say to use S256; turn this on only for clients that cannot hash.
    pub fn allow_plain(self, allow: bool) -> Self {
        self.config(|c| c.allow_plain = allow)
    }

    /// Enforce (the default) or only report.
    pub fn mode(self, mode: Mode) -> Self {
        self.config(|c| c.mode = mode)
    }

    /// How long an authorization may wait for its code (default 10 minutes).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for zero.
    pub fn pending_ttl(self, ttl: Duration) -> Result<Self, ConfigError> {
        nonzero("pending_ttl", ttl.is_zero())?;
        Ok(self.config(|c| c.pending_ttl = ttl))
    }

    /// How long a code stays bound, and a redeemed code stays refused (default 10 minutes).
    ///
    /// # Security
    ///
    /// Keep it at least as long as the upstream accepts its codes: once a code's record has
    /// expired, the layer refuses the code as unknown, except from an
    /// [exempt client](Self::exempt_client), whose replay then reaches the upstream.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for zero.
    pub fn code_ttl(self, ttl: Duration) -> Result<Self, ConfigError> {
        nonzero("code_ttl", ttl.is_zero())?;
        Ok(self.config(|c| c.code_ttl = ttl))
    }

    /// Refused token requests after which a bound code is burned (default 5).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for zero.
    pub fn max_failed_attempts(self, attempts: u32) -> Result<Self, ConfigError> {
        nonzero("max_failed_attempts", attempts == 0)?;
        Ok(self.config(|c| c.max_failed_attempts = attempts))
    }

    /// The largest request body the layer reads (default 64 KiB); larger ones get 413.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for zero (every token request has a body).
    pub fn max_body_bytes(self, limit: usize) -> Result<Self, ConfigError> {
        nonzero("max_body_bytes", limit == 0)?;
        Ok(self.config(|c| c.max_body_bytes = limit))
    }

    /// The redirect URIs registered for a client. Authorization errors for that client are
    /// then redirected to its `redirect_uri` (with its exact `state`) when that URI is one of
    /// these; otherwise, and for every other client, the layer answers with its own 400 page,
    /// never redirecting to an unverified URI.
    pub fn client_redirect_uris<I, U>(self, client_id: impl Into<String>, uris: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        let id = client_id.into().into_boxed_str();
        let uris: Vec<Box<str>> = uris
            .into_iter()
            .map(|u| u.into().into_boxed_str())
            .collect();
        self.config(|c| {
            c.redirect_uris.insert(id, uris);
        })
    }

    /// Forgets every [exempt client](Self::exempt_client) and every client's
    /// [redirect URIs](Self::client_redirect_uris), keeping everything else: the store, the
    /// [metrics](Self::metrics) and the other settings. The start of a new client policy for
    /// a layer that keeps serving (a proxy reloading its configuration); clones made before
    /// the call keep the old policy.
    pub fn without_clients(self) -> Self {
        self.config(|c| {
            c.exempt.clear();
            c.redirect_uris.clear();
        })
    }

    /// Uses `store` instead of the default [`MemoryStore`]. Clones of this layer made before
    /// the call keep the old store.
    pub fn with_store(mut self, store: impl ChallengeStore) -> Self {
        Arc::make_mut(&mut self.shared).store = LayerStore::new(store);
        self
    }

    /// Which endpoint this layer takes a request for `path` (the path of the request target,
    /// without its query) to be: what it would check, pass through, or refuse as a lookalike.
    /// A proxy around the layer can use it to label its own metrics and errors.
    pub fn endpoint(&self, path: &str) -> crate::Endpoint {
        crate::service::classify(&self.shared, path)
    }

    /// The decision counters, shared by every clone of this layer.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}

impl<S> Layer<S> for PkceLayer {
    type Service = Pkce<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pkce::new(inner, self.clone())
    }
}

impl fmt::Debug for PkceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.shared.config;
        f.debug_struct("PkceLayer")
            .field("authorize_path", &c.authorize_path)
            .field("token_path", &c.token_path)
            .field("par_path", &c.par_path)
            .field("exempt", &c.exempt)
            .field("allow_plain", &c.allow_plain)
            .field("mode", &c.mode)
            .field("pending_ttl", &c.pending_ttl)
            .field("code_ttl", &c.code_ttl)
            .field("max_failed_attempts", &c.max_failed_attempts)
            .field("max_body_bytes", &c.max_body_bytes)
            .field("token_query_params", &c.token_query_params)
            .field("token_forward_headers", &c.token_forward_headers)
            .field("other_routes", &c.other_routes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_store_and_metrics() {
        let a = PkceLayer::new();
        let b = a.clone().exempt_client("x");
        assert!(a.shared.store.same_as(&b.shared.store));
        assert!(Arc::ptr_eq(&a.shared.metrics, &b.shared.metrics));
        assert!(!a.shared.config.is_exempt("x"));
        assert!(b.shared.config.is_exempt("x"));
    }

    #[test]
    fn without_clients_forgets_the_client_policy_and_keeps_the_rest() {
        let a = PkceLayer::new()
            .token_path("/oauth/token")
            .unwrap()
            .exempt_client("x")
            .client_redirect_uris("y", ["https://y.example/cb"])
            .mode(Mode::Report);
        let b = a.clone().without_clients();
        assert!(a.shared.config.is_exempt("x"));
        assert!(!b.shared.config.is_exempt("x"));
        assert!(b.shared.config.redirect_uris.is_empty());
        assert!(!a.shared.config.redirect_uris.is_empty());
        assert_eq!(b.shared.config.mode, Mode::Report);
        assert_eq!(b.shared.config.token_path.normalized(), "/oauth/token");
        assert!(a.shared.store.same_as(&b.shared.store));
        assert!(Arc::ptr_eq(&a.shared.metrics, &b.shared.metrics));
    }

    #[test]
    fn paths_are_normalized() {
        let layer = PkceLayer::new()
            .authorize_path("/OAuth2/Authorize/")
            .unwrap();
        assert_eq!(
            layer.shared.config.authorize_path.normalized(),
            "/oauth2/authorize"
        );
        assert_eq!(
            layer.shared.config.authorize_path.written(),
            "/OAuth2/Authorize/"
        );
    }

    /// Invalid settings are refused, not adjusted.
    #[test]
    fn invalid_settings_are_refused() {
        let new = PkceLayer::new;
        let shared = |p: &str| Err(ConfigError::SharedEndpointPath(p.into()));
        let cases: [(
            &str,
            Result<PkceLayer, ConfigError>,
            Result<(), ConfigError>,
        ); 10] = [
            (
                "token on authorize",
                new().token_path("/Authorize/"),
                shared("/authorize"),
            ),
            (
                "authorize on token",
                new().authorize_path("//token"),
                shared("/token"),
            ),
            (
                "par on token",
                new().token_path("/t").and_then(|l| l.par_path("/T")),
                shared("/t"),
            ),
            (
                "root",
                new().token_path("/"),
                Err(ConfigError::RootEndpointPath),
            ),
            (
                "root, spelled oddly",
                new().par_path("/./"),
                Err(ConfigError::RootEndpointPath),
            ),
            (
                "attempts",
                new().max_failed_attempts(0),
                Err(ConfigError::Zero("max_failed_attempts")),
            ),
            (
                "pending ttl",
                new().pending_ttl(Duration::ZERO),
                Err(ConfigError::Zero("pending_ttl")),
            ),
            (
                "code ttl",
                new().code_ttl(Duration::ZERO),
                Err(ConfigError::Zero("code_ttl")),
            ),
            (
                "body",
                new().max_body_bytes(0),
                Err(ConfigError::Zero("max_body_bytes")),
            ),
            (
                "swapped",
                new()
                    .authorize_path("/x")
                    .and_then(|l| l.token_path("/authorize")),
                Ok(()),
            ),
        ];
        for (name, got, want) in cases {
            assert_eq!(got.map(|_| ()), want, "{name}");
        }
        let layer = new().max_failed_attempts(1).unwrap();
        assert_eq!(layer.shared.config.max_failed_attempts, 1);
    }

    #[test]
    fn advertised_methods() {
        assert_eq!(PkceLayer::new().shared.config.methods(), ["S256"]);
        assert_eq!(
            PkceLayer::new().allow_plain(true).shared.config.methods(),
            ["S256", "plain"]
        );
    }
}
