//! Issuing RFC 9068 access tokens: JWS compact, ES256, `typ: at+jwt`, signed with the active key.
//!
//! The JWS is assembled here rather than by `jsonwebtoken::encode`, which parses the PKCS#8 key
//! (and checks it against its public point, a P-256 scalar multiplication) on every call: the
//! key set holds the parsed key pair and the encoded header once per key generation, so a token
//! costs one claims serialisation and one signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
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
    jti: &'a str,
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
    let set = keys.current();
    let signer = set.signer();
    let mut jti = uuid::Uuid::encode_buffer();
    let claims = WireClaims {
        iss: &cfg.issuer,
        sub: user,
        aud: &cfg.audience,
        exp: now.saturating_add(cfg.access_ttl_secs),
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().hyphenated().encode_lower(&mut jti),
        client_id,
        scope,
    };
    let json = serde_json::to_vec(&claims).map_err(|e| TokenError::Sign(e.into()))?;
    // header.claims.signature, each part base64url; a P-256 signature is 64 bytes (86 chars).
    let header = signer.header_b64();
    let mut token = String::with_capacity(header.len() + json.len() * 4 / 3 + 92);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    let signature = signer.sign(token.as_bytes())?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
    Ok(token)
}
