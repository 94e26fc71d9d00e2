//! Serving an axum router over TLS (with a server config that can be swapped live) or plain
//! HTTP, with the limits every HTTP listener of sipreg shares: a listen backlog for bursts, a cap
//! on connections, a header-read timeout (slowloris), a whole-body deadline (slow POST), an idle
//! timeout for keep-alive connections and HTTP/2 keep-alive pings.
//!
//! Each connection's life is logged at `debug` (`sipreg::https=debug`: how it ended, by whom,
//! after how many requests) and `trace` (accept, handshake, each request's framing headers).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Handshakes slower than this are dropped (slowloris on the TLS layer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further accepts wait.
const MAX_CONNECTIONS: usize = 1024;
/// Largest request body read ahead of routing: axum's own default limit for extractors, so no
/// body an endpoint would have accepted is refused here.
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Pending connections the kernel queues before `accept`: the SIP listeners' value, since a
/// burst of devices fetching their config or tokens after an outage overflows the 128 that
/// `TcpListener::bind` listens with, and every dropped SYN costs its client a 1 s retransmission.
pub use sipreg_registrar::LISTEN_BACKLOG;
/// HTTP/2 PING interval on a connection that has received nothing for this long; a peer that
/// vanished mid-request (no FIN) is found by the missing ACK.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// An HTTP/2 PING not answered within this closes the connection.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Time limits of one HTTP listener's connections (`[http]` in the config file).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head must be complete this long after its first byte arrived on an idle
    /// connection, or after the connection opened (slowloris); the connection is then dropped.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress is shut down gracefully after this.
    pub idle_timeout: Duration,
    /// A request body must be complete this long after its head was read, or the request gets
    /// 408 and the connection is closed (a body trickled in holds a connection slot).
    pub body_timeout: Duration,
}

impl Default for Limits {
    /// 30 s for a head (hyper's and Go's usual value); 75 s idle like nginx, longer than the
    /// common client pool timeouts (60 s), so a client rarely sends on a connection being closed;
    /// 60 s for a whole body (nginx allows 60 s between two reads): 2 MiB in 60 s needs 280 kbit/s.
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// Binds a TCP listener like `TcpListener::bind` (`SO_REUSEADDR` on Unix, so a restart does not
/// wait out TIME_WAIT), but with a backlog of [`LISTEN_BACKLOG`], as the SIP listeners are.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    sipreg_registrar::bind_listener(addr, LISTEN_BACKLOG)
}

/// Accepts TLS connections on `listener` and serves `app` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    let handshake = move |tcp: TcpStream, peer: SocketAddr| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
        async move {
            let started = Instant::now();
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    crate::metrics::https_tls_failure(sipreg_registrar::TlsFailure::of_io(&e));
                    tracing::debug!(%peer, error = %e, "https handshake failed");
                    return None;
                }
                Err(_) => {
                    crate::metrics::https_tls_failure(
                        sipreg_registrar::TlsFailure::HandshakeTimeout,
                    );
                    tracing::debug!(%peer, "https handshake timed out");
                    return None;
                }
            };
            let (_, tls) = stream.get_ref();
            let alpn = tls.alpn_protocol();
            tracing::trace!(%peer, version = ?tls.protocol_version(),
                alpn = ?alpn.map(String::from_utf8_lossy),
                handshake_ms = started.elapsed().as_millis() as u64, "https handshake done");
            let h2 = alpn == Some(b"h2");
            Some((stream, h2))
        }
    };
    accept_loop(listener, app, limits, cancel, handshake).await;
}

/// Accepts plain HTTP connections on `listener` and serves `app` until `cancel` fires.
pub async fn serve_plain(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
) {
    let open = |tcp: TcpStream, _peer: SocketAddr| std::future::ready(Some((tcp, false)));
    accept_loop(listener, app, limits, cancel, open).await;
}

