//! One behavioural suite, run against every backend: each behaviour is an `async fn` taking a
//! fresh store, and [`suite!`] instantiates it once for SQLite and once for PostgreSQL. Tests that
//! only make sense with several nodes on one database live in [`cluster`].

mod cluster;
mod directory;
mod issuers;
mod pg;
mod profiles;
mod rotation;
mod secrets;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use crate::{
    AdminToken, AuditEntry, Change, Device, DigestCredential, Edge, Line, Node, OAuthClient,
    RefreshToken, RefreshUse, SigningKey, Store, StoreError, StoredBinding, TrustCert, User,
};

/// A fresh store plus whatever must live as long as it (the SQLite temp dir).
pub(crate) struct Fresh {
    pub(crate) store: Arc<dyn Store>,
    _keep: Option<tempfile::TempDir>,
}

pub(crate) fn sqlite() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::SqliteStore::open(&dir.path().join("db")).unwrap();
    Fresh {
        store: Arc::new(store),
        _keep: Some(dir),
    }
}

pub(crate) async fn postgres() -> Option<Fresh> {
    let server = pg::shared()?;
    let url = server.fresh_db().await;
    let store = crate::PostgresStore::connect(&url).await.unwrap();
    Some(Fresh {
        store: Arc::new(store),
        _keep: None,
    })
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let f = super::sqlite();
                    super::$name(f.store.clone()).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(f) = super::postgres().await else { return };
                    super::$name(f.store.clone()).await;
                }
            )*
        }
    };
}

suite!(
    data_round_trips_and_device_names_ignore_case,
    conflicts_and_missing_owner_are_reported,
    a_refresh_token_is_taken_exactly_once,
    only_one_signing_key_is_active_and_changes_are_published,
    refresh_reuse_is_detected_and_families_are_revoked,
    concurrent_refresh_use_has_exactly_one_winner,
    revocations_digest_edges_trust_clients_and_bindings_round_trip,
    the_active_signing_key_cannot_be_deleted,
    admin_tokens_and_the_audit_log_round_trip,
    heartbeats_are_listed_with_their_nodes,
    node_bindings_leave_other_nodes_rows_alone,
    a_rewritten_aor_keeps_exactly_its_current_bindings,
    every_write_publishes_its_change,
    a_revoked_family_stays_revoked_for_racing_rotations,
    a_device_update_replaces_owner_lines_and_profile,
    a_password_change_replaces_the_hash,
    trusted_issuers_round_trip_and_reach_the_directory,
    per_client_not_before_is_kept_per_user_and_client,
    cluster_settings_are_replaced_seeded_once_and_validated,
    profiles_drive_their_devices_oauth_and_cannot_be_deleted_in_use,
    line_display_names_change_on_every_device_carrying_the_line,
    a_rotation_uses_and_inserts_in_one_transaction,
    concurrent_rotations_have_exactly_one_winner_and_one_successor,
    a_failed_rotation_among_concurrent_ones_fails_alone,
    incremental_updates_equal_a_full_reload,
    the_directory_reads_one_user_device_or_profile,
    the_digest_nonce_secret_is_created_once,
);

use directory::{
    incremental_updates_equal_a_full_reload, the_directory_reads_one_user_device_or_profile,
};

use rotation::{
    a_failed_rotation_among_concurrent_ones_fails_alone,
    a_rotation_uses_and_inserts_in_one_transaction,
    concurrent_rotations_have_exactly_one_winner_and_one_successor,
};

use profiles::{
    line_display_names_change_on_every_device_carrying_the_line,
    profiles_drive_their_devices_oauth_and_cannot_be_deleted_in_use,
};

use settings::cluster_settings_are_replaced_seeded_once_and_validated;

use secrets::the_digest_nonce_secret_is_created_once;

use issuers::{
    per_client_not_before_is_kept_per_user_and_client,
    trusted_issuers_round_trip_and_reach_the_directory,
};

pub(crate) fn user(id: &str) -> User {
    User {
        id: id.into(),
        password_hash: "h".into(),
        created_at: 1,
    }
}

