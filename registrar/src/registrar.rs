//! The registrar service: configuration, directory, authenticators, location service, limits
//! and counters, with the clock read once per message around the sans-IO
//! [`process`](crate::register::process).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sipreg_store::{Directory, Store};
use tokio_util::sync::CancellationToken;

use crate::auth::BearerValidator;
use crate::digest::DigestAuth;
use crate::limits::{ConnectionGate, Stats};
use crate::location::Location;
use crate::message::{MessageError, Request};
use crate::observe::{ChallengeDialect, SipListener};
use crate::persist::{self, PersistError};
use crate::register::{process, Authenticators, ConnectionFacts, RegistrarConfig};
use crate::response::response;

/// Everything needed to answer SIP requests; shared by all connections and listeners.
pub struct Registrar {
    /// Settings.
    pub config: RegistrarConfig,
    /// Live directory of users, devices and cluster settings.
    pub directory: Directory,
    /// Access-token validation (SIP OAuth port).
    pub validator: Arc<dyn BearerValidator>,
    /// Digest nonces (legacy ports).
    pub digest: DigestAuth,
    /// Current bindings.
    pub location: Location,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Connection caps shared by every listener.
    pub gate: Arc<ConnectionGate>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("config", &self.config)
            .field("bindings", &self.location.len())
            .finish_non_exhaustive()
    }
}

/// What to do with one framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes (a response).
    Send(Vec<u8>),
    /// Send nothing (ACK, a response).
    Nothing,
    /// Garbage with nothing to address an answer to: a stream peer is broken, close it.
    Close,
}

