//! Moving the legacy listeners live: bind the new port first, keep the old one on failure, keep
//! connections accepted before a move, and close everything when switched off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sipreg_registrar::{
    BearerError, BearerValidator, LegacyAddrs, LegacyListeners, Registrar, RegistrarConfig,
    TokenIdentity,
};
use sipreg_store::{Directory, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

struct NoTokens;
impl BearerValidator for NoTokens {
    fn validate(&self, _: &str, _: i64) -> Result<TokenIdentity, BearerError> {
        Err(BearerError {
            description: "no".into(),
        })
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn at(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn options(transport: &str, local: SocketAddr) -> String {
    format!(
        "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bKmove\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:example.com>\r\nCall-ID: move\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// OPTIONS on an open stream: whether a 200 came back.
async fn tcp_ok(stream: &mut TcpStream) -> bool {
    let local = stream.local_addr().unwrap();
    if stream
        .write_all(options("TCP", local).as_bytes())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 4096];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0 && buf[..n].starts_with(b"SIP/2.0 200")
    )
}

async fn udp_ok(port: u16) -> bool {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let msg = options("UDP", c.local_addr().unwrap());
    c.send_to(msg.as_bytes(), at(port)).await.unwrap();
    let mut buf = vec![0u8; 65535];
    matches!(
        tokio::time::timeout(Duration::from_millis(700), c.recv_from(&mut buf)).await,
        Ok(Ok((n, _))) if buf[..n].starts_with(b"SIP/2.0 200")
    )
}

#[tokio::test]
async fn legacy_listeners_move_keep_old_connections_and_refuse_a_taken_port() {
    let tmp = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&tmp.path().join("db.sqlite")).unwrap();
    let dir = Directory::load(&store).await.unwrap();
    let r = Arc::new(Registrar::new(
        RegistrarConfig::default(),
        dir,
        Arc::new(NoTokens),
    ));
    let old = free_port();
    let both = |port| LegacyAddrs {
        udp: Some(at(port)),
        tcp: Some(at(port)),
        tls: None,
    };
    let l = LegacyListeners::start(r, &both(old), None).await.unwrap();
    assert!(udp_ok(old).await);
    let mut kept = TcpStream::connect(at(old)).await.unwrap();
    assert!(tcp_ok(&mut kept).await);

    let new = free_port();
    l.set(&both(new)).await.unwrap();
    assert_eq!(l.tcp_addr(), Some(at(new)));
    assert_eq!(l.udp_addr(), Some(at(new)));
    assert!(udp_ok(new).await);
    assert!(tcp_ok(&mut TcpStream::connect(at(new)).await.unwrap()).await);
    assert!(
        TcpStream::connect(at(old)).await.is_err(),
        "old port closed"
    );
    assert!(!udp_ok(old).await, "old udp port closed");
    assert!(tcp_ok(&mut kept).await, "the old connection stays");

    // A port another socket holds: the error names the transport, the listeners stay.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let err = l
        .set(&LegacyAddrs {
            udp: None,
            tcp: Some(at(taken)),
            tls: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.transport(), "tcp", "{err}");
    assert_eq!(l.tcp_addr(), Some(at(new)));
    assert!(tcp_ok(&mut TcpStream::connect(at(new)).await.unwrap()).await);

    // Switched off: every socket and connection closes, the kept one included.
    l.shutdown().await;
    assert_eq!((l.udp_addr(), l.tcp_addr()), (None, None));
    assert!(TcpStream::connect(at(new)).await.is_err());
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}
