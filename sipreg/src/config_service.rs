//! Starts the device config service for `serve`: HTTP (`listen.config_http_port`, 6970),
//! token-protected HTTPS (`listen.config_https_port`, 6971) and TFTP (`listen.tftp_port`, UDP 69),
//! all serving one [`ConfigFiles`], which renders a device's file when it is first fetched and
//! again only after that device, the OAuth mode or the nodes change.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sipreg_store::Directory;
use sipreg_tftp_config::{tftp, ConfigFiles, TokenCheck};
use sipreg_tokensvc::AccessTokenValidator;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ListenConfig;

/// What the config service needs from `serve`.
pub struct Ctx {
    /// Address every listener binds to.
    pub ip: IpAddr,
    /// Ports from the configuration.
    pub listen: ListenConfig,
    /// Header-read and idle timeouts of the HTTP and HTTPS listeners.
    pub limits: crate::https::Limits,
    /// Bytes of rendered device files kept in memory (`device_config.cache_mib`).
    pub cache_bytes: usize,
    /// The live directory.
    pub directory: Directory,
    /// Validates access tokens (for HTTPS 6971).
    pub validator: AccessTokenValidator,
    /// The server's live TLS config with HTTP ALPN.
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// Counts fetches by transport and result (for `/metrics`).
    pub fetches: Arc<sipreg_tftp_config::FetchStats>,
    /// Shutdown.
    pub cancel: CancellationToken,
}

/// The token service's validator as the config service's [`TokenCheck`]: any valid access token
/// names its user; whether that user owns the device is the config service's decision.
struct ValidatorCheck(AccessTokenValidator);

impl TokenCheck for ValidatorCheck {
    fn user(&self, token: &str, now: i64) -> Result<String, String> {
        self.0
            .validate(token, now)
            .map(|claims| claims.sub)
            .map_err(|e| e.to_string())
    }
}

/// What [`start`] opened.
pub struct Started {
    /// Lines for the start-up banner.
    pub lines: Vec<String>,
    /// (listener name, bound address) of each listener that opened, for `sipreg status`.
    pub bound: Vec<(String, String)>,
}

/// Binds the config service's listeners and spawns them; returns what to print and what opened.
///
/// HTTP and HTTPS must bind or `serve` fails with a message naming the setting. TFTP (UDP 69 needs
/// privilege) is an add-on: if it cannot bind, the server logs one warning naming the setting and runs
/// without it.
pub async fn start(ctx: Ctx, tasks: &mut JoinSet<()>) -> Result<Started, String> {
    let files = Arc::new(
        ConfigFiles::new(ctx.directory.clone())
            .with_cache_bytes(ctx.cache_bytes)
            .with_fetch_stats(ctx.fetches),
    );
    let mut lines = Vec::new();
    let mut bound = Vec::new();

    let addr = SocketAddr::new(ctx.ip, ctx.listen.config_http_port);
    let listener = crate::https::bind(addr).map_err(|e| {
        format!("cannot listen on {addr} for device config HTTP: {e}; free the port or set `listen.config_http_port`")
    })?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let app = sipreg_tftp_config::router_for(files.clone());
    tasks.spawn(crate::https::serve_plain(
        listener,
        app,
        ctx.limits,
        ctx.cancel.clone(),
    ));
    lines.push(format!("device config:    http://{local}/<device>.cnf.xml"));
    bound.push(("config-http".to_string(), local.to_string()));

    let addr = SocketAddr::new(ctx.ip, ctx.listen.config_https_port);
    let listener = crate::https::bind(addr).map_err(|e| {
        format!("cannot listen on {addr} for device config HTTPS: {e}; free the port or set `listen.config_https_port`")
    })?;
    {
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let check: Arc<dyn TokenCheck> = Arc::new(ValidatorCheck(ctx.validator));
        let app = sipreg_tftp_config::secure_router(files.clone(), check);
        tasks.spawn(crate::https::serve(
            listener,
            ctx.tls,
            app,
            ctx.limits,
            ctx.cancel.clone(),
        ));
        lines.push(format!(
            "device config:    https://{local}/<device>.cnf.xml (bearer token of the owner)"
        ));
        bound.push(("config-https".to_string(), local.to_string()));
    }

    if ctx.listen.tftp_port == 0 {
        lines.push("device config:    TFTP off (`listen.tftp_port` = 0)".into());
        return Ok(Started { lines, bound });
    }
    let addr = SocketAddr::new(ctx.ip, ctx.listen.tftp_port);
    match UdpSocket::bind(addr).await {
        Ok(socket) => {
            let local = socket.local_addr().map_err(|e| e.to_string())?;
            tasks.spawn(tftp::serve(
                socket,
                files,
                tftp::TftpConfig::default(),
                ctx.cancel.clone(),
            ));
            lines.push(format!("device config:    tftp://{local}/<device>.cnf.xml"));
            bound.push(("tftp".to_string(), local.to_string()));
        }
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE; grant it or set `listen.tftp_port` to a port above 1023 (0 turns TFTP off)"
            } else {
                "free the port or set `listen.tftp_port` (0 turns TFTP off)"
            };
            tracing::warn!(%addr, error = %e, "TFTP is off: cannot bind UDP {addr}: {e}; {hint}");
            lines.push(format!(
                "device config:    TFTP off (cannot bind UDP {addr}: {e})"
            ));
        }
    }
    Ok(Started { lines, bound })
}