/// Unix seconds now; a clock before 1970 reads as 0.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Registrar {
    /// A registrar with an empty location service and a random Digest nonce secret.
    pub fn new(
        config: RegistrarConfig,
        directory: Directory,
        validator: Arc<dyn BearerValidator>,
    ) -> Self {
        let stats = Arc::new(Stats::default());
        let gate = Arc::new(ConnectionGate::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.max_tls_handshakes,
            stats.clone(),
        ));
        Registrar {
            digest: DigestAuth::random(config.nonce_ttl).with_algorithms(&config.digest_algorithms),
            config,
            directory,
            validator,
            location: Location::new(),
            stats,
            gate,
        }
    }

    /// Uses `secret` for Digest nonces instead of a random one: the cluster's shared secret, so
    /// every node (also after a restart) can tell a nonce the cluster issued from a forged one
    /// and answers another node's nonce with `stale=true`, a fresh challenge without a password
    /// prompt, never with acceptance (its `nc` is tracked on the node that issued it).
    pub fn with_digest_secret(mut self, secret: [u8; 32]) -> Self {
        self.digest = DigestAuth::new(secret, self.config.nonce_ttl)
            .with_algorithms(&self.config.digest_algorithms);
        self
    }

    /// Answers one framed message; empty when nothing is to be sent (ACK, responses, garbage
    /// without headers).
    pub fn handle(&self, msg: &[u8], conn: &ConnectionFacts) -> Vec<u8> {
        self.handle_at(msg, conn, unix_now())
    }

    /// [`handle`](Self::handle) at a given time (unix seconds).
    pub fn handle_at(&self, msg: &[u8], conn: &ConnectionFacts, now: i64) -> Vec<u8> {
        match self.answer_at(msg, conn, now) {
            Answer::Send(b) => b,
            Answer::Nothing | Answer::Close => Vec::new(),
        }
    }

    /// Like [`handle_at`](Self::handle_at), but tells a stream transport to close the
    /// connection when the message is garbage no response can be addressed to.
    pub fn answer_at(&self, msg: &[u8], conn: &ConnectionFacts, now: i64) -> Answer {
        self.answer_on(msg, conn, SipListener::of(conn), now)
    }

    /// [`answer_at`](Self::answer_at) for a message that arrived on `listener` (counted by it).
    pub fn answer_on(
        &self,
        msg: &[u8],
        conn: &ConnectionFacts,
        listener: SipListener,
        now: i64,
    ) -> Answer {
        let mut req = match Request::parse(msg) {
            Ok(r) => r,
            Err(MessageError::NotARequest) => return Answer::Nothing,
            Err(e) => {
                tracing::debug!(remote = %conn.remote, error = %e, "malformed request");
                return match self.reject_with(msg, conn, listener, &e) {
                    Some(b) => Answer::Send(b),
                    None => Answer::Close,
                };
            }
        };
        // RFC 3261 §18.2.1 / RFC 3581: the response carries where the request came from.
        req.stamp_via(conn.remote);
        let dir = self.directory.snapshot();
        let auth = Authenticators {
            bearer: self.validator.as_ref(),
            digest: &self.digest,
        };
        match process(&req, conn, &dir, auth, &self.location, &self.config, now) {
            Some(r) => {
                tracing::debug!(remote = %conn.remote, method = %req.method, status = r.status, "answered");
                self.stats.sip_response(listener, r.status);
                if let Some(d) = ChallengeDialect::of_response(r.status, conn.port) {
                    self.stats.challenge(d);
                }
                if r.changed {
                    self.stats.registration();
                }
                if let Some(rej) = &r.rejection {
                    self.stats.register_rejected(rej.check);
                }
                Answer::Send(r.bytes)
            }
            None => Answer::Nothing,
        }
    }

    /// A `400` with `reason` to a message that cannot be processed, if it is a request with a
    /// usable top Via to address it to; empty otherwise (responses, garbage).
    pub fn reject(&self, msg: &[u8], conn: &ConnectionFacts, reason: &str) -> Vec<u8> {
        self.error_response(msg, conn, SipListener::of(conn), 400, &capitalise(reason))
            .unwrap_or_default()
    }

    fn reject_with(
        &self,
        msg: &[u8],
        conn: &ConnectionFacts,
        listener: SipListener,
        e: &MessageError,
    ) -> Option<Vec<u8>> {
        match e {
            // RFC 3261 §21.5.7 (RFC 4475 §3.1.2.16).
            MessageError::BadVersion => {
                self.error_response(msg, conn, listener, 505, "Version Not Supported")
            }
            e => self.error_response(msg, conn, listener, 400, &e.to_string()),
        }
    }

    fn error_response(
        &self,
        msg: &[u8],
        conn: &ConnectionFacts,
        listener: SipListener,
        status: u16,
        reason: &str,
    ) -> Option<Vec<u8>> {
        // Any Via, even a malformed one, is copied back so the client can match the answer.
        let mut r = Request::parse_lenient(msg).filter(|r| !r.via().is_empty())?;
        r.stamp_via(conn.remote);
        self.stats.sip_response(listener, status);
        Some(response(&r, status, reason).build())
    }

    /// Called when a connection ends: its bindings are removed if `unbind_on_close` is set,
    /// otherwise marked [`FlowState::Closed`](crate::location::FlowState::Closed).
    pub fn connection_closed(&self, conn: &ConnectionFacts) {
        if self.config.unbind_on_close {
            let n = self.location.remove_flow(conn.flow);
            if n > 0 {
                tracing::debug!(remote = %conn.remote, bindings = n, "connection closed, bindings dropped");
            }
        } else {
            let n = self.location.mark_flow_closed(conn.flow);
            if n > 0 {
                tracing::debug!(remote = %conn.remote, bindings = n, "connection closed, bindings marked");
            }
        }
    }

    /// Loads persisted bindings into the location service at start (call before listening);
    /// each comes back with its remaining lifetime and an unknown flow. Returns how many.
    pub async fn restore(&self, store: &dyn Store, now: i64) -> Result<usize, PersistError> {
        persist::restore(store, &self.location, now, self.config.persist_node()).await
    }

    /// The write-behind persister: flushes changed AORs to `store` every
    /// `config.persist_interval` until `cancel` fires, then once more. Own the future (e.g. in
    /// the server's `JoinSet`).
    pub async fn run_persister(self: Arc<Self>, store: Arc<dyn Store>, cancel: CancellationToken) {
        persist::run(self, store, cancel).await
    }

    /// The expiry sweeper: purges expired bindings and Digest nonces every second until
    /// `cancel` fires. Returns the task's future so the server can own it (e.g. in its `JoinSet`).
    pub async fn spawn_expiry_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let now = unix_now();
                    let n = self.location.purge_expired(now);
                    if n > 0 {
                        tracing::debug!(bindings = n, "expired bindings purged");
                    }
                    self.digest.purge(now);
                }
            }
        }
    }
}

/// Reason phrases are Title Case ("Body Shorter Than Content-length" reads as a phrase).
fn capitalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c == ' ';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{BearerError, TokenIdentity};
    use crate::location::{Binding, BindingChange, FlowState, Transport};
    use crate::register::PortKind;
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
            transport: Transport::Tls,
            port: PortKind::SipOAuth,
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
            flow_state: FlowState::Open,
            transport: Transport::Tls,
            source: None,
            outbound: false,
            contact_params: vec![],
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
                "SIP/2.0 505 Version Not Supported\r\nVia: SIP/2.0/TLS x;branch=z9hG4bK1;received=10.0.0.1\r\n"
            ),
            "{text}"
        );
        assert_eq!(r.stats.snapshot().responses[4], 1, "the 505 is counted");
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
            assert_eq!(r.location.bindings("a@h", 0)[0].flow_state, FlowState::Open);
            r.connection_closed(&facts(9));
            assert_eq!(r.location.len(), left);
            if !unbind {
                assert_eq!(
                    r.location.bindings("a@h", 0)[0].flow_state,
                    FlowState::Closed
                );
            }
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
