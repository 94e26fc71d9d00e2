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
    pub oauth: bool,
    /// Unix seconds of the last change, used for config versioning.
    pub updated_at: i64,
}

impl Device {
    /// Whether `dn` is one of this device's lines.
    pub fn has_line(&self, dn: &str) -> bool {
        self.lines.iter().any(|l| l.dn == dn)
    }
}

/// Cluster-wide settings (Unified CM's `ClusterSIPOAuthMode` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterSettings {
    /// Cluster SIP OAuth mode; off by default, as in Unified CM.
    pub oauth_mode: bool,
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
