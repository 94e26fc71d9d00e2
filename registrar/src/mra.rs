//! The mutual-TLS listener on the SIP MRA OAuth port (`sipMRAOAuthPort`, 5091 by default), where
//! edge proxies (Expressway-C, or Kamailio/OpenSIPS doing the same job) relay their users'
//! REGISTERs.
//!
//! A handshake succeeds only for a client certificate [`EdgeTrust`] accepts (chain verified by
//! webpki against the trust store, then CN/SAN matched against the registered edges). REGISTERs
//! on an edge connection are processed exactly as on the SIP OAuth port: each carries its user's
//! Bearer token, and the edge's `Path` is stored and echoed. Edge connections carry many users,
//! so they are admitted by their own [`MraLimits`], apart from the per-client caps of the other
//! ports. Every live edge connection is tracked with its certificate chain; [`MraListener::update`]
//! re-judges them when the trust store or the edge list changes and closes those no longer
//! trusted at once.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use sipreg_store::Edge;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::conn::{run_on, DRAIN_TIMEOUT, NEXT_FLOW};
use crate::edge_trust::{EdgeTrust, EdgeTrustError, PeerNames};
use crate::limits::{ConnectionGate, ConnectionPermit, Stats, StatsSnapshot};
use crate::location::Transport;
use crate::observe::{SipListener, TlsFailure};
use crate::register::{ConnectionFacts, PortKind};
use crate::registrar::Registrar;
use crate::slot::ListenerSlot;

/// Errors setting up the MRA listener.
#[derive(Debug, thiserror::Error)]
pub enum MraError {
    /// The TLS configuration could not be built.
    #[error("mra tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Admission caps of the MRA port, separate from the other SIP ports' so that one edge carrying
/// thousands of users is not throttled as a single client would be (0 = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MraLimits {
    /// Open edge connections in total. Default 1000.
    pub max_connections: usize,
    /// Open connections from one edge address. Default 100 (an edge may pool connections).
    pub max_connections_per_ip: usize,
    /// Edge TLS handshakes in flight. Default 64.
    pub max_tls_handshakes: usize,
}

impl Default for MraLimits {
    fn default() -> Self {
        MraLimits {
            max_connections: 1000,
            max_connections_per_ip: 100,
            max_tls_handshakes: 64,
        }
    }
}

/// One live, trusted edge connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeConnection {
    /// Connection (flow) id.
    pub id: u64,
    /// The edge's address.
    pub remote: SocketAddr,
    /// Host of the edge entry it was accepted as.
    pub edge: String,
    /// The presented name that matched.
    pub matched: String,
    /// Every name the certificate presents.
    pub names: PeerNames,
}

struct LiveConn {
    info: EdgeConnection,
    chain: Vec<CertificateDer<'static>>,
    cancel: CancellationToken,
}

/// Serves whatever certificate the shared server config holds now, so a swapped server
/// certificate applies to the next MRA handshake too.
#[derive(Debug)]
struct LiveCert(Arc<ArcSwap<rustls::ServerConfig>>);

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().cert_resolver.resolve(hello)
    }
}

/// What the accept loop and its connections share.
struct Shared {
    registrar: Arc<Registrar>,
    trust: Arc<EdgeTrust>,
    tls: Arc<rustls::ServerConfig>,
    gate: Arc<ConnectionGate>,
    gate_stats: Arc<Stats>,
    live: DashMap<u64, LiveConn>,
}

/// The MRA mutual-TLS listener; see the module docs.
pub struct MraListener {
    shared: Arc<Shared>,
    slot: ListenerSlot,
}

impl std::fmt::Debug for MraListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MraListener")
            .field("local_addr", &self.local_addr())
            .field("edges_connected", &self.shared.live.len())
            .finish_non_exhaustive()
    }
}

impl MraListener {
    /// A listener that is not listening yet, presenting the certificate currently in
    /// `server_tls` (the one the SIP OAuth port and HTTPS use) and trusting nothing until
    /// [`update`](Self::update) gives it anchors and edges.
    pub fn new(
        registrar: Arc<Registrar>,
        server_tls: Arc<ArcSwap<rustls::ServerConfig>>,
        limits: MraLimits,
    ) -> Result<Self, MraError> {
        let trust = Arc::new(EdgeTrust::new());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(trust.verifier())
            .with_cert_resolver(Arc::new(LiveCert(server_tls)));
        // No resumption: a resumed session skips the client certificate check, and an edge
        // removed since must not get back in that way.
        tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        tls.send_tls13_tickets = 0;
        let gate_stats = Arc::new(Stats::default());
        let gate = Arc::new(ConnectionGate::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_tls_handshakes,
            gate_stats.clone(),
        ));
        Ok(MraListener {
            shared: Arc::new(Shared {
                registrar,
                trust,
                tls: Arc::new(tls),
                gate,
                gate_stats,
                live: DashMap::new(),
            }),
            slot: ListenerSlot::new("sip mra oauth (mutual tls)"),
        })
    }

    /// The live trust state (anchors, edges, counters).
    pub fn trust(&self) -> &EdgeTrust {
        &self.shared.trust
    }

    /// Connection counters of the MRA port alone.
    pub fn connection_stats(&self) -> StatsSnapshot {
        self.shared.gate_stats.snapshot()
    }

    /// Live trusted edge connections, by id.
    pub fn connections(&self) -> Vec<EdgeConnection> {
        let mut v: Vec<EdgeConnection> = self.shared.live.iter().map(|c| c.info.clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Sets the trust anchors (PEM texts of the trust store) and the registered edges, then
    /// closes every live edge connection they no longer trust. Returns how many were closed.
    /// A bad anchor leaves the old anchors in place (the error says which); edges apply anyway.
    pub fn update(&self, anchors: &[String], edges: Vec<Edge>) -> Result<usize, EdgeTrustError> {
        let anchors_changed = self.shared.trust.set_anchors(anchors);
        let edges_changed = self.shared.trust.set_edges(edges);
        let closed = if edges_changed || matches!(anchors_changed, Ok(true)) {
            self.recheck()
        } else {
            0
        };
        anchors_changed.map(|_| closed)
    }

    /// Re-judges every live edge connection against the current anchors and edges; closes
    /// (at once) those that fail. Returns how many were closed.
    pub fn recheck(&self) -> usize {
        let now = UnixTime::now();
        let mut closed = 0;
        for c in self.shared.live.iter() {
            let Some((ee, rest)) = c.chain.split_first() else {
                continue;
            };
            if let Err(reason) = self.shared.trust.check(ee, rest, now) {
                if !c.cancel.is_cancelled() {
                    c.cancel.cancel();
                    self.shared.trust.stats().closed_on_change();
                    closed += 1;
                    tracing::warn!(
                        remote = %c.info.remote, edge = %c.info.edge, presented = %c.info.names,
                        reason = %reason, "closing edge connection: no longer trusted"
                    );
                }
            }
        }
        closed
    }

    /// `Some(addr)`: listen there (rebinding if the address changed; a no-op if it did not).
    /// `None`: close the listening socket and drop every edge connection.
    pub async fn set(&self, bind: Option<SocketAddr>) -> io::Result<()> {
        let shared = self.shared.clone();
        self.slot
            .set(bind, move |listener, cancel| {
                tokio::spawn(accept_loop(listener, shared, cancel))
            })
            .await
    }

    /// The address actually listened on (resolves port 0), `None` when closed.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.slot.local_addr()
    }
}

