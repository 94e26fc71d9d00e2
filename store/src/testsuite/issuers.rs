//! Trusted issuers and per-client revocation, on every backend.

use std::sync::Arc;
use std::time::Duration;

use super::{next_change, user};
use crate::{Change, Directory, Store, StoreError, TrustedIssuer};

fn issuer(url: &str) -> TrustedIssuer {
    TrustedIssuer {
        issuer: url.into(),
        jwks_url: Some(format!("{url}/jwks")),
        jwks_file: None,
        audience: "sipreg".into(),
        user_claim: "sub".into(),
        algorithms: vec!["RS256".into(), "ES256".into()],
        description: "idp".into(),
        updated_at: 1,
    }
}

pub(crate) async fn trusted_issuers_round_trip_and_reach_the_directory(s: Arc<dyn Store>) {
    let mut rx = s.subscribe();
    let a = issuer("https://idp.example/b");
    let mut b = issuer("https://idp.example/a");
    s.create_issuer(&a).await.unwrap();
    assert_eq!(
        next_change(&mut rx, Duration::from_secs(1)).await,
        Some(Change::Issuer(a.issuer.clone()))
    );
    s.create_issuer(&b).await.unwrap();
    assert!(matches!(
        s.create_issuer(&a).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.issuers().await.unwrap(), vec![b.clone(), a.clone()]);

    b.jwks_url = None;
    b.jwks_file = Some("/etc/idp.json".into());
    b.user_claim = "upn".into();
    b.algorithms = vec!["ES256".into()];
    b.updated_at = 2;
    s.update_issuer(&b).await.unwrap();
    assert_eq!(s.issuers().await.unwrap()[0], b);
    assert!(matches!(
        s.update_issuer(&issuer("https://nope")).await,
        Err(StoreError::NotFound(_))
    ));

    let dir = Directory::load(s.as_ref()).await.unwrap();
    let snap = dir.snapshot();
    assert!(snap.has_trusted_issuers());
    assert_eq!(snap.trusted_issuer(&b.issuer).map(|i| i.as_ref()), Some(&b));
    assert!(snap.trusted_issuer("https://idp.example").is_none());

    s.delete_issuer(&a.issuer).await.unwrap();
    assert!(matches!(
        s.delete_issuer(&a.issuer).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.issuers().await.unwrap(), vec![b]);
}

pub(crate) async fn per_client_not_before_is_kept_per_user_and_client(s: Arc<dyn Store>) {
    s.create_user(&user("ann")).await.unwrap();
    let mut rx = s.subscribe();
    s.set_client_tokens_not_before("ann", "softphone", 10)
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut rx, Duration::from_secs(1)).await,
        Some(Change::Revocation("ann".into()))
    );
    // Never moves backwards.
    s.set_client_tokens_not_before("ann", "softphone", 5)
        .await
        .unwrap();
    s.set_client_tokens_not_before("ann", "web", 7)
        .await
        .unwrap();
    assert!(matches!(
        s.set_client_tokens_not_before("ghost", "web", 7).await,
        Err(StoreError::NotFound(_))
    ));
    let mut all = s.client_tokens_not_before().await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("ann".into(), "softphone".into(), 10),
            ("ann".into(), "web".into(), 7)
        ]
    );
    let snap = Directory::load(s.as_ref()).await.unwrap().snapshot();
    assert_eq!(snap.client_tokens_not_before("ann", "softphone"), 10);
    assert_eq!(snap.client_tokens_not_before("ann", "other"), 0);
    assert_eq!(
        snap.tokens_not_before("ann"),
        0,
        "the user-wide time is apart"
    );
    s.delete_user("ann").await.unwrap();
    assert!(s.client_tokens_not_before().await.unwrap().is_empty());
}
