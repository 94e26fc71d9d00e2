//! The embedded default backend: one SQLite file, WAL mode, forward-only migrations.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::broadcast;

use crate::{
    Change, ClusterSettings, Device, Line, Node, RefreshToken, Result, SigningKey, Store,
    StoreError, User,
};

/// Forward-only schema migrations; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    changes: broadcast::Sender<Change>,
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
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        let (changes, _) = broadcast::channel(256);
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
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
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
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

fn read_device(conn: &Connection, name: &str) -> Result<Option<Device>> {
    let row = conn
        .query_row(
            "SELECT name, owner, oauth, updated_at FROM devices WHERE name = ?1",
            params![name],
            |r| {
                Ok(Device {
                    name: r.get(0)?,
                    owner: r.get(1)?,
                    oauth: r.get::<_, i64>(2)? != 0,
                    updated_at: r.get(3)?,
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
        self.with(|c| {
            Ok(ClusterSettings {
                oauth_mode: c.query_row(
                    "SELECT oauth_mode FROM cluster_settings WHERE id = 1",
                    [],
                    |r| r.get::<_, i64>(0),
                )? != 0,
            })
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
                |r| {
                    Ok(User {
                        id: r.get(0)?,
                        password_hash: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
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
                .query_map([], |r| {
                    Ok(User {
                        id: r.get(0)?,
                        password_hash: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                })?
                .collect::<std::result::Result<_, _>>()?;
            Ok(rows)
        })
        .await
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
            let owner_exists: bool = tx
                .query_row("SELECT 1 FROM users WHERE id = ?1", params![d.owner], |_| Ok(()))
                .optional()?
                .is_some();
            if !owner_exists {
                return Err(StoreError::Invalid(format!("owner {} does not exist", d.owner)));
            }
            tx.execute(
                "INSERT INTO devices (name, owner, oauth, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![d.name, d.owner, d.oauth as i64, d.updated_at],
            )
            .map_err(|e| map_unique(e, format!("device {}", d.name)))?;
            for (i, line) in d.lines.iter().enumerate() {
                tx.execute(
                    "INSERT INTO lines (device, position, dn, display_name) VALUES (?1, ?2, ?3, ?4)",
                    params![d.name, i as i64, line.dn, line.display_name],
                )?;
            }
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
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                if let Some(d) = read_device(c, &n)? {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
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
                .query_map([], |r| {
                    Ok(Node {
                        name: r.get(0)?,
                        host: r.get(1)?,
                        sip_port: r.get(2)?,
                        secured_sip_port: r.get(3)?,
                        sip_oauth_port: r.get(4)?,
                        sip_mra_oauth_port: r.get(5)?,
                    })
                })?
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
        self.with(move |c| {
            c.execute(
                "INSERT INTO refresh_tokens (hash, user_id, client_id, scope, issued_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.hash, t.user_id, t.client_id, t.scope, t.issued_at, t.expires_at],
            )
            .map_err(|e| map_unique(e, "refresh token".into()))?;
            Ok(())
        })
        .await
    }

    async fn take_refresh_token(&self, hash: &str, now: i64) -> Result<Option<RefreshToken>> {
        let hash = hash.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let tok = tx
                .query_row(
                    "SELECT hash, user_id, client_id, scope, issued_at, expires_at
                     FROM refresh_tokens WHERE hash = ?1",
                    params![hash],
                    |r| {
                        Ok(RefreshToken {
                            hash: r.get(0)?,
                            user_id: r.get(1)?,
                            client_id: r.get(2)?,
                            scope: r.get(3)?,
                            issued_at: r.get(4)?,
                            expires_at: r.get(5)?,
                        })
                    },
                )
                .optional()?;
            tx.execute(
                "DELETE FROM refresh_tokens WHERE hash = ?1 OR expires_at <= ?2",
                params![hash, now],
            )?;
            tx.commit()?;
            Ok(tok.filter(|t| t.expires_at > now))
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
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
    async fn conflicts_and_missing_owner_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db")).unwrap();
        s.create_user(&user("bob")).await.unwrap();
        assert!(matches!(
            s.create_user(&user("bob")).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.create_device(&device("CSFx", "nobody", &["1"])).await,
            Err(StoreError::Invalid(_))
        ));
        s.create_device(&device("CSFbob", "bob", &["2000"]))
            .await
            .unwrap();
        assert!(matches!(
            s.create_device(&device("csfBOB", "bob", &["2001"])).await,
            Err(StoreError::Conflict(_))
        ));
        s.delete_user("bob").await.unwrap();
        assert!(
            s.device("CSFbob").await.unwrap().is_none(),
            "devices cascade with their owner"
        );
        assert!(matches!(
            s.delete_user("bob").await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_refresh_token_is_taken_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db")).unwrap();
        s.create_user(&user("carol")).await.unwrap();
        let t = RefreshToken {
            hash: "abc".into(),
            user_id: "carol".into(),
            client_id: "softphone".into(),
            scope: "sip".into(),
            issued_at: 10,
            expires_at: 100,
        };
        s.insert_refresh_token(&t).await.unwrap();
        assert_eq!(
            s.take_refresh_token("abc", 50).await.unwrap(),
            Some(t.clone())
        );
        assert_eq!(s.take_refresh_token("abc", 50).await.unwrap(), None);
        s.insert_refresh_token(&t).await.unwrap();
        assert_eq!(
            s.take_refresh_token("abc", 100).await.unwrap(),
            None,
            "expired tokens are not returned"
        );
    }

    #[tokio::test]
    async fn only_one_signing_key_is_active_and_changes_are_published() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db")).unwrap();
        let mut rx = s.subscribe();
        let key = |kid: &str, at| SigningKey {
            kid: kid.into(),
            alg: "ES256".into(),
            private_pem: "pem".into(),
            public_x: "x".into(),
            public_y: "y".into(),
            created_at: at,
            active: true,
        };
        s.insert_signing_key(&key("k1", 1)).await.unwrap();
        s.insert_signing_key(&key("k2", 2)).await.unwrap();
        let keys = s.signing_keys().await.unwrap();
        assert_eq!(
            keys.iter()
                .filter(|k| k.active)
                .map(|k| k.kid.as_str())
                .collect::<Vec<_>>(),
            ["k2"]
        );
        assert_eq!(rx.recv().await.unwrap(), Change::SigningKeys);
    }
}
