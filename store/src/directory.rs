//! An immutable in-memory view of users, devices and settings for hot paths.
//!
//! The registrar and config service read a [`DirectorySnapshot`] without a lock; a background task
//! rebuilds it after every [`Change`](crate::Change) and swaps it in.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{
    ClusterSettings, Device, DigestCredential, Edge, Node, Result, SecurityProfile, Store,
    TrustedIssuer,
};

/// A consistent, read-only picture of the directory at one moment.
#[derive(Debug, Default)]
pub struct DirectorySnapshot {
    /// Cluster settings.
    pub cluster: Option<ClusterSettings>,
    devices: HashMap<String, Arc<Device>>,
    by_owner: HashMap<String, Vec<Arc<Device>>>,
    users: HashMap<String, ()>,
    not_before: HashMap<String, i64>,
    digest: HashMap<String, (String, DigestCredential)>,
    client_not_before: HashMap<(String, String), i64>,
    issuers: HashMap<String, Arc<TrustedIssuer>>,
    profiles: HashMap<String, Arc<SecurityProfile>>,
    /// Trust store certificates (PEM), the anchors for https JWKS fetches of trusted issuers.
    pub trust_anchors: Vec<String>,
    /// Trusted edges, ordered by host.
    pub edges: Vec<Edge>,
    /// Nodes, ordered by name.
    pub nodes: Vec<Node>,
    /// Increases with every rebuild; used for config `versionStamp`s.
    pub generation: u64,
}

impl DirectorySnapshot {
    /// Whether cluster OAuth mode is on.
    pub fn oauth_mode(&self) -> bool {
        self.cluster.map(|c| c.oauth_mode).unwrap_or(false)
    }

    /// The device with this name, compared case-insensitively.
    pub fn device(&self, name: &str) -> Option<&Arc<Device>> {
        self.devices.get(&name.to_ascii_lowercase())
    }

    /// The devices owned by `user`.
    pub fn devices_of(&self, user: &str) -> &[Arc<Device>] {
        self.by_owner.get(user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether the user exists.
    pub fn user_exists(&self, user: &str) -> bool {
        self.users.contains_key(user)
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
            .get(&(user.to_owned(), client_id.to_owned()))
            .copied()
            .unwrap_or(0)
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
        let (device, cred) = self.digest.get(username)?;
        Some((self.device(device)?, cred))
    }

    /// Every device, in name order.
    pub fn all_devices(&self) -> impl Iterator<Item = &Arc<Device>> {
        let mut v: Vec<_> = self.devices.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.into_iter()
    }
}

/// A live, lock-free-for-readers directory cache over a [`Store`].
#[derive(Clone)]
pub struct Directory {
    current: Arc<ArcSwap<DirectorySnapshot>>,
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
        Ok(Directory {
            current: Arc::new(ArcSwap::from_pointee(snap)),
        })
    }

    /// The current snapshot; cheap, never blocks.
    pub fn snapshot(&self) -> Arc<DirectorySnapshot> {
        self.current.load_full()
    }

    /// Rebuilds the snapshot from the store and swaps it in.
    pub async fn reload(&self, store: &dyn Store) -> Result<()> {
        let generation = self.current.load().generation + 1;
        let snap = build(store, generation).await?;
        self.current.store(Arc::new(snap));
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
    snap.not_before = store.tokens_not_before().await?.into_iter().collect();
    snap.client_not_before = store
        .client_tokens_not_before()
        .await?
        .into_iter()
        .map(|(user, client, t)| ((user, client), t))
        .collect();
    snap.issuers = store
        .issuers()
        .await?
        .into_iter()
        .map(|i| (i.issuer.clone(), Arc::new(i)))
        .collect();
    snap.profiles = store
        .profiles()
        .await?
        .into_iter()
        .map(|p| (p.name.clone(), Arc::new(p)))
        .collect();
    snap.trust_anchors = store
        .trust_certs()
        .await?
        .into_iter()
        .map(|t| t.pem)
        .collect();
    snap.digest = store
        .digest_credentials()
        .await?
        .into_iter()
        .map(|(device, cred)| (cred.username.clone(), (device, cred)))
        .collect();
    for u in users {
        snap.users.insert(u.id, ());
    }
    for d in devices {
        let d = Arc::new(d);
        snap.by_owner
            .entry(d.owner.clone())
            .or_default()
            .push(d.clone());
        snap.devices.insert(d.name.to_ascii_lowercase(), d);
    }
    Ok(snap)
}
