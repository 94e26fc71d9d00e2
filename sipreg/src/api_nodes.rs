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
    let this_node = name == s.live.node_name();
    if this_node {
        check_ports(&s, &old, &new)?;
    }
    s.store.upsert_node(&new).await?;
    let applied = match s.live.apply().await {
        Ok(()) => mra_followed(&s, &old, &new),
        Err(problem) => Err(problem),
    };
    if let Err(problem) = applied {
        // The new port could not be bound: put the old one back, so the node keeps serving there.
        s.store.upsert_node(&old).await?;
        s.live.apply().await?;
        return Err(problem);
    }
    tracing::info!(node = %name, sip_oauth_port = new.sip_oauth_port, sip_mra_oauth_port = new.sip_mra_oauth_port,
        sip_port = new.sip_port, secured_sip_port = new.secured_sip_port, "node ports changed");
    Ok(Json(new))
}

/// The config key of the listener each node port field sets (the legacy ones are among the
/// ports [`crate::live::Live::reserved_by_other`] knows, at the port they hold now).
fn own_key(field: &str) -> &'static str {
    match field {
        "sip_port" => "listen.sip_port",
        "secured_sip_port" => "listen.secured_sip_port",
        _ => "",
    }
}

/// Refuses (409, naming the field and the other listener) a changed port of this node that
/// another of its listeners holds or that another process holds. Ports are tried by binding
/// them for a moment before anything is stored, so a refusal leaves the store and the old
/// listener as they were.
fn check_ports(s: &ApiState, old: &Node, new: &Node) -> Result<(), Problem> {
    let fields = [
        ("sip_oauth_port", old.sip_oauth_port, new.sip_oauth_port),
        (
            "sip_mra_oauth_port",
            old.sip_mra_oauth_port,
            new.sip_mra_oauth_port,
        ),
        ("sip_port", old.sip_port, new.sip_port),
        (
            "secured_sip_port",
            old.secured_sip_port,
            new.secured_sip_port,
        ),
    ];
    // Legacy TCP and TLS cannot share a port (UDP may share one with TLS).
    if s.live.legacy_tcp_and_tls()
        && new.sip_port == new.secured_sip_port
        && (new.sip_port != old.sip_port || new.secured_sip_port != old.secured_sip_port)
    {
        let field = if new.sip_port != old.sip_port {
            "sip_port"
        } else {
            "secured_sip_port"
        };
        return Err(Problem::port_unavailable(
            field,
            format!(
                "sip_port and secured_sip_port are both {}; give each its own port",
                new.sip_port
            ),
        ));
    }
    for (field, before, port) in fields {
        if port == before {
            continue;
        }
        if let Some(key) = s.live.reserved_by_other(port, own_key(field)) {
            return Err(Problem::port_unavailable(
                field,
                format!(
                    "port {port} is already used by this node's `{key}` listener; choose another"
                ),
            ));
        }
        // The two OAuth ports never share a port with each other.
        for (other, _, other_port) in fields.iter().take(2) {
            if *other != field && *other_port == port {
                return Err(Problem::port_unavailable(
                    field,
                    format!(
                        "port {port} is this node's `{other}` too; give each listener its own port"
                    ),
                ));
            }
        }
        // A port this node's own listener for the same field already holds needs no probe.
        let held = match field {
            "sip_oauth_port" => s.live.oauth_local_addr().map(|a| a.port()),
            "sip_mra_oauth_port" => s.live.mra_local_addr().map(|a| a.port()),
            f => s.live.reserved_port(own_key(f)),
        };
        if held == Some(port) {
            continue;
        }
        let ip = s.live.ip();
        let probe = std::net::TcpListener::bind((ip, port))
            .map(drop)
            .and_then(|()| {
                if field == "sip_port" {
                    std::net::UdpSocket::bind((ip, port)).map(drop)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = probe {
            return Err(Problem::port_unavailable(
                field,
                format!("port {port} is in use by another process ({e}); choose a free port"),
            ));
        }
    }
    Ok(())
}

/// After a change of the MRA port: when OAuth mode has the MRA port open, it must be open on the
/// new port (the MRA listener logs rather than fails, so the check is made here).
fn mra_followed(s: &ApiState, old: &Node, new: &Node) -> Result<(), Problem> {
    if new.sip_mra_oauth_port == old.sip_mra_oauth_port || s.live.node_name() != new.name {
        return Ok(());
    }
    let open = s.live.mra().is_some() && s.live.directory().snapshot().oauth_mode();
    let now = s.live.mra_local_addr().map(|a| a.port());
    if open && now != Some(new.sip_mra_oauth_port) {
        return Err(Problem::port_unavailable(
            "sip_mra_oauth_port",
            format!(
                "cannot listen on the SIP MRA OAuth port {}; choose a free port",
                new.sip_mra_oauth_port
            ),
        ));
    }
    Ok(())
}
