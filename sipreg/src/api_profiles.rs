//! `/api/v1/security-profiles`: device security profiles (Unified CM's Phone Security Profiles).
//!
//! A profile says whether its devices may register on the SIP OAuth ports (`oauth`) and with
//! Digest on the legacy ports (`digest`, over `transport`). The registrar reads the profiles from
//! the directory snapshot per request, so a change applies at once to every device using it.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use sipreg_store::{
    Change, Device, ProfileTransport, SecurityProfile, StoreError, DEFAULT_OAUTH_PROFILE,
    DEFAULT_PROFILE,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, check_if_match, with_etag, Actor};
use crate::api::{ApiJson, ApiQuery, ApiState, Page};
use crate::problem::Problem;

/// The security profile routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_profiles, create_profile))
        .routes(routes!(get_profile, patch_profile, delete_profile))
}

/// 422 naming `field`: a reference to something that does not exist or does not fit.
fn unprocessable(field: &'static str, detail: impl Into<String>) -> Problem {
    Problem {
        kind: "urn:sipreg:problem:invalid-reference",
        title: "Invalid reference",
        status: 422,
        detail: detail.into(),
        field: Some(field),
    }
}

/// A free-text value: at most `max` characters, no control characters.
fn valid_text(field: &'static str, v: &str, max: usize) -> Result<(), Problem> {
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(Problem::invalid(
            field,
            format!("`{field}` is at most {max} characters, no control characters"),
        ));
    }
    Ok(())
}

/// A profile name: 1–128 characters, no control characters and no `/` (it is a path segment).
fn valid_name(v: &str) -> Result<(), Problem> {
    if v.trim().is_empty() || v.trim() != v || v.contains('/') {
        return Err(Problem::invalid(
            "name",
            "`name` must be 1–128 characters without `/` or surrounding spaces",
        ));
    }
    valid_text("name", v, 128)
}

/// Checks a device model given in a request: 1–100 characters, no control characters.
pub fn valid_model(model: Option<String>) -> Result<Option<String>, Problem> {
    if let Some(m) = &model {
        if m.trim().is_empty() {
            return Err(Problem::invalid("model", "`model` must not be empty"));
        }
        valid_text("model", m, 100)?;
    }
    Ok(model)
}

/// The profile a device create or change stores. `profile` must exist, and agree with `oauth`
/// when both are given. `oauth` alone (older clients) keeps the device's profile if it already
/// says so, else picks the default OAuth or non-OAuth profile.
pub async fn device_profile(
    s: &ApiState,
    profile: Option<String>,
    oauth: Option<bool>,
    before: Option<&Device>,
) -> Result<String, Problem> {
    match (profile, oauth) {
        (Some(name), oauth) => {
            let Some(p) = s.store.profile(&name).await? else {
                return Err(unprocessable(
                    "profile",
                    format!(
                        "security profile `{name}` does not exist; see GET /api/v1/security-profiles"
                    ),
                ));
            };
            if oauth.is_some_and(|o| o != p.oauth) {
                return Err(unprocessable(
                    "oauth",
                    format!(
                        "`oauth` contradicts security profile `{name}` (oauth {}); leave `oauth` out",
                        p.oauth
                    ),
                ));
            }
            Ok(p.name)
        }
        (None, Some(o)) => Ok(match before {
            Some(b) if b.oauth == o => b.profile.clone(),
            _ if o => DEFAULT_OAUTH_PROFILE.to_owned(),
            _ => DEFAULT_PROFILE.to_owned(),
        }),
        (None, None) => Ok(before
            .map(|b| b.profile.clone())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_owned())),
    }
}

/// A new security profile.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewProfile {
    /// The profile's name (the key).
    name: String,
    /// Free text.
    #[serde(default)]
    description: String,
    /// Devices may register on the SIP OAuth ports.
    #[serde(default)]
    oauth: bool,
    /// Devices may register with Digest on the legacy ports.
    #[serde(default = "yes")]
    digest: bool,
    /// Legacy transports allowed for Digest: `tcp`, `tls`, `udp`, `tcp+tls` or `any`.
    #[serde(default)]
    transport: ProfileTransport,
}

