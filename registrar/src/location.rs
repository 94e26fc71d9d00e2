//! The location service: current bindings per address-of-record.
//!
//! One [`DashMap`] entry per AOR; [`Location::apply`] checks and commits a REGISTER's changes
//! under that entry's lock, so the RFC 3261 §10.3 step 6-7 ordering rules and the
//! all-or-nothing commit hold even when two connections register the same AOR at once.

use dashmap::DashMap;

/// Identifies the connection (flow, RFC 5626) a binding was registered over.
pub type FlowId = u64;

/// One contact bound to an AOR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The contact URI as sent.
    pub contact_uri: String,
    /// Canonical comparison key of the contact URI.
    pub contact_key: String,
    /// The whole Contact header value as sent.
    pub contact_raw: String,
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
    /// Authenticated user who registered it.
    pub user: String,
    /// The connection it came over.
    pub flow: FlowId,
}

impl Binding {
    /// Whether `other` is the same binding (RFC 5626 instance + reg-id, else contact URI).
    fn same_as(&self, instance: Option<&str>, reg_id: Option<u32>, contact_key: &str) -> bool {
        match (self.instance.as_deref(), self.reg_id, instance, reg_id) {
            (Some(a), Some(x), Some(b), Some(y)) => a == b && x == y,
            _ => self.contact_key == contact_key,
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
        Ok(next)
    }

    /// Removes expired bindings and empty AORs; returns how many bindings were removed.
    pub fn purge_expired(&self, now: i64) -> usize {
        let mut removed = 0;
        self.aors.retain(|_, v| {
            let before = v.bindings.len();
            v.bindings.retain(|b| b.expires_at > now);
            removed += before - v.bindings.len();
            !v.bindings.is_empty()
        });
        removed
    }

    /// Removes every binding registered over `flow` (RFC 5626 §7: a dead flow invalidates its
    /// bindings); returns how many were removed.
    pub fn remove_flow(&self, flow: FlowId) -> usize {
        let mut removed = 0;
        self.aors.retain(|_, v| {
            let before = v.bindings.len();
            v.bindings.retain(|b| b.flow != flow);
            removed += before - v.bindings.len();
            !v.bindings.is_empty()
        });
        removed
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
        assert_eq!(loc.remove_flow(1), 1);
        assert_eq!(loc.bindings("a@h", 0)[0].contact_uri, "sip:y");
    }
}
