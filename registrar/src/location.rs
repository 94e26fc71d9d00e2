//! The location service: current bindings per address-of-record.
//!
//! One [`DashMap`] entry per AOR; [`Location::apply`] checks and commits a REGISTER's changes
//! under that entry's lock, so the RFC 3261 §10.3 step 6-7 ordering rules and the
//! all-or-nothing commit hold even when two connections register the same AOR at once. Every
//! AOR that changes is remembered as dirty until the persister ([`crate::persist`]) takes it;
//! an AOR that appeared and went again between two takes, never written, is not written at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use dashmap::mapref::entry::Entry;
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
///
/// Bindings are held [`Packed`]: every string of a binding in one buffer, each stored once
/// (1,000,000 bindings must fit in well under 1 GiB, BENCHMARKS.md); the API hands out and
/// takes plain [`Binding`]s.
#[derive(Debug)]
pub struct Location {
    // A boxed slice per AOR rather than a Vec: the map has about twice as many slots as AORs,
    // so every byte of the slot counts twice; the set is rebuilt on each change anyway.
    aors: DashMap<Box<str>, Box<[Packed]>>,
    dirty: DirtySet,
    // No binding expires before this (unix seconds; it may be earlier than the truth, never
    // later), so the sweeper skips its visit of every AOR until then: with a million bindings
    // of an hour's lifetime, most seconds have nothing to purge.
    next_expiry: AtomicI64,
    // The AORs registered over each connection, so a closing connection visits only its own
    // AORs instead of scanning every binding (which made a registration storm quadratic).
    flows: DashMap<FlowId, FlowAors>,
}

/// Shards of the AOR and flow maps (a power of two). DashMap's default is 4 × the cores, i.e.
/// 8 on a 2-core machine: a REGISTER on one worker then found its shard locked by the other
/// worker (or by the persister reading dirty AORs) about one time in eight, and when the holder
/// had just been preempted the waiter spun, `sched_yield`ed and parked for a whole time slice
/// of the kernel. Paced at 15,000 REGISTER/s that was ~180–280 `sched_yield`s a second, 95 % of
/// them in [`Location::apply_then`]; with 512 shards ~12 a second. A shard costs ~130 bytes.
const MAP_SHARDS: usize = 512;

/// Shards of the dirty set: every binding change marks its AOR (with its AOR entry locked), so
/// one lock for all of them would serialise every REGISTER on every worker; as for
/// [`MAP_SHARDS`], few shards mean a preempted holder stalls other workers.
const DIRTY_SHARDS: usize = 128;

/// One shard of the [`DirtySet`]: AOR → whether the store may hold rows of it.
type DirtyShard = HashMap<Box<str>, bool>;

/// The AORs changed since the persister last took them, each with whether the store may hold
/// rows of it. `false` only for an AOR that had no binding and was clean when it got its first
/// one: if it empties again before the next take (a storm device that registers and leaves
/// within one `persist_interval`), there is nothing to write — no insert and no delete.
#[derive(Debug)]
struct DirtySet {
    shards: Box<[Mutex<DirtyShard>]>,
}

