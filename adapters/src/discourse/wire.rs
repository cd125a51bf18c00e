//! Discourse's wire format: the topic herald creates, and the parts of the
//! answers it reads (the created post, a topic, errors, the current user).

use serde::{Deserialize, Serialize};

/// The JSON body of `POST /posts.json` that creates a topic.
#[derive(Debug, Serialize)]
pub(super) struct NewTopic<'a> {
    pub title: &'a str,
    pub raw: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<u64>,
    pub external_id: &'a str,
}

/// The post answered by `POST /posts.json`.
#[derive(Debug, Deserialize)]
pub(super) struct Post {
    pub topic_id: u64,
    pub topic_slug: String,
}

/// A topic (`GET /t/<slug>/<id>.json`).
#[derive(Debug, Deserialize)]
pub(super) struct Topic {
    pub id: u64,
    pub slug: String,
}

/// `GET /session/current.json`.
#[derive(Debug, Deserialize)]
pub(super) struct Session {
    pub current_user: CurrentUser,
}

#[derive(Debug, Deserialize)]
pub(super) struct CurrentUser {
    pub username: String,
}

/// An error answer: `{"errors": [...], "error_type": "...", "extras": {...}}`.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct ErrorBody {
    #[serde(default)]
    pub errors: Vec<String>,
    pub error_type: Option<String>,
    pub extras: Option<Extras>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
pub(super) struct Extras {
    pub wait_seconds: Option<f64>,
}

impl ErrorBody {
    pub(super) fn parse(body: &[u8]) -> ErrorBody {
        serde_json::from_slice(body).unwrap_or_default()
    }

    /// The errors joined, when there are any.
    pub(super) fn message(&self) -> Option<String> {
        (!self.errors.is_empty()).then(|| self.errors.join("; "))
    }
}

/// The slug and id of the topic a redirect points at: a `Location` such as
/// `/t/<slug>/<id>.json`, `/forum/t/<slug>/<id>` or an absolute URL.
pub(super) fn topic_from_location(location: &str) -> Option<(String, u64)> {
    let path = match location.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
        None => location,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = segments.iter().rposition(|s| *s == "t")?;
    let slug = segments.get(at + 1)?;
    let id = segments.get(at + 2)?.trim_end_matches(".json").parse().ok()?;
    Some((slug.to_string(), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_category_is_left_out_when_unset() {
        let topic = NewTopic { title: "t", raw: "r", category: None, external_id: "d" };
        assert_eq!(serde_json::to_string(&topic).unwrap(), r#"{"title":"t","raw":"r","external_id":"d"}"#);
    }

    #[test]
    fn reads_error_bodies() {
        let body = br#"{"errors": ["Title is too short", "Body is too similar"], "error_type": "invalid", "extras": {"wait_seconds": 7}}"#;
        let error = ErrorBody::parse(body);
        assert_eq!(error.message().as_deref(), Some("Title is too short; Body is too similar"));
        assert_eq!(error.error_type.as_deref(), Some("invalid"));
        assert_eq!(error.extras.unwrap().wait_seconds, Some(7.0));
        assert_eq!(ErrorBody::parse(b"<html>"), ErrorBody::default());
    }

    #[test]
    fn finds_the_topic_in_a_redirect() {
        let expected = Some(("fraud-alert".to_string(), 42));
        assert_eq!(topic_from_location("/t/fraud-alert/42.json"), expected);
        assert_eq!(topic_from_location("/forum/t/fraud-alert/42"), expected);
        assert_eq!(topic_from_location("https://forum.example.org/t/fraud-alert/42.json?page=1"), expected);
        assert_eq!(topic_from_location("/t/fraud-alert"), None);
        assert_eq!(topic_from_location("/latest"), None);
        assert_eq!(topic_from_location("/t/slug/not-a-number"), None);
    }
}
