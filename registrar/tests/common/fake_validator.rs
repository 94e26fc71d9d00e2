//! The fake token check shared by the registrar's socket tests (integration tests and the in-crate
//! `src/mra/tests.rs`, both by `#[path]`): the token `good-alice` is alice's, any other is refused.
//! The includer imports `BearerError`, `BearerValidator` and `TokenIdentity` under those names,
//! since the two kinds of test crate reach them by different paths.

use super::{BearerError, BearerValidator, TokenIdentity};

/// Accepts exactly `good-alice` (user `alice`, scope `sip`); refuses anything else as unknown.
pub(crate) struct FakeValidator;

impl BearerValidator for FakeValidator {
    fn validate(&self, token: &str, _now: i64) -> Result<TokenIdentity, BearerError> {
        match token {
            "good-alice" => Ok(TokenIdentity {
                user: "alice".into(),
                scope: "sip".into(),
            }),
            _ => Err(BearerError {
                description: "unknown token".into(),
            }),
        }
    }
}
