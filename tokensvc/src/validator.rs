//! Access-token validation for resource servers (the registrar): RFC 9068 §4 with the RFC 8725
//! checks, in an order that touches no key before the algorithm is known to be ES256, then the
//! revocation checks (per-user not-before time, revoked `jti`) that make an admin's revocation
//! bite on the next request.
//!
//! Verified tokens are cached by their SHA-256 until `exp`, so a re-REGISTER with the same token
//! costs a hash instead of a signature check. Revocation is checked on every call, cached or not,
//! and a cached token whose key was removed from the ring is verified afresh (and then fails).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use aws_lc_rs::signature::ParsedPublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sipreg_store::{Directory, TrustedIssuer};

use crate::external::ExternalKeys;
use crate::issue::ACCESS_TOKEN_TYP;
use crate::json::{
    duplicate, parse_object, parse_with, StrictJsonError, StrictValue, StrictVisitor,
};
use crate::keys::ALG_ES256;
use crate::{KeyRing, TokenConfig};

/// A token's trusted external issuer, its parsed claim set, and the PEM trust anchors for
/// fetching the issuer's JWKS over https.
type ExternalMatch = (Arc<TrustedIssuer>, Map<String, Value>, Vec<String>);

/// Longest token we look at; real ones are well under 1 KiB, so anything bigger is not ours.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most verified tokens kept in the cache; beyond it new tokens are simply verified each time.
const MAX_CACHE_ENTRIES: usize = 100_000;
/// Most revoked token ids remembered (each only until its token's `exp`).
const MAX_REVOKED_JTIS: usize = 100_000;
/// Header members that point at keys elsewhere; we never follow them, so a token carrying one
/// was not made for us (RFC 8725 §3.10: do not trust received key references).
const KEY_REFERENCE_MEMBERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

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

/// Why a token was refused; each case has its own variant so a test (and a log line) can tell
/// them apart. The messages are lowercase, fixed and safe to send to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not a JWS compact serialization we can parse.
    #[error("malformed token")]
    Malformed,
    /// Longer than 8 KiB; refused before any decoding or crypto.
    #[error("token too large")]
    TooLarge,
    /// An opaque refresh token was presented where an access token belongs.
    #[error("a refresh token is not an access token")]
    RefreshToken,
    /// The header or claim set names one member twice.
    #[error("duplicate json member")]
    DuplicateMember,
    /// `alg` is not ES256 (e.g. `none`, HS256, RS256); holds a sanitised copy of the value.
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    /// The header has `crit`: we implement no JWS extension (RFC 7515 §4.1.11).
    #[error("unsupported critical header")]
    UnsupportedCritical,
    /// The header points at a key elsewhere (`jku`, `x5u`, `jwk`, `x5c`).
    #[error("key reference {0} in header")]
    KeyReference(&'static str),
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
    /// `nbf` lies in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` lies in the future: a token from a clock we cannot trust.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` is not our issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain our audience.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is absent, empty or of the wrong JSON type.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// The token, or every token of its user issued before a time, was revoked.
    #[error("token revoked")]
    Revoked,
    /// The token's user no longer exists.
    #[error("unknown user")]
    UnknownUser,
    /// The token's external issuer's keys could not be loaded (and none were ever).
    #[error("token issuer keys unavailable")]
    IssuerUnavailable,
    /// An external issuer's token lacks the claim configured to name the user.
    #[error("token names no user")]
    MissingUser,
}

/// Validates access tokens against the [`KeyRing`] with a caller-supplied clock. Clones share the
/// cache, the revoked-`jti` list and the directory.
#[derive(Clone)]
pub struct AccessTokenValidator {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Arc<KeyRing>,
    issuer: String,
    audience: String,
    leeway: i64,
    directory: OnceLock<Directory>,
    cache: DashMap<[u8; 32], Arc<Verified>>,
    /// Cache keys in insertion order, for O(1) eviction of the oldest when the cache is full.
    /// Never longer than [`MAX_CACHE_ENTRIES`]; every cache insert pushes here, so the cache
    /// never outgrows it (a key removed meanwhile just leaves a stale entry to pop).
    order: Mutex<VecDeque<[u8; 32]>>,
    revoked_jtis: DashMap<String, i64>,
    external: ExternalKeys,
}

/// A token whose signature and claims checked out once; what the cache keeps.
#[derive(Debug)]
struct Verified {
    claims: AccessClaims,
    not_before: i64,
    kid: String,
    /// The external issuer, as configured when the token verified; `None` for our own tokens.
    external: Option<Arc<TrustedIssuer>>,
}

impl fmt::Debug for AccessTokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenValidator")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("cached", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

