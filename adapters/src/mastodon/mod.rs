//! Mastodon: create one status through `POST /api/v1/statuses` on the
//! account's instance, with `Authorization: Bearer <token>` and the
//! delivery id as `Idempotency-Key` on every attempt.
//!
//! The instance remembers an idempotency key for an hour per account and
//! answers a repeat with the original status, so a retry after a crash or a
//! timeout cannot create a second status: there is no lookup. Statuses are
//! classified by the one table in `errors.rs`; a 429 waits for
//! `X-RateLimit-Reset`. The post's title can go out as the content warning
//! (`spoiler_text`). Images (at most 4, JPEG/PNG/GIF) are uploaded first
//! with `POST /api/v2/media` (multipart `file` and `description`: the
//! title, else the status's first line), waited for while Mastodon
//! processes them (202), and attached with `media_ids`.

mod errors;
mod wire;

use std::fmt;

use chrono::Utc;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;

use crate::endpoint::BaseUrl;
use crate::http::{self, Answer};
use crate::registry::{BuildError, HttpOptions, Platform};
use crate::{
    Adapter, BoxFuture, ContentProblem, DeliveryError, PlatformAnswer, PostContent, Probe, PublishRequest,
    RecallRequest, Recalled, Receipt, Rendered, Secret,
};

/// The settings that hold secrets.
pub const SECRET_FIELDS: &[&str] = &["access_token"];

/// The header carrying the delivery id.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// The default of `max_length`, in characters (text and content warning).
pub const DEFAULT_MAX_LENGTH: usize = 500;

const STATUSES_PATH: &str = "/api/v1/statuses";
const MEDIA_PATH: &str = "/api/v2/media";
/// The most images a status takes.
pub const MAX_IMAGES: usize = 4;
/// The largest image herald uploads (Mastodon's default is 16 MB since 4.3,
/// 10 MB before; an instance may set less).
pub const MAX_IMAGE_BYTES: u64 = 10 * 1024 * 1024;
/// The longest image description Mastodon takes.
const MAX_DESCRIPTION_CHARS: usize = 1500;
/// How often, and how many times, an image still processing (202) is asked for.
const MEDIA_POLL: std::time::Duration = std::time::Duration::from_millis(500);
const MEDIA_POLLS: u32 = 60;
const VERIFY_PATH: &str = "/api/v1/accounts/verify_credentials";

/// Who may see a status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Public,
    Unlisted,
    Private,
    Direct,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Unlisted => "unlisted",
            Visibility::Private => "private",
            Visibility::Direct => "direct",
        }
    }
}

/// The `[accounts.<id>]` settings of a Mastodon account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The instance, e.g. `https://mastodon.example.org` (required: there
    /// is no default instance).
    pub base_url: String,
    /// An access token with the `write:statuses` scope (and `read:accounts`
    /// for the probe).
    pub access_token: Secret,
    /// Default `public`.
    #[serde(default)]
    pub visibility: Visibility,
    /// The ISO 639 code of the posts' language.
    pub language: Option<String>,
    /// Send the post's title as the content warning (`spoiler_text`).
    #[serde(default)]
    pub title_as_spoiler: bool,
    /// The instance's limit, in characters; default 500.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

fn default_max_length() -> usize {
    DEFAULT_MAX_LENGTH
}

/// A Mastodon account, ready to publish.
pub struct MastodonAdapter {
    base: BaseUrl,
    /// `Bearer <token>`, marked sensitive.
    authorization: HeaderValue,
    visibility: Visibility,
    language: Option<String>,
    title_as_spoiler: bool,
    max_length: usize,
    client: reqwest::Client,
}

