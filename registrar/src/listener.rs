//! The TLS listener on the SIP OAuth port (`sipOAuthPort`, 5090 by default).
//!
//! Turning the listener off closes the listening socket and every live connection at once, which
//! is how "cluster OAuth mode off" refuses clients. Each accept takes the current
//! [`rustls::ServerConfig`] from an [`ArcSwap`], so a certificate swap applies to the next
//! handshake without a restart.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::framer::{Frame, FrameError, StreamFramer};
use crate::register::ConnectionFacts;
use crate::registrar::Registrar;

/// How long closing connections get to finish before they are aborted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Read chunk size; the framer bounds what is kept.
const READ_CHUNK: usize = 16 * 1024;

/// Connection ids, unique for the process lifetime.
static NEXT_FLOW: AtomicU64 = AtomicU64::new(1);

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    /// The stream could not be framed.
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// Socket or TLS error.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// Idle, header or write timeout.
    #[error("timeout")]
    Timeout,
}

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
            self.tls.clone(),
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

async fn accept_loop(
    listener: TcpListener,
    registrar: Arc<Registrar>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(serve(tcp, peer, registrar.clone(), tls.clone(), cancel.child_token()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Connections saw the cancellation; give them a moment to clean up, then abort the rest.
    let _ = timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    registrar: Arc<Registrar>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    cancel: CancellationToken,
) {
    let Ok(local) = tcp.local_addr() else { return };
    let cfg = &registrar.config;
    // The config current at this accept: a certificate swap applies to new handshakes.
    let acceptor = TlsAcceptor::from(tls.load_full());
    let mut stream = tokio::select! {
        _ = cancel.cancelled() => return,
        r = timeout(cfg.handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(remote = %peer, error = %e, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(remote = %peer, "tls handshake timed out");
                return;
            }
        },
    };
    let facts = ConnectionFacts {
        remote: peer,
        local,
        flow: NEXT_FLOW.fetch_add(1, Ordering::Relaxed),
    };
    match read_loop(&mut stream, &registrar, &facts, &cancel).await {
        Ok(()) => tracing::debug!(remote = %peer, "connection closed"),
        Err(e) => tracing::debug!(remote = %peer, error = %e, "connection dropped"),
    }
    registrar.connection_closed(&facts);
    let _ = timeout(DRAIN_TIMEOUT, stream.shutdown()).await;
}

/// Reads, frames and answers until the peer closes, an error, a timeout or cancellation.
async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    registrar: &Registrar,
    facts: &ConnectionFacts,
    cancel: &CancellationToken,
) -> Result<(), ConnectionError> {
    let cfg = &registrar.config;
    let mut framer = StreamFramer::new(cfg.max_message_size);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut partial_since: Option<Instant> = None;
    loop {
        while let Some(frame) = framer.next_frame()? {
            let out = match frame {
                // RFC 5626 §4.4.1: answer a ping with a single CRLF at once.
                Frame::KeepAlivePing => b"\r\n".to_vec(),
                Frame::Message(m) => registrar.handle(&m, facts),
            };
            if !out.is_empty() {
                timeout(cfg.header_timeout, async {
                    stream.write_all(&out).await?;
                    stream.flush().await
                })
                .await
                .map_err(|_| ConnectionError::Timeout)??;
            }
        }
        // A started message must complete within header_timeout (slow-loris); otherwise the
        // connection may idle up to idle_timeout.
        partial_since = if framer.buffered() > 0 {
            partial_since.or_else(|| Some(Instant::now()))
        } else {
            None
        };
        let deadline = match partial_since {
            Some(t) => t + cfg.header_timeout,
            None => Instant::now() + cfg.idle_timeout,
        };
        let n = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = timeout_at(deadline, stream.read(&mut buf)) => match r {
                Err(_) => return Err(ConnectionError::Timeout),
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(e.into()),
            },
        };
        framer.push(&buf[..n])?;
    }
}
