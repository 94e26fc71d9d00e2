//! Prepares a sipreg server for a run through its public interfaces: one user owning devices of
//! up to 64 lines each (created concurrently through the admin API, so no Argon2 per AOR), cluster
//! OAuth mode on, and a file's worth of access tokens from the token endpoint.
//!
//! Tokens come from a few password grants (Argon2 each) followed by chains of refresh grants: a
//! refresh grant consumes its refresh token and returns a new access token and a new refresh token,
//! so each chain is sequential and several chains run side by side. The achieved refresh-grant
//! rate is reported, since the token endpoint has a target of its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;

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

    let (tokens, refresh_grants, refresh_time) = obtain_tokens(&http, opts).await?;
    Ok(ProvisionReport {
        devices,
        device_time,
        tokens,
        refresh_grants,
        refresh_time,
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
) -> Result<(Vec<String>, u64, Duration), ProvisionError> {
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
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (_, refresh) in starts {
        let (http, url, remaining) = (http.clone(), url.clone(), remaining.clone());
        tasks.spawn(async move {
            let mut refresh = refresh;
            let mut got = Vec::new();
            // Claim one token's worth of work at a time so chains share the total.
            while remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                .is_ok()
            {
                let (a, r) = token_call(
                    &http,
                    &url,
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &refresh),
                        ("client_id", "softphone"),
                    ],
                )
                .await?;
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
    Ok((tokens, grants, t0.elapsed()))
}
