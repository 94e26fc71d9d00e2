//! The OAuth 2.0 grants of the token endpoint: authorization code with PKCE (RFC 6749 §4.1,
//! RFC 7636), resource-owner password (§4.3, can be switched off) and refresh token (§6) with
//! rotation and reuse detection (RFC 9700 §4.14.2: a refresh token presented twice revokes its
//! whole family).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sipreg_store::{RefreshSuccessor, RefreshToken, RefreshUse, Store};

use crate::clients::{self, Client};
use crate::codes::{Codes, Redeem};
use crate::issue::sign_access_token;
use crate::password::verify_login;
use crate::pkce;
use crate::throttle::Throttle;
use crate::{AccessTokenValidator, KeyRing, TokenConfig, TokenError};

/// Longest refresh token we bother to hash; ours are 43 characters.
const MAX_REFRESH_TOKEN_LEN: usize = 512;
/// Longest authorization code we bother to hash; ours are 43 characters.
const MAX_CODE_LEN: usize = 512;

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    /// The signed access token (JWT).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
    /// The new opaque refresh token (absent when refresh logins are off); the one presented, if
    /// any, no longer works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Granted scope, space-delimited.
    pub scope: String,
}

impl fmt::Debug for TokenResponse {
    // Tokens are secrets; a debug print must not leak them into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed, as RFC 6749 §5.2 errors; messages are safe to send to clients.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A required parameter is missing or the request is malformed (400).
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The client is unknown (401).
    #[error("unknown client")]
    InvalidClient,
    /// Wrong credentials or an invalid, expired or reused grant (400).
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// The grant type is not supported or switched off (400).
    #[error("grant type not supported")]
    UnsupportedGrantType,
    /// The requested scope exceeds what the client or the original grant allows (400).
    #[error("requested scope is not allowed")]
    InvalidScope,
    /// Too many failed password checks for this name or address: wait this many seconds (429).
    #[error("too many failed attempts; retry later")]
    TooManyAttempts(i64),
    /// The service failed; details are logged, not sent (500).
    #[error("internal error")]
    Server(#[from] TokenError),
}

impl GrantError {
    /// The RFC 6749 §5.2 `error` code.
    pub fn error_code(&self) -> &'static str {
        match self {
            GrantError::InvalidRequest(_) => "invalid_request",
            GrantError::InvalidClient => "invalid_client",
            GrantError::InvalidGrant(_) | GrantError::TooManyAttempts(_) => "invalid_grant",
            GrantError::UnsupportedGrantType => "unsupported_grant_type",
            GrantError::InvalidScope => "invalid_scope",
            GrantError::Server(_) => "server_error",
        }
    }
}

impl From<sipreg_store::StoreError> for GrantError {
    fn from(e: sipreg_store::StoreError) -> Self {
        GrantError::Server(TokenError::Store(e))
    }
}

/// The same answer for an unknown user and a wrong password, so usernames cannot be probed.
const BAD_CREDENTIALS: &str = "invalid username or password";
const BAD_REFRESH_TOKEN: &str = "invalid or expired refresh token";
const BAD_CODE: &str = "invalid, expired or used authorization code";

/// Issues tokens: the grants, the access-token signer and (in `http`) the HTTP endpoints.
pub struct TokenService {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) cfg: TokenConfig,
    pub(crate) validator: AccessTokenValidator,
    pub(crate) codes: Codes,
    pub(crate) throttle: Throttle,
    pub(crate) logins: crate::authorize::PendingLogins,
    /// SHA-256 of each bearer secret allowed to call the introspection endpoint.
    pub(crate) introspection_secrets: Vec<[u8; 32]>,
    /// Token endpoint counters for `/metrics`.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The live directory: its cluster settings override `cfg`'s lifetimes and switches.
    pub(crate) directory: std::sync::OnceLock<sipreg_store::Directory>,
    /// Clients already resolved, so a refresh grant costs no store round trip for its client.
    clients: ClientCache,
}

/// Most clients remembered; a deployment has a handful, and only existing ones are cached.
const MAX_CACHED_CLIENTS: usize = 256;

/// Resolved clients, forgotten whenever the store announces a client change (or may have lost
/// an announcement). The announcements are read on each lookup, before the map: a row read just
/// before a change is committed is dropped at the next lookup at the latest.
struct ClientCache {
    changes: std::sync::Mutex<tokio::sync::broadcast::Receiver<sipreg_store::Change>>,
    clients: std::sync::RwLock<std::collections::HashMap<String, Client>>,
}

impl ClientCache {
    fn new(store: &dyn Store) -> Self {
        Self {
            changes: std::sync::Mutex::new(store.subscribe()),
            clients: Default::default(),
        }
    }

