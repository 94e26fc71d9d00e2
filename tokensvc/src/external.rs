//! Access tokens of trusted external issuers (an enterprise IdP): the issuer's settings are checked
//! here, and its JWKS is fetched (or read from a file), cached per issuer, refreshed when a token
//! names a key it does not hold, and bounded in every way an IdP (or whoever answers in its
//! place) could abuse: body size, key count, fetch time and fetch rate.
//!
//! The validator holds the verifying half: [`ExternalKeys::key_for`] yields the key a token's
//! `kid` names, or says why not. Fetches run on a short-lived thread of their own so the
//! validator, which is synchronous and called from the registrar's tasks, never needs a runtime.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sipreg_store::TrustedIssuer;

use crate::validator::ValidationError;

/// Algorithms an external issuer may be allowed: asymmetric only, never `none` or HMAC (a
/// shared secret with an IdP would let anyone who reads our config mint tokens).
pub const SUPPORTED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// What a new issuer allows when none are given.
pub const DEFAULT_ALGORITHMS: [&str; 2] = ["RS256", "ES256"];
/// The claim naming the user when none is configured.
pub const DEFAULT_USER_CLAIM: &str = "sub";

/// Largest JWKS body read; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys taken from one JWKS.
const MAX_JWKS_KEYS: usize = 100;
/// A JWKS fetch gives up after this long (connect, TLS, headers and body together).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS file is looked at (stat) at most this often.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest issuer URL, audience, claim name or path we keep.
const MAX_FIELD: usize = 1024;

/// A bad issuer field: (field name, what is wrong).
pub type IssuerFieldError = (&'static str, String);

/// Whether `host` is a loopback name or address (where plain http is allowed).
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks a URL that is fetched or compared: https, or http on a loopback host only (tests, a
/// local proxy); no credentials, no fragment.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_FIELD {
        return Err(format!("at most {MAX_FIELD} characters"));
    }
    let u = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let host = u.host_str().unwrap_or("");
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err("the URL may hold neither credentials nor a fragment".into());
    }
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => Err("plain http is allowed for loopback hosts only; use https".into()),
        other => Err(format!("scheme {other} is not https")),
    }
}

/// Checks a trusted issuer's settings; the same rules serve the API and the CLI's view of it.
pub fn validate_issuer(i: &TrustedIssuer) -> Result<(), IssuerFieldError> {
    check_url(&i.issuer).map_err(|m| ("issuer", format!("`issuer` {m}")))?;
    match (&i.jwks_url, &i.jwks_file) {
        (Some(u), None) => {
            check_url(u).map_err(|m| ("jwks_url", format!("`jwks_url` {m}")))?;
        }
        (None, Some(f)) => {
            if f.is_empty() || f.len() > MAX_FIELD || !f.starts_with('/') || f.contains('\0') {
                return Err((
                    "jwks_file",
                    "`jwks_file` must be an absolute path on the server".into(),
                ));
            }
        }
        (Some(_), Some(_)) => {
            return Err((
                "jwks_url",
                "give exactly one of `jwks_url` and `jwks_file`, not both".into(),
            ))
        }
        (None, None) => {
            return Err((
                "jwks_url",
                "give exactly one of `jwks_url` and `jwks_file`".into(),
            ))
        }
    }
    let printable =
        |v: &str| !v.is_empty() && v.len() <= MAX_FIELD && !v.chars().any(|c| c.is_control());
    if !printable(&i.audience) {
        return Err((
            "audience",
            format!("`audience` must be 1–{MAX_FIELD} printable characters"),
        ));
    }
    let claim_ok = !i.user_claim.is_empty()
        && i.user_claim.len() <= 128
        && i.user_claim
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'));
    if !claim_ok {
        return Err((
            "user_claim",
            "`user_claim` must be a claim name such as sub, preferred_username, upn or email"
                .into(),
        ));
    }
    if i.algorithms.is_empty() || i.algorithms.len() > SUPPORTED_ALGORITHMS.len() {
        return Err((
            "algorithms",
            format!(
                "`algorithms` lists 1–{} of {}",
                SUPPORTED_ALGORITHMS.len(),
                SUPPORTED_ALGORITHMS.join(", ")
            ),
        ));
    }
    for a in &i.algorithms {
        if !SUPPORTED_ALGORITHMS.contains(&a.as_str()) {
            return Err((
                "algorithms",
                format!(
                    "algorithm {a:?} is not allowed; use {} (never none or HS*)",
                    SUPPORTED_ALGORITHMS.join(", ")
                ),
            ));
        }
    }
    if i.description.len() > MAX_FIELD || i.description.chars().any(char::is_control) {
        return Err((
            "description",
            format!("`description` must be at most {MAX_FIELD} printable characters"),
        ));
    }
    Ok(())
}

