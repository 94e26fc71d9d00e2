//! An immutable in-memory view of users, devices and settings for hot paths.
//!
//! The registrar and config service read a [`DirectorySnapshot`] without a lock. After a
//! [`Change`] the [`Directory`] reads only what the change names from the store and publishes a
//! new snapshot that shares every untouched entry with the previous one: the big maps are
//! persistent (`imbl`), so one device change copies O(log n) map nodes, not 50,000 devices, and
//! bulk provisioning stays linear. [`Change::Reload`] (and anything not applied incrementally)
//! rebuilds the whole snapshot from the store.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{
    Change, ClusterSettings, Device, DigestCredential, Edge, Node, Result, SecurityProfile, Store,
    TrustedIssuer,
};

/// Map keys are shared strings: copying a map node clones keys, and an `Arc` clone is a count.
type Key = Arc<str>;
/// A persistent map: a clone is O(1) and an insert copies only the path to the changed entry.
type Map<V> = imbl::HashMap<Key, V>;

/// A consistent, read-only picture of the directory at one moment.
#[derive(Debug, Default, Clone)]
pub struct DirectorySnapshot {
    /// Cluster settings.
    pub cluster: Option<ClusterSettings>,
    /// By lower-case device name.
    devices: Map<Arc<Device>>,
    /// By owner; each list in case-insensitive name order.
    by_owner: Map<Arc<[Arc<Device>]>>,
    users: imbl::HashSet<Key>,
    not_before: Map<i64>,
    /// By Digest user name: the device's stored name and its credential.
    digest: Map<Arc<(String, DigestCredential)>>,
    /// Lower-case device name to its Digest user name: which `digest` entry a device change drops.
    digest_user_of: Map<Key>,
    /// By user: (client id, not-before) pairs; a user has a handful of clients at most.
    client_not_before: Map<Arc<[(String, i64)]>>,
    // Issuers and profiles are tens of rows: copied whole when one changes.
    issuers: Arc<HashMap<String, Arc<TrustedIssuer>>>,
    profiles: Arc<HashMap<String, Arc<SecurityProfile>>>,
    /// Trust store certificates (PEM), the anchors for https JWKS fetches of trusted issuers.
    pub trust_anchors: Vec<String>,
    /// Trusted edges, ordered by host.
    pub edges: Vec<Edge>,
    /// Nodes, ordered by name.
    pub nodes: Vec<Node>,
    /// Increases with every published snapshot; used for config `versionStamp`s.
    pub generation: u64,
}

impl DirectorySnapshot {
    /// Whether cluster OAuth mode is on.
    pub fn oauth_mode(&self) -> bool {
        self.cluster.map(|c| c.oauth_mode).unwrap_or(false)
    }

    /// The device with this name, compared case-insensitively.
    pub fn device(&self, name: &str) -> Option<&Arc<Device>> {
        self.devices.get(name.to_ascii_lowercase().as_str())
    }

    /// The devices owned by `user`.
    pub fn devices_of(&self, user: &str) -> &[Arc<Device>] {
        self.by_owner.get(user).map(|l| &l[..]).unwrap_or(&[])
    }

    /// Whether the user exists.
    pub fn user_exists(&self, user: &str) -> bool {
        self.users.contains(user)
    }

    /// Access tokens of `user` issued before this time are revoked (0 when never revoked).
    pub fn tokens_not_before(&self, user: &str) -> i64 {
        self.not_before.get(user).copied().unwrap_or(0)
    }

    /// Access tokens of `user` obtained by `client_id` issued before this time are revoked (0 when
    /// never revoked).
    pub fn client_tokens_not_before(&self, user: &str, client_id: &str) -> i64 {
        if self.client_not_before.is_empty() {
            return 0;
        }
        self.client_not_before
            .get(user)
            .and_then(|cs| cs.iter().find(|(c, _)| c == client_id))
            .map_or(0, |(_, t)| *t)
    }

