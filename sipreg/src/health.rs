//! `/healthz` (the process answers) and `/readyz` (the store answers and listeners match the settings),
//! unauthenticated so load balancers and orchestrators can probe them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::ApiState;

/// The probe routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<ApiState>) -> (StatusCode, Json<Value>) {
    let store = s.store.cluster_settings().await;
    let store_ok = store.is_ok();
    let oauth_mode = store.map(|c| c.oauth_mode).unwrap_or(false);
    let oauth_open = s.live.oauth_local_addr().is_some();
    let listeners_ok = oauth_open == oauth_mode;
    let ready = store_ok && listeners_ok;
    let body = json!({
        "ready": ready,
        "store": if store_ok { "ok" } else { "unreachable" },
        "sip_oauth_listener": match (oauth_mode, oauth_open) {
            (true, true) => "open",
            (false, false) => "closed (OAuth mode off)",
            (true, false) => "should be open but is not",
            (false, true) => "should be closed but is open",
        },
    });
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}