impl MastodonAdapter {
    pub fn new(settings: Settings, http: HttpOptions) -> Result<Self, BuildError> {
        let base = BaseUrl::parse(Some(&settings.base_url), None)?;
        let token = settings.access_token.expose();
        if token.trim().is_empty() {
            return Err(invalid("access_token", "must not be empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("access_token", "must be printable ASCII without spaces"));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| invalid("access_token", "cannot be sent in an HTTP header"))?;
        authorization.set_sensitive(true);
        if let Some(language) = &settings.language
            && !(2..=3).contains(&language.len())
        {
            return Err(invalid("language", "must be an ISO 639 code of two or three letters, such as zh or en"));
        }
        if let Some(language) = &settings.language
            && !language.bytes().all(|b| b.is_ascii_lowercase())
        {
            return Err(invalid("language", "must be an ISO 639 code in lowercase letters, such as zh or en"));
        }
        if settings.max_length == 0 {
            return Err(invalid("max_length", "must be at least 1"));
        }
        Ok(Self {
            base,
            authorization,
            visibility: settings.visibility,
            language: settings.language,
            title_as_spoiler: settings.title_as_spoiler,
            max_length: settings.max_length,
            client: http::client(&http)?,
        })
    }

    /// Upload one image with its description; its attachment id, once
    /// Mastodon has processed it (a 202 is asked for again until it has).
    async fn upload(
        &self,
        request: &PublishRequest<'_>,
        path: &str,
        description: &str,
    ) -> Result<String, DeliveryError> {
        let refuse = |message: String| DeliveryError::permanent(PlatformAnswer::default(), message);
        let bytes = tokio::fs::read(path).await.map_err(|error| refuse(format!("`{path}` cannot be read: {error}")))?;
        let (mime, _) =
            image_type(&bytes).ok_or_else(|| refuse(format!("`{path}` is not a JPEG, PNG or GIF image")))?;
        let name = std::path::Path::new(path).file_name().and_then(|name| name.to_str()).unwrap_or("image");
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(name.to_string())
            .mime_str(mime)
            .map_err(|error| refuse(format!("the image cannot be sent: {error}")))?;
        let mut form = reqwest::multipart::Form::new().part("file", part);
        if !description.is_empty() {
            form = form.text("description", description.to_string());
        }
        let builder = self
            .client
            .post(self.base.join(MEDIA_PATH))
            .header(AUTHORIZATION, self.authorization.clone())
            .multipart(form);
        let mut answer = self.call(builder, "media", Some(request)).await?;
        for _ in 0..MEDIA_POLLS {
            self.check(&answer)?;
            let attachment = serde_json::from_slice::<wire::Attachment>(&answer.body).map_err(|_| {
                DeliveryError::transient(answer.platform_answer(), "Mastodon's media answer could not be read")
            })?;
            if answer.status.as_u16() != 202 || attachment.url.is_some() {
                return Ok(attachment.id);
            }
            tokio::time::sleep(MEDIA_POLL).await;
            let builder = self
                .client
                .get(self.base.join(&format!("/api/v1/media/{}", attachment.id)))
                .header(AUTHORIZATION, self.authorization.clone());
            answer = self.call(builder, "media", Some(request)).await?;
        }
        Err(DeliveryError::transient(answer.platform_answer(), "Mastodon is still processing an image"))
    }

    async fn create(&self, request: PublishRequest<'_>) -> Result<Receipt, DeliveryError> {
        let content = request.content;
        let description = description(content);
        let mut media_ids = Vec::with_capacity(content.images.len());
        for path in &content.images {
            media_ids.push(self.upload(&request, path, &description).await?);
        }
        let body = wire::NewStatus {
            status: &content.text,
            visibility: self.visibility.as_str(),
            language: self.language.as_deref(),
            spoiler_text: content.title.as_deref(),
            media_ids: &media_ids,
        };
        let builder = self
            .client
            .post(self.base.join(STATUSES_PATH))
            .header(AUTHORIZATION, self.authorization.clone())
            .header(IDEMPOTENCY_KEY_HEADER, request.delivery_id)
            .json(&body);
        let answer = self.call(builder, "statuses", Some(&request)).await?;
        self.check(&answer)?;
        match serde_json::from_slice::<wire::Status>(&answer.body) {
            Ok(status) => Ok(Receipt {
                remote_id: Some(status.id),
                url: status.url.or(status.uri),
                answer: answer.platform_answer(),
            }),
            Err(_) => Err(DeliveryError::transient(
                answer.platform_answer(),
                format!("Mastodon answered {} without a status; it may have been created", answer.status),
            )
            .maybe_sent()),
        }
    }

    /// `DELETE /api/v1/statuses/:id`; a 404 means it is already gone.
    async fn delete(&self, request: RecallRequest<'_>) -> Result<Recalled, DeliveryError> {
        let Some(id) = request.remote_id else { return Ok(request.without_remote_id("Mastodon")) };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(request.without_remote_id("Mastodon"));
        }
        let builder = self
            .client
            .delete(self.base.join(&format!("{STATUSES_PATH}/{id}")))
            .header(AUTHORIZATION, self.authorization.clone());
        let answer = http::traced_exchange(builder, "mastodon", "delete", Some(request.delivery_id)).await?;
        if answer.status.as_u16() == 404 {
            return Ok(Recalled::TakenDown {
                answer: answer.platform_answer(),
                note: Some("the status was already gone".into()),
            });
        }
        self.check(&answer)?;
        Ok(Recalled::TakenDown { answer: answer.platform_answer(), note: None })
    }

    async fn verify(&self) -> Result<Probe, DeliveryError> {
        let builder = self.client.get(self.base.join(VERIFY_PATH)).header(AUTHORIZATION, self.authorization.clone());
        let answer = self.call(builder, "verify_credentials", None).await?;
        self.check(&answer)?;
        let account = serde_json::from_slice::<wire::Account>(&answer.body).map_err(|_| {
            DeliveryError::transient(answer.platform_answer(), "Mastodon's account answer could not be read")
        })?;
        Ok(Probe { checked: true, detail: format!("access token accepted for @{}", account.acct), expires_at: None })
    }

    /// `Ok` for a 2xx answer, else the error its status calls for.
    fn check(&self, answer: &Answer) -> Result<(), DeliveryError> {
        let status = answer.status.as_u16();
        let reset = errors::reset_wait(
            answer.headers.get(errors::RATE_LIMIT_RESET).and_then(|value| value.to_str().ok()),
            Utc::now(),
            errors::MAX_WAIT,
        );
        let retry_after = http::retry_after(&answer.headers, errors::MAX_WAIT);
        let Err(class) = errors::classify(status, reset, retry_after) else {
            return Ok(());
        };
        let message = wire::error_message(&answer.body).or_else(|| Some(answer.excerpt()).filter(|m| !m.is_empty()));
        let platform = PlatformAnswer { status: Some(status), code: None, message };
        let reason = match reset {
            Some(wait) if status == 429 => {
                format!("Mastodon answered 429 (rate limited; the window resets in {}s)", wait.as_secs())
            }
            _ => match retry_after {
                Some(wait) if status >= 500 => format!(
                    "Mastodon answered {status}: {} (retry after {}s)",
                    errors::describe(status),
                    wait.as_secs()
                ),
                _ => format!("Mastodon answered {status}: {}", errors::describe(status)),
            },
        };
        Err(DeliveryError::new(class, platform, reason))
    }

    async fn call(
        &self,
        builder: reqwest::RequestBuilder,
        call: &'static str,
        request: Option<&PublishRequest<'_>>,
    ) -> Result<Answer, DeliveryError> {
        http::traced_exchange(builder, "mastodon", call, request.map(|r| r.delivery_id)).await
    }
}

impl Adapter for MastodonAdapter {
    fn platform(&self) -> Platform {
        Platform::Mastodon
    }

    /// The status is the body, a blank line and the link; the title is the
    /// content warning when `title_as_spoiler` is set, else not sent. Text
    /// and content warning count together against `max_length`.
    fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
        let mut problems = Vec::new();
        let body = content.body.trim_end();
        if body.trim().is_empty() {
            problems.push(ContentProblem::new("body", "must not be empty"));
        }
        if content.images.len() > MAX_IMAGES {
            problems.push(ContentProblem::new(
                "images",
                format!("{} images; a Mastodon status takes at most {MAX_IMAGES}", content.images.len()),
            ));
        }
        for (index, path) in content.images.iter().enumerate() {
            if let Err(problem) = check_image(path) {
                problems.push(ContentProblem::new("images", format!("image {}: {problem}", index + 1)));
            }
        }
        let link = content.link.as_deref().map(str::trim).filter(|link| !link.is_empty());
        let text = match link {
            Some(link) => format!("{body}\n\n{link}"),
            None => body.to_string(),
        };
        let spoiler = if self.title_as_spoiler {
            content.title.as_deref().map(str::trim).filter(|title| !title.is_empty())
        } else {
            None
        };
        let length = text.chars().count() + spoiler.map_or(0, |s| s.chars().count());
        if length > self.max_length {
            let counted =
                if spoiler.is_some() { "the text, link and content warning are" } else { "the text and link are" };
            problems.push(ContentProblem::new(
                "body",
                format!("{counted} {length} characters long; the limit is {}", self.max_length),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Rendered {
            title: spoiler.map(str::to_string),
            text,
            link: link.map(str::to_string),
            images: content.images.clone(),
        })
    }

    fn publish<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Receipt, DeliveryError>> {
        Box::pin(self.create(request))
    }

    // `lookup` keeps the default (`Ok(None)`): the idempotency key makes a
    // re-sent status answer the original one.

    /// The instance answers a repeated `Idempotency-Key` with the original
    /// status (for an hour, longer than a restart takes).
    fn resend_is_safe(&self) -> bool {
        true
    }

    fn probe(&self) -> BoxFuture<'_, Result<Probe, DeliveryError>> {
        Box::pin(self.verify())
    }

    fn recall<'a>(&'a self, request: RecallRequest<'a>) -> BoxFuture<'a, Result<Recalled, DeliveryError>> {
        Box::pin(self.delete(request))
    }
}

/// The description uploaded with each image: the content warning (the
/// post's title) when there is one, else the status's first line.
fn description(content: &Rendered) -> String {
    let text = content.title.as_deref().unwrap_or_else(|| content.text.lines().next().unwrap_or_default());
    text.chars().take(MAX_DESCRIPTION_CHARS).collect()
}

/// JPEG, PNG or GIF, by the first bytes: the MIME type and a name.
fn image_type(head: &[u8]) -> Option<(&'static str, &'static str)> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("image/jpeg", "JPEG"))
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", "PNG"))
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(("image/gif", "GIF"))
    } else {
        None
    }
}

