//! Prepares a sipreg server for a run through its public interfaces: one user owning devices of
//! up to 64 lines each (created concurrently through the admin API, so no Argon2 per AOR), cluster
//! OAuth mode on, and a file's worth of access tokens from the token endpoint.
//!
//! Tokens come from a few password grants (Argon2 each) followed by chains of refresh grants: a
//! refresh grant consumes its refresh token and returns a new access token and a new refresh token,
//! so each chain is sequential and several chains run side by side. The achieved refresh-grant
//! rate is reported, since the token endpoint has a target of its own, with the CPU time the
//! generator and (given its PID) the server spent per refresh grant.
//!
//! The refresh chains do not use reqwest: the generator shares the server's cores, so each chain
//! holds one keep-alive HTTP/1.1 connection and writes its form POST and reads the JSON answer by
//! hand ([`TokenConn`]), which costs a fraction of a general client's CPU per request.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::cpu::{CpuProbe, CpuReport};

/// Errors of provisioning.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The CA file is unreadable or not PEM.
    #[error("ca {0}: {1}")]
    Ca(PathBuf, String),
    /// The HTTP client could not be built or a request failed to complete.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server refused a request.
    #[error("{what}: status {status}: {body}")]
    Refused {
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// A token response lacked a field.
    #[error("token response without {0}")]
    TokenResponse(&'static str),
    /// A worker task failed.
    #[error("task failed: {0}")]
    Task(String),
    /// A token-endpoint connection failed or answered something that is not HTTP/1.1.
    #[error("token endpoint: {0}")]
    TokenConn(String),
}

/// What to create.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// Base URL of the token service and admin API, e.g. `https://localhost:8443`.
    pub api: String,
    /// CA certificate (PEM) of the server.
    pub ca: PathBuf,
    /// The admin token.
    pub admin_token: String,
    /// User owning every device.
    pub user: String,
    /// That user's password.
    pub password: String,
    /// AORs to make registrable.
    pub aors: u64,
    /// First line number.
    pub line_base: u64,
    /// Device name prefix.
    pub device_prefix: String,
    /// Lines per device (at most 64).
    pub lines_per_device: u64,
    /// Access tokens to obtain.
    pub tokens: usize,
    /// Parallel token chains (one password grant each).
    pub chains: usize,
    /// Admin API requests in flight.
    pub concurrency: usize,
    /// PID of the server, to report its CPU time per refresh grant.
    pub server_pid: Option<u32>,
}

/// What provisioning did and how fast.
#[derive(Debug, Clone)]
pub struct ProvisionReport {
    /// Devices created (or found existing).
    pub devices: u64,
    /// Time spent creating devices.
    pub device_time: Duration,
    /// Access tokens obtained.
    pub tokens: Vec<String>,
    /// Refresh grants performed.
    pub refresh_grants: u64,
    /// Time spent on refresh grants (wall time of all chains together).
    pub refresh_time: Duration,
    /// CPU spent by the generator and (given its PID) the server during the refresh grants.
    pub refresh_cpu: CpuReport,
}

impl ProvisionReport {
    /// Refresh grants per second.
    pub fn refresh_rate(&self) -> f64 {
        let s = self.refresh_time.as_secs_f64();
        if s > 0.0 {
            self.refresh_grants as f64 / s
        } else {
            0.0
        }
    }

    /// Server CPU per refresh grant, µs (when its PID was given).
    pub fn server_us_per_grant(&self) -> Option<f64> {
        self.per_grant(self.refresh_cpu.server)
    }

    /// Generator CPU per refresh grant, µs.
    pub fn load_us_per_grant(&self) -> Option<f64> {
        self.per_grant(self.refresh_cpu.load)
    }

    fn per_grant(&self, cpu: Option<Duration>) -> Option<f64> {
        (self.refresh_grants > 0).then_some(cpu?.as_secs_f64() * 1e6 / self.refresh_grants as f64)
    }
}

