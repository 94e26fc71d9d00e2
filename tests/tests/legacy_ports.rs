//! The legacy SIP ports (UDP/TCP `sip_port`, TLS `secured_sip_port`) move live with a
//! `PATCH /api/v1/nodes/{name}`, refuse clashes with 409 while the old port keeps serving, and
//! keep an API change across a restart.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sipreg_e2e::{free_port, Server, SipClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn options(transport: &str, local: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id}\r\n\
From: <sip:probe@localhost>;tag=1\r\nTo: <sip:localhost>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

fn status(text: &str) -> Option<u16> {
    text.split(' ').nth(1).and_then(|c| c.parse().ok())
}

/// OPTIONS over UDP; the status, or `None` when nothing answers within `wait`.
async fn udp_options(port: u16, wait: Duration) -> Option<u16> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    let msg = options("UDP", local, &format!("u{port}"));
    sock.send_to(msg.as_bytes(), ("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => status(&String::from_utf8_lossy(&buf[..n])),
        // Timeout, or ICMP port unreachable surfacing as an error.
        _ => None,
    }
}

/// Sends OPTIONS on an open TCP stream and reads the response head.
async fn tcp_request(stream: &mut TcpStream, call_id: &str) -> Option<u16> {
    let local = stream.local_addr().unwrap();
    stream
        .write_all(options("TCP", local, call_id).as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        status(&String::from_utf8_lossy(&buf))
    })
    .await
    .ok()
    .flatten()
}

/// OPTIONS over a new TCP connection; `None` when the port refuses the connection.
async fn tcp_options(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    tcp_request(&mut stream, &format!("t{port}")).await
}

/// OPTIONS over TLS; `None` when the port refuses the connection.
async fn tls_options(s: &Server, port: u16) -> Option<u16> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = SipClient::connect(addr, &s.ca_pem()).await.ok()?;
    let local = c.local;
    c.request(&options("TLS", local, &format!("s{port}")))
        .await
        .map(|r| r.code)
}

async fn node(s: &Server) -> Value {
    s.api(reqwest::Method::GET, "nodes/node1", None).await.1
}

#[tokio::test]
async fn legacy_ports_move_live_refuse_clashes_and_survive_a_restart() {
    let mut s = Server::start().await;
    let old = s.sip_port;
    assert_eq!(udp_options(old, Duration::from_secs(5)).await, Some(200));
    assert_eq!(tcp_options(old).await, Some(200));
    // A client connected before the move keeps its connection afterwards.
    let mut kept = TcpStream::connect(("127.0.0.1", old)).await.unwrap();
    assert_eq!(tcp_request(&mut kept, "kept-1").await, Some(200));

    // Move UDP and TCP to a free port, without a restart.
    let new = free_port();
    let (st, body) = s.patch_node(json!({"sip_port": new})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["sip_port"], new);
    assert_eq!(udp_options(new, Duration::from_secs(5)).await, Some(200));
    assert_eq!(tcp_options(new).await, Some(200));
    assert_eq!(tcp_options(old).await, None, "the old TCP port is closed");
    assert_eq!(
        udp_options(old, Duration::from_millis(700)).await,
        None,
        "the old UDP port no longer answers"
    );
    assert_eq!(
        tcp_request(&mut kept, "kept-2").await,
        Some(200),
        "a connection accepted on the old port stays"
    );

    // Clashes: this node's HTTPS port, the OAuth port, a port another process holds, and the
    // TLS port — each 409 naming the field; the port stays where it was and keeps answering.
    for (taken, what) in [
        (s.https_port, "listen.https_port"),
        (s.sip_oauth_port, "sip_oauth_port"),
        (s.secured_sip_port, "secured_sip_port"),
    ] {
        let (st, p) = s.patch_node(json!({"sip_port": taken})).await;
        assert_eq!((st, p["field"].as_str()), (409, Some("sip_port")), "{p}");
        assert!(p["detail"].as_str().unwrap().contains(what), "{what}: {p}");
    }
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let squat = squatter.local_addr().unwrap().port();
    let (st, p) = s.patch_node(json!({"sip_port": squat})).await;
    assert_eq!((st, p["field"].as_str()), (409, Some("sip_port")), "{p}");
    drop(squatter);
    assert_eq!(node(&s).await["sip_port"], new, "the store keeps the port");
    assert_eq!(udp_options(new, Duration::from_secs(5)).await, Some(200));
    assert_eq!(tcp_options(new).await, Some(200));

    // The TLS port moves the same way.
    let old_tls = s.secured_sip_port;
    assert_eq!(tls_options(&s, old_tls).await, Some(200));
    let new_tls = free_port();
    let (st, body) = s.patch_node(json!({"secured_sip_port": new_tls})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(tls_options(&s, new_tls).await, Some(200));
    assert_eq!(
        tls_options(&s, old_tls).await,
        None,
        "the old TLS port is closed"
    );

    // A restart with the same command line (so the same config ports) keeps the API's ports.
    s.restart().await;
    assert_eq!(node(&s).await["sip_port"], new);
    assert_eq!(udp_options(new, Duration::from_secs(5)).await, Some(200));
    assert_eq!(tcp_options(new).await, Some(200));
    assert_eq!(tls_options(&s, new_tls).await, Some(200));
    assert_eq!(
        tcp_options(old).await,
        None,
        "the config's port stays unused"
    );
    assert!(
        s.log()
            .contains("the stored port (set through the API) wins"),
        "the start-up logs which port won"
    );

    // A config port changed since the last start wins over the stored one.
    let edited = free_port();
    s.sip_port = edited;
    s.restart().await;
    assert_eq!(node(&s).await["sip_port"], s.sip_port);
    assert_eq!(tcp_options(s.sip_port).await, Some(200));
    assert_eq!(tcp_options(new).await, None);
}

#[tokio::test]
async fn a_switched_off_legacy_transport_stays_closed_when_its_port_moves() {
    let s = Server::start_with(&["--no-legacy"]).await;
    let new = free_port();
    let (st, body) = s.patch_node(json!({"sip_port": new})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["sip_port"], new, "recorded and advertised");
    assert_eq!(tcp_options(new).await, None, "TCP stays off");
    assert_eq!(
        udp_options(new, Duration::from_millis(700)).await,
        None,
        "UDP stays off"
    );
}
