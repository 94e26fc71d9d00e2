//! `sipreg-load`: the load generator of issue 8. `provision` prepares a sipreg server (user,
//! devices, OAuth mode, a token file); `run` drives a scenario and prints one `RESULT` line;
//! `bindings-mem` measures the memory of the location service in-process.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sipreg_bench::provision::{provision, ProvisionOptions};
use sipreg_bench::scenario::{run, LoadOptions, Scenario};
use sipreg_bench::transport::{client_config, Connector, Transport};

#[derive(Parser)]
#[command(
    name = "sipreg-load",
    about = "Load generator for SIP registrars (sipreg, Kamailio)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a user, devices with lines and tokens on a running sipreg (admin API).
    Provision(ProvisionArgs),
    /// Run one scenario and print a RESULT line.
    Run(RunArgs),
    /// Register N bindings into an in-process location service and report its memory.
    BindingsMem(BindingsArgs),
}

#[derive(Args)]
struct ProvisionArgs {
    /// Token service and admin API base URL, e.g. https://localhost:8443.
    #[arg(long)]
    api: String,
    /// CA certificate of the server (PEM), e.g. DATA/tls/ca.pem.
    #[arg(long)]
    ca: PathBuf,
    /// File holding the admin token (DATA/admin-token).
    #[arg(long)]
    admin_token_file: PathBuf,
    /// AORs to provision.
    #[arg(long, default_value_t = 1000)]
    aors: u64,
    /// First line number.
    #[arg(long, default_value_t = 100_000)]
    line_base: u64,
    /// Device name prefix.
    #[arg(long, default_value = "CSFBENCH")]
    device_prefix: String,
    /// Lines per device (1-64).
    #[arg(long, default_value_t = 64)]
    lines_per_device: u64,
    /// User owning the devices.
    #[arg(long, default_value = "bench")]
    user: String,
    /// That user's password.
    #[arg(long, default_value = "bench-password-1")]
    password: String,
    /// Access tokens to obtain.
    #[arg(long, default_value_t = 100)]
    tokens: usize,
    /// Parallel refresh-token chains.
    #[arg(long, default_value_t = 8)]
    chains: usize,
    /// Admin API requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// PID of the server, to report its CPU time per refresh grant.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Where to write the tokens, one per line.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address (IP:port).
    #[arg(long)]
    target: SocketAddr,
    /// Transport.
    #[arg(long, value_enum, default_value = "tls")]
    transport: Transport,
    /// CA certificate (PEM) to verify the server with (TLS).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Token file, one token per line (none: REGISTER without credentials).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Skip this many tokens of the file (to keep unique-token's tokens unseen).
    #[arg(long, default_value_t = 0)]
    token_offset: usize,
    /// Label of the server in the RESULT line.
    #[arg(long, default_value = "server")]
    label: String,
    /// Persistent connections (steady, unique-token) or devices (storm, idle-hold).
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: usize,
    /// REGISTERs in flight per persistent connection.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Distinct AORs of the persistent scenarios.
    #[arg(long, default_value_t = 1000)]
    aors: u64,
    /// First line number.
    #[arg(long, default_value_t = 100_000)]
    line_base: u64,
    /// Domain of the AORs.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Device name prefix for the Contact's device parameter ("" for none).
    #[arg(long, default_value = "CSFBENCH")]
    device_prefix: String,
    /// Lines per provisioned device.
    #[arg(long, default_value_t = 64)]
    lines_per_device: u64,
    /// Seconds the persistent scenarios send.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Most REGISTERs in total (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_requests: u64,
    /// Target rate in REGISTER/s (0: as fast as answers come).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Requested expiry.
    #[arg(long, default_value_t = 3600)]
    expires: u32,
    /// Seconds to wait for an answer or a connection.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Connection set-ups in flight (storm, idle-hold).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds idle-hold keeps the connections once all registered.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Keep-alive interval of idle-hold, seconds.
    #[arg(long, default_value_t = 5.0)]
    keepalive: f64,
    /// Loopback source addresses to spread connections over (127.0.0.1..N); 0 picks one per
    /// 20,000 connections.
    #[arg(long, default_value_t = 0)]
    source_ips: u8,
    /// PID of the server, to report its CPU time (every scenario) and memory (storm, idle-hold),
    /// both over its process tree.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Storm: close each connection once its REGISTER is answered (beyond the fd limit).
    #[arg(long)]
    release_each: bool,
    /// Exit non-zero unless every REGISTER got a 2xx.
    #[arg(long)]
    expect_ok: bool,
}

