//! The OAuth 2.0 grants of the token endpoint: resource-owner password (RFC 6749 §4.3) and
//! refresh token (§6) with rotation, for the fixed set of public clients sipreg knows.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sipreg_store::{RefreshToken, Store};

use crate::issue::sign_access_token;
use crate::password::verify_login;
use crate::{KeyRing, TokenConfig, TokenError};

/// The public client id of sipreg's soft clients (client ids are fixed, as in Unified CM).
pub const DEFAULT_CLIENT_ID: &str = "softphone";

/// Longest refresh token we bother to hash; ours are 43 characters.
const MAX_REFRESH_TOKEN_LEN: usize = 512;

/// A registered OAuth client and the scope tokens it may obtain.
struct Client {
    id: &'static str,
    scopes: &'static [&'static str],
}

const CLIENTS: &[Client] = &[Client {
    id: DEFAULT_CLIENT_ID,
    scopes: &["sip:register"],
}];

fn client(id: &str) -> Option<&'static Client> {
    CLIENTS.iter().find(|c| c.id == id)
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct TokenResponse {
    /// The signed access token (JWT).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
    /// The new opaque refresh token; the one presented (if any) no longer works.
    pub refresh_token: String,
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
    /// Wrong credentials or an invalid, expired or reused refresh token (400).
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// The grant type is not supported (400).
    #[error("grant type not supported")]
    UnsupportedGrantType,
    /// The requested scope exceeds what the client or the original grant allows (400).
    #[error("requested scope is not allowed")]
    InvalidScope,
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
            GrantError::InvalidGrant(_) => "invalid_grant",
            GrantError::UnsupportedGrantType => "unsupported_grant_type",
            GrantError::InvalidScope => "invalid_scope",
            GrantError::Server(_) => "server_error",
        }
    }
}

/// The same answer for an unknown user and a wrong password, so usernames cannot be probed.
const BAD_CREDENTIALS: &str = "invalid username or password";
const BAD_REFRESH_TOKEN: &str = "invalid or expired refresh token";

/// Issues tokens: the grants, the access-token signer and (in `http`) the HTTP endpoints.
pub struct TokenService {
    store: Arc<dyn Store>,
    pub(crate) keys: Arc<KeyRing>,
    cfg: TokenConfig,
}

impl TokenService {
    /// A service issuing with `keys` and remembering refresh tokens in `store`.
    pub fn new(store: Arc<dyn Store>, keys: Arc<KeyRing>, cfg: TokenConfig) -> Self {
        crate::ensure_crypto_provider();
        Self { store, keys, cfg }
    }

    /// The settings this service issues with.
    pub fn config(&self) -> &TokenConfig {
        &self.cfg
    }

    /// The key ring this service signs with (share it with the [`AccessTokenValidator`](crate::AccessTokenValidator)).
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// Signs an access token for `user` and `client_id` with the given scope, valid from `now`.
    pub fn issue_access_token(
        &self,
        user: &str,
        client_id: &str,
        scope: &str,
        now: i64,
    ) -> Result<String, TokenError> {
        sign_access_token(&self.keys, &self.cfg, user, client_id, scope, now)
    }

    /// RFC 6749 §4.3: exchanges a username and password for an access and a refresh token.
    pub async fn password_grant(
        &self,
        username: &str,
        password: &str,
        client_id: &str,
        scope: Option<&str>,
        now: i64,
    ) -> Result<TokenResponse, GrantError> {
        let client = client(client_id).ok_or(GrantError::InvalidClient)?;
        let scope = requested_scope(scope, &self.cfg.default_scope, client.scopes)?;
        let user = self.store.user(username).await.map_err(TokenError::from)?;
        let stored_phc = user.map(|u| u.password_hash);
        let password = password.to_owned();
        // Argon2 takes tens of milliseconds of CPU; keep it off the async workers.
        let ok =
            tokio::task::spawn_blocking(move || verify_login(stored_phc.as_deref(), &password))
                .await
                .map_err(|_| TokenError::Task)?;
        if !ok {
            return Err(GrantError::InvalidGrant(BAD_CREDENTIALS));
        }
        let refresh_expires_at = now.saturating_add(self.cfg.refresh_ttl_secs);
        self.issue_pair(username, client.id, &scope, now, refresh_expires_at)
            .await
    }

    /// RFC 6749 §6: exchanges a refresh token for new tokens; the presented one is consumed.
    ///
    /// The new refresh token keeps the original expiry, so a login lasts `refresh_ttl_secs` at
    /// most (as Unified CM's refresh-token timer) however often it is rotated.
    pub async fn refresh_grant(
        &self,
        refresh_token: &str,
        client_id: &str,
        scope: Option<&str>,
        now: i64,
    ) -> Result<TokenResponse, GrantError> {
        let client = client(client_id).ok_or(GrantError::InvalidClient)?;
        if refresh_token.is_empty() || refresh_token.len() > MAX_REFRESH_TOKEN_LEN {
            return Err(GrantError::InvalidGrant(BAD_REFRESH_TOKEN));
        }
        // Taken atomically: of two concurrent uses exactly one wins, and the old token is dead.
        let stored = self
            .store
            .take_refresh_token(&refresh_token_hash(refresh_token), now)
            .await
            .map_err(TokenError::from)?
            .ok_or(GrantError::InvalidGrant(BAD_REFRESH_TOKEN))?;
        // A token shown by another client is treated as leaked: it stays consumed (RFC 6749 §10.4).
        if stored.client_id != client.id {
            return Err(GrantError::InvalidGrant(BAD_REFRESH_TOKEN));
        }
        if self
            .store
            .user(&stored.user_id)
            .await
            .map_err(TokenError::from)?
            .is_none()
        {
            return Err(GrantError::InvalidGrant(BAD_REFRESH_TOKEN));
        }
        let original: Vec<&str> = scope_tokens(&stored.scope).collect();
        let scope = requested_scope(scope, &stored.scope, &original)?;
        self.issue_pair(&stored.user_id, client.id, &scope, now, stored.expires_at)
            .await
    }

