//! Applying changes live: every write through the API (or, later, another node) ends in
//! [`Live::apply_change`], which applies the change to the directory snapshot (reading only what it
//! names), or in [`Live::apply`], which rebuilds it whole, and opens, moves or closes listeners to
//! match — no restart.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sipreg_registrar::{LegacyAddrs, LegacyListeners, MraListener, SipOAuthListener};
use sipreg_store::{Change, Directory, Store};
use sipreg_tokensvc::KeyRing;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;

use crate::problem::Problem;

/// Brings running services in line with the store.
pub struct Live {
    store: Arc<dyn Store>,
    directory: Directory,
    keys: Arc<KeyRing>,
    oauth_listener: Arc<SipOAuthListener>,
    /// The MRA mutual-TLS listener; follows OAuth mode, the node's MRA port, edges and trust.
    mra_listener: Option<Arc<MraListener>>,
    node_name: String,
    ip: IpAddr,
    /// Ports this node's other listeners hold, with the config key that sets each.
    reserved: Vec<(u16, &'static str)>,
    /// The legacy UDP/TCP/TLS listeners; follow the node's `sip_port` and `secured_sip_port`.
    legacy: Option<Arc<LegacyListeners>>,
    /// Which legacy transports `[legacy]` switches on (a switched-off one stays closed).
    legacy_on: LegacyTransports,
    // One apply at a time, so listener state follows the newest snapshot.
    serial: Mutex<()>,
    /// Writers waiting for [`Live::follow`] to apply what they wrote (see [`Live::apply_changes`]).
    syncs: mpsc::Sender<SyncRequest>,
    /// What [`Live::follow`] takes when it starts: the receiving end of `syncs`, and the store's
    /// notifications since this was created (so none falls between a write and `follow`). While
    /// it is still here nobody follows the store, and writers apply their changes themselves.
    follow_rx: std::sync::Mutex<Option<FollowRx>>,
}

/// Where to tell a writer that everything queued before its request is applied.
type SyncRequest = oneshot::Sender<Result<(), Problem>>;

/// The two queues [`Live::follow`] reads.
type FollowRx = (
    mpsc::Receiver<SyncRequest>,
    tokio::sync::broadcast::Receiver<Change>,
);

/// Writers that may wait for [`Live::follow`] at once; more wait to queue (API requests are
/// bounded by the HTTPS listener's connection cap anyway).
const MAX_SYNC_WAITERS: usize = 256;

impl Live {
    /// Creates the controller; nothing is applied until [`Live::apply`].
    pub fn new(
        store: Arc<dyn Store>,
        directory: Directory,
        keys: Arc<KeyRing>,
        oauth_listener: Arc<SipOAuthListener>,
        node_name: String,
        ip: IpAddr,
        reserved: Vec<(u16, &'static str)>,
    ) -> Self {
        let (syncs, sync_rx) = mpsc::channel(MAX_SYNC_WAITERS);
        let follow_rx = std::sync::Mutex::new(Some((sync_rx, store.subscribe())));
        Live {
            store,
            directory,
            keys,
            oauth_listener,
            mra_listener: None,
            node_name,
            ip,
            reserved,
            legacy: None,
            legacy_on: LegacyTransports::default(),
            serial: Mutex::new(()),
            syncs,
            follow_rx,
        }
    }

    /// Adds the MRA listener, which [`Live::apply`] then keeps in line with the store too.
    pub fn with_mra(mut self, mra: Arc<MraListener>) -> Self {
        self.mra_listener = Some(mra);
        self
    }

    /// Adds the legacy listeners, which [`Live::apply`] then opens on, and moves to, this node's
    /// stored `sip_port` (UDP, TCP) and `secured_sip_port` (TLS) for each transport `on` allows.
    pub fn with_legacy(mut self, legacy: Arc<LegacyListeners>, on: LegacyTransports) -> Self {
        self.legacy = Some(legacy);
        self.legacy_on = on;
        self
    }

    /// Whether the legacy TCP and TLS listeners are both on, so `sip_port` and
    /// `secured_sip_port` cannot be the same port.
    pub fn legacy_tcp_and_tls(&self) -> bool {
        self.legacy.is_some() && self.legacy_on.tcp && self.legacy_on.tls
    }

    /// Opens, moves or closes the legacy listeners to match this node's stored ports. A failure
    /// names the node field and leaves that listener where it was.
    async fn apply_legacy(&self) -> Result<(), Problem> {
        let Some(legacy) = &self.legacy else {
            return Ok(());
        };
        let snap = self.directory.snapshot();
        // Without its row (never after start-up) the node keeps what it has.
        let Some(node) = snap.nodes.iter().find(|n| n.name == self.node_name) else {
            return Ok(());
        };
        let on = self.legacy_on;
        let want = LegacyAddrs {
            udp: on.udp.then(|| SocketAddr::new(self.ip, node.sip_port)),
            tcp: on.tcp.then(|| SocketAddr::new(self.ip, node.sip_port)),
            tls: on
                .tls
                .then(|| SocketAddr::new(self.ip, node.secured_sip_port)),
        };
        legacy.set(&want).await.map_err(|e| {
            let field = if e.transport() == "tls" {
                "secured_sip_port"
            } else {
                "sip_port"
            };
            tracing::error!(error = %e, field, "cannot open the legacy SIP port");
            Problem::port_unavailable(
                field,
                format!("{e}; choose a free `{field}` (PATCH /api/v1/nodes or `listen.{field}`), or turn the transport off in `[legacy]`"),
            )
        })
    }

    /// The legacy UDP/TCP/TLS listeners, if this node runs them.
    pub fn legacy(&self) -> Option<&Arc<LegacyListeners>> {
        self.legacy.as_ref()
    }

    /// The MRA listener, if this node runs one.
    pub fn mra(&self) -> Option<&Arc<MraListener>> {
        self.mra_listener.as_ref()
    }

    /// The MRA listener's bound address, if open.
    pub fn mra_local_addr(&self) -> Option<SocketAddr> {
        self.mra_listener.as_ref().and_then(|m| m.local_addr())
    }

    /// Gives the MRA listener the current trust anchors and edges (closing edge connections
    /// they no longer trust) and opens, moves or closes it with OAuth mode and the node's
    /// `sip_mra_oauth_port`. Failures are logged, not returned: the MRA port must not keep
    /// OAuth mode or another setting from applying.
    async fn apply_mra(&self) {
        let Some(mra) = &self.mra_listener else {
            return;
        };
        let snap = self.directory.snapshot();
        match self.store.trust_certs().await {
            Ok(certs) => {
                let pems: Vec<String> = certs.into_iter().map(|c| c.pem).collect();
                match mra.update(&pems, snap.edges.clone()) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(closed = n, "edge connections no longer trusted were closed")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "trust store not applied to the MRA port")
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the trust store failed"),
        }
        let want = snap
            .oauth_mode()
            .then(|| snap.nodes.iter().find(|n| n.name == self.node_name))
            .flatten()
            .map(|n| SocketAddr::new(self.ip, n.sip_mra_oauth_port));
        if let Err(e) = mra.set(want).await {
            let addr = want.map(|a| a.to_string()).unwrap_or_default();
            tracing::error!(%addr, error = %e, "cannot open the SIP MRA OAuth port; choose a free `sip_mra_oauth_port`");
        }
    }

    /// The live directory.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The address this node's listeners bind to.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The listener (other than the OAuth ports) that holds `port` on this node, if any,
    /// ignoring the one set by config key `own` (a port may stay what it is).
    pub fn reserved_by_other(&self, port: u16, own: &str) -> Option<&'static str> {
        self.held()
            .into_iter()
            .find(|(p, k)| *p == port && *k != own)
            .map(|(_, k)| k)
    }

