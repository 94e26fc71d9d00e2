//! `/api/v1/devices/{name}/digest`: a device's Digest credential for the legacy SIP ports. Only
//! HA1 hashes (MD5 and SHA-256, RFC 7616) for the configured realm are stored; the password is not.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use sipreg_registrar::digest::{ha1, Algorithm};
use sipreg_store::{Change, DigestCredential};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, Actor};
use crate::api::{ApiJson, ApiState};
use crate::problem::Problem;

/// Digest credential routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(set_digest, clear_digest))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDigest {
    /// The Digest user name the phone sends (unique across devices).
    username: String,
    /// The password; only its HA1 hashes are kept.
    password: String,
}

#[utoipa::path(put, path = "/api/v1/devices/{name}/digest", tag = "devices",
    params(("name" = String, Path, description = "Device name")), request_body = NewDigest,
    responses((status = 200, description = "Set; the device may register on the legacy ports with it", body = DigestCredential)))]
async fn set_digest(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<NewDigest>,
) -> Result<Json<DigestCredential>, Problem> {
    let user_ok = !body.username.is_empty()
        && body.username.len() <= 64
        && body
            .username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+@".contains(c));
    if !user_ok {
        return Err(Problem::invalid(
            "username",
            "`username` must be 1–64 letters, digits or `._-+@`",
        ));
    }
    if body.password.is_empty() || body.password.len() > 256 {
        return Err(Problem::invalid(
            "password",
            "`password` must be 1–256 bytes",
        ));
    }
    let realm = s.status.registrar.config.digest_realm.clone();
    let cred = DigestCredential {
        ha1_md5: ha1(Algorithm::Md5, &body.username, &realm, &body.password),
        ha1_sha256: ha1(Algorithm::Sha256, &body.username, &realm, &body.password),
        username: body.username,
        realm,
    };
    s.store.set_digest_credential(&name, Some(&cred)).await?;
    s.live.apply_change(Change::Digest(name.clone())).await?;
    audit(
        &s,
        &actor,
        format!("PUT /api/v1/devices/{name}/digest"),
        Value::Null,
        json!(cred),
    )
    .await;
    Ok(Json(cred))
}

#[utoipa::path(delete, path = "/api/v1/devices/{name}/digest", tag = "devices",
    params(("name" = String, Path, description = "Device name")),
    responses((status = 204, description = "Cleared")))]
async fn clear_digest(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    s.store.set_digest_credential(&name, None).await?;
    s.live.apply_change(Change::Digest(name.clone())).await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/devices/{name}/digest"),
        Value::Null,
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