/// The accept loop shared by TLS and plain HTTP: `open` turns an accepted TCP stream into the
/// stream HTTP runs on (a TLS handshake, or nothing) and says whether ALPN chose HTTP/2.
async fn accept_loop<F, Fut, S>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    cancel: CancellationToken,
    open: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = Option<(S, bool)>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Two views of one router: a request whose body is known to be empty (a GET or HEAD without
    // one, the config files' whole traffic) has nothing to leave unread, so it skips the body-first
    // step and its per-request cost (a boxed middleware future, a rebuilt request).
    let body_first = app.clone().layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        read_body_first,
    ));
    let mut tasks = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's own HTTP/1 `header_read_timeout` also runs while a keep-alive connection waits for
    // its next request, so it would close idle connections after the head timeout; the watchdog
    // in `drive` keeps the two limits apart instead, and hyper's is left off (no HTTP/1 timer).
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "https accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set stays bounded.
        while tasks.try_join_next().is_some() {}
        let opening = open(tcp, peer);
        let (app, body_first) = (app.clone(), body_first.clone());
        let cancel = cancel.clone();
        let builder = builder.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            tracing::trace!(%peer, "https connection accepted");
            let Some((stream, h2)) = opening.await else {
                return;
            };
            let trace = Arc::new(ConnTrace::new(h2));
            let requests = trace.clone();
            let service =
                tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let n = requests.requests.fetch_add(1, Ordering::Relaxed) + 1;
                    if tracing::enabled!(tracing::Level::TRACE) {
                        let h = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
                        tracing::trace!(%peer, n, method = %req.method(), path = req.uri().path(),
                        version = ?req.version(), connection = h("connection"),
                        content_length = h("content-length"),
                        transfer_encoding = h("transfer-encoding"), expect = h("expect"),
                        "https request");
                    }
                    let busy = Busy::start(&requests, req.version());
                    // The peer address, for per-address brute-force backoff in the token service.
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let app = if hyper::body::Body::is_end_stream(req.body()) {
                        app.clone()
                    } else {
                        body_first.clone()
                    };
                    let answer = tower::ServiceExt::oneshot(app, req);
                    async move {
                        let r = answer.await;
                        drop(busy);
                        r
                    }
                });
            let service = TowerToHyperService::new(service);
            let io = Traced {
                inner: stream,
                trace: trace.clone(),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            // One timer per connection, looked at no later than every header timeout (see
            // `ConnTrace::verdict`), so requests themselves never touch it.
            let mut wake_at = trace.epoch + limits.header_timeout;
            let sleep = tokio::time::sleep_until(wake_at.into());
            tokio::pin!(sleep);
            let outcome = loop {
                match trace.verdict(trace.now_ms(), limits) {
                    Verdict::Wait(at) => {
                        let at = trace.epoch + Duration::from_millis(at);
                        if at != wake_at {
                            wake_at = at;
                            sleep.as_mut().reset(at.into());
                        }
                    }
                    // No request has started, so dropping the connection cuts nothing.
                    Verdict::HeaderTimeout => {
                        break Some("request head not complete in time".into())
                    }
                    Verdict::Idle => {
                        // Graceful: HTTP/1 closes at once when idle, HTTP/2 sends GOAWAY; a
                        // request that raced the decision is still answered (within one more
                        // idle period).
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(limits.idle_timeout, conn.as_mut()).await;
                        break Some("idle".into());
                    }
                }
                tokio::select! {
                    r = conn.as_mut() => break r.err().map(|e| e.to_string()),
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                        break Some("server shutting down".into());
                    }
                    _ = sleep.as_mut() => {}
                }
            };
            trace.log_end(peer, started, outcome);
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// Reads the whole request body before routing, so every answer leaves the connection reusable.
///
/// A handler that answers without reading the body (405, 404, 401, a wrong content type) leaves
/// hyper unable to find the next request; when the body has not arrived yet (urllib3 sends the
/// head and the body in two TLS records) hyper closes the connection after the answer without
/// `Connection: close`. The client has already pooled it, its next request races the close, and
/// it fails with "EOF occurred in violation of protocol" or "remote end closed connection".
/// A body over [`MAX_BODY`] is refused with 413 and `Connection: close`, so the client knows; one
/// not complete within `deadline` ([`Limits::body_timeout`]) gets 408, likewise.
async fn read_body_first(
    axum::extract::State(deadline): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (parts, body) = req.into_parts();
    let announced = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // An announced oversize body is refused before a byte of it is read (nor 100 Continue sent).
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return body_not_read(parts.version, too_large());
    }
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(req).await
        }
        Ok(Err(e)) => {
            // Over the limit, or the peer stopped sending mid-body.
            tracing::debug!(error = %e, path = parts.uri.path(), "https request body not read");
            body_not_read(parts.version, too_large())
        }
        Err(_) => {
            tracing::debug!(
                path = parts.uri.path(),
                secs = deadline.as_secs(),
                "https request body not complete in time"
            );
            let problem = crate::problem::Problem {
                kind: "urn:sipreg:problem:body-timeout",
                title: "Request body not complete in time",
                status: 408,
                detail: format!(
                    "a request body must arrive within {} s of its head",
                    deadline.as_secs()
                ),
                field: None,
            };
            body_not_read(parts.version, problem)
        }
    }
}

