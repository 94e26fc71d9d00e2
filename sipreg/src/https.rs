//! Serving an axum router over TLS with a server config that can be swapped live.
//!
//! Each connection's life is logged at `debug` (`sipreg::https=debug`: how it ended, by whom,
//! after how many requests) and `trace` (accept, handshake, each request's framing headers).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Handshakes slower than this are dropped (slowloris on the TLS layer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further accepts wait.
const MAX_CONNECTIONS: usize = 1024;
/// Largest request body read ahead of routing: axum's own default limit for extractors, so no
/// body an endpoint would have accepted is refused here.
const MAX_BODY: usize = 2 * 1024 * 1024;

/// Accepts TLS connections on `listener` and serves `app` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    app: Router,
    cancel: CancellationToken,
) {
    let app = app.layer(axum::middleware::from_fn(read_body_first));
    let mut tasks = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
        let app = app.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            tracing::trace!(%peer, "https connection accepted");
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    crate::metrics::https_tls_failure(sipreg_registrar::TlsFailure::of_io(&e));
                    tracing::debug!(%peer, error = %e, "https handshake failed");
                    return;
                }
                Err(_) => {
                    crate::metrics::https_tls_failure(
                        sipreg_registrar::TlsFailure::HandshakeTimeout,
                    );
                    tracing::debug!(%peer, "https handshake timed out");
                    return;
                }
            };
            {
                let (_, tls) = stream.get_ref();
                tracing::trace!(%peer, version = ?tls.protocol_version(),
                    alpn = ?tls.alpn_protocol().map(String::from_utf8_lossy),
                    handshake_ms = started.elapsed().as_millis() as u64, "https handshake done");
            }
            let trace = Arc::new(ConnTrace::default());
            // The peer address, for per-address brute-force backoff in the token service.
            let requests = trace.clone();
            let app = tower::ServiceExt::map_request(
                app,
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let n = requests.requests.fetch_add(1, Ordering::Relaxed) + 1;
                    if tracing::enabled!(tracing::Level::TRACE) {
                        let h = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
                        tracing::trace!(%peer, n, method = %req.method(), path = req.uri().path(),
                            version = ?req.version(), connection = h("connection"),
                            content_length = h("content-length"),
                            transfer_encoding = h("transfer-encoding"), expect = h("expect"),
                            "https request");
                    }
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                },
            );
            let service = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let io = Traced {
                inner: stream,
                trace: trace.clone(),
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            let outcome = tokio::select! {
                r = conn.as_mut() => r.err().map(|e| e.to_string()),
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    Some("server shutting down".into())
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
/// A body over [`MAX_BODY`] is refused with 413 and `Connection: close`, so the client knows.
async fn read_body_first(
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
        return body_not_read(parts.version);
    }
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => {
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(req).await
        }
        Err(e) => {
            // Over the limit, or the peer stopped sending mid-body.
            tracing::debug!(error = %e, path = parts.uri.path(), "https request body not read");
            body_not_read(parts.version)
        }
    }
}

/// 413 for a body left unread: `Connection: close` tells the client this connection is done.
fn body_not_read(version: hyper::Version) -> axum::response::Response {
    let problem = crate::problem::Problem {
        kind: "urn:sipreg:problem:body-too-large",
        title: "Request body too large",
        status: 413,
        detail: format!("a request body is at most {MAX_BODY} bytes"),
        field: None,
    };
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

/// What one connection did, for its closing log line: how many requests, who ended it.
#[derive(Default)]
struct ConnTrace {
    requests: AtomicU64,
    /// The peer ended its side (TLS close_notify, or a TCP FIN rustls reports as an error).
    peer_closed: std::sync::atomic::AtomicBool,
    /// hyper shut our side down (close_notify, then FIN).
    server_closed: std::sync::atomic::AtomicBool,
}

impl ConnTrace {
    fn log_end(&self, peer: std::net::SocketAddr, started: Instant, error: Option<String>) {
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

/// The TLS stream with the end of each direction recorded in a [`ConnTrace`].
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
