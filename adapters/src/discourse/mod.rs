//! Discourse: create one topic through `POST /posts.json`, with the
//! `Api-Key` and `Api-Username` headers and the delivery id as the topic's
//! `external_id`.
//!
//! A topic is found again by its external id (`GET
//! /t/external_id/<id>.json`, which Discourse answers with a redirect to the
//! topic), so an uncertain delivery is looked for before it is re-sent, and
//! a 422 on such a retry is checked the same way. Statuses are classified by
//! the one table in `errors.rs`; a 429 waits for `Retry-After` or
//! `extras.wait_seconds`. Titles are required. Images are not uploaded
//! (uploads are not supported yet): `render` refuses a post with images.

mod errors;
mod wire;

use std::fmt;
use std::time::Instant;

use reqwest::StatusCode;
use reqwest::header::{HeaderValue, LOCATION};
use serde::Deserialize;

use crate::endpoint::BaseUrl;
use crate::http::{self, Answer};
use crate::registry::{BuildError, HttpOptions, Platform};
use crate::{
    Adapter, BoxFuture, ContentProblem, DeliveryError, PlatformAnswer, PostContent, Probe, PublishRequest,
    RecallRequest, Recalled, Receipt, Rendered, Secret,
};

/// The settings that hold secrets.
pub const SECRET_FIELDS: &[&str] = &["api_key"];

pub const API_KEY_HEADER: &str = "Api-Key";
pub const API_USERNAME_HEADER: &str = "Api-Username";

const POSTS_PATH: &str = "/posts.json";
const SESSION_PATH: &str = "/session/current.json";

/// The `[accounts.<id>]` settings of a Discourse account. The length
/// limits default to Discourse's own defaults; a forum may change them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The forum, e.g. `https://forum.example.org` (required).
    pub base_url: String,
    pub api_key: Secret,
    /// The user the topics are created as.
    pub api_username: String,
    /// The category id; the forum's default category when unset.
    pub category: Option<u64>,
    #[serde(default = "defaults::min_title_length")]
    pub min_title_length: usize,
    #[serde(default = "defaults::max_title_length")]
    pub max_title_length: usize,
    /// The shortest first post, in characters.
    #[serde(default = "defaults::min_length")]
    pub min_length: usize,
    /// The longest post, in characters.
    #[serde(default = "defaults::max_length")]
    pub max_length: usize,
}

/// Discourse's default site settings.
mod defaults {
    pub(super) fn min_title_length() -> usize {
        15
    }
    pub(super) fn max_title_length() -> usize {
        255
    }
    pub(super) fn min_length() -> usize {
        20
    }
    pub(super) fn max_length() -> usize {
        32_000
    }
}

/// A Discourse account, ready to publish.
pub struct DiscourseAdapter {
    base: BaseUrl,
    /// Marked sensitive.
    api_key: HeaderValue,
    api_username: HeaderValue,
    category: Option<u64>,
    title_length: (usize, usize),
    length: (usize, usize),
    client: reqwest::Client,
}

