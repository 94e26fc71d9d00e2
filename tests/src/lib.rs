//! End-to-end harness: starts the real `sipreg` binary on ephemeral ports in a temp data dir and
//! talks to it over real sockets — HTTPS (reqwest), SIP over TLS (tokio-rustls), plain HTTP.
//!
//! The binary is found through `SIPREG_BIN`, else `target/debug/sipreg` next to this workspace
//! (`scripts/test` builds it first; a binary older than the server's sources is refused).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub mod jwt;
pub mod peers;
pub mod pki;

/// Path of the `sipreg` binary under test.
pub fn sipreg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SIPREG_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug/sipreg");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p sipreg` (scripts/test does)",
        p.display()
    );
    // `cargo test -p sipreg-e2e` does not rebuild the server: refuse to test an old one.
    static CHECKED: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    if let Some(newer) = CHECKED.get_or_init(|| newer_source_than(&p)) {
        panic!(
            "{} is older than {}: run `cargo build -p sipreg` (scripts/test does), or set SIPREG_BIN",
            p.display(),
            newer.display()
        );
    }
    p
}

/// A source file of the server's crates modified after `bin` was built, if there is one.
fn newer_source_than(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut pending: Vec<PathBuf> = [
        "sipreg",
        "registrar",
        "tokensvc",
        "tftp-config",
        "certs",
        "store",
    ]
    .iter()
    .flat_map(|c| [root.join(c).join("src"), root.join(c).join("Cargo.toml")])
    .collect();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).into_iter().flatten().flatten();
            pending.extend(entries.map(|e| e.path()));
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Some(path);
        }
    }
    None
}

/// Installs aws-lc-rs as the process's rustls provider (reqwest needs one; ring is not built).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a missing external peer must fail the test (CI) rather than skip it.
pub fn peers_required() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// A running `sipreg serve`.
pub struct Server {
    /// The temp dir holding the data dir and logs; kept alive with the server.
    pub dir: tempfile::TempDir,
    /// The data dir.
    pub data_dir: PathBuf,
    /// HTTPS port (token service, admin API).
    pub https_port: u16,
    /// Device config HTTP port.
    pub config_port: u16,
    /// SIP OAuth port.
    pub sip_oauth_port: u16,
    /// SIP MRA OAuth port (unless the test named one itself).
    pub sip_mra_oauth_port: u16,
    /// Legacy SIP UDP/TCP port (unless the test named one itself).
    pub sip_port: u16,
    /// Legacy SIP TLS port (unless the test named one itself).
    pub secured_sip_port: u16,
    child: Option<Child>,
    http: reqwest::Client,
    admin_token: String,
    extra_args: Vec<String>,
}

