//! The HTTP(S) listeners' limits against the real binary over real TLS: a connection sending a
//! partial request head is dropped after `http.header_timeout_secs`, an idle keep-alive
//! connection is closed after `http.idle_timeout_secs`, a request in progress outlives both, a
//! body not complete within `http.body_timeout_secs` gets 408 and a closed connection, and
//! every HTTP(S) listener queues 4,096 pending connections (`ss -ltn`; a missing `ss` skips with
//! a message, and fails under CI=true).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use sipreg_e2e::peers::have_program;
use sipreg_e2e::{client_tls, free_port, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Starts a server whose `[http]` section is `http`.
async fn start(http: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sipreg.toml");
    std::fs::write(&path, format!("[http]\n{http}\n")).unwrap();
    let s = Server::start_with(&["--config", path.to_str().unwrap()]).await;
    // The file is read at start; the server keeps its own temp dir.
    drop(dir);
    s
}

/// An HTTP/1.1 connection to the API port over TLS (ALPN `http/1.1`).
async fn connect(s: &Server) -> TlsStream<TcpStream> {
    let mut tls = client_tls(&s.ca_pem());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", s.https_port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads one response (head and a `Content-Length` body); its status code, `None` at EOF.
async fn response(c: &mut TlsStream<TcpStream>) -> Option<u16> {
    response_head(c)
        .await
        .and_then(|head| head.get(9..12)?.parse().ok())
}

/// Reads one response (head and a `Content-Length` body); its head in lower case, `None` at EOF.
async fn response_head(c: &mut TlsStream<TcpStream>) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return Some(head);
            }
        }
        match c.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// How long until the server ends the connection (EOF or reset), waiting at most `limit`.
async fn closed_after(c: &mut TlsStream<TcpStream>, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match c.read(&mut chunk).await {
                Ok(0) | Err(_) => return t0.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[tokio::test]
async fn a_partial_request_head_is_dropped_after_the_header_timeout() {
    // The idle timeout is far off, so a close within it is the header timeout's doing.
    let s = start("header_timeout_secs = 2\nidle_timeout_secs = 60").await;

    // A new connection that never completes its first head.
    let mut c = connect(&s).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let took = closed_after(&mut c, Duration::from_secs(40))
        .await
        .expect("a partial first head keeps the connection open");
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}, before the timeout"
    );

    // A kept-alive connection whose next head stalls.
    let mut c = connect(&s).await;
    c.write_all(GET).await.unwrap();
    assert_eq!(response(&mut c).await, Some(200));
    c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let took = closed_after(&mut c, Duration::from_secs(40))
        .await
        .expect("a partial second head keeps the connection open");
    assert!(
        took >= Duration::from_millis(1500),
        "closed after {took:?}, before the timeout"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header timeout is far off, so a close before it is the idle timeout's doing.
    let s = start("header_timeout_secs = 120\nidle_timeout_secs = 3").await;
    let mut c = connect(&s).await;
    // Requests in a row keep it open past the idle timeout: idle counts from the last answer.
    for _ in 0..3 {
        c.write_all(GET).await.unwrap();
        assert_eq!(response(&mut c).await, Some(200));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let took = closed_after(&mut c, Duration::from_secs(100))
        .await
        .expect("an idle connection stays open");
    assert!(
        took >= Duration::from_millis(500),
        "closed {took:?} after 1.5 s idle, before the 3 s idle timeout"
    );
    // A fresh connection still works: closing was per connection.
    let mut c = connect(&s).await;
    c.write_all(GET).await.unwrap();
    assert_eq!(response(&mut c).await, Some(200));
}

#[tokio::test]
async fn a_request_in_progress_outlives_both_timeouts() {
    let s = start("header_timeout_secs = 1\nidle_timeout_secs = 1").await;
    let mut c = connect(&s).await;
    let body = b"grant_type=password&username=nobody&password=wrong";
    let head = format!(
        "POST /oauth/token HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    // The body trickles in over about 3 s, three times each limit.
    let t0 = Instant::now();
    for part in body.chunks(5) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.write_all(part).await.unwrap();
        c.flush().await.unwrap();
    }
    assert!(t0.elapsed() >= Duration::from_secs(3));
    let code = response(&mut c).await;
    assert!(
        matches!(code, Some(400..=499)),
        "the token endpoint's answer, not a cut connection: {code:?}"
    );
}

#[tokio::test]
async fn a_body_not_complete_in_time_gets_408_and_others_are_served_meanwhile() {
    // The other limits are far off, so an answer before them is the body deadline's doing.
    let s =
        start("header_timeout_secs = 120\nidle_timeout_secs = 120\nbody_timeout_secs = 2").await;
    let mut c = connect(&s).await;
    c.write_all(
        b"POST /oauth/token HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .unwrap();
    // 10 of the 1,000 bytes announced, then nothing.
    c.write_all(b"grant_type").await.unwrap();
    c.flush().await.unwrap();
    let t0 = Instant::now();

    // The stalled body holds one connection, not the server.
    let mut other = connect(&s).await;
    other.write_all(GET).await.unwrap();
    assert_eq!(response(&mut other).await, Some(200));

    let head = tokio::time::timeout(Duration::from_secs(40), response_head(&mut c))
        .await
        .expect("a stalled body waits for ever: no answer within 40 s")
        .expect("the stalled request is answered, not cut");
    let took = t0.elapsed();
    assert!(head.starts_with("http/1.1 408"), "408: {head}");
    assert!(
        took >= Duration::from_millis(1500),
        "answered after {took:?}, before the 2 s deadline"
    );
    assert!(
        head.contains("content-type: application/problem+json"),
        "problem+json: {head}"
    );
    assert!(
        head.contains("connection: close"),
        "Connection: close: {head}"
    );
    closed_after(&mut c, Duration::from_secs(10))
        .await
        .expect("the connection is closed after the 408");
}

/// The `Send-Q` column of `ss -ltn` for the listener on `port`: its backlog.
fn backlog(port: u16) -> u32 {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("ss lists no listener on {port}: {text}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test]
async fn http_listeners_queue_4096_pending_connections() {
    if !have_program("ss", "-V", "apt-get install iproute2") {
        return;
    }
    let metrics = free_port();
    let config_https = free_port();
    let s = Server::start_with(&[
        "--metrics-listen",
        &format!("127.0.0.1:{metrics}"),
        "--config-https-port",
        &config_https.to_string(),
    ])
    .await;
    // The kernel caps a backlog at net.core.somaxconn.
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(4096);
    let want = cap.min(4096);
    for (name, port) in [
        ("HTTPS API", s.https_port),
        ("config HTTP", s.config_port),
        ("config HTTPS", config_https),
        ("metrics", metrics),
    ] {
        assert_eq!(backlog(port), want, "{name} listener on {port}");
    }
}
