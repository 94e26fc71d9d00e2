//! rustls server and client configs from PEM, always on the aws-lc-rs provider, TLS 1.2+ only.

use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertError;

/// TLS 1.0 and 1.1 are never offered or accepted.
static VERSIONS: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

/// The provider is named explicitly so the process-wide default (possibly absent or ring) never matters.
///
/// AES-128-GCM suites come first (servers enforce this order): the SHA-384 key schedule of the
/// AES-256 suites cost ~9 % of a handshake in the reconnect-storm profile (BENCHMARKS.md), on CPUs
/// without SHA-512 instructions, for no gain a registrar needs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| !format!("{:?}", s.suite()).contains("AES_128_GCM"));
    Arc::new(p)
}

/// A TLS 1.2+ server config (aws-lc-rs) from a PEM certificate chain and key, with ALPN protocols.
///
/// Fails if the chain is empty, the key is missing or the key does not match the leaf certificate.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    alpn: &[&[u8]],
) -> Result<ServerConfig, CertError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(parse_certs(cert_chain_pem)?, parse_key(key_pem)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// The server config of the SIP TLS listeners (SIP OAuth port, legacy TLS port): as
/// [`server_config`] without ALPN, and without TLS 1.3 session tickets.
///
/// A SIP client keeps one long-lived connection and reconnects rarely, so a ticket is almost
/// never used, while issuing one costs an encryption, a write and cache memory on every handshake
/// — paid 50,000 times in a reconnect storm. HTTPS keeps its tickets (short, repeated connections).
pub fn sip_server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, CertError> {
    let mut cfg = server_config(cert_chain_pem, key_pem, &[])?;
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// Like [`server_config`], but requires a client certificate that chains to `client_ca_pem` (MRA mTLS).
///
/// This checks the chain, validity and clientAuth usage only; matching the peer's name against the
/// registered edges is the caller's job, on top of this verifier.
pub fn server_config_mtls(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: &[u8],
    alpn: &[&[u8]],
) -> Result<ServerConfig, CertError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_ca_pem)?), provider())
            .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(cert_chain_pem)?, parse_key(key_pem)?)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// A TLS 1.2+ client config (aws-lc-rs) trusting exactly the certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Result<ClientConfig, CertError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth())
}

/// Like [`client_config`], presenting a client certificate (for mTLS peers and tests).
pub fn client_config_with_cert(
    ca_pem: &[u8],
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<ClientConfig, CertError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(parse_certs(cert_chain_pem)?, parse_key(key_pem)?)?)
}

/// Every certificate in a PEM blob, in order; at least one.
pub(crate) fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM blob.
pub(crate) fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    Ok(PrivateKeyDer::from_pem_slice(pem)?)
}

