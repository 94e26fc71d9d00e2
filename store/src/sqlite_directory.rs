//! SQLite's narrow reads for the directory's incremental updates: what one [`Change`](crate::Change)
//! names (one user's devices, one profile's devices, one device's Digest credential, one user's
//! revocations), each through an index, so applying a change costs the same with 50 or 50,000
//! devices stored.

use rusqlite::{params, Connection, OptionalExtension};

use crate::sqlite::read_devices;
use crate::{Device, DigestCredential, Result};

/// A user's devices are read per [`Change::User`](crate::Change::User) and deleted with the user:
/// without an index on `owner` both scanned every device.
pub(crate) const MIGRATION: &str = "CREATE INDEX IF NOT EXISTS devices_owner ON devices(owner);";

/// The devices whose `column` (`owner` or `profile`) is `value`, ordered by name.
fn devices_where(c: &Connection, column: Column, value: &str) -> Result<Vec<Device>> {
    let sql = match column {
        Column::Owner => "SELECT name FROM devices WHERE owner = ?1 ORDER BY name",
        Column::Profile => "SELECT name FROM devices WHERE profile = ?1 ORDER BY name",
    };
    let names: Vec<String> = c
        .prepare_cached(sql)?
        .query_map(params![value], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    read_devices(c, names)
}

/// Which device column [`devices_where`] filters on.
#[derive(Clone, Copy)]
enum Column {
    Owner,
    Profile,
}

/// The devices `owner` owns, ordered by name.
pub(crate) fn devices_of_owner(c: &mut Connection, owner: &str) -> Result<Vec<Device>> {
    devices_where(c, Column::Owner, owner)
}

/// The devices using security profile `profile`, ordered by name.
pub(crate) fn devices_with_profile(c: &mut Connection, profile: &str) -> Result<Vec<Device>> {
    devices_where(c, Column::Profile, profile)
}

fn digest_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, DigestCredential)> {
    Ok((
        r.get(0)?,
        DigestCredential {
            username: r.get(1)?,
            realm: r.get(2)?,
            ha1_md5: r.get(3)?,
            ha1_sha256: r.get(4)?,
        },
    ))
}

/// One device's Digest credential, the device named case-insensitively.
pub(crate) fn device_digest(
    c: &mut Connection,
    device: &str,
) -> Result<Option<(String, DigestCredential)>> {
    // `devices.name` compares NOCASE; the credential row holds the device's stored name.
    Ok(c.prepare_cached(
        "SELECT device, username, realm, ha1_md5, ha1_sha256 FROM digest_credentials
         WHERE device = (SELECT name FROM devices WHERE name = ?1)",
    )?
    .query_row(params![device], digest_row)
    .optional()?)
}

/// The Digest credentials of `owner`'s devices.
pub(crate) fn owner_digests(
    c: &mut Connection,
    owner: &str,
) -> Result<Vec<(String, DigestCredential)>> {
    let rows = c
        .prepare_cached(
            "SELECT dc.device, dc.username, dc.realm, dc.ha1_md5, dc.ha1_sha256
             FROM digest_credentials dc JOIN devices d ON d.name = dc.device
             WHERE d.owner = ?1 ORDER BY dc.device",
        )?
        .query_map(params![owner], digest_row)?
        .collect::<std::result::Result<_, _>>()?;
    Ok(rows)
}

/// One user's tokens-not-before time.
pub(crate) fn user_not_before(c: &mut Connection, user: &str) -> Result<Option<i64>> {
    Ok(
        c.prepare_cached("SELECT not_before FROM token_revocations WHERE user_id = ?1")?
            .query_row(params![user], |r| r.get(0))
            .optional()?,
    )
}

/// One user's (client, not-before) pairs.
pub(crate) fn user_client_not_before(c: &mut Connection, user: &str) -> Result<Vec<(String, i64)>> {
    let rows = c
        .prepare_cached(
            "SELECT client_id, not_before FROM client_token_revocations
             WHERE user_id = ?1 ORDER BY client_id",
        )?
        .query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<std::result::Result<_, _>>()?;
    Ok(rows)
}
