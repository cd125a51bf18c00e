//! Webhook: POST each delivery as a JSON document, signed as Standard
//! Webhooks specifies when a secret is set ([`sign`]), to a URL the
//! operator runs.
//!
//! Headers: `Idempotency-Key`, `X-Herald-Delivery` and `webhook-id` carry the
//! delivery id; with a secret, `webhook-timestamp` and `webhook-signature`
//! (and, while a receiver migrates, `X-Herald-Signature`).
//! A 2xx answer is a receipt (its JSON `id` and `url`, when present); other
//! statuses are classified by [`crate::http::classify_status`].

pub mod sign;
mod wire;

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::Url;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;

use crate::http::{self, Answer};
use crate::registry::{BuildError, HttpOptions, Platform};
use crate::{
    Adapter, BoxFuture, ContentProblem, DeliveryError, PlatformAnswer, PostContent, PublishRequest, RecallRequest,
    Recalled, Receipt, Rendered, Secret,
};

/// The settings that hold secrets.
pub const SECRET_FIELDS: &[&str] = &["secret"];

/// The header carrying the delivery id as an idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// The header carrying the delivery id.
pub const DELIVERY_HEADER: &str = "X-Herald-Delivery";
pub use sign::{LEGACY_SIGNATURE_HEADER, Signer};
pub use wire::RECALL_TYPE;
/// The header naming what a request is: `delivery` or `recall`.
pub const EVENT_HEADER: &str = "X-Herald-Event";

/// The longest `Retry-After` honoured; a longer one is clamped to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The `[accounts.<id>]` settings of a webhook account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where deliveries are POSTed (http or https).
    pub url: String,
    /// The signing secret, `whsec_<base64>` (or a plain secret, whose
    /// bytes are the key); without it, deliveries are not signed.
    pub secret: Option<Secret>,
    /// Also send herald's former `X-Herald-Signature` (replayable), for a
    /// receiver that has not moved to the standard headers yet.
    #[serde(default)]
    pub legacy_signature: bool,
}

/// A webhook account, ready to publish.
pub struct WebhookAdapter {
    url: Url,
    signer: Option<Signer>,
    legacy_signature: bool,
    client: reqwest::Client,
}

impl WebhookAdapter {
    pub fn new(settings: Settings, http: HttpOptions) -> Result<Self, BuildError> {
        let url = parse_url(&settings.url)?;
        let signer = settings.secret.as_ref().map(Signer::new).transpose()?;
        let client = http::client(&http)?;
        if settings.legacy_signature && signer.is_none() {
            return Err(invalid("legacy_signature", "needs a `secret` to sign with"));
        }
        Ok(Self { url, signer, legacy_signature: settings.legacy_signature, client })
    }

    /// A recall event: a signed POST of [`wire::Recall`] to the same URL,
    /// with `webhook-id` `<delivery id>.recall` (the same on every attempt,
    /// so a receiver de-duplicates it). A 2xx answer means the receiver
    /// took the copy down; 404 and 410, that it has none.
    async fn send_recall(&self, request: RecallRequest<'_>) -> Result<Recalled, DeliveryError> {
        let body = serde_json::to_vec(&wire::Recall::new(&request)).map_err(|error| {
            DeliveryError::permanent(PlatformAnswer::default(), format!("could not encode the recall: {error}"))
        })?;
        let message_id = format!("{}.recall", request.delivery_id);
        let mut builder = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, "recall")
            .header(IDEMPOTENCY_KEY_HEADER, message_id.as_str())
            .header(DELIVERY_HEADER, request.delivery_id);
        if let Some(signer) = &self.signer {
            for (name, value) in signer.headers(&message_id, &body) {
                builder = builder.header(name, value);
            }
            if self.legacy_signature {
                builder = builder.header(LEGACY_SIGNATURE_HEADER, signer.legacy_signature(&body));
            }
        } else {
            builder = builder.header(sign::ID_HEADER, message_id.as_str());
        }
        let answer = http::traced_exchange(builder.body(body), "webhook", "recall", Some(request.delivery_id)).await?;
        if matches!(answer.status.as_u16(), 404 | 410) {
            return Ok(Recalled::TakenDown {
                answer: answer.platform_answer(),
                note: Some("the receiver has no such copy".into()),
            });
        }
        answer.error_for_status(MAX_RETRY_AFTER)?;
        Ok(Recalled::TakenDown { answer: answer.platform_answer(), note: None })
    }

    async fn deliver(&self, request: PublishRequest<'_>) -> Result<Receipt, DeliveryError> {
        let body = serde_json::to_vec(&wire::Delivery::new(&request)).map_err(|error| {
            DeliveryError::permanent(PlatformAnswer::default(), format!("could not encode the delivery: {error}"))
        })?;
        let mut builder = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY_HEADER, request.delivery_id)
            .header(DELIVERY_HEADER, request.delivery_id);
        if let Some(signer) = &self.signer {
            for (name, value) in signer.headers(request.delivery_id, &body) {
                builder = builder.header(name, value);
            }
            if self.legacy_signature {
                builder = builder.header(LEGACY_SIGNATURE_HEADER, signer.legacy_signature(&body));
            }
        } else {
            builder = builder.header(sign::ID_HEADER, request.delivery_id);
        }

        let started = Instant::now();
        let response = builder.body(body).send().await.map_err(|error| {
            let error = http::transport_error(error);
            tracing::debug!(
                delivery = request.delivery_id,
                account = request.account_id,
                attempt = request.attempt,
                maybe_sent = error.maybe_sent,
                error = %error.reason,
                "webhook request failed"
            );
            error
        })?;
        let answer = Answer::read(response).await;
        tracing::debug!(
            delivery = request.delivery_id,
            account = request.account_id,
            attempt = request.attempt,
            status = answer.status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "webhook answered"
        );

        answer.error_for_status(MAX_RETRY_AFTER)?;
        let published = wire::Published::parse(&answer.body);
        Ok(Receipt { remote_id: published.id, url: published.url, answer: answer.platform_answer() })
    }
}

