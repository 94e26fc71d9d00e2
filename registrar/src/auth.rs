//! Bearer credentials in SIP (RFC 8898, RFC 6750) and the token validation seam.
//!
//! The registrar does not know how tokens are made: it hands the token to a [`BearerValidator`]
//! (implemented by the token service) and gets a [`TokenIdentity`] back.

use std::borrow::Cow;

use sipreg_store::ChallengeDialect;

use crate::message::{unquote, Request, DEVICE_NAME_PARAM};

/// Validates bearer access tokens; implemented outside this crate (e.g. by the token service).
pub trait BearerValidator: Send + Sync + 'static {
    /// Validates a bearer access token at `now` (unix seconds).
    fn validate(&self, token: &str, now: i64) -> Result<TokenIdentity, BearerError>;
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The user id (`sub`).
    pub user: String,
    /// Granted scope, space-separated.
    pub scope: String,
}

/// Why a token was rejected; `description` goes into `error_description` (RFC 6750 §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct BearerError {
    /// Human-readable reason, e.g. "token expired".
    pub description: String,
}

/// Malformed credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `Bearer` without a usable token.
    #[error("malformed bearer credentials")]
    MalformedBearer,
}

/// Which challenge style a client understands, chosen per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDialect {
    /// RFC 8898: `401` + `WWW-Authenticate: Bearer realm, scope, authz_server`.
    Rfc8898,
    /// Unified CM / Jabber: `407` + `Proxy-Authenticate: Bearer realm="ccmsipline"`.
    UnifiedCm,
}

/// The realm Unified CM uses for line-side challenges.
pub const UNIFIED_CM_REALM: &str = "ccmsipline";

impl AuthDialect {
    /// Jabber (`User-Agent: Cisco-CSF...`), a Cisco device-name Contact or Bearer credentials in
    /// `Proxy-Authorization` mean the Unified CM dialect; anything else gets RFC 8898.
    pub fn of(req: &Request) -> AuthDialect {
        let jabber_ua = req
            .user_agent()
            .is_some_and(|ua| ua.starts_with("Cisco-CSF"));
        // Runs on every REGISTER: compared in place, no lowercased copy of each Contact.
        let device_contact = req
            .all("Contact")
            .any(|c| contains_ignore_ascii_case(c, DEVICE_NAME_PARAM));
        let proxy_bearer = req.all("Proxy-Authorization").any(is_bearer);
        if jabber_ua || device_contact || proxy_bearer {
            AuthDialect::UnifiedCm
        } else {
            AuthDialect::Rfc8898
        }
    }
}

impl AuthDialect {
    /// The dialect the cluster's `challenge_dialect` setting asks for: `auto` decides per
    /// request ([`AuthDialect::of`]), the others always answer in their dialect.
    pub fn choose(req: &Request, setting: ChallengeDialect) -> AuthDialect {
        match setting {
            ChallengeDialect::Auto => AuthDialect::of(req),
            ChallengeDialect::Rfc8898 => AuthDialect::Rfc8898,
            ChallengeDialect::Cucm => AuthDialect::UnifiedCm,
        }
    }
}

/// Whether `needle` occurs in `haystack`, ASCII case-insensitively.
fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    needle.is_empty()
        || haystack
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn is_bearer(value: &str) -> bool {
    value
        .split_whitespace()
        .next()
        .is_some_and(|s| s.eq_ignore_ascii_case("Bearer"))
}

/// The first Bearer token in `Authorization`, then `Proxy-Authorization`. `Ok(None)` when no
/// Bearer credentials are present (other schemes such as Digest are ignored). The token
/// borrows from the request unless it had to be unquoted.
pub fn bearer_token(req: &Request) -> Result<Option<Cow<'_, str>>, AuthError> {
    for value in req
        .all("Authorization")
        .chain(req.all("Proxy-Authorization"))
    {
        if let Some(token) = parse_bearer(value)? {
            return Ok(Some(token));
        }
    }
    Ok(None)
}