impl AccessTokenValidator {
    /// A validator for tokens of `cfg.issuer` meant for `cfg.audience`.
    pub fn new(keys: Arc<KeyRing>, cfg: &TokenConfig) -> Self {
        crate::ensure_crypto_provider();
        Self {
            inner: Arc::new(Inner {
                keys,
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
                leeway: i64::try_from(cfg.leeway_secs).unwrap_or(i64::MAX),
                directory: OnceLock::new(),
                cache: DashMap::new(),
                order: Mutex::new(VecDeque::new()),
                revoked_jtis: DashMap::new(),
                external: ExternalKeys::new(std::time::Duration::from_secs(
                    cfg.jwks_refetch_secs.max(1),
                )),
            }),
        }
    }

    /// Gives every clone of this validator the live directory, which turns on the user checks:
    /// the user must exist, and tokens issued before the user's not-before time are revoked.
    /// Only the first call takes effect.
    pub fn attach_directory(&self, directory: Directory) {
        let _ = self.inner.directory.set(directory);
    }

    /// Forgets every cached verification (the next use of each token verifies its signature).
    pub fn clear_cache(&self) {
        if let Ok(mut order) = self.inner.order.lock() {
            order.clear();
        }
        self.inner.cache.clear();
    }

    /// How many JWKS fetches or reads of external issuers failed since start.
    pub fn jwks_failures(&self) -> u64 {
        self.inner.external.failures()
    }

    /// How many verified tokens are cached.
    pub fn cached(&self) -> usize {
        self.inner.cache.len()
    }

    /// Refuses the token with this `jti` from now on (it is remembered until `exp`).
    pub fn revoke_jti(&self, jti: &str, exp: i64, now: i64) {
        let revoked = &self.inner.revoked_jtis;
        if revoked.len() >= MAX_REVOKED_JTIS {
            revoked.retain(|_, e| *e > now);
        }
        // Bounded memory: past the cap, the oldest-expiring entry makes room.
        if revoked.len() >= MAX_REVOKED_JTIS {
            let soonest = revoked
                .iter()
                .min_by_key(|e| *e.value())
                .map(|e| e.key().clone());
            if let Some(k) = soonest {
                revoked.remove(&k);
            }
        }
        revoked.insert(jti.to_owned(), exp);
    }

