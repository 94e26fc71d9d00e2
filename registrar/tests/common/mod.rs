//! Fixtures shared by the registrar's tests: the integration tests (`mod common;`) and the
//! in-crate socket tests of `src/mra/tests.rs` (by `#[path]`), so it names only `sipreg_store`,
//! which both see under that name.

use sipreg_store::{Device, Line, SqliteStore, Store, User};

/// Turns OAuth mode on and stores user `alice` owning OAuth device `CSFalice` with line 1010.
#[allow(dead_code, reason = "not every test crate seeds alice")]
pub(crate) async fn seed_alice(store: &SqliteStore) {
    store.set_oauth_mode(true).await.unwrap();
    seed_device(store, "alice", "CSFalice", "1010", true).await;
}

/// Stores user `owner` owning device `name` with the one line `dn`; `oauth` marks an OAuth device.
pub(crate) async fn seed_device(
    store: &SqliteStore,
    owner: &str,
    name: &str,
    dn: &str,
    oauth: bool,
) {
    store
        .create_user(&User {
            id: owner.into(),
            password_hash: String::new(),
            created_at: 0,
        })
        .await
        .unwrap();
    store
        .create_device(&Device {
            name: name.into(),
            owner: owner.into(),
            lines: vec![Line {
                dn: dn.into(),
                display_name: None,
            }],
            oauth,
            updated_at: 0,
            model: String::new(),
            profile: String::new(),
        })
        .await
        .unwrap();
}
