//! Group commit for SQLite refresh-token rotations.
//!
//! A refresh grant's store cost is one write transaction, and on SQLite a commit (WAL append,
//! locks) costs far more than the statements in it. One writer thread therefore takes every
//! rotation waiting when it becomes free and commits them together: under load N concurrent grants
//! cost one commit, alone a grant costs what it did. Each rotation runs in its own savepoint, so
//! one that fails (its successor's insert conflicting) rolls back alone; answers go out only after
//! the commit, and a failed commit fails every rotation of the batch (none of them was written).
//! Rotations of one token in one batch run in order, the second seeing the first's "used" mark.
//!
//! WAL checkpoints run mostly on a thread of their own ("sqlite-checkpoint", its own connection):
//! a checkpoint ends in two fsyncs (20-50 ms each in the refresh-grant benchmark), and run by the
//! commit that crossed `wal_autocheckpoint` it held every waiting grant for that long. The thread
//! checkpoints (PASSIVE: beside the writer, never blocking it) at most every
//! [`CHECKPOINT_PAUSE`] while rotations commit. The autocheckpoint of the shared connection stays
//! on and still bounds the WAL (under steady writes the WAL only restarts after a checkpoint on the
//! writer's own connection), but it then finds little left to copy and little to sync. While the
//! thread's checkpoint runs, the autocheckpoint finds it busy and the WAL grows past its mark by
//! what one checkpoint's time writes (16 MiB mark, ~22 MiB seen at ~5,000 grants/s).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::sqlite::{insert_refresh, sweep_refresh, use_refresh};
use crate::{RefreshSuccessor, RefreshUse, Result, StoreError};

/// Most rotations in one transaction: bounds how long the connection is held at once.
const MAX_BATCH: usize = 64;
/// Rotations queued for the writer; callers beyond this wait for room.
const QUEUE: usize = 1024;
/// Least time between two background checkpoints; commits in between share the next one.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(100);

struct Job {
    hash: String,
    now: i64,
    successor: RefreshSuccessor,
    reply: oneshot::Sender<Result<RefreshUse>>,
}

/// The handle of the writer thread; the thread ends when this is dropped.
pub(crate) struct RotationWriter {
    jobs: mpsc::Sender<Job>,
}

fn stopped() -> StoreError {
    StoreError::Backend("refresh rotation writer stopped".into())
}

impl RotationWriter {
    /// Starts the writer thread on `conn` (shared with every other store call, behind its mutex)
    /// and the checkpoint thread on a connection of its own to the database at `path`.
    pub(crate) fn start(conn: Arc<Mutex<Connection>>, path: &Path) -> Result<Self> {
        let checkpoints = Connection::open(path)?;
        // One pending wake-up is enough: it means "rotations committed since the last checkpoint".
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoints, &woken))
            .map_err(|e| StoreError::Backend(format!("starting the checkpoint thread: {e}")))?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-rotate".into())
            .spawn(move || run(&conn, rx, &wake))
            .map_err(|e| StoreError::Backend(format!("starting the rotation writer: {e}")))?;
        Ok(RotationWriter { jobs })
    }

    /// Queues one rotation and waits for its committed answer.
    pub(crate) async fn rotate(
        &self,
        hash: &str,
        now: i64,
        successor: RefreshSuccessor,
    ) -> Result<RefreshUse> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            hash: hash.to_owned(),
            now,
            successor,
            reply,
        };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn run(
    conn: &Mutex<Connection>,
    mut rx: mpsc::Receiver<Job>,
    checkpoint: &std::sync::mpsc::SyncSender<()>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        // No waiting for more: only what queued while the previous batch committed joins.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        for (reply, out) in commit(conn, std::mem::take(&mut batch)) {
            // A caller that went away (its request cancelled) is not an error.
            let _ = reply.send(out);
        }
        // Full: a wake-up is pending already. Disconnected cannot happen while this thread runs.
        let _ = checkpoint.try_send(());
    }
    // The wake-up sender goes with this thread's closure, which ends the checkpoint thread.
}

