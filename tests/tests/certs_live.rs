//! The server certificate, live: an operator's certificate installed through the CLI and the API
//! (refused pairs change nothing on disk; a good one is on the next handshake while old
//! connections carry on, and survives a restart), certificate files changed on disk picked up
//! without a restart, expiry warnings for a short-lived trust anchor, and node port changes that
//! clash with another listener or process refused with 409 while the old port keeps serving.

use std::time::{Duration, Instant, SystemTime};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;
use sipreg_e2e::pki::{TestCa, DAY};
use sipreg_e2e::{client_tls, Register, Server, SipClient};

/// A server certificate for localhost/127.0.0.1 from `root`: (cert PEM, key PEM, hex SHA-256).
fn server_cert(root: &TestCa, start_days_ago: u32, days: u32) -> (String, String, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "operator.example.test");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let start = SystemTime::now() - DAY * start_days_ago;
    p.not_before = start.into();
    p.not_after = (start + DAY * days).into();
    let cert = p.signed_by(&key, &root.issuer).unwrap();
    let sha = hex(&sha2::Sha256::digest(cert.der().as_ref()));
    (cert.pem(), key.serialize_pem(), sha)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An admin API client trusting both the local CA and `extra` (an installed certificate's root).
fn api_client(s: &Server, extra: &str) -> reqwest::Client {
    let mut pem = s.ca_pem();
    pem.extend_from_slice(extra.as_bytes());
    reqwest::Client::builder()
        .use_preconfigured_tls(client_tls(&pem))
        .build()
        .unwrap()
}

async fn call(
    http: &reqwest::Client,
    s: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method, format!("{}/api/v1/{path}", s.base()))
        .bearer_auth(s.admin_token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().await.unwrap_or(Value::Null))
}

fn write(s: &Server, name: &str, text: &str) -> String {
    let p = s.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

fn on_disk(s: &Server) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(s.data_dir.join("tls/server.pem")).unwrap(),
        std::fs::read(s.data_dir.join("tls/server-key.pem")).unwrap(),
    )
}

/// A REGISTER without credentials on an existing connection: any answer proves it still works.
async fn still_answers(c: &mut SipClient, n: u32) {
    let msg = Register::new("4000", "old-conn", n, c.local).build();
    let r = c.request(&msg).await.expect("the old connection answers");
    assert_eq!(r.code, 401, "{}", r.text);
}

