//! Counters of the token endpoint for `/metrics`: tokens issued by grant type and refused
//! requests by grant type and RFC 6749 §5.2 error. Labels come from fixed sets (an unknown
//! `grant_type` is `other`), so the counters are arrays of atomics and a client cannot grow them.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::GrantError;

/// Grant labels, in order; `other` is any grant type this server does not know.
pub const GRANTS: [&str; 4] = ["password", "authorization_code", "refresh_token", "other"];
/// Error labels, in order (RFC 6749 §5.2 codes, plus `server_error`).
pub const ERRORS: [&str; 6] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_scope",
    "server_error",
];

/// Token endpoint counters; cheap to update from any request.
#[derive(Debug, Default)]
pub struct Metrics {
    issued: [AtomicU64; 4],
    failed: [[AtomicU64; 6]; 4],
}

/// A copy of [`Metrics`], every label combination included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// `(grant, tokens issued)`.
    pub issued: Vec<(&'static str, u64)>,
    /// `(grant, error, refused requests)`.
    pub failed: Vec<(&'static str, &'static str, u64)>,
}

/// The index of a `grant_type` value in [`GRANTS`].
pub(crate) fn grant_index(grant_type: Option<&str>) -> usize {
    grant_type
        .and_then(|g| GRANTS[..3].iter().position(|k| *k == g))
        .unwrap_or(3)
}

impl Metrics {
    /// Counts the outcome of one token request with this `grant_type`.
    pub(crate) fn count<T>(&self, grant: usize, result: &Result<T, GrantError>) {
        let grant = grant.min(3);
        match result {
            Ok(_) => {
                self.issued[grant].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let code = e.error_code();
                let i = ERRORS.iter().position(|k| *k == code).unwrap_or(5);
                self.failed[grant][i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every counter now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = MetricsSnapshot::default();
        for (gi, grant) in GRANTS.iter().enumerate() {
            // No token is ever issued for an unknown grant type: leave that series out.
            if gi < 3 {
                out.issued.push((grant, g(&self.issued[gi])));
            }
            for (ei, error) in ERRORS.iter().enumerate() {
                out.failed.push((grant, error, g(&self.failed[gi][ei])));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_grant_and_error() {
        let m = Metrics::default();
        m.count(grant_index(Some("password")), &Ok::<(), GrantError>(()));
        m.count::<()>(
            grant_index(Some("refresh_token")),
            &Err(GrantError::InvalidGrant("x")),
        );
        m.count::<()>(
            grant_index(Some("implicit")),
            &Err(GrantError::UnsupportedGrantType),
        );
        m.count::<()>(grant_index(None), &Err(GrantError::InvalidRequest("x")));
        let s = m.snapshot();
        assert!(s.issued.contains(&("password", 1)));
        assert!(s.issued.contains(&("refresh_token", 0)));
        assert_eq!(s.issued.len(), 3);
        assert!(s.failed.contains(&("refresh_token", "invalid_grant", 1)));
        assert!(s.failed.contains(&("other", "unsupported_grant_type", 1)));
        assert!(s.failed.contains(&("other", "invalid_request", 1)));
        assert_eq!(s.failed.len(), 24);
    }
}
