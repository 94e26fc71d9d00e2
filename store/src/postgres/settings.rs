//! Cluster settings in the PostgreSQL backend: one row, one column per setting.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::PostgresStore;
use crate::{Change, ClusterSettings, Result, StoreError};

/// The migration adding every setting besides OAuth mode, with Unified CM's defaults.
/// `seeded` stays false until a node's config file seeded the row or an admin set it.
pub(crate) const MIGRATION: &str = r#"
ALTER TABLE cluster_settings ADD COLUMN access_token_lifetime_minutes INTEGER NOT NULL DEFAULT 60;
ALTER TABLE cluster_settings ADD COLUMN refresh_token_lifetime_days INTEGER NOT NULL DEFAULT 60;
ALTER TABLE cluster_settings ADD COLUMN refresh_login BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE cluster_settings ADD COLUMN password_grant BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE cluster_settings ADD COLUMN challenge_dialect TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE cluster_settings ADD COLUMN default_expires INTEGER NOT NULL DEFAULT 3600;
ALTER TABLE cluster_settings ADD COLUMN min_expires INTEGER NOT NULL DEFAULT 60;
ALTER TABLE cluster_settings ADD COLUMN max_expires INTEGER NOT NULL DEFAULT 7200;
ALTER TABLE cluster_settings ADD COLUMN seeded BOOLEAN NOT NULL DEFAULT FALSE;
"#;

/// A stored INTEGER as the model's `u32`; negative values cannot pass `validate` on write.
fn u32_at(row: &Row, i: usize) -> Result<u32> {
    let v: i32 = row.try_get(i)?;
    u32::try_from(v).map_err(|_| StoreError::Backend(format!("negative cluster setting {v}")))
}

/// A validated `u32` setting as an INTEGER (every range fits).
fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl PostgresStore {
    pub(super) async fn read_settings(&self) -> Result<ClusterSettings> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT oauth_mode, access_token_lifetime_minutes, refresh_token_lifetime_days, \
                 refresh_login, password_grant, challenge_dialect, default_expires, min_expires, \
                 max_expires FROM cluster_settings WHERE id = 1",
                &[],
            )
            .await?;
        let dialect: String = row.try_get(5)?;
        Ok(ClusterSettings {
            oauth_mode: row.try_get(0)?,
            access_token_lifetime_minutes: u32_at(&row, 1)?,
            refresh_token_lifetime_days: u32_at(&row, 2)?,
            refresh_login: row.try_get(3)?,
            password_grant: row.try_get(4)?,
            challenge_dialect: dialect.parse().map_err(StoreError::Backend)?,
            default_expires: u32_at(&row, 6)?,
            min_expires: u32_at(&row, 7)?,
            max_expires: u32_at(&row, 8)?,
        })
    }

    pub(super) async fn write_settings(&self, s: &ClusterSettings) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        update(&tx, s, ", oauth_mode = $9 WHERE id = 1", Some(s.oauth_mode)).await?;
        self.commit(tx, Change::Cluster).await
    }

    pub(super) async fn seed_settings(&self, s: &ClusterSettings) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The row lock of the UPDATE makes exactly one of several starting nodes see 1 row.
        let n = update(&tx, s, " WHERE id = 1 AND NOT seeded", None).await?;
        if n == 0 {
            tx.commit().await?;
            return Ok(false);
        }
        self.commit(tx, Change::Cluster).await?;
        Ok(true)
    }
}

/// Validates `s`, then sets every setting but OAuth mode (`$1`..`$8`) and marks the row seeded;
/// `tail` ends the statement (its WHERE clause), and sets `oauth_mode = $9` when one is given.
/// Returns the rows changed.
async fn update(
    tx: &Transaction<'_>,
    s: &ClusterSettings,
    tail: &str,
    oauth_mode: Option<bool>,
) -> Result<u64> {
    s.validate()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let sql = format!(
        "UPDATE cluster_settings SET access_token_lifetime_minutes = $1, \
         refresh_token_lifetime_days = $2, refresh_login = $3, password_grant = $4, \
         challenge_dialect = $5, default_expires = $6, min_expires = $7, max_expires = $8, \
         seeded = TRUE{tail}"
    );
    let ints = [
        int(s.access_token_lifetime_minutes),
        int(s.refresh_token_lifetime_days),
        int(s.default_expires),
        int(s.min_expires),
        int(s.max_expires),
    ];
    let dialect = s.challenge_dialect.as_str();
    let mut values: Vec<&(dyn ToSql + Sync)> = vec![
        &ints[0],
        &ints[1],
        &s.refresh_login,
        &s.password_grant,
        &dialect,
        &ints[2],
        &ints[3],
        &ints[4],
    ];
    if let Some(m) = &oauth_mode {
        values.push(m);
    }
    Ok(tx.execute(&sql, &values).await?)
}