pub(crate) fn device(name: &str, owner: &str, dns: &[&str]) -> Device {
    Device {
        name: name.into(),
        owner: owner.into(),
        lines: dns
            .iter()
            .map(|d| Line {
                dn: (*d).into(),
                display_name: None,
            })
            .collect(),
        oauth: true,
        updated_at: 1,
        model: crate::DEFAULT_MODEL.into(),
        profile: crate::DEFAULT_OAUTH_PROFILE.into(),
    }
}

pub(crate) fn node(name: &str, oauth_port: u16) -> Node {
    Node {
        name: name.into(),
        host: format!("{name}.example"),
        sip_port: 5060,
        secured_sip_port: 5061,
        sip_oauth_port: oauth_port,
        sip_mra_oauth_port: 5091,
    }
}

pub(crate) fn refresh(hash: &str, user: &str, family: &str, expires_at: i64) -> RefreshToken {
    RefreshToken {
        hash: hash.into(),
        user_id: user.into(),
        client_id: "softphone".into(),
        scope: "sip".into(),
        issued_at: 1,
        expires_at,
        family: family.into(),
    }
}

fn key(kid: &str, at: i64) -> SigningKey {
    SigningKey {
        kid: kid.into(),
        alg: "ES256".into(),
        private_pem: "pem".into(),
        public_x: "x".into(),
        public_y: "y".into(),
        created_at: at,
        active: true,
    }
}