    /// Validates `token` at time `now` (Unix seconds); reads no clock.
    pub fn validate(&self, token: &str, now: i64) -> Result<AccessClaims, ValidationError> {
        // RFC 8725 §3.4 spirit: bound the work an attacker can make us do before anything else.
        if token.len() > MAX_TOKEN_LEN {
            return Err(ValidationError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.inner.cache.get(&digest).map(|e| e.value().clone());
        let verified = match cached {
            // The key may have been removed since (rotation with --revoke-previous), or the
            // external issuer changed or was removed.
            Some(v) if self.still_trusted(&v) => v,
            Some(_) => {
                self.inner.cache.remove(&digest);
                Arc::new(self.verify(token)?)
            }
            None => Arc::new(self.verify(token)?),
        };
        self.check_time(&verified, now)?;
        self.check_revocation(&verified.claims)?;
        self.remember(digest, verified.clone(), now);
        Ok(verified.claims.clone())
    }

    /// Whether a cached verification still stands: its key is still published (ours), or its
    /// issuer is still trusted with the same settings and still lists the key (external).
    fn still_trusted(&self, v: &Verified) -> bool {
        match &v.external {
            None => self.inner.keys.current().verifying(&v.kid).is_some(),
            Some(was) => self.inner.directory.get().is_some_and(|dir| {
                let snap = dir.snapshot();
                snap.trusted_issuer(&was.issuer)
                    .is_some_and(|now| now == was && self.inner.external.holds(now, &v.kid))
            }),
        }
    }

    /// Caches a verification. When full, the oldest entry goes: O(1), and since tokens of one
    /// deployment share a lifetime the oldest is also the first to expire.
    fn remember(&self, digest: [u8; 32], verified: Arc<Verified>, _now: i64) {
        let cache = &self.inner.cache;
        if cache.contains_key(&digest) {
            return;
        }
        let Ok(mut order) = self.inner.order.lock() else {
            return;
        };
        while order.len() >= MAX_CACHE_ENTRIES {
            match order.pop_front() {
                Some(old) => {
                    cache.remove(&old);
                }
                None => break,
            }
        }
        order.push_back(digest);
        cache.insert(digest, verified);
    }

    /// RFC 7519 §4.1.4/§4.1.5 against the caller's clock, with the configured leeway.
    fn check_time(&self, v: &Verified, now: i64) -> Result<(), ValidationError> {
        let leeway = self.inner.leeway;
        if now >= v.claims.exp.saturating_add(leeway) {
            return Err(ValidationError::Expired);
        }
        if v.not_before > now.saturating_add(leeway) {
            return Err(ValidationError::NotYetValid);
        }
        if v.claims.iat > now.saturating_add(leeway) {
            return Err(ValidationError::IssuedInFuture);
        }
        Ok(())
    }

    /// Revocation, on every call: the token's own `jti`, then the user's not-before time.
    fn check_revocation(&self, c: &AccessClaims) -> Result<(), ValidationError> {
        if !c.jti.is_empty() && self.inner.revoked_jtis.contains_key(&c.jti) {
            return Err(ValidationError::Revoked);
        }
        if let Some(dir) = self.inner.directory.get() {
            let snap = dir.snapshot();
            if !snap.user_exists(&c.sub) {
                return Err(ValidationError::UnknownUser);
            }
            // No leeway: a revocation at second T kills every token issued before T.
            if c.iat < snap.tokens_not_before(&c.sub) {
                return Err(ValidationError::Revoked);
            }
            // The same, per client: `revoke-tokens?client_id=` ends only that client's tokens.
            if !c.client_id.is_empty()
                && c.iat < snap.client_tokens_not_before(&c.sub, &c.client_id)
            {
                return Err(ValidationError::Revoked);
            }
        }
        Ok(())
    }

    /// Structure, header, signature and claims; everything that does not depend on the clock.
    fn verify(&self, token: &str) -> Result<Verified, ValidationError> {
        use ValidationError as E;
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            if looks_like_refresh_token(token) {
                return Err(E::RefreshToken);
            }
            return Err(E::Malformed);
        };

        // A trusted external issuer's token is judged by that issuer's rules and keys. Only with
        // issuers configured is the (still unauthenticated) claim set looked at this early, and
        // only for its `iss`, which picks the rules; nothing in it is believed before the
        // signature checks out.
        if let Some((issuer, claims, anchors)) = self.external_issuer(claims_b64) {
            let header = decode_part(header_b64)?;
            let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
            return self.verify_external(&issuer, &header, claims, signed, signature_b64, &anchors);
        }
        let keys = self.inner.keys.current();
        // Our own tokens carry, byte for byte, the header we write for their key (alg ES256,
        // typ at+jwt, kid, nothing else), which passes every check below: recognising it saves
        // decoding and parsing a header per token never seen before.
        let kid = match keys.kid_of_own_header(header_b64) {
            Some(kid) => kid.to_owned(),
            None => self.checked_header_kid(header_b64)?,
        };
        let key = keys.verifying(&kid).ok_or(E::UnknownKey)?;
        let signed = &token[..header_b64.len() + 1 + claims_b64.len()];
        if !es256_signature_ok(key, signed.as_bytes(), signature_b64) {
            return Err(E::BadSignature);
        }

        // Claims are parsed only once the signature proved they are ours, straight into the
        // few the checks read (no map of every member; names stay strict).
        let bytes = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| E::Malformed)?;
        let claims = parse_with(&bytes, OwnClaimsSeed).map_err(strict_error)?;
        match &claims.iss {
            Claim::Absent => return Err(E::MissingClaim("iss")),
            Claim::Str(iss) if *iss == self.inner.issuer => {}
            _ => return Err(E::WrongIssuer),
        }
        let aud_ok = match &claims.aud {
            Claim::Absent => return Err(E::MissingClaim("aud")),
            Claim::Str(a) => *a == self.inner.audience,
            Claim::Strs(all) => all.iter().any(|a| *a == self.inner.audience),
            _ => false,
        };
        if !aud_ok {
            return Err(E::WrongAudience);
        }
        let exp = claims.exp.numeric("exp")?.ok_or(E::MissingClaim("exp"))?;
        let iat = claims.iat.numeric("iat")?.ok_or(E::MissingClaim("iat"))?;
        let nbf = claims.nbf.numeric("nbf")?.unwrap_or(i64::MIN);
        Ok(Verified {
            claims: AccessClaims {
                sub: claims.sub.required("sub")?,
                client_id: claims.client_id.required("client_id")?,
                jti: claims.jti.required("jti")?,
                scope: match claims.scope {
                    Claim::Str(s) => s.into_owned(),
                    _ => String::new(),
                },
                iat,
                exp,
            },
            not_before: nbf,
            kid,
            external: None,
        })
    }

