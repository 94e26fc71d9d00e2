//! One movable listening socket: open, move or close it live, binding the new address before the
//! old one closes so a failed move keeps serving. Shared by the SIP OAuth and MRA listeners and
//! the legacy UDP, TCP and TLS listeners.
//!
//! A move either closes the old socket together with its connections ([`Slot::set`]) or only
//! stops accepting on it and lets the connections already accepted run on until they end or the
//! slot closes ([`Slot::set_keeping`]).

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A socket a slot can bind: a TCP listener or a UDP socket.
pub(crate) trait BindSocket: Sized + Send + 'static {
    /// Binds `addr`.
    fn bind_to(addr: SocketAddr) -> impl Future<Output = io::Result<Self>> + Send;
    /// The address actually bound.
    fn bound_addr(&self) -> io::Result<SocketAddr>;
}

/// Pending connections the kernel queues before `accept` (the kernel caps it at
/// `net.core.somaxconn`). tokio's `TcpListener::bind` uses 128 (mio, like std), which a
/// registration storm overflows: every SYN dropped then costs its device a 1 s retransmission.
pub const LISTEN_BACKLOG: u32 = 4096;

impl BindSocket for TcpListener {
    fn bind_to(addr: SocketAddr) -> impl Future<Output = io::Result<Self>> + Send {
        std::future::ready(bind_listener(addr, LISTEN_BACKLOG))
    }
    fn bound_addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

/// Binds a TCP listener like `TcpListener::bind` (with `SO_REUSEADDR` on Unix, so a restart
/// does not wait out TIME_WAIT), but with `backlog` pending connections.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

impl BindSocket for UdpSocket {
    fn bind_to(addr: SocketAddr) -> impl Future<Output = io::Result<Self>> + Send {
        UdpSocket::bind(addr)
    }
    fn bound_addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

struct Running {
    bind: SocketAddr,
    local: SocketAddr,
    /// Closes the socket and every connection.
    cancel: CancellationToken,
    /// Stops accepting only (a child of `cancel`).
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn close(self, name: &str) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(listener = name, error = %e, "accept loop ended abnormally");
        }
    }
}

#[derive(Default)]
struct State {
    current: Option<Running>,
    /// Moved-away sockets whose connections still run ([`Slot::set_keeping`]); finished ones
    /// are pruned at every change, so this holds at most one entry per live old port.
    retired: Vec<Running>,
}

/// A listening socket slot; see the module docs.
pub(crate) struct Slot<S> {
    name: &'static str,
    state: tokio::sync::Mutex<State>,
    local: Mutex<Option<SocketAddr>>,
    _socket: PhantomData<fn() -> S>,
}

/// The slot of a TCP (or TLS) listener.
pub(crate) type ListenerSlot = Slot<TcpListener>;

impl<S: BindSocket> Slot<S> {
    /// An empty slot; `name` appears in logs.
    pub(crate) fn new(name: &'static str) -> Self {
        Slot {
            name,
            state: tokio::sync::Mutex::new(State::default()),
            local: Mutex::new(None),
            _socket: PhantomData,
        }
    }

    /// `Some(addr)`: listen there (rebinding if the address changed; a no-op if it did not), with
    /// `serve` running the accept loop until its token is cancelled; a move closes the old
    /// socket's connections too. `None`: close the socket and, through the token, every live
    /// connection.
    pub(crate) async fn set<F>(&self, bind: Option<SocketAddr>, serve: F) -> io::Result<()>
    where
        F: FnOnce(S, CancellationToken) -> JoinHandle<()>,
    {
        self.change(bind, false, move |socket, _stop, cancel| {
            serve(socket, cancel)
        })
        .await
    }

    /// Like [`set`](Self::set), but `serve` gets two tokens: `stop` (stop accepting and close the
    /// listening socket) and `cancel` (close every connection too). A move only fires the old
    /// socket's `stop`, so clients connected to the old port stay until they leave; closing the
    /// slot (`None`) fires every `cancel`.
    pub(crate) async fn set_keeping<F>(&self, bind: Option<SocketAddr>, serve: F) -> io::Result<()>
    where
        F: FnOnce(S, CancellationToken, CancellationToken) -> JoinHandle<()>,
    {
        self.change(bind, true, serve).await
    }

    async fn change<F>(&self, bind: Option<SocketAddr>, keep: bool, serve: F) -> io::Result<()>
    where
        F: FnOnce(S, CancellationToken, CancellationToken) -> JoinHandle<()>,
    {
        let mut state = self.state.lock().await;
        state.retired.retain(|r| !r.task.is_finished());
        let Some(bind) = bind else {
            if let Some(r) = state.current.take() {
                self.set_local(None);
                let addr = r.local;
                r.close(self.name).await;
                tracing::info!(listener = self.name, %addr, "listener closed");
            }
            for r in std::mem::take(&mut state.retired) {
                r.close(self.name).await;
            }
            return Ok(());
        };
        if state.current.as_ref().is_some_and(|r| r.bind == bind) {
            return Ok(());
        }
        // Bind the new address before closing the old one, so a failed rebind keeps serving;
        // only when the old socket holds the very port is it closed first (with its connections:
        // the port must be free before the bind is retried).
        let socket = match S::bind_to(bind).await {
            Ok(s) => s,
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && state
                        .current
                        .as_ref()
                        .is_some_and(|r| r.local.port() == bind.port()) =>
            {
                if let Some(r) = state.current.take() {
                    self.set_local(None);
                    r.close(self.name).await;
                }
                S::bind_to(bind).await?
            }
            Err(e) => return Err(e),
        };
        let local = socket.bound_addr()?;
        if let Some(r) = state.current.take() {
            let old = r.local;
            if keep {
                // Accepting stops now; the accept loop drops the old socket as it sees `stop`.
                r.stop.cancel();
                state.retired.push(r);
            } else {
                r.close(self.name).await;
            }
            tracing::info!(listener = self.name, from = %old, to = %local, "listener moved");
        }
        let cancel = CancellationToken::new();
        let stop = cancel.child_token();
        let task = serve(socket, stop.clone(), cancel.clone());
        state.current = Some(Running {
            bind,
            local,
            cancel,
            stop,
            task,
        });
        self.set_local(Some(local));
        tracing::info!(listener = self.name, addr = %local, "listener open");
        Ok(())
    }

    /// The address actually listened on (resolves port 0), `None` when closed.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        *self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_local(&self, addr: Option<SocketAddr>) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Cancels the running accept loop (and any moved-away one) without waiting (for `Drop`).
    pub(crate) fn cancel_now(&self) {
        if let Ok(mut state) = self.state.try_lock() {
            if let Some(r) = state.current.take() {
                r.cancel.cancel();
            }
            for r in state.retired.drain(..) {
                r.cancel.cancel();
            }
        }
    }
}