impl DiscourseAdapter {
    pub fn new(settings: Settings, http: HttpOptions) -> Result<Self, BuildError> {
        let base = BaseUrl::parse(Some(&settings.base_url), None)?;
        let key = settings.api_key.expose();
        if key.trim().is_empty() {
            return Err(invalid("api_key", "must not be empty"));
        }
        let mut api_key = HeaderValue::from_str(key)
            .ok()
            .filter(|_| key.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| invalid("api_key", "must be printable ASCII without spaces"))?;
        api_key.set_sensitive(true);
        let username = settings.api_username.trim();
        if username.is_empty() {
            return Err(invalid("api_username", "must not be empty"));
        }
        let api_username = HeaderValue::from_str(username)
            .ok()
            .filter(|_| username.is_ascii())
            .ok_or_else(|| invalid("api_username", "must be ASCII (it travels in an HTTP header)"))?;
        if settings.min_title_length > settings.max_title_length || settings.max_title_length == 0 {
            return Err(invalid("max_title_length", "must be at least 1 and at least `min_title_length`"));
        }
        if settings.min_length > settings.max_length || settings.max_length == 0 {
            return Err(invalid("max_length", "must be at least 1 and at least `min_length`"));
        }
        Ok(Self {
            base,
            api_key,
            api_username,
            category: settings.category,
            title_length: (settings.min_title_length, settings.max_title_length),
            length: (settings.min_length, settings.max_length),
            client: http::client(&http)?,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.header(API_KEY_HEADER, self.api_key.clone()).header(API_USERNAME_HEADER, self.api_username.clone())
    }

    async fn create(&self, request: PublishRequest<'_>) -> Result<Receipt, DeliveryError> {
        let content = request.content;
        let Some(title) = content.title.as_deref() else {
            return Err(DeliveryError::permanent(PlatformAnswer::default(), "Discourse needs a title"));
        };
        let body =
            wire::NewTopic { title, raw: &content.text, category: self.category, external_id: request.delivery_id };
        let builder = self.authorized(self.client.post(self.base.join(POSTS_PATH))).json(&body);
        let answer = self.call(builder, "posts", &request).await?;

        let rule = errors::rule(answer.status.as_u16());
        if rule == errors::Rule::Ok {
            return match serde_json::from_slice::<wire::Post>(&answer.body) {
                Ok(post) => Ok(self.receipt(post.topic_id, &post.topic_slug, answer.platform_answer())),
                Err(_) => Err(DeliveryError::transient(
                    answer.platform_answer(),
                    format!("Discourse answered {} without a post; the topic may have been created", answer.status),
                )
                .maybe_sent()),
            };
        }
        if rule == errors::Rule::Validation && request.uncertain {
            return self.validation_on_a_retry(&answer, request).await;
        }
        Err(self.failure(&answer, &rule))
    }

    /// A 422 on a retry whose earlier attempt may have gone through: the
    /// topic is looked for by its external id; if the forum does not show
    /// it, the 422 still counts as evidence it was published (PLATFORMS.md).
    async fn validation_on_a_retry(
        &self,
        answer: &Answer,
        request: PublishRequest<'_>,
    ) -> Result<Receipt, DeliveryError> {
        let error = wire::ErrorBody::parse(&answer.body);
        let raw = error.message().unwrap_or_else(|| answer.excerpt());
        let platform = |note: String| PlatformAnswer {
            status: Some(answer.status.as_u16()),
            code: error.error_type.clone(),
            message: Some(format!("{raw}; {note}")),
        };
        Ok(match self.find(request).await? {
            Some(found) => {
                Receipt { answer: platform("on a retry: the topic was found by its external id".into()), ..found }
            }
            None => Receipt {
                remote_id: None,
                url: None,
                answer: platform(
                    "on a retry whose earlier attempt may have gone through: taken as evidence it was published; \
                     the topic was not found by its external id"
                        .into(),
                ),
            },
        })
    }

    /// Find the topic whose external id is the delivery id.
    async fn find(&self, request: PublishRequest<'_>) -> Result<Option<Receipt>, DeliveryError> {
        let url = self.base.join_segments(&["t", "external_id", &format!("{}.json", request.delivery_id)]);
        let answer = self.call(self.authorized(self.client.get(url)), "external_id", &request).await?;
        let found = |id, slug: &str| {
            let message = format!("topic {id} has external id {}", request.delivery_id);
            let platform = PlatformAnswer { status: Some(answer.status.as_u16()), code: None, message: Some(message) };
            Some(self.receipt(id, slug, platform))
        };
        if answer.status.is_redirection() {
            let location = answer.headers.get(LOCATION).and_then(|value| value.to_str().ok()).unwrap_or_default();
            return match wire::topic_from_location(location) {
                Some((slug, id)) => Ok(found(id, &slug)),
                None => Err(DeliveryError::transient(
                    answer.platform_answer(),
                    format!("Discourse answered {} to a lookup without a topic to go to", answer.status),
                )),
            };
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let rule = errors::rule(answer.status.as_u16());
        if rule != errors::Rule::Ok {
            return Err(self.failure(&answer, &rule));
        }
        match serde_json::from_slice::<wire::Topic>(&answer.body) {
            Ok(topic) => Ok(found(topic.id, &topic.slug)),
            Err(_) => {
                Err(DeliveryError::transient(answer.platform_answer(), "Discourse's topic answer could not be read"))
            }
        }
    }

    /// `DELETE /t/:topic_id.json` (a soft delete: staff still see the
    /// topic); a 404 means it is already gone.
    async fn delete(&self, request: RecallRequest<'_>) -> Result<Recalled, DeliveryError> {
        let Some(id) = request.remote_id.filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())) else {
            return Ok(request.without_remote_id("Discourse"));
        };
        let url = self.base.join_segments(&["t", &format!("{id}.json")]);
        let builder = self.authorized(self.client.delete(url));
        let answer = http::traced_exchange(builder, "discourse", "delete", Some(request.delivery_id)).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Recalled::TakenDown {
                answer: answer.platform_answer(),
                note: Some("the topic was already gone".into()),
            });
        }
        let rule = errors::rule(answer.status.as_u16());
        if rule != errors::Rule::Ok {
            return Err(self.failure(&answer, &rule));
        }
        Ok(Recalled::TakenDown {
            answer: answer.platform_answer(),
            note: Some("Discourse keeps a deleted topic visible to its staff".into()),
        })
    }

    async fn session(&self) -> Result<Probe, DeliveryError> {
        let builder = self.authorized(self.client.get(self.base.join(SESSION_PATH)));
        let started = Instant::now();
        let answer = http::exchange(builder).await?;
        tracing::debug!(
            call = "session",
            status = answer.status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "discourse answered"
        );
        if answer.status == StatusCode::NOT_FOUND {
            // Discourse answers "not logged in" when the key did not authenticate.
            return Err(DeliveryError::permanent(
                answer.platform_answer(),
                "Discourse did not accept the API key and username (not logged in)",
            ));
        }
        let rule = errors::rule(answer.status.as_u16());
        if rule != errors::Rule::Ok {
            return Err(self.failure(&answer, &rule));
        }
        let session = serde_json::from_slice::<wire::Session>(&answer.body).map_err(|_| {
            DeliveryError::transient(answer.platform_answer(), "Discourse's session answer could not be read")
        })?;
        Ok(Probe {
            checked: true,
            detail: format!("API key accepted for @{}", session.current_user.username),
            expires_at: None,
        })
    }

    fn receipt(&self, topic_id: u64, slug: &str, answer: PlatformAnswer) -> Receipt {
        Receipt {
            remote_id: Some(topic_id.to_string()),
            url: Some(format!("{}/t/{slug}/{topic_id}", self.base.as_str())),
            answer,
        }
    }

    /// The error for a failed answer, by the table in `errors.rs`.
    fn failure(&self, answer: &Answer, rule: &errors::Rule) -> DeliveryError {
        let error = wire::ErrorBody::parse(&answer.body);
        let wait = http::retry_after(&answer.headers, errors::MAX_WAIT)
            .or_else(|| errors::wait_seconds(error.extras.as_ref().and_then(|e| e.wait_seconds), errors::MAX_WAIT));
        let status = answer.status.as_u16();
        let class = errors::class(rule, wait).unwrap_or(crate::ErrorClass::Transient);
        let platform = PlatformAnswer {
            status: Some(status),
            code: error.error_type.clone(),
            message: error.message().or_else(|| Some(answer.excerpt()).filter(|m| !m.is_empty())),
        };
        let reason = match rule {
            errors::Rule::RateLimited => match wait {
                Some(wait) => format!("Discourse answered 429 (rate limited; wait {}s)", wait.as_secs()),
                None => "Discourse answered 429 (rate limited)".to_string(),
            },
            errors::Rule::Validation => format!("Discourse refused the topic ({status})"),
            errors::Rule::Credentials => format!("Discourse refused the API key or username ({status})"),
            _ => match (wait, &class) {
                (Some(wait), crate::ErrorClass::RateLimited { .. }) => {
                    format!("Discourse answered {status} (retry after {}s)", wait.as_secs())
                }
                _ => format!("Discourse answered {status}"),
            },
        };
        DeliveryError::new(class, platform, reason)
    }

    async fn call(
        &self,
        builder: reqwest::RequestBuilder,
        call: &'static str,
        request: &PublishRequest<'_>,
    ) -> Result<Answer, DeliveryError> {
        http::traced_exchange(builder, "discourse", call, Some(request.delivery_id)).await
    }
}