    /// The full header checks of a token whose header is not one we write: the `kid` it names,
    /// once `alg`, `crit`, key references and `typ` are acceptable.
    fn checked_header_kid(&self, header_b64: &str) -> Result<String, ValidationError> {
        use ValidationError as E;
        // RFC 8725 §3.1: the algorithm is checked against the allowlist on the raw header, before
        // any key is chosen, so `none` and HS256-keyed-with-our-public-key never reach crypto.
        let header = decode_part(header_b64)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        if alg != ALG_ES256 {
            return Err(E::UnsupportedAlgorithm(sanitise(alg)));
        }
        // RFC 7515 §4.1.11: we understand no extensions, so any `crit` makes the token invalid.
        if header.contains_key("crit") {
            return Err(E::UnsupportedCritical);
        }
        if let Some(member) = KEY_REFERENCE_MEMBERS
            .iter()
            .find(|m| header.contains_key(**m))
        {
            return Err(E::KeyReference(member));
        }
        // RFC 9068 §4 / RFC 8725 §3.11: explicit typing; media types compare case-insensitively.
        let typ_ok = header.get("typ").and_then(Value::as_str).is_some_and(|t| {
            t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(E::WrongType);
        }
        // Only keys we publish; `kid` selects among them and never names a key we fetch.
        header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(E::UnknownKey)
    }

    /// The trusted external issuer a token's `iss` names (never our own issuer), with the parsed
    /// claim set and the trust anchors for fetching its keys.
    fn external_issuer(&self, claims_b64: &str) -> Option<ExternalMatch> {
        let snap = self.inner.directory.get()?.snapshot();
        if !snap.has_trusted_issuers() {
            return None;
        }
        let claims = decode_part(claims_b64).ok()?;
        let iss = claims.get("iss")?.as_str()?;
        if iss == self.inner.issuer {
            return None;
        }
        let issuer = snap.trusted_issuer(iss)?.clone();
        Some((issuer, claims, snap.trust_anchors.clone()))
    }

    /// RFC 9068 / RFC 8725 for an external issuer's token: its algorithm allowlist, its keys,
    /// its audience, and the user in its configured claim.
    fn verify_external(
        &self,
        issuer: &Arc<TrustedIssuer>,
        header: &Map<String, Value>,
        claims: Map<String, Value>,
        signed: &str,
        signature_b64: &str,
        anchors: &[String],
    ) -> Result<Verified, ValidationError> {
        use ValidationError as E;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let algorithm = crate::external::algorithm(alg)
            .filter(|_| issuer.algorithms.iter().any(|a| a == alg))
            .ok_or_else(|| E::UnsupportedAlgorithm(sanitise(alg)))?;
        if header.contains_key("crit") {
            return Err(E::UnsupportedCritical);
        }
        if let Some(member) = KEY_REFERENCE_MEMBERS
            .iter()
            .find(|m| header.contains_key(**m))
        {
            return Err(E::KeyReference(member));
        }
        // IdPs type their access tokens `at+jwt` (RFC 9068) or plain `JWT`; anything else (an ID
        // token's `id+jwt`, a logout token) is not an access token.
        match header.get("typ") {
            None => {}
            Some(Value::String(t))
                if ["at+jwt", "application/at+jwt", "jwt", "application/jwt"]
                    .iter()
                    .any(|ok| t.eq_ignore_ascii_case(ok)) => {}
            Some(_) => return Err(E::WrongType),
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or(E::UnknownKey)?;
        let key = self.inner.external.key_for(issuer, kid, anchors)?;
        if !key.fits(alg) {
            return Err(E::UnknownKey);
        }
        match jsonwebtoken::crypto::verify(signature_b64, signed.as_bytes(), &key.key, algorithm) {
            Ok(true) => {}
            _ => return Err(E::BadSignature),
        }
        let aud_ok = match claims.get("aud") {
            None => return Err(E::MissingClaim("aud")),
            Some(Value::String(a)) => *a == issuer.audience,
            Some(Value::Array(all)) => all
                .iter()
                .any(|a| a.as_str() == Some(issuer.audience.as_str())),
            Some(_) => false,
        };
        if !aud_ok {
            return Err(E::WrongAudience);
        }
        let exp = numeric(&claims, "exp")?.ok_or(E::MissingClaim("exp"))?;
        let iat = numeric(&claims, "iat")?.ok_or(E::MissingClaim("iat"))?;
        let nbf = numeric(&claims, "nbf")?.unwrap_or(i64::MIN);
        let sub = claims
            .get(&issuer.user_claim)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or(E::MissingUser)?
            .to_owned();
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        // Entra ID names the client `azp` (v2) or `appid` (v1); RFC 9068 says `client_id`.
        let client_id = text("client_id")
            .or_else(|| text("azp"))
            .or_else(|| text("appid"))
            .unwrap_or_default();
        // `scope` (RFC 9068) or `scp` (Entra ID, Okta: a string or an array). A token without
        // either was still minted for our audience, which is the registrar itself: it may register.
        let scope = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.clone(),
            (None, Some(Value::Array(all))) => all
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            (None, None) => crate::REGISTER_SCOPE.to_owned(),
            _ => String::new(),
        };
        Ok(Verified {
            claims: AccessClaims {
                sub,
                client_id,
                scope,
                iat,
                exp,
                jti: text("jti").unwrap_or_default(),
            },
            not_before: nbf,
            kid: kid.to_owned(),
            external: Some(issuer.clone()),
        })
    }
}

/// RFC 7515 §5.2 / RFC 7518 §3.4 for our own tokens: the signature is base64url of `r || s`,
/// 32 bytes each, over `header.claims`. aws-lc-rs directly, with the key parsed once per key
/// generation; jsonwebtoken's `crypto::verify` would box a verifier, copy the key and re-parse
/// the point on every call. Any undecodable or wrong-length signature simply does not verify.
fn es256_signature_ok(key: &ParsedPublicKey, signed: &[u8], signature_b64: &str) -> bool {
    // 86 characters decode to 64 bytes; base64's size check estimates whole 3-byte groups
    // (66 here), so the buffer has room for that and the length is checked afterwards.
    let mut sig = [0u8; 66];
    matches!(
        URL_SAFE_NO_PAD.decode_slice(signature_b64, &mut sig),
        Ok(64)
    ) && key.verify_sig(signed, &sig[..64]).is_ok()
}

/// Our refresh tokens are 32 random bytes in base64url: one 43-character segment, no dots.
fn looks_like_refresh_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_part(part: &str) -> Result<Map<String, Value>, ValidationError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ValidationError::Malformed)?;
    parse_object(&bytes).map_err(strict_error)
}

