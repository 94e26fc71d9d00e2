//! The data model shared by every service: plain values, no I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An end user who owns devices and obtains tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// The user id (`sub` of the user's access tokens).
    pub id: String,
    /// Argon2id PHC string; never serialised to API clients.
    #[serde(skip_serializing, default)]
    pub password_hash: String,
    /// Unix seconds when the user was created.
    pub created_at: i64,
}

/// A directory number (line) on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Line {
    /// The directory number, e.g. `1010`; the user part of the AOR.
    pub dn: String,
    /// Display name shown on the device; defaults to the owner's id.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A phone or soft client, e.g. `CSFjdoe`, with its lines and security profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Device {
    /// Device name as the client sends it in `+u.sip!devicename.ccm.cisco.com`.
    pub name: String,
    /// The user id owning this device.
    pub owner: String,
    /// Lines in button order.
    pub lines: Vec<Line>,
    /// Whether the device's security profile enables OAuth ("Enable OAuth Authentication").
    /// Derived: the store keeps it equal to the profile's `oauth` (an empty `profile` on write
    /// picks [`DEFAULT_OAUTH_PROFILE`] or [`DEFAULT_PROFILE`] from this flag).
    pub oauth: bool,
    /// Unix seconds of the last change, used for config versioning.
    pub updated_at: i64,
    /// The device model (Unified CM's product type); empty on write means [`DEFAULT_MODEL`].
    #[serde(default)]
    pub model: String,
    /// The name of the device's [`SecurityProfile`]; it must exist.
    #[serde(default)]
    pub profile: String,
}

/// The model a device gets when none is given: Jabber's product type.
pub const DEFAULT_MODEL: &str = "Cisco Unified Client Services Framework";
/// The seeded profile for devices without OAuth: Digest on any transport.
pub const DEFAULT_PROFILE: &str = "Universal Device Template - Model-independent Security Profile";
/// The seeded profile for OAuth devices (and Digest, so legacy ports still work).
pub const DEFAULT_OAUTH_PROFILE: &str = "Universal Device Template - OAuth Security Profile";
/// The seeded strict profile: OAuth only, no Digest, TLS.
pub const SECURE_OAUTH_PROFILE: &str =
    "Cisco Unified Client Services Framework - Secure OAuth Profile";

/// Which legacy transports a security profile allows Digest registration over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ProfileTransport {
    /// TCP only.
    #[serde(rename = "tcp")]
    Tcp,
    /// TLS only.
    #[serde(rename = "tls")]
    Tls,
    /// UDP only.
    #[serde(rename = "udp")]
    Udp,
    /// TCP or TLS.
    #[serde(rename = "tcp+tls")]
    TcpTls,
    /// Any transport.
    #[default]
    #[serde(rename = "any")]
    Any,
}

impl ProfileTransport {
    /// The name used in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileTransport::Tcp => "tcp",
            ProfileTransport::Tls => "tls",
            ProfileTransport::Udp => "udp",
            ProfileTransport::TcpTls => "tcp+tls",
            ProfileTransport::Any => "any",
        }
    }

    /// Whether a connection over `transport` (`"udp"`, `"tcp"` or `"tls"`) is allowed.
    pub fn allows(self, transport: &str) -> bool {
        match self {
            ProfileTransport::Any => true,
            ProfileTransport::TcpTls => transport == "tcp" || transport == "tls",
            one => one.as_str() == transport,
        }
    }
}

impl std::str::FromStr for ProfileTransport {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(ProfileTransport::Tcp),
            "tls" => Ok(ProfileTransport::Tls),
            "udp" => Ok(ProfileTransport::Udp),
            "tcp+tls" => Ok(ProfileTransport::TcpTls),
            "any" => Ok(ProfileTransport::Any),
            _ => Err(format!(
                "unknown transport `{s}`; use tcp, tls, udp, tcp+tls or any"
            )),
        }
    }
}

/// A device security profile (Unified CM's "Phone Security Profile"): how its devices may
/// authenticate. Devices name one; a change applies to all of them at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecurityProfile {
    /// The profile's name; the key.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// "Enable OAuth Authentication": the device may register on the SIP OAuth ports.
    pub oauth: bool,
    /// "Enable Digest Authentication": the device may register with Digest on the legacy ports.
    pub digest: bool,
    /// The legacy transports Digest registration is allowed over.
    pub transport: ProfileTransport,
}

impl Device {
    /// Whether `dn` is one of this device's lines.
    pub fn has_line(&self, dn: &str) -> bool {
        self.lines.iter().any(|l| l.dn == dn)
    }
}

