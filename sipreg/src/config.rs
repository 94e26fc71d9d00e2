//! The `sipreg serve` configuration: an optional TOML file, then command-line overrides.
//!
//! Every section rejects unknown keys, and every value is checked at load time with an error that
//! names the key and the allowed range.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("config key `{key}` = {value} is out of range: {rule}")]
    Range {
        /// Dotted key name.
        key: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        rule: &'static str,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, keys and certificates live.
    pub data_dir: Option<PathBuf>,
    /// This node's name (`processNodeName`); defaults to the host name.
    pub node_name: Option<String>,
    /// The store URL: `sqlite://PATH` or `postgres://USER@HOST/DB` (a cluster's shared database);
    /// defaults to the SQLite file `sipreg.db` in the data dir.
    pub store: Option<String>,
    /// The host name clients use to reach this node; defaults to the host name.
    pub public_host: Option<String>,
    /// Listener addresses and ports.
    pub listen: ListenConfig,
    /// Token lifetimes and audience.
    pub tokens: TokensConfig,
    /// Registration expiry and limits.
    pub registrar: RegistrarSection,
    /// Legacy SIP ports with Digest.
    pub legacy: LegacySection,
    /// Admission caps of the MRA port (edge proxies), apart from the other SIP ports'.
    pub mra: MraSection,
    /// Where `/metrics` is served besides the API port.
    pub metrics: crate::metrics::MetricsSection,
    /// Time limits of the HTTP(S) listeners (API, token service, device config, metrics).
    pub http: HttpSection,
    /// The device config service's memory for rendered files.
    pub device_config: DeviceConfigSection,
}

/// `[device_config]`: the device config service (HTTP 6970, HTTPS 6971, TFTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfigSection {
    /// Rendered device files kept in memory, MiB; files not fetched lately are evicted first
    /// and rendered again on their next fetch.
    pub cache_mib: u64,
}

impl DeviceConfigSection {
    /// Allowed `cache_mib`: at least one 64-line file per cache shard, at most 64 GiB.
    pub const CACHE_MIB_RANGE: std::ops::RangeInclusive<u64> = 1..=65_536;

    /// The cache bound in bytes.
    pub fn cache_bytes(&self) -> usize {
        usize::try_from(self.cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

impl Default for DeviceConfigSection {
    fn default() -> Self {
        DeviceConfigSection {
            cache_mib: (sipreg_tftp_config::DEFAULT_CACHE_BYTES >> 20) as u64,
        }
    }
}

/// `[http]`: how long an HTTP(S) connection may take to send a request head and body, and stay
/// idle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// A request head must be complete this long after its first byte (or after the connection
    /// opened), seconds (slowloris).
    pub header_timeout_secs: u64,
    /// A keep-alive connection with no request in progress is closed after this long, seconds.
    pub idle_timeout_secs: u64,
    /// A request body must be complete this long after its head, seconds, else 408 (slow POST).
    pub body_timeout_secs: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        let d = crate::https::Limits::default();
        HttpSection {
            header_timeout_secs: d.header_timeout.as_secs(),
            idle_timeout_secs: d.idle_timeout.as_secs(),
            body_timeout_secs: d.body_timeout.as_secs(),
        }
    }
}

impl HttpSection {
    /// The limits the HTTP(S) listeners enforce.
    pub fn limits(&self) -> crate::https::Limits {
        crate::https::Limits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.body_timeout_secs),
        }
    }
}

