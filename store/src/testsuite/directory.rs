//! The directory's incremental updates: after any sequence of writes, the snapshot maintained by
//! applying the published changes equals one loaded from scratch; and the narrow reads they use.

use std::sync::Arc;

use super::{device, user};
use crate::{
    Change, DigestCredential, Directory, SecurityProfile, Store, DEFAULT_OAUTH_PROFILE,
    DEFAULT_PROFILE,
};

/// A small deterministic generator (xorshift64*): the sequence is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len() as u64) as usize]
    }
}

const USERS: &[&str] = &["alice", "bob", "carol", "dave"];
const PROFILES: &[&str] = &["p0", "p1", DEFAULT_PROFILE, DEFAULT_OAUTH_PROFILE, ""];

fn device_name(rng: &mut Rng) -> String {
    let n = rng.below(10);
    // Writes name a device in any case; the directory keys it case-insensitively.
    match rng.below(3) {
        0 => format!("CSFdev{n}"),
        1 => format!("csfdev{n}"),
        _ => format!("CSFDEV{n}"),
    }
}

fn profile(name: &str, oauth: bool) -> SecurityProfile {
    SecurityProfile {
        name: name.into(),
        description: String::new(),
        oauth,
        digest: true,
        transport: crate::ProfileTransport::Any,
    }
}