    /// The cached client `id`, after applying the changes announced since the last lookup.
    fn get(&self, id: &str) -> Option<Client> {
        use tokio::sync::broadcast::error::TryRecvError;
        let mut stale = false;
        match self.changes.lock() {
            Ok(mut rx) => loop {
                match rx.try_recv() {
                    Ok(sipreg_store::Change::Client(_) | sipreg_store::Change::Reload)
                    | Err(TryRecvError::Lagged(_)) => stale = true,
                    Ok(_) => {}
                    Err(TryRecvError::Empty) => break,
                    // No store left to announce anything: trust nothing cached.
                    Err(TryRecvError::Closed) => {
                        stale = true;
                        break;
                    }
                }
            },
            Err(_) => stale = true,
        }
        if stale {
            self.clear();
            return None;
        }
        self.clients.read().ok()?.get(id).cloned()
    }

    fn insert(&self, client: &Client) {
        if let Ok(mut map) = self.clients.write() {
            if map.len() >= MAX_CACHED_CLIENTS {
                map.clear();
            }
            map.insert(client.id.clone(), client.clone());
        }
    }

    fn clear(&self) {
        if let Ok(mut map) = self.clients.write() {
            map.clear();
        }
    }
}

/// The lifetimes and switches in force for one request: the cluster settings when a directory is
/// attached (changed live through the admin API), else the service's [`TokenConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSettings {
    /// Access-token lifetime, seconds.
    pub access_ttl_secs: i64,
    /// Refresh-token lifetime, seconds.
    pub refresh_ttl_secs: i64,
    /// Whether the password grant is offered.
    pub password_grant: bool,
    /// Whether refresh tokens are issued and the refresh grant accepted.
    pub refresh_login: bool,
}

impl TokenService {
    /// A service issuing with `keys` and remembering refresh tokens in `store`.
    pub fn new(store: Arc<dyn Store>, keys: Arc<KeyRing>, cfg: TokenConfig) -> Self {
        crate::ensure_crypto_provider();
        let validator = AccessTokenValidator::new(keys.clone(), &cfg);
        Self {
            keys,
            cfg,
            validator,
            codes: Codes::default(),
            throttle: Throttle::default(),
            logins: Default::default(),
            introspection_secrets: Vec::new(),
            metrics: Arc::default(),
            directory: std::sync::OnceLock::new(),
            clients: ClientCache::new(store.as_ref()),
            store,
        }
    }

    /// Makes the cluster settings of `directory` the source of the token lifetimes and the
    /// password-grant and refresh-login switches, read per request (a change applies at once).
    pub fn attach_directory(&self, directory: sipreg_store::Directory) {
        let _ = self.directory.set(directory);
    }

    /// The lifetimes and switches in force now; one snapshot load, no lock.
    pub fn live(&self) -> LiveSettings {
        match self.directory.get().and_then(|d| d.snapshot().cluster) {
            Some(c) => LiveSettings {
                access_ttl_secs: i64::from(c.access_token_lifetime_minutes) * 60,
                refresh_ttl_secs: i64::from(c.refresh_token_lifetime_days) * 86400,
                password_grant: c.password_grant,
                refresh_login: c.refresh_login,
            },
            None => LiveSettings {
                access_ttl_secs: self.cfg.access_ttl_secs,
                refresh_ttl_secs: self.cfg.refresh_ttl_secs,
                password_grant: self.cfg.password_grant,
                refresh_login: self.cfg.refresh_login,
            },
        }
    }

    /// Lets a resource server authenticate to `POST /oauth/introspect` with
    /// `Authorization: Bearer <secret>`, given the SHA-256 of the secret (e.g. the admin token).
    pub fn with_introspection_secret(mut self, sha256: [u8; 32]) -> Self {
        self.introspection_secrets.push(sha256);
        self
    }

    /// The token endpoint counters (tokens issued by grant, refusals by error).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The settings this service issues with.
    pub fn config(&self) -> &TokenConfig {
        &self.cfg
    }

    /// The key ring this service signs with.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The validator for resource servers; it shares this service's keys, cache and revocations
    /// (clone it for the registrar, attach the directory for the per-user checks).
    pub fn validator(&self) -> &AccessTokenValidator {
        &self.validator
    }

