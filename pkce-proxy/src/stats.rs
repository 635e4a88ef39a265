//! The proxy's own counters, and the Prometheus text exposition of them and of the layer's
//! decisions.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tower_pkce::Endpoint;
use tower_pkce::Metrics;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const ENDPOINTS: [(Endpoint, &str); 6] = [
    (Endpoint::Authorize, "authorize"),
    (Endpoint::Token, "token"),
    (Endpoint::Par, "par"),
    (Endpoint::Metadata, "metadata"),
    (Endpoint::Lookalike, "lookalike"),
    (Endpoint::Other, "other"),
];

/// Why the upstream gave no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamFailure {
    /// It could not be connected to (502; the request was never sent).
    Connect,
    /// No response headers in time (504).
    Timeout,
    /// The exchange broke after the request may have been sent (502).
    Failed,
}

const UPSTREAM_ERRORS: [(UpstreamFailure, &str); 3] = [
    (UpstreamFailure::Connect, "connect"),
    (UpstreamFailure::Timeout, "timeout"),
    (UpstreamFailure::Failed, "failed"),
];

/// Why a TLS handshake on the listener failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// Not finished within `--header-timeout` (a silent or slow client).
    Timeout,
    /// The client closed the connection.
    Closed,
    /// Not TLS (cleartext HTTP, garbage) or malformed TLS.
    Malformed,
    /// TLS with nothing in common (version, cipher suite, ALPN), or the client's alert.
    Refused,
    /// Another I/O error.
    Other,
}

