//! `/api/v1/certs/server`: the server certificate shared by the SIP OAuth, MRA and HTTPS ports
//! (Unified CM's "Tomcat" certificate). Regenerating it from the local CA, installing an
//! operator's certificate, or changing its files on disk swaps it into every listener at once —
//! new handshakes see the new certificate, live connections carry on — with no restart.
//!
//! The same module watches expiry: the server certificate and every trust anchor closer than
//! [`EXPIRY_WARNING_DAYS`] to `notAfter` are reported by the API and logged once a day.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sipreg_certs::{CertError, PkiPaths, ReloadableServerConfig};
use sipreg_store::Store;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin_auth::{audit, Actor};
use crate::api::{ApiJson, ApiState};
use crate::problem::Problem;

/// A certificate closer than this to `notAfter` is warned about.
pub(crate) const EXPIRY_WARNING_DAYS: i64 = 30;
/// How often the certificate files are checked for changes (two `stat` calls).
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How often expiry is checked (reads the trust store); every fifth poll.
const EXPIRY_EVERY: u32 = 5;
/// A warning about one certificate is logged at most this often.
const WARN_AGAIN_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// Largest PEM accepted per field: a certificate chain is a few KiB; this bounds the body work.
const MAX_PEM: usize = 64 * 1024;

/// mtime and length of the certificate and key files: a change of either means "look again".
type Stamp = [Option<(SystemTime, u64)>; 2];

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
    /// The files as last applied; held while files are written and configs swapped, so the
    /// watcher never sees our own half-written pair.
    applied: Mutex<Stamp>,
    /// When each certificate (by fingerprint) was last warned about.
    warned: Mutex<HashMap<String, Instant>>,
}

/// Why a certificate change could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The offered certificate, key or chain was refused; nothing changed.
    #[error("{0}")]
    Refused(CertError),
    /// Reading or writing the files, or building the TLS configs, failed.
    #[error("{0}")]
    Failed(String),
}

impl From<ApplyError> for Problem {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Refused(CertError::Rejected { field, reason }) => {
                Problem::invalid(field, reason)
            }
            ApplyError::Refused(other) => Problem::invalid("certificate", other.to_string()),
            ApplyError::Failed(m) => Problem::internal(m),
        }
    }
}

impl CertControl {
    /// The controller for the certificate files in `dir`, presented through `sip` and `https`.
    pub fn new(
        dir: PathBuf,
        names: Vec<String>,
        sip: ReloadableServerConfig,
        https: ReloadableServerConfig,
    ) -> Self {
        let applied = stamp(&PkiPaths::in_dir(&dir));
        CertControl {
            dir,
            names,
            sip,
            https,
            applied: Mutex::new(applied),
            warned: Mutex::new(HashMap::new()),
        }
    }

    fn paths(&self) -> PkiPaths {
        PkiPaths::in_dir(&self.dir)
    }

    fn summary(&self) -> Result<CertView, Problem> {
        let path = self.paths().server_cert;
        let pem = std::fs::read(&path)
            .map_err(|e| Problem::internal(format!("{}: {e}", path.display())))?;
        let s = sipreg_certs::summarize_pem(&pem).map_err(|e| Problem::internal(e.to_string()))?;
        let days = days_left(s.not_after, crate::now());
        let warnings = expiry_warning("server certificate", &s.subject, s.not_after, crate::now())
            .into_iter()
            .collect();
        Ok(CertView {
            subject: s.subject,
            issuer: s.issuer,
            sans: s.sans,
            not_before: s.not_before,
            not_after: s.not_after,
            sha256: s.sha256,
            source: if sipreg_certs::server_cert_is_installed(&self.dir) {
                "installed"
            } else {
                "local CA"
            },
            expires_in_days: days,
            warnings,
        })
    }

