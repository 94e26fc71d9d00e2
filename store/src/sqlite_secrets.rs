//! Cluster-wide secrets in the SQLite backend: one row per named secret, written once.

use rusqlite::{params, Connection};

use crate::{Result, StoreError};

/// The migration creating the secrets table; the Digest nonce secret is its first row.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE cluster_secrets (name TEXT PRIMARY KEY, secret BLOB NOT NULL);
"#;

/// Name of the Digest nonce secret's row.
pub(crate) const DIGEST_NONCE: &str = "digest_nonce";

/// Stores `candidate` under `name` unless a secret is there already, then returns the stored one.
pub(crate) fn get_or_insert(
    c: &mut Connection,
    name: &str,
    candidate: [u8; 32],
) -> Result<[u8; 32]> {
    // Insert-if-absent, then read: another process on the same file may have won the insert.
    c.execute(
        "INSERT INTO cluster_secrets (name, secret) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![name, candidate.as_slice()],
    )?;
    let stored: Vec<u8> = c.query_row(
        "SELECT secret FROM cluster_secrets WHERE name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    secret_bytes(name, &stored)
}

/// A stored secret as 32 bytes; any other length is a damaged row, not something to use.
pub(crate) fn secret_bytes(name: &str, stored: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(stored).map_err(|_| {
        StoreError::Backend(format!(
            "cluster secret {name} has {} bytes, not 32",
            stored.len()
        ))
    })
}