/// The jsonwebtoken algorithm for an allowed name.
pub(crate) fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One verifying key of an issuer's JWKS.
pub(crate) struct JwkKey {
    pub(crate) key: DecodingKey,
    /// `RSA`, `EC/P-256`, `EC/P-384`, `OKP/Ed25519`.
    family: String,
    /// The JWK's own `alg`, if it names one.
    alg: Option<String>,
}

impl JwkKey {
    /// Whether this key may verify `alg` (its type and curve fit, and its own `alg` agrees).
    pub(crate) fn fits(&self, alg: &str) -> bool {
        let family_ok = match alg {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => self.family == "RSA",
            "ES256" => self.family == "EC/P-256",
            "ES384" => self.family == "EC/P-384",
            "EdDSA" => self.family == "OKP/Ed25519",
            _ => false,
        };
        family_ok && self.alg.as_deref().is_none_or(|a| a == alg)
    }
}

/// Parses a JWKS document into its usable signing keys by `kid`.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<JwkKey>>, String> {
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no `keys` array")?;
    if keys.len() > MAX_JWKS_KEYS {
        return Err(format!("JWKS holds more than {MAX_JWKS_KEYS} keys"));
    }
    let mut out = HashMap::new();
    for k in keys {
        let Some(kid) = k
            .get("kid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        // Encryption keys and symmetric keys never verify a token here.
        if k.get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig")
        {
            continue;
        }
        let kty = k.get("kty").and_then(Value::as_str).unwrap_or("");
        let crv = k.get("crv").and_then(Value::as_str).unwrap_or("");
        let family = match kty {
            "RSA" => "RSA".to_owned(),
            "EC" if matches!(crv, "P-256" | "P-384") => format!("EC/{crv}"),
            "OKP" if crv == "Ed25519" => "OKP/Ed25519".to_owned(),
            _ => continue,
        };
        let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = k.get("alg").and_then(Value::as_str).map(str::to_owned);
        out.insert(kid.to_owned(), Arc::new(JwkKey { key, family, alg }));
    }
    if out.is_empty() {
        return Err("JWKS holds no usable signing key".into());
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Url(String),
    File(PathBuf),
}

impl Source {
    fn of(i: &TrustedIssuer) -> Option<Source> {
        match (&i.jwks_url, &i.jwks_file) {
            (Some(u), _) => Some(Source::Url(u.clone())),
            (None, Some(f)) => Some(Source::File(PathBuf::from(f))),
            (None, None) => None,
        }
    }
}

#[derive(Default)]
struct KeySet {
    /// Whether a JWKS was ever loaded; without one every token of the issuer is "unavailable".
    loaded: bool,
    keys: HashMap<String, Arc<JwkKey>>,
}

#[derive(Default)]
struct FetchState {
    /// When the URL was last fetched (successfully or not): the rate limit.
    last_fetch: Option<Instant>,
    /// When the file was last looked at, and its (mtime, length) then.
    last_stat: Option<Instant>,
    file_stamp: Option<(SystemTime, u64)>,
}

struct IssuerKeys {
    source: Source,
    keys: ArcSwap<KeySet>,
    fetch: Mutex<FetchState>,
}

/// Every trusted issuer's keys, loaded on first use.
pub(crate) struct ExternalKeys {
    issuers: DashMap<String, Arc<IssuerKeys>>,
    refetch_interval: Duration,
    failures: AtomicU64,
}

/// Why a refresh happens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Any use: load if never loaded, follow a changed file.
    Use,
    /// A token names a key we do not hold (rollover at the IdP).
    UnknownKid,
}

impl ExternalKeys {
    /// Refetches a URL at most once per `refetch_interval` per issuer.
    pub(crate) fn new(refetch_interval: Duration) -> Self {
        ExternalKeys {
            issuers: DashMap::new(),
            refetch_interval,
            failures: AtomicU64::new(0),
        }
    }

