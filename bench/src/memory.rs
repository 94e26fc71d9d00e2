//! Resident memory of a server under test, read from Linux `/proc`.
//!
//! Kamailio is many processes sharing one memory pool, so summing their RSS would count the pool
//! once per process; the proportional set size (PSS, `smaps_rollup`) of the whole process tree
//! counts every page once. For one process PSS is its RSS less pages shared with others.

use std::fs;

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The process does not exist or `/proc` cannot be read.
    #[error("cannot read /proc/{pid}: {why}")]
    Proc {
        /// The process.
        pid: u32,
        /// What went wrong.
        why: String,
    },
}

/// PIDs of `root` and all its descendants.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A `kB` field of a `/proc` status-style file, in KiB.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// PSS of one process in KiB.
pub fn pss_kib(pid: u32) -> Result<u64, MemoryError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).map_err(|e| MemoryError::Proc {
        pid,
        why: e.to_string(),
    })?;
    field_kib(&text, "Pss:").ok_or_else(|| MemoryError::Proc {
        pid,
        why: "no Pss in smaps_rollup".into(),
    })
}

/// PSS of a process and all its descendants, in MiB.
pub fn tree_pss_mib(root: u32) -> Result<f64, MemoryError> {
    let mut total = pss_kib(root)?;
    for pid in process_tree(root).into_iter().skip(1) {
        // A child may exit between listing and reading; it then holds no memory.
        total += pss_kib(pid).unwrap_or(0);
    }
    Ok(total as f64 / 1024.0)
}

/// Resident set size of this process in MiB.
pub fn own_rss_mib() -> Result<f64, MemoryError> {
    let pid = std::process::id();
    let text = fs::read_to_string("/proc/self/status").map_err(|e| MemoryError::Proc {
        pid,
        why: e.to_string(),
    })?;
    field_kib(&text, "VmRSS:")
        .map(|k| k as f64 / 1024.0)
        .ok_or_else(|| MemoryError::Proc {
            pid,
            why: "no VmRSS".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_is_positive_and_grows_with_a_touched_allocation() {
        let me = std::process::id();
        let before = pss_kib(me).unwrap();
        assert!(before > 0);
        let big = std::hint::black_box(vec![1u8; 64 * 1024 * 1024]);
        let after = pss_kib(me).unwrap();
        assert!(after >= before + 60 * 1024, "{before} -> {after}");
        assert!(own_rss_mib().unwrap() >= 64.0);
        drop(big);
    }

    #[test]
    fn the_tree_of_a_child_contains_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
        assert!(tree_pss_mib(std::process::id()).unwrap() > 0.0);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_missing_process_is_an_error() {
        assert!(pss_kib(u32::MAX).is_err());
    }
}
