//! sipreg's data model and its persistence.
//!
//! Callers hold an [`Arc<dyn Store>`](Store) and never care which backend is behind it: the embedded
//! default is one SQLite file ([`SqliteStore`]); [`PostgresStore`] lets several nodes share one
//! PostgreSQL database. [`open`] picks the backend from a store URL. Every write publishes a
//! [`Change`] so caches such as the registrar's [`Directory`] follow live; with PostgreSQL the
//! change reaches every node through LISTEN/NOTIFY. Types that matter: [`Store`], [`Directory`],
//! [`DirectorySnapshot`], [`NodeStatus`], the model types.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod directory;
mod heartbeat;
mod model;
mod open;
mod postgres;
mod sqlite;
mod sqlite_directory;
mod sqlite_issuers;
mod sqlite_profiles;
mod sqlite_rotate;
mod sqlite_secrets;
mod sqlite_settings;
#[cfg(test)]
mod testsuite;

pub use directory::{Directory, DirectorySnapshot, DirectoryStats};
pub use heartbeat::{heartbeat_loop, HEARTBEAT_INTERVAL};
pub use model::{
    AdminToken, AuditEntry, ChallengeDialect, Change, ClusterSettings, Device, DigestCredential,
    Edge, Line, Node, NodeStatus, OAuthClient, ProfileTransport, RefreshToken, RefreshUse,
    SecurityProfile, SettingError, SigningKey, StoredBinding, TrustCert, TrustedIssuer, User,
    DEFAULT_MODEL, DEFAULT_OAUTH_PROFILE, DEFAULT_PROFILE, SECURE_OAUTH_PROFILE,
};
pub use open::{open, redact_url};
pub use postgres::{PostgresStore, DEFAULT_RELOAD_INTERVAL};
pub use sqlite::SqliteStore;

use async_trait::async_trait;

/// Builds the successor of a refresh token being rotated from the token presented, or `None` to
/// store none (the caller refuses the grant). It runs inside the store's transaction: keep it cheap
/// and free of I/O.
pub type RefreshSuccessor = Box<dyn FnOnce(&RefreshToken) -> Option<RefreshToken> + Send>;

