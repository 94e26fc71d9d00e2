//! HTTP Digest authentication for the legacy SIP ports (RFC 3261 §22, RFC 7616): MD5 and
//! SHA-256 with `qop=auth`, one challenge per algorithm (SHA-256 first).
//!
//! Nonces are stateless: `base64url(issued-at ‖ tag ‖ salt ‖ HMAC-SHA256(secret, issued-at ‖ tag ‖
//! salt ‖ realm)[..16])` with a random 8-byte salt, so every challenge is unique, and the issuing
//! process's random 8-byte tag. Replays are stopped by remembering, per nonce still in its lifetime,
//! the highest `nc` seen; that memory is this process's only, so only nonces carrying its own tag
//! are accepted. A nonce signed with the cluster's secret but tagged by another node (or by this
//! node before a restart) is never accepted: answered correctly, it gets a fresh challenge with
//! `stale=true` (RFC 7616 §3.3), so the phone retries without asking for the password, and a
//! REGISTER captured on plain UDP/TCP cannot be replayed to another node or after a restart.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::message::unquote;

type HmacSha256 = Hmac<Sha256>;

/// Length of the random salt of a nonce, in bytes.
const NONCE_SALT_LEN: usize = 8;
/// Length of the per-process tag of a nonce, in bytes.
const NONCE_TAG_LEN: usize = 8;
/// Length of the HMAC part of a nonce, in bytes.
const NONCE_MAC_LEN: usize = 16;
/// Most nonces whose `nc` is tracked at once; beyond it, new nonces are refused as stale.
const MAX_TRACKED_NONCES: usize = 100_000;
/// Clock skew tolerated for a nonce issued "in the future" (another node's clock).
const FUTURE_SKEW: i64 = 5;

/// A Digest hash algorithm (RFC 7616 §3.2; `-sess` variants are not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5` (RFC 2617), kept for old phones.
    Md5,
    /// `SHA-256` (RFC 7616).
    Sha256,
}

impl Algorithm {
    /// The token used in headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    fn hash_hex(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// Why Digest credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The credentials are not a well-formed Digest response (answered with 400).
    #[error("malformed digest credentials: {0}")]
    Malformed(&'static str),
    /// Algorithm other than MD5 / SHA-256, or qop other than `auth`.
    #[error("unsupported digest parameters")]
    Unsupported,
    /// The nonce was not made by us (or for another realm).
    #[error("unknown nonce")]
    BadNonce,
    /// Our nonce, but past its lifetime: challenge again with `stale=true`.
    #[error("stale nonce")]
    Stale,
    /// Signed with the cluster's secret and answered correctly, but issued by another node or by
    /// this one before a restart, so its `nc` history is not known here: never accepted,
    /// challenged again with `stale=true` like [`Stale`](Self::Stale).
    #[error("nonce issued by another node or before a restart")]
    OtherNode,
    /// `nc` not higher than one already used with this nonce: a replay.
    #[error("nonce count replayed")]
    Replay,
    /// `uri` differs from the Request-URI, or `realm` is not ours.
    #[error("digest uri or realm mismatch")]
    Mismatch,
    /// Wrong password (or unknown user).
    #[error("wrong credentials")]
    WrongResponse,
}

/// A parsed `Digest` credentials value (`Authorization` / `Proxy-Authorization`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestResponse {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri`.
    pub uri: String,
    /// `response` (hex).
    pub response: String,
    /// `algorithm` (MD5 when absent).
    pub algorithm: Algorithm,
    /// `cnonce`.
    pub cnonce: String,
    /// `nc` as a number.
    pub nc: u32,
}

