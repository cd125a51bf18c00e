//! Tieba's answers: the parts herald reads. Codes and flags arrive as
//! strings or numbers.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// `error_code`/`error_msg`, present on every answer.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Status {
    #[serde(default, deserialize_with = "number")]
    pub(super) error_code: Option<i64>,
    #[serde(default)]
    pub(super) error_msg: Option<String>,
}

/// `POST /c/s/login`.
#[derive(Debug, Deserialize)]
pub(super) struct LoginAnswer {
    #[serde(default)]
    pub(super) anti: Option<Anti>,
}

#[derive(Deserialize)]
pub(super) struct Anti {
    #[serde(default)]
    pub(super) tbs: Option<String>,
}

impl std::fmt::Debug for Anti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anti").field("tbs", &self.tbs.as_ref().map(|_| "<redacted>")).finish()
    }
}

/// `POST /c/c/thread/add`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ThreadAnswer {
    #[serde(default)]
    pub(super) data: Option<ThreadData>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ThreadData {
    #[serde(default, deserialize_with = "id")]
    pub(super) tid: Option<String>,
    #[serde(default)]
    pub(super) info: Option<ThreadInfo>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ThreadInfo {
    #[serde(default, deserialize_with = "number")]
    pub(super) need_vcode: Option<i64>,
}

impl ThreadAnswer {
    pub(super) fn needs_captcha(&self) -> bool {
        self.data.as_ref().and_then(|data| data.info.as_ref()).and_then(|info| info.need_vcode).is_some_and(|n| n > 0)
    }

    /// The new thread's id; "0" or empty is none.
    pub(super) fn tid(&self) -> Option<&str> {
        self.data.as_ref()?.tid.as_deref().filter(|tid| !tid.is_empty() && *tid != "0")
    }
}

fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    })
}

fn id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Number(number) => Some(number.to_string()),
        Value::String(text) => Some(text),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_flags_read_from_strings_or_numbers() {
        let status: Status = serde_json::from_str(r#"{"error_code": "220034", "error_msg": "busy"}"#).unwrap();
        assert_eq!(status.error_code, Some(220034));
        let status: Status = serde_json::from_str(r#"{"error_code": 0}"#).unwrap();
        assert_eq!(status.error_code, Some(0));

        let answer: ThreadAnswer =
            serde_json::from_str(r#"{"error_code": "0", "data": {"tid": 9001, "info": {"need_vcode": "0"}}}"#).unwrap();
        assert_eq!((answer.tid(), answer.needs_captcha()), (Some("9001"), false));
        let captcha: ThreadAnswer = serde_json::from_str(r#"{"data": {"info": {"need_vcode": 1}}}"#).unwrap();
        assert_eq!((captcha.tid(), captcha.needs_captcha()), (None, true));
        let zero: ThreadAnswer = serde_json::from_str(r#"{"data": {"tid": "0"}}"#).unwrap();
        assert_eq!(zero.tid(), None);
    }

    #[test]
    fn the_tbs_never_prints() {
        let answer: LoginAnswer = serde_json::from_str(r#"{"anti": {"tbs": "T8S"}}"#).unwrap();
        assert!(!format!("{answer:?}").contains("T8S"));
    }
}
