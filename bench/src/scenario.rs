//! The four load scenarios of issue 8 and the loops that drive them.
//!
//! * [`Scenario::Steady`]: persistent connections, each re-using one token, refreshing its
//!   share of the AORs as fast as answers come (a bounded number in flight) or at a target rate.
//! * [`Scenario::UniqueToken`]: the same, but every REGISTER carries a token not used before.
//! * [`Scenario::Storm`]: N devices each open a new connection (full TLS handshake, no
//!   resumption) and register once with their own token, as after an outage.
//! * [`Scenario::IdleHold`]: N devices connect and register, then stay idle sending RFC 5626
//!   keep-alives; the server's memory is measured with all of them open.
//!
//! Every summary carries the CPU time of the load generator and (with a server PID) of the
//! server's process tree over the measured phase, and the kernel's listen-queue drops
//! ([`crate::cpu`]). The generator shares the machine with the server, so it is built to be cheap
//! per simulated device, which changes nothing the server sees:
//!
//! * Storm and idle-hold run a pool of `concurrency` set-up workers that take device numbers from
//!   a counter, instead of one task per device spawned up front; a device whose connection is
//!   held gets a small holding task only once registered.
//! * All devices record into one [`Stats`] (one latency histogram of ~140 KB), not one `Stats`
//!   per device merged at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, timeout, Instant};

use crate::cpu::CpuProbe;
use crate::memory;
use crate::sip::{parse_response, write_register, RegisterParams};
use crate::stats::{ConnErrorKind, MemoryReport, Stats, Summary};
use crate::transport::{Connection, Connector, Transport, TransportError};

/// Which load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Refreshes over persistent connections, each client re-using its token.
    Steady,
    /// Every REGISTER carries a token never used before.
    UniqueToken,
    /// N devices each open a new connection and register once.
    Storm,
    /// N devices connect, register, then idle with keep-alives while memory is measured.
    IdleHold,
}

impl Scenario {
    /// The name used on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::UniqueToken => "unique-token",
            Scenario::Storm => "storm",
            Scenario::IdleHold => "idle-hold",
        }
    }
}

/// How a run is shaped. AOR number `i` is `sip:<line_base + i>@<domain>`, registered from device
/// `<device_prefix><i / lines_per_device>` (the layout `provision` creates).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Server label for the summary.
    pub label: String,
    /// Persistent connections (steady, unique-token) or devices (storm, idle-hold).
    pub connections: usize,
    /// Requests in flight per persistent connection.
    pub in_flight: usize,
    /// Distinct AORs refreshed by the persistent scenarios (at least `connections`).
    pub aors: u64,
    /// First line number.
    pub line_base: u64,
    /// Domain of the AORs.
    pub domain: String,
    /// Device names in the Contact (`None`: no device parameter).
    pub device_prefix: Option<String>,
    /// Lines per provisioned device.
    pub lines_per_device: u64,
    /// Longest time the persistent scenarios send.
    pub duration: Duration,
    /// Most REGISTERs the persistent scenarios send in total (0: no limit but `duration`).
    pub max_requests: u64,
    /// Target aggregate rate in REGISTER/s (0: as fast as answers come).
    pub rate: f64,
    /// Requested expiry.
    pub expires: u32,
    /// Time to wait for an answer (and for a connection) before counting a timeout.
    pub timeout: Duration,
    /// Connection set-ups in flight at once (storm, idle-hold).
    pub concurrency: usize,
    /// How long idle-hold keeps the connections open once all registered.
    pub hold: Duration,
    /// Keep-alive interval during idle-hold.
    pub keepalive: Duration,
    /// Server process whose memory (PSS of its process tree, idle-hold and storm) and CPU time
    /// (its process tree, every scenario) are reported.
    pub server_pid: Option<u32>,
    /// Storm: close each connection as soon as its REGISTER is answered, instead of holding all
    /// of them to the end (for more devices than the machine has file descriptors).
    pub release_each: bool,
    /// Bearer tokens; empty sends none (e.g. for Kamailio).
    pub tokens: Arc<Vec<String>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            label: "server".into(),
            connections: 10,
            in_flight: 8,
            aors: 1000,
            line_base: 100_000,
            domain: "localhost".into(),
            device_prefix: Some("CSFBENCH".into()),
            lines_per_device: 64,
            duration: Duration::from_secs(10),
            max_requests: 0,
            rate: 0.0,
            expires: 3600,
            timeout: Duration::from_secs(10),
            concurrency: 256,
            hold: Duration::from_secs(10),
            keepalive: Duration::from_secs(5),
            server_pid: None,
            release_each: false,
            tokens: Arc::new(Vec::new()),
        }
    }
}

