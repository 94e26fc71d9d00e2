//! sipp, a SIP peer no one here wrote, drives the REGISTER life cycle against the real binary.
//! sipp is built without TLS, so stunnel (client mode) wraps its TCP into TLS towards the OAuth port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sipreg_e2e::peers::{have_program, sipp_log};
use sipreg_e2e::{free_port, Server};

struct Stunnel {
    child: Child,
    /// Local plain-TCP port that stunnel wraps into TLS.
    port: u16,
}

impl Stunnel {
    fn start(dir: &Path, target_port: u16, ca: &Path) -> Stunnel {
        let port = free_port();
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {log}\n[sip]\nclient = yes\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:{target_port}\nCAfile = {ca}\nverifyChain = yes\ncheckHost = localhost\n\
                 sslVersionMin = TLSv1.2\n",
                log = dir.join("stunnel.log").display(),
                ca = ca.display()
            ),
        )
        .unwrap();
        let child = Command::new("stunnel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "stunnel did not start: {}",
                std::fs::read_to_string(dir.join("stunnel.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Stunnel { child, port }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs sipp to completion; returns (success, its error/trace output).
fn run_sipp(
    dir: &Path,
    scenario: &str,
    target: &str,
    transport: &str,
    csv: &Path,
    calls: u32,
) -> (bool, String) {
    let scen = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(scenario);
    let out = Command::new("sipp")
        .current_dir(dir)
        .args([
            "-sf",
            scen.to_str().unwrap(),
            "-t",
            transport,
            "-m",
            &calls.to_string(),
            "-r",
            "10",
        ])
        .args([
            "-inf",
            csv.to_str().unwrap(),
            "-nostdin",
            "-timeout",
            "30s",
            "-trace_err",
            "-trace_msg",
        ])
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
        .arg(target)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), sipp_log(&out.stdout, dir))
}

#[tokio::test]
async fn sipp_register_life_cycle_over_tls_through_stunnel_with_bearer_tokens() {
    if !have_program("sipp", "-v", "apt-get install sip-tester")
        || !have_program("stunnel", "-v", "apt-get install stunnel4")
    {
        return;
    }
    let s = Server::start().await;
    let mut csv = String::from("SEQUENTIAL\n");
    for (i, user) in ["amy", "ben", "cat"].iter().enumerate() {
        let line = format!("70{i:02}");
        s.add_user_and_device(user, "pw-sipp", &format!("CSF{user}"), &[&line], true);
        let token = s.access_token(user, "pw-sipp").await;
        csv.push_str(&format!("{line};{token};\n"));
    }
    s.oauth_mode(true);
    let work = tempfile::tempdir().unwrap();
    let csv_path = work.path().join("users.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let ca = s.data_dir.join("tls/ca.pem");
    let tunnel = Stunnel::start(work.path(), s.sip_oauth_port, &ca);

    let (ok, log) = run_sipp(
        work.path(),
        "oauth-register.xml",
        &format!("127.0.0.1:{}", tunnel.port),
        "t1",
        &csv_path,
        3,
    );
    assert!(ok, "sipp failed:\n{log}\nserver log:\n{}", s.log());
    assert!(
        log.contains("Bearer"),
        "the message trace shows the tokens were sent: {log}"
    );
}

/// sipp (MD5 only, and it answers the first challenge) registers, refreshes, queries, unregisters
/// and wildcard-unregisters with Digest on the legacy port over UDP and over TCP. The server is
/// told to offer MD5 first; SHA-256 is covered by the registrar's RFC 7616 test vectors.
#[tokio::test]
async fn sipp_digest_life_cycle_on_the_legacy_port_over_udp_and_tcp() {
    if !have_program("sipp", "-v", "apt-get install sip-tester") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("sipreg.toml");
    std::fs::write(
        &cfg,
        "[registrar]\ndigest_algorithms = [\"MD5\", \"SHA-256\"]\n",
    )
    .unwrap();
    let sip_port = free_port();
    let s = Server::start_with(&[
        "--config",
        cfg.to_str().unwrap(),
        "--sip-port",
        &sip_port.to_string(),
        "--secured-sip-port",
        &free_port().to_string(),
    ])
    .await;
    s.add_user_and_device("desk", "pw-desk", "SEP00AABBCCDDEE", &["7100"], false);
    let (code, _, err) = s.cli(
        &[
            "device",
            "digest",
            "SEP00AABBCCDDEE",
            "--username",
            "desk-7100",
        ],
        Some("digest-secret\n"),
    );
    assert_eq!(code, 0, "{err}");
    let csv_path = work.path().join("users.csv");
    std::fs::write(&csv_path, "SEQUENTIAL\n7100;\n").unwrap();

    for transport in ["u1", "t1"] {
        let scen = Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp/digest-register.xml");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("sipp")
            .current_dir(dir.path())
            .args(["-sf", scen.to_str().unwrap(), "-t", transport, "-m", "1"])
            .args([
                "-inf",
                csv_path.to_str().unwrap(),
                "-au",
                "desk-7100",
                "-ap",
                "digest-secret",
                "-auth_uri",
                "localhost",
            ])
            .args([
                "-nostdin",
                "-timeout",
                "30s",
                "-trace_err",
                "-trace_msg",
                "-i",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &free_port().to_string(),
                &format!("127.0.0.1:{sip_port}"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let mut log = String::new();
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            log.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
        assert!(
            out.status.success(),
            "sipp over {transport} failed:\n{log}\nserver log:\n{}",
            s.log()
        );
        assert!(
            log.contains("algorithm=MD5") && log.contains("Authorization: Digest"),
            "{log}"
        );
    }

    // By default SHA-256 is offered first (RFC 7616 §3.7: the preferred algorithm first).
    let udp_port = free_port();
    let plain = Server::start_with(&[
        "--sip-port",
        &udp_port.to_string(),
        "--secured-sip-port",
        &free_port().to_string(),
    ])
    .await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = sock.local_addr().unwrap();
    let req = format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsha;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:7200@localhost>;tag=a\r\nTo: <sip:7200@localhost>\r\nCall-ID: sha-first\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:7200@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(req.as_bytes(), ("127.0.0.1", udp_port))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a UDP answer");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let challenges: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("WWW-Authenticate:"))
        .collect();
    assert_eq!(challenges.len(), 2, "{text}");
    assert!(
        challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5"),
        "{text}"
    );
    assert!(
        text.contains(&format!("rport={}", me.port())),
        "rport filled in (RFC 3581): {text}"
    );
    drop(plain);
}