    /// The port this node's listener set by config key `key` holds, if it is one of them.
    pub fn reserved_port(&self, key: &str) -> Option<u16> {
        self.held()
            .into_iter()
            .find(|(_, k)| *k == key)
            .map(|(p, _)| p)
    }

    /// The fixed listeners' ports and the ports the legacy listeners hold right now.
    fn held(&self) -> Vec<(u16, &'static str)> {
        let mut held = self.reserved.clone();
        if let Some(l) = &self.legacy {
            for a in [l.udp_addr(), l.tcp_addr()].into_iter().flatten() {
                held.push((a.port(), "listen.sip_port"));
            }
            if let Some(a) = l.tls_addr() {
                held.push((a.port(), "listen.secured_sip_port"));
            }
        }
        held
    }

    /// Where the SIP OAuth listener should be, per the current snapshot (None = closed).
    fn wanted_oauth_addr(&self) -> Option<SocketAddr> {
        let snap = self.directory.snapshot();
        if !snap.oauth_mode() {
            return None;
        }
        let node = snap.nodes.iter().find(|n| n.name == self.node_name)?;
        Some(SocketAddr::new(self.ip, node.sip_oauth_port))
    }

    /// The SIP OAuth listener's bound address, if open.
    pub fn oauth_local_addr(&self) -> Option<SocketAddr> {
        self.oauth_listener.local_addr()
    }

