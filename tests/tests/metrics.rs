//! `/metrics` counters move with real traffic, by exactly what was sent: REGISTER responses by
//! listener and code, challenges by dialect, token validations, tokens issued by grant, MRA
//! handshake failures by reason, config fetches over HTTP (curl) and TFTP (tftp-hpa), and the
//! separate plain-HTTP metrics listener. Every scrape is checked by a strict exposition-format
//! parser in Python. A missing peer (python3, curl, tftp) skips with a message, and fails under
//! CI=true.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::ServerName;
use serde_json::json;
use sipreg_e2e::jwt::{forge, now};
use sipreg_e2e::peers::{have_program, python_stdin};
use sipreg_e2e::pki::TestCa;
use sipreg_e2e::{client_tls_as, free_port, sipreg_bin, Register, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the peers these tests need come from.
const INSTALL: &str = "scripts/test installs it";

/// The value of one series (name plus labels exactly as rendered), 0 when absent.
fn sample(body: &str, series: &str) -> u64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// A strict reader of the Prometheus text format 0.0.4: every sample's family has HELP and TYPE
/// before it, TYPE is known and given once, a family's samples are contiguous, names and labels
/// match the grammar, values are floats, no series repeats, counters end in `_total`.
const STRICT_PARSER: &str = r##"
import re, sys
text = sys.stdin.read()
assert text.endswith("\n"), "no final newline"
name_re = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
label_re = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
sample_re = re.compile(r"^(" + name_re + r")(\{(" + label_re + r")(," + label_re + r")*\})? (\S+)$")
helps, types, seen, done, current = {}, {}, set(), set(), None
for n, line in enumerate(text.splitlines(), 1):
    where = f"line {n}: {line!r}"
    if line.startswith("# HELP "):
        name = line.split(" ", 3)[2]
        assert re.fullmatch(name_re, name) and name not in helps, where
        helps[name] = True
        continue
    if line.startswith("# TYPE "):
        parts = line.split(" ")
        assert len(parts) == 4 and parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), where
        assert parts[2] not in types, "TYPE twice " + where
        assert parts[2] in helps, "TYPE before HELP " + where
        types[parts[2]] = parts[3]
        continue
    assert not line.startswith("#") and line.strip(), where
    m = sample_re.match(line)
    assert m, "bad sample " + where
    name, value = m.group(1), m.group(5)
    assert name in types and name in helps, "no HELP/TYPE " + where
    if types[name] == "counter":
        assert name.endswith("_total"), "counter without _total " + where
    if name != current:
        assert name not in done, "family not contiguous " + where
        if current:
            done.add(current)
        current = name
    float(value)
    series = line.rsplit(" ", 1)[0]
    assert series not in seen, "series twice " + where
    seen.add(series)
print(len(seen))
"##;

/// Checks `body` with [`STRICT_PARSER`]; false when python3 is missing (skip).
fn parses_strictly(body: &str) -> bool {
    if !have_program("python3", "--version", INSTALL) {
        return false;
    }
    let out = python_stdin(
        &format!("the exposition does not parse\n{body}\n"),
        STRICT_PARSER,
        body.as_bytes(),
    );
    let n: usize = String::from_utf8_lossy(&out).trim().parse().unwrap();
    assert!(n > 50, "{n} series");
    true
}

