//! Edge proxies over mutual TLS on the SIP MRA OAuth port, with real peers: `openssl s_client`
//! (no certificate, an untrusted CA, an unregistered name → TLS alert; a registered SAN or CN →
//! handshake and a SIP answer), Kamailio as the edge (sipp sends REGISTER over TCP → Kamailio adds Path and
//! relays over mTLS with its own certificate → 200 with Path, binding stored with it; removing
//! the edge closes Kamailio's connection within a second), and AXL through curl with a literal
//! SOAP envelope. A missing peer skips with a message, and fails under CI=true.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::ExtendedKeyUsagePurpose;
use reqwest::Method;
use serde_json::{json, Value};
use sipreg_e2e::peers::{have_tool, sipp_log};
use sipreg_e2e::pki::TestCa;
use sipreg_e2e::{free_port, Server};

/// Where the peers these tests need come from.
const INSTALL: &str = "scripts/test installs it";

// === test PKI ===

/// Writes `stem.pem` / `stem.key` for a client certificate with this CN and these SANs.
fn issue(ca: &TestCa, dir: &Path, stem: &str, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.identity(
        cn,
        sans,
        &[
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ],
    );
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// A server with OAuth mode on, the MRA port on a free port, the CA trusted (through the CLI)
/// and alice's device ready.
async fn mra_server(ca: &TestCa) -> (Server, u16) {
    let s = Server::start().await;
    let port = free_port();
    let (st, body) = s.patch_node(json!({"sip_mra_oauth_port": port})).await;
    assert_eq!(st, 200, "{body}");
    s.add_user_and_device("alice", "pw-alice", "CSFalice", &["1010"], true);
    let ca_file = s.dir.path().join("edge-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (code, out, err) = s.cli(&["trust", "add", ca_file.to_str().unwrap()], None);
    assert_eq!(code, 0, "trust add: {out}{err}");
    let (code, out, _) = s.cli(&["trust", "list"], None);
    assert_eq!(code, 0);
    assert!(out.contains("Edge Test CA"), "{out}");
    s.oauth_mode(true);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "MRA port open once OAuth mode is on:\n{}",
        s.log()
    );
    (s, port)
}

// === openssl s_client ===

/// Runs s_client, sends an OPTIONS, and waits up to 5 s for a SIP answer or for s_client to end.
/// Returns (got a SIP 200, everything s_client printed).
fn s_client(port: u16, server_ca: &Path, id: Option<&(PathBuf, PathBuf)>) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-ign_eof",
        ])
        .arg("-CAfile")
        .arg(server_ca);
    if let Some((c, k)) = id {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|mut r| {
        let out = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    })
    .collect();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(
        b"OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKssl\r\n\
From: <sip:edge@localhost>;tag=1\r\nTo: <sip:localhost>\r\nCall-ID: ssl\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ok = false;
    while Instant::now() < deadline {
        if out.lock().unwrap().contains("SIP/2.0 200 OK") {
            ok = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    let text = out.lock().unwrap().clone();
    (ok, text)
}

#[tokio::test]
async fn openssl_s_client_needs_a_trusted_registered_certificate() {
    if !have_tool("openssl", INSTALL) {
        return;
    }
    let ca = TestCa::new("Edge Test CA");
    let stranger = TestCa::new("Stranger CA");
    let (s, port) = mra_server(&ca).await;
    let dir = s.dir.path();
    let server_ca = s.data_dir.join("tls/ca.pem");
    let (code, out, err) = s.cli(
        &[
            "edge",
            "add",
            "10.9.9.9",
            "--san",
            "*.edge.example.test",
            "--san",
            "expc-cn.example.test",
            "--description",
            "test edge",
        ],
        None,
    );
    assert_eq!(code, 0, "edge add: {out}{err}");
    let (_, list, _) = s.cli(&["edge", "list"], None);
    assert!(
        list.contains("10.9.9.9") && list.contains("*.edge.example.test"),
        "{list}"
    );

    // No client certificate: the handshake ends with an alert.
    let (ok, text) = s_client(port, &server_ca, None);
    assert!(!ok, "{text}");
    assert!(text.contains("alert certificate required"), "{text}");

    // A certificate from a CA the trust store does not hold: unknown CA.
    let foreign = issue(
        &stranger,
        dir,
        "foreign",
        "x.edge.example.test",
        &["x.edge.example.test"],
    );
    let (ok, text) = s_client(port, &server_ca, Some(&foreign));
    assert!(!ok, "{text}");
    assert!(text.contains("alert unknown ca"), "{text}");

    // Trusted CA, but neither CN nor SAN registered: access denied.
    let rogue = issue(
        &ca,
        dir,
        "rogue",
        "rogue.example.test",
        &["rogue.example.test", "10.9.9.9"],
    );
    let (ok, text) = s_client(port, &server_ca, Some(&rogue));
    assert!(!ok, "{text}");
    assert!(text.contains("alert access denied"), "{text}");
    // Refusals are logged with the presented names and the reason, and counted.
    let log = s.log();
    assert!(
        log.contains("rogue.example.test") && log.contains("no CN/SAN matches a registered edge"),
        "{log}"
    );
    let (_, mra) = s.api(Method::GET, "mra", None).await;
    let d = &mra["decisions"];
    assert_eq!(
        (
            d["refused_no_certificate"].as_u64(),
            d["refused_chain"].as_u64(),
            d["refused_not_registered"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{mra}"
    );

    // A registered SAN (one wildcard label): handshake and a SIP answer.
    let san = issue(
        &ca,
        dir,
        "san",
        "unrelated-cn.example.test",
        &["node1.edge.example.test"],
    );
    let (ok, text) = s_client(port, &server_ca, Some(&san));
    assert!(ok, "{text}\n{}", s.log());
    // Two labels under the wildcard do not match.
    let deep = issue(
        &ca,
        dir,
        "deep",
        "a.b.edge.example.test",
        &["a.b.edge.example.test"],
    );
    assert!(!s_client(port, &server_ca, Some(&deep)).0);
    // A registered CN with no SAN match.
    let cn = issue(
        &ca,
        dir,
        "cn",
        "EXPC-CN.example.test",
        &["other.example.test"],
    );
    let (ok, text) = s_client(port, &server_ca, Some(&cn));
    assert!(ok, "{text}");

    // OAuth mode off closes the MRA port.
    s.oauth_mode(false);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

// === Kamailio as the edge ===

struct Kamailio {
    child: Child,
    log: PathBuf,
}

impl Kamailio {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_kamailio(
    dir: &Path,
    sip_port: u16,
    mra_port: u16,
    (cert, key): &(PathBuf, PathBuf),
    server_ca: &Path,
) -> Kamailio {
    let tls_cfg = dir.join("kamailio-tls.cfg");
    std::fs::write(
        &tls_cfg,
        format!(
            "[server:default]\nmethod = TLSv1.2+\ncertificate = {c}\nprivate_key = {k}\n\
verify_certificate = no\nrequire_certificate = no\n\n\
[client:default]\nmethod = TLSv1.2+\ncertificate = {c}\nprivate_key = {k}\n\
ca_list = {ca}\nverify_certificate = yes\nrequire_certificate = yes\nserver_name = localhost\n",
            c = cert.display(),
            k = key.display(),
            ca = server_ca.display()
        ),
    )
    .unwrap();
    let cfg = dir.join("kamailio-edge.cfg");
    let modules = [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/kamailio/modules",
    ]
    .into_iter()
    .find(|p| Path::new(p).join("tls.so").exists())
    .unwrap_or("/usr/lib/x86_64-linux-gnu/kamailio/modules");
    std::fs::write(
        &cfg,
        format!(
            r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
dns=no
rev_dns=no
auto_aliases=no
disable_core_dump=yes
listen=udp:127.0.0.1:{sip_port}
listen=tcp:127.0.0.1:{sip_port}
listen=tls:127.0.0.1:{tls_port}
enable_tls=yes
tcp_connection_lifetime=3605
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "path.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "textops.so"
loadmodule "tls.so"
modparam("tls", "config", "{tls_cfg}")
request_route {{
    if (is_method("REGISTER")) {{
        add_path();
        $du = "sip:127.0.0.1:{mra_port};transport=tls";
        xlog("L_INFO", "relaying REGISTER for $tu to $du\n");
        if (!t_relay()) {{
            sl_reply_error();
        }}
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"#,
            tls_port = free_port(),
            tls_cfg = tls_cfg.display()
        ),
    )
    .unwrap();
    let log = dir.join("kamailio.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("kamailio")
        .arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-m", "64", "-M", "16", "-Y"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start kamailio");
    let mut k = Kamailio { child, log };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", sip_port)).is_err() {
        let exited = k.child.try_wait().ok().flatten().is_some();
        assert!(
            !exited && Instant::now() < deadline,
            "kamailio did not start:\n{}",
            k.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    k
}

/// Runs sipp's `edge-register.xml` (REGISTER, query, bad token) over TCP against the edge with
/// one per-call CSV line; returns (sipp succeeded, its output and message trace).
fn sipp_via(dir: &Path, edge_port: u16, line: &str, token: &str, timeout: &str) -> (bool, String) {
    let work = tempfile::tempdir_in(dir).unwrap();
    let csv = work.path().join("users.csv");
    std::fs::write(&csv, format!("SEQUENTIAL\n{line};{token};\n")).unwrap();
    let scen = Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp/edge-register.xml");
    let out = Command::new("sipp")
        .current_dir(work.path())
        .args(["-sf", scen.to_str().unwrap(), "-t", "t1", "-m", "1"])
        .args([
            "-inf",
            csv.to_str().unwrap(),
            "-nostdin",
            "-timeout",
            timeout,
        ])
        .args(["-recv_timeout", "8000", "-trace_err", "-trace_msg"])
        .args(["-i", "127.0.0.1", "-p", &free_port().to_string()])
        .arg(format!("127.0.0.1:{edge_port}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), sipp_log(&out.stdout, work.path()))
}

#[tokio::test]
async fn kamailio_relays_registers_over_mtls_until_its_edge_entry_is_removed() {
    if !have_tool("kamailio", INSTALL) || !have_tool("sipp", INSTALL) {
        return;
    }
    let ca = TestCa::new("Edge Test CA");
    let (s, mra_port) = mra_server(&ca).await;
    let dir = s.dir.path().to_path_buf();
    let id = issue(
        &ca,
        &dir,
        "kamailio",
        "kamailio-edge",
        &["kamailio.edge.example.test"],
    );
    let (st, body) = s
        .api(
            Method::POST,
            "edges",
            Some(json!({"host": "127.0.0.1", "description": "Kamailio", "subject_names": ["kamailio.edge.example.test"]})),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let sip_port = free_port();
    let kam = start_kamailio(
        &dir,
        sip_port,
        mra_port,
        &id,
        &s.data_dir.join("tls/ca.pem"),
    );
    let token = s.access_token("alice", "pw-alice").await;

    // sipp registers through Kamailio, queries the binding, and is refused with a bad token.
    let (ok, trace) = sipp_via(&dir, sip_port, "1010", &token, "30s");
    assert!(ok, "sipp failed:\n{trace}\n{}\n{}", kam.log(), s.log());
    let path = trace
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("path:"))
        .unwrap_or_else(|| panic!("Path echoed: {trace}"))
        .to_owned();
    // Kamailio's Path names the socket facing the registrar (its TLS one), loose-routed.
    let path_uri = path
        .split_once(':')
        .map(|(_, v)| v.trim())
        .unwrap_or_default()
        .to_owned();
    assert!(
        path_uri.starts_with("<sip:127.0.0.1:") && path_uri.contains(";lr"),
        "{path}"
    );
    // The edge connection is tracked with its identity.
    let (_, mra) = s.api(Method::GET, "mra", None).await;
    let conns = mra["connections"].as_array().cloned().unwrap_or_default();
    assert_eq!(conns.len(), 1, "{mra}");
    assert_eq!(conns[0]["edge"], "127.0.0.1");
    assert_eq!(conns[0]["matched"], "kamailio.edge.example.test");
    // The binding shows the Path through the API, and the write-behind persister stores it
    // with its Path within about a second.
    let needle = path_uri.trim_matches(['<', '>']).to_owned();
    let (st, regs) = s.api(Method::GET, "registrations", None).await;
    assert_eq!(st, 200, "{regs}");
    assert!(
        regs.to_string().contains(&needle) && regs.to_string().contains("1010@"),
        "binding with Path {needle}: {regs}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let db = rusqlite::Connection::open(s.data_dir.join("sipreg.db")).unwrap();
        let rows: Vec<String> = db
            .prepare("SELECT data FROM bindings WHERE aor LIKE '1010@%'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .filter_map(Result::ok)
            .collect();
        if rows.iter().any(|d| d.contains(&needle)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "binding with Path {needle} not stored: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Removing the edge entry through the API closes Kamailio's connection within a second.
    let started = Instant::now();
    let (st, _) = s.api(Method::DELETE, "edges/127.0.0.1", None).await;
    assert_eq!(st, 204);
    loop {
        let (_, mra) = s.api(Method::GET, "mra", None).await;
        if mra["connections"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "still connected: {mra}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let established = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( dport = :{mra_port} )"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    assert!(
        established.is_empty(),
        "kamailio still connected: {established}"
    );
    assert!(s
        .log()
        .contains("closing edge connection: no longer trusted"));
    // New REGISTERs from sipp through the edge now fail: its handshake is refused.
    let (ok, trace) = sipp_via(&dir, sip_port, "1010", &token, "20s");
    assert!(!ok, "sipp registered through a removed edge:\n{trace}");
    assert!(!trace.contains("SIP/2.0 200"), "{trace}");
    assert!(s.log().contains("kamailio.edge.example.test"));
}

// === AXL through curl ===

fn curl_axl(s: &Server, password: &str, op: &str, inner: &str) -> (u16, String) {
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:ns="http://www.cisco.com/AXL/API/14.0">
<soapenv:Header/><soapenv:Body><ns:{op} sequence="1">{inner}</ns:{op}></soapenv:Body></soapenv:Envelope>"#
    );
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.data_dir.join("tls/ca.pem"))
        .args(["-u", &format!("axl:{password}")])
        .args(["-H", "Content-Type: text/xml", "-H"])
        .arg(format!("SOAPAction: \"CUCM:DB ver=14.0 {op}\""))
        .args(["--data-binary", &body])
        .arg(format!("https://localhost:{}/axl/", s.https_port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn axl_expressway_c_operations_through_curl() {
    if !have_tool("curl", INSTALL) {
        return;
    }
    let s = Server::start().await;
    let admin = &s.admin_token();

    let (code, _) = curl_axl(&s, "wrong", "listExpresswayCConfiguration", "");
    assert_eq!(code, 401);

    let add = "<expresswayCConfiguration><HostNameOrIP>expc1.example.com</HostNameOrIP>\
<description>MRA edge</description>\
<X509SubjectNameorSubjectAlternateName>expc1.example.com,expc1-alt.example.com</X509SubjectNameorSubjectAlternateName>\
</expresswayCConfiguration>";
    let (code, body) = curl_axl(&s, admin, "addExpresswayCConfiguration", add);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("<ns:addExpresswayCConfigurationResponse xmlns:ns=\"http://www.cisco.com/AXL/API/14.0\"><return>{"), "{body}");
    let uuid = body
        .split("<return>")
        .nth(1)
        .unwrap()
        .split("</return>")
        .next()
        .unwrap()
        .to_owned();
    // The same entry through REST.
    let (st, e) = s.api(Method::GET, "edges/EXPC1.example.com", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        e["subject_names"],
        json!(["expc1.example.com", "expc1-alt.example.com"])
    );
    // Duplicate → fault.
    let (code, body) = curl_axl(&s, admin, "addExpresswayCConfiguration", add);
    assert_eq!(code, 500);
    assert!(body.contains("<axlcode>-239</axlcode>"), "{body}");
    // Missing HostNameOrIP → fault with axlError.
    let (code, body) = curl_axl(
        &s,
        admin,
        "addExpresswayCConfiguration",
        "<expresswayCConfiguration><description>x</description></expresswayCConfiguration>",
    );
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("<soapenv:Fault>")
            && body.contains("<axlError><axlcode>5003</axlcode><axlmessage>HostNameOrIP"),
        "{body}"
    );

    let (code, body) = curl_axl(
        &s,
        admin,
        "getExpresswayCConfiguration",
        &format!("<uuid>{uuid}</uuid>"),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("<expresswayCConfiguration uuid=\"{uuid}\"><HostNameOrIP>expc1.example.com</HostNameOrIP><description>MRA edge</description>")), "{body}");

    let (code, body) = curl_axl(
        &s,
        admin,
        "updateExpresswayCConfiguration",
        "<HostNameOrIP>expc1.example.com</HostNameOrIP><X509SubjectNameorSubjectAlternateName>CN=expc1.example.com, O=Example</X509SubjectNameorSubjectAlternateName>",
    );
    assert_eq!(code, 200, "{body}");
    let (_, e) = s.api(Method::GET, "edges/expc1.example.com", None).await;
    assert_eq!(e["subject_names"], json!(["expc1.example.com"]));

    let (code, body) = curl_axl(
        &s,
        admin,
        "listExpresswayCConfiguration",
        "<searchCriteria><HostNameOrIP>%</HostNameOrIP></searchCriteria><returnedTags><HostNameOrIP/></returnedTags>",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("<HostNameOrIP>expc1.example.com</HostNameOrIP></expresswayCConfiguration>"),
        "{body}"
    );
    assert!(
        !body.contains("<description>"),
        "returnedTags honoured: {body}"
    );

    let (code, body) = curl_axl(
        &s,
        admin,
        "removeExpresswayCConfiguration",
        "<HostNameOrIP>expc1.example.com</HostNameOrIP>",
    );
    assert_eq!(code, 200, "{body}");
    let (st, _): (u16, Value) = s.api(Method::GET, "edges/expc1.example.com", None).await;
    assert_eq!(st, 404);
    let (code, body) = curl_axl(
        &s,
        admin,
        "getExpresswayCConfiguration",
        "<HostNameOrIP>expc1.example.com</HostNameOrIP>",
    );
    assert_eq!(code, 500);
    assert!(body.contains("<axlcode>5007</axlcode>"), "{body}");
}