    /// Builds both TLS configs from a PEM pair and swaps them in; every failure leaves the old.
    fn swap(&self, chain: &[u8], key: &[u8]) -> Result<(), String> {
        let sip = sipreg_certs::sip_server_config(chain, key).map_err(|e| e.to_string())?;
        let https = sipreg_certs::server_config(chain, key, &[b"h2", b"http/1.1"])
            .map_err(|e| e.to_string())?;
        self.sip.replace(sip);
        self.https.replace(https);
        Ok(())
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, Stamp> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a new certificate from the local CA and swaps it into every listener.
    pub fn regenerate(&self) -> Result<(), Problem> {
        let mut applied = self.lock_applied();
        let paths = sipreg_certs::regenerate_server_cert(&self.dir, &self.names)
            .map_err(|e| Problem::internal(format!("regenerating the certificate: {e}")))?;
        let chain =
            std::fs::read(&paths.server_cert).map_err(|e| Problem::internal(e.to_string()))?;
        let key = std::fs::read(&paths.server_key).map_err(|e| Problem::internal(e.to_string()))?;
        self.swap(&chain, &key).map_err(Problem::internal)?;
        *applied = stamp(&paths);
        Ok(())
    }

    /// Checks an operator's certificate, key and chain against the local CA and `trust` (PEMs),
    /// then writes them and swaps them into every listener. A refusal changes nothing.
    pub fn install(
        &self,
        cert: &[u8],
        key: &[u8],
        chain: Option<&[u8]>,
        trust: &[String],
    ) -> Result<(), ApplyError> {
        let pair = self.check(cert, key, chain, trust)?;
        // Both configs are built before anything is written, so a pair rustls refuses never lands.
        let sip = sipreg_certs::sip_server_config(&pair.chain_pem, &pair.key_pem)
            .map_err(ApplyError::Refused)?;
        let https =
            sipreg_certs::server_config(&pair.chain_pem, &pair.key_pem, &[b"h2", b"http/1.1"])
                .map_err(ApplyError::Refused)?;
        let mut applied = self.lock_applied();
        let paths = sipreg_certs::install_server_cert(&self.dir, &pair)
            .map_err(|e| ApplyError::Failed(format!("writing the certificate: {e}")))?;
        self.sip.replace(sip);
        self.https.replace(https);
        *applied = stamp(&paths);
        Ok(())
    }

    fn check(
        &self,
        cert: &[u8],
        key: &[u8],
        chain: Option<&[u8]>,
        trust: &[String],
    ) -> Result<sipreg_certs::CheckedPair, ApplyError> {
        let local_ca = std::fs::read(self.paths().ca_cert).unwrap_or_default();
        let mut anchors: Vec<&[u8]> = vec![&local_ca];
        anchors.extend(trust.iter().map(|t| t.as_bytes()));
        sipreg_certs::check_server_pair(cert, key, chain, &anchors, SystemTime::now())
            .map_err(ApplyError::Refused)
    }

    /// Applies the certificate files when they changed on disk since last applied: checked like an
    /// install, then swapped in. A bad pair (or one caught half-written) is logged and ignored;
    /// the certificate in use stays. Returns whether a new certificate went live.
    pub fn poll_disk(&self, trust: &[String]) -> bool {
        let mut applied = self.lock_applied();
        let paths = self.paths();
        let now = stamp(&paths);
        if now == *applied {
            return false;
        }
        // Recorded at once: a bad pair is reported once, not every poll, until the files change again.
        *applied = now;
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let result = (|| {
            let cert = read(&paths.server_cert)?;
            let key = read(&paths.server_key)?;
            let pair = self
                .check(&cert, &key, None, trust)
                .map_err(|e| e.to_string())?;
            self.swap(&pair.chain_pem, &pair.key_pem)?;
            Ok::<_, String>(pair.leaf)
        })();
        match result {
            Ok(leaf) => {
                tracing::info!(sha256 = %leaf.sha256, subject = %leaf.subject,
                    "server certificate files changed on disk; the new certificate is live");
                true
            }
            Err(reason) => {
                tracing::warn!(path = %paths.server_cert.display(), %reason,
                    "server certificate files changed on disk but were not applied; the previous certificate stays in use");
                false
            }
        }
    }

    /// Logs a warning for each certificate in `certs` (label, subject, notAfter, fingerprint) that
    /// expires within [`EXPIRY_WARNING_DAYS`], at most once a day per certificate.
    fn warn_expiring(&self, certs: &[(&'static str, String, i64, String)]) {
        let now = crate::now();
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        // Only certificates still in use are remembered, so the map stays as small as the trust store.
        warned.retain(|fp, _| certs.iter().any(|c| &c.3 == fp));
        for (label, subject, not_after, fp) in certs {
            let Some(text) = expiry_warning(label, subject, *not_after, now) else {
                continue;
            };
            let due = warned
                .get(fp)
                .is_none_or(|at| at.elapsed() >= WARN_AGAIN_AFTER);
            if due {
                tracing::warn!(sha256 = %fp, "{text}");
                warned.insert(fp.clone(), Instant::now());
            }
        }
    }

    /// Polls the files every 2 s and checks expiry every 10 s until cancelled.
    pub async fn watch(self: Arc<Self>, store: Arc<dyn Store>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let expiry_due = n % EXPIRY_EVERY == 0;
            n = n.wrapping_add(1);
            let trust = match store.trust_certs().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the trust store for the certificate watch failed");
                    Vec::new()
                }
            };
            let this = self.clone();
            let pems: Vec<String> = trust.iter().map(|t| t.pem.clone()).collect();
            let changed = tokio::task::spawn_blocking(move || this.poll_disk(&pems))
                .await
                .unwrap_or(false);
            if !(expiry_due || changed) {
                continue;
            }
            let mut certs = Vec::with_capacity(trust.len() + 1);
            if let Ok(s) = self.summary() {
                certs.push(("server certificate", s.subject, s.not_after, s.sha256));
            }
            for t in &trust {
                if let Ok(s) = sipreg_certs::summarize_pem(t.pem.as_bytes()) {
                    certs.push(("trust anchor", s.subject, s.not_after, s.sha256));
                }
            }
            self.warn_expiring(&certs);
        }
    }
}