#[tokio::test]
async fn installed_certificates_are_checked_then_live_on_every_port_and_kept_at_restart() {
    let mut s = Server::start().await;
    s.oauth_mode(true);
    let addr = ([127, 0, 0, 1], s.sip_oauth_port).into();
    let local_ca = s.ca_pem();
    let mut old = SipClient::connect(addr, &local_ca).await.unwrap();
    let first = old.peer_sha256();
    let operator = TestCa::expiring("Operator Root CA", 3650);
    let (cert, key, sha) = server_cert(&operator, 1, 90);
    let cert_file = write(&s, "op.pem", &cert);
    let key_file = write(&s, "op-key.pem", &key);
    let root_file = write(&s, "op-root.pem", &operator.pem);
    let before = on_disk(&s);

    // The CLI refuses a key that is not the certificate's, a chain it cannot verify, and says why.
    let (_, other_key, _) = server_cert(&operator, 1, 90);
    let other_key_file = write(&s, "other-key.pem", &other_key);
    let (code, out, err) = s.cli(
        &[
            "certs",
            "install",
            "--cert",
            &cert_file,
            "--key",
            &other_key_file,
            "--chain",
            &root_file,
        ],
        None,
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("key does not match"), "{err}");
    let (code, _, err) = s.cli(
        &["certs", "install", "--cert", &cert_file, "--key", &key_file],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("chain does not verify") && err.contains("--chain"),
        "{err}"
    );
    // The API refuses an expired certificate, naming the field.
    let (expired, expired_key, _) = server_cert(&operator, 40, 30);
    let (st, p) = s
        .api(
            Method::PUT,
            "certs/server",
            Some(json!({"certificate": expired, "key": expired_key, "chain": operator.pem})),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (400, Some("certificate")), "{p}");
    assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
    let (st, p) = s
        .api(
            Method::PUT,
            "certs/server",
            Some(json!({"certificate": cert, "key": "junk"})),
        )
        .await;
    assert_eq!((st, p["field"].as_str()), (400, Some("key")), "{p}");
    assert_eq!(on_disk(&s), before, "nothing changed on disk");
    let fresh = SipClient::connect(addr, &local_ca).await.unwrap();
    assert_eq!(fresh.peer_sha256(), first, "nor on the wire");

    // A good pair through the CLI: live at once on the SIP OAuth port and HTTPS.
    let (code, out, err) = s.cli(
        &[
            "certs", "install", "--cert", &cert_file, "--key", &key_file, "--chain", &root_file,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&sha) && out.contains("installed"), "{out}");
    let mut both = local_ca.clone();
    both.extend_from_slice(operator.pem.as_bytes());
    let new = SipClient::connect(addr, &both).await.unwrap();
    assert_eq!(
        new.peer_sha256(),
        sha,
        "a new connection sees the installed certificate"
    );
    still_answers(&mut old, 1).await;
    assert_eq!(old.peer_sha256(), first);
    let http = api_client(&s, &operator.pem);
    let (st, v) = call(&http, &s, Method::GET, "certs/server", None).await;
    assert_eq!(st, 200, "HTTPS presents it too: {v}");
    assert_eq!(
        (v["sha256"].as_str(), v["source"].as_str()),
        (Some(&*sha), Some("installed"))
    );
    assert_eq!(v["warnings"], json!([]), "{v}");
    // The CLI trusts the installed certificate's root without being told.
    let (code, out, err) = s.cli(&["certs", "show"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&sha) && out.contains("operator.example.test"),
        "{out}"
    );

    // The same through the API (a second operator certificate, root from the trust store).
    let (cert2, key2, sha2) = server_cert(&operator, 1, 20);
    let (st, t) = call(
        &http,
        &s,
        Method::POST,
        "trust",
        Some(json!({"pem": operator.pem})),
    )
    .await;
    assert_eq!(st, 201, "{t}");
    let (st, v) = call(
        &http,
        &s,
        Method::PUT,
        "certs/server",
        Some(json!({"certificate": cert2, "key": key2})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["sha256"].as_str(), Some(&*sha2));
    // 20 days left: warned about.
    assert!(
        v["warnings"][0].as_str().unwrap().contains("expires in"),
        "{v}"
    );
    let again = SipClient::connect(addr, &both).await.unwrap();
    assert_eq!(again.peer_sha256(), sha2);
    still_answers(&mut old, 2).await;
    let (_, audit) = call(&http, &s, Method::GET, "audit", None).await;
    assert!(
        audit.to_string().contains("PUT /api/v1/certs/server"),
        "{audit}"
    );
    assert!(
        !audit.to_string().contains("PRIVATE KEY"),
        "keys are never audited"
    );

    // A restart keeps it: an installed certificate is not re-issued from the local CA.
    s.restart().await;
    let after = SipClient::connect(addr, &both).await.unwrap();
    assert_eq!(after.peer_sha256(), sha2, "{}", s.log());
    assert!(
        s.log().contains("keeping the installed server certificate"),
        "{}",
        s.log()
    );
    // Regenerating returns to the local CA.
    let (code, out, err) = s.cli(&["certs", "regenerate"], None);
    assert_eq!(code, 0, "{out}{err}");
    let local = SipClient::connect(addr, &local_ca).await.unwrap();
    assert_ne!(local.peer_sha256(), sha2);
}

/// Waits up to 10 s for a new connection to present `sha`.
async fn wait_for_cert(addr: std::net::SocketAddr, ca: &[u8], sha: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(c) = SipClient::connect(addr, ca).await {
            if c.peer_sha256() == sha {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn certificate_files_changed_on_disk_go_live_and_bad_ones_are_ignored() {
    let s = Server::start().await;
    s.oauth_mode(true);
    let addr = ([127, 0, 0, 1], s.sip_oauth_port).into();
    let mut old = SipClient::connect(addr, &s.ca_pem()).await.unwrap();
    let operator = TestCa::expiring("Disk Root CA", 3650);
    let (cert, key, sha) = server_cert(&operator, 1, 90);
    let tls = s.data_dir.join("tls");
    // Key first, then the certificate with its root appended, as an operator's script would.
    std::fs::write(tls.join("server-key.pem"), &key).unwrap();
    std::fs::write(tls.join("server.pem"), format!("{cert}{}", operator.pem)).unwrap();
    let mut both = s.ca_pem();
    both.extend_from_slice(operator.pem.as_bytes());
    assert!(wait_for_cert(addr, &both, &sha).await, "{}", s.log());
    still_answers(&mut old, 1).await;
    assert!(s
        .log()
        .contains("changed on disk; the new certificate is live"));

    // A mismatched pair: logged, ignored, the certificate in use stays.
    let (_, stray_key, _) = server_cert(&operator, 1, 90);
    std::fs::write(tls.join("server-key.pem"), &stray_key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log().contains("were not applied") {
        assert!(Instant::now() < deadline, "{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = SipClient::connect(addr, &both).await.unwrap();
    assert_eq!(c.peer_sha256(), sha);
}

#[tokio::test]
async fn trust_anchors_near_expiry_are_warned_about_in_the_api_status_and_log() {
    let s = Server::start().await;
    let short = TestCa::expiring("Short Lived CA", 10);
    let long = TestCa::expiring("Long Lived CA", 400);
    for r in [&short, &long] {
        let (st, v) = s
            .api(Method::POST, "trust", Some(json!({"pem": r.pem})))
            .await;
        assert_eq!(st, 201, "{v}");
    }
    let (_, list) = s.api(Method::GET, "trust", None).await;
    let by = |cn: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["subject"].as_str().unwrap().contains(cn))
            .cloned()
            .unwrap()
    };
    let (soon, later) = (by("Short Lived CA"), by("Long Lived CA"));
    assert_eq!(soon["expiring"], true, "{soon}");
    assert!(soon["expires_in_days"].as_i64().unwrap() <= 10, "{soon}");
    assert_eq!(later["expiring"], false, "{later}");
    let (_, status) = s.api(Method::GET, "status", None).await;
    let warnings = status["certificate_warnings"].to_string();
    assert!(
        warnings.contains("Short Lived CA") && !warnings.contains("Long Lived CA"),
        "{status}"
    );
    let (code, out, _) = s.cli(&["status"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("WARNING: trust anchor") && out.contains("Short Lived CA"),
        "{out}"
    );
    // Logged within one expiry check (10 s), and only once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let needle = "trust anchor CN=Short Lived CA expires in";
    while !s.log().contains(needle) {
        assert!(Instant::now() < deadline, "{}", s.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        s.log().matches(needle).count(),
        1,
        "once a day, not per check"
    );
}

#[tokio::test]
async fn node_port_changes_that_clash_are_refused_and_the_old_ports_keep_serving() {
    let s = Server::start().await;
    s.oauth_mode(true);
    let mra = s.sip_mra_oauth_port;
    assert!(std::net::TcpStream::connect(("127.0.0.1", mra)).is_ok());
    let patch = |body: Value| s.patch_node(body);

    // Held by another process: the MRA port stays where it was, the store too.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let (st, p) = patch(json!({"sip_mra_oauth_port": taken})).await;
    assert_eq!(
        (st, p["field"].as_str()),
        (409, Some("sip_mra_oauth_port")),
        "{p}"
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("in use by another process"),
        "{p}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", mra)).is_ok(),
        "old MRA port serves"
    );
    // Clashes with this node's legacy listener and with the other OAuth port.
    let (st, p) = patch(json!({"sip_oauth_port": s.sip_port})).await;
    assert_eq!(
        (st, p["field"].as_str()),
        (409, Some("sip_oauth_port")),
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("listen.sip_port"),
        "{p}"
    );
    let (st, p) = patch(json!({"sip_mra_oauth_port": s.sip_oauth_port})).await;
    assert_eq!(st, 409, "{p}");
    // A legacy port onto the HTTPS port, or onto another process's port.
    let (st, p) = patch(json!({"secured_sip_port": s.https_port})).await;
    assert_eq!(
        (st, p["field"].as_str()),
        (409, Some("secured_sip_port")),
        "{p}"
    );
    assert!(
        p["detail"].as_str().unwrap().contains("listen.https_port"),
        "{p}"
    );
    let (st, p) = patch(json!({"sip_port": taken})).await;
    assert_eq!((st, p["field"].as_str()), (409, Some("sip_port")), "{p}");
    // Out of range: refused as an invalid field.
    let (st, p) = patch(json!({"sip_mra_oauth_port": 50000})).await;
    assert_eq!(
        (st, p["field"].as_str()),
        (400, Some("sip_mra_oauth_port")),
        "{p}"
    );
    let (_, nodes) = s.api(Method::GET, "nodes", None).await;
    assert_eq!(nodes[0]["sip_mra_oauth_port"], mra);
    assert_eq!(nodes[0]["sip_oauth_port"], s.sip_oauth_port);
    assert!(s.sip_connect().await.is_ok(), "the OAuth port still serves");
    drop(squatter);

    // A free port: the MRA listener moves live.
    let free = sipreg_e2e::free_port();
    let (st, p) = patch(json!({"sip_mra_oauth_port": free})).await;
    assert_eq!(st, 200, "{p}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", free)).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", mra)).is_err());
}
