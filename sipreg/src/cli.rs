//! The CLI: a client of the admin API that finds the admin token, CA and API URL in the data dir.
//!
//! Exit codes scripts can rely on: 0 success, 1 the API refused (the problem is printed), 3 the
//! server could not be reached or the client is misconfigured (the message names the fix).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// How to reach the admin API.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// Admin API base URL (default: the data dir's `api-url`, else https://localhost:8443).
    #[arg(long, global = true, env = "SIPREG_API_URL")]
    api_url: Option<String>,
    /// Admin token (default: the data dir's `admin-token` file).
    #[arg(
        long,
        global = true,
        env = "SIPREG_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// CA certificate to trust (default: the data dir's `tls/ca.pem`).
    #[arg(long, global = true, env = "SIPREG_CA")]
    ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// `sipreg oauth-mode ...`
#[derive(Subcommand)]
pub enum OAuthModeAction {
    /// Turn cluster SIP OAuth mode on: the SIP OAuth port opens at once.
    Enable,
    /// Turn it off: the SIP OAuth port closes at once.
    Disable,
    /// Show whether it is on.
    Status,
}

/// `sipreg user ...`
#[derive(Subcommand)]
pub enum UserAction {
    /// Add a user; the password is read from standard input.
    Add {
        /// User id.
        name: String,
    },
    /// List users.
    List,
    /// Change a user's password; the new one is read from standard input.
    Passwd {
        /// User id.
        name: String,
    },
    /// Delete a user with its devices and tokens.
    Delete {
        /// User id.
        name: String,
    },
    /// Revoke the user's refresh tokens (all, or one client's); the user's access tokens fail at
    /// the registrar at once.
    #[command(name = "revoke-tokens")]
    RevokeTokens {
        /// User id.
        name: String,
        /// Only this client's refresh tokens.
        #[arg(long = "client")]
        client_id: Option<String>,
        /// Also remove the user's live registrations at once.
        #[arg(long)]
        drop_registrations: bool,
    },
}

/// `sipreg device ...`
#[derive(Subcommand)]
pub enum DeviceAction {
    /// Add a device.
    Add {
        /// Device name, e.g. CSFjdoe or SEP001122334455.
        name: String,
        /// The owning user.
        #[arg(long)]
        owner: String,
        /// A directory number; repeat for more lines.
        #[arg(long = "line", required = true)]
        lines: Vec<String>,
        /// Without --profile: use the default OAuth security profile.
        #[arg(long)]
        oauth: bool,
        /// The device model (default "Cisco Unified Client Services Framework").
        #[arg(long)]
        model: Option<String>,
        /// The security profile's name (see `sipreg profile list`).
        #[arg(long, conflicts_with = "oauth")]
        profile: Option<String>,
    },
    /// Set the device's Digest credential for the legacy ports; the password is read from stdin.
    Digest {
        /// Device name.
        name: String,
        /// Digest user name.
        #[arg(long, required_unless_present = "clear")]
        username: Option<String>,
        /// Remove the credential instead.
        #[arg(long)]
        clear: bool,
    },
    /// Change a device's owner, lines or OAuth profile flag.
    Set {
        /// Device name.
        name: String,
        /// New owner.
        #[arg(long)]
        owner: Option<String>,
        /// Replace the lines (repeat for more).
        #[arg(long = "line")]
        lines: Vec<String>,
        /// Switch to the default OAuth (true) or non-OAuth (false) security profile, unless the
        /// device's profile already says so.
        #[arg(long)]
        oauth: Option<bool>,
        /// New device model.
        #[arg(long)]
        model: Option<String>,
        /// New security profile (by name).
        #[arg(long, conflicts_with = "oauth")]
        profile: Option<String>,
    },
    /// List devices.
    List,
    /// Delete a device.
    Delete {
        /// Device name.
        name: String,
    },
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    json: bool,
}

pub(crate) enum Failure {
    /// The API answered with a problem.
    Api(String),
    /// The client could not do its job.
    Setup(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        match self {
            Failure::Api(m) => {
                eprintln!("sipreg: {m}");
                ExitCode::from(1)
            }
            Failure::Setup(m) => {
                eprintln!("sipreg: {m}");
                ExitCode::from(3)
            }
        }
    }
}

fn read_trimmed(path: &Path, fix: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| Failure::Setup(format!("cannot read {}: {e}; {fix}", path.display())))
}

