//! `sipreg serve`: wires store, keys, certificates, the registrar, the token service, the admin API
//! and the config service together, and runs them until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sipreg_registrar::digest::Algorithm as DigestAlgorithm;
use sipreg_registrar::{
    BearerError, BearerValidator, Registrar, RegistrarConfig, SipOAuthListener, TokenIdentity,
};
use sipreg_store::{Directory, Node, SqliteStore, Store};
use sipreg_tokensvc::{AccessTokenValidator, KeyRing, TokenConfig, TokenService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::live::Live;

/// Everything `serve` needs from the command line and the config file.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The validated configuration.
    pub config: Config,
    /// The SIP OAuth port came from the command line, so it overrides the stored node's port.
    pub explicit_oauth_port: bool,
    /// Likewise for the SIP MRA OAuth port.
    pub explicit_mra_port: bool,
}

/// The scope a token needs to register.
const REGISTER_SCOPE: &str = "sip:register";

/// Adapts the token service's validator to the registrar's trait and enforces the register scope.
struct ScopedValidator {
    inner: AccessTokenValidator,
    outcomes: Arc<crate::metrics::TokenOutcomes>,
}

impl BearerValidator for ScopedValidator {
    fn validate(&self, token: &str, now: i64) -> Result<TokenIdentity, BearerError> {
        let claims = self.inner.validate(token, now).map_err(|e| {
            self.outcomes.count(crate::metrics::outcome_label(&e));
            BearerError {
                description: e.to_string(),
            }
        })?;
        if !claims.scope.split(' ').any(|s| s == REGISTER_SCOPE) {
            self.outcomes.count("insufficient_scope");
            return Err(BearerError {
                description: format!("token lacks scope {REGISTER_SCOPE}"),
            });
        }
        self.outcomes.count("ok");
        Ok(TokenIdentity {
            user: claims.sub,
            scope: claims.scope,
        })
    }
}

