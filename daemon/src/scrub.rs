//! Scrubbing configured secrets out of what platforms answer. Some
//! platforms and most proxies echo the request in an error (the WeChat
//! AppSecret in a query, a Discourse key in a header dump, a webhook URL
//! with its token): an answer is scrubbed before it becomes an audit
//! record, a reason, a log line or an alert, so a secret never reaches the
//! store or `herald log`.

use herald_adapters::secret::percent_encode;
use herald_adapters::{DeliveryError, PlatformAnswer, Receipt};

use crate::config::Account;

/// What replaces a secret in an answer.
pub use herald_adapters::secret::REDACTED;

/// Shorter values are not scrubbed: they would blank out ordinary words.
const SHORTEST: usize = 6;

/// The secret values of one account, longest first.
pub struct Scrubber {
    values: Vec<String>,
}

impl Scrubber {
    /// The values to scrub for `account`: its secrets (as written and
    /// percent-encoded), its endpoint URL, and the tokens in that URL (path
    /// segments of 16 characters or more, or of 8 or more with digits and
    /// letters; query values of 6 or more).
    pub fn for_account(account: &Account) -> Scrubber {
        let mut values = Vec::new();
        for value in account.settings.sensitive_values() {
            values.push(value.to_string());
            values.push(percent_encode(value));
            if let Ok(url) = reqwest::Url::parse(value) {
                values.extend(url_tokens(&url));
            }
        }
        values.retain(|v| v.chars().count() >= SHORTEST);
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Scrubber { values }
    }

    /// `text` with every secret value replaced by [`REDACTED`].
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }

    fn option(&self, text: Option<String>) -> Option<String> {
        text.map(|t| self.text(&t))
    }

    pub fn answer(&self, answer: PlatformAnswer) -> PlatformAnswer {
        PlatformAnswer { status: answer.status, code: self.option(answer.code), message: self.option(answer.message) }
    }

    /// An attempt's outcome with every text the platform chose scrubbed.
    pub fn outcome(&self, result: Result<Receipt, DeliveryError>) -> Result<Receipt, DeliveryError> {
        match result {
            Ok(receipt) => Ok(Receipt {
                remote_id: self.option(receipt.remote_id),
                url: self.option(receipt.url),
                answer: self.answer(receipt.answer),
            }),
            Err(mut e) => {
                e.answer = self.answer(e.answer);
                e.reason = self.text(&e.reason);
                Err(e)
            }
        }
    }
}

fn url_tokens(url: &reqwest::Url) -> Vec<String> {
    let mut out = Vec::new();
    let token_like = |s: &str| {
        let n = s.chars().count();
        n >= 16 || (n >= 8 && s.chars().any(|c| c.is_ascii_digit()) && s.chars().any(|c| c.is_ascii_alphabetic()))
    };
    if let Some(segments) = url.path_segments() {
        out.extend(segments.filter(|s| token_like(s)).map(str::to_string));
    }
    out.extend(url.query_pairs().map(|(_, v)| v.into_owned()));
    if let Some(password) = url.password() {
        out.push(password.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber(values: &[&str]) -> Scrubber {
        let mut values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Scrubber { values }
    }

    #[test]
    fn every_secret_value_is_replaced_wherever_it_appears() {
        let s = scrubber(&["app-s3cret-value", "app-s3cret-value%2B"]);
        assert_eq!(s.text("appsecret=app-s3cret-value&x=app-s3cret-value%2B"), "appsecret=<redacted>&x=<redacted>");
        assert_eq!(s.text("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn url_tokens_are_path_segments_and_query_values_that_look_like_tokens() {
        let url = reqwest::Url::parse("https://hooks.example.org/services/T0ABC123/XyZ0123456789abcdef?token=q1w2e3r4")
            .unwrap();
        let tokens = url_tokens(&url);
        assert!(tokens.contains(&"T0ABC123".to_string()), "{tokens:?}");
        assert!(tokens.contains(&"XyZ0123456789abcdef".to_string()), "{tokens:?}");
        assert!(tokens.contains(&"q1w2e3r4".to_string()), "{tokens:?}");
        assert!(!tokens.contains(&"services".to_string()), "{tokens:?}");
    }

    #[test]
    fn secrets_are_also_scrubbed_percent_encoded() {
        assert_eq!(percent_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }
}
