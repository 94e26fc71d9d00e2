//! Tokens seen from outside: reading a JWT's claims and forging ones with a genuine signing key
//! (see [`crate::Server::signing_key`]) but chosen claims.

use base64::Engine;
use serde_json::Value;

/// Seconds since the Unix epoch, for `iat`/`exp` claims.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims of a JWT, read without checking its signature.
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// An ES256 `at+jwt` access token with these claims, signed by `pem` under `kid`.
pub fn forge(kid: &str, pem: &str, claims: Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.typ = Some("at+jwt".into());
    h.kid = Some(kid.into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}
