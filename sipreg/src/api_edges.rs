//! `/api/v1/edges`, `/api/v1/trust` and `/api/v1/mra`: the edge proxies allowed on the SIP MRA
//! OAuth port (host, description, the CN/SAN values to accept), the trust store their
//! certificates must chain to, and the live edge connections. Every change applies at once:
//! an edge entry or trust anchor removed closes the edge connections it admitted.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sipreg_store::{Edge, Store, TrustCert};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, Actor};
use crate::api::{ApiJson, ApiQuery, ApiState, Page};
use crate::problem::Problem;

/// Longest host, description or subject name (AXL's `String255`).
const MAX_FIELD: usize = 255;
/// Longest subject-name list in total (AXL's `String4096`).
const MAX_NAMES_TOTAL: usize = 4096;

/// Edge, trust store and MRA routes (mounted behind the admin token).
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_edges, create_edge))
        .routes(routes!(get_edge, put_edge, delete_edge))
        .routes(routes!(list_trust, add_trust))
        .routes(routes!(get_trust, delete_trust))
        .routes(routes!(mra_state))
}

/// A bad edge field: (field name, what is wrong).
pub(crate) type FieldError = (&'static str, String);

fn printable(v: &str) -> bool {
    !v.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Checks an edge's fields; the same rules serve REST and AXL.
pub(crate) fn validate_edge(edge: &Edge) -> Result<(), FieldError> {
    if edge.host.is_empty() || edge.host.len() > MAX_FIELD || !printable(&edge.host) {
        return Err((
            "host",
            format!("`host` must be a host name or IP address of 1–{MAX_FIELD} characters without spaces"),
        ));
    }
    if edge.description.len() > MAX_FIELD || edge.description.chars().any(char::is_control) {
        return Err((
            "description",
            format!("`description` must be at most {MAX_FIELD} printable characters"),
        ));
    }
    for n in &edge.subject_names {
        if n.is_empty() || n.len() > MAX_FIELD || !printable(n) {
            return Err((
                "subject_names",
                format!("each subject name must be a CN/SAN value of 1–{MAX_FIELD} characters without spaces, got {n:?}"),
            ));
        }
    }
    let total: usize = edge.subject_names.iter().map(|n| n.len() + 1).sum();
    if total > MAX_NAMES_TOTAL {
        return Err((
            "subject_names",
            format!("subject names may hold at most {MAX_NAMES_TOTAL} characters in total"),
        ));
    }
    Ok(())
}

/// The edge whose host equals `host`, compared case-insensitively (host names are).
pub(crate) async fn find_edge(store: &dyn Store, host: &str) -> Result<Option<Edge>, Problem> {
    Ok(store
        .edges()
        .await?
        .into_iter()
        .find(|e| e.host.eq_ignore_ascii_case(host)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewEdge {
    /// Host name or IP address of the edge; the key.
    host: String,
    /// Free text.
    #[serde(default)]
    description: String,
    /// The CN/SAN values to accept from the edge's certificate; empty accepts the host itself.
    #[serde(default)]
    subject_names: Vec<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EdgeUpdate {
    /// New free text (unchanged when absent).
    description: Option<String>,
    /// New CN/SAN list (unchanged when absent).
    subject_names: Option<Vec<String>>,
}

#[utoipa::path(get, path = "/api/v1/edges", tag = "edges", params(Page), responses((status = 200, description = "Edge proxies allowed on the MRA port", body = [Edge])))]
async fn list_edges(
    State(s): State<ApiState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Response, Problem> {
    Ok(page.apply("edges", s.store.edges().await?))
}

#[utoipa::path(post, path = "/api/v1/edges", tag = "edges", request_body = NewEdge, responses((status = 201, description = "Created; applies to the next handshake", body = Edge)))]
async fn create_edge(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewEdge>,
) -> Result<(StatusCode, Json<Edge>), Problem> {
    let edge = Edge {
        host: body.host.trim().to_owned(),
        description: body.description,
        subject_names: body
            .subject_names
            .iter()
            .map(|n| n.trim().to_owned())
            .collect(),
        updated_at: crate::now(),
    };
    validate_edge(&edge).map_err(|(f, m)| Problem::invalid(f, m))?;
    if find_edge(s.store.as_ref(), &edge.host).await?.is_some() {
        return Err(sipreg_store::StoreError::Conflict(format!("edge {}", edge.host)).into());
    }
    s.store.upsert_edge(&edge).await?;
    s.live.apply().await?;
    audit(
        &s,
        &actor,
        format!("POST /api/v1/edges/{}", edge.host),
        Value::Null,
        json!(edge),
    )
    .await;
    Ok((StatusCode::CREATED, Json(edge)))
}

#[utoipa::path(get, path = "/api/v1/edges/{host}", tag = "edges", params(("host" = String, Path, description = "Edge host (case-insensitive)")), responses((status = 200, description = "The edge", body = Edge)))]
async fn get_edge(
    State(s): State<ApiState>,
    Path(host): Path<String>,
) -> Result<Json<Edge>, Problem> {
    find_edge(s.store.as_ref(), &host)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("edge {host} not found")))
}

#[utoipa::path(put, path = "/api/v1/edges/{host}", tag = "edges", params(("host" = String, Path, description = "Edge host (case-insensitive)")), request_body = EdgeUpdate, responses((status = 200, description = "Updated; edge connections no longer matching are closed", body = Edge)))]
async fn put_edge(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(host): Path<String>,
    ApiJson(body): ApiJson<EdgeUpdate>,
) -> Result<Json<Edge>, Problem> {
    let before = find_edge(s.store.as_ref(), &host)
        .await?
        .ok_or_else(|| Problem::not_found(format!("edge {host} not found")))?;
    let mut edge = before.clone();
    if let Some(d) = body.description {
        edge.description = d;
    }
    if let Some(n) = body.subject_names {
        edge.subject_names = n.iter().map(|n| n.trim().to_owned()).collect();
    }
    edge.updated_at = crate::now();
    validate_edge(&edge).map_err(|(f, m)| Problem::invalid(f, m))?;
    s.store.upsert_edge(&edge).await?;
    s.live.apply().await?;
    audit(
        &s,
        &actor,
        format!("PUT /api/v1/edges/{}", edge.host),
        json!(before),
        json!(edge),
    )
    .await;
    Ok(Json(edge))
}

#[utoipa::path(delete, path = "/api/v1/edges/{host}", tag = "edges", params(("host" = String, Path, description = "Edge host (case-insensitive)")), responses((status = 204, description = "Deleted; its live connections are closed")))]
async fn delete_edge(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(host): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = find_edge(s.store.as_ref(), &host)
        .await?
        .ok_or_else(|| Problem::not_found(format!("edge {host} not found")))?;
    s.store.delete_edge(&before.host).await?;
    // Apply before answering: the edge's connections are closed when the admin sees 204.
    s.live.apply().await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/edges/{}", before.host),
        json!(before),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTrust {
    /// One CA certificate, PEM.
    pem: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TrustView {
    /// Hex SHA-256 of the DER; the key.
    fingerprint: String,
    /// Subject, for display.
    subject: String,
    /// Unix seconds when added.
    added_at: i64,
    /// Unix seconds of `notAfter`, when readable.
    not_after: Option<i64>,
    /// Whether the certificate is a CA.
    is_ca: Option<bool>,
    /// Whole days until `not_after` (negative once expired), when readable.
    expires_in_days: Option<i64>,
    /// True when it expires within 30 days (or has expired): replace it.
    expiring: bool,
    /// The certificate, PEM.
    pem: String,
}

impl From<TrustCert> for TrustView {
    fn from(t: TrustCert) -> Self {
        let summary = sipreg_certs::summarize_pem(t.pem.as_bytes()).ok();
        let days = summary
            .as_ref()
            .map(|s| crate::api_certs::days_left(s.not_after, crate::now()));
        TrustView {
            fingerprint: t.fingerprint,
            subject: t.subject,
            added_at: t.added_at,
            not_after: summary.as_ref().map(|s| s.not_after),
            expires_in_days: days,
            expiring: days.is_some_and(|d| d < crate::api_certs::EXPIRY_WARNING_DAYS),
            is_ca: summary.map(|s| s.is_ca),
            pem: t.pem,
        }
    }
}

/// Reads exactly one certificate out of PEM text into a trust store entry.
pub(crate) fn trust_entry(pem: &str) -> Result<TrustCert, String> {
    let certs = sipreg_registrar::edge_trust::certs_from_pem(pem)?;
    let [der] = certs.as_slice() else {
        return Err(format!(
            "give one certificate per entry, got {}",
            certs.len()
        ));
    };
    let summary = sipreg_certs::summarize_der(der.as_ref())
        .map_err(|e| format!("not a readable X.509 certificate: {e}"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut canonical = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        canonical.push_str(&String::from_utf8_lossy(line));
        canonical.push('\n');
    }
    canonical.push_str("-----END CERTIFICATE-----\n");
    Ok(TrustCert {
        fingerprint: hex::encode(Sha256::digest(der.as_ref())),
        pem: canonical,
        subject: summary.subject,
        added_at: crate::now(),
    })
}

#[utoipa::path(get, path = "/api/v1/trust", tag = "trust", responses((status = 200, description = "The trust store: CAs edge certificates must chain to", body = [TrustView])))]
async fn list_trust(State(s): State<ApiState>) -> Result<Json<Vec<TrustView>>, Problem> {
    Ok(Json(
        s.store
            .trust_certs()
            .await?
            .into_iter()
            .map(TrustView::from)
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/trust", tag = "trust", request_body = NewTrust, responses((status = 201, description = "Added; applies to the next handshake", body = TrustView)))]
async fn add_trust(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewTrust>,
) -> Result<(StatusCode, Json<TrustView>), Problem> {
    let entry = trust_entry(&body.pem).map_err(|m| Problem::invalid("pem", m))?;
    s.store.add_trust_cert(&entry).await?;
    s.live.apply().await?;
    let view = TrustView::from(entry);
    audit(
        &s,
        &actor,
        format!("POST /api/v1/trust/{}", view.fingerprint),
        Value::Null,
        json!({"fingerprint": view.fingerprint, "subject": view.subject}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn find_trust(s: &ApiState, fingerprint: &str) -> Result<TrustCert, Problem> {
    let want = fingerprint.replace(':', "").to_ascii_lowercase();
    s.store
        .trust_certs()
        .await?
        .into_iter()
        .find(|t| t.fingerprint == want)
        .ok_or_else(|| Problem::not_found(format!("trust anchor {fingerprint} not found")))
}

#[utoipa::path(get, path = "/api/v1/trust/{fingerprint}", tag = "trust", params(("fingerprint" = String, Path, description = "Hex SHA-256 (colons allowed)")), responses((status = 200, description = "The trust anchor", body = TrustView)))]
async fn get_trust(
    State(s): State<ApiState>,
    Path(fingerprint): Path<String>,
) -> Result<Json<TrustView>, Problem> {
    Ok(Json(find_trust(&s, &fingerprint).await?.into()))
}

#[utoipa::path(delete, path = "/api/v1/trust/{fingerprint}", tag = "trust", params(("fingerprint" = String, Path, description = "Hex SHA-256 (colons allowed)")), responses((status = 204, description = "Removed; edge connections chaining only to it are closed")))]
async fn delete_trust(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    Path(fingerprint): Path<String>,
) -> Result<StatusCode, Problem> {
    let before = find_trust(&s, &fingerprint).await?;
    s.store.delete_trust_cert(&before.fingerprint).await?;
    s.live.apply().await?;
    audit(
        &s,
        &actor,
        format!("DELETE /api/v1/trust/{}", before.fingerprint),
        json!({"fingerprint": before.fingerprint, "subject": before.subject}),
        Value::Null,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/mra", tag = "edges", responses((status = 200, description = "The MRA port: address, trust anchors loaded, live edge connections, refusal counters", body = Object)))]
async fn mra_state(State(s): State<ApiState>) -> Result<Json<Value>, Problem> {
    let Some(mra) = s.live.mra() else {
        return Ok(Json(json!({"address": null, "open": false})));
    };
    let addr = mra.local_addr();
    Ok(Json(json!({
        "address": addr.map(|a| a.to_string()),
        "open": addr.is_some(),
        "trust_anchors": mra.trust().anchor_count(),
        "connections": mra.connections(),
        "decisions": mra.trust().stats().snapshot(),
        "limits": mra.connection_stats(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(host: &str, names: &[&str]) -> Edge {
        Edge {
            host: host.into(),
            description: String::new(),
            subject_names: names.iter().map(|s| s.to_string()).collect(),
            updated_at: 0,
        }
    }

    #[test]
    fn edge_fields_are_checked() {
        assert!(validate_edge(&edge("expc.example.com", &["*.example.com"])).is_ok());
        assert_eq!(validate_edge(&edge("", &[])).unwrap_err().0, "host");
        assert_eq!(validate_edge(&edge("a b", &[])).unwrap_err().0, "host");
        assert_eq!(
            validate_edge(&edge("h", &["x y"])).unwrap_err().0,
            "subject_names"
        );
        let many: Vec<String> = (0..40).map(|i| format!("{i:0>120}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            validate_edge(&edge("h", &many)).unwrap_err().0,
            "subject_names"
        );
    }

    #[test]
    fn trust_entries_hold_exactly_one_certificate() {
        let a = rcgen_free_pem();
        let t = trust_entry(&a).unwrap();
        assert_eq!(t.fingerprint.len(), 64);
        assert!(t.pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        // Round trip: the canonical PEM has the same fingerprint.
        assert_eq!(trust_entry(&t.pem).unwrap().fingerprint, t.fingerprint);
        assert!(trust_entry(&format!("{a}{a}"))
            .unwrap_err()
            .contains("one certificate"));
        assert!(trust_entry("junk").is_err());
    }

    /// The local CA of a fresh PKI, as a test certificate.
    fn rcgen_free_pem() -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = sipreg_certs::load_or_create(dir.path(), &["localhost".to_string()]).unwrap();
        std::fs::read_to_string(p.ca_cert).unwrap()
    }
}
