//! Who may connect on the MRA OAuth port: an edge proxy (Expressway-C, Kamailio, OpenSIPS) whose
//! client certificate chains to the trust store **and** names a registered edge.
//!
//! The chain, validity and clientAuth usage are checked by rustls' webpki verifier
//! ([`WebPkiClientVerifier`]) over the current trust anchors; only after it accepted the chain
//! is the certificate's identity compared with the registered edges ([`match_edge`]), as
//! linkerd does on top of its verifier. Anchors and edges are swapped live ([`EdgeTrust`]), so
//! new handshakes see a change at once and [`EdgeTrust::check`] can re-judge live connections.
//!
//! # The name rule
//! A certificate's identity is its subject CN(s), DNS SANs and IP SANs. It is accepted when any
//! of them equals any subject name of any registered edge (an edge without subject names stands
//! for its host), where, for [`name_matches`]:
//! - DNS names compare ASCII case-insensitively, ignoring one trailing dot;
//! - a registered name whose leftmost label is exactly `*` matches a presented name with exactly
//!   one more label in that place (`*.example.com` matches `a.example.com`, not `example.com`
//!   nor `a.b.example.com`); `*` anywhere else, or inside a label, is literal;
//! - a presented name is never a pattern: a certificate SAN `*.example.com` matches only the
//!   registered text `*.example.com`;
//! - IP addresses compare as addresses (`::1` equals `0:0:0:0:0:0:0:1`), never as DNS names.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use serde::Serialize;
use sipreg_store::Edge;

/// Errors loading trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum EdgeTrustError {
    /// A trust store entry is not a PEM certificate.
    #[error("trust anchor {index} is not a PEM certificate: {reason}")]
    BadAnchor {
        /// Position in the list given.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The verifier could not be built from the anchors.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(String),
}

/// Why a client certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The trust store holds no anchors, so no chain can verify.
    NoAnchors,
    /// webpki refused the chain (unknown issuer, expired, wrong usage, bad encoding …).
    Chain(String),
    /// The chain verified, but no CN/SAN matches a registered edge.
    NotRegistered,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoAnchors => f.write_str("the trust store is empty"),
            Refusal::Chain(e) => write!(f, "chain not trusted: {e}"),
            Refusal::NotRegistered => f.write_str("no CN/SAN matches a registered edge"),
        }
    }
}

/// The identity a client certificate presents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerNames {
    /// Subject common names.
    pub common_names: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
}

impl PeerNames {
    /// Reads CN, DNS and IP SANs from a DER certificate; unreadable parts are left empty (the
    /// chain check refuses such a certificate anyway).
    pub fn from_der(der: &[u8]) -> PeerNames {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return PeerNames::default();
        };
        let mut names = PeerNames {
            common_names: cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
            ..PeerNames::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        names.dns_names.push((*d).to_owned())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        if let Some(ip) = ip_from_bytes(b) {
                            names.ip_addresses.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        names
    }

    /// Every presented name as text, CN first.
    pub fn all(&self) -> Vec<String> {
        self.common_names
            .iter()
            .chain(&self.dns_names)
            .cloned()
            .chain(self.ip_addresses.iter().map(IpAddr::to_string))
            .collect()
    }
}

impl fmt::Display for PeerNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self.ip_addresses.iter().map(IpAddr::to_string).collect();
        write!(
            f,
            "CN=[{}] DNS=[{}] IP=[{}]",
            self.common_names.join(", "),
            self.dns_names.join(", "),
            ips.join(", ")
        )
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Whether one presented name satisfies one registered subject name; see the module docs.
pub fn name_matches(registered: &str, presented: &str) -> bool {
    let registered = registered.trim();
    let presented = presented.trim();
    if registered.is_empty() || presented.is_empty() {
        return false;
    }
    let reg_ip = registered.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    let pre_ip = presented.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    match (reg_ip, pre_ip) {
        (Some(a), Some(b)) => return a == b,
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    let registered = registered.strip_suffix('.').unwrap_or(registered);
    let presented = presented.strip_suffix('.').unwrap_or(presented);
    if registered.eq_ignore_ascii_case(presented) {
        return true;
    }
    // A wildcard only as the whole leftmost label, standing for exactly one non-empty label.
    let Some(suffix) = registered.strip_prefix("*.") else {
        return false;
    };
    let Some((first, rest)) = presented.split_once('.') else {
        return false;
    };
    !first.is_empty()
        && !first.contains('*')
        && !suffix.is_empty()
        && rest.eq_ignore_ascii_case(suffix)
}

/// The names an edge entry accepts: its subject names, or its host when it has none.
fn accepted_names(edge: &Edge) -> Vec<&str> {
    let names: Vec<&str> = edge
        .subject_names
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        vec![edge.host.as_str()]
    } else {
        names
    }
}

/// The first registered edge one of `peer`'s names matches, with the presented name that did.
pub fn match_edge<'a>(edges: &'a [Edge], peer: &PeerNames) -> Option<(&'a Edge, String)> {
    let presented = peer.all();
    edges.iter().find_map(|edge| {
        let names = accepted_names(edge);
        presented
            .iter()
            .find(|p| names.iter().any(|r| name_matches(r, p)))
            .map(|p| (edge, p.clone()))
    })
}

