//! Bindings survive restarts: a write-behind persister and the restore at start.
//!
//! Every change marks its AOR dirty in the [`Location`]; every `persist_interval` the persister
//! writes the dirty AORs' current bindings to the store in one transaction
//! ([`Store::write_bindings`] replaces an AOR's rows; an empty list deletes them). REGISTER never
//! waits for the disk. **Loss bound:** a crash loses at most the binding changes made in the last
//! `persist_interval` (default 1 s) plus the one write in progress; a failed write keeps its
//! AORs dirty and is retried on the next tick. On a clean shutdown the persister flushes once
//! more before it returns.

use std::sync::Arc;

use sipreg_store::{Store, StoredBinding};
use tokio_util::sync::CancellationToken;

use crate::location::{Binding, Location};
use crate::registrar::Registrar;

/// Why bindings could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] sipreg_store::StoreError),
    /// A binding could not be encoded.
    #[error("binding encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Converts one AOR's bindings into store rows (JSON in `data`).
pub fn to_stored(
    aor: &str,
    bindings: &[Binding],
    node: &str,
) -> Result<Vec<StoredBinding>, PersistError> {
    bindings
        .iter()
        .map(|b| {
            Ok(StoredBinding {
                aor: aor.to_owned(),
                key: b.key(),
                expires_at: b.expires_at,
                node: node.to_owned(),
                data: encode(b)?,
            })
        })
        .collect()
}

/// A binding's JSON, written into a buffer sized for it up front: `to_string` starts small and
/// grows (copying) several times for a typical 600-byte binding.
fn encode(b: &Binding) -> Result<String, PersistError> {
    // Field names and fixed-size values take about 300 bytes; strings may need escaping.
    let text = b.contact_uri.len()
        + b.contact_key.len()
        + b.contact_raw.len()
        + b.call_id.len()
        + b.user.len()
        + b.contact_params.iter().map(String::len).sum::<usize>()
        + b.path.iter().map(String::len).sum::<usize>()
        + b.instance.as_ref().map_or(0, String::len)
        + b.device.as_ref().map_or(0, String::len);
    let mut buf = Vec::with_capacity(384 + text + text / 8);
    serde_json::to_writer(&mut buf, b)?;
    // serde_json writes UTF-8 only; the check is a cheap scan, not a copy.
    String::from_utf8(buf).map_err(|e| PersistError::Encode(serde::ser::Error::custom(e)))
}

/// Writes every dirty AOR of `location` to `store` now; on failure they stay dirty. Returns
/// how many AORs were written.
pub async fn flush(
    location: &Location,
    store: &dyn Store,
    node: &str,
) -> Result<usize, PersistError> {
    let dirty = location.take_dirty();
    if dirty.is_empty() {
        return Ok(0);
    }
    let mut batch = Vec::with_capacity(dirty.len());
    for (aor, bindings) in &dirty {
        match to_stored(aor, bindings, node) {
            Ok(rows) => batch.push((aor.clone(), rows)),
            Err(e) => {
                for (aor, _) in &dirty {
                    location.mark_dirty(aor);
                }
                return Err(e);
            }
        }
    }
    let n = batch.len();
    // Moved, not borrowed: the store writes it on another thread and would otherwise copy
    // every row; `dirty` keeps the AOR names for a retry.
    if let Err(e) = store.write_node_bindings(node, batch).await {
        for (aor, _) in &dirty {
            location.mark_dirty(aor);
        }
        return Err(e.into());
    }
    Ok(n)
}

/// [`flush`] on the blocking pool, whole: run on an async worker, taking, encoding and copying
/// a second's worth of changed AORs (thousands at a steady refresh rate) stalled every
/// connection queued on that worker for milliseconds — the p99 of paced REGISTERs showed it as a
/// once-a-second bump (8,000/s: p99 9.6 → 3.2 ms).
async fn flush_off_worker(
    registrar: &Arc<Registrar>,
    store: &Arc<dyn Store>,
    node: &str,
) -> Result<usize, PersistError> {
    let (r, st, n) = (registrar.clone(), store.clone(), node.to_owned());
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(flush(&r.location, st.as_ref(), &n)))
        .await
    {
        Ok(result) => result,
        // Not run (the pool is shutting down): flush here instead. A panic cannot come from
        // data (encoding and store failures are values).
        Err(_) => flush(&registrar.location, store.as_ref(), node).await,
    }
}

