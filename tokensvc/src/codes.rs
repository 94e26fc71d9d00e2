//! Authorization codes (RFC 6749 §4.1.2): random, single-use, short-lived, bound to the client, the
//! redirect URI, the user and the PKCE challenge. Kept in memory by their hash; a redeemed code is
//! remembered a while longer so that a second use can revoke what the first one got (§4.1.2:
//! "SHOULD revoke ... all tokens previously issued based on that authorization code").

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dashmap::DashMap;
use sha2::{Digest, Sha256};

/// Most codes kept at once (pending and recently used).
const MAX_CODES: usize = 100_000;
/// How long a used code is remembered after it would have expired, to spot a replay.
const REMEMBER_USED_SECS: i64 = 600;

/// What an authorization code stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodeGrant {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) user: String,
    pub(crate) scope: String,
    pub(crate) code_challenge: String,
    pub(crate) expires_at: i64,
}

#[derive(Debug)]
enum CodeState {
    Unused(CodeGrant),
    /// Redeemed; `family` is the refresh-token family its tokens started (empty until known).
    Used {
        family: String,
        forget_at: i64,
    },
}

/// What presenting a code found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Redeem {
    /// First use of a live code; it is now used.
    Fresh(CodeGrant),
    /// The code was redeemed before: revoke this refresh-token family.
    Replayed(String),
    /// Unknown or expired.
    Unknown,
}

/// The live authorization codes of this node.
#[derive(Debug, Default)]
pub(crate) struct Codes {
    map: DashMap<String, CodeState>,
}

impl Codes {
    /// Stores a grant and returns its new code (32 random bytes, base64url).
    pub(crate) fn issue(&self, grant: CodeGrant, now: i64) -> String {
        if self.map.len() >= MAX_CODES {
            self.map.retain(|_, s| match s {
                CodeState::Unused(g) => g.expires_at > now,
                CodeState::Used { forget_at, .. } => *forget_at > now,
            });
        }
        let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        self.map.insert(hash(&code), CodeState::Unused(grant));
        code
    }

    /// Redeems a code; exactly one caller sees `Fresh` (the shard lock makes the swap atomic).
    pub(crate) fn redeem(&self, code: &str, now: i64) -> Redeem {
        let Some(mut entry) = self.map.get_mut(&hash(code)) else {
            return Redeem::Unknown;
        };
        match &*entry {
            CodeState::Used { family, forget_at } if *forget_at > now => {
                Redeem::Replayed(family.clone())
            }
            CodeState::Used { .. } => Redeem::Unknown,
            CodeState::Unused(g) if g.expires_at <= now => Redeem::Unknown,
            CodeState::Unused(g) => {
                let grant = g.clone();
                *entry = CodeState::Used {
                    family: String::new(),
                    forget_at: grant.expires_at.saturating_add(REMEMBER_USED_SECS),
                };
                Redeem::Fresh(grant)
            }
        }
    }

    /// Records which refresh-token family a redeemed code started.
    pub(crate) fn set_family(&self, code: &str, family: &str) {
        if let Some(mut entry) = self.map.get_mut(&hash(code)) {
            if let CodeState::Used { family: f, .. } = &mut *entry {
                *f = family.to_owned();
            }
        }
    }
}

fn hash(code: &str) -> String {
    hex::encode(Sha256::digest(code.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn grant() -> CodeGrant {
        CodeGrant {
            client_id: "softphone".into(),
            redirect_uri: "http://127.0.0.1:1/cb".into(),
            user: "jdoe".into(),
            scope: "sip:register".into(),
            code_challenge: "c".into(),
            expires_at: NOW + 60,
        }
    }

    #[test]
    fn a_code_works_once_and_a_replay_names_the_family() {
        let codes = Codes::default();
        let code = codes.issue(grant(), NOW);
        assert_eq!(code.len(), 43);
        assert_eq!(codes.redeem(&code, NOW + 1), Redeem::Fresh(grant()));
        codes.set_family(&code, "fam-1");
        assert_eq!(
            codes.redeem(&code, NOW + 2),
            Redeem::Replayed("fam-1".into())
        );
        assert_eq!(codes.redeem("nope", NOW), Redeem::Unknown);
    }

    #[test]
    fn an_expired_code_is_unknown() {
        let codes = Codes::default();
        let code = codes.issue(grant(), NOW);
        assert_eq!(codes.redeem(&code, NOW + 60), Redeem::Unknown);
    }

    #[test]
    fn concurrent_redeems_have_one_winner() {
        let codes = std::sync::Arc::new(Codes::default());
        let code = codes.issue(grant(), NOW);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (codes, code) = (codes.clone(), code.clone());
                std::thread::spawn(move || matches!(codes.redeem(&code, NOW), Redeem::Fresh(_)))
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1);
    }
}
