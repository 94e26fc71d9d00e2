//! `/api/v1/certs/server`: the server certificate shared by the SIP OAuth, MRA and HTTPS ports
//! (Unified CM's "Tomcat" certificate). Regenerating it swaps it into every listener at once —
//! new handshakes see the new certificate, live connections carry on — with no restart.

use std::path::PathBuf;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::json;
use sipreg_certs::ReloadableServerConfig;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, Actor};
use crate::api::ApiState;
use crate::problem::Problem;

/// The live server certificate and the TLS configs that present it.
pub struct CertControl {
    /// The data dir's `tls/` folder.
    pub dir: PathBuf,
    /// Names the certificate must cover.
    pub names: Vec<String>,
    /// SIP (OAuth and MRA ports) config, no ALPN.
    pub sip: ReloadableServerConfig,
    /// HTTPS config (API, tokens, config 6971), ALPN h2/http1.1.
    pub https: ReloadableServerConfig,
}

impl CertControl {
    fn summary(&self) -> Result<CertView, Problem> {
        let path = sipreg_certs::PkiPaths::in_dir(&self.dir).server_cert;
        let pem = std::fs::read(&path)
            .map_err(|e| Problem::internal(format!("{}: {e}", path.display())))?;
        let s = sipreg_certs::summarize_pem(&pem).map_err(|e| Problem::internal(e.to_string()))?;
        Ok(CertView {
            subject: s.subject,
            issuer: s.issuer,
            sans: s.sans,
            not_before: s.not_before,
            not_after: s.not_after,
            sha256: s.sha256,
        })
    }

    /// Issues a new certificate from the local CA and swaps it into every listener.
    pub fn regenerate(&self) -> Result<(), Problem> {
        let paths = sipreg_certs::regenerate_server_cert(&self.dir, &self.names)
            .map_err(|e| Problem::internal(format!("regenerating the certificate: {e}")))?;
        let chain =
            std::fs::read(&paths.server_cert).map_err(|e| Problem::internal(e.to_string()))?;
        let key = std::fs::read(&paths.server_key).map_err(|e| Problem::internal(e.to_string()))?;
        let sip = sipreg_certs::server_config(&chain, &key, &[])
            .map_err(|e| Problem::internal(e.to_string()))?;
        let https = sipreg_certs::server_config(&chain, &key, &[b"h2", b"http/1.1"])
            .map_err(|e| Problem::internal(e.to_string()))?;
        self.sip.replace(sip);
        self.https.replace(https);
        Ok(())
    }
}

/// What operators see of the certificate.
#[derive(Serialize, utoipa::ToSchema)]
struct CertView {
    subject: String,
    issuer: String,
    sans: Vec<String>,
    not_before: i64,
    not_after: i64,
    /// Hex SHA-256 fingerprint of the DER.
    sha256: String,
}

/// Certificate routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(regenerate))
}

#[utoipa::path(get, path = "/api/v1/certs/server", tag = "certificates",
    responses((status = 200, description = "The server certificate", body = CertView)))]
async fn show(State(s): State<ApiState>) -> Result<Json<CertView>, Problem> {
    s.certs.summary().map(Json)
}

#[utoipa::path(post, path = "/api/v1/certs/server/regenerate", tag = "certificates",
    responses((status = 200, description = "A new certificate is live on every port", body = CertView)))]
async fn regenerate(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<CertView>, Problem> {
    let before = s.certs.summary().ok().map(|c| c.sha256);
    let certs = s.certs.clone();
    tokio::task::spawn_blocking(move || certs.regenerate())
        .await
        .map_err(|e| Problem::internal(format!("certificate task failed: {e}")))??;
    let after = s.certs.summary()?;
    tracing::info!(sha256 = %after.sha256, "server certificate regenerated and live");
    audit(
        &s,
        &actor,
        "POST /api/v1/certs/server/regenerate".into(),
        json!({"sha256": before}),
        json!({"sha256": after.sha256}),
    )
    .await;
    Ok(Json(after))
}