    /// Reloads the whole directory and opens, moves or closes the SIP OAuth port to match the
    /// store (start-up, listener changes, and anything not applied incrementally).
    pub async fn apply(&self) -> Result<(), Problem> {
        let _one = self.serial.lock().await;
        self.directory.reload(self.store.as_ref()).await?;
        self.apply_listeners().await
    }

    /// Applies one change the caller just made to the store, reading only what it names, so
    /// the caller's response already sees its own write.
    pub async fn apply_change(&self, change: Change) -> Result<(), Problem> {
        self.apply_changes(std::slice::from_ref(&change)).await
    }

    /// Applies `changes`, which the caller just made to the store, before returning, so the
    /// caller's response (and the next read on this node) sees them; changes a listener follows
    /// (cluster, node, edge, trust) also bring the listeners in line, as [`Live::apply`] does.
    ///
    /// While [`Live::follow`] runs, it applies them: every store write queues its notification
    /// for it before returning, so this waits for it to apply everything queued (with other
    /// writers' changes, in one snapshot) instead of applying each change a second time when the
    /// notification arrives. So `changes` must be what the store notified (as every write does).
    pub async fn apply_changes(&self, changes: &[Change]) -> Result<(), Problem> {
        match self.sync().await {
            Some(applied) => applied,
            None => self.apply_now(changes).await,
        }
    }

    /// Waits until [`Live::follow`] has applied every store notification queued now; `None` when
    /// it is not running (not started yet, or stopped), so the caller applies its changes itself.
    async fn sync(&self) -> Option<Result<(), Problem>> {
        let following = self.follow_rx.lock().is_ok_and(|rx| rx.is_none());
        if !following {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.syncs.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Applies `changes` to the directory incrementally with one new snapshot (a
    /// [`Change::Reload`] among them reloads everything), and the listeners when one follows them.
    async fn apply_now(&self, changes: &[Change]) -> Result<(), Problem> {
        let _one = self.serial.lock().await;
        self.directory.apply(self.store.as_ref(), changes).await?;
        if changes.iter().any(moves_listeners) {
            self.apply_listeners().await?;
        }
        Ok(())
    }

    /// Opens, moves or closes the SIP OAuth, MRA and legacy listeners per the current snapshot.
    async fn apply_listeners(&self) -> Result<(), Problem> {
        let want = self.wanted_oauth_addr();
        if let Err(e) = self.oauth_listener.set(want).await {
            let addr = want.map(|a| a.to_string()).unwrap_or_default();
            tracing::error!(%addr, error = %e, "cannot open the SIP OAuth port");
            return Err(Problem::port_unavailable(
                "sip_oauth_port",
                format!("cannot listen on the SIP OAuth port {addr}: {e}; choose a free port"),
            ));
        }
        self.apply_mra().await;
        self.apply_legacy().await
    }

    /// Follows store change notifications until cancelled: changes made outside this node's
    /// API, and (see [`Live::apply_changes`]) its API's own, each applied once.
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let Some((mut syncs, mut rx)) = self.follow_rx.lock().ok().and_then(|mut rx| rx.take())
        else {
            tracing::error!("Live::follow started twice; the second one stops");
            return;
        };
        let mut waiting: Vec<SyncRequest> = Vec::new();
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                c = rx.recv() => Some(c),
                Some(request) = syncs.recv() => {
                    waiting.push(request);
                    None
                }
            };
            // Requests before notifications: each writer's notification was queued before its
            // request, so the drain below (or an earlier batch, applied already) holds it.
            while let Ok(request) = syncs.try_recv() {
                waiting.push(request);
            }
            let mut batch = match first {
                None => Batch::drain(&mut rx, None),
                Some(Ok(change)) => Batch::drain(&mut rx, Some(change)),
                // Missed notifications: reload everything.
                Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => Batch::full(),
                Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            };
            // Writers waiting need everything queued before them, beyond one batch's worth.
            let mut outcome = Ok(());
            loop {
                let applied = self.apply_batch(&batch).await;
                if let Err(e) = &applied {
                    tracing::error!(detail = %e.detail, "applying a change failed");
                }
                if outcome.is_ok() {
                    outcome = applied;
                }
                if waiting.is_empty() || !batch.more {
                    break;
                }
                batch = Batch::drain(&mut rx, None);
            }
            for done in waiting.drain(..) {
                // A writer that gave up waiting needs no answer.
                let _ = done.send(outcome.clone());
            }
        }
    }