impl Default for DirtySet {
    fn default() -> Self {
        DirtySet {
            shards: (0..DIRTY_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl DirtySet {
    fn shard(&self, hash: usize) -> std::sync::MutexGuard<'_, DirtyShard> {
        self.shards[hash % DIRTY_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `aor` dirty. When it is dirty already its flag stays: the first change since the
    /// last take saw what the store holds.
    fn mark(&self, hash: usize, aor: &str, maybe_stored: bool) {
        let mut d = self.shard(hash);
        // Most REGISTERs refresh an AOR already waiting: no key allocation then.
        if !d.contains_key(aor) {
            d.insert(Box::from(aor), maybe_stored);
        }
    }

    /// Marks `aor` dirty with rows possibly in the store, whatever was known before.
    fn mark_stored(&self, hash: usize, aor: &str) {
        let mut d = self.shard(hash);
        match d.get_mut(aor) {
            Some(m) => *m = true,
            None => {
                d.insert(Box::from(aor), true);
            }
        }
    }
}

/// Most AORs remembered per flow; an edge connection carrying more falls back to a full scan
/// when it closes, which is rare and bounded.
const FLOW_INDEX_CAP: usize = 1024;

/// The AORs that registered over one flow (possibly stale: a binding may have moved since).
#[derive(Debug, Default)]
struct FlowAors {
    aors: Vec<Box<str>>,
    overflow: bool,
}

/// Where one string of a [`Packed`] binding lies in its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

// Indexes of the fixed strings of a packed binding.
const RAW: usize = 0;
const URI: usize = 1;
const KEY: usize = 2;
const CALL_ID: usize = 3;
const Q: usize = 4;
const INSTANCE: usize = 5;
const DEVICE: usize = 6;
const USER: usize = 7;
const FIXED: usize = 8;

// Presence bits of the optional strings (an empty span alone cannot tell None from "").
const HAS_Q: u8 = 1;
const HAS_INSTANCE: u8 = 2;
const HAS_DEVICE: u8 = 4;

/// A binding as the location service holds it. All its strings live in one buffer and each is
/// stored once: the contact URI, its key, the instance, `q`, the device name and the contact
/// parameters are nearly always substrings of the raw Contact value, so they cost only a span.
#[derive(Debug, Clone)]
struct Packed {
    text: Box<str>,
    spans: [Span; FIXED],
    /// The contact parameters (the first `n_params`), then the Path vector.
    extra: Box<[Span]>,
    n_params: u32,
    present: u8,
    flow_state: FlowState,
    transport: Transport,
    outbound: bool,
    cseq: u32,
    reg_id: Option<u32>,
    expires_at: i64,
    flow: FlowId,
    source: Option<SocketAddr>,
}

/// Builds a packed binding's text, reusing an equal substring already in it.
struct Packer {
    text: String,
}

impl Packer {
    fn put(&mut self, s: &str) -> Span {
        if s.is_empty() {
            return Span::default();
        }
        let start = match self.text.find(s) {
            Some(i) => i,
            None => {
                let i = self.text.len();
                self.text.push_str(s);
                i
            }
        };
        Span {
            start: to_u32(start),
            end: to_u32(start + s.len()),
        }
    }
}

/// The strings come from one SIP message, bounded by the framer far below `u32::MAX`;
/// saturating keeps this total anyway (a span past the end reads as "").
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What decides whether two bindings are the same and whether a change is in order.
#[derive(Clone, Copy)]
struct Ident<'a> {
    instance: Option<&'a str>,
    reg_id: Option<u32>,
    key: &'a str,
    call_id: &'a str,
    cseq: u32,
}

impl<'a> Ident<'a> {
    fn of(b: &'a Binding) -> Self {
        Ident {
            instance: b.instance.as_deref(),
            reg_id: b.reg_id,
            key: &b.contact_key,
            call_id: &b.call_id,
            cseq: b.cseq,
        }
    }

    /// Whether this is the binding `other` names (RFC 5626 instance + reg-id, else the
    /// contact URI).
    fn same_as(&self, other: &Ident<'_>) -> bool {
        match (self.instance, self.reg_id, other.instance, other.reg_id) {
            (Some(a), Some(x), Some(b), Some(y)) => a == b && x == y,
            _ => self.key == other.key,
        }
    }
}

impl Packed {
    fn pack(b: &Binding) -> Self {
        let upper = b.contact_raw.len()
            + b.contact_uri.len()
            + b.contact_key.len()
            + b.call_id.len()
            + b.q.as_ref().map_or(0, String::len)
            + b.instance.as_ref().map_or(0, String::len)
            + b.device.as_ref().map_or(0, String::len)
            + b.user.len()
            + b.contact_params
                .iter()
                .chain(&b.path)
                .map(String::len)
                .sum::<usize>();
        let mut p = Packer {
            text: String::with_capacity(upper),
        };
        let mut spans = [Span::default(); FIXED];
        // The raw value first: most of the others are found inside it.
        spans[RAW] = p.put(&b.contact_raw);
        spans[URI] = p.put(&b.contact_uri);
        spans[KEY] = p.put(&b.contact_key);
        spans[CALL_ID] = p.put(&b.call_id);
        let mut present = 0;
        if let Some(q) = &b.q {
            present |= HAS_Q;
            spans[Q] = p.put(q);
        }
        if let Some(i) = &b.instance {
            present |= HAS_INSTANCE;
            spans[INSTANCE] = p.put(i);
        }
        if let Some(d) = &b.device {
            present |= HAS_DEVICE;
            spans[DEVICE] = p.put(d);
        }
        spans[USER] = p.put(&b.user);
        let extra: Box<[Span]> = b
            .contact_params
            .iter()
            .chain(&b.path)
            .map(|s| p.put(s))
            .collect();
        Packed {
            // Copied into an exact-size buffer: shrinking in place would leave small free
            // fragments behind every binding.
            text: Box::from(p.text.as_str()),
            spans,
            extra,
            n_params: to_u32(b.contact_params.len()),
            present,
            flow_state: b.flow_state,
            transport: b.transport,
            outbound: b.outbound,
            cseq: b.cseq,
            reg_id: b.reg_id,
            expires_at: b.expires_at,
            flow: b.flow,
            source: b.source,
        }
    }

    fn span(&self, s: Span) -> &str {
        self.text
            .get(s.start as usize..s.end as usize)
            .unwrap_or("")
    }

    fn get(&self, i: usize) -> &str {
        self.span(self.spans[i])
    }

    fn opt(&self, bit: u8, i: usize) -> Option<&str> {
        (self.present & bit != 0).then(|| self.get(i))
    }

    fn ident(&self) -> Ident<'_> {
        Ident {
            instance: self.opt(HAS_INSTANCE, INSTANCE),
            reg_id: self.reg_id,
            key: self.get(KEY),
            call_id: self.get(CALL_ID),
            cseq: self.cseq,
        }
    }

    /// Same as [`Binding::key`].
    fn key(&self) -> std::borrow::Cow<'_, str> {
        match (self.opt(HAS_INSTANCE, INSTANCE), self.reg_id) {
            (Some(i), Some(r)) => format!("{i};reg-id={r}").into(),
            _ => self.get(KEY).into(),
        }
    }

    fn unpack(&self) -> Binding {
        let n = (self.n_params as usize).min(self.extra.len());
        let (params, path) = self.extra.split_at(n);
        Binding {
            contact_uri: self.get(URI).to_owned(),
            contact_key: self.get(KEY).to_owned(),
            contact_raw: self.get(RAW).to_owned(),
            contact_params: params.iter().map(|s| self.span(*s).to_owned()).collect(),
            expires_at: self.expires_at,
            call_id: self.get(CALL_ID).to_owned(),
            cseq: self.cseq,
            q: self.opt(HAS_Q, Q).map(str::to_owned),
            instance: self.opt(HAS_INSTANCE, INSTANCE).map(str::to_owned),
            reg_id: self.reg_id,
            path: path.iter().map(|s| self.span(*s).to_owned()).collect(),
            device: self.opt(HAS_DEVICE, DEVICE).map(str::to_owned),
            user: self.get(USER).to_owned(),
            flow: self.flow,
            flow_state: self.flow_state,
            transport: self.transport,
            source: self.source,
            outbound: self.outbound,
        }
    }
}

/// A stored binding, borrowed while [`Location::visit`] or [`Location::apply_then`] shows it:
/// the fields a 200 OK lists, read straight from the packed form.
pub struct BindingView<'a> {
    packed: &'a Packed,
}

impl<'a> BindingView<'a> {
    /// [`Binding::contact_uri`].
    pub fn contact_uri(&self) -> &'a str {
        self.packed.get(URI)
    }

