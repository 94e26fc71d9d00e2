//! One movable listening socket: open, move or close it live, binding the new address before the
//! old one closes so a failed move keeps serving. Shared by the SIP OAuth and MRA listeners.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Running {
    bind: SocketAddr,
    local: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self, name: &str) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(listener = name, error = %e, "accept loop ended abnormally");
        }
    }
}

/// A listening socket slot; see the module docs.
pub(crate) struct ListenerSlot {
    name: &'static str,
    running: tokio::sync::Mutex<Option<Running>>,
    local: Mutex<Option<SocketAddr>>,
}

impl ListenerSlot {
    /// An empty slot; `name` appears in logs.
    pub(crate) fn new(name: &'static str) -> Self {
        ListenerSlot {
            name,
            running: tokio::sync::Mutex::new(None),
            local: Mutex::new(None),
        }
    }

    /// `Some(addr)`: listen there (rebinding if the address changed; a no-op if it did not), with
    /// `serve` running the accept loop until its token is cancelled. `None`: close the socket and,
    /// through the token, every live connection.
    pub(crate) async fn set<F>(&self, bind: Option<SocketAddr>, serve: F) -> io::Result<()>
    where
        F: FnOnce(TcpListener, CancellationToken) -> JoinHandle<()>,
    {
        let mut running = self.running.lock().await;
        let Some(bind) = bind else {
            if let Some(r) = running.take() {
                self.set_local(None);
                let addr = r.local;
                r.stop(self.name).await;
                tracing::info!(listener = self.name, %addr, "listener closed");
            }
            return Ok(());
        };
        if running.as_ref().is_some_and(|r| r.bind == bind) {
            return Ok(());
        }
        // Bind the new address before closing the old one, so a failed rebind keeps serving;
        // only when the old socket holds the very port is it closed first.
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
                    r.stop(self.name).await;
                }
                TcpListener::bind(bind).await?
            }
            Err(e) => return Err(e),
        };
        if let Some(r) = running.take() {
            r.stop(self.name).await;
        }
        let local = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let task = serve(listener, cancel.clone());
        *running = Some(Running {
            bind,
            local,
            cancel,
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

    /// Cancels the running accept loop without waiting (for `Drop`).
    pub(crate) fn cancel_now(&self) {
        if let Ok(mut running) = self.running.try_lock() {
            if let Some(r) = running.take() {
                r.cancel.cancel();
            }
        }
    }
}