/// Parses PEM text holding one or more certificates (a trust store entry).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    Ok(certs)
}

/// Counters of the MRA trust decisions.
#[derive(Debug, Default)]
pub struct EdgeStats {
    accepted: AtomicU64,
    refused_no_anchors: AtomicU64,
    refused_chain: AtomicU64,
    refused_not_registered: AtomicU64,
    refused_no_certificate: AtomicU64,
    closed_on_change: AtomicU64,
}

/// A copy of [`EdgeStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EdgeStatsSnapshot {
    /// Client certificates accepted.
    pub accepted: u64,
    /// Refused because the trust store was empty.
    pub refused_no_anchors: u64,
    /// Refused by the chain check.
    pub refused_chain: u64,
    /// Refused because no CN/SAN matched a registered edge.
    pub refused_not_registered: u64,
    /// Handshakes without a client certificate.
    pub refused_no_certificate: u64,
    /// Live edge connections closed after an edge or trust anchor was removed.
    pub closed_on_change: u64,
}

impl EdgeStats {
    /// A copy of every counter.
    pub fn snapshot(&self) -> EdgeStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EdgeStatsSnapshot {
            accepted: g(&self.accepted),
            refused_no_anchors: g(&self.refused_no_anchors),
            refused_chain: g(&self.refused_chain),
            refused_not_registered: g(&self.refused_not_registered),
            refused_no_certificate: g(&self.refused_no_certificate),
            closed_on_change: g(&self.closed_on_change),
        }
    }

    pub(crate) fn refused(&self, r: &Refusal) {
        let c = match r {
            Refusal::NoAnchors => &self.refused_no_anchors,
            Refusal::Chain(_) => &self.refused_chain,
            Refusal::NotRegistered => &self.refused_not_registered,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn no_certificate(&self) {
        self.refused_no_certificate.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed_on_change(&self) {
        self.closed_on_change.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a verified edge certificate was accepted as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// The edge entry's host.
    pub edge: String,
    /// The presented name that matched.
    pub matched: String,
}

/// The live trust state of the MRA port: the webpki verifier over the current anchors, and
/// the registered edges.
pub struct EdgeTrust {
    provider: Arc<CryptoProvider>,
    verifier: ArcSwapOption<Arc<dyn ClientCertVerifier>>,
    anchors: ArcSwap<Vec<String>>,
    edges: ArcSwap<Vec<Edge>>,
    stats: EdgeStats,
}

impl fmt::Debug for EdgeTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeTrust")
            .field("anchors", &self.anchors.load().len())
            .field("edges", &self.edges.load().len())
            .finish_non_exhaustive()
    }
}

impl Default for EdgeTrust {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeTrust {
    /// No anchors and no edges: every client certificate is refused until both are set.
    pub fn new() -> Self {
        EdgeTrust {
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            verifier: ArcSwapOption::empty(),
            anchors: ArcSwap::from_pointee(Vec::new()),
            edges: ArcSwap::from_pointee(Vec::new()),
            stats: EdgeStats::default(),
        }
    }

    /// Replaces the trust anchors with the certificates in these PEM texts (the trust store).
    /// Returns whether anything changed; on error the old anchors stay.
    pub fn set_anchors(&self, pems: &[String]) -> Result<bool, EdgeTrustError> {
        let mut key: Vec<String> = pems.iter().map(|p| p.trim().to_owned()).collect();
        key.sort();
        if **self.anchors.load() == key {
            return Ok(false);
        }
        let mut roots = RootCertStore::empty();
        for (index, pem) in pems.iter().enumerate() {
            let certs = certs_from_pem(pem)
                .map_err(|reason| EdgeTrustError::BadAnchor { index, reason })?;
            for c in certs {
                roots.add(c).map_err(|e| EdgeTrustError::BadAnchor {
                    index,
                    reason: e.to_string(),
                })?;
            }
        }
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(Arc::new(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| EdgeTrustError::Verifier(e.to_string()))?,
            ))
        };
        self.verifier.store(verifier);
        self.anchors.store(Arc::new(key));
        Ok(true)
    }

    /// Replaces the registered edges. Returns whether anything changed.
    pub fn set_edges(&self, edges: Vec<Edge>) -> bool {
        if **self.edges.load() == edges {
            return false;
        }
        self.edges.store(Arc::new(edges));
        true
    }

    /// How many trust anchors (PEM entries) are loaded.
    pub fn anchor_count(&self) -> usize {
        self.anchors.load().len()
    }

    /// The counters.
    pub fn stats(&self) -> &EdgeStats {
        &self.stats
    }

    /// The whole decision for one certificate chain at `now`: webpki chain check against the
    /// current anchors, then the name match against the current edges. Not logged or counted.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Accepted, Refusal> {
        self.decide(end_entity, intermediates, now)
            .map_err(|(r, _)| r)
    }

    /// [`check`](Self::check) with the rustls error that picks the TLS alert.
    fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Accepted, (Refusal, rustls::Error)> {
        let verifier = self.verifier.load();
        let Some(verifier) = verifier.as_ref() else {
            // unknown_ca alert: nothing can chain to an empty store.
            return Err((
                Refusal::NoAnchors,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            ));
        };
        // webpki's error keeps its own alert (unknown_ca, certificate_expired, bad_certificate).
        verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| (Refusal::Chain(e.to_string()), e))?;
        let names = PeerNames::from_der(end_entity.as_ref());
        let edges = self.edges.load();
        match_edge(&edges, &names)
            .map(|(edge, matched)| Accepted {
                edge: edge.host.clone(),
                matched,
            })
            .ok_or((
                Refusal::NotRegistered,
                // access_denied alert: a good certificate, but not a registered edge.
                rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
            ))
    }

    /// The rustls verifier for the MRA server config: [`check`](Self::check) on every
    /// handshake, each refusal logged once with the presented names and counted.
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(EdgeVerifier(self.clone()))
    }
}

/// The rustls face of [`EdgeTrust`].
#[derive(Debug)]
struct EdgeVerifier(Arc<EdgeTrust>);

impl ClientCertVerifier for EdgeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    // No CA hints: clients then send their certificate whatever its issuer (RFC 8446 §4.4.2.4),
    // and the hints would otherwise have to follow live anchor changes by reference.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.decide(end_entity, intermediates, now) {
            Ok(a) => {
                self.0.stats.accepted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(edge = %a.edge, matched = %a.matched, "mra edge certificate accepted");
                Ok(ClientCertVerified::assertion())
            }
            Err((refusal, error)) => {
                self.0.stats.refused(&refusal);
                let names = PeerNames::from_der(end_entity.as_ref());
                tracing::warn!(presented = %names, reason = %refusal, "mra client certificate refused");
                Err(error)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