    /// Signs an access token for `user` and `client_id` with the given scope, valid from `now`.
    pub fn issue_access_token(
        &self,
        user: &str,
        client_id: &str,
        scope: &str,
        now: i64,
    ) -> Result<String, TokenError> {
        let ttl = self.live().access_ttl_secs;
        if ttl == self.cfg.access_ttl_secs {
            return sign_access_token(&self.keys, &self.cfg, user, client_id, scope, now);
        }
        // Issuing is rare next to validation; a copy of the config with the live lifetime is cheap.
        let cfg = TokenConfig {
            access_ttl_secs: ttl,
            ..self.cfg.clone()
        };
        sign_access_token(&self.keys, &cfg, user, client_id, scope, now)
    }

    pub(crate) async fn client(&self, id: &str) -> Result<Client, GrantError> {
        if let Some(c) = self.clients.get(id) {
            return Ok(c);
        }
        // Unknown ids are not cached: a client cannot fill the cache with made-up names.
        let client = clients::resolve(self.store.as_ref(), id)
            .await?
            .ok_or(GrantError::InvalidClient)?;
        self.clients.insert(&client);
        Ok(client)
    }

    /// Checks a user's password behind the brute-force throttle; `Ok(false)` for a wrong one.
    pub(crate) async fn check_password(
        &self,
        username: &str,
        password: &str,
        addr: Option<IpAddr>,
        now: i64,
    ) -> Result<bool, GrantError> {
        self.throttle
            .check(username, addr, now)
            .map_err(GrantError::TooManyAttempts)?;
        let stored_phc = self.store.user(username).await?.map(|u| u.password_hash);
        let password = password.to_owned();
        // Argon2 takes tens of milliseconds of CPU; keep it off the async workers.
        let ok =
            tokio::task::spawn_blocking(move || verify_login(stored_phc.as_deref(), &password))
                .await
                .map_err(|_| TokenError::Task)?;
        if ok {
            self.throttle.succeeded(username);
        } else {
            self.throttle.failed(username, addr, now);
            tracing::info!(user = username, addr = ?addr, "failed password check");
        }
        Ok(ok)
    }

    /// RFC 6749 §4.3: exchanges a username and password for an access and a refresh token.
    pub async fn password_grant(
        &self,
        username: &str,
        password: &str,
        client_id: &str,
        scope: Option<&str>,
        addr: Option<IpAddr>,
        now: i64,
    ) -> Result<TokenResponse, GrantError> {
        if !self.live().password_grant {
            return Err(GrantError::UnsupportedGrantType);
        }
        let client = self.client(client_id).await?;
        let scope = requested_scope(scope, &self.cfg.default_scope, &client.allowed_scopes())?;
        if !self.check_password(username, password, addr, now).await? {
            return Err(GrantError::InvalidGrant(BAD_CREDENTIALS));
        }
        let family = new_family();
        self.issue_pair(username, &client.id, &scope, now, &family, None)
            .await
    }

    /// RFC 6749 §4.1.3 with RFC 7636 §4.6: exchanges an authorization code and its PKCE verifier.
    pub async fn authorization_code_grant(
        &self,
        code: &str,
        redirect_uri: Option<&str>,
        client_id: &str,
        code_verifier: &str,
        now: i64,
    ) -> Result<TokenResponse, GrantError> {
        let client = self.client(client_id).await?;
        if code.len() > MAX_CODE_LEN {
            return Err(GrantError::InvalidGrant(BAD_CODE));
        }
        let grant = match self.codes.redeem(code, now) {
            Redeem::Fresh(g) => g,
            Redeem::Replayed(family) => {
                // §4.1.2: the code leaked; whatever its first use obtained must die too.
                if !family.is_empty() {
                    let n = self.store.revoke_refresh_family(&family).await?;
                    tracing::warn!(
                        family,
                        revoked = n,
                        "authorization code replayed; family revoked"
                    );
                }
                return Err(GrantError::InvalidGrant(BAD_CODE));
            }
            Redeem::Unknown => return Err(GrantError::InvalidGrant(BAD_CODE)),
        };
        // The code is spent whatever happens next, so a wrong verifier cannot be retried.
        if grant.client_id != client.id {
            return Err(GrantError::InvalidGrant(BAD_CODE));
        }
        // §4.1.3: redirect_uri must be identical to the one of the authorization request.
        if redirect_uri != Some(grant.redirect_uri.as_str()) {
            return Err(GrantError::InvalidGrant(
                "redirect_uri does not match the authorization request",
            ));
        }
        if !pkce::verify_s256(code_verifier, &grant.code_challenge) {
            return Err(GrantError::InvalidGrant("code_verifier does not match"));
        }
        if self.store.user(&grant.user).await?.is_none() {
            return Err(GrantError::InvalidGrant(BAD_CODE));
        }
        let family = new_family();
        self.codes.set_family(code, &family);
        self.issue_pair(&grant.user, &client.id, &grant.scope, now, &family, None)
            .await
    }

