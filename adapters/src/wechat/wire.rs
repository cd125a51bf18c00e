//! WeChat's wire format: the JSON bodies herald sends and the parts of the
//! answers it reads. Request types that carry a secret have no `Debug`;
//! answers that carry a token hide it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `POST cgi-bin/stable_token`.
#[derive(Serialize)]
pub(super) struct StableTokenRequest<'a> {
    pub(super) grant_type: &'static str,
    pub(super) appid: &'a str,
    pub(super) secret: &'a str,
    pub(super) force_refresh: bool,
}

/// The answer of both token calls.
#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    pub(super) access_token: String,
    pub(super) expires_in: i64,
}

impl fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// The `errcode`/`errmsg` every answer may carry. Absent means success.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Status {
    #[serde(default, deserialize_with = "number_or_string")]
    pub(super) errcode: Option<i64>,
    #[serde(default)]
    pub(super) errmsg: Option<String>,
}

/// `material/add_material` (the cover, `type=thumb`).
#[derive(Debug, Deserialize)]
pub(super) struct MaterialAnswer {
    pub(super) media_id: String,
}

/// `media/uploadimg` (an image inside the article).
#[derive(Debug, Deserialize)]
pub(super) struct ImageAnswer {
    pub(super) url: String,
}

/// `draft/add`.
#[derive(Debug, Serialize)]
pub(super) struct DraftRequest<'a> {
    pub(super) articles: [Article<'a>; 1],
}

/// One article of a draft.
#[derive(Debug, Serialize)]
pub(super) struct Article<'a> {
    pub(super) title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) author: Option<&'a str>,
    pub(super) digest: &'a str,
    pub(super) content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) content_source_url: Option<&'a str>,
    pub(super) thumb_media_id: &'a str,
    pub(super) need_open_comment: u8,
    pub(super) only_fans_can_comment: u8,
}

#[derive(Debug, Deserialize)]
pub(super) struct DraftAnswer {
    pub(super) media_id: String,
}

/// `freepublish/submit`.
#[derive(Debug, Serialize)]
pub(super) struct SubmitRequest<'a> {
    pub(super) media_id: &'a str,
}

#[derive(Debug, Deserialize)]
pub(super) struct SubmitAnswer {
    #[serde(deserialize_with = "id")]
    pub(super) publish_id: String,
}

/// `freepublish/get`.
#[derive(Debug, Serialize)]
pub(super) struct StatusRequest<'a> {
    pub(super) publish_id: &'a str,
}

#[derive(Debug, Deserialize)]
pub(super) struct StatusAnswer {
    pub(super) publish_status: i64,
    /// Set once published: what `freepublish/delete` takes.
    #[serde(default, deserialize_with = "optional_id")]
    pub(super) article_id: Option<String>,
    #[serde(default)]
    pub(super) article_detail: Option<ArticleDetail>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ArticleDetail {
    #[serde(default)]
    pub(super) item: Vec<ArticleItem>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ArticleItem {
    #[serde(default)]
    pub(super) article_url: Option<String>,
}

impl StatusAnswer {
    /// The URL of the (first, only) published article.
    pub(super) fn article_url(&self) -> Option<String> {
        self.article_detail.as_ref()?.item.iter().find_map(|item| item.article_url.clone())
    }
}

/// `freepublish/batchget`: a page of the published articles.
#[derive(Debug, Serialize)]
pub(super) struct BatchGetRequest {
    pub(super) offset: u32,
    pub(super) count: u32,
    pub(super) no_content: u8,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct BatchGetAnswer {
    #[serde(default)]
    pub(super) total_count: u32,
    #[serde(default)]
    pub(super) item: Vec<PublishedItem>,
}

/// One publish job in `freepublish/batchget`.
#[derive(Debug, Deserialize)]
pub(super) struct PublishedItem {
    #[serde(default, deserialize_with = "optional_id")]
    pub(super) article_id: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub(super) update_time: i64,
    #[serde(default)]
    pub(super) content: Option<PublishedContent>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PublishedContent {
    #[serde(default)]
    pub(super) news_item: Vec<NewsItem>,
}

/// One article of a published job, as `freepublish/batchget` shows it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct NewsItem {
    #[serde(default)]
    pub(super) title: String,
    #[serde(default)]
    pub(super) digest: String,
    #[serde(default)]
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) is_deleted: bool,
}

/// `freepublish/delete`: `index` 0 deletes every article of the publish.
#[derive(Debug, Serialize)]
pub(super) struct PublishDeleteRequest<'a> {
    pub(super) article_id: &'a str,
    pub(super) index: u32,
}

/// `message/mass/delete`: `article_idx` 0 deletes every article of the send.
#[derive(Debug, Serialize)]
pub(super) struct MassDeleteRequest<'a> {
    pub(super) msg_id: &'a str,
    pub(super) article_idx: u32,
}

