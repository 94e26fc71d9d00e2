//! Counting what happened: response codes, failures, latencies (HdrHistogram, microseconds) and
//! the final one-line summary.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency the histogram tracks (µs); larger values are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Counters of one connection or of a whole run (merge them with [`Stats::merge`]).
#[derive(Debug, Clone)]
pub struct Stats {
    /// Requests sent.
    pub sent: u64,
    /// Responses per status code.
    pub codes: BTreeMap<u16, u64>,
    /// Requests that got no answer in time.
    pub timeouts: u64,
    /// Connections that failed (connect, handshake, reset, garbage).
    pub conn_errors: u64,
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
            self.stats.conn_errors,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.stats.latency.max() as f64 / 1000.0,
        )?;
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
        a.merge(&b);
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
    }
}
