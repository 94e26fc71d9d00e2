//! The location service: current bindings per address-of-record.
//!
//! One [`DashMap`] entry per AOR; [`Location::apply`] checks and commits a REGISTER's changes
//! under that entry's lock, so the RFC 3261 §10.3 step 6-7 ordering rules and the
//! all-or-nothing commit hold even when two connections register the same AOR at once. Every
//! AOR that changes is remembered as dirty until the [`Persister`](crate::persist::Persister)
//! takes it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// Identifies the connection (flow, RFC 5626) a binding was registered over; 0 means none
/// (UDP, or a binding restored after a restart).
pub type FlowId = u64;

/// The transport a request arrived over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Transport {
    /// UDP (legacy port).
    Udp,
    /// TCP (legacy port).
    Tcp,
    /// TLS (legacy secure port or the SIP OAuth port).
    Tls,
}

impl Transport {
    /// The Via transport token (`UDP`, `TCP`, `TLS`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// What is known about the flow a binding was made over (RFC 5626 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowState {
    /// The connection it came over is open.
    Open,
    /// The connection it came over has closed (kept because `unbind_on_close` is off).
    Closed,
    /// Connectionless (UDP): reachable at its source address while the NAT binding lasts.
    Datagram,
    /// Restored from the store after a restart: the flow it came over is gone or unknown.
    Unknown,
}

/// One contact bound to an AOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The contact URI as sent.
    pub contact_uri: String,
    /// Canonical comparison key of the contact URI.
    pub contact_key: String,
    /// The whole Contact header value as sent.
    pub contact_raw: String,
    /// The Contact header parameters as sent (`name` or `name=value`), `expires` excluded.
    #[serde(default)]
    pub contact_params: Vec<String>,
    /// Unix seconds when the binding lapses.
    pub expires_at: i64,
    /// Call-ID of the REGISTER that created or refreshed it.
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
    /// `q` parameter.
    pub q: Option<String>,
    /// `+sip.instance` (RFC 5626).
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626), only kept together with an instance.
    pub reg_id: Option<u32>,
    /// `Path` vector (RFC 3327), in order.
    pub path: Vec<String>,
    /// Unified CM device name.
    pub device: Option<String>,
    /// Authenticated user (or Digest user name) who registered it.
    pub user: String,
    /// The connection it came over.
    pub flow: FlowId,
    /// What is known about that connection.
    #[serde(default = "unknown_flow")]
    pub flow_state: FlowState,
    /// Transport of the REGISTER.
    #[serde(default = "default_transport")]
    pub transport: Transport,
    /// Source address of the REGISTER (where a UDP or flow-bound request goes).
    #[serde(default)]
    pub source: Option<SocketAddr>,
    /// Registered with RFC 5626 outbound (instance + reg-id honoured).
    #[serde(default)]
    pub outbound: bool,
}

fn unknown_flow() -> FlowState {
    FlowState::Unknown
}

fn default_transport() -> Transport {
    Transport::Tls
}

impl Binding {
    /// Whether `other` is the same binding (RFC 5626 instance + reg-id, else contact URI).
    fn same_as(&self, instance: Option<&str>, reg_id: Option<u32>, contact_key: &str) -> bool {
        match (self.instance.as_deref(), self.reg_id, instance, reg_id) {
            (Some(a), Some(x), Some(b), Some(y)) => a == b && x == y,
            _ => self.contact_key == contact_key,
        }
    }

    /// The binding's key within its AOR: (instance, reg-id) when both are set (RFC 5626 §6),
    /// else the canonical contact URI.
    pub fn key(&self) -> String {
        match (&self.instance, self.reg_id) {
            (Some(i), Some(r)) => format!("{i};reg-id={r}"),
            _ => self.contact_key.clone(),
        }
    }
}

/// The bindings of one AOR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AorBindings {
    /// Bindings, oldest first.
    pub bindings: Vec<Binding>,
}

/// One change a REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
// Short-lived, built once per REGISTER: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum BindingChange {
    /// Add or refresh a binding (matched by instance + reg-id, else by contact URI).
    Bind(Binding),
    /// Remove one binding (`expires=0`).
    Unbind {
        /// Canonical key of the contact URI.
        contact_key: String,
        /// `+sip.instance` of the contact.
        instance: Option<String>,
        /// `reg-id` of the contact.
        reg_id: Option<u32>,
        /// Call-ID of the request.
        call_id: String,
        /// CSeq of the request.
        cseq: u32,
    },
    /// Remove every binding (`Contact: *`).
    UnbindAll {
        /// Call-ID of the request.
        call_id: String,
        /// CSeq of the request.
        cseq: u32,
    },
}

