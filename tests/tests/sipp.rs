//! sipp, a SIP peer no one here wrote, drives the REGISTER life cycle against the real binary.
//! sipp is built without TLS, so stunnel (client mode) wraps its TCP into TLS towards the OAuth port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sipreg_e2e::{free_port, peers_required, Server};

/// Whether `cmd` runs; otherwise skip (or fail under CI=true).
fn have(cmd: &str, package: &str) -> bool {
    let ok = Command::new(cmd)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            !peers_required(),
            "{cmd} is required under CI=true (apt-get install {package})"
        );
        eprintln!("SKIP: {cmd} not installed (apt-get install {package})");
    }
    ok
}

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
    let mut log = String::from_utf8_lossy(&out.stdout).into_owned();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("_errors.log") || name.ends_with("_messages.log") {
            log.push_str(&format!(
                "\n--- {name}\n{}",
                std::fs::read_to_string(e.path()).unwrap_or_default()
            ));
        }
    }
    (out.status.success(), log)
}

#[tokio::test]
async fn sipp_register_life_cycle_over_tls_through_stunnel_with_bearer_tokens() {
    if !have("sipp", "sip-tester") || !have("stunnel", "stunnel4") {
        return;
    }
    let s = Server::start().await;
    let mut csv = String::from("SEQUENTIAL\n");
    for (i, user) in ["amy", "ben", "cat"].iter().enumerate() {
        let line = format!("70{i:02}");
        s.add_user_and_device(user, "pw-sipp", &format!("CSF{user}"), &[&line], true);
        let token = s.password_token(user, "pw-sipp").await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
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
