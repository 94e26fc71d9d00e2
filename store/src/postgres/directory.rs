//! PostgreSQL's narrow reads for the directory's incremental updates: what one
//! [`Change`](crate::Change) names (one device's Digest credential, one user's credentials and
//! revocations), each through an index. One user's or one profile's devices are
//! [`PostgresStore::read_devices`] with a filter.

use tokio_postgres::Row;

use super::PostgresStore;
use crate::{DigestCredential, Result};

fn digest_row(r: &Row) -> Result<(String, DigestCredential)> {
    Ok((
        r.try_get(0)?,
        DigestCredential {
            username: r.try_get(1)?,
            realm: r.try_get(2)?,
            ha1_md5: r.try_get(3)?,
            ha1_sha256: r.try_get(4)?,
        },
    ))
}

impl PostgresStore {
    pub(super) async fn pg_device_digest(
        &self,
        device: &str,
    ) -> Result<Option<(String, DigestCredential)>> {
        let c = self.client().await?;
        // The credential row holds the device's stored name; the device is named in any case.
        c.query_opt(
            "SELECT device, username, realm, ha1_md5, ha1_sha256 FROM digest_credentials
             WHERE device = (SELECT name FROM devices WHERE lower(name) = lower($1))",
            &[&device],
        )
        .await?
        .as_ref()
        .map(digest_row)
        .transpose()
    }

    pub(super) async fn pg_owner_digests(
        &self,
        owner: &str,
    ) -> Result<Vec<(String, DigestCredential)>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT dc.device, dc.username, dc.realm, dc.ha1_md5, dc.ha1_sha256
               FROM digest_credentials dc JOIN devices d ON d.name = dc.device
               WHERE d.owner = $1 ORDER BY dc.device COLLATE "C""#,
            &[&owner],
        )
        .await?
        .iter()
        .map(digest_row)
        .collect()
    }

    pub(super) async fn pg_user_not_before(&self, user: &str) -> Result<Option<i64>> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT not_before FROM token_revocations WHERE user_id = $1",
            &[&user],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
    }

    pub(super) async fn pg_user_client_not_before(&self, user: &str) -> Result<Vec<(String, i64)>> {
        let c = self.client().await?;
        c.query(
            r#"SELECT client_id, not_before FROM client_token_revocations
               WHERE user_id = $1 ORDER BY client_id COLLATE "C""#,
            &[&user],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
    }
}
