//! ES256 signing keys: generated once, kept in the store, held in memory as an immutable set that
//! a reload swaps atomically, so validating a token never takes a lock or parses a key.
//!
//! Rotation without mass logout: a new key becomes the signing key, the previous ones stay
//! published ("retiring") until the last token they signed has expired, then they are pruned.
//! For a compromised key, `revoke_previous` drops every other key at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, Signature, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use aws_lc_rs::signature::{ParsedPublicKey, ECDSA_P256_SHA256_FIXED};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sipreg_store::{SigningKey, Store};

use crate::{ensure_crypto_provider, TokenError};

/// The only JWS algorithm sipreg signs with and accepts.
pub(crate) const ALG_ES256: &str = "ES256";

/// The ES256 keys of the token service: the active signing key and every published verifying key.
pub struct KeyRing {
    set: ArcSwap<KeySet>,
}

/// One immutable generation of keys, built from the store once per (re)load.
pub(crate) struct KeySet {
    active_kid: String,
    active: Signer,
    /// Parsed once per generation, so a token check does no key decoding (aws-lc-rs otherwise
    /// re-parses the SEC1 point on every verification).
    verifying: HashMap<String, ParsedPublicKey>,
    /// The exact base64url JWS header we write for each published key, to its `kid`: a token
    /// whose header segment is byte-for-byte one of these needs no header decoding or checks.
    own_headers: HashMap<String, String>,
    jwks: Value,
}

impl KeyRing {
    /// Loads the keys from the store, first generating and storing a P-256 key if none is active.
    pub async fn load_or_create(store: &dyn Store, now: i64) -> Result<Arc<KeyRing>, TokenError> {
        ensure_crypto_provider();
        let stored = store.signing_keys().await?;
        if !stored.iter().any(|k| k.active && k.alg == ALG_ES256) {
            let key = generate_signing_key(now)?;
            tracing::info!(kid = %key.kid, "generated a new ES256 token signing key");
            store.insert_signing_key(&key).await?;
        }
        // Read back instead of using the key just made: another node may have stored one at the
        // same time, and the store alone decides which key is active.
        let set = KeySet::build(&store.signing_keys().await?)?;
        Ok(Arc::new(KeyRing {
            set: ArcSwap::from_pointee(set),
        }))
    }

    /// Re-reads the keys from the store (e.g. on `Change::SigningKeys`) and swaps them in.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), TokenError> {
        let set = KeySet::build(&store.signing_keys().await?)?;
        self.set.store(Arc::new(set));
        Ok(())
    }

    /// The public keys as an RFC 7517 JWK Set; never contains private parts.
    pub fn jwks(&self) -> Value {
        self.set.load().jwks.clone()
    }

    /// The key id new tokens are signed with.
    pub fn active_kid(&self) -> String {
        self.set.load().active_kid.clone()
    }

    /// The current key generation, lock-free.
    pub(crate) fn current(&self) -> Guard<Arc<KeySet>> {
        self.set.load()
    }

    /// Builds a ring from keys in hand, for tests that need keys the store never saw.
    #[cfg(test)]
    pub(crate) fn from_keys(keys: &[SigningKey]) -> Result<Arc<KeyRing>, TokenError> {
        ensure_crypto_provider();
        Ok(Arc::new(KeyRing {
            set: ArcSwap::from_pointee(KeySet::build(keys)?),
        }))
    }
}

impl fmt::Debug for KeyRing {
    // Only key ids: the private key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.set.load();
        let mut kids: Vec<&String> = set.verifying.keys().collect();
        kids.sort();
        f.debug_struct("KeyRing")
            .field("active_kid", &set.active_kid)
            .field("kids", &kids)
            .finish()
    }
}

impl KeySet {
    /// Builds a generation from the stored keys, newest first as the store lists them.
    fn build(keys: &[SigningKey]) -> Result<KeySet, TokenError> {
        let mut verifying = HashMap::new();
        let mut own_headers = HashMap::new();
        let mut jwks = Vec::new();
        for key in keys {
            if key.alg != ALG_ES256 {
                tracing::warn!(kid = %key.kid, alg = %key.alg, "ignoring signing key with unsupported algorithm");
                continue;
            }
            match verifying_key(key) {
                Ok(dk) => {
                    if verifying.insert(key.kid.clone(), dk).is_none() {
                        jwks.push(public_jwk(key));
                        own_headers.insert(header_b64(&key.kid)?, key.kid.clone());
                    }
                }
                // A broken old key must not take the service down; a broken active key does below.
                Err(e) => {
                    tracing::warn!(kid = %key.kid, error = %e, "ignoring unusable signing key")
                }
            }
        }
        let active_key = keys
            .iter()
            .find(|k| k.active && k.alg == ALG_ES256)
            .ok_or(TokenError::NoActiveKey)?;
        if !verifying.contains_key(&active_key.kid) {
            return Err(TokenError::Key(format!(
                "active key {} has an invalid public key",
                active_key.kid
            )));
        }
        let active = Signer::new(active_key)?;
        Ok(KeySet {
            active_kid: active_key.kid.clone(),
            active,
            verifying,
            own_headers,
            jwks: json!({ "keys": jwks }),
        })
    }

