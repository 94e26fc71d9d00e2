//! The legacy SIP ports, as Unified CM has them when OAuth mode is off: UDP and TCP (5060) and
//! TLS (5061), each optional, all authenticating with Digest ([`PortKind::Legacy`]).
//!
//! UDP is bounded: datagrams above `max_message_size` are dropped by the framer, at most
//! `udp_workers` are handled at once (more are dropped and counted), and a response larger than
//! `udp_mtu` is not sent (logged and counted). Responses go where RFC 3261 §18.2.2 and RFC 3581
//! say: the `received` address with the `rport` port when asked, else the sent-by port.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::conn::{accept_loop, StreamKind, DRAIN_TIMEOUT};
use crate::framer::frame_datagram;
use crate::limits::Limit;
use crate::location::Transport;
use crate::message::Via;
use crate::register::{ConnectionFacts, PortKind};
use crate::registrar::Registrar;

/// Largest UDP datagram we read (the IPv4 maximum payload).
const MAX_DATAGRAM: usize = 65_535;

/// Where the legacy ports listen; `None` switches one off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacyAddrs {
    /// SIP over UDP (usually `0.0.0.0:5060`).
    pub udp: Option<SocketAddr>,
    /// SIP over TCP (usually `0.0.0.0:5060`).
    pub tcp: Option<SocketAddr>,
    /// SIP over TLS (usually `0.0.0.0:5061`); needs a TLS config.
    pub tls: Option<SocketAddr>,
}

/// Why the legacy listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// Binding a socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A TLS port was asked for without a TLS config.
    #[error("legacy tls port {0} needs a tls server config")]
    NoTlsConfig(SocketAddr),
}

/// The running legacy listeners; [`shutdown`](Self::shutdown) (or drop) stops them.
pub struct LegacyListeners {
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for LegacyListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyListeners")
            .field("udp", &self.udp)
            .field("tcp", &self.tcp)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl LegacyListeners {
    /// Binds every configured port (all or none) and starts serving. `tls` is the live TLS
    /// config of the secure legacy port (a swap applies to the next handshake).
    pub async fn start(
        registrar: Arc<Registrar>,
        addrs: &LegacyAddrs,
        tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    ) -> Result<LegacyListeners, LegacyError> {
        let bind_err = |addr| move |source| LegacyError::Bind { addr, source };
        let udp = match addrs.udp {
            Some(a) => Some(UdpSocket::bind(a).await.map_err(bind_err(a))?),
            None => None,
        };
        let tcp = match addrs.tcp {
            Some(a) => Some(TcpListener::bind(a).await.map_err(bind_err(a))?),
            None => None,
        };
        let tls_listener = match (addrs.tls, &tls) {
            (Some(a), Some(_)) => Some(TcpListener::bind(a).await.map_err(bind_err(a))?),
            (Some(a), None) => return Err(LegacyError::NoTlsConfig(a)),
            (None, _) => None,
        };
        let local = |r: io::Result<SocketAddr>, a: SocketAddr| r.map_err(bind_err(a));
        let cancel = CancellationToken::new();
        let mut out = LegacyListeners {
            udp: None,
            tcp: None,
            tls: None,
            cancel: cancel.clone(),
            tasks: Vec::new(),
        };
        if let (Some(sock), Some(a)) = (udp, addrs.udp) {
            out.udp = Some(local(sock.local_addr(), a)?);
            out.tasks.push(tokio::spawn(udp_loop(
                Arc::new(sock),
                registrar.clone(),
                cancel.child_token(),
            )));
        }
        if let (Some(l), Some(a)) = (tcp, addrs.tcp) {
            out.tcp = Some(local(l.local_addr(), a)?);
            out.tasks.push(tokio::spawn(accept_loop(
                l,
                registrar.clone(),
                StreamKind::Tcp,
                PortKind::Legacy,
                cancel.child_token(),
            )));
        }
        if let (Some(l), Some(a), Some(cfg)) = (tls_listener, addrs.tls, tls) {
            out.tls = Some(local(l.local_addr(), a)?);
            out.tasks.push(tokio::spawn(accept_loop(
                l,
                registrar.clone(),
                StreamKind::Tls(cfg),
                PortKind::Legacy,
                cancel.child_token(),
            )));
        }
        tracing::info!(udp = ?out.udp, tcp = ?out.tcp, tls = ?out.tls, "legacy sip listeners open");
        Ok(out)
    }

    /// The UDP address actually bound (resolves port 0).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
    }

    /// The TCP address actually bound.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The TLS address actually bound.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// Closes every legacy socket and connection and waits for the tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "legacy listener ended abnormally");
            }
        }
        tracing::info!("legacy sip listeners closed");
    }
}

impl Drop for LegacyListeners {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn udp_loop(sock: Arc<UdpSocket>, registrar: Arc<Registrar>, cancel: CancellationToken) {
    let workers = Arc::new(Semaphore::new(registrar.config.udp_workers.max(1)));
    let local = sock.local_addr().ok();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut tasks = JoinSet::new();
    loop {
        let (n, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable surfaces here on some systems; keep serving.
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        let Ok(permit) = workers.clone().try_acquire_owned() else {
            registrar
                .stats
                .limit_hit(Limit::UdpWorkers, registrar.config.udp_workers);
            continue;
        };
        let datagram = buf[..n].to_vec();
        let (sock, registrar) = (sock.clone(), registrar.clone());
        let local = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        tasks.spawn(async move {
            let _permit = permit;
            let facts = ConnectionFacts {
                remote: peer,
                local,
                flow: 0,
                transport: Transport::Udp,
                port: PortKind::Legacy,
            };
            if let Some((out, to)) = answer_datagram(&registrar, &datagram, &facts) {
                if let Err(e) = sock.send_to(&out, to).await {
                    tracing::debug!(%to, error = %e, "udp send failed");
                }
            }
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

/// The response to one datagram and where it goes; `None` when nothing is sent.
pub(crate) fn answer_datagram(
    registrar: &Registrar,
    datagram: &[u8],
    facts: &ConnectionFacts,
) -> Option<(Vec<u8>, SocketAddr)> {
    let out = match frame_datagram(datagram, registrar.config.max_message_size) {
        Ok(None) => return None,
        Ok(Some(msg)) => registrar.handle(msg, facts),
        // RFC 3261 §18.3: a request whose body is shorter than announced gets 400.
        Err(e) => registrar.reject(datagram, facts, &e.to_string()),
    };
    if out.is_empty() {
        return None;
    }
    if out.len() > registrar.config.udp_mtu {
        registrar.stats.udp_too_large();
        tracing::warn!(remote = %facts.remote, size = out.len(), mtu = registrar.config.udp_mtu, "response too large for udp, not sent");
        return None;
    }
    Some((out.clone(), reply_addr(&out, facts.remote)))
}

/// RFC 3261 §18.2.2: the response's top Via (already stamped with `received`/`rport`) says
/// where it goes.
fn reply_addr(response: &[u8], remote: SocketAddr) -> SocketAddr {
    let text = String::from_utf8_lossy(response);
    text.split("\r\n")
        .find_map(|l| l.strip_prefix("Via: "))
        .and_then(Via::parse)
        .map(|v| v.response_addr(remote))
        .unwrap_or(remote)
}
