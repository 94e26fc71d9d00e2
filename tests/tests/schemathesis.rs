//! schemathesis (PyPI), a fuzzer no one here wrote, runs the OpenAPI document against a live server:
//! no 5xx, every status code and content type documented, every body matching its schema.

use sipreg_e2e::peers::have_peer;
use sipreg_e2e::Server;

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let found = have_peer(
        "schemathesis",
        std::process::Command::new("schemathesis").arg("--version"),
        "pip install schemathesis",
    );
    if !found {
        return;
    }
    let s = Server::start().await;
    s.add_user_and_device("seed", "pw-seed", "CSFseed", &["1300"], true);
    let token = s.admin_token();
    // One run, no retry: a network error is a defect (see `body_left_unread_keeps_the_connection`).
    let (ok, report) = run_schemathesis(&s, &token).await;
    assert!(
        ok,
        "schemathesis found problems:\n{report}\nserver log tail:\n{}",
        tail(&s.log())
    );
    assert!(
        report.contains("Tested:"),
        "schemathesis ran operations: {report}"
    );
}

/// The cause of the "EOF occurred in violation of protocol" schemathesis used to meet: an answer
/// given without reading the request body (here 405) when the body had not arrived yet made the
/// server close the connection after the answer, without `Connection: close`; the client's next
/// request on that pooled connection raced the close. The head and the body go out in separate
/// TLS records with a pause between, as urllib3 sends them on a busy machine; the connection must
/// still carry the next request.
#[tokio::test]
async fn body_left_unread_keeps_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let token = s.admin_token();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.https_port))
        .await
        .unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(sipreg_e2e::client_tls(&s.ca_pem())));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut c = tls.connect(name, tcp).await.unwrap();
    let body = r#"{"name":"x"}"#;
    let head = format!(
        "TRACE /api/v1/admin-tokens HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // From here a write may fail (the defect: the server has closed); what was read tells.
    let sent_body = c.write_all(body.as_bytes()).await;
    // The last request asks the server to close after it, so reading to the end is bounded.
    let next = format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    let sent_next = c.write_all(next.as_bytes()).await;
    let _ = c.flush().await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(20), c.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 405"),
        "first answer is 405: {text}"
    );
    let first = text.split("HTTP/1.1 200").next().unwrap_or_default();
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "the 405 keeps the connection: {text}"
    );
    assert!(
        text.contains("HTTP/1.1 200"),
        "the next request on the same connection is answered (body sent: {sent_body:?}, next \
         request sent: {sent_next:?}): {text}"
    );
}

/// One schemathesis run against `s`: whether it passed, and its whole report.
async fn run_schemathesis(s: &Server, token: &str) -> (bool, String) {
    let work = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("schemathesis")
        .current_dir(work.path())
        .args(["run", &format!("{}/api/v1/openapi.json", s.base())])
        .args(["--tls-verify", s.data_dir.join("tls/ca.pem").to_str().unwrap()])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "1", "--workers", "2"])
        .args(["--request-timeout", "20", "--no-color"])
        .output()
        .await
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}
