//! Prometheus `/metrics` (text exposition format 0.0.4): registrations, SIP responses by listener
//! and code, challenges by dialect, TLS handshake failures by reason, connection limits, token
//! validations by outcome, tokens issued by grant, config file fetches, and process figures.
//! Counters live where the work happens (the registrar's `Stats`, the token service's and config
//! service's counters, [`TokenOutcomes`] here); this module only renders them, on the API port and,
//! with `[metrics] listen`, on a plain-HTTP port of its own.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use dashmap::DashMap;
use serde::Deserialize;
use sipreg_registrar::{Registrar, TlsFailure};
use sipreg_tftp_config::FetchStats;

use crate::config::ConfigError;

/// `[metrics]`: where `/metrics` is served besides the API port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `IP:PORT` of a plain-HTTP listener serving only `/metrics` (no token, no TLS), e.g.
    /// `127.0.0.1:9100`; unset: `/metrics` is on the API port only.
    pub listen: Option<String>,
}

impl MetricsSection {
    /// The listener address, checked.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(text) = &self.listen else {
            return Ok(None);
        };
        text.trim()
            .parse::<SocketAddr>()
            .map(Some)
            .map_err(|_| ConfigError::Range {
                key: "metrics.listen",
                value: format!("{text:?}"),
                rule: "an IP address and port, e.g. \"127.0.0.1:9100\" or \"[::1]:9100\"",
            })
    }
}

/// Failed HTTPS handshakes (API, token service, config HTTPS) by [`TlsFailure`] index. A process
/// global because every HTTPS server of the process counts here and there is one process per node.
static HTTPS_TLS_FAILURES: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

