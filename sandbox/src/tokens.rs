//! Which access tokens (or API keys) an emulator accepts: a list, and
//! optionally every token that starts with a prefix (the `herald-sandbox`
//! binary accepts every token starting with [`SANDBOX_TOKEN_PREFIX`]).

use sha2::{Digest, Sha256};

/// The prefix of the tokens the `herald-sandbox` binary always accepts.
pub const SANDBOX_TOKEN_PREFIX: &str = "sandbox-";

/// The tokens an emulator accepts.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    exact: Vec<String>,
    prefix: Option<String>,
}

impl Tokens {
    /// Accept exactly these tokens.
    pub fn new<T: Into<String>>(tokens: impl IntoIterator<Item = T>) -> Tokens {
        Tokens { exact: tokens.into_iter().map(Into::into).collect(), prefix: None }
    }

    /// Also accept every non-empty token that starts with `prefix` and has
    /// more after it.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Tokens {
        self.prefix = Some(prefix.into());
        self
    }

    pub fn accepts(&self, token: &str) -> bool {
        if token.is_empty() {
            return false;
        }
        self.exact.iter().any(|known| known == token)
            || self.prefix.as_deref().is_some_and(|prefix| token.len() > prefix.len() && token.starts_with(prefix))
    }
}

/// Counts the tokens, never shows them.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("exact", &self.exact.len()).field("prefix", &self.prefix).finish()
    }
}

/// A stable number in `base..base + span` for a token: the user or account
/// id the emulators give the token's owner.
pub fn owner_number(token: &str, base: u64, span: u64) -> u64 {
    let digest = Sha256::digest(token.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    base + u64::from_be_bytes(bytes) % span.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_listed_and_prefixed_tokens() {
        let tokens = Tokens::new(["a-token"]).with_prefix(SANDBOX_TOKEN_PREFIX);
        assert!(tokens.accepts("a-token"));
        assert!(tokens.accepts("sandbox-anything"));
        assert!(!tokens.accepts("sandbox-"));
        assert!(!tokens.accepts(""));
        assert!(!tokens.accepts("other"));
        assert!(!Tokens::new(["x"]).accepts("sandbox-x"));
    }

    #[test]
    fn owners_are_stable_and_in_range() {
        let n = owner_number("t", 1_000, 10);
        assert_eq!(n, owner_number("t", 1_000, 10));
        assert!((1_000..1_010).contains(&n));
        assert!(!format!("{:?}", Tokens::new(["sekrit"])).contains("sekrit"));
    }
}