/// One random write; failures (conflicts, missing owners, profiles in use) are part of the game.
async fn random_write(s: &dyn Store, rng: &mut Rng, now: i64) {
    let who = rng.pick(USERS);
    let _ = match rng.below(100) {
        0..8 => s.create_user(&user(who)).await,
        8..10 => s.delete_user(who).await,
        10..40 => {
            let mut d = device(&device_name(rng), who, &[]);
            let lines = rng.below(4);
            let dns: Vec<String> = (0..lines)
                .map(|_| format!("{}", 1000 + rng.below(40)))
                .collect();
            d.lines = device(
                &d.name,
                who,
                &dns.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .lines;
            d.profile = rng.pick(PROFILES).into();
            d.oauth = rng.below(2) == 0;
            if rng.below(2) == 0 {
                s.create_device(&d).await
            } else {
                s.update_device(&d).await
            }
        }
        40..45 => s.delete_device(&device_name(rng)).await,
        45..58 => {
            let n = rng.below(6);
            let cred = DigestCredential {
                username: format!("dig{n}"),
                realm: "sipreg".into(),
                ha1_md5: format!("md5-{now}"),
                ha1_sha256: format!("sha-{now}"),
            };
            s.set_digest_credential(&device_name(rng), Some(&cred))
                .await
        }
        58..61 => s.set_digest_credential(&device_name(rng), None).await,
        61..68 => {
            let p = profile(rng.pick(&["p0", "p1"]), rng.below(2) == 0);
            if rng.below(2) == 0 {
                s.create_profile(&p).await
            } else {
                s.update_profile(&p).await
            }
        }
        68..70 => s.delete_profile(rng.pick(&["p0", "p1"])).await,
        70..78 => s.set_tokens_not_before(who, now).await,
        78..86 => {
            let client = rng.pick(&["jabber", "webex"]);
            s.set_client_tokens_not_before(who, client, now).await
        }
        86..94 => {
            let dn = format!("{}", 1000 + rng.below(40));
            let name = (rng.below(2) == 0).then(|| format!("Line {now}"));
            s.set_line_display_name(&dn, name.as_deref(), now)
                .await
                .map(|_| ())
        }
        _ => s.set_password_hash(who, &format!("h{now}")).await,
    };
}

pub(super) async fn incremental_updates_equal_a_full_reload(s: Arc<dyn Store>) {
    let mut rng = Rng(0x5eed_d1ec_7042_0001);
    let dir = Directory::load(s.as_ref()).await.unwrap();
    let mut rx = s.subscribe();
    let mut queued: Vec<Change> = Vec::new();
    let mut most_digests = 0;
    for step in 1..=600i64 {
        random_write(s.as_ref(), &mut rng, 1_000 + step).await;
        // The periodic safety-net reload (PostgreSQL) is not what this test is about.
        while let Ok(c) = rx.try_recv() {
            if c != Change::Reload {
                queued.push(c);
            }
        }
        // Changes are applied in batches of one to a few, as `Live::follow` finds them queued.
        if rng.below(3) == 0 || step % 50 == 0 {
            dir.apply(s.as_ref(), &queued).await.unwrap();
            queued.clear();
        }
        if step % 50 == 0 {
            let fresh = Directory::load(s.as_ref()).await.unwrap();
            dir.snapshot().assert_same(&fresh.snapshot());
            most_digests = most_digests.max(s.digest_credentials().await.unwrap().len());
        }
    }
    let snap = dir.snapshot();
    assert!(
        snap.device_count() > 0,
        "the sequence left devices to compare"
    );
    assert!(most_digests > 1, "the sequence set Digest credentials");
    let stats = dir.stats();
    assert_eq!(stats.reloads, 1, "only the first load read everything");
    assert!(stats.applies > 50 && stats.changes > 100, "{stats:?}");
}

pub(super) async fn the_directory_reads_one_user_device_or_profile(s: Arc<dyn Store>) {
    s.create_user(&user("alice")).await.unwrap();
    s.create_user(&user("bob")).await.unwrap();
    s.create_device(&device("CSFalice", "alice", &["2001"]))
        .await
        .unwrap();
    s.create_device(&device("BOTalice", "alice", &["2002"]))
        .await
        .unwrap();
    let mut other = device("CSFbob", "bob", &["2003"]);
    other.profile = DEFAULT_PROFILE.into();
    s.create_device(&other).await.unwrap();

    let names = |v: Vec<crate::Device>| v.into_iter().map(|d| d.name).collect::<Vec<_>>();
    assert_eq!(
        names(s.devices_of_owner("alice").await.unwrap()),
        ["BOTalice", "CSFalice"]
    );
    assert_eq!(
        s.devices_of_owner("alice").await.unwrap()[1].lines[0].dn,
        "2001"
    );
    assert!(s.devices_of_owner("nobody").await.unwrap().is_empty());
    assert_eq!(
        names(s.devices_with_profile(DEFAULT_PROFILE).await.unwrap()),
        ["CSFbob"]
    );
    assert_eq!(
        names(s.devices_with_profile(DEFAULT_OAUTH_PROFILE).await.unwrap()),
        ["BOTalice", "CSFalice"]
    );

    let cred = DigestCredential {
        username: "alice-desk".into(),
        realm: "sipreg".into(),
        ha1_md5: "m".into(),
        ha1_sha256: "s".into(),
    };
    s.set_digest_credential("csfalice", Some(&cred))
        .await
        .unwrap();
    // Named in any case, answered with the stored name.
    assert_eq!(
        s.device_digest_credential("CSFALICE").await.unwrap(),
        Some(("CSFalice".into(), cred.clone()))
    );
    assert_eq!(s.device_digest_credential("CSFbob").await.unwrap(), None);
    assert_eq!(
        s.owner_digest_credentials("alice").await.unwrap(),
        vec![("CSFalice".into(), cred)]
    );
    assert!(s.owner_digest_credentials("bob").await.unwrap().is_empty());

    assert_eq!(s.user_tokens_not_before("alice").await.unwrap(), None);
    s.set_tokens_not_before("alice", 50).await.unwrap();
    assert_eq!(s.user_tokens_not_before("alice").await.unwrap(), Some(50));
    s.set_client_tokens_not_before("alice", "webex", 70)
        .await
        .unwrap();
    s.set_client_tokens_not_before("alice", "jabber", 60)
        .await
        .unwrap();
    s.set_client_tokens_not_before("bob", "jabber", 80)
        .await
        .unwrap();
    assert_eq!(
        s.user_client_tokens_not_before("alice").await.unwrap(),
        vec![("jabber".into(), 60), ("webex".into(), 70)]
    );

    // Deleting the user takes its devices, credentials and revocations along.
    s.delete_user("alice").await.unwrap();
    assert!(s.devices_of_owner("alice").await.unwrap().is_empty());
    assert!(s
        .owner_digest_credentials("alice")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.user_tokens_not_before("alice").await.unwrap(), None);
    assert!(s
        .user_client_tokens_not_before("alice")
        .await
        .unwrap()
        .is_empty());
}