fn stamp(paths: &PkiPaths) -> Stamp {
    let one = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    [one(&paths.server_cert), one(&paths.server_key)]
}

/// Whole days from `now` until `not_after` (negative once expired).
pub(crate) fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

/// The warning for a certificate expiring within [`EXPIRY_WARNING_DAYS`], if it is.
pub(crate) fn expiry_warning(
    label: &str,
    subject: &str,
    not_after: i64,
    now: i64,
) -> Option<String> {
    let days = days_left(not_after, now);
    if days >= EXPIRY_WARNING_DAYS {
        return None;
    }
    let when = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
    );
    Some(if not_after <= now {
        format!("{label} {subject} expired on {when}; replace it")
    } else {
        format!("{label} {subject} expires in {days} days ({when}); replace it before then")
    })
}

/// Every expiry warning: the server certificate's and the trust anchors'.
pub(crate) async fn all_warnings(s: &ApiState) -> Result<Vec<String>, Problem> {
    let now = crate::now();
    let mut out = s.certs.summary().map(|c| c.warnings).unwrap_or_default();
    for t in s.store.trust_certs().await? {
        if let Ok(c) = sipreg_certs::summarize_pem(t.pem.as_bytes()) {
            out.extend(expiry_warning("trust anchor", &c.subject, c.not_after, now));
        }
    }
    Ok(out)
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
    /// `local CA` (issued here) or `installed` (an operator's; never re-issued at start).
    source: &'static str,
    /// Whole days until `not_after` (negative once expired).
    expires_in_days: i64,
    /// Expiry warnings (within 30 days, or expired); empty when all is well.
    warnings: Vec<String>,
}

/// An operator's certificate to install.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewCert {
    /// The server certificate, PEM; may be followed by its intermediates.
    certificate: String,
    /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1). Never logged or audited.
    key: String,
    /// Intermediate (and optionally root) CA certificates, PEM.
    #[serde(default)]
    chain: Option<String>,
}

/// Certificate routes.
pub fn router() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(show, install))
        .routes(routes!(regenerate))
}

#[utoipa::path(get, path = "/api/v1/certs/server", tag = "certificates",
    responses((status = 200, description = "The server certificate, with expiry warnings", body = CertView)))]
async fn show(State(s): State<ApiState>) -> Result<Json<CertView>, Problem> {
    s.certs.summary().map(Json)
}

#[utoipa::path(put, path = "/api/v1/certs/server", tag = "certificates", request_body = NewCert,
    responses((status = 200, description = "Installed and live on every port; existing connections continue", body = CertView)))]