    /// The trusted external issuer whose URL is exactly `iss`.
    pub fn trusted_issuer(&self, iss: &str) -> Option<&Arc<TrustedIssuer>> {
        self.issuers.get(iss)
    }

    /// The security profile with this name (a device's `profile`).
    pub fn profile(&self, name: &str) -> Option<&Arc<SecurityProfile>> {
        self.profiles.get(name)
    }

    /// Whether any external issuer is trusted.
    pub fn has_trusted_issuers(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// The device and Digest credential for a Digest user name.
    pub fn digest_credential(&self, username: &str) -> Option<(&Arc<Device>, &DigestCredential)> {
        let entry = self.digest.get(username)?;
        Some((self.device(&entry.0)?, &entry.1))
    }

    /// Every device, in name order.
    pub fn all_devices(&self) -> impl Iterator<Item = &Arc<Device>> {
        let mut v: Vec<_> = self.devices.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.into_iter()
    }

    /// How many devices there are.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Replaces (`Some`) or removes (`None`) devices by lower-case name, rebuilding each affected
    /// owner's list once however many of its devices change.
    fn put_devices(&mut self, updates: Vec<(String, Option<Arc<Device>>)>) {
        let mut lists: HashMap<String, (HashSet<String>, Vec<Arc<Device>>)> = HashMap::new();
        for (key, new) in updates {
            if let Some(old) = self.devices.remove(key.as_str()) {
                let list = lists.entry(old.owner.clone()).or_default();
                list.0.insert(key.clone());
            }
            if let Some(d) = new {
                let list = lists.entry(d.owner.clone()).or_default();
                list.1.push(d.clone());
                self.devices.insert(Key::from(key), d);
            }
        }
        for (owner, (removed, added)) in lists {
            // The list stays sorted: each removal and insertion is a binary search and a move of
            // pointers, with no per-device allocation (an owner may hold thousands of devices).
            let mut list: Vec<Arc<Device>> = self
                .by_owner
                .get(owner.as_str())
                .map(|l| l.to_vec())
                .unwrap_or_default();
            for key in &removed {
                if let Ok(i) = list.binary_search_by(|d| cmp_ignore_case(&d.name, key)) {
                    list.remove(i);
                }
            }
            for d in added {
                // A device put twice in one batch (or moved on to another owner) is listed only
                // in its last version.
                let current = self
                    .devices
                    .get(d.name.to_ascii_lowercase().as_str())
                    .is_some_and(|current| Arc::ptr_eq(current, &d));
                if !current {
                    continue;
                }
                match list.binary_search_by(|e| cmp_ignore_case(&e.name, &d.name)) {
                    Ok(i) => list[i] = d,
                    Err(i) => list.insert(i, d),
                }
            }
            if list.is_empty() {
                self.by_owner.remove(owner.as_str());
            } else {
                self.by_owner.insert(Key::from(owner), list.into());
            }
        }
    }

    /// Sets (`Some`) or clears (`None`) the Digest credential of the device with lower-case name
    /// `device_key`, keeping `digest` and `digest_user_of` each other's inverse.
    fn put_digest(&mut self, device_key: &str, cred: Option<(String, DigestCredential)>) {
        if let Some(user) = self.digest_user_of.remove(device_key) {
            if self
                .digest
                .get(&user)
                .is_some_and(|e| e.0.eq_ignore_ascii_case(device_key))
            {
                self.digest.remove(&user);
            }
        }
        if let Some((device, cred)) = cred {
            let user = Key::from(cred.username.as_str());
            // The user name moved from another device (the store keeps it unique).
            if let Some(prev) = self.digest.get(&user) {
                let prev_key = prev.0.to_ascii_lowercase();
                if prev_key != device_key
                    && self
                        .digest_user_of
                        .get(prev_key.as_str())
                        .is_some_and(|u| *u == user)
                {
                    self.digest_user_of.remove(prev_key.as_str());
                }
            }
            self.digest_user_of
                .insert(Key::from(device_key), user.clone());
            self.digest.insert(user, Arc::new((device, cred)));
        }
    }

    /// Sets one user's revocation times.
    fn put_revocations(
        &mut self,
        user: &str,
        not_before: Option<i64>,
        clients: Vec<(String, i64)>,
    ) {
        match not_before {
            Some(t) => self.not_before.insert(Key::from(user), t),
            None => self.not_before.remove(user),
        };
        if clients.is_empty() {
            self.client_not_before.remove(user);
        } else {
            self.client_not_before
                .insert(Key::from(user), clients.into());
        }
    }

    /// Applies one change, reading only what it names from `store`; returns whether the snapshot
    /// changed (signing keys and OAuth clients are not in it).
    async fn apply(&mut self, store: &dyn Store, change: &Change) -> Result<bool> {
        match change {
            Change::Device(name) => {
                let key = name.to_ascii_lowercase();
                let device = store.device(name).await?;
                // A device deleted and created again lost its credential without a Digest change.
                let digest = match device {
                    Some(_) => store.device_digest_credential(name).await?,
                    None => None,
                };
                self.put_devices(vec![(key.clone(), device.map(Arc::new))]);
                self.put_digest(&key, digest);
            }
            Change::Digest(name) => {
                let digest = store.device_digest_credential(name).await?;
                self.put_digest(&name.to_ascii_lowercase(), digest);
            }
            Change::User(id) => self.apply_user(store, id).await?,
            Change::Revocation(user) => {
                let not_before = store.user_tokens_not_before(user).await?;
                let clients = store.user_client_tokens_not_before(user).await?;
                self.put_revocations(user, not_before, clients);
            }
            Change::Profile(name) => {
                let profile = store.profile(name).await?;
                // Updating a profile sets its devices' `oauth` flag in the same transaction.
                let devices = store.devices_with_profile(name).await?;
                let profiles = Arc::make_mut(&mut self.profiles);
                match profile {
                    Some(p) => profiles.insert(name.clone(), Arc::new(p)),
                    None => profiles.remove(name),
                };
                self.put_devices(
                    devices
                        .into_iter()
                        .map(|d| (d.name.to_ascii_lowercase(), Some(Arc::new(d))))
                        .collect(),
                );
            }
            // The small tables are read whole: their size does not grow with the directory.
            Change::Issuer(_) => self.issuers = Arc::new(issuers(store).await?),
            Change::Cluster => self.cluster = Some(store.cluster_settings().await?),
            Change::Node(_) => self.nodes = store.nodes().await?,
            Change::Edge(_) => self.edges = store.edges().await?,
            Change::Trust => self.trust_anchors = trust_anchors(store).await?,
            Change::SigningKeys | Change::Client(_) => return Ok(false),
            // Handled by the caller (a full reload).
            Change::Reload => return Ok(false),
        }
        Ok(true)
    }

    /// A user created, changed or deleted: deleting cascades to the user's devices, Digest
    /// credentials and revocations without changes of their own, so all of them are read again.
    async fn apply_user(&mut self, store: &dyn Store, id: &str) -> Result<()> {
        let exists = store.user(id).await?.is_some();
        let devices = store.devices_of_owner(id).await?;
        let digests = store.owner_digest_credentials(id).await?;
        let not_before = store.user_tokens_not_before(id).await?;
        let clients = store.user_client_tokens_not_before(id).await?;
        if exists {
            self.users.insert(Key::from(id));
        } else {
            self.users.remove(id);
        }
        let now: HashSet<String> = devices
            .iter()
            .map(|d| d.name.to_ascii_lowercase())
            .collect();
        let mut updates: Vec<(String, Option<Arc<Device>>)> = self
            .devices_of(id)
            .iter()
            .map(|d| d.name.to_ascii_lowercase())
            .filter(|k| !now.contains(k))
            .map(|k| (k, None))
            .collect();
        for (key, _) in &updates {
            self.put_digest(key, None);
        }
        updates.extend(
            devices
                .into_iter()
                .map(|d| (d.name.to_ascii_lowercase(), Some(Arc::new(d)))),
        );
        self.put_devices(updates);
        let mut digests: HashMap<String, (String, DigestCredential)> = digests
            .into_iter()
            .map(|(device, cred)| (device.to_ascii_lowercase(), (device, cred)))
            .collect();
        for key in &now {
            self.put_digest(key, digests.remove(key));
        }
        self.put_revocations(id, not_before, clients);
        Ok(())
    }

    /// Asserts that `self` and `other` hold the same directory (generations aside), field by
    /// field, so a failure names what differs.
    #[cfg(test)]
    pub(crate) fn assert_same(&self, other: &DirectorySnapshot) {
        assert_eq!(self.cluster, other.cluster, "cluster");
        assert_eq!(self.devices, other.devices, "devices");
        assert_eq!(self.by_owner, other.by_owner, "devices by owner");
        assert_eq!(self.users, other.users, "users");
        assert_eq!(self.not_before, other.not_before, "not_before");
        assert_eq!(self.digest, other.digest, "digest");
        assert_eq!(self.digest_user_of, other.digest_user_of, "digest_user_of");
        assert_eq!(
            self.client_not_before, other.client_not_before,
            "client_not_before"
        );
        assert_eq!(self.issuers, other.issuers, "issuers");
        assert_eq!(self.profiles, other.profiles, "profiles");
        assert_eq!(self.trust_anchors, other.trust_anchors, "trust anchors");
        assert_eq!(self.edges, other.edges, "edges");
        assert_eq!(self.nodes, other.nodes, "nodes");
    }
}

/// Orders device names as both stores list them: ASCII case-insensitively.
fn cmp_ignore_case(a: &str, b: &str) -> Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

async fn issuers(store: &dyn Store) -> Result<HashMap<String, Arc<TrustedIssuer>>> {
    Ok(store
        .issuers()
        .await?
        .into_iter()
        .map(|i| (i.issuer.clone(), Arc::new(i)))
        .collect())
}

async fn trust_anchors(store: &dyn Store) -> Result<Vec<String>> {
    Ok(store
        .trust_certs()
        .await?
        .into_iter()
        .map(|t| t.pem)
        .collect())
}

/// How often a [`Directory`] was rebuilt whole and how often it applied changes incrementally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Full reloads (every row read again), the first load included.
    pub reloads: u64,
    /// Incremental applies, each publishing at most one snapshot for a batch of changes.
    pub applies: u64,
    /// Changes applied incrementally.
    pub changes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    reloads: AtomicU64,
    applies: AtomicU64,
    changes: AtomicU64,
}

