//! `GET /api/v1/status`: what `sipreg status` prints — node, listeners open or closed, OAuth mode,
//! counts and certificate expiry (Unified CM's `show open ports` and friends, in one call).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use sipreg_registrar::Registrar;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ApiState;
use crate::problem::Problem;

/// Facts fixed at start plus handles to live state.
pub struct StatusInfo {
    /// Listeners that do not move at run time: (name, address). Filled in as serve opens them.
    pub fixed_listeners: std::sync::RwLock<Vec<(String, String)>>,
    /// The registrar, for binding counts.
    pub registrar: Arc<Registrar>,
    /// The server certificate file.
    pub server_cert: PathBuf,
}

/// The status route.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new().routes(routes!(status))
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status", responses((status = 200, description = "Node, listeners, OAuth mode, counts, certificate expiry and expiry warnings", body = Object)))]
async fn status(State(s): State<ApiState>) -> Result<Json<Value>, Problem> {
    let snap = s.live.directory().snapshot();
    let oauth = s.live.oauth_local_addr();
    let mut listeners: Vec<Value> = s
        .status
        .fixed_listeners
        .read()
        .map(|l| {
            l.iter()
                .map(|(name, addr)| json!({"name": name, "address": addr, "open": true}))
                .collect()
        })
        .unwrap_or_default();
    listeners.push(json!({
        "name": "sip-oauth (TLS)",
        "address": oauth.map(|a| a.to_string()),
        "open": oauth.is_some(),
    }));
    let mra = s.live.mra_local_addr();
    listeners.push(json!({
        "name": "sip-mra-oauth (mTLS)",
        "address": mra.map(|a| a.to_string()),
        "open": mra.is_some(),
    }));
    if let Some(legacy) = s.live.legacy() {
        for (name, addr) in [
            ("sip (UDP, Digest)", legacy.udp_addr()),
            ("sip (TCP, Digest)", legacy.tcp_addr()),
            ("sip-tls (TLS, Digest)", legacy.tls_addr()),
        ] {
            listeners.push(json!({
                "name": name,
                "address": addr.map(|a| a.to_string()),
                "open": addr.is_some(),
            }));
        }
    }
    let expires = std::fs::read(&s.status.server_cert)
        .ok()
        .and_then(|pem| sipreg_certs::summarize_pem(&pem).ok())
        .map(|c| {
            httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.not_after.max(0) as u64),
            )
        });
    Ok(Json(json!({
        "node": s.live.node_name(),
        "oauth_mode": snap.oauth_mode(),
        "listeners": listeners,
        "counts": {
            "users": s.store.users().await?.len(),
            "devices": snap.all_devices().count(),
            "registrations": s.status.registrar.location.len(),
            "edges": snap.edges.len(),
        },
        "server_certificate_expires": expires,
        "certificate_warnings": crate::api_certs::all_warnings(&s).await?,
    })))
}