    /// How many JWKS fetches or reads failed.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn state(&self, issuer: &TrustedIssuer) -> Option<Arc<IssuerKeys>> {
        let source = Source::of(issuer)?;
        if let Some(s) = self.issuers.get(&issuer.issuer) {
            if s.source == source {
                return Some(s.clone());
            }
        }
        // New, or its JWKS source changed: start afresh. Bounded by the issuers the directory
        // trusts, since only a trusted `iss` gets here.
        let fresh = Arc::new(IssuerKeys {
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetch: Mutex::new(FetchState::default()),
        });
        self.issuers.insert(issuer.issuer.clone(), fresh.clone());
        Some(fresh)
    }

    /// Whether the issuer's current keys hold `kid` (no fetching; for cached tokens).
    pub(crate) fn holds(&self, issuer: &TrustedIssuer, kid: &str) -> bool {
        let Some(source) = Source::of(issuer) else {
            return false;
        };
        self.issuers
            .get(&issuer.issuer)
            .is_some_and(|s| s.source == source && s.keys.load().keys.contains_key(kid))
    }

    /// The key `kid` of `issuer`, loading or refreshing the JWKS as needed (rate-limited).
    /// `anchors` are the PEM trust anchors for an https JWKS URL.
    pub(crate) fn key_for(
        &self,
        issuer: &TrustedIssuer,
        kid: &str,
        anchors: &[String],
    ) -> Result<Arc<JwkKey>, ValidationError> {
        let state = self
            .state(issuer)
            .ok_or(ValidationError::IssuerUnavailable)?;
        self.refresh(issuer, &state, Why::Use, anchors);
        if let Some(k) = state.keys.load().keys.get(kid) {
            return Ok(k.clone());
        }
        self.refresh(issuer, &state, Why::UnknownKid, anchors);
        let keys = state.keys.load();
        match keys.keys.get(kid) {
            Some(k) => Ok(k.clone()),
            None if !keys.loaded => Err(ValidationError::IssuerUnavailable),
            None => Err(ValidationError::UnknownKey),
        }
    }

    fn refresh(&self, issuer: &TrustedIssuer, state: &IssuerKeys, why: Why, anchors: &[String]) {
        // One refresher per issuer; others go on with the keys there are rather than queue up
        // behind a slow IdP.
        let Ok(mut f) = state.fetch.try_lock() else {
            return;
        };
        let now = Instant::now();
        let result = match &state.source {
            Source::File(path) => {
                let due = why == Why::UnknownKid
                    || f.last_stat
                        .is_none_or(|t| now.duration_since(t) >= FILE_CHECK_INTERVAL);
                if !due {
                    return;
                }
                f.last_stat = Some(now);
                let stamp = std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
                if stamp.is_some() && stamp == f.file_stamp && state.keys.load().loaded {
                    return;
                }
                f.file_stamp = stamp;
                read_file(path)
            }
            Source::Url(url) => {
                let loaded = state.keys.load().loaded;
                if why == Why::Use && loaded {
                    return;
                }
                if f.last_fetch
                    .is_some_and(|t| now.duration_since(t) < self.refetch_interval)
                {
                    return;
                }
                f.last_fetch = Some(now);
                fetch_blocking(url, anchors)
            }
        };
        match result.and_then(|body| parse_jwks(&body)) {
            Ok(keys) => {
                tracing::info!(issuer = %issuer.issuer, keys = keys.len(), "external issuer keys loaded");
                state.keys.store(Arc::new(KeySet { loaded: true, keys }));
            }
            Err(e) => {
                // The last good keys stay in force: an IdP hiccup must not log everyone out.
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(issuer = %issuer.issuer, error = %e, "external issuer keys unavailable");
            }
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut body = Vec::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(body)
}

/// Fetches `url` on a thread of its own with its own small runtime, and waits for it: the
/// validator is synchronous, and blocking inside the caller's runtime could starve it. On a
/// multi-threaded runtime the worker hands its other tasks off while it waits.
fn fetch_blocking(url: &str, anchors: &[String]) -> Result<Vec<u8>, String> {
    let url = url.to_owned();
    let anchors = anchors.to_vec();
    let run = move || {
        std::thread::Builder::new()
            .name("jwks-fetch".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("fetch runtime: {e}"))?;
                rt.block_on(async {
                    tokio::time::timeout(FETCH_TIMEOUT, fetch(&url, &anchors))
                        .await
                        .map_err(|_| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
                })
            })
            .map_err(|e| format!("fetch thread: {e}"))?
            .join()
            .map_err(|_| "fetch thread failed".to_owned())?
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        _ => run(),
    }
}