/// Check an image file: readable, at most [`MAX_IMAGE_BYTES`], JPEG, PNG or GIF.
fn check_image(path: &str) -> Result<(), String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|error| format!("`{path}` cannot be read: {error}"))?;
    let size = file.metadata().map_err(|error| format!("`{path}` cannot be read: {error}"))?.len();
    if size > MAX_IMAGE_BYTES {
        return Err(format!("`{path}` is {size} bytes; herald uploads images of at most {MAX_IMAGE_BYTES} bytes"));
    }
    let mut head = [0u8; 8];
    let read = file.read(&mut head).map_err(|error| format!("`{path}` cannot be read: {error}"))?;
    image_type(&head[..read]).map(|_| ()).ok_or_else(|| format!("`{path}` is not a JPEG, PNG or GIF image"))
}

impl fmt::Debug for MastodonAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MastodonAdapter")
            .field("host", &self.base.host())
            .field("visibility", &self.visibility)
            .field("language", &self.language)
            .field("title_as_spoiler", &self.title_as_spoiler)
            .field("max_length", &self.max_length)
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

    fn build(extra: serde_json::Value) -> Result<MastodonAdapter, BuildError> {
        let mut table = json!({ "base_url": "https://social.example.org", "access_token": "SEKRIT-token" });
        if let (Some(table), Some(extra)) = (table.as_object_mut(), extra.as_object()) {
            table.extend(extra.clone());
        }
        MastodonAdapter::new(serde_json::from_value(table).unwrap(), HttpOptions::default())
    }

    #[test]
    fn reads_settings_with_defaults() {
        let adapter = build(json!({})).unwrap();
        assert_eq!(adapter.visibility, Visibility::Public);
        assert_eq!(adapter.max_length, 500);
        assert!(!adapter.title_as_spoiler);
        let unlisted = build(json!({ "visibility": "unlisted", "language": "zh" })).unwrap();
        assert_eq!(unlisted.visibility, Visibility::Unlisted);
    }

    #[test]
    fn refuses_bad_settings_without_quoting_the_token() {
        for (extra, field) in [
            (json!({ "language": "chinese" }), "language"),
            (json!({ "language": "ZH" }), "language"),
            (json!({ "max_length": 0 }), "max_length"),
            (json!({ "access_token": "" }), "access_token"),
            (json!({ "access_token": "SEKRIT with spaces" }), "access_token"),
            (json!({ "base_url": "mastodon.example.org" }), "base_url"),
        ] {
            let error = build(extra.clone()).unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid setting `{field}`")), "{extra}: {error}");
            assert!(!error.contains("SEKRIT"), "{error}");
        }
        let unknown = serde_json::from_value::<Settings>(
            json!({ "base_url": "https://x", "access_token": "t", "visibility": "everyone" }),
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", build(json!({})).unwrap());
        assert!(!shown.contains("SEKRIT") && shown.contains("social.example.org"), "{shown}");
    }
}
