//! Limits against abuse and the counters that show them: a cap on connections in total, per
//! source address and on TLS handshakes in flight, each logged once per episode (when it starts
//! being hit, not per refused connection) and counted in [`Stats`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections`.
    TotalConnections,
    /// `max_connections_per_ip`.
    ConnectionsPerIp,
    /// `max_tls_handshakes`.
    TlsHandshakes,
    /// `udp_workers` busy: a datagram was dropped.
    UdpWorkers,
}

impl Limit {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Limit::TotalConnections => "max_connections",
            Limit::ConnectionsPerIp => "max_connections_per_ip",
            Limit::TlsHandshakes => "max_tls_handshakes",
            Limit::UdpWorkers => "udp_workers",
        }
    }
}

/// Live counters; cheap to update from any task. Read them with [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    tls_handshakes_in_flight: AtomicU64,
    limit_hits: [AtomicU64; 4],
    limit_logged: [AtomicBool; 4],
    registrations: AtomicU64,
    responses: [AtomicU64; 6],
    frame_errors: AtomicU64,
    timeouts: AtomicU64,
    udp_too_large: AtomicU64,
    persist_failures: AtomicU64,
    /// Refused REGISTERs by failed check; the keys are the registrar's fixed check names, so
    /// the map stays small. Locked only on a refusal, never on the success path.
    register_rejections: Mutex<HashMap<&'static str, u64>>,
    /// Labelled counters (by listener, code, dialect, TLS failure reason), see `observe`.
    pub(crate) observed: crate::observe::Observed,
}

/// A copy of [`Stats`] at one moment, for printing or serving.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Stream connections open now (all SIP listeners).
    pub connections_open: u64,
    /// Stream connections accepted since start.
    pub connections_accepted: u64,
    /// TLS handshakes under way now.
    pub tls_handshakes_in_flight: u64,
    /// Connections refused by `max_connections`.
    pub limit_total_connections: u64,
    /// Connections refused by `max_connections_per_ip`.
    pub limit_connections_per_ip: u64,
    /// Connections refused by `max_tls_handshakes`.
    pub limit_tls_handshakes: u64,
    /// Datagrams dropped because every UDP worker was busy.
    pub limit_udp_workers: u64,
    /// Successful REGISTERs that changed bindings.
    pub registrations: u64,
    /// Responses sent, by class: index 0 = 1xx … 5 = 6xx.
    pub responses: [u64; 6],
    /// Streams closed because they could not be framed.
    pub frame_errors: u64,
    /// Connections closed by the header, idle or handshake timeout.
    pub timeouts: u64,
    /// UDP responses not sent because they exceeded `udp_mtu`.
    pub udp_too_large: u64,
    /// Failed write-behind flushes to the store.
    pub persist_failures: u64,
}

