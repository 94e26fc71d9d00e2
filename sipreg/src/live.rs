//! Applying changes live: every write through the API (or, later, another node) ends in [`Live::apply`],
//! which rebuilds the directory snapshot and opens or closes listeners to match — no restart.

use std::net::SocketAddr;
use std::sync::Arc;

use sipreg_registrar::SipOAuthListener;
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
    oauth_addr: SocketAddr,
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
        oauth_addr: SocketAddr,
    ) -> Self {
        Live {
            store,
            directory,
            keys,
            oauth_listener,
            oauth_addr,
            serial: Mutex::new(()),
        }
    }

    /// Reloads the directory and opens or closes the SIP OAuth port to match cluster OAuth mode.
    pub async fn apply(&self) -> Result<(), Problem> {
        let _one = self.serial.lock().await;
        self.directory.reload(self.store.as_ref()).await?;
        let want = self
            .directory
            .snapshot()
            .oauth_mode()
            .then_some(self.oauth_addr);
        if let Err(e) = self.oauth_listener.set(want).await {
            tracing::error!(addr = %self.oauth_addr, error = %e, "cannot open the SIP OAuth port");
            return Err(Problem::internal(format!(
                "cannot listen on the SIP OAuth port {}: {e}; free the port or change listen.sip_oauth_port",
                self.oauth_addr
            )));
        }
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
                Ok(Change::SigningKeys) => true,
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
