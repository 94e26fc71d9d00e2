//! Choosing the backend from a store URL: `sqlite://PATH` or `postgres://…`.

use std::path::Path;
use std::sync::Arc;

use crate::{PostgresStore, Result, SqliteStore, Store, StoreError};

/// Opens the store a URL names, applying pending migrations:
/// - `sqlite://PATH` — one SQLite file (`sqlite:///abs/path` or `sqlite://relative/path`);
/// - `postgres://user:password@host:port/db` or `postgresql://…` (libpq URL syntax, e.g.
///   `?host=/run/postgresql` for a Unix socket) — a database shared by every node of a cluster.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Invalid(
                "the store URL sqlite:// names no file; use sqlite://PATH".into(),
            ));
        }
        return Ok(Arc::new(SqliteStore::open(Path::new(path))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    Err(StoreError::Invalid(format!(
        "unsupported store URL {}; use sqlite://PATH or postgres://USER@HOST/DB",
        redact_url(url)
    )))
}

/// The URL with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    let tail = redact_query_password(tail);
    format!("{scheme}://{user}@{host}{tail}")
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://sip:s3cret@db:5432/sipreg"),
            "postgres://sip:***@db:5432/sipreg"
        );
        assert_eq!(
            redact_url("postgres://sip@db/sipreg?password=x&host=/tmp"),
            "postgres://sip@db/sipreg?password=***&host=/tmp"
        );
        assert_eq!(redact_url("sqlite:///var/x.db"), "sqlite:///var/x.db");
    }

    #[tokio::test]
    async fn sqlite_urls_open_and_unknown_schemes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let s = open(&url).await.unwrap();
        assert!(!s.cluster_settings().await.unwrap().oauth_mode);
        assert!(dir.path().join("s.db").exists());
        assert!(matches!(
            open("mysql://x").await,
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            open("sqlite://").await,
            Err(StoreError::Invalid(_))
        ));
    }
}
