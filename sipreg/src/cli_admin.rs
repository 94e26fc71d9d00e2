//! CLI for nodes, admin tokens, the audit log and `status` (the `show open ports` equivalent).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::cli::{done, strings, ApiArgs, Client, Failure};

/// `sipreg node ...`
#[derive(Subcommand)]
pub enum NodeAction {
    /// List nodes with their ports.
    List,
    /// Change a node's ports or host; the listener moves at once.
    Set {
        /// Node name.
        name: String,
        /// SIP OAuth port (1024–49151).
        #[arg(long)]
        sip_oauth_port: Option<u16>,
        /// SIP MRA OAuth port (1024–49151).
        #[arg(long)]
        sip_mra_oauth_port: Option<u16>,
        /// Host name advertised in config files.
        #[arg(long)]
        host: Option<String>,
    },
}

/// `sipreg token ...`
#[derive(Subcommand)]
pub enum TokenAction {
    /// Create an admin API token; the secret is printed once.
    Create {
        /// What the token is for.
        name: String,
        /// Allow only reads (GET).
        #[arg(long)]
        read_only: bool,
    },
    /// List admin API tokens (never their secrets).
    List,
    /// Revoke an admin API token by id.
    Revoke {
        /// Token id from `sipreg token list`.
        id: String,
    },
}

/// Runs `sipreg node ...`.
pub async fn node(data_dir: &Path, a: ApiArgs, action: NodeAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                NodeAction::List => {
                    let v = c.call(reqwest::Method::GET, "nodes", None).await?;
                    c.print(&v, |v| {
                        println!("{:<16} {:<24} {:>9} {:>9} {:>6} {:>6}  STATE", "NODE", "HOST", "OAUTH", "MRAOAUTH", "SIP", "SIPS");
                        for n in v.as_array().into_iter().flatten() {
                            println!(
                                "{:<16} {:<24} {:>9} {:>9} {:>6} {:>6}  {}",
                                n["name"].as_str().unwrap_or(""),
                                n["host"].as_str().unwrap_or(""),
                                n["sip_oauth_port"],
                                n["sip_mra_oauth_port"],
                                n["sip_port"],
                                n["secured_sip_port"],
                                n["state"].as_str().unwrap_or("")
                            );
                        }
                    });
                }
                NodeAction::Set { name, sip_oauth_port, sip_mra_oauth_port, host } => {
                    let mut body = Map::new();
                    if let Some(p) = sip_oauth_port {
                        body.insert("sip_oauth_port".into(), json!(p));
                    }
                    if let Some(p) = sip_mra_oauth_port {
                        body.insert("sip_mra_oauth_port".into(), json!(p));
                    }
                    if let Some(h) = host {
                        body.insert("host".into(), json!(h));
                    }
                    if body.is_empty() {
                        return Err(Failure::Setup(
                            "nothing to change: pass --sip-oauth-port, --sip-mra-oauth-port or --host".into(),
                        ));
                    }
                    let v = c.call(reqwest::Method::PATCH, &format!("nodes/{name}"), Some(Value::Object(body))).await?;
                    c.print(&v, |v| println!("node {name}: SIP OAuth port {}, MRA OAuth port {}", v["sip_oauth_port"], v["sip_mra_oauth_port"]));
                }
            }
            Ok(())
        }
        .await,
    )
}

/// Runs `sipreg token ...`.
pub async fn token(data_dir: &Path, a: ApiArgs, action: TokenAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                TokenAction::Create { name, read_only } => {
                    let scope = if read_only { "read" } else { "admin" };
                    let v = c
                        .call(
                            reqwest::Method::POST,
                            "admin-tokens",
                            Some(json!({"name": name, "scope": scope})),
                        )
                        .await?;
                    c.print(&v, |v| {
                        println!(
                            "token {} ({scope}) created; its secret, shown only now:",
                            v["id"].as_str().unwrap_or("")
                        );
                        println!("{}", v["secret"].as_str().unwrap_or(""));
                    });
                }
                TokenAction::List => {
                    let v = c.call(reqwest::Method::GET, "admin-tokens", None).await?;
                    c.print(&v, |v| {
                        println!("{:<14} {:<24} {:<6} CREATED", "ID", "NAME", "SCOPE");
                        for t in v.as_array().into_iter().flatten() {
                            println!(
                                "{:<14} {:<24} {:<6} {}",
                                t["id"].as_str().unwrap_or(""),
                                t["name"].as_str().unwrap_or(""),
                                t["scope"].as_str().unwrap_or(""),
                                t["created_at"]
                            );
                        }
                    });
                }
                TokenAction::Revoke { id } => {
                    c.call(reqwest::Method::DELETE, &format!("admin-tokens/{id}"), None)
                        .await?;
                    c.print(&json!({"revoked": id}), |_| println!("token {id} revoked"));
                }
            }
            Ok(())
        }
        .await,
    )
}

