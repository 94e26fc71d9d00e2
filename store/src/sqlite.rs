//! The embedded default backend: one SQLite file, WAL mode, forward-only migrations.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::broadcast;

use crate::{
    AdminToken, AuditEntry, Change, ClusterSettings, Device, DigestCredential, Edge, Line, Node,
    NodeStatus, OAuthClient, RefreshSuccessor, RefreshToken, RefreshUse, Result, SecurityProfile,
    SigningKey, Store, StoreError, StoredBinding, TrustCert, TrustedIssuer, User,
};

/// Forward-only schema migrations; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE cluster_settings (id INTEGER PRIMARY KEY CHECK (id = 1), oauth_mode INTEGER NOT NULL);
INSERT INTO cluster_settings (id, oauth_mode) VALUES (1, 0);
CREATE TABLE users (id TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE devices (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    owner TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    oauth INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE lines (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    dn TEXT NOT NULL,
    display_name TEXT,
    PRIMARY KEY (device, position)
);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY, host TEXT NOT NULL, sip_port INTEGER NOT NULL,
    secured_sip_port INTEGER NOT NULL, sip_oauth_port INTEGER NOT NULL, sip_mra_oauth_port INTEGER NOT NULL
);
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY, alg TEXT NOT NULL, private_pem TEXT NOT NULL, public_x TEXT NOT NULL,
    public_y TEXT NOT NULL, created_at INTEGER NOT NULL, active INTEGER NOT NULL
);
CREATE TABLE refresh_tokens (
    hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL, scope TEXT NOT NULL, issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE refresh_tokens ADD COLUMN family TEXT NOT NULL DEFAULT '';
ALTER TABLE refresh_tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id, client_id);
CREATE TABLE token_revocations (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE, not_before INTEGER NOT NULL
);
CREATE TABLE digest_credentials (
    device TEXT PRIMARY KEY REFERENCES devices(name) ON DELETE CASCADE,
    username TEXT NOT NULL UNIQUE, realm TEXT NOT NULL, ha1_md5 TEXT NOT NULL, ha1_sha256 TEXT NOT NULL
);
CREATE TABLE oauth_clients (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, redirect_uris TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE edges (
    host TEXT PRIMARY KEY COLLATE NOCASE, description TEXT NOT NULL, subject_names TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE trust_certs (
    fingerprint TEXT PRIMARY KEY, pem TEXT NOT NULL, subject TEXT NOT NULL, added_at INTEGER NOT NULL
);
CREATE TABLE bindings (
    aor TEXT NOT NULL, key TEXT NOT NULL, expires_at INTEGER NOT NULL, node TEXT NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (aor, key)
);
CREATE INDEX bindings_expiry ON bindings(expires_at);
"#,
    r#"
CREATE TABLE admin_tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    before TEXT NOT NULL, after TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE nodes ADD COLUMN heartbeat_at INTEGER;
CREATE TABLE revoked_refresh_families (family TEXT PRIMARY KEY, revoked_at INTEGER NOT NULL);
"#,
    crate::sqlite_settings::MIGRATION,
    crate::sqlite_issuers::MIGRATION,
    crate::sqlite_profiles::MIGRATION,
    // Every refresh grant sweeps expired tokens and old family tombstones; without these indexes
    // each sweep scanned the whole table (5 ms per grant with 20,000 tokens stored).
    r#"
CREATE INDEX refresh_tokens_expires ON refresh_tokens(expires_at);
CREATE INDEX revoked_refresh_families_at ON revoked_refresh_families(revoked_at);
"#,
    crate::sqlite_directory::MIGRATION,
    crate::sqlite_secrets::MIGRATION,
];

/// WAL frames (pages) after which a commit checkpoints them into the database file (SQLite's
/// default is 1,000); the rotation writer's checkpoint thread (see `sqlite_rotate`) does most of
/// the copying before that. A checkpoint writes each page changed since the last one once, however
/// often it changed, then fsyncs the WAL and the database; refresh rotations insert at random
/// places of the token-hash index and rewrite the same pages many times, so a longer interval
/// writes fewer pages per grant and fsyncs less often: at 1,000 the checkpoints were a quarter of
/// the rotation writer's CPU. 4,000 frames of 4 KiB bound the WAL at ~16 MiB and stay within the
/// WAL index's first hash segment (4,062 frames), so page lookups do not get slower. A process
/// crash loses nothing (WAL, `synchronous=NORMAL`: a commit is in the WAL before it returns). On
/// power loss, what was committed since the WAL was last synced (at a checkpoint) may roll back:
/// while rotations run the checkpoint thread syncs at least every ~100 ms; other writes alone
/// (admin API, persister) are synced every 4,000 pages instead of 1,000.
const WAL_CHECKPOINT_PAGES: i64 = 4000;

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    changes: broadcast::Sender<Change>,
    /// Refresh rotations go through one writer thread that commits concurrent ones together.
    rotations: crate::sqlite_rotate::RotationWriter,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Room for every statement the store caches (rusqlite keeps 16 by default, fewer than the
        // store's hot statements, and an evicted one is parsed again on its next use).
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&conn)?;
        let (changes, _) = broadcast::channel(256);
        let conn = Arc::new(Mutex::new(conn));
        Ok(SqliteStore {
            rotations: crate::sqlite_rotate::RotationWriter::start(conn.clone(), path)?,
            conn,
            changes,
        })
    }

    /// Runs `f` on the connection off the async runtime.
    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    fn notify(&self, change: Change) {
        // No receiver is fine: nothing caches yet.
        let _ = self.changes.send(change);
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    // Forward-only: a database a newer sipreg migrated may hold data this one would mangle.
    if version > MIGRATIONS.len() as i64 {
        return Err(StoreError::Invalid(format!(
            "database schema version {version} is newer than this sipreg knows ({}); upgrade sipreg",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

/// How long a revoked family's tombstone is kept: longer than any refresh token lives (365 days).
const FAMILY_TOMBSTONE_SECS: i64 = 366 * 86400;

fn family_revoked(conn: &Connection, family: &str) -> Result<bool> {
    if family.is_empty() {
        return Ok(false);
    }
    Ok(conn
        .prepare_cached("SELECT 1 FROM revoked_refresh_families WHERE family = ?1")?
        .query_row(params![family], |_| Ok(()))
        .optional()?
        .is_some())
}

fn map_unique(e: rusqlite::Error, what: String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what)
        }
        other => other.into(),
    }
}

pub(crate) fn insert_refresh(conn: &Connection, t: &RefreshToken) -> Result<()> {
    // Cached statements: a refresh grant is hot (≥ 5,000/s wanted), parsing SQL is not free.
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (hash, user_id, client_id, scope, issued_at, expires_at, family)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![t.hash, t.user_id, t.client_id, t.scope, t.issued_at, t.expires_at, t.family])
    .map_err(|e| map_unique(e, "refresh token".into()))?;
    Ok(())
}

/// The body of `use_refresh_token`, inside the caller's IMMEDIATE transaction; the caller also
/// runs [`sweep_refresh`] once per transaction.
pub(crate) fn use_refresh(conn: &Connection, hash: &str, now: i64) -> Result<RefreshUse> {
    let row = conn
        .prepare_cached(
            "SELECT hash, user_id, client_id, scope, issued_at, expires_at, family, used
             FROM refresh_tokens WHERE hash = ?1",
        )?
        .query_row(params![hash], read_refresh)
        .optional()?;
    let revoked = match &row {
        Some((t, _)) => family_revoked(conn, &t.family)?,
        None => false,
    };
    let out = match row {
        None => RefreshUse::Unknown,
        Some((t, _)) if t.expires_at <= now || revoked => RefreshUse::Unknown,
        Some((t, true)) => RefreshUse::Reused(t),
        Some((t, false)) => {
            conn.prepare_cached("UPDATE refresh_tokens SET used = 1 WHERE hash = ?1")?
                .execute(params![hash])?;
            RefreshUse::Fresh(t)
        }
    };
    Ok(out)
}

/// Deletes expired refresh tokens and old family tombstones. Garbage collection only: an expired
/// token is refused whether or not its row is still there, so a batch of rotations sweeps once.
pub(crate) fn sweep_refresh(conn: &Connection, now: i64) -> Result<()> {
    // Both sweeps use an index (refresh_tokens_expires, revoked_refresh_families_at).
    conn.prepare_cached("DELETE FROM refresh_tokens WHERE expires_at <= ?1")?
        .execute(params![now])?;
    conn.prepare_cached("DELETE FROM revoked_refresh_families WHERE revoked_at <= ?1")?
        .execute(params![now - FAMILY_TOMBSTONE_SECS])?;
    Ok(())
}

fn read_refresh(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RefreshToken, bool)> {
    Ok((
        RefreshToken {
            hash: r.get(0)?,
            user_id: r.get(1)?,
            client_id: r.get(2)?,
            scope: r.get(3)?,
            issued_at: r.get(4)?,
            expires_at: r.get(5)?,
            family: r.get(6)?,
        },
        r.get::<_, i64>(7)? != 0,
    ))
}

fn read_client(r: &rusqlite::Row<'_>) -> rusqlite::Result<OAuthClient> {
    Ok(OAuthClient {
        id: r.get(0)?,
        name: r.get(1)?,
        redirect_uris: parse_list(r.get(2)?),
        scopes: parse_list(r.get(3)?),
        created_at: r.get(4)?,
    })
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn parse_list(s: String) -> Vec<String> {
    serde_json::from_str(&s).unwrap_or_default()
}

fn read_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        password_hash: r.get(1)?,
        created_at: r.get(2)?,
    })
}