/// `[listen]`: where each listener binds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Address every listener binds to.
    pub address: IpAddr,
    /// SIP OAuth port (TLS), 1024–49151 (0 in tests picks a free port).
    pub sip_oauth_port: u16,
    /// SIP MRA OAuth port (mutual TLS), advertised in config files.
    pub sip_mra_oauth_port: u16,
    /// Legacy SIP port, advertised in config files.
    pub sip_port: u16,
    /// Legacy SIP TLS port, advertised in config files.
    pub secured_sip_port: u16,
    /// HTTPS port of the token service and admin API.
    pub https_port: u16,
    /// HTTP port of the device config service.
    pub config_http_port: u16,
    /// HTTPS port of the token-protected device config service.
    pub config_https_port: u16,
    /// UDP port of the TFTP server; 0 turns TFTP off.
    pub tftp_port: u16,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: IpAddr::from([0, 0, 0, 0]),
            sip_oauth_port: 5090,
            sip_mra_oauth_port: 5091,
            sip_port: 5060,
            secured_sip_port: 5061,
            https_port: 8443,
            config_http_port: 6970,
            config_https_port: 6971,
            tftp_port: 69,
        }
    }
}

/// `[tokens]`: OAuth token lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Access token lifetime in minutes, 1–1440 (Unified CM's range).
    pub access_ttl_minutes: i64,
    /// Refresh token lifetime in days, 1–365.
    pub refresh_ttl_days: i64,
    /// The `aud` the registrar accepts and the token service issues.
    pub audience: String,
    /// The token `iss`; default `https://<public_host>:<https_port>`. Set the same value on every
    /// node of a cluster so a token issued by one node validates on all.
    pub issuer: Option<String>,
    /// Offer the password grant to clients without a browser; `false` leaves only the login page.
    pub password_grant: bool,
    /// Unified CM's "OAuth with Refresh Login": issue refresh tokens (rotated, reuse-detected).
    pub refresh_login: bool,
    /// A trusted external issuer's JWKS URL is fetched again (for an unknown `kid`) at most
    /// once per this many seconds.
    pub jwks_refetch_secs: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            access_ttl_minutes: 60,
            refresh_ttl_days: 60,
            audience: "sipreg".into(),
            issuer: None,
            password_grant: true,
            refresh_login: true,
            jwks_refetch_secs: 30,
        }
    }
}

/// `[mra]`: caps of the SIP MRA OAuth port. Edges carry many users each, so they get their own
/// limits instead of the per-client ones (0 = unlimited).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MraSection {
    /// Open edge connections in total.
    pub max_connections: usize,
    /// Open connections from one edge address.
    pub max_connections_per_ip: usize,
    /// Edge TLS handshakes in flight.
    pub max_tls_handshakes: usize,
}

impl Default for MraSection {
    fn default() -> Self {
        let d = sipreg_registrar::MraLimits::default();
        MraSection {
            max_connections: d.max_connections,
            max_connections_per_ip: d.max_connections_per_ip,
            max_tls_handshakes: d.max_tls_handshakes,
        }
    }
}

/// `[registrar]`: registration expiry and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarSection {
    /// Expiry granted when the client asks for none, seconds.
    pub default_expires: u32,
    /// Shortest expiry accepted (423 below it), seconds.
    pub min_expires: u32,
    /// Longest expiry granted, seconds.
    pub max_expires: u32,
    /// Bindings one AOR may hold.
    pub max_bindings_per_aor: usize,
    /// Largest SIP message accepted, bytes.
    pub max_message_size: usize,
    /// Domains served (404 for others); empty accepts any.
    pub domains: Vec<String>,
    /// `Path` without `Supported: path` gets 420 (RFC 3327's recommended policy).
    pub path_requires_supported: bool,
    /// `Flow-Timer` sent to RFC 5626 clients, seconds.
    pub flow_timer: u32,
    /// Remove a connection's bindings when it closes (otherwise they are kept, marked as a dead flow).
    pub remove_bindings_on_flow_close: bool,
    /// Digest realm on the legacy ports (Unified CM's is `ccmsipline`).
    pub digest_realm: String,
    /// Digest nonce lifetime, seconds (then `stale=true`).
    pub nonce_ttl: u32,
    /// Digest algorithms offered, most preferred first: `SHA-256`, `MD5`.
    pub digest_algorithms: Vec<String>,
    /// Connections open at once over all SIP listeners (0 = unlimited).
    pub max_connections: usize,
    /// Connections from one address (0 = unlimited).
    pub max_connections_per_ip: usize,
    /// TLS handshakes in progress at once (0 = unlimited).
    pub max_tls_handshakes: usize,
    /// A connection sending nothing for this long is closed, seconds.
    pub idle_timeout_secs: u64,
    /// A started message must be complete within this, seconds (slowloris).
    pub header_timeout_secs: u64,
    /// Write-behind interval for bindings, milliseconds: a crash loses at most this much.
    pub persist_interval_ms: u64,
}

