//! The Digest nonce secret: created once, then the same for every caller, every node and every
//! restart.

use std::sync::Arc;

use super::pg;
use crate::{PostgresStore, SqliteStore, Store};

pub(crate) async fn the_digest_nonce_secret_is_created_once(s: Arc<dyn Store>) {
    assert_eq!(s.digest_nonce_secret([1; 32]).await.unwrap(), [1; 32]);
    // A later caller's candidate is ignored: it gets the stored secret.
    assert_eq!(s.digest_nonce_secret([2; 32]).await.unwrap(), [1; 32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_nonce_secret_survives_reopening_the_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = SqliteStore::open(&path).unwrap();
    assert_eq!(first.digest_nonce_secret([5; 32]).await.unwrap(), [5; 32]);
    drop(first);
    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(
        reopened.digest_nonce_secret([6; 32]).await.unwrap(),
        [5; 32]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_starting_at_once_get_one_digest_nonce_secret() {
    let Some(server) = pg::shared() else {
        return;
    };
    for _ in 0..5 {
        let url = server.fresh_db().await;
        let a = PostgresStore::connect(&url).await.unwrap();
        let b = PostgresStore::connect(&url).await.unwrap();
        let (sa, sb) = tokio::join!(
            a.digest_nonce_secret([3; 32]),
            b.digest_nonce_secret([4; 32])
        );
        let (sa, sb) = (sa.unwrap(), sb.unwrap());
        assert_eq!(sa, sb);
        assert!(sa == [3; 32] || sa == [4; 32], "{sa:?}");
    }
}
