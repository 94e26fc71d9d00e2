//! The device config service end to end: HTTP 6970, HTTPS 6971 and TFTP against the real binary,
//! fetched with real clients (curl over HTTP, HTTPS and `tftp://`, tftp-hpa), parsed with Python's
//! `xml.etree`, pinned by a golden file, plus a raw TFTP client for the protocol corners (lost
//! ACK, wrong TID, block-number wrap-around).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use sipreg_e2e::peers::{have_program, python_stdin};
use sipreg_e2e::{free_port, Server};
use tokio::net::UdpSocket;

/// Where the peers these tests need come from.
const INSTALL: &str = "scripts/test installs it";

/// A free UDP port on loopback.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server with TFTP and HTTPS 6971 on ephemeral ports; returns it with (tftp, https) ports.
async fn server() -> (Server, u16, u16) {
    let tftp = free_udp_port();
    let https = free_port();
    let s = Server::start_with(&[
        "--tftp-port",
        &tftp.to_string(),
        "--config-https-port",
        &https.to_string(),
    ])
    .await;
    (s, tftp, https)
}

/// Runs curl; returns (exit code, stdout bytes, stderr).
fn curl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fetches `name` with tftp-hpa in `mode` into a temp file; returns the bytes and the output.
fn tftp_hpa(port: u16, name: &str, mode: &str, dir: &Path) -> (Vec<u8>, String) {
    let local: PathBuf = dir.join(format!("{mode}-{name}"));
    let out = Command::new("tftp")
        .args([
            "-m",
            mode,
            "127.0.0.1",
            &port.to_string(),
            "-c",
            "get",
            name,
        ])
        .arg(&local)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (std::fs::read(&local).unwrap_or_default(), text)
}

/// GETs a file over plain HTTP; returns status, headers and body bytes.
async fn http_get(
    s: &Server,
    name: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new().get(format!("http://127.0.0.1:{}/{name}", s.config_port));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.bytes().await.unwrap().to_vec())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

fn text(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap()
}

#[tokio::test]
async fn http_curl_tftp_and_tftp_hpa_serve_the_same_bytes() {
    if !have_program("curl", "--version", INSTALL) || !have_program("tftp", "-V", INSTALL) {
        return;
    }
    let (s, tftp, _) = server().await;
    s.add_user_and_device("alice", "pw-alice", "CSFalice", &["1010", "1011"], true);
    s.add_user_and_device("bob", "pw-bob", "SEPAABBCCDDEEFF", &["2000"], false);
    let files = [
        "CSFalice.cnf.xml",
        "sepaabbccddeeff.cnf.xml",
        "XMLDefault.cnf.xml",
        "ConfigFileCacheList.txt",
    ];
    for name in files {
        let (st, _, want) = http_get(&s, name, &[]).await;
        assert_eq!(st, 200, "{name}");
        assert!(!want.is_empty());

        let (code, body, err) = curl(&[&format!("http://127.0.0.1:{}/{name}", s.config_port)]);
        assert_eq!(code, 0, "curl http {name}: {err}");
        assert_eq!(body, want, "curl http {name}");

        let url = format!("tftp://127.0.0.1:{tftp}/{name}");
        let (code, body, err) = curl(&[&url]);
        assert_eq!(code, 0, "curl tftp {name}: {err}\n{}", s.log());
        assert_eq!(body, want, "curl tftp {name}");
        for blksize in ["8", "1428", "65464"] {
            let (code, body, err) = curl(&["--tftp-blksize", blksize, &url]);
            assert_eq!(code, 0, "curl tftp blksize {blksize} {name}: {err}");
            assert_eq!(body, want, "curl tftp blksize {blksize} {name}");
        }

        for mode in ["octet", "netascii"] {
            // netascii goes over the wire as CR LF and tftp-hpa turns it back into LF.
            let (body, out) = tftp_hpa(tftp, name, mode, s.dir.path());
            assert_eq!(body, want, "tftp-hpa {mode} {name}: {out}");
        }
    }
    let (_, _, list) = http_get(&s, "ConfigFileCacheList.txt", &[]).await;
    assert_eq!(
        text(&list),
        "CSFalice.cnf.xml\nSEPAABBCCDDEEFF.cnf.xml\nXMLDefault.cnf.xml\n"
    );
}