    /// Applies one batch of [`Live::follow`]'s: signing keys, then the directory and listeners.
    async fn apply_batch(&self, batch: &Batch) -> Result<(), Problem> {
        if batch.keys {
            if let Err(e) = self.keys.reload(self.store.as_ref()).await {
                tracing::error!(error = %e, "reloading signing keys failed");
            }
        }
        if batch.full {
            self.apply().await
        } else if batch.changes.is_empty() {
            Ok(())
        } else {
            self.apply_now(&batch.changes).await
        }
    }
}

/// Whether the listeners follow `change` (OAuth mode, ports, edges, trust), not only the
/// directory.
fn moves_listeners(change: &Change) -> bool {
    matches!(
        change,
        Change::Cluster | Change::Node(_) | Change::Edge(_) | Change::Trust | Change::Reload
    )
}

/// The most changes [`Live::follow`] applies with one snapshot; more queued wait for the next.
const MAX_BATCH: usize = 1024;

/// The store changes queued at one moment, applied together: one snapshot for all of them
/// (applying them one by one made bulk provisioning quadratic while every apply reloaded the
/// whole directory).
#[derive(Debug, Default)]
struct Batch {
    /// The changes in order, without repeats in a row.
    changes: Vec<Change>,
    /// Reload everything: a [`Change::Reload`] or missed notifications.
    full: bool,
    /// Reload the signing keys.
    keys: bool,
    /// More changes were queued than one batch takes.
    more: bool,
}

impl Batch {
    fn full() -> Self {
        Batch {
            full: true,
            keys: true,
            ..Batch::default()
        }
    }

    /// `first` and every change already queued behind it (up to [`MAX_BATCH`]; a full reload
    /// covers any number).
    fn drain(rx: &mut tokio::sync::broadcast::Receiver<Change>, first: Option<Change>) -> Self {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut batch = Batch::default();
        if let Some(first) = first {
            batch.add(first);
        }
        loop {
            if !batch.full && batch.changes.len() >= MAX_BATCH {
                batch.more = true;
                break;
            }
            match rx.try_recv() {
                Ok(change) => batch.add(change),
                Err(TryRecvError::Lagged(_)) => {
                    batch.full = true;
                    batch.keys = true;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        batch
    }

    fn add(&mut self, change: Change) {
        match change {
            // Reload: another node's change may have been missed (safety net, reconnect).
            Change::Reload => {
                self.full = true;
                self.keys = true;
            }
            Change::SigningKeys => self.keys = true,
            _ => {}
        }
        if self.full {
            // The reload covers everything: keep no list.
            self.changes.clear();
        } else if self.changes.last() != Some(&change) {
            self.changes.push(change);
        }
    }
}

/// Which legacy transports the `[legacy]` section switches on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegacyTransports {
    /// UDP on `sip_port`.
    pub udp: bool,
    /// TCP on `sip_port`.
    pub tcp: bool,
    /// TLS on `secured_sip_port`.
    pub tls: bool,
}

/// The config values of the legacy ports at the last start, kept in the data dir so the next
/// start can tell an edited config file from an unchanged one.
const LEGACY_SEED_FILE: &str = "legacy-ports.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LegacySeed {
    sip_port: u16,
    secured_sip_port: u16,
}

/// The legacy ports (`sip_port`, `secured_sip_port`) this node starts with. The config file
/// (or `--sip-port`/`--secured-sip-port`) seeds the node row when it is created; afterwards the
/// stored port (changed live through the API) wins, unless the config value changed since the
/// last start — an edited file is the operator's newer word. Each choice is logged.
pub fn legacy_start_ports(
    data_dir: &std::path::Path,
    stored: Option<(u16, u16)>,
    config: (u16, u16),
) -> (u16, u16) {
    let path = data_dir.join(LEGACY_SEED_FILE);
    let last: Option<LegacySeed> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let pick = |key: &str, stored: Option<u16>, config: u16, last: Option<u16>| match stored {
        None => {
            tracing::info!(
                port = config,
                "legacy port `{key}` seeded from the config file"
            );
            config
        }
        Some(s) if s == config => s,
        // Unchanged in the file (or no record of it, as before this was kept): the API's change stands.
        Some(s) if last.is_none_or(|l| l == config) => {
            tracing::info!(stored = s, config, "legacy port `{key}`: the stored port (set through the API) wins over the unchanged config value; edit `listen.{key}` to override it");
            s
        }
        Some(s) => {
            tracing::info!(stored = s, config, was = last.unwrap_or_default(), "legacy port `{key}`: the config value changed since the last start and wins over the stored port");
            config
        }
    };
    let chosen = (
        pick(
            "sip_port",
            stored.map(|s| s.0),
            config.0,
            last.map(|l| l.sip_port),
        ),
        pick(
            "secured_sip_port",
            stored.map(|s| s.1),
            config.1,
            last.map(|l| l.secured_sip_port),
        ),
    );
    let seed = LegacySeed {
        sip_port: config.0,
        secured_sip_port: config.1,
    };
    if last != Some(seed) {
        let written = serde_json::to_vec(&seed)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&path, b));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the config's legacy ports; an API change of them may not survive the next restart");
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{legacy_start_ports, Batch, Live};
    use sipreg_store::{Change, Device, Directory, Line, SqliteStore, Store, User};