#[derive(Args)]
struct BindingsArgs {
    /// Bindings to create.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sipreg-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Provision(a) => rt.block_on(cmd_provision(a)),
        Command::Run(a) => rt.block_on(cmd_run(a)),
        Command::BindingsMem(a) => cmd_bindings(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipreg-load: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cmd_provision(a: ProvisionArgs) -> Result<(), String> {
    let admin_token = std::fs::read_to_string(&a.admin_token_file)
        .map_err(|e| format!("{}: {e}", a.admin_token_file.display()))?
        .trim()
        .to_owned();
    let opts = ProvisionOptions {
        api: a.api,
        ca: a.ca,
        admin_token,
        user: a.user,
        password: a.password,
        aors: a.aors,
        line_base: a.line_base,
        device_prefix: a.device_prefix,
        lines_per_device: a.lines_per_device,
        tokens: a.tokens,
        chains: a.chains,
        concurrency: a.concurrency,
        server_pid: a.server_pid,
    };
    let report = provision(&opts).await.map_err(|e| e.to_string())?;
    let mut text = report.tokens.join("\n");
    text.push('\n');
    std::fs::write(&a.out, text).map_err(|e| format!("{}: {e}", a.out.display()))?;
    // CPU per refresh grant: `-` where unknown (no --server-pid, or /proc unreadable).
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    println!(
        "PROVISION devices={} device_time={:.2}s tokens={} refresh_grants={} refresh_time={:.2}s \
         refresh_rate={:.0}/s server_cpu_us_per_grant={} load_cpu_us_per_grant={}",
        report.devices,
        report.device_time.as_secs_f64(),
        report.tokens.len(),
        report.refresh_grants,
        report.refresh_time.as_secs_f64(),
        report.refresh_rate(),
        us(report.server_us_per_grant()),
        us(report.load_us_per_grant()),
    );
    Ok(())
}

async fn cmd_run(a: RunArgs) -> Result<(), String> {
    let tokens: Vec<String> = match &a.tokens {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .skip(a.token_offset)
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    if a.tokens.is_some() && tokens.is_empty() {
        return Err("the token file holds no token past --token-offset".into());
    }
    let tls = match (a.transport, &a.ca) {
        (Transport::Tls, Some(ca)) => Some((
            Arc::new(client_config(ca).map_err(|e| e.to_string())?),
            a.server_name.clone(),
        )),
        (Transport::Tls, None) => return Err("--transport tls needs --ca".into()),
        _ => None,
    };
    let source_ips = if a.source_ips == 0 {
        u8::try_from(a.connections.div_ceil(20_000)).unwrap_or(u8::MAX)
    } else {
        a.source_ips
    };
    let connector =
        Connector::new(a.transport, a.target, tls, source_ips).map_err(|e| e.to_string())?;
    let opts = LoadOptions {
        label: a.label,
        connections: a.connections,
        in_flight: a.in_flight,
        aors: a.aors,
        line_base: a.line_base,
        domain: a.domain,
        device_prefix: (!a.device_prefix.is_empty()).then_some(a.device_prefix),
        lines_per_device: a.lines_per_device,
        duration: secs(a.duration)?,
        max_requests: a.max_requests,
        rate: a.rate,
        expires: a.expires,
        timeout: secs(a.timeout)?,
        concurrency: a.concurrency,
        hold: secs(a.hold)?,
        keepalive: secs(a.keepalive)?,
        server_pid: a.server_pid,
        release_each: a.release_each,
        tokens: Arc::new(tokens),
    };
    let summary = run(a.scenario, connector, opts)
        .await
        .map_err(|e| e.to_string())?;
    println!("{summary}");
    if a.expect_ok && (summary.failures() > 0 || summary.stats.ok() == 0) {
        return Err(format!(
            "{} failures, {} successes",
            summary.failures(),
            summary.stats.ok()
        ));
    }
    Ok(())
}

fn secs(v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|e| format!("bad duration {v}: {e}"))
}

fn cmd_bindings(a: BindingsArgs) -> Result<(), String> {
    let r = sipreg_bench::footprint::location_footprint(a.count).map_err(|e| e.to_string())?;
    println!(
        "RESULT scenario=bindings-mem bindings={} rss_before={:.1}MiB rss_after={:.1}MiB \
         per_binding={:.0}B elapsed={:.2}s",
        r.bindings,
        r.before_mib,
        r.after_mib,
        (r.after_mib - r.before_mib) * 1024.0 * 1024.0 / r.bindings.max(1) as f64,
        r.elapsed.as_secs_f64()
    );
    Ok(())
}
