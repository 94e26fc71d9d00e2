//! Counters of config file fetches by transport and result, for `/metrics`. Labels are fixed
//! sets, so the counters are an array of atomics that requests cannot grow.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::files::LookupError;

/// How a file was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTransport {
    /// Plain HTTP (6970).
    Http,
    /// Token-protected HTTPS (6971).
    Https,
    /// TFTP (UDP 69).
    Tftp,
}

/// `transport` label values, in index order.
pub(crate) const TRANSPORTS: [&str; 3] = ["http", "https", "tftp"];
/// `result` label values, in index order: served (including `304`), no such file, refused for
/// the token (HTTPS 401/403), anything else (bad name, render failure).
pub(crate) const RESULTS: [&str; 4] = ["ok", "not_found", "denied", "error"];

/// The result of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// The file was served (or was unchanged: `304`).
    Ok,
    /// No such file.
    NotFound,
    /// HTTPS: no valid token, or not the device's owner.
    Denied,
    /// A bad name or a render failure.
    Error,
}

impl FetchResult {
    /// The result of a failed lookup.
    pub fn of(e: &LookupError) -> FetchResult {
        match e {
            LookupError::NotFound => FetchResult::NotFound,
            LookupError::BadName | LookupError::Render => FetchResult::Error,
        }
    }
}

/// Fetch counters; cheap to update from any transport.
#[derive(Debug, Default)]
pub struct FetchStats {
    counts: [[AtomicU64; 4]; 3],
}

impl FetchStats {
    /// Counts one fetch.
    pub fn count(&self, transport: FetchTransport, result: FetchResult) {
        self.counts[transport as usize][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `(transport, result, count)` for every combination, zeros included.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::with_capacity(12);
        for (t, transport) in TRANSPORTS.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                out.push((
                    *transport,
                    *result,
                    self.counts[t][r].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_transport_and_result() {
        let s = FetchStats::default();
        s.count(FetchTransport::Tftp, FetchResult::Ok);
        s.count(
            FetchTransport::Http,
            FetchResult::of(&LookupError::NotFound),
        );
        s.count(FetchTransport::Http, FetchResult::of(&LookupError::BadName));
        let snap = s.snapshot();
        assert_eq!(snap.len(), 12);
        assert!(snap.contains(&("tftp", "ok", 1)));
        assert!(snap.contains(&("http", "not_found", 1)));
        assert!(snap.contains(&("http", "error", 1)));
        assert!(snap.contains(&("https", "ok", 0)));
    }
}