/// A live, lock-free-for-readers directory cache over a [`Store`].
#[derive(Clone)]
pub struct Directory {
    current: Arc<ArcSwap<DirectorySnapshot>>,
    /// One writer at a time: each builds on the snapshot the previous one published.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Set when an incremental apply failed halfway: the next apply reloads everything.
    stale: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("generation", &self.current.load().generation)
            .finish()
    }
}

impl Directory {
    /// Loads a first snapshot from the store.
    pub async fn load(store: &dyn Store) -> Result<Self> {
        let snap = build(store, 1).await?;
        let counters = Counters::default();
        counters.reloads.store(1, AtomicOrdering::Relaxed);
        Ok(Directory {
            current: Arc::new(ArcSwap::from_pointee(snap)),
            writer: Arc::default(),
            stale: Arc::default(),
            counters: Arc::new(counters),
        })
    }

    /// The current snapshot; cheap, never blocks.
    pub fn snapshot(&self) -> Arc<DirectorySnapshot> {
        self.current.load_full()
    }

    /// How often the directory was reloaded and changes applied.
    pub fn stats(&self) -> DirectoryStats {
        DirectoryStats {
            reloads: self.counters.reloads.load(AtomicOrdering::Relaxed),
            applies: self.counters.applies.load(AtomicOrdering::Relaxed),
            changes: self.counters.changes.load(AtomicOrdering::Relaxed),
        }
    }

