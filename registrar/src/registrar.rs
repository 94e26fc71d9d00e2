//! The registrar service: configuration, directory, token validator and location service, with
//! the clock read once per message around the sans-IO [`process`](crate::register::process).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sipreg_store::Directory;
use tokio_util::sync::CancellationToken;

use crate::auth::BearerValidator;
use crate::location::Location;
use crate::message::Request;
use crate::register::{process, ConnectionFacts, RegistrarConfig};
use crate::response::response;

/// Everything needed to answer SIP requests; shared by all connections.
pub struct Registrar {
    /// Settings.
    pub config: RegistrarConfig,
    /// Live directory of users, devices and cluster settings.
    pub directory: Directory,
    /// Access-token validation.
    pub validator: Arc<dyn BearerValidator>,
    /// Current bindings.
    pub location: Location,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("config", &self.config)
            .field("bindings", &self.location.len())
            .finish_non_exhaustive()
    }
}

/// Unix seconds now; a clock before 1970 reads as 0.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Registrar {
    /// A registrar with an empty location service.
    pub fn new(
        config: RegistrarConfig,
        directory: Directory,
        validator: Arc<dyn BearerValidator>,
    ) -> Self {
        Registrar {
            config,
            directory,
            validator,
            location: Location::new(),
        }
    }

    /// Answers one framed message; empty when nothing is to be sent (ACK, responses, garbage
    /// without headers).
    pub fn handle(&self, msg: &[u8], conn: &ConnectionFacts) -> Vec<u8> {
        self.handle_at(msg, conn, unix_now())
    }

    /// [`handle`](Self::handle) at a given time (unix seconds).
    pub fn handle_at(&self, msg: &[u8], conn: &ConnectionFacts, now: i64) -> Vec<u8> {
        let req = match Request::parse(msg) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(remote = %conn.remote, error = %e, "malformed request");
                // Answer with a 400 if there is anything to address it to.
                return match Request::parse_lenient(msg) {
                    Some(r) if !r.via().is_empty() => response(&r, 400, &e.to_string()).build(),
                    _ => Vec::new(),
                };
            }
        };
        let dir = self.directory.snapshot();
        match process(
            &req,
            conn,
            &dir,
            self.validator.as_ref(),
            &self.location,
            &self.config,
            now,
        ) {
            Some(r) => {
                tracing::debug!(remote = %conn.remote, method = %req.method, status = r.status, "answered");
                r.bytes
            }
            None => Vec::new(),
        }
    }

    /// Called when a connection ends: drops its bindings if `unbind_on_close` is set.
    pub fn connection_closed(&self, conn: &ConnectionFacts) {
        if self.config.unbind_on_close {
            let n = self.location.remove_flow(conn.flow);
            if n > 0 {
                tracing::debug!(remote = %conn.remote, bindings = n, "connection closed, bindings dropped");
            }
        }
    }

    /// The expiry sweeper: purges expired bindings every second until `cancel` fires. Returns the
    /// task's future so the server can own it (e.g. in its `JoinSet`).
    pub async fn spawn_expiry_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let n = self.location.purge_expired(unix_now());
                    if n > 0 {
                        tracing::debug!(bindings = n, "expired bindings purged");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{BearerError, TokenIdentity};
    use crate::location::{Binding, BindingChange};
    use sipreg_store::SqliteStore;

    struct NoTokens;
    impl BearerValidator for NoTokens {
        fn validate(&self, _: &str, _: i64) -> Result<TokenIdentity, BearerError> {
            Err(BearerError {
                description: "no".into(),
            })
        }
    }

    async fn registrar(unbind_on_close: bool) -> Registrar {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("db.sqlite")).unwrap();
        let dir = Directory::load(&store).await.unwrap();
        let cfg = RegistrarConfig {
            unbind_on_close,
            ..RegistrarConfig::default()
        };
        Registrar::new(cfg, dir, Arc::new(NoTokens))
    }

    fn facts(flow: u64) -> ConnectionFacts {
        ConnectionFacts {
            remote: "10.0.0.1:1".parse().unwrap(),
            local: "10.0.0.2:5090".parse().unwrap(),
            flow,
        }
    }

    fn binding(flow: u64, expires_at: i64) -> Binding {
        Binding {
            contact_uri: "sip:a@h".into(),
            contact_key: "k".into(),
            contact_raw: "<sip:a@h>".into(),
            expires_at,
            call_id: "c".into(),
            cseq: 1,
            q: None,
            instance: None,
            reg_id: None,
            path: vec![],
            device: None,
            user: "u".into(),
            flow,
        }
    }

    #[tokio::test]
    async fn malformed_requests_get_400_when_addressable() {
        let r = registrar(true).await;
        let out = r.handle(
            b"REGISTER sip:a SIP/3.0\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\nCall-ID: c\r\n\r\n",
            &facts(1),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "SIP/2.0 400 Unsupported SIP Version\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1\r\n"
            ),
            "{text}"
        );
        assert!(
            r.handle(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", &facts(1))
                .is_empty(),
            "responses are ignored"
        );
        assert!(
            r.handle(b"garbage", &facts(1)).is_empty(),
            "nothing to address a 400 to"
        );
    }

    #[tokio::test]
    async fn connection_close_drops_its_bindings_only_when_configured() {
        for (unbind, left) in [(true, 0), (false, 1)] {
            let r = registrar(unbind).await;
            r.location
                .apply("a@h", &[BindingChange::Bind(binding(9, i64::MAX))], 10, 0)
                .unwrap();
            r.connection_closed(&facts(8));
            assert_eq!(r.location.len(), 1, "another flow closing changes nothing");
            r.connection_closed(&facts(9));
            assert_eq!(r.location.len(), left);
        }
    }

    #[tokio::test]
    async fn sweeper_purges_expired_bindings_and_stops() {
        let r = Arc::new(registrar(true).await);
        r.location
            .apply(
                "a@h",
                &[BindingChange::Bind(binding(1, unix_now() + 1))],
                10,
                0,
            )
            .unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(r.clone().spawn_expiry_sweeper(cancel.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !r.location.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "binding never purged"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}
