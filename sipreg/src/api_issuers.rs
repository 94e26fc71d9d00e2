//! `/api/v1/issuers`: trusted external token issuers (an enterprise IdP). A token whose `iss` is
//! one of them is verified against that issuer's JWKS and names its user by the configured claim;
//! the registrar then treats it exactly like one of ours. Changes apply at once.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Value};
use sipreg_store::{Change, TrustedIssuer};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, check_if_match, with_etag, Actor};
use crate::api::{ApiJson, ApiState};
use crate::problem::Problem;

/// Trusted issuer routes (mounted behind the admin token).
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_issuers, create_issuer))
        .routes(routes!(get_issuer, put_issuer, delete_issuer))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewIssuer {
    /// The issuer URL, compared exactly with tokens' `iss`.
    issuer: String,
    /// JWKS URL (https; http only on loopback hosts). Exactly one of this and `jwks_file`.
    jwks_url: Option<String>,
    /// JWKS file on the server, re-read when it changes.
    jwks_file: Option<String>,
    /// The `aud` the issuer's tokens must carry.
    audience: String,
    /// The claim naming the user (default `sub`).
    user_claim: Option<String>,
    /// Allowed algorithms (default RS256, ES256).
    algorithms: Option<Vec<String>>,
    /// Free text.
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssuerUpdate {
    /// New JWKS URL (replaces `jwks_file`).
    jwks_url: Option<String>,
    /// New JWKS file (replaces `jwks_url`).
    jwks_file: Option<String>,
    /// New audience.
    audience: Option<String>,
    /// New user claim.
    user_claim: Option<String>,
    /// New algorithm allowlist.
    algorithms: Option<Vec<String>>,
    /// New free text.
    description: Option<String>,
}

fn check(s: &ApiState, i: &TrustedIssuer) -> Result<(), Problem> {
    sipreg_tokensvc::validate_issuer(i).map_err(|(f, m)| Problem::invalid(f, m))?;
    if i.issuer == s.tokens.config().issuer {
        return Err(Problem::invalid(
            "issuer",
            "`issuer` is this server's own issuer; its tokens are trusted already",
        ));
    }
    Ok(())
}

async fn find(s: &ApiState, issuer: &str) -> Result<TrustedIssuer, Problem> {
    s.store
        .issuers()
        .await?
        .into_iter()
        .find(|i| i.issuer == issuer)
        .ok_or_else(|| Problem::not_found(format!("issuer {issuer} not found")))
}

#[utoipa::path(get, path = "/api/v1/issuers", tag = "oauth", responses((status = 200, description = "Trusted external token issuers", body = [TrustedIssuer])))]
async fn list_issuers(
    State(s): State<ApiState>,
) -> Result<axum::Json<Vec<TrustedIssuer>>, Problem> {
    Ok(axum::Json(s.store.issuers().await?))
}

#[utoipa::path(post, path = "/api/v1/issuers", tag = "oauth", request_body = NewIssuer, responses((status = 201, description = "Trusted from now on", body = TrustedIssuer)))]
async fn create_issuer(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewIssuer>,
) -> Result<(StatusCode, Response), Problem> {
    let issuer = TrustedIssuer {
        issuer: body.issuer.trim().to_owned(),
        jwks_url: body.jwks_url.map(|u| u.trim().to_owned()),
        jwks_file: body.jwks_file,
        audience: body.audience,
        user_claim: body
            .user_claim
            .unwrap_or_else(|| sipreg_tokensvc::DEFAULT_USER_CLAIM.into()),
        algorithms: body.algorithms.unwrap_or_else(|| {
            sipreg_tokensvc::DEFAULT_ALGORITHMS
                .iter()
                .map(|a| (*a).to_owned())
                .collect()
        }),
        description: body.description,
        updated_at: crate::now(),
    };
    check(&s, &issuer)?;
    s.store.create_issuer(&issuer).await?;
    s.live
        .apply_change(Change::Issuer(issuer.issuer.clone()))
        .await?;
    audit(
        &s,
        &actor,
        format!("POST /api/v1/issuers/{}", issuer.issuer),
        Value::Null,
        json!(issuer),
    )
    .await;
    Ok((StatusCode::CREATED, with_etag(issuer)))
}

#[utoipa::path(get, path = "/api/v1/issuers/{issuer}", tag = "oauth", params(("issuer" = String, Path, description = "Issuer URL, percent-encoded")), responses((status = 200, description = "The issuer", body = TrustedIssuer)))]
async fn get_issuer(
    State(s): State<ApiState>,
    Path(issuer): Path<String>,
) -> Result<Response, Problem> {
    Ok(with_etag(find(&s, &issuer).await?))
}

#[utoipa::path(put, path = "/api/v1/issuers/{issuer}", tag = "oauth",
    params(("issuer" = String, Path, description = "Issuer URL, percent-encoded"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")),
    request_body = IssuerUpdate,
    responses((status = 200, description = "Updated; applies to the next token", body = TrustedIssuer)))]
async fn put_issuer(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(issuer): Path<String>,
    ApiJson(body): ApiJson<IssuerUpdate>,
) -> Result<Response, Problem> {
    let before = find(&s, &issuer).await?;
    check_if_match(&headers, &before)?;
    let mut after = before.clone();
    match (body.jwks_url, body.jwks_file) {
        (Some(u), None) => {
            after.jwks_url = Some(u.trim().to_owned());
            after.jwks_file = None;
        }
        (None, Some(f)) => {
            after.jwks_file = Some(f);
            after.jwks_url = None;
        }
        (Some(u), Some(f)) => {
            after.jwks_url = Some(u);
            after.jwks_file = Some(f);
        }
        (None, None) => {}
    }
    if let Some(a) = body.audience {
        after.audience = a;
    }
    if let Some(c) = body.user_claim {
        after.user_claim = c;
    }
    if let Some(a) = body.algorithms {
        after.algorithms = a;
    }
    if let Some(d) = body.description {
        after.description = d;
    }
    after.updated_at = crate::now();
    check(&s, &after)?;
    s.store.update_issuer(&after).await?;
    s.live
        .apply_change(Change::Issuer(after.issuer.clone()))
        .await?;
    audit(
        &s,
        &actor,
        format!("PUT /api/v1/issuers/{}", after.issuer),
        json!(before),
        json!(after),
    )
    .await;
    Ok(with_etag(after))
}

#[utoipa::path(delete, path = "/api/v1/issuers/{issuer}", tag = "oauth",
    params(("issuer" = String, Path, description = "Issuer URL, percent-encoded"), ("If-Match" = Option<String>, Header, description = "ETag from a GET")),
    responses((status = 204, description = "No longer trusted; its tokens fail from now on")))]
async fn delete_issuer(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Path(issuer): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = find(&s, &issuer).await?;
    check_if_match(&headers, &before)?;
    s.store.delete_issuer(&before.issuer).await?;
    s.live
        .apply_change(Change::Issuer(before.issuer.clone()))
        .await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/issuers/{}", before.issuer),
        json!(before),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
