//! Shared fixtures for this crate's unit tests.

use std::sync::Arc;

use sipreg_store::{SqliteStore, Store};

/// A fresh SQLite store in its own temporary directory (keep the guard alive).
pub(crate) fn temp_store() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("sipreg.db")).unwrap();
    (dir, Arc::new(store))
}
