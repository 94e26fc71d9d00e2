//! CLI for OAuth clients, signing keys and a user's token revocation.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::cli::{done, strings, ApiArgs, Client};

/// `sipreg client ...`
#[derive(Subcommand)]
pub enum ClientAction {
    /// Register a public OAuth client for the authorization code flow.
    Add {
        /// The client_id.
        id: String,
        /// Name shown on the login page (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// An exact redirect URI; repeat for more.
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// A scope the client may obtain; repeat for more (default: sip:register).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// List clients (the built-in `softphone` included).
    List,
    /// Delete a client.
    Delete {
        /// The client_id.
        id: String,
    },
}

/// `sipreg keys ...`
#[derive(Subcommand)]
pub enum KeysAction {
    /// Make a new signing key active; old keys verify until their tokens expire.
    Rotate {
        /// Delete every previous key now (key compromise): their tokens fail at once.
        #[arg(long)]
        revoke_previous: bool,
    },
    /// List signing keys with kid, algorithm, state and creation time.
    List,
}

/// Runs `sipreg client ...`.
pub async fn client(data_dir: &Path, a: ApiArgs, action: ClientAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                ClientAction::Add {
                    id,
                    name,
                    redirect_uris,
                    scopes,
                } => {
                    let mut body = json!({"id": id, "redirect_uris": redirect_uris});
                    if let Some(n) = name {
                        body["name"] = json!(n);
                    }
                    if !scopes.is_empty() {
                        body["scopes"] = json!(scopes);
                    }
                    let v = c.call(reqwest::Method::POST, "clients", Some(body)).await?;
                    c.print(&v, |_| println!("client {id} added"));
                }
                ClientAction::List => {
                    let v = c.call(reqwest::Method::GET, "clients", None).await?;
                    c.print(&v, |v| {
                        println!(
                            "{:<24} {:<24} {:<16} REDIRECT URIS",
                            "CLIENT", "NAME", "SCOPES"
                        );
                        for cl in v.as_array().into_iter().flatten() {
                            println!(
                                "{:<24} {:<24} {:<16} {}",
                                cl["id"].as_str().unwrap_or(""),
                                cl["name"].as_str().unwrap_or(""),
                                strings(&cl["scopes"]).join(" "),
                                strings(&cl["redirect_uris"]).join(" ")
                            );
                        }
                    });
                }
                ClientAction::Delete { id } => {
                    c.call(reqwest::Method::DELETE, &format!("clients/{id}"), None)
                        .await?;
                    c.print(&json!({"deleted": id}), |_| println!("client {id} deleted"));
                }
            }
            Ok(())
        }
        .await,
    )
}

/// Runs `sipreg keys ...`.
pub async fn keys(data_dir: &Path, a: ApiArgs, action: KeysAction) -> ExitCode {
    done(
        async {
            let c = Client::new(data_dir, a)?;
            match action {
                KeysAction::Rotate { revoke_previous } => {
                    let body = json!({"revoke_previous": revoke_previous});
                    let v = c
                        .call(reqwest::Method::POST, "keys/rotate", Some(body))
                        .await?;
                    c.print(&v, |v| {
                        println!("new signing key {}", v["kid"].as_str().unwrap_or(""));
                        if revoke_previous {
                            println!("previous keys deleted: their tokens are refused from now on");
                        } else {
                            println!("previous keys keep verifying until their tokens expire");
                        }
                    });
                }
                KeysAction::List => {
                    let v = c.call(reqwest::Method::GET, "keys", None).await?;
                    c.print(&v, |v| {
                        println!(
                            "{:<44} {:<6} {:<9} {:<12} RETIRE AT",
                            "KID", "ALG", "STATE", "CREATED"
                        );
                        for k in v.as_array().into_iter().flatten() {
                            println!(
                                "{:<44} {:<6} {:<9} {:<12} {}",
                                k["kid"].as_str().unwrap_or(""),
                                k["alg"].as_str().unwrap_or(""),
                                k["state"].as_str().unwrap_or(""),
                                k["created_at"],
                                k.get("retire_at").map(Value::to_string).unwrap_or_default()
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

/// Runs `sipreg user revoke-tokens USER [--client ID]` on an open client.
pub(crate) async fn revoke_user_tokens(
    c: &Client,
    user: &str,
    client_id: Option<&str>,
    drop_registrations: bool,
) -> Result<(), crate::cli::Failure> {
    let mut params: Vec<String> = client_id
        .map(|id| format!("client_id={id}"))
        .into_iter()
        .collect();
    if drop_registrations {
        params.push("drop_registrations=true".into());
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    let v = c
        .call(
            reqwest::Method::POST,
            &format!("users/{user}/revoke-tokens{query}"),
            None,
        )
        .await?;
    c.print(&v, |v| {
        println!(
            "revoked {} refresh token(s) of {user}; access tokens issued before {} are refused",
            v["refresh_tokens_revoked"], v["access_tokens_not_before"]
        );
    });
    Ok(())
}