/// Counts a failed HTTPS handshake.
pub fn https_tls_failure(reason: TlsFailure) {
    HTTPS_TLS_FAILURES[reason as usize].fetch_add(1, Ordering::Relaxed);
}

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
    /// Tokens issued by grant and token requests refused, from the token service.
    pub grants: Arc<sipreg_tokensvc::metrics::Metrics>,
    /// Config file fetches by transport and result.
    pub fetches: Arc<FetchStats>,
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
    let observed = s.registrar.stats.observed();
    let by_code: Vec<(String, u64)> = observed
        .responses
        .iter()
        .map(|(l, code, v)| (format!("{{listener=\"{l}\",code=\"{code}\"}}"), *v))
        .collect();
    metric(
        &mut out,
        "sipreg_sip_responses_total",
        "counter",
        "SIP responses sent, by listener (oauth, mra, udp, tcp, tls) and status code (codes the registrar does not send are \"other\").",
        &by_code,
    );
    let classes: Vec<(String, u64)> = st
        .responses
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("{{class=\"{}xx\"}}", i + 1), *v))
        .collect();
    metric(
        &mut out,
        "sipreg_sip_responses_by_class_total",
        "counter",
        "SIP responses sent on all listeners, by class.",
        &classes,
    );
    let challenges: Vec<(String, u64)> = observed
        .challenges
        .iter()
        .map(|(d, v)| (format!("{{dialect=\"{d}\"}}"), *v))
        .collect();
    metric(
        &mut out,
        "sipreg_challenges_total",
        "counter",
        "401/407 challenges sent, by dialect (rfc8898, cucm, digest).",
        &challenges,
    );
    let mut tls: Vec<(String, u64)> = observed
        .tls_failures
        .iter()
        .map(|(l, r, v)| (format!("{{listener=\"{l}\",reason=\"{r}\"}}"), *v))
        .collect();
    for r in TlsFailure::ALL {
        tls.push((
            format!("{{listener=\"https\",reason=\"{}\"}}", r.label()),
            HTTPS_TLS_FAILURES[r as usize].load(Ordering::Relaxed),
        ));
    }
    metric(
        &mut out,
        "sipreg_tls_handshake_failures_total",
        "counter",
        "Failed TLS handshakes, by listener and reason (edge_not_registered: no CN/SAN names a registered edge).",
        &tls,
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
    let rejections: Vec<(String, u64)> = s
        .registrar
        .stats
        .register_rejections()
        .into_iter()
        .map(|(check, v)| (format!("{{check=\"{check}\"}}"), v))
        .collect();
    metric(
        &mut out,
        "sipreg_register_rejections_total",
        "counter",
        "REGISTER requests refused, by the check that failed.",
        &rejections,
    );
    let grants = s.grants.snapshot();
    let issued: Vec<(String, u64)> = grants
        .issued
        .iter()
        .map(|(g, v)| (format!("{{grant=\"{g}\"}}"), *v))
        .collect();
    metric(
        &mut out,
        "sipreg_tokens_issued_total",
        "counter",
        "Token responses issued by the token endpoint, by grant type.",
        &issued,
    );
    let refused: Vec<(String, u64)> = grants
        .failed
        .iter()
        .map(|(g, e, v)| (format!("{{grant=\"{g}\",error=\"{e}\"}}"), *v))
        .collect();
    metric(
        &mut out,
        "sipreg_token_requests_failed_total",
        "counter",
        "Token requests refused, by grant type (other: unknown or missing) and RFC 6749 error.",
        &refused,
    );
    let fetches: Vec<(String, u64)> = s
        .fetches
        .snapshot()
        .into_iter()
        .map(|(t, r, v)| (format!("{{transport=\"{t}\",result=\"{r}\"}}"), v))
        .collect();
    metric(
        &mut out,
        "sipreg_config_fetches_total",
        "counter",
        "Device config file fetches, by transport and result (denied: HTTPS token refused).",
        &fetches,
    );
    metric(
        &mut out,
        "sipreg_build_info",
        "gauge",
        "Always 1; the labels name the running build.",
        &[(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
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
    if let Some(vm) = statm_bytes(0) {
        metric(
            &mut out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size.",
            &one(vm),
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
    if let Some(max) = max_fds() {
        metric(
            &mut out,
            "process_max_fds",
            "gauge",
            "The open file descriptor limit (soft).",
            &one(max),
        );
    }
    if let Some(stat) = ProcStat::read() {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {:.2}",
            stat.cpu_ticks as f64 / CLOCK_TICKS
        );
        if let Some(start) = stat.start_unix() {
            let _ = writeln!(
                out,
                "# HELP process_start_time_seconds Start time of the process since the unix epoch.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start:.2}"
            );
        }
    }
    out
}

/// `USER_HZ`: the unit of /proc CPU times, 100 on every Linux architecture's user ABI
/// (reading `sysconf(_SC_CLK_TCK)` would need unsafe FFI, which this crate forbids).
const CLOCK_TICKS: f64 = 100.0;
/// Page size assumed for /proc/self/statm (4 KiB on x86-64 and the common aarch64 kernels).
const PAGE_SIZE: u64 = 4096;

fn resident_bytes() -> Option<u64> {
    statm_bytes(1)
}

/// Field `field` of /proc/self/statm (0 = size, 1 = resident), in bytes.
fn statm_bytes(field: usize) -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(field)?.parse().ok()?;
    Some(pages * PAGE_SIZE)
}

/// The soft "Max open files" limit from /proc/self/limits.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What /proc/self/stat tells about CPU time and start.
struct ProcStat {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// Start after boot, in clock ticks.
    start_ticks: u64,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        parse_stat(&stat)
    }

    /// The start as unix seconds: boot time (`btime` of /proc/stat) plus the start after boot.
    fn start_unix(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime as f64 + self.start_ticks as f64 / CLOCK_TICKS)
    }
}

/// Parses /proc/self/stat. The command name (field 2) may hold spaces and parentheses, so fields
/// are counted after its last `)`: utime, stime and starttime are fields 14, 15 and 22.
fn parse_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
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
        "IssuerUnavailable" => "issuer_unavailable",
        "MissingUser" => "missing_user",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000 200";
        let p = parse_stat(stat).unwrap();
        assert_eq!(p.cpu_ticks, 300);
        assert_eq!(p.start_ticks, 12345);
        let own = ProcStat::read().unwrap();
        assert!(own.start_unix().unwrap() > 1.6e9);
    }

    #[test]
    fn metrics_listen_must_be_an_address_and_port() {
        let ok = MetricsSection {
            listen: Some("127.0.0.1:9100".into()),
        };
        assert_eq!(
            ok.listen_addr().unwrap(),
            Some("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(MetricsSection::default().listen_addr().unwrap(), None);
        for bad in ["9100", "localhost:9100", "127.0.0.1"] {
            let e = MetricsSection {
                listen: Some(bad.into()),
            }
            .listen_addr()
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("metrics.listen") && e.contains("127.0.0.1:9100"),
                "{e}"
            );
        }
    }
}
