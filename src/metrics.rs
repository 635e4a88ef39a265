use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::indexed::indexed_enum;
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

indexed_enum! {
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
}

impl Pass {
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
        if let Some(c) = self.allowed.get(pass.index()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails to compile when a pass is added without a name here, and fails when `ALL` and
    /// the arms disagree.
    #[test]
    fn every_pass_is_listed_once_at_its_index() {
        let listed = |pass: Pass| match pass {
            Pass::FlowRecorded
            | Pass::UnboundFlowRecorded
            | Pass::Reentry
            | Pass::ExemptRequestObject
            | Pass::CodeBound
            | Pass::ErrorReleased
            | Pass::Verified
            | Pass::UnboundRedeemed
            | Pass::ExemptUnknownCode
            | Pass::ReturnedToBound
            | Pass::OtherGrant
            | Pass::Preflight => Pass::ALL.iter().filter(|p| **p == pass).count(),
        };
        for (i, pass) in Pass::ALL.iter().enumerate() {
            assert_eq!(pass.index(), i, "{pass:?}");
            assert_eq!(listed(*pass), 1, "{pass:?}");
        }
        // The arms above, counted.
        assert_eq!(Pass::ALL.len(), 12);
        let mut names: Vec<&str> = Pass::ALL.iter().map(|p| p.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Pass::ALL.len());
    }

    #[test]
    fn counters_are_kept_per_reason_and_pass() {
        let metrics = Metrics::default();
        metrics.refuse(Reason::HandleCollision, false);
        metrics.refuse(Reason::StoreUnavailable, true);
        metrics.pass(Pass::Preflight);
        assert_eq!(metrics.refused(Reason::HandleCollision), 1);
        assert_eq!(metrics.refused(Reason::StoreUnavailable), 0);
        assert_eq!(metrics.reported(Reason::StoreUnavailable), 1);
        let mut snapshot = metrics.snapshot();
        snapshot.sort_unstable_by_key(|(_, name, _)| *name);
        assert_eq!(
            snapshot,
            [
                (Outcome::Refused, "handle_collision", 1),
                (Outcome::Allowed, "preflight", 1),
                (Outcome::Reported, "store_unavailable", 1),
            ]
        );
    }
}