/// An HTTPS client trusting `ca` (the aws-lc-rs rustls provider must be installed).
pub fn http_client(ca: &std::path::Path) -> Result<reqwest::Client, ProvisionError> {
    let pem = std::fs::read(ca).map_err(|e| ProvisionError::Ca(ca.into(), e.to_string()))?;
    let cert = reqwest::Certificate::from_pem(&pem)
        .map_err(|e| ProvisionError::Ca(ca.into(), e.to_string()))?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(cert)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn expect_ok(
    what: impl Into<String>,
    resp: reqwest::Response,
    also_ok: &[u16],
) -> Result<Value, ProvisionError> {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if (200..300).contains(&status) || also_ok.contains(&status) {
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    } else {
        Err(ProvisionError::Refused {
            what: what.into(),
            status,
            body,
        })
    }
}

/// Creates the user, the devices and OAuth mode, then obtains the tokens.
pub async fn provision(opts: &ProvisionOptions) -> Result<ProvisionReport, ProvisionError> {
    let http = http_client(&opts.ca)?;
    let api = format!("{}/api/v1", opts.api.trim_end_matches('/'));
    let auth = format!("Bearer {}", opts.admin_token);

    // 409: left over from an earlier run against the same data dir; that is fine.
    let r = http
        .post(format!("{api}/users"))
        .header("Authorization", &auth)
        .json(&json!({"id": opts.user, "password": opts.password}))
        .send()
        .await?;
    expect_ok("create user", r, &[409]).await?;

    let lpd = opts.lines_per_device.clamp(1, 64);
    let devices = opts.aors.div_ceil(lpd);
    let t0 = Instant::now();
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for d in 0..devices {
        let first = opts.line_base + d * lpd;
        let last = (opts.line_base + opts.aors).min(first + lpd);
        let lines: Vec<String> = (first..last).map(|l| l.to_string()).collect();
        let body = json!({
            "name": format!("{}{d}", opts.device_prefix),
            "owner": opts.user,
            "lines": lines,
            "oauth": true,
        });
        let (http, url, auth, permits) = (
            http.clone(),
            format!("{api}/devices"),
            auth.clone(),
            permits.clone(),
        );
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await;
            let r = http
                .post(url)
                .header("Authorization", auth)
                .json(&body)
                .send()
                .await?;
            expect_ok(format!("create device {d}"), r, &[409]).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| ProvisionError::Task(e.to_string()))??;
    }
    let device_time = t0.elapsed();

    let r = http
        .put(format!("{api}/oauth-mode"))
        .header("Authorization", &auth)
        .json(&json!({"enabled": true}))
        .send()
        .await?;
    expect_ok("enable oauth mode", r, &[]).await?;

    let (tokens, refresh_grants, refresh_time, refresh_cpu) = obtain_tokens(&http, opts).await?;
    Ok(ProvisionReport {
        devices,
        device_time,
        tokens,
        refresh_grants,
        refresh_time,
        refresh_cpu,
    })
}

async fn token_call(
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(String, String), ProvisionError> {
    let r = http.post(url).form(form).send().await?;
    let v = expect_ok("token request", r, &[]).await?;
    let access = v["access_token"]
        .as_str()
        .ok_or(ProvisionError::TokenResponse("access_token"))?;
    let refresh = v["refresh_token"]
        .as_str()
        .ok_or(ProvisionError::TokenResponse("refresh_token"))?;
    Ok((access.to_owned(), refresh.to_owned()))
}

async fn obtain_tokens(
    http: &reqwest::Client,
    opts: &ProvisionOptions,
) -> Result<(Vec<String>, u64, Duration, CpuReport), ProvisionError> {
    let url = format!("{}/oauth/token", opts.api.trim_end_matches('/'));
    let chains = opts.chains.clamp(1, opts.tokens.max(1));
    let mut starts = Vec::with_capacity(chains);
    for _ in 0..chains.min(opts.tokens) {
        starts.push(
            token_call(
                http,
                &url,
                &[
                    ("grant_type", "password"),
                    ("username", &opts.user),
                    ("password", &opts.password),
                    ("client_id", "softphone"),
                ],
            )
            .await?,
        );
    }
    let mut tokens: Vec<String> = starts.iter().map(|(a, _)| a.clone()).collect();
    let remaining = Arc::new(AtomicUsize::new(opts.tokens.saturating_sub(tokens.len())));
    let endpoint = Arc::new(TokenEndpoint::new(&opts.api, &opts.ca)?);
    // Connections first, so the measured phase holds refresh grants only.
    let mut conns = Vec::with_capacity(starts.len());
    for _ in &starts {
        conns.push(endpoint.connect().await?);
    }
    let probe = CpuProbe::start(opts.server_pid);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for ((_, refresh), mut conn) in starts.into_iter().zip(conns) {
        let remaining = remaining.clone();
        tasks.spawn(async move {
            let mut refresh = refresh;
            let mut got = Vec::new();
            let mut body = String::with_capacity(128);
            // Claim one token's worth of work at a time so chains share the total.
            while remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                .is_ok()
            {
                body.clear();
                // Our refresh tokens are base64url: nothing in them needs form-encoding.
                body.push_str("grant_type=refresh_token&client_id=softphone&refresh_token=");
                body.push_str(&refresh);
                let (a, r) = conn.refresh(&body).await?;
                got.push(a);
                refresh = r;
            }
            Ok::<_, ProvisionError>(got)
        });
    }
    let mut grants = 0u64;
    while let Some(r) = tasks.join_next().await {
        let got = r.map_err(|e| ProvisionError::Task(e.to_string()))??;
        grants += got.len() as u64;
        tokens.extend(got);
    }
    let elapsed = t0.elapsed();
    Ok((tokens, grants, elapsed, probe.finish()))
}

/// Largest response head or body [`TokenConn`] accepts; a token response is under 1 KiB.
const MAX_RESPONSE: usize = 64 * 1024;
/// Longest wait for one token response.
const TOKEN_CALL_LIMIT: Duration = Duration::from_secs(30);

/// Where the token endpoint is and how to reach it over TLS.
struct TokenEndpoint {
    connector: TlsConnector,
    host: String,
    port: u16,
    name: ServerName<'static>,
}

impl TokenEndpoint {
    /// `api` as `https://host:port[/...]`; `ca` is the server's CA (PEM).
    fn new(api: &str, ca: &std::path::Path) -> Result<Self, ProvisionError> {
        let bad = || ProvisionError::TokenConn(format!("{api}: expected https://host:port"));
        let authority = api
            .strip_prefix("https://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(bad)?;
        let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(host.clone()).map_err(|_| bad())?;
        let mut cfg = crate::transport::client_config(ca)
            .map_err(|e| ProvisionError::Ca(ca.into(), e.to_string()))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            connector: TlsConnector::from(Arc::new(cfg)),
            host,
            port,
            name,
        })
    }

    async fn connect(&self) -> Result<TokenConn, ProvisionError> {
        let io = |e: std::io::Error| ProvisionError::TokenConn(e.to_string());
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let stream = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(io)?;
        let head = format!(
            "POST /oauth/token HTTP/1.1\r\nhost: {}:{}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: ",
            self.host, self.port
        );
        Ok(TokenConn {
            stream,
            head,
            out: Vec::with_capacity(512),
            buf: Vec::with_capacity(4096),
        })
    }
}