    /// The key new tokens are signed with.
    pub(crate) fn signer(&self) -> &Signer {
        &self.active
    }

    /// The published verifying key with this id (ES256: P-256, SHA-256, fixed-size signature).
    pub(crate) fn verifying(&self, kid: &str) -> Option<&ParsedPublicKey> {
        self.verifying.get(kid)
    }

    /// The `kid` of a published key whose tokens carry exactly this header segment, i.e. one
    /// that [`Signer`] wrote: `alg` ES256, `typ` at+jwt, that `kid`, nothing else.
    pub(crate) fn kid_of_own_header(&self, header_b64: &str) -> Option<&str> {
        self.own_headers.get(header_b64).map(String::as_str)
    }
}

/// Generates a fresh P-256 key, identified by its RFC 7638 thumbprint.
pub(crate) fn generate_signing_key(now: i64) -> Result<SigningKey, TokenError> {
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    let (x, y) = split_point(pair.public_key_raw())?;
    Ok(SigningKey {
        kid: thumbprint(&x, &y),
        alg: ALG_ES256.into(),
        private_pem: pair.serialize_pem(),
        public_x: x,
        public_y: y,
        created_at: now,
        active: true,
    })
}

/// RFC 7638 JWK thumbprint of a P-256 key: SHA-256 over the required members in lexical order.
pub(crate) fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Splits an uncompressed SEC1 point (`04 || x || y`) into base64url coordinates.
fn split_point(raw: &[u8]) -> Result<(String, String), TokenError> {
    match raw {
        [0x04, rest @ ..] if rest.len() == 64 => Ok((
            URL_SAFE_NO_PAD.encode(&rest[..32]),
            URL_SAFE_NO_PAD.encode(&rest[32..]),
        )),
        _ => Err(TokenError::Key(
            "public key is not an uncompressed p-256 point".into(),
        )),
    }
}

/// The stored coordinates as an ES256 verifying key; aws-lc checks the point is on the curve.
fn verifying_key(key: &SigningKey) -> Result<ParsedPublicKey, TokenError> {
    let bad = || TokenError::Key(format!("key {} has invalid p-256 coordinates", key.kid));
    let coordinate = |c: &str| {
        URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(bad)
    };
    // SEC1 uncompressed point: 04 || x || y.
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&coordinate(&key.public_x)?);
    point.extend_from_slice(&coordinate(&key.public_y)?);
    ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).map_err(|_| bad())
}

/// The active key, parsed once per key generation: the ES256 key pair and the base64url JWS
/// header naming it, so that signing a token neither parses a key (jsonwebtoken's `encode` does,
/// with a P-256 point check, on every call) nor serialises a header.
pub(crate) struct Signer {
    pair: EcdsaKeyPair,
    header_b64: String,
    rng: SystemRandom,
}