/// 413: the body is over [`MAX_BODY`].
fn too_large() -> crate::problem::Problem {
    crate::problem::Problem {
        kind: "urn:sipreg:problem:body-too-large",
        title: "Request body too large",
        status: 413,
        detail: format!("a request body is at most {MAX_BODY} bytes"),
        field: None,
    }
}

/// `problem` for a body left unread: `Connection: close` tells the client this connection is done.
fn body_not_read(
    version: hyper::Version,
    problem: crate::problem::Problem,
) -> axum::response::Response {
    let mut res = axum::response::IntoResponse::into_response(problem);
    // HTTP/2 has no Connection header and needs none: hyper resets just that stream.
    if version < hyper::Version::HTTP_2 {
        res.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    res
}

/// `ConnTrace::head_since` when no request head is being read.
const NOT_READING: u64 = u64::MAX;

/// What one connection did, for its closing log line (how many requests, who ended it), and
/// where it stands for [`Limits`]: requests in progress, idle since when, reading a head since
/// when. Times are milliseconds since `epoch` so they fit in atomics: HTTP/2 requests run on
/// tasks of their own.
struct ConnTrace {
    requests: AtomicU64,
    /// The peer ended its side (TLS close_notify, or a TCP FIN rustls reports as an error).
    peer_closed: AtomicBool,
    /// hyper shut our side down (close_notify, then FIN).
    server_closed: AtomicBool,
    /// When the connection was ready for HTTP (after the TLS handshake).
    epoch: Instant,
    /// HTTP/2 (by ALPN or by its first request): its idle connections exchange frames (PINGs,
    /// SETTINGS) that are no request head, so bytes read do not start the header timeout.
    h2: AtomicBool,
    /// Requests whose answer is not complete yet.
    in_flight: AtomicUsize,
    /// When the last request in progress finished (or the connection opened).
    idle_since: AtomicU64,
    /// When the first byte of the next HTTP/1 request head arrived on an idle connection, or
    /// [`NOT_READING`].
    head_since: AtomicU64,
}

/// What the watchdog does about a connection now.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Look again this many milliseconds after `epoch`.
    Wait(u64),
    /// A request head took longer than [`Limits::header_timeout`]: drop the connection.
    HeaderTimeout,
    /// No request for [`Limits::idle_timeout`]: shut the connection down gracefully.
    Idle,
}