    async fn issue_pair(
        &self,
        user: &str,
        client_id: &str,
        scope: &str,
        now: i64,
        refresh_expires_at: i64,
    ) -> Result<TokenResponse, GrantError> {
        let access_token = self.issue_access_token(user, client_id, scope, now)?;
        let refresh_token = new_refresh_token();
        let record = RefreshToken {
            hash: refresh_token_hash(&refresh_token),
            user_id: user.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            issued_at: now,
            expires_at: refresh_expires_at,
            family: String::new(),
        };
        self.store
            .insert_refresh_token(&record)
            .await
            .map_err(TokenError::from)?;
        tracing::info!(user, client_id, scope, "issued tokens");
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: self.cfg.access_ttl_secs,
            refresh_token,
            scope: scope.to_owned(),
        })
    }
}

/// Resolves the requested scope (or `default` when none is asked for) against what is allowed,
/// returning it normalised: single spaces, no duplicates, request order.
fn requested_scope(
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

fn scope_tokens(scope: &str) -> impl Iterator<Item = &str> {
    scope.split(' ').filter(|t| !t.is_empty())
}

/// 32 random bytes, base64url: opaque to clients and unguessable.
fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
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
        let validator = AccessTokenValidator::new(keys.clone(), &cfg);
        let service = Arc::new(TokenService::new(store.clone(), keys, cfg));
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
        let resp = f
            .service
            .password_grant("jdoe", "secret", "softphone", None, NOW)
            .await
            .unwrap();
        assert_eq!(resp.token_type, "Bearer");
        assert_eq!(resp.expires_in, 3600);
        assert_eq!(resp.scope, "sip:register");
        let claims = f.validator.validate(&resp.access_token, NOW).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.client_id.as_str()),
            ("jdoe", "softphone")
        );
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&resp.refresh_token).unwrap().len(),
            32
        );
        // Only the hash is stored: the token itself is not a key, its SHA-256 is.
        assert_eq!(
            f.store
                .take_refresh_token(&resp.refresh_token, NOW)
                .await
                .unwrap(),
            None
        );
        let stored = f
            .store
            .take_refresh_token(&refresh_token_hash(&resp.refresh_token), NOW)
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
            .password_grant("jdoe", "guess", "softphone", None, NOW)
            .await
            .unwrap_err();
        let unknown = f
            .service
            .password_grant("nobody", "guess", "softphone", None, NOW)
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
            .password_grant("jdoe", "secret", "evil", None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidClient));
        let e = f
            .service
            .password_grant("jdoe", "secret", "softphone", Some("admin"), NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidScope));
        let ok = f.service.password_grant(
            "jdoe",
            "secret",
            "softphone",
            Some("sip:register sip:register"),
            NOW,
        );
        assert_eq!(ok.await.unwrap().scope, "sip:register");
    }

    #[tokio::test]
    async fn a_refresh_token_is_rotated_and_the_old_one_is_rejected() {
        let f = fixture().await;
        let first = f
            .service
            .password_grant("jdoe", "secret", "softphone", None, NOW)
            .await
            .unwrap();
        let second = f
            .service
            .refresh_grant(&first.refresh_token, "softphone", None, NOW + 100)
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
            .refresh_grant(&first.refresh_token, "softphone", None, NOW + 200)
            .await
            .unwrap_err();
        assert!(matches!(reused, GrantError::InvalidGrant(_)));
        let third = f
            .service
            .refresh_grant(&second.refresh_token, "softphone", None, NOW + 300)
            .await;
        assert!(third.is_ok(), "the rotated token works once");
    }

    #[tokio::test]
    async fn a_rotated_refresh_token_keeps_the_original_expiry() {
        let f = fixture().await;
        let ttl = f.service.config().refresh_ttl_secs;
        let first = f
            .service
            .password_grant("jdoe", "secret", "softphone", None, NOW)
            .await
            .unwrap();
        let second = f
            .service
            .refresh_grant(&first.refresh_token, "softphone", None, NOW + ttl - 10)
            .await
            .unwrap();
        let late = f
            .service
            .refresh_grant(&second.refresh_token, "softphone", None, NOW + ttl)
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

        let resp = f
            .service
            .password_grant("jdoe", "secret", "softphone", None, NOW)
            .await
            .unwrap();
        f.store.delete_user("jdoe").await.unwrap();
        let e = f
            .service
            .refresh_grant(&resp.refresh_token, "softphone", None, NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, GrantError::InvalidGrant(_)));
    }

    #[tokio::test]
    async fn a_refresh_cannot_widen_the_scope() {
        let f = fixture().await;
        let first = f
            .service
            .password_grant("jdoe", "secret", "softphone", None, NOW)
            .await
            .unwrap();
        let e = f.service.refresh_grant(
            &first.refresh_token,
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
        let (a, b) = (new_refresh_token(), new_refresh_token());
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
            refresh_token: "RT-SECRET".into(),
            scope: "s".into(),
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