/// Why [`Location::apply`] refused a request; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Same Call-ID with a CSeq not higher than the stored one (RFC 3261 §10.3 steps 6-7).
    #[error("cseq {got} not higher than {stored} for call-id")]
    OutOfOrder {
        /// Stored CSeq.
        stored: u32,
        /// Request CSeq.
        got: u32,
    },
    /// The AOR would have more bindings than allowed.
    #[error("more than {max} bindings")]
    TooManyBindings {
        /// The cap.
        max: usize,
    },
}

/// The bindings of every AOR.
#[derive(Debug, Default)]
pub struct Location {
    aors: DashMap<String, AorBindings>,
    dirty: Mutex<HashSet<String>>,
}

impl Location {
    /// An empty location service.
    pub fn new() -> Self {
        Self::default()
    }

    /// Unexpired bindings of `aor` at `now`.
    pub fn bindings(&self, aor: &str, now: i64) -> Vec<Binding> {
        self.aors
            .get(aor)
            .map(|e| {
                e.bindings
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks and applies `changes` to `aor` atomically; returns the unexpired bindings after.
    /// On error nothing changes.
    pub fn apply(
        &self,
        aor: &str,
        changes: &[BindingChange],
        max_bindings: usize,
        now: i64,
    ) -> Result<Vec<Binding>, ApplyError> {
        let mut entry = self.aors.entry(aor.to_owned()).or_default();
        // Work on a copy: all-or-nothing (§10.3 step 7 "commit ... or roll back").
        let mut next: Vec<Binding> = entry
            .bindings
            .iter()
            .filter(|b| b.expires_at > now)
            .cloned()
            .collect();
        for change in changes {
            match change {
                BindingChange::Bind(b) => {
                    match next
                        .iter()
                        .position(|e| e.same_as(b.instance.as_deref(), b.reg_id, &b.contact_key))
                    {
                        Some(i) => {
                            check_order(&next[i], &b.call_id, b.cseq)?;
                            next[i] = b.clone();
                        }
                        None => next.push(b.clone()),
                    }
                }
                BindingChange::Unbind {
                    contact_key,
                    instance,
                    reg_id,
                    call_id,
                    cseq,
                } => {
                    if let Some(i) = next
                        .iter()
                        .position(|e| e.same_as(instance.as_deref(), *reg_id, contact_key))
                    {
                        check_order(&next[i], call_id, *cseq)?;
                        next.remove(i);
                    }
                }
                BindingChange::UnbindAll { call_id, cseq } => {
                    for e in &next {
                        check_order(e, call_id, *cseq)?;
                    }
                    next.clear();
                }
            }
        }
        if next.len() > max_bindings {
            return Err(ApplyError::TooManyBindings { max: max_bindings });
        }
        entry.bindings = next.clone();
        drop(entry);
        if next.is_empty() {
            self.aors.remove_if(aor, |_, v| v.bindings.is_empty());
        }
        self.mark_dirty(aor);
        Ok(next)
    }

    /// Removes expired bindings and empty AORs; returns how many bindings were removed.
    pub fn purge_expired(&self, now: i64) -> usize {
        self.remove_where(|b| b.expires_at <= now)
    }

    /// Removes every binding registered over `flow` (RFC 5626 §7: a dead flow invalidates its
    /// bindings); returns how many were removed.
    pub fn remove_flow(&self, flow: FlowId) -> usize {
        if flow == 0 {
            return 0;
        }
        self.remove_where(|b| b.flow == flow)
    }

    /// Marks every binding registered over `flow` as [`FlowState::Closed`] (kept, but the
    /// registrar knows it can no longer reach the contact over that flow); returns how many.
    pub fn mark_flow_closed(&self, flow: FlowId) -> usize {
        if flow == 0 {
            return 0;
        }
        let mut marked = 0;
        for mut e in self.aors.iter_mut() {
            for b in e.bindings.iter_mut().filter(|b| b.flow == flow) {
                b.flow_state = FlowState::Closed;
                marked += 1;
            }
        }
        marked
    }

    /// Every unexpired binding with its AOR, for the registrations view.
    pub fn all(&self, now: i64) -> Vec<(String, Binding)> {
        let mut out = Vec::new();
        for e in self.aors.iter() {
            for b in e.bindings.iter().filter(|b| b.expires_at > now) {
                out.push((e.key().clone(), b.clone()));
            }
        }
        out.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.contact_key.cmp(&b.1.contact_key))
        });
        out
    }

    /// Force-unregisters within one AOR: removes its bindings for which `pred` holds; returns how many.
    pub fn remove_in(&self, aor: &str, pred: impl Fn(&Binding) -> bool) -> usize {
        let mut removed = 0;
        let mut now_empty = false;
        if let Some(mut v) = self.aors.get_mut(aor) {
            let before = v.bindings.len();
            v.bindings.retain(|b| !pred(b));
            removed = before - v.bindings.len();
            now_empty = v.bindings.is_empty();
        }
        if now_empty {
            self.aors.remove_if(aor, |_, v| v.bindings.is_empty());
        }
        if removed > 0 {
            self.mark_dirty(aor);
        }
        removed
    }

