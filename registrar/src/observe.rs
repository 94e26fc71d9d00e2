//! Labelled counters for `/metrics`: SIP responses by listener and exact status code, challenges
//! by dialect, and TLS handshake failures by listener and reason. Every label set is fixed and
//! small, so the counters are plain arrays of atomics indexed by enum — no map and no lock on the
//! hot path, and a scrape cannot be made to grow without bound by what clients send.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::CertificateError;

use crate::limits::Stats;
use crate::location::Transport;
use crate::register::{ConnectionFacts, PortKind};

/// The SIP listener a message or handshake arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipListener {
    /// The SIP OAuth port (TLS, Bearer tokens).
    OAuth,
    /// The SIP MRA OAuth port (mutual TLS from edges).
    Mra,
    /// The legacy UDP port (Digest).
    Udp,
    /// The legacy TCP port (Digest).
    Tcp,
    /// The legacy secure port (TLS, Digest).
    Tls,
}

impl SipListener {
    /// Every listener, in label order.
    pub const ALL: [SipListener; 5] = [
        SipListener::OAuth,
        SipListener::Mra,
        SipListener::Udp,
        SipListener::Tcp,
        SipListener::Tls,
    ];

    /// The `listener` label value.
    pub fn label(self) -> &'static str {
        match self {
            SipListener::OAuth => "oauth",
            SipListener::Mra => "mra",
            SipListener::Udp => "udp",
            SipListener::Tcp => "tcp",
            SipListener::Tls => "tls",
        }
    }

    /// The listener a connection belongs to, as far as its facts tell: MRA connections look like
    /// SIP OAuth ones (same authentication), so the MRA listener names itself explicitly.
    pub fn of(conn: &ConnectionFacts) -> SipListener {
        match (conn.port, conn.transport) {
            (PortKind::SipOAuth, _) => SipListener::OAuth,
            (PortKind::Legacy, Transport::Udp) => SipListener::Udp,
            (PortKind::Legacy, Transport::Tcp) => SipListener::Tcp,
            (PortKind::Legacy, Transport::Tls) => SipListener::Tls,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Status codes counted under their own `code` label; anything else is `code="other"`. These are
/// the codes the registrar sends (see the `register` module docs) plus a few a peer may provoke.
pub const COUNTED_CODES: [u16; 19] = [
    100, 200, 400, 401, 403, 404, 405, 407, 408, 413, 416, 420, 423, 439, 480, 500, 503, 505, 603,
];
const CODE_SLOTS: usize = COUNTED_CODES.len() + 1;

fn code_slot(status: u16) -> usize {
    COUNTED_CODES
        .iter()
        .position(|c| *c == status)
        .unwrap_or(COUNTED_CODES.len())
}

/// The challenge style of a `401`/`407`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeDialect {
    /// RFC 8898: `401` + `WWW-Authenticate: Bearer realm, scope, authz_server`.
    Rfc8898,
    /// Unified CM / Jabber: `407` + `Proxy-Authenticate: Bearer realm="ccmsipline"`.
    Cucm,
    /// Digest (RFC 3261 §22, RFC 7616) on the legacy ports.
    Digest,
}

impl ChallengeDialect {
    /// Every dialect, in label order.
    pub const ALL: [ChallengeDialect; 3] = [
        ChallengeDialect::Rfc8898,
        ChallengeDialect::Cucm,
        ChallengeDialect::Digest,
    ];

    /// The `dialect` label value.
    pub fn label(self) -> &'static str {
        match self {
            ChallengeDialect::Rfc8898 => "rfc8898",
            ChallengeDialect::Cucm => "cucm",
            ChallengeDialect::Digest => "digest",
        }
    }

    /// The dialect of a challenge with this status sent on this kind of port, `None` when the
    /// status is no challenge. Only Unified CM's dialect uses `407`; a `401` is Digest on the
    /// legacy ports and RFC 8898 Bearer on the OAuth ports.
    pub fn of_response(status: u16, port: PortKind) -> Option<ChallengeDialect> {
        match (status, port) {
            (407, _) => Some(ChallengeDialect::Cucm),
            (401, PortKind::Legacy) => Some(ChallengeDialect::Digest),
            (401, PortKind::SipOAuth) => Some(ChallengeDialect::Rfc8898),
            _ => None,
        }
    }
}

/// Why a TLS handshake failed, as a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client sent no certificate where one is required (MRA).
    NoClientCert,
    /// The client's chain did not verify (unknown issuer, expired, bad usage, …).
    UntrustedChain,
    /// The chain verified but no CN/SAN names a registered edge.
    EdgeNotRegistered,
    /// No protocol version or parameters in common (e.g. TLS 1.0 only).
    BadProtocolVersion,
    /// The handshake did not finish within `handshake_timeout`.
    HandshakeTimeout,
    /// Anything else: not TLS at all, reset, EOF mid-handshake, …
    Other,
}