    /// [`Binding::contact_params`], in order.
    pub fn contact_params(&self) -> impl Iterator<Item = &'a str> + 'a {
        let p = self.packed;
        let n = (p.n_params as usize).min(p.extra.len());
        p.extra[..n].iter().map(move |s| p.span(*s))
    }

    /// Whether [`Binding::contact_params`] is non-empty.
    pub fn has_contact_params(&self) -> bool {
        self.packed.n_params > 0 && !self.packed.extra.is_empty()
    }

    /// [`Binding::q`].
    pub fn q(&self) -> Option<&'a str> {
        self.packed.opt(HAS_Q, Q)
    }

    /// [`Binding::instance`].
    pub fn instance(&self) -> Option<&'a str> {
        self.packed.opt(HAS_INSTANCE, INSTANCE)
    }

    /// [`Binding::reg_id`].
    pub fn reg_id(&self) -> Option<u32> {
        self.packed.reg_id
    }

    /// [`Binding::expires_at`].
    pub fn expires_at(&self) -> i64 {
        self.packed.expires_at
    }

    /// The binding as an owned [`Binding`].
    pub fn to_binding(&self) -> Binding {
        self.packed.unpack()
    }
}

/// One binding of the set [`apply_in`] is building: an unchanged stored one, or a new one.
enum Slot<'a> {
    Kept(usize),
    New(&'a Binding),
}

