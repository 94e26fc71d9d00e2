//! `/api/v1/registrations`: the cluster's bindings (this node's live, other nodes' as persisted),
//! filtered by AOR, device or user; and force-unregistering a device's or an AOR's bindings here.

use std::collections::HashSet;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sipreg_registrar::location::Binding;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, Actor};
use crate::api::{ApiQuery, ApiState};
use crate::problem::Problem;

/// Registration routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(list_registrations, unregister))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Only this address of record (`user@host`).
    aor: Option<String>,
    /// Only this device's bindings (case-insensitive).
    device: Option<String>,
    /// Only this user's bindings.
    user: Option<String>,
}

impl Filter {
    fn matches(&self, aor: &str, device: Option<&str>, user: &str) -> bool {
        self.aor.as_deref().is_none_or(|a| a == aor)
            && self
                .device
                .as_deref()
                .is_none_or(|d| device.is_some_and(|x| x.eq_ignore_ascii_case(d)))
            && self.user.as_deref().is_none_or(|u| u == user)
    }
}

/// One binding as operators see it.
#[derive(Serialize, utoipa::ToSchema)]
struct RegistrationView {
    aor: String,
    contact: String,
    expires_in: i64,
    device: Option<String>,
    user: String,
    path: Vec<String>,
    instance: Option<String>,
    /// The node holding the binding's flow.
    node: String,
    /// `open`, `closed` or `unknown` (restored after a restart).
    flow: String,
}

fn view(aor: &str, b: &Binding, node: &str, now: i64) -> RegistrationView {
    RegistrationView {
        aor: aor.to_owned(),
        contact: b.contact_uri.clone(),
        expires_in: b.expires_at - now,
        device: b.device.clone(),
        user: b.user.clone(),
        path: b.path.clone(),
        instance: b.instance.clone(),
        node: node.to_owned(),
        flow: format!("{:?}", b.flow_state).to_ascii_lowercase(),
    }
}

#[utoipa::path(get, path = "/api/v1/registrations", tag = "registrations", params(Filter),
    responses((status = 200, description = "Bindings of the cluster, this node's live", body = [RegistrationView])))]
async fn list_registrations(
    State(s): State<ApiState>,
    ApiQuery(f): ApiQuery<Filter>,
) -> Result<Json<Vec<RegistrationView>>, Problem> {
    let now = crate::now();
    let me = s.live.node_name().to_owned();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (aor, b) in s.status.registrar.location.all(now) {
        if f.matches(&aor, b.device.as_deref(), &b.user) {
            seen.insert((aor.clone(), b.key()));
            out.push(view(&aor, &b, &me, now));
        }
    }
    // Other nodes' bindings, as they persisted them (at most one write-behind interval old).
    for row in s.store.load_bindings(now).await? {
        if row.node == me {
            continue;
        }
        let Ok(b) = serde_json::from_str::<Binding>(&row.data) else {
            continue;
        };
        if f.matches(&row.aor, b.device.as_deref(), &b.user)
            && seen.insert((row.aor.clone(), b.key()))
        {
            out.push(view(&row.aor, &b, &row.node, now));
        }
    }
    Ok(Json(out))
}

#[utoipa::path(delete, path = "/api/v1/registrations", tag = "registrations", params(Filter),
    responses((status = 200, description = "How many of this node's bindings were removed", body = Object)))]
async fn unregister(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiQuery(f): ApiQuery<Filter>,
) -> Result<Json<serde_json::Value>, Problem> {
    if f.aor.is_none() && f.device.is_none() && f.user.is_none() {
        return Err(Problem::invalid(
            "device",
            "name what to unregister: `?device=`, `?aor=` or `?user=`",
        ));
    }
    let location = &s.status.registrar.location;
    let wanted = |b: &Binding| {
        f.device.as_deref().is_none_or(|d| {
            b.device
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case(d))
        }) && f.user.as_deref().is_none_or(|u| b.user == u)
    };
    let removed = match &f.aor {
        Some(aor) => location.remove_in(aor, wanted),
        None => location.remove_where(wanted),
    };
    let body = json!({"removed": removed});
    audit(
        &s,
        &actor,
        format!(
            "DELETE /api/v1/registrations?aor={:?}&device={:?}&user={:?}",
            f.aor, f.device, f.user
        ),
        serde_json::Value::Null,
        body.clone(),
    )
    .await;
    Ok(Json(body))
}
