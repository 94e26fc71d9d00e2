//! Security profiles, device model/profile and line display names in the SQLite backend.
//!
//! `devices.oauth` is kept equal to the device's profile's `oauth` in the same transaction as
//! every write, so device reads (the registrar's hot snapshot included) need no join.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::{
    Device, ProfileTransport, Result, SecurityProfile, StoreError, DEFAULT_MODEL,
    DEFAULT_OAUTH_PROFILE, DEFAULT_PROFILE,
};

/// The migration adding security profiles (three seeded) and the devices' model and profile;
/// existing devices get the default profile matching their OAuth flag.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE security_profiles (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, oauth INTEGER NOT NULL,
    digest INTEGER NOT NULL, transport TEXT NOT NULL
);
INSERT INTO security_profiles (name, description, oauth, digest, transport) VALUES
 ('Universal Device Template - Model-independent Security Profile',
  'Non-secure: Digest on any transport, no OAuth', 0, 1, 'any'),
 ('Universal Device Template - OAuth Security Profile',
  'OAuth on the SIP OAuth ports; Digest still allowed on the legacy ports', 1, 1, 'any'),
 ('Cisco Unified Client Services Framework - Secure OAuth Profile',
  'OAuth only: no Digest on the legacy ports', 1, 0, 'tls');
ALTER TABLE devices ADD COLUMN model TEXT NOT NULL DEFAULT 'Cisco Unified Client Services Framework';
ALTER TABLE devices ADD COLUMN profile TEXT NOT NULL DEFAULT '';
UPDATE devices SET profile = CASE WHEN oauth != 0
    THEN 'Universal Device Template - OAuth Security Profile'
    ELSE 'Universal Device Template - Model-independent Security Profile' END;
CREATE INDEX devices_profile ON devices(profile);
CREATE INDEX lines_dn ON lines(dn);
"#;

const COLUMNS: &str = "name, description, oauth, digest, transport";

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SecurityProfile, String)> {
    Ok((
        SecurityProfile {
            name: r.get(0)?,
            description: r.get(1)?,
            oauth: r.get::<_, i64>(2)? != 0,
            digest: r.get::<_, i64>(3)? != 0,
            transport: ProfileTransport::Any,
        },
        r.get(4)?,
    ))
}

fn finish((mut p, transport): (SecurityProfile, String)) -> Result<SecurityProfile> {
    p.transport = transport.parse().map_err(StoreError::Backend)?;
    Ok(p)
}

/// The profile name a device write stores (an empty one picks a default from `oauth`), its
/// `oauth` flag, and the model (empty picks the default); `Invalid` for an unknown profile.
pub(crate) fn resolve(tx: &Transaction<'_>, d: &Device) -> Result<(String, bool, String)> {
    let name = match (d.profile.as_str(), d.oauth) {
        ("", true) => DEFAULT_OAUTH_PROFILE,
        ("", false) => DEFAULT_PROFILE,
        (p, _) => p,
    };
    let oauth: Option<i64> = tx
        .query_row(
            "SELECT oauth FROM security_profiles WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?;
    let Some(oauth) = oauth else {
        return Err(StoreError::Invalid(format!(
            "security profile {name} does not exist"
        )));
    };
    let model = if d.model.is_empty() {
        DEFAULT_MODEL
    } else {
        &d.model
    };
    Ok((name.to_owned(), oauth != 0, model.to_owned()))
}

/// Reads one profile.
pub(crate) fn one(c: &Connection, name: &str) -> Result<Option<SecurityProfile>> {
    let sql = format!("SELECT {COLUMNS} FROM security_profiles WHERE name = ?1");
    c.query_row(&sql, params![name], read)
        .optional()?
        .map(finish)
        .transpose()
}

/// Every profile, ordered by name.
pub(crate) fn all(c: &Connection) -> Result<Vec<SecurityProfile>> {
    let sql = format!("SELECT {COLUMNS} FROM security_profiles ORDER BY name");
    let rows = c
        .prepare(&sql)?
        .query_map([], read)?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    rows.into_iter().map(finish).collect()
}

/// Runs `sql` (an INSERT or UPDATE) with the profile's fields as `?1`..`?5`, in [`COLUMNS`] order.
fn execute(c: &Connection, sql: &str, p: &SecurityProfile) -> rusqlite::Result<usize> {
    c.execute(
        sql,
        params![
            p.name,
            p.description,
            p.oauth as i64,
            p.digest as i64,
            p.transport.as_str()
        ],
    )
}

/// Inserts a profile; `Conflict` if the name is taken.
pub(crate) fn create(c: &mut Connection, p: &SecurityProfile) -> Result<()> {
    let sql = format!("INSERT INTO security_profiles ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)");
    execute(c, &sql, p).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(format!("security profile {}", p.name))
        }
        other => other.into(),
    })?;
    Ok(())
}

/// Replaces a profile and its devices' `oauth` flag (bumping their `updated_at` when it changed,
/// so config files are re-versioned).
pub(crate) fn update(c: &mut Connection, p: &SecurityProfile, now: i64) -> Result<()> {
    let tx = c.transaction()?;
    let n = execute(
        &tx,
        "UPDATE security_profiles SET description = ?2, oauth = ?3, digest = ?4, transport = ?5 \
         WHERE name = ?1",
        p,
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("security profile {}", p.name)));
    }
    tx.execute(
        "UPDATE devices SET oauth = ?2, updated_at = MAX(updated_at, ?3) \
         WHERE profile = ?1 AND oauth != ?2",
        params![p.name, p.oauth as i64, now],
    )?;
    tx.commit()?;
    Ok(())
}

/// Deletes an unused profile.
pub(crate) fn delete(c: &mut Connection, name: &str) -> Result<()> {
    let tx = c.transaction()?;
    let used: i64 = tx.query_row(
        "SELECT COUNT(*) FROM devices WHERE profile = ?1",
        params![name],
        |r| r.get(0),
    )?;
    if used > 0 {
        return Err(StoreError::Invalid(format!(
            "security profile {name} is used by {used} device(s)"
        )));
    }
    let n = tx.execute(
        "DELETE FROM security_profiles WHERE name = ?1",
        params![name],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("security profile {name}")));
    }
    tx.commit()?;
    Ok(())
}

/// Sets line `dn`'s display name on every device carrying it; the devices changed.
pub(crate) fn set_line_display_name(
    c: &mut Connection,
    dn: &str,
    display_name: Option<&str>,
    now: i64,
) -> Result<Vec<String>> {
    let tx = c.transaction()?;
    let devices: Vec<String> = tx
        .prepare("SELECT DISTINCT device FROM lines WHERE dn = ?1 ORDER BY device")?
        .query_map(params![dn], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    tx.execute(
        "UPDATE lines SET display_name = ?2 WHERE dn = ?1",
        params![dn, display_name],
    )?;
    tx.execute(
        "UPDATE devices SET updated_at = MAX(updated_at, ?2) \
         WHERE name IN (SELECT device FROM lines WHERE dn = ?1)",
        params![dn, now],
    )?;
    tx.commit()?;
    Ok(devices)
}