fn yes() -> bool {
    true
}

#[utoipa::path(get, path = "/api/v1/security-profiles", tag = "security-profiles", params(Page), responses((status = 200, description = "Security profiles, by name", body = [SecurityProfile])))]
async fn list_profiles(
    State(s): State<ApiState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, Problem> {
    Ok(page.apply("security-profiles", s.store.profiles().await?))
}

#[utoipa::path(post, path = "/api/v1/security-profiles", tag = "security-profiles", request_body = NewProfile, responses((status = 201, description = "Created", body = SecurityProfile)))]
async fn create_profile(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewProfile>,
) -> Result<(StatusCode, Json<SecurityProfile>), Problem> {
    valid_name(&body.name)?;
    valid_text("description", &body.description, 512)?;
    let p = SecurityProfile {
        name: body.name,
        description: body.description,
        oauth: body.oauth,
        digest: body.digest,
        transport: body.transport,
    };
    s.store.create_profile(&p).await?;
    s.live.apply_change(Change::Profile(p.name.clone())).await?;
    audit(
        &s,
        &actor,
        format!("POST /api/v1/security-profiles/{}", p.name),
        Value::Null,
        json!(p),
    )
    .await;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn existing(s: &ApiState, name: &str) -> Result<SecurityProfile, Problem> {
    s.store
        .profile(name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("security profile {name} not found")))
}

#[utoipa::path(get, path = "/api/v1/security-profiles/{name}", tag = "security-profiles", params(("name" = String, Path, description = "Profile name")), responses((status = 200, description = "The profile", body = SecurityProfile)))]
async fn get_profile(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    Ok(with_etag(existing(&s, &name).await?))
}

/// A partial update: only the fields present change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ProfilePatch {
    /// Free text.
    description: Option<String>,
    /// Devices may register on the SIP OAuth ports.
    oauth: Option<bool>,
    /// Devices may register with Digest on the legacy ports.
    digest: Option<bool>,
    /// Legacy transports allowed for Digest.
    transport: Option<ProfileTransport>,
}

#[utoipa::path(patch, path = "/api/v1/security-profiles/{name}", tag = "security-profiles",
    params(("name" = String, Path, description = "Profile name"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")),
    request_body = ProfilePatch,
    responses((status = 200, description = "Changed; its devices follow at once", body = SecurityProfile)))]
async fn patch_profile(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ProfilePatch>,
) -> Result<Response, Problem> {
    let before = existing(&s, &name).await?;
    check_if_match(&headers, &before)?;
    let mut after = before.clone();
    if let Some(d) = body.description {
        valid_text("description", &d, 512)?;
        after.description = d;
    }
    after.oauth = body.oauth.unwrap_or(after.oauth);
    after.digest = body.digest.unwrap_or(after.digest);
    after.transport = body.transport.unwrap_or(after.transport);
    s.store.update_profile(&after).await?;
    s.live
        .apply_change(Change::Profile(after.name.clone()))
        .await?;
    tracing::info!(profile = %after.name, oauth = after.oauth, digest = after.digest, transport = after.transport.as_str(), actor = %actor.name, "security profile changed");
    audit(
        &s,
        &actor,
        format!("PATCH /api/v1/security-profiles/{name}"),
        json!(before),
        json!(after),
    )
    .await;
    Ok(with_etag(after))
}

#[utoipa::path(delete, path = "/api/v1/security-profiles/{name}", tag = "security-profiles", params(("name" = String, Path, description = "Profile name"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")), responses((status = 204, description = "Deleted")))]
async fn delete_profile(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = existing(&s, &name).await?;
    check_if_match(&headers, &before)?;
    match s.store.delete_profile(&name).await {
        Ok(()) => {}
        // The store refuses while devices use it: that is a conflict with existing state.
        Err(StoreError::Invalid(why)) => {
            return Err(Problem {
                kind: "urn:sipreg:problem:in-use",
                title: "In use",
                status: 409,
                detail: format!("{why}; move them to another profile first"),
                field: None,
            })
        }
        Err(e) => return Err(e.into()),
    }
    s.live.apply_change(Change::Profile(name.clone())).await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/security-profiles/{name}"),
        json!(before),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
