//! The node heartbeat: each `sipreg serve` says it is alive every few seconds, so the node list
//! shows which cluster members are up.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Store;

/// How often [`heartbeat_loop`] is meant to beat; a node silent for three intervals is likely down.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Records a heartbeat for `node` now and then every `every` until `stop` completes. A failed
/// beat (the database is away) is logged once per outage and retried on the next tick.
pub async fn heartbeat_loop(
    store: Arc<dyn Store>,
    node: String,
    every: Duration,
    stop: impl Future<Output = ()> + Send,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        match store.heartbeat(&node, unix_now()).await {
            Ok(()) if failing => {
                tracing::info!(%node, "node heartbeat recovered");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(%node, error = %e, "node heartbeat failed; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