/// Creates `dir` (and parents) with mode 0700.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Reads the admin token, creating a random one (0600) on first start.
fn admin_token(path: &Path) -> anyhow_like::Result<String> {
    if path.exists() {
        let t = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let t = t.trim().to_owned();
        if t.len() < 16 {
            return Err(format!(
                "{} holds no usable admin token; delete it to have a new one made",
                path.display()
            ));
        }
        return Ok(t);
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    sipreg_certs::write_secret_file(path, format!("{token}\n").as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(token)
}

/// Errors at start-up are plain messages that name the fix.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, String>;
}

fn host_name() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A free port on `ip`, for `0` in the config (tests).
fn resolve_port(ip: std::net::IpAddr, port: u16) -> std::io::Result<u16> {
    if port != 0 {
        return Ok(port);
    }
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Binds an HTTP(S) listener with the backlog the SIP listeners have (`https::bind`).
async fn bind(addr: SocketAddr, what: &str, key: &str) -> anyhow_like::Result<TcpListener> {
    crate::https::bind(addr).map_err(|e| {
        format!("cannot listen on {addr} for {what}: {e}; free the port or set `{key}`")
    })
}

/// Runs the server until a shutdown signal.
pub async fn run(opts: ServeOptions) -> anyhow_like::Result<()> {
    let cfg = opts.config;
    let data_dir = opts.data_dir;
    create_private_dir(&data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;

    let store: Arc<dyn Store> = match &cfg.store {
        Some(url) => sipreg_store::open(url).await.map_err(|e| {
            format!(
                "cannot open the store {}: {e}",
                sipreg_store::redact_url(url)
            )
        })?,
        None => Arc::new(
            SqliteStore::open(&data_dir.join("sipreg.db"))
                .map_err(|e| format!("cannot open the database: {e}"))?,
        ),
    };
    let host = host_name();
    let public_host = cfg.public_host.clone().unwrap_or_else(|| host.clone());
    let node_name = cfg.node_name.clone().unwrap_or_else(|| host.clone());

    let mut names = vec![
        public_host.clone(),
        host.clone(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    names.dedup();
    let pki = sipreg_certs::load_or_create(&data_dir.join("tls"), &names)
        .map_err(|e| format!("certificates: {e}"))?;
    let chain = std::fs::read(&pki.server_cert)
        .map_err(|e| format!("{}: {e}", pki.server_cert.display()))?;
    let key =
        std::fs::read(&pki.server_key).map_err(|e| format!("{}: {e}", pki.server_key.display()))?;
    let sip_tls = sipreg_certs::ReloadableServerConfig::new(
        // No TLS 1.3 session tickets on the SIP ports (see `sip_server_config`); HTTPS keeps them.
        sipreg_certs::sip_server_config(&chain, &key).map_err(|e| format!("SIP TLS: {e}"))?,
    );
    let https_tls = sipreg_certs::ReloadableServerConfig::new(
        sipreg_certs::server_config(&chain, &key, &[b"h2", b"http/1.1"])
            .map_err(|e| format!("HTTPS TLS: {e}"))?,
    );

    let now = crate::now();
    let keys = KeyRing::load_or_create(store.as_ref(), now)
        .await
        .map_err(|e| format!("signing keys: {e}"))?;
    let token_path = data_dir.join("admin-token");
    let admin = admin_token(&token_path)?;

    let ip = cfg.listen.address;
    let https_port = cfg.listen.https_port;
    let https_listener = bind(
        SocketAddr::new(ip, https_port),
        "HTTPS",
        "listen.https_port",
    )
    .await?;
    let https_addr = https_listener.local_addr().map_err(|e| e.to_string())?;
    // `[metrics] listen`: a plain-HTTP scrape port apart from the API (no TLS, no token).
    let metrics_listener = match cfg.metrics.listen_addr().map_err(|e| e.to_string())? {
        Some(addr) => Some(bind(addr, "metrics", "metrics.listen").await?),
        None => None,
    };
    let oauth_port = resolve_port(ip, cfg.listen.sip_oauth_port).map_err(|e| e.to_string())?;

    // Ports changed through the API live in the store and win over the config file on restart;
    // a port given on the command line wins over both.
    let stored = store
        .nodes()
        .await
        .map_err(|e| format!("reading nodes: {e}"))?
        .into_iter()
        .find(|n| n.name == node_name);
    let (oauth_port, mra_port) = match &stored {
        Some(n) => (
            if opts.explicit_oauth_port {
                oauth_port
            } else {
                n.sip_oauth_port
            },
            if opts.explicit_mra_port {
                cfg.listen.sip_mra_oauth_port
            } else {
                n.sip_mra_oauth_port
            },
        ),
        None => (oauth_port, cfg.listen.sip_mra_oauth_port),
    };
    let oauth_addr = SocketAddr::new(ip, oauth_port);
    // Legacy ports: the config seeds the row; then the stored (API) port wins unless the config
    // value changed since the last start (see `legacy_start_ports`).
    let (sip_port, secured_sip_port) = crate::live::legacy_start_ports(
        &data_dir,
        stored.as_ref().map(|n| (n.sip_port, n.secured_sip_port)),
        (cfg.listen.sip_port, cfg.listen.secured_sip_port),
    );
    store
        .upsert_node(&Node {
            name: node_name.clone(),
            host: public_host.clone(),
            sip_port,
            secured_sip_port,
            sip_oauth_port: oauth_port,
            sip_mra_oauth_port: mra_port,
        })
        .await
        .map_err(|e| format!("registering node: {e}"))?;
    // The config file's token and expiry values seed the cluster settings once; afterwards the
    // cluster settings win (changed with `sipreg cluster set`, live on every node).
    let seed = cfg.cluster_seed();
    match store.seed_cluster_settings(&seed).await {
        Ok(true) => tracing::info!("cluster settings seeded from the config file"),
        Ok(false) => {
            let current = store
                .cluster_settings()
                .await
                .map_err(|e| format!("reading cluster settings: {e}"))?;
            if (sipreg_store::ClusterSettings {
                oauth_mode: current.oauth_mode,
                challenge_dialect: current.challenge_dialect,
                ..seed
            }) != current
            {
                tracing::info!("[tokens]/[registrar] lifetimes and expiry in the config file differ from the cluster settings; the cluster settings apply (`sipreg cluster show`)");
            }
        }
        Err(e) => return Err(format!("seeding cluster settings: {e}")),
    }
    let directory = Directory::load(store.as_ref())
        .await
        .map_err(|e| format!("loading directory: {e}"))?;

    let issuer = cfg
        .tokens
        .issuer
        .clone()
        .unwrap_or_else(|| format!("https://{public_host}:{}", https_addr.port()));
    let token_cfg = TokenConfig {
        issuer: issuer.clone(),
        audience: cfg.tokens.audience.clone(),
        access_ttl_secs: cfg.tokens.access_ttl_minutes * 60,
        refresh_ttl_secs: cfg.tokens.refresh_ttl_days * 86400,
        password_grant: cfg.tokens.password_grant,
        refresh_login: cfg.tokens.refresh_login,
        jwks_refetch_secs: cfg.tokens.jwks_refetch_secs,
        ..TokenConfig::default()
    };
    // Resource servers introspect with the admin token (RFC 7662 §2.1 allows a bearer token).
    let tokens = Arc::new(
        TokenService::new(store.clone(), keys.clone(), token_cfg)
            .with_introspection_secret(Sha256::digest(admin.as_bytes()).into()),
    );
    // Lifetimes and the grant switches come from the cluster settings, per request.
    tokens.attach_directory(directory.clone());
    // One validator for registrar and config service: shared cache, revocations and directory.
    let config_validator: AccessTokenValidator = tokens.validator().clone();
    config_validator.attach_directory(directory.clone());
    let token_outcomes = Arc::new(crate::metrics::TokenOutcomes::default());
    let validator = ScopedValidator {
        inner: config_validator.clone(),
        outcomes: token_outcomes.clone(),
    };

    let reg_cfg = RegistrarConfig {
        realm: public_host.clone(),
        authz_server: format!("{issuer}/"),
        scope: REGISTER_SCOPE.into(),
        host: public_host.clone(),
        default_expires: cfg.registrar.default_expires,
        min_expires: cfg.registrar.min_expires,
        max_expires: cfg.registrar.max_expires,
        max_bindings_per_aor: cfg.registrar.max_bindings_per_aor,
        max_message_size: cfg.registrar.max_message_size,
        domains: cfg.registrar.domains.clone(),
        path_requires_supported: cfg.registrar.path_requires_supported,
        flow_timer: cfg.registrar.flow_timer,
        unbind_on_close: cfg.registrar.remove_bindings_on_flow_close,
        digest_realm: cfg.registrar.digest_realm.clone(),
        nonce_ttl: cfg.registrar.nonce_ttl,
        max_connections: cfg.registrar.max_connections,
        max_connections_per_ip: cfg.registrar.max_connections_per_ip,
        max_tls_handshakes: cfg.registrar.max_tls_handshakes,
        idle_timeout: std::time::Duration::from_secs(cfg.registrar.idle_timeout_secs),
        header_timeout: std::time::Duration::from_secs(cfg.registrar.header_timeout_secs),
        persist_interval: std::time::Duration::from_millis(cfg.registrar.persist_interval_ms),
        node_name: node_name.clone(),
        digest_algorithms: cfg
            .registrar
            .digest_algorithms
            .iter()
            .map(|a| {
                if a == "MD5" {
                    DigestAlgorithm::Md5
                } else {
                    DigestAlgorithm::Sha256
                }
            })
            .collect(),
        ..RegistrarConfig::default()
    };
    // One Digest nonce secret for the cluster, created by the first node to start: a phone
    // challenged by one node may answer another, or this one after a restart.
    let digest_secret = store
        .digest_nonce_secret(rand::random())
        .await
        .map_err(|e| format!("reading the Digest nonce secret: {e}"))?;
    let registrar = Arc::new(
        Registrar::new(reg_cfg, directory.clone(), Arc::new(validator))
            .with_digest_secret(digest_secret),
    );
    // Bindings from before a restart come back with their remaining lifetime, before any listener opens.
    let restored = registrar
        .restore(store.as_ref(), crate::now())
        .await
        .map_err(|e| format!("restoring bindings: {e}"))?;
    let oauth_listener = Arc::new(SipOAuthListener::new(registrar.clone(), sip_tls.shared()));
    let mut reserved = vec![(https_addr.port(), "listen.https_port")];
    if let Some(Ok(a)) = metrics_listener.as_ref().map(|l| l.local_addr()) {
        reserved.push((a.port(), "metrics.listen"));
    }
    if cfg.listen.config_http_port != 0 {
        reserved.push((cfg.listen.config_http_port, "listen.config_http_port"));
    }
    if cfg.listen.config_https_port != 0 {
        reserved.push((cfg.listen.config_https_port, "listen.config_https_port"));
    }
    if cfg.listen.tftp_port != 0 {
        reserved.push((cfg.listen.tftp_port, "listen.tftp_port"));
    }
    // The legacy ports are node fields too, moved live by `Live` (which adds the ports they hold
    // to the clash check); `[legacy]` switches a transport off for good.
    let legacy = Arc::new(sipreg_registrar::LegacyListeners::new(
        registrar.clone(),
        Some(sip_tls.shared()),
    ));
    // The MRA port presents the same certificate as the SIP OAuth port, swapped live with it.
    let mra_listener = Arc::new(
        sipreg_registrar::MraListener::new(
            registrar.clone(),
            sip_tls.shared(),
            sipreg_registrar::MraLimits {
                max_connections: cfg.mra.max_connections,
                max_connections_per_ip: cfg.mra.max_connections_per_ip,
                max_tls_handshakes: cfg.mra.max_tls_handshakes,
            },
        )
        .map_err(|e| format!("SIP MRA TLS: {e}"))?,
    );
    let live = Arc::new(
        Live::new(
            store.clone(),
            directory.clone(),
            keys.clone(),
            oauth_listener.clone(),
            node_name.clone(),
            ip,
            reserved,
        )
        .with_mra(mra_listener.clone())
        .with_legacy(
            legacy.clone(),
            crate::live::LegacyTransports {
                udp: cfg.legacy.udp,
                tcp: cfg.legacy.tcp,
                tls: cfg.legacy.tls,
            },
        ),
    );
    live.apply().await.map_err(|p| p.detail)?;

    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(registrar.clone().spawn_expiry_sweeper(cancel.clone()));
    // The persister is cancelled last, after the listeners, and flushes once more on its way out.
    let persist_cancel = CancellationToken::new();
    let persister = tokio::spawn(
        registrar
            .clone()
            .run_persister(store.clone(), persist_cancel.clone()),
    );
    tasks.spawn(live.clone().follow(cancel.clone()));
    tasks.spawn(sipreg_store::heartbeat_loop(
        store.clone(),
        node_name.clone(),
        sipreg_store::HEARTBEAT_INTERVAL,
        cancel.clone().cancelled_owned(),
    ));
    tasks.spawn(crate::api_tokens::prune_keys(
        tokens.clone(),
        store.clone(),
        cancel.clone(),
    ));

    // Certificate files changed on disk go live within seconds; expiry is watched the same way.
    let certs = Arc::new(crate::api_certs::CertControl::new(
        data_dir.join("tls"),
        names.clone(),
        sip_tls.clone(),
        https_tls.clone(),
    ));
    tasks.spawn(certs.clone().watch(store.clone(), cancel.clone()));
    let api_state = ApiState {
        store: store.clone(),
        live: live.clone(),
        admin_token_sha256: Sha256::digest(admin.as_bytes()).into(),
        status: Arc::new(crate::api_status::StatusInfo {
            fixed_listeners: std::sync::RwLock::new(vec![(
                "https (tokens, admin API)".into(),
                https_addr.to_string(),
            )]),
            registrar: registrar.clone(),
            server_cert: pki.server_cert.clone(),
        }),
        tokens: tokens.clone(),
        certs: certs.clone(),
    };
    let config_fetches = Arc::new(sipreg_tftp_config::FetchStats::default());
    let metrics_sources = Arc::new(crate::metrics::Sources {
        registrar: registrar.clone(),
        tokens: token_outcomes.clone(),
        grants: tokens.metrics().clone(),
        fetches: config_fetches.clone(),
        started: std::time::Instant::now(),
    });
    let status_info = api_state.status.clone();
    if let Some(l) = metrics_listener {
        if let Ok(a) = l.local_addr() {
            println!("  metrics:          http://{a}/metrics");
            if let Ok(mut fixed) = status_info.fixed_listeners.write() {
                fixed.push(("metrics (HTTP)".into(), a.to_string()));
            }
        }
        tasks.spawn(crate::https::serve_plain(
            l,
            crate::metrics::router(metrics_sources.clone()),
            cfg.http.limits(),
            cancel.clone(),
        ));
    }
    let app = tokens
        .clone()
        .router()
        .merge(crate::health::router(api_state.clone()))
        .merge(crate::metrics::router(metrics_sources.clone()))
        .merge(crate::axl::router(api_state.clone()))
        .merge(api::router(api_state));
    tasks.spawn(crate::https::serve(
        https_listener,
        https_tls.shared(),
        app,
        cfg.http.limits(),
        cancel.clone(),
    ));
    let config_started = crate::config_service::start(
        crate::config_service::Ctx {
            ip,
            listen: cfg.listen.clone(),
            limits: cfg.http.limits(),
            cache_bytes: cfg.device_config.cache_bytes(),
            directory: directory.clone(),
            validator: config_validator,
            tls: https_tls.shared(),
            fetches: config_fetches,
            cancel: cancel.clone(),
        },
        &mut tasks,
    )
    .await?;

    let api_url = format!("https://localhost:{}", https_addr.port());
    let mode = if directory.snapshot().oauth_mode() {
        "on"
    } else {
        "off (the port opens when it is enabled)"
    };
    println!(
        "sipreg {} node {node_name} serving",
        env!("CARGO_PKG_VERSION")
    );
    println!("  data dir:         {}", data_dir.display());
    println!("  CA certificate:   {}", pki.ca_cert.display());
    println!("  admin token file: {}", token_path.display());
    println!("  token service + admin API: https://{https_addr} ({api_url}/api/v1)");
    if let Ok(mut fixed) = status_info.fixed_listeners.write() {
        fixed.extend(config_started.bound.iter().cloned());
    }
    for line in &config_started.lines {
        println!("  {line}");
    }
    println!("  SIP OAuth (TLS):  {oauth_addr}, cluster OAuth mode {mode}");
    println!(
        "  SIP MRA OAuth (mutual TLS): {}",
        mra_listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("port {mra_port}, opens with cluster OAuth mode"))
    );
    tracing::info!(%https_addr, %oauth_addr, "listening");

    let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    println!(
        "  SIP legacy (Digest): UDP {}, TCP {}, TLS {}",
        show(legacy.udp_addr()),
        show(legacy.tcp_addr()),
        show(legacy.tls_addr())
    );
    println!("  bindings restored: {restored}");
    // Not a secret: lets the CLI find this server's API without flags. Written after the summary
    // above, so whoever waits for it (scripts, the end-to-end tests) finds the summary complete.
    let _ = std::fs::write(data_dir.join("api-url"), format!("{api_url}\n"));

    shutdown_signal().await;
    println!("sipreg: shutting down");
    cancel.cancel();
    legacy.shutdown().await;
    let _ = oauth_listener.set(None).await;
    let _ = mra_listener.set(None).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    persist_cancel.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), persister).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