fn ident<'a>(stored: &'a [Packed], s: &Slot<'a>) -> Ident<'a> {
    match s {
        // Kept indexes come from enumerating `stored`.
        Slot::Kept(i) => stored[*i].ident(),
        Slot::New(b) => Ident::of(b),
    }
}

/// Checks `changes` against one AOR's `stored` bindings and, only when every check passes,
/// replaces them (§10.3 step 7 "commit ... or roll back"). Unchanged bindings are moved, not
/// copied.
fn apply_in(
    stored: &mut Box<[Packed]>,
    changes: &[BindingChange],
    max_bindings: usize,
    now: i64,
) -> Result<(), ApplyError> {
    let mut next: Vec<Slot<'_>> = stored
        .iter()
        .enumerate()
        .filter(|(_, p)| p.expires_at > now)
        .map(|(i, _)| Slot::Kept(i))
        .collect();
    for change in changes {
        match change {
            BindingChange::Bind(b) => {
                let id = Ident::of(b);
                match next.iter().position(|s| ident(stored, s).same_as(&id)) {
                    Some(i) => {
                        check_order(ident(stored, &next[i]), &b.call_id, b.cseq)?;
                        next[i] = Slot::New(b);
                    }
                    None => next.push(Slot::New(b)),
                }
            }
            BindingChange::Unbind {
                contact_key,
                instance,
                reg_id,
                call_id,
                cseq,
            } => {
                let id = Ident {
                    instance: instance.as_deref(),
                    reg_id: *reg_id,
                    key: contact_key,
                    call_id,
                    cseq: *cseq,
                };
                if let Some(i) = next.iter().position(|s| ident(stored, s).same_as(&id)) {
                    check_order(ident(stored, &next[i]), call_id, *cseq)?;
                    next.remove(i);
                }
            }
            BindingChange::UnbindAll { call_id, cseq } => {
                for s in &next {
                    check_order(ident(stored, s), call_id, *cseq)?;
                }
                next.clear();
            }
        }
    }
    if next.len() > max_bindings {
        return Err(ApplyError::TooManyBindings { max: max_bindings });
    }
    let mut old: Vec<Option<Packed>> = std::mem::take(stored)
        .into_vec()
        .into_iter()
        .map(Some)
        .collect();
    *stored = next
        .iter()
        .filter_map(|s| match s {
            // Each stored index appears at most once in `next`, so the take always succeeds.
            Slot::Kept(i) => old.get_mut(*i).and_then(Option::take),
            Slot::New(b) => Some(Packed::pack(b)),
        })
        .collect();
    Ok(())
}

impl Default for Location {
    fn default() -> Self {
        Location {
            aors: DashMap::with_shard_amount(MAP_SHARDS),
            dirty: DirtySet::default(),
            next_expiry: AtomicI64::default(),
            flows: DashMap::with_shard_amount(MAP_SHARDS),
        }
    }
}

impl Location {
    /// An empty location service.
    pub fn new() -> Self {
        Self::default()
    }

    /// Unexpired bindings of `aor` at `now`.
    pub fn bindings(&self, aor: &str, now: i64) -> Vec<Binding> {
        let mut out = Vec::new();
        self.visit(aor, now, |b| out.push(b.packed.unpack()));
        out
    }

