//! Cluster-wide secrets in the PostgreSQL backend: one row per named secret, written once and
//! read by every node.

use super::PostgresStore;
use crate::sqlite_secrets::{secret_bytes, DIGEST_NONCE};
use crate::Result;

/// The migration creating the secrets table; the Digest nonce secret is its first row.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE cluster_secrets (name TEXT PRIMARY KEY, secret BYTEA NOT NULL);
"#;

impl PostgresStore {
    pub(super) async fn pg_digest_nonce_secret(&self, candidate: [u8; 32]) -> Result<[u8; 32]> {
        let c = self.client().await?;
        // Two statements, each in its own snapshot: a node whose insert waited on another's
        // (the primary key) and did nothing reads the winner's row in the SELECT.
        c.execute(
            "INSERT INTO cluster_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&DIGEST_NONCE, &candidate.as_slice()],
        )
        .await?;
        let row = c
            .query_one(
                "SELECT secret FROM cluster_secrets WHERE name = $1",
                &[&DIGEST_NONCE],
            )
            .await?;
        let stored: Vec<u8> = row.try_get(0)?;
        secret_bytes(DIGEST_NONCE, &stored)
    }
}