impl DigestResponse {
    /// Parses one credentials value; `Ok(None)` when the scheme is not `Digest`.
    pub fn parse(value: &str) -> Result<Option<DigestResponse>, DigestError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Ok(None);
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        for part in crate::message::split_auth_params(rest) {
            let (k, v) = part
                .split_once('=')
                .ok_or(DigestError::Malformed("parameter without value"))?;
            let k = k.trim().to_ascii_lowercase();
            if fields.iter().any(|(n, _)| *n == k) {
                return Err(DigestError::Malformed("duplicate parameter"));
            }
            fields.push((k, unquote(v)));
        }
        let get = |name: &'static str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let need = |name: &'static str| get(name).ok_or(DigestError::Malformed(name));
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(&a).ok_or(DigestError::Unsupported)?,
        };
        // RFC 7616 §3.4: with qop, cnonce and nc are required; we only offer qop=auth.
        let qop = need("qop")?;
        if !qop.eq_ignore_ascii_case("auth") {
            return Err(DigestError::Unsupported);
        }
        let nc_text = need("nc")?;
        if nc_text.len() != 8 {
            return Err(DigestError::Malformed("nc"));
        }
        let nc = u32::from_str_radix(&nc_text, 16).map_err(|_| DigestError::Malformed("nc"))?;
        let cnonce = need("cnonce")?;
        if cnonce.is_empty() {
            return Err(DigestError::Malformed("cnonce"));
        }
        Ok(Some(DigestResponse {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: need("response")?.to_ascii_lowercase(),
            algorithm,
            cnonce,
            nc,
        }))
    }
}