/// `draft/delete`.
#[derive(Debug, Serialize)]
pub(super) struct DraftDeleteRequest<'a> {
    pub(super) media_id: &'a str,
}

/// `message/mass/sendall` to every follower.
#[derive(Debug, Serialize)]
pub(super) struct MassSendRequest<'a> {
    pub(super) filter: MassFilter,
    pub(super) mpnews: MassNews<'a>,
    pub(super) msgtype: &'static str,
    pub(super) send_ignore_reprint: u8,
    pub(super) clientmsgid: &'a str,
}

#[derive(Debug, Serialize)]
pub(super) struct MassFilter {
    pub(super) is_to_all: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct MassNews<'a> {
    pub(super) media_id: &'a str,
}

/// The answer of `sendall`, and of a repeated clientmsgid (45065), which
/// names the original send.
#[derive(Debug, Deserialize)]
pub(super) struct MassSendAnswer {
    #[serde(default, deserialize_with = "optional_id")]
    pub(super) msg_id: Option<String>,
}

/// WeChat sends some ids as numbers, others as strings.
fn id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(text) => Ok(text),
        Value::Number(number) => Ok(number.to_string()),
        _ => Err(serde::de::Error::custom("expected a string or a number")),
    }
}

fn optional_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::String(text) => Ok(Some(text)),
        Value::Number(number) => Ok(Some(number.to_string())),
        _ => Err(serde::de::Error::custom("expected a string or a number")),
    }
}

fn number_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::Number(number) => number.as_i64().map(Some).ok_or_else(|| serde::de::Error::custom("not an integer")),
        Value::String(text) => text.trim().parse().map(Some).map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("expected a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcode_reads_from_numbers_and_strings_and_may_be_absent() {
        let status: Status = serde_json::from_str(r#"{"errcode": 42001, "errmsg": "expired"}"#).unwrap();
        assert_eq!((status.errcode, status.errmsg.as_deref()), (Some(42001), Some("expired")));
        let status: Status = serde_json::from_str(r#"{"errcode": "-1"}"#).unwrap();
        assert_eq!(status.errcode, Some(-1));
        let status: Status = serde_json::from_str(r#"{"media_id": "m"}"#).unwrap();
        assert_eq!(status.errcode, None);
    }

    #[test]
    fn ids_read_from_numbers_and_strings() {
        let answer: SubmitAnswer = serde_json::from_str(r#"{"errcode": 0, "publish_id": 2247483700}"#).unwrap();
        assert_eq!(answer.publish_id, "2247483700");
        let answer: SubmitAnswer = serde_json::from_str(r#"{"publish_id": "100000001"}"#).unwrap();
        assert_eq!(answer.publish_id, "100000001");
        let answer: MassSendAnswer = serde_json::from_str(r#"{"errcode": 45065, "msg_id": 3147494552}"#).unwrap();
        assert_eq!(answer.msg_id.as_deref(), Some("3147494552"));
    }

    #[test]
    fn the_article_url_is_the_first_item_with_one() {
        let answer: StatusAnswer = serde_json::from_str(
            r#"{"publish_id": "1", "publish_status": 0,
                "article_detail": {"count": 1, "item": [{"idx": 1, "article_url": "https://mp.weixin.qq.com/s/x"}]}}"#,
        )
        .unwrap();
        assert_eq!(answer.article_url().as_deref(), Some("https://mp.weixin.qq.com/s/x"));
        let pending: StatusAnswer = serde_json::from_str(r#"{"publish_status": 1}"#).unwrap();
        assert_eq!(pending.article_url(), None);
    }

    #[test]
    fn a_batchget_page_reads_with_numeric_or_text_ids() {
        let page: BatchGetAnswer = serde_json::from_str(
            r#"{"total_count": 2, "item_count": 2, "item": [
                {"article_id": "A1", "update_time": 1700000000, "content": {"news_item": [
                    {"title": "t", "digest": "d", "content": "<p>x</p>", "url": "https://mp/s/1", "is_deleted": false}]}},
                {"article_id": 42, "update_time": 1600000000}]}"#,
        )
        .unwrap();
        assert_eq!(page.total_count, 2);
        assert_eq!(page.item[0].article_id.as_deref(), Some("A1"));
        assert_eq!(page.item[0].content.as_ref().unwrap().news_item[0].title, "t");
        assert_eq!(page.item[1].article_id.as_deref(), Some("42"));
        assert!(page.item[1].content.is_none());
    }

    #[test]
    fn a_token_answer_hides_the_token() {
        let answer: TokenAnswer = serde_json::from_str(r#"{"access_token": "T0KEN", "expires_in": 7200}"#).unwrap();
        assert!(!format!("{answer:?}").contains("T0KEN"));
    }
}
