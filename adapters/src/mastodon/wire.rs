//! Mastodon's wire format: the status herald creates, and the parts of the
//! answers it reads.

use serde::{Deserialize, Serialize};

/// The JSON body of `POST /api/v1/statuses`.
#[derive(Debug, Serialize)]
pub(super) struct NewStatus<'a> {
    pub status: &'a str,
    pub visibility: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spoiler_text: Option<&'a str>,
    /// The attachments uploaded for this status, in order.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub media_ids: &'a [String],
}

/// An uploaded attachment (`POST /api/v2/media`, `GET /api/v1/media/<id>`).
#[derive(Debug, Deserialize)]
pub(super) struct Attachment {
    pub id: String,
    #[serde(default)]
    pub url: Option<String>,
}

/// A created status.
#[derive(Debug, Deserialize)]
pub(super) struct Status {
    pub id: String,
    pub url: Option<String>,
    pub uri: Option<String>,
}

/// The account of `verify_credentials`.
#[derive(Debug, Deserialize)]
pub(super) struct Account {
    pub acct: String,
}

/// The `error` of an error answer: `{"error": "..."}`.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Error {
        error: String,
    }
    serde_json::from_slice::<Error>(body).ok().map(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_options_are_left_out() {
        let body = NewStatus { status: "s", visibility: "public", language: None, spoiler_text: None, media_ids: &[] };
        assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"status":"s","visibility":"public"}"#);
    }

    #[test]
    fn reads_error_messages() {
        let body = br#"{"error": "Validation failed: Text character limit of 500 exceeded"}"#;
        assert_eq!(error_message(body).as_deref(), Some("Validation failed: Text character limit of 500 exceeded"));
        assert_eq!(error_message(b"<html>"), None);
    }
}
