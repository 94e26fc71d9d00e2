//! Connections to the server under test: TLS (rustls, aws-lc-rs), TCP or UDP, optionally from one
//! of several loopback source addresses so one client can hold more than one port range of
//! connections.
//!
//! The load generator simulates tens of thousands of devices on the same cores as the server,
//! so what it spends per connection is taken from the server under test. Two choices here keep
//! that small without making the servers' work any lighter (both servers face the same client):
//!
//! * **Certificate chain verified once per certificate.** A real device verifies the server's
//!   chain on each handshake; the generator's [`client_config`] verifies it in full (webpki:
//!   chain to the CA, validity, name) the first time it sees a server's end-entity certificate
//!   and then accepts byte-identical certificates for the same server name for
//!   [`REVERIFY_AFTER`] without re-walking the chain (two ECDSA verifies saved per handshake).
//!   The handshake signature (CertificateVerify, TLS 1.3; ServerKeyExchange, TLS 1.2), which
//!   proves the server holds the key, is still verified on every handshake.
//! * **A 4 KiB read buffer** per connection instead of 16 KiB: responses are a few hundred
//!   bytes, and rustls buffers whole records itself.
//! * **The first request rides with the handshake** ([`Connector::connect_and_send`], storm and
//!   idle-hold): the REGISTER leaves in the same write as the client's Finished, one segment
//!   instead of two, as TLS 1.3 clients commonly do. The server's handshake and its reading of
//!   the request are unchanged.
//!
//! Connection errors are classified by phase (TCP connect, TLS handshake, after the handshake)
//! so the RESULT line can say why devices failed ([`TransportError::kind`]).

use std::io::{ErrorKind, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::UnixTime;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use crate::sip::{ResponseFramer, SipError};
use crate::stats::ConnErrorKind;

/// Read buffer of a stream connection: a response is a few hundred bytes.
const STREAM_READ_BUF: usize = 4096;

/// Largest UDP datagram.
const UDP_READ_BUF: usize = 65536;

/// SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// SIP over TLS over TCP.
    Tls,
    /// SIP over TCP.
    Tcp,
    /// SIP over UDP.
    Udp,
}

impl Transport {
    /// The name in a Via header.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Tls => "TLS",
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
    }
}

/// Errors of connecting and talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket call failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The CA file could not be read or holds no certificate.
    #[error("ca file {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The TLS server name is not a valid DNS name or IP address.
    #[error("invalid tls server name {0}")]
    ServerName(String),
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the local address or the TCP connect failed.
    #[error("tcp connect: {0}")]
    TcpConnect(std::io::Error),
    /// The TCP connect did not complete in time.
    #[error("tcp connect timed out")]
    ConnectTimeout,
    /// The TLS handshake failed.
    #[error("tls handshake: {0}")]
    Handshake(std::io::Error),
    /// The TLS handshake did not complete in time.
    #[error("tls handshake timed out")]
    HandshakeTimeout,
    /// The server sent something that is not a SIP response.
    #[error("sip: {0}")]
    Sip(#[from] SipError),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
}

impl TransportError {
    /// The kind of connection failure this is, for the breakdown in the RESULT line.
    pub fn kind(&self) -> ConnErrorKind {
        match self {
            TransportError::TcpConnect(e) => match e.kind() {
                ErrorKind::ConnectionRefused => ConnErrorKind::ConnectRefused,
                ErrorKind::TimedOut => ConnErrorKind::ConnectTimeout,
                ErrorKind::AddrInUse | ErrorKind::AddrNotAvailable => ConnErrorKind::AddrInUse,
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
                    ConnErrorKind::ConnectReset
                }
                _ => ConnErrorKind::Connect,
            },
            TransportError::ConnectTimeout => ConnErrorKind::ConnectTimeout,
            TransportError::Handshake(e) => match e.kind() {
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => ConnErrorKind::TlsReset,
                ErrorKind::TimedOut => ConnErrorKind::TlsTimeout,
                _ => ConnErrorKind::Tls,
            },
            TransportError::HandshakeTimeout => ConnErrorKind::TlsTimeout,
            TransportError::Tls(_) => ConnErrorKind::Tls,
            TransportError::Io(e) => match e.kind() {
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => ConnErrorKind::Reset,
                ErrorKind::UnexpectedEof => ConnErrorKind::Closed,
                _ => ConnErrorKind::Read,
            },
            TransportError::Closed => ConnErrorKind::Closed,
            TransportError::Sip(_) => ConnErrorKind::BadResponse,
            TransportError::Ca { .. } | TransportError::ServerName(_) => ConnErrorKind::Connect,
        }
    }
}

/// How long a fully verified server certificate is accepted again without re-walking its chain
/// (so a certificate that expires, or a CA change, is noticed within this time).
pub const REVERIFY_AFTER: Duration = Duration::from_secs(60);

/// Distinct (server name, certificate) pairs remembered; a run talks to one or two servers.
const MAX_VERIFIED: usize = 16;

