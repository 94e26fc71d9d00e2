//! Settings of the token service.

/// What the token service issues and what the validator accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// The `iss` of every token, e.g. `https://host:8443`; the validator requires an exact match.
    pub issuer: String,
    /// The `aud` of every token, e.g. `sipreg`; the validator requires it among the token's audiences.
    pub audience: String,
    /// Access-token lifetime in seconds (CUCM default: 60 minutes).
    pub access_ttl_secs: i64,
    /// Refresh-token lifetime in seconds (CUCM default: 60 days).
    pub refresh_ttl_secs: i64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
    /// Scope granted when a client asks for none.
    pub default_scope: String,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "https://localhost:8443".into(),
            audience: "sipreg".into(),
            access_ttl_secs: 3600,
            refresh_ttl_secs: 60 * 24 * 3600,
            leeway_secs: 30,
            default_scope: "sip:register".into(),
        }
    }
}