impl Stats {
    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_open: g(&self.connections_open),
            connections_accepted: g(&self.connections_accepted),
            tls_handshakes_in_flight: g(&self.tls_handshakes_in_flight),
            limit_total_connections: g(&self.limit_hits[0]),
            limit_connections_per_ip: g(&self.limit_hits[1]),
            limit_tls_handshakes: g(&self.limit_hits[2]),
            limit_udp_workers: g(&self.limit_hits[3]),
            registrations: g(&self.registrations),
            responses: std::array::from_fn(|i| g(&self.responses[i])),
            frame_errors: g(&self.frame_errors),
            timeouts: g(&self.timeouts),
            udp_too_large: g(&self.udp_too_large),
            persist_failures: g(&self.persist_failures),
        }
    }

    /// Counts a refusal by `limit`; logs a warning only when an episode starts.
    pub fn limit_hit(&self, limit: Limit, configured: usize) {
        self.limit_hits[limit.index()].fetch_add(1, Ordering::Relaxed);
        if !self.limit_logged[limit.index()].swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = limit.name(),
                value = configured,
                "limit reached; further refusals are counted, not logged, until it clears"
            );
        }
    }

    /// The limit is no longer being hit: the next hit logs again.
    fn limit_clear(&self, limit: Limit) {
        if self.limit_logged[limit.index()].swap(false, Ordering::Relaxed) {
            tracing::info!(limit = limit.name(), "limit no longer reached");
        }
    }

    /// Counts a response by its status code.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 6) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a successful binding change.
    pub fn registration(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a REGISTER refused by `check` (metric `sipreg_register_rejections_total`).
    pub fn register_rejected(&self, check: &'static str) {
        if let Ok(mut m) = self.register_rejections.lock() {
            *m.entry(check).or_insert(0) += 1;
        }
    }

    /// Refused REGISTERs so far, by check name, ordered by name.
    pub fn register_rejections(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self
            .register_rejections
            .lock()
            .map(|m| m.iter().map(|(k, n)| (*k, *n)).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Counts a framing error.
    pub fn frame_error(&self) {
        self.frame_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a timeout.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a UDP response too large to send.
    pub fn udp_too_large(&self) {
        self.udp_too_large.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed persist flush.
    pub fn persist_failure(&self) {
        self.persist_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Admission of stream connections, shared by every SIP listener of one registrar.
#[derive(Debug)]
pub struct ConnectionGate {
    max_total: usize,
    max_per_ip: usize,
    max_handshakes: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    stats: Arc<Stats>,
}

/// Holds one admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    ip: IpAddr,
}

/// Holds one TLS handshake slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakePermit {
    gate: Arc<ConnectionGate>,
}

impl ConnectionGate {
    /// A gate with these caps (0 means unlimited), counting into `stats`.
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        max_handshakes: usize,
        stats: Arc<Stats>,
    ) -> Self {
        ConnectionGate {
            max_total,
            max_per_ip,
            max_handshakes,
            per_ip: Mutex::new(HashMap::new()),
            stats,
        }
    }

    /// Admits a connection from `ip`, or says which limit refused it (counted and logged).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Limit> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.stats.connections_open.load(Ordering::Relaxed);
        if self.max_total > 0 && open >= self.max_total as u64 {
            self.stats
                .limit_hit(Limit::TotalConnections, self.max_total);
            return Err(Limit::TotalConnections);
        }
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && mine >= self.max_per_ip {
            self.stats
                .limit_hit(Limit::ConnectionsPerIp, self.max_per_ip);
            return Err(Limit::ConnectionsPerIp);
        }
        per_ip.insert(ip, mine + 1);
        drop(per_ip);
        self.stats.connections_open.fetch_add(1, Ordering::Relaxed);
        self.stats
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        self.stats.limit_clear(Limit::TotalConnections);
        self.stats.limit_clear(Limit::ConnectionsPerIp);
        Ok(ConnectionPermit {
            gate: self.clone(),
            ip,
        })
    }

    /// Takes a TLS handshake slot, or refuses (counted and logged).
    pub fn handshake(self: &Arc<Self>) -> Result<HandshakePermit, Limit> {
        let n = self
            .stats
            .tls_handshakes_in_flight
            .fetch_add(1, Ordering::Relaxed);
        if self.max_handshakes > 0 && n >= self.max_handshakes as u64 {
            self.stats
                .tls_handshakes_in_flight
                .fetch_sub(1, Ordering::Relaxed);
            self.stats
                .limit_hit(Limit::TlsHandshakes, self.max_handshakes);
            return Err(Limit::TlsHandshakes);
        }
        self.stats.limit_clear(Limit::TlsHandshakes);
        Ok(HandshakePermit { gate: self.clone() })
    }

    /// Open connections from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.gate
            .stats
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.gate
            .stats
            .tls_handshakes_in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_total_and_handshakes_with_counts() {
        let stats = Arc::new(Stats::default());
        let gate = Arc::new(ConnectionGate::new(3, 2, 1, stats.clone()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = gate.admit(a).unwrap();
        let _p2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Limit::ConnectionsPerIp);
        assert_eq!(gate.admit(a).unwrap_err(), Limit::ConnectionsPerIp);
        let _p3 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).unwrap_err(), Limit::TotalConnections);
        drop(p1);
        assert_eq!(gate.open_from(a), 1);
        let _p4 = gate.admit(b).unwrap();
        let h = gate.handshake().unwrap();
        assert_eq!(gate.handshake().unwrap_err(), Limit::TlsHandshakes);
        drop(h);
        let _h = gate.handshake().unwrap();
        let s = stats.snapshot();
        assert_eq!(s.connections_open, 3);
        assert_eq!(s.connections_accepted, 4);
        assert_eq!(s.limit_connections_per_ip, 2);
        assert_eq!(s.limit_total_connections, 1);
        assert_eq!(s.limit_tls_handshakes, 1);
        assert_eq!(s.tls_handshakes_in_flight, 1);
    }

    #[test]
    fn zero_means_unlimited_and_responses_count_by_class() {
        let stats = Arc::new(Stats::default());
        let gate = Arc::new(ConnectionGate::new(0, 0, 0, stats.clone()));
        let ip: IpAddr = "::1".parse().unwrap();
        let permits: Vec<_> = (0..100).map(|_| gate.admit(ip).unwrap()).collect();
        assert_eq!(stats.snapshot().connections_open, 100);
        drop(permits);
        assert_eq!(stats.snapshot().connections_open, 0);
        for s in [100, 200, 200, 401, 500, 603] {
            stats.response(s);
        }
        assert_eq!(stats.snapshot().responses, [1, 2, 0, 1, 1, 1]);
    }
}