/// `Invalid` unless the user exists (a device's owner).
fn require_owner(tx: &rusqlite::Transaction<'_>, owner: &str) -> Result<()> {
    let exists = tx
        .query_row("SELECT 1 FROM users WHERE id = ?1", params![owner], |_| {
            Ok(())
        })
        .optional()?
        .is_some();
    if exists {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("owner {owner} does not exist")))
    }
}

/// Writes a device's lines in button order.
fn insert_lines(tx: &rusqlite::Transaction<'_>, device: &str, lines: &[Line]) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO lines (device, position, dn, display_name) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (i, line) in lines.iter().enumerate() {
        stmt.execute(params![device, i as i64, line.dn, line.display_name])?;
    }
    Ok(())
}

/// The devices with these names, in the order given (a name deleted meanwhile is left out).
pub(crate) fn read_devices(c: &Connection, names: Vec<String>) -> Result<Vec<Device>> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if let Some(d) = read_device(c, &n)? {
            out.push(d);
        }
    }
    Ok(out)
}

pub(crate) fn read_device(conn: &Connection, name: &str) -> Result<Option<Device>> {
    let row = conn
        .query_row(
            "SELECT name, owner, oauth, updated_at, model, profile FROM devices WHERE name = ?1",
            params![name],
            |r| {
                Ok(Device {
                    name: r.get(0)?,
                    owner: r.get(1)?,
                    oauth: r.get::<_, i64>(2)? != 0,
                    updated_at: r.get(3)?,
                    model: r.get(4)?,
                    profile: r.get(5)?,
                    lines: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut dev) = row else { return Ok(None) };
    let mut stmt = conn
        .prepare_cached("SELECT dn, display_name FROM lines WHERE device = ?1 ORDER BY position")?;
    dev.lines = stmt
        .query_map(params![dev.name], |r| {
            Ok(Line {
                dn: r.get(0)?,
                display_name: r.get(1)?,
            })
        })?
        .collect::<std::result::Result<_, _>>()?;
    Ok(Some(dev))
}

#[async_trait]
impl Store for SqliteStore {
    async fn cluster_settings(&self) -> Result<ClusterSettings> {
        self.with(crate::sqlite_settings::read).await
    }

    async fn set_cluster_settings(&self, settings: &ClusterSettings) -> Result<()> {
        let s = *settings;
        self.with(move |c| crate::sqlite_settings::write(c, &s))
            .await?;
        self.notify(Change::Cluster);
        Ok(())
    }

    async fn seed_cluster_settings(&self, settings: &ClusterSettings) -> Result<bool> {
        let s = *settings;
        let seeded = self
            .with(move |c| crate::sqlite_settings::seed(c, &s))
            .await?;
        if seeded {
            self.notify(Change::Cluster);
        }
        Ok(seeded)
    }

    async fn digest_nonce_secret(&self, candidate: [u8; 32]) -> Result<[u8; 32]> {
        self.with(move |c| {
            crate::sqlite_secrets::get_or_insert(c, crate::sqlite_secrets::DIGEST_NONCE, candidate)
        })
        .await
    }

    async fn set_oauth_mode(&self, on: bool) -> Result<()> {
        self.with(move |c| {
            c.execute(
                "UPDATE cluster_settings SET oauth_mode = ?1 WHERE id = 1",
                params![on as i64],
            )?;
            Ok(())
        })
        .await?;
        self.notify(Change::Cluster);
        Ok(())
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        let u = user.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO users (id, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![u.id, u.password_hash, u.created_at],
            )
            .map_err(|e| map_unique(e, format!("user {}", u.id)))?;
            Ok(())
        })
        .await?;
        self.notify(Change::User(user.id.clone()));
        Ok(())
    }

    async fn user(&self, id: &str) -> Result<Option<User>> {
        let id = id.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT id, password_hash, created_at FROM users WHERE id = ?1",
                params![id],
                read_user,
            )
            .optional()?)
        })
        .await
    }

    async fn users(&self) -> Result<Vec<User>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT id, password_hash, created_at FROM users ORDER BY id")?;
            let rows = stmt
                .query_map([], read_user)?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn set_password_hash(&self, id: &str, password_hash: &str) -> Result<()> {
        let (id2, hash) = (id.to_owned(), password_hash.to_owned());
        self.with(move |c| {
            if c.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![id2, hash],
            )? == 0
            {
                return Err(StoreError::NotFound(format!("user {id2}")));
            }
            Ok(())
        })
        .await?;
        self.notify(Change::User(id.to_owned()));
        Ok(())
    }

    async fn delete_user(&self, id: &str) -> Result<()> {
        let id2 = id.to_owned();
        self.with(move |c| {
            let n = c.execute("DELETE FROM users WHERE id = ?1", params![id2])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user {id2}")));
            }
            Ok(())
        })
        .await?;
        self.notify(Change::User(id.to_owned()));
        Ok(())
    }

    async fn create_device(&self, device: &Device) -> Result<()> {
        let d = device.clone();
        self.with(move |c| {
            let tx = c.transaction()?;
            require_owner(&tx, &d.owner)?;
            let (profile, oauth, model) = crate::sqlite_profiles::resolve(&tx, &d)?;
            tx.execute(
                "INSERT INTO devices (name, owner, oauth, updated_at, model, profile) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![d.name, d.owner, oauth as i64, d.updated_at, model, profile],
            )
            .map_err(|e| map_unique(e, format!("device {}", d.name)))?;
            insert_lines(&tx, &d.name, &d.lines)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.notify(Change::Device(device.name.clone()));
        Ok(())
    }

    async fn device(&self, name: &str) -> Result<Option<Device>> {
        let name = name.to_owned();
        self.with(move |c| read_device(c, &name)).await
    }

    async fn devices(&self) -> Result<Vec<Device>> {
        self.with(|c| {
            let names: Vec<String> = c
                .prepare("SELECT name FROM devices ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?;
            read_devices(c, names)
        })
        .await
    }

    async fn update_device(&self, device: &Device) -> Result<()> {
        let d = device.clone();
        self.with(move |c| {
            let tx = c.transaction()?;
            require_owner(&tx, &d.owner)?;
            let stored: Option<String> = tx
                .query_row(
                    "SELECT name FROM devices WHERE name = ?1",
                    params![d.name],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(stored) = stored else {
                return Err(StoreError::NotFound(format!("device {}", d.name)));
            };
            let (profile, oauth, model) = crate::sqlite_profiles::resolve(&tx, &d)?;
            tx.execute(
                "UPDATE devices SET owner = ?2, oauth = ?3, updated_at = ?4, model = ?5, \
                 profile = ?6 WHERE name = ?1",
                params![stored, d.owner, oauth as i64, d.updated_at, model, profile],
            )?;
            tx.execute("DELETE FROM lines WHERE device = ?1", params![stored])?;
            insert_lines(&tx, &stored, &d.lines)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.notify(Change::Device(device.name.clone()));
        Ok(())
    }

    async fn delete_device(&self, name: &str) -> Result<()> {
        let n2 = name.to_owned();
        self.with(move |c| {
            let n = c.execute("DELETE FROM devices WHERE name = ?1", params![n2])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("device {n2}")));
            }
            Ok(())
        })
        .await?;
        self.notify(Change::Device(name.to_owned()));
        Ok(())
    }

    async fn devices_of_owner(&self, owner: &str) -> Result<Vec<Device>> {
        let owner = owner.to_owned();
        self.with(move |c| crate::sqlite_directory::devices_of_owner(c, &owner))
            .await
    }

    async fn devices_with_profile(&self, profile: &str) -> Result<Vec<Device>> {
        let profile = profile.to_owned();
        self.with(move |c| crate::sqlite_directory::devices_with_profile(c, &profile))
            .await
    }

    async fn create_profile(&self, profile: &SecurityProfile) -> Result<()> {
        let p = profile.clone();
        self.with(move |c| crate::sqlite_profiles::create(c, &p))
            .await?;
        self.notify(Change::Profile(profile.name.clone()));
        Ok(())
    }

    async fn profile(&self, name: &str) -> Result<Option<SecurityProfile>> {
        let name = name.to_owned();
        self.with(move |c| crate::sqlite_profiles::one(c, &name))
            .await
    }

    async fn profiles(&self) -> Result<Vec<SecurityProfile>> {
        self.with(|c| crate::sqlite_profiles::all(c)).await
    }

    async fn update_profile(&self, profile: &SecurityProfile) -> Result<()> {
        let p = profile.clone();
        let now = crate::heartbeat::unix_now();
        self.with(move |c| crate::sqlite_profiles::update(c, &p, now))
            .await?;
        self.notify(Change::Profile(profile.name.clone()));
        Ok(())
    }

    async fn delete_profile(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.with(move |c| crate::sqlite_profiles::delete(c, &n))
            .await?;
        self.notify(Change::Profile(name.to_owned()));
        Ok(())
    }

    async fn set_line_display_name(
        &self,
        dn: &str,
        display_name: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>> {
        let (dn, display) = (dn.to_owned(), display_name.map(str::to_owned));
        let changed = self
            .with(move |c| {
                crate::sqlite_profiles::set_line_display_name(c, &dn, display.as_deref(), now)
            })
            .await?;
        for d in &changed {
            self.notify(Change::Device(d.clone()));
        }
        Ok(changed)
    }

    async fn upsert_node(&self, node: &Node) -> Result<()> {
        let n = node.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO nodes (name, host, sip_port, secured_sip_port, sip_oauth_port, sip_mra_oauth_port)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name) DO UPDATE SET host = ?2, sip_port = ?3, secured_sip_port = ?4,
                   sip_oauth_port = ?5, sip_mra_oauth_port = ?6",
                params![n.name, n.host, n.sip_port, n.secured_sip_port, n.sip_oauth_port, n.sip_mra_oauth_port],
            )?;
            Ok(())
        })
        .await?;
        self.notify(Change::Node(node.name.clone()));
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, host, sip_port, secured_sip_port, sip_oauth_port, sip_mra_oauth_port
                 FROM nodes ORDER BY name",
            )?;
            let rows = stmt
                .query_map([], node_row)?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn insert_signing_key(&self, key: &SigningKey) -> Result<()> {
        let k = key.clone();
        self.with(move |c| {
            let tx = c.transaction()?;
            if k.active {
                tx.execute("UPDATE signing_keys SET active = 0", [])?;
            }
            tx.execute(
                "INSERT INTO signing_keys (kid, alg, private_pem, public_x, public_y, created_at, active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![k.kid, k.alg, k.private_pem, k.public_x, k.public_y, k.created_at, k.active as i64],
            )
            .map_err(|e| map_unique(e, format!("signing key {}", k.kid)))?;
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.notify(Change::SigningKeys);
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT kid, alg, private_pem, public_x, public_y, created_at, active
                 FROM signing_keys ORDER BY created_at DESC, kid",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(SigningKey {
                        kid: r.get(0)?,
                        alg: r.get(1)?,
                        private_pem: r.get(2)?,
                        public_x: r.get(3)?,
                        public_y: r.get(4)?,
                        created_at: r.get(5)?,
                        active: r.get::<_, i64>(6)? != 0,
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<()> {
        let t = token.clone();
        self.with(move |c| insert_refresh(c, &t)).await
    }

    async fn take_refresh_token(&self, hash: &str, now: i64) -> Result<Option<RefreshToken>> {
        let hash = hash.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let tok = tx
                .query_row(
                    "SELECT hash, user_id, client_id, scope, issued_at, expires_at, family, used
                     FROM refresh_tokens WHERE hash = ?1 AND used = 0",
                    params![hash],
                    |r| read_refresh(r).map(|(t, _)| t),
                )
                .optional()?;
            let tok = match tok {
                Some(t) if family_revoked(&tx, &t.family)? => None,
                other => other,
            };
            tx.execute(
                "DELETE FROM refresh_tokens WHERE hash = ?1 OR expires_at <= ?2",
                params![hash, now],
            )?;
            tx.commit()?;
            Ok(tok.filter(|t| t.expires_at > now))
        })
        .await
    }

    async fn use_refresh_token(&self, hash: &str, now: i64) -> Result<RefreshUse> {
        let hash = hash.to_owned();
        self.with(move |c| {
            // IMMEDIATE takes the write lock first, so two callers cannot both see `used = 0`.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = use_refresh(&tx, &hash, now)?;
            sweep_refresh(&tx, now)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn rotate_refresh_token(
        &self,
        hash: &str,
        now: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse> {
        // Use + insert in one savepoint of a transaction shared with the rotations queued
        // meanwhile (group commit, sqlite_rotate.rs): a commit per batch, not two per grant.
        self.rotations.rotate(hash, now, successor).await
    }

    async fn revoke_refresh_family(&self, family: &str) -> Result<u64> {
        let family = family.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            // The tombstone also kills a token of the family inserted after this (a rotation racing
            // with the reuse that revoked it, possibly on another node).
            if !family.is_empty() {
                tx.execute(
                    "INSERT OR REPLACE INTO revoked_refresh_families (family, revoked_at) VALUES (?1, ?2)",
                    params![family, crate::heartbeat::unix_now()],
                )?;
            }
            let n = tx.execute(
                "DELETE FROM refresh_tokens WHERE family = ?1",
                params![family],
            )? as u64;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn revoke_user_refresh_tokens(&self, user: &str, client_id: Option<&str>) -> Result<u64> {
        let user = user.to_owned();
        let client = client_id.map(str::to_owned);
        let n = self
            .with(move |c| {
                Ok(match client {
                    Some(cl) => c.execute(
                        "DELETE FROM refresh_tokens WHERE user_id = ?1 AND client_id = ?2",
                        params![user, cl],
                    )?,
                    None => c.execute(
                        "DELETE FROM refresh_tokens WHERE user_id = ?1",
                        params![user],
                    )?,
                } as u64)
            })
            .await?;
        Ok(n)
    }

    async fn set_tokens_not_before(&self, user: &str, not_before: i64) -> Result<()> {
        let u = user.to_owned();
        self.with(move |c| {
            let n = c.execute(
                "INSERT INTO token_revocations (user_id, not_before) SELECT id, ?2 FROM users WHERE id = ?1
                 ON CONFLICT(user_id) DO UPDATE SET not_before = MAX(not_before, ?2)",
                params![u, not_before],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user {u}")));
            }
            Ok(())
        })
        .await?;
        self.notify(Change::Revocation(user.to_owned()));
        Ok(())
    }

    async fn set_client_tokens_not_before(
        &self,
        user: &str,
        client_id: &str,
        not_before: i64,
    ) -> Result<()> {
        let (u, cl) = (user.to_owned(), client_id.to_owned());
        self.with(move |c| crate::sqlite_issuers::set_client_not_before(c, &u, &cl, not_before))
            .await?;
        self.notify(Change::Revocation(user.to_owned()));
        Ok(())
    }

    async fn client_tokens_not_before(&self) -> Result<Vec<(String, String, i64)>> {
        self.with(crate::sqlite_issuers::client_not_before).await
    }

    async fn create_issuer(&self, issuer: &TrustedIssuer) -> Result<()> {
        let i = issuer.clone();
        self.with(move |c| crate::sqlite_issuers::create(c, &i))
            .await?;
        self.notify(Change::Issuer(issuer.issuer.clone()));
        Ok(())
    }

    async fn update_issuer(&self, issuer: &TrustedIssuer) -> Result<()> {
        let i = issuer.clone();
        self.with(move |c| crate::sqlite_issuers::update(c, &i))
            .await?;
        self.notify(Change::Issuer(issuer.issuer.clone()));
        Ok(())
    }

    async fn issuers(&self) -> Result<Vec<TrustedIssuer>> {
        self.with(crate::sqlite_issuers::list).await
    }

    async fn delete_issuer(&self, issuer: &str) -> Result<()> {
        let i = issuer.to_owned();
        self.with(move |c| crate::sqlite_issuers::delete(c, &i))
            .await?;
        self.notify(Change::Issuer(issuer.to_owned()));
        Ok(())
    }

    async fn tokens_not_before(&self) -> Result<Vec<(String, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT user_id, not_before FROM token_revocations")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn activate_signing_key(&self, kid: &str) -> Result<()> {
        let k = kid.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("UPDATE signing_keys SET active = (kid = ?1)", params![k])?;
            let found: bool = tx
                .query_row(
                    "SELECT 1 FROM signing_keys WHERE kid = ?1",
                    params![k],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if n == 0 || !found {
                return Err(StoreError::NotFound(format!("signing key {k}")));
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.notify(Change::SigningKeys);
        Ok(())
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<()> {
        let k = kid.to_owned();
        self.with(move |c| {
            let active: Option<i64> = c
                .query_row(
                    "SELECT active FROM signing_keys WHERE kid = ?1",
                    params![k],
                    |r| r.get(0),
                )
                .optional()?;
            match active {
                None => Err(StoreError::NotFound(format!("signing key {k}"))),
                Some(1) => Err(StoreError::Invalid(format!(
                    "signing key {k} is the active key; activate another key first"
                ))),
                Some(_) => {
                    c.execute("DELETE FROM signing_keys WHERE kid = ?1", params![k])?;
                    Ok(())
                }
            }
        })
        .await?;
        self.notify(Change::SigningKeys);
        Ok(())
    }

    async fn set_digest_credential(
        &self,
        device: &str,
        cred: Option<&DigestCredential>,
    ) -> Result<()> {
        let d = device.to_owned();
        let cred = cred.cloned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let exists = tx
                .query_row("SELECT 1 FROM devices WHERE name = ?1", params![d], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!("device {d}")));
            }
            tx.execute(
                "DELETE FROM digest_credentials WHERE device = ?1",
                params![d],
            )?;
            if let Some(cr) = cred {
                tx.execute(
                    "INSERT INTO digest_credentials (device, username, realm, ha1_md5, ha1_sha256)
                     VALUES ((SELECT name FROM devices WHERE name = ?1), ?2, ?3, ?4, ?5)",
                    params![d, cr.username, cr.realm, cr.ha1_md5, cr.ha1_sha256],
                )
                .map_err(|e| map_unique(e, format!("digest user name {}", cr.username)))?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
        self.notify(Change::Digest(device.to_owned()));
        Ok(())
    }

    async fn digest_credentials(&self) -> Result<Vec<(String, DigestCredential)>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT device, username, realm, ha1_md5, ha1_sha256 FROM digest_credentials ORDER BY device",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        DigestCredential {
                            username: r.get(1)?,
                            realm: r.get(2)?,
                            ha1_md5: r.get(3)?,
                            ha1_sha256: r.get(4)?,
                        },
                    ))
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn device_digest_credential(
        &self,
        device: &str,
    ) -> Result<Option<(String, DigestCredential)>> {
        let device = device.to_owned();
        self.with(move |c| crate::sqlite_directory::device_digest(c, &device))
            .await
    }

    async fn owner_digest_credentials(
        &self,
        owner: &str,
    ) -> Result<Vec<(String, DigestCredential)>> {
        let owner = owner.to_owned();
        self.with(move |c| crate::sqlite_directory::owner_digests(c, &owner))
            .await
    }

    async fn user_tokens_not_before(&self, user: &str) -> Result<Option<i64>> {
        let user = user.to_owned();
        self.with(move |c| crate::sqlite_directory::user_not_before(c, &user))
            .await
    }

    async fn user_client_tokens_not_before(&self, user: &str) -> Result<Vec<(String, i64)>> {
        let user = user.to_owned();
        self.with(move |c| crate::sqlite_directory::user_client_not_before(c, &user))
            .await
    }

    async fn create_client(&self, client: &OAuthClient) -> Result<()> {
        let cl = client.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO oauth_clients (id, name, redirect_uris, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![cl.id, cl.name, json_list(&cl.redirect_uris), json_list(&cl.scopes), cl.created_at],
            )
            .map_err(|e| map_unique(e, format!("client {}", cl.id)))?;
            Ok(())
        })
        .await?;
        self.notify(Change::Client(client.id.clone()));
        Ok(())
    }

    async fn client(&self, id: &str) -> Result<Option<OAuthClient>> {
        let id = id.to_owned();
        self.with(move |c| {
            Ok(c.query_row(
                "SELECT id, name, redirect_uris, scopes, created_at FROM oauth_clients WHERE id = ?1",
                params![id],
                read_client,
            )
            .optional()?)
        })
        .await
    }

    async fn clients(&self) -> Result<Vec<OAuthClient>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, redirect_uris, scopes, created_at FROM oauth_clients ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], read_client)?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_client(&self, id: &str) -> Result<()> {
        let i = id.to_owned();
        self.with(move |c| {
            if c.execute("DELETE FROM oauth_clients WHERE id = ?1", params![i])? == 0 {
                return Err(StoreError::NotFound(format!("client {i}")));
            }
            Ok(())
        })
        .await?;
        self.notify(Change::Client(id.to_owned()));
        Ok(())
    }

    async fn upsert_edge(&self, edge: &Edge) -> Result<()> {
        let e = edge.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO edges (host, description, subject_names, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(host) DO UPDATE SET description = ?2, subject_names = ?3, updated_at = ?4",
                params![e.host, e.description, json_list(&e.subject_names), e.updated_at],
            )?;
            Ok(())
        })
        .await?;
        self.notify(Change::Edge(edge.host.clone()));
        Ok(())
    }

    async fn edges(&self) -> Result<Vec<Edge>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT host, description, subject_names, updated_at FROM edges ORDER BY host",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Edge {
                        host: r.get(0)?,
                        description: r.get(1)?,
                        subject_names: parse_list(r.get(2)?),
                        updated_at: r.get(3)?,
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_edge(&self, host: &str) -> Result<()> {
        let h = host.to_owned();
        self.with(move |c| {
            if c.execute("DELETE FROM edges WHERE host = ?1", params![h])? == 0 {
                return Err(StoreError::NotFound(format!("edge {h}")));
            }
            Ok(())
        })
        .await?;
        self.notify(Change::Edge(host.to_owned()));
        Ok(())
    }

    async fn add_trust_cert(&self, cert: &TrustCert) -> Result<()> {
        let t = cert.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO trust_certs (fingerprint, pem, subject, added_at) VALUES (?1, ?2, ?3, ?4)",
                params![t.fingerprint, t.pem, t.subject, t.added_at],
            )
            .map_err(|e| map_unique(e, format!("trust certificate {}", t.fingerprint)))?;
            Ok(())
        })
        .await?;
        self.notify(Change::Trust);
        Ok(())
    }

    async fn trust_certs(&self) -> Result<Vec<TrustCert>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT fingerprint, pem, subject, added_at FROM trust_certs ORDER BY added_at, fingerprint")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(TrustCert { fingerprint: r.get(0)?, pem: r.get(1)?, subject: r.get(2)?, added_at: r.get(3)? })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_trust_cert(&self, fingerprint: &str) -> Result<()> {
        let f = fingerprint.to_owned();
        self.with(move |c| {
            if c.execute("DELETE FROM trust_certs WHERE fingerprint = ?1", params![f])? == 0 {
                return Err(StoreError::NotFound(format!("trust certificate {f}")));
            }
            Ok(())
        })
        .await?;
        self.notify(Change::Trust);
        Ok(())
    }

    async fn write_bindings(&self, batch: Vec<(String, Vec<StoredBinding>)>) -> Result<()> {
        self.with(move |c| write_binding_rows(c, None, &batch))
            .await
    }

    async fn load_bindings(&self, now: i64) -> Result<Vec<StoredBinding>> {
        self.with(move |c| {
            c.execute("DELETE FROM bindings WHERE expires_at <= ?1", params![now])?;
            let mut stmt = c.prepare(
                "SELECT aor, key, expires_at, node, data FROM bindings ORDER BY aor, key",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StoredBinding {
                        aor: r.get(0)?,
                        key: r.get(1)?,
                        expires_at: r.get(2)?,
                        node: r.get(3)?,
                        data: r.get(4)?,
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn create_admin_token(&self, token: &AdminToken) -> Result<()> {
        let t = token.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO admin_tokens (id, name, scope, sha256, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.name, t.scope, t.sha256, t.created_at],
            )
            .map_err(|e| map_unique(e, format!("admin token {}", t.id)))?;
            Ok(())
        })
        .await
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminToken>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT id, name, scope, sha256, created_at FROM admin_tokens ORDER BY created_at, id")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(AdminToken {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        scope: r.get(2)?,
                        sha256: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_admin_token(&self, id: &str) -> Result<()> {
        let i = id.to_owned();
        self.with(move |c| {
            if c.execute("DELETE FROM admin_tokens WHERE id = ?1", params![i])? == 0 {
                return Err(StoreError::NotFound(format!("admin token {i}")));
            }
            Ok(())
        })
        .await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()> {
        let e = entry.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO audit_log (at, actor, action, before, after) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.at, e.actor, e.action, e.before.to_string(), e.after.to_string()],
            )?;
            Ok(())
        })
        .await
    }

    async fn audit(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, at, actor, action, before, after FROM audit_log WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![after, limit], |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at: r.get(1)?,
                        actor: r.get(2)?,
                        action: r.get(3)?,
                        before: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                        after: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn heartbeat(&self, node: &str, now: i64) -> Result<()> {
        let n = node.to_owned();
        self.with(move |c| {
            if c.execute(
                "UPDATE nodes SET heartbeat_at = ?2 WHERE name = ?1",
                params![n, now],
            )? == 0
            {
                return Err(StoreError::NotFound(format!("node {n}")));
            }
            Ok(())
        })
        .await
    }

    async fn node_statuses(&self) -> Result<Vec<NodeStatus>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, host, sip_port, secured_sip_port, sip_oauth_port, sip_mra_oauth_port,
                        heartbeat_at
                 FROM nodes ORDER BY name",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(NodeStatus {
                        node: node_row(r)?,
                        last_heartbeat: r.get(6)?,
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn write_node_bindings(
        &self,
        node: &str,
        batch: Vec<(String, Vec<StoredBinding>)>,
    ) -> Result<()> {
        let node = node.to_owned();
        self.with(move |c| write_binding_rows(c, Some(&node), &batch))
            .await
    }
}

