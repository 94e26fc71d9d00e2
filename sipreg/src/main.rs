//! `sipreg`: a SIP registrar with OAuth token authentication.
//!
//! `sipreg serve` runs the server (see [`serve`]); every other subcommand is a client of the admin
//! API (see [`cli`]).
#![forbid(unsafe_code)]

mod admin_auth;
mod api;
mod api_certs;
mod api_cluster;
mod api_digest;
mod api_edges;
mod api_issuers;
mod api_lines;
mod api_nodes;
mod api_profiles;
mod api_registrations;
mod api_status;
mod api_tokens;
mod axl;
mod backup;
mod cli;
mod cli_admin;
mod cli_cluster;
mod cli_edges;
mod cli_issuers;
mod cli_profiles;
mod cli_tokens;
mod config;
mod config_service;
mod health;
mod https;
mod live;
mod metrics;
mod openapi;
mod problem;
mod serve;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A SIP registrar with OAuth token authentication.
#[derive(Parser)]
#[command(name = "sipreg", version, about)]
struct Cli {
    /// Data dir holding the database, keys, certificates and the admin token.
    #[arg(
        long,
        global = true,
        env = "SIPREG_DATA_DIR",
        default_value = "./sipreg-data"
    )]
    data_dir: PathBuf,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "SIPREG_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults when no config file is given).
    Serve(ServeArgs),
    /// Cluster SIP OAuth mode.
    #[command(name = "oauth-mode")]
    OAuthMode {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli::OAuthModeAction,
    },
    /// Cluster settings: token lifetimes, refresh login, password grant, challenge dialect,
    /// registration expiry (applied live on every node).
    Cluster {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_cluster::ClusterAction,
    },
    /// Device security profiles: OAuth, Digest and its transports (applied live).
    Profile {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_profiles::ProfileAction,
    },
    /// Lines (directory numbers) across devices.
    Line {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_profiles::LineAction,
    },
    /// End users.
    User {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli::UserAction,
    },
    /// Devices (soft clients and phones) with their lines.
    Device {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli::DeviceAction,
    },
    /// Nodes and their SIP OAuth ports.
    Node {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_admin::NodeAction,
    },
    /// Admin API tokens.
    Token {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_admin::TokenAction,
    },
    /// Node, listeners (open or closed), OAuth mode, counts and certificate expiry.
    Status {
        #[command(flatten)]
        api: cli::ApiArgs,
    },
    /// OAuth clients for the authorization code flow.
    Client {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_tokens::ClientAction,
    },
    /// Token signing keys: rotate without mass logout, list.
    Keys {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_tokens::KeysAction,
    },
    /// Trusted external token issuers (an enterprise IdP).
    Issuer {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_issuers::IssuerAction,
    },
    /// Edge proxies allowed on the SIP MRA OAuth port (mutual TLS).
    Edge {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_edges::EdgeAction,
    },
    /// The trust store: CAs edge certificates must chain to.
    Trust {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_edges::TrustAction,
    },
    /// The server certificate (show, regenerate live).
    Certs {
        #[command(flatten)]
        api: cli::ApiArgs,
        #[command(subcommand)]
        action: cli_admin::CertsAction,
    },
    /// Write a consistent copy of the SQLite database (online).
    Backup {
        /// The new backup file.
        file: PathBuf,
    },
    /// Replace the SQLite database with a backup (stop the server first).
    Restore {
        /// The backup file.
        file: PathBuf,
    },
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; unknown keys are rejected.
    #[arg(long, env = "SIPREG_CONFIG")]
    config: Option<PathBuf>,
    /// Address every listener binds to (overrides `listen.address`).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// SIP OAuth (TLS) port (overrides `listen.sip_oauth_port`; 0 picks a free one).
    #[arg(long)]
    sip_oauth_port: Option<u16>,
    /// HTTPS port of the token service and admin API (overrides `listen.https_port`).
    #[arg(long)]
    https_port: Option<u16>,
    /// Device config HTTP port (overrides `listen.config_http_port`).
    #[arg(long)]
    config_http_port: Option<u16>,
    /// Token-protected device config HTTPS port (overrides `listen.config_https_port`).
    #[arg(long)]
    config_https_port: Option<u16>,
    /// TFTP UDP port, 0 for off (overrides `listen.tftp_port`).
    #[arg(long)]
    tftp_port: Option<u16>,
    /// SIP MRA OAuth (mutual TLS) port (overrides the node's stored `sip_mra_oauth_port`).
    #[arg(long)]
    sip_mra_oauth_port: Option<u16>,
    /// Legacy SIP UDP/TCP port (overrides `listen.sip_port`).
    #[arg(long)]
    sip_port: Option<u16>,
    /// Legacy SIP TLS port (overrides `listen.secured_sip_port`).
    #[arg(long)]
    secured_sip_port: Option<u16>,
    /// Turn the legacy SIP ports off (overrides `[legacy]`).
    #[arg(long)]
    no_legacy: bool,
    /// Token issuer URL, the same on every node of a cluster (overrides `tokens.issuer`).
    #[arg(long)]
    token_issuer: Option<String>,
    /// Host name clients use for this node (overrides `public_host`).
    #[arg(long)]
    public_host: Option<String>,
    /// This node's name (overrides `node_name`).
    #[arg(long)]
    node_name: Option<String>,
    /// Store URL, `sqlite://PATH` or `postgres://USER@HOST/DB` (overrides `store`).
    #[arg(long, env = "SIPREG_STORE")]
    store: Option<String>,
    /// Also serve `/metrics` over plain HTTP on this `IP:PORT` (overrides `metrics.listen`).
    #[arg(long)]
    metrics_listen: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the whole process: aws-lc-rs (ring is never built).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // SIPREG_LOG, else RUST_LOG, takes tracing's filter syntax (e.g. `info,sipreg_registrar=debug`).
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIPREG_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sipreg: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let opts = match serve_options(cli.data_dir, args) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("sipreg: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(serve::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sipreg: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::OAuthMode { api, action } => {
            rt.block_on(cli::oauth_mode(&cli.data_dir, api, action))
        }
        Command::Cluster { api, action } => {
            rt.block_on(cli_cluster::cluster(&cli.data_dir, api, action))
        }
        Command::Profile { api, action } => {
            rt.block_on(cli_profiles::profile(&cli.data_dir, api, action))
        }
        Command::Line { api, action } => {
            rt.block_on(cli_profiles::line(&cli.data_dir, api, action))
        }
        Command::User { api, action } => rt.block_on(cli::user(&cli.data_dir, api, action)),
        Command::Device { api, action } => rt.block_on(cli::device(&cli.data_dir, api, action)),
        Command::Node { api, action } => rt.block_on(cli_admin::node(&cli.data_dir, api, action)),
        Command::Token { api, action } => rt.block_on(cli_admin::token(&cli.data_dir, api, action)),
        Command::Status { api } => rt.block_on(cli_admin::status(&cli.data_dir, api)),
        Command::Client { api, action } => {
            rt.block_on(cli_tokens::client(&cli.data_dir, api, action))
        }
        Command::Keys { api, action } => rt.block_on(cli_tokens::keys(&cli.data_dir, api, action)),
        Command::Edge { api, action } => rt.block_on(cli_edges::edge(&cli.data_dir, api, action)),
        Command::Issuer { api, action } => {
            rt.block_on(cli_issuers::issuer(&cli.data_dir, api, action))
        }
        Command::Trust { api, action } => rt.block_on(cli_edges::trust(&cli.data_dir, api, action)),
        Command::Certs { api, action } => rt.block_on(cli_admin::certs(&cli.data_dir, api, action)),
        Command::Backup { file } => backup::backup(&cli.data_dir, &file),
        Command::Restore { file } => backup::restore(&cli.data_dir, &file),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "sipreg", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