    /// Calls `f` with each unexpired binding of `aor` at `now`, borrowed: nothing is copied
    /// out (the entry stays locked meanwhile, so `f` must not call back into the service).
    pub fn visit(&self, aor: &str, now: i64, mut f: impl FnMut(BindingView<'_>)) {
        if let Some(e) = self.aors.get(aor) {
            for p in e.iter().filter(|b| b.expires_at > now) {
                f(BindingView { packed: p });
            }
        }
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
        let mut after = Vec::new();
        self.apply_then(aor, changes, max_bindings, now, |b| {
            after.push(b.packed.unpack())
        })?;
        Ok(after)
    }

    /// [`apply`](Self::apply), visiting the bindings after the change with `f` instead of
    /// copying each out as an owned [`Binding`] (about ten strings each; the 200 OK needs only
    /// its Contact values). `f` runs only on success, with the entry still locked, so it must
    /// not call back into the service.
    pub fn apply_then(
        &self,
        aor: &str,
        changes: &[BindingChange],
        max_bindings: usize,
        now: i64,
        mut f: impl FnMut(BindingView<'_>),
    ) -> Result<(), ApplyError> {
        let hash = self.aors.hash_usize(&aor);
        // The distinct flows of the bindings after the change, indexed once the entry is
        // unlocked (nearly always one).
        let mut flows: Vec<FlowId> = Vec::new();
        // `created`: the AOR had no binding. It is marked dirty while its entry is still locked,
        // so a persister reading the entry sees the change and its mark together (`take_dirty`).
        let mut run = |e: &mut Box<[Packed]>, created: bool| {
            let r = apply_in(e, changes, max_bindings, now);
            if r.is_ok() {
                self.dirty.mark(hash, aor, !created);
                for p in e.iter() {
                    if p.flow != 0 && !flows.contains(&p.flow) {
                        flows.push(p.flow);
                    }
                    f(BindingView { packed: p });
                }
            }
            (r, e.is_empty())
        };
        // The common case (a refresh) finds the AOR without allocating its key; the entry
        // API, which locks the shard for the insert, settles a race between two first
        // REGISTERs of one AOR.
        let (result, now_empty) = match self.aors.get_mut(aor) {
            Some(mut e) => run(&mut e, false),
            None => match self.aors.entry(Box::from(aor)) {
                Entry::Occupied(mut e) => run(e.get_mut(), false),
                Entry::Vacant(e) => run(&mut e.insert(Box::default()), true),
            },
        };
        if now_empty {
            self.aors.remove_if(aor, |_, v| v.is_empty());
        }
        result?;
        for c in changes {
            if let BindingChange::Bind(b) = c {
                self.expires_by(b.expires_at);
            }
        }
        self.index_flows(aor, &flows);
        Ok(())
    }

    /// Remembers that `aor` has bindings over `flows` (distinct, none 0).
    fn index_flows(&self, aor: &str, flows: &[FlowId]) {
        for &flow in flows {
            if let Some(e) = self.flows.get(&flow) {
                if e.overflow || e.aors.iter().any(|a| &**a == aor) {
                    continue;
                }
            }
            let mut e = self.flows.entry(flow).or_default();
            if e.overflow || e.aors.iter().any(|a| &**a == aor) {
                continue;
            }
            if e.aors.len() >= FLOW_INDEX_CAP {
                e.overflow = true;
                e.aors = Vec::new();
            } else {
                e.aors.push(Box::from(aor));
            }
        }
    }

    /// Forgets `flow` and returns the AORs registered over it; `None` when it carried too many
    /// to remember (then every AOR must be visited).
    fn take_flow(&self, flow: FlowId) -> Option<Vec<Box<str>>> {
        match self.flows.remove(&flow) {
            Some((_, e)) if e.overflow => None,
            Some((_, e)) => Some(e.aors),
            None => Some(Vec::new()),
        }
    }

    /// Removes expired bindings and empty AORs; returns how many bindings were removed.
    pub fn purge_expired(&self, now: i64) -> usize {
        if now < self.next_expiry.load(Ordering::Relaxed) {
            return 0;
        }
        // Reset before the visit: a binding added behind it lowers the bound itself (after its
        // commit, see `apply`), one the visit sees is counted in `earliest`.
        self.next_expiry.store(i64::MAX, Ordering::Relaxed);
        let earliest = std::cell::Cell::new(i64::MAX);
        let removed = self.remove_packed(|b| {
            let expired = b.expires_at <= now;
            if !expired {
                earliest.set(earliest.get().min(b.expires_at));
            }
            expired
        });
        self.next_expiry
            .fetch_min(earliest.get(), Ordering::Relaxed);
        removed
    }

    /// Lowers the sweeper's bound to `expires_at`; call after the binding is visible.
    fn expires_by(&self, expires_at: i64) {
        self.next_expiry.fetch_min(expires_at, Ordering::Relaxed);
    }

    /// Removes every binding registered over `flow` (RFC 5626 §7: a dead flow invalidates its
    /// bindings); returns how many were removed.
    pub fn remove_flow(&self, flow: FlowId) -> usize {
        if flow == 0 {
            return 0;
        }
        let Some(aors) = self.take_flow(flow) else {
            return self.remove_packed(|b| b.flow == flow);
        };
        aors.iter()
            .map(|aor| self.remove_in_packed(aor, |b| b.flow == flow))
            .sum()
    }

    /// Marks every binding registered over `flow` as [`FlowState::Closed`] (kept, but the
    /// registrar knows it can no longer reach the contact over that flow); returns how many.
    pub fn mark_flow_closed(&self, flow: FlowId) -> usize {
        if flow == 0 {
            return 0;
        }
        let mark = |v: &mut Box<[Packed]>| {
            let mut n = 0;
            for b in v.iter_mut().filter(|b| b.flow == flow) {
                b.flow_state = FlowState::Closed;
                n += 1;
            }
            n
        };
        match self.take_flow(flow) {
            Some(aors) => aors
                .iter()
                .filter_map(|aor| self.aors.get_mut(&**aor).map(|mut v| mark(&mut v)))
                .sum(),
            None => self.aors.iter_mut().map(|mut e| mark(&mut e)).sum(),
        }
    }

    /// Every unexpired binding with its AOR, for the registrations view.
    pub fn all(&self, now: i64) -> Vec<(String, Binding)> {
        let mut out = Vec::new();
        for e in self.aors.iter() {
            for b in e.iter().filter(|b| b.expires_at > now) {
                out.push((e.key().to_string(), b.unpack()));
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
        self.remove_in_packed(aor, |b| pred(&b.unpack()))
    }

    /// [`Location::remove_in`] on the packed form: drops the AOR when it empties and marks it
    /// dirty when anything went.
    fn remove_in_packed(&self, aor: &str, pred: impl Fn(&Packed) -> bool) -> usize {
        let mut removed = 0;
        let mut now_empty = false;
        if let Some(mut v) = self.aors.get_mut(aor) {
            if v.iter().any(&pred) {
                let before = v.len();
                let kept: Vec<Packed> = std::mem::take(&mut *v)
                    .into_vec()
                    .into_iter()
                    .filter(|b| !pred(b))
                    .collect();
                *v = kept.into_boxed_slice();
                removed = before - v.len();
                now_empty = v.is_empty();
            }
        }
        if now_empty {
            self.aors.remove_if(aor, |_, v| v.is_empty());
        }
        if removed > 0 {
            self.dirty.mark(self.aors.hash_usize(&aor), aor, true);
        }
        removed
    }

    /// Force-unregisters: removes the bindings for which `pred` holds (e.g. one device's), marking
    /// their AORs for persistence; returns how many were removed.
    pub fn remove_where(&self, pred: impl Fn(&Binding) -> bool) -> usize {
        // An administrator's rare request: unpacking each binding to test it is affordable.
        self.remove_packed(|b| pred(&b.unpack()))
    }

    /// [`Location::remove_where`] on the packed form, for the frequent internal sweeps.
    fn remove_packed(&self, pred: impl Fn(&Packed) -> bool) -> usize {
        let mut removed = 0;
        let mut changed = Vec::new();
        self.aors.retain(|aor, v| {
            if v.iter().any(&pred) {
                let before = v.len();
                let kept: Vec<Packed> = std::mem::take(v)
                    .into_vec()
                    .into_iter()
                    .filter(|b| !pred(b))
                    .collect();
                *v = kept.into_boxed_slice();
                removed += before - v.len();
                changed.push(aor.clone());
            }
            !v.is_empty()
        });
        for aor in changed {
            self.dirty.mark(self.aors.hash_usize(&&*aor), &aor, true);
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
            let mut entry = self.aors.entry(aor.into_boxed_str()).or_default();
            let key = b.key();
            let mut v = std::mem::take(&mut *entry).into_vec();
            v.retain(|e| e.key() != key);
            v.push(Packed::pack(&b));
            *entry = v.into_boxed_slice();
            drop(entry);
            self.expires_by(b.expires_at);
            n += 1;
        }
        n
    }

    /// Every AOR that changed since the last call, with its current bindings (empty: all gone
    /// from the store too). An AOR that gained and lost all its bindings since the last call,
    /// with none in the store before, is left out: there is nothing to write.
    pub fn take_dirty(&self) -> Vec<(String, Vec<Binding>)> {
        let mut out = Vec::new();
        for shard in self.dirty.shards.iter() {
            // Taken whole rather than drained, so the table (one slot per AOR after a
            // registration storm) is freed instead of kept at its largest size.
            let aors = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            for (aor, maybe_stored) in aors {
                let bindings: Vec<Binding> = match self.aors.get(&*aor) {
                    Some(e) => {
                        let bindings: Vec<Binding> = e.iter().map(Packed::unpack).collect();
                        // A first binding made after the take above was marked as not in the
                        // store, but the caller is about to write it: correct the mark while
                        // the entry is still locked, so the mark and the read cannot cross.
                        if !bindings.is_empty() {
                            let hash = self.aors.hash_usize(&&*aor);
                            if let Some(m) = self.dirty.shard(hash).get_mut(&aor) {
                                *m = true;
                            }
                        }
                        bindings
                    }
                    None => Vec::new(),
                };
                if bindings.is_empty() && !maybe_stored {
                    continue;
                }
                out.push((String::from(aor), bindings));
            }
        }
        out
    }

    /// Marks `aor` as changed with rows possibly in the store, so the persister writes it again
    /// (e.g. after a failed write).
    pub fn mark_dirty(&self, aor: &str) {
        self.dirty.mark_stored(self.aors.hash_usize(&aor), aor);
    }

    /// Number of AORs waiting to be persisted.
    pub fn dirty_count(&self) -> usize {
        self.dirty
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Number of stored bindings (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.aors.iter().map(|e| e.len()).sum()
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
fn check_order(existing: Ident<'_>, call_id: &str, cseq: u32) -> Result<(), ApplyError> {
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
        // The sweeper skips until the earliest expiry, yet sees a binding that expires sooner.
        loc.apply(
            "b@h",
            &[BindingChange::Bind(binding("sip:b", "c", 1, 400))],
            10,
            0,
        )
        .unwrap();
        assert_eq!(loc.purge_expired(300), 0);
        loc.apply(
            "c@h",
            &[BindingChange::Bind(binding("sip:c", "c", 1, 350))],
            10,
            0,
        )
        .unwrap();
        assert_eq!(loc.purge_expired(360), 1);
        assert_eq!(loc.bindings("c@h", 0), vec![]);
        assert_eq!(loc.purge_expired(400), 1);
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
    fn packing_keeps_every_field() {
        let mut b = binding("sip:x@h;transport=tls", "c", 1, 100);
        b.contact_raw =
            "<sip:x@h;transport=tls>;q=0.5;+sip.instance=\"<urn:uuid:1>\";reg-id=1".into();
        b.contact_key = "sip:x@h;transport=tls".into();
        b.contact_params = vec![
            "q=0.5".into(),
            "+sip.instance=\"<urn:uuid:1>\"".into(),
            "reg-id=1".into(),
        ];
        b.q = Some("0.5".into());
        b.instance = Some("<urn:uuid:1>".into());
        b.reg_id = Some(1);
        b.path = vec!["<sip:edge;lr;ob>".into(), "<sip:other;lr>".into()];
        b.device = Some("".into());
        b.user = "alice".into();
        b.source = Some("10.0.0.1:5061".parse().unwrap());
        b.outbound = true;
        let p = Packed::pack(&b);
        assert_eq!(p.unpack(), b);
        assert_eq!(p.key(), b.key());
        // Contact URI, key, q, instance, parameters (and Call-ID "c") are found in the raw value.
        assert_eq!(p.text.len(), b.contact_raw.len() + "alice".len() + 30);
        let mut none = binding("sip:y", "d", 2, 100);
        none.device = None;
        assert_eq!(Packed::pack(&none).unpack(), none);
    }

    #[test]
    fn closing_a_flow_visits_its_own_aors_even_past_the_index_cap() {
        let loc = Location::new();
        // Flow 5 is an edge carrying more AORs than the index keeps: the full-scan fallback.
        for i in 0..FLOW_INDEX_CAP + 3 {
            let mut b = binding(&format!("sip:e{i}"), "c", 1, 100);
            b.flow = 5;
            loc.apply(&format!("e{i}@h"), &[BindingChange::Bind(b)], 10, 0)
                .unwrap();
        }
        // Flow 6 registered one AOR, then the device moved that binding to flow 7.
        let mut b = binding("sip:m", "c", 1, 100);
        b.flow = 6;
        loc.apply("m@h", &[BindingChange::Bind(b.clone())], 10, 0)
            .unwrap();
        b.flow = 7;
        b.cseq = 2;
        loc.apply("m@h", &[BindingChange::Bind(b)], 10, 0).unwrap();
        assert_eq!(loc.mark_flow_closed(6), 0, "the binding left flow 6");
        assert_eq!(loc.mark_flow_closed(5), FLOW_INDEX_CAP + 3);
        assert_eq!(loc.remove_flow(7), 1);
        assert!(loc.bindings("m@h", 0).is_empty());
        assert_eq!(
            loc.bindings("e0@h", 0)[0].flow_state,
            FlowState::Closed,
            "the full scan marked them"
        );
        assert!(loc.flows.is_empty(), "closed flows are forgotten");

        let again = Location::new();
        for i in 0..FLOW_INDEX_CAP + 1 {
            let mut b = binding(&format!("sip:e{i}"), "c", 1, 100);
            b.flow = 5;
            again
                .apply(&format!("e{i}@h"), &[BindingChange::Bind(b)], 10, 0)
                .unwrap();
        }
        assert_eq!(again.remove_flow(5), FLOW_INDEX_CAP + 1);
        assert!(again.is_empty() && again.flows.is_empty());
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

    #[test]
    fn an_aor_that_came_and_went_between_flushes_is_not_written() {
        let loc = Location::new();
        let bind = |loc: &Location, cseq| {
            loc.apply(
                "a@h",
                &[BindingChange::Bind(binding("sip:x", "c", cseq, 100))],
                10,
                0,
            )
            .unwrap();
        };
        // A storm device: registers and leaves within one persist interval.
        bind(&loc, 1);
        assert_eq!(loc.remove_flow(1), 1);
        assert_eq!(loc.dirty_count(), 1);
        assert!(
            loc.take_dirty().is_empty(),
            "nothing stored, nothing to delete"
        );

        // Once written, the removal must reach the store.
        bind(&loc, 2);
        assert_eq!(loc.take_dirty().len(), 1);
        assert_eq!(loc.remove_flow(1), 1);
        bind(&loc, 3);
        assert_eq!(loc.remove_flow(1), 1);
        assert_eq!(loc.take_dirty(), vec![("a@h".to_string(), vec![])]);

        // A failed write marks the AOR as possibly stored again.
        bind(&loc, 4);
        assert_eq!(loc.remove_flow(1), 1);
        loc.mark_dirty("a@h");
        assert_eq!(loc.take_dirty(), vec![("a@h".to_string(), vec![])]);

        // Expired bindings of a restored AOR are in the store: their purge is written.
        let restored = Location::new();
        restored.restore([("a@h".to_string(), binding("sip:x", "c", 1, 100))], 0);
        assert_eq!(restored.purge_expired(200), 1);
        assert_eq!(restored.take_dirty(), vec![("a@h".to_string(), vec![])]);
    }
}
