//! CLI for the cluster settings (`sipreg cluster show|set`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Map, Value};

use crate::cli::{done, ApiArgs, Client, Failure};

/// `sipreg cluster ...`
#[derive(Subcommand)]
pub enum ClusterAction {
    /// Show every cluster setting.
    Show,
    /// Change cluster settings; only the options given change. Applies at once on every node.
    Set {
        /// Cluster SIP OAuth mode.
        #[arg(long)]
        oauth_mode: Option<bool>,
        /// Access token lifetime, minutes (1–1440).
        #[arg(long)]
        access_token_lifetime: Option<u32>,
        /// Refresh token lifetime, days (1–365).
        #[arg(long)]
        refresh_token_lifetime: Option<u32>,
        /// "OAuth with Refresh Login": issue refresh tokens (true/false).
        #[arg(long)]
        refresh_login: Option<bool>,
        /// Offer the password grant (true/false).
        #[arg(long)]
        password_grant: Option<bool>,
        /// Bearer challenge on the SIP OAuth port: auto, rfc8898 or cucm.
        #[arg(long, value_parser = ["auto", "rfc8898", "cucm"])]
        challenge_dialect: Option<String>,
        /// Expiry granted when a client asks for none, seconds.
        #[arg(long)]
        default_expires: Option<u32>,
        /// Shortest expiry accepted, seconds.
        #[arg(long)]
        min_expires: Option<u32>,
        /// Longest expiry granted, seconds (at most 86400).
        #[arg(long)]
        max_expires: Option<u32>,
    },
}

/// Runs `sipreg cluster ...`.
pub async fn cluster(data_dir: &Path, a: ApiArgs, action: ClusterAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            let v = match action {
                ClusterAction::Show => c.call(reqwest::Method::GET, "cluster", None).await?,
                ClusterAction::Set {
                    oauth_mode,
                    access_token_lifetime,
                    refresh_token_lifetime,
                    refresh_login,
                    password_grant,
                    challenge_dialect,
                    default_expires,
                    min_expires,
                    max_expires,
                } => {
                    let mut body = Map::new();
                    let mut put = |k: &str, v: Option<Value>| {
                        if let Some(v) = v {
                            body.insert(k.into(), v);
                        }
                    };
                    put("oauth_mode", oauth_mode.map(Value::from));
                    put(
                        "access_token_lifetime_minutes",
                        access_token_lifetime.map(Value::from),
                    );
                    put(
                        "refresh_token_lifetime_days",
                        refresh_token_lifetime.map(Value::from),
                    );
                    put("refresh_login", refresh_login.map(Value::from));
                    put("password_grant", password_grant.map(Value::from));
                    put("challenge_dialect", challenge_dialect.map(Value::from));
                    put("default_expires", default_expires.map(Value::from));
                    put("min_expires", min_expires.map(Value::from));
                    put("max_expires", max_expires.map(Value::from));
                    if body.is_empty() {
                        return Err(Failure::Setup(
                            "nothing to change; give at least one option, e.g. `sipreg cluster set --access-token-lifetime 30`".into(),
                        ));
                    }
                    c.call(reqwest::Method::PATCH, "cluster", Some(Value::Object(body)))
                        .await?
                }
            };
            c.print(&v, print_table);
            Ok(())
        }
        .await,
    )
}

fn print_table(v: &Value) {
    let on = |k: &str| {
        if v[k].as_bool().unwrap_or(false) {
            "on"
        } else {
            "off"
        }
    };
    println!("oauth mode:             {}", on("oauth_mode"));
    println!(
        "access token lifetime:  {} min",
        v["access_token_lifetime_minutes"]
    );
    println!(
        "refresh token lifetime: {} days",
        v["refresh_token_lifetime_days"]
    );
    println!("refresh login:          {}", on("refresh_login"));
    println!("password grant:         {}", on("password_grant"));
    println!(
        "challenge dialect:      {}",
        v["challenge_dialect"].as_str().unwrap_or("")
    );
    println!(
        "registration expiry:    default {} s, min {} s, max {} s",
        v["default_expires"], v["min_expires"], v["max_expires"]
    );
}
