//! `GET/PATCH /api/v1/cluster`: every cluster setting in one resource, applied live.
//!
//! The settings are the source of truth for token lifetimes, the password-grant and refresh-login
//! switches, the challenge dialect and the registration expiry bounds on every node: the token
//! service and the registrar read them per request from the directory snapshot, which every node
//! rebuilds on the store's change notification.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::json;
use sipreg_store::{ChallengeDialect, ClusterSettings};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, check_if_match, with_etag, Actor};
use crate::api::{ApiJson, ApiState};
use crate::problem::Problem;

/// The cluster routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(get_cluster, patch_cluster))
}

/// A partial update: only the fields present change.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterPatch {
    /// Cluster SIP OAuth mode (opens or closes the SIP OAuth ports).
    pub oauth_mode: Option<bool>,
    /// Access token lifetime in minutes, 1–1440.
    #[schema(minimum = 1, maximum = 1440)]
    pub access_token_lifetime_minutes: Option<u32>,
    /// Refresh token lifetime in days, 1–365.
    #[schema(minimum = 1, maximum = 365)]
    pub refresh_token_lifetime_days: Option<u32>,
    /// "OAuth with Refresh Login": issue refresh tokens and accept the refresh grant.
    pub refresh_login: Option<bool>,
    /// Offer the password grant.
    pub password_grant: Option<bool>,
    /// `auto`, `rfc8898` or `cucm`.
    pub challenge_dialect: Option<ChallengeDialect>,
    /// Expiry granted when a client asks for none, seconds (min_expires–max_expires).
    pub default_expires: Option<u32>,
    /// Shortest expiry accepted, seconds (0–max_expires).
    pub min_expires: Option<u32>,
    /// Longest expiry granted, seconds, 1–86400.
    #[schema(minimum = 1, maximum = 86400)]
    pub max_expires: Option<u32>,
}

impl ClusterPatch {
    /// `current` with this patch's fields applied.
    pub fn apply(&self, current: ClusterSettings) -> ClusterSettings {
        ClusterSettings {
            oauth_mode: self.oauth_mode.unwrap_or(current.oauth_mode),
            access_token_lifetime_minutes: self
                .access_token_lifetime_minutes
                .unwrap_or(current.access_token_lifetime_minutes),
            refresh_token_lifetime_days: self
                .refresh_token_lifetime_days
                .unwrap_or(current.refresh_token_lifetime_days),
            refresh_login: self.refresh_login.unwrap_or(current.refresh_login),
            password_grant: self.password_grant.unwrap_or(current.password_grant),
            challenge_dialect: self.challenge_dialect.unwrap_or(current.challenge_dialect),
            default_expires: self.default_expires.unwrap_or(current.default_expires),
            min_expires: self.min_expires.unwrap_or(current.min_expires),
            max_expires: self.max_expires.unwrap_or(current.max_expires),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", responses((status = 200, description = "Every cluster setting", body = ClusterSettings)))]
async fn get_cluster(State(s): State<ApiState>) -> Result<Response, Problem> {
    Ok(with_etag(s.store.cluster_settings().await?))
}

#[utoipa::path(patch, path = "/api/v1/cluster", tag = "cluster", params(("If-Match" = Option<String>, Header, description = "ETag from a GET")), request_body = ClusterPatch, responses((status = 200, description = "Applied on every node before the next request", body = ClusterSettings), (status = 422, description = "A value is out of its range; `field` names it", body = Problem, content_type = "application/problem+json")))]
async fn patch_cluster(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    ApiJson(patch): ApiJson<ClusterPatch>,
) -> Result<Response, Problem> {
    let before = s.store.cluster_settings().await?;
    check_if_match(&headers, &before)?;
    let after = patch.apply(before);
    if let Err(e) = after.validate() {
        return Err(Problem {
            kind: "urn:sipreg:problem:out-of-range",
            title: "Setting out of range",
            status: 422,
            detail: e.to_string(),
            field: Some(e.field),
        });
    }
    s.store.set_cluster_settings(&after).await?;
    // Apply before answering: the directory (and with it registrar and token service) holds the
    // new values, and an OAuth mode change has opened or closed the port, when the admin sees 200.
    s.live.apply().await?;
    tracing::info!(actor = %actor.name, settings = ?after, "cluster settings changed");
    audit(
        &s,
        &actor,
        "PATCH /api/v1/cluster".into(),
        json!(before),
        json!(after),
    )
    .await;
    Ok(with_etag(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let p: ClusterPatch = serde_json::from_str(
            r#"{"access_token_lifetime_minutes":30,"challenge_dialect":"cucm"}"#,
        )
        .unwrap();
        let got = p.apply(ClusterSettings::default());
        assert_eq!(
            got,
            ClusterSettings {
                access_token_lifetime_minutes: 30,
                challenge_dialect: ChallengeDialect::Cucm,
                ..ClusterSettings::default()
            }
        );
        assert!(serde_json::from_str::<ClusterPatch>(r#"{"dialect":"x"}"#).is_err());
        assert!(serde_json::from_str::<ClusterPatch>(r#"{"challenge_dialect":"x"}"#).is_err());
    }
}