    #[tokio::test]
    async fn queued_changes_are_applied_together_without_a_full_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let directory = Directory::load(&store).await.unwrap();
        let before = directory.stats();
        let generation = directory.snapshot().generation;
        let mut rx = store.subscribe();
        let user = User {
            id: "bulk".into(),
            password_hash: String::new(),
            created_at: 0,
        };
        store.create_user(&user).await.unwrap();
        for i in 0..40 {
            let device = Device {
                name: format!("CSFbulk{i}"),
                owner: "bulk".into(),
                lines: vec![Line {
                    dn: format!("{}", 5000 + i),
                    display_name: None,
                }],
                oauth: true,
                updated_at: 0,
                model: String::new(),
                profile: String::new(),
            };
            store.create_device(&device).await.unwrap();
        }
        let first = rx.recv().await.unwrap();
        let batch = Batch::drain(&mut rx, Some(first));
        assert!(!batch.full && !batch.keys);
        assert_eq!(
            batch.changes.len(),
            41,
            "the user and 40 devices, in one batch"
        );
        directory.apply(&store, &batch.changes).await.unwrap();

        let after = directory.stats();
        assert_eq!(after.reloads, before.reloads, "no full reload");
        assert_eq!(after.applies, before.applies + 1, "one apply for the batch");
        assert_eq!(after.changes, before.changes + 41);
        let snap = directory.snapshot();
        assert_eq!(snap.generation, generation + 1, "one new snapshot");
        assert_eq!(snap.devices_of("bulk").len(), 40);
        assert!(snap.device("csfbulk39").is_some_and(|d| d.has_line("5039")));
    }

    /// A token check that refuses everything: these tests register nobody.
    struct NoTokens;

    impl sipreg_registrar::BearerValidator for NoTokens {
        fn validate(
            &self,
            _token: &str,
            _now: i64,
        ) -> Result<sipreg_registrar::TokenIdentity, sipreg_registrar::BearerError> {
            Err(sipreg_registrar::BearerError {
                description: "no tokens here".into(),
            })
        }
    }