impl Client {
    pub(crate) fn new(data_dir: &Path, a: ApiArgs) -> Result<Client, Failure> {
        let fix =
            "run `sipreg serve` with this --data-dir first, or pass --api-url, --token and --ca";
        let token = match a.token {
            Some(t) => t,
            None => read_trimmed(&data_dir.join("admin-token"), fix)?,
        };
        let base = match a.api_url {
            Some(u) => u,
            None => read_trimmed(&data_dir.join("api-url"), fix)
                .unwrap_or_else(|_| "https://localhost:8443".into()),
        };
        let explicit_ca = a.ca.is_some();
        let ca_path = a.ca.unwrap_or_else(|| data_dir.join("tls").join("ca.pem"));
        let mut ca = std::fs::read(&ca_path).map_err(|e| {
            Failure::Setup(format!(
                "cannot read CA certificate {}: {e}; {fix}",
                ca_path.display()
            ))
        })?;
        // An installed server certificate chains to the operator's root, kept next to ca.pem.
        if !explicit_ca {
            let tls_dir = data_dir.join("tls");
            let paths = sipreg_certs::PkiPaths::in_dir(&tls_dir);
            if let Ok(root) = std::fs::read(sipreg_certs::server_ca_file(&paths)) {
                ca.push(b'\n');
                ca.extend_from_slice(&root);
            }
        }
        let tls = sipreg_certs::client_config(&ca)
            .map_err(|e| Failure::Setup(format!("CA certificate: {e}")))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Failure::Setup(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            json: a.json,
        })
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::Setup(format!(
                "cannot reach the admin API at {url}: {e}; is `sipreg serve` running? (--api-url)"
            ))
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            });
        }
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        Err(Failure::Api(format!(
            "{} {}: {detail}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )))
    }

    pub(crate) fn print(&self, v: &Value, table: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            table(v)
        }
    }
}

/// The strings of a JSON array (empty for anything else), for printing lists in tables.
pub(crate) fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

pub(crate) fn done(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

/// Runs `sipreg oauth-mode ...`.
pub async fn oauth_mode(data_dir: &Path, a: ApiArgs, action: OAuthModeAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            let v = match action {
                OAuthModeAction::Enable => {
                    c.call(
                        reqwest::Method::PUT,
                        "oauth-mode",
                        Some(json!({"enabled": true})),
                    )
                    .await?
                }
                OAuthModeAction::Disable => {
                    c.call(
                        reqwest::Method::PUT,
                        "oauth-mode",
                        Some(json!({"enabled": false})),
                    )
                    .await?
                }
                OAuthModeAction::Status => c.call(reqwest::Method::GET, "oauth-mode", None).await?,
            };
            c.print(&v, |v| {
                let on = v.get("enabled").and_then(Value::as_bool).unwrap_or(false);
                println!(
                    "cluster SIP OAuth mode: {}",
                    if on { "enabled" } else { "disabled" }
                );
            });
            Ok(())
        }
        .await,
    )
}

/// Runs `sipreg user ...`.
pub async fn user(data_dir: &Path, a: ApiArgs, action: UserAction) -> ExitCode {
    done(async {
        let c = Client::new(data_dir, a)?;
        match action {
            UserAction::Add { name } => {
                let mut password = String::new();
                std::io::stdin()
                    .read_to_string(&mut password)
                    .map_err(|e| Failure::Setup(format!("cannot read the password from standard input: {e}")))?;
                let password = password.trim_end_matches(['\r', '\n']).to_owned();
                if password.is_empty() {
                    return Err(Failure::Setup("no password on standard input; pipe it in: `echo secret | sipreg user add NAME`".into()));
                }
                let v = c.call(reqwest::Method::POST, "users", Some(json!({"id": name, "password": password}))).await?;
                c.print(&v, |_| println!("user {name} added"));
            }
            UserAction::List => {
                let v = c.call(reqwest::Method::GET, "users", None).await?;
                c.print(&v, |v| {
                    println!("{:<32} CREATED", "USER");
                    for u in v.as_array().into_iter().flatten() {
                        println!("{:<32} {}", u["id"].as_str().unwrap_or(""), u["created_at"]);
                    }
                });
            }
            UserAction::RevokeTokens { name, client_id, drop_registrations } => {
                crate::cli_tokens::revoke_user_tokens(&c, &name, client_id.as_deref(), drop_registrations).await?;
            }
            UserAction::Passwd { name } => {
                let mut password = String::new();
                std::io::stdin()
                    .read_to_string(&mut password)
                    .map_err(|e| Failure::Setup(format!("cannot read the password from standard input: {e}")))?;
                let password = password.trim_end_matches(['\r', '\n']).to_owned();
                if password.is_empty() {
                    return Err(Failure::Setup("no password on standard input; pipe it in: `echo secret | sipreg user passwd NAME`".into()));
                }
                let v = c.call(reqwest::Method::PATCH, &format!("users/{name}"), Some(json!({"password": password}))).await?;
                c.print(&v, |_| println!("user {name}: password changed"));
            }
            UserAction::Delete { name } => {
                c.call(reqwest::Method::DELETE, &format!("users/{name}"), None).await?;
                c.print(&json!({"deleted": name}), |_| println!("user {name} deleted"));
            }
        }
        Ok(())
    }
    .await)
}