impl TlsFailure {
    /// Every reason, in label order.
    pub const ALL: [TlsFailure; 6] = [
        TlsFailure::NoClientCert,
        TlsFailure::UntrustedChain,
        TlsFailure::EdgeNotRegistered,
        TlsFailure::BadProtocolVersion,
        TlsFailure::HandshakeTimeout,
        TlsFailure::Other,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::NoClientCert => "no_client_cert",
            TlsFailure::UntrustedChain => "untrusted_chain",
            TlsFailure::EdgeNotRegistered => "edge_not_registered",
            TlsFailure::BadProtocolVersion => "bad_protocol_version",
            TlsFailure::HandshakeTimeout => "handshake_timeout",
            TlsFailure::Other => "other",
        }
    }

    /// Classifies a rustls error. The MRA verifier reports an unregistered edge as
    /// `ApplicationVerificationFailure` (see [`EdgeTrust`](crate::EdgeTrust)).
    pub fn of_tls(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::NoCertificatesPresented => TlsFailure::NoClientCert,
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
                TlsFailure::EdgeNotRegistered
            }
            rustls::Error::InvalidCertificate(_) => TlsFailure::UntrustedChain,
            rustls::Error::PeerIncompatible(_) => TlsFailure::BadProtocolVersion,
            _ => TlsFailure::Other,
        }
    }

    /// Classifies the error a handshake future returned: rustls errors travel inside `io::Error`.
    pub fn of_io(e: &io::Error) -> TlsFailure {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(TlsFailure::of_tls)
            .unwrap_or(TlsFailure::Other)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The labelled counters; a field of [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Observed {
    responses: [[AtomicU64; CODE_SLOTS]; 5],
    challenges: [AtomicU64; 3],
    tls_failures: [[AtomicU64; 6]; 5],
}

/// A copy of the labelled counters, every combination included (zeros too), in label order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSnapshot {
    /// `(listener, code label, count)`; the code label is the number or `other`.
    pub responses: Vec<(&'static str, String, u64)>,
    /// `(dialect, count)`.
    pub challenges: Vec<(&'static str, u64)>,
    /// `(listener, reason, count)`.
    pub tls_failures: Vec<(&'static str, &'static str, u64)>,
}

impl Stats {
    /// Counts a response sent on `listener` (by class too, see [`Stats::response`]).
    pub fn sip_response(&self, listener: SipListener, status: u16) {
        self.response(status);
        self.observed.responses[listener.index()][code_slot(status)]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a challenge sent in `dialect`.
    pub fn challenge(&self, dialect: ChallengeDialect) {
        self.observed.challenges[dialect as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed TLS handshake on `listener`.
    pub fn tls_failure(&self, listener: SipListener, reason: TlsFailure) {
        self.observed.tls_failures[listener.index()][reason.index()]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The labelled counters now.
    pub fn observed(&self) -> ObservedSnapshot {
        let o = &self.observed;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = ObservedSnapshot::default();
        for l in SipListener::ALL {
            for (slot, c) in o.responses[l.index()].iter().enumerate() {
                let code = COUNTED_CODES
                    .get(slot)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "other".into());
                out.responses.push((l.label(), code, g(c)));
            }
            for r in TlsFailure::ALL {
                out.tls_failures.push((
                    l.label(),
                    r.label(),
                    g(&o.tls_failures[l.index()][r.index()]),
                ));
            }
        }
        for d in ChallengeDialect::ALL {
            out.challenges
                .push((d.label(), g(&o.challenges[d as usize])));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_count_by_listener_and_exact_code() {
        let s = Stats::default();
        s.sip_response(SipListener::OAuth, 401);
        s.sip_response(SipListener::OAuth, 401);
        s.sip_response(SipListener::Mra, 200);
        s.sip_response(SipListener::Udp, 299);
        let o = s.observed();
        let get = |l: &str, c: &str| {
            o.responses
                .iter()
                .find(|(a, b, _)| *a == l && b == c)
                .map(|t| t.2)
        };
        assert_eq!(get("oauth", "401"), Some(2));
        assert_eq!(get("mra", "200"), Some(1));
        assert_eq!(get("udp", "other"), Some(1));
        assert_eq!(get("tcp", "401"), Some(0));
        assert_eq!(o.responses.len(), 5 * CODE_SLOTS);
        assert_eq!(s.snapshot().responses, [0, 2, 0, 2, 0, 0], "classes too");
    }

    #[test]
    fn tls_errors_map_to_bounded_reasons() {
        use rustls::{Error, PeerIncompatible};
        let io = |e: Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            TlsFailure::of_io(&io(Error::NoCertificatesPresented)),
            TlsFailure::NoClientCert
        );
        assert_eq!(
            TlsFailure::of_io(&io(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))),
            TlsFailure::EdgeNotRegistered
        );
        assert_eq!(
            TlsFailure::of_io(&io(Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            TlsFailure::UntrustedChain
        );
        assert_eq!(
            TlsFailure::of_io(&io(Error::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
            ))),
            TlsFailure::BadProtocolVersion
        );
        assert_eq!(
            TlsFailure::of_io(&io::Error::from(io::ErrorKind::ConnectionReset)),
            TlsFailure::Other
        );
        let s = Stats::default();
        s.tls_failure(SipListener::Mra, TlsFailure::EdgeNotRegistered);
        s.challenge(ChallengeDialect::Cucm);
        let o = s.observed();
        assert!(o.tls_failures.contains(&("mra", "edge_not_registered", 1)));
        assert!(o.challenges.contains(&("cucm", 1)));
        assert_eq!(
            ChallengeDialect::of_response(401, PortKind::Legacy),
            Some(ChallengeDialect::Digest)
        );
        assert_eq!(ChallengeDialect::of_response(403, PortKind::SipOAuth), None);
    }
}
