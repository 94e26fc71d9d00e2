//! Cluster settings in the SQLite backend: one row, one column per setting.

use rusqlite::{Connection, ToSql};

use crate::{ChallengeDialect, ClusterSettings, Result, StoreError};

/// The migration adding every setting besides OAuth mode, with Unified CM's defaults.
/// `seeded` stays 0 until a node's config file seeded the row or an admin set it.
pub(crate) const MIGRATION: &str = r#"
ALTER TABLE cluster_settings ADD COLUMN access_token_lifetime_minutes INTEGER NOT NULL DEFAULT 60;
ALTER TABLE cluster_settings ADD COLUMN refresh_token_lifetime_days INTEGER NOT NULL DEFAULT 60;
ALTER TABLE cluster_settings ADD COLUMN refresh_login INTEGER NOT NULL DEFAULT 1;
ALTER TABLE cluster_settings ADD COLUMN password_grant INTEGER NOT NULL DEFAULT 1;
ALTER TABLE cluster_settings ADD COLUMN challenge_dialect TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE cluster_settings ADD COLUMN default_expires INTEGER NOT NULL DEFAULT 3600;
ALTER TABLE cluster_settings ADD COLUMN min_expires INTEGER NOT NULL DEFAULT 60;
ALTER TABLE cluster_settings ADD COLUMN max_expires INTEGER NOT NULL DEFAULT 7200;
ALTER TABLE cluster_settings ADD COLUMN seeded INTEGER NOT NULL DEFAULT 0;
"#;

const COLUMNS: &str = "oauth_mode, access_token_lifetime_minutes, refresh_token_lifetime_days, \
    refresh_login, password_grant, challenge_dialect, default_expires, min_expires, max_expires";

/// Reads the settings row.
pub(crate) fn read(c: &mut Connection) -> Result<ClusterSettings> {
    let sql = format!("SELECT {COLUMNS} FROM cluster_settings WHERE id = 1");
    let row = c.query_row(&sql, [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, u32>(6)?,
            r.get::<_, u32>(7)?,
            r.get::<_, u32>(8)?,
        ))
    })?;
    Ok(ClusterSettings {
        oauth_mode: row.0 != 0,
        access_token_lifetime_minutes: row.1,
        refresh_token_lifetime_days: row.2,
        refresh_login: row.3 != 0,
        password_grant: row.4 != 0,
        challenge_dialect: row.5.parse().map_err(StoreError::Backend)?,
        default_expires: row.6,
        min_expires: row.7,
        max_expires: row.8,
    })
}

/// Replaces every setting and marks the row seeded.
pub(crate) fn write(c: &mut Connection, s: &ClusterSettings) -> Result<()> {
    update(c, s, ", oauth_mode = ?9 WHERE id = 1", Some(s.oauth_mode))?;
    Ok(())
}

/// Sets everything but OAuth mode when the row was never seeded; whether it did.
pub(crate) fn seed(c: &mut Connection, s: &ClusterSettings) -> Result<bool> {
    Ok(update(c, s, " WHERE id = 1 AND seeded = 0", None)? == 1)
}

/// Validates `s`, then sets every setting but OAuth mode (`?1`..`?8`) and marks the row seeded;
/// `tail` ends the statement (its WHERE clause), and sets `oauth_mode = ?9` when one is given.
/// Returns the rows changed.
fn update(
    c: &Connection,
    s: &ClusterSettings,
    tail: &str,
    oauth_mode: Option<bool>,
) -> Result<usize> {
    s.validate()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let sql = format!(
        "UPDATE cluster_settings SET access_token_lifetime_minutes = ?1, \
         refresh_token_lifetime_days = ?2, refresh_login = ?3, password_grant = ?4, \
         challenge_dialect = ?5, default_expires = ?6, min_expires = ?7, max_expires = ?8, \
         seeded = 1{tail}"
    );
    let (refresh_login, password_grant) = (s.refresh_login as i64, s.password_grant as i64);
    let dialect = dialect(s.challenge_dialect);
    let mode = oauth_mode.map(i64::from);
    let mut values: Vec<&dyn ToSql> = vec![
        &s.access_token_lifetime_minutes,
        &s.refresh_token_lifetime_days,
        &refresh_login,
        &password_grant,
        &dialect,
        &s.default_expires,
        &s.min_expires,
        &s.max_expires,
    ];
    if let Some(m) = &mode {
        values.push(m);
    }
    Ok(c.execute(&sql, values.as_slice())?)
}

fn dialect(d: ChallengeDialect) -> &'static str {
    d.as_str()
}