    /// RFC 6749 §6: exchanges a refresh token for new tokens; the presented one is consumed.
    ///
    /// The new refresh token keeps the original expiry, so a login lasts `refresh_ttl_secs` at
    /// most (as Unified CM's refresh-token timer) however often it is rotated. Presenting a used
    /// token again revokes every token of its family: either the client or an attacker holds a
    /// stolen copy, and we cannot tell which.
    pub async fn refresh_grant(
        &self,
        refresh_token: &str,
        client_id: &str,
        scope: Option<&str>,
        now: i64,
    ) -> Result<TokenResponse, GrantError> {
        if !self.live().refresh_login {
            return Err(GrantError::UnsupportedGrantType);
        }
        let client = self.client(client_id).await?;
        if refresh_token.is_empty() || refresh_token.len() > MAX_REFRESH_TOKEN_LEN {
            return Err(GrantError::InvalidGrant(BAD_REFRESH_TOKEN));
        }
        // The successor is decided from the stored token inside the store's transaction, so the
        // use and the insert are one commit and one store round trip (was three: use, user
        // lookup, insert). `successor_scope` is pure: it runs again below on the answer to say
        // why a grant was refused.
        let new_token = new_opaque_token();
        let successor: RefreshSuccessor = {
            let hash = refresh_token_hash(&new_token);
            let client_id = client.id.clone();
            let requested = scope.map(str::to_owned);
            // Rows from before families existed have none: give their successors a fresh one.
            let fallback_family = new_family();
            Box::new(move |old: &RefreshToken| {
                let scope = successor_scope(old, &client_id, requested.as_deref()).ok()?;
                Some(RefreshToken {
                    hash,
                    user_id: old.user_id.clone(),
                    client_id,
                    scope,
                    issued_at: now,
                    // A login lasts `refresh_ttl_secs` at most, however often it is rotated.
                    expires_at: old.expires_at,
                    family: if old.family.is_empty() {
                        fallback_family
                    } else {
                        old.family.clone()
                    },
                })
            })
        };
        let stored = match self
            .store
            .rotate_refresh_token(&refresh_token_hash(refresh_token), now, successor)
            .await?
        {
            RefreshUse::Fresh(t) => t,
            RefreshUse::Reused(t) => {
                self.revoke_family(&t, "refresh token reused").await?;
                return Err(GrantError::InvalidGrant(BAD_REFRESH_TOKEN));
            }
            RefreshUse::Unknown => return Err(GrantError::InvalidGrant(BAD_REFRESH_TOKEN)),
        };
        // No user lookup: the token row exists, and deleting a user deletes its tokens in the
        // same transaction (ON DELETE CASCADE), so its user existed when it was rotated.
        let scope = match successor_scope(&stored, &client.id, scope) {
            Ok(scope) => scope,
            Err(Refusal::OtherClient) => {
                // A token shown by another client is treated as leaked (RFC 6749 §10.4).
                self.revoke_family(&stored, "refresh token presented by another client")
                    .await?;
                return Err(GrantError::InvalidGrant(BAD_REFRESH_TOKEN));
            }
            Err(Refusal::Scope) => return Err(GrantError::InvalidScope),
        };
        let access_token = self.issue_access_token(&stored.user_id, &client.id, &scope, now)?;
        // Debug, not info: a refresh is routine (one per device and token lifetime, thousands a
        // second in bulk) and `/metrics` counts them; refusals, reuse and revocations still log.
        tracing::debug!(user = %stored.user_id, client_id = %client.id, scope, "refreshed tokens");
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: self.live().access_ttl_secs,
            refresh_token: Some(new_token),
            scope,
        })
    }

    /// Revokes the family of `token` (every refresh token of one login).
    pub(crate) async fn revoke_family(
        &self,
        token: &RefreshToken,
        why: &str,
    ) -> Result<(), GrantError> {
        // An empty family would match every pre-family row; the token itself is already used.
        if token.family.is_empty() {
            return Ok(());
        }
        let n = self.store.revoke_refresh_family(&token.family).await?;
        tracing::warn!(user = %token.user_id, client_id = %token.client_id, revoked = n, "{why}; token family revoked");
        Ok(())
    }

    async fn issue_pair(
        &self,
        user: &str,
        client_id: &str,
        scope: &str,
        now: i64,
        family: &str,
        refresh_expires_at: Option<i64>,
    ) -> Result<TokenResponse, GrantError> {
        let live = self.live();
        let access_token = self.issue_access_token(user, client_id, scope, now)?;
        let refresh_token = if live.refresh_login {
            let token = new_opaque_token();
            let record = RefreshToken {
                hash: refresh_token_hash(&token),
                user_id: user.to_owned(),
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                issued_at: now,
                expires_at: refresh_expires_at
                    .unwrap_or_else(|| now.saturating_add(live.refresh_ttl_secs)),
                family: family.to_owned(),
            };
            self.store.insert_refresh_token(&record).await?;
            Some(token)
        } else {
            None
        };
        tracing::info!(user, client_id, scope, "issued tokens");
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: live.access_ttl_secs,
            refresh_token,
            scope: scope.to_owned(),
        })
    }
}