/// Loads unexpired bindings from `store` into `location` with their remaining lifetime; rows
/// that do not decode are skipped with a warning. Returns how many were restored.
pub async fn restore(
    store: &dyn Store,
    location: &Location,
    now: i64,
    node: &str,
) -> Result<usize, PersistError> {
    let rows = store.load_bindings(now).await?;
    let mut decoded = Vec::with_capacity(rows.len());
    // Only this node's rows: another node's flows are not ours to serve.
    for row in rows.into_iter().filter(|r| r.node == node) {
        match serde_json::from_str::<Binding>(&row.data) {
            Ok(b) => decoded.push((row.aor, b)),
            Err(e) => {
                tracing::warn!(aor = %row.aor, key = %row.key, error = %e, "stored binding skipped")
            }
        }
    }
    let n = location.restore(decoded, now);
    tracing::info!(bindings = n, "bindings restored");
    Ok(n)
}

/// The persister loop behind [`Registrar::run_persister`].
pub(crate) async fn run(
    registrar: Arc<Registrar>,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) {
    let interval = registrar
        .config
        .persist_interval
        .max(std::time::Duration::from_millis(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let node = registrar.config.persist_node().to_owned();
    let mut failing = false;
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tick.tick() => false,
        };
        match flush_off_worker(&registrar, &store, &node).await {
            Ok(n) => {
                if failing {
                    tracing::info!("binding persistence recovered");
                    failing = false;
                }
                if n > 0 {
                    tracing::trace!(aors = n, "bindings persisted");
                }
            }
            Err(e) => {
                registrar.stats.persist_failure();
                // Logged once per outage, not every tick.
                if !failing {
                    tracing::error!(error = %e, "cannot persist bindings; retrying every tick");
                    failing = true;
                }
            }
        }
        if stop {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::{FlowState, Transport};

    /// Process CPU time (user + system) in microseconds, from /proc/self/stat.
    fn process_cpu_us() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // Linux reports USER_HZ = 100 ticks per second.
        ticks * 10_000
    }

    /// A binding as a Jabber client over TLS with RFC 5626 outbound leaves it.
    fn jabber_binding(i: usize, expires_at: i64) -> Binding {
        let uri = format!(
            "sip:{:08x}-1c2d-4e5f@192.0.2.{}:51234;transport=tls",
            i,
            i % 250
        );
        Binding {
            contact_key: uri.clone(),
            contact_raw: format!(
                "<{uri}>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-{i:012}>\";reg-id=1;\
                 +u.sip!devicename.ccm.cisco.com=\"CSF{i}\";expires=3600"
            ),
            contact_uri: uri,
            contact_params: vec![
                format!("+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-{i:012}>\""),
                "reg-id=1".into(),
                format!("+u.sip!devicename.ccm.cisco.com=\"CSF{i}\""),
            ],
            expires_at,
            call_id: format!("{i:016x}-4d2c-11ef-a1b2-0242ac120002"),
            cseq: 42,
            q: None,
            instance: Some(format!("<urn:uuid:00000000-0000-0000-0000-{i:012}>")),
            reg_id: Some(1),
            path: vec![],
            device: Some(format!("CSF{i}")),
            user: format!("user{i}"),
            flow: i as u64,
            flow_state: FlowState::Open,
            transport: Transport::Tls,
            source: Some(format!("192.0.2.{}:51234", i % 250).parse().unwrap()),
            outbound: true,
        }
    }

    /// CPU cost of the write-behind flush: 3,200 dirty AORs with one binding each, written 20
    /// times to a real SQLite file. Run with
    /// `cargo test --release -p sipreg-registrar --lib -- --ignored --nocapture flush_cpu_per_row`.
    #[tokio::test]
    #[ignore = "timing harness, run by hand"]
    async fn flush_cpu_per_row() {
        const AORS: usize = 3_200;
        const ROUNDS: usize = 20;
        let dir = tempfile::tempdir().unwrap();
        let store = sipreg_store::SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let location = Location::new();
        let aors: Vec<String> = (0..AORS)
            .map(|i| format!("{}@example.com", 10_000 + i))
            .collect();
        location.restore(
            aors.iter()
                .enumerate()
                .map(|(i, a)| (a.clone(), jabber_binding(i, i64::MAX / 2))),
            0,
        );
        let mut encode_us = 0;
        let mut flush_us = 0;
        for _ in 0..ROUNDS {
            for a in &aors {
                location.mark_dirty(a);
            }
            let t0 = process_cpu_us();
            let dirty = location.take_dirty();
            for (aor, b) in &dirty {
                std::hint::black_box(to_stored(aor, b, "n1").unwrap());
            }
            let t1 = process_cpu_us();
            encode_us += t1 - t0;
            for a in &aors {
                location.mark_dirty(a);
            }
            let t2 = process_cpu_us();
            assert_eq!(flush(&location, &store, "n1").await.unwrap(), AORS);
            flush_us += process_cpu_us() - t2;
        }
        let rows = (AORS * ROUNDS) as f64;
        println!(
            "take_dirty + to_stored: {:.1} us/row; whole flush: {:.1} us/row",
            encode_us as f64 / rows,
            flush_us as f64 / rows
        );
        assert_eq!(store.load_bindings(1).await.unwrap().len(), AORS);
    }
}