/// Issues and checks Digest nonces; one per registrar. The secret is the cluster's, from the
/// store, or random per process ([`DigestAuth::random`], for tests); `Debug` never shows it.
pub struct DigestAuth {
    secret: [u8; 32],
    /// This process's random tag, in every nonce it issues: `seen` only knows those.
    tag: [u8; NONCE_TAG_LEN],
    nonce_ttl: i64,
    /// nonce → (issued at, highest nc seen).
    seen: DashMap<String, (i64, u32)>,
    /// Offered algorithms, most preferred first.
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth")
            .field("nonce_ttl", &self.nonce_ttl)
            .field("tracked_nonces", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl DigestAuth {
    /// Nonces made with `secret` live `nonce_ttl_secs` seconds.
    pub fn new(secret: [u8; 32], nonce_ttl_secs: u32) -> Self {
        DigestAuth {
            secret,
            tag: rand::random(),
            nonce_ttl: i64::from(nonce_ttl_secs),
            seen: DashMap::new(),
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }

    /// Offers (and accepts) only these algorithms, challenged in this order; empty keeps the default
    /// (SHA-256, then MD5). Clients that take the first challenge and know only MD5 (sipp 3.6)
    /// need MD5 first.
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        if !algorithms.is_empty() {
            self.algorithms = algorithms.to_vec();
        }
        self
    }

    /// With a random secret: nonces do not survive a restart (clients simply get challenged).
    pub fn random(nonce_ttl_secs: u32) -> Self {
        Self::new(rand::random(), nonce_ttl_secs)
    }

    fn mac(&self, issued: i64, tag: &[u8], salt: &[u8], realm: &str) -> [u8; NONCE_MAC_LEN] {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => return [0; NONCE_MAC_LEN],
        };
        mac.update(&issued.to_be_bytes());
        mac.update(tag);
        mac.update(salt);
        mac.update(realm.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }

    /// A fresh nonce for `realm` at `now`.
    pub fn nonce(&self, realm: &str, now: i64) -> String {
        let salt: [u8; NONCE_SALT_LEN] = rand::random();
        let mut raw = now.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.tag);
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&self.mac(now, &self.tag, &salt, realm));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// When a nonce signed with our secret was issued, and whether this process issued it (its
    /// tag is ours); `Err(BadNonce)` if the secret did not sign it.
    fn nonce_issued(&self, nonce: &str, realm: &str) -> Result<(i64, bool), DigestError> {
        let raw = URL_SAFE_NO_PAD
            .decode(nonce)
            .map_err(|_| DigestError::BadNonce)?;
        if raw.len() != 8 + NONCE_TAG_LEN + NONCE_SALT_LEN + NONCE_MAC_LEN {
            return Err(DigestError::BadNonce);
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[..8]);
        let issued = i64::from_be_bytes(ts);
        let (tag, rest) = raw[8..].split_at(NONCE_TAG_LEN);
        let (salt, mac) = rest.split_at(NONCE_SALT_LEN);
        if !bool::from(self.mac(issued, tag, salt, realm).ct_eq(mac)) {
            return Err(DigestError::BadNonce);
        }
        Ok((issued, tag == self.tag))
    }

    /// `WWW-Authenticate` values: SHA-256 first, then MD5 (RFC 7616 §3.7: preferred first).
    pub fn challenges(&self, realm: &str, now: i64, stale: bool) -> Vec<String> {
        let nonce = self.nonce(realm, now);
        let stale = if stale { ", stale=true" } else { "" };
        self.algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{realm}\", qop=\"auth\", algorithm={}, nonce=\"{nonce}\"{stale}",
                    a.as_str()
                )
            })
            .collect()
    }

    /// Checks a response against the stored HA1 (`ha1_hex` for `resp.algorithm`) for a request
    /// with `method` and `request_uri`, in our `realm`, at `now`.
    pub fn verify(
        &self,
        resp: &DigestResponse,
        method: &str,
        request_uri: &str,
        realm: &str,
        ha1_hex: &str,
        now: i64,
    ) -> Result<(), DigestError> {
        if resp.realm != realm || resp.uri != request_uri {
            return Err(DigestError::Mismatch);
        }
        if !self.algorithms.contains(&resp.algorithm) {
            return Err(DigestError::Unsupported);
        }
        let (issued, ours) = self.nonce_issued(&resp.nonce, realm)?;
        if issued > now + FUTURE_SKEW {
            return Err(DigestError::BadNonce);
        }
        let alg = resp.algorithm;
        let ha2 = alg.hash_hex(&format!("{method}:{}", resp.uri));
        let expected = alg.hash_hex(&format!(
            "{}:{}:{:08x}:{}:auth:{ha2}",
            ha1_hex.to_ascii_lowercase(),
            resp.nonce,
            resp.nc,
            resp.cnonce
        ));
        if !bool::from(expected.as_bytes().ct_eq(resp.response.as_bytes())) {
            return Err(DigestError::WrongResponse);
        }
        // Only a correct response is worth telling apart from a stale one (RFC 7616 §3.3).
        if now - issued > self.nonce_ttl {
            return Err(DigestError::Stale);
        }
        // Another node's (or a past process's) nonce: its counts are not known here, so accepting
        // it would let a captured request be replayed once; a fresh challenge costs one round trip.
        if !ours {
            return Err(DigestError::OtherNode);
        }
        self.check_nc(&resp.nonce, issued, resp.nc, now)
    }

    fn check_nc(&self, nonce: &str, issued: i64, nc: u32, now: i64) -> Result<(), DigestError> {
        if !self.seen.contains_key(nonce) && self.seen.len() >= MAX_TRACKED_NONCES {
            let ttl = self.nonce_ttl;
            self.seen.retain(|_, (t, _)| now - *t <= ttl);
            if self.seen.len() >= MAX_TRACKED_NONCES {
                return Err(DigestError::Stale);
            }
        }
        let mut e = self.seen.entry(nonce.to_owned()).or_insert((issued, 0));
        if nc <= e.1 {
            return Err(DigestError::Replay);
        }
        e.1 = nc;
        Ok(())
    }

    /// Forgets nonces past their lifetime; returns how many are still tracked.
    pub fn purge(&self, now: i64) -> usize {
        let ttl = self.nonce_ttl;
        self.seen.retain(|_, (t, _)| now - *t <= ttl);
        self.seen.len()
    }
}

