//! Password hashing with Argon2id (PHC strings, RFC 9106 parameters of the `argon2` crate).

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::TokenError;

/// Hashes `password` with Argon2id and a random 16-byte salt into a PHC string.
pub fn hash_password(password: &str) -> Result<String, TokenError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| TokenError::PasswordHash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| TokenError::PasswordHash(e.to_string()))
}

/// Whether `password` matches the PHC string; false for any unparsable hash.
pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        // The comparison of the derived hash is constant-time inside `argon2`.
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// Checks a login against a user's stored hash, spending the same Argon2 work when there is no
/// user (or no usable hash), so response time does not reveal which usernames exist.
pub(crate) fn verify_login(stored_phc: Option<&str>, password: &str) -> bool {
    match stored_phc.filter(|phc| PasswordHash::new(phc).is_ok()) {
        Some(phc) => verify_password(phc, password),
        None => {
            let _ = verify_password(dummy_hash(), password);
            false
        }
    }
}

/// A hash of nothing anyone knows, made once with the same parameters as real ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let secret: [u8; 32] = rand::random();
        // Hashing cannot fail for default parameters and a valid salt; if it ever did, an empty
        // PHC string makes every dummy check fail fast, which still denies the login.
        hash_password(&hex::encode(secret)).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(verify_password(&phc, "correct horse"));
        assert!(!verify_password(&phc, "correct horse "));
        assert!(!verify_password(&phc, ""));
    }

    #[test]
    fn salts_differ_between_hashes() {
        assert_ne!(hash_password("pw").unwrap(), hash_password("pw").unwrap());
    }

    #[test]
    fn an_unparsable_hash_never_verifies() {
        assert!(!verify_password("", ""));
        assert!(!verify_password("not-a-phc", "not-a-phc"));
    }

    #[test]
    fn login_without_a_user_is_refused() {
        assert!(!verify_login(None, ""));
        assert!(!verify_login(Some("garbage"), "garbage"));
        assert!(verify_login(Some(&hash_password("pw").unwrap()), "pw"));
        assert!(dummy_hash().starts_with("$argon2id$"));
    }
}