fn strict_error(e: StrictJsonError) -> ValidationError {
    match e {
        StrictJsonError::Duplicate => ValidationError::DuplicateMember,
        StrictJsonError::Invalid => ValidationError::Malformed,
    }
}

/// The members of our own claim set that the checks read, borrowed from the decoded JSON where
/// it has no escapes. Every other member is still parsed strictly (duplicates at any depth) and
/// dropped; a name twice, known or not, is a duplicate.
#[derive(Default)]
struct OwnClaims<'a> {
    iss: Claim<'a>,
    aud: Claim<'a>,
    sub: Claim<'a>,
    client_id: Claim<'a>,
    jti: Claim<'a>,
    scope: Claim<'a>,
    exp: Claim<'a>,
    iat: Claim<'a>,
    nbf: Claim<'a>,
}

/// One claim's value, as much of it as a check can use.
#[derive(Default)]
enum Claim<'a> {
    /// Not in the claim set.
    #[default]
    Absent,
    /// A string.
    Str(Cow<'a, str>),
    /// A number as a NumericDate; `None` if it does not fit one (what `numeric` refused).
    Num(Option<i64>),
    /// An array: its string elements (an `aud` array; other elements never match).
    Strs(Vec<Cow<'a, str>>),
    /// Anything else: `null`, a boolean, an object.
    Other,
}

impl Claim<'_> {
    /// A NumericDate claim (RFC 7519 §2): absent is `None`, any non-number is a missing claim.
    fn numeric(&self, name: &'static str) -> Result<Option<i64>, ValidationError> {
        match self {
            Claim::Absent => Ok(None),
            Claim::Num(Some(n)) => Ok(Some(*n)),
            _ => Err(ValidationError::MissingClaim(name)),
        }
    }

    /// A non-empty string claim.
    fn required(self, name: &'static str) -> Result<String, ValidationError> {
        match self {
            Claim::Str(s) if !s.is_empty() => Ok(s.into_owned()),
            _ => Err(ValidationError::MissingClaim(name)),
        }
    }
}

struct OwnClaimsSeed;

impl<'de> DeserializeSeed<'de> for OwnClaimsSeed {
    type Value = OwnClaims<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OwnClaims<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OwnClaimsSeed {
    type Value = OwnClaims<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OwnClaims<'de>, A::Error> {
        let mut c = OwnClaims::default();
        // Names of members we do not keep, to refuse them twice too. A linear search: only a
        // claim set whose signature verified with our key gets here.
        let mut others: Vec<Cow<'de, str>> = Vec::new();
        while let Some(name) = map.next_key_seed(TextSeed)? {
            let slot = match &*name {
                "iss" => &mut c.iss,
                "aud" => &mut c.aud,
                "sub" => &mut c.sub,
                "client_id" => &mut c.client_id,
                "jti" => &mut c.jti,
                "scope" => &mut c.scope,
                "exp" => &mut c.exp,
                "iat" => &mut c.iat,
                "nbf" => &mut c.nbf,
                _ => {
                    if others.contains(&name) {
                        return Err(duplicate());
                    }
                    others.push(name);
                    map.next_value_seed(StrictValue)?;
                    continue;
                }
            };
            // A parsed value is never `Absent`, so a filled slot means the name came before.
            if !matches!(slot, Claim::Absent) {
                return Err(duplicate());
            }
            *slot = map.next_value_seed(ClaimSeed)?;
        }
        Ok(c)
    }
}

/// A string, borrowed from the input when it has no escapes.
struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for TextSeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// One claim value as a [`Claim`], objects inside it parsed strictly.
struct ClaimSeed;

