//! Counting what happened: response codes, failures by kind, latencies (HdrHistogram,
//! microseconds) and the final one-line summary with the CPU both sides spent.
//!
//! A [`Stats`] holds one histogram of about 140 KB (1 µs..60 s at three significant digits), so
//! the scenarios keep one per persistent connection or one for a whole device run, never one
//! per simulated device (50,000 of them once took 7 GB and most of the merge time).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::cpu::CpuReport;

/// Highest latency the histogram tracks (µs); larger values are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Why a connection failed: the breakdown behind `conn_errors` in the RESULT line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnErrorKind {
    /// TCP connect: refused (RST to the SYN: nothing listening, or a full SYN queue without
    /// syncookies).
    ConnectRefused,
    /// TCP connect: no SYN-ACK within the connect time limit (a dropped SYN is retransmitted
    /// after 1 s, 3 s, 7 s …), or the kernel's own ETIMEDOUT.
    ConnectTimeout,
    /// TCP bind/connect: EADDRINUSE or EADDRNOTAVAIL (no free local port for the 4-tuple).
    AddrInUse,
    /// TCP connect: reset or aborted.
    ConnectReset,
    /// TCP connect: any other error.
    Connect,
    /// TLS handshake did not finish within the time limit (the server accepted late or not at
    /// all: a connection dropped from a full accept queue looks like this).
    TlsTimeout,
    /// TLS handshake: the server reset or closed the connection (e.g. a connection cap).
    TlsReset,
    /// TLS handshake: a protocol or certificate error.
    Tls,
    /// The server closed the connection before answering.
    Closed,
    /// The connection was reset after the handshake.
    Reset,
    /// Any other error reading or writing after the handshake.
    Read,
    /// The server sent something that is not a SIP response.
    BadResponse,
    /// Idle-hold: a keep-alive ping got no pong in time.
    KeepaliveTimeout,
    /// A client task panicked or was cancelled.
    Task,
}

impl ConnErrorKind {
    /// Every kind, in the order of the breakdown.
    pub const ALL: [ConnErrorKind; 14] = [
        ConnErrorKind::ConnectRefused,
        ConnErrorKind::ConnectTimeout,
        ConnErrorKind::AddrInUse,
        ConnErrorKind::ConnectReset,
        ConnErrorKind::Connect,
        ConnErrorKind::TlsTimeout,
        ConnErrorKind::TlsReset,
        ConnErrorKind::Tls,
        ConnErrorKind::Closed,
        ConnErrorKind::Reset,
        ConnErrorKind::Read,
        ConnErrorKind::BadResponse,
        ConnErrorKind::KeepaliveTimeout,
        ConnErrorKind::Task,
    ];

    /// The name in the RESULT line.
    pub fn name(self) -> &'static str {
        match self {
            ConnErrorKind::ConnectRefused => "connect_refused",
            ConnErrorKind::ConnectTimeout => "connect_timeout",
            ConnErrorKind::AddrInUse => "addr_in_use",
            ConnErrorKind::ConnectReset => "connect_reset",
            ConnErrorKind::Connect => "connect",
            ConnErrorKind::TlsTimeout => "tls_timeout",
            ConnErrorKind::TlsReset => "tls_reset",
            ConnErrorKind::Tls => "tls",
            ConnErrorKind::Closed => "closed",
            ConnErrorKind::Reset => "reset",
            ConnErrorKind::Read => "read",
            ConnErrorKind::BadResponse => "bad_response",
            ConnErrorKind::KeepaliveTimeout => "keepalive_timeout",
            ConnErrorKind::Task => "task",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one connection or of a whole run (merge them with [`Stats::merge`]).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Requests sent.
    pub sent: u64,
    /// Responses per status code.
    pub codes: BTreeMap<u16, u64>,
    /// Requests that got no answer in time.
    pub timeouts: u64,
    /// Connections that failed (connect, handshake, reset, garbage); the sum of
    /// `conn_error_kinds`. Count them with [`Stats::conn_error`].
    pub conn_errors: u64,
    /// Failed connections per [`ConnErrorKind`] (indexed in the order of [`ConnErrorKind::ALL`]).
    pub conn_error_kinds: [u64; ConnErrorKind::ALL.len()],
    /// Latency from send to response, microseconds.
    pub latency: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            sent: 0,
            codes: BTreeMap::new(),
            timeouts: 0,
            conn_errors: 0,
            conn_error_kinds: [0; ConnErrorKind::ALL.len()],
            // Constant, valid bounds (1 µs..60 s, three significant digits): cannot fail.
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
        }
    }
}

