//! The checks a [`Config`] must pass, however it was built: each failure is one line naming
//! the flag.

use std::path::Path;
use std::time::Duration;

use http::Uri;

use super::{values, Config, ConfigError, StoreSpec};

/// The longest duration any setting takes: beyond it, deadlines overflow the clock.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

impl Config {
    /// Checks every setting, and the ones that depend on each other: the upstream's form,
    /// paths, names, durations within `(0, 24h]`, counts of at least 1, `--connect-timeout`
    /// shorter than `--upstream-timeout`, the `--upstream-ca` file, `--tls-cert` and
    /// `--tls-key` (both or neither; a certificate chain and its key), and a Redis URL that the
    /// `redis` crate reads (without connecting). [`Config::from_args`],
    /// [`Proxy::bind`](crate::Proxy::bind) and [`Config::layer`] call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_upstream(&self.upstream)?;
        let paths = [
            ("authorize-path", &self.authorize_path),
            ("token-path", &self.token_path),
        ];
        let paths = paths
            .into_iter()
            .chain(self.par_path.iter().map(|p| ("par-path", p)))
            .chain(self.other_routes.iter().map(|p| ("other-route", p)));
        for (name, path) in paths {
            if !path.starts_with('/') || path.contains(['?', '#']) {
                return Err(ConfigError::new(format!(
                    "invalid --{name} {path:?}: expected a path starting with /"
                )));
            }
        }
        let durations = [
            ("idle-timeout", self.idle_timeout),
            ("pending-ttl", self.pending_ttl),
            ("code-ttl", self.code_ttl),
            ("header-timeout", self.header_timeout),
            ("body-timeout", self.body_timeout),
            ("connect-timeout", self.connect_timeout),
            ("upstream-timeout", self.upstream_timeout),
            ("shutdown-grace", self.shutdown_grace),
            ("store-timeout", self.store_timeout),
        ];
        for (name, d) in durations {
            let shown = humantime::format_duration(d).to_string();
            if d.is_zero() {
                return Err(ConfigError::new(format!(
                    "invalid --{name} {shown:?}: must be longer than zero"
                )));
            }
            if d > MAX_DURATION {
                return Err(ConfigError::new(format!(
                    "invalid --{name} {shown:?}: must be at most 24h"
                )));
            }
        }
        let counts = [
            ("max-connections", self.max_connections),
            ("max-pending", self.max_pending),
            ("max-body", self.max_body),
        ];
        for (name, n) in counts {
            if n == 0 {
                return Err(ConfigError::new(format!(
                    "invalid --{name} 0: must be at least 1"
                )));
            }
        }
        if self.connect_timeout >= self.upstream_timeout {
            // A connect that outlasts the upstream timeout turns a request that was never sent
            // into a 504, and a code into a redeemed one.
            return Err(ConfigError::new(
                "--connect-timeout must be shorter than --upstream-timeout",
            ));
        }
        if let Some(ca) = &self.upstream_ca {
            if self.upstream.scheme() != Some(&http::uri::Scheme::HTTPS) {
                return Err(ConfigError::new("--upstream-ca needs an https:// upstream"));
            }
            check_pem(ca)?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::Loaded::read(cert, key).map_err(ConfigError::new)?;
            }
            (Some(_), None) => return Err(ConfigError::new("--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(ConfigError::new("--tls-key needs --tls-cert")),
            (None, None) => {}
        }
        check_store(&self.store)?;
        self.layer_settings().map(drop)
    }
}

/// An upstream is `http` or `https`, a host, maybe a port, and nothing else: the proxy
/// forwards every path as it came.
fn check_upstream(uri: &Uri) -> Result<(), ConfigError> {
    if *uri == Uri::default() {
        return Err(ConfigError::new("--upstream URL is required"));
    }
    let text = uri.to_string();
    let shown = values::uri::redacted(&text);
    let bad = |why: &str| ConfigError::new(format!("invalid --upstream {shown:?}: {why}"));
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
    Ok(())
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

/// A Redis URL must be one the `redis` crate reads, so that a bad one is a configuration
/// error before anything starts.
fn check_store(store: &StoreSpec) -> Result<(), ConfigError> {
    match store {
        StoreSpec::Memory => Ok(()),
        #[cfg(feature = "redis")]
        StoreSpec::Redis(url) => tower_pkce::RedisStore::open(url.expose())
            .map(drop)
            .map_err(|e| ConfigError::new(format!("invalid --store {url}: {e}"))),
        #[cfg(not(feature = "redis"))]
        StoreSpec::Redis(_) => Err(ConfigError::new(
            "--store redis://… needs pkce-proxy built with the redis feature",
        )),
    }
}
