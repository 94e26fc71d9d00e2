//! Access-token validation for resource servers (the registrar): RFC 9068 §4 with the RFC 8725
//! checks, in an order that touches no key before the algorithm is known to be ES256.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::issue::ACCESS_TOKEN_TYP;
use crate::keys::ALG_ES256;
use crate::{KeyRing, TokenConfig};

/// Longest token we look at; real ones are well under 1 KiB, so anything bigger is not ours.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims of a valid access token that the registrar decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user the token was issued to.
    pub sub: String,
    /// The OAuth client that obtained it.
    pub client_id: String,
    /// Granted scope, space-delimited (empty if the token carries none).
    pub scope: String,
    /// Unix seconds of issue.
    pub iat: i64,
    /// Unix seconds of expiry.
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
}

impl AccessClaims {
    /// Whether `scope` is one of the granted scope tokens.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split(' ').any(|s| s == scope)
    }
}

/// Why a token was refused; the messages are lowercase, fixed and safe to send to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not a JWS compact serialization we can parse.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not ES256 (e.g. `none`, HS256, RS256); holds a sanitised copy of the value.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// `typ` is not `at+jwt` / `application/at+jwt`.
    #[error("wrong token type")]
    WrongType,
    /// `kid` is missing or names no key we publish.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` lies in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not our issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain our audience.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is absent or empty.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
}

/// Validates access tokens against the [`KeyRing`] with a caller-supplied clock.
#[derive(Debug, Clone)]
pub struct AccessTokenValidator {
    keys: Arc<KeyRing>,
    issuer: String,
    audience: String,
    leeway: i64,
}

/// The protected header; only what we check. Unknown members are ignored (RFC 7515 §4).
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The claim set with every member optional, so that absence is reported by name.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    jti: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
}

/// RFC 7519 §4.1.3: `aud` is one string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, ours: &str) -> bool {
        match self {
            Audience::One(a) => a == ours,
            Audience::Many(all) => all.iter().any(|a| a == ours),
        }
    }
}

impl AccessTokenValidator {
    /// A validator for tokens of `cfg.issuer` meant for `cfg.audience`.
    pub fn new(keys: Arc<KeyRing>, cfg: &TokenConfig) -> Self {
        crate::ensure_crypto_provider();
        Self {
            keys,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: i64::try_from(cfg.leeway_secs).unwrap_or(i64::MAX),
        }
    }

    /// Validates `token` at time `now` (Unix seconds); reads no clock.
    pub fn validate(&self, token: &str, now: i64) -> Result<AccessClaims, ValidationError> {
        use ValidationError as E;
        if token.len() > MAX_TOKEN_LEN {
            return Err(E::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(E::Malformed);
        };

        // RFC 8725 §3.1: the algorithm is checked against the allowlist on the raw header, before
        // any key is chosen, so `none` and HS256-keyed-with-our-public-key never reach crypto.
        let header: RawHeader = decode_part(header_b64)?;
        if header.alg != ALG_ES256 {
            return Err(E::UnsupportedAlgorithm(sanitise(&header.alg)));
        }
        // RFC 7515 §4.1.11: we understand no extensions, so any `crit` makes the token invalid.
        if header.crit.is_some() {
            return Err(E::Malformed);
        }
        // RFC 9068 §4 / RFC 8725 §3.11: explicit typing; media types compare case-insensitively.
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(E::WrongType);
        }
        // Only keys we publish; `kid` selects among them and never names a key we fetch.
        let keys = self.keys.current();
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| keys.verifying(kid))
            .ok_or(E::UnknownKey)?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        match jsonwebtoken::crypto::verify(signature_b64, signed.as_bytes(), key, Algorithm::ES256)
        {
            Ok(true) => {}
            _ => return Err(E::BadSignature),
        }

        // Claims are parsed only once the signature proved they are ours.
        let claims: RawClaims = decode_part(claims_b64)?;
        match claims.iss.as_deref() {
            None => return Err(E::MissingClaim("iss")),
            Some(iss) if iss != self.issuer => return Err(E::WrongIssuer),
            Some(_) => {}
        }
        match &claims.aud {
            None => return Err(E::MissingClaim("aud")),
            Some(aud) if !aud.contains(&self.audience) => return Err(E::WrongAudience),
            Some(_) => {}
        }
        let exp = claims.exp.ok_or(E::MissingClaim("exp"))? as i64;
        let iat = claims.iat.ok_or(E::MissingClaim("iat"))? as i64;
        // RFC 7519 §4.1.4: the current time must be before `exp`, give or take the leeway.
        if now >= exp.saturating_add(self.leeway) {
            return Err(E::Expired);
        }
        let not_before = claims.nbf.map_or(iat, |nbf| (nbf as i64).max(iat));
        if not_before > now.saturating_add(self.leeway) {
            return Err(E::NotYetValid);
        }
        Ok(AccessClaims {
            sub: required(claims.sub, "sub")?,
            client_id: required(claims.client_id, "client_id")?,
            jti: required(claims.jti, "jti")?,
            scope: claims.scope.unwrap_or_default(),
            iat,
            exp,
        })
    }
}

