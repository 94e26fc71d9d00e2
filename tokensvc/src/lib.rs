//! sipreg's OAuth 2.0 authorization server and access-token validator.
//!
//! The authorization-server side issues RFC 9068 access tokens (JWS, ES256, `typ: at+jwt`) and
//! opaque, rotating refresh tokens with reuse detection from `POST /oauth/token` (authorization
//! code with PKCE through a server-rendered login page, password, refresh token), revokes and
//! introspects them (RFC 7009, RFC 7662), publishes its keys at `GET /oauth/jwks.json` and its
//! metadata at `GET /.well-known/oauth-authorization-server` (RFC 8414). The resource-server side,
//! used by the registrar on every REGISTER, validates access tokens without locks or clock reads,
//! caches verified tokens and applies revocations at once.
//!
//! Types that matter: [`TokenService`] (grants and the axum [`Router`](axum::Router)),
//! [`KeyRing`] (ES256 signing keys kept in the store, swapped atomically on reload, rotated
//! without mass logout), [`AccessTokenValidator`] with [`AccessClaims`] and [`ValidationError`],
//! and [`TokenConfig`].
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod authorize;
mod clients;
mod codes;
mod config;
mod external;
mod grants;
mod http;
mod issue;
mod json;
mod keys;
pub mod metrics;
mod password;
mod pkce;
mod throttle;
mod validator;
mod web;

pub use clients::{
    builtin_client, valid_scope_token, validate_redirect_uri, DEFAULT_CLIENT_ID, REGISTER_SCOPE,
};
pub use config::TokenConfig;
pub use external::{
    check_url as check_issuer_url, validate_issuer, IssuerFieldError, DEFAULT_ALGORITHMS,
    DEFAULT_USER_CLAIM, SUPPORTED_ALGORITHMS,
};
pub use grants::{GrantError, LiveSettings, TokenResponse, TokenService};
pub use keys::{key_states, KeyInfo, KeyRing, KeyState};
pub use password::{hash_password, verify_password};
pub use validator::{AccessClaims, AccessTokenValidator, ValidationError};

use sipreg_store::StoreError;

/// Errors of the token service itself (not of a client's request: see [`GrantError`]).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A signing key could not be generated or a stored one could not be used.
    #[error("signing key: {0}")]
    Key(String),
    /// The store holds no active signing key.
    #[error("no active signing key")]
    NoActiveKey,
    /// Signing a token failed.
    #[error("signing token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// Hashing a password failed.
    #[error("password hashing: {0}")]
    PasswordHash(String),
    /// A blocking task (Argon2) panicked or was cancelled.
    #[error("background task failed")]
    Task,
}

/// Installs jsonwebtoken's aws-lc-rs provider once, so that signing and verifying never depend on
/// which jsonwebtoken features another crate of the build happens to enable.
pub(crate) fn ensure_crypto_provider() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means a provider is already installed by someone else; that one is used then.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

#[cfg(test)]
pub(crate) mod test_support;
