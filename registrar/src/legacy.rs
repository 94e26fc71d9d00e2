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
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::conn::{accept_loop_until, StreamKind, DRAIN_TIMEOUT};
use crate::framer::frame_datagram;
use crate::limits::Limit;
use crate::location::Transport;
use crate::message::Via;
use crate::register::{ConnectionFacts, PortKind};
use crate::registrar::Registrar;
use crate::slot::{ListenerSlot, Slot};

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

/// Why a legacy listener could not open or move.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// Binding a socket failed.
    #[error("cannot listen on {addr} ({transport}): {source}")]
    Bind {
        /// `udp`, `tcp` or `tls`.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A TLS port was asked for without a TLS config.
    #[error("legacy tls port {0} needs a tls server config")]
    NoTlsConfig(SocketAddr),
}

impl LegacyError {
    /// `udp`, `tcp` or `tls`: the listener that failed.
    pub fn transport(&self) -> &'static str {
        match self {
            LegacyError::Bind { transport, .. } => transport,
            LegacyError::NoTlsConfig(_) => "tls",
        }
    }
}

/// The legacy listeners, each a movable slot: [`set`](Self::set) opens, moves or closes each to
/// match a [`LegacyAddrs`], binding a new port before the old one closes (a failed move keeps the
/// old port serving). A moved TCP or TLS port stops accepting while the connections it already
/// has stay until they leave; [`shutdown`](Self::shutdown) (or drop) closes everything.
pub struct LegacyListeners {
    registrar: Arc<Registrar>,
    tls_config: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    udp: Slot<UdpSocket>,
    tcp: ListenerSlot,
    tls: ListenerSlot,
}

impl std::fmt::Debug for LegacyListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyListeners")
            .field("udp", &self.udp_addr())
            .field("tcp", &self.tcp_addr())
            .field("tls", &self.tls_addr())
            .finish_non_exhaustive()
    }
}

impl LegacyListeners {
    /// Legacy listeners that listen nowhere yet; call [`set`](Self::set). `tls` is the live TLS
    /// config of the secure legacy port (a swap applies to the next handshake).
    pub fn new(
        registrar: Arc<Registrar>,
        tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    ) -> LegacyListeners {
        LegacyListeners {
            registrar,
            tls_config: tls,
            udp: Slot::new("sip legacy udp"),
            tcp: ListenerSlot::new("sip legacy tcp"),
            tls: ListenerSlot::new("sip legacy tls"),
        }
    }

    /// Binds every configured port (all or none) and starts serving.
    pub async fn start(
        registrar: Arc<Registrar>,
        addrs: &LegacyAddrs,
        tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    ) -> Result<LegacyListeners, LegacyError> {
        let out = LegacyListeners::new(registrar, tls);
        // On an error `out` drops here, closing what did open.
        out.set(addrs).await?;
        Ok(out)
    }

    /// Opens, moves or closes each listener to match `addrs` (`None` closes one; an unchanged
    /// address is a no-op). Stops at the first failure, which leaves that listener where it was.
    pub async fn set(&self, addrs: &LegacyAddrs) -> Result<(), LegacyError> {
        if let (Some(a), None) = (addrs.tls, &self.tls_config) {
            return Err(LegacyError::NoTlsConfig(a));
        }
        let bind_err = |transport, addr: Option<SocketAddr>| {
            move |source| LegacyError::Bind {
                transport,
                addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            }
        };
        let registrar = self.registrar.clone();
        self.udp
            .set(addrs.udp, move |sock, cancel| {
                tokio::spawn(udp_loop(Arc::new(sock), registrar, cancel))
            })
            .await
            .map_err(bind_err("udp", addrs.udp))?;
        let registrar = self.registrar.clone();
        self.tcp
            .set_keeping(addrs.tcp, move |l, stop, cancel| {
                tokio::spawn(accept_loop_until(
                    l,
                    registrar,
                    StreamKind::Tcp,
                    PortKind::Legacy,
                    stop,
                    cancel,
                ))
            })
            .await
            .map_err(bind_err("tcp", addrs.tcp))?;
        let registrar = self.registrar.clone();
        let cfg = self.tls_config.clone();
        self.tls
            .set_keeping(addrs.tls, move |l, stop, cancel| match cfg {
                Some(cfg) => tokio::spawn(accept_loop_until(
                    l,
                    registrar,
                    StreamKind::Tls(cfg),
                    PortKind::Legacy,
                    stop,
                    cancel,
                )),
                // Unreachable (checked above); an idle task keeps the types simple.
                None => tokio::spawn(async move {
                    drop(l);
                }),
            })
            .await
            .map_err(bind_err("tls", addrs.tls))?;
        tracing::debug!(udp = ?self.udp_addr(), tcp = ?self.tcp_addr(), tls = ?self.tls_addr(), "legacy sip listeners set");
        Ok(())
    }

    /// The UDP address actually bound (resolves port 0).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.local_addr()
    }

    /// The TCP address actually bound.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The TLS address actually bound.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.local_addr()
    }

    /// Closes every legacy socket and connection and waits for the tasks.
    pub async fn shutdown(&self) {
        // Closing cannot fail: no socket is bound.
        let _ = self.set(&LegacyAddrs::default()).await;
        tracing::info!("legacy sip listeners closed");
    }
}

impl Drop for LegacyListeners {
    fn drop(&mut self) {
        self.udp.cancel_now();
        self.tcp.cancel_now();
        self.tls.cancel_now();
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
