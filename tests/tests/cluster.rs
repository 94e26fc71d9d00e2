//! Clusters: two `sipreg serve` processes (nodes `a` and `b`, own data dirs and ports) share one
//! PostgreSQL database that this test starts (Debian's `postgresql` package; skipped when it is
//! missing, a failure when `CI=true`). Changes made through node A's API reach node B within a
//! second, tokens from A register on B, a refresh race across the nodes has one winner, and a
//! Digest nonce node A issued is answered by node B (and, on SQLite, by a node after a restart)
//! with a `stale=true` challenge, never accepted, so a captured REGISTER cannot be replayed there.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sipreg_e2e::{client_tls, free_port, install_crypto_provider, peers_required, sipreg_bin};
use sipreg_e2e::{Register, SipClient};

/// A throw-away PostgreSQL server in a temp dir, stopped when dropped.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn start() -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .max()
        });
        let Some(bin) = bin else {
            assert!(
                !peers_required(),
                "PostgreSQL is not installed (apt-get install postgresql); required when CI=true"
            );
            eprintln!("skipping: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        if as_postgres {
            // PostgreSQL refuses to run as root.
            assert!(Command::new("chmod")
                .arg("755")
                .arg(dir.path())
                .status()
                .unwrap()
                .success());
            assert!(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success());
        }
        let pg = Postgres {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(pg.data())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--locale=C",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            pg.port,
            pg.dir.path().join("sock").display()
        );
        let ok = pg
            .cmd("pg_ctl")
            .arg("-D")
            .arg(pg.data())
            .args(["-o", &opts, "-l"])
            .arg(pg.dir.path().join("pg.log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl start failed");
        Some(pg)
    }

    fn cmd(&self, tool: &str) -> Command {
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One `sipreg serve` node on the shared store.
struct Node {
    dir: tempfile::TempDir,
    https_port: u16,
    config_port: u16,
    sip_oauth_port: u16,
    /// The legacy (Digest) UDP/TCP port, when the node has one.
    sip_port: Option<u16>,
    child: Child,
    http: reqwest::Client,
    admin_token: String,
}

impl Node {
    async fn start(name: &str, store: &str) -> Node {
        Self::launch(name, store, None).await
    }

    /// A node with its legacy ports open (Digest over UDP/TCP on `sip_port`).
    async fn start_legacy(name: &str, store: &str) -> Node {
        Self::launch(name, store, Some(free_port())).await
    }

    async fn launch(name: &str, store: &str, sip_port: Option<u16>) -> Node {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (https_port, config_port, sip_oauth_port) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let legacy: Vec<String> = match sip_port {
            Some(p) => vec![
                "--sip-port".into(),
                p.to_string(),
                "--secured-sip-port".into(),
                free_port().to_string(),
            ],
            None => vec!["--no-legacy".into()],
        };
        let child = Command::new(sipreg_bin())
            .arg("--data-dir")
            .arg(&data)
            .arg("serve")
            .args(["--bind", "127.0.0.1", "--public-host", "localhost"])
            .args(["--node-name", name, "--store", store])
            .args(["--https-port", &https_port.to_string()])
            .args(["--config-http-port", &config_port.to_string()])
            .args(["--config-https-port", &free_port().to_string()])
            .args(["--sip-oauth-port", &sip_oauth_port.to_string()])
            .args(["--tftp-port", "0"])
            .args(&legacy)
            .args(["--token-issuer", "https://cluster.sipreg.test:8443"])
            .env("SIPREG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut node = Node {
            dir,
            https_port,
            config_port,
            sip_oauth_port,
            sip_port,
            child,
            http: reqwest::Client::new(),
            admin_token: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(data.join("api-url").exists()
            && std::net::TcpStream::connect(("127.0.0.1", https_port)).is_ok())
        {
            if let Some(st) = node.child.try_wait().unwrap() {
                panic!("node {name} exited ({st}):\n{}", node.log());
            }
            assert!(
                Instant::now() < deadline,
                "node {name} did not start:\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.admin_token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
        node.http = reqwest::Client::builder()
            .use_preconfigured_tls(client_tls(&node.ca_pem()))
            .build()
            .unwrap();
        node
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir().join("tls/ca.pem")).unwrap()
    }

    fn cli(&self, args: &[&str], stdin: Option<&str>) {
        use std::io::Write;
        let mut child = Command::new(sipreg_bin())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sipreg {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn api(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!(
                "https://localhost:{}/api/v1/{path}",
                self.https_port
            ))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("https://localhost:{}/oauth/token", self.https_port))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn sip_connect(&self) -> std::io::Result<SipClient> {
        SipClient::connect(([127, 0, 0, 1], self.sip_oauth_port).into(), &self.ca_pem()).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms until it holds; returns how long that took, or panics after `limit`.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what} not seen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cluster() -> Option<(Postgres, Node, Node)> {
    let pg = Postgres::start()?;
    let a = Node::start("a", &pg.url()).await;
    let b = Node::start("b", &pg.url()).await;
    Some((pg, a, b))
}

fn add_user_and_device(n: &Node, user: &str, device: &str, line: &str) {
    n.cli(&["user", "add", user], Some("pw pw pw\n"));
    n.cli(
        &[
            "device", "add", device, "--owner", user, "--line", line, "--oauth",
        ],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_node_a_reach_node_b_within_a_second() {
    let Some((_pg, a, b)) = cluster().await else {
        return;
    };
    let (st, nodes) = b.api("nodes").await;
    assert_eq!(st, 200, "{nodes}");
    let names: Vec<&str> = nodes
        .as_array()
        .or_else(|| nodes["items"].as_array())
        .map(|v| v.iter().filter_map(|n| n["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"a") && names.contains(&"b"), "{nodes}");

    assert!(b.sip_connect().await.is_err(), "OAuth mode is off at first");
    add_user_and_device(&a, "alice", "CSFalice", "1010");
    let took = within(Duration::from_secs(1), "the device on node b", || async {
        b.api("devices/CSFalice").await.0 == 200
    })
    .await;
    eprintln!("device visible on b after {took:?}");
    assert_eq!(b.api("users/alice").await.0, 200);

    a.cli(&["oauth-mode", "enable"], None);
    within(
        Duration::from_secs(1),
        "node b's SIP OAuth port",
        || async { b.sip_connect().await.is_ok() },
    )
    .await;
    let (st, body) = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/CSFalice.cnf.xml",
            b.config_port
        ))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(st, 200);
    let body = body.text().await.unwrap();
    assert!(body.contains("<sipOAuthMode>1</sipOAuthMode>"), "{body}");
}

// Node B refuses A's token with "wrong issuer": each node's issuer is https://public_host:https_port.
// The signing keys are shared (the signature checks out); the issuer must become cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_node_a_registers_on_node_b() {
    let Some((_pg, a, b)) = cluster().await else {
        return;
    };
    add_user_and_device(&a, "bob", "CSFbob", "2020");
    a.cli(&["oauth-mode", "enable"], None);
    let (st, t) = a
        .token(&[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "pw pw pw"),
            ("client_id", "softphone"),
        ])
        .await;
    assert_eq!(st, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_owned();
    within(
        Duration::from_secs(1),
        "node b's SIP OAuth port",
        || async { b.sip_connect().await.is_ok() },
    )
    .await;
    let mut c = b.sip_connect().await.unwrap();
    let r = c
        .request(
            &Register::new("2020", "cl1", 1, c.local)
                .header("Contact: <sip:2020@127.0.0.1;transport=tls>;+u.sip!devicename.ccm.cisco.com=\"CSFbob\"")
                .bearer(&access)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(r.code, 200, "{}\n--- node b log:\n{}", r.text, b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_used_on_both_nodes_at_once_has_one_winner() {
    let Some((_pg, a, b)) = cluster().await else {
        return;
    };
    add_user_and_device(&a, "cat", "CSFcat", "3030");
    for round in 0..3 {
        let (st, t) = a
            .token(&[
                ("grant_type", "password"),
                ("username", "cat"),
                ("password", "pw pw pw"),
                ("client_id", "softphone"),
            ])
            .await;
        assert_eq!(st, 200, "{t}");
        let rt = t["refresh_token"].as_str().unwrap().to_owned();
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", "softphone"),
        ];
        let ((sa, ja), (sb, jb)) = tokio::join!(a.token(&form), b.token(&form));
        let mut statuses = [sa, sb];
        statuses.sort();
        assert_eq!(statuses, [200, 400], "round {round}: a {ja}, b {jb}");
        let (winner, loser) = if sa == 200 { (ja, jb) } else { (jb, ja) };
        assert_eq!(loser["error"], "invalid_grant", "{loser}");
        // The loser was treated as reuse: the whole family, the winner's new token too, is revoked.
        let new_rt = winner["refresh_token"].as_str().unwrap().to_owned();
        let (st, body) = a
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", new_rt.as_str()),
                ("client_id", "softphone"),
            ])
            .await;
        assert_eq!(
            st, 400,
            "round {round}: the family survived the reuse: {body}"
        );
    }
}

/// A REGISTER for line 7100 from `sock`, with `authorization` when given.
fn register_request(sock: &std::net::UdpSocket, cseq: u32, authorization: &str) -> String {
    let me = sock.local_addr().unwrap();
    format!(
        "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKnonce{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:7100@localhost>;tag=n\r\nTo: <sip:7100@localhost>\r\n\
         Call-ID: shared-nonce\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:7100@{me}>\r\n{authorization}\
         Content-Length: 0\r\n\r\n"
    )
}

/// Sends `req` over UDP to `port`; the answer's text.
fn send_udp(sock: &std::net::UdpSocket, port: u16, req: &str) -> String {
    sock.send_to(req.as_bytes(), ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a UDP answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A REGISTER for line 7100 over UDP to `port`, with `authorization` when given; the answer's text.
fn register_udp(sock: &std::net::UdpSocket, port: u16, cseq: u32, authorization: &str) -> String {
    send_udp(sock, port, &register_request(sock, cseq, authorization))
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 challenge's nonce in a 401.
fn sha256_nonce(answer: &str) -> String {
    let line = answer
        .lines()
        .find(|l| l.starts_with("WWW-Authenticate:") && l.contains("algorithm=SHA-256"))
        .unwrap_or_else(|| panic!("no SHA-256 challenge: {answer}"));
    let start = line.find("nonce=\"").unwrap() + 7;
    line[start..].split('"').next().unwrap().to_owned()
}

/// Whether `answer` is a 401 whose every challenge says `stale=true` (RFC 7616 §3.3: the phone
/// retries with the new nonce without asking for the password).
fn is_stale_challenge(answer: &str) -> bool {
    let www: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("WWW-Authenticate:"))
        .collect();
    answer.starts_with("SIP/2.0 401")
        && !www.is_empty()
        && www.iter().all(|l| l.ends_with(", stale=true"))
}

/// An `Authorization` header line answering `nonce` with `nc` (RFC 7616 §3.4.1, qop=auth).
fn digest_authorization(nonce: &str, nc: u32) -> String {
    digest_authorization_with("digest-secret", nonce, nc)
}

/// [`digest_authorization`] with `password`.
fn digest_authorization_with(password: &str, nonce: &str, nc: u32) -> String {
    let ha1 = sha256_hex(&format!("desk-7100:ccmsipline:{password}"));
    let ha2 = sha256_hex("REGISTER:sip:localhost");
    let response = sha256_hex(&format!("{ha1}:{nonce}:{nc:08x}:c0ffee:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"desk-7100\", realm=\"ccmsipline\", nonce=\"{nonce}\", \
         uri=\"sip:localhost\", response=\"{response}\", algorithm=SHA-256, cnonce=\"c0ffee\", \
         qop=auth, nc={nc:08x}\r\n"
    )
}

/// Two legacy nodes on one PostgreSQL with the Digest phone `desk-7100` (line 7100) provisioned
/// through A and known to B; the UDP socket the phone uses.
async fn legacy_cluster() -> Option<(Postgres, Node, Node, std::net::UdpSocket)> {
    let pg = Postgres::start()?;
    let a = Node::start_legacy("a", &pg.url()).await;
    let b = Node::start_legacy("b", &pg.url()).await;
    a.cli(&["user", "add", "desk"], Some("pw pw pw\n"));
    a.cli(
        &[
            "device",
            "add",
            "SEP00AABBCC7100",
            "--owner",
            "desk",
            "--line",
            "7100",
        ],
        None,
    );
    a.cli(
        &[
            "device",
            "digest",
            "SEP00AABBCC7100",
            "--username",
            "desk-7100",
        ],
        Some("digest-secret\n"),
    );
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Node B knows the credential once it registers the phone on its own nonce.
    let b_port = b.sip_port.unwrap();
    let mut cseq = 1;
    within(Duration::from_secs(2), "the credential on node b", || {
        cseq += 2;
        let nonce = sha256_nonce(&register_udp(&sock, b_port, cseq, ""));
        let ok = register_udp(&sock, b_port, cseq + 1, &digest_authorization(&nonce, 1))
            .starts_with("SIP/2.0 200");
        async move { ok }
    })
    .await;
    Some((pg, a, b, sock))
}

/// Node A challenges a legacy phone and the phone's answer reaches node B (DNS SRV failover, a
/// load balancer): B verifies A's nonce with the cluster's shared secret, sees the password is
/// right but the nonce is not its own, and challenges again with `stale=true`; the phone's retry on
/// B's nonce registers, and no failed authentication is logged for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_b_answers_node_a_nonce_with_a_stale_challenge_then_registers_on_its_own() {
    let Some((_pg, a, b, sock)) = legacy_cluster().await else {
        return;
    };
    let (a_port, b_port) = (a.sip_port.unwrap(), b.sip_port.unwrap());
    let challenge = register_udp(&sock, a_port, 100, "");
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let nonce = sha256_nonce(&challenge);
    let answer = register_udp(&sock, b_port, 101, &digest_authorization(&nonce, 1));
    assert!(
        is_stale_challenge(&answer),
        "node b did not answer node a's nonce with stale=true: {answer}\n--- node b log:\n{}",
        b.log()
    );
    let b_nonce = sha256_nonce(&answer);
    assert_ne!(b_nonce, nonce);
    let retry = register_udp(&sock, b_port, 102, &digest_authorization(&b_nonce, 1));
    assert!(retry.starts_with("SIP/2.0 200"), "{retry}");
    assert!(
        !b.log().contains("digest_failed"),
        "a correct password was logged as a failure:\n{}",
        b.log()
    );
    // Node A still accepts its own nonce, once per count.
    let on_a = register_udp(&sock, a_port, 103, &digest_authorization(&nonce, 1));
    assert!(on_a.starts_with("SIP/2.0 200"), "{on_a}");
    let replay = register_udp(&sock, a_port, 104, &digest_authorization(&nonce, 1));
    assert!(
        replay.starts_with("SIP/2.0 401") && !is_stale_challenge(&replay),
        "{replay}"
    );
}

/// A REGISTER captured on plain UDP after node A accepted it, sent byte for byte to node B within
/// the nonce's lifetime: B must not register it (it does not know which counts A has seen), only
/// challenge with `stale=true`; the same bytes sent to A again are a replayed count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_accepted_by_node_a_and_replayed_to_node_b_is_not_accepted() {
    let Some((_pg, a, b, sock)) = legacy_cluster().await else {
        return;
    };
    let (a_port, b_port) = (a.sip_port.unwrap(), b.sip_port.unwrap());
    let nonce = sha256_nonce(&register_udp(&sock, a_port, 200, ""));
    let captured = register_request(&sock, 201, &digest_authorization(&nonce, 1));
    let first = send_udp(&sock, a_port, &captured);
    assert!(first.starts_with("SIP/2.0 200"), "{first}");
    let on_b = send_udp(&sock, b_port, &captured);
    assert!(
        is_stale_challenge(&on_b),
        "node b accepted (or refused as unknown) a replay of node a's REGISTER: {on_b}\n--- node b log:\n{}",
        b.log()
    );
    let again = send_udp(&sock, b_port, &captured);
    assert!(is_stale_challenge(&again), "{again}");
    let on_a = send_udp(&sock, a_port, &captured);
    assert!(
        on_a.starts_with("SIP/2.0 401") && !is_stale_challenge(&on_a),
        "{on_a}"
    );
}

/// A single node on SQLite: the secret is read back from the store, so a nonce issued before a
/// restart is recognised after it, and, answered correctly, challenged again with `stale=true`
/// (not accepted: the restarted process does not know its counts, so the REGISTER accepted before
/// the restart, replayed byte for byte, must not register); the retry on the new nonce registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_nonce_issued_before_a_restart_is_challenged_as_stale_after_it() {
    let mut s = sipreg_e2e::Server::start().await;
    s.add_user_and_device("desk", "pw pw pw", "SEP00AABBCC7100", &["7100"], false);
    let (code, _, err) = s.cli(
        &[
            "device",
            "digest",
            "SEP00AABBCC7100",
            "--username",
            "desk-7100",
        ],
        Some("digest-secret\n"),
    );
    assert_eq!(code, 0, "{err}");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let nonce = sha256_nonce(&register_udp(&sock, s.sip_port, 1, ""));
    let captured = register_request(&sock, 2, &digest_authorization(&nonce, 1));
    let before = send_udp(&sock, s.sip_port, &captured);
    assert!(before.starts_with("SIP/2.0 200"), "{before}");
    s.restart().await;
    let replayed = send_udp(&sock, s.sip_port, &captured);
    assert!(
        is_stale_challenge(&replayed),
        "the restarted node did not answer the replay with stale=true: {replayed}\n--- log:\n{}",
        s.log()
    );
    // A wrong password on the old nonce is the ordinary failure, not stale.
    let wrong = register_udp(
        &sock,
        s.sip_port,
        3,
        &digest_authorization_with("guess", &nonce, 2),
    );
    assert!(
        wrong.starts_with("SIP/2.0 401") && !is_stale_challenge(&wrong),
        "{wrong}"
    );
    let after = register_udp(&sock, s.sip_port, 4, &digest_authorization(&nonce, 3));
    assert!(
        is_stale_challenge(&after),
        "the restarted node did not answer its old nonce with stale=true: {after}\n--- log:\n{}",
        s.log()
    );
    let retry = register_udp(
        &sock,
        s.sip_port,
        5,
        &digest_authorization(&sha256_nonce(&after), 1),
    );
    assert!(retry.starts_with("SIP/2.0 200"), "{retry}");
}