impl Stats {
    /// Records one response and its latency.
    pub fn response(&mut self, status: u16, latency: Duration) {
        *self.codes.entry(status).or_default() += 1;
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        self.latency.saturating_record(us);
    }

    /// Records one failed connection.
    pub fn conn_error(&mut self, kind: ConnErrorKind) {
        self.conn_errors += 1;
        self.conn_error_kinds[kind.index()] += 1;
    }

    /// Failed connections of one kind.
    pub fn conn_errors_of(&self, kind: ConnErrorKind) -> u64 {
        self.conn_error_kinds[kind.index()]
    }

    /// `62(connect_timeout:60,tls:2)`, or `0`.
    pub fn conn_error_breakdown(&self) -> String {
        let kinds: Vec<String> = ConnErrorKind::ALL
            .iter()
            .filter(|k| self.conn_errors_of(**k) > 0)
            .map(|k| format!("{}:{}", k.name(), self.conn_errors_of(*k)))
            .collect();
        if kinds.is_empty() {
            self.conn_errors.to_string()
        } else {
            format!("{}({})", self.conn_errors, kinds.join(","))
        }
    }

    /// Responses with a 2xx code.
    pub fn ok(&self) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| (200..300).contains(*c))
            .map(|(_, n)| n)
            .sum()
    }

    /// Responses of any code.
    pub fn answered(&self) -> u64 {
        self.codes.values().sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.sent += other.sent;
        for (c, n) in &other.codes {
            *self.codes.entry(*c).or_default() += n;
        }
        self.timeouts += other.timeouts;
        self.conn_errors += other.conn_errors;
        for (a, b) in self.conn_error_kinds.iter_mut().zip(other.conn_error_kinds) {
            *a += b;
        }
        // Both histograms share bounds; a failure could only come from a foreign histogram.
        let _ = self.latency.add(&other.latency);
    }
}

/// Server memory as measured around a run (MiB), when a server PID was given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryReport {
    /// Before the load started.
    pub before_mib: f64,
    /// At the end of the load (for idle-hold: with every connection still open).
    pub after_mib: f64,
    /// Connections or bindings the difference is spread over.
    pub per: u64,
}

/// The final one-line result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Free-form label of the server (e.g. `sipreg`, `kamailio`).
    pub label: String,
    /// Transport name.
    pub transport: &'static str,
    /// Connections used.
    pub connections: usize,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Counters.
    pub stats: Stats,
    /// Server memory, if measured.
    pub memory: Option<MemoryReport>,
    /// CPU of both sides and listen-queue drops over the measured phase.
    pub cpu: CpuReport,
}