/// Cluster-wide settings (Unified CM's `ClusterSIPOAuthMode` and friends). Every node reads them
/// from its directory snapshot per request, so a change applies at once, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSettings {
    /// Cluster SIP OAuth mode; off by default, as in Unified CM.
    pub oauth_mode: bool,
    /// Access token lifetime in minutes, 1–1440 (Unified CM's range); default 60.
    pub access_token_lifetime_minutes: u32,
    /// Refresh token lifetime in days, 1–365; default 60.
    pub refresh_token_lifetime_days: u32,
    /// Unified CM's "OAuth with Refresh Login": issue refresh tokens and accept the refresh grant.
    pub refresh_login: bool,
    /// Offer the resource-owner password grant (clients without a browser).
    pub password_grant: bool,
    /// Which Bearer challenge the SIP OAuth port sends.
    pub challenge_dialect: ChallengeDialect,
    /// Expiry granted when a client asks for none, seconds; `min ≤ default ≤ max`.
    pub default_expires: u32,
    /// Shortest non-zero expiry accepted (`423` below it), seconds; at most `max_expires`.
    pub min_expires: u32,
    /// Longest expiry granted (longer is cut down), seconds, 1–86400.
    pub max_expires: u32,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            oauth_mode: false,
            access_token_lifetime_minutes: 60,
            refresh_token_lifetime_days: 60,
            refresh_login: true,
            password_grant: true,
            challenge_dialect: ChallengeDialect::Auto,
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
        }
    }
}

impl ClusterSettings {
    /// Checks every range and the expiry ordering; the error names the field and the rule.
    pub fn validate(&self) -> std::result::Result<(), SettingError> {
        let bad = |field: &'static str, value: u32, rule: String| {
            Err(SettingError { field, value, rule })
        };
        if !(1..=1440).contains(&self.access_token_lifetime_minutes) {
            return bad(
                "access_token_lifetime_minutes",
                self.access_token_lifetime_minutes,
                "1–1440".into(),
            );
        }
        if !(1..=365).contains(&self.refresh_token_lifetime_days) {
            return bad(
                "refresh_token_lifetime_days",
                self.refresh_token_lifetime_days,
                "1–365".into(),
            );
        }
        if !(1..=86400).contains(&self.max_expires) {
            return bad("max_expires", self.max_expires, "1–86400".into());
        }
        if self.min_expires > self.max_expires {
            return bad(
                "min_expires",
                self.min_expires,
                format!("0–max_expires ({})", self.max_expires),
            );
        }
        if !(self.min_expires.max(1)..=self.max_expires).contains(&self.default_expires) {
            return bad(
                "default_expires",
                self.default_expires,
                format!(
                    "min_expires–max_expires ({}–{})",
                    self.min_expires.max(1),
                    self.max_expires
                ),
            );
        }
        Ok(())
    }
}

/// A cluster setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is out of range; allowed: {rule}")]
pub struct SettingError {
    /// The setting's name as in the API.
    pub field: &'static str,
    /// The refused value.
    pub value: u32,
    /// The allowed range.
    pub rule: String,
}

/// Which Bearer challenge a `REGISTER` without a valid token gets on the SIP OAuth port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeDialect {
    /// Per request: Jabber-like clients get the Unified CM dialect, others RFC 8898.
    #[default]
    Auto,
    /// Always RFC 8898: `401` with `WWW-Authenticate: Bearer realm, scope, authz_server`.
    Rfc8898,
    /// Always Unified CM: `407` with `Proxy-Authenticate: Bearer realm="ccmsipline"`.
    Cucm,
}

impl ChallengeDialect {
    /// The name used in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeDialect::Auto => "auto",
            ChallengeDialect::Rfc8898 => "rfc8898",
            ChallengeDialect::Cucm => "cucm",
        }
    }
}

impl std::str::FromStr for ChallengeDialect {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(ChallengeDialect::Auto),
            "rfc8898" => Ok(ChallengeDialect::Rfc8898),
            "cucm" => Ok(ChallengeDialect::Cucm),
            _ => Err(format!(
                "unknown challenge dialect `{s}`; use auto, rfc8898 or cucm"
            )),
        }
    }
}

/// A sipreg node with the ports it advertises and listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Node name (`processNodeName`).
    pub name: String,
    /// Host name or address clients use to reach the node.
    pub host: String,
    /// Legacy SIP port (UDP/TCP).
    pub sip_port: u16,
    /// Legacy SIP TLS port.
    pub secured_sip_port: u16,
    /// SIP OAuth port (TLS, `sipOAuthPort`).
    pub sip_oauth_port: u16,
    /// SIP MRA OAuth port (mutual TLS, `sipMRAOAuthPort`).
    pub sip_mra_oauth_port: u16,
}

/// An ES256 token signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// Key id published in the JWKS and carried in token headers.
    pub kid: String,
    /// JWS algorithm, `ES256`.
    pub alg: String,
    /// PKCS#8 PEM private key. Secret: never logged.
    pub private_pem: String,
    /// Base64url P-256 public x coordinate.
    pub public_x: String,
    /// Base64url P-256 public y coordinate.
    pub public_y: String,
    /// Unix seconds when created.
    pub created_at: i64,
    /// Whether new tokens are signed with this key.
    pub active: bool,
}