/// Makes each listed AOR's rows (only `node`'s, when given) exactly `rows`, in one transaction.
/// Rows still present are updated in place (an upsert) and only keys gone from the AOR are
/// deleted: deleting and re-inserting every row cost two B-tree changes per row and index.
fn write_binding_rows(
    c: &mut Connection,
    node: Option<&str>,
    batch: &[(String, Vec<StoredBinding>)],
) -> Result<()> {
    let tx = c.transaction()?;
    {
        let mut del_all =
            tx.prepare_cached("DELETE FROM bindings WHERE aor = ?1 AND (?2 IS NULL OR node = ?2)")?;
        // One binding per AOR is the common case: no key list to encode.
        let mut del_but_one = tx.prepare_cached(
            "DELETE FROM bindings WHERE aor = ?1 AND (?2 IS NULL OR node = ?2) AND key <> ?3",
        )?;
        let mut del_but_many = tx.prepare_cached(
            "DELETE FROM bindings WHERE aor = ?1 AND (?2 IS NULL OR node = ?2)
               AND key NOT IN (SELECT value FROM json_each(?3))",
        )?;
        // A row of another node with the same key is taken over: the device re-registered here.
        let mut upsert = tx.prepare_cached(
            "INSERT INTO bindings (aor, key, expires_at, node, data) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (aor, key) DO UPDATE SET expires_at = excluded.expires_at,
               node = excluded.node, data = excluded.data",
        )?;
        for (aor, rows) in batch {
            match rows.as_slice() {
                [] => del_all.execute(params![aor, node])?,
                [only] => del_but_one.execute(params![aor, node, only.key])?,
                many => {
                    let keys: Vec<&str> = many.iter().map(|b| b.key.as_str()).collect();
                    let keys = serde_json::to_string(&keys)
                        .map_err(|e| StoreError::Backend(format!("binding keys: {e}")))?;
                    del_but_many.execute(params![aor, node, keys])?
                }
            };
            for b in rows {
                let holder = node.unwrap_or(&b.node);
                upsert.execute(params![aor, b.key, b.expires_at, holder, b.data])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// A `nodes` row whose first six columns are name, host, sip_port, secured_sip_port,
/// sip_oauth_port and sip_mra_oauth_port.
fn node_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Node> {
    Ok(Node {
        name: r.get(0)?,
        host: r.get(1)?,
        sip_port: r.get(2)?,
        secured_sip_port: r.get(3)?,
        sip_oauth_port: r.get(4)?,
        sip_mra_oauth_port: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            id: id.into(),
            password_hash: "h".into(),
            created_at: 1,
        }
    }

    fn device(name: &str, owner: &str, dns: &[&str]) -> Device {
        Device {
            name: name.into(),
            owner: owner.into(),
            lines: dns
                .iter()
                .map(|d| Line {
                    dn: (*d).into(),
                    display_name: None,
                })
                .collect(),
            oauth: true,
            updated_at: 1,
            model: String::new(),
            profile: String::new(),
        }
    }

    #[tokio::test]
    async fn data_survives_reopen_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create_user(&user("alice")).await.unwrap();
            s.create_device(&device("CSFalice", "alice", &["1010", "1011"]))
                .await
                .unwrap();
            s.set_oauth_mode(true).await.unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.cluster_settings().await.unwrap().oauth_mode);
        let d = s
            .device("csfalice")
            .await
            .unwrap()
            .expect("case-insensitive lookup");
        assert_eq!(
            d.lines.iter().map(|l| l.dn.as_str()).collect::<Vec<_>>(),
            ["1010", "1011"]
        );
    }

    #[tokio::test]
    async fn the_previous_release_schema_is_upgraded_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            // A release before heartbeats (schema 3); every later migration must apply to it.
            let conn = Connection::open(&path).unwrap();
            for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
                conn.execute_batch(&format!("{sql}; PRAGMA user_version = {};", i + 1))
                    .unwrap();
            }
            conn.execute(
                "INSERT INTO nodes VALUES ('n1', 'h', 5060, 5061, 5090, 5091)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        s.heartbeat("n1", 7).await.unwrap();
        assert_eq!(s.node_statuses().await.unwrap()[0].last_heartbeat, Some(7));
        assert_eq!(
            s.cluster_settings().await.unwrap(),
            ClusterSettings::default(),
            "cluster settings get their defaults"
        );
        drop(s);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Invalid(m)) if m.contains("newer")
        ));
    }
    // Behaviour shared with PostgreSQL lives in `crate::testsuite`, run against both backends.
}
