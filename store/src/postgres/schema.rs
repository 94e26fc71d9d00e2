//! PostgreSQL schema: forward-only migrations recorded in `schema_migrations`, applied at start
//! under an advisory lock so that nodes starting together migrate once.

use tokio_postgres::Client;

use crate::{Result, StoreError};

/// Forward-only migrations; index + 1 is the version recorded in `schema_migrations`.
/// Version 1 is the schema of the first release with PostgreSQL (SQLite's versions 1–3).
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE cluster_settings (id INTEGER PRIMARY KEY CHECK (id = 1), oauth_mode BOOLEAN NOT NULL);
INSERT INTO cluster_settings (id, oauth_mode) VALUES (1, FALSE);
CREATE TABLE users (id TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE devices (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    oauth BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);
-- Device names compare case-insensitively, as SQLite's COLLATE NOCASE does.
CREATE UNIQUE INDEX devices_name_nocase ON devices (lower(name));
CREATE INDEX devices_owner ON devices (owner);
CREATE TABLE lines (
    device TEXT NOT NULL REFERENCES devices(name) ON DELETE CASCADE ON UPDATE CASCADE,
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
    public_y TEXT NOT NULL, created_at BIGINT NOT NULL, active BOOLEAN NOT NULL
);
-- At most one active key, whatever two nodes do at the same moment.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((TRUE)) WHERE active;
CREATE TABLE refresh_tokens (
    hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL, scope TEXT NOT NULL, issued_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
    family TEXT NOT NULL DEFAULT '', used BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id, client_id);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
CREATE TABLE token_revocations (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE, not_before BIGINT NOT NULL
);
CREATE TABLE digest_credentials (
    device TEXT PRIMARY KEY REFERENCES devices(name) ON DELETE CASCADE ON UPDATE CASCADE,
    username TEXT NOT NULL UNIQUE, realm TEXT NOT NULL, ha1_md5 TEXT NOT NULL, ha1_sha256 TEXT NOT NULL
);
CREATE TABLE oauth_clients (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, redirect_uris TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE edges (
    host TEXT PRIMARY KEY, description TEXT NOT NULL, subject_names TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX edges_host_nocase ON edges (lower(host));
CREATE TABLE trust_certs (
    fingerprint TEXT PRIMARY KEY, pem TEXT NOT NULL, subject TEXT NOT NULL, added_at BIGINT NOT NULL
);
CREATE TABLE bindings (
    aor TEXT NOT NULL, key TEXT NOT NULL, expires_at BIGINT NOT NULL, node TEXT NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (aor, key)
);
CREATE INDEX bindings_expiry ON bindings (expires_at);
CREATE TABLE admin_tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, before TEXT NOT NULL, after TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE nodes ADD COLUMN heartbeat_at BIGINT;
CREATE TABLE revoked_refresh_families (family TEXT PRIMARY KEY, revoked_at BIGINT NOT NULL);
"#,
    super::settings::MIGRATION,
    super::issuers::MIGRATION,
    super::profiles::MIGRATION,
    super::secrets::MIGRATION,
];

/// Key of the advisory lock that serialises migrations across nodes ("sipregmg").
const MIGRATION_LOCK: i64 = 0x7369_7072_6567_6d67;

/// Applies the pending migrations (all of them on an empty database) in one transaction and
/// returns the schema version now in force.
pub(crate) async fn migrate(client: &mut Client, migrations: &[&str]) -> Result<usize> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let current = usize::try_from(current).unwrap_or(0);
    // Forward-only: a database a newer sipreg migrated may hold data this one would mangle.
    if current > migrations.len() {
        return Err(StoreError::Invalid(format!(
            "database schema version {current} is newer than this sipreg knows ({}); upgrade sipreg",
            migrations.len()
        )));
    }
    for (i, sql) in migrations.iter().enumerate().skip(current) {
        tx.batch_execute(sql).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(migrations.len())
}
