//! Recall (`herald recall`): delete what a delivery published. Mode
//! `publish`: the receipt's id is the publish_id (or, for an article found
//! by a look-up, its article_id); `freepublish/get` turns a publish_id into
//! the article_id, and `freepublish/delete` deletes the article
//! (irreversible). Mode `mass_send`: `message/mass/delete` with the msg_id;
//! the article page stops working, but followers keep the message card they
//! received. The account's mode today decides which call is made.

use super::errors::{self, Api, PublishStatus};
use super::publish::access;
use super::wire::{MassDeleteRequest, PublishDeleteRequest, StatusAnswer, StatusRequest};
use super::{Mode, WechatAdapter};
use crate::{DeliveryError, ErrorClass, PlatformAnswer, RecallRequest, Recalled};

/// Errcodes after which herald cannot delete and a person must, in the web
/// console: the API is not authorized (48001) or banned (48004) for the account.
const CONSOLE_ONLY: [&str; 2] = ["48001", "48004"];

/// WeChat's answer to an id it does not know (`invalid media_id` and the
/// like): on `freepublish/get`, the id is not a publish_id.
const UNKNOWN_ID: &str = "40007";

/// What the operator does by hand when herald cannot delete.
const BY_HAND: &str = "sign in to mp.weixin.qq.com as the account, open 发表记录 (published records), \
                       and delete the article there";

impl WechatAdapter {
    pub(super) async fn take_down(&self, request: RecallRequest<'_>) -> Result<Recalled, DeliveryError> {
        let Some(id) = request.remote_id.filter(|id| !id.is_empty()) else {
            return Ok(request.without_remote_id("WeChat"));
        };
        let result = match self.mode {
            Mode::Publish => self.delete_published(id).await,
            Mode::MassSend => self.delete_mass_send(id).await,
        };
        match result {
            Err(error) if error.class == ErrorClass::Permanent => {
                let code = error.answer.code.as_deref().unwrap_or_default();
                if CONSOLE_ONLY.contains(&code) {
                    let place = request.url.map(|url| format!(" ({url})")).unwrap_or_default();
                    return Ok(Recalled::NotPossible {
                        what_to_do: format!("{}; {BY_HAND}{place}", error.reason),
                        answer: error.answer,
                    });
                }
                Err(error)
            }
            other => other,
        }
    }

    async fn delete_published(&self, id: &str) -> Result<Recalled, DeliveryError> {
        // A publish_id (digits) names a job; its article_id (letters too) is
        // what delete takes, and what a look-up records. An id that
        // freepublish/get does not know is taken as an article_id.
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            return self.delete_article(id.to_string()).await;
        }
        let status = self
            .with_fresh_token(|token| async move {
                let url = self.api.url(Api::PublishStatus.path())?;
                let request = self.api.client.post(url).query(&access(&token)).json(&StatusRequest { publish_id: id });
                self.call(Api::PublishStatus, &token, request).await
            })
            .await;
        let article_id = match status {
            Ok(reply) => {
                let answer: StatusAnswer = reply.parse(Api::PublishStatus)?;
                if errors::publish_status(answer.publish_status) == PublishStatus::Failed("deleted after publishing") {
                    return Ok(Recalled::TakenDown {
                        answer: reply.answer,
                        note: Some("WeChat says the article is already deleted".into()),
                    });
                }
                answer.article_id.unwrap_or_else(|| id.to_string())
            }
            Err(error) if error.class == ErrorClass::Permanent || error.answer.code.as_deref() == Some(UNKNOWN_ID) => {
                id.to_string()
            }
            Err(error) => return Err(error),
        };
        self.delete_article(article_id).await
    }

    async fn delete_article(&self, article_id: String) -> Result<Recalled, DeliveryError> {
        let reply = self
            .with_fresh_token(|token| {
                let article_id = article_id.clone();
                async move {
                    let url = self.api.url(Api::PublishDelete.path())?;
                    let body = PublishDeleteRequest { article_id: &article_id, index: 0 };
                    let request = self.api.client.post(url).query(&access(&token)).json(&body);
                    self.call(Api::PublishDelete, &token, request).await
                }
            })
            .await?;
        Ok(Recalled::TakenDown { answer: with_id(reply.answer, "article_id", &article_id), note: None })
    }

    async fn delete_mass_send(&self, msg_id: &str) -> Result<Recalled, DeliveryError> {
        let reply = self
            .with_fresh_token(|token| async move {
                let url = self.api.url(Api::MassDelete.path())?;
                let body = MassDeleteRequest { msg_id, article_idx: 0 };
                let request = self.api.client.post(url).query(&access(&token)).json(&body);
                self.call(Api::MassDelete, &token, request).await
            })
            .await?;
        Ok(Recalled::TakenDown {
            answer: with_id(reply.answer, "msg_id", msg_id),
            note: Some("the article page no longer opens, but followers keep the message card they received".into()),
        })
    }
}

/// The answer, saying which id was deleted.
fn with_id(mut answer: PlatformAnswer, name: &str, id: &str) -> PlatformAnswer {
    let deleted = format!("deleted {name} {id}");
    answer.message = Some(match answer.message.take().filter(|m| !m.is_empty() && m != "ok") {
        Some(message) => format!("{message}; {deleted}"),
        None => deleted,
    });
    answer
}
