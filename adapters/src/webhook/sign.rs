//! Signing as the Standard Webhooks specification does
//! (<https://www.standardwebhooks.com/>), so receivers verify with its
//! off-the-shelf libraries: `webhook-id` (herald's idempotency key),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 of
//! HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`. The timestamp inside the
//! signature lets a receiver refuse a captured request replayed later.
//!
//! Secrets are `whsec_<base64 key>`, as the specification writes them. A
//! plain secret (herald's format before) is accepted: its UTF-8 bytes are
//! the key, which a receiver's library takes as `whsec_` followed by the
//! base64 of the plain secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::Secret;
use crate::registry::BuildError;

/// The header carrying the message id (herald's idempotency key).
pub const ID_HEADER: &str = "webhook-id";
/// The header carrying the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header carrying `v1,<base64 signature>`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The header of herald's former signature, `sha256=<hex HMAC of the body>`,
/// sent besides the standard ones only when an account asks for it
/// (`legacy_signature`), while its receiver migrates.
pub const LEGACY_SIGNATURE_HEADER: &str = "X-Herald-Signature";

/// HMAC-SHA256 keyed once with an account's (or the alerts') secret.
#[derive(Clone)]
pub struct Signer(Hmac<Sha256>);

impl Signer {
    /// A signer for `secret`: `whsec_<base64>` (the key is the decoded
    /// bytes) or a plain secret (the key is its UTF-8 bytes). Errors never
    /// quote the secret.
    pub fn new(secret: &Secret) -> Result<Self, BuildError> {
        let text = secret.expose();
        let key = match text.strip_prefix(SECRET_PREFIX) {
            Some(encoded) => decode_key(encoded)?,
            None => text.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(invalid("must not be empty"));
        }
        Hmac::new_from_slice(&key).map(Signer).map_err(|_| invalid("cannot be used as an HMAC-SHA256 key"))
    }

    /// `v1,<base64>` for message `id`, sent at `timestamp` (Unix seconds),
    /// with `body`: the `webhook-signature` value.
    pub fn signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The three Standard Webhooks headers for `body`, signed now.
    pub fn headers(&self, id: &str, body: &[u8]) -> [(&'static str, String); 3] {
        let timestamp = chrono::Utc::now().timestamp();
        [
            (ID_HEADER, id.to_string()),
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (SIGNATURE_HEADER, self.signature(id, timestamp, body)),
        ]
    }

    /// herald's former `X-Herald-Signature` value, `sha256=<hex HMAC of the
    /// body>`: replayable, kept only for receivers that still check it.
    pub fn legacy_signature(&self, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// A message id for a body that has no idempotency key of its own (an
/// alert): `msg_` and the first 24 hex digits of its SHA-256, so a resent
/// alert keeps its id.
pub fn message_id(body: &[u8]) -> String {
    format!("msg_{}", &hex::encode(Sha256::digest(body))[..24])
}

fn decode_key(encoded: &str) -> Result<Vec<u8>, BuildError> {
    // The reference libraries accept unpadded base64 too.
    let trimmed = encoded.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .map_err(|_| invalid("a `whsec_` secret must be followed by base64"))
}

fn invalid(message: &str) -> BuildError {
    BuildError::InvalidSetting { field: "secret", message: message.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries' tests.
    #[test]
    fn signs_the_specification_example() {
        let signer = Signer::new(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        assert_eq!(
            signer.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_plain_secret_is_the_key_its_base64_whsec_form_names() {
        let plain = Signer::new(&Secret::new("Jefe")).unwrap();
        let standard = Signer::new(&Secret::new(format!("whsec_{}", STANDARD.encode("Jefe")))).unwrap();
        let unpadded = Signer::new(&Secret::new("whsec_SmVmZQ")).unwrap();
        for other in [&standard, &unpadded] {
            assert_eq!(plain.signature("id", 1, b"body"), other.signature("id", 1, b"body"));
        }
    }

    #[test]
    fn the_id_and_timestamp_are_signed() {
        let signer = Signer::new(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).unwrap();
        let signed = signer.signature("a", 1, b"x");
        assert_ne!(signed, signer.signature("b", 1, b"x"));
        assert_ne!(signed, signer.signature("a", 2, b"x"));
        assert_ne!(signed, signer.signature("a", 1, b"y"));
    }

    #[test]
    fn the_legacy_signature_is_the_hmac_of_the_body() {
        // RFC 4231, test case 2.
        let signer = Signer::new(&Secret::new("Jefe")).unwrap();
        assert_eq!(
            signer.legacy_signature(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_quoting_them() {
        for secret in ["", "whsec_", "whsec_not base64!sekrit"] {
            let error = Signer::new(&Secret::new(secret)).err().unwrap().to_string();
            assert!(error.starts_with("invalid setting `secret`"), "{error}");
            assert!(!error.contains("sekrit"), "{error}");
        }
    }

    #[test]
    fn message_ids_are_stable_per_body() {
        assert_eq!(message_id(b"a"), message_id(b"a"));
        assert_ne!(message_id(b"a"), message_id(b"b"));
        assert_eq!(message_id(b"a").len(), 4 + 24);
    }
}