/// Errors that stop a run before it produced a summary.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options make no sense.
    #[error("{0}")]
    Options(String),
    /// No persistent connection could be opened.
    #[error("cannot connect: {0}")]
    Connect(#[from] TransportError),
    /// Server memory could not be read.
    #[error("memory: {0}")]
    Memory(#[from] memory::MemoryError),
}

struct Shared {
    opts: LoadOptions,
    run_id: u64,
    sent: AtomicU64,
    next_token: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn device(&self, aor: u64) -> Option<String> {
        self.opts
            .device_prefix
            .as_ref()
            .map(|p| format!("{p}{}", aor / self.opts.lines_per_device.max(1)))
    }
}

fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn server_mem(opts: &LoadOptions) -> Result<Option<f64>, LoadError> {
    opts.server_pid
        .map(memory::tree_pss_mib)
        .transpose()
        .map_err(Into::into)
}

/// Runs `scenario` against the server `connector` points at and returns its summary.
pub async fn run(
    scenario: Scenario,
    connector: Connector,
    opts: LoadOptions,
) -> Result<Summary, LoadError> {
    if opts.connections == 0 || opts.in_flight == 0 || opts.concurrency == 0 {
        return Err(LoadError::Options(
            "connections, in-flight and concurrency must be at least 1".into(),
        ));
    }
    if scenario == Scenario::UniqueToken && opts.tokens.is_empty() {
        return Err(LoadError::Options(
            "unique-token needs a token file (--tokens)".into(),
        ));
    }
    let shared = Arc::new(Shared {
        opts,
        run_id: run_id(),
        sent: AtomicU64::new(0),
        next_token: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    match scenario {
        Scenario::Steady | Scenario::UniqueToken => persistent(scenario, connector, shared).await,
        Scenario::Storm | Scenario::IdleHold => devices(scenario, connector, shared).await,
    }
}

async fn persistent(
    scenario: Scenario,
    connector: Connector,
    shared: Arc<Shared>,
) -> Result<Summary, LoadError> {
    let opts = &shared.opts;
    // Connections are opened before the clock starts: these scenarios measure refreshes.
    let mut conns = Vec::with_capacity(opts.connections);
    for i in 0..opts.connections {
        conns.push(connector.connect(i, opts.timeout).await?);
    }
    let probe = CpuProbe::start(opts.server_pid);
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        tasks.spawn(refresh_loop(
            i,
            c,
            scenario,
            connector.transport(),
            shared.clone(),
            deadline,
        ));
    }
    let mut stats = Stats::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(s) => stats.merge(&s),
            Err(_) => stats.conn_error(ConnErrorKind::Task),
        }
    }
    let elapsed = start.elapsed();
    Ok(Summary {
        scenario: scenario.name().into(),
        label: shared.opts.label.clone(),
        transport: connector.transport().via_name(),
        connections: shared.opts.connections,
        elapsed,
        stats,
        memory: None,
        cpu: probe.finish(),
    })
}

