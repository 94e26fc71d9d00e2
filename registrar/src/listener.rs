//! The TLS listener on the SIP OAuth port (`sipOAuthPort`, 5090 by default).
//!
//! Turning the listener off closes the listening socket and every live connection at once, which
//! is how "cluster OAuth mode off" refuses clients. Each accept takes the current
//! [`rustls::ServerConfig`] from an [`ArcSwap`], so a certificate swap applies to the next
//! handshake without a restart.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::conn::{accept_loop, StreamKind};
use crate::register::PortKind;
use crate::registrar::Registrar;

/// The SIP OAuth TLS listener; see the module docs.
pub struct SipOAuthListener {
    registrar: Arc<Registrar>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    running: tokio::sync::Mutex<Option<Running>>,
    local: Mutex<Option<SocketAddr>>,
}

impl std::fmt::Debug for SipOAuthListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipOAuthListener")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

struct Running {
    bind: SocketAddr,
    local: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "sip oauth accept loop ended abnormally");
        }
    }
}

impl SipOAuthListener {
    /// A listener that is not listening yet; call [`set`](Self::set).
    pub fn new(registrar: Arc<Registrar>, tls: Arc<ArcSwap<rustls::ServerConfig>>) -> Self {
        SipOAuthListener {
            registrar,
            tls,
            running: tokio::sync::Mutex::new(None),
            local: Mutex::new(None),
        }
    }

    /// `Some(addr)`: listen there (rebinding if the address changed; a no-op if it did not).
    /// `None`: close the listening socket and drop every live connection.
    pub async fn set(&self, bind: Option<SocketAddr>) -> io::Result<()> {
        let mut running = self.running.lock().await;
        let Some(bind) = bind else {
            if let Some(r) = running.take() {
                self.set_local(None);
                let addr = r.local;
                r.stop().await;
                tracing::info!(%addr, "sip oauth listener closed");
            }
            return Ok(());
        };
        if running.as_ref().is_some_and(|r| r.bind == bind) {
            return Ok(());
        }
        // Bind the new address before closing the old one, so a failed rebind keeps serving;
        // only when the old socket holds the port is it closed first.
        let listener = match TcpListener::bind(bind).await {
            Ok(l) => l,
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && running
                        .as_ref()
                        .is_some_and(|r| r.local.port() == bind.port()) =>
            {
                if let Some(r) = running.take() {
                    self.set_local(None);
                    r.stop().await;
                }
                TcpListener::bind(bind).await?
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = running.take() {
            r.stop().await;
        }
        let local = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            self.registrar.clone(),
            StreamKind::Tls(self.tls.clone()),
            PortKind::SipOAuth,
            cancel.clone(),
        ));
        *running = Some(Running {
            bind,
            local,
            cancel,
            task,
        });
        self.set_local(Some(local));
        tracing::info!(addr = %local, "sip oauth listener open");
        Ok(())
    }

    /// The address actually listened on (resolves port 0), `None` when closed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_local(&self, addr: Option<SocketAddr>) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }
}

impl Drop for SipOAuthListener {
    fn drop(&mut self) {
        // Without an async drop, cancelling is enough: the accept loop and connections exit.
        if let Ok(mut running) = self.running.try_lock() {
            if let Some(r) = running.take() {
                r.cancel.cancel();
            }
        }
    }
}
