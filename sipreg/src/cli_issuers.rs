//! CLI for trusted external token issuers (`sipreg issuer ...`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::api_lines::encode;
use crate::cli::{done, strings, ApiArgs, Client};

/// `sipreg issuer ...`
#[derive(Subcommand)]
pub enum IssuerAction {
    /// Trust an external issuer (an enterprise IdP); its tokens register like ours.
    Add {
        /// The issuer URL, exactly as its tokens carry it in `iss`.
        issuer: String,
        /// Where it publishes its JWKS (https; http only on loopback hosts).
        #[arg(
            long,
            conflicts_with = "jwks_file",
            required_unless_present = "jwks_file"
        )]
        jwks_url: Option<String>,
        /// A JWKS file on the server instead, re-read when it changes.
        #[arg(long)]
        jwks_file: Option<String>,
        /// The `aud` its tokens must carry.
        #[arg(long)]
        audience: String,
        /// The claim naming the user (default `sub`; e.g. preferred_username, upn, email).
        #[arg(long)]
        user_claim: Option<String>,
        /// An allowed algorithm (default RS256 and ES256); repeat for more.
        #[arg(long = "alg")]
        algs: Vec<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List trusted issuers.
    List,
    /// Stop trusting an issuer; its tokens are refused from now on.
    Remove {
        /// The issuer URL.
        issuer: String,
    },
}

fn print_issuer(i: &Value) {
    let source = i["jwks_url"]
        .as_str()
        .or(i["jwks_file"].as_str())
        .unwrap_or("");
    let algs = strings(&i["algorithms"]);
    println!(
        "{:<40} {:<20} {:<20} {:<12} {}",
        i["issuer"].as_str().unwrap_or(""),
        i["audience"].as_str().unwrap_or(""),
        i["user_claim"].as_str().unwrap_or(""),
        algs.join(","),
        source
    );
}

/// Runs `sipreg issuer ...`.
pub async fn issuer(data_dir: &Path, a: ApiArgs, action: IssuerAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                IssuerAction::Add {
                    issuer,
                    jwks_url,
                    jwks_file,
                    audience,
                    user_claim,
                    algs,
                    description,
                } => {
                    let mut body = json!({"issuer": issuer, "audience": audience});
                    if let Some(u) = jwks_url {
                        body["jwks_url"] = json!(u);
                    }
                    if let Some(f) = jwks_file {
                        body["jwks_file"] = json!(f);
                    }
                    if let Some(u) = user_claim {
                        body["user_claim"] = json!(u);
                    }
                    if !algs.is_empty() {
                        body["algorithms"] = json!(algs);
                    }
                    if let Some(d) = description {
                        body["description"] = json!(d);
                    }
                    let v = c.call(reqwest::Method::POST, "issuers", Some(body)).await?;
                    c.print(&v, |v| {
                        println!("trusting {}", v["issuer"].as_str().unwrap_or(""));
                    });
                }
                IssuerAction::List => {
                    let v = c.call(reqwest::Method::GET, "issuers", None).await?;
                    c.print(&v, |v| {
                        println!(
                            "{:<40} {:<20} {:<20} {:<12} JWKS",
                            "ISSUER", "AUDIENCE", "USER CLAIM", "ALGORITHMS"
                        );
                        for i in v.as_array().into_iter().flatten() {
                            print_issuer(i);
                        }
                    });
                }
                IssuerAction::Remove { issuer } => {
                    c.call(
                        reqwest::Method::DELETE,
                        &format!("issuers/{}", encode(&issuer)),
                        None,
                    )
                    .await?;
                    c.print(&json!({"removed": issuer}), |_| {
                        println!("no longer trusting {issuer}");
                    });
                }
            }
            Ok(())
        }
        .await,
    )
}