/// Python's own parser reads the file; the script prints facts that the test then asserts.
const PY_FACTS: &str = r#"
import sys, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.buffer.read())
print("root", root.tag, root.get("{http://www.w3.org/2001/XMLSchema-instance}type"))
print("children", " ".join(c.tag for c in root))
print("oauth", root.findtext("sipOAuthMode"))
for m in root.findall("devicePool/callManagerGroup/members/member"):
    cm = m.find("callManager")
    print("member", m.get("priority"), cm.findtext("name"), cm.findtext("ports/sipOAuthPort"),
          cm.findtext("ports/sipMRAOAuthPort"))
for l in root.findall("sipProfile/sipLines/line"):
    print("line", l.get("button"), l.findtext("featureID"), l.findtext("name"), l.findtext("proxy"))
print("user", root.findtext("userId"), root.findtext("ownerId"))
print("stamp", root.findtext("versionStamp"))
"#;

fn python_facts(xml: &[u8]) -> Vec<String> {
    let out = python_stdin("python could not parse the file", PY_FACTS, xml);
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_file_parses_with_python_and_matches_the_golden_file() {
    if !have_program("python3", "--version", INSTALL) {
        return;
    }
    let (s, _, _) = server().await;
    s.add_user_and_device("alice", "pw-alice", "CSFalice", &["1010", "1011"], true);
    s.oauth_mode(true);
    let (st, _, body) = http_get(&s, "CSFalice.cnf.xml", &[]).await;
    assert_eq!(st, 200);
    let facts = python_facts(&body);
    let stamp = facts
        .iter()
        .find_map(|l| l.strip_prefix("stamp "))
        .unwrap()
        .to_owned();
    assert_eq!(stamp.len(), 36, "{stamp}");
    let expected = [
        "root device axl:XIPPhone".to_string(),
        "children fullConfig deviceProtocol devicePool sipOAuthMode sipProfile versionStamp deviceSecurityMode transportLayerProtocol userId ownerId".into(),
        "oauth 1".into(),
        format!("member 0 localhost {} {}", s.sip_oauth_port, s.sip_mra_oauth_port),
        "line 1 9 1010 USECALLMANAGER".into(),
        "line 2 9 1011 USECALLMANAGER".into(),
        "user alice alice".into(),
        format!("stamp {stamp}"),
    ];
    assert_eq!(facts, expected);
    // Nothing secret: no password, no hash.
    let xml = text(&body);
    assert!(
        !xml.contains("pw-alice") && !xml.contains("argon2"),
        "{xml}"
    );

    // The golden file pins the whole structure; only the ephemeral port and the stamp vary.
    let normalised = xml
        .replace(&stamp, "{VERSION_STAMP}")
        .replace(&format!(">{}<", s.sip_oauth_port), ">{SIP_OAUTH_PORT}<")
        .replace(
            &format!(">{}<", s.sip_mra_oauth_port),
            ">{SIP_MRA_OAUTH_PORT}<",
        )
        .replace(&format!(">{}<", s.sip_port), ">{SIP_PORT}<")
        .replace(&format!(">{}<", s.secured_sip_port), ">{SECURED_SIP_PORT}<");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/CSFalice.cnf.xml");
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&golden, &normalised).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", golden.display()));
    assert_eq!(
        normalised, want,
        "structure changed; review and rerun with UPDATE_GOLDEN=1"
    );
}