impl Adapter for DiscourseAdapter {
    fn platform(&self) -> Platform {
        Platform::Discourse
    }

    /// The topic's title is the post's title (required); its first post is
    /// the body, a blank line and the link, in Markdown.
    fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
        let mut problems = Vec::new();
        if !content.images.is_empty() {
            problems.push(ContentProblem::new(
                "images",
                "herald does not upload images to Discourse yet, and a topic would go out without them: \
                 override `images = []` for discourse to post the text alone",
            ));
        }
        let title = content.title.as_deref().map(str::trim).filter(|title| !title.is_empty());
        match title {
            None => problems.push(ContentProblem::new("title", "Discourse needs a title")),
            Some(title) => {
                let (min, max) = self.title_length;
                let length = title.chars().count();
                if !(min..=max).contains(&length) {
                    problems.push(ContentProblem::new(
                        "title",
                        format!("is {length} characters long; this forum takes {min} to {max}"),
                    ));
                }
            }
        }
        let body = content.body.trim_end();
        let link = content.link.as_deref().map(str::trim).filter(|link| !link.is_empty());
        let raw = match link {
            Some(link) => format!("{body}\n\n{link}"),
            None => body.to_string(),
        };
        let (min, max) = self.length;
        let length = raw.trim().chars().count();
        if !(min..=max).contains(&length) {
            problems.push(ContentProblem::new(
                "body",
                format!("the body and link are {length} characters long; this forum takes {min} to {max}"),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Rendered { title: title.map(str::to_string), text: raw, link: link.map(str::to_string), images: Vec::new() })
    }

    fn publish<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Receipt, DeliveryError>> {
        Box::pin(self.create(request))
    }

    fn lookup<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Option<Receipt>, DeliveryError>> {
        Box::pin(self.find(request))
    }

    /// `lookup` finds a topic by its `external_id` (the delivery id), and
    /// the forum refuses a second topic with the same one.
    fn resend_is_safe(&self) -> bool {
        true
    }

    fn probe(&self) -> BoxFuture<'_, Result<Probe, DeliveryError>> {
        Box::pin(self.session())
    }