impl Summary {
    /// Successful REGISTERs per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.stats.ok() as f64 / secs
        } else {
            0.0
        }
    }

    /// Latency at quantile `q` in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.stats.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// CPU µs per successful REGISTER, from a CPU time of the measured phase.
    pub fn us_per_ok(&self, cpu: Duration) -> Option<f64> {
        let ok = self.stats.ok();
        (ok > 0).then(|| cpu.as_secs_f64() * 1e6 / ok as f64)
    }

    /// Failures: anything but 2xx, timeouts and broken connections.
    pub fn failures(&self) -> u64 {
        self.stats.answered() - self.stats.ok() + self.stats.timeouts + self.stats.conn_errors
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<String> = self
            .stats
            .codes
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect();
        write!(
            f,
            "RESULT scenario={} server={} transport={} conns={} sent={} ok={} failures={} codes={} \
             timeouts={} conn_errors={} elapsed={:.2}s rate={:.0}/s p50={:.3}ms p90={:.3}ms \
             p99={:.3}ms p999={:.3}ms max={:.3}ms",
            self.scenario,
            self.label,
            self.transport,
            self.connections,
            self.stats.sent,
            self.stats.ok(),
            self.failures(),
            if codes.is_empty() {
                "-".into()
            } else {
                codes.join(",")
            },
            self.stats.timeouts,
            self.stats.conn_error_breakdown(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.stats.latency.max() as f64 / 1000.0,
        )?;
        // CPU over the measured phase: the figures to quote on a shared machine.
        for (name, cpu) in [("server", self.cpu.server), ("load", self.cpu.load)] {
            if let Some(c) = cpu {
                write!(f, " {name}_cpu={:.2}s", c.as_secs_f64())?;
                if let Some(us) = self.us_per_ok(c) {
                    write!(f, " {name}_us_per_ok={us:.0}")?;
                }
            }
        }
        if let Some(l) = self.cpu.listen {
            write!(
                f,
                " listen_overflows={} listen_drops={}",
                l.overflows, l.drops
            )?;
        }
        if let Some(m) = self.memory {
            let per_kib = if m.per > 0 {
                (m.after_mib - m.before_mib) * 1024.0 / m.per as f64
            } else {
                0.0
            };
            write!(
                f,
                " mem_before={:.1}MiB mem_after={:.1}MiB per_conn={:.2}KiB",
                m.before_mib, m.after_mib, per_kib
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_codes_counts_and_latencies() {
        let mut a = Stats {
            sent: 2,
            ..Stats::default()
        };
        a.response(200, Duration::from_micros(100));
        a.response(401, Duration::from_micros(300));
        let mut b = Stats {
            sent: 1,
            timeouts: 1,
            ..Stats::default()
        };
        b.response(200, Duration::from_millis(2));
        b.conn_error(ConnErrorKind::ConnectTimeout);
        a.conn_error(ConnErrorKind::Tls);
        a.conn_error(ConnErrorKind::ConnectTimeout);
        a.merge(&b);
        assert_eq!(a.conn_errors, 3);
        assert_eq!(
            a.conn_error_breakdown(),
            "3(connect_timeout:2,tls:1)".to_string()
        );
        assert_eq!(Stats::default().conn_error_breakdown(), "0");
        assert_eq!(a.sent, 3);
        assert_eq!(a.ok(), 2);
        assert_eq!(a.answered(), 3);
        assert_eq!(a.latency.len(), 3);
        assert!(a.latency.max() >= 1990);
    }

    #[test]
    fn summary_line_reports_rate_failures_and_memory() {
        let mut stats = Stats {
            sent: 11,
            ..Stats::default()
        };
        for _ in 0..10 {
            stats.response(200, Duration::from_millis(1));
        }
        stats.response(403, Duration::from_millis(1));
        let s = Summary {
            scenario: "steady".into(),
            label: "sipreg".into(),
            transport: "TLS",
            connections: 2,
            elapsed: Duration::from_secs(2),
            stats,
            memory: Some(MemoryReport {
                before_mib: 10.0,
                after_mib: 11.0,
                per: 1024,
            }),
            cpu: CpuReport {
                server: Some(Duration::from_millis(500)),
                load: Some(Duration::from_millis(1000)),
                listen: Some(crate::cpu::ListenCounters {
                    overflows: 0,
                    drops: 2,
                }),
            },
        };
        assert_eq!(s.rate(), 5.0);
        assert_eq!(s.failures(), 1);
        let line = s.to_string();
        assert!(
            line.starts_with("RESULT scenario=steady server=sipreg"),
            "{line}"
        );
        assert!(line.contains(" codes=200:10,403:1 "), "{line}");
        assert!(line.contains(" rate=5/s "), "{line}");
        assert!(line.contains("per_conn=1.00KiB"), "{line}");
        assert!(line.contains(" conn_errors=0 "), "{line}");
        assert!(
            line.contains(" server_cpu=0.50s server_us_per_ok=50000 load_cpu=1.00s"),
            "{line}"
        );
        assert!(line.contains(" load_us_per_ok=100000 "), "{line}");
        assert!(
            line.contains(" listen_overflows=0 listen_drops=2 "),
            "{line}"
        );
    }
}
