//! ES256 (ECDSA P-256, SHA-256) verification against a public key known in advance.
//!
//! Verifying computes `u1·G + u2·Q`. A general verifier (aws-lc) has a precomputed table for the
//! generator `G` only, so `u2·Q` costs some 256 doublings. Our own tokens are checked against one
//! of very few keys that change only on rotation, so each key gets a comb table at key load:
//! `T[i][j] = j·2^(8i)·Q` in affine coordinates, with signed 8-bit digits (|j| ≤ 128, a negative
//! digit subtracts). The same table for `G` is built once per process. A verification is then
//! two scalar recodings and at most 66 mixed additions, with no doubling.
//!
//! Everything here is public data (key, message, signature), so variable-time table lookups and
//! the variable-time scalar inversion leak nothing secret. The point arithmetic is the RustCrypto
//! `p256` crate's (complete addition formulas); this module only arranges it.

use std::fmt;
use std::sync::OnceLock;

use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::{BatchNormalize as _, Field as _, Group as _, PrimeField as _};
use p256::{AffinePoint, FieldBytes, ProjectivePoint, PublicKey, Scalar};
use sha2::{Digest, Sha256};

/// Bits per comb window.
const WINDOW_BITS: usize = 8;
/// Windows over a 256-bit scalar; a signed recoding carries one more bit into a top "window".
const WINDOWS: usize = 256 / WINDOW_BITS;
/// Table entries per window: the magnitudes 1..=128 of a signed 8-bit digit.
const HALF: usize = 1 << (WINDOW_BITS - 1);

/// `j·2^(8i)·P` for every window `i` and digit magnitude `j`, plus `2^256·P` for the final carry.
struct CombTable {
    /// `WINDOWS * HALF` entries, window-major, then the carry point; about 290 KiB.
    points: Box<[AffinePoint]>,
}

impl CombTable {
    fn new(base: ProjectivePoint) -> CombTable {
        let mut projective = Vec::with_capacity(WINDOWS * HALF + 1);
        let mut window_base = base;
        for _ in 0..WINDOWS {
            let mut multiple = window_base;
            for _ in 0..HALF {
                projective.push(multiple);
                multiple += window_base;
            }
            for _ in 0..WINDOW_BITS {
                window_base = window_base.double();
            }
        }
        projective.push(window_base);
        // One field inversion for all ~4,100 points instead of one each.
        let points = ProjectivePoint::batch_normalize(projective.as_slice()).into_boxed_slice();
        CombTable { points }
    }

    /// `acc += k·P`, with `k` recoded into signed base-256 digits.
    fn add_multiple(&self, acc: &mut ProjectivePoint, k: &Scalar) {
        let digits = signed_digits(k);
        for (window, &digit) in digits[..WINDOWS].iter().enumerate() {
            let magnitude = usize::from(digit.unsigned_abs());
            if magnitude == 0 {
                continue;
            }
            let point = &self.points[window * HALF + magnitude - 1];
            if digit > 0 {
                *acc += point;
            } else {
                *acc -= point;
            }
        }
        if digits[WINDOWS] != 0 {
            *acc += &self.points[WINDOWS * HALF];
        }
    }
}

/// `k` as `sum(d_i · 256^i)` with `d_i` in `[-128, 127]` for `i < 32` and a final carry `d_32`
/// in `{0, 1}`, so that a table of magnitudes 1..=128 covers every digit.
fn signed_digits(k: &Scalar) -> [i16; WINDOWS + 1] {
    let bytes = k.to_bytes(); // big-endian
    let mut digits = [0i16; WINDOWS + 1];
    let mut carry = 0i16;
    for (digit, byte) in digits.iter_mut().zip(bytes.iter().rev()) {
        let v = i16::from(*byte) + carry;
        if v >= HALF as i16 {
            *digit = v - 256;
            carry = 1;
        } else {
            *digit = v;
            carry = 0;
        }
    }
    digits[WINDOWS] = carry;
    digits
}

/// The generator's table, built on first use and kept for the life of the process.
fn generator_table() -> &'static CombTable {
    static TABLE: OnceLock<CombTable> = OnceLock::new();
    TABLE.get_or_init(|| CombTable::new(ProjectivePoint::GENERATOR))
}

/// An ES256 verifying key with its comb table; built once per key generation.
pub(crate) struct FixedKeyVerifier {
    table: CombTable,
}

/// The public key is not a valid P-256 point (off the curve, the identity, or malformed).
#[derive(Debug, thiserror::Error)]
#[error("not a valid p-256 public key")]
pub(crate) struct InvalidPublicKey;

impl FixedKeyVerifier {
    /// Checks the uncompressed SEC1 point (`04 || x || y`) is on the curve and not the identity,
    /// then builds its table (a few milliseconds) and, once per process, the generator's.
    pub(crate) fn new(sec1: &[u8]) -> Result<FixedKeyVerifier, InvalidPublicKey> {
        let key = PublicKey::from_sec1_bytes(sec1).map_err(|_| InvalidPublicKey)?;
        generator_table();
        Ok(FixedKeyVerifier {
            table: CombTable::new(key.to_projective()),
        })
    }

    /// Whether `signature` (`r || s`, 32 bytes each, RFC 7518 §3.4) is a valid ECDSA P-256
    /// signature of SHA-256(`message`) under this key. Accepts exactly what aws-lc's
    /// `ECDSA_P256_SHA256_FIXED` does: `r` and `s` in `[1, n-1]`, high `s` allowed.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Some((r_bytes, s_bytes)) = signature
            .split_first_chunk::<32>()
            .and_then(|(r, rest)| Some((r, <&[u8; 32]>::try_from(rest).ok()?)))
        else {
            return false;
        };
        let (Some(r), Some(s)) = (nonzero_scalar(r_bytes), nonzero_scalar(s_bytes)) else {
            return false;
        };
        // SEC 1 §4.1.4: e is the 256-bit digest as an integer, reduced mod n.
        let digest: [u8; 32] = Sha256::digest(message).into();
        let e = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(digest));
        let Some(w) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let mut point = ProjectivePoint::IDENTITY;
        generator_table().add_multiple(&mut point, &(e * w));
        self.table.add_multiple(&mut point, &(r * w));
        let point = point.to_affine();
        if bool::from(point.is_identity()) {
            return false;
        }
        // The affine x is in [0, p); one conditional subtraction reduces it mod n (p < 2n).
        <Scalar as Reduce<FieldBytes>>::reduce(&point.x()) == r
    }
}

/// A big-endian scalar in `[1, n-1]`, or `None` for zero and anything `>= n` (never reduced).
fn nonzero_scalar(bytes: &[u8; 32]) -> Option<Scalar> {
    Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(*bytes)))
        .filter(|s| !bool::from(s.is_zero()))
}

impl fmt::Debug for FixedKeyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedKeyVerifier")
            .field("table_points", &self.table.points.len())
            .finish()
    }
}
