//! Who may use the admin API and what they did: admin tokens with scopes, the audit log, and
//! `ETag`/`If-Match` so two admins do not overwrite each other silently.

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sipreg_store::{AdminToken, AuditEntry};
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiJson, ApiQuery, ApiState};
use crate::problem::Problem;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read and write.
    Admin,
    /// GET and HEAD only.
    Read,
}

/// The authenticated caller, put in request extensions by [`require_admin`].
#[derive(Debug, Clone)]
pub struct Actor {
    /// The token's name (`bootstrap` for the data dir's token).
    pub name: String,
    /// Its scope.
    pub scope: Scope,
}

/// Middleware: authenticates the admin token, enforces read-only scope, and records the actor.
pub async fn require_admin(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    let Some(hash) = presented else {
        return Problem::unauthorized().into_response();
    };
    let actor = if bool::from(hash.as_slice().ct_eq(&state.admin_token_sha256)) {
        Some(Actor {
            name: "bootstrap".into(),
            scope: Scope::Admin,
        })
    } else {
        let hex = hex::encode(hash);
        match state.store.admin_tokens().await {
            Ok(tokens) => tokens
                .into_iter()
                .find(|t| bool::from(t.sha256.as_bytes().ct_eq(hex.as_bytes())))
                .map(|t| Actor {
                    name: t.name,
                    scope: if t.scope == "read" {
                        Scope::Read
                    } else {
                        Scope::Admin
                    },
                }),
            Err(e) => return Problem::from(e).into_response(),
        }
    };
    let Some(actor) = actor else {
        return Problem::unauthorized().into_response();
    };
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if actor.scope == Scope::Read && !reading {
        return Problem::forbidden(format!(
            "token `{}` is read-only; use an admin-scoped token (`sipreg token create NAME`) to change things",
            actor.name
        ))
        .into_response();
    }
    req.extensions_mut().insert(actor);
    next.run(req).await
}

/// Appends an audit entry; a failure to audit is logged, never hidden.
pub async fn audit(s: &ApiState, actor: &Actor, action: String, before: Value, after: Value) {
    let entry = AuditEntry {
        id: 0,
        at: crate::now(),
        actor: actor.name.clone(),
        action,
        before,
        after,
    };
    if let Err(e) = s.store.append_audit(&entry).await {
        tracing::error!(error = %e, action = %entry.action, "writing the audit log failed");
    }
}

/// A strong ETag for a resource's JSON representation.
pub fn etag_of<T: Serialize>(v: &T) -> String {
    let json = serde_json::to_vec(v).unwrap_or_default();
    format!("\"{}\"", hex::encode(&Sha256::digest(&json)[..12]))
}

/// Adds an `ETag` header for `v` to a JSON response.
pub fn with_etag<T: Serialize>(v: T) -> Response {
    let tag = etag_of(&v);
    let mut resp = Json(v).into_response();
    if let Ok(h) = HeaderValue::from_str(&tag) {
        resp.headers_mut().insert(header::ETAG, h);
    }
    resp
}

/// Fails with 412 when the request's `If-Match` does not name the resource's current ETag.
pub fn check_if_match<T: Serialize>(headers: &HeaderMap, current: &T) -> Result<(), Problem> {
    let Some(want) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let tag = etag_of(current);
    if want.trim() == "*" || want.split(',').any(|t| t.trim() == tag) {
        Ok(())
    } else {
        Err(Problem::precondition_failed(format!(
            "the resource changed since you read it (its ETag is now {tag}); read it again and retry"
        )))
    }
}

/// Admin token and audit routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
        .routes(routes!(read_audit))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default = "admin_scope")]
    scope: String,
}

fn admin_scope() -> String {
    "admin".into()
}

#[derive(Serialize, utoipa::ToSchema)]
struct CreatedToken {
    #[serde(flatten)]
    token: AdminToken,
    /// The secret, shown once.
    secret: String,
}

#[utoipa::path(post, path = "/api/v1/admin-tokens", tag = "admin", request_body = NewToken, responses((status = 201, description = "Created; the secret is shown once", body = CreatedToken)))]
async fn create_token(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), Problem> {
    if body.name.is_empty() || body.name.len() > 64 || body.name.chars().any(|c| c.is_control()) {
        return Err(Problem::invalid(
            "name",
            "`name` must be 1–64 printable characters",
        ));
    }
    if body.scope != "admin" && body.scope != "read" {
        return Err(Problem::invalid(
            "scope",
            "`scope` must be `admin` or `read`",
        ));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let mut id = [0u8; 6];
    rand::rng().fill_bytes(&mut id);
    let token = AdminToken {
        id: hex::encode(id),
        name: body.name,
        scope: body.scope,
        sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        created_at: crate::now(),
    };
    s.store.create_admin_token(&token).await?;
    audit(
        &s,
        &actor,
        format!("POST /api/v1/admin-tokens/{}", token.id),
        Value::Null,
        serde_json::to_value(&token).unwrap_or_default(),
    )
    .await;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

#[utoipa::path(get, path = "/api/v1/admin-tokens", tag = "admin", responses((status = 200, description = "Admin tokens (never their secrets)", body = [AdminToken])))]
async fn list_tokens(State(s): State<ApiState>) -> Result<Json<Vec<AdminToken>>, Problem> {
    Ok(Json(s.store.admin_tokens().await?))
}

#[utoipa::path(delete, path = "/api/v1/admin-tokens/{id}", tag = "admin", params(("id" = String, Path, description = "Token id")), responses((status = 204, description = "Revoked")))]
async fn delete_token(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = s
        .store
        .admin_tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id);
    s.store.delete_admin_token(&id).await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/admin-tokens/{id}"),
        serde_json::to_value(before).unwrap_or_default(),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "admin", params(AuditQuery), responses((status = 200, description = "Audit entries, oldest first", body = [AuditEntry])))]
async fn read_audit(
    State(s): State<ApiState>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, Problem> {
    Ok(Json(s.store.audit(q.after, q.limit.clamp(1, 1000)).await?))
}