/// Errors of the store; the API maps them to problem responses in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entity exists already.
    #[error("{0} already exists")]
    Conflict(String),
    /// The entity does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A referenced entity does not exist (e.g. a device's owner).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed.
    #[error("store backend: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Result alias for store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The persistence interface every backend implements.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads cluster settings.
    async fn cluster_settings(&self) -> Result<ClusterSettings>;
    /// Sets cluster OAuth mode.
    async fn set_oauth_mode(&self, on: bool) -> Result<()>;
    /// Replaces every cluster setting (OAuth mode included) and marks them seeded; `Invalid`
    /// when a value is out of range. Publishes [`Change::Cluster`].
    async fn set_cluster_settings(&self, settings: &ClusterSettings) -> Result<()>;
    /// Sets the lifetimes, switches and expiry bounds (not OAuth mode) from a node's config file,
    /// only if the cluster settings were never seeded or set before; returns whether it did.
    /// Exactly one of several nodes starting at once wins.
    async fn seed_cluster_settings(&self, settings: &ClusterSettings) -> Result<bool>;
    /// The cluster's Digest nonce secret: stores `candidate` (32 random bytes from the caller)
    /// when there is none yet and returns the stored one, so every node, before and after a
    /// restart, checks the others' nonces. Of several nodes starting at once, one candidate wins.
    async fn digest_nonce_secret(&self, candidate: [u8; 32]) -> Result<[u8; 32]>;

    /// Creates a user; `Conflict` if the id is taken.
    async fn create_user(&self, user: &User) -> Result<()>;
    /// Reads one user.
    async fn user(&self, id: &str) -> Result<Option<User>>;
    /// Replaces a user's password hash; `NotFound` if the user does not exist.
    async fn set_password_hash(&self, id: &str, password_hash: &str) -> Result<()>;
    /// Lists users ordered by id.
    async fn users(&self) -> Result<Vec<User>>;
    /// Deletes a user and, with it, the user's devices and refresh tokens.
    async fn delete_user(&self, id: &str) -> Result<()>;

    /// Creates a device; the owner and the profile must exist (`Invalid` otherwise) and its lines
    /// must be free. An empty profile picks a default from `oauth`; `oauth` is stored as the
    /// profile's.
    async fn create_device(&self, device: &Device) -> Result<()>;
    /// Reads one device by name (case-insensitive).
    async fn device(&self, name: &str) -> Result<Option<Device>>;
    /// Lists devices ordered by name.
    async fn devices(&self) -> Result<Vec<Device>>;
    /// Deletes a device.
    async fn delete_device(&self, name: &str) -> Result<()>;
    /// Replaces a device's owner, lines and profile flag (by name, case-insensitive) in one
    /// transaction; `NotFound` if it does not exist, `Invalid` if the owner does not.
    async fn update_device(&self, device: &Device) -> Result<()>;

    /// Lists the devices `owner` owns, ordered by name (the directory's narrow read after a
    /// [`Change::User`]).
    async fn devices_of_owner(&self, owner: &str) -> Result<Vec<Device>>;
    /// Lists the devices whose security profile is `profile`, ordered by name (the directory's
    /// narrow read after a [`Change::Profile`]).
    async fn devices_with_profile(&self, profile: &str) -> Result<Vec<Device>>;

    /// Creates a security profile; `Conflict` if the name is taken.
    async fn create_profile(&self, profile: &SecurityProfile) -> Result<()>;
    /// Reads one security profile by name.
    async fn profile(&self, name: &str) -> Result<Option<SecurityProfile>>;
    /// Lists security profiles ordered by name.
    async fn profiles(&self) -> Result<Vec<SecurityProfile>>;
    /// Replaces a profile's settings and, in the same transaction, its devices' `oauth` flag;
    /// `NotFound` if it does not exist.
    async fn update_profile(&self, profile: &SecurityProfile) -> Result<()>;
    /// Deletes a security profile; `NotFound` if it does not exist, `Invalid` while a device
    /// uses it.
    async fn delete_profile(&self, name: &str) -> Result<()>;
    /// Sets the display name of line `dn` on every device carrying it, in one transaction;
    /// returns the names of the devices changed (empty when no device carries the line).
    async fn set_line_display_name(
        &self,
        dn: &str,
        display_name: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>>;

    /// Creates or replaces a node.
    async fn upsert_node(&self, node: &Node) -> Result<()>;
    /// Lists nodes ordered by name.
    async fn nodes(&self) -> Result<Vec<Node>>;

    /// Stores a new signing key; when it is active, every other key becomes inactive.
    async fn insert_signing_key(&self, key: &SigningKey) -> Result<()>;
    /// Lists signing keys, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKey>>;

    /// Stores a refresh token.
    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<()>;
    /// Atomically removes and returns an unexpired refresh token: exactly one caller wins.
    async fn take_refresh_token(&self, hash: &str, now: i64) -> Result<Option<RefreshToken>>;

    /// Marks a refresh token used and says what it was: fresh, a replay, or unknown. Exactly one
    /// concurrent caller sees `Fresh`.
    async fn use_refresh_token(&self, hash: &str, now: i64) -> Result<RefreshUse>;
    /// One refresh-token rotation in ONE transaction: [`use_refresh_token`](Store::use_refresh_token)
    /// and, when the token was `Fresh`, stores the token `successor` builds from it (`None`: no
    /// successor, the token stays used). If storing the successor fails, the token is not used
    /// either. Exactly one concurrent caller sees `Fresh`; a reuse still reports `Reused`.
    async fn rotate_refresh_token(
        &self,
        hash: &str,
        now: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse>;
    /// Deletes every refresh token of a rotation family; returns how many.
    async fn revoke_refresh_family(&self, family: &str) -> Result<u64>;
    /// Deletes a user's refresh tokens (of one client, or all); returns how many.
    async fn revoke_user_refresh_tokens(&self, user: &str, client_id: Option<&str>) -> Result<u64>;
    /// Makes the user's access tokens issued before `not_before` invalid.
    async fn set_tokens_not_before(&self, user: &str, not_before: i64) -> Result<()>;
    /// Every user's tokens-not-before time.
    async fn tokens_not_before(&self) -> Result<Vec<(String, i64)>>;
    /// One user's tokens-not-before time, if the user's tokens were ever revoked.
    async fn user_tokens_not_before(&self, user: &str) -> Result<Option<i64>>;
    /// Makes the user's access tokens obtained by `client_id` and issued before `not_before`
    /// invalid; `NotFound` if the user does not exist.
    async fn set_client_tokens_not_before(
        &self,
        user: &str,
        client_id: &str,
        not_before: i64,
    ) -> Result<()>;
    /// Every (user, client) tokens-not-before time.
    async fn client_tokens_not_before(&self) -> Result<Vec<(String, String, i64)>>;
    /// One user's (client, tokens-not-before time) pairs.
    async fn user_client_tokens_not_before(&self, user: &str) -> Result<Vec<(String, i64)>>;

    /// Creates a trusted external issuer; `Conflict` if the issuer URL is taken.
    async fn create_issuer(&self, issuer: &TrustedIssuer) -> Result<()>;
    /// Replaces a trusted issuer's settings; `NotFound` if it does not exist.
    async fn update_issuer(&self, issuer: &TrustedIssuer) -> Result<()>;
    /// Lists trusted issuers ordered by issuer URL.
    async fn issuers(&self) -> Result<Vec<TrustedIssuer>>;
    /// Deletes a trusted issuer; `NotFound` if it does not exist.
    async fn delete_issuer(&self, issuer: &str) -> Result<()>;

    /// Makes `kid` the only active signing key.
    async fn activate_signing_key(&self, kid: &str) -> Result<()>;
    /// Deletes a signing key (it must not be the active one).
    async fn delete_signing_key(&self, kid: &str) -> Result<()>;

    /// Sets or clears a device's Digest credential.
    async fn set_digest_credential(
        &self,
        device: &str,
        cred: Option<&DigestCredential>,
    ) -> Result<()>;
    /// Every device's Digest credential, as (device name, credential).
    async fn digest_credentials(&self) -> Result<Vec<(String, DigestCredential)>>;
    /// One device's Digest credential (device name compared case-insensitively), as (the
    /// device's stored name, credential).
    async fn device_digest_credential(
        &self,
        device: &str,
    ) -> Result<Option<(String, DigestCredential)>>;
    /// The Digest credentials of the devices `owner` owns, as (device name, credential).
    async fn owner_digest_credentials(
        &self,
        owner: &str,
    ) -> Result<Vec<(String, DigestCredential)>>;

    /// Creates an OAuth client; `Conflict` if the id is taken.
    async fn create_client(&self, client: &OAuthClient) -> Result<()>;
    /// Reads one OAuth client.
    async fn client(&self, id: &str) -> Result<Option<OAuthClient>>;
    /// Lists OAuth clients ordered by id.
    async fn clients(&self) -> Result<Vec<OAuthClient>>;
    /// Deletes an OAuth client.
    async fn delete_client(&self, id: &str) -> Result<()>;

    /// Creates or replaces an edge entry.
    async fn upsert_edge(&self, edge: &Edge) -> Result<()>;
    /// Lists edges ordered by host.
    async fn edges(&self) -> Result<Vec<Edge>>;
    /// Deletes an edge entry.
    async fn delete_edge(&self, host: &str) -> Result<()>;

    /// Adds a CA certificate to the trust store; `Conflict` if present.
    async fn add_trust_cert(&self, cert: &TrustCert) -> Result<()>;
    /// Lists trust store certificates.
    async fn trust_certs(&self) -> Result<Vec<TrustCert>>;
    /// Removes a trust store certificate by fingerprint.
    async fn delete_trust_cert(&self, fingerprint: &str) -> Result<()>;

    /// Replaces the stored bindings of each listed AOR in one transaction (an empty list deletes).
    /// The batch is taken by value: a backend that writes on another thread moves it there
    /// instead of copying every row.
    async fn write_bindings(&self, batch: Vec<(String, Vec<StoredBinding>)>) -> Result<()>;
    /// Every unexpired stored binding; expired ones are purged.
    async fn load_bindings(&self, now: i64) -> Result<Vec<StoredBinding>>;

    /// Stores an admin API token.
    async fn create_admin_token(&self, token: &AdminToken) -> Result<()>;
    /// Lists admin API tokens.
    async fn admin_tokens(&self) -> Result<Vec<AdminToken>>;
    /// Deletes an admin API token by id.
    async fn delete_admin_token(&self, id: &str) -> Result<()>;

    /// Appends an audit entry (its `id` is assigned by the store).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Audit entries with id greater than `after`, oldest first, at most `limit`.
    async fn audit(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>>;

    /// Subscribes to change notifications.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change>;

    /// Records that `node` is alive at `now` (unix seconds); `NotFound` for an unknown node.
    /// Publishes no [`Change`]: heartbeats are frequent and change nothing a cache holds.
    async fn heartbeat(&self, node: &str, now: i64) -> Result<()> {
        // A backend without heartbeats accepts and forgets them; its nodes list as never seen.
        let _ = (node, now);
        Ok(())
    }

    /// Nodes ordered by name, each with its last heartbeat.
    async fn node_statuses(&self) -> Result<Vec<NodeStatus>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .map(|node| NodeStatus {
                node,
                last_heartbeat: None,
            })
            .collect())
    }

    /// Like [`Store::write_bindings`], but replaces only the rows `node` holds for each listed AOR,
    /// so nodes sharing one database do not delete each other's bindings. A row of another node
    /// with the same (AOR, key) is taken over: the device re-registered here.
    async fn write_node_bindings(
        &self,
        node: &str,
        batch: Vec<(String, Vec<StoredBinding>)>,
    ) -> Result<()> {
        // Single-node backends hold one node's rows only, so replacing the whole AOR is the same.
        let _ = node;
        self.write_bindings(batch).await
    }
}