async fn scrape(s: &Server) -> String {
    let r = s
        .http()
        .get(format!("{}/metrics", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn metrics_count_successful_and_rejected_registers() {
    let s = Server::start().await;
    s.add_user_and_device("mia", "pw-mia", "CSFmia", &["1400"], true);
    s.oauth_mode(true);
    let before = scrape(&s).await;
    assert!(before.contains("# TYPE sipreg_bindings gauge"), "{before}");
    assert_eq!(sample(&before, "sipreg_bindings"), 0);
    parses_strictly(&before);

    let token = s.access_token("mia", "pw-mia").await;
    let (st, body) = s.password_grant("mia", "wrong").await;
    assert_eq!((st, body["error"].as_str()), (400, Some("invalid_grant")));
    let (kid, pem) = s.signing_key();
    let expired = forge(
        &kid,
        &pem,
        json!({"iss": format!("https://localhost:{}", s.https_port), "sub": "mia",
               "aud": "sipreg", "exp": now() - 3600, "iat": now() - 7200, "jti": "old",
               "client_id": "softphone", "scope": "sip:register"}),
    );

    let mut c = s.sip_connect().await.unwrap();
    let ok = Register::new("1400", "m1", 1, c.local)
        .bearer(&token)
        .build();
    let r = c.request(&ok).await.unwrap();
    assert_eq!(r.code, 200, "{}", r.text);
    let r = c
        .request(
            &Register::new("1400", "m2", 1, c.local)
                .bearer(&expired)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 401, "{}", r.text);
    // A line on no device of hers: the token is fine, the device is unknown.
    let r = c
        .request(
            &Register::new("1499", "m3", 1, c.local)
                .bearer(&token)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 403, "{}", r.text);

    let after = scrape(&s).await;
    parses_strictly(&after);
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(sample(&after, "sipreg_bindings"), 1, "{after}");
    for (code, n) in [("200", 1), ("401", 1), ("403", 1), ("407", 0), ("400", 0)] {
        assert_eq!(
            delta(&format!(
                "sipreg_sip_responses_total{{listener=\"oauth\",code=\"{code}\"}}"
            )),
            n,
            "code {code}:\n{after}"
        );
    }
    for l in ["mra", "udp", "tcp", "tls"] {
        assert_eq!(
            delta(&format!(
                "sipreg_sip_responses_total{{listener=\"{l}\",code=\"200\"}}"
            )),
            0,
            "{l}"
        );
    }
    assert_eq!(
        delta("sipreg_sip_responses_by_class_total{class=\"4xx\"}"),
        2,
        "{after}"
    );
    let rejections = |body: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with("sipreg_register_rejections_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(
        rejections(&after) - rejections(&before),
        2,
        "the expired token and the unknown line:\n{after}"
    );
    assert_eq!(delta("sipreg_challenges_total{dialect=\"rfc8898\"}"), 1);
    assert_eq!(delta("sipreg_challenges_total{dialect=\"cucm\"}"), 0);
    assert_eq!(
        delta("sipreg_token_validations_total{outcome=\"ok\"}"),
        2,
        "{after}"
    );
    assert_eq!(
        delta("sipreg_token_validations_total{outcome=\"expired\"}"),
        1,
        "{after}"
    );
    assert_eq!(
        delta("sipreg_tokens_issued_total{grant=\"password\"}"),
        1,
        "{after}"
    );
    assert_eq!(
        delta("sipreg_token_requests_failed_total{grant=\"password\",error=\"invalid_grant\"}"),
        1,
        "{after}"
    );
    assert!(
        sample(&after, "process_resident_memory_bytes") > 1_000_000,
        "{after}"
    );
    assert!(sample(&after, "process_start_time_seconds") > 1_600_000_000);
    assert!(sample(&after, "process_open_fds") > 3);
    assert!(after.contains("# TYPE process_cpu_seconds_total counter"));
    assert_eq!(
        sample(
            &after,
            &format!(
                "sipreg_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1,
        "{after}"
    );
}

// === MRA handshakes ===

/// The key usage of an edge's client certificate.
const CLIENT: &[ExtendedKeyUsagePurpose] = &[ExtendedKeyUsagePurpose::ClientAuth];

/// A TLS handshake with the MRA port presenting `id` (or nothing), then one OPTIONS; the server
/// decides on the certificate after the client's side of a TLS 1.3 handshake is done, so the
/// refusal shows up as a failed read.
async fn mra_attempt(port: u16, ca_pem: &[u8], id: Option<&(String, String)>) {
    let cfg = client_tls_as(ca_pem, id.map(|(c, k)| (c.as_str(), k.as_str())));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return;
    };
    let _ = tls
        .write_all(
            b"OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKm\r\n\
From: <sip:edge@localhost>;tag=1\r\nTo: <sip:localhost>\r\nCall-ID: m\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n",
        )
        .await;
    let mut buf = [0u8; 512];
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(
        !matches!(r, Ok(Ok(n)) if n > 0),
        "the MRA port must refuse this client"
    );
}

/// Polls until `series` reaches `want` (the server counts after the client saw the alert).
async fn wait_for(s: &Server, series: &str, want: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape(s).await;
        if sample(&body, series) >= want || Instant::now() > deadline {
            assert_eq!(sample(&body, series), want, "{series}\n{body}");
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mra_handshake_failures_are_counted_by_reason() {
    let s = Server::start().await;
    let port = free_port();
    let (st, body) = s.patch_node(json!({"sip_mra_oauth_port": port})).await;
    assert_eq!(st, 200, "{body}");
    let ca = TestCa::new("Metrics Edge CA");
    let ca_file = s.dir.path().join("edge-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (code, out, err) = s.cli(&["trust", "add", ca_file.to_str().unwrap()], None);
    assert_eq!(code, 0, "trust add: {out}{err}");
    let (code, out, err) = s.cli(
        &["edge", "add", "10.9.9.9", "--san", "good.edge.example.test"],
        None,
    );
    assert_eq!(code, 0, "edge add: {out}{err}");
    s.oauth_mode(true);
    let mra =
        |r: &str| format!("sipreg_tls_handshake_failures_total{{listener=\"mra\",reason=\"{r}\"}}");
    let before = scrape(&s).await;
    for r in ["edge_not_registered", "no_client_cert", "untrusted_chain"] {
        assert_eq!(sample(&before, &mra(r)), 0, "{before}");
    }

    let rogue = ca.identity("rogue.example.test", &["rogue.example.test"], CLIENT);
    mra_attempt(port, &s.ca_pem(), Some(&rogue)).await;
    wait_for(&s, &mra("edge_not_registered"), 1).await;

    mra_attempt(port, &s.ca_pem(), None).await;
    wait_for(&s, &mra("no_client_cert"), 1).await;

    let stranger = TestCa::new("Stranger CA").identity(
        "good.edge.example.test",
        &["good.edge.example.test"],
        CLIENT,
    );
    mra_attempt(port, &s.ca_pem(), Some(&stranger)).await;
    let after = wait_for(&s, &mra("untrusted_chain"), 1).await;
    assert_eq!(sample(&after, &mra("edge_not_registered")), 1, "{after}");
    assert_eq!(
        sample(
            &after,
            "sipreg_tls_handshake_failures_total{listener=\"oauth\",reason=\"no_client_cert\"}"
        ),
        0
    );
    parses_strictly(&after);
}

// === config fetches ===

#[tokio::test]
async fn config_fetches_are_counted_by_transport_and_result() {
    if !have_program("curl", "--version", INSTALL) || !have_program("tftp", "-V", INSTALL) {
        return;
    }
    let tftp_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Server::start_with(&["--tftp-port", &tftp_port.to_string()]).await;
    s.add_user_and_device("noa", "pw-noa", "CSFnoa", &["1500"], true);
    let fetch = |t: &str, r: &str| {
        format!("sipreg_config_fetches_total{{transport=\"{t}\",result=\"{r}\"}}")
    };
    let before = scrape(&s).await;
    assert_eq!(sample(&before, &fetch("http", "ok")), 0, "{before}");

    let url = |name: &str| format!("http://127.0.0.1:{}/{name}", s.config_port);
    let out = Command::new("curl")
        .args([
            "--silent",
            "--fail",
            "--max-time",
            "30",
            &url("CSFnoa.cnf.xml"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("<device"));
    let out = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url("CSFnobody.cnf.xml"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    let local = s.dir.path().join("tftp-CSFnoa.cnf.xml");
    let out = Command::new("tftp")
        .args([
            "-m",
            "octet",
            "127.0.0.1",
            &tftp_port.to_string(),
            "-c",
            "get",
            "CSFnoa.cnf.xml",
        ])
        .arg(&local)
        .output()
        .unwrap();
    let got = std::fs::read(&local).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&got).contains("<device"),
        "tftp: {out:?}"
    );

    let after = scrape(&s).await;
    let delta = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(delta(&fetch("http", "ok")), 1, "{after}");
    assert_eq!(delta(&fetch("http", "not_found")), 1, "{after}");
    assert_eq!(delta(&fetch("tftp", "ok")), 1, "{after}");
    assert_eq!(delta(&fetch("tftp", "not_found")), 0, "{after}");
    assert_eq!(delta(&fetch("https", "ok")), 0, "{after}");
    parses_strictly(&after);
}

// === the metrics listener ===

#[tokio::test]
async fn metrics_listener_serves_plain_http_on_its_own_port() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let s = Server::start_with(&["--metrics-listen", &addr]).await;
    let plain = reqwest::Client::new();
    let r = plain
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let body = r.text().await.unwrap();
    assert!(body.contains("# TYPE sipreg_build_info gauge"), "{body}");
    parses_strictly(&body);
    // Only /metrics there: not the API, not the token service.
    let r = plain
        .get(format!("http://{addr}/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Still on the API port, too.
    assert!(scrape(&s).await.contains("sipreg_build_info"));
    // The admin API will not move a SIP listener onto the metrics port.
    let (st, body) = s.patch_node(json!({"sip_oauth_port": port})).await;
    assert!(st == 409 || st == 422, "{st} {body}");
}

#[test]
fn a_bad_metrics_address_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sipreg_bin())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["serve", "--metrics-listen", "localhost:9100"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("metrics.listen") && err.contains("127.0.0.1:9100"),
        "{err}"
    );
    let cfg = dir.path().join("sipreg.toml");
    std::fs::write(&cfg, "[metrics]\nlisten = \"0.0.0.0\"\n").unwrap();
    let out = Command::new(sipreg_bin())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("metrics.listen"), "{err}");
}
