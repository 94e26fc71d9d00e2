//! CLI for edge proxies on the MRA port (`sipreg edge ...`) and the trust store their
//! certificates chain to (`sipreg trust ...`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::cli::{done, strings, ApiArgs, Client, Failure};

/// `sipreg edge ...`
#[derive(Subcommand)]
pub enum EdgeAction {
    /// Allow an edge proxy on the MRA port; applies to its next handshake.
    Add {
        /// Host name or IP address of the edge (the key).
        host: String,
        /// A CN/SAN value to accept from its certificate (`*.example.com` matches one label);
        /// repeat for more. Without any, the host itself is the accepted name.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// Change an edge's accepted names or description; connections no longer matching close.
    Set {
        /// Host of the edge.
        host: String,
        /// The new CN/SAN list (replaces the old one); repeat for more.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// New free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List edges.
    List,
    /// Remove an edge; its live connections are closed at once.
    Remove {
        /// Host of the edge.
        host: String,
    },
    /// Show the MRA port: address, live edge connections and refusal counters.
    Status,
}

/// `sipreg trust ...`
#[derive(Subcommand)]
pub enum TrustAction {
    /// Add a CA certificate (PEM file) that edge certificates may chain to.
    Add {
        /// The PEM file, one certificate.
        file: PathBuf,
    },
    /// List the trust store.
    List,
    /// Remove a CA by fingerprint; edge connections chaining only to it close at once.
    Remove {
        /// SHA-256 fingerprint (hex, colons allowed), from `sipreg trust list`.
        fingerprint: String,
    },
}

fn print_edge(e: &Value) {
    let names = strings(&e["subject_names"]);
    println!(
        "{:<32} {:<40} {}",
        e["host"].as_str().unwrap_or(""),
        if names.is_empty() {
            "(host)".to_string()
        } else {
            names.join(",")
        },
        e["description"].as_str().unwrap_or("")
    );
}

/// Runs `sipreg edge ...`.
pub async fn edge(data_dir: &Path, a: ApiArgs, action: EdgeAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                EdgeAction::Add { host, sans, description } => {
                    let body = json!({
                        "host": host,
                        "subject_names": sans,
                        "description": description.unwrap_or_default(),
                    });
                    let v = c.call(reqwest::Method::POST, "edges", Some(body)).await?;
                    c.print(&v, |v| {
                        println!("edge {} added", v["host"].as_str().unwrap_or(""));
                    });
                }
                EdgeAction::Set { host, sans, description } => {
                    let mut body = Map::new();
                    if !sans.is_empty() {
                        body.insert("subject_names".into(), json!(sans));
                    }
                    if let Some(d) = description {
                        body.insert("description".into(), json!(d));
                    }
                    if body.is_empty() {
                        return Err(Failure::Setup("nothing to change: pass --san or --description".into()));
                    }
                    let v = c
                        .call(reqwest::Method::PUT, &format!("edges/{host}"), Some(Value::Object(body)))
                        .await?;
                    c.print(&v, print_edge);
                }
                EdgeAction::List => {
                    let v = c.call(reqwest::Method::GET, "edges", None).await?;
                    c.print(&v, |v| {
                        println!("{:<32} {:<40} DESCRIPTION", "HOST", "ACCEPTED CN/SAN");
                        v.as_array().into_iter().flatten().for_each(print_edge);
                    });
                }
                EdgeAction::Remove { host } => {
                    c.call(reqwest::Method::DELETE, &format!("edges/{host}"), None).await?;
                    c.print(&json!({"removed": host}), |_| {
                        println!("edge {host} removed; its connections are closed")
                    });
                }
                EdgeAction::Status => {
                    let v = c.call(reqwest::Method::GET, "mra", None).await?;
                    c.print(&v, |v| {
                        println!("MRA port:      {}", v["address"].as_str().unwrap_or("closed"));
                        println!("trust anchors: {}", v["trust_anchors"]);
                        let d = &v["decisions"];
                        println!(
                            "accepted {}, refused: no certificate {}, untrusted chain {}, unregistered name {}, no anchors {}; closed on change {}",
                            d["accepted"], d["refused_no_certificate"], d["refused_chain"],
                            d["refused_not_registered"], d["refused_no_anchors"], d["closed_on_change"]
                        );
                        println!("connections:");
                        for c in v["connections"].as_array().into_iter().flatten() {
                            println!(
                                "  {:<24} edge {:<28} matched {}",
                                c["remote"].as_str().unwrap_or(""),
                                c["edge"].as_str().unwrap_or(""),
                                c["matched"].as_str().unwrap_or("")
                            );
                        }
                    });
                }
            }
            Ok(())
        }
        .await,
    )
}

/// Runs `sipreg trust ...`.
pub async fn trust(data_dir: &Path, a: ApiArgs, action: TrustAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                TrustAction::Add { file } => {
                    let pem = std::fs::read_to_string(&file).map_err(|e| {
                        Failure::Setup(format!("cannot read {}: {e}", file.display()))
                    })?;
                    let v = c
                        .call(reqwest::Method::POST, "trust", Some(json!({"pem": pem})))
                        .await?;
                    c.print(&v, |v| {
                        println!(
                            "trusted {} (fingerprint {})",
                            v["subject"].as_str().unwrap_or(""),
                            v["fingerprint"].as_str().unwrap_or("")
                        );
                    });
                }
                TrustAction::List => {
                    let v = c.call(reqwest::Method::GET, "trust", None).await?;
                    c.print(&v, |v| {
                        println!("{:<64} {:<10} SUBJECT", "FINGERPRINT (SHA-256)", "EXPIRES");
                        for t in v.as_array().into_iter().flatten() {
                            let expires = t["not_after"]
                                .as_i64()
                                .map(|s| {
                                    httpdate::fmt_http_date(
                                        std::time::UNIX_EPOCH
                                            + std::time::Duration::from_secs(s.max(0) as u64),
                                    )
                                })
                                .unwrap_or_default();
                            println!(
                                "{:<64} {} {}",
                                t["fingerprint"].as_str().unwrap_or(""),
                                expires,
                                t["subject"].as_str().unwrap_or("")
                            );
                        }
                    });
                }
                TrustAction::Remove { fingerprint } => {
                    c.call(
                        reqwest::Method::DELETE,
                        &format!("trust/{fingerprint}"),
                        None,
                    )
                    .await?;
                    c.print(&json!({"removed": fingerprint}), |_| {
                        println!("trust anchor {fingerprint} removed")
                    });
                }
            }
            Ok(())
        }
        .await,
    )
}