#[tokio::test]
async fn http_revalidation_and_admin_changes_show_on_the_next_fetch() {
    let (s, tftp, _) = server().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);
    let (st, h, first) = http_get(&s, "CSFalice.cnf.xml", &[]).await;
    assert_eq!(st, 200);
    assert_eq!(header(&h, "content-type"), "text/xml");
    let etag = header(&h, "etag").to_owned();
    let lm = header(&h, "last-modified").to_owned();
    assert!(etag.starts_with('"') && !lm.is_empty(), "{h:?}");
    assert!(text(&first).contains("<sipOAuthMode>0</sipOAuthMode>"));

    let (st, _, body) = http_get(&s, "CSFalice.cnf.xml", &[("if-none-match", &etag)]).await;
    assert_eq!((st, body.len()), (304, 0));
    let (st, _, _) = http_get(&s, "csfalice.cnf.xml", &[("if-modified-since", &lm)]).await;
    assert_eq!(st, 304);
    let head = reqwest::Client::new()
        .head(format!(
            "http://127.0.0.1:{}/CSFalice.cnf.xml",
            s.config_port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        first.len().to_string()
    );
    let post = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/CSFalice.cnf.xml",
            s.config_port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(http_get(&s, "CSFnobody.cnf.xml", &[]).await.0, 404);
    assert_eq!(http_get(&s, "..%2F..%2Fetc%2Fpasswd", &[]).await.0, 400);

    // OAuth mode on: a new file, stamp and ETag at once, on HTTP and TFTP alike.
    s.oauth_mode(true);
    let (st, h, second) = http_get(&s, "CSFalice.cnf.xml", &[("if-none-match", &etag)]).await;
    assert_eq!(st, 200, "the old ETag no longer matches");
    assert_ne!(header(&h, "etag"), etag);
    assert!(text(&second).contains("<sipOAuthMode>1</sipOAuthMode>"));
    let stamp = |b: &[u8]| {
        let t = text(b);
        let start = t.find("<versionStamp>").unwrap();
        t[start..start + 50].to_owned()
    };
    assert_ne!(stamp(&first), stamp(&second));
    assert_eq!(tftp_read(tftp, "CSFalice.cnf.xml", &[]).await.0, second);

    // New lines: delete and re-add the device with others.
    let (st, _) = s.api(Method::DELETE, "devices/CSFalice", None).await;
    assert_eq!(st, 204);
    assert_eq!(http_get(&s, "CSFalice.cnf.xml", &[]).await.0, 404);
    let (st, body) = s
        .api(
            Method::POST,
            "devices",
            Some(json!({"name": "CSFalice", "owner": "alice", "lines": ["1010", {"dn": "1099", "display_name": "Alice Two"}], "oauth": true})),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let (_, _, third) = http_get(&s, "CSFalice.cnf.xml", &[]).await;
    assert!(
        text(&third).contains("<name>1099</name>"),
        "{}",
        text(&third)
    );
    assert!(text(&third).contains("<displayName>Alice Two</displayName>"));

    // A node's ports (admin API for nodes): the next fetch advertises the new port.
    let (st, body) = s.patch_node(json!({"sip_mra_oauth_port": 6091})).await;
    assert_eq!(st, 200, "PATCH nodes/node1: {body}");
    let (_, _, fourth) = http_get(&s, "CSFalice.cnf.xml", &[]).await;
    assert!(
        text(&fourth).contains("<sipMRAOAuthPort>6091</sipMRAOAuthPort>"),
        "{}",
        text(&fourth)
    );
    assert_eq!(tftp_read(tftp, "CSFalice.cnf.xml", &[]).await.0, fourth);
}

#[tokio::test]
async fn https_6971_serves_a_device_file_only_to_its_owner() {
    let (s, _, https) = server().await;
    s.add_user_and_device("alice", "pw-alice", "CSFalice", &["1010"], true);
    s.add_user_and_device("bob", "pw-bob", "CSFbob", &["2000"], true);
    s.oauth_mode(true);
    let alice = s.access_token("alice", "pw-alice").await;
    let bob = s.access_token("bob", "pw-bob").await;
    let url = format!("https://localhost:{https}/CSFalice.cnf.xml");
    let get = |token: Option<String>| {
        let mut req = s.http().get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap() }
    };
    let r = get(None).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(get(Some("not.a.token".into())).await.status(), 401);
    let mut forged = alice.clone();
    forged.pop();
    assert_eq!(get(Some(forged)).await.status(), 401);
    assert_eq!(get(Some(bob.clone())).await.status(), 403);
    let r = get(Some(alice.clone())).await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    let (_, _, plain) = http_get(&s, "CSFalice.cnf.xml", &[]).await;
    assert_eq!(body.to_vec(), plain, "same bytes as on 6970");

    // The same with curl over TLS, trusting the server's CA.
    if have_program("curl", "--version", INSTALL) {
        let ca = s.dir.path().join("ca.pem");
        std::fs::write(&ca, s.ca_pem()).unwrap();
        let ca = ca.to_str().unwrap();
        let auth = format!("Authorization: Bearer {alice}");
        let (code, out, err) = curl(&["--cacert", ca, "-H", &auth, &url]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, plain);
        let (_, out, _) = curl(&[
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        assert_eq!(text(&out), "401");
        let auth = format!("Authorization: Bearer {bob}");
        let (_, out, _) = curl(&[
            "--cacert",
            ca,
            "-H",
            &auth,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        assert_eq!(text(&out), "403");
    }
}

// ----- a raw TFTP client, for what curl and tftp-hpa cannot show -----

fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [name, mode] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    for (k, v) in opts {
        for s in [k, v] {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = vec![0, 4];
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn opcode(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

fn word(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2], p[3]])
}

/// The NUL-separated strings after the opcode (OACK pairs, ERROR message).
fn strings(p: &[u8]) -> Vec<String> {
    p.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

async fn recv(sock: &UdpSocket, within: Duration) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70_000];
    let (n, from) = tokio::time::timeout(within, sock.recv_from(&mut buf))
        .await
        .expect("no TFTP answer in time")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Reads a whole file in octet mode, acking every block; returns the bytes and block numbers.
async fn tftp_read(port: u16, name: &str, opts: &[(&str, &str)]) -> (Vec<u8>, Vec<u16>) {
    let c = client().await;
    c.send_to(&rrq(name, "octet", opts), ("127.0.0.1", port))
        .await
        .unwrap();
    let mut blksize = 512;
    let mut got = Vec::new();
    let mut blocks = Vec::new();
    loop {
        let (p, tid) = recv(&c, Duration::from_secs(5)).await;
        assert_ne!(tid.port(), port, "answers come from a new transfer ID");
        match opcode(&p) {
            6 => {
                let s = strings(&p[2..]);
                if let Some(i) = s.iter().position(|k| k == "blksize") {
                    blksize = s[i + 1].parse().unwrap();
                }
                c.send_to(&ack(0), tid).await.unwrap();
            }
            3 => {
                let block = word(&p);
                got.extend_from_slice(&p[4..]);
                blocks.push(block);
                c.send_to(&ack(block), tid).await.unwrap();
                if p.len() - 4 < blksize {
                    return (got, blocks);
                }
            }
            op => panic!("unexpected opcode {op}: {:?}", strings(&p[2..])),
        }
    }
}

#[tokio::test]
async fn tftp_errors_and_option_negotiation() {
    let (s, tftp, _) = server().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);
    let (_, _, want) = http_get(&s, "CSFalice.cnf.xml", &[]).await;
    let server = ("127.0.0.1", tftp);
    let c = client().await;

    // Unknown file: error 1. Write request: error 2. Traversal: error 2. Mail mode: error 4.
    let mut wrq = rrq("CSFalice.cnf.xml", "octet", &[]);
    wrq[1] = 2;
    for (req, code) in [
        (rrq("CSFnobody.cnf.xml", "octet", &[]), 1),
        (wrq, 2),
        (rrq("../../etc/passwd", "octet", &[]), 2),
        (rrq("CSFalice.cnf.xml", "mail", &[]), 4),
    ] {
        c.send_to(&req, server).await.unwrap();
        let (p, _) = recv(&c, Duration::from_secs(5)).await;
        assert_eq!((opcode(&p), word(&p)), (5, code), "{:?}", strings(&p[4..]));
    }

    // blksize, tsize and timeout come back in an OACK, in the order asked.
    c.send_to(
        &rrq(
            "CSFalice.cnf.xml",
            "octet",
            &[
                ("blksize", "4096"),
                ("tsize", "0"),
                ("timeout", "3"),
                ("windowsize", "8"),
            ],
        ),
        server,
    )
    .await
    .unwrap();
    let (p, tid) = recv(&c, Duration::from_secs(5)).await;
    assert_eq!(opcode(&p), 6);
    let len = want.len().to_string();
    assert_eq!(
        strings(&p[2..]),
        ["blksize", "4096", "tsize", &len, "timeout", "3"]
    );
    c.send_to(&ack(0), tid).await.unwrap();
    let (p, _) = recv(&c, Duration::from_secs(5)).await;
    assert_eq!((opcode(&p), word(&p)), (3, 1));
    assert!(p[4..] == want[..], "the file fits one 4096-byte block");
    c.send_to(&ack(1), tid).await.unwrap();

    // Too big a block size is answered with the largest allowed; too small is ignored.
    c.send_to(
        &rrq("CSFalice.cnf.xml", "octet", &[("blksize", "70000")]),
        server,
    )
    .await
    .unwrap();
    let (p, tid) = recv(&c, Duration::from_secs(5)).await;
    assert_eq!(strings(&p[2..]), ["blksize", "65464"]);
    let error8 = [&[0u8, 5, 0, 8][..], b"no\0"].concat();
    c.send_to(&error8, tid).await.unwrap();
    let (got, _) = tftp_read(tftp, "CSFalice.cnf.xml", &[("blksize", "4")]).await;
    assert_eq!(got, want);
    let (got, blocks) = tftp_read(tftp, "CSFalice.cnf.xml", &[("blksize", "100")]).await;
    assert_eq!(got, want);
    assert_eq!(blocks.len(), want.len() / 100 + 1);

    // curl reports the refusals as TFTP errors (68 = not found, 69 = permission).
    if have_program("curl", "--version", INSTALL) {
        let (code, _, _) = curl(&[&format!("tftp://127.0.0.1:{tftp}/CSFnobody.cnf.xml")]);
        assert_eq!(code, 68);
        let upload = s.dir.path().join("up.txt");
        std::fs::write(&upload, "x").unwrap();
        let (code, _, _) = curl(&[
            "-T",
            upload.to_str().unwrap(),
            &format!("tftp://127.0.0.1:{tftp}/x.cnf.xml"),
        ]);
        assert_eq!(code, 69);
    }
}

#[tokio::test]
async fn tftp_recovers_a_lost_ack_and_answers_a_wrong_tid_with_error_5() {
    let (s, tftp, _) = server().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010", "1011"], true);
    let (_, _, want) = http_get(&s, "CSFalice.cnf.xml", &[]).await;
    assert!(want.len() > 512);
    let c = client().await;
    c.send_to(
        &rrq("CSFalice.cnf.xml", "octet", &[("timeout", "1")]),
        ("127.0.0.1", tftp),
    )
    .await
    .unwrap();
    let (oack, tid) = recv(&c, Duration::from_secs(5)).await;
    assert_eq!(strings(&oack[2..]), ["timeout", "1"]);
    // Our ACK 0 is "lost": the OACK comes again after the negotiated second.
    let (again, from) = recv(&c, Duration::from_secs(3)).await;
    assert_eq!((again, from), (oack.clone(), tid));
    c.send_to(&ack(0), tid).await.unwrap();
    let (d1, _) = recv(&c, Duration::from_secs(5)).await;
    assert_eq!((opcode(&d1), word(&d1)), (3, 1));
    // Lose ACK 1 too: DATA 1 is sent again, unchanged.
    let (d1_again, _) = recv(&c, Duration::from_secs(3)).await;
    assert_eq!(d1_again, d1);

    // A stranger writing to the transfer's port gets error 5; the transfer is not disturbed.
    let stranger = client().await;
    stranger.send_to(&ack(1), tid).await.unwrap();
    let (e, from) = recv(&stranger, Duration::from_secs(5)).await;
    assert_eq!((opcode(&e), word(&e), from), (5, 5, tid));

    let mut got = d1[4..].to_vec();
    let mut block = 1;
    loop {
        c.send_to(&ack(block), tid).await.unwrap();
        let (p, _) = recv(&c, Duration::from_secs(5)).await;
        assert_eq!((opcode(&p), word(&p)), (3, block + 1));
        got.extend_from_slice(&p[4..]);
        block += 1;
        if p.len() - 4 < 512 {
            c.send_to(&ack(block), tid).await.unwrap();
            break;
        }
    }
    assert_eq!(got, want);
}

/// A cluster with thousands of devices makes a `ConfigFileCacheList.txt` longer than 65535
/// blocks of 8 bytes, the smallest block size: block numbers must wrap from 65535 to 0. The
/// devices go straight into the database (thousands of API calls would take minutes) and the
/// server is restarted to load them.
#[tokio::test]
async fn tftp_block_numbers_wrap_around_on_a_big_cache_list() {
    let (mut s, tftp, _) = server().await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);
    {
        let mut db = rusqlite::Connection::open(s.data_dir.join("sipreg.db")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let tx = db.transaction().unwrap();
        for i in 0..7400 {
            // 64 characters, the longest name the admin API accepts.
            let name = format!("CSF{i:05}{}", "x".repeat(56));
            tx.execute(
                "INSERT INTO devices (name, owner, oauth, updated_at) VALUES (?1, 'alice', 1, 0)",
                rusqlite::params![name],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO lines (device, position, dn, display_name) VALUES (?1, 0, ?2, NULL)",
                rusqlite::params![name, format!("7{i:05}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    s.restart().await;
    // `restart` returns once the API answers; the config listener may need a moment more.
    let mut tries = 0;
    while std::net::TcpStream::connect(("127.0.0.1", s.config_port)).is_err() {
        tries += 1;
        assert!(tries < 600, "config port did not come back:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, _, want) = http_get(&s, "ConfigFileCacheList.txt", &[]).await;
    assert_eq!(st, 200);
    assert!(want.len() / 8 > 65_535, "{} bytes", want.len());

    let (got, blocks) = tftp_read(tftp, "ConfigFileCacheList.txt", &[("blksize", "8")]).await;
    assert!(got == want, "raw client: content differs after the wrap");
    assert_eq!(blocks[65_534], 65_535);
    assert_eq!(blocks[65_535], 0, "block 65535 is followed by block 0");
    assert_eq!(blocks.len(), want.len() / 8 + 1);

    if have_program("curl", "--version", INSTALL) {
        let url = format!("tftp://127.0.0.1:{tftp}/ConfigFileCacheList.txt");
        let (code, body, err) = curl(&["--tftp-blksize", "8", &url]);
        assert_eq!(code, 0, "{err}");
        assert!(
            body == want,
            "curl: {} bytes, want {}",
            body.len(),
            want.len()
        );
    }
}

#[tokio::test]
async fn tftp_off_or_unbindable_is_one_warning_and_the_server_runs() {
    // Port 0 switches TFTP off; a port already taken is reported once and serving goes on.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let s = Server::start_with(&[
        "--tftp-port",
        &port,
        "--config-https-port",
        &free_port().to_string(),
    ])
    .await;
    s.add_user_and_device("alice", "pw", "CSFalice", &["1010"], true);
    assert_eq!(s.config_file("CSFalice.cnf.xml").await.0, 200);
    let log = s.log();
    assert_eq!(
        log.matches("TFTP is off").count(),
        1,
        "exactly one warning:\n{log}"
    );
    assert_eq!(
        log.matches("listen.tftp_port").count(),
        1,
        "it names the setting:\n{log}"
    );

    let off = Server::start_with(&[
        "--tftp-port",
        "0",
        "--config-https-port",
        &free_port().to_string(),
    ])
    .await;
    assert!(
        off.log().contains("TFTP off (`listen.tftp_port` = 0)"),
        "{}",
        off.log()
    );
}