fn decode_part<T: DeserializeOwned>(part: &str) -> Result<T, ValidationError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ValidationError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| ValidationError::Malformed)
}

fn required(value: Option<String>, name: &'static str) -> Result<String, ValidationError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or(ValidationError::MissingClaim(name))
}

/// Keeps an attacker-chosen `alg` printable and short, since the message may go back to clients
/// inside a quoted header parameter.
fn sanitise(alg: &str) -> String {
    let clean: String = alg
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        .take(16)
        .collect();
    if clean.is_empty() {
        "(empty)".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::sign_access_token;
    use crate::keys::generate_signing_key;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};
    use sipreg_store::SigningKey;

    const NOW: i64 = 1_700_000_000;

    struct Fixture {
        key: SigningKey,
        ring: Arc<KeyRing>,
        cfg: TokenConfig,
        validator: AccessTokenValidator,
    }

    fn fixture() -> Fixture {
        let key = generate_signing_key(1).unwrap();
        let ring = KeyRing::from_keys(std::slice::from_ref(&key)).unwrap();
        let cfg = TokenConfig::default();
        let validator = AccessTokenValidator::new(ring.clone(), &cfg);
        Fixture {
            key,
            ring,
            cfg,
            validator,
        }
    }

    fn issue(f: &Fixture, now: i64) -> String {
        sign_access_token(&f.ring, &f.cfg, "jdoe", "softphone", "sip:register", now).unwrap()
    }

    fn good_claims(f: &Fixture) -> Value {
        json!({
            "iss": f.cfg.issuer, "sub": "jdoe", "aud": f.cfg.audience, "exp": NOW + 3600, "iat": NOW,
            "jti": "j1", "client_id": "softphone", "scope": "sip:register",
        })
    }

    /// Signs arbitrary header/claims JSON with the fixture's real private key.
    fn forge_es256(f: &Fixture, header: Value, claims: &Value) -> String {
        let signing_input = format!("{}.{}", b64_json(&header), b64_json(claims));
        let key = EncodingKey::from_ec_pem(f.key.private_pem.as_bytes()).unwrap();
        let sig =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::ES256).unwrap();
        format!("{signing_input}.{sig}")
    }

    fn b64_json(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn an_issued_token_validates_and_yields_its_claims() {
        let f = fixture();
        let token = issue(&f, NOW);
        let claims = f.validator.validate(&token, NOW + 10).unwrap();
        assert_eq!(claims.sub, "jdoe");
        assert_eq!(claims.client_id, "softphone");
        assert_eq!(claims.scope, "sip:register");
        assert!(claims.has_scope("sip:register"));
        assert!(!claims.has_scope("sip"));
        assert_eq!(claims.iat, NOW);
        assert_eq!(claims.exp, NOW + 3600);
        assert!(uuid::Uuid::parse_str(&claims.jti).is_ok(), "jti is a uuid");
        let other = issue(&f, NOW);
        assert_ne!(
            f.validator.validate(&other, NOW).unwrap().jti,
            claims.jti,
            "jti is unique"
        );
    }

    #[test]
    fn the_header_carries_es256_at_jwt_and_the_active_kid() {
        let f = fixture();
        let token = issue(&f, NOW);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"], f.key.kid.as_str());
    }

    #[test]
    fn expiry_is_judged_by_the_given_clock_with_leeway() {
        let f = fixture();
        let token = issue(&f, NOW);
        let exp = NOW + 3600;
        assert!(
            f.validator.validate(&token, exp + 29).is_ok(),
            "inside the 30 s leeway"
        );
        assert_eq!(
            f.validator.validate(&token, exp + 30),
            Err(ValidationError::Expired)
        );
        assert_eq!(
            f.validator.validate(&token, exp + 100_000),
            Err(ValidationError::Expired)
        );
    }

    #[test]
    fn a_token_from_the_future_is_not_yet_valid() {
        let f = fixture();
        let token = issue(&f, NOW);
        assert!(
            f.validator.validate(&token, NOW - 30).is_ok(),
            "inside the leeway"
        );
        assert_eq!(
            f.validator.validate(&token, NOW - 31),
            Err(ValidationError::NotYetValid)
        );
        let mut claims = good_claims(&f);
        claims["nbf"] = json!(NOW + 600);
        let token = forge_es256(
            &f,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": f.key.kid}),
            &claims,
        );
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::NotYetValid)
        );
        assert!(f.validator.validate(&token, NOW + 600).is_ok());
    }

    #[test]
    fn alg_none_is_rejected() {
        let f = fixture();
        let header = json!({"alg": "none", "typ": "at+jwt", "kid": f.key.kid});
        let token = format!("{}.{}.", b64_json(&header), b64_json(&good_claims(&f)));
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::UnsupportedAlgorithm("none".into()))
        );
    }

    #[test]
    fn hs256_keyed_with_our_public_key_is_rejected_before_any_key_use() {
        let f = fixture();
        // The classic key-confusion attack: HMAC keyed with bytes of the public key that an
        // attacker can read from the JWKS (coordinates, uncompressed point, or the JSON itself).
        let x = URL_SAFE_NO_PAD.decode(&f.key.public_x).unwrap();
        let y = URL_SAFE_NO_PAD.decode(&f.key.public_y).unwrap();
        let point = [&[4u8][..], &x, &y].concat();
        let jwks = serde_json::to_vec(&f.ring.jwks()).unwrap();
        for secret in [
            point,
            [x, y].concat(),
            jwks,
            f.key.public_x.clone().into_bytes(),
        ] {
            let mut header = Header::new(Algorithm::HS256);
            header.typ = Some("at+jwt".into());
            header.kid = Some(f.key.kid.clone());
            let token = jsonwebtoken::encode(
                &header,
                &good_claims(&f),
                &EncodingKey::from_secret(&secret),
            )
            .unwrap();
            assert_eq!(
                f.validator.validate(&token, NOW),
                Err(ValidationError::UnsupportedAlgorithm("HS256".into()))
            );
        }
    }

    #[test]
    fn other_algorithms_are_rejected_and_their_name_is_sanitised() {
        let f = fixture();
        for (alg, shown) in [
            ("RS256", "RS256"),
            ("ES384", "ES384"),
            ("PS256", "PS256"),
            ("es256", "es256"),
            ("", "(empty)"),
        ] {
            let header = json!({"alg": alg, "typ": "at+jwt", "kid": f.key.kid});
            let token = format!("{}.{}.c2ln", b64_json(&header), b64_json(&good_claims(&f)));
            assert_eq!(
                f.validator.validate(&token, NOW),
                Err(ValidationError::UnsupportedAlgorithm(shown.into()))
            );
        }
        let header = json!({"alg": "x\"\r\nInjected: 1", "typ": "at+jwt"});
        let token = format!("{}.{}.c2ln", b64_json(&header), b64_json(&good_claims(&f)));
        let err = f.validator.validate(&token, NOW).unwrap_err();
        assert_eq!(
            err,
            ValidationError::UnsupportedAlgorithm("xInjected1".into())
        );
        assert!(!err.to_string().contains(['"', '\r', '\n']));
    }

    #[test]
    fn a_different_key_with_our_kid_fails_the_signature() {
        let f = fixture();
        let impostor = SigningKey {
            kid: f.key.kid.clone(),
            ..generate_signing_key(1).unwrap()
        };
        let evil_ring = KeyRing::from_keys(&[impostor]).unwrap();
        let token = sign_access_token(&evil_ring, &f.cfg, "jdoe", "softphone", "sip:register", NOW)
            .unwrap();
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::BadSignature)
        );
    }

    #[test]
    fn a_key_we_do_not_publish_is_unknown() {
        let f = fixture();
        let stranger = KeyRing::from_keys(&[generate_signing_key(1).unwrap()]).unwrap();
        let token =
            sign_access_token(&stranger, &f.cfg, "jdoe", "softphone", "sip:register", NOW).unwrap();
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::UnknownKey)
        );
        let no_kid = forge_es256(
            &f,
            json!({"alg": "ES256", "typ": "at+jwt"}),
            &good_claims(&f),
        );
        assert_eq!(
            f.validator.validate(&no_kid, NOW),
            Err(ValidationError::UnknownKey)
        );
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let f = fixture();
        let token = issue(&f, NOW);
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("admin");
        let forged = format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2]);
        assert_eq!(
            f.validator.validate(&forged, NOW),
            Err(ValidationError::BadSignature)
        );
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..40]);
        assert_eq!(
            f.validator.validate(&truncated, NOW),
            Err(ValidationError::BadSignature)
        );
    }

    #[test]
    fn wrong_audience_and_issuer_are_rejected() {
        let f = fixture();
        let other_aud = TokenConfig {
            audience: "someone-else".into(),
            ..f.cfg.clone()
        };
        let token = sign_access_token(
            &f.ring,
            &other_aud,
            "jdoe",
            "softphone",
            "sip:register",
            NOW,
        )
        .unwrap();
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::WrongAudience)
        );
        let other_iss = TokenConfig {
            issuer: "https://evil.example".into(),
            ..f.cfg.clone()
        };
        let token = sign_access_token(
            &f.ring,
            &other_iss,
            "jdoe",
            "softphone",
            "sip:register",
            NOW,
        )
        .unwrap();
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::WrongIssuer)
        );

        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": f.key.kid});
        let mut claims = good_claims(&f);
        claims["aud"] = json!(["other", f.cfg.audience]);
        assert!(
            f.validator
                .validate(&forge_es256(&f, header.clone(), &claims), NOW)
                .is_ok(),
            "aud array"
        );
        claims["aud"] = json!(["other"]);
        assert_eq!(
            f.validator.validate(&forge_es256(&f, header, &claims), NOW),
            Err(ValidationError::WrongAudience)
        );
    }

    #[test]
    fn only_at_jwt_typ_is_accepted() {
        let f = fixture();
        let claims = good_claims(&f);
        for typ in ["at+jwt", "application/at+jwt", "AT+JWT"] {
            let token = forge_es256(
                &f,
                json!({"alg": "ES256", "typ": typ, "kid": f.key.kid}),
                &claims,
            );
            assert!(f.validator.validate(&token, NOW).is_ok(), "{typ}");
        }
        for header in [
            json!({"alg": "ES256", "typ": "JWT", "kid": f.key.kid}),
            json!({"alg": "ES256", "typ": "application/jwt", "kid": f.key.kid}),
            json!({"alg": "ES256", "kid": f.key.kid}),
        ] {
            assert_eq!(
                f.validator.validate(&forge_es256(&f, header, &claims), NOW),
                Err(ValidationError::WrongType)
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let f = fixture();
        let token = issue(&f, NOW);
        let huge = "a".repeat(MAX_TOKEN_LEN + 1);
        for bad in [
            "",
            "garbage",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "..",
            "%%%.%%%.%%%",
            &huge,
            &format!("{token}.x"),
        ] {
            assert_eq!(
                f.validator.validate(bad, NOW),
                Err(ValidationError::Malformed),
                "{bad:.40}"
            );
        }
        let not_json = format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode("not json"));
        assert_eq!(
            f.validator.validate(&not_json, NOW),
            Err(ValidationError::Malformed)
        );
        let crit = forge_es256(
            &f,
            json!({"alg": "ES256", "typ": "at+jwt", "kid": f.key.kid, "crit": ["exp"]}),
            &good_claims(&f),
        );
        assert_eq!(
            f.validator.validate(&crit, NOW),
            Err(ValidationError::Malformed)
        );
    }

    #[test]
    fn each_required_claim_is_named_when_missing() {
        let f = fixture();
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": f.key.kid});
        for claim in ["iss", "aud", "exp", "iat", "sub", "client_id", "jti"] {
            let mut claims = good_claims(&f);
            claims.as_object_mut().unwrap().remove(claim);
            let token = forge_es256(&f, header.clone(), &claims);
            assert_eq!(
                f.validator.validate(&token, NOW),
                Err(ValidationError::MissingClaim(claim))
            );
        }
        let mut claims = good_claims(&f);
        claims["sub"] = json!("");
        assert_eq!(
            f.validator.validate(&forge_es256(&f, header, &claims), NOW),
            Err(ValidationError::MissingClaim("sub"))
        );
    }

    #[test]
    fn messages_are_lowercase() {
        for e in [
            ValidationError::Malformed,
            ValidationError::UnsupportedAlgorithm("none".into()),
            ValidationError::WrongType,
            ValidationError::UnknownKey,
            ValidationError::BadSignature,
            ValidationError::Expired,
            ValidationError::NotYetValid,
            ValidationError::WrongIssuer,
            ValidationError::WrongAudience,
            ValidationError::MissingClaim("jti"),
        ] {
            let s = e.to_string();
            assert_eq!(s, s.to_lowercase());
        }
    }

    #[tokio::test]
    async fn tokens_of_a_rotated_out_key_still_validate_after_reload() {
        let (_dir, store) = crate::test_support::temp_store();
        let ring = KeyRing::load_or_create(store.as_ref(), 1).await.unwrap();
        let cfg = TokenConfig::default();
        let validator = AccessTokenValidator::new(ring.clone(), &cfg);
        let old = sign_access_token(&ring, &cfg, "jdoe", "softphone", "sip:register", NOW).unwrap();
        store
            .insert_signing_key(&generate_signing_key(2).unwrap())
            .await
            .unwrap();
        ring.reload(store.as_ref()).await.unwrap();
        let new = sign_access_token(&ring, &cfg, "jdoe", "softphone", "sip:register", NOW).unwrap();
        assert!(validator.validate(&old, NOW).is_ok());
        assert!(validator.validate(&new, NOW).is_ok());
        assert_ne!(
            old.split('.').next(),
            new.split('.').next(),
            "a different kid signs now"
        );
    }
}