impl Drop for MraListener {
    fn drop(&mut self) {
        self.slot.cancel_now();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = shared.gate.admit(peer.ip()) else { continue };
                    connections.spawn(serve(tcp, peer, permit, shared.clone(), cancel.child_token()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "mra accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

/// Logs a failed handshake once: certificate refusals were logged (with the presented names) by
/// the verifier; a missing certificate is logged and counted here.
fn handshake_failed(shared: &Shared, peer: SocketAddr, e: &io::Error) {
    shared
        .registrar
        .stats
        .tls_failure(SipListener::Mra, TlsFailure::of_io(e));
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::NoCertificatesPresented) => {
            shared.trust.stats().no_certificate();
            tracing::warn!(remote = %peer, presented = "none", reason = "no client certificate", "mra client refused");
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            tracing::debug!(remote = %peer, error = %e, "mra handshake refused");
        }
        _ => tracing::debug!(remote = %peer, error = %e, "mra handshake failed"),
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: ConnectionPermit,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let Ok(local) = tcp.local_addr() else { return };
    let _ = tcp.set_nodelay(true);
    let registrar = &shared.registrar;
    let Ok(handshake) = shared.gate.handshake() else {
        return;
    };
    let acceptor = TlsAcceptor::from(shared.tls.clone());
    let accepted = tokio::select! {
        _ = cancel.cancelled() => return,
        r = timeout(registrar.config.handshake_timeout, acceptor.accept(tcp)) => r,
    };
    drop(handshake);
    let mut stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return handshake_failed(&shared, peer, &e),
        Err(_) => {
            registrar.stats.timeout();
            registrar
                .stats
                .tls_failure(SipListener::Mra, TlsFailure::HandshakeTimeout);
            tracing::debug!(remote = %peer, "mra tls handshake timed out");
            return;
        }
    };
    let chain: Vec<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
        .unwrap_or_default();
    let Some((ee, rest)) = chain.split_first() else {
        return;
    };
    let names = PeerNames::from_der(ee.as_ref());
    let accepted = match shared.trust.check(ee, rest, UnixTime::now()) {
        Ok(a) => a,
        Err(reason) => {
            // Anchors or edges changed during the handshake.
            let why = match reason {
                crate::edge_trust::Refusal::NotRegistered => TlsFailure::EdgeNotRegistered,
                _ => TlsFailure::UntrustedChain,
            };
            registrar.stats.tls_failure(SipListener::Mra, why);
            tracing::warn!(remote = %peer, presented = %names, reason = %reason, "mra client refused after handshake");
            return;
        }
    };
    let id = NEXT_FLOW.fetch_add(1, Ordering::Relaxed);
    let conn_cancel = cancel.child_token();
    shared.live.insert(
        id,
        LiveConn {
            info: EdgeConnection {
                id,
                remote: peer,
                edge: accepted.edge.clone(),
                matched: accepted.matched.clone(),
                names,
            },
            chain: chain.clone(),
            cancel: conn_cancel.clone(),
        },
    );
    // A change applied between the check above and the insert would not have seen this
    // connection: judge it once more now that a recheck would.
    if shared.trust.check(ee, rest, UnixTime::now()).is_err() {
        conn_cancel.cancel();
    }
    tracing::info!(remote = %peer, edge = %accepted.edge, matched = %accepted.matched, "edge connected");
    let facts = ConnectionFacts {
        remote: peer,
        local,
        flow: id,
        transport: Transport::Tls,
        // Bearer tokens, validated exactly as on the SIP OAuth port.
        port: PortKind::SipOAuth,
    };
    run_on(
        &mut stream,
        registrar,
        &facts,
        SipListener::Mra,
        &conn_cancel,
    )
    .await;
    shared.live.remove(&id);
    tracing::info!(remote = %peer, edge = %accepted.edge, "edge disconnected");
}

#[cfg(test)]
mod tests;