    /// Rebuilds the snapshot from the store and swaps it in.
    pub async fn reload(&self, store: &dyn Store) -> Result<()> {
        let _one = self.writer.lock().await;
        self.reload_locked(store).await
    }

    async fn reload_locked(&self, store: &dyn Store) -> Result<()> {
        let generation = self.current.load().generation + 1;
        let snap = build(store, generation).await?;
        self.current.store(Arc::new(snap));
        self.stale.store(false, AtomicOrdering::Relaxed);
        self.counters.reloads.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(())
    }

    /// Applies `changes` (in order), reading only what each names, and publishes one new snapshot
    /// for all of them; a [`Change::Reload`] among them, or an earlier failed apply, reloads
    /// everything instead. Publishes nothing when no change touches the directory.
    pub async fn apply(&self, store: &dyn Store, changes: &[Change]) -> Result<()> {
        let _one = self.writer.lock().await;
        if self.stale.load(AtomicOrdering::Relaxed) || changes.contains(&Change::Reload) {
            return self.reload_locked(store).await;
        }
        let current = self.current.load_full();
        // O(1): the maps are shared until a change writes to them.
        let mut next = DirectorySnapshot::clone(&current);
        let mut changed = false;
        for change in changes {
            match next.apply(store, change).await {
                Ok(c) => changed |= c,
                Err(e) => {
                    // Earlier changes of the batch were read but not published, and the store
                    // does not repeat them: only a full reload is sure to catch up.
                    self.stale.store(true, AtomicOrdering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.counters.applies.fetch_add(1, AtomicOrdering::Relaxed);
        self.counters
            .changes
            .fetch_add(changes.len() as u64, AtomicOrdering::Relaxed);
        if changed {
            next.generation = current.generation + 1;
            self.current.store(Arc::new(next));
        }
        Ok(())
    }
}

async fn build(store: &dyn Store, generation: u64) -> Result<DirectorySnapshot> {
    let cluster = store.cluster_settings().await?;
    let users = store.users().await?;
    let devices = store.devices().await?;
    let nodes = store.nodes().await?;
    let edges = store.edges().await?;
    let mut snap = DirectorySnapshot {
        cluster: Some(cluster),
        nodes,
        edges,
        generation,
        ..Default::default()
    };
    snap.not_before = store
        .tokens_not_before()
        .await?
        .into_iter()
        .map(|(user, t)| (Key::from(user), t))
        .collect();
    let mut clients: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (user, client, t) in store.client_tokens_not_before().await? {
        clients.entry(user).or_default().push((client, t));
    }
    snap.client_not_before = clients
        .into_iter()
        .map(|(user, mut cs)| {
            cs.sort();
            (Key::from(user), cs.into())
        })
        .collect();
    snap.issuers = Arc::new(issuers(store).await?);
    snap.profiles = Arc::new(
        store
            .profiles()
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect(),
    );
    snap.trust_anchors = trust_anchors(store).await?;
    for (device, cred) in store.digest_credentials().await? {
        let user = Key::from(cred.username.as_str());
        snap.digest_user_of
            .insert(Key::from(device.to_ascii_lowercase()), user.clone());
        snap.digest.insert(user, Arc::new((device, cred)));
    }
    snap.users = users.into_iter().map(|u| Key::from(u.id)).collect();
    let mut by_owner: HashMap<String, Vec<Arc<Device>>> = HashMap::new();
    for d in devices {
        let d = Arc::new(d);
        by_owner.entry(d.owner.clone()).or_default().push(d.clone());
        snap.devices
            .insert(Key::from(d.name.to_ascii_lowercase()), d);
    }
    snap.by_owner = by_owner
        .into_iter()
        .map(|(owner, mut list)| {
            list.sort_by(|a, b| cmp_ignore_case(&a.name, &b.name));
            (Key::from(owner), list.into())
        })
        .collect();
    Ok(snap)
}
