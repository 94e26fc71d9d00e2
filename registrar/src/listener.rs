//! The TLS listener on the SIP OAuth port (`sipOAuthPort`, 5090 by default).
//!
//! Turning the listener off closes the listening socket and every live connection at once, which
//! is how "cluster OAuth mode off" refuses clients. Each accept takes the current
//! [`rustls::ServerConfig`] from an [`ArcSwap`], so a certificate swap applies to the next
//! handshake without a restart.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::conn::{accept_loop, StreamKind};
use crate::register::PortKind;
use crate::registrar::Registrar;
use crate::slot::ListenerSlot;

/// The SIP OAuth TLS listener; see the module docs.
pub struct SipOAuthListener {
    registrar: Arc<Registrar>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    slot: ListenerSlot,
}

impl std::fmt::Debug for SipOAuthListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipOAuthListener")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl SipOAuthListener {
    /// A listener that is not listening yet; call [`set`](Self::set).
    pub fn new(registrar: Arc<Registrar>, tls: Arc<ArcSwap<rustls::ServerConfig>>) -> Self {
        SipOAuthListener {
            registrar,
            tls,
            slot: ListenerSlot::new("sip oauth"),
        }
    }

    /// `Some(addr)`: listen there (rebinding if the address changed; a no-op if it did not).
    /// `None`: close the listening socket and drop every live connection.
    pub async fn set(&self, bind: Option<SocketAddr>) -> io::Result<()> {
        let registrar = self.registrar.clone();
        let tls = self.tls.clone();
        self.slot
            .set(bind, move |listener, cancel| {
                tokio::spawn(accept_loop(
                    listener,
                    registrar,
                    StreamKind::Tls(tls),
                    PortKind::SipOAuth,
                    cancel,
                ))
            })
            .await
    }

    /// The address actually listened on (resolves port 0), `None` when closed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.slot.local_addr()
    }
}

impl Drop for SipOAuthListener {
    fn drop(&mut self) {
        // Without an async drop, cancelling is enough: the accept loop and connections exit.
        self.slot.cancel_now();
    }
}