impl Default for RegistrarSection {
    fn default() -> Self {
        RegistrarSection {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_bindings_per_aor: 10,
            max_message_size: 65536,
            domains: Vec::new(),
            path_requires_supported: true,
            flow_timer: 120,
            remove_bindings_on_flow_close: false,
            digest_realm: "ccmsipline".into(),
            nonce_ttl: 300,
            digest_algorithms: vec!["SHA-256".into(), "MD5".into()],
            max_connections: 10000,
            max_connections_per_ip: 1000,
            max_tls_handshakes: 256,
            idle_timeout_secs: 3900,
            header_timeout_secs: 30,
            persist_interval_ms: 1000,
        }
    }
}

/// `[legacy]`: the non-OAuth SIP ports (`listen.sip_port` UDP/TCP, `listen.secured_sip_port` TLS)
/// where devices without OAuth register with Digest, as on Unified CM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LegacySection {
    /// SIP over UDP on `listen.sip_port`.
    pub udp: bool,
    /// SIP over TCP on `listen.sip_port`.
    pub tcp: bool,
    /// SIP over TLS on `listen.secured_sip_port`.
    pub tls: bool,
}

impl Default for LegacySection {
    fn default() -> Self {
        LegacySection {
            udp: true,
            tcp: true,
            tls: true,
        }
    }
}

