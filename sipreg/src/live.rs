//! Applying changes live: every write through the API (or, later, another node) ends in [`Live::apply`],
//! which rebuilds the directory snapshot and opens, moves or closes listeners to match — no restart.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sipreg_registrar::{MraListener, SipOAuthListener};
use sipreg_store::{Change, Directory, Store};
use sipreg_tokensvc::KeyRing;
use tokio::sync::Mutex;
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
    // One apply at a time, so listener state follows the newest snapshot.
    serial: Mutex<()>,
}

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
        Live {
            store,
            directory,
            keys,
            oauth_listener,
            mra_listener: None,
            node_name,
            ip,
            reserved,
            serial: Mutex::new(()),
        }
    }

    /// Adds the MRA listener, which [`Live::apply`] then keeps in line with the store too.
    pub fn with_mra(mut self, mra: Arc<MraListener>) -> Self {
        self.mra_listener = Some(mra);
        self
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
        self.reserved
            .iter()
            .find(|(p, k)| *p == port && *k != own)
            .map(|(_, k)| *k)
    }

    /// The port this node's listener set by config key `key` holds, if it is one of them.
    pub fn reserved_port(&self, key: &str) -> Option<u16> {
        self.reserved
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(p, _)| *p)
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

    /// Reloads the directory and opens, moves or closes the SIP OAuth port to match the store.
    pub async fn apply(&self) -> Result<(), Problem> {
        let _one = self.serial.lock().await;
        self.directory.reload(self.store.as_ref()).await?;
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
        Ok(())
    }

    /// Follows store change notifications until cancelled (changes made outside this API).
    pub async fn follow(self: Arc<Self>, cancel: CancellationToken) {
        let mut rx = self.store.subscribe();
        loop {
            let change = tokio::select! {
                _ = cancel.cancelled() => return,
                c = rx.recv() => c,
            };
            let keys_changed = match change {
                // Reload: another node's change may have been missed (safety net, reconnect).
                Ok(Change::SigningKeys | Change::Reload) => true,
                Ok(_) => false,
                // Missed notifications: reload everything.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if keys_changed {
                if let Err(e) = self.keys.reload(self.store.as_ref()).await {
                    tracing::error!(error = %e, "reloading signing keys failed");
                }
            }
            if let Err(e) = self.apply().await {
                tracing::error!(detail = %e.detail, "applying a change failed");
            }
        }
    }
}
