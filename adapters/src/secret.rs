//! A secret value (token, signing key, cookie) that never prints itself.

use std::fmt;

use serde::de::{self, Unexpected};
use serde::{Deserialize, Deserializer};

/// A secret string. `Debug` and `Display` print `<redacted>`; the only way to
/// the value is [`Secret::expose`], which callers use at the last moment
/// (signing a body, setting a header).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with the value, as it is and percent-encoded, replaced by
    /// `<redacted>`: for what a platform (or a gateway in front of it)
    /// answers, which may repeat the request that carried the secret.
    pub fn hide_in(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_string();
        }
        let mut out = text.replace(&self.0, REDACTED);
        let encoded = percent_encode(&self.0);
        if encoded != self.0 {
            out = out.replace(&encoded, REDACTED);
        }
        out
    }
}

/// What stands in for a secret wherever one would have been shown.
pub const REDACTED: &str = "<redacted>";

/// `value` percent-encoded as a URL query or form would carry it (every
/// byte but ASCII letters, digits and `-._~`).
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A secret reads from a plain string (the daemon resolves `env`, `file` and
/// `credential` forms first). A value of another type is refused without
/// quoting it: serde's usual "invalid type: integer `1234`" would print the
/// secret into `check` output.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `deserialize_any`, not `deserialize_string`: with the latter, some
        // formats (serde_json) report a non-string value themselves, quoted.
        deserializer.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl SecretVisitor {
    fn refuse<E: de::Error>(&self) -> Result<Secret, E> {
        Err(E::invalid_type(Unexpected::Other("a value that is not a string"), self))
    }
}

impl de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Secret, E> {
        Ok(Secret::new(value))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Secret, E> {
        Ok(Secret(value))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_char<E: de::Error>(self, _: char) -> Result<Secret, E> {
        self.refuse()
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        self.refuse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_never_shows_the_value() {
        let secret = Secret::new("hunter2-token");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(<redacted>)");
        assert_eq!(secret.expose(), "hunter2-token");
    }

    #[test]
    fn reads_from_a_plain_string() {
        let secret: Secret = serde_json::from_str("\"hunter2-token\"").unwrap();
        assert_eq!(secret.expose(), "hunter2-token");
    }

    #[test]
    fn refuses_other_types_without_quoting_them() {
        for value in ["987654321", "-987654321", "9876.54321", "true", "[\"987654321\"]", "{\"k\": \"987654321\"}"] {
            let error = serde_json::from_str::<Secret>(value).unwrap_err().to_string();
            assert!(!error.contains("987654321") && !error.contains("true"), "{value}: {error}");
            assert!(error.contains("expected a string"), "{value}: {error}");
        }
    }
}