/// One persistent connection: keeps up to `in_flight` REGISTERs outstanding (or paces them at
/// its share of the target rate) until the deadline or the request budget, then drains.
async fn refresh_loop(
    idx: usize,
    mut conn: Connection,
    scenario: Scenario,
    transport: Transport,
    shared: Arc<Shared>,
    deadline: Instant,
) -> Stats {
    let opts = &shared.opts;
    let mut stats = Stats::default();
    let aors = opts.aors.max(opts.connections as u64);
    let mine: Vec<u64> = (idx as u64..aors).step_by(opts.connections).collect();
    let devices: Vec<Option<String>> = mine.iter().map(|a| shared.device(*a)).collect();
    let interval =
        (opts.rate > 0.0).then(|| Duration::from_secs_f64(opts.connections as f64 / opts.rate));
    let local = conn.local_addr();
    let mut next_send = Instant::now();
    let mut inflight: Vec<(u32, Instant)> = Vec::with_capacity(opts.in_flight);
    let mut cseq: u32 = 1;
    let mut turn = 0usize;
    let mut out = Vec::with_capacity(1024);
    let mut stopping = false;
    loop {
        stopping = stopping || Instant::now() >= deadline || shared.stop.load(Ordering::Relaxed);
        while !stopping
            && inflight.len() < opts.in_flight
            && interval.is_none_or(|_| Instant::now() >= next_send)
        {
            if opts.max_requests > 0
                && shared.sent.fetch_add(1, Ordering::Relaxed) >= opts.max_requests
            {
                stopping = true;
                break;
            }
            let token = match scenario {
                Scenario::UniqueToken => {
                    let i = shared.next_token.fetch_add(1, Ordering::Relaxed);
                    match opts.tokens.get(i) {
                        Some(t) => Some(t.as_str()),
                        None => {
                            shared.stop.store(true, Ordering::Relaxed);
                            stopping = true;
                            break;
                        }
                    }
                }
                _ => {
                    (!opts.tokens.is_empty()).then(|| opts.tokens[idx % opts.tokens.len()].as_str())
                }
            };
            let k = turn % mine.len();
            turn += 1;
            write_register(
                &mut out,
                &RegisterParams {
                    transport,
                    local,
                    domain: &opts.domain,
                    line: opts.line_base + mine[k],
                    device: devices[k].as_deref(),
                    run_id: shared.run_id,
                    cseq,
                    expires: opts.expires,
                    token,
                },
            );
            if let Err(e) = conn.send(&out).await {
                stats.conn_error(e.kind());
                stats.timeouts += inflight.len() as u64;
                return stats;
            }
            inflight.push((cseq, Instant::now()));
            cseq = cseq.wrapping_add(1);
            stats.sent += 1;
            if let Some(iv) = interval {
                next_send += iv;
            }
        }
        if inflight.is_empty() {
            if stopping {
                break;
            }
            if interval.is_some() {
                sleep_until(next_send.min(deadline)).await;
            }
            continue;
        }
        let pacing = interval.is_some() && !stopping && inflight.len() < opts.in_flight;
        let wake = if pacing {
            next_send.min(deadline)
        } else {
            Instant::now() + opts.timeout
        };
        tokio::select! {
            r = timeout(opts.timeout, conn.recv()) => match r {
                Err(_) => {
                    stats.timeouts += inflight.len() as u64;
                    return stats;
                }
                Ok(Err(e)) => {
                    stats.conn_error(e.kind());
                    stats.timeouts += inflight.len() as u64;
                    return stats;
                }
                Ok(Ok(msg)) => match parse_response(&msg) {
                    Ok(head) => {
                        if let Some(pos) = inflight.iter().position(|(c, _)| *c == head.cseq) {
                            let (_, t0) = inflight.swap_remove(pos);
                            stats.response(head.status, t0.elapsed());
                        }
                    }
                    Err(_) => {
                        stats.conn_error(ConnErrorKind::BadResponse);
                        stats.timeouts += inflight.len() as u64;
                        return stats;
                    }
                },
            },
            _ = sleep_until(wake), if pacing => {}
        }
    }
    conn.close().await;
    stats
}

/// Storm and idle-hold: `concurrency` workers set devices up (connect, REGISTER, answer), each
/// taking the next device number from a shared counter until all are done; that is the measured
/// phase. Held connections (idle-hold; storm without `release_each`) then wait for the release.
async fn devices(
    scenario: Scenario,
    connector: Connector,
    shared: Arc<Shared>,
) -> Result<Summary, LoadError> {
    let opts = &shared.opts;
    let before = server_mem(opts)?;
    let (release_tx, release_rx) = watch::channel(false);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let n = opts.connections;
    let probe = CpuProbe::start(opts.server_pid);
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..opts.concurrency.min(n) {
        workers.spawn(setup_worker(
            scenario,
            connector.clone(),
            shared.clone(),
            next.clone(),
            stats.clone(),
            release_rx.clone(),
        ));
    }
    let mut holders = Vec::new();
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(h) => holders.extend(h),
            // The device being set up is lost; the others go to the remaining workers.
            Err(_) => lock(&stats).conn_error(ConnErrorKind::Task),
        }
    }
    let elapsed = start.elapsed();
    let cpu = probe.finish();
    let mut after = server_mem(opts)?;
    if scenario == Scenario::IdleHold {
        tokio::time::sleep(opts.hold).await;
        // Keep-alives ran meanwhile; take the larger reading.
        after = match (after, server_mem(opts)?) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let _ = release_tx.send(true);
    for h in holders {
        let failed = match h.await {
            Ok(failed) => failed,
            Err(_) => Some(ConnErrorKind::Task),
        };
        if let Some(kind) = failed {
            lock(&stats).conn_error(kind);
        }
    }
    let stats = std::mem::take(&mut *lock(&stats));
    let memory = match (before, after) {
        (Some(b), Some(a)) => Some(MemoryReport {
            before_mib: b,
            after_mib: a,
            per: stats.ok(),
        }),
        _ => None,
    };
    Ok(Summary {
        scenario: scenario.name().into(),
        label: shared.opts.label.clone(),
        transport: connector.transport().via_name(),
        connections: n,
        elapsed,
        stats,
        memory,
        cpu,
    })
}

