//! Starts the device config service listeners (HTTP 6970; HTTPS 6971 and TFTP to come) for `serve`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sipreg_store::Directory;
use sipreg_tokensvc::AccessTokenValidator;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ListenConfig;

/// What the config service needs from `serve`.
pub struct Ctx {
    /// Address every listener binds to.
    pub ip: IpAddr,
    /// Ports from the configuration.
    pub listen: ListenConfig,
    /// The live directory.
    pub directory: Directory,
    /// Validates access tokens (for HTTPS 6971).
    pub validator: AccessTokenValidator,
    /// The server's live TLS config with HTTP ALPN.
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// Shutdown.
    pub cancel: CancellationToken,
}

/// Binds the config service's listeners and spawns them; returns the addresses to print.
pub async fn start(ctx: Ctx, tasks: &mut JoinSet<()>) -> Result<Vec<String>, String> {
    let addr = SocketAddr::new(ctx.ip, ctx.listen.config_http_port);
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} for device config HTTP: {e}; free the port or set `listen.config_http_port`")
    })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let app = sipreg_tftp_config::router(ctx.directory.clone());
    let cancel = ctx.cancel.clone();
    tasks.spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "device config HTTP server failed");
        }
    });
    Ok(vec![format!(
        "device config:    http://{local}/<device>.cnf.xml"
    )])
}