impl Server {
    /// Starts a fresh server.
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts a fresh server with extra `serve` arguments.
    pub async fn start_with(extra: &[&str]) -> Server {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut s = Server {
            data_dir,
            dir,
            https_port: free_port(),
            config_port: free_port(),
            sip_oauth_port: free_port(),
            sip_mra_oauth_port: free_port(),
            sip_port: free_port(),
            secured_sip_port: free_port(),
            child: None,
            http: reqwest::Client::new(),
            admin_token: String::new(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn().await;
        s
    }

    /// Ports the tests do not name explicitly: a free HTTPS config port, TFTP off (UDP 69 is shared).
    fn default_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.extra_args.iter().any(|a| a == "--config-https-port") {
            v.extend(["--config-https-port".to_string(), free_port().to_string()]);
        }
        if !self
            .extra_args
            .iter()
            .any(|a| a == "--sip-port" || a == "--no-legacy")
        {
            v.extend(["--sip-port".to_string(), self.sip_port.to_string()]);
            v.extend([
                "--secured-sip-port".to_string(),
                self.secured_sip_port.to_string(),
            ]);
        }
        if !self.extra_args.iter().any(|a| a == "--sip-mra-oauth-port") {
            v.extend([
                "--sip-mra-oauth-port".to_string(),
                self.sip_mra_oauth_port.to_string(),
            ]);
        }
        if !self.extra_args.iter().any(|a| a == "--tftp-port") {
            v.extend(["--tftp-port".to_string(), "0".to_string()]);
        }
        v
    }

    /// Starts the server. `free_port()` only finds a port that was free a moment ago; when another
    /// test grabs it first the server refuses to start with "Address already in use", so the ports
    /// this harness chose are picked again and the start retried (a few times at most).
    async fn spawn(&mut self) {
        for _ in 0..4 {
            let before = self.log().len();
            if self.spawn_once().await {
                return;
            }
            let fresh = &self.log()[before..];
            assert!(
                fresh.contains("Address already in use"),
                "sipreg exited early:\n{}",
                self.log()
            );
            self.https_port = free_port();
            self.config_port = free_port();
            self.sip_oauth_port = free_port();
            self.sip_mra_oauth_port = free_port();
            self.sip_port = free_port();
            self.secured_sip_port = free_port();
        }
        panic!(
            "sipreg could not find free ports in four tries:\n{}",
            self.log()
        );
    }

    /// One start; `false` when the process exited before it was ready.
    async fn spawn_once(&mut self) -> bool {
        // The server writes api-url once it listens; a stale one from a previous run must not count.
        let _ = std::fs::remove_file(self.data_dir.join("api-url"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(sipreg_bin())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("serve")
            .args([
                "--bind",
                "127.0.0.1",
                "--public-host",
                "localhost",
                "--node-name",
                "node1",
            ])
            .args(["--https-port", &self.https_port.to_string()])
            .args(["--config-http-port", &self.config_port.to_string()])
            .args(["--sip-oauth-port", &self.sip_oauth_port.to_string()])
            .args(self.default_args())
            .args(&self.extra_args)
            .env("SIPREG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sipreg");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            let ready = std::net::TcpStream::connect(("127.0.0.1", self.https_port)).is_ok()
                && self.data_dir.join("api-url").exists();
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sipreg did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.admin_token = self.admin_token();
        let tls = client_tls(&self.ca_pem());
        self.http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap();
        true
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The CA certificate PEM from the data dir.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("tls/ca.pem")).unwrap()
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!(
                        "sipreg did not stop on SIGTERM within 15 s:\n{}",
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Stops and starts the server again on the same data dir and ports.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// HTTPS base URL.
    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.https_port)
    }

    /// The reqwest client trusting the server's CA.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Calls the admin API; returns status and JSON body (Null when empty).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1/{path}", self.base()))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Runs the `sipreg` CLI against this server; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut child = Command::new(sipreg_bin())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut si = child.stdin.take().unwrap();
            if let Some(s) = stdin {
                si.write_all(s.as_bytes()).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Adds a user and a device through the CLI, asserting success.
    pub fn add_user_and_device(
        &self,
        user: &str,
        password: &str,
        device: &str,
        lines: &[&str],
        oauth: bool,
    ) {
        let (code, _, err) = self.cli(&["user", "add", user], Some(&format!("{password}\n")));
        assert_eq!(code, 0, "user add: {err}");
        let mut args = vec!["device", "add", device, "--owner", user];
        for l in lines {
            args.push("--line");
            args.push(l);
        }
        if oauth {
            args.push("--oauth");
        }
        let (code, _, err) = self.cli(&args, None);
        assert_eq!(code, 0, "device add: {err}");
    }

    /// Sets cluster OAuth mode through the CLI.
    pub fn oauth_mode(&self, on: bool) {
        let (code, out, err) =
            self.cli(&["oauth-mode", if on { "enable" } else { "disable" }], None);
        assert_eq!(code, 0, "oauth-mode: {out}{err}");
    }

    /// POSTs a form to `/oauth/token`; returns status and JSON.
    pub async fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/oauth/token", self.base()))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Password grant for the default `softphone` client; returns status and JSON.
    pub async fn password_grant(&self, user: &str, password: &str) -> (u16, Value) {
        self.token_request(&[
            ("grant_type", "password"),
            ("username", user),
            ("password", password),
            ("client_id", "softphone"),
        ])
        .await
    }

    /// Password grant for the default `softphone` client; panics unless it succeeds.
    pub async fn password_token(&self, user: &str, password: &str) -> Value {
        let (status, body) = self.password_grant(user, password).await;
        assert_eq!(status, 200, "password grant: {body}");
        body
    }

    /// The access token of a successful password grant (see [`Server::password_token`]).
    pub async fn access_token(&self, user: &str, password: &str) -> String {
        self.password_token(user, password).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The authorization server metadata (`/.well-known/oauth-authorization-server`).
    pub async fn oauth_metadata(&self) -> Value {
        self.http
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                self.base()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// PATCHes this node (`nodes/node1`) through the admin API; returns status and JSON.
    pub async fn patch_node(&self, body: Value) -> (u16, Value) {
        self.api(reqwest::Method::PATCH, "nodes/node1", Some(body))
            .await
    }

    /// The admin token as the data dir holds it now.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// One REGISTER of `line` with `token` on a fresh connection; returns the status code.
    pub async fn register_once(&self, line: &str, call_id: &str, token: &str) -> u16 {
        let mut c = self.sip_connect().await.unwrap();
        let msg = Register::new(line, call_id, 1, c.local)
            .bearer(token)
            .build();
        c.request(&msg).await.unwrap().code
    }

    /// GETs a device config file over plain HTTP; returns status and body.
    pub async fn config_file(&self, name: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/{name}", self.config_port))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Opens a TLS connection to the SIP OAuth port.
    pub async fn sip_connect(&self) -> std::io::Result<SipClient> {
        SipClient::connect(
            SocketAddr::from(([127, 0, 0, 1], self.sip_oauth_port)),
            &self.ca_pem(),
        )
        .await
    }

    /// The active signing key (kid, PKCS#8 PEM) read from the server's database, to forge tokens
    /// with a genuine signature but bad claims.
    pub fn signing_key(&self) -> (String, String) {
        let db = rusqlite::Connection::open(self.data_dir.join("sipreg.db")).unwrap();
        db.query_row(
            "SELECT kid, private_pem FROM signing_keys WHERE active = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A rustls client config trusting `ca_pem`, TLS 1.2+.
pub fn client_tls(ca_pem: &[u8]) -> rustls::ClientConfig {
    client_tls_as(ca_pem, None)
}

/// A rustls client config trusting `ca_pem`, TLS 1.2+, presenting `identity` (certificate PEM,
/// key PEM) when the server asks for one.
pub fn client_tls_as(ca_pem: &[u8], identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// A SIP UA over TLS that sends requests and reads framed responses.
pub struct SipClient {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    /// Local address, used in Via and Contact.
    pub local: SocketAddr,
}

/// A parsed SIP response.
#[derive(Debug, Clone)]
pub struct SipResponse {
    /// Status code.
    pub code: u16,
    /// The whole message text.
    pub text: String,
}

impl SipResponse {
    /// All values of a header (case-insensitive name).
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }
}

impl SipClient {
    /// Connects with TLS, verifying the server against `ca_pem` as `localhost`.
    pub async fn connect(addr: SocketAddr, ca_pem: &[u8]) -> std::io::Result<SipClient> {
        let tcp = TcpStream::connect(addr).await?;
        let local = tcp.local_addr()?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca_pem)));
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        Ok(SipClient {
            stream,
            buf: Vec::new(),
            local,
        })
    }

    /// Hex SHA-256 of the certificate the server presented on this connection.
    pub fn peer_sha256(&self) -> String {
        use sha2::Digest;
        let certs = self
            .stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("server certificate");
        sha2::Sha256::digest(certs[0].as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads one response (Content-Length framed), with a 10 s timeout. `None` when the server closed.
    pub async fn read_response(&mut self) -> Option<SipResponse> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let cl: usize = head
                        .split("\r\n")
                        .filter_map(|l| l.split_once(':'))
                        .find(|(n, _)| {
                            n.trim().eq_ignore_ascii_case("content-length") || n.trim() == "l"
                        })
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    if self.buf.len() >= end + 4 + cl {
                        let msg: Vec<u8> = self.buf.drain(..end + 4 + cl).collect();
                        let text = String::from_utf8_lossy(&msg).into_owned();
                        let code = text
                            .split(' ')
                            .nth(1)
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        return Some(SipResponse { code, text });
                    }
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("no SIP response within 10 s")
    }

    /// Sends a request and reads its response.
    pub async fn request(&mut self, msg: &str) -> Option<SipResponse> {
        self.send_raw(msg.as_bytes()).await;
        self.read_response().await
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Builds a REGISTER for `aor_user@localhost`.
pub struct Register<'a> {
    /// The AOR's user part (a line).
    pub user: &'a str,
    /// Call-ID.
    pub call_id: &'a str,
    /// CSeq number.
    pub cseq: u32,
    /// Extra header lines, each without CRLF.
    pub extra: Vec<String>,
    /// Contact header value; `None` for a query.
    pub contact: Option<String>,
}

impl<'a> Register<'a> {
    /// A REGISTER with a Contact on `local`.
    pub fn new(user: &'a str, call_id: &'a str, cseq: u32, local: SocketAddr) -> Self {
        Register {
            user,
            call_id,
            cseq,
            extra: Vec::new(),
            contact: Some(format!("<sip:{user}@{local};transport=tls>")),
        }
    }

    /// Adds a header line.
    pub fn header(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header(format!("Authorization: Bearer {token}"))
    }

    /// Renders the request text.
    pub fn build(&self) -> String {
        let mut m = format!(
            "REGISTER sip:localhost SIP/2.0\r\n\
             Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK{}{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{u}@localhost>;tag=e2e{c}\r\n\
             To: <sip:{u}@localhost>\r\n\
             Call-ID: {ci}\r\n\
             CSeq: {c} REGISTER\r\n",
            self.call_id.len(),
            self.cseq,
            u = self.user,
            c = self.cseq,
            ci = self.call_id
        );
        if let Some(c) = &self.contact {
            m.push_str(&format!("Contact: {c}\r\n"));
        }
        for h in &self.extra {
            m.push_str(h);
            m.push_str("\r\n");
        }
        m.push_str("Content-Length: 0\r\n\r\n");
        m
    }
}
