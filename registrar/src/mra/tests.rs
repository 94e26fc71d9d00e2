//! Real sockets: a tokio-rustls client with and without a client certificate against the MRA
//! listener; REGISTER with Path through a trusted edge; removal closes the edge at once.

use super::*;
use crate::auth::{BearerError, BearerValidator, TokenIdentity};
use crate::config::RegistrarConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sipreg_store::{Directory, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[path = "../../tests/common/mod.rs"]
mod common;

#[path = "../../tests/common/fake_validator.rs"]
mod fake_validator;
use fake_validator::FakeValidator;

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn pki(name: &str) -> Pki {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = p.self_signed(&key).unwrap();
    Pki {
        ca_pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

fn identity(ca: &Pki, cn: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(vec![cn.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn server_tls() -> (Arc<ArcSwap<rustls::ServerConfig>>, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    (Arc::new(ArcSwap::from_pointee(cfg)), cert)
}

/// Connects and completes a round trip (an OPTIONS), so TLS 1.3 client-auth refusals, which
/// arrive after the client's side of the handshake, surface as errors here.
async fn connect(
    addr: SocketAddr,
    server: &CertificateDer<'static>,
    id: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<(TlsStream<TcpStream>, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match id {
        Some((c, k)) => b.with_client_auth_cert(c, k).unwrap(),
        None => b.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut s = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let options = "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bKo\r\n\
From: <sip:edge@localhost>;tag=1\r\nTo: <sip:localhost>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    s.write_all(options.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending).await?;
    if !r.starts_with("SIP/2.0 200 ") {
        return Err(r);
    }
    Ok((s, pending))
}

async fn read_response(
    s: &mut TlsStream<TcpStream>,
    pending: &mut Vec<u8>,
) -> Result<String, String> {
    loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let msg: Vec<u8> = pending.drain(..i + 4).collect();
            return Ok(String::from_utf8_lossy(&msg).into_owned());
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn edge(host: &str, names: &[&str]) -> Edge {
    Edge {
        host: host.into(),
        description: "test edge".into(),
        subject_names: names.iter().map(|s| s.to_string()).collect(),
        updated_at: 0,
    }
}

async fn registrar() -> (tempfile::TempDir, Arc<Registrar>) {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&tmp.path().join("db.sqlite")).unwrap();
    common::seed_alice(&store).await;
    let directory = Directory::load(&store).await.unwrap();
    let r = Registrar::new(
        RegistrarConfig::default(),
        directory,
        Arc::new(FakeValidator),
    );
    (tmp, Arc::new(r))
}

const REGISTER: &str = "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bKedge1\r\n\
Via: SIP/2.0/TCP 192.0.2.5:50000;branch=z9hG4bKua1\r\n\
Path: <sip:edge.example.com;lr>\r\nSupported: path\r\n\
From: <sip:1010@127.0.0.1>;tag=abc\r\nTo: <sip:1010@127.0.0.1>\r\nCall-ID: mra-test\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:alice@192.0.2.5:50000;transport=tcp>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"\r\n\
Authorization: Bearer good-alice\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n";

#[tokio::test]
async fn only_trusted_registered_edges_get_in_and_removal_closes_them() {
    let (_tmp, registrar) = registrar().await;
    let (tls, server_cert) = server_tls();
    let mra = MraListener::new(registrar.clone(), tls, MraLimits::default()).unwrap();
    mra.set(Some("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = mra.local_addr().unwrap();
    let trusted = pki("Trusted CA");
    let stranger = pki("Stranger CA");
    mra.update(
        std::slice::from_ref(&trusted.ca_pem),
        vec![edge("10.0.0.9", &["edge.example.com"])],
    )
    .unwrap();

    // No certificate, an untrusted CA, an unregistered name: all refused.
    assert!(connect(addr, &server_cert, None).await.is_err());
    assert!(connect(
        addr,
        &server_cert,
        Some(identity(&stranger, "edge.example.com"))
    )
    .await
    .is_err());
    assert!(connect(
        addr,
        &server_cert,
        Some(identity(&trusted, "rogue.example.com"))
    )
    .await
    .is_err());
    let s = mra.trust().stats().snapshot();
    assert_eq!(
        (
            s.refused_no_certificate,
            s.refused_chain,
            s.refused_not_registered
        ),
        (1, 1, 1),
        "{s:?}"
    );

    // The registered edge: REGISTER with Path → 200 echoing Path, binding stored with it.
    let (mut c, mut pending) = connect(
        addr,
        &server_cert,
        Some(identity(&trusted, "edge.example.com")),
    )
    .await
    .unwrap();
    assert_eq!(mra.connections().len(), 1);
    assert_eq!(mra.connections()[0].edge, "10.0.0.9");
    c.write_all(REGISTER.as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert!(r.starts_with("SIP/2.0 200 OK\r\n"), "{r}");
    assert!(r.contains("\r\nPath: <sip:edge.example.com;lr>\r\n"), "{r}");
    let b = registrar
        .location
        .bindings("1010@127.0.0.1", crate::registrar::unix_now());
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].path, ["<sip:edge.example.com;lr>"]);
    // A bad token is refused exactly as on the SIP OAuth port.
    let bad = REGISTER
        .replace("good-alice", "forged")
        .replace("CSeq: 1 ", "CSeq: 2 ");
    c.write_all(bad.as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    // (The Unified CM dialect: a Jabber device's Contact gets 407 with the Bearer challenge.)
    assert!(r.starts_with("SIP/2.0 407 "), "{r}");
    assert!(r.contains("error_description=\"unknown token\""), "{r}");

    // Unrelated change: the edge stays.
    assert_eq!(
        mra.update(
            std::slice::from_ref(&trusted.ca_pem),
            vec![edge("10.0.0.9", &["edge.example.com"]), edge("other", &[])]
        )
        .unwrap(),
        0
    );
    // Removing the edge entry closes its connection at once.
    let started = std::time::Instant::now();
    assert_eq!(
        mra.update(std::slice::from_ref(&trusted.ca_pem), vec![])
            .unwrap(),
        1
    );
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf))
        .await
        .expect("closed within a second");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(mra.trust().stats().snapshot().closed_on_change, 1);

    // Removing the trust anchor closes too.
    mra.update(
        std::slice::from_ref(&trusted.ca_pem),
        vec![edge("e", &["edge.example.com"])],
    )
    .unwrap();
    let (mut c, _) = connect(
        addr,
        &server_cert,
        Some(identity(&trusted, "edge.example.com")),
    )
    .await
    .unwrap();
    assert_eq!(
        mra.update(
            std::slice::from_ref(&stranger.ca_pem),
            vec![edge("e", &["edge.example.com"])]
        )
        .unwrap(),
        1
    );
    let n = tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf))
        .await
        .expect("closed within a second");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // Closing the port drops everything.
    mra.set(None).await.unwrap();
    assert_eq!(mra.local_addr(), None);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn edge_connections_have_their_own_caps() {
    let (_tmp, registrar) = registrar().await;
    let (tls, server_cert) = server_tls();
    let limits = MraLimits {
        max_connections_per_ip: 1,
        ..MraLimits::default()
    };
    let mra = MraListener::new(registrar.clone(), tls, limits).unwrap();
    mra.set(Some("127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = mra.local_addr().unwrap();
    let ca = pki("CA");
    mra.update(
        std::slice::from_ref(&ca.ca_pem),
        vec![edge("e", &["edge.example.com"])],
    )
    .unwrap();
    let _first = connect(addr, &server_cert, Some(identity(&ca, "edge.example.com")))
        .await
        .unwrap();
    assert!(
        connect(addr, &server_cert, Some(identity(&ca, "edge.example.com")))
            .await
            .is_err()
    );
    assert_eq!(mra.connection_stats().limit_connections_per_ip, 1);
    // The registrar's own gate (the other ports) saw none of this.
    assert_eq!(registrar.stats.snapshot().connections_open, 0);
}
