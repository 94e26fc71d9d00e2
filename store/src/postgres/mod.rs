//! The cluster backend: one PostgreSQL database shared by every node.
//!
//! Writes run in transactions that also `NOTIFY` the change, so every node's listener
//! ([`listen`]) republishes it locally within milliseconds of the commit. Races between nodes are
//! settled by the database: row locks (`SELECT … FOR UPDATE`) for refresh-token use, an advisory
//! lock plus a partial unique index for the one active signing key. When the database is away,
//! every call fails with [`StoreError::Backend`] quickly (bounded pool timeouts) and the pool
//! reconnects by itself once it is back; callers keep serving from their caches meanwhile.

mod directory;
mod issuers;
mod listen;
mod profiles;
pub(crate) mod schema;
mod secrets;
mod settings;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::broadcast;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use crate::{
    redact_url, AdminToken, AuditEntry, Change, ClusterSettings, Device, DigestCredential, Edge,
    Line, Node, NodeStatus, OAuthClient, RefreshSuccessor, RefreshToken, RefreshUse, Result,
    SecurityProfile, SigningKey, Store, StoreError, StoredBinding, TrustCert, TrustedIssuer, User,
};

/// Which devices [`PostgresStore::read_devices`] reads.
#[derive(Debug, Clone, Copy)]
enum DeviceFilter<'a> {
    /// Every device.
    All,
    /// The one device with this name, compared case-insensitively.
    Name(&'a str),
    /// The devices this user owns.
    Owner(&'a str),
    /// The devices using this security profile.
    Profile(&'a str),
}

/// How often every node reloads everything even without a notification (the safety net).
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// How long a call waits for a connection before failing with `Backend` (database away).
const POOL_TIMEOUT: Duration = Duration::from_secs(3);

/// Serialises signing-key changes across nodes ("sipregky").
const KEYS_LOCK: i64 = 0x7369_7072_6567_6b79;

/// The refresh token's columns, then whether its family was revoked (a tombstone exists).
const REFRESH_COLUMNS: &str = "hash, user_id, client_id, scope, issued_at, expires_at, family, used,
    (family <> '' AND EXISTS (SELECT 1 FROM revoked_refresh_families f WHERE f.family = refresh_tokens.family))";

/// How long a revoked family's tombstone is kept: longer than any refresh token lives (365 days).
const FAMILY_TOMBSTONE_SECS: i64 = 366 * 86400;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a server error is just "db error"; the message is what helps.
        match e.as_db_error() {
            Some(db) => StoreError::Backend(format!("postgresql: {}", db.message())),
            None => StoreError::Backend(format!("postgresql: {e}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Backend(format!("database unavailable: {e}"))
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

async fn insert_refresh<C: deadpool_postgres::GenericClient>(
    c: &C,
    t: &RefreshToken,
) -> Result<()> {
    c.execute(
        "INSERT INTO refresh_tokens (hash, user_id, client_id, scope, issued_at, expires_at, family)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&t.hash, &t.user_id, &t.client_id, &t.scope, &t.issued_at, &t.expires_at, &t.family],
    )
    .await
    .map_err(|e| unique_as_conflict(e, "refresh token".into()))?;
    Ok(())
}

/// The body of `use_refresh_token`, inside the caller's transaction.
async fn use_refresh(
    tx: &tokio_postgres::Transaction<'_>,
    hash: &str,
    now: i64,
) -> Result<RefreshUse> {
    // The row lock makes a second caller (on any node) wait, then see `used`.
    let row = tx
        .query_opt(
            &format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE hash = $1 FOR UPDATE"),
            &[&hash],
        )
        .await?;
    Ok(match row.as_ref().map(read_refresh).transpose()? {
        None => RefreshUse::Unknown,
        Some((t, _, revoked)) if t.expires_at <= now || revoked => RefreshUse::Unknown,
        Some((t, true, _)) => RefreshUse::Reused(t),
        Some((t, false, _)) => {
            tx.execute(
                "UPDATE refresh_tokens SET used = TRUE WHERE hash = $1",
                &[&hash],
            )
            .await?;
            RefreshUse::Fresh(t)
        }
    })
}

fn unique_as_conflict(e: tokio_postgres::Error, what: String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(what)
    } else {
        e.into()
    }
}

/// Deadlocks and serialisation failures are the database saying "try again".
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

fn port(row: &Row, i: usize) -> Result<u16> {
    let v: i32 = row.try_get(i)?;
    u16::try_from(v).map_err(|_| StoreError::Backend(format!("stored port {v} is out of range")))
}

fn read_node(row: &Row) -> Result<Node> {
    Ok(Node {
        name: row.try_get(0)?,
        host: row.try_get(1)?,
        sip_port: port(row, 2)?,
        secured_sip_port: port(row, 3)?,
        sip_oauth_port: port(row, 4)?,
        sip_mra_oauth_port: port(row, 5)?,
    })
}

/// The token, whether it was used, and whether its family was revoked.
fn read_refresh(row: &Row) -> Result<(RefreshToken, bool, bool)> {
    Ok((
        RefreshToken {
            hash: row.try_get(0)?,
            user_id: row.try_get(1)?,
            client_id: row.try_get(2)?,
            scope: row.try_get(3)?,
            issued_at: row.try_get(4)?,
            expires_at: row.try_get(5)?,
            family: row.try_get(6)?,
        },
        row.try_get(7)?,
        row.try_get(8)?,
    ))
}

fn read_key(row: &Row) -> Result<SigningKey> {
    Ok(SigningKey {
        kid: row.try_get(0)?,
        alg: row.try_get(1)?,
        private_pem: row.try_get(2)?,
        public_x: row.try_get(3)?,
        public_y: row.try_get(4)?,
        created_at: row.try_get(5)?,
        active: row.try_get(6)?,
    })
}

fn read_client(row: &Row) -> Result<OAuthClient> {
    Ok(OAuthClient {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        redirect_uris: parse_list(row.try_get(2)?),
        scopes: parse_list(row.try_get(3)?),
        created_at: row.try_get(4)?,
    })
}

fn read_user(row: &Row) -> Result<User> {
    Ok(User {
        id: row.try_get(0)?,
        password_hash: row.try_get(1)?,
        created_at: row.try_get(2)?,
    })
}

fn read_binding(row: &Row) -> Result<StoredBinding> {
    Ok(StoredBinding {
        aor: row.try_get(0)?,
        key: row.try_get(1)?,
        expires_at: row.try_get(2)?,
        node: row.try_get(3)?,
        data: row.try_get(4)?,
    })
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn parse_list(s: String) -> Vec<String> {
    serde_json::from_str(&s).unwrap_or_default()
}

/// A different id for every store instance, so a node recognises (and skips) its own notifications.
fn new_origin() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}.{:x}.{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A [`Store`] in a PostgreSQL database that several nodes share.
pub struct PostgresStore {
    pool: Pool,
    changes: broadcast::Sender<Change>,
    origin: String,
    listener: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PostgresStore {
    /// Connects to the database a `postgres://` URL names, applies pending migrations and starts
    /// listening for other nodes' changes (with a full reload every 30 s as a safety net).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, DEFAULT_RELOAD_INTERVAL).await
    }

    /// Like [`PostgresStore::connect`] with the safety-net reload every `reload_every`.
    pub async fn connect_with(url: &str, reload_every: Duration) -> Result<Self> {
        Self::connect_migrating(url, reload_every, schema::MIGRATIONS).await
    }

    pub(crate) async fn connect_migrating(
        url: &str,
        reload_every: Duration,
        migrations: &[&str],
    ) -> Result<Self> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("store URL {}: {e}", redact_url(url))))?;
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(POOL_TIMEOUT);
        }
        // A peer that vanished without closing the connection is noticed within about a minute.
        cfg.keepalives(true);
        cfg.keepalives_idle(Duration::from_secs(30));
        if cfg.get_application_name().is_none() {
            cfg.application_name("sipreg");
        }
        let manager = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        {
            let mut client = pool.get().await.map_err(|e| {
                StoreError::Backend(format!("cannot connect to {}: {e}", redact_url(url)))
            })?;
            schema::migrate(&mut client, migrations).await?;
        }
        let (changes, _) = broadcast::channel(256);
        let origin = new_origin();
        let (ready, listening) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listen::run(
            cfg,
            origin.clone(),
            changes.clone(),
            reload_every.max(Duration::from_millis(100)),
            ready,
        ));
        // Other nodes' changes count from here on; a slow listener is not fatal (it retries and
        // then asks for a full reload), so this wait is bounded.
        let _ = tokio::time::timeout(POOL_TIMEOUT, listening).await;
        Ok(PostgresStore {
            pool,
            changes,
            origin,
            listener,
        })
    }

    async fn client(&self) -> Result<Object> {
        Ok(self.pool.get().await?)
    }

    /// Sends the change to every node as part of `tx`, commits, then publishes it here.
    async fn commit(&self, tx: deadpool_postgres::Transaction<'_>, change: Change) -> Result<()> {
        let payload = listen::encode(&self.origin, &change);
        tx.execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &payload])
            .await?;
        tx.commit().await?;
        let _ = self.changes.send(change);
        Ok(())
    }

    /// Deletes expired refresh tokens nobody is holding; skipping locked rows cannot deadlock.
    async fn purge_expired_refresh(&self, c: &Object, now: i64) -> Result<()> {
        c.execute(
            "DELETE FROM refresh_tokens WHERE hash IN (
                 SELECT hash FROM refresh_tokens WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)",
            &[&now],
        )
        .await?;
        c.execute(
            "DELETE FROM revoked_refresh_families WHERE revoked_at <= $1",
            &[&(now - FAMILY_TOMBSTONE_SECS)],
        )
        .await?;
        Ok(())
    }

    async fn read_devices(&self, c: &Object, which: DeviceFilter<'_>) -> Result<Vec<Device>> {
        const COLUMNS: &str = "SELECT name, owner, oauth, updated_at, model, profile FROM devices";
        const ORDER: &str = r#"ORDER BY lower(name) COLLATE "C", name COLLATE "C""#;
        let (devs, lines) = match which {
            DeviceFilter::Name(name) => (
                c.query(
                    &format!("{COLUMNS} WHERE lower(name) = lower($1)"),
                    &[&name],
                )
                .await?,
                c.query(
                    "SELECT device, dn, display_name FROM lines
                     WHERE device = (SELECT name FROM devices WHERE lower(name) = lower($1))
                     ORDER BY position",
                    &[&name],
                )
                .await?,
            ),
            // One user's or one profile's devices: the narrow reads of the directory's
            // incremental updates.
            DeviceFilter::Owner(value) | DeviceFilter::Profile(value) => {
                let column = if matches!(which, DeviceFilter::Owner(_)) {
                    "owner"
                } else {
                    "profile"
                };
                (
                    c.query(&format!("{COLUMNS} WHERE {column} = $1 {ORDER}"), &[&value])
                        .await?,
                    c.query(
                        &format!(
                            "SELECT device, dn, display_name FROM lines
                             WHERE device IN (SELECT name FROM devices WHERE {column} = $1)
                             ORDER BY device, position"
                        ),
                        &[&value],
                    )
                    .await?,
                )
            }
            DeviceFilter::All => (
                c.query(&format!("{COLUMNS} {ORDER}"), &[]).await?,
                c.query(
                    "SELECT device, dn, display_name FROM lines ORDER BY device, position",
                    &[],
                )
                .await?,
            ),
        };
        let mut by_device: std::collections::HashMap<String, Vec<Line>> =
            std::collections::HashMap::new();
        for r in &lines {
            by_device.entry(r.try_get(0)?).or_default().push(Line {
                dn: r.try_get(1)?,
                display_name: r.try_get(2)?,
            });
        }
        devs.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                Ok(Device {
                    lines: by_device.remove(&name).unwrap_or_default(),
                    name,
                    owner: r.try_get(1)?,
                    oauth: r.try_get(2)?,
                    updated_at: r.try_get(3)?,
                    model: r.try_get(4)?,
                    profile: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Replaces bindings per AOR: all of the AOR's rows, or only those of `node`.
    async fn replace_bindings(
        &self,
        node: Option<&str>,
        batch: &[(String, Vec<StoredBinding>)],
    ) -> Result<()> {
        // One lock order (by AOR) for every node, so two nodes' batches cannot deadlock.
        let mut sorted: Vec<&(String, Vec<StoredBinding>)> = batch.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut c = self.client().await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match try_replace_bindings(&mut c, node, &sorted).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 && is_retryable(&e) => {
                    tracing::debug!(error = %e, "binding write retried");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

async fn try_replace_bindings(
    c: &mut Object,
    node: Option<&str>,
    batch: &[&(String, Vec<StoredBinding>)],
) -> std::result::Result<(), tokio_postgres::Error> {
    let tx = c.transaction().await?;
    for (aor, rows) in batch {
        // Only keys gone from the AOR are deleted; the others are updated in place below,
        // which leaves no dead row behind for each unchanged binding.
        let keys: Vec<&str> = rows.iter().map(|b| b.key.as_str()).collect();
        match node {
            Some(n) => {
                tx.execute(
                    "DELETE FROM bindings WHERE aor = $1 AND node = $2 AND key <> ALL($3)",
                    &[aor, &n, &keys],
                )
                .await?
            }
            None => {
                tx.execute(
                    "DELETE FROM bindings WHERE aor = $1 AND key <> ALL($2)",
                    &[aor, &keys],
                )
                .await?
            }
        };
        for b in rows {
            let holder = node.unwrap_or(&b.node);
            tx.execute(
                "INSERT INTO bindings (aor, key, expires_at, node, data) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (aor, key) DO UPDATE SET expires_at = EXCLUDED.expires_at,
                   node = EXCLUDED.node, data = EXCLUDED.data",
                &[aor, &b.key, &b.expires_at, &holder, &b.data],
            )
            .await?;
        }
    }
    tx.commit().await
}

#[async_trait]
impl Store for PostgresStore {
    async fn cluster_settings(&self) -> Result<ClusterSettings> {
        self.read_settings().await
    }

    async fn set_cluster_settings(&self, settings: &ClusterSettings) -> Result<()> {
        self.write_settings(settings).await
    }

    async fn seed_cluster_settings(&self, settings: &ClusterSettings) -> Result<bool> {
        self.seed_settings(settings).await
    }

    async fn digest_nonce_secret(&self, candidate: [u8; 32]) -> Result<[u8; 32]> {
        self.pg_digest_nonce_secret(candidate).await
    }

    async fn set_oauth_mode(&self, on: bool) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "UPDATE cluster_settings SET oauth_mode = $1 WHERE id = 1",
            &[&on],
        )
        .await?;
        self.commit(tx, Change::Cluster).await
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO users (id, password_hash, created_at) VALUES ($1, $2, $3)",
            &[&user.id, &user.password_hash, &user.created_at],
        )
        .await
        .map_err(|e| unique_as_conflict(e, format!("user {}", user.id)))?;
        self.commit(tx, Change::User(user.id.clone())).await
    }

    async fn user(&self, id: &str) -> Result<Option<User>> {
        let c = self.client().await?;
        c.query_opt(
            "SELECT id, password_hash, created_at FROM users WHERE id = $1",
            &[&id],
        )
        .await?
        .as_ref()
        .map(read_user)
        .transpose()
    }

    async fn users(&self) -> Result<Vec<User>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT id, password_hash, created_at FROM users ORDER BY id COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(read_user)
        .collect()
    }

    async fn set_password_hash(&self, id: &str, password_hash: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if tx
            .execute(
                "UPDATE users SET password_hash = $2 WHERE id = $1",
                &[&id, &password_hash],
            )
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        self.commit(tx, Change::User(id.to_owned())).await
    }

    async fn delete_user(&self, id: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if tx
            .execute("DELETE FROM users WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        self.commit(tx, Change::User(id.to_owned())).await
    }

    async fn create_device(&self, device: &Device) -> Result<()> {
        let d = device;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // FOR SHARE keeps the owner from being deleted until this device is in.
        require_owner(&tx, &d.owner).await?;
        let (profile, oauth, model) = profiles::resolve(&tx, d).await?;
        tx.execute(
            "INSERT INTO devices (name, owner, oauth, updated_at, model, profile)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&d.name, &d.owner, &oauth, &d.updated_at, &model, &profile],
        )
        .await
        .map_err(|e| unique_as_conflict(e, format!("device {}", d.name)))?;
        insert_lines(&tx, &d.name, &d.lines).await?;
        self.commit(tx, Change::Device(d.name.clone())).await
    }

    async fn device(&self, name: &str) -> Result<Option<Device>> {
        let c = self.client().await?;
        Ok(self
            .read_devices(&c, DeviceFilter::Name(name))
            .await?
            .into_iter()
            .next())
    }

    async fn devices(&self) -> Result<Vec<Device>> {
        let c = self.client().await?;
        self.read_devices(&c, DeviceFilter::All).await
    }

    async fn update_device(&self, device: &Device) -> Result<()> {
        let d = device;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        require_owner(&tx, &d.owner).await?;
        let (profile, oauth, model) = profiles::resolve(&tx, d).await?;
        let Some(row) = tx
            .query_opt(
                "UPDATE devices SET owner = $2, oauth = $3, updated_at = $4, model = $5,
                 profile = $6 WHERE lower(name) = lower($1) RETURNING name",
                &[&d.name, &d.owner, &oauth, &d.updated_at, &model, &profile],
            )
            .await?
        else {
            return Err(StoreError::NotFound(format!("device {}", d.name)));
        };
        let stored: String = row.get(0);
        tx.execute("DELETE FROM lines WHERE device = $1", &[&stored])
            .await?;
        insert_lines(&tx, &stored, &d.lines).await?;
        self.commit(tx, Change::Device(stored)).await
    }

    async fn delete_device(&self, name: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if tx
            .execute(
                "DELETE FROM devices WHERE lower(name) = lower($1)",
                &[&name],
            )
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("device {name}")));
        }
        self.commit(tx, Change::Device(name.to_owned())).await
    }

    async fn devices_of_owner(&self, owner: &str) -> Result<Vec<Device>> {
        let c = self.client().await?;
        self.read_devices(&c, DeviceFilter::Owner(owner)).await
    }

    async fn devices_with_profile(&self, profile: &str) -> Result<Vec<Device>> {
        let c = self.client().await?;
        self.read_devices(&c, DeviceFilter::Profile(profile)).await
    }

    async fn create_profile(&self, profile: &SecurityProfile) -> Result<()> {
        self.pg_create_profile(profile).await
    }

    async fn profile(&self, name: &str) -> Result<Option<SecurityProfile>> {
        self.pg_profile(name).await
    }

    async fn profiles(&self) -> Result<Vec<SecurityProfile>> {
        self.pg_profiles().await
    }

    async fn update_profile(&self, profile: &SecurityProfile) -> Result<()> {
        self.pg_update_profile(profile, crate::heartbeat::unix_now())
            .await
    }

    async fn delete_profile(&self, name: &str) -> Result<()> {
        self.pg_delete_profile(name).await
    }

    async fn set_line_display_name(
        &self,
        dn: &str,
        display_name: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>> {
        self.pg_set_line_display_name(dn, display_name, now).await
    }

    async fn upsert_node(&self, node: &Node) -> Result<()> {
        let n = node;
        let ports = [
            i32::from(n.sip_port),
            i32::from(n.secured_sip_port),
            i32::from(n.sip_oauth_port),
            i32::from(n.sip_mra_oauth_port),
        ];
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO nodes (name, host, sip_port, secured_sip_port, sip_oauth_port, sip_mra_oauth_port)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, sip_port = EXCLUDED.sip_port,
               secured_sip_port = EXCLUDED.secured_sip_port, sip_oauth_port = EXCLUDED.sip_oauth_port,
               sip_mra_oauth_port = EXCLUDED.sip_mra_oauth_port",
            &[&n.name, &n.host, &ports[0], &ports[1], &ports[2], &ports[3]],
        )
        .await?;
        self.commit(tx, Change::Node(n.name.clone())).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT name, host, sip_port, secured_sip_port, sip_oauth_port, sip_mra_oauth_port
               FROM nodes ORDER BY name COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(read_node)
        .collect()
    }

    async fn insert_signing_key(&self, key: &SigningKey) -> Result<()> {
        let k = key;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await?;
        if k.active {
            tx.execute("UPDATE signing_keys SET active = FALSE WHERE active", &[])
                .await?;
        }
        tx.execute(
            "INSERT INTO signing_keys (kid, alg, private_pem, public_x, public_y, created_at, active)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&k.kid, &k.alg, &k.private_pem, &k.public_x, &k.public_y, &k.created_at, &k.active],
        )
        .await
        .map_err(|e| unique_as_conflict(e, format!("signing key {}", k.kid)))?;
        self.commit(tx, Change::SigningKeys).await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT kid, alg, private_pem, public_x, public_y, created_at, active
               FROM signing_keys ORDER BY created_at DESC, kid COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(read_key)
        .collect()
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<()> {
        let c = self.client().await?;
        insert_refresh(&c, token).await
    }

    async fn take_refresh_token(&self, hash: &str, now: i64) -> Result<Option<RefreshToken>> {
        let c = self.client().await?;
        // DELETE … RETURNING is atomic: of two nodes taking the same token, one gets the row.
        let row = c
            .query_opt(
                &format!("DELETE FROM refresh_tokens WHERE hash = $1 RETURNING {REFRESH_COLUMNS}"),
                &[&hash],
            )
            .await?;
        self.purge_expired_refresh(&c, now).await?;
        let tok = row.as_ref().map(read_refresh).transpose()?;
        Ok(tok
            .filter(|(_, used, revoked)| !used && !revoked)
            .map(|(t, _, _)| t)
            .filter(|t| t.expires_at > now))
    }

    async fn use_refresh_token(&self, hash: &str, now: i64) -> Result<RefreshUse> {
        let mut c = self.client().await?;
        let out = {
            let tx = c.transaction().await?;
            let out = use_refresh(&tx, hash, now).await?;
            tx.commit().await?;
            out
        };
        self.purge_expired_refresh(&c, now).await?;
        Ok(out)
    }

    async fn rotate_refresh_token(
        &self,
        hash: &str,
        now: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse> {
        let mut c = self.client().await?;
        let out = {
            // One transaction: the use is only committed with its successor (a failed insert,
            // e.g. the user deleted meanwhile, rolls the use back when `tx` drops).
            let tx = c.transaction().await?;
            let out = use_refresh(&tx, hash, now).await?;
            if let RefreshUse::Fresh(old) = &out {
                if let Some(next) = successor(old) {
                    insert_refresh(&tx, &next).await?;
                }
            }
            tx.commit().await?;
            out
        };
        self.purge_expired_refresh(&c, now).await?;
        Ok(out)
    }

    async fn revoke_refresh_family(&self, family: &str) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The tombstone also kills a token of the family inserted after this: a rotation racing
        // with the reuse that revoked it, possibly on another node.
        if !family.is_empty() {
            tx.execute(
                "INSERT INTO revoked_refresh_families (family, revoked_at) VALUES ($1, $2)
                 ON CONFLICT (family) DO UPDATE SET revoked_at = EXCLUDED.revoked_at",
                &[&family, &crate::heartbeat::unix_now()],
            )
            .await?;
        }
        let n = tx
            .execute("DELETE FROM refresh_tokens WHERE family = $1", &[&family])
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn revoke_user_refresh_tokens(&self, user: &str, client_id: Option<&str>) -> Result<u64> {
        let c = self.client().await?;
        Ok(match client_id {
            Some(cl) => {
                c.execute(
                    "DELETE FROM refresh_tokens WHERE user_id = $1 AND client_id = $2",
                    &[&user, &cl],
                )
                .await?
            }
            None => {
                c.execute("DELETE FROM refresh_tokens WHERE user_id = $1", &[&user])
                    .await?
            }
        })
    }

    async fn set_tokens_not_before(&self, user: &str, not_before: i64) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "INSERT INTO token_revocations (user_id, not_before) SELECT id, $2 FROM users WHERE id = $1
                 ON CONFLICT (user_id) DO UPDATE
                   SET not_before = GREATEST(token_revocations.not_before, EXCLUDED.not_before)",
                &[&user, &not_before],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        self.commit(tx, Change::Revocation(user.to_owned())).await
    }

    async fn set_client_tokens_not_before(
        &self,
        user: &str,
        client_id: &str,
        not_before: i64,
    ) -> Result<()> {
        self.pg_set_client_not_before(user, client_id, not_before)
            .await
    }

    async fn client_tokens_not_before(&self) -> Result<Vec<(String, String, i64)>> {
        self.pg_client_not_before().await
    }

    async fn create_issuer(&self, issuer: &TrustedIssuer) -> Result<()> {
        self.pg_create_issuer(issuer).await
    }

    async fn update_issuer(&self, issuer: &TrustedIssuer) -> Result<()> {
        self.pg_update_issuer(issuer).await
    }

    async fn issuers(&self) -> Result<Vec<TrustedIssuer>> {
        self.pg_issuers().await
    }

    async fn delete_issuer(&self, issuer: &str) -> Result<()> {
        self.pg_delete_issuer(issuer).await
    }

    async fn tokens_not_before(&self) -> Result<Vec<(String, i64)>> {
        let c = self.client().await?;
        c.query("SELECT user_id, not_before FROM token_revocations", &[])
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    async fn activate_signing_key(&self, kid: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await?;
        if tx
            .query_opt("SELECT 1 FROM signing_keys WHERE kid = $1", &[&kid])
            .await?
            .is_none()
        {
            return Err(StoreError::NotFound(format!("signing key {kid}")));
        }
        // Deactivate first: the partial unique index allows one active key at any moment.
        tx.execute(
            "UPDATE signing_keys SET active = FALSE WHERE active AND kid <> $1",
            &[&kid],
        )
        .await?;
        tx.execute(
            "UPDATE signing_keys SET active = TRUE WHERE kid = $1",
            &[&kid],
        )
        .await?;
        self.commit(tx, Change::SigningKeys).await
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await?;
        let active: Option<bool> = tx
            .query_opt("SELECT active FROM signing_keys WHERE kid = $1", &[&kid])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        match active {
            None => Err(StoreError::NotFound(format!("signing key {kid}"))),
            Some(true) => Err(StoreError::Invalid(format!(
                "signing key {kid} is the active key; activate another key first"
            ))),
            Some(false) => {
                tx.execute("DELETE FROM signing_keys WHERE kid = $1", &[&kid])
                    .await?;
                self.commit(tx, Change::SigningKeys).await
            }
        }
    }

    async fn set_digest_credential(
        &self,
        device: &str,
        cred: Option<&DigestCredential>,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let canonical: Option<String> = tx
            .query_opt(
                "SELECT name FROM devices WHERE lower(name) = lower($1) FOR UPDATE",
                &[&device],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let Some(name) = canonical else {
            return Err(StoreError::NotFound(format!("device {device}")));
        };
        tx.execute("DELETE FROM digest_credentials WHERE device = $1", &[&name])
            .await?;
        if let Some(cr) = cred {
            tx.execute(
                "INSERT INTO digest_credentials (device, username, realm, ha1_md5, ha1_sha256)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&name, &cr.username, &cr.realm, &cr.ha1_md5, &cr.ha1_sha256],
            )
            .await
            .map_err(|e| unique_as_conflict(e, format!("digest user name {}", cr.username)))?;
        }
        self.commit(tx, Change::Digest(device.to_owned())).await
    }

    async fn digest_credentials(&self) -> Result<Vec<(String, DigestCredential)>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT device, username, realm, ha1_md5, ha1_sha256 FROM digest_credentials
               ORDER BY device COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                DigestCredential {
                    username: r.try_get(1)?,
                    realm: r.try_get(2)?,
                    ha1_md5: r.try_get(3)?,
                    ha1_sha256: r.try_get(4)?,
                },
            ))
        })
        .collect()
    }

    async fn device_digest_credential(
        &self,
        device: &str,
    ) -> Result<Option<(String, DigestCredential)>> {
        self.pg_device_digest(device).await
    }

    async fn owner_digest_credentials(
        &self,
        owner: &str,
    ) -> Result<Vec<(String, DigestCredential)>> {
        self.pg_owner_digests(owner).await
    }

    async fn user_tokens_not_before(&self, user: &str) -> Result<Option<i64>> {
        self.pg_user_not_before(user).await
    }

    async fn user_client_tokens_not_before(&self, user: &str) -> Result<Vec<(String, i64)>> {
        self.pg_user_client_not_before(user).await
    }

    async fn create_client(&self, client: &OAuthClient) -> Result<()> {
        let cl = client;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO oauth_clients (id, name, redirect_uris, scopes, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&cl.id, &cl.name, &json_list(&cl.redirect_uris), &json_list(&cl.scopes), &cl.created_at],
        )
        .await
        .map_err(|e| unique_as_conflict(e, format!("client {}", cl.id)))?;
        self.commit(tx, Change::Client(cl.id.clone())).await
    }

    async fn client(&self, id: &str) -> Result<Option<OAuthClient>> {
        let c = self.client().await?;
        c.query_opt(
            "SELECT id, name, redirect_uris, scopes, created_at FROM oauth_clients WHERE id = $1",
            &[&id],
        )
        .await?
        .as_ref()
        .map(read_client)
        .transpose()
    }

    async fn clients(&self) -> Result<Vec<OAuthClient>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT id, name, redirect_uris, scopes, created_at FROM oauth_clients ORDER BY id COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(read_client)
        .collect()
    }

    async fn delete_client(&self, id: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if tx
            .execute("DELETE FROM oauth_clients WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("client {id}")));
        }
        self.commit(tx, Change::Client(id.to_owned())).await
    }

    async fn upsert_edge(&self, edge: &Edge) -> Result<()> {
        let e = edge;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO edges (host, description, subject_names, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT ((lower(host))) DO UPDATE SET description = EXCLUDED.description,
               subject_names = EXCLUDED.subject_names, updated_at = EXCLUDED.updated_at",
            &[&e.host, &e.description, &json_list(&e.subject_names), &e.updated_at],
        )
        .await?;
        self.commit(tx, Change::Edge(e.host.clone())).await
    }

    async fn edges(&self) -> Result<Vec<Edge>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT host, description, subject_names, updated_at FROM edges
               ORDER BY lower(host) COLLATE "C", host COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Edge {
                host: r.try_get(0)?,
                description: r.try_get(1)?,
                subject_names: parse_list(r.try_get(2)?),
                updated_at: r.try_get(3)?,
            })
        })
        .collect()
    }

    async fn delete_edge(&self, host: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if tx
            .execute("DELETE FROM edges WHERE lower(host) = lower($1)", &[&host])
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("edge {host}")));
        }
        self.commit(tx, Change::Edge(host.to_owned())).await
    }

    async fn add_trust_cert(&self, cert: &TrustCert) -> Result<()> {
        let t = cert;
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO trust_certs (fingerprint, pem, subject, added_at) VALUES ($1, $2, $3, $4)",
            &[&t.fingerprint, &t.pem, &t.subject, &t.added_at],
        )
        .await
        .map_err(|e| unique_as_conflict(e, format!("trust certificate {}", t.fingerprint)))?;
        self.commit(tx, Change::Trust).await
    }

    async fn trust_certs(&self) -> Result<Vec<TrustCert>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT fingerprint, pem, subject, added_at FROM trust_certs
               ORDER BY added_at, fingerprint COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(TrustCert {
                fingerprint: r.try_get(0)?,
                pem: r.try_get(1)?,
                subject: r.try_get(2)?,
                added_at: r.try_get(3)?,
            })
        })
        .collect()
    }

    async fn delete_trust_cert(&self, fingerprint: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if tx
            .execute(
                "DELETE FROM trust_certs WHERE fingerprint = $1",
                &[&fingerprint],
            )
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!(
                "trust certificate {fingerprint}"
            )));
        }
        self.commit(tx, Change::Trust).await
    }

    async fn write_bindings(&self, batch: Vec<(String, Vec<StoredBinding>)>) -> Result<()> {
        self.replace_bindings(None, &batch).await
    }

    async fn load_bindings(&self, now: i64) -> Result<Vec<StoredBinding>> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM bindings WHERE (aor, key) IN (
                 SELECT aor, key FROM bindings WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)",
            &[&now],
        )
        .await?;
        c.query(
            r#"SELECT aor, key, expires_at, node, data FROM bindings WHERE expires_at > $1
               ORDER BY aor COLLATE "C", key COLLATE "C""#,
            &[&now],
        )
        .await?
        .iter()
        .map(read_binding)
        .collect()
    }

    async fn create_admin_token(&self, token: &AdminToken) -> Result<()> {
        let t = token;
        let c = self.client().await?;
        c.execute(
            "INSERT INTO admin_tokens (id, name, scope, sha256, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[&t.id, &t.name, &t.scope, &t.sha256, &t.created_at],
        )
        .await
        .map_err(|e| unique_as_conflict(e, format!("admin token {}", t.id)))?;
        Ok(())
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminToken>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT id, name, scope, sha256, created_at FROM admin_tokens
               ORDER BY created_at, id COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(AdminToken {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                scope: r.try_get(2)?,
                sha256: r.try_get(3)?,
                created_at: r.try_get(4)?,
            })
        })
        .collect()
    }

    async fn delete_admin_token(&self, id: &str) -> Result<()> {
        let c = self.client().await?;
        if c.execute("DELETE FROM admin_tokens WHERE id = $1", &[&id])
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("admin token {id}")));
        }
        Ok(())
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let e = entry;
        let c = self.client().await?;
        c.execute(
            "INSERT INTO audit_log (at, actor, action, before, after) VALUES ($1, $2, $3, $4, $5)",
            &[
                &e.at,
                &e.actor,
                &e.action,
                &e.before.to_string(),
                &e.after.to_string(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn audit(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        c.query(
            "SELECT id, at, actor, action, before, after FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.try_get(0)?,
                at: r.try_get(1)?,
                actor: r.try_get(2)?,
                action: r.try_get(3)?,
                before: serde_json::from_str(&r.try_get::<_, String>(4)?).unwrap_or_default(),
                after: serde_json::from_str(&r.try_get::<_, String>(5)?).unwrap_or_default(),
            })
        })
        .collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn heartbeat(&self, node: &str, now: i64) -> Result<()> {
        let c = self.client().await?;
        if c.execute(
            "UPDATE nodes SET heartbeat_at = $2 WHERE name = $1",
            &[&node, &now],
        )
        .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("node {node}")));
        }
        Ok(())
    }

    async fn node_statuses(&self) -> Result<Vec<NodeStatus>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT name, host, sip_port, secured_sip_port, sip_oauth_port, sip_mra_oauth_port,
                      heartbeat_at
               FROM nodes ORDER BY name COLLATE "C""#,
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(NodeStatus {
                node: read_node(r)?,
                last_heartbeat: r.try_get(6)?,
            })
        })
        .collect()
    }

    async fn write_node_bindings(
        &self,
        node: &str,
        batch: Vec<(String, Vec<StoredBinding>)>,
    ) -> Result<()> {
        self.replace_bindings(Some(node), &batch).await
    }
}

/// `Invalid` unless the user exists; FOR SHARE keeps it from being deleted until the tx ends.
async fn require_owner(tx: &deadpool_postgres::Transaction<'_>, owner: &str) -> Result<()> {
    if tx
        .query_opt("SELECT 1 FROM users WHERE id = $1 FOR SHARE", &[&owner])
        .await?
        .is_some()
    {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("owner {owner} does not exist")))
    }
}

/// Writes a device's lines in button order.
async fn insert_lines(
    tx: &deadpool_postgres::Transaction<'_>,
    device: &str,
    lines: &[Line],
) -> Result<()> {
    for (i, line) in lines.iter().enumerate() {
        let position = i32::try_from(i)
            .map_err(|_| StoreError::Invalid(format!("device {device} has too many lines")))?;
        tx.execute(
            "INSERT INTO lines (device, position, dn, display_name) VALUES ($1, $2, $3, $4)",
            &[&device, &position, &line.dn, &line.display_name],
        )
        .await?;
    }
    Ok(())
}