impl<'de> DeserializeSeed<'de> for ClaimSeed {
    type Value = Claim<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Claim<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ClaimSeed {
    type Value = Claim<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Claim<'de>, E> {
        Ok(Claim::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Claim<'de>, E> {
        Ok(Claim::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Claim<'de>, E> {
        Ok(Claim::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Claim<'de>, E> {
        Ok(Claim::Num(Some(v)))
    }
    // Beyond i64 a NumericDate saturates, as a float would.
    fn visit_u64<E>(self, v: u64) -> Result<Claim<'de>, E> {
        Ok(Claim::Num(Some(i64::try_from(v).unwrap_or(i64::MAX))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Claim<'de>, E> {
        Ok(Claim::Num(v.is_finite().then_some(v as i64)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Claim<'de>, E> {
        Ok(Claim::Other)
    }
    fn visit_unit<E>(self) -> Result<Claim<'de>, E> {
        Ok(Claim::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Claim<'de>, A::Error> {
        let mut strings = Vec::new();
        while let Some(element) = seq.next_element_seed(ClaimSeed)? {
            if let Claim::Str(s) = element {
                strings.push(s);
            }
        }
        Ok(Claim::Strs(strings))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Claim<'de>, A::Error> {
        StrictVisitor.visit_map(map).map(|_| Claim::Other)
    }
}

/// A NumericDate claim (RFC 7519 §2): absent is `None`, any non-number is a missing claim.
fn numeric(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, ValidationError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(ValidationError::MissingClaim(name)),
        Some(_) => Err(ValidationError::MissingClaim(name)),
    }
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
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
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
        assert_eq!(
            f.validator.validate(&huge, NOW),
            Err(ValidationError::TooLarge)
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
            ValidationError::TooLarge,
            ValidationError::RefreshToken,
            ValidationError::DuplicateMember,
            ValidationError::UnsupportedCritical,
            ValidationError::KeyReference("jku"),
            ValidationError::IssuedInFuture,
            ValidationError::Revoked,
            ValidationError::UnknownUser,
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

    fn header(f: &Fixture) -> Value {
        json!({"alg": "ES256", "typ": "at+jwt", "kid": f.key.kid})
    }

    #[test]
    fn a_kid_that_points_elsewhere_selects_nothing() {
        let f = fixture();
        for kid in [
            "https://evil.example/jwks.json",
            "../../../etc/passwd",
            "file:///dev/zero",
            "",
        ] {
            let mut h = header(&f);
            h["kid"] = json!(kid);
            assert_eq!(
                f.validator
                    .validate(&forge_es256(&f, h, &good_claims(&f)), NOW),
                Err(ValidationError::UnknownKey),
                "{kid}"
            );
        }
    }

    #[test]
    fn key_references_in_the_header_are_refused_even_with_a_good_signature() {
        let f = fixture();
        for (member, value) in [
            ("jku", json!("https://evil.example/jwks.json")),
            ("x5u", json!("https://evil.example/cert.pem")),
            ("jwk", json!({"kty": "EC"})),
            ("x5c", json!(["MIIB"])),
        ] {
            let mut h = header(&f);
            h[member] = value;
            let err = f
                .validator
                .validate(&forge_es256(&f, h, &good_claims(&f)), NOW)
                .unwrap_err();
            assert_eq!(err, ValidationError::KeyReference(member));
        }
    }

    #[test]
    fn an_unknown_crit_header_is_refused_for_that_reason() {
        let f = fixture();
        let mut h = header(&f);
        h["crit"] = json!(["exp"]);
        h["exp"] = json!(1);
        assert_eq!(
            f.validator
                .validate(&forge_es256(&f, h, &good_claims(&f)), NOW),
            Err(ValidationError::UnsupportedCritical)
        );
    }

    #[test]
    fn duplicate_members_in_header_or_claims_are_refused() {
        let f = fixture();
        let key = EncodingKey::from_ec_pem(f.key.private_pem.as_bytes()).unwrap();
        let sign = |header_json: &str, claims_json: &str| {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header_json),
                URL_SAFE_NO_PAD.encode(claims_json)
            );
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256).unwrap();
            format!("{input}.{sig}")
        };
        let good_header = serde_json::to_string(&header(&f)).unwrap();
        let claims = good_claims(&f).to_string();
        assert!(f
            .validator
            .validate(&sign(&good_header, &claims), NOW)
            .is_ok());
        let dup_header = format!(
            r#"{{"alg":"ES256","typ":"at+jwt","kid":"{}","alg":"ES256"}}"#,
            f.key.kid
        );
        assert_eq!(
            f.validator.validate(&sign(&dup_header, &claims), NOW),
            Err(ValidationError::DuplicateMember)
        );
        // Two `sub`s: a parser taking the first and one taking the last would disagree on who.
        let dup_claims = claims.replacen('{', r#"{"sub":"admin","#, 1);
        assert_eq!(
            f.validator.validate(&sign(&good_header, &dup_claims), NOW),
            Err(ValidationError::DuplicateMember)
        );
    }

    #[test]
    fn the_claim_set_is_read_strictly_without_a_map() {
        let f = fixture();
        let key = EncodingKey::from_ec_pem(f.key.private_pem.as_bytes()).unwrap();
        let header = serde_json::to_string(&header(&f)).unwrap();
        let sign = |claims_json: &str| {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(&header),
                URL_SAFE_NO_PAD.encode(claims_json)
            );
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256).unwrap();
            format!("{input}.{sig}")
        };
        let (iss, aud) = (&f.cfg.issuer, &f.cfg.audience);
        let with = |extra: &str| {
            format!(
                r#"{{"iss":"{iss}","aud":"{aud}","exp":{},"iat":{NOW},"jti":"j1","client_id":"c","scope":"sip:register",{extra}}}"#,
                NOW + 60
            )
        };
        // Escaped names are the same names; unknown members, nested or not, are still strict.
        for (extra, want) in [
            (r#""sub":"jdoe""#, Ok(())),
            (r#""sub":"jdoe""#, Ok(())),
            (
                r#""sub":"jdoe","x":{"a":[1,{"b":null}]},"y":[true]"#,
                Ok(()),
            ),
            (
                r#""sub":"jdoe","sub":"admin""#,
                Err(ValidationError::DuplicateMember),
            ),
            (
                r#""sub":"jdoe","x":1,"x":2"#,
                Err(ValidationError::DuplicateMember),
            ),
            (
                r#""sub":"jdoe","x":{"a":1,"a":1}"#,
                Err(ValidationError::DuplicateMember),
            ),
            (
                r#""sub":"jdoe","aud":[{"a":1,"a":2}]"#,
                Err(ValidationError::DuplicateMember),
            ),
            (r#""sub":"jdoe","x":"#, Err(ValidationError::Malformed)),
            (r#""sub":5"#, Err(ValidationError::MissingClaim("sub"))),
            (r#""sub":null"#, Err(ValidationError::MissingClaim("sub"))),
            (
                r#""sub":"jdoe","nbf":"soon""#,
                Err(ValidationError::MissingClaim("nbf")),
            ),
            (r#""sub":"jdoe","nbf":1.5e3"#, Ok(())),
            (
                r#""sub":"jdoe","nbf":99999999999999999999"#,
                Err(ValidationError::NotYetValid),
            ),
        ] {
            let got = f.validator.validate(&sign(&with(extra)), NOW).map(|_| ());
            assert_eq!(got, want, "{extra}");
        }
        let escaped = r#"{"iss":"https:\/\/x","sub":"j"}"#;
        assert_eq!(
            f.validator.validate(&sign(escaped), NOW),
            Err(ValidationError::WrongIssuer)
        );
        for (aud_json, ok) in [
            (format!(r#"[1,null,["{aud}"],"{aud}"]"#), true),
            (format!(r#"[1,null,["{aud}"]]"#), false),
            (format!(r#"{{"a":"{aud}"}}"#), false),
        ] {
            let claims = format!(
                r#"{{"iss":"{iss}","aud":{aud_json},"exp":{},"iat":{NOW},"jti":"j","client_id":"c","sub":"s"}}"#,
                NOW + 60
            );
            let got = f.validator.validate(&sign(&claims), NOW);
            assert_eq!(got.is_ok(), ok, "{aud_json}");
            if !ok {
                assert_eq!(got, Err(ValidationError::WrongAudience));
            }
        }
    }

    #[test]
    fn our_own_header_is_recognised_and_any_other_spelling_is_checked() {
        let f = fixture();
        let token = issue(&f, NOW);
        let own = token.split('.').next().unwrap();
        assert_eq!(
            f.ring.current().kid_of_own_header(own),
            Some(f.key.kid.as_str())
        );
        // The same members in another order: not ours byte for byte, checked in full, valid.
        let claims = good_claims(&f);
        let other = forge_es256(&f, header(&f), &claims);
        assert_ne!(other.split('.').next().unwrap(), own);
        assert!(f.validator.validate(&other, NOW).is_ok());
        // Our header with a member added is no longer ours, and `crit` still refuses it.
        let mut h = header(&f);
        h["crit"] = json!(["x"]);
        assert_eq!(
            f.validator.validate(&forge_es256(&f, h, &claims), NOW),
            Err(ValidationError::UnsupportedCritical)
        );
    }

    #[test]
    fn an_iat_far_in_the_future_is_refused_for_that_reason() {
        let f = fixture();
        let mut claims = good_claims(&f);
        claims["iat"] = json!(NOW + 86_400);
        claims["exp"] = json!(NOW + 90_000);
        assert_eq!(
            f.validator
                .validate(&forge_es256(&f, header(&f), &claims), NOW),
            Err(ValidationError::IssuedInFuture)
        );
    }

    #[test]
    fn a_refresh_token_presented_as_an_access_token_is_named() {
        let f = fixture();
        let refresh = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(
            f.validator.validate(&refresh, NOW),
            Err(ValidationError::RefreshToken)
        );
    }

    #[test]
    fn an_oversized_token_is_refused_even_when_well_signed() {
        let f = fixture();
        let mut claims = good_claims(&f);
        claims["pad"] = json!("x".repeat(MAX_TOKEN_LEN));
        let token = forge_es256(&f, header(&f), &claims);
        assert_eq!(
            f.validator.validate(&token, NOW),
            Err(ValidationError::TooLarge)
        );
    }

    #[test]
    fn non_numeric_dates_are_missing_claims() {
        let f = fixture();
        let mut claims = good_claims(&f);
        claims["exp"] = json!("tomorrow");
        assert_eq!(
            f.validator
                .validate(&forge_es256(&f, header(&f), &claims), NOW),
            Err(ValidationError::MissingClaim("exp"))
        );
    }

    #[test]
    fn a_verified_token_is_cached_and_a_revoked_jti_still_fails_from_the_cache() {
        let f = fixture();
        let token = issue(&f, NOW);
        assert_eq!(f.validator.cached(), 0);
        let claims = f.validator.validate(&token, NOW).unwrap();
        assert_eq!(f.validator.cached(), 1);
        let clone = f.validator.clone();
        assert_eq!(clone.validate(&token, NOW + 1).unwrap(), claims);
        assert_eq!(f.validator.cached(), 1, "clones share one cache");
        // The cache never extends a token's life.
        assert_eq!(
            f.validator.validate(&token, claims.exp + 30),
            Err(ValidationError::Expired)
        );
        f.validator.revoke_jti(&claims.jti, claims.exp, NOW);
        assert_eq!(
            f.validator.validate(&token, NOW + 2),
            Err(ValidationError::Revoked)
        );
        assert!(f.validator.validate(&issue(&f, NOW), NOW).is_ok());
    }

    #[test]
    fn a_failed_token_is_not_cached() {
        let f = fixture();
        let token = issue(&f, NOW);
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(f.validator.validate(&tampered, NOW).is_err());
        assert_eq!(f.validator.cached(), 0);
    }

    #[tokio::test]
    async fn removing_the_key_invalidates_cached_tokens() {
        let (_dir, store) = crate::test_support::temp_store();
        let ring = KeyRing::load_or_create(store.as_ref(), 1).await.unwrap();
        let cfg = TokenConfig::default();
        let validator = AccessTokenValidator::new(ring.clone(), &cfg);
        let old_kid = ring.active_kid();
        let old = sign_access_token(&ring, &cfg, "jdoe", "softphone", "sip:register", NOW).unwrap();
        assert!(validator.validate(&old, NOW).is_ok());
        assert_eq!(validator.cached(), 1);
        store
            .insert_signing_key(&generate_signing_key(2).unwrap())
            .await
            .unwrap();
        store.delete_signing_key(&old_kid).await.unwrap();
        ring.reload(store.as_ref()).await.unwrap();
        assert_eq!(
            validator.validate(&old, NOW),
            Err(ValidationError::UnknownKey)
        );
        assert_eq!(validator.cached(), 0);
    }

    #[tokio::test]
    async fn a_token_of_a_revoked_or_deleted_user_is_refused_once_the_directory_reloads() {
        let (_dir, store) = crate::test_support::temp_store();
        for id in ["jdoe", "mary"] {
            let user = sipreg_store::User {
                id: id.into(),
                password_hash: String::new(),
                created_at: 1,
            };
            store.create_user(&user).await.unwrap();
        }
        let ring = KeyRing::load_or_create(store.as_ref(), 1).await.unwrap();
        let cfg = TokenConfig::default();
        let validator = AccessTokenValidator::new(ring.clone(), &cfg);
        let directory = Directory::load(store.as_ref()).await.unwrap();
        validator.attach_directory(directory.clone());
        let sign = |user: &str, at: i64| {
            sign_access_token(&ring, &cfg, user, "softphone", "sip:register", at).unwrap()
        };
        let before = sign("jdoe", NOW);
        let mary = sign("mary", NOW);
        assert!(validator.validate(&before, NOW).is_ok());
        assert!(validator.validate(&mary, NOW).is_ok());

        store.set_tokens_not_before("jdoe", NOW + 1).await.unwrap();
        assert!(
            validator.validate(&before, NOW).is_ok(),
            "only a reloaded directory is consulted"
        );
        directory.reload(store.as_ref()).await.unwrap();
        assert_eq!(
            validator.validate(&before, NOW + 5),
            Err(ValidationError::Revoked),
            "revoked although cached"
        );
        assert!(
            validator.validate(&mary, NOW + 5).is_ok(),
            "others unaffected"
        );
        assert!(
            validator.validate(&sign("jdoe", NOW + 1), NOW + 5).is_ok(),
            "a token issued after the revocation works"
        );

        store.delete_user("mary").await.unwrap();
        directory.reload(store.as_ref()).await.unwrap();
        assert_eq!(
            validator.validate(&mary, NOW + 5),
            Err(ValidationError::UnknownUser)
        );
    }
}
