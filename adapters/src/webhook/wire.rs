//! The webhook's wire format: the JSON document herald POSTs, and the parts
//! of a receiver's answer it reads.

use serde::Serialize;
use serde_json::Value;

use crate::PublishRequest;

/// The body of one webhook delivery. Every field is always present (`null`
/// when empty), so receivers can rely on one shape.
#[derive(Debug, Serialize)]
pub(super) struct Delivery<'a> {
    delivery_id: &'a str,
    post_id: &'a str,
    account: &'a str,
    occurrence: &'a str,
    attempt: u32,
    content: Content<'a>,
}

#[derive(Debug, Serialize)]
struct Content<'a> {
    title: Option<&'a str>,
    text: &'a str,
    link: Option<&'a str>,
    images: &'a [String],
}

impl<'a> Delivery<'a> {
    pub(super) fn new(request: &PublishRequest<'a>) -> Self {
        let content = request.content;
        Delivery {
            delivery_id: request.delivery_id,
            post_id: request.post_id,
            account: request.account_id,
            occurrence: request.occurrence,
            attempt: request.attempt,
            content: Content {
                title: content.title.as_deref(),
                text: &content.text,
                link: content.link.as_deref(),
                images: &content.images,
            },
        }
    }
}

/// The body of a recall event (`herald recall`): POSTed to the same URL,
/// signed like a delivery, with `type` telling it apart from one (a
/// delivery has no `type`).
#[derive(Debug, Serialize)]
pub(super) struct Recall<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delivery_id: &'a str,
    post_id: &'a str,
    account: &'a str,
    /// The `id` and `url` the receiver answered to the delivery, if any.
    remote_id: Option<&'a str>,
    url: Option<&'a str>,
}

/// The `type` of a recall event.
pub const RECALL_TYPE: &str = "herald.recall";

impl<'a> Recall<'a> {
    pub(super) fn new(request: &crate::RecallRequest<'a>) -> Self {
        Recall {
            kind: RECALL_TYPE,
            delivery_id: request.delivery_id,
            post_id: request.post_id,
            account: request.account_id,
            remote_id: request.remote_id,
            url: request.url,
        }
    }
}

/// What a receiver's 2xx answer says about the published item: a string (or
/// integer) `id` and a string `url`, when the body is a JSON object with them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Published {
    pub(super) id: Option<String>,
    pub(super) url: Option<String>,
}

impl Published {
    pub(super) fn parse(body: &[u8]) -> Published {
        let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
            return Published::default();
        };
        let id = match answer.get("id") {
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Number(id)) if id.is_u64() || id.is_i64() => Some(id.to_string()),
            _ => None,
        };
        let url = answer.get("url").and_then(Value::as_str).map(str::to_string);
        Published { id, url }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(body: &str) -> Published {
        Published::parse(body.as_bytes())
    }

    #[test]
    fn reads_id_and_url_when_present() {
        let both = published(r#"{"id": "17", "url": "https://example.org/p/17", "extra": 1}"#);
        assert_eq!(both, Published { id: Some("17".into()), url: Some("https://example.org/p/17".into()) });
        assert_eq!(published(r#"{"id": 17}"#), Published { id: Some("17".into()), url: None });
        assert_eq!(published(r#"{"url": "u"}"#), Published { id: None, url: Some("u".into()) });
    }

    #[test]
    fn anything_else_gives_nothing() {
        for body in ["", "ok", "[1]", r#"{"id": 1.5, "url": 3}"#, r#"{"id": {"x": 1}}"#, r#"{"id": "1""#] {
            assert_eq!(published(body), Published::default(), "{body:?}");
        }
    }
}
