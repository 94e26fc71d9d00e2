//! The legacy ports on real sockets: UDP with RFC 3581 `rport` routing and the MTU cap, TCP with
//! Digest and flow-bound bindings, and the per-address connection cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use sipreg_registrar::digest::ha1;
use sipreg_registrar::{
    Algorithm, BearerError, BearerValidator, FlowState, LegacyAddrs, LegacyListeners, Registrar,
    RegistrarConfig, TokenIdentity, Transport,
};
use sipreg_store::{DigestCredential, Directory, SqliteStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod common;

struct NoTokens;
impl BearerValidator for NoTokens {
    fn validate(&self, _: &str, _: i64) -> Result<TokenIdentity, BearerError> {
        Err(BearerError {
            description: "no".into(),
        })
    }
}

async fn registrar(cfg: RegistrarConfig) -> (Arc<Registrar>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&tmp.path().join("db.sqlite")).unwrap();
    common::seed_device(&store, "bob", "SEPbob", "3030", false).await;
    let cred = DigestCredential {
        username: "3030".into(),
        realm: "ccmsipline".into(),
        ha1_md5: ha1(Algorithm::Md5, "3030", "ccmsipline", "pw"),
        ha1_sha256: ha1(Algorithm::Sha256, "3030", "ccmsipline", "pw"),
    };
    store
        .set_digest_credential("SEPbob", Some(&cred))
        .await
        .unwrap();
    let dir = Directory::load(&store).await.unwrap();
    (Arc::new(Registrar::new(cfg, dir, Arc::new(NoTokens))), tmp)
}

fn register(transport: &str, via_addr: &str, cseq: u32, extra: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/{transport} {via_addr};rport;branch=z9hG4bK{cseq}\r\n\
From: <sip:3030@example.com>;tag=1\r\nTo: <sip:3030@example.com>\r\nCall-ID: legacy-{transport}\r\n\
CSeq: {cseq} REGISTER\r\nContact: <sip:3030@{via_addr}>\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// The MD5 `Authorization` answering the challenge in `resp`.
fn answer(resp: &str, nc: u32) -> String {
    let nonce = resp
        .split("algorithm=MD5, nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let h = |s: String| hex::encode(Md5::digest(s.as_bytes()));
    let ha1 = ha1(Algorithm::Md5, "3030", "ccmsipline", "pw");
    let ha2 = h("REGISTER:sip:example.com".into());
    let r = h(format!("{ha1}:{nonce}:{nc:08x}:cn:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"3030\", realm=\"ccmsipline\", nonce=\"{nonce}\", uri=\"sip:example.com\", \
response=\"{r}\", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce=\"cn\"\r\n"
    )
}

async fn udp_exchange(c: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    c.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), c.recv_from(&mut buf))
        .await
        .expect("no udp response")
        .unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[tokio::test]
async fn udp_digest_register_with_rport_and_mtu_cap() {
    let (r, _tmp) = registrar(RegistrarConfig::default()).await;
    let addrs = LegacyAddrs {
        udp: Some("127.0.0.1:0".parse().unwrap()),
        ..LegacyAddrs::default()
    };
    let l = LegacyListeners::start(r.clone(), &addrs, None)
        .await
        .unwrap();
    let server = l.udp_addr().unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = c.local_addr().unwrap();
    // The Via names a port nobody listens on: the answer must follow rport to the real source.
    let ch = udp_exchange(&c, server, &register("UDP", "127.0.0.1:9", 1, "")).await;
    assert!(ch.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{ch}");
    assert!(
        ch.contains(&format!(
            "Via: SIP/2.0/UDP 127.0.0.1:9;rport={};branch=z9hG4bK1;received=127.0.0.1\r\n",
            me.port()
        )),
        "{ch}"
    );
    let ok = udp_exchange(
        &c,
        server,
        &register("UDP", "127.0.0.1:9", 2, &answer(&ch, 1)),
    )
    .await;
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    let b = &r
        .location
        .bindings("3030@example.com", sipreg_registrar::registrar::unix_now())[0];
    assert_eq!(
        (b.transport, b.flow_state, b.source),
        (Transport::Udp, FlowState::Datagram, Some(me))
    );
    // Keep-alive CRLFs and garbage get nothing; the socket keeps serving.
    c.send_to(b"\r\n\r\n", server).await.unwrap();
    let opt = udp_exchange(
        &c,
        server,
        "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKo\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:a@b>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\r\n",
    )
    .await;
    assert!(opt.starts_with("SIP/2.0 200 OK\r\n"), "{opt}");
    l.shutdown().await;

    // A response above udp_mtu is not sent, and counted.
    let (r, _tmp) = registrar(RegistrarConfig {
        udp_mtu: 200,
        ..RegistrarConfig::default()
    })
    .await;
    let l = LegacyListeners::start(r.clone(), &addrs, None)
        .await
        .unwrap();
    c.send_to(
        register("UDP", "127.0.0.1:9", 1, "").as_bytes(),
        l.udp_addr().unwrap(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 2048];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.recv_from(&mut buf))
            .await
            .is_err(),
        "oversized response must not be sent"
    );
    assert_eq!(r.stats.snapshot().udp_too_large, 1);
    l.shutdown().await;
}

async fn read_response(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8(got).unwrap())
}

#[tokio::test]
async fn tcp_digest_register_flow_and_per_ip_cap() {
    let (r, _tmp) = registrar(RegistrarConfig {
        max_connections_per_ip: 2,
        ..RegistrarConfig::default()
    })
    .await;
    let addrs = LegacyAddrs {
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        ..LegacyAddrs::default()
    };
    let l = LegacyListeners::start(r.clone(), &addrs, None)
        .await
        .unwrap();
    let server = l.tcp_addr().unwrap();
    let mut c = TcpStream::connect(server).await.unwrap();
    c.write_all(register("TCP", "127.0.0.1:5070", 1, "").as_bytes())
        .await
        .unwrap();
    let ch = read_response(&mut c).await.unwrap();
    assert!(ch.starts_with("SIP/2.0 401 "), "{ch}");
    c.write_all(register("TCP", "127.0.0.1:5070", 2, &answer(&ch, 1)).as_bytes())
        .await
        .unwrap();
    let ok = read_response(&mut c).await.unwrap();
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    let now = sipreg_registrar::registrar::unix_now();
    let b = &r.location.bindings("3030@example.com", now)[0];
    assert_eq!(
        (b.transport, b.flow_state),
        (Transport::Tcp, FlowState::Open)
    );
    assert_ne!(b.flow, 0);

    // Second connection fine, third from the same address refused (closed at once).
    let _c2 = TcpStream::connect(server).await.unwrap();
    let mut c3 = TcpStream::connect(server).await.unwrap();
    assert_eq!(
        read_response(&mut c3).await,
        None,
        "over the per-address cap"
    );
    assert!(r.stats.snapshot().limit_connections_per_ip >= 1);

    // The flow dies: its binding goes (unbind_on_close).
    drop(c);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !r.location.bindings("3030@example.com", now).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "binding outlived its flow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A slot is free again.
    let mut c4 = TcpStream::connect(server).await.unwrap();
    c4.write_all(register("TCP", "127.0.0.1:5070", 1, "").as_bytes())
        .await
        .unwrap();
    assert!(read_response(&mut c4)
        .await
        .unwrap()
        .starts_with("SIP/2.0 401 "));
    l.shutdown().await;
}