    /// A `Live` over a fresh SQLite store, with its listeners closed.
    async fn live(dir: &std::path::Path) -> (Arc<Live>, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("db")).unwrap());
        let directory = Directory::load(store.as_ref()).await.unwrap();
        let keys = sipreg_tokensvc::KeyRing::load_or_create(store.as_ref(), 0)
            .await
            .unwrap();
        let pki = sipreg_certs::load_or_create(&dir.join("tls"), &["localhost".into()]).unwrap();
        let chain = std::fs::read(&pki.server_cert).unwrap();
        let key = std::fs::read(&pki.server_key).unwrap();
        let tls = sipreg_certs::ReloadableServerConfig::new(
            sipreg_certs::sip_server_config(&chain, &key).unwrap(),
        );
        let registrar = Arc::new(sipreg_registrar::Registrar::new(
            sipreg_registrar::RegistrarConfig::default(),
            directory.clone(),
            Arc::new(NoTokens),
        ));
        let listener = Arc::new(sipreg_registrar::SipOAuthListener::new(
            registrar,
            tls.shared(),
        ));
        let live = Live::new(
            store.clone(),
            directory,
            keys,
            listener,
            "n1".into(),
            std::net::Ipv4Addr::LOCALHOST.into(),
            Vec::new(),
        );
        (Arc::new(live), store)
    }

    fn device(i: usize) -> Device {
        Device {
            name: format!("CSFapi{i}"),
            owner: "api".into(),
            lines: vec![Line {
                dn: format!("{}", 6000 + i),
                display_name: None,
            }],
            oauth: true,
            updated_at: 0,
            model: String::new(),
            profile: String::new(),
        }
    }

    #[tokio::test]
    async fn an_api_write_is_applied_once_and_seen_by_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (live, store) = live(dir.path()).await;
        let directory = live.directory().clone();
        let user = User {
            id: "api".into(),
            password_hash: String::new(),
            created_at: 0,
        };
        // Before `follow` runs, the writer applies its change itself.
        store.create_user(&user).await.unwrap();
        live.apply_change(Change::User("api".into())).await.unwrap();
        assert!(directory.snapshot().user_exists("api"));

        let before = directory.stats();
        let cancel = tokio_util::sync::CancellationToken::new();
        let following = tokio::spawn(live.clone().follow(cancel.clone()));
        // Until `follow` takes its queues, writers apply their changes themselves.
        while live.follow_rx.lock().unwrap().is_some() {
            tokio::task::yield_now().await;
        }
        const WRITES: usize = 30;
        for i in 0..WRITES {
            store.create_device(&device(i)).await.unwrap();
            live.apply_change(Change::Device(format!("CSFapi{i}")))
                .await
                .unwrap();
            // The answer to the write sees it.
            assert!(directory
                .snapshot()
                .device(&format!("csfapi{i}"))
                .is_some_and(|d| d.has_line(&format!("{}", 6000 + i))));
        }
        // Wait for `follow` to apply everything queued: a second apply of any write shows now.
        live.sync().await.unwrap().unwrap();
        let after = directory.stats();
        assert_eq!(after.reloads, before.reloads, "no full reload");
        assert_eq!(
            after.changes,
            // The user's notification, queued before `follow` started, is applied by it once more.
            before.changes + WRITES as u64 + 1,
            "each API write applied once (the API path and `follow` both applying doubles it)"
        );
        cancel.cancel();
        following.await.unwrap();

        // `follow` stopped: the writer applies its change itself again.
        store.create_device(&device(WRITES)).await.unwrap();
        live.apply_change(Change::Device(format!("CSFapi{WRITES}")))
            .await
            .unwrap();
        assert!(directory.snapshot().device("csfapi30").is_some());
    }

    #[test]
    fn a_reload_or_missed_changes_make_the_batch_a_full_reload() {
        let (tx, mut rx) = tokio::sync::broadcast::channel(8);
        tx.send(Change::Device("a".into())).unwrap();
        tx.send(Change::Reload).unwrap();
        tx.send(Change::Device("b".into())).unwrap();
        let first = rx.try_recv().unwrap();
        let batch = Batch::drain(&mut rx, Some(first));
        assert!(batch.full && batch.keys && batch.changes.is_empty());

        // More queued than the channel holds: the receiver lagged.
        tx.send(Change::Device("c".into())).unwrap();
        let first = rx.try_recv().unwrap();
        for i in 0..20 {
            tx.send(Change::Device(format!("d{i}"))).unwrap();
        }
        let batch = Batch::drain(&mut rx, Some(first));
        assert!(batch.full && batch.keys);

        // Signing keys alone: keys reload, the directory applies incrementally.
        tx.send(Change::SigningKeys).unwrap();
        tx.send(Change::User("u".into())).unwrap();
        tx.send(Change::User("u".into())).unwrap();
        let first = rx.try_recv().unwrap();
        let batch = Batch::drain(&mut rx, Some(first));
        assert!(!batch.full && batch.keys);
        assert_eq!(
            batch.changes,
            vec![Change::SigningKeys, Change::User("u".into())],
            "repeats in a row are applied once"
        );
    }

    #[test]
    fn the_config_seeds_then_the_api_wins_until_the_config_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // New node: the config seeds it.
        assert_eq!(legacy_start_ports(d, None, (5060, 5061)), (5060, 5061));
        // Changed through the API, config unchanged: the stored ports stay.
        assert_eq!(
            legacy_start_ports(d, Some((5070, 5071)), (5060, 5061)),
            (5070, 5071)
        );
        // The config's sip_port edited since the last start: it wins; the other stays stored.
        assert_eq!(
            legacy_start_ports(d, Some((5070, 5071)), (5080, 5061)),
            (5080, 5071)
        );
        // And is the new baseline.
        assert_eq!(
            legacy_start_ports(d, Some((5090, 5071)), (5080, 5061)),
            (5090, 5071)
        );
    }
}
