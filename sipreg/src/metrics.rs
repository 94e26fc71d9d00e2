//! Prometheus `/metrics` (text exposition format 0.0.4): registrations, SIP responses, connection
//! limits, token validations by outcome, and process figures. Counters live where the work happens
//! (the registrar's `Stats`, [`TokenOutcomes`] here); this module only renders them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use dashmap::DashMap;
use sipreg_registrar::Registrar;

/// Token validations at the registrar, counted by outcome (`ok`, `expired`, `bad_signature`, …).
#[derive(Debug, Default)]
pub struct TokenOutcomes {
    counts: DashMap<&'static str, AtomicU64>,
}

impl TokenOutcomes {
    /// Counts one validation with this outcome label.
    pub fn count(&self, outcome: &'static str) {
        if let Some(c) = self.counts.get(outcome) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counts
            .entry(outcome)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .counts
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }
}

/// What `/metrics` reads.
pub struct Sources {
    /// The registrar (bindings, responses, limits).
    pub registrar: Arc<Registrar>,
    /// Token validation outcomes.
    pub tokens: Arc<TokenOutcomes>,
    /// Process start.
    pub started: Instant,
}

/// The `/metrics` route (no token: scrapers are not admins).
pub fn router(sources: Arc<Sources>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let body = render(&sources);
            std::future::ready(
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
            )
        }),
    )
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(v: u64) -> Vec<(String, u64)> {
    vec![(String::new(), v)]
}

/// Renders every metric.
pub fn render(s: &Sources) -> String {
    let mut out = String::with_capacity(4096);
    let st = s.registrar.stats.snapshot();
    metric(
        &mut out,
        "sipreg_bindings",
        "gauge",
        "Registered contact bindings.",
        &one(s.registrar.location.len() as u64),
    );
    metric(
        &mut out,
        "sipreg_aors",
        "gauge",
        "Addresses of record with at least one binding.",
        &one(s.registrar.location.aor_count() as u64),
    );
    metric(
        &mut out,
        "sipreg_registrations_total",
        "counter",
        "Successful REGISTER requests that changed bindings.",
        &one(st.registrations),
    );
    let classes: Vec<(String, u64)> = st
        .responses
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("{{class=\"{}xx\"}}", i + 1), *v))
        .collect();
    metric(
        &mut out,
        "sipreg_sip_responses_total",
        "counter",
        "SIP responses sent, by class.",
        &classes,
    );
    metric(
        &mut out,
        "sipreg_connections_open",
        "gauge",
        "SIP stream connections open.",
        &one(st.connections_open),
    );
    metric(
        &mut out,
        "sipreg_connections_accepted_total",
        "counter",
        "SIP stream connections accepted.",
        &one(st.connections_accepted),
    );
    metric(
        &mut out,
        "sipreg_tls_handshakes_in_flight",
        "gauge",
        "SIP TLS handshakes in progress.",
        &one(st.tls_handshakes_in_flight),
    );
    let limits = vec![
        (
            "{limit=\"total_connections\"}".to_string(),
            st.limit_total_connections,
        ),
        (
            "{limit=\"connections_per_ip\"}".to_string(),
            st.limit_connections_per_ip,
        ),
        (
            "{limit=\"tls_handshakes\"}".to_string(),
            st.limit_tls_handshakes,
        ),
        ("{limit=\"udp_workers\"}".to_string(), st.limit_udp_workers),
    ];
    metric(
        &mut out,
        "sipreg_limit_hits_total",
        "counter",
        "Connections or packets refused by a configured limit.",
        &limits,
    );
    metric(
        &mut out,
        "sipreg_sip_frame_errors_total",
        "counter",
        "Streams closed for unframeable bytes.",
        &one(st.frame_errors),
    );
    metric(
        &mut out,
        "sipreg_sip_timeouts_total",
        "counter",
        "Connections closed by header, idle or handshake timeouts.",
        &one(st.timeouts),
    );
    metric(
        &mut out,
        "sipreg_persist_failures_total",
        "counter",
        "Failed binding write-behind flushes.",
        &one(st.persist_failures),
    );
    let outcomes: Vec<(String, u64)> = s
        .tokens
        .snapshot()
        .into_iter()
        .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v))
        .collect();
    metric(
        &mut out,
        "sipreg_token_validations_total",
        "counter",
        "Bearer token validations at the registrar, by outcome.",
        &outcomes,
    );
    metric(
        &mut out,
        "process_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
        &one(s.started.elapsed().as_secs()),
    );
    if let Some(rss) = resident_bytes() {
        metric(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            &one(rss),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            &mut out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            &one(fds.count() as u64),
        );
    }
    out
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The outcome label for a validation error: its variant name in snake case.
pub fn outcome_label(e: &impl std::fmt::Debug) -> &'static str {
    let name = format!("{e:?}");
    let variant = name.split(['(', ' ', '{']).next().unwrap_or("");
    match variant {
        "Malformed" => "malformed",
        "TooLarge" => "too_large",
        "RefreshToken" => "refresh_token",
        "DuplicateMember" => "duplicate_member",
        "UnsupportedAlgorithm" => "unsupported_algorithm",
        "UnsupportedCritical" => "unsupported_critical",
        "KeyReference" => "key_reference",
        "WrongType" => "wrong_type",
        "UnknownKey" => "unknown_key",
        "BadSignature" => "bad_signature",
        "Expired" => "expired",
        "NotYetValid" => "not_yet_valid",
        "IssuedInFuture" => "issued_in_future",
        "UnknownUser" => "unknown_user",
        "WrongIssuer" => "wrong_issuer",
        "WrongAudience" => "wrong_audience",
        "MissingClaim" => "missing_claim",
        "Revoked" => "revoked",
        _ => "other",
    }
}
