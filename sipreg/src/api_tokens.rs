//! Token administration under `/api/v1`: OAuth clients, a user's token revocation (Unified CM's
//! `/ssosp/token/revoke?user_id=&client_id=`), and signing-key rotation without mass logout.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sipreg_store::{Change, OAuthClient, Store};
use sipreg_tokensvc::{key_states, KeyInfo, TokenService, DEFAULT_CLIENT_ID};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, Actor};
use crate::api::{ApiJson, ApiQuery, ApiState};
use crate::problem::Problem;

/// How often retired signing keys whose tokens have all expired are deleted.
const KEY_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Client, revocation and key routes (mounted behind the admin token by [`crate::api::router`]).
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_clients, create_client))
        .routes(routes!(get_client, delete_client))
        .routes(routes!(revoke_user_tokens))
        .routes(routes!(list_keys))
        .routes(routes!(rotate_keys))
}

/// A client as the API shows it; `builtin` marks the default `softphone` client that exists
/// without a stored row (storing one with that id replaces it).
#[derive(Serialize, utoipa::ToSchema)]
struct ClientView {
    #[serde(flatten)]
    client: OAuthClient,
    builtin: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewClient {
    id: String,
    name: Option<String>,
    redirect_uris: Vec<String>,
    #[serde(default = "register_scope")]
    scopes: Vec<String>,
}

fn register_scope() -> Vec<String> {
    vec![sipreg_tokensvc::REGISTER_SCOPE.into()]
}

fn validate_client(c: &NewClient) -> Result<(), Problem> {
    let id_ok = !c.id.is_empty()
        && c.id.len() <= 64
        && c.id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if !id_ok {
        return Err(Problem::invalid(
            "id",
            "`id` must be 1–64 characters of letters, digits and `.` `_` `-`",
        ));
    }
    if c.name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.len() > 128 || n.chars().any(char::is_control))
    {
        return Err(Problem::invalid(
            "name",
            "`name` is 1–128 characters without control characters",
        ));
    }
    if c.redirect_uris.is_empty() || c.redirect_uris.len() > 20 {
        return Err(Problem::invalid(
            "redirect_uris",
            "a client needs 1–20 redirect URIs (exact match, RFC 6749 §3.1.2)",
        ));
    }
    for uri in &c.redirect_uris {
        sipreg_tokensvc::validate_redirect_uri(uri)
            .map_err(|why| Problem::invalid("redirect_uris", format!("{uri}: {why}")))?;
    }
    if c.scopes.is_empty()
        || c.scopes.len() > 20
        || !c
            .scopes
            .iter()
            .all(|s| sipreg_tokensvc::valid_scope_token(s))
    {
        return Err(Problem::invalid(
            "scopes",
            "1–20 scope tokens of printable ASCII without spaces, quotes or backslashes",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/clients", tag = "oauth", request_body = NewClient, responses((status = 201, description = "Registered", body = ClientView)))]
async fn create_client(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewClient>,
) -> Result<(StatusCode, Json<ClientView>), Problem> {
    validate_client(&body)?;
    let client = OAuthClient {
        name: body.name.unwrap_or_else(|| body.id.clone()),
        id: body.id,
        redirect_uris: body.redirect_uris,
        scopes: body.scopes,
        created_at: crate::now(),
    };
    s.store.create_client(&client).await?;
    audit(
        &s,
        &actor,
        format!("POST /api/v1/clients/{}", client.id),
        Value::Null,
        json!(client),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(ClientView {
            client,
            builtin: false,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/clients", tag = "oauth", responses((status = 200, description = "OAuth clients, the built-in softphone included", body = [ClientView])))]
async fn list_clients(State(s): State<ApiState>) -> Result<Json<Vec<ClientView>>, Problem> {
    let mut out: Vec<ClientView> = s
        .store
        .clients()
        .await?
        .into_iter()
        .map(|client| ClientView {
            client,
            builtin: false,
        })
        .collect();
    if !out.iter().any(|c| c.client.id == DEFAULT_CLIENT_ID) {
        out.push(ClientView {
            client: sipreg_tokensvc::builtin_client(),
            builtin: true,
        });
        out.sort_by(|a, b| a.client.id.cmp(&b.client.id));
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/clients/{id}", tag = "oauth", params(("id" = String, Path, description = "client_id")), responses((status = 200, description = "The client", body = ClientView)))]
async fn get_client(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ClientView>, Problem> {
    match s.store.client(&id).await? {
        Some(client) => Ok(Json(ClientView {
            client,
            builtin: false,
        })),
        None if id == DEFAULT_CLIENT_ID => Ok(Json(ClientView {
            client: sipreg_tokensvc::builtin_client(),
            builtin: true,
        })),
        None => Err(Problem::not_found(format!("client {id} not found"))),
    }
}

#[utoipa::path(delete, path = "/api/v1/clients/{id}", tag = "oauth", params(("id" = String, Path, description = "client_id")), responses((status = 204, description = "Deleted")))]
async fn delete_client(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = s.store.client(&id).await?;
    s.store.delete_client(&id).await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/clients/{id}"),
        json!(before),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RevokeQuery {
    /// Only this client's tokens (refresh and access).
    client_id: Option<String>,
    /// Also remove the user's live registrations on this node at once.
    drop_registrations: Option<bool>,
}

/// Revokes the user's refresh tokens (of one client, or all) and makes every access token of the
/// user issued until now fail at the registrar, once the directory update below has run.
#[utoipa::path(post, path = "/api/v1/users/{id}/revoke-tokens", tag = "oauth", params(("id" = String, Path, description = "User id"), RevokeQuery), responses((status = 200, description = "Refresh tokens revoked; access tokens refused from now on", body = Object)))]
async fn revoke_user_tokens(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(user): Path<String>,
    ApiQuery(q): ApiQuery<RevokeQuery>,
) -> Result<Json<Value>, Problem> {
    if s.store.user(&user).await?.is_none() {
        return Err(Problem::not_found(format!("user {user} not found")));
    }
    let client = q.client_id.filter(|c| !c.is_empty());
    let revoked = s
        .store
        .revoke_user_refresh_tokens(&user, client.as_deref())
        .await?;
    // Access tokens carry whole seconds: one issued within this second must die too. With a
    // client id only that client's access tokens (by their `client_id` claim) end.
    let not_before = crate::now() + 1;
    match &client {
        Some(cl) => {
            s.store
                .set_client_tokens_not_before(&user, cl, not_before)
                .await?
        }
        None => s.store.set_tokens_not_before(&user, not_before).await?,
    }
    // Applied before answering, so the registrar refuses the tokens when the admin sees 200.
    s.live
        .apply_change(Change::Revocation(user.clone()))
        .await?;
    // Like `DELETE /api/v1/registrations?user=`: the bindings go now, not at their expiry.
    let dropped = if q.drop_registrations.unwrap_or(false) {
        s.status
            .registrar
            .location
            .remove_where(|b: &sipreg_registrar::location::Binding| b.user == user)
    } else {
        0
    };
    let out = json!({
        "user": user,
        "client_id": client,
        "refresh_tokens_revoked": revoked,
        "access_tokens_not_before": not_before,
        "registrations_dropped": dropped,
    });
    tracing::warn!(%user, client_id = ?client, revoked, actor = %actor.name, "user tokens revoked");
    audit(
        &s,
        &actor,
        format!("POST /api/v1/users/{user}/revoke-tokens"),
        Value::Null,
        out.clone(),
    )
    .await;
    Ok(Json(out))
}

async fn key_list(s: &ApiState) -> Result<Vec<KeyInfo>, Problem> {
    let keys = s.store.signing_keys().await?;
    Ok(key_states(
        &keys,
        crate::now(),
        s.tokens.config().key_retention_secs(),
    ))
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "oauth", responses((status = 200, description = "Signing keys with their state (no private parts)", body = [Object])))]
async fn list_keys(State(s): State<ApiState>) -> Result<Json<Vec<KeyInfo>>, Problem> {
    Ok(Json(key_list(&s).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    revoke_previous: bool,
}

/// A new signing key; old ones keep verifying until their tokens expire, unless revoked.
#[utoipa::path(post, path = "/api/v1/keys/rotate", tag = "oauth", request_body(content = Object, description = "Optional `{\"revoke_previous\": true}`"), responses((status = 200, description = "A new key is active", body = Object)))]
async fn rotate_keys(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::bad_body(e.to_string()))?
    };
    let before = key_list(&s).await?;
    let kid = s
        .tokens
        .keys()
        .rotate(s.store.as_ref(), crate::now(), body.revoke_previous)
        .await
        .map_err(|e| Problem::internal(format!("key rotation failed: {e}")))?;
    let keys = key_list(&s).await?;
    let out = json!({ "kid": kid, "revoke_previous": body.revoke_previous, "keys": keys });
    audit(
        &s,
        &actor,
        "POST /api/v1/keys/rotate".into(),
        json!(before),
        out.clone(),
    )
    .await;
    Ok(Json(out))
}

/// Deletes retired signing keys once every token they signed has expired, until cancelled.
pub async fn prune_keys(
    tokens: Arc<TokenService>,
    store: Arc<dyn Store>,
    cancel: CancellationToken,
) {
    let retention = tokens.config().key_retention_secs();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(KEY_PRUNE_INTERVAL) => {}
        }
        if let Err(e) = tokens
            .keys()
            .prune(store.as_ref(), crate::now(), retention)
            .await
        {
            tracing::error!(error = %e, "pruning signing keys failed");
        }
    }
}
