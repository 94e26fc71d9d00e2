//! `rotate_refresh_token`: use + insert of the successor in one transaction, on both backends.

use std::sync::Arc;

use super::{refresh, user};
use crate::{RefreshSuccessor, RefreshToken, RefreshUse, Store, StoreError};

/// A successor named `hash` that inherits everything but its hash and issue time.
fn next(hash: &'static str) -> RefreshSuccessor {
    Box::new(move |old: &RefreshToken| {
        Some(RefreshToken {
            hash: hash.into(),
            issued_at: 5,
            ..old.clone()
        })
    })
}

async fn fresh(s: &dyn Store, hash: &str) -> bool {
    matches!(
        s.use_refresh_token(hash, 6).await.unwrap(),
        RefreshUse::Fresh(_)
    )
}

pub(super) async fn a_rotation_uses_and_inserts_in_one_transaction(s: Arc<dyn Store>) {
    s.create_user(&user("rob")).await.unwrap();
    s.insert_refresh_token(&refresh("r1", "rob", "fam", 1000))
        .await
        .unwrap();
    s.insert_refresh_token(&refresh("taken", "rob", "other", 1000))
        .await
        .unwrap();

    // Fresh: the successor is built from the used token and stored.
    let out = s.rotate_refresh_token("r1", 5, next("r2")).await.unwrap();
    assert!(matches!(&out, RefreshUse::Fresh(t) if t.hash == "r1" && t.family == "fam"));
    let out = s.rotate_refresh_token("r2", 5, next("r3")).await.unwrap();
    assert!(
        matches!(&out, RefreshUse::Fresh(t) if t.user_id == "rob" && t.issued_at == 5 && t.expires_at == 1000),
        "{out:?}"
    );

    // Reused: reported as before, and no successor is stored.
    assert!(matches!(
        s.rotate_refresh_token("r1", 5, next("r1b")).await.unwrap(),
        RefreshUse::Reused(t) if t.family == "fam"
    ));
    assert!(!fresh(s.as_ref(), "r1b").await);
    // Unknown and expired tokens store nothing either.
    assert_eq!(
        s.rotate_refresh_token("nope", 5, next("n2")).await.unwrap(),
        RefreshUse::Unknown
    );
    s.insert_refresh_token(&refresh("short", "rob", "fam2", 10))
        .await
        .unwrap();
    assert_eq!(
        s.rotate_refresh_token("short", 10, next("late"))
            .await
            .unwrap(),
        RefreshUse::Unknown
    );
    assert!(!fresh(s.as_ref(), "n2").await);
    assert!(!fresh(s.as_ref(), "late").await);

    // A failed insert rolls the use back: the old token is still fresh afterwards.
    s.insert_refresh_token(&refresh("r4", "rob", "fam", 1000))
        .await
        .unwrap();
    assert!(matches!(
        s.rotate_refresh_token("r4", 5, next("taken")).await,
        Err(StoreError::Conflict(_))
    ));
    // `None`: the token is used, nothing stored.
    let out = s
        .rotate_refresh_token("r4", 5, Box::new(|_| None))
        .await
        .unwrap();
    assert!(matches!(out, RefreshUse::Fresh(_)));
    assert!(matches!(
        s.use_refresh_token("r4", 6).await.unwrap(),
        RefreshUse::Reused(_)
    ));

    // The reuse revokes the family, successors included.
    assert_eq!(s.revoke_refresh_family("fam").await.unwrap(), 4);
    assert!(!fresh(s.as_ref(), "r3").await);
}

pub(super) async fn concurrent_rotations_have_exactly_one_winner_and_one_successor(
    s: Arc<dyn Store>,
) {
    s.create_user(&user("ros")).await.unwrap();
    for round in 0..5 {
        let hash = format!("c{round}");
        s.insert_refresh_token(&refresh(&hash, "ros", "f", 1000))
            .await
            .unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..8 {
            let s = s.clone();
            let hash = hash.clone();
            let succ = format!("{hash}-{i}");
            set.spawn(async move {
                let name = succ.clone();
                let out = s
                    .rotate_refresh_token(
                        &hash,
                        5,
                        Box::new(move |old| {
                            Some(RefreshToken {
                                hash: succ,
                                ..old.clone()
                            })
                        }),
                    )
                    .await
                    .unwrap();
                (out, name)
            });
        }
        let (mut fresh_n, mut reused) = (0, 0);
        let mut names = Vec::new();
        while let Some(r) = set.join_next().await {
            let (out, name) = r.unwrap();
            match out {
                RefreshUse::Fresh(_) => fresh_n += 1,
                RefreshUse::Reused(_) => reused += 1,
                RefreshUse::Unknown => {}
            }
            names.push(name);
        }
        assert_eq!((fresh_n, reused), (1, 7), "round {round}");
        let mut stored = 0;
        for name in &names {
            if fresh(s.as_ref(), name).await {
                stored += 1;
            }
        }
        assert_eq!(
            stored, 1,
            "round {round}: exactly the winner's successor is stored"
        );
    }
}

/// Many rotations at once (on SQLite they share commits): one whose successor cannot be stored
/// fails alone, leaving its token fresh; the others are all stored.
pub(super) async fn a_failed_rotation_among_concurrent_ones_fails_alone(s: Arc<dyn Store>) {
    s.create_user(&user("rox")).await.unwrap();
    s.insert_refresh_token(&refresh("occupied", "rox", "x", 1000))
        .await
        .unwrap();
    for i in 0..32 {
        s.insert_refresh_token(&refresh(&format!("g{i}"), "rox", "g", 1000))
            .await
            .unwrap();
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..32 {
        let s = s.clone();
        set.spawn(async move {
            // Every 4th successor collides with an existing token.
            let succ = if i % 4 == 0 {
                "occupied".to_owned()
            } else {
                format!("g{i}-next")
            };
            let out = s
                .rotate_refresh_token(
                    &format!("g{i}"),
                    5,
                    Box::new(move |old| {
                        Some(RefreshToken {
                            hash: succ,
                            ..old.clone()
                        })
                    }),
                )
                .await;
            (i, out)
        });
    }
    while let Some(r) = set.join_next().await {
        let (i, out) = r.unwrap();
        if i % 4 == 0 {
            assert!(matches!(out, Err(StoreError::Conflict(_))), "{i}: {out:?}");
            assert!(fresh(s.as_ref(), &format!("g{i}")).await, "{i} rolled back");
        } else {
            assert!(matches!(out, Ok(RefreshUse::Fresh(_))), "{i}: {out:?}");
            assert!(fresh(s.as_ref(), &format!("g{i}-next")).await, "{i} stored");
        }
    }
}