/// HA1 = H(username:realm:password), hex; what the admin API stores per algorithm.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash_hex(&format!("{username}:{realm}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "ccmsipline";
    const NOW: i64 = 1_700_000_000;

    /// What a client computes (RFC 7616 §3.4.1).
    fn client(alg: Algorithm, nonce: &str, nc: u32, password: &str) -> String {
        let ha1 = ha1(alg, "1010", REALM, password);
        let ha2 = alg.hash_hex("REGISTER:sip:example.com");
        let response = alg.hash_hex(&format!("{ha1}:{nonce}:{nc:08x}:c0ffee:auth:{ha2}"));
        format!(
            "Digest username=\"1010\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:example.com\", \
response=\"{response}\", algorithm={}, cnonce=\"c0ffee\", qop=auth, nc={nc:08x}",
            alg.as_str()
        )
    }

    #[test]
    fn rfc_2617_md5_vector() {
        // RFC 2617 §3.5's example values, qop=auth.
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert_eq!(ha1, "939e7578ed9e3c518a452acee763bce9");
        let ha2 = Algorithm::Md5.hash_hex("GET:/dir/index.html");
        let r = Algorithm::Md5.hash_hex(&format!(
            "{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"
        ));
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc_7616_sha256_vector() {
        // RFC 7616 §3.9.1.
        let ha1 = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let ha2 = Algorithm::Sha256.hash_hex("GET:/dir/index.html");
        let r = Algorithm::Sha256.hash_hex(&format!(
            "{ha1}:7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v:00000001:f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ:auth:{ha2}"
        ));
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn both_algorithms_verify_and_replays_fail() {
        let auth = DigestAuth::new([7; 32], 300);
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = auth.nonce(REALM, NOW);
            let stored = ha1(alg, "1010", REALM, "secret");
            let resp = DigestResponse::parse(&client(alg, &nonce, 1, "secret"))
                .unwrap()
                .unwrap();
            assert_eq!(resp.algorithm, alg);
            auth.verify(
                &resp,
                "REGISTER",
                "sip:example.com",
                REALM,
                &stored,
                NOW + 10,
            )
            .unwrap();
            assert_eq!(
                auth.verify(
                    &resp,
                    "REGISTER",
                    "sip:example.com",
                    REALM,
                    &stored,
                    NOW + 11
                ),
                Err(DigestError::Replay)
            );
            let resp2 = DigestResponse::parse(&client(alg, &nonce, 2, "secret"))
                .unwrap()
                .unwrap();
            auth.verify(
                &resp2,
                "REGISTER",
                "sip:example.com",
                REALM,
                &stored,
                NOW + 12,
            )
            .unwrap();
            let wrong = DigestResponse::parse(&client(alg, &nonce, 3, "guess"))
                .unwrap()
                .unwrap();
            assert_eq!(
                auth.verify(&wrong, "REGISTER", "sip:example.com", REALM, &stored, NOW),
                Err(DigestError::WrongResponse)
            );
            assert_eq!(
                auth.verify(&resp2, "REGISTER", "sip:other.com", REALM, &stored, NOW),
                Err(DigestError::Mismatch)
            );
        }
    }

    #[test]
    fn nonces_expire_and_foreign_nonces_are_refused() {
        let auth = DigestAuth::new([7; 32], 300);
        let stored = ha1(Algorithm::Md5, "1010", REALM, "secret");
        let nonce = auth.nonce(REALM, NOW);
        let resp = DigestResponse::parse(&client(Algorithm::Md5, &nonce, 1, "secret"))
            .unwrap()
            .unwrap();
        assert_eq!(
            auth.verify(
                &resp,
                "REGISTER",
                "sip:example.com",
                REALM,
                &stored,
                NOW + 301
            ),
            Err(DigestError::Stale)
        );
        let other = DigestAuth::new([8; 32], 300);
        assert_eq!(
            other.verify(&resp, "REGISTER", "sip:example.com", REALM, &stored, NOW),
            Err(DigestError::BadNonce)
        );
        let forged = DigestResponse::parse(&client(Algorithm::Md5, "AAAAAAAAAAAA", 1, "secret"))
            .unwrap()
            .unwrap();
        assert_eq!(
            auth.verify(&forged, "REGISTER", "sip:example.com", REALM, &stored, NOW),
            Err(DigestError::BadNonce)
        );
        assert_eq!(auth.purge(NOW + 1000), 0);
    }

    #[test]
    fn another_nodes_nonce_is_stale_never_accepted_and_debug_hides_the_secret() {
        // Two nodes (or one before and after a restart) sharing the secret.
        let (a, b) = (
            DigestAuth::new([0xab; 32], 300),
            DigestAuth::new([0xab; 32], 300),
        );
        let stored = ha1(Algorithm::Sha256, "1010", REALM, "secret");
        let nonce = a.nonce(REALM, NOW);
        let answer = |nonce: &str, nc, password| {
            DigestResponse::parse(&client(Algorithm::Sha256, nonce, nc, password))
                .unwrap()
                .unwrap()
        };
        let check = |auth: &DigestAuth, resp: &DigestResponse, now| {
            auth.verify(resp, "REGISTER", "sip:example.com", REALM, &stored, now)
        };
        let resp = answer(&nonce, 1, "secret");
        // Correct: stale, not unknown; every time, so a captured request never registers on b.
        for _ in 0..2 {
            assert_eq!(check(&b, &resp, NOW + 1), Err(DigestError::OtherNode));
        }
        assert_ne!(DigestError::OtherNode, DigestError::BadNonce);
        // Wrong password: the ordinary failure; past its lifetime: stale as before.
        assert_eq!(
            check(&b, &answer(&nonce, 2, "guess"), NOW + 1),
            Err(DigestError::WrongResponse)
        );
        assert_eq!(check(&b, &resp, NOW + 301), Err(DigestError::Stale));
        // The issuing node still accepts it, once per count.
        check(&a, &resp, NOW + 1).unwrap();
        assert_eq!(check(&a, &resp, NOW + 2), Err(DigestError::Replay));
        // b's own nonce is accepted by b.
        check(&b, &answer(&b.nonce(REALM, NOW), 1, "secret"), NOW + 1).unwrap();
        // The tag is signed: a's nonce with b's tag put in, or with any byte changed, is forged.
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        raw[8..8 + NONCE_TAG_LEN].copy_from_slice(&b.tag);
        let retagged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            check(&b, &answer(&retagged, 1, "secret"), NOW + 1),
            Err(DigestError::BadNonce)
        );
        for i in 0..raw.len() {
            let mut raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
            raw[i] ^= 1;
            let forged = URL_SAFE_NO_PAD.encode(&raw);
            for auth in [&a, &b] {
                assert_eq!(
                    check(auth, &answer(&forged, 1, "secret"), NOW + 1),
                    Err(DigestError::BadNonce),
                    "byte {i}"
                );
            }
        }
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("171") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn every_nonce_is_unique() {
        let auth = DigestAuth::new([1; 32], 300);
        assert_ne!(auth.nonce(REALM, NOW), auth.nonce(REALM, NOW));
    }

    #[test]
    fn challenges_offer_sha256_first_and_stale() {
        let auth = DigestAuth::new([1; 32], 300);
        let c = auth.challenges(REALM, NOW, true);
        assert_eq!(c.len(), 2);
        assert!(c[0]
            .starts_with("Digest realm=\"ccmsipline\", qop=\"auth\", algorithm=SHA-256, nonce=\""));
        assert!(c[0].ends_with(", stale=true"));
        assert!(c[1].contains("algorithm=MD5"));
    }

    #[test]
    fn parse_rejects_bad_credentials() {
        assert_eq!(DigestResponse::parse("Bearer x"), Ok(None));
        assert_eq!(
            DigestResponse::parse(
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\""
            ),
            Err(DigestError::Malformed("qop"))
        );
        assert_eq!(
            DigestResponse::parse("Digest username=\"a\", qop=auth-int, nc=00000001, cnonce=x"),
            Err(DigestError::Unsupported)
        );
        assert_eq!(
            DigestResponse::parse("Digest algorithm=MD5-sess"),
            Err(DigestError::Unsupported)
        );
        assert_eq!(
            DigestResponse::parse("Digest qop=auth, nc=1, cnonce=x"),
            Err(DigestError::Malformed("nc"))
        );
        assert_eq!(
            DigestResponse::parse("Digest a=1, a=2"),
            Err(DigestError::Malformed("duplicate parameter"))
        );
    }
}