/// Resolves the requested scope (or `default` when none is asked for) against what is allowed,
/// returning it normalised: single spaces, no duplicates, request order.
pub(crate) fn requested_scope(
    requested: Option<&str>,
    default: &str,
    allowed: &[&str],
) -> Result<String, GrantError> {
    let requested = requested
        .filter(|s| !s.trim().is_empty())
        .unwrap_or(default);
    let mut granted: Vec<&str> = Vec::new();
    for token in scope_tokens(requested) {
        if !allowed.contains(&token) {
            return Err(GrantError::InvalidScope);
        }
        if !granted.contains(&token) {
            granted.push(token);
        }
    }
    if granted.is_empty() {
        return Err(GrantError::InvalidScope);
    }
    Ok(granted.join(" "))
}

/// Why a refresh grant gives a stored token no successor.
enum Refusal {
    /// The token was issued to another client.
    OtherClient,
    /// The requested scope is not within the token's.
    Scope,
}

/// The scope of `old`'s successor when client `client_id` presents it asking for `requested`.
fn successor_scope(
    old: &RefreshToken,
    client_id: &str,
    requested: Option<&str>,
) -> Result<String, Refusal> {
    if old.client_id != client_id {
        return Err(Refusal::OtherClient);
    }
    let original: Vec<&str> = scope_tokens(&old.scope).collect();
    requested_scope(requested, &old.scope, &original).map_err(|_| Refusal::Scope)
}

fn scope_tokens(scope: &str) -> impl Iterator<Item = &str> {
    scope.split(' ').filter(|t| !t.is_empty())
}