    fn recall<'a>(&'a self, request: RecallRequest<'a>) -> BoxFuture<'a, Result<Recalled, DeliveryError>> {
        Box::pin(self.delete(request))
    }
}

impl fmt::Debug for DiscourseAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscourseAdapter")
            .field("host", &self.base.host())
            .field("api_username", &self.api_username)
            .field("category", &self.category)
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::InvalidSetting { field, message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(extra: serde_json::Value) -> Result<DiscourseAdapter, BuildError> {
        let mut table =
            json!({ "base_url": "https://forum.example.org", "api_key": "SEKRIT-key", "api_username": "herald" });
        if let (Some(table), Some(extra)) = (table.as_object_mut(), extra.as_object()) {
            table.extend(extra.clone());
        }
        DiscourseAdapter::new(serde_json::from_value(table).unwrap(), HttpOptions::default())
    }

    #[test]
    fn reads_settings_with_discourse_defaults() {
        let adapter = build(json!({ "category": 5 })).unwrap();
        assert_eq!(adapter.category, Some(5));
        assert_eq!(adapter.title_length, (15, 255));
        assert_eq!(adapter.length, (20, 32_000));
    }

    #[test]
    fn refuses_bad_settings_without_quoting_the_key() {
        for (extra, field) in [
            (json!({ "api_key": "" }), "api_key"),
            (json!({ "api_key": "SEKRIT key" }), "api_key"),
            (json!({ "api_username": " " }), "api_username"),
            (json!({ "api_username": "管理员" }), "api_username"),
            (json!({ "min_title_length": 300 }), "max_title_length"),
            (json!({ "max_length": 0, "min_length": 0 }), "max_length"),
        ] {
            let error = build(extra.clone()).unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid setting `{field}`")), "{extra}: {error}");
            assert!(!error.contains("SEKRIT"), "{error}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?}", build(json!({})).unwrap());
        assert!(!shown.contains("SEKRIT") && shown.contains("forum.example.org"), "{shown}");
    }
}
