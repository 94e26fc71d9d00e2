//! `/api/v1/nodes`: each node's advertised and listened-on ports; a change moves the listener live.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use sipreg_store::Node;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiJson, ApiState};
use crate::problem::Problem;

/// Node routes (mounted behind the admin token by [`crate::api::router`]).
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(get_node, patch_node))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct NodeView {
    #[serde(flatten)]
    node: Node,
    /// Unix seconds of the node's last heartbeat (null: never).
    last_heartbeat: Option<i64>,
    /// `up` when it beat within three heartbeat intervals, else `down`.
    state: &'static str,
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", responses((status = 200, description = "Nodes with their ports and last heartbeat", body = [NodeView])))]
async fn list_nodes(State(s): State<ApiState>) -> Result<Json<Vec<NodeView>>, Problem> {
    let stale = crate::now() - 3 * sipreg_store::HEARTBEAT_INTERVAL.as_secs() as i64;
    let nodes = s.store.node_statuses().await?;
    Ok(Json(
        nodes
            .into_iter()
            .map(|n| NodeView {
                state: if n.last_heartbeat.is_some_and(|t| t >= stale) {
                    "up"
                } else {
                    "down"
                },
                node: n.node,
                last_heartbeat: n.last_heartbeat,
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, description = "Node name")), responses((status = 200, description = "The node", body = Node)))]
async fn get_node(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Node>, Problem> {
    find(&s, &name).await.map(Json)
}

async fn find(s: &ApiState, name: &str) -> Result<Node, Problem> {
    s.store
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .ok_or_else(|| Problem::not_found(format!("node {name} not found")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NodePatch {
    sip_oauth_port: Option<u16>,
    sip_mra_oauth_port: Option<u16>,
    sip_port: Option<u16>,
    secured_sip_port: Option<u16>,
    host: Option<String>,
}

fn oauth_range(field: &'static str, v: u16) -> Result<u16, Problem> {
    if (1024..=49151).contains(&v) {
        Ok(v)
    } else {
        Err(Problem::invalid(
            field,
            format!("`{field}` must be in 1024–49151 (Unified CM's range), got {v}"),
        ))
    }
}

#[utoipa::path(patch, path = "/api/v1/nodes/{name}", tag = "nodes", params(("name" = String, Path, description = "Node name")), request_body = NodePatch, responses((status = 200, description = "Applied: the listener moved", body = Node)))]
async fn patch_node(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    ApiJson(p): ApiJson<NodePatch>,
) -> Result<Json<Node>, Problem> {
    let old = find(&s, &name).await?;
    let mut new = old.clone();
    if let Some(v) = p.sip_oauth_port {
        new.sip_oauth_port = oauth_range("sip_oauth_port", v)?;
    }
    if let Some(v) = p.sip_mra_oauth_port {
        new.sip_mra_oauth_port = oauth_range("sip_mra_oauth_port", v)?;
    }
    if let Some(v) = p.sip_port {
        new.sip_port = v.max(1);
    }
    if let Some(v) = p.secured_sip_port {
        new.secured_sip_port = v.max(1);
    }
    if let Some(h) = p.host {
        if h.is_empty() || h.len() > 253 || h.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Problem::invalid(
                "host",
                "`host` must be a host name or address",
            ));
        }
        new.host = h;
    }
    if new.sip_oauth_port == new.sip_mra_oauth_port {
        return Err(Problem::port_unavailable(
            "sip_mra_oauth_port",
            format!(
                "sip_oauth_port and sip_mra_oauth_port are both {}; give each its own port",
                new.sip_oauth_port
            ),
        ));
    }
    if name == s.live.node_name() {
        for (field, port) in [
            ("sip_oauth_port", new.sip_oauth_port),
            ("sip_mra_oauth_port", new.sip_mra_oauth_port),
        ] {
            if let Some(key) = s.live.reserved_by(port) {
                return Err(Problem::port_unavailable(
                    field,
                    format!("port {port} is already used by this node's `{key}` listener; choose another"),
                ));
            }
        }
    }
    s.store.upsert_node(&new).await?;
    if let Err(problem) = s.live.apply().await {
        // The new port could not be bound: put the old one back, so the node keeps serving there.
        s.store.upsert_node(&old).await?;
        s.live.apply().await?;
        return Err(problem);
    }
    tracing::info!(node = %name, sip_oauth_port = new.sip_oauth_port, "node ports changed");
    Ok(Json(new))
}