impl Signer {
    /// Parses the active private key and checks it belongs to the public key we publish, so that
    /// a mismatched row cannot make us sign tokens nobody can verify.
    fn new(key: &SigningKey) -> Result<Signer, TokenError> {
        let bad = |what: &str| TokenError::Key(format!("active key {}: {what}", key.kid));
        let pem = KeyPair::from_pkcs8_pem_and_sign_algo(&key.private_pem, &PKCS_ECDSA_P256_SHA256)
            .map_err(|_| bad("private key is not a p-256 pkcs#8 pem"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pem.serialized_der())
            .map_err(|_| bad("private key unusable for es256"))?;
        // The point of the pair we sign with, not of a second parse of the same PEM.
        let (x, y) = split_point(pair.public_key().as_ref())?;
        if x != key.public_x || y != key.public_y {
            return Err(bad("private key does not match the stored public key"));
        }
        Ok(Signer {
            pair,
            header_b64: header_b64(&key.kid)?,
            rng: SystemRandom::new(),
        })
    }

    /// The JWS protected header of every token this key signs, base64url.
    pub(crate) fn header_b64(&self) -> &str {
        &self.header_b64
    }

    /// The ES256 signature (`r || s`, 64 bytes, RFC 7518 §3.4) of a JWS signing input.
    pub(crate) fn sign(&self, signing_input: &[u8]) -> Result<Signature, TokenError> {
        self.pair.sign(&self.rng, signing_input).map_err(|_| {
            TokenError::Sign(jsonwebtoken::errors::ErrorKind::Signing("es256".into()).into())
        })
    }
}

/// The base64url JWS protected header of every access token signed with key `kid`.
fn header_b64(kid: &str) -> Result<String, TokenError> {
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some(crate::issue::ACCESS_TOKEN_TYP.into());
    header.kid = Some(kid.to_owned());
    let json = serde_json::to_vec(&header)
        .map_err(|e| TokenError::Key(format!("key {kid}: header: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

fn public_jwk(key: &SigningKey) -> Value {
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": key.public_x,
        "y": key.public_y,
        "kid": key.kid,
        "alg": ALG_ES256,
        "use": "sig",
    })
}

/// Where a key stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Signs new tokens.
    Active,
    /// Signs nothing, still verifies the tokens it signed until `retire_at`.
    Retiring,
    /// Every token it signed has expired; the next prune deletes it.
    Expired,
}

/// A signing key as `keys list` shows it; no private part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Key id (RFC 7638 thumbprint).
    pub kid: String,
    /// JWS algorithm.
    pub alg: String,
    /// Its state at the time of listing.
    pub state: KeyState,
    /// Unix seconds of creation.
    pub created_at: i64,
    /// For a retired key: when the last token it may have signed expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

/// The keys with their states at `now`, newest first.
///
/// A retired key stopped signing no later than the active key's creation, so its tokens are all
/// expired by then plus `retention_secs` (access-token lifetime and leeway).
pub fn key_states(keys: &[SigningKey], now: i64, retention_secs: i64) -> Vec<KeyInfo> {
    let active_since = keys
        .iter()
        .filter(|k| k.active)
        .map(|k| k.created_at)
        .max()
        .unwrap_or(now);
    keys.iter()
        .map(|k| {
            let (state, retire_at) = if k.active {
                (KeyState::Active, None)
            } else {
                let at = active_since
                    .max(k.created_at)
                    .saturating_add(retention_secs);
                let state = if now >= at {
                    KeyState::Expired
                } else {
                    KeyState::Retiring
                };
                (state, Some(at))
            };
            KeyInfo {
                kid: k.kid.clone(),
                alg: k.alg.clone(),
                state,
                created_at: k.created_at,
                retire_at,
            }
        })
        .collect()
}

impl KeyRing {
    /// Makes a new key the signing key and reloads. The previous keys keep verifying until their
    /// tokens expire, or, with `revoke_previous`, are deleted at once (every token they signed
    /// fails from now on). Returns the new key id.
    pub async fn rotate(
        &self,
        store: &dyn Store,
        now: i64,
        revoke_previous: bool,
    ) -> Result<String, TokenError> {
        let key = generate_signing_key(now)?;
        store.insert_signing_key(&key).await?;
        if revoke_previous {
            for old in store.signing_keys().await? {
                if old.kid != key.kid && !old.active {
                    store.delete_signing_key(&old.kid).await?;
                    tracing::warn!(kid = %old.kid, "signing key revoked");
                }
            }
        }
        self.reload(store).await?;
        tracing::info!(kid = %key.kid, revoke_previous, "signing key rotated");
        Ok(key.kid)
    }

    /// Deletes retired keys whose tokens have all expired; returns their ids.
    pub async fn prune(
        &self,
        store: &dyn Store,
        now: i64,
        retention_secs: i64,
    ) -> Result<Vec<String>, TokenError> {
        let keys = store.signing_keys().await?;
        let mut pruned = Vec::new();
        for info in key_states(&keys, now, retention_secs) {
            if info.state == KeyState::Expired {
                store.delete_signing_key(&info.kid).await?;
                pruned.push(info.kid);
            }
        }
        if !pruned.is_empty() {
            tracing::info!(kids = ?pruned, "pruned expired signing keys");
            self.reload(store).await?;
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::temp_store;

    #[tokio::test]
    async fn keys_persist_across_load_or_create_on_the_same_store() {
        let (_dir, store) = temp_store();
        let first = KeyRing::load_or_create(store.as_ref(), 100).await.unwrap();
        let second = KeyRing::load_or_create(store.as_ref(), 200).await.unwrap();
        assert_eq!(first.active_kid(), second.active_kid());
        assert_eq!(first.jwks(), second.jwks());
        assert_eq!(
            store.signing_keys().await.unwrap().len(),
            1,
            "no second key is generated"
        );
    }

    #[tokio::test]
    async fn jwks_publishes_only_public_members_with_a_thumbprint_kid() {
        let (_dir, store) = temp_store();
        let ring = KeyRing::load_or_create(store.as_ref(), 1).await.unwrap();
        let jwks = ring.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let k = keys[0].as_object().unwrap();
        let mut members: Vec<&str> = k.keys().map(String::as_str).collect();
        members.sort();
        assert_eq!(
            members,
            ["alg", "crv", "kid", "kty", "use", "x", "y"],
            "no `d` or other private part"
        );
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["use"], "sig");
        let (x, y) = (k["x"].as_str().unwrap(), k["y"].as_str().unwrap());
        assert_eq!(URL_SAFE_NO_PAD.decode(x).unwrap().len(), 32);
        assert_eq!(k["kid"], thumbprint(x, y));
        assert_eq!(ring.active_kid(), thumbprint(x, y));
    }

    #[test]
    fn thumbprint_matches_rfc7638_canonical_form() {
        // Independently computed: SHA-256 of the canonical JSON, base64url without padding.
        let canonical = r#"{"crv":"P-256","kty":"EC","x":"abc","y":"def"}"#;
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        assert_eq!(thumbprint("abc", "def"), expected);
        assert_eq!(expected.len(), 43);
    }

    #[tokio::test]
    async fn reload_picks_up_a_rotated_key_and_keeps_the_old_one_published() {
        let (_dir, store) = temp_store();
        let ring = KeyRing::load_or_create(store.as_ref(), 1).await.unwrap();
        let old = ring.active_kid();
        let new_key = generate_signing_key(2).unwrap();
        store.insert_signing_key(&new_key).await.unwrap();
        assert_eq!(ring.active_kid(), old, "nothing changes before reload");
        ring.reload(store.as_ref()).await.unwrap();
        assert_eq!(ring.active_kid(), new_key.kid);
        assert!(ring.current().verifying(&old).is_some());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_private_key_that_does_not_match_the_public_key_is_refused() {
        let a = generate_signing_key(1).unwrap();
        let b = generate_signing_key(1).unwrap();
        let mixed = SigningKey {
            private_pem: b.private_pem,
            ..a
        };
        assert!(matches!(
            KeyRing::from_keys(&[mixed]),
            Err(TokenError::Key(_))
        ));
    }

    #[test]
    fn no_active_key_is_an_error() {
        let inactive = SigningKey {
            active: false,
            ..generate_signing_key(1).unwrap()
        };
        assert!(matches!(
            KeyRing::from_keys(&[inactive]),
            Err(TokenError::NoActiveKey)
        ));
    }

    #[test]
    fn debug_output_shows_no_private_key() {
        let key = generate_signing_key(1).unwrap();
        let ring = KeyRing::from_keys(std::slice::from_ref(&key)).unwrap();
        let shown = format!("{ring:?}");
        assert!(shown.contains(&key.kid));
        assert!(!shown.contains("PRIVATE"));
    }

    #[tokio::test]
    async fn rotation_keeps_the_old_key_until_its_tokens_expire_then_prunes_it() {
        let (_dir, store) = temp_store();
        let ring = KeyRing::load_or_create(store.as_ref(), 100).await.unwrap();
        let old = ring.active_kid();
        let new = ring.rotate(store.as_ref(), 1000, false).await.unwrap();
        assert_ne!(old, new);
        assert_eq!(ring.active_kid(), new);
        assert!(
            ring.current().verifying(&old).is_some(),
            "old key still verifies"
        );
        let states = key_states(&store.signing_keys().await.unwrap(), 1000, 3630);
        assert_eq!(states[0].kid, new);
        assert_eq!(states[0].state, KeyState::Active);
        assert_eq!(states[1].state, KeyState::Retiring);
        assert_eq!(states[1].retire_at, Some(1000 + 3630));

        assert!(ring
            .prune(store.as_ref(), 4629, 3630)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            ring.prune(store.as_ref(), 4630, 3630).await.unwrap(),
            vec![old.clone()]
        );
        assert!(ring.current().verifying(&old).is_none());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn revoke_previous_drops_every_other_key_at_once() {
        let (_dir, store) = temp_store();
        let ring = KeyRing::load_or_create(store.as_ref(), 100).await.unwrap();
        let first = ring.active_kid();
        let second = ring.rotate(store.as_ref(), 200, false).await.unwrap();
        let third = ring.rotate(store.as_ref(), 300, true).await.unwrap();
        let kids: Vec<String> = store
            .signing_keys()
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids, vec![third]);
        assert!(ring.current().verifying(&first).is_none());
        assert!(ring.current().verifying(&second).is_none());
        let shown =
            serde_json::to_value(key_states(&store.signing_keys().await.unwrap(), 300, 1)).unwrap();
        assert_eq!(shown[0]["state"], "active");
        assert!(shown[0].get("retire_at").is_none());
        assert!(!shown.to_string().contains("PRIVATE"));
    }
}
