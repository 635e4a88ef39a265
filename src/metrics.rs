use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Reason;

/// What the layer did with a request it inspected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Let through (or, for a redirect, bound or released).
    Allowed,
    /// Refused.
    Refused,
    /// Would have been refused, forwarded because the layer runs in
    /// [`Mode::Report`](crate::Mode::Report).
    Reported,
}

impl Outcome {
    /// A short, stable name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Reported => "reported",
        }
    }
}

/// Why the layer let something through: the `reason` of an [`Outcome::Allowed`] decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pass {
    FlowRecorded,
    UnboundFlowRecorded,
    Reentry,
    ExemptRequestObject,
    CodeBound,
    ErrorReleased,
    Verified,
    UnboundRedeemed,
    ExemptUnknownCode,
    ReturnedToBound,
    /// A token request of another grant than `authorization_code`, read and rebuilt.
    OtherGrant,
    /// A CORS preflight at the token endpoint.
    Preflight,
}

impl Pass {
    const ALL: [Pass; 12] = [
        Self::FlowRecorded,
        Self::UnboundFlowRecorded,
        Self::Reentry,
        Self::ExemptRequestObject,
        Self::CodeBound,
        Self::ErrorReleased,
        Self::Verified,
        Self::UnboundRedeemed,
        Self::ExemptUnknownCode,
        Self::ReturnedToBound,
        Self::OtherGrant,
        Self::Preflight,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::FlowRecorded => "flow_recorded",
            Self::UnboundFlowRecorded => "unbound_flow_recorded",
            Self::Reentry => "reentry",
            Self::ExemptRequestObject => "exempt_request_object",
            Self::CodeBound => "code_bound",
            Self::ErrorReleased => "error_released",
            Self::Verified => "verified",
            Self::UnboundRedeemed => "unbound_redeemed",
            Self::ExemptUnknownCode => "exempt_unknown_code",
            Self::ReturnedToBound => "returned_to_bound",
            Self::OtherGrant => "other_grant",
            Self::Preflight => "preflight",
        }
    }
}

/// Counters of the layer's decisions, by outcome and reason. Shared by every clone of a layer;
/// read them with [`PkceLayer::metrics`](crate::PkceLayer::metrics).
pub struct Metrics {
    allowed: [AtomicU64; Pass::ALL.len()],
    refused: [AtomicU64; Reason::ALL.len()],
    reported: [AtomicU64; Reason::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            allowed: std::array::from_fn(|_| AtomicU64::new(0)),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            reported: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    pub(crate) fn pass(&self, pass: Pass) {
        let i = Pass::ALL.iter().position(|p| *p == pass).unwrap_or(0);
        if let Some(c) = self.allowed.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn refuse(&self, reason: Reason, reported: bool) {
        let counters = if reported {
            &self.reported
        } else {
            &self.refused
        };
        if let Some(c) = counters.get(reason.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests refused for `reason`.
    pub fn refused(&self, reason: Reason) -> u64 {
        self.refused
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Requests that would have been refused for `reason`, forwarded in report mode.
    pub fn reported(&self, reason: Reason) -> u64 {
        self.reported
            .get(reason.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every non-zero counter as `(outcome, reason, count)`, e.g. for a Prometheus exporter.
    pub fn snapshot(&self) -> Vec<(Outcome, &'static str, u64)> {
        let allowed = Pass::ALL
            .iter()
            .zip(&self.allowed)
            .map(|(p, c)| (Outcome::Allowed, p.as_str(), c.load(Ordering::Relaxed)));
        let refused = Reason::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, c)| (Outcome::Refused, r.as_str(), c.load(Ordering::Relaxed)));
        let reported = Reason::ALL
            .iter()
            .zip(&self.reported)
            .map(|(r, c)| (Outcome::Reported, r.as_str(), c.load(Ordering::Relaxed)));
        allowed
            .chain(refused)
            .chain(reported)
            .filter(|(_, _, n)| *n > 0)
            .collect()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}