/// 32 random bytes, base64url: opaque to clients and unguessable.
pub(crate) fn new_opaque_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A new refresh-token family id: one per login.
fn new_family() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What the store keeps instead of the token: its hex SHA-256.
pub(crate) fn refresh_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::password::hash_password;
    use crate::test_support::temp_store;
    use crate::AccessTokenValidator;
    use sipreg_store::User;

    pub(crate) const NOW: i64 = 1_700_000_000;

    pub(crate) struct Fixture {
        pub(crate) _dir: tempfile::TempDir,
        pub(crate) store: Arc<dyn Store>,
        pub(crate) service: Arc<TokenService>,
        pub(crate) validator: AccessTokenValidator,
    }

    impl Fixture {
        /// `jdoe`'s password grant for `softphone` at [`NOW`], the usual first step.
        pub(crate) async fn jdoe_login(&self) -> Result<TokenResponse, GrantError> {
            self.service
                .password_grant("jdoe", "secret", "softphone", None, None, NOW)
                .await
        }
    }

    /// A service on a fresh store with user `jdoe` / `secret`.
    pub(crate) async fn fixture() -> Fixture {
        let (dir, store) = temp_store();
        let user = User {
            id: "jdoe".into(),
            password_hash: hash_password("secret").unwrap(),
            created_at: 1,
        };
        store.create_user(&user).await.unwrap();
        let keys = KeyRing::load_or_create(store.as_ref(), 1).await.unwrap();
        let cfg = TokenConfig::default();
        let service = Arc::new(TokenService::new(store.clone(), keys, cfg));
        let validator = service.validator().clone();
        Fixture {
            _dir: dir,
            store,
            service,
            validator,
        }
    }

    #[tokio::test]
    async fn the_password_grant_issues_a_valid_access_token_and_a_stored_refresh_token() {
        let f = fixture().await;
        let resp = f.jdoe_login().await.unwrap();
        assert_eq!(resp.token_type, "Bearer");
        assert_eq!(resp.expires_in, 3600);
        assert_eq!(resp.scope, "sip:register");
        let claims = f.validator.validate(&resp.access_token, NOW).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.client_id.as_str()),
            ("jdoe", "softphone")
        );
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(resp.refresh_token.as_ref().unwrap())
                .unwrap()
                .len(),
            32
        );
        // Only the hash is stored: the token itself is not a key, its SHA-256 is.
        assert_eq!(
            f.store
                .take_refresh_token(resp.refresh_token.as_ref().unwrap(), NOW)
                .await
                .unwrap(),
            None
        );
        let stored = f
            .store
            .take_refresh_token(
                &refresh_token_hash(resp.refresh_token.as_ref().unwrap()),
                NOW,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.user_id, "jdoe");
        assert_eq!(stored.expires_at, NOW + 60 * 24 * 3600);
        assert_eq!(stored.hash.len(), 64);
    }

    #[tokio::test]
    async fn a_wrong_password_and_an_unknown_user_get_the_same_answer() {
        let f = fixture().await;
        let wrong = f
            .service
            .password_grant("jdoe", "guess", "softphone", None, None, NOW)
            .await
            .unwrap_err();
        let unknown = f
            .service
            .password_grant("nobody", "guess", "softphone", None, None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(wrong, GrantError::InvalidGrant(_)));
        assert_eq!(wrong.error_code(), unknown.error_code());
        assert_eq!(wrong.to_string(), unknown.to_string());
    }

    #[tokio::test]
    async fn clients_and_scopes_are_checked() {
        let f = fixture().await;
        let e = f
            .service
            .password_grant("jdoe", "secret", "evil", None, None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidClient));
        let e = f
            .service
            .password_grant("jdoe", "secret", "softphone", Some("admin"), None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidScope));
        let ok = f.service.password_grant(
            "jdoe",
            "secret",
            "softphone",
            Some("sip:register sip:register"),
            None,
            NOW,
        );
        assert_eq!(ok.await.unwrap().scope, "sip:register");
    }

    #[tokio::test]
    async fn a_refresh_token_is_rotated_and_the_old_one_is_rejected() {
        let f = fixture().await;
        let first = f.jdoe_login().await.unwrap();
        let second = f
            .service
            .refresh_grant(
                first.refresh_token.as_ref().unwrap(),
                "softphone",
                None,
                NOW + 100,
            )
            .await
            .unwrap();
        assert_ne!(second.refresh_token, first.refresh_token);
        let claims = f
            .validator
            .validate(&second.access_token, NOW + 100)
            .unwrap();
        assert_eq!((claims.sub.as_str(), claims.iat), ("jdoe", NOW + 100));
        let reused = f
            .service
            .refresh_grant(
                first.refresh_token.as_ref().unwrap(),
                "softphone",
                None,
                NOW + 200,
            )
            .await
            .unwrap_err();
        assert!(matches!(reused, GrantError::InvalidGrant(_)));
        let third = f
            .service
            .refresh_grant(
                second.refresh_token.as_ref().unwrap(),
                "softphone",
                None,
                NOW + 300,
            )
            .await;
        assert!(
            matches!(third, Err(GrantError::InvalidGrant(_))),
            "the reuse revoked the whole family, the rotated token included"
        );
    }

    #[tokio::test]
    async fn a_rotated_refresh_token_keeps_the_original_expiry() {
        let f = fixture().await;
        let ttl = f.service.config().refresh_ttl_secs;
        let first = f.jdoe_login().await.unwrap();
        let second = f
            .service
            .refresh_grant(
                first.refresh_token.as_ref().unwrap(),
                "softphone",
                None,
                NOW + ttl - 10,
            )
            .await
            .unwrap();
        let late = f
            .service
            .refresh_grant(
                second.refresh_token.as_ref().unwrap(),
                "softphone",
                None,
                NOW + ttl,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(late, GrantError::InvalidGrant(_)),
            "expired at the original login's end"
        );
    }

    #[tokio::test]
    async fn a_refresh_token_of_another_client_or_deleted_user_or_unknown_value_fails() {
        let f = fixture().await;
        let e = f
            .service
            .refresh_grant("not-a-token", "softphone", None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidGrant(_)));
        let e = f
            .service
            .refresh_grant(&"x".repeat(10_000), "softphone", None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidGrant(_)));

        // A token recorded for some other client id is refused and consumed.
        let foreign = RefreshToken {
            hash: refresh_token_hash("foreign"),
            user_id: "jdoe".into(),
            client_id: "other".into(),
            scope: "sip:register".into(),
            issued_at: NOW,
            expires_at: NOW + 1000,
            family: String::new(),
        };
        f.store.insert_refresh_token(&foreign).await.unwrap();
        let e = f
            .service
            .refresh_grant("foreign", "softphone", None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidGrant(_)));
        assert_eq!(
            f.store
                .take_refresh_token(&foreign.hash, NOW)
                .await
                .unwrap(),
            None
        );

        let resp = f.jdoe_login().await.unwrap();
        f.store.delete_user("jdoe").await.unwrap();
        let e = f
            .service
            .refresh_grant(resp.refresh_token.as_ref().unwrap(), "softphone", None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidGrant(_)));
    }

    #[tokio::test]
    async fn a_refresh_cannot_widen_the_scope() {
        let f = fixture().await;
        let first = f.jdoe_login().await.unwrap();
        let e = f.service.refresh_grant(
            first.refresh_token.as_ref().unwrap(),
            "softphone",
            Some("sip:register admin"),
            NOW,
        );
        assert!(matches!(e.await.unwrap_err(), GrantError::InvalidScope));
    }

    #[test]
    fn scope_resolution() {
        let allowed = ["a", "b"];
        assert_eq!(requested_scope(None, "a", &allowed).unwrap(), "a");
        assert_eq!(requested_scope(Some("  "), "a", &allowed).unwrap(), "a");
        assert_eq!(
            requested_scope(Some("b  a b"), "a", &allowed).unwrap(),
            "b a"
        );
        assert!(matches!(
            requested_scope(Some("a c"), "a", &allowed),
            Err(GrantError::InvalidScope)
        ));
        assert!(matches!(
            requested_scope(None, "", &allowed),
            Err(GrantError::InvalidScope)
        ));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed_as_hex_sha256() {
        let (a, b) = (new_opaque_token(), new_opaque_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(
            refresh_token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_of_a_response_hides_the_tokens() {
        let r = TokenResponse {
            access_token: "AT-SECRET".into(),
            token_type: "Bearer".into(),
            expires_in: 1,
            refresh_token: Some("RT-SECRET".into()),
            scope: "s".into(),
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    async fn login_code(f: &Fixture, verifier: &str, now: i64) -> String {
        use crate::codes::CodeGrant;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        f.service.codes.issue(
            CodeGrant {
                client_id: "softphone".into(),
                redirect_uri: "http://127.0.0.1:9/cb".into(),
                user: "jdoe".into(),
                scope: "sip:register".into(),
                code_challenge: B64.encode(Sha256::digest(verifier.as_bytes())),
                expires_at: now + 60,
            },
            now,
        )
    }

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const REDIRECT: Option<&str> = Some("http://127.0.0.1:9/cb");

    #[tokio::test]
    async fn an_authorization_code_with_the_right_verifier_yields_tokens_once() {
        let f = fixture().await;
        let code = login_code(&f, VERIFIER, NOW).await;
        let resp = f
            .service
            .authorization_code_grant(&code, REDIRECT, "softphone", VERIFIER, NOW + 1)
            .await
            .unwrap();
        let claims = f.validator.validate(&resp.access_token, NOW + 1).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.scope.as_str()),
            ("jdoe", "sip:register")
        );
        let refresh = resp.refresh_token.clone().unwrap();

        // The replay fails and takes the refresh token obtained by the first use with it.
        let replay = f
            .service
            .authorization_code_grant(&code, REDIRECT, "softphone", VERIFIER, NOW + 2)
            .await
            .unwrap_err();
        assert!(matches!(replay, GrantError::InvalidGrant(_)));
        let refreshed = f
            .service
            .refresh_grant(&refresh, "softphone", None, NOW + 3)
            .await;
        assert!(matches!(refreshed, Err(GrantError::InvalidGrant(_))));
    }

    #[tokio::test]
    async fn a_code_fails_with_a_wrong_verifier_redirect_or_client_and_is_spent() {
        let f = fixture().await;
        let cases: [(Option<&str>, &str, &str); 4] = [
            (REDIRECT, "softphone", &"x".repeat(43)),
            (Some("http://127.0.0.1:9/other"), "softphone", VERIFIER),
            (None, "softphone", VERIFIER),
            (REDIRECT, "softphone", "short"),
        ];
        for (redirect, client, verifier) in cases {
            let code = login_code(&f, VERIFIER, NOW).await;
            let e = f
                .service
                .authorization_code_grant(&code, redirect, client, verifier, NOW)
                .await
                .unwrap_err();
            assert!(
                matches!(e, GrantError::InvalidGrant(_)),
                "{redirect:?} {verifier}"
            );
            let again = f
                .service
                .authorization_code_grant(&code, REDIRECT, "softphone", VERIFIER, NOW)
                .await;
            assert!(again.is_err(), "a failed attempt spends the code");
        }
        let code = login_code(&f, VERIFIER, NOW).await;
        let e = f
            .service
            .authorization_code_grant(&code, REDIRECT, "evil", VERIFIER, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidClient));
        let e = f
            .service
            .authorization_code_grant(&code, REDIRECT, "softphone", VERIFIER, NOW + 61)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidGrant(_)), "expired");
    }

    async fn fixture_with(cfg: TokenConfig) -> Fixture {
        let f = fixture().await;
        let service = Arc::new(TokenService::new(
            f.store.clone(),
            f.service.keys().clone(),
            cfg,
        ));
        Fixture {
            validator: service.validator().clone(),
            service,
            ..f
        }
    }

    #[tokio::test]
    async fn the_cluster_settings_apply_to_the_next_request() {
        let f = fixture().await;
        let directory = sipreg_store::Directory::load(f.store.as_ref())
            .await
            .unwrap();
        f.service.attach_directory(directory.clone());
        let set = |c: sipreg_store::ClusterSettings| {
            let (store, directory) = (f.store.clone(), directory.clone());
            async move {
                store.set_cluster_settings(&c).await.unwrap();
                directory.reload(store.as_ref()).await.unwrap();
            }
        };
        set(sipreg_store::ClusterSettings {
            access_token_lifetime_minutes: 5,
            refresh_login: false,
            ..Default::default()
        })
        .await;
        let r = f.jdoe_login().await.unwrap();
        assert_eq!(r.expires_in, 300);
        assert!(r.refresh_token.is_none());
        let claims = f.validator.validate(&r.access_token, NOW).unwrap();
        assert_eq!(claims.exp - claims.iat, 300);
        set(sipreg_store::ClusterSettings {
            password_grant: false,
            ..Default::default()
        })
        .await;
        let e = f.jdoe_login().await.unwrap_err();
        assert!(matches!(e, GrantError::UnsupportedGrantType));
        let grants = f.service.metadata()["grant_types_supported"].clone();
        assert_eq!(
            grants,
            serde_json::json!(["authorization_code", "refresh_token"])
        );
    }

    #[tokio::test]
    async fn the_password_grant_can_be_switched_off() {
        let f = fixture_with(TokenConfig {
            password_grant: false,
            ..TokenConfig::default()
        })
        .await;
        let e = f.jdoe_login().await.unwrap_err();
        assert!(matches!(e, GrantError::UnsupportedGrantType));
    }

    #[tokio::test]
    async fn without_refresh_logins_no_refresh_token_is_issued() {
        let f = fixture_with(TokenConfig {
            refresh_login: false,
            ..TokenConfig::default()
        })
        .await;
        let resp = f.jdoe_login().await.unwrap();
        assert_eq!(resp.refresh_token, None);
        assert!(!serde_json::to_string(&resp)
            .unwrap()
            .contains("refresh_token"));
        let e = f
            .service
            .refresh_grant("anything", "softphone", None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::UnsupportedGrantType));
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_alike_for_real_and_unknown_names() {
        let f = fixture().await;
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for name in ["jdoe", "ghost"] {
            for _ in 0..5 {
                let e = f
                    .service
                    .password_grant(name, "wrong", "softphone", None, Some(ip), NOW)
                    .await
                    .unwrap_err();
                assert!(matches!(e, GrantError::InvalidGrant(_)));
            }
            let e = f
                .service
                .password_grant(name, "wrong", "softphone", None, Some(ip), NOW)
                .await
                .unwrap_err();
            assert!(matches!(e, GrantError::InvalidGrant(_)));
            // Now even the right password must wait: the answer does not depend on it.
            let e = f
                .service
                .password_grant(name, "secret", "softphone", None, Some(ip), NOW)
                .await
                .unwrap_err();
            assert!(matches!(e, GrantError::TooManyAttempts(1)), "{name}: {e:?}");
        }
        assert!(f
            .service
            .password_grant("jdoe", "secret", "softphone", None, Some(ip), NOW + 2)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_cached_client_is_forgotten_when_the_store_announces_a_change() {
        let f = fixture().await;
        let app = sipreg_store::OAuthClient {
            id: "app".into(),
            name: "App".into(),
            redirect_uris: vec!["https://app.example/cb".into()],
            scopes: vec!["sip:register".into()],
            created_at: 1,
        };
        f.store.create_client(&app).await.unwrap();
        // Resolved once from the store, then from the cache.
        assert_eq!(f.service.client("app").await.unwrap().name, "App");
        assert_eq!(f.service.client("app").await.unwrap().name, "App");
        f.store.delete_client("app").await.unwrap();
        assert!(matches!(
            f.service.client("app").await,
            Err(GrantError::InvalidClient)
        ));
        // Recreated with another name: the next lookup sees the new row, not a stale copy.
        let renamed = sipreg_store::OAuthClient {
            name: "App 2".into(),
            ..app
        };
        f.store.create_client(&renamed).await.unwrap();
        assert_eq!(f.service.client("app").await.unwrap().name, "App 2");
    }
}
