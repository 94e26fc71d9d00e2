//! The four load scenarios of issue 8 and the loops that drive them.
//!
//! * [`Scenario::Steady`]: persistent connections, each re-using one token, refreshing its
//!   share of the AORs as fast as answers come (a bounded number in flight) or at a target rate.
//! * [`Scenario::UniqueToken`]: the same, but every REGISTER carries a token not used before.
//! * [`Scenario::Storm`]: N devices each open a new connection (full TLS handshake, no
//!   resumption) and register once with their own token, as after an outage.
//! * [`Scenario::IdleHold`]: N devices connect and register, then stay idle sending RFC 5626
//!   keep-alives; the server's memory is measured with all of them open.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep_until, timeout, Instant};

use crate::memory;
use crate::sip::{parse_response, write_register, RegisterParams};
use crate::stats::{MemoryReport, Stats, Summary};
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
    /// Server process whose memory (PSS of its process tree) is reported.
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
            device_prefix: Some("BENCH".into()),
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
        conns.push(
            timeout(opts.timeout, connector.connect(i))
                .await
                .map_err(|_| {
                    TransportError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                })??,
        );
    }
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
            Err(_) => stats.conn_errors += 1,
        }
    }
    Ok(Summary {
        scenario: scenario.name().into(),
        label: shared.opts.label.clone(),
        transport: connector.transport().via_name(),
        connections: shared.opts.connections,
        elapsed: start.elapsed(),
        stats,
        memory: None,
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
            if conn.send(&out).await.is_err() {
                stats.conn_errors += 1;
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
                Ok(Err(_)) => {
                    stats.conn_errors += 1;
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
                        stats.conn_errors += 1;
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

/// Storm and idle-hold: one task per device.
async fn devices(
    scenario: Scenario,
    connector: Connector,
    shared: Arc<Shared>,
) -> Result<Summary, LoadError> {
    let opts = &shared.opts;
    let before = server_mem(opts)?;
    let permits = Arc::new(Semaphore::new(opts.concurrency));
    let (release_tx, release_rx) = watch::channel(false);
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let n = opts.connections;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(device(
            i,
            scenario,
            connector.clone(),
            shared.clone(),
            permits.clone(),
            release_rx.clone(),
            done.clone(),
            all_done.clone(),
        ));
    }
    // The measured phase ends when every device registered or gave up.
    while done.load(Ordering::Acquire) < n {
        all_done.notified().await;
    }
    let elapsed = start.elapsed();
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
    let mut stats = Stats::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(s) => stats.merge(&s),
            Err(_) => stats.conn_errors += 1,
        }
    }
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
    })
}

/// Signals one finished set-up (success or failure) to the coordinator.
struct DoneGuard {
    done: Arc<AtomicUsize>,
    notify: Arc<tokio::sync::Notify>,
    fired: bool,
}

impl DoneGuard {
    fn fire(&mut self) {
        if !self.fired {
            self.fired = true;
            self.done.fetch_add(1, Ordering::AcqRel);
            self.notify.notify_one();
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.fire();
    }
}

#[allow(clippy::too_many_arguments)]
async fn device(
    i: usize,
    scenario: Scenario,
    connector: Connector,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut release: watch::Receiver<bool>,
    done: Arc<AtomicUsize>,
    notify: Arc<tokio::sync::Notify>,
) -> Stats {
    let opts = &shared.opts;
    let mut stats = Stats::default();
    let mut guard = DoneGuard {
        done,
        notify,
        fired: false,
    };
    let conn = {
        // A closed semaphore cannot happen (it is never closed); treat it as a failure anyway.
        let Ok(_permit) = permits.acquire().await else {
            stats.conn_errors += 1;
            return stats;
        };
        let t0 = Instant::now();
        let mut conn = match timeout(opts.timeout, connector.connect(i)).await {
            Ok(Ok(c)) => c,
            _ => {
                stats.conn_errors += 1;
                return stats;
            }
        };
        let aor = i as u64;
        let device = shared.device(aor);
        let token = (!opts.tokens.is_empty()).then(|| opts.tokens[i % opts.tokens.len()].as_str());
        let mut out = Vec::with_capacity(1024);
        write_register(
            &mut out,
            &RegisterParams {
                transport: connector.transport(),
                local: conn.local_addr(),
                domain: &opts.domain,
                line: opts.line_base + aor,
                device: device.as_deref(),
                run_id: shared.run_id,
                cseq: 1,
                expires: opts.expires,
                token,
            },
        );
        stats.sent += 1;
        let answer = async {
            conn.send(&out).await?;
            conn.recv().await
        };
        match timeout(opts.timeout, answer).await {
            Err(_) => stats.timeouts += 1,
            Ok(Err(_)) => stats.conn_errors += 1,
            Ok(Ok(msg)) => match parse_response(&msg) {
                Ok(h) => stats.response(h.status, t0.elapsed()),
                Err(_) => stats.conn_errors += 1,
            },
        }
        conn
    };
    guard.fire();
    if opts.release_each && scenario == Scenario::Storm {
        conn.close().await;
        return stats;
    }
    // Hold the connection (storm: until the coordinator releases; idle-hold: with keep-alives).
    let mut conn = conn;
    loop {
        if *release.borrow() {
            break;
        }
        if scenario == Scenario::IdleHold
            && opts.keepalive > Duration::ZERO
            && connector.transport() != Transport::Udp
        {
            tokio::select! {
                _ = release.changed() => break,
                _ = tokio::time::sleep(opts.keepalive) => {
                    // RFC 5626 §4.4.1 double-CRLF ping; the pong is a single CRLF.
                    let ping = async {
                        conn.send(b"\r\n\r\n").await?;
                        conn.recv_pong().await
                    };
                    if timeout(opts.timeout, ping).await.ok().and_then(Result::ok).is_none() {
                        stats.conn_errors += 1;
                        return stats;
                    }
                }
            }
        } else if release.changed().await.is_err() {
            break;
        }
    }
    conn.close().await;
    stats
}
