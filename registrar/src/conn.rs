//! One SIP stream connection (TCP or TLS), shared by every stream listener: admission against
//! the connection caps, the TLS handshake under its own cap and timeout, then read → frame →
//! answer until the peer leaves, a limit or timeout fires, or the listener is cancelled.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::framer::{Frame, FrameError, StreamFramer};
use crate::limits::ConnectionPermit;
use crate::location::Transport;
use crate::observe::{SipListener, TlsFailure};
use crate::register::{ConnectionFacts, PortKind};
use crate::registrar::{Answer, Registrar};

/// How long closing connections get to finish before they are aborted.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Read chunk size; the framer bounds what is kept.
// On the worker's stack only during a read (see `read_into`), never held by an idle connection,
// so it can be large enough for a burst of pipelined requests in one read.
const READ_CHUNK: usize = 16 * 1024;
/// Answers batched before a write even if more pipelined requests are waiting.
const MAX_BATCH: usize = 64 * 1024;

/// How far a connection's idle deadline may move later before its timer is re-armed; the
/// timer never fires late because of it (an early fire re-arms to the real deadline).
const TIMER_SLACK: Duration = Duration::from_secs(1);

/// Connection ids, unique for the process lifetime; 0 is never used (it means "no flow").
pub(crate) static NEXT_FLOW: AtomicU64 = AtomicU64::new(1);

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
    /// A message without anything to address a response to.
    #[error("unanswerable garbage")]
    Garbage,
}

/// What a stream listener serves: plain TCP or TLS with a live-swappable config.
#[derive(Clone)]
pub(crate) enum StreamKind {
    /// Plain TCP.
    Tcp,
    /// TLS; each accept takes the config current at that moment.
    Tls(Arc<ArcSwap<rustls::ServerConfig>>),
}

/// Accepts until `cancel` fires; connections refused by a cap are closed at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    registrar: Arc<Registrar>,
    kind: StreamKind,
    port: PortKind,
    cancel: CancellationToken,
) {
    accept_loop_until(listener, registrar, kind, port, cancel.clone(), cancel).await
}

/// Accepts until `stop` fires, then closes the listening socket but serves the connections
/// already accepted until they end or `cancel` fires (a port moved live keeps its clients).
pub(crate) async fn accept_loop_until(
    listener: TcpListener,
    registrar: Arc<Registrar>,
    kind: StreamKind,
    port: PortKind,
    stop: CancellationToken,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    // Bound to one address, every accepted socket's local address is that one: no
    // getsockname per connection. Only a wildcard bind has to ask.
    let fixed_local = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Refused: dropping the socket closes it; the gate counted and logged it.
                    let Ok(permit) = registrar.gate.admit(peer.ip()) else { continue };
                    let conn = Accepted { tcp, peer, local: fixed_local, _permit: permit };
                    connections.spawn(serve(
                        conn, registrar.clone(), kind.clone(), port, cancel.child_token(),
                    ));
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
    // Only accepting stopped: the connections run on until they end or are cancelled too.
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = async { while connections.join_next().await.is_some() {} } => {}
    }
    // Connections saw the cancellation; give them a moment to clean up, then abort the rest.
    let _ = timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

/// One accepted connection, admitted by the gate.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    /// The local address when the listener already knows it.
    local: Option<SocketAddr>,
    _permit: ConnectionPermit,
}

async fn serve(
    conn: Accepted,
    registrar: Arc<Registrar>,
    kind: StreamKind,
    port: PortKind,
    cancel: CancellationToken,
) {
    let Accepted {
        tcp,
        peer,
        local,
        _permit,
    } = conn;
    let local = match local {
        Some(a) => a,
        None => match tcp.local_addr() {
            Ok(a) => a,
            Err(_) => return,
        },
    };
    let _ = tcp.set_nodelay(true);
    let cfg = &registrar.config;
    let facts = |transport| ConnectionFacts {
        remote: peer,
        local,
        flow: NEXT_FLOW.fetch_add(1, Ordering::Relaxed),
        transport,
        port,
    };
    match kind {
        StreamKind::Tcp => {
            let mut stream = tcp;
            run(&mut stream, &registrar, &facts(Transport::Tcp), &cancel).await;
        }
        StreamKind::Tls(tls) => {
            let listener = match port {
                PortKind::SipOAuth => SipListener::OAuth,
                PortKind::Legacy => SipListener::Tls,
            };
            let Ok(handshake) = registrar.gate.handshake() else {
                return;
            };
            // The config current at this accept: a certificate swap applies to new handshakes.
            let acceptor = TlsAcceptor::from(tls.load_full());
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                r = timeout(cfg.handshake_timeout, acceptor.accept(tcp)) => r,
            };
            drop(handshake);
            let mut stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    registrar.stats.tls_failure(listener, TlsFailure::of_io(&e));
                    tracing::debug!(remote = %peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    registrar.stats.timeout();
                    registrar
                        .stats
                        .tls_failure(listener, TlsFailure::HandshakeTimeout);
                    tracing::debug!(remote = %peer, "tls handshake timed out");
                    return;
                }
            };
            run(&mut stream, &registrar, &facts(Transport::Tls), &cancel).await;
        }
    }
}

pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    registrar: &Registrar,
    facts: &ConnectionFacts,
    cancel: &CancellationToken,
) {
    run_on(stream, registrar, facts, SipListener::of(facts), cancel).await
}

/// [`run`] for a listener its connection facts do not tell apart (MRA), for the metrics.
pub(crate) async fn run_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    registrar: &Registrar,
    facts: &ConnectionFacts,
    listener: SipListener,
    cancel: &CancellationToken,
) {
    let peer = facts.remote;
    match read_loop(stream, registrar, facts, listener, cancel).await {
        Ok(()) => tracing::debug!(remote = %peer, "connection closed"),
        Err(e) => {
            match &e {
                ConnectionError::Frame(_) | ConnectionError::Garbage => {
                    registrar.stats.frame_error()
                }
                ConnectionError::Timeout => registrar.stats.timeout(),
                ConnectionError::Io(_) => {}
            }
            tracing::debug!(remote = %peer, error = %e, "connection dropped");
        }
    }
    registrar.connection_closed(facts);
    let _ = timeout(DRAIN_TIMEOUT, stream.shutdown()).await;
}

/// Reads, frames and answers until the peer closes, an error, a timeout or cancellation.
async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    registrar: &Registrar,
    facts: &ConnectionFacts,
    listener: SipListener,
    cancel: &CancellationToken,
) -> Result<(), ConnectionError> {
    let cfg = &registrar.config;
    let mut framer = StreamFramer::new(cfg.max_message_size);
    let mut partial_since: Option<Instant> = None;
    // One timer and one cancellation waiter for the connection's life, not a fresh timer
    // registration per request: the timer is moved only when the deadline gets earlier or
    // later by more than `TIMER_SLACK`; when it fires before the real deadline it is re-armed
    // (so a timeout is never early, and late only by the timer wheel's resolution).
    let timer = tokio::time::sleep(cfg.header_timeout);
    tokio::pin!(timer);
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        // Every answer to what one read brought (pipelined requests) goes out in one write and
        // one flush: one TLS record and one syscall instead of one per message.
        let mut out: Vec<u8> = Vec::new();
        let mut garbage = false;
        while let Some(frame) = framer.next_frame()? {
            match frame {
                // RFC 5626 §4.4.1: answer a ping with a single CRLF at once.
                Frame::KeepAlivePing => out.extend_from_slice(b"\r\n"),
                Frame::Message(m) => {
                    match registrar.answer_on(&m, facts, listener, crate::registrar::unix_now()) {
                        // The usual single answer is moved, not copied.
                        Answer::Send(b) if out.is_empty() => out = b,
                        Answer::Send(b) => out.extend_from_slice(&b),
                        Answer::Nothing => {}
                        Answer::Close => {
                            garbage = true;
                            break;
                        }
                    }
                }
            }
            // Bounded: a long pipeline is flushed in pieces.
            if out.len() >= MAX_BATCH {
                write_out(stream, &out, cfg.header_timeout).await?;
                out.clear();
            }
        }
        if !out.is_empty() {
            write_out(stream, &out, cfg.header_timeout).await?;
        }
        if garbage {
            // The answers before it are out; nothing can be addressed to the garbage.
            return Err(ConnectionError::Garbage);
        }
        drop(out);
        // A started message must complete within header_timeout (slow-loris); otherwise the
        // connection may idle up to idle_timeout.
        partial_since = if framer.buffered() > 0 {
            partial_since.or_else(|| Some(Instant::now()))
        } else {
            None
        };
        let deadline = match partial_since {
            Some(t) => t + cfg.header_timeout,
            // Read per wait from the live snapshot: max_expires is a cluster setting.
            None => Instant::now() + cfg.idle_timeout_for(&registrar.directory.snapshot()),
        };
        if deadline < timer.deadline() || deadline > timer.deadline() + TIMER_SLACK {
            timer.as_mut().reset(deadline);
        }
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return Ok(()),
                r = read_into(stream, &mut framer) => match r {
                    Ok(0) => return Ok(()),
                    Ok(_) => break,
                    Err(e) => return Err(e),
                },
                _ = &mut timer => {
                    if Instant::now() >= deadline {
                        return Err(ConnectionError::Timeout);
                    }
                    // Fired at a deadline that has moved on since: wait for the real one.
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

/// Writes one batch of answers and flushes it, within `limit`.
async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &[u8],
    limit: Duration,
) -> Result<(), ConnectionError> {
    let write = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    tokio::pin!(write);
    // The usual answer fits the socket buffer and completes on the first poll: no timer is
    // registered for it. Only a write that has to wait for the peer runs under `limit`.
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(r) => r?,
        Poll::Pending => timeout(limit, write)
            .await
            .map_err(|_| ConnectionError::Timeout)??,
    }
    Ok(())
}

/// Reads once from `stream` into `framer`; `Ok(0)` at end of stream.
///
/// The chunk is a local of the poll, on the worker's stack only while the read runs: an idle
/// connection's task holds no read buffer at all (a held 4 KiB buffer is 400 MiB for 100k
/// connections). What is kept between reads is only a partial message, in the framer.
async fn read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    framer: &mut StreamFramer,
) -> Result<usize, ConnectionError> {
    std::future::poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(())) => {
                let got = rb.filled();
                Poll::Ready(framer.push(got).map(|()| got.len()).map_err(Into::into))
            }
        }
    })
    .await
}
