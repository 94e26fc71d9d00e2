//! Security profiles, device model/profile and shared line display names on every backend.

use std::sync::Arc;
use std::time::Duration;

use super::{device, next_change, user};
use crate::{
    Change, Directory, ProfileTransport, SecurityProfile, Store, StoreError, DEFAULT_MODEL,
    DEFAULT_OAUTH_PROFILE, DEFAULT_PROFILE, SECURE_OAUTH_PROFILE,
};

fn profile(name: &str, oauth: bool) -> SecurityProfile {
    SecurityProfile {
        name: name.into(),
        description: "test".into(),
        oauth,
        digest: true,
        transport: ProfileTransport::TcpTls,
    }
}

pub(crate) async fn profiles_drive_their_devices_oauth_and_cannot_be_deleted_in_use(
    s: Arc<dyn Store>,
) {
    let seeded: Vec<String> = s
        .profiles()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    for name in [DEFAULT_PROFILE, DEFAULT_OAUTH_PROFILE, SECURE_OAUTH_PROFILE] {
        assert!(seeded.iter().any(|n| n == name), "{name} is seeded");
    }
    let secure = s.profile(SECURE_OAUTH_PROFILE).await.unwrap().unwrap();
    assert!(secure.oauth && !secure.digest);
    assert_eq!(secure.transport, ProfileTransport::Tls);

    let mut rx = s.subscribe();
    let p = profile("Lab", false);
    s.create_profile(&p).await.unwrap();
    assert_eq!(
        next_change(&mut rx, Duration::from_secs(5)).await,
        Some(Change::Profile("Lab".into()))
    );
    assert_eq!(s.profile("Lab").await.unwrap(), Some(p.clone()));
    assert!(matches!(
        s.create_profile(&p).await,
        Err(StoreError::Conflict(_))
    ));

    s.create_user(&user("lee")).await.unwrap();
    let mut d = device("CSFlee", "lee", &["4000"]);
    d.profile = "Lab".into();
    d.model = "Cisco 8865".into();
    // The stored flag is the profile's, whatever the caller said.
    d.oauth = true;
    s.create_device(&d).await.unwrap();
    let got = s.device("CSFlee").await.unwrap().unwrap();
    assert!(!got.oauth);
    assert_eq!(
        (got.model.as_str(), got.profile.as_str()),
        ("Cisco 8865", "Lab")
    );
    let mut dflt = device("CSFdef", "lee", &["4001"]);
    dflt.model = String::new();
    dflt.profile = String::new();
    s.create_device(&dflt).await.unwrap();
    let got = s.device("CSFdef").await.unwrap().unwrap();
    assert_eq!(got.model, DEFAULT_MODEL);
    assert_eq!(got.profile, DEFAULT_OAUTH_PROFILE);

    let mut ghost = device("CSFghost", "lee", &["4002"]);
    ghost.profile = "No Such Profile".into();
    assert!(matches!(
        s.create_device(&ghost).await,
        Err(StoreError::Invalid(_))
    ));

    // Turning OAuth on in the profile turns it on for its devices, in the directory too.
    s.update_profile(&profile("Lab", true)).await.unwrap();
    assert!(s.device("CSFlee").await.unwrap().unwrap().oauth);
    let dir = Directory::load(&*s).await.unwrap();
    let snap = dir.snapshot();
    assert!(snap.device("csflee").unwrap().oauth);
    assert!(snap.profile("Lab").unwrap().oauth);
    assert!(matches!(
        s.update_profile(&profile("Nope", true)).await,
        Err(StoreError::NotFound(_))
    ));

    assert!(matches!(
        s.delete_profile("Lab").await,
        Err(StoreError::Invalid(_))
    ));
    s.delete_device("CSFlee").await.unwrap();
    s.delete_profile("Lab").await.unwrap();
    assert!(s.profile("Lab").await.unwrap().is_none());
    assert!(matches!(
        s.delete_profile("Lab").await,
        Err(StoreError::NotFound(_))
    ));
}

pub(crate) async fn line_display_names_change_on_every_device_carrying_the_line(s: Arc<dyn Store>) {
    s.create_user(&user("kim")).await.unwrap();
    s.create_device(&device("CSFkim", "kim", &["5000", "5001"]))
        .await
        .unwrap();
    s.create_device(&device("SEPkim", "kim", &["5000"]))
        .await
        .unwrap();
    let mut changed = s
        .set_line_display_name("5000", Some("Kim Desk"), 99)
        .await
        .unwrap();
    changed.sort();
    assert_eq!(changed, ["CSFkim", "SEPkim"]);
    for name in ["CSFkim", "SEPkim"] {
        let d = s.device(name).await.unwrap().unwrap();
        assert_eq!(d.lines[0].display_name.as_deref(), Some("Kim Desk"));
        assert_eq!(d.updated_at, 99, "config versions follow");
    }
    let other = s.device("CSFkim").await.unwrap().unwrap();
    assert_eq!(other.lines[1].display_name, None, "other lines keep theirs");
    assert!(s
        .set_line_display_name("7777", None, 100)
        .await
        .unwrap()
        .is_empty());
}