/// A stored refresh token; only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    /// Hex SHA-256 of the opaque token.
    pub hash: String,
    /// The user it was issued to.
    pub user_id: String,
    /// The OAuth client it was issued to.
    pub client_id: String,
    /// Granted scope.
    pub scope: String,
    /// Unix seconds of issue.
    pub issued_at: i64,
    /// Unix seconds of expiry.
    pub expires_at: i64,
    /// The rotation family: every token refreshed from one login shares it (reuse detection).
    pub family: String,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// An unused, unexpired token; it is now marked used.
    Fresh(RefreshToken),
    /// The token was used before: a replay. The caller should revoke the family.
    Reused(RefreshToken),
    /// No such token, or expired.
    Unknown,
}

/// A device's Digest credential for the legacy SIP ports; only the HA1 hashes are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DigestCredential {
    /// The Digest user name.
    pub username: String,
    /// The realm the HA1 values were computed for.
    pub realm: String,
    /// Hex MD5(username:realm:password). Secret.
    #[serde(skip_serializing, default)]
    pub ha1_md5: String,
    /// Hex SHA-256(username:realm:password). Secret.
    #[serde(skip_serializing, default)]
    pub ha1_sha256: String,
}

/// A registered OAuth client (RFC 6749 §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OAuthClient {
    /// The `client_id`.
    pub id: String,
    /// Human-readable name shown on the login page.
    pub name: String,
    /// Exact redirect URIs allowed for the authorization code grant.
    pub redirect_uris: Vec<String>,
    /// Scopes the client may obtain.
    pub scopes: Vec<String>,
    /// Unix seconds when created.
    pub created_at: i64,
}

/// A trusted edge proxy (Expressway-C-like) allowed on the MRA OAuth port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Edge {
    /// Host name or IP address; the key.
    pub host: String,
    /// Free text.
    pub description: String,
    /// CN/SAN values to accept from the edge's certificate.
    pub subject_names: Vec<String>,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

/// A CA certificate in the trust store ("Tomcat-trust").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrustCert {
    /// Hex SHA-256 fingerprint of the DER; the key.
    pub fingerprint: String,
    /// The certificate, PEM.
    pub pem: String,
    /// Subject, for display.
    pub subject: String,
    /// Unix seconds when added.
    pub added_at: i64,
}

/// An external token issuer (an enterprise IdP) whose access tokens the registrar accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrustedIssuer {
    /// The issuer URL, compared exactly with a token's `iss`; the key.
    pub issuer: String,
    /// Where the issuer publishes its JWKS (https, or http on a loopback host only).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A local file holding the issuer's JWKS, re-read when it changes.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// The `aud` the issuer's tokens must carry for this registrar.
    pub audience: String,
    /// The claim that names the user, e.g. `sub`, `preferred_username`, `upn`, `email`.
    pub user_claim: String,
    /// JWS algorithms accepted from this issuer (asymmetric only).
    pub algorithms: Vec<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

/// A registration binding as persisted; the registrar owns the `data` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBinding {
    /// The address of record.
    pub aor: String,
    /// The binding's key within the AOR (contact or instance/reg-id).
    pub key: String,
    /// Unix seconds of expiry.
    pub expires_at: i64,
    /// The node holding the binding's flow.
    pub node: String,
    /// Serialized binding.
    pub data: String,
}

/// What changed in the store, so that caches and listeners can follow live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Cluster settings (e.g. OAuth mode).
    Cluster,
    /// A user was created or deleted.
    User(String),
    /// A device was created, changed or deleted.
    Device(String),
    /// A node's ports changed.
    Node(String),
    /// Signing keys changed.
    SigningKeys,
    /// A user's tokens were revoked.
    Revocation(String),
    /// An OAuth client changed.
    Client(String),
    /// An edge entry changed.
    Edge(String),
    /// The trust store changed.
    Trust,
    /// A device's Digest credential changed.
    Digest(String),
    /// A security profile was created, changed or deleted (its devices' `oauth` may have changed).
    Profile(String),
    /// A trusted external token issuer changed.
    Issuer(String),
    /// Anything may have changed (a lost notification, a reconnect to the database, the periodic
    /// safety-net check): reload everything, signing keys included.
    Reload,
}

/// A node with the time it last said it was alive, for the cluster's node list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node and its ports.
    #[serde(flatten)]
    pub node: Node,
    /// Unix seconds of the node's last heartbeat; `None` when it never sent one.
    pub last_heartbeat: Option<i64>,
}

/// An admin API token; only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdminToken {
    /// Short id shown in lists and used to revoke.
    pub id: String,
    /// What the token is for.
    pub name: String,
    /// `admin` (read and write) or `read` (read only).
    pub scope: String,
    /// Hex SHA-256 of the secret. Never serialised.
    #[serde(skip_serializing, default)]
    pub sha256: String,
    /// Unix seconds when created.
    pub created_at: i64,
}

/// One audited change: who did what to which resource, with before/after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who: the admin token's name.
    pub actor: String,
    /// The HTTP method and path, e.g. `DELETE /api/v1/devices/CSFjdoe`.
    pub action: String,
    /// JSON of the resource before (null when created).
    pub before: serde_json::Value,
    /// JSON of the resource after (null when deleted).
    pub after: serde_json::Value,
}
