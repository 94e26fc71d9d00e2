//! Cluster settings on every backend: defaults, a full replace, seeding once, range checks.

use std::sync::Arc;
use std::time::Duration;

use super::next_change;
use crate::{ChallengeDialect, Change, ClusterSettings, Store, StoreError};

pub(crate) async fn cluster_settings_are_replaced_seeded_once_and_validated(s: Arc<dyn Store>) {
    assert_eq!(
        s.cluster_settings().await.unwrap(),
        ClusterSettings::default()
    );
    let mut rx = s.subscribe();
    // A node's config file seeds the settings once; OAuth mode is not the file's to set.
    let from_file = ClusterSettings {
        oauth_mode: true,
        access_token_lifetime_minutes: 30,
        max_expires: 3600,
        ..ClusterSettings::default()
    };
    assert!(s.seed_cluster_settings(&from_file).await.unwrap());
    assert_eq!(
        next_change(&mut rx, Duration::from_secs(5)).await,
        Some(Change::Cluster)
    );
    let got = s.cluster_settings().await.unwrap();
    assert_eq!(
        got,
        ClusterSettings {
            oauth_mode: false,
            ..from_file
        }
    );
    let other_node = ClusterSettings {
        access_token_lifetime_minutes: 90,
        ..ClusterSettings::default()
    };
    assert!(!s.seed_cluster_settings(&other_node).await.unwrap());
    assert_eq!(s.cluster_settings().await.unwrap(), got);

    let all = ClusterSettings {
        oauth_mode: true,
        access_token_lifetime_minutes: 1440,
        refresh_token_lifetime_days: 1,
        refresh_login: false,
        password_grant: false,
        challenge_dialect: ChallengeDialect::Cucm,
        default_expires: 120,
        min_expires: 120,
        max_expires: 86400,
    };
    s.set_cluster_settings(&all).await.unwrap();
    assert_eq!(
        next_change(&mut rx, Duration::from_secs(5)).await,
        Some(Change::Cluster)
    );
    assert_eq!(s.cluster_settings().await.unwrap(), all);
    // OAuth mode alone still works and leaves the rest.
    s.set_oauth_mode(false).await.unwrap();
    assert_eq!(
        s.cluster_settings().await.unwrap(),
        ClusterSettings {
            oauth_mode: false,
            ..all
        }
    );
    // Set by an admin: a later start's config file does not win.
    s.set_cluster_settings(&ClusterSettings::default())
        .await
        .unwrap();
    assert!(!s.seed_cluster_settings(&from_file).await.unwrap());

    for bad in [
        ClusterSettings {
            access_token_lifetime_minutes: 0,
            ..all
        },
        ClusterSettings {
            refresh_token_lifetime_days: 366,
            ..all
        },
        ClusterSettings {
            max_expires: 86401,
            ..all
        },
        ClusterSettings {
            min_expires: 90,
            default_expires: 60,
            ..all
        },
    ] {
        assert!(
            matches!(
                s.set_cluster_settings(&bad).await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(
        s.cluster_settings().await.unwrap(),
        ClusterSettings::default()
    );
}