/// The run's shared counters; a panic while holding the lock cannot leave them inconsistent
/// beyond one device, so a poisoned lock is used as is.
fn lock(stats: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One set-up worker: devices one after another until the counter passes the last device. Returns
/// the holding tasks of the connections it kept open.
async fn setup_worker(
    scenario: Scenario,
    connector: Connector,
    shared: Arc<Shared>,
    next: Arc<AtomicUsize>,
    stats: Arc<Mutex<Stats>>,
    release: watch::Receiver<bool>,
) -> Vec<JoinHandle<Option<ConnErrorKind>>> {
    let keep = !(shared.opts.release_each && scenario == Scenario::Storm);
    let mut holders = Vec::new();
    let mut out = Vec::with_capacity(1024);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= shared.opts.connections {
            return holders;
        }
        let Some(conn) = setup_device(i, &connector, &shared, &stats, &mut out).await else {
            continue;
        };
        if keep {
            holders.push(tokio::spawn(hold(
                conn,
                scenario,
                connector.transport(),
                shared.clone(),
                release.clone(),
            )));
        } else {
            conn.close().await;
        }
    }
}

/// Connects device `i` and registers it once; the connection if it got an answer.
async fn setup_device(
    i: usize,
    connector: &Connector,
    shared: &Shared,
    stats: &Mutex<Stats>,
    out: &mut Vec<u8>,
) -> Option<Connection> {
    let opts = &shared.opts;
    let t0 = Instant::now();
    let aor = i as u64;
    let device = shared.device(aor);
    let token = (!opts.tokens.is_empty()).then(|| opts.tokens[i % opts.tokens.len()].as_str());
    // The REGISTER goes out with the handshake's last flight (`Connector::connect_and_send`).
    let register = |local, out: &mut Vec<u8>| {
        write_register(
            out,
            &RegisterParams {
                transport: connector.transport(),
                local,
                domain: &opts.domain,
                line: opts.line_base + aor,
                device: device.as_deref(),
                run_id: shared.run_id,
                cseq: 1,
                expires: opts.expires,
                token,
            },
        )
    };
    let mut conn = match connector
        .connect_and_send(i, opts.timeout, out, register)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            lock(stats).conn_error(e.kind());
            return None;
        }
    };
    let outcome = timeout(opts.timeout, conn.recv()).await;
    let mut stats = lock(stats);
    stats.sent += 1;
    match outcome {
        Err(_) => stats.timeouts += 1,
        Ok(Err(e)) => stats.conn_error(e.kind()),
        Ok(Ok(msg)) => match parse_response(&msg) {
            Ok(h) => stats.response(h.status, t0.elapsed()),
            Err(_) => stats.conn_error(ConnErrorKind::BadResponse),
        },
    }
    drop(stats);
    Some(conn)
}

/// Holds one registered connection until the release (idle-hold: with RFC 5626 keep-alives).
/// Returns how it failed, if it did.
async fn hold(
    mut conn: Connection,
    scenario: Scenario,
    transport: Transport,
    shared: Arc<Shared>,
    mut release: watch::Receiver<bool>,
) -> Option<ConnErrorKind> {
    let opts = &shared.opts;
    loop {
        if *release.borrow() {
            break;
        }
        if scenario == Scenario::IdleHold
            && opts.keepalive > Duration::ZERO
            && transport != Transport::Udp
        {
            tokio::select! {
                _ = release.changed() => break,
                _ = tokio::time::sleep(opts.keepalive) => {
                    // RFC 5626 §4.4.1 double-CRLF ping; the pong is a single CRLF.
                    let ping = async {
                        conn.send(b"\r\n\r\n").await?;
                        conn.recv_pong().await
                    };
                    match timeout(opts.timeout, ping).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Some(e.kind()),
                        Err(_) => return Some(ConnErrorKind::KeepaliveTimeout),
                    }
                }
            }
        } else if release.changed().await.is_err() {
            break;
        }
    }
    conn.close().await;
    None
}