/// The next change other than the periodic `Reload`, within `within`.
pub(crate) async fn next_change(
    rx: &mut tokio::sync::broadcast::Receiver<Change>,
    within: Duration,
) -> Option<Change> {
    tokio::time::timeout(within, async {
        loop {
            match rx.recv().await {
                Ok(Change::Reload) => continue,
                Ok(c) => return Some(c),
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

async fn data_round_trips_and_device_names_ignore_case(s: Arc<dyn Store>) {
    s.create_user(&user("alice")).await.unwrap();
    let mut d = device("CSFalice", "alice", &["1010", "1011"]);
    d.lines[1].display_name = Some("Alice 2".into());
    s.create_device(&d).await.unwrap();
    s.create_device(&device("bdesk", "alice", &["1012"]))
        .await
        .unwrap();
    s.create_device(&device("Adesk", "alice", &[]))
        .await
        .unwrap();
    s.set_oauth_mode(true).await.unwrap();
    assert!(s.cluster_settings().await.unwrap().oauth_mode);
    let got = s
        .device("csfALICE")
        .await
        .unwrap()
        .expect("case-insensitive lookup");
    assert_eq!(got, d);
    assert_eq!(
        s.devices()
            .await
            .unwrap()
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>(),
        ["Adesk", "bdesk", "CSFalice"],
        "ordered by name, ignoring case"
    );
    assert_eq!(s.users().await.unwrap(), vec![user("alice")]);
    assert_eq!(s.user("alice").await.unwrap(), Some(user("alice")));
    assert_eq!(s.user("nobody").await.unwrap(), None);
    s.delete_device("CSFALICE").await.unwrap();
    assert!(s.device("CSFalice").await.unwrap().is_none());
    s.set_oauth_mode(false).await.unwrap();
    assert!(!s.cluster_settings().await.unwrap().oauth_mode);
}

async fn conflicts_and_missing_owner_are_reported(s: Arc<dyn Store>) {
    s.create_user(&user("bob")).await.unwrap();
    assert!(matches!(
        s.create_user(&user("bob")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_device(&device("CSFx", "nobody", &["1"])).await,
        Err(StoreError::Invalid(_))
    ));
    s.create_device(&device("CSFbob", "bob", &["2000"]))
        .await
        .unwrap();
    assert!(matches!(
        s.create_device(&device("csfBOB", "bob", &["2001"])).await,
        Err(StoreError::Conflict(_))
    ));
    s.delete_user("bob").await.unwrap();
    assert!(
        s.device("CSFbob").await.unwrap().is_none(),
        "devices cascade with their owner"
    );
    assert!(matches!(
        s.delete_user("bob").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.delete_device("CSFbob").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_refresh_token_is_taken_exactly_once(s: Arc<dyn Store>) {
    s.create_user(&user("carol")).await.unwrap();
    let t = refresh("abc", "carol", "f1", 100);
    s.insert_refresh_token(&t).await.unwrap();
    assert!(matches!(
        s.insert_refresh_token(&t).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.take_refresh_token("abc", 50).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(s.take_refresh_token("abc", 50).await.unwrap(), None);
    s.insert_refresh_token(&t).await.unwrap();
    assert_eq!(
        s.take_refresh_token("abc", 100).await.unwrap(),
        None,
        "expired tokens are not returned"
    );
}

async fn only_one_signing_key_is_active_and_changes_are_published(s: Arc<dyn Store>) {
    let mut rx = s.subscribe();
    s.insert_signing_key(&key("k1", 1)).await.unwrap();
    s.insert_signing_key(&key("k2", 2)).await.unwrap();
    let mut inactive = key("k0", 0);
    inactive.active = false;
    s.insert_signing_key(&inactive).await.unwrap();
    let keys = s.signing_keys().await.unwrap();
    assert_eq!(
        keys.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
        ["k2", "k1", "k0"],
        "newest first"
    );
    assert_eq!(
        keys.iter()
            .filter(|k| k.active)
            .map(|k| k.kid.as_str())
            .collect::<Vec<_>>(),
        ["k2"]
    );
    assert!(matches!(
        s.insert_signing_key(&key("k1", 3)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        next_change(&mut rx, Duration::from_secs(1)).await,
        Some(Change::SigningKeys)
    );
}

async fn refresh_reuse_is_detected_and_families_are_revoked(s: Arc<dyn Store>) {
    s.create_user(&user("dan")).await.unwrap();
    let tok = |hash: &str, family: &str, client: &str, expires_at| RefreshToken {
        client_id: String::from(client),
        ..refresh(hash, "dan", family, expires_at)
    };
    s.insert_refresh_token(&tok("a", "fam", "softphone", 1000))
        .await
        .unwrap();
    s.insert_refresh_token(&tok("b", "fam", "softphone", 1000))
        .await
        .unwrap();
    s.insert_refresh_token(&tok("d", "fam", "softphone", 5000))
        .await
        .unwrap();
    s.insert_refresh_token(&tok("c", "other", "desk", 5000))
        .await
        .unwrap();
    assert!(matches!(
        s.use_refresh_token("a", 5).await.unwrap(),
        RefreshUse::Fresh(_)
    ));
    assert!(
        matches!(s.use_refresh_token("a", 5).await.unwrap(), RefreshUse::Reused(t) if t.family == "fam")
    );
    assert_eq!(
        s.use_refresh_token("zzz", 5).await.unwrap(),
        RefreshUse::Unknown
    );
    assert_eq!(
        s.use_refresh_token("b", 1000).await.unwrap(),
        RefreshUse::Unknown,
        "expired"
    );
    // a and b were purged as expired; d is left of the family.
    assert_eq!(s.revoke_refresh_family("fam").await.unwrap(), 1);
    assert_eq!(
        s.revoke_user_refresh_tokens("dan", Some("softphone"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(s.revoke_user_refresh_tokens("dan", None).await.unwrap(), 1);
}

async fn concurrent_refresh_use_has_exactly_one_winner(s: Arc<dyn Store>) {
    s.create_user(&user("eve")).await.unwrap();
    for round in 0..5 {
        let hash = format!("x{round}");
        s.insert_refresh_token(&refresh(&hash, "eve", "f", 1000))
            .await
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let s = s.clone();
            let hash = hash.clone();
            set.spawn(async move { s.use_refresh_token(&hash, 5).await.unwrap() });
        }
        let (mut fresh, mut reused) = (0, 0);
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                RefreshUse::Fresh(_) => fresh += 1,
                RefreshUse::Reused(_) => reused += 1,
                RefreshUse::Unknown => {}
            }
        }
        assert_eq!((fresh, reused), (1, 7), "round {round}");
    }
}

async fn revocations_digest_edges_trust_clients_and_bindings_round_trip(s: Arc<dyn Store>) {
    s.create_user(&user("fay")).await.unwrap();
    s.create_device(&device("SEP001122334455", "fay", &["6000"]))
        .await
        .unwrap();
    s.set_tokens_not_before("fay", 50).await.unwrap();
    s.set_tokens_not_before("fay", 40).await.unwrap();
    assert_eq!(
        s.tokens_not_before().await.unwrap(),
        vec![("fay".to_string(), 50)],
        "never moves back"
    );
    assert!(matches!(
        s.set_tokens_not_before("ghost", 1).await,
        Err(StoreError::NotFound(_))
    ));

    let cred = DigestCredential {
        username: "fay-desk".into(),
        realm: "r".into(),
        ha1_md5: "m".into(),
        ha1_sha256: "s".into(),
    };
    s.set_digest_credential("sep001122334455", Some(&cred))
        .await
        .unwrap();
    assert!(matches!(
        s.set_digest_credential("nope", Some(&cred)).await,
        Err(StoreError::NotFound(_))
    ));
    let dir_snap = crate::Directory::load(s.as_ref()).await.unwrap().snapshot();
    let (dev, c) = dir_snap.digest_credential("fay-desk").unwrap();
    assert_eq!((dev.name.as_str(), c), ("SEP001122334455", &cred));
    assert_eq!(dir_snap.tokens_not_before("fay"), 50);
    s.set_digest_credential("SEP001122334455", None)
        .await
        .unwrap();
    assert!(s.digest_credentials().await.unwrap().is_empty());

    s.upsert_edge(&Edge {
        host: "expc.example".into(),
        description: "edge".into(),
        subject_names: vec!["expc.example".into(), "*.edge.example".into()],
        updated_at: 1,
    })
    .await
    .unwrap();
    s.upsert_edge(&Edge {
        host: "EXPC.example".into(),
        description: "edge 2".into(),
        subject_names: vec!["expc.example".into()],
        updated_at: 2,
    })
    .await
    .unwrap();
    let edges = s.edges().await.unwrap();
    assert_eq!(edges.len(), 1, "hosts ignore case");
    assert_eq!(edges[0].description, "edge 2");
    s.delete_edge("EXPC.example").await.unwrap();
    assert!(s.edges().await.unwrap().is_empty());
    assert!(matches!(
        s.delete_edge("expc.example").await,
        Err(StoreError::NotFound(_))
    ));

    let tc = TrustCert {
        fingerprint: "ab".into(),
        pem: "pem".into(),
        subject: "CN=x".into(),
        added_at: 1,
    };
    s.add_trust_cert(&tc).await.unwrap();
    assert!(matches!(
        s.add_trust_cert(&tc).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.trust_certs().await.unwrap(), vec![tc]);
    s.delete_trust_cert("ab").await.unwrap();
    assert!(matches!(
        s.delete_trust_cert("ab").await,
        Err(StoreError::NotFound(_))
    ));

    let cl = OAuthClient {
        id: "jabber".into(),
        name: "Jabber".into(),
        redirect_uris: vec!["http://127.0.0.1/cb".into()],
        scopes: vec!["sip:register".into()],
        created_at: 1,
    };
    s.create_client(&cl).await.unwrap();
    assert!(matches!(
        s.create_client(&cl).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.client("jabber").await.unwrap(), Some(cl.clone()));
    assert_eq!(s.clients().await.unwrap(), vec![cl]);
    s.delete_client("jabber").await.unwrap();
    assert_eq!(s.client("jabber").await.unwrap(), None);

    let b = |key: &str, exp| StoredBinding {
        aor: "6000@x".into(),
        key: key.into(),
        expires_at: exp,
        node: "n1".into(),
        data: "{}".into(),
    };
    s.write_bindings(vec![("6000@x".into(), vec![b("k1", 100), b("k2", 10)])])
        .await
        .unwrap();
    assert_eq!(
        s.load_bindings(50).await.unwrap(),
        vec![b("k1", 100)],
        "expired bindings are purged"
    );
    s.write_bindings(vec![("6000@x".into(), vec![])])
        .await
        .unwrap();
    assert!(s.load_bindings(50).await.unwrap().is_empty());
}

async fn the_active_signing_key_cannot_be_deleted(s: Arc<dyn Store>) {
    s.insert_signing_key(&key("k1", 1)).await.unwrap();
    s.insert_signing_key(&key("k2", 1)).await.unwrap();
    assert!(matches!(
        s.delete_signing_key("k2").await,
        Err(StoreError::Invalid(_))
    ));
    s.activate_signing_key("k1").await.unwrap();
    assert_eq!(
        s.signing_keys()
            .await
            .unwrap()
            .iter()
            .filter(|k| k.active)
            .map(|k| k.kid.as_str())
            .collect::<Vec<_>>(),
        ["k1"]
    );
    s.delete_signing_key("k2").await.unwrap();
    assert_eq!(s.signing_keys().await.unwrap().len(), 1);
    assert!(matches!(
        s.activate_signing_key("nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.delete_signing_key("nope").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn admin_tokens_and_the_audit_log_round_trip(s: Arc<dyn Store>) {
    let t = AdminToken {
        id: "t1".into(),
        name: "ops".into(),
        scope: "read".into(),
        sha256: "ab".into(),
        created_at: 1,
    };
    s.create_admin_token(&t).await.unwrap();
    assert!(matches!(
        s.create_admin_token(&t).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.admin_tokens().await.unwrap(), vec![t]);
    s.delete_admin_token("t1").await.unwrap();
    assert!(matches!(
        s.delete_admin_token("t1").await,
        Err(StoreError::NotFound(_))
    ));
    for i in 0..3 {
        s.append_audit(&AuditEntry {
            id: 0,
            at: i,
            actor: "ops".into(),
            action: format!("POST /x/{i}"),
            before: serde_json::Value::Null,
            after: serde_json::json!({"i": i}),
        })
        .await
        .unwrap();
    }
    let page = s.audit(1, 10).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(page[1].after["i"], 2);
    assert_eq!(page[1].before, serde_json::Value::Null);
    assert_eq!(s.audit(0, 1).await.unwrap().len(), 1, "limit");
}

async fn heartbeats_are_listed_with_their_nodes(s: Arc<dyn Store>) {
    s.upsert_node(&node("n2", 5090)).await.unwrap();
    s.upsert_node(&node("n1", 5090)).await.unwrap();
    s.heartbeat("n1", 100).await.unwrap();
    assert!(matches!(
        s.heartbeat("ghost", 100).await,
        Err(StoreError::NotFound(_))
    ));
    // Changing a node's ports keeps its heartbeat.
    s.upsert_node(&node("n1", 5095)).await.unwrap();
    let st = s.node_statuses().await.unwrap();
    assert_eq!(
        st.iter()
            .map(|n| (
                n.node.name.as_str(),
                n.node.sip_oauth_port,
                n.last_heartbeat
            ))
            .collect::<Vec<_>>(),
        [("n1", 5095, Some(100)), ("n2", 5090, None)]
    );
    assert_eq!(
        s.nodes().await.unwrap(),
        st.into_iter().map(|n| n.node).collect::<Vec<_>>()
    );
    let json = serde_json::to_value(&s.node_statuses().await.unwrap()[0]).unwrap();
    assert_eq!(json["name"], "n1");
    assert_eq!(json["sip_oauth_port"], 5095);
    assert_eq!(json["last_heartbeat"], 100);
}

async fn node_bindings_leave_other_nodes_rows_alone(s: Arc<dyn Store>) {
    let b = |key: &str, node: &str, data: &str| StoredBinding {
        aor: "7000@x".into(),
        key: key.into(),
        expires_at: 500,
        node: node.into(),
        data: data.into(),
    };
    s.write_node_bindings("a", vec![("7000@x".into(), vec![b("k1", "a", "1")])])
        .await
        .unwrap();
    s.write_node_bindings("b", vec![("7000@x".into(), vec![b("k2", "b", "2")])])
        .await
        .unwrap();
    assert_eq!(
        s.load_bindings(1).await.unwrap(),
        vec![b("k1", "a", "1"), b("k2", "b", "2")],
        "each node's rows stay"
    );
    s.write_node_bindings("a", vec![("7000@x".into(), vec![])])
        .await
        .unwrap();
    assert_eq!(s.load_bindings(1).await.unwrap(), vec![b("k2", "b", "2")]);
    // The device behind k2 re-registered on node a: a takes the row over.
    s.write_node_bindings("a", vec![("7000@x".into(), vec![b("k2", "a", "3")])])
        .await
        .unwrap();
    assert_eq!(s.load_bindings(1).await.unwrap(), vec![b("k2", "a", "3")]);
}

async fn a_rewritten_aor_keeps_exactly_its_current_bindings(s: Arc<dyn Store>) {
    let b = |aor: &str, key: &str, node: &str, data: &str| StoredBinding {
        aor: aor.into(),
        key: key.into(),
        expires_at: 500,
        node: node.into(),
        data: data.into(),
    };
    let other = b("8001@x", "k9", "n1", "9");
    s.write_bindings(vec![
        (
            "8000@x".into(),
            vec![b("8000@x", "k1", "n1", "1"), b("8000@x", "k2", "n1", "1")],
        ),
        ("8001@x".into(), vec![other.clone()]),
    ])
    .await
    .unwrap();
    // Of two bindings, one is removed and the other refreshed.
    s.write_bindings(vec![("8000@x".into(), vec![b("8000@x", "k2", "n1", "2")])])
        .await
        .unwrap();
    assert_eq!(
        s.load_bindings(1).await.unwrap(),
        vec![b("8000@x", "k2", "n1", "2"), other.clone()]
    );
    // Of three, one goes, two are updated.
    s.write_bindings(vec![(
        "8000@x".into(),
        vec![
            b("8000@x", "k1", "n1", "3"),
            b("8000@x", "k2", "n1", "3"),
            b("8000@x", "k3", "n1", "3"),
        ],
    )])
    .await
    .unwrap();
    s.write_bindings(vec![(
        "8000@x".into(),
        vec![b("8000@x", "k3", "n1", "4"), b("8000@x", "k1", "n1", "4")],
    )])
    .await
    .unwrap();
    assert_eq!(
        s.load_bindings(1).await.unwrap(),
        vec![
            b("8000@x", "k1", "n1", "4"),
            b("8000@x", "k3", "n1", "4"),
            other.clone()
        ]
    );
    // Per node: node a drops k1 and refreshes k3; node b's row stays.
    s.write_node_bindings(
        "b",
        vec![("8000@x".into(), vec![b("8000@x", "k5", "b", "5")])],
    )
    .await
    .unwrap();
    s.write_node_bindings(
        "n1",
        vec![("8000@x".into(), vec![b("8000@x", "k3", "n1", "6")])],
    )
    .await
    .unwrap();
    assert_eq!(
        s.load_bindings(1).await.unwrap(),
        vec![
            b("8000@x", "k3", "n1", "6"),
            b("8000@x", "k5", "b", "5"),
            other
        ]
    );
}

async fn every_write_publishes_its_change(s: Arc<dyn Store>) {
    let mut rx = s.subscribe();
    s.set_oauth_mode(true).await.unwrap();
    s.create_user(&user("gus")).await.unwrap();
    s.create_device(&device("CSFgus", "gus", &["1"]))
        .await
        .unwrap();
    s.upsert_node(&node("n1", 5090)).await.unwrap();
    s.set_tokens_not_before("gus", 5).await.unwrap();
    s.upsert_edge(&Edge {
        host: "e".into(),
        description: String::new(),
        subject_names: vec![],
        updated_at: 1,
    })
    .await
    .unwrap();
    s.add_trust_cert(&TrustCert {
        fingerprint: "f".into(),
        pem: "p".into(),
        subject: "s".into(),
        added_at: 1,
    })
    .await
    .unwrap();
    s.set_digest_credential(
        "CSFgus",
        Some(&DigestCredential {
            username: "gus".into(),
            realm: "r".into(),
            ha1_md5: "m".into(),
            ha1_sha256: "s".into(),
        }),
    )
    .await
    .unwrap();
    s.delete_device("CSFgus").await.unwrap();
    let want = [
        Change::Cluster,
        Change::User("gus".into()),
        Change::Device("CSFgus".into()),
        Change::Node("n1".into()),
        Change::Revocation("gus".into()),
        Change::Edge("e".into()),
        Change::Trust,
        Change::Digest("CSFgus".into()),
        Change::Device("CSFgus".into()),
    ];
    for w in want {
        assert_eq!(next_change(&mut rx, Duration::from_secs(1)).await, Some(w));
    }
    assert_eq!(
        next_change(&mut rx, Duration::from_millis(300)).await,
        None,
        "each change once (a node skips its own notifications)"
    );
}

async fn a_revoked_family_stays_revoked_for_racing_rotations(s: Arc<dyn Store>) {
    s.create_user(&user("ann")).await.unwrap();
    s.insert_refresh_token(&refresh("old", "ann", "fam", 1000))
        .await
        .unwrap();
    s.insert_refresh_token(&refresh("other", "ann", "fam2", 1000))
        .await
        .unwrap();
    assert!(matches!(
        s.use_refresh_token("old", 5).await.unwrap(),
        RefreshUse::Fresh(_)
    ));
    // A second node sees the reuse and revokes the family before the winner stored its new token.
    assert!(matches!(
        s.use_refresh_token("old", 5).await.unwrap(),
        RefreshUse::Reused(_)
    ));
    assert_eq!(s.revoke_refresh_family("fam").await.unwrap(), 1);
    s.insert_refresh_token(&refresh("new", "ann", "fam", 1000))
        .await
        .unwrap();
    assert_eq!(
        s.use_refresh_token("new", 6).await.unwrap(),
        RefreshUse::Unknown,
        "the rotated token of a revoked family is dead"
    );
    s.insert_refresh_token(&refresh("new2", "ann", "fam", 1000))
        .await
        .unwrap();
    assert_eq!(s.take_refresh_token("new2", 6).await.unwrap(), None);
    assert!(
        matches!(
            s.use_refresh_token("other", 6).await.unwrap(),
            RefreshUse::Fresh(_)
        ),
        "other families are untouched"
    );
}

async fn a_device_update_replaces_owner_lines_and_profile(s: Arc<dyn Store>) {
    s.create_user(&user("ann")).await.unwrap();
    s.create_user(&user("bo")).await.unwrap();
    s.create_device(&device("CSFann", "ann", &["1", "2"]))
        .await
        .unwrap();
    let mut d = device("csfANN", "bo", &["3"]);
    // No profile named: the OAuth flag picks the default profile (API compatibility).
    d.oauth = false;
    d.profile = String::new();
    s.update_device(&d).await.unwrap();
    let got = s.device("CSFann").await.unwrap().unwrap();
    assert_eq!(got.name, "CSFann", "the stored name keeps its case");
    assert_eq!(got.owner, "bo");
    assert!(!got.oauth);
    assert_eq!(got.profile, crate::DEFAULT_PROFILE);
    assert_eq!(
        got.lines.iter().map(|l| l.dn.as_str()).collect::<Vec<_>>(),
        ["3"]
    );
    let mut ghost_owner = device("CSFann", "nobody", &["3"]);
    ghost_owner.oauth = true;
    assert!(matches!(
        s.update_device(&ghost_owner).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        s.device("CSFann").await.unwrap().unwrap().owner,
        "bo",
        "a refused update changes nothing"
    );
    assert!(matches!(
        s.update_device(&device("CSFnone", "bo", &["9"])).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_password_change_replaces_the_hash(s: Arc<dyn Store>) {
    s.create_user(&user("pia")).await.unwrap();
    s.set_password_hash("pia", "new-hash").await.unwrap();
    assert_eq!(
        s.user("pia").await.unwrap().unwrap().password_hash,
        "new-hash"
    );
    assert!(matches!(
        s.set_password_hash("ghost", "x").await,
        Err(StoreError::NotFound(_))
    ));
}