    /// Force-unregisters: removes the bindings for which `pred` holds (e.g. one device's), marking
    /// their AORs for persistence; returns how many were removed.
    pub fn remove_where(&self, pred: impl Fn(&Binding) -> bool) -> usize {
        let mut removed = 0;
        let mut changed = Vec::new();
        self.aors.retain(|aor, v| {
            let before = v.bindings.len();
            v.bindings.retain(|b| !pred(b));
            if v.bindings.len() != before {
                removed += before - v.bindings.len();
                changed.push(aor.clone());
            }
            !v.bindings.is_empty()
        });
        for aor in changed {
            self.mark_dirty(&aor);
        }
        removed
    }

    /// Puts restored bindings back (after a restart): expired ones are skipped, and since the
    /// flows they came over are gone their state becomes [`FlowState::Unknown`] and their flow 0.
    /// Not marked dirty: the store already holds them. Returns how many were restored.
    pub fn restore(
        &self,
        bindings: impl IntoIterator<Item = (String, Binding)>,
        now: i64,
    ) -> usize {
        let mut n = 0;
        for (aor, mut b) in bindings {
            if b.expires_at <= now {
                continue;
            }
            b.flow = 0;
            b.flow_state = FlowState::Unknown;
            let mut entry = self.aors.entry(aor).or_default();
            let key = b.key();
            entry.bindings.retain(|e| e.key() != key);
            entry.bindings.push(b);
            n += 1;
        }
        n
    }

    /// Every AOR that changed since the last call, with its current bindings (empty: all gone).
    pub fn take_dirty(&self) -> Vec<(String, Vec<Binding>)> {
        let aors: Vec<String> = {
            let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            d.drain().collect()
        };
        aors.into_iter()
            .map(|aor| {
                let bindings = self
                    .aors
                    .get(&aor)
                    .map(|e| e.bindings.clone())
                    .unwrap_or_default();
                (aor, bindings)
            })
            .collect()
    }

    /// Marks `aor` as changed, so the persister writes it again (e.g. after a failed write).
    pub fn mark_dirty(&self, aor: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(aor.to_owned());
    }

