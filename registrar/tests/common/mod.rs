//! Fixtures shared by the registrar's integration tests.

use sipreg_store::{Device, Line, SqliteStore, Store, User};

/// Turns OAuth mode on and stores user `alice` owning OAuth device `CSFalice` with line 1010.
pub async fn seed_alice(store: &SqliteStore) {
    store.set_oauth_mode(true).await.unwrap();
    store
        .create_user(&User {
            id: "alice".into(),
            password_hash: String::new(),
            created_at: 0,
        })
        .await
        .unwrap();
    store
        .create_device(&Device {
            name: "CSFalice".into(),
            owner: "alice".into(),
            lines: vec![Line {
                dn: "1010".into(),
                display_name: None,
            }],
            oauth: true,
            updated_at: 0,
            model: String::new(),
            profile: String::new(),
        })
        .await
        .unwrap();
}