const HANDSHAKE_FAILURES: [(HandshakeFailure, &str); 5] = [
    (HandshakeFailure::Timeout, "timeout"),
    (HandshakeFailure::Closed, "closed"),
    (HandshakeFailure::Malformed, "malformed"),
    (HandshakeFailure::Refused, "refused"),
    (HandshakeFailure::Other, "other"),
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        // Buckets are stored non-cumulatively and summed when rendered.
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            if let Some(bucket) = self.buckets.get(i) {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Counters shared by every connection.
#[derive(Default)]
pub(crate) struct Stats {
    latency: [Histogram; ENDPOINTS.len()],
    upstream_errors: [AtomicU64; UPSTREAM_ERRORS.len()],
    body_timeouts: AtomicU64,
    in_flight: AtomicI64,
    connections: AtomicU64,
    handshake_failures: [AtomicU64; HANDSHAKE_FAILURES.len()],
    /// Reloads (SIGHUP) that were applied, and that changed nothing because they failed.
    reloads_ok: AtomicU64,
    reloads_error: AtomicU64,
    /// The listener certificate's `notAfter` (Unix seconds); 0 without TLS.
    cert_not_after: AtomicI64,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Stats {
    pub(crate) fn observe(&self, endpoint: Endpoint, elapsed: Duration) {
        let i = ENDPOINTS
            .iter()
            .position(|(e, _)| *e == endpoint)
            .unwrap_or(ENDPOINTS.len() - 1);
        if let Some(h) = self.latency.get(i) {
            h.observe(elapsed);
        }
    }

    pub(crate) fn upstream_error(&self, kind: UpstreamFailure) {
        if let Some(i) = UPSTREAM_ERRORS.iter().position(|(k, _)| *k == kind) {
            if let Some(c) = self.upstream_errors.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn body_timeout(&self) {
        self.body_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_failed(&self, why: HandshakeFailure) {
        if let Some(i) = HANDSHAKE_FAILURES.iter().position(|(k, _)| *k == why) {
            if let Some(c) = self.handshake_failures.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_error
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_cert_not_after(&self, unix_seconds: i64) {
        self.cert_not_after.store(unix_seconds, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (version 0.0.4) of these counters and of `decisions`.
    pub(crate) fn render(&self, decisions: &Metrics) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP pkce_decisions_total Decisions of the PKCE layer, by outcome and reason.\n\
             # TYPE pkce_decisions_total counter\n",
        );
        for (outcome, reason, count) in decisions.snapshot() {
            let _ = writeln!(
                out,
                "pkce_decisions_total{{outcome=\"{}\",reason=\"{reason}\"}} {count}",
                outcome.as_str()
            );
        }
        out.push_str(
            "# HELP pkce_proxy_request_duration_seconds Time from request headers to response \
             headers, by endpoint.\n\
             # TYPE pkce_proxy_request_duration_seconds histogram\n",
        );
        for ((_, name), h) in ENDPOINTS.iter().zip(&self.latency) {
            let mut cumulative = 0;
            for (bound, bucket) in BUCKETS.iter().zip(&h.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "pkce_proxy_request_duration_seconds_bucket{{endpoint=\"{name}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "pkce_proxy_request_duration_seconds_bucket{{endpoint=\"{name}\",le=\"+Inf\"}} {count}\n\
                 pkce_proxy_request_duration_seconds_sum{{endpoint=\"{name}\"}} {sum}\n\
                 pkce_proxy_request_duration_seconds_count{{endpoint=\"{name}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP pkce_proxy_upstream_errors_total Requests the upstream did not answer.\n\
             # TYPE pkce_proxy_upstream_errors_total counter\n",
        );
        for ((_, kind), c) in UPSTREAM_ERRORS.iter().zip(&self.upstream_errors) {
            let _ = writeln!(
                out,
                "pkce_proxy_upstream_errors_total{{kind=\"{kind}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP pkce_proxy_body_timeouts_total Requests answered 408 because their body stalled.\n\
             # TYPE pkce_proxy_body_timeouts_total counter\n\
             pkce_proxy_body_timeouts_total {}\n\
             # HELP pkce_proxy_requests_in_flight Requests being handled.\n\
             # TYPE pkce_proxy_requests_in_flight gauge\n\
             pkce_proxy_requests_in_flight {}\n\
             # HELP pkce_proxy_connections_total Client connections accepted.\n\
             # TYPE pkce_proxy_connections_total counter\n\
             pkce_proxy_connections_total {}",
            self.body_timeouts.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP pkce_proxy_reloads_total Configuration reloads (SIGHUP), by outcome; an \
             error changes nothing.\n\
             # TYPE pkce_proxy_reloads_total counter\n\
             pkce_proxy_reloads_total{{outcome=\"ok\"}} {}\n\
             pkce_proxy_reloads_total{{outcome=\"error\"}} {}",
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_error.load(Ordering::Relaxed),
        );
        let not_after = self.cert_not_after.load(Ordering::Relaxed);
        if not_after != 0 {
            out.push_str(
                "# HELP pkce_proxy_tls_handshake_failures_total TLS handshakes on the listener \
                 that failed, by reason.\n\
                 # TYPE pkce_proxy_tls_handshake_failures_total counter\n",
            );
            for ((_, reason), c) in HANDSHAKE_FAILURES.iter().zip(&self.handshake_failures) {
                let _ = writeln!(
                    out,
                    "pkce_proxy_tls_handshake_failures_total{{reason=\"{reason}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
            let _ = writeln!(
                out,
                "# HELP pkce_proxy_tls_cert_not_after_seconds When the listener's certificate \
                 expires (Unix time).\n\
                 # TYPE pkce_proxy_tls_cert_not_after_seconds gauge\n\
                 pkce_proxy_tls_cert_not_after_seconds {not_after}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let stats = Stats::default();
        stats.observe(Endpoint::Token, Duration::from_micros(300));
        stats.observe(Endpoint::Token, Duration::from_millis(3));
        stats.observe(Endpoint::Token, Duration::from_secs(60));
        let text = stats.render(&Metrics::default());
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix} missing in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        let b = "pkce_proxy_request_duration_seconds_bucket{endpoint=\"token\"";
        assert_eq!(line(&format!("{b},le=\"0.0005\"}}")), "1");
        assert_eq!(line(&format!("{b},le=\"0.005\"}}")), "2");
        assert_eq!(line(&format!("{b},le=\"5\"}}")), "2");
        assert_eq!(line(&format!("{b},le=\"+Inf\"}}")), "3");
        assert_eq!(
            line("pkce_proxy_request_duration_seconds_count{endpoint=\"token\"}"),
            "3"
        );
        assert_eq!(
            line("pkce_proxy_request_duration_seconds_count{endpoint=\"other\"}"),
            "0"
        );
    }
}
