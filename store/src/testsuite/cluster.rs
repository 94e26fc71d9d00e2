//! PostgreSQL-only behaviour: several nodes (stores) on one database, migrations across
//! releases, lost connections and a database that goes away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pg::{self, PgServer};
use super::{next_change, node, refresh, user};
use crate::postgres::schema::MIGRATIONS;
use crate::{Change, PostgresStore, RefreshUse, Store, StoreError};

async fn two_nodes() -> Option<(PostgresStore, PostgresStore, String)> {
    let server = pg::shared()?;
    let url = server.fresh_db().await;
    let a = PostgresStore::connect(&url).await.unwrap();
    let b = PostgresStore::connect(&url).await.unwrap();
    Some((a, b, url))
}

/// Waits until the listener of `rx`'s store is connected: a change made elsewhere arrives.
async fn wait_listening(writer: &PostgresStore, rx: &mut tokio::sync::broadcast::Receiver<Change>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        writer.set_oauth_mode(false).await.unwrap();
        if next_change(rx, Duration::from_millis(300)).await == Some(Change::Cluster) {
            return;
        }
        assert!(Instant::now() < deadline, "listener never connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_reaches_the_other_within_a_second() {
    let Some((a, b, _)) = two_nodes().await else {
        return;
    };
    let mut rx_b = b.subscribe();
    wait_listening(&a, &mut rx_b).await;
    let started = Instant::now();
    a.set_oauth_mode(true).await.unwrap();
    assert_eq!(
        next_change(&mut rx_b, Duration::from_secs(1)).await,
        Some(Change::Cluster)
    );
    assert!(b.cluster_settings().await.unwrap().oauth_mode);
    a.create_user(&user("hal")).await.unwrap();
    a.upsert_node(&node("node-a", 5095)).await.unwrap();
    assert_eq!(
        next_change(&mut rx_b, Duration::from_secs(1)).await,
        Some(Change::User("hal".into()))
    );
    assert_eq!(
        next_change(&mut rx_b, Duration::from_secs(1)).await,
        Some(Change::Node("node-a".into()))
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // A failed write publishes nothing anywhere.
    assert!(a.create_user(&user("hal")).await.is_err());
    assert_eq!(
        next_change(&mut rx_b, Duration::from_millis(300)).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_race_between_two_nodes_has_exactly_one_winner() {
    let Some((a, b, _)) = two_nodes().await else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    a.create_user(&user("ivy")).await.unwrap();
    for round in 0..10 {
        let hash = format!("r{round}");
        a.insert_refresh_token(&refresh(&hash, "ivy", "fam", 1000))
            .await
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..6 {
            let s: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
            let hash = hash.clone();
            set.spawn(async move { s.use_refresh_token(&hash, 5).await.unwrap() });
        }
        let mut fresh = 0;
        let mut reused = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                RefreshUse::Fresh(_) => fresh += 1,
                RefreshUse::Reused(_) => reused += 1,
                RefreshUse::Unknown => {}
            }
        }
        assert_eq!((fresh, reused), (1, 5), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_stay_single_active_under_concurrent_inserts() {
    let Some((a, b, _)) = two_nodes().await else {
        return;
    };
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..10 {
        let s: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        set.spawn(async move {
            s.insert_signing_key(&crate::SigningKey {
                kid: format!("k{i}"),
                alg: "ES256".into(),
                private_pem: "p".into(),
                public_x: "x".into(),
                public_y: "y".into(),
                created_at: i,
                active: true,
            })
            .await
            .unwrap()
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let keys = a.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 10);
    assert_eq!(keys.iter().filter(|k| k.active).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_upgrade_the_previous_schema_and_refuse_a_newer_one() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let previous = &MIGRATIONS[..MIGRATIONS.len() - 1];
    {
        let old = PostgresStore::connect_migrating(&url, Duration::from_secs(30), previous)
            .await
            .unwrap();
        old.create_user(&user("jo")).await.unwrap();
        old.upsert_node(&node("n1", 5090)).await.unwrap();
    }
    let new = PostgresStore::connect(&url).await.unwrap();
    assert_eq!(new.user("jo").await.unwrap(), Some(user("jo")), "data kept");
    new.heartbeat("n1", 42).await.unwrap();
    assert_eq!(
        new.node_statuses().await.unwrap()[0].last_heartbeat,
        Some(42)
    );
    // Opening again applies nothing twice.
    drop(PostgresStore::connect(&url).await.unwrap());
    let err = PostgresStore::connect_migrating(&url, Duration::from_secs(30), previous)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("newer")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_an_empty_database_migrate_once() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = url.clone();
        set.spawn(async move { PostgresStore::connect(&url).await.map(|_| ()) });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    let s = PostgresStore::connect(&url).await.unwrap();
    assert!(!s.cluster_settings().await.unwrap().oauth_mode);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safety_net_reloads_without_any_notification() {
    let Some(server) = pg::shared() else { return };
    let url = server.fresh_db().await;
    let s = PostgresStore::connect_with(&url, Duration::from_millis(200))
        .await
        .unwrap();
    let mut rx = s.subscribe();
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(matches!(got, Ok(Ok(Change::Reload))), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_reconnects_and_asks_for_a_reload() {
    let Some((a, b, url)) = two_nodes().await else {
        return;
    };
    let mut rx_b = b.subscribe();
    wait_listening(&a, &mut rx_b).await;
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = 'sipreg-listen' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed, 2, "one listener per store");
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Change::Reload) = rx_b.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no reload after the reconnect");
    a.create_user(&user("kim")).await.unwrap();
    assert_eq!(
        next_change(&mut rx_b, Duration::from_secs(1)).await,
        Some(Change::User("kim".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_away_calls_fail_fast_and_recover_after() {
    // Its own server: this test stops it.
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.fresh_db().await;
    let s = PostgresStore::connect(&url).await.unwrap();
    let mut rx = s.subscribe();
    s.create_user(&user("lee")).await.unwrap();
    let _ = next_change(&mut rx, Duration::from_secs(1)).await;
    server.pg_stop();

    let started = Instant::now();
    let err = s.create_user(&user("max")).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    assert!(matches!(s.users().await, Err(StoreError::Backend(_))));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failing took {:?}",
        started.elapsed()
    );

    server.pg_start();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match s.create_user(&user("max")).await {
            Ok(()) => break,
            Err(StoreError::Backend(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
    assert_eq!(
        s.users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.id)
            .collect::<Vec<_>>(),
        ["lee", "max"],
        "nothing acknowledged was lost"
    );
    let reload = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Change::Reload) = rx.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(
        reload.is_ok(),
        "the listener came back and asked for a reload"
    );
}
