//! Group commit for SQLite refresh-token rotations.
//!
//! A refresh grant's store cost is one write transaction, and on SQLite a commit (WAL append,
//! locks) costs far more than the statements in it. One writer thread therefore takes every
//! rotation waiting when it becomes free and commits them together: under load N concurrent grants
//! cost one commit, alone a grant costs what it did. Each rotation runs in its own savepoint, so
//! one that fails (its successor's insert conflicting) rolls back alone; answers go out only after
//! the commit, and a failed commit fails every rotation of the batch (none of them was written).
//! Rotations of one token in one batch run in order, the second seeing the first's "used" mark.

use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::sqlite::{insert_refresh, sweep_refresh, use_refresh};
use crate::{RefreshSuccessor, RefreshUse, Result, StoreError};

/// Most rotations in one transaction: bounds how long the connection is held at once.
const MAX_BATCH: usize = 64;
/// Rotations queued for the writer; callers beyond this wait for room.
const QUEUE: usize = 1024;

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
    /// Starts the writer thread on `conn` (shared with every other store call, behind its mutex).
    pub(crate) fn start(conn: Arc<Mutex<Connection>>) -> Result<Self> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-rotate".into())
            .spawn(move || run(&conn, rx))
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

fn run(conn: &Mutex<Connection>, mut rx: mpsc::Receiver<Job>) {
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
    let Ok(mut guard) = conn.lock() else {
        return fail_all(batch, "connection lock poisoned");
    };
    // IMMEDIATE takes the write lock first, so no other writer sees a token half-rotated.
    let mut tx = match guard.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch, &e.to_string()),
    };
    let mut done = Vec::with_capacity(batch.len());
    let mut latest = i64::MIN;
    for job in batch {
        latest = latest.max(job.now);
        let out = rotate_one(&mut tx, &job.hash, job.now, job.successor);
        done.push((job.reply, out));
    }
    // Once per batch, not per rotation. A failed sweep costs nothing but garbage: the rotations
    // stand (SQLite undoes only the failed statement) and the next batch sweeps again.
    if let Err(e) = sweep_refresh(&tx, latest) {
        tracing::warn!(error = %e, "sweeping expired refresh tokens failed");
    }
    if let Err(e) = tx.commit() {
        let why = e.to_string();
        return done
            .into_iter()
            .map(|(reply, _)| (reply, Err(StoreError::Backend(why.clone()))))
            .collect();
    }
    done
}

fn rotate_one(
    tx: &mut Transaction<'_>,
    hash: &str,
    now: i64,
    successor: RefreshSuccessor,
) -> Result<RefreshUse> {
    // Dropping the savepoint on an error rolls back this rotation only.
    let sp = tx.savepoint()?;
    let out = use_refresh(&sp, hash, now)?;
    if let RefreshUse::Fresh(old) = &out {
        if let Some(next) = successor(old) {
            insert_refresh(&sp, &next)?;
        }
    }
    sp.commit()?;
    Ok(out)
}
