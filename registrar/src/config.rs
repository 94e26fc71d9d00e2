//! Registrar settings, one struct; [`Default`] gives working values.

use std::time::Duration;

use crate::framer::DEFAULT_MAX_MESSAGE_SIZE;

/// Registrar settings. Every field has a default (see [`Default`]); the binary maps its own
/// config file onto this and validates ranges there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Realm of RFC 8898 Bearer challenges (SIP OAuth port). Default `sipreg`.
    pub realm: String,
    /// Authorization server URL (`authz_server`, an https URI).
    pub authz_server: String,
    /// Minimum scope clients need (`scope` of the challenge); enforcing it is the validator's job.
    pub scope: String,
    /// Host name in `Warning: 399 <host> "..."`; also the node name stored with bindings.
    pub host: String,
    /// Domains this registrar serves (RFC 3261 §10.3 steps 1 and 5): a REGISTER whose
    /// Request-URI or To host is not one of them gets `404`. Compared case-insensitively;
    /// empty (the default) accepts any domain, as Unified CM accepts its IP or any host name.
    pub domains: Vec<String>,
    /// Expiry granted when the client asks for none (seconds). Default 3600.
    pub default_expires: u32,
    /// Shortest non-zero expiry accepted; shorter gets `423` (seconds). Default 60.
    pub min_expires: u32,
    /// Longest expiry granted; longer is cut down (seconds). Default 3600.
    pub max_expires: u32,
    /// Most bindings one AOR may hold; more gets `403 Too Many Bindings`. Default 10.
    pub max_bindings_per_aor: usize,
    /// Largest SIP message accepted (bytes); also the UDP datagram cap. Default 64 KiB.
    pub max_message_size: usize,
    /// A connection with no traffic for this long is closed; longer than `max_expires` so a
    /// client that only refreshes its registration keeps its connection. Default 3900 s.
    pub idle_timeout: Duration,
    /// Time allowed to receive a whole message once its first byte arrived (slowloris).
    /// Default 30 s.
    pub header_timeout: Duration,
    /// Time allowed for the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// When a connection closes, remove its bindings (RFC 5626 §7; the registrar cannot reach a
    /// client behind NAT without its connection). Off: they are kept and marked
    /// [`FlowState::Closed`](crate::location::FlowState::Closed). Default on.
    pub unbind_on_close: bool,
    /// A REGISTER with `Path` but without `Supported: path` gets `420` (RFC 3327 §5.3's
    /// recommended policy). Off: Path is accepted anyway. Default on.
    pub path_requires_supported: bool,
    /// `Flow-Timer` (seconds) sent with `Require: outbound` to clients that reach us directly
    /// (RFC 5626 §4.4); 0 omits it. Default 120.
    pub flow_timer: u32,
    /// Realm of Digest challenges on the legacy ports; stored HA1s must be computed for it.
    /// Default `ccmsipline`, as Unified CM.
    pub digest_realm: String,
    /// Lifetime of a Digest nonce (seconds); older ones get `stale=true`. Default 300.
    pub nonce_ttl: u32,
    /// Largest response sent over UDP (bytes); larger ones are dropped and logged
    /// (RFC 3261 §18.1.1 would move them to TCP, which a registrar cannot open back). Default 1300.
    pub udp_mtu: usize,
    /// Datagrams handled at once on a UDP port; more are dropped and counted. Default 64.
    pub udp_workers: usize,
    /// Open stream connections (all SIP listeners together); 0 = unlimited. Default 10000.
    pub max_connections: usize,
    /// Open stream connections from one source IP; 0 = unlimited. Default 1000 (an Expressway
    /// or a NAT may carry many clients).
    pub max_connections_per_ip: usize,
    /// TLS handshakes in flight; 0 = unlimited. Default 256.
    pub max_tls_handshakes: usize,
    /// The write-behind persister flushes changed AORs at most this often. A crash loses at
    /// most the changes of the last interval (plus one store write). Default 1 s.
    pub persist_interval: Duration,
    /// This node's name: persisted bindings are written and restored as this node's rows, so
    /// nodes sharing a store keep their own flows. Empty: `host`.
    pub node_name: String,
    /// Digest algorithms offered on the legacy ports, most preferred first (RFC 7616 §3.7).
    pub digest_algorithms: Vec<crate::digest::Algorithm>,
}

impl RegistrarConfig {
    /// The node name bindings are persisted under.
    pub fn persist_node(&self) -> &str {
        if self.node_name.is_empty() {
            &self.host
        } else {
            &self.node_name
        }
    }
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            realm: "sipreg".into(),
            authz_server: "https://localhost:8443/oauth".into(),
            scope: "UnifiedCommunications:readwrite".into(),
            host: "sipreg".into(),
            domains: Vec::new(),
            default_expires: 3600,
            min_expires: 60,
            max_expires: 3600,
            max_bindings_per_aor: 10,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            idle_timeout: Duration::from_secs(3600 + 300),
            header_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            unbind_on_close: true,
            path_requires_supported: true,
            flow_timer: 120,
            digest_realm: "ccmsipline".into(),
            nonce_ttl: 300,
            udp_mtu: 1300,
            udp_workers: 64,
            max_connections: 10_000,
            max_connections_per_ip: 1000,
            max_tls_handshakes: 256,
            persist_interval: Duration::from_millis(1000),
            node_name: String::new(),
            digest_algorithms: vec![
                crate::digest::Algorithm::Sha256,
                crate::digest::Algorithm::Md5,
            ],
        }
    }
}

/// Slack between the longest registration and the idle timeout: a client refreshing at the
/// very end of its interval keeps its connection.
const IDLE_SLACK: Duration = Duration::from_secs(300);

impl RegistrarConfig {
    /// How long a connection may idle: the configured `idle_timeout`, but never less than the
    /// cluster's live `max_expires` plus 300 s, so raising `max_expires` (up to 86400) does not
    /// close the connections of clients that only refresh their registration.
    pub fn idle_timeout_for(&self, dir: &sipreg_store::DirectorySnapshot) -> Duration {
        let max_expires = dir
            .cluster
            .map(|c| c.max_expires)
            .unwrap_or(self.max_expires);
        self.idle_timeout
            .max(Duration::from_secs(u64::from(max_expires)) + IDLE_SLACK)
    }
}

impl RegistrarConfig {
    /// Whether `host` is one of our domains (always, when `domains` is empty).
    pub fn serves(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']);
        self.domains.is_empty()
            || self
                .domains
                .iter()
                .any(|d| d.trim_matches(['[', ']']).eq_ignore_ascii_case(host))
    }
}

#[cfg(test)]
mod idle_tests {
    use super::*;
    use sipreg_store::{ClusterSettings, DirectorySnapshot};

    #[test]
    fn the_idle_timeout_follows_a_raised_max_expires() {
        let cfg = RegistrarConfig::default();
        let mut dir = DirectorySnapshot::default();
        assert_eq!(cfg.idle_timeout_for(&dir), Duration::from_secs(3900));
        dir.cluster = Some(ClusterSettings {
            max_expires: 86400,
            ..ClusterSettings::default()
        });
        assert_eq!(cfg.idle_timeout_for(&dir), Duration::from_secs(86700));
        dir.cluster = Some(ClusterSettings {
            max_expires: 600,
            ..ClusterSettings::default()
        });
        assert_eq!(
            cfg.idle_timeout_for(&dir),
            Duration::from_secs(3900),
            "never below the configured value"
        );
    }
}
