//! Connections to the server under test: TLS (rustls, aws-lc-rs), TCP or UDP, optionally from one
//! of several loopback source addresses so one client can hold more than one port range of
//! connections.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio_rustls::TlsConnector;

use crate::sip::{ResponseFramer, SipError};

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
    /// The server sent something that is not a SIP response.
    #[error("sip: {0}")]
    Sip(#[from] SipError),
    /// The server closed the connection.
    #[error("connection closed by the server")]
    Closed,
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
/// servers under comparison then do the same key exchange; OpenSSL 3.0 has no ML-KEM).
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
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
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

    /// Opens connection number `n` (which picks the source address).
    pub async fn connect(&self, n: usize) -> Result<Connection, TransportError> {
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
            return Ok(Connection {
                local,
                kind: Kind::Udp(sock),
                framer: ResponseFramer::default(),
                buf: vec![0; 65536],
            });
        }
        let sock = if self.target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = sock.connect(self.target).await?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        Ok(Connection {
            local,
            kind: Kind::Stream(io),
            framer: ResponseFramer::default(),
            buf: vec![0; 16384],
        })
    }
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