/// A [`ServerCertVerifier`] that verifies a server's certificate chain with webpki the first time
/// it sees the certificate, then accepts the byte-identical end-entity certificate for the same
/// server name for [`REVERIFY_AFTER`] without re-verifying the chain. Handshake signatures are
/// always verified (delegated to webpki), so every connection still proves the server holds the
/// certificate's key. Why: the load generator simulates many devices on the server's own cores,
/// and re-verifying the same chain for each of them costs it two ECDSA verifies per handshake.
#[derive(Debug)]
pub struct VerifyOnceServerCerts {
    inner: Arc<WebPkiServerVerifier>,
    verified: Mutex<Vec<(ServerName<'static>, CertificateDer<'static>, UnixTime)>>,
}

impl VerifyOnceServerCerts {
    /// Wraps a full webpki verifier.
    pub fn new(inner: Arc<WebPkiServerVerifier>) -> Self {
        Self {
            inner,
            verified: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self, end_entity: &CertificateDer<'_>, name: &ServerName<'_>, now: UnixTime) -> bool {
        let list = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        list.iter().any(|(n, c, at)| {
            n == name
                && c.as_ref() == end_entity.as_ref()
                && now.as_secs().saturating_sub(at.as_secs()) < REVERIFY_AFTER.as_secs()
        })
    }

    fn remember(&self, end_entity: &CertificateDer<'_>, name: &ServerName<'_>, now: UnixTime) {
        let mut list = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|(n, c, _)| !(n == name && c.as_ref() == end_entity.as_ref()));
        if list.len() >= MAX_VERIFIED {
            list.remove(0);
        }
        list.push((name.to_owned(), end_entity.clone().into_owned(), now));
    }
}

