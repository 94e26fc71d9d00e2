//! Memory of the location service with many bindings, measured in-process: the part of the
//! "1,000,000 bindings in ≤ 1 GiB" target that does not depend on connections.
//!
//! Bindings go in through [`Location::apply`], the same call a REGISTER makes, with contact,
//! Call-ID, device and user strings of the length a real Jabber REGISTER carries. The dirty set
//! of the write-behind persister is drained every [`DRAIN_EVERY`] bindings, as the server's
//! persister does once a second (10,000 bindings ≈ one second of registrations at the measured
//! steady rate); draining a million at once would measure a peak the server never reaches.

use std::time::{Duration, Instant};

use serde_json::json;
use sipreg_registrar::{Binding, BindingChange, Location};

use crate::memory::{own_rss_mib, MemoryError};

/// Bindings applied between two drains of the dirty set (the persister's 1 s tick).
pub const DRAIN_EVERY: u64 = 10_000;

/// What [`location_footprint`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    /// Bindings held at the end.
    pub bindings: u64,
    /// RSS before the location service existed (MiB).
    pub before_mib: f64,
    /// RSS holding every binding (MiB).
    pub after_mib: f64,
    /// Time to apply them all.
    pub elapsed: Duration,
}

/// Errors of the footprint measurement.
#[derive(Debug, thiserror::Error)]
pub enum FootprintError {
    /// RSS could not be read.
    #[error("{0}")]
    Memory(#[from] MemoryError),
    /// The template binding no longer matches the registrar's `Binding`.
    #[error("binding template: {0}")]
    Template(String),
    /// The location service refused a binding.
    #[error("apply: {0}")]
    Apply(String),
}

/// A binding as a REGISTER over TLS from a Jabber client would leave it. Built through serde so
/// fields the registrar adds later with defaults need no change here.
fn template() -> Result<Binding, FootprintError> {
    serde_json::from_value(json!({
        "contact_uri": "sip:100000@127.0.0.1:40000;transport=tls",
        "contact_key": "sip:100000@127.0.0.1:40000;transport=tls",
        "contact_raw": "<sip:100000@127.0.0.1:40000;transport=tls>;+u.sip!devicename.ccm.cisco.com=\"BENCH0\"",
        "expires_at": 0,
        "call_id": "18f3a2b4c5d6e7f8-100000@sipreg-load",
        "cseq": 1,
        "path": [],
        "device": "BENCH0",
        "user": "bench",
        "flow": 0,
    }))
    .map_err(|e| FootprintError::Template(e.to_string()))
}

/// Applies `count` bindings (one per AOR) and reports RSS before and after.
pub fn location_footprint(count: u64) -> Result<Footprint, FootprintError> {
    let base = template()?;
    let now = 1_700_000_000;
    let before = own_rss_mib()?;
    let location = Location::new();
    let t0 = Instant::now();
    for i in 0..count {
        let line = 100_000 + i;
        let port = 1024 + (i % 60_000);
        let mut b = base.clone();
        b.contact_uri = format!("sip:{line}@127.0.0.1:{port};transport=tls");
        b.contact_key = b.contact_uri.clone();
        b.contact_raw = format!(
            "<{}>;+u.sip!devicename.ccm.cisco.com=\"BENCH{}\"",
            b.contact_uri,
            i / 64
        );
        b.call_id = format!("18f3a2b4c5d6e7f8-{line}@sipreg-load");
        b.device = Some(format!("BENCH{}", i / 64));
        b.expires_at = now + 3600;
        b.flow = i;
        location
            .apply(
                &format!("sip:{line}@localhost"),
                &[BindingChange::Bind(b)],
                10,
                now,
            )
            .map_err(|e| FootprintError::Apply(e.to_string()))?;
        if (i + 1) % DRAIN_EVERY == 0 {
            drop(location.take_dirty());
        }
    }
    drop(location.take_dirty());
    let elapsed = t0.elapsed();
    let after = own_rss_mib()?;
    let held = location.len() as u64;
    drop(location);
    Ok(Footprint {
        bindings: held,
        before_mib: before,
        after_mib: after,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_is_held_and_costs_memory() {
        let f = location_footprint(20_000).unwrap();
        assert_eq!(f.bindings, 20_000);
        assert!(f.after_mib > f.before_mib, "{f:?}");
    }
}