/// `sipreg certs ...`
#[derive(Subcommand)]
pub enum CertsAction {
    /// Subject, SANs, issuer, validity and fingerprint of the server certificate.
    Show,
    /// Issue a new server certificate from the local CA; every port uses it at once.
    Regenerate,
    /// Install an operator's certificate and key; checked first (key matches, chain verifies,
    /// not expired), then live on every port. A refused pair changes nothing.
    Install {
        /// The certificate, PEM (may be followed by its intermediates).
        #[arg(long)]
        cert: std::path::PathBuf,
        /// Its private key, PEM.
        #[arg(long)]
        key: std::path::PathBuf,
        /// Intermediate (and root) CA certificates, PEM.
        #[arg(long)]
        chain: Option<std::path::PathBuf>,
    },
}

/// Runs `sipreg certs ...`.
pub async fn certs(data_dir: &Path, a: ApiArgs, action: CertsAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            let v = match action {
                CertsAction::Show => c.call(reqwest::Method::GET, "certs/server", None).await?,
                CertsAction::Regenerate => {
                    c.call(reqwest::Method::POST, "certs/server/regenerate", None)
                        .await?
                }
                CertsAction::Install { cert, key, chain } => {
                    let read = |p: &std::path::Path| {
                        std::fs::read_to_string(p).map_err(|e| {
                            Failure::Setup(format!("cannot read {}: {e}", p.display()))
                        })
                    };
                    let mut body = json!({"certificate": read(&cert)?, "key": read(&key)?});
                    if let Some(chain) = &chain {
                        body["chain"] = json!(read(chain)?);
                    }
                    c.call(reqwest::Method::PUT, "certs/server", Some(body))
                        .await?
                }
            };
            c.print(&v, |v| {
                println!("subject:  {}", v["subject"].as_str().unwrap_or(""));
                println!("issuer:   {}", v["issuer"].as_str().unwrap_or(""));
                let sans = strings(&v["sans"]);
                println!("SANs:     {}", sans.join(", "));
                println!(
                    "valid:    {} – {} (unix seconds)",
                    v["not_before"], v["not_after"]
                );
                println!("SHA-256:  {}", v["sha256"].as_str().unwrap_or(""));
                println!("source:   {}", v["source"].as_str().unwrap_or(""));
                for w in v["warnings"].as_array().into_iter().flatten() {
                    println!("WARNING:  {}", w.as_str().unwrap_or(""));
                }
            });
            Ok(())
        }
        .await,
    )
}

/// Runs `sipreg status`.
pub async fn status(data_dir: &Path, a: ApiArgs) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            let v = c.call(reqwest::Method::GET, "status", None).await?;
            c.print(&v, |v| {
                println!("node:            {}", v["node"].as_str().unwrap_or(""));
                println!(
                    "cluster OAuth:   {}",
                    if v["oauth_mode"].as_bool().unwrap_or(false) {
                        "enabled"
                    } else {
                        "disabled"
                    }
                );
                println!("listeners:");
                for l in v["listeners"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<22} {:<24} {}",
                        l["name"].as_str().unwrap_or(""),
                        l["address"].as_str().unwrap_or("-"),
                        if l["open"].as_bool().unwrap_or(false) {
                            "open"
                        } else {
                            "closed"
                        }
                    );
                }
                let counts = &v["counts"];
                for k in ["users", "devices", "registrations", "edges"] {
                    println!("{:<16} {}", format!("{k}:"), counts[k]);
                }
                println!(
                    "server certificate expires: {}",
                    v["server_certificate_expires"]
                        .as_str()
                        .unwrap_or("unknown")
                );
                for w in v["certificate_warnings"].as_array().into_iter().flatten() {
                    println!("WARNING: {}", w.as_str().unwrap_or(""));
                }
            });
            Ok(())
        }
        .await,
    )
}