fn tls_config(anchors: &[String]) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for pem in anchors {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            // A trust store entry rustls cannot use is skipped, not fatal for the others.
            let _ = roots.add(der);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

async fn fetch(url: &str, anchors: &[String]) -> Result<Vec<u8>, String> {
    check_url(url).map_err(|e| format!("{url}: {e}"))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(anchors)?)
        .timeout(FETCH_TIMEOUT)
        // A redirect could lead anywhere, plain http included.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let mut resp = client
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status().as_u16()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("{url}: JWKS larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("{url}: JWKS larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_signing_key;
    use crate::{AccessTokenValidator, KeyRing, TokenConfig};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;
    use sipreg_store::{Directory, SigningKey, Store, User};

    const NOW: i64 = 1_700_000_000;
    const ISS: &str = "https://idp.example/tenant";

    struct Idp {
        key: SigningKey,
        path: PathBuf,
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        directory: Directory,
        validator: AccessTokenValidator,
    }

    fn jwk(k: &SigningKey) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": k.kid, "x": k.public_x, "y": k.public_y, "use": "sig"})
    }

    async fn idp() -> Idp {
        let (dir, store) = crate::test_support::temp_store();
        store
            .create_user(&User {
                id: "jdoe@corp".into(),
                password_hash: String::new(),
                created_at: 1,
            })
            .await
            .unwrap();
        let key = generate_signing_key(1).unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [jwk(&key)]}).to_string()).unwrap();
        store
            .create_issuer(&TrustedIssuer {
                issuer: ISS.into(),
                jwks_url: None,
                jwks_file: Some(path.display().to_string()),
                audience: "api://sipreg".into(),
                user_claim: "upn".into(),
                algorithms: vec!["ES256".into()],
                description: String::new(),
                updated_at: 1,
            })
            .await
            .unwrap();
        let ring = KeyRing::load_or_create(store.as_ref(), 1).await.unwrap();
        let validator = AccessTokenValidator::new(ring, &TokenConfig::default());
        let directory = Directory::load(store.as_ref()).await.unwrap();
        validator.attach_directory(directory.clone());
        Idp {
            key,
            path,
            _dir: dir,
            store,
            directory,
            validator,
        }
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": "api://sipreg", "upn": "jdoe@corp", "sub": "opaque",
               "exp": NOW + 600, "iat": NOW, "azp": "jabber", "scp": "sip:register other"})
    }

    fn sign(key: &SigningKey, header: Value, claims: &Value) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let input = format!("{}.{}", b64(&header), b64(claims));
        let k = EncodingKey::from_ec_pem(key.private_pem.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, Algorithm::ES256).unwrap();
        format!("{input}.{sig}")
    }

    fn header(key: &SigningKey) -> Value {
        json!({"alg": "ES256", "typ": "JWT", "kid": key.kid})
    }

    #[tokio::test]
    async fn an_external_token_validates_with_the_configured_user_claim() {
        let f = idp().await;
        let c = f
            .validator
            .validate(&sign(&f.key, header(&f.key), &claims()), NOW)
            .unwrap();
        assert_eq!(c.sub, "jdoe@corp");
        assert_eq!(c.client_id, "jabber");
        assert!(c.has_scope("sip:register"));
        assert_eq!(f.validator.cached(), 1);
    }

    #[tokio::test]
    async fn external_forgeries_fail_for_their_own_reason() {
        let f = idp().await;
        let v = &f.validator;
        let mut c = claims();
        c["aud"] = json!("sipreg");
        assert_eq!(
            v.validate(&sign(&f.key, header(&f.key), &c), NOW),
            Err(ValidationError::WrongAudience)
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("upn");
        assert_eq!(
            v.validate(&sign(&f.key, header(&f.key), &c), NOW),
            Err(ValidationError::MissingUser)
        );
        assert_eq!(
            v.validate(&sign(&f.key, header(&f.key), &claims()), NOW + 700),
            Err(ValidationError::Expired)
        );
        let mut h = header(&f.key);
        h["typ"] = json!("id+jwt");
        assert_eq!(
            v.validate(&sign(&f.key, h, &claims()), NOW),
            Err(ValidationError::WrongType)
        );
        let mut h = header(&f.key);
        h["jku"] = json!("https://evil.example/jwks");
        assert_eq!(
            v.validate(&sign(&f.key, h, &claims()), NOW),
            Err(ValidationError::KeyReference("jku"))
        );
        // Another key claiming a kid the IdP does not publish.
        let other = generate_signing_key(2).unwrap();
        assert_eq!(
            v.validate(&sign(&other, header(&other), &claims()), NOW),
            Err(ValidationError::UnknownKey)
        );
        // Another key under the IdP's kid.
        assert_eq!(
            v.validate(&sign(&other, header(&f.key), &claims()), NOW),
            Err(ValidationError::BadSignature)
        );
        // RS256 is not in this issuer's allowlist; `none` never is.
        for alg in ["RS256", "none", "HS256"] {
            let mut h = header(&f.key);
            h["alg"] = json!(alg);
            assert_eq!(
                v.validate(&sign(&f.key, h, &claims()), NOW),
                Err(ValidationError::UnsupportedAlgorithm(alg.into()))
            );
        }
        let mut c = claims();
        c["upn"] = json!("ghost@corp");
        assert_eq!(
            v.validate(&sign(&f.key, header(&f.key), &c), NOW),
            Err(ValidationError::UnknownUser)
        );
        assert_eq!(v.cached(), 0);
    }

    #[tokio::test]
    async fn a_rolled_over_key_file_is_picked_up_and_a_removed_issuer_ends_its_tokens() {
        let f = idp().await;
        let token = sign(&f.key, header(&f.key), &claims());
        assert!(f.validator.validate(&token, NOW).is_ok());
        let next = generate_signing_key(3).unwrap();
        std::fs::write(
            &f.path,
            json!({"keys": [jwk(&f.key), jwk(&next)], "pad": "changed"}).to_string(),
        )
        .unwrap();
        let rolled = sign(&next, header(&next), &claims());
        assert!(
            f.validator.validate(&rolled, NOW).is_ok(),
            "unknown kid re-reads the file"
        );

        f.store
            .set_client_tokens_not_before("jdoe@corp", "jabber", NOW + 1)
            .await
            .unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        assert_eq!(
            f.validator.validate(&token, NOW + 2),
            Err(ValidationError::Revoked),
            "per-client revocation applies to external tokens"
        );

        f.store.delete_issuer(ISS).await.unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let mut c = claims();
        c["iat"] = json!(NOW + 5);
        let fresh = sign(&f.key, header(&f.key), &c);
        // Not trusted any more: judged as one of ours, whose rules it fails.
        assert_eq!(
            f.validator.validate(&fresh, NOW + 5),
            Err(ValidationError::WrongType)
        );
        assert!(
            f.validator.validate(&token, NOW + 5).is_err(),
            "nor from the cache"
        );
    }

    #[tokio::test]
    async fn an_unreachable_jwks_url_is_unavailable_and_rate_limited() {
        let f = idp().await;
        let mut i = f.store.issuers().await.unwrap().remove(0);
        i.jwks_file = None;
        // Port 9 on loopback: nothing listens (discard), the connect fails at once.
        i.jwks_url = Some("http://127.0.0.1:9/jwks".into());
        f.store.update_issuer(&i).await.unwrap();
        f.directory.reload(f.store.as_ref()).await.unwrap();
        let token = sign(&f.key, header(&f.key), &claims());
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::IssuerUnavailable)
        );
        let failures = f.validator.jwks_failures();
        assert!(failures >= 1);
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::IssuerUnavailable)
        );
        assert_eq!(
            f.validator.jwks_failures(),
            failures,
            "no refetch within the interval"
        );
    }

    #[test]
    fn issuer_settings_are_checked_field_by_field() {
        let good = TrustedIssuer {
            issuer: ISS.into(),
            jwks_url: Some("https://idp.example/keys".into()),
            jwks_file: None,
            audience: "sipreg".into(),
            user_claim: "preferred_username".into(),
            algorithms: vec!["RS256".into()],
            description: String::new(),
            updated_at: 0,
        };
        assert!(validate_issuer(&good).is_ok());
        let field = |f: fn(&mut TrustedIssuer)| {
            let mut i = good.clone();
            f(&mut i);
            validate_issuer(&i).unwrap_err().0
        };
        assert_eq!(field(|i| i.issuer = "not a url".into()), "issuer");
        assert_eq!(
            field(|i| i.jwks_url = Some("http://idp.example/k".into())),
            "jwks_url"
        );
        assert_eq!(field(|i| i.jwks_file = Some("/k.json".into())), "jwks_url");
        assert_eq!(field(|i| i.jwks_url = None), "jwks_url");
        assert_eq!(
            field(|i| {
                i.jwks_url = None;
                i.jwks_file = Some("relative.json".into())
            }),
            "jwks_file"
        );
        assert_eq!(field(|i| i.algorithms = vec!["HS256".into()]), "algorithms");
        assert_eq!(field(|i| i.algorithms = vec!["none".into()]), "algorithms");
        assert_eq!(field(|i| i.user_claim = "a b".into()), "user_claim");
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
    }
}
