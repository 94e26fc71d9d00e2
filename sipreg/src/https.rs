//! Serving an axum router over TLS with a server config that can be swapped live.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Handshakes slower than this are dropped (slowloris on the TLS layer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further accepts wait.
const MAX_CONNECTIONS: usize = 1024;

/// Accepts TLS connections on `listener` and serves `app` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    app: Router,
    cancel: CancellationToken,
) {
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
            // The peer address, for per-address brute-force backoff in the token service.
            let app = tower::ServiceExt::map_request(
                app,
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                },
            );
            let service = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "https connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}