impl ServerCertVerifier for VerifyOnceServerCerts {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.seen(end_entity, server_name, now) {
            return Ok(ServerCertVerified::assertion());
        }
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.remember(end_entity, server_name, now);
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens connections of one kind to one server.
#[derive(Clone)]
pub struct Connector {
    transport: Transport,
    target: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    sources: Vec<IpAddr>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("transport", &self.transport)
            .field("target", &self.target)
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

/// A TLS client config trusting the CA in `ca_pem`, without session resumption (each simulated
/// device is a different client, so every handshake is a full one) and with X25519 only (both
/// servers under comparison then do the same key exchange; OpenSSL 3.0 has no ML-KEM). The
/// server's certificate chain is verified once per certificate ([`VerifyOnceServerCerts`]).
pub fn client_config(ca_pem: &Path) -> Result<rustls::ClientConfig, TransportError> {
    let ca_err = |why: String| TransportError::Ca {
        path: ca_pem.display().to_string(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_pem)
        .map_err(|e| ca_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no certificate".into()));
    }
    for c in certs {
        roots.add(c)?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ca_err(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(VerifyOnceServerCerts::new(webpki)))
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    Ok(cfg)
}

impl Connector {
    /// A connector to `target`; `tls` (config and server name) is required for [`Transport::Tls`].
    /// `source_ips` > 1 spreads connections over 127.0.0.1, 127.0.0.2, … (loopback targets only).
    pub fn new(
        transport: Transport,
        target: SocketAddr,
        tls: Option<(Arc<rustls::ClientConfig>, String)>,
        source_ips: u8,
    ) -> Result<Self, TransportError> {
        let tls = match (transport, tls) {
            (Transport::Tls, Some((cfg, name))) => {
                let sn = ServerName::try_from(name.clone())
                    .map_err(|_| TransportError::ServerName(name))?;
                Some((TlsConnector::from(cfg), sn))
            }
            (Transport::Tls, None) => {
                return Err(TransportError::Ca {
                    path: "(none)".into(),
                    why: "tls needs --ca".into(),
                })
            }
            _ => None,
        };
        let sources = if source_ips > 1 && target.ip().is_loopback() && target.is_ipv4() {
            (1..=source_ips)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            transport,
            target,
            tls,
            sources,
        })
    }

    /// The transport this connector speaks.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Opens connection number `n` (which picks the source address), giving up after `limit`
    /// (TCP connect and TLS handshake together; [`TransportError::kind`] says which timed out).
    pub async fn connect(&self, n: usize, limit: Duration) -> Result<Connection, TransportError> {
        self.open(
            n,
            limit,
            None::<fn(SocketAddr, &mut Vec<u8>)>,
            &mut Vec::new(),
        )
        .await
    }

    /// Like [`connect`](Self::connect), then sends a first request that `fill` writes into `out`
    /// (cleared first) from the connection's local address (a REGISTER names it in Via and
    /// Contact), as one device's set-up does.
    ///
    /// Over TLS the request is handed to rustls before the handshake, which sends it right after
    /// the client's Finished, in the same write: the last handshake flight and the first record
    /// of application data leave as one TCP segment, as TLS 1.3 allows and browsers do. That is
    /// one write and one segment fewer per device for the generator, and the server finds the
    /// request already buffered when its handshake completes instead of waiting for another
    /// segment. The server still does the full handshake and reads the request from TLS as
    /// always; both servers under comparison get the same client.
    pub async fn connect_and_send(
        &self,
        n: usize,
        limit: Duration,
        out: &mut Vec<u8>,
        fill: impl FnOnce(SocketAddr, &mut Vec<u8>),
    ) -> Result<Connection, TransportError> {
        self.open(n, limit, Some(fill), out).await
    }

    async fn open(
        &self,
        n: usize,
        limit: Duration,
        fill: Option<impl FnOnce(SocketAddr, &mut Vec<u8>)>,
        out: &mut Vec<u8>,
    ) -> Result<Connection, TransportError> {
        let deadline = Instant::now() + limit;
        let source = (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()]);
        if self.transport == Transport::Udp {
            let bind = SocketAddr::new(
                source.unwrap_or(if self.target.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                }),
                0,
            );
            let sock = UdpSocket::bind(bind).await?;
            sock.connect(self.target).await?;
            let local = sock.local_addr()?;
            let mut conn = Connection {
                local,
                kind: Kind::Udp(sock),
                framer: ResponseFramer::default(),
                buf: vec![0; UDP_READ_BUF],
            };
            if first_request(fill, local, out) {
                conn.send(out).await?;
            }
            return Ok(conn);
        }
        let sock = if self.target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(TransportError::TcpConnect)?;
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(TransportError::TcpConnect)?;
        }
        let tcp = timeout_at(deadline, sock.connect(self.target))
            .await
            .map_err(|_| TransportError::ConnectTimeout)?
            .map_err(TransportError::TcpConnect)?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let first = first_request(fill, local, out);
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => {
                // Buffered by rustls until the handshake completes (see `connect_and_send`).
                let mut queued = Ok(());
                let tls = connector.connect_with(name.clone(), tcp, |c| {
                    if first {
                        queued = c.writer().write_all(out);
                    }
                });
                let tls = timeout_at(deadline, tls)
                    .await
                    .map_err(|_| TransportError::HandshakeTimeout)?
                    .map_err(TransportError::Handshake)?;
                queued?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let mut conn = Connection {
            local,
            kind: Kind::Stream(io),
            framer: ResponseFramer::default(),
            buf: vec![0; STREAM_READ_BUF],
        };
        // Over TLS the request went with the handshake.
        if first && self.tls.is_none() {
            conn.send(out).await?;
        }
        Ok(conn)
    }
}

/// Writes the first request into `out` (cleared first) when there is one; whether there is.
fn first_request(
    fill: Option<impl FnOnce(SocketAddr, &mut Vec<u8>)>,
    local: SocketAddr,
    out: &mut Vec<u8>,
) -> bool {
    let Some(fill) = fill else {
        return false;
    };
    out.clear();
    fill(local, out);
    true
}

enum Kind {
    Stream(Box<dyn Io>),
    Udp(UdpSocket),
}

/// One open connection (or connected UDP socket).
pub struct Connection {
    local: SocketAddr,
    kind: Kind,
    framer: ResponseFramer,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Our address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends bytes: one datagram over UDP, written whole over a stream.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        match &mut self.kind {
            Kind::Stream(s) => {
                s.write_all(bytes).await?;
                s.flush().await?;
            }
            Kind::Udp(u) => {
                u.send(bytes).await?;
            }
        }
        Ok(())
    }

    /// Receives the next complete response. Cancel-safe: bytes read before a cancellation stay
    /// buffered for the next call.
    pub async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            if let Some(m) = self.framer.next_message()? {
                return Ok(m);
            }
            let n = match &mut self.kind {
                Kind::Stream(s) => s.read(&mut self.buf).await?,
                Kind::Udp(u) => u.recv(&mut self.buf).await?,
            };
            if n == 0 {
                return Err(TransportError::Closed);
            }
            self.framer.push(&self.buf[..n]);
        }
    }

    /// Reads until at least one more keep-alive pong arrived (stream transports).
    pub async fn recv_pong(&mut self) -> Result<(), TransportError> {
        let before = self.framer.pongs();
        loop {
            // A message in the buffer would be unexpected here; it is dropped.
            let _ = self.framer.next_message()?;
            if self.framer.pongs() > before {
                return Ok(());
            }
            let n = match &mut self.kind {
                Kind::Stream(s) => s.read(&mut self.buf).await?,
                Kind::Udp(u) => u.recv(&mut self.buf).await?,
            };
            if n == 0 {
                return Err(TransportError::Closed);
            }
            self.framer.push(&self.buf[..n]);
        }
    }

    /// Closes politely (TLS close_notify, TCP FIN).
    pub async fn close(mut self) {
        if let Kind::Stream(s) = &mut self.kind {
            let _ = s.shutdown().await;
        }
    }
}