async fn install(
    State(s): State<ApiState>,
    Extension(actor): Extension<Actor>,
    ApiJson(body): ApiJson<NewCert>,
) -> Result<Json<CertView>, Problem> {
    for (field, v) in [
        ("certificate", Some(&body.certificate)),
        ("key", Some(&body.key)),
        ("chain", body.chain.as_ref()),
    ] {
        if v.is_some_and(|v| v.len() > MAX_PEM) {
            return Err(Problem::invalid(
                field,
                format!("`{field}` is larger than {MAX_PEM} bytes of PEM"),
            ));
        }
    }
    let trust: Vec<String> = s
        .store
        .trust_certs()
        .await?
        .into_iter()
        .map(|t| t.pem)
        .collect();
    let before = s.certs.summary().ok().map(|c| c.sha256);
    let certs = s.certs.clone();
    tokio::task::spawn_blocking(move || {
        certs.install(
            body.certificate.as_bytes(),
            body.key.as_bytes(),
            body.chain.as_deref().map(str::as_bytes),
            &trust,
        )
    })
    .await
    .map_err(|e| Problem::internal(format!("certificate task failed: {e}")))??;
    let after = s.certs.summary()?;
    tracing::info!(sha256 = %after.sha256, subject = %after.subject, "server certificate installed and live");
    audit(
        &s,
        &actor,
        "PUT /api/v1/certs/server".into(),
        json!({"sha256": before}),
        json!({"sha256": after.sha256, "subject": after.subject}),
    )
    .await;
    Ok(Json(after))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_start_thirty_days_out() {
        let now = 1_000_000_000;
        assert!(expiry_warning("x", "CN=a", now + 31 * 86_400, now).is_none());
        let w = expiry_warning("trust anchor", "CN=a", now + 10 * 86_400 + 5, now).unwrap();
        assert!(w.contains("expires in 10 days"), "{w}");
        let w = expiry_warning("server certificate", "CN=a", now - 5, now).unwrap();
        assert!(w.contains("expired on"), "{w}");
        assert_eq!(days_left(now + 86_399, now), 0);
        assert_eq!(days_left(now - 1, now), -1);
    }

    /// A control over a fresh local PKI in `dir` for `localhost`, both listeners on its
    /// certificate; with the PKI's paths and the names.
    fn control(dir: &std::path::Path) -> (CertControl, sipreg_certs::PkiPaths, Vec<String>) {
        let names = vec!["localhost".to_string()];
        let p = sipreg_certs::load_or_create(dir, &names).unwrap();
        let chain = std::fs::read(&p.server_cert).unwrap();
        let key = std::fs::read(&p.server_key).unwrap();
        let cfg =
            || ReloadableServerConfig::new(sipreg_certs::server_config(&chain, &key, &[]).unwrap());
        let c = CertControl::new(dir.to_path_buf(), names.clone(), cfg(), cfg());
        (c, p, names)
    }

    #[test]
    fn a_warning_is_logged_once_per_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _, _) = control(dir.path());
        let soon = crate::now() + 86_400;
        let certs = vec![
            (
                "trust anchor",
                "CN=soon".to_string(),
                soon,
                "aa".to_string(),
            ),
            (
                "trust anchor",
                "CN=later".to_string(),
                soon + 90 * 86_400,
                "bb".to_string(),
            ),
        ];
        c.warn_expiring(&certs);
        let first = c.warned.lock().unwrap().get("aa").copied().unwrap();
        c.warn_expiring(&certs);
        assert_eq!(
            c.warned.lock().unwrap().get("aa").copied(),
            Some(first),
            "not again the same day"
        );
        assert!(!c.warned.lock().unwrap().contains_key("bb"));
        c.warn_expiring(&[]);
        assert!(c.warned.lock().unwrap().is_empty(), "forgotten once gone");
    }

    #[test]
    fn files_changed_on_disk_are_checked_then_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (c, p, names) = control(dir.path());
        assert!(!c.poll_disk(&[]), "nothing changed");
        let before = c.sip.current();
        // A mismatched pair on disk: ignored, the old config stays.
        let other = tempfile::tempdir().unwrap();
        let o = sipreg_certs::load_or_create(other.path(), &names).unwrap();
        std::fs::copy(&o.server_key, &p.server_key).unwrap();
        assert!(!c.poll_disk(&[]));
        assert!(Arc::ptr_eq(&before, &c.sip.current()));
        // A good pair (regenerated behind the server's back): applied.
        sipreg_certs::regenerate_server_cert(dir.path(), &names).unwrap();
        assert!(c.poll_disk(&[]));
        assert!(!Arc::ptr_eq(&before, &c.sip.current()));
        // Our own regenerate is not seen as a change of the files.
        c.regenerate().unwrap();
        assert!(!c.poll_disk(&[]));
    }
}
