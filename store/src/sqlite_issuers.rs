//! Trusted external token issuers and per-client token revocation in the SQLite backend.

use rusqlite::{params, Connection};

use crate::{Result, StoreError, TrustedIssuer};

/// The migration adding trusted issuers and the (user, client) not-before times.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE trusted_issuers (
    issuer TEXT PRIMARY KEY, jwks_url TEXT, jwks_file TEXT, audience TEXT NOT NULL,
    user_claim TEXT NOT NULL, algorithms TEXT NOT NULL, description TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE client_token_revocations (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, client_id TEXT NOT NULL,
    not_before INTEGER NOT NULL, PRIMARY KEY (user_id, client_id)
);
"#;

const COLUMNS: &str =
    "issuer, jwks_url, jwks_file, audience, user_claim, algorithms, description, updated_at";

fn algorithms_json(algs: &[String]) -> String {
    serde_json::to_string(algs).unwrap_or_else(|_| "[]".into())
}

fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<TrustedIssuer> {
    let algs: String = r.get(5)?;
    Ok(TrustedIssuer {
        issuer: r.get(0)?,
        jwks_url: r.get(1)?,
        jwks_file: r.get(2)?,
        audience: r.get(3)?,
        user_claim: r.get(4)?,
        algorithms: serde_json::from_str(&algs).unwrap_or_default(),
        description: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

/// Runs `sql` (an INSERT or UPDATE) with the issuer's fields as `?1`..`?8`, in [`COLUMNS`] order.
fn execute(c: &Connection, sql: &str, i: &TrustedIssuer) -> rusqlite::Result<usize> {
    c.execute(
        sql,
        params![
            i.issuer,
            i.jwks_url,
            i.jwks_file,
            i.audience,
            i.user_claim,
            algorithms_json(&i.algorithms),
            i.description,
            i.updated_at
        ],
    )
}

/// Inserts a new issuer; `Conflict` when the URL is taken.
pub(crate) fn create(c: &mut Connection, i: &TrustedIssuer) -> Result<()> {
    let sql =
        format!("INSERT INTO trusted_issuers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
    execute(c, &sql, i).map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(format!("issuer {}", i.issuer))
        }
        other => other.into(),
    })?;
    Ok(())
}

/// Replaces an existing issuer's settings; `NotFound` when absent.
pub(crate) fn update(c: &mut Connection, i: &TrustedIssuer) -> Result<()> {
    let n = execute(
        c,
        "UPDATE trusted_issuers SET jwks_url = ?2, jwks_file = ?3, audience = ?4, user_claim = ?5,
           algorithms = ?6, description = ?7, updated_at = ?8 WHERE issuer = ?1",
        i,
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("issuer {}", i.issuer)));
    }
    Ok(())
}

/// Every issuer, ordered by URL.
pub(crate) fn list(c: &mut Connection) -> Result<Vec<TrustedIssuer>> {
    let sql = format!("SELECT {COLUMNS} FROM trusted_issuers ORDER BY issuer");
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt
        .query_map([], read)?
        .collect::<std::result::Result<_, _>>()?;
    Ok(rows)
}

/// Deletes an issuer; `NotFound` when absent.
pub(crate) fn delete(c: &mut Connection, issuer: &str) -> Result<()> {
    if c.execute(
        "DELETE FROM trusted_issuers WHERE issuer = ?1",
        params![issuer],
    )? == 0
    {
        return Err(StoreError::NotFound(format!("issuer {issuer}")));
    }
    Ok(())
}

/// Raises the (user, client) not-before time; `NotFound` for an unknown user.
pub(crate) fn set_client_not_before(
    c: &mut Connection,
    user: &str,
    client_id: &str,
    not_before: i64,
) -> Result<()> {
    let n = c.execute(
        "INSERT INTO client_token_revocations (user_id, client_id, not_before)
           SELECT id, ?2, ?3 FROM users WHERE id = ?1
         ON CONFLICT(user_id, client_id) DO UPDATE SET not_before = MAX(not_before, ?3)",
        params![user, client_id, not_before],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {user}")));
    }
    Ok(())
}

/// Every (user, client, not-before).
pub(crate) fn client_not_before(c: &mut Connection) -> Result<Vec<(String, String, i64)>> {
    let mut stmt =
        c.prepare("SELECT user_id, client_id, not_before FROM client_token_revocations")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<std::result::Result<_, _>>()?;
    Ok(rows)
}
