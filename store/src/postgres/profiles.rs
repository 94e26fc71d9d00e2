//! Security profiles, device model/profile and line display names in the PostgreSQL backend.
//!
//! `devices.oauth` is kept equal to the device's profile's `oauth` in the same transaction as
//! every write, so device reads need no join.

use tokio_postgres::Row;

use super::{unique_as_conflict, PostgresStore};
use crate::{
    Change, Device, Result, SecurityProfile, StoreError, DEFAULT_MODEL, DEFAULT_OAUTH_PROFILE,
    DEFAULT_PROFILE,
};

/// The migration adding security profiles (three seeded) and the devices' model and profile;
/// existing devices get the default profile matching their OAuth flag.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE security_profiles (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, oauth BOOLEAN NOT NULL,
    digest BOOLEAN NOT NULL, transport TEXT NOT NULL
);
INSERT INTO security_profiles (name, description, oauth, digest, transport) VALUES
 ('Universal Device Template - Model-independent Security Profile',
  'Non-secure: Digest on any transport, no OAuth', FALSE, TRUE, 'any'),
 ('Universal Device Template - OAuth Security Profile',
  'OAuth on the SIP OAuth ports; Digest still allowed on the legacy ports', TRUE, TRUE, 'any'),
 ('Cisco Unified Client Services Framework - Secure OAuth Profile',
  'OAuth only: no Digest on the legacy ports', TRUE, FALSE, 'tls');
ALTER TABLE devices ADD COLUMN model TEXT NOT NULL DEFAULT 'Cisco Unified Client Services Framework';
ALTER TABLE devices ADD COLUMN profile TEXT NOT NULL DEFAULT '';
UPDATE devices SET profile = CASE WHEN oauth
    THEN 'Universal Device Template - OAuth Security Profile'
    ELSE 'Universal Device Template - Model-independent Security Profile' END;
CREATE INDEX devices_profile ON devices(profile);
CREATE INDEX lines_dn ON lines(dn);
"#;

const COLUMNS: &str = "name, description, oauth, digest, transport";

fn read(r: &Row) -> Result<SecurityProfile> {
    let transport: String = r.try_get(4)?;
    Ok(SecurityProfile {
        name: r.try_get(0)?,
        description: r.try_get(1)?,
        oauth: r.try_get(2)?,
        digest: r.try_get(3)?,
        transport: transport.parse().map_err(StoreError::Backend)?,
    })
}

/// The profile name a device write stores (an empty one picks a default from `oauth`), its
/// `oauth` flag, and the model (empty picks the default); `Invalid` for an unknown profile.
/// `FOR SHARE` keeps the profile from being deleted until the device is in.
pub(super) async fn resolve(
    tx: &deadpool_postgres::Transaction<'_>,
    d: &Device,
) -> Result<(String, bool, String)> {
    let name = match (d.profile.as_str(), d.oauth) {
        ("", true) => DEFAULT_OAUTH_PROFILE,
        ("", false) => DEFAULT_PROFILE,
        (p, _) => p,
    };
    let Some(row) = tx
        .query_opt(
            "SELECT oauth FROM security_profiles WHERE name = $1 FOR SHARE",
            &[&name],
        )
        .await?
    else {
        return Err(StoreError::Invalid(format!(
            "security profile {name} does not exist"
        )));
    };
    let model = if d.model.is_empty() {
        DEFAULT_MODEL
    } else {
        &d.model
    };
    Ok((name.to_owned(), row.try_get(0)?, model.to_owned()))
}

/// Runs `sql` (an INSERT or UPDATE) with the profile's fields as `$1`..`$5`, in [`COLUMNS`] order.
async fn execute(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    p: &SecurityProfile,
) -> std::result::Result<u64, tokio_postgres::Error> {
    tx.execute(
        sql,
        &[
            &p.name,
            &p.description,
            &p.oauth,
            &p.digest,
            &p.transport.as_str(),
        ],
    )
    .await
}

impl PostgresStore {
    pub(super) async fn pg_create_profile(&self, p: &SecurityProfile) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let sql = format!("INSERT INTO security_profiles ({COLUMNS}) VALUES ($1, $2, $3, $4, $5)");
        execute(&tx, &sql, p)
            .await
            .map_err(|e| unique_as_conflict(e, format!("security profile {}", p.name)))?;
        self.commit(tx, Change::Profile(p.name.clone())).await
    }

    pub(super) async fn pg_profile(&self, name: &str) -> Result<Option<SecurityProfile>> {
        let c = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM security_profiles WHERE name = $1");
        c.query_opt(&sql, &[&name])
            .await?
            .as_ref()
            .map(read)
            .transpose()
    }

    pub(super) async fn pg_profiles(&self) -> Result<Vec<SecurityProfile>> {
        let c = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM security_profiles ORDER BY name COLLATE \"C\"");
        c.query(&sql, &[]).await?.iter().map(read).collect()
    }

    pub(super) async fn pg_update_profile(&self, p: &SecurityProfile, now: i64) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = execute(
            &tx,
            "UPDATE security_profiles SET description = $2, oauth = $3, digest = $4,
             transport = $5 WHERE name = $1",
            p,
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("security profile {}", p.name)));
        }
        tx.execute(
            "UPDATE devices SET oauth = $2, updated_at = GREATEST(updated_at, $3)
             WHERE profile = $1 AND oauth <> $2",
            &[&p.name, &p.oauth, &now],
        )
        .await?;
        self.commit(tx, Change::Profile(p.name.clone())).await
    }

    pub(super) async fn pg_delete_profile(&self, name: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The row lock makes a concurrent device write naming this profile wait (FOR SHARE).
        let Some(_) = tx
            .query_opt(
                "SELECT 1 FROM security_profiles WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?
        else {
            return Err(StoreError::NotFound(format!("security profile {name}")));
        };
        let used: i64 = tx
            .query_one("SELECT COUNT(*) FROM devices WHERE profile = $1", &[&name])
            .await?
            .try_get(0)?;
        if used > 0 {
            return Err(StoreError::Invalid(format!(
                "security profile {name} is used by {used} device(s)"
            )));
        }
        tx.execute("DELETE FROM security_profiles WHERE name = $1", &[&name])
            .await?;
        self.commit(tx, Change::Profile(name.to_owned())).await
    }

    pub(super) async fn pg_set_line_display_name(
        &self,
        dn: &str,
        display_name: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let devices: Vec<String> = tx
            .query(
                "SELECT DISTINCT device FROM lines WHERE dn = $1 ORDER BY device",
                &[&dn],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        tx.execute(
            "UPDATE lines SET display_name = $2 WHERE dn = $1",
            &[&dn, &display_name],
        )
        .await?;
        tx.execute(
            "UPDATE devices SET updated_at = GREATEST(updated_at, $2)
             WHERE name IN (SELECT device FROM lines WHERE dn = $1)",
            &[&dn, &now],
        )
        .await?;
        // One notification per device would be several commits; a reload covers them all.
        let change = match devices.as_slice() {
            [one] => Change::Device(one.clone()),
            _ => Change::Reload,
        };
        self.commit(tx, change).await?;
        Ok(devices)
    }
}
