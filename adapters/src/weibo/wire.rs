//! Weibo's wire format: the share form herald sends, and the parts of the
//! answers it reads (error bodies, status objects, the timeline, the uid).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::errors::WeiboError;

/// The form of `statuses/share.json` without a picture. Holds the token: no
/// `Debug`.
#[derive(Serialize)]
pub(super) struct Share<'a> {
    pub access_token: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rip: Option<&'a str>,
}

/// `POST statuses/destroy.json`.
#[derive(Serialize)]
pub(super) struct Destroy<'a> {
    pub access_token: &'a str,
    pub id: &'a str,
}

/// An id Weibo gives as a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Unsigned(u64),
    Signed(i64),
}

impl Id {
    fn text(&self) -> Option<String> {
        let text = match self {
            Id::Text(text) => text.trim().to_string(),
            Id::Unsigned(n) => n.to_string(),
            Id::Signed(n) => n.to_string(),
        };
        (!text.is_empty()).then_some(text)
    }
}

#[derive(Debug, Deserialize)]
struct RawStatus {
    id: Option<Id>,
    idstr: Option<String>,
    mid: Option<Id>,
    text: Option<String>,
    created_at: Option<String>,
    user: Option<RawUser>,
}

#[derive(Debug, Deserialize)]
struct RawUser {
    id: Option<Id>,
    idstr: Option<String>,
}

/// A status object, as much of it as herald uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Status {
    /// `idstr`, else `id`.
    pub id: String,
    pub mid: Option<String>,
    pub text: Option<String>,
    /// Weibo's format: `Tue May 31 17:46:55 +0800 2011`.
    pub created_at: Option<String>,
    pub user_id: Option<String>,
}

impl Status {
    fn from_raw(raw: RawStatus) -> Option<Status> {
        let id = raw.idstr.filter(|id| !id.trim().is_empty()).or_else(|| raw.id.as_ref().and_then(Id::text))?;
        let user_id = raw.user.and_then(|user| user.idstr.filter(|id| !id.is_empty()).or_else(|| user.id?.text()));
        Some(Status {
            id,
            mid: raw.mid.as_ref().and_then(Id::text),
            text: raw.text,
            created_at: raw.created_at,
            user_id,
        })
    }

    /// Parse a status object answered by `statuses/share.json`.
    pub(super) fn parse(body: &[u8]) -> Option<Status> {
        Status::from_raw(serde_json::from_slice(body).ok()?)
    }

    /// When it was created, when Weibo's date parses.
    pub(super) fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.created_at.as_deref()?;
        chrono::DateTime::parse_from_str(text.trim(), "%a %b %d %H:%M:%S %z %Y")
            .ok()
            .map(|time| time.with_timezone(&chrono::Utc))
    }
}

/// The statuses of `statuses/user_timeline.json`, newest first.
pub(super) fn timeline(body: &[u8]) -> Option<Vec<Status>> {
    #[derive(Deserialize)]
    struct Timeline {
        statuses: Vec<Value>,
    }
    let timeline: Timeline = serde_json::from_slice(body).ok()?;
    // A status that does not parse is skipped, not fatal to the lookup.
    Some(
        timeline
            .statuses
            .into_iter()
            .filter_map(|status| serde_json::from_value(status).ok().and_then(Status::from_raw))
            .collect(),
    )
}

/// The `uid` of `account/get_uid.json`.
pub(super) fn uid(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Uid {
        uid: Id,
    }
    serde_json::from_slice::<Uid>(body).ok()?.uid.text()
}

/// An error answer, whatever the HTTP status: a JSON object with an
/// `error_code` (string or number) and usually `error` and `request`.
pub(super) fn error(status: u16, body: &[u8]) -> Option<WeiboError> {
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let code = match answer.get("error_code")? {
        Value::String(code) => code.trim().to_string(),
        Value::Number(code) => code.to_string(),
        _ => return None,
    };
    let message = answer.get("error").and_then(Value::as_str).unwrap_or_default().to_string();
    Some(WeiboError { status, code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_error_codes_as_strings_or_numbers() {
        let text = br#"{"request": "/2/statuses/share.json", "error_code": "20019", "error": "repeat content!"}"#;
        let number = br#"{"request": "/2/statuses/share.json", "error_code": 20019, "error": "repeat content!"}"#;
        for body in [&text[..], &number[..]] {
            assert_eq!(
                error(403, body),
                Some(WeiboError { status: 403, code: "20019".into(), message: "repeat content!".into() })
            );
        }
        assert_eq!(error(200, br#"{"error_code": 10001}"#).unwrap().message, "");
    }

    #[test]
    fn a_body_without_an_error_code_is_no_error() {
        for body in [&b""[..], b"<html>", br#"{"id": 1}"#, br#"{"error_code": null}"#, br#"[1]"#] {
            assert_eq!(error(200, body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn reads_a_status_object() {
        let body =
            br#"{"created_at": "Sat Mar 01 09:00:03 +0800 2025", "id": 4876543210987654, "idstr": "4876543210987654",
            "mid": "4876543210987655", "text": "t", "user": {"id": 1234567890, "screen_name": "x"}}"#;
        let status = Status::parse(body).unwrap();
        assert_eq!(status.id, "4876543210987654");
        assert_eq!(status.mid.as_deref(), Some("4876543210987655"));
        assert_eq!(status.user_id.as_deref(), Some("1234567890"));
        assert_eq!(status.created().unwrap().to_rfc3339(), "2025-03-01T01:00:03+00:00");
        let minimal = Status::parse(br#"{"id": "17"}"#).unwrap();
        assert_eq!((minimal.id.as_str(), minimal.mid, minimal.user_id), ("17", None, None));
        assert_eq!(Status::parse(br#"{"text": "no id"}"#), None);
    }

    #[test]
    fn reads_the_timeline_and_the_uid() {
        let body =
            br#"{"statuses": [{"id": 2, "text": "b"}, {"no": "id"}, {"idstr": "1", "text": "a"}], "total_number": 3}"#;
        let ids: Vec<String> = timeline(body).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["2", "1"]);
        assert_eq!(uid(br#"{"uid": 1234567890}"#).as_deref(), Some("1234567890"));
        assert_eq!(uid(br#"{"uid": "42"}"#).as_deref(), Some("42"));
        assert_eq!(uid(br#"{}"#), None);
    }
}
