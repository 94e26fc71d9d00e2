//! Trusted external token issuers and per-client token revocation in the PostgreSQL backend.

use tokio_postgres::Row;

use super::{unique_as_conflict, PostgresStore};
use crate::{Change, Result, StoreError, TrustedIssuer};

/// The migration adding trusted issuers and the (user, client) not-before times.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE trusted_issuers (
    issuer TEXT PRIMARY KEY, jwks_url TEXT, jwks_file TEXT, audience TEXT NOT NULL,
    user_claim TEXT NOT NULL, algorithms TEXT NOT NULL, description TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE client_token_revocations (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, client_id TEXT NOT NULL,
    not_before BIGINT NOT NULL, PRIMARY KEY (user_id, client_id)
);
"#;

const COLUMNS: &str =
    "issuer, jwks_url, jwks_file, audience, user_claim, algorithms, description, updated_at";

fn algorithms_json(algs: &[String]) -> String {
    serde_json::to_string(algs).unwrap_or_else(|_| "[]".into())
}

fn read(r: &Row) -> Result<TrustedIssuer> {
    let algs: String = r.try_get(5)?;
    Ok(TrustedIssuer {
        issuer: r.try_get(0)?,
        jwks_url: r.try_get(1)?,
        jwks_file: r.try_get(2)?,
        audience: r.try_get(3)?,
        user_claim: r.try_get(4)?,
        algorithms: serde_json::from_str(&algs).unwrap_or_default(),
        description: r.try_get(6)?,
        updated_at: r.try_get(7)?,
    })
}

/// Runs `sql` (an INSERT or UPDATE) with the issuer's fields as `$1`..`$8`, in [`COLUMNS`] order.
async fn execute(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    i: &TrustedIssuer,
) -> std::result::Result<u64, tokio_postgres::Error> {
    tx.execute(
        sql,
        &[
            &i.issuer,
            &i.jwks_url,
            &i.jwks_file,
            &i.audience,
            &i.user_claim,
            &algorithms_json(&i.algorithms),
            &i.description,
            &i.updated_at,
        ],
    )
    .await
}

impl PostgresStore {
    pub(super) async fn pg_create_issuer(&self, i: &TrustedIssuer) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let sql = format!(
            "INSERT INTO trusted_issuers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
        execute(&tx, &sql, i)
            .await
            .map_err(|e| unique_as_conflict(e, format!("issuer {}", i.issuer)))?;
        self.commit(tx, Change::Issuer(i.issuer.clone())).await
    }

    pub(super) async fn pg_update_issuer(&self, i: &TrustedIssuer) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = execute(
            &tx,
            "UPDATE trusted_issuers SET jwks_url = $2, jwks_file = $3, audience = $4,
               user_claim = $5, algorithms = $6, description = $7, updated_at = $8
             WHERE issuer = $1",
            i,
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("issuer {}", i.issuer)));
        }
        self.commit(tx, Change::Issuer(i.issuer.clone())).await
    }

    pub(super) async fn pg_issuers(&self) -> Result<Vec<TrustedIssuer>> {
        let c = self.client().await?;
        let sql = format!(r#"SELECT {COLUMNS} FROM trusted_issuers ORDER BY issuer COLLATE "C""#);
        c.query(&sql, &[]).await?.iter().map(read).collect()
    }

    pub(super) async fn pg_delete_issuer(&self, issuer: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if tx
            .execute("DELETE FROM trusted_issuers WHERE issuer = $1", &[&issuer])
            .await?
            == 0
        {
            return Err(StoreError::NotFound(format!("issuer {issuer}")));
        }
        self.commit(tx, Change::Issuer(issuer.to_owned())).await
    }

    pub(super) async fn pg_set_client_not_before(
        &self,
        user: &str,
        client_id: &str,
        not_before: i64,
    ) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "INSERT INTO client_token_revocations (user_id, client_id, not_before)
                   SELECT id, $2, $3 FROM users WHERE id = $1
                 ON CONFLICT (user_id, client_id) DO UPDATE SET not_before =
                   GREATEST(client_token_revocations.not_before, EXCLUDED.not_before)",
                &[&user, &client_id, &not_before],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        self.commit(tx, Change::Revocation(user.to_owned())).await
    }

    pub(super) async fn pg_client_not_before(&self) -> Result<Vec<(String, String, i64)>> {
        let c = self.client().await?;
        c.query(
            "SELECT user_id, client_id, not_before FROM client_token_revocations",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
    }
}
