//! SIGHUP: the configuration (command line, environment, `--config` file) and the listener's
//! certificate are read again. What can change live is applied: the certificate (for new
//! handshakes), `allow_plain`, `mode` and the clients' settings (for the next request). Other
//! changed settings are reported as needing a restart and keep their running values. A
//! reload that fails changes nothing.

use std::ffi::OsString;
use std::sync::{Arc, PoisonError};

use super::config::{self, Config};
use super::tls::Loaded;
use super::Shared;

/// The settings a reload applies; with TLS on, `tls_cert` and `tls_key` too.
const LIVE: [&str; 3] = ["clients", "allow_plain", "mode"];
const LIVE_TLS: [&str; 2] = ["tls_cert", "tls_key"];

/// Resolves once per SIGHUP; never where there is no SIGHUP (or no handler).
pub(crate) struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangup {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.0 {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await;
    }
}

/// Installs the SIGHUP handler (within a runtime), so that from now on SIGHUP does not end
/// the process.
pub(crate) fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        Hangup(signal(SignalKind::hangup()).ok())
    }
    #[cfg(not(unix))]
    Hangup()
}

/// Reloads on SIGHUP.
pub(crate) struct Reloader {
    shared: Arc<Shared>,
    /// The settings in force.
    applied: Config,
    /// The command line the proxy was started with.
    args: Vec<OsString>,
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>, applied: Config, args: Vec<OsString>) -> Self {
        Self {
            shared,
            applied,
            args,
        }
    }

    pub(crate) async fn run(mut self, mut hangup: Hangup) {
        loop {
            hangup.recv().await;
            self.reload().await;
        }
    }

    async fn reload(&mut self) {
        let args = self.args.clone();
        let tls = self.shared.tls.is_some();
        // Files are read off the runtime: this thread serves connections too.
        let read = tokio::task::spawn_blocking(move || read(args, tls)).await;
        match read {
            Ok(Ok((config, certificate))) => self.apply(config, certificate),
            Ok(Err(e)) => self.failed(&e),
            Err(e) => self.failed(&format!("the reload did not finish: {e}")),
        }
    }

    fn failed(&self, error: &str) {
        self.shared.stats.reloaded(false);
        tracing::error!(target: "pkce_proxy", error, "reload failed; nothing changed");
    }

    fn apply(&mut self, new: Config, certificate: Option<Loaded>) {
        let tls = self.shared.tls.as_ref();
        let restart = needs_restart(&self.applied, &new, tls.is_some());
        let layer = new.with_policy(self.shared.layer.clone());
        *self
            .shared
            .policy
            .write()
            .unwrap_or_else(PoisonError::into_inner) = layer;
        let mut not_after = None;
        if let (Some(tls), Some(certificate)) = (tls, certificate) {
            not_after = Some(certificate.not_after());
            self.shared
                .stats
                .set_cert_not_after(certificate.not_after());
            tls.certificate.replace(certificate);
            self.applied.tls_cert = new.tls_cert;
            self.applied.tls_key = new.tls_key;
        }
        self.applied.clients = new.clients;
        self.applied.allow_plain = new.allow_plain;
        self.applied.mode = new.mode;
        self.shared.stats.reloaded(true);
        tracing::info!(
            target: "pkce_proxy",
            mode = ?self.applied.mode,
            allow_plain = self.applied.allow_plain,
            clients = self.applied.clients.len(),
            cert_not_after = not_after,
            "configuration reloaded"
        );
        if !restart.is_empty() {
            tracing::warn!(
                target: "pkce_proxy",
                settings = %restart.join(", "),
                "changed settings that need a restart; they keep their running values"
            );
        }
    }
}

/// The configuration, validated, and the certificate if the listener has TLS.
fn read(args: Vec<OsString>, tls: bool) -> Result<(Config, Option<Loaded>), String> {
    let (config, _) = config::load(args).map_err(|e| e.to_string())?;
    let certificate = match (tls, &config.tls_cert, &config.tls_key) {
        (true, Some(cert), Some(key)) => Some(Loaded::read(cert, key)?),
        _ => None,
    };
    Ok((config, certificate))
}

/// The flags of the settings that differ between `old` and `new` and cannot change live.
/// With `tls` on, other certificate files can; turning TLS off cannot.
fn needs_restart(old: &Config, new: &Config, tls: bool) -> Vec<String> {
    let tls = tls && new.tls_cert.is_some() && new.tls_key.is_some();
    let (Ok(old), Ok(new)) = (toml::Table::try_from(old), toml::Table::try_from(new)) else {
        return Vec::new();
    };
    let live = |key: &str| LIVE.contains(&key) || (tls && LIVE_TLS.contains(&key));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| !live(key) && old.get(*key) != new.get(*key))
        .map(|key| format!("--{}", key.replace('_', "-")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_that_cannot_change_live_need_a_restart() {
        let old = Config::new("http://127.0.0.1:9000".parse().unwrap());
        let mut new = old.clone();
        new.allow_plain = true;
        new.mode = tower_pkce::Mode::Report;
        new.clients.insert("app".into(), Default::default());
        assert!(needs_restart(&old, &new, false).is_empty());
        new.listen = "127.0.0.1:9999".parse().unwrap();
        new.workers = 3;
        new.tls_cert = Some("c.pem".into());
        new.tls_key = Some("k.pem".into());
        assert_eq!(
            needs_restart(&old, &new, false),
            ["--listen", "--tls-cert", "--tls-key", "--workers"]
        );
        assert_eq!(needs_restart(&old, &new, true), ["--listen", "--workers"]);
        // TLS off: a restart.
        assert_eq!(
            needs_restart(&new, &old, true),
            ["--listen", "--tls-cert", "--tls-key", "--workers"]
        );
    }
}