/// Runs `sipreg device ...`.
pub async fn device(data_dir: &Path, a: ApiArgs, action: DeviceAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                DeviceAction::Add {
                    name,
                    owner,
                    lines,
                    oauth,
                    model,
                    profile,
                } => {
                    let mut body = json!({"name": name, "owner": owner, "lines": lines});
                    if oauth {
                        body["oauth"] = json!(true);
                    }
                    if let Some(m) = model {
                        body["model"] = json!(m);
                    }
                    if let Some(p) = profile {
                        body["profile"] = json!(p);
                    }
                    let v = c.call(reqwest::Method::POST, "devices", Some(body)).await?;
                    c.print(&v, |_| println!("device {name} added"));
                }
                DeviceAction::Digest { name, username, clear } => {
                if clear {
                    c.call(reqwest::Method::DELETE, &format!("devices/{name}/digest"), None).await?;
                    c.print(&json!({"cleared": name}), |_| println!("device {name}: Digest credential removed"));
                } else {
                    let mut password = String::new();
                    std::io::stdin()
                        .read_to_string(&mut password)
                        .map_err(|e| Failure::Setup(format!("cannot read the password from standard input: {e}")))?;
                    let password = password.trim_end_matches(['\r', '\n']).to_owned();
                    if password.is_empty() {
                        return Err(Failure::Setup("no password on standard input; pipe it in: `echo secret | sipreg device digest NAME --username U`".into()));
                    }
                    let body = json!({"username": username.unwrap_or_default(), "password": password});
                    let v = c.call(reqwest::Method::PUT, &format!("devices/{name}/digest"), Some(body)).await?;
                    c.print(&v, |v| println!("device {name}: Digest user {} in realm {}", v["username"].as_str().unwrap_or(""), v["realm"].as_str().unwrap_or("")));
                }
            }
            DeviceAction::Set { name, owner, lines, oauth, model, profile } => {
                let mut body = serde_json::Map::new();
                if let Some(o) = owner {
                    body.insert("owner".into(), json!(o));
                }
                if !lines.is_empty() {
                    body.insert("lines".into(), json!(lines));
                }
                if let Some(o) = oauth {
                    body.insert("oauth".into(), json!(o));
                }
                if let Some(m) = model {
                    body.insert("model".into(), json!(m));
                }
                if let Some(p) = profile {
                    body.insert("profile".into(), json!(p));
                }
                if body.is_empty() {
                    return Err(Failure::Setup("nothing to change: pass --owner, --line, --model, --profile or --oauth true|false".into()));
                }
                let v = c.call(reqwest::Method::PATCH, &format!("devices/{name}"), Some(Value::Object(body))).await?;
                c.print(&v, |_| println!("device {name} changed"));
            }
            DeviceAction::List => {
                    let v = c.call(reqwest::Method::GET, "devices", None).await?;
                    c.print(&v, |v| {
                        println!("{:<24} {:<20} {:<6} LINES", "DEVICE", "OWNER", "OAUTH");
                        for d in v.as_array().into_iter().flatten() {
                            let lines: Vec<&str> = d["lines"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|l| l["dn"].as_str())
                                .collect();
                            println!(
                                "{:<24} {:<20} {:<6} {}",
                                d["name"].as_str().unwrap_or(""),
                                d["owner"].as_str().unwrap_or(""),
                                if d["oauth"].as_bool().unwrap_or(false) {
                                    "yes"
                                } else {
                                    "no"
                                },
                                lines.join(",")
                            );
                        }
                    });
                }
                DeviceAction::Delete { name } => {
                    c.call(reqwest::Method::DELETE, &format!("devices/{name}"), None)
                        .await?;
                    c.print(&json!({"deleted": name}), |_| {
                        println!("device {name} deleted")
                    });
                }
            }
            Ok(())
        }
        .await,
    )
}
