//! CPU time of the load generator and of the server under test, and the kernel's listen-queue
//! counters, read from Linux `/proc`.
//!
//! On a shared machine wall-clock rates move with whatever else runs; CPU time per successful
//! REGISTER does not (much), so every RESULT line carries both processes' CPU over the measured
//! phase. Times come from `utime + stime` in `/proc/<pid>/stat` (all threads of a process, living
//! or exited), in clock ticks of [`TICKS_PER_SEC`]; a server's figure is the sum over its process
//! tree (Kamailio runs one process per worker). A process that exits during the phase drops out
//! of the sum, so the tree should be stable while measuring (both servers' are).
//!
//! `ListenOverflows` / `ListenDrops` (`/proc/net/netstat`, `TcpExt`) count connections the
//! kernel dropped because a listener's accept queue was full: the client sees no answer to its
//! SYN (or its ACK) and retransmits after 1 s, 3 s, 7 s … . They are per network namespace, so a
//! delta also counts other listeners' drops during the same phase.

use std::fs;
use std::time::Duration;

use crate::memory::process_tree;

/// `USER_HZ`: the unit of the times in `/proc/<pid>/stat`. It is part of the kernel's user ABI
/// and 100 on every Linux architecture this runs on (`getconf CLK_TCK`); reading it through
/// `sysconf` would need `unsafe` FFI for a constant.
pub const TICKS_PER_SEC: u64 = 100;

/// `utime + stime` of one process, all its threads included.
pub fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    // After it: state(3) ppid(4) … utime(14) stime(15), i.e. the 12th and 13th fields here.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(ticks(utime + stime))
}

/// CPU time of this process (the load generator).
pub fn self_cpu() -> Option<Duration> {
    process_cpu("self")
}

/// CPU time of `root` and all its descendants.
pub fn tree_cpu(root: u32) -> Option<Duration> {
    let mut total = process_cpu(&root.to_string())?;
    for pid in process_tree(root).into_iter().skip(1) {
        // A child may exit between listing and reading: it then counts as nothing.
        total += process_cpu(&pid.to_string()).unwrap_or_default();
    }
    Some(total)
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n.saturating_mul(1000 / TICKS_PER_SEC))
}

/// The kernel's accept-queue drop counters (`TcpExt`), cumulative since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenCounters {
    /// Connections dropped because a listener's accept queue was full.
    pub overflows: u64,
    /// All connections dropped at a listener (overflows included).
    pub drops: u64,
}

impl ListenCounters {
    /// Reads `/proc/net/netstat`; `None` where it is missing or malformed.
    pub fn read() -> Option<Self> {
        Self::parse(&fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// Parses the `TcpExt:` header/value line pair of a `/proc/net/netstat` text.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let names = lines.next()?;
        let values = lines.next()?;
        let mut out = Self::default();
        let mut found = 0;
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            match n {
                "ListenOverflows" => out.overflows = v.parse().ok()?,
                "ListenDrops" => out.drops = v.parse().ok()?,
                _ => continue,
            }
            found += 1;
        }
        (found == 2).then_some(out)
    }

    /// What happened between `before` and `self`.
    pub fn since(self, before: Self) -> Self {
        Self {
            overflows: self.overflows.saturating_sub(before.overflows),
            drops: self.drops.saturating_sub(before.drops),
        }
    }
}

/// CPU (and listen-drop) readings at the start of a measured phase; [`CpuProbe::finish`] turns
/// them into the phase's deltas.
#[derive(Debug, Clone, Copy)]
pub struct CpuProbe {
    server_pid: Option<u32>,
    server: Option<Duration>,
    load: Option<Duration>,
    listen: Option<ListenCounters>,
}

/// CPU used and connections dropped by the kernel during a measured phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuReport {
    /// CPU of the server's process tree, when its PID was given and readable.
    pub server: Option<Duration>,
    /// CPU of the load generator.
    pub load: Option<Duration>,
    /// Listen-queue drops (whole network namespace).
    pub listen: Option<ListenCounters>,
}

impl CpuProbe {
    /// Takes the readings at the start of the phase.
    pub fn start(server_pid: Option<u32>) -> Self {
        Self {
            server_pid,
            server: server_pid.and_then(tree_cpu),
            load: self_cpu(),
            listen: ListenCounters::read(),
        }
    }

    /// The deltas since [`CpuProbe::start`].
    pub fn finish(&self) -> CpuReport {
        let delta = |before: Option<Duration>, now: Option<Duration>| match (before, now) {
            (Some(b), Some(n)) => Some(n.saturating_sub(b)),
            _ => None,
        };
        CpuReport {
            server: delta(self.server, self.server_pid.and_then(tree_cpu)),
            load: delta(self.load, self_cpu()),
            listen: match (self.listen, ListenCounters::read()) {
                (Some(b), Some(n)) => Some(n.since(b)),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        // Burn a little CPU so the reading cannot be zero ticks on a fast machine.
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(self_cpu().is_some());
        assert!(tree_cpu(std::process::id()).is_some());
        assert!(tree_cpu(u32::MAX).is_none());
    }

    #[test]
    fn parses_listen_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 0 5241 5300 17\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let c = ListenCounters::parse(text).unwrap();
        assert_eq!(
            c,
            ListenCounters {
                overflows: 5241,
                drops: 5300
            }
        );
        let later = ListenCounters {
            overflows: 5250,
            drops: 5310,
        };
        assert_eq!(
            later.since(c),
            ListenCounters {
                overflows: 9,
                drops: 10
            }
        );
        assert_eq!(ListenCounters::parse("IpExt: a\nIpExt: 1\n"), None);
    }
}
