//! A real TLS listener on 127.0.0.1:0 and a tokio-rustls client: challenge, registration,
//! keep-alive, pipelining, live certificate swap, and refusal once the listener is set to None.

mod common;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sipreg_registrar::{
    BearerError, BearerValidator, Registrar, RegistrarConfig, SipOAuthListener, TokenIdentity,
};
use sipreg_store::{Directory, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[path = "common/fake_validator.rs"]
mod fake_validator;
use fake_validator::FakeValidator;

fn server_config() -> (rustls::ServerConfig, CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    (cfg, cert)
}

async fn connect(
    addr: std::net::SocketAddr,
    trust: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads one response (ours always carry `Content-Length: 0`).
async fn read_response(s: &mut TlsStream<TcpStream>, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let msg: Vec<u8> = pending.drain(..i + 4).collect();
            return String::from_utf8(msg).unwrap();
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed while waiting for a response");
        pending.extend_from_slice(&buf[..n]);
    }
}

fn register(cseq: u32, auth: &str) -> String {
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5555;branch=z9hG4bK{cseq}\r\n\
From: <sip:1010@127.0.0.1>;tag=abc\r\nTo: <sip:1010@127.0.0.1>\r\nCall-ID: tls-test\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:alice@127.0.0.1:5555;transport=tls>;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"\r\n\
User-Agent: Cisco-CSF\r\n{auth}Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn tls_register_challenge_success_swap_and_close() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&tmp.path().join("db.sqlite")).unwrap();
    common::seed_alice(&store).await;
    let directory = Directory::load(&store).await.unwrap();
    let registrar = Arc::new(Registrar::new(
        RegistrarConfig::default(),
        directory,
        Arc::new(FakeValidator),
    ));

    let (cfg1, cert1) = server_config();
    let tls = Arc::new(ArcSwap::from_pointee(cfg1));
    let listener = SipOAuthListener::new(registrar.clone(), tls.clone());
    assert_eq!(listener.local_addr(), None);
    listener
        .set(Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    assert_ne!(addr.port(), 0);
    // Same address again: no rebind.
    listener
        .set(Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(listener.local_addr(), Some(addr));

    let mut c = connect(addr, &cert1).await.unwrap();
    let mut pending = Vec::new();

    // No credentials: Unified CM challenge (Jabber user agent).
    c.write_all(register(1, "").as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut pending).await;
    assert!(r.starts_with("SIP/2.0 407 "), "{r}");
    assert!(
        r.contains("\r\nProxy-Authenticate: Bearer realm=\"ccmsipline\"\r\n"),
        "{r}"
    );

    // Keep-alive ping → single CRLF pong.
    c.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");

    // A rejected token, then a good one, pipelined in one write: two answers in order.
    let mut both = register(2, "Proxy-Authorization: Bearer token=\"bad\"\r\n");
    both.push_str(&register(
        3,
        "Proxy-Authorization: Bearer token=\"good-alice\"\r\n",
    ));
    c.write_all(both.as_bytes()).await.unwrap();
    let r = read_response(&mut c, &mut pending).await;
    assert!(r.starts_with("SIP/2.0 407 "), "{r}");
    assert!(
        r.contains("error=\"invalid_token\", error_description=\"unknown token\""),
        "{r}"
    );
    let r = read_response(&mut c, &mut pending).await;
    assert!(r.starts_with("SIP/2.0 200 OK\r\n"), "{r}");
    assert!(
        r.contains("\r\nContact: <sip:alice@127.0.0.1:5555;transport=tls>;expires=3600;+u.sip!devicename.ccm.cisco.com=\"CSFalice\"\r\n"),
        "{r}"
    );
    assert!(r.contains("\r\nExpires: 3600\r\n"), "{r}");
    assert_eq!(
        registrar
            .location
            .bindings("1010@127.0.0.1", sipreg_registrar::registrar::unix_now())
            .len(),
        1
    );

    // Live certificate swap: the next handshake presents the new certificate.
    let (cfg2, cert2) = server_config();
    tls.store(Arc::new(cfg2));
    assert!(
        connect(addr, &cert1).await.is_err(),
        "old certificate no longer served"
    );
    let mut c2 = connect(addr, &cert2).await.unwrap();
    let mut pending2 = Vec::new();
    c2.write_all(register(1, "").as_bytes()).await.unwrap();
    assert!(read_response(&mut c2, &mut pending2)
        .await
        .starts_with("SIP/2.0 407 "));

    // OAuth mode off: socket closed, live connections dropped, their bindings removed.
    listener.set(None).await.unwrap();
    assert_eq!(listener.local_addr(), None);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "live connection closed");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections refused"
    );
    assert!(
        registrar.location.is_empty(),
        "bindings of the dropped connection removed"
    );

    // And back on.
    listener.set(Some(addr)).await.unwrap();
    let mut c3 = connect(addr, &cert2).await.unwrap();
    let mut pending3 = Vec::new();
    c3.write_all(register(1, "").as_bytes()).await.unwrap();
    assert!(read_response(&mut c3, &mut pending3)
        .await
        .starts_with("SIP/2.0 407 "));
    listener.set(None).await.unwrap();
}

#[tokio::test]
async fn framing_error_and_header_timeout_close_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&tmp.path().join("db.sqlite")).unwrap();
    let directory = Directory::load(&store).await.unwrap();
    let cfg = RegistrarConfig {
        header_timeout: Duration::from_millis(300),
        ..RegistrarConfig::default()
    };
    let registrar = Arc::new(Registrar::new(cfg, directory, Arc::new(FakeValidator)));
    let (cfg1, cert) = server_config();
    let listener = SipOAuthListener::new(registrar, Arc::new(ArcSwap::from_pointee(cfg1)));
    listener
        .set(Some("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();

    // Missing Content-Length on a stream: closed.
    let mut c = connect(addr, &cert).await.unwrap();
    c.write_all(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TLS x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);

    // A message that never completes: closed after header_timeout.
    let mut c = connect(addr, &cert).await.unwrap();
    c.write_all(b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TLS x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed by the header timeout, not at once"
    );
    listener.set(None).await.unwrap();
}