/// One keep-alive HTTP/1.1 connection to `POST /oauth/token`: a fixed request head and one read
/// buffer reused for every answer.
struct TokenConn {
    stream: TlsStream<TcpStream>,
    /// The request head up to the `content-length` value.
    head: String,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl TokenConn {
    /// Sends one form-encoded token request; the new access and refresh tokens.
    async fn refresh(&mut self, form: &str) -> Result<(String, String), ProvisionError> {
        self.out.clear();
        self.out.extend_from_slice(self.head.as_bytes());
        self.out
            .extend_from_slice(format!("{}\r\n\r\n", form.len()).as_bytes());
        self.out.extend_from_slice(form.as_bytes());
        let (status, body) = tokio::time::timeout(TOKEN_CALL_LIMIT, self.exchange())
            .await
            .map_err(|_| ProvisionError::TokenConn("no answer within 30 s".into()))??;
        if status != 200 {
            return Err(ProvisionError::Refused {
                what: "refresh grant".into(),
                status,
                body: String::from_utf8_lossy(&self.buf[body]).into_owned(),
            });
        }
        let v: Value = serde_json::from_slice(&self.buf[body]).unwrap_or(Value::Null);
        let member = |name: &'static str| {
            v[name]
                .as_str()
                .map(str::to_owned)
                .ok_or(ProvisionError::TokenResponse(name))
        };
        Ok((member("access_token")?, member("refresh_token")?))
    }

    /// Writes `out` and reads one response into `buf`: its status and where its body is.
    async fn exchange(&mut self) -> Result<(u16, std::ops::Range<usize>), ProvisionError> {
        let io = |e: std::io::Error| ProvisionError::TokenConn(e.to_string());
        let bad = |why: &str| ProvisionError::TokenConn(why.to_owned());
        self.stream.write_all(&self.out).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_RESPONSE {
                return Err(bad("response head too long"));
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("head not utf-8"))?;
        let status: u16 = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("not an HTTP/1.1 status line"))?;
        // hyper sends content-length for a body of known size, as axum's JSON bodies are.
        let length: usize = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .ok_or_else(|| bad("response without content-length"))?;
        if length > MAX_RESPONSE {
            return Err(bad("response body too long"));
        }
        while self.buf.len() < head_end + length {
            self.read_more().await?;
        }
        Ok((status, head_end..head_end + length))
    }

    async fn read_more(&mut self) -> Result<(), ProvisionError> {
        let mut chunk = [0u8; 4096];
        let n = self
            .stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProvisionError::TokenConn(e.to_string()))?;
        if n == 0 {
            return Err(ProvisionError::TokenConn(
                "server closed the connection".into(),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