/// Parses one credentials value: `Bearer <token68>` (RFC 6750 §2.1) or `Bearer token="<token>"`
/// (Cisco Jabber). `Ok(None)` for other schemes.
pub fn parse_bearer(value: &str) -> Result<Option<Cow<'_, str>>, AuthError> {
    let value = value.trim();
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return Ok(None);
    }
    let rest = rest.trim();
    if is_token68(rest) {
        return Ok(Some(Cow::Borrowed(rest)));
    }
    // auth-param list; the token is the `token` parameter.
    for param in crate::message::split_auth_params(rest) {
        let (name, v) = param.split_once('=').ok_or(AuthError::MalformedBearer)?;
        if name.trim().eq_ignore_ascii_case("token") {
            let token = unquote(v);
            if is_token68(&token) {
                return Ok(Some(Cow::Owned(token)));
            }
            return Err(AuthError::MalformedBearer);
        }
    }
    Err(AuthError::MalformedBearer)
}

/// RFC 6750 b64token / RFC 7235 token68.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Escapes a value for a quoted-string auth-param (RFC 6750 §3 forbids `"` and `\` in
/// error_description; they are replaced rather than escaped).
pub(crate) fn quoted_param(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &str) -> Request {
        Request::parse(format!("REGISTER sip:a SIP/2.0\r\n{headers}\r\n\r\n").as_bytes()).unwrap()
    }

    #[test]
    fn both_credential_forms() {
        assert_eq!(
            parse_bearer("Bearer abc.DEF-_~+/=="),
            Ok(Some("abc.DEF-_~+/==".into()))
        );
        assert_eq!(parse_bearer("bearer  x.y.z"), Ok(Some("x.y.z".into())));
        assert_eq!(
            parse_bearer("Bearer token=\"eyJ.a.b\""),
            Ok(Some("eyJ.a.b".into()))
        );
        assert_eq!(
            parse_bearer("Bearer realm=\"ccmsipline\", token=\"t1\""),
            Ok(Some("t1".into()))
        );
        assert_eq!(parse_bearer("Digest username=\"a\""), Ok(None));
        assert_eq!(parse_bearer("Bearer"), Err(AuthError::MalformedBearer));
        assert_eq!(parse_bearer("Bearer a b"), Err(AuthError::MalformedBearer));
        assert_eq!(
            parse_bearer("Bearer token=\"a b\""),
            Err(AuthError::MalformedBearer)
        );
    }

    #[test]
    fn token_from_either_header() {
        assert_eq!(
            bearer_token(&req("Authorization: Bearer t1")),
            Ok(Some("t1".into()))
        );
        assert_eq!(
            bearer_token(&req("Proxy-Authorization: Bearer token=\"t2\"")),
            Ok(Some("t2".into()))
        );
        assert_eq!(
            bearer_token(&req(
                "Authorization: Digest x=1\r\nProxy-Authorization: Bearer t3"
            )),
            Ok(Some("t3".into()))
        );
        assert_eq!(bearer_token(&req("Via: x")), Ok(None));
    }

    #[test]
    fn dialect_selection() {
        assert_eq!(
            AuthDialect::of(&req("User-Agent: Cisco-CSF")),
            AuthDialect::UnifiedCm
        );
        assert_eq!(
            AuthDialect::of(&req(
                "m: <sip:a@b>;+u.sip!devicename.ccm.cisco.com=\"CSFx\""
            )),
            AuthDialect::UnifiedCm
        );
        assert_eq!(
            AuthDialect::of(&req(
                "Contact: <sip:a@b>;+U.SIP!DeviceName.CCM.Cisco.com=\"CSFx\""
            )),
            AuthDialect::UnifiedCm,
            "the parameter name matches in any case"
        );
        assert_eq!(
            AuthDialect::of(&req("Proxy-Authorization: Bearer t")),
            AuthDialect::UnifiedCm
        );
        assert_eq!(
            AuthDialect::of(&req("User-Agent: Linphone")),
            AuthDialect::Rfc8898
        );
        assert_eq!(
            AuthDialect::of(&req("Authorization: Bearer t")),
            AuthDialect::Rfc8898
        );
    }

    #[test]
    fn the_cluster_setting_overrides_the_guess() {
        let jabber = req("User-Agent: Cisco-CSF");
        let other = req("User-Agent: Linphone");
        for (r, want) in [
            (&jabber, AuthDialect::UnifiedCm),
            (&other, AuthDialect::Rfc8898),
        ] {
            assert_eq!(AuthDialect::choose(r, ChallengeDialect::Auto), want);
            assert_eq!(
                AuthDialect::choose(r, ChallengeDialect::Rfc8898),
                AuthDialect::Rfc8898
            );
            assert_eq!(
                AuthDialect::choose(r, ChallengeDialect::Cucm),
                AuthDialect::UnifiedCm
            );
        }
    }
}