fn roots(ca_pem: &[u8]) -> Result<RootCertStore, CertError> {
    let mut store = RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        store.add(cert)?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_or_create;
    use rustls::pki_types::ServerName;
    use std::fs;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    struct Pki {
        _dir: tempfile::TempDir,
        ca: Vec<u8>,
        cert: Vec<u8>,
        key: Vec<u8>,
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "sipreg.test".to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        let p = load_or_create(&dir.path().join("pki"), &names).unwrap();
        Pki {
            ca: fs::read(&p.ca_cert).unwrap(),
            cert: fs::read(&p.server_cert).unwrap(),
            key: fs::read(&p.server_key).unwrap(),
            _dir: dir,
        }
    }

    /// Runs one TLS server accept and one client connect over loopback; returns the client's result
    /// (negotiated ALPN and protocol version, after an echo round trip) or its error text.
    async fn handshake(
        server: ServerConfig,
        client: ClientConfig,
        name: &str,
    ) -> Result<(Option<Vec<u8>>, rustls::ProtocolVersion), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(&buf).await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let sni = ServerName::try_from(name.to_string()).unwrap();
        let result = async {
            let mut tls = connector
                .connect(sni, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"ping");
            let (_, conn) = tls.get_ref();
            Ok((
                conn.alpn_protocol().map(<[u8]>::to_vec),
                conn.protocol_version().unwrap(),
            ))
        }
        .await;
        let server_result = server_task.await.unwrap();
        if result.is_ok() {
            server_result.unwrap();
        }
        result
    }

    #[tokio::test]
    async fn handshake_succeeds_with_alpn_and_tls13() {
        let p = pki();
        let server = server_config(&p.cert, &p.key, &[b"sip", b"h2"]).unwrap();
        let mut client = client_config(&p.ca).unwrap();
        client.alpn_protocols = vec![b"sip".to_vec()];
        for name in ["sipreg.test", "localhost", "127.0.0.1"] {
            let (alpn, version) = handshake(server.clone(), client.clone(), name)
                .await
                .unwrap();
            assert_eq!(alpn.as_deref(), Some(&b"sip"[..]));
            assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
        }
    }

    #[tokio::test]
    async fn tls12_client_is_accepted() {
        let p = pki();
        let server = server_config(&p.cert, &p.key, &[]).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&TLS12])
            .unwrap()
            .with_root_certificates(roots(&p.ca).unwrap())
            .with_no_client_auth();
        let (_, version) = handshake(server, client, "localhost").await.unwrap();
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    }

    #[tokio::test]
    async fn client_trusting_another_ca_fails() {
        let p = pki();
        let other = pki();
        let server = server_config(&p.cert, &p.key, &[]).unwrap();
        let err = handshake(server, client_config(&other.ca).unwrap(), "localhost")
            .await
            .unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[tokio::test]
    async fn name_outside_the_sans_fails() {
        let p = pki();
        let server = server_config(&p.cert, &p.key, &[]).unwrap();
        let err = handshake(server, client_config(&p.ca).unwrap(), "other.test")
            .await
            .unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
    }

    /// A hand-made TLS 1.1 ClientHello (no supported_versions extension) must be refused with a
    /// protocol_version alert: rustls cannot speak TLS 1.1 as a client, so the bytes are built here.
    #[test]
    fn tls11_only_client_hello_is_refused() {
        let p = pki();
        let cfg = Arc::new(server_config(&p.cert, &p.key, &[]).unwrap());
        let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // empty session id
                      // A TLS 1.1 CBC suite plus a TLS 1.2 GCM suite, so only the version can be what fails.
        body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x0a, 0xc0, 0x2b]);
        body.extend_from_slice(&[0x01, 0x00]); // null compression
                                               // signature_algorithms (ecdsa_secp256r1_sha256), supported_groups (P-256), ec_point_formats:
                                               // everything a TLS 1.2 handshake would need, so the refusal can only be about the version.
        body.extend_from_slice(&[0x00, 0x16]);
        body.extend_from_slice(&[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
        body.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17]);
        body.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
        let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x02, 0x00, hs.len() as u8];
        record.extend_from_slice(&hs);

        let mut conn = rustls::ServerConnection::new(cfg).unwrap();
        conn.read_tls(&mut &record[..]).unwrap();
        let err = conn.process_new_packets().unwrap_err();
        assert_eq!(
            err,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered),
            "{err:?}"
        );
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        // Alert record (21), fatal (2), protocol_version (70).
        assert_eq!(out[0], 21, "{out:?}");
        assert_eq!(&out[out.len() - 2..], &[2, 70]);
    }

    #[test]
    fn only_the_sip_config_sends_no_tickets() {
        let p = pki();
        assert_eq!(
            sip_server_config(&p.cert, &p.key)
                .unwrap()
                .send_tls13_tickets,
            0
        );
        let https = server_config(&p.cert, &p.key, &[b"h2"]).unwrap();
        assert!(https.send_tls13_tickets > 0, "HTTPS keeps resumption");
    }

    #[tokio::test]
    async fn mtls_requires_a_client_certificate_from_the_ca() {
        let p = pki();
        let server = server_config_mtls(&p.cert, &p.key, &p.ca, &[]).unwrap();
        // The server certificate carries clientAuth, so it serves as the client identity here.
        let with_cert = client_config_with_cert(&p.ca, &p.cert, &p.key).unwrap();
        handshake(server.clone(), with_cert, "localhost")
            .await
            .unwrap();
        // TLS 1.3 client auth failures surface on the first read, inside `handshake`.
        let without = client_config(&p.ca).unwrap();
        assert!(handshake(server.clone(), without, "localhost")
            .await
            .is_err());
        let stranger = pki();
        let foreign = client_config_with_cert(&p.ca, &stranger.cert, &stranger.key).unwrap();
        assert!(handshake(server, foreign, "localhost").await.is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let p = pki();
        assert!(matches!(
            server_config(b"", &p.key, &[]),
            Err(CertError::NoCertificate)
        ));
        assert!(matches!(
            server_config(&p.cert, b"", &[]),
            Err(CertError::Pem(_))
        ));
        // A key that does not belong to the certificate.
        let other = pki();
        assert!(matches!(
            server_config(&p.cert, &other.key, &[]),
            Err(CertError::Tls(_))
        ));
        assert!(matches!(
            client_config(b"junk"),
            Err(CertError::NoCertificate)
        ));
    }

    #[test]
    fn servers_prefer_aes_128_gcm_whatever_the_client_lists_first() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        let cfg = server_config(
            &std::fs::read(&paths.server_cert).unwrap(),
            &std::fs::read(&paths.server_key).unwrap(),
            &[],
        )
        .unwrap();
        assert!(cfg.ignore_client_order);
        let first = cfg.crypto_provider().cipher_suites[0].suite();
        assert_eq!(first, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}
