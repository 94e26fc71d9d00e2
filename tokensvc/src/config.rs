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
    /// Whether the resource-owner password grant is offered (clients without a browser).
    pub password_grant: bool,
    /// Unified CM's "OAuth with Refresh Login": when off, no refresh tokens are issued and the
    /// refresh grant is refused; every access token then needs a new login.
    pub refresh_login: bool,
    /// Lifetime of an authorization code, seconds (RFC 6749 §4.1.2 recommends at most 10 minutes).
    pub auth_code_ttl_secs: i64,
    /// How long a login page stays usable, seconds.
    pub login_page_ttl_secs: i64,
    /// An external issuer's JWKS URL is fetched again (on an unknown `kid`) at most this often.
    pub jwks_refetch_secs: u64,
}

/// The longest access-token lifetime the cluster setting allows (1440 minutes, Unified CM's).
pub(crate) const MAX_ACCESS_TTL_SECS: i64 = 1440 * 60;

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "https://localhost:8443".into(),
            audience: "sipreg".into(),
            access_ttl_secs: 3600,
            refresh_ttl_secs: 60 * 24 * 3600,
            leeway_secs: 30,
            default_scope: "sip:register".into(),
            password_grant: true,
            refresh_login: true,
            auth_code_ttl_secs: 60,
            login_page_ttl_secs: 600,
            jwks_refetch_secs: 30,
        }
    }
}

impl TokenConfig {
    /// How long a retired signing key must stay published: until the last token it signed expires.
    ///
    /// The access-token lifetime is a live cluster setting (1–1440 minutes), and a token keeps the
    /// lifetime it was issued with, so neither this node's config nor today's setting bounds the
    /// tokens a retired key signed: the key stays published for the longest lifetime the cluster
    /// allows ([`MAX_ACCESS_TTL_SECS`]), plus leeway.
    pub fn key_retention_secs(&self) -> i64 {
        self.access_ttl_secs
            .max(MAX_ACCESS_TTL_SECS)
            .saturating_add(i64::try_from(self.leeway_secs).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    #[test]
    fn retired_keys_outlive_the_longest_lifetime_the_cluster_allows() {
        let c = TokenConfig::default();
        assert_eq!(c.key_retention_secs(), 1440 * 60 + 30);
        let long = TokenConfig {
            access_ttl_secs: 2 * 86400,
            ..TokenConfig::default()
        };
        assert_eq!(long.key_retention_secs(), 2 * 86400 + 30);
    }
}
