//! Live propagation between nodes: every write sends `NOTIFY sipreg_changes` in its transaction;
//! one dedicated connection per node LISTENs and republishes each change on the local broadcast
//! channel. A lost connection is retried with backoff, and after a reconnect (notifications may
//! have been missed) and every `reload_every` a [`Change::Reload`] makes caches re-read everything.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::Change;

/// The notification channel every node listens on.
pub(crate) const CHANNEL: &str = "sipreg_changes";

/// `application_name` of the listening connection, so operators (and tests) can find it.
pub(crate) const LISTENER_APP: &str = "sipreg-listen";

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Encodes a change as `ORIGIN KIND[:NAME]`; the origin lets a node skip its own changes.
pub(crate) fn encode(origin: &str, change: &Change) -> String {
    let (kind, name) = match change {
        Change::Cluster => ("cluster", None),
        Change::User(n) => ("user", Some(n)),
        Change::Device(n) => ("device", Some(n)),
        Change::Node(n) => ("node", Some(n)),
        Change::SigningKeys => ("keys", None),
        Change::Revocation(n) => ("revocation", Some(n)),
        Change::Client(n) => ("client", Some(n)),
        Change::Edge(n) => ("edge", Some(n)),
        Change::Trust => ("trust", None),
        Change::Digest(n) => ("digest", Some(n)),
        Change::Issuer(n) => ("issuer", Some(n)),
        Change::Profile(n) => ("profile", Some(n)),
        Change::Reload => ("reload", None),
    };
    match name {
        Some(n) => format!("{origin} {kind}:{n}"),
        None => format!("{origin} {kind}"),
    }
}

/// Decodes a payload into (origin, change). A payload this version does not understand (a newer
/// node's change) becomes [`Change::Reload`], so nothing is silently missed.
pub(crate) fn decode(payload: &str) -> (&str, Change) {
    let Some((origin, rest)) = payload.split_once(' ') else {
        return ("", Change::Reload);
    };
    let (kind, name) = match rest.split_once(':') {
        Some((k, n)) => (k, Some(n.to_owned())),
        None => (rest, None),
    };
    let change = match (kind, name) {
        ("cluster", None) => Change::Cluster,
        ("user", Some(n)) => Change::User(n),
        ("device", Some(n)) => Change::Device(n),
        ("node", Some(n)) => Change::Node(n),
        ("keys", None) => Change::SigningKeys,
        ("revocation", Some(n)) => Change::Revocation(n),
        ("client", Some(n)) => Change::Client(n),
        ("edge", Some(n)) => Change::Edge(n),
        ("trust", None) => Change::Trust,
        ("digest", Some(n)) => Change::Digest(n),
        ("issuer", Some(n)) => Change::Issuer(n),
        ("profile", Some(n)) => Change::Profile(n),
        _ => Change::Reload,
    };
    (origin, change)
}

/// Listens until the task is aborted (the store is dropped); `ready` fires once LISTEN is in force.
pub(crate) async fn run(
    mut config: tokio_postgres::Config,
    origin: String,
    changes: broadcast::Sender<Change>,
    reload_every: Duration,
    ready: oneshot::Sender<()>,
) {
    config.application_name(LISTENER_APP);
    let mut backoff = BACKOFF_START;
    let mut ready = Some(ready);
    // Whether notifications may have been missed: after a lost connection or failed attempts.
    let mut gap = false;
    loop {
        let (client, mut connection) = match config.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "change listener cannot reach the database");
                gap = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // The connection must be polled for the client to work; notifications arrive through it.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "change listener connection failed");
                        return;
                    }
                    None => return,
                }
            }
        });
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::warn!(error = %e, "LISTEN failed");
            gap = true;
            driver.abort();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        backoff = BACKOFF_START;
        if gap {
            tracing::info!("change listener reconnected; reloading everything");
            let _ = changes.send(Change::Reload);
        }
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        gap = true;
        let mut safety_net = tokio::time::interval(reload_every);
        safety_net.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        safety_net.tick().await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(payload) => {
                        let (from, change) = decode(&payload);
                        if from != origin {
                            let _ = changes.send(change);
                        }
                    }
                    None => break,
                },
                _ = safety_net.tick() => {
                    let _ = changes.send(Change::Reload);
                }
            }
        }
        driver.abort();
        drop(client);
        tracing::warn!("change listener lost the database; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_round_trips_and_unknown_ones_mean_reload() {
        let all = [
            Change::Cluster,
            Change::User("a b:c".into()),
            Change::Device("CSFx".into()),
            Change::Node("n1".into()),
            Change::SigningKeys,
            Change::Revocation("u".into()),
            Change::Client("c".into()),
            Change::Edge("e".into()),
            Change::Trust,
            Change::Digest("d".into()),
            Change::Reload,
        ];
        for c in all {
            let wire = encode("o1", &c);
            assert_eq!(decode(&wire), ("o1", c));
        }
        assert_eq!(decode("o2 hologram:x"), ("o2", Change::Reload));
        assert_eq!(decode("garbage"), ("", Change::Reload));
    }
}