fn serve_options(
    data_dir: PathBuf,
    a: ServeArgs,
) -> Result<serve::ServeOptions, config::ConfigError> {
    let explicit_oauth_port = a.sip_oauth_port.is_some();
    let explicit_mra_port = a.sip_mra_oauth_port.is_some();
    let mut cfg = match &a.config {
        Some(p) => config::Config::from_file(p)?,
        None => config::Config::default(),
    };
    if let Some(v) = a.bind {
        cfg.listen.address = v;
    }
    if let Some(v) = a.sip_oauth_port {
        cfg.listen.sip_oauth_port = v;
    }
    if let Some(v) = a.https_port {
        cfg.listen.https_port = v;
    }
    if let Some(v) = a.config_http_port {
        cfg.listen.config_http_port = v;
    }
    if let Some(v) = a.config_https_port {
        cfg.listen.config_https_port = v;
    }
    if let Some(v) = a.tftp_port {
        cfg.listen.tftp_port = v;
    }
    if let Some(v) = a.sip_mra_oauth_port {
        cfg.listen.sip_mra_oauth_port = v;
    }
    if let Some(v) = a.sip_port {
        cfg.listen.sip_port = v;
    }
    if let Some(v) = a.secured_sip_port {
        cfg.listen.secured_sip_port = v;
    }
    if a.no_legacy {
        cfg.legacy = config::LegacySection {
            udp: false,
            tcp: false,
            tls: false,
        };
    }
    if a.token_issuer.is_some() {
        cfg.tokens.issuer = a.token_issuer;
    }
    if a.metrics_listen.is_some() {
        cfg.metrics.listen = a.metrics_listen;
    }
    if a.public_host.is_some() {
        cfg.public_host = a.public_host;
    }
    if a.node_name.is_some() {
        cfg.node_name = a.node_name;
    }
    if a.store.is_some() {
        cfg.store = a.store;
    }
    cfg.validate()?;
    // The config file's data_dir applies unless the command line or environment named one.
    let data_dir = match (&cfg.data_dir, data_dir.as_os_str() == "./sipreg-data") {
        (Some(d), true) => d.clone(),
        _ => data_dir,
    };
    Ok(serve::ServeOptions {
        data_dir,
        config: cfg,
        explicit_oauth_port,
        explicit_mra_port,
    })
}