/// Checkpoints the WAL after rotations committed, at most every [`CHECKPOINT_PAUSE`]; ends when
/// the rotation writer does.
fn checkpoint_loop(conn: &Connection, woken: &std::sync::mpsc::Receiver<()>) {
    while woken.recv().is_ok() {
        // The pause first, so a burst of commits shares one checkpoint.
        std::thread::sleep(CHECKPOINT_PAUSE);
        // PASSIVE copies what no reader still needs without waiting for (or blocking) anyone; a
        // checkpoint that finds another running (SQLITE_BUSY) or fails leaves the work to the next
        // one or to the writer's autocheckpoint, which bounds the WAL regardless.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = done {
            tracing::debug!(error = %e, "background WAL checkpoint failed");
        }
    }
}

type Answer = (oneshot::Sender<Result<RefreshUse>>, Result<RefreshUse>);

fn fail_all(batch: Vec<Job>, why: &str) -> Vec<Answer> {
    batch
        .into_iter()
        .map(|j| (j.reply, Err(StoreError::Backend(why.to_owned()))))
        .collect()
}

fn commit(conn: &Mutex<Connection>, batch: Vec<Job>) -> Vec<Answer> {
    let Ok(guard) = conn.lock() else {
        return fail_all(batch, "connection lock poisoned");
    };
    let c: &Connection = &guard;
    // IMMEDIATE takes the write lock first, so no other writer sees a token half-rotated.
    if let Err(e) = sql(c, "BEGIN IMMEDIATE") {
        return fail_all(batch, &e.to_string());
    }
    let mut done = Vec::with_capacity(batch.len());
    let mut latest = i64::MIN;
    let mut jobs = batch.into_iter();
    while let Some(job) = jobs.next() {
        latest = latest.max(job.now);
        match rotate_one(c, &job.hash, job.now, job.successor) {
            Ok(out) => done.push((job.reply, out)),
            // A rotation that could not be undone alone may have left half its writes in the
            // transaction: undo the whole batch and answer none of it as done.
            Err(broken) => {
                rollback(c);
                let why = broken.to_string();
                let answered = done.into_iter().map(|(reply, _)| reply);
                let rest = jobs.map(|j| j.reply);
                return std::iter::once(job.reply)
                    .chain(answered)
                    .chain(rest)
                    .map(|reply| (reply, Err(StoreError::Backend(why.clone()))))
                    .collect();
            }
        }
    }
    // Once per batch, not per rotation. A failed sweep costs nothing but garbage: the rotations
    // stand (SQLite undoes only the failed statement) and the next batch sweeps again.
    if let Err(e) = sweep_refresh(c, latest) {
        tracing::warn!(error = %e, "sweeping expired refresh tokens failed");
    }
    if let Err(e) = sql(c, "COMMIT") {
        rollback(c);
        let why = e.to_string();
        return done
            .into_iter()
            .map(|(reply, _)| (reply, Err(StoreError::Backend(why.clone()))))
            .collect();
    }
    done
}

/// Runs one transaction-control statement from the connection's statement cache. rusqlite's
/// `transaction()`/`savepoint()` parse their SQL on every call: with a savepoint per rotation that
/// was ~19 % of this thread's CPU in the refresh-grant benchmark.
fn sql(c: &Connection, statement: &str) -> rusqlite::Result<()> {
    c.prepare_cached(statement)?.execute([]).map(drop)
}

/// Ends the open transaction without its writes. A failure leaves nothing to do: SQLite has
/// rolled back already, or the connection is broken and every later statement fails.
fn rollback(c: &Connection) {
    if let Err(e) = sql(c, "ROLLBACK") {
        tracing::warn!(error = %e, "rolling back a rotation batch failed");
    }
}

/// One rotation in its own savepoint. The inner result is the rotation's own answer (an error
/// there was rolled back alone); the outer error means the savepoint itself failed, so the
/// transaction may hold part of this rotation and must not commit.
fn rotate_one(
    c: &Connection,
    hash: &str,
    now: i64,
    successor: RefreshSuccessor,
) -> std::result::Result<Result<RefreshUse>, rusqlite::Error> {
    sql(c, "SAVEPOINT rotation")?;
    let out = use_and_insert(c, hash, now, successor);
    if out.is_err() {
        sql(c, "ROLLBACK TO rotation")?;
    }
    sql(c, "RELEASE rotation")?;
    Ok(out)
}

fn use_and_insert(
    c: &Connection,
    hash: &str,
    now: i64,
    successor: RefreshSuccessor,
) -> Result<RefreshUse> {
    let out = use_refresh(c, hash, now)?;
    if let RefreshUse::Fresh(old) = &out {
        if let Some(next) = successor(old) {
            insert_refresh(c, &next)?;
        }
    }
    Ok(out)
}
