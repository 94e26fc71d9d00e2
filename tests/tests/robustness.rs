//! Hostile and unlucky conditions: slow clients, restarts with live bindings.

use std::time::Duration;

use sipreg_e2e::{Register, Server};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn many_slow_connections_do_not_starve_a_fresh_client() {
    let s = Server::start().await;
    s.add_user_and_device("sam", "pw-sam", "CSFsam", &["8000"], true);
    s.oauth_mode(true);
    let token = s.access_token("sam", "pw-sam").await;

    // 150 connections that never start TLS, and 50 that complete TLS then dribble half a header.
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(
            TcpStream::connect(("127.0.0.1", s.sip_oauth_port))
                .await
                .unwrap(),
        );
    }
    let mut dribblers = Vec::new();
    for _ in 0..50 {
        let mut c = s.sip_connect().await.unwrap();
        c.send_raw(b"REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;bra")
            .await;
        dribblers.push(c);
    }
    // One byte at a time into the plain TCP ones, to look busy.
    for t in idle.iter_mut().take(20) {
        let _ = t.write_all(b"\x16").await;
    }

    let started = std::time::Instant::now();
    let mut c = s
        .sip_connect()
        .await
        .expect("a fresh client still connects");
    let r = c
        .request(
            &Register::new("8000", "fresh", 1, c.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served promptly: {:?}",
        started.elapsed()
    );
    drop(idle);
    drop(dribblers);
}

#[tokio::test]
async fn bindings_survive_a_restart_with_their_remaining_lifetime() {
    let mut s = Server::start().await;
    s.add_user_and_device("rob", "pw-rob", "CSFrob", &["8100"], true);
    s.oauth_mode(true);
    let token = s.access_token("rob", "pw-rob").await;
    {
        let mut c = s.sip_connect().await.unwrap();
        let r = c
            .request(
                &Register::new("8100", "keep", 1, c.local)
                    .bearer(&token)
                    .header("Expires: 600")
                    .build(),
            )
            .await
            .unwrap();
        assert_eq!(r.code, 200, "{}", r.text);
        // Give the write-behind a moment, and let at least three whole seconds pass so the
        // remaining lifetime (whole seconds) must have dropped to 597 or below.
        tokio::time::sleep(Duration::from_millis(3500)).await;
    }
    s.restart().await;
    let mut c = s.sip_connect().await.unwrap();
    let mut q = Register::new("8100", "query", 1, c.local).bearer(&token);
    q.contact = None;
    let r = c.request(&q.build()).await.unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    let contact = r
        .header("Contact")
        .unwrap_or_else(|| panic!("the binding came back: {}", r.text));
    let expires: u32 = contact
        .split(';')
        .find_map(|p| p.trim().strip_prefix("expires="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("expires param: {contact}"));
    assert!(
        (500..598).contains(&expires),
        "remaining lifetime shrank: {expires}"
    );
}