impl Adapter for WebhookAdapter {
    fn platform(&self) -> Platform {
        Platform::Webhook
    }

    /// Every attempt carries the delivery id as `Idempotency-Key`; a
    /// receiver treats a repeated key as the same delivery (README, webhook).
    fn resend_is_safe(&self) -> bool {
        true
    }

    fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
        if content.body.trim().is_empty() {
            return Err(vec![ContentProblem::new("body", "must not be empty")]);
        }
        Ok(Rendered {
            title: content.title.clone(),
            text: content.body.clone(),
            link: content.link.clone(),
            images: content.images.clone(),
        })
    }

    fn recall<'a>(&'a self, request: RecallRequest<'a>) -> BoxFuture<'a, Result<Recalled, DeliveryError>> {
        Box::pin(self.send_recall(request))
    }

    fn publish<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Receipt, DeliveryError>> {
        Box::pin(self.deliver(request))
    }
}

/// Shows the host only: webhook URLs often carry a token in their path.
impl fmt::Debug for WebhookAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookAdapter")
            .field("host", &self.url.host_str().unwrap_or_default())
            .field("signed", &self.signer.is_some())
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::InvalidSetting { field, message: message.into() }
}

/// Parse and check the URL. Messages never quote it: it may hold a token.
fn parse_url(text: &str) -> Result<Url, BuildError> {
    let url = Url::parse(text).map_err(|error| invalid("url", format!("not a valid URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("url", "the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url", "the URL has no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, secret: Option<&str>) -> Settings {
        Settings { url: url.to_string(), secret: secret.map(Secret::new), legacy_signature: false }
    }

    fn build_error(url: &str, secret: Option<&str>) -> String {
        WebhookAdapter::new(settings(url, secret), HttpOptions::default()).unwrap_err().to_string()
    }

    #[test]
    fn accepts_http_and_https_urls() {
        for url in ["http://127.0.0.1:8080/hook", "https://hooks.example.org/a/b?x=1"] {
            assert!(WebhookAdapter::new(settings(url, None), HttpOptions::default()).is_ok(), "{url}");
        }
    }

    #[test]
    fn refuses_other_urls_without_quoting_them() {
        for url in
            ["ftp://example.org/sekrit", "not a url sekrit", "/relative/sekrit", "file:///sekrit", "mailto:sekrit"]
        {
            let error = build_error(url, None);
            assert!(error.starts_with("invalid setting `url`"), "{url}: {error}");
            assert!(!error.contains("sekrit"), "{url}: {error}");
        }
    }

    #[test]
    fn refuses_an_empty_secret() {
        assert_eq!(build_error("http://127.0.0.1/", Some("")), "invalid setting `secret`: must not be empty");
    }

    #[test]
    fn the_legacy_signature_needs_a_secret() {
        let mut settings = settings("http://127.0.0.1/", None);
        settings.legacy_signature = true;
        let error = WebhookAdapter::new(settings, HttpOptions::default()).unwrap_err().to_string();
        assert_eq!(error, "invalid setting `legacy_signature`: needs a `secret` to sign with");
    }

    #[test]
    fn debug_shows_neither_secret_nor_path() {
        let adapter =
            WebhookAdapter::new(settings("https://hooks.example.org/T0KEN/x", Some("hunter2")), HttpOptions::default())
                .unwrap();
        let shown = format!("{adapter:?}");
        assert!(shown.contains("hooks.example.org") && shown.contains("signed: true"), "{shown}");
        assert!(!shown.contains("hunter2") && !shown.contains("T0KEN"), "{shown}");
    }

    #[test]
    fn settings_refuse_unknown_fields() {
        let error = serde_json::from_str::<Settings>(r#"{"url": "http://x/", "secrett": "a"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `secrett`"), "{error}");
    }
}