impl ConnTrace {
    /// A connection that just opened. A new HTTP/1 connection owes its first request head within
    /// the header timeout (as in Go's `ReadHeaderTimeout`); HTTP/2 clients open connections
    /// ahead of need, so a new HTTP/2 connection starts idle.
    fn new(h2: bool) -> Self {
        ConnTrace {
            requests: AtomicU64::new(0),
            peer_closed: AtomicBool::new(false),
            server_closed: AtomicBool::new(false),
            epoch: Instant::now(),
            h2: AtomicBool::new(h2),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(if h2 { NOT_READING } else { 0 }),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Bytes arrived: on an idle HTTP/1 connection they are the start of a request head.
    fn on_bytes(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_since.load(Ordering::Relaxed) == NOT_READING
        {
            self.head_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// The watchdog's decision at `now` (milliseconds since `epoch`).
    ///
    /// It never waits longer than the shorter of the two timeouts: a head or an idle period that
    /// starts after `now` then has its deadline after the next look, so no request has to wake
    /// the watchdog and each deadline is kept exactly.
    fn verdict(&self, now: u64, limits: Limits) -> Verdict {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        let (header, idle) = (ms(limits.header_timeout), ms(limits.idle_timeout));
        let next_look = now.saturating_add(header.min(idle));
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::Wait(next_look);
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != NOT_READING {
            let at = head.saturating_add(header);
            return if now >= at {
                Verdict::HeaderTimeout
            } else {
                Verdict::Wait(at.min(next_look))
            };
        }
        let at = self.idle_since.load(Ordering::Acquire).saturating_add(idle);
        if now >= at {
            Verdict::Idle
        } else {
            Verdict::Wait(at.min(next_look))
        }
    }

    fn log_end(&self, peer: SocketAddr, started: Instant, error: Option<String>) {
        let by = match (
            self.peer_closed.load(Ordering::Relaxed),
            self.server_closed.load(Ordering::Relaxed),
        ) {
            (true, false) => "peer",
            (false, true) => "server",
            (true, true) => "both",
            (false, false) => "neither (dropped)",
        };
        tracing::debug!(%peer, requests = self.requests.load(Ordering::Relaxed),
            secs = started.elapsed().as_secs_f32(), closed_by = by, error = error.as_deref(),
            "https connection closed");
    }
}

/// One request in progress on a connection, from its parsed head until its handler answered
/// (or was dropped, as when an HTTP/2 stream is reset).
struct Busy(Arc<ConnTrace>);

impl Busy {
    fn start(trace: &Arc<ConnTrace>, version: hyper::Version) -> Busy {
        if version == hyper::Version::HTTP_2 {
            trace.h2.store(true, Ordering::Relaxed);
        }
        trace.in_flight.fetch_add(1, Ordering::AcqRel);
        trace.head_since.store(NOT_READING, Ordering::Release);
        Busy(trace.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        // Set before the count drops, so the watchdog never sees zero with a stale time.
        self.0.idle_since.fetch_max(now, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's stream (TLS or plain) with the end of each direction and the arrival of
/// request heads recorded in a [`ConnTrace`].
struct Traced<S> {
    inner: S,
    trace: Arc<ConnTrace>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Traced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.trace.peer_closed.store(true, Ordering::Relaxed);
            }
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.trace.on_bytes(),
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, kind = ?e.kind(), "https read error");
                self.trace.peer_closed.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Traced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.trace.server_closed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(75),
        body_timeout: Duration::from_secs(60),
    };

    #[test]
    fn a_new_http1_connection_owes_its_first_head_within_the_header_timeout() {
        let t = ConnTrace::new(false);
        assert_eq!(t.verdict(0, LIMITS), Verdict::Wait(30_000));
        assert_eq!(t.verdict(30_000, LIMITS), Verdict::HeaderTimeout);
    }

    #[test]
    fn a_new_http2_connection_starts_idle() {
        let t = ConnTrace::new(true);
        assert_eq!(t.verdict(0, LIMITS), Verdict::Wait(30_000));
        // Frames of an idle HTTP/2 connection (PING, SETTINGS) start no header timeout.
        t.on_bytes();
        assert_eq!(t.verdict(50_000, LIMITS), Verdict::Wait(75_000));
        assert_eq!(t.verdict(75_000, LIMITS), Verdict::Idle);
    }

    #[test]
    fn a_request_in_progress_is_never_timed_out_and_its_end_starts_the_idle_time() {
        let t = Arc::new(ConnTrace::new(false));
        let busy = Busy::start(&t, hyper::Version::HTTP_11);
        // Long after both limits: still only a later look.
        assert_eq!(t.verdict(500_000, LIMITS), Verdict::Wait(530_000));
        t.on_bytes(); // body bytes are no head
        assert_eq!(t.head_since.load(Ordering::Relaxed), NOT_READING);
        drop(busy);
        let done = t.idle_since.load(Ordering::Relaxed);
        assert_eq!(t.verdict(done, LIMITS), Verdict::Wait(done + 30_000));
        assert_eq!(
            t.verdict(done + 50_000, LIMITS),
            Verdict::Wait(done + 75_000)
        );
        assert_eq!(t.verdict(done + 75_000, LIMITS), Verdict::Idle);
    }

    #[test]
    fn a_head_started_on_a_kept_alive_connection_has_the_header_timeout() {
        let t = Arc::new(ConnTrace::new(false));
        drop(Busy::start(&t, hyper::Version::HTTP_11));
        t.on_bytes();
        let head = t.head_since.load(Ordering::Relaxed);
        assert_ne!(head, NOT_READING);
        assert_eq!(t.verdict(head, LIMITS), Verdict::Wait(head + 30_000));
        assert_eq!(t.verdict(head + 30_000, LIMITS), Verdict::HeaderTimeout);
        // The head completed: the request runs, nothing is timed out.
        let _busy = Busy::start(&t, hyper::Version::HTTP_11);
        assert!(matches!(t.verdict(head + 30_000, LIMITS), Verdict::Wait(_)));
    }

    #[test]
    fn an_idle_timeout_shorter_than_the_header_timeout_is_kept_after_a_request() {
        let limits = Limits {
            header_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(3),
            body_timeout: Duration::from_secs(60),
        };
        let t = Arc::new(ConnTrace::new(false));
        // The look taken when the connection opened comes back before any idle period can end.
        assert_eq!(t.verdict(0, limits), Verdict::Wait(3_000));
        drop(Busy::start(&t, hyper::Version::HTTP_11));
        let done = t.idle_since.load(Ordering::Relaxed);
        assert_eq!(t.verdict(done + 3_000, limits), Verdict::Idle);
    }

    #[test]
    fn an_http2_request_marks_the_connection_http2() {
        let t = Arc::new(ConnTrace::new(false));
        drop(Busy::start(&t, hyper::Version::HTTP_2));
        t.on_bytes();
        assert_eq!(t.head_since.load(Ordering::Relaxed), NOT_READING);
    }
}
