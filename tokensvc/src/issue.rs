//! Issuing RFC 9068 access tokens: JWS compact, ES256, `typ: at+jwt`, signed with the active key.

use jsonwebtoken::{Algorithm, Header};
use serde::Serialize;

use crate::{KeyRing, TokenConfig, TokenError};

/// The `typ` header of our access tokens (RFC 9068 §2.1).
pub(crate) const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The claim set as it goes on the wire (RFC 9068 §2.2).
#[derive(Serialize)]
struct WireClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    nbf: i64,
    iat: i64,
    jti: String,
    client_id: &'a str,
    scope: &'a str,
}

/// Signs an access token for `user` valid from `now` for `access_ttl_secs`.
pub(crate) fn sign_access_token(
    keys: &KeyRing,
    cfg: &TokenConfig,
    user: &str,
    client_id: &str,
    scope: &str,
    now: i64,
) -> Result<String, TokenError> {
    crate::ensure_crypto_provider();
    let set = keys.current();
    let (kid, key) = set.signing();
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some(ACCESS_TOKEN_TYP.into());
    header.kid = Some(kid.to_owned());
    let claims = WireClaims {
        iss: &cfg.issuer,
        sub: user,
        aud: &cfg.audience,
        exp: now.saturating_add(cfg.access_ttl_secs),
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        client_id,
        scope,
    };
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}
