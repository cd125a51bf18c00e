//! Calling WeChat: one request, its answer read whole, and its `errcode`
//! classified through [`super::errors`]. HTTP statuses count only when the
//! body carries no errcode. No URL (it holds the access_token or the
//! secret) ever reaches an error or a log.

use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::{RequestBuilder, Url};
use serde::de::DeserializeOwned;

use super::errors::{self, Api, Verdict};
use super::wire::Status;
use crate::http::{self, Answer};
use crate::{DeliveryError, PlatformAnswer};

/// The longest `Retry-After` honoured on an HTTP 429 (WeChat sends errcodes
/// instead, but a proxy in between may not).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The HTTP side of one WeChat account.
pub(super) struct WechatApi {
    pub(super) client: reqwest::Client,
    /// The base URL, without a trailing slash.
    base: String,
}

/// A successful answer (errcode 0 or absent), or a call the platform says
/// was already made ([`Verdict::AlreadyDone`]).
pub(super) struct Reply {
    pub(super) body: Vec<u8>,
    pub(super) answer: PlatformAnswer,
    pub(super) already_done: bool,
}

impl Reply {
    /// Read the body as `T`; an unreadable success answer is transient and
    /// may have done its work.
    pub(super) fn parse<T: DeserializeOwned>(&self, api: Api) -> Result<T, DeliveryError> {
        serde_json::from_slice(&self.body).map_err(|error| {
            DeliveryError::transient(self.answer.clone(), format!("WeChat {}: unexpected answer: {error}", api.path()))
                .maybe_sent()
        })
    }
}

impl WechatApi {
    pub(super) fn new(client: reqwest::Client, base: &str) -> Self {
        WechatApi { client, base: base.trim_end_matches('/').to_string() }
    }

    /// The URL of `path` below the base URL.
    pub(super) fn url(&self, path: &str) -> Result<Url, DeliveryError> {
        Url::parse(&format!("{}/{path}", self.base)).map_err(|error| {
            DeliveryError::permanent(PlatformAnswer::default(), format!("bad WeChat URL for {path}: {error}"))
        })
    }

    /// Send one request and classify its answer.
    pub(super) async fn send(&self, api: Api, request: RequestBuilder) -> Result<Reply, DeliveryError> {
        let started = Instant::now();
        let response = request.send().await.map_err(|error| {
            let error = http::transport_error(error);
            tracing::debug!(api = api.path(), maybe_sent = error.maybe_sent, error = %error.reason, "wechat request failed");
            DeliveryError { reason: format!("WeChat {}: {}", api.path(), error.reason), ..error }
        })?;
        let answer = Answer::read(response).await;
        let status: Option<Status> = serde_json::from_slice(&answer.body).ok();
        let errcode = status.as_ref().and_then(|status| status.errcode);
        tracing::debug!(
            api = api.path(),
            status = answer.status.as_u16(),
            errcode = errcode.unwrap_or(0),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "wechat answered"
        );

        let Some(status) = status else {
            // Not JSON: only the HTTP status can tell.
            answer.error_for_status(MAX_RETRY_AFTER).map_err(|error| DeliveryError {
                reason: format!("WeChat {}: {}", api.path(), error.reason),
                ..error
            })?;
            let platform_answer = answer.platform_answer();
            return Err(DeliveryError::transient(
                platform_answer,
                format!("WeChat {}: the answer is not JSON", api.path()),
            )
            .maybe_sent());
        };
        let platform_answer = PlatformAnswer {
            status: Some(answer.status.as_u16()),
            code: errcode.map(|code| code.to_string()),
            message: status.errmsg.clone(),
        };
        match errcode.and_then(|code| errors::classify(api, code).map(|verdict| (code, verdict))) {
            None => {
                answer.error_for_status(MAX_RETRY_AFTER).map_err(|error| DeliveryError {
                    reason: format!("WeChat {}: {}", api.path(), error.reason),
                    ..error
                })?;
                Ok(Reply { body: answer.body, answer: platform_answer, already_done: false })
            }
            Some((_, (Verdict::AlreadyDone, _))) => {
                Ok(Reply { body: answer.body, answer: platform_answer, already_done: true })
            }
            Some((code, (verdict, meaning))) => {
                let class = errors::error_class(verdict, Utc::now());
                let reason = match verdict {
                    Verdict::NeedsPerson => {
                        format!(
                            "WeChat {}: {meaning} (errcode {code}); a person must act in the web console",
                            api.path()
                        )
                    }
                    _ => format!("WeChat {}: {meaning} (errcode {code})", api.path()),
                };
                let error = DeliveryError::new(class, platform_answer, reason);
                // WeChat's quotas (45009, 45011, 45028) belong to the AppID.
                Err(if matches!(verdict, Verdict::Rate(_)) { error.shared_limit() } else { error })
            }
        }
    }
}
