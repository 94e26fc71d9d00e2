//! CLI for security profiles (`sipreg profile ...`) and lines (`sipreg line ...`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::api_lines::encode;
use crate::cli::{done, ApiArgs, Client, Failure};

/// `sipreg profile ...`
#[derive(Subcommand)]
pub enum ProfileAction {
    /// Add a security profile.
    Add {
        /// The profile's name, e.g. "Jabber OAuth".
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
        /// Devices may register on the SIP OAuth ports.
        #[arg(long)]
        oauth: bool,
        /// Devices may register with Digest on the legacy ports (true/false).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        digest: bool,
        /// Legacy transports allowed for Digest.
        #[arg(long, default_value = "any", value_parser = ["tcp", "tls", "udp", "tcp+tls", "any"])]
        transport: String,
    },
    /// List security profiles.
    List,
    /// Show one security profile.
    Show {
        /// The profile's name.
        name: String,
    },
    /// Change a security profile; only the options given change. Its devices follow at once.
    Set {
        /// The profile's name.
        name: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Devices may register on the SIP OAuth ports (true/false).
        #[arg(long)]
        oauth: Option<bool>,
        /// Devices may register with Digest on the legacy ports (true/false).
        #[arg(long)]
        digest: Option<bool>,
        /// Legacy transports allowed for Digest.
        #[arg(long, value_parser = ["tcp", "tls", "udp", "tcp+tls", "any"])]
        transport: Option<String>,
    },
    /// Remove a security profile no device uses.
    Remove {
        /// The profile's name.
        name: String,
    },
}

/// `sipreg line ...`
#[derive(Subcommand)]
pub enum LineAction {
    /// List lines with the devices they appear on.
    List {
        /// Only directory numbers starting with this.
        #[arg(long)]
        dn: Option<String>,
        /// Only lines on a device of this user.
        #[arg(long)]
        owner: Option<String>,
        /// Only lines on this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Show one line and the devices it appears on.
    Show {
        /// The directory number.
        dn: String,
    },
    /// Set a line's display name on every device carrying it.
    Set {
        /// The directory number.
        dn: String,
        /// The display name; empty clears it.
        #[arg(long)]
        display_name: String,
    },
}

/// Runs `sipreg profile ...`.
pub async fn profile(data_dir: &Path, a: ApiArgs, action: ProfileAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            let path = |name: &str| format!("security-profiles/{}", encode(name));
            match action {
                ProfileAction::Add {
                    name,
                    description,
                    oauth,
                    digest,
                    transport,
                } => {
                    let body = json!({"name": name, "description": description, "oauth": oauth,
                        "digest": digest, "transport": transport});
                    let v = c
                        .call(reqwest::Method::POST, "security-profiles", Some(body))
                        .await?;
                    c.print(&v, |_| println!("security profile {name} added"));
                }
                ProfileAction::List => {
                    let v = c
                        .call(reqwest::Method::GET, "security-profiles", None)
                        .await?;
                    c.print(&v, |v| {
                        println!("{:<6} {:<7} {:<8} NAME", "OAUTH", "DIGEST", "TRANSPORT");
                        for p in v.as_array().into_iter().flatten() {
                            print_row(p);
                        }
                    });
                }
                ProfileAction::Show { name } => {
                    let v = c.call(reqwest::Method::GET, &path(&name), None).await?;
                    c.print(&v, |v| {
                        println!("name:        {}", v["name"].as_str().unwrap_or(""));
                        println!("description: {}", v["description"].as_str().unwrap_or(""));
                        println!("oauth:       {}", yes(&v["oauth"]));
                        println!("digest:      {}", yes(&v["digest"]));
                        println!("transport:   {}", v["transport"].as_str().unwrap_or(""));
                    });
                }
                ProfileAction::Set {
                    name,
                    description,
                    oauth,
                    digest,
                    transport,
                } => {
                    let mut body = Map::new();
                    if let Some(d) = description {
                        body.insert("description".into(), json!(d));
                    }
                    if let Some(o) = oauth {
                        body.insert("oauth".into(), json!(o));
                    }
                    if let Some(d) = digest {
                        body.insert("digest".into(), json!(d));
                    }
                    if let Some(t) = transport {
                        body.insert("transport".into(), json!(t));
                    }
                    if body.is_empty() {
                        return Err(Failure::Setup(
                            "nothing to change: pass --description, --oauth, --digest or --transport".into(),
                        ));
                    }
                    let v = c
                        .call(
                            reqwest::Method::PATCH,
                            &path(&name),
                            Some(Value::Object(body)),
                        )
                        .await?;
                    c.print(&v, |_| println!("security profile {name} changed"));
                }
                ProfileAction::Remove { name } => {
                    c.call(reqwest::Method::DELETE, &path(&name), None).await?;
                    c.print(&json!({"removed": name}), |_| {
                        println!("security profile {name} removed")
                    });
                }
            }
            Ok(())
        }
        .await,
    )
}

/// Runs `sipreg line ...`.
pub async fn line(data_dir: &Path, a: ApiArgs, action: LineAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                LineAction::List { dn, owner, device } => {
                    let mut q = String::from("lines?limit=5000");
                    for (k, v) in [("dn", dn), ("owner", owner), ("device", device)] {
                        if let Some(v) = v {
                            q.push_str(&format!("&{k}={}", encode(&v)));
                        }
                    }
                    let v = c.call(reqwest::Method::GET, &q, None).await?;
                    c.print(&v, |v| {
                        println!("{:<16} {:<24} DEVICES", "DN", "DISPLAY NAME");
                        for l in v.as_array().into_iter().flatten() {
                            print_line(l);
                        }
                    });
                }
                LineAction::Show { dn } => {
                    let v = c
                        .call(
                            reqwest::Method::GET,
                            &format!("lines/{}", encode(&dn)),
                            None,
                        )
                        .await?;
                    c.print(&v, print_line);
                }
                LineAction::Set { dn, display_name } => {
                    let v = c
                        .call(
                            reqwest::Method::PATCH,
                            &format!("lines/{}", encode(&dn)),
                            Some(json!({ "display_name": display_name })),
                        )
                        .await?;
                    c.print(&v, |_| println!("line {dn} changed"));
                }
            }
            Ok(())
        }
        .await,
    )
}

fn yes(v: &Value) -> &'static str {
    if v.as_bool().unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

fn print_row(p: &Value) {
    println!(
        "{:<6} {:<7} {:<8} {}",
        yes(&p["oauth"]),
        yes(&p["digest"]),
        p["transport"].as_str().unwrap_or(""),
        p["name"].as_str().unwrap_or("")
    );
}

fn print_line(l: &Value) {
    let devices: Vec<String> = l["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} ({})",
                a["device"].as_str().unwrap_or(""),
                a["owner"].as_str().unwrap_or("")
            )
        })
        .collect();
    println!(
        "{:<16} {:<24} {}",
        l["dn"].as_str().unwrap_or(""),
        l["display_name"].as_str().unwrap_or("-"),
        devices.join(", ")
    );
}