impl Config {
    /// The cluster settings this file stands for: `[tokens]` lifetimes and switches and
    /// `[registrar]` expiry bounds. They seed the cluster settings on the first start against a
    /// store only; after that the cluster settings (`sipreg cluster set`) are the source of truth
    /// and these keys are ignored. OAuth mode is not the file's to set.
    pub fn cluster_seed(&self) -> sipreg_store::ClusterSettings {
        let t = &self.tokens;
        let r = &self.registrar;
        // `validate` has kept both lifetimes within their (small, positive) ranges.
        let fit = |v: i64, default: u32| u32::try_from(v).unwrap_or(default);
        sipreg_store::ClusterSettings {
            access_token_lifetime_minutes: fit(t.access_ttl_minutes, 60),
            refresh_token_lifetime_days: fit(t.refresh_ttl_days, 60),
            refresh_login: t.refresh_login,
            password_grant: t.password_grant,
            default_expires: r.default_expires,
            min_expires: r.min_expires,
            max_expires: r.max_expires,
            ..sipreg_store::ClusterSettings::default()
        }
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().to_owned(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.metrics.listen_addr()?;
        let port = |key: &'static str, v: u16| {
            // 0 asks the OS for a free port (tests); otherwise Unified CM's configurable range.
            if v == 0 || (1024..=49151).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::Range {
                    key,
                    value: v.to_string(),
                    rule: "1024–49151 (or 0 for any free port)",
                })
            }
        };
        port("listen.sip_oauth_port", self.listen.sip_oauth_port)?;
        port("listen.sip_mra_oauth_port", self.listen.sip_mra_oauth_port)?;
        let any = |key: &'static str, v: u16| {
            if v == 0
                && !matches!(
                    key,
                    "listen.https_port" | "listen.config_http_port" | "listen.config_https_port"
                )
            {
                return Err(ConfigError::Range {
                    key,
                    value: v.to_string(),
                    rule: "1–65535",
                });
            }
            Ok(())
        };
        any("listen.sip_port", self.listen.sip_port)?;
        any("listen.secured_sip_port", self.listen.secured_sip_port)?;
        any("listen.https_port", self.listen.https_port)?;
        any("listen.config_http_port", self.listen.config_http_port)?;
        any("listen.config_https_port", self.listen.config_https_port)?;
        let t = &self.tokens;
        if !(1..=1440).contains(&t.access_ttl_minutes) {
            return Err(ConfigError::Range {
                key: "tokens.access_ttl_minutes",
                value: t.access_ttl_minutes.to_string(),
                rule: "1–1440",
            });
        }
        if !(1..=365).contains(&t.refresh_ttl_days) {
            return Err(ConfigError::Range {
                key: "tokens.refresh_ttl_days",
                value: t.refresh_ttl_days.to_string(),
                rule: "1–365",
            });
        }
        if let Some(iss) = &t.issuer {
            if !iss.starts_with("https://")
                || iss.len() > 256
                || iss.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::Range {
                    key: "tokens.issuer",
                    value: format!("{iss:?}"),
                    rule: "an https:// URL of at most 256 characters",
                });
            }
        }
        if t.audience.is_empty() || t.audience.len() > 256 {
            return Err(ConfigError::Range {
                key: "tokens.audience",
                value: format!("{:?}", t.audience),
                rule: "1–256 characters",
            });
        }
        let r = &self.registrar;
        if !(1..=86400).contains(&r.max_expires) {
            return Err(ConfigError::Range {
                key: "registrar.max_expires",
                value: r.max_expires.to_string(),
                rule: "1–86400",
            });
        }
        if r.min_expires > r.max_expires {
            return Err(ConfigError::Range {
                key: "registrar.min_expires",
                value: r.min_expires.to_string(),
                rule: "0–registrar.max_expires",
            });
        }
        if !(r.min_expires.max(1)..=r.max_expires).contains(&r.default_expires) {
            return Err(ConfigError::Range {
                key: "registrar.default_expires",
                value: r.default_expires.to_string(),
                rule: "registrar.min_expires–registrar.max_expires",
            });
        }
        if !(1..=1000).contains(&r.max_bindings_per_aor) {
            return Err(ConfigError::Range {
                key: "registrar.max_bindings_per_aor",
                value: r.max_bindings_per_aor.to_string(),
                rule: "1–1000",
            });
        }
        if r.digest_algorithms.is_empty()
            || r.digest_algorithms
                .iter()
                .any(|a| a != "SHA-256" && a != "MD5")
        {
            return Err(ConfigError::Range {
                key: "registrar.digest_algorithms",
                value: format!("{:?}", r.digest_algorithms),
                rule: "a non-empty list of \"SHA-256\" and \"MD5\"",
            });
        }
        if !(5..=3600).contains(&r.nonce_ttl) {
            return Err(ConfigError::Range {
                key: "registrar.nonce_ttl",
                value: r.nonce_ttl.to_string(),
                rule: "5–3600",
            });
        }
        if !(10..=60_000).contains(&r.persist_interval_ms) {
            return Err(ConfigError::Range {
                key: "registrar.persist_interval_ms",
                value: r.persist_interval_ms.to_string(),
                rule: "10–60000",
            });
        }
        if !(1..=600).contains(&r.header_timeout_secs) {
            return Err(ConfigError::Range {
                key: "registrar.header_timeout_secs",
                value: r.header_timeout_secs.to_string(),
                rule: "1–600",
            });
        }
        if !(10..=86400).contains(&r.idle_timeout_secs) {
            return Err(ConfigError::Range {
                key: "registrar.idle_timeout_secs",
                value: r.idle_timeout_secs.to_string(),
                rule: "10–86400",
            });
        }
        let h = &self.http;
        if !(1..=600).contains(&h.header_timeout_secs) {
            return Err(ConfigError::Range {
                key: "http.header_timeout_secs",
                value: h.header_timeout_secs.to_string(),
                rule: "1–600",
            });
        }
        if !(1..=86400).contains(&h.idle_timeout_secs) {
            return Err(ConfigError::Range {
                key: "http.idle_timeout_secs",
                value: h.idle_timeout_secs.to_string(),
                rule: "1–86400",
            });
        }
        if !(1..=3600).contains(&h.body_timeout_secs) {
            return Err(ConfigError::Range {
                key: "http.body_timeout_secs",
                value: h.body_timeout_secs.to_string(),
                rule: "1–3600",
            });
        }
        if !DeviceConfigSection::CACHE_MIB_RANGE.contains(&self.device_config.cache_mib) {
            return Err(ConfigError::Range {
                key: "device_config.cache_mib",
                value: self.device_config.cache_mib.to_string(),
                rule: "1–65536 (MiB of rendered config files kept in memory)",
            });
        }
        if r.digest_realm.is_empty() || r.digest_realm.contains('"') || r.digest_realm.len() > 128 {
            return Err(ConfigError::Range {
                key: "registrar.digest_realm",
                value: format!("{:?}", r.digest_realm),
                rule: "1–128 characters without quotes",
            });
        }
        if !(1024..=1_048_576).contains(&r.max_message_size) {
            return Err(ConfigError::Range {
                key: "registrar.max_message_size",
                value: r.max_message_size.to_string(),
                rule: "1024–1048576",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_unified_cm_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listen.sip_oauth_port, 5090);
        assert_eq!(c.listen.sip_mra_oauth_port, 5091);
        assert_eq!(c.listen.https_port, 8443);
        assert_eq!(c.listen.config_http_port, 6970);
        assert_eq!(c.tokens.access_ttl_minutes, 60);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[listen]\nsip_oauth_prot = 5090\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sip_oauth_prot"), "{e}");
        let e = Config::from_toml("colour = 1\n").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let e = Config::from_toml("[listen]\nsip_oauth_port = 80\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listen.sip_oauth_port") && e.contains("1024–49151"),
            "{e}"
        );
        let e = Config::from_toml("[tokens]\naccess_ttl_minutes = 2000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokens.access_ttl_minutes") && e.contains("1–1440"),
            "{e}"
        );
        let e = Config::from_toml("[registrar]\nmin_expires = 9000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("registrar.min_expires"), "{e}");
        let e = Config::from_toml("[http]\nidle_timeout_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http.idle_timeout_secs") && e.contains("1–86400"),
            "{e}"
        );
        let e = Config::from_toml("[http]\nbody_timeout_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http.body_timeout_secs") && e.contains("1–3600"),
            "{e}"
        );
    }

    #[test]
    fn device_config_cache_size_is_bounded_and_named() {
        let d = Config::from_toml("").unwrap().device_config;
        assert_eq!(d.cache_mib, 64);
        assert_eq!(d.cache_bytes(), sipreg_tftp_config::DEFAULT_CACHE_BYTES);
        for ok in [1, 512, 65_536] {
            let c = Config::from_toml(&format!("[device_config]\ncache_mib = {ok}\n")).unwrap();
            assert_eq!(c.device_config.cache_bytes(), ok as usize * 1024 * 1024);
        }
        for bad in [0, 65_537] {
            let e = Config::from_toml(&format!("[device_config]\ncache_mib = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("device_config.cache_mib") && e.contains("1–65536"),
                "{e}"
            );
        }
        for bad in ["-1", "\"64M\"", "1.5"] {
            let e = Config::from_toml(&format!("[device_config]\ncache_mib = {bad}\n"));
            assert!(matches!(e, Err(ConfigError::Parse { .. })), "{bad}: {e:?}");
        }
        let e = Config::from_toml("[device_config]\ncache_mb = 64\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache_mb"), "{e}");
    }
}
