//! Who may fetch a file over HTTPS 6971: a bearer access token whose user owns the device.
//!
//! The crate does not know how tokens are validated; the binary plugs its validator in through
//! [`TokenCheck`].

use axum::http::{header, HeaderMap};

use crate::files::ConfigFile;

/// Validates an access token and names its user; implemented by the binary over the token service.
pub trait TokenCheck: Send + Sync + 'static {
    /// The user (`sub`) of a valid token at `now` (Unix seconds), or why it is not valid.
    fn user(&self, token: &str, now: i64) -> Result<String, String>;
}

/// Why an HTTPS request may not have the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No bearer token (RFC 6750 §3.1: no error code).
    #[error("a bearer access token is required")]
    NoToken,
    /// The token is not valid.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The token is valid but its user does not own the device.
    #[error("the token's user does not own this device")]
    NotOwner,
}

/// The token's user from `Authorization: Bearer …`, validated.
pub(crate) fn token_user(
    headers: &HeaderMap,
    check: &dyn TokenCheck,
    now: i64,
) -> Result<String, Denied> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Denied::NoToken)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(Denied::NoToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(Denied::NoToken);
    }
    check.user(token.trim(), now).map_err(Denied::InvalidToken)
}

/// Whether `user` may have `file`: the owner may have a device's file; files about no one
/// (XMLDefault, the cache list) go to any authenticated user.
pub(crate) fn may_fetch(user: &str, file: &ConfigFile) -> Result<(), Denied> {
    match &file.owner {
        Some(owner) if owner != user => Err(Denied::NotOwner),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// Accepts `token-<user>` and nothing else.
    pub(crate) struct FakeCheck;
    impl TokenCheck for FakeCheck {
        fn user(&self, token: &str, now: i64) -> Result<String, String> {
            assert!(now > 1_600_000_000, "a real clock is passed");
            token
                .strip_prefix("token-")
                .map(str::to_owned)
                .ok_or_else(|| "bad signature".to_owned())
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_are_extracted_and_checked() {
        let now = 1_700_000_000;
        assert_eq!(
            token_user(&headers(None), &FakeCheck, now),
            Err(Denied::NoToken)
        );
        assert_eq!(
            token_user(&headers(Some("Basic dTpw")), &FakeCheck, now),
            Err(Denied::NoToken)
        );
        assert_eq!(
            token_user(&headers(Some("Bearer ")), &FakeCheck, now),
            Err(Denied::NoToken)
        );
        assert_eq!(
            token_user(&headers(Some("Bearer forged")), &FakeCheck, now),
            Err(Denied::InvalidToken("bad signature".into()))
        );
        assert_eq!(
            token_user(&headers(Some("bearer token-jdoe")), &FakeCheck, now).unwrap(),
            "jdoe"
        );
    }

    #[test]
    fn only_the_owner_gets_a_device_file() {
        let file = |owner: Option<&str>| {
            ConfigFile::new(
                "x".into(),
                Vec::new().into(),
                "\"e\"".into(),
                std::time::UNIX_EPOCH,
                owner.map(str::to_owned),
                "text/xml",
            )
        };
        assert_eq!(may_fetch("jdoe", &file(Some("jdoe"))), Ok(()));
        assert_eq!(
            may_fetch("mallory", &file(Some("jdoe"))),
            Err(Denied::NotOwner)
        );
        assert_eq!(may_fetch("mallory", &file(None)), Ok(()));
    }
}