    /// Number of AORs waiting to be persisted.
    pub fn dirty_count(&self) -> usize {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Number of stored bindings (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.aors.iter().map(|e| e.bindings.len()).sum()
    }

    /// Whether no binding is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of AORs with at least one stored binding.
    pub fn aor_count(&self) -> usize {
        self.aors.len()
    }
}

/// RFC 3261 §10.3 step 6/7: with the same Call-ID the CSeq must be higher.
fn check_order(existing: &Binding, call_id: &str, cseq: u32) -> Result<(), ApplyError> {
    if existing.call_id == call_id && cseq <= existing.cseq {
        return Err(ApplyError::OutOfOrder {
            stored: existing.cseq,
            got: cseq,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(uri: &str, call_id: &str, cseq: u32, expires_at: i64) -> Binding {
        Binding {
            contact_uri: uri.into(),
            contact_key: uri.into(),
            contact_raw: format!("<{uri}>"),
            expires_at,
            call_id: call_id.into(),
            cseq,
            q: None,
            instance: None,
            reg_id: None,
            path: vec![],
            device: None,
            user: "u".into(),
            flow: 1,
            flow_state: FlowState::Open,
            transport: Transport::Tls,
            source: None,
            outbound: false,
            contact_params: vec![],
        }
    }

    #[test]
    fn bind_refresh_and_expire() {
        let loc = Location::new();
        loc.apply(
            "a@h",
            &[BindingChange::Bind(binding("sip:x", "c", 1, 100))],
            10,
            0,
        )
        .unwrap();
        assert_eq!(loc.bindings("a@h", 99).len(), 1);
        assert_eq!(loc.bindings("a@h", 100).len(), 0, "expired at expires_at");
        loc.apply(
            "a@h",
            &[BindingChange::Bind(binding("sip:x", "c", 2, 200))],
            10,
            50,
        )
        .unwrap();
        assert_eq!(loc.bindings("a@h", 150)[0].cseq, 2);
        assert_eq!(loc.len(), 1);
        assert_eq!(loc.purge_expired(199), 0);
        assert_eq!(loc.purge_expired(200), 1);
        assert!(loc.is_empty());
        assert_eq!(loc.aor_count(), 0);
    }

    #[test]
    fn out_of_order_cseq_changes_nothing() {
        let loc = Location::new();
        loc.apply(
            "a@h",
            &[BindingChange::Bind(binding("sip:x", "c", 5, 100))],
            10,
            0,
        )
        .unwrap();
        let err = loc
            .apply(
                "a@h",
                &[
                    BindingChange::Bind(binding("sip:y", "c", 5, 100)),
                    BindingChange::Bind(binding("sip:x", "c", 5, 300)),
                ],
                10,
                0,
            )
            .unwrap_err();
        assert_eq!(err, ApplyError::OutOfOrder { stored: 5, got: 5 });
        let now = loc.bindings("a@h", 0);
        assert_eq!(now.len(), 1, "sip:y not added: all-or-nothing");
        assert_eq!(now[0].expires_at, 100);
        // A different Call-ID may update regardless of CSeq.
        loc.apply(
            "a@h",
            &[BindingChange::Bind(binding("sip:x", "other", 1, 300))],
            10,
            0,
        )
        .unwrap();
        assert_eq!(loc.bindings("a@h", 0)[0].call_id, "other");
    }

    #[test]
    fn unbind_all_respects_cseq_and_cap_is_enforced() {
        let loc = Location::new();
        loc.apply(
            "a@h",
            &[
                BindingChange::Bind(binding("sip:x", "c", 5, 100)),
                BindingChange::Bind(binding("sip:y", "d", 1, 100)),
            ],
            10,
            0,
        )
        .unwrap();
        assert!(loc
            .apply(
                "a@h",
                &[BindingChange::UnbindAll {
                    call_id: "c".into(),
                    cseq: 4
                }],
                10,
                0
            )
            .is_err());
        assert_eq!(loc.bindings("a@h", 0).len(), 2);
        assert_eq!(
            loc.apply(
                "a@h",
                &[BindingChange::Bind(binding("sip:z", "e", 1, 100))],
                2,
                0
            ),
            Err(ApplyError::TooManyBindings { max: 2 })
        );
        assert!(loc
            .apply(
                "a@h",
                &[BindingChange::UnbindAll {
                    call_id: "c".into(),
                    cseq: 6
                }],
                10,
                0
            )
            .unwrap()
            .is_empty());
        assert_eq!(loc.aor_count(), 0);
    }

    #[test]
    fn instance_and_reg_id_identify_a_binding() {
        let loc = Location::new();
        let mut a = binding("sip:x", "c", 1, 100);
        a.instance = Some("<urn:uuid:1>".into());
        a.reg_id = Some(1);
        let mut b = binding("sip:moved", "c2", 1, 100);
        b.instance = a.instance.clone();
        b.reg_id = Some(1);
        loc.apply("a@h", &[BindingChange::Bind(a)], 10, 0).unwrap();
        let now = loc.apply("a@h", &[BindingChange::Bind(b)], 10, 0).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].contact_uri, "sip:moved");
    }

    #[test]
    fn remove_flow_drops_only_that_flow() {
        let loc = Location::new();
        let mut other = binding("sip:y", "d", 1, 100);
        other.flow = 2;
        loc.apply(
            "a@h",
            &[
                BindingChange::Bind(binding("sip:x", "c", 1, 100)),
                BindingChange::Bind(other),
            ],
            10,
            0,
        )
        .unwrap();
        assert_eq!(loc.mark_flow_closed(2), 1);
        assert_eq!(loc.bindings("a@h", 0)[1].flow_state, FlowState::Closed);
        assert_eq!(loc.remove_flow(1), 1);
        assert_eq!(loc.bindings("a@h", 0)[0].contact_uri, "sip:y");
        assert_eq!(loc.remove_flow(0), 0, "flow 0 is no connection");
    }

    #[test]
    fn changes_are_tracked_as_dirty_and_restore_marks_flows_unknown() {
        let loc = Location::new();
        loc.apply(
            "a@h",
            &[BindingChange::Bind(binding("sip:x", "c", 1, 100))],
            10,
            0,
        )
        .unwrap();
        loc.apply(
            "b@h",
            &[BindingChange::Bind(binding("sip:y", "c", 1, 50))],
            10,
            0,
        )
        .unwrap();
        let mut d = loc.take_dirty();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].1[0].contact_uri, "sip:x");
        assert!(loc.take_dirty().is_empty(), "taken once");
        assert_eq!(loc.purge_expired(60), 1);
        assert_eq!(loc.take_dirty(), vec![("b@h".to_string(), vec![])]);

        let restored = Location::new();
        let n = restored.restore(
            [
                ("a@h".to_string(), binding("sip:x", "c", 1, 100)),
                ("a@h".to_string(), binding("sip:old", "c", 1, 10)),
            ],
            20,
        );
        assert_eq!(n, 1, "expired binding skipped");
        let b = &restored.bindings("a@h", 20)[0];
        assert_eq!((b.flow, b.flow_state), (0, FlowState::Unknown));
        assert_eq!(restored.dirty_count(), 0);
    }
}
