//! Sina Weibo: share one status (text with a link on the app's safe domain,
//! and at most one picture) through `POST /2/statuses/share.json`.
//!
//! The form (or, with a picture, multipart form) carries `access_token`,
//! `status` and `rip`; read-only calls send the token in an
//! `Authorization: OAuth2` header so it never sits in a URL. Every answer is
//! classified from its body (`error_code`, string or number) whatever its
//! HTTP status, through the one table in `errors.rs`. Tokens cannot be
//! refreshed: a token error fails the delivery until someone re-authorizes
//! the account. An uncertain delivery is looked for in the account's recent
//! timeline by its exact text, and a "repeated content" answer on such a
//! retry counts as published.

mod errors;
mod render;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::multipart::{Form, Part};
use serde::{Deserialize, Deserializer};

use crate::endpoint::BaseUrl;
use crate::http::{self, Answer};
use crate::registry::{BuildError, HttpOptions, Platform};
use crate::{
    Adapter, BoxFuture, ContentProblem, DeliveryError, PlatformAnswer, PostContent, Probe, PublishRequest,
    RecallRequest, Recalled, Receipt, Rendered, Secret,
};

pub use render::{MAX_PICTURE_BYTES, weibo_length};

/// The settings that hold secrets.
pub const SECRET_FIELDS: &[&str] = &["access_token"];

/// The real API host.
pub const DEFAULT_BASE_URL: &str = "https://api.weibo.com";
/// Where published statuses are seen: `<WEB_URL>/<user id>/<mid or id>`.
pub const WEB_URL: &str = "https://weibo.com";
/// The default of `max_length`, in Weibo characters.
pub const DEFAULT_MAX_LENGTH: usize = 140;

const SHARE_PATH: &str = "/2/statuses/share.json";
const TIMELINE_PATH: &str = "/2/statuses/user_timeline.json";
const UID_PATH: &str = "/2/account/get_uid.json";
const DESTROY_PATH: &str = "/2/statuses/destroy.json";
/// Error codes of `statuses/destroy.json` that mean the app may not delete
/// (10014: no permission for the API; 10004, 10005: IP or app limits):
/// recall is not possible through herald for this account.
const DESTROY_NOT_ALLOWED: [&str; 3] = ["10014", "10004", "10005"];
/// "Target weibo does not exist" (Weibo's code list; not confirmed against
/// the live API): the status is already gone.
const DESTROY_GONE: &str = "20101";

/// How many recent statuses a lookup reads.
const LOOKUP_COUNT: &str = "20";
/// A status created this long before the occurrence may still be this
/// delivery (clocks differ); anything older is an earlier occurrence.
const LOOKUP_SLACK: TimeDelta = TimeDelta::minutes(10);
/// The longest `Retry-After` honoured on a plain HTTP 429 (Weibo's window is an hour).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The `[accounts.<id>]` settings of a Weibo account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The API host; default [`DEFAULT_BASE_URL`].
    pub base_url: Option<String>,
    /// The OAuth2 access token (1 to 90 days, or 5 years for the
    /// developer's own account; no refresh token).
    pub access_token: Secret,
    /// The domain registered for the app: every post must link to it (or a
    /// subdomain).
    pub safe_domain: String,
    /// The real IP of the acting user, sent as `rip`. Required: share.json
    /// answers 10016 without it. (An `Option` so its absence is reported
    /// with the reason rather than as a bare missing field.)
    pub rip: Option<String>,
    /// When the access token expires (RFC 3339), for warnings ahead of time.
    #[serde(default, deserialize_with = "optional_time")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The account's numeric user id, for public URLs (else the one Weibo answers).
    #[serde(default, deserialize_with = "optional_id")]
    pub user_id: Option<String>,
    /// The longest text, in Weibo characters; default 140.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

fn default_max_length() -> usize {
    DEFAULT_MAX_LENGTH
}

/// A Weibo account, ready to publish.
pub struct WeiboAdapter {
    base: BaseUrl,
    token: Secret,
    /// `OAuth2 <token>`, marked sensitive.
    authorization: HeaderValue,
    rip: Option<String>,
    user_id: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    rules: render::Rules,
    client: reqwest::Client,
    /// Deliveries whose look-up Weibo refused, with why, until their
    /// re-send says so in its answer (the audit log).
    unlooked: Mutex<HashMap<String, String>>,
}

/// At most this many refused look-ups are remembered (a look-up whose
/// re-send never came, e.g. after a timeout, is forgotten past it).
const MAX_UNLOOKED: usize = 1024;

impl WeiboAdapter {
    pub fn new(settings: Settings, http: HttpOptions) -> Result<Self, BuildError> {
        let base = BaseUrl::parse(settings.base_url.as_deref(), Some(DEFAULT_BASE_URL))?;
        let token = settings.access_token;
        let authorization = authorization(&token)?;
        let safe_domain = safe_domain(&settings.safe_domain)?;
        match &settings.rip {
            None => {
                return Err(invalid(
                    "rip",
                    "required: share.json refuses every post without the real IP of the acting user (10016); \
                     set it to this host's public IP address",
                ));
            }
            Some(rip) if rip.trim().parse::<IpAddr>().is_err() => {
                return Err(invalid("rip", "must be an IPv4 or IPv6 address"));
            }
            Some(_) => {}
        }
        if let Some(id) = &settings.user_id
            && (id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid("user_id", "must be the account's numeric user id"));
        }
        if settings.max_length == 0 {
            return Err(invalid("max_length", "must be at least 1"));
        }
        Ok(Self {
            base,
            token,
            authorization,
            rip: settings.rip.map(|rip| rip.trim().to_string()),
            user_id: settings.user_id,
            expires_at: settings.expires_at,
            rules: render::Rules { safe_domain, max_length: settings.max_length },
            client: http::client(&http)?,
            unlooked: Mutex::default(),
        })
    }

    /// When the access token expires, as configured.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    async fn share(&self, request: PublishRequest<'_>) -> Result<Receipt, DeliveryError> {
        let content = request.content;
        let builder = self.client.post(self.base.join(SHARE_PATH));
        let builder = match content.images.first() {
            None => builder.form(&wire::Share {
                access_token: self.token.expose(),
                status: &content.text,
                rip: self.rip.as_deref(),
            }),
            Some(path) => builder.multipart(self.multipart(&content.text, path).await?),
        };
        let unlooked = self.unlooked.lock().ok().and_then(|mut unlooked| unlooked.remove(request.delivery_id));
        let result = self.share_once(builder, &request).await;
        let Some(why) = unlooked else { return result };
        let note = format!("look-up before re-sending was impossible ({why}): re-sent");
        match result {
            Ok(mut receipt) => {
                let message =
                    receipt.answer.message.take().map_or(note.clone(), |message| format!("{note}; {message}"));
                receipt.answer.message = Some(message);
                Ok(receipt)
            }
            Err(error) => Err(DeliveryError { reason: format!("{}; {note}", error.reason), ..error }),
        }
    }

    async fn share_once(
        &self,
        builder: reqwest::RequestBuilder,
        request: &PublishRequest<'_>,
    ) -> Result<Receipt, DeliveryError> {
        let answer = self.call(builder, "share", Some(request)).await?;

        if let Some(error) = wire::error(answer.status.as_u16(), &answer.body) {
            let note = errors::publish_outcome(&error, request.uncertain, Utc::now())?;
            let message = if error.message.is_empty() { note } else { format!("{}; {note}", error.message) };
            let answer = PlatformAnswer { status: Some(error.status), code: Some(error.code), message: Some(message) };
            return Ok(Receipt { remote_id: None, url: None, answer });
        }
        answer.error_for_status(MAX_RETRY_AFTER)?;
        match wire::Status::parse(&answer.body) {
            Some(status) => Ok(self.receipt(&status, answer.platform_answer())),
            None => Err(DeliveryError::transient(
                answer.platform_answer(),
                format!("Weibo answered {} without a status object; the post may have gone through", answer.status),
            )
            .maybe_sent()),
        }
    }

    /// The multipart form with the picture at `path`, checked again: the
    /// file may have changed since `check`.
    async fn multipart(&self, text: &str, path: &str) -> Result<Form, DeliveryError> {
        let refuse = |message: String| DeliveryError::permanent(PlatformAnswer::default(), message);
        let bytes = crate::files::read_bounded_async(path, MAX_PICTURE_BYTES)
            .await
            .map_err(|error| refuse(format!("`{path}` cannot be read: {error}")))?;
        if bytes.len() as u64 >= MAX_PICTURE_BYTES {
            return Err(refuse(format!("`{path}` is {} bytes; Weibo takes pictures under 5 MB", bytes.len())));
        }
        let Some(mime) = render::picture_type(&bytes) else {
            return Err(refuse(format!("`{path}` is not a JPEG, GIF or PNG picture")));
        };
        let name = std::path::Path::new(path).file_name().and_then(|name| name.to_str()).unwrap_or("picture");
        let picture = Part::bytes(bytes)
            .file_name(name.to_string())
            .mime_str(mime)
            .map_err(|error| refuse(format!("the picture cannot be sent: {error}")))?;
        let mut form =
            Form::new().text("access_token", self.token.expose().to_string()).text("status", text.to_string());
        if let Some(rip) = &self.rip {
            form = form.text("rip", rip.clone());
        }
        Ok(form.part("pic", picture))
    }

    /// Look for the delivery in the account's recent statuses: the exact
    /// text, created no earlier than shortly before the occurrence. When
    /// Weibo refuses the look-up for good (10014: many share.json apps may
    /// not read the timeline), say so and answer "not there": the re-send
    /// is safe, since Weibo answers a repeat with 20019, which counts as
    /// published on such a retry.
    async fn find(&self, request: PublishRequest<'_>) -> Result<Option<Receipt>, DeliveryError> {
        let builder = self
            .client
            .get(self.base.join(TIMELINE_PATH))
            .query(&[("count", LOOKUP_COUNT)])
            .header(AUTHORIZATION, self.authorization.clone());
        let answer = self.call(builder, "user_timeline", Some(&request)).await?;
        let statuses = match self.read(&answer, wire::timeline, "timeline") {
            Ok(statuses) => statuses,
            Err(error) if error.class == crate::ErrorClass::Permanent => {
                let why = match &error.answer.code {
                    Some(code) => format!("user_timeline answered {code}"),
                    None => error.reason.clone(),
                };
                tracing::warn!(delivery = request.delivery_id, reason = %error.reason,
                    "look-up refused; re-sending (a repeat is answered 20019, taken as published)");
                if let Ok(mut unlooked) = self.unlooked.lock() {
                    if unlooked.len() >= MAX_UNLOOKED {
                        unlooked.clear();
                    }
                    unlooked.insert(request.delivery_id.to_string(), why);
                }
                return Ok(None);
            }
            Err(error) => return Err(error),
        };

        let since = DateTime::parse_from_rfc3339(request.occurrence).ok().map(|t| t.with_timezone(&Utc) - LOOKUP_SLACK);
        let found = statuses.iter().find(|status| {
            status.text.as_deref() == Some(request.content.text.as_str())
                && match (since, status.created()) {
                    (None, _) => true,
                    (Some(since), Some(created)) => created >= since,
                    (Some(_), None) => false,
                }
        });
        Ok(found.map(|status| {
            let answer = PlatformAnswer {
                status: Some(answer.status.as_u16()),
                code: None,
                message: Some(format!("status {} in the account's timeline has the exact text", status.id)),
            };
            self.receipt(status, answer)
        }))
    }

    /// `POST statuses/destroy.json` with the status id, where the app has
    /// the permission; where it has not, the answer says what to do by hand.
    async fn destroy(&self, request: RecallRequest<'_>) -> Result<Recalled, DeliveryError> {
        let Some(id) = request.remote_id.filter(|id| !id.is_empty()) else {
            return Ok(request.without_remote_id("Weibo"));
        };
        let form = wire::Destroy { access_token: self.token.expose(), id };
        let builder = self.client.post(self.base.join(DESTROY_PATH)).form(&form);
        let answer = http::traced_exchange(builder, "weibo", "destroy", Some(request.delivery_id)).await?;
        if let Some(error) = wire::error(answer.status.as_u16(), &answer.body) {
            let platform = PlatformAnswer {
                status: Some(error.status),
                code: Some(error.code.clone()),
                message: (!error.message.is_empty()).then(|| error.message.clone()),
            };
            if DESTROY_NOT_ALLOWED.contains(&error.code.trim()) {
                let place = request.url.map(|url| format!(" ({url})")).unwrap_or_default();
                let what_to_do = format!(
                    "this Weibo app may not delete statuses (error {}); sign in to weibo.com as the account \
                     and delete the status{place} by hand",
                    error.code.trim()
                );
                return Ok(Recalled::NotPossible { what_to_do, answer: platform });
            }
            if error.code.trim() == DESTROY_GONE {
                return Ok(Recalled::TakenDown { answer: platform, note: Some("the status was already gone".into()) });
            }
            return Err(errors::failure(&error, Utc::now()));
        }
        answer.error_for_status(MAX_RETRY_AFTER)?;
        Ok(Recalled::TakenDown { answer: answer.platform_answer(), note: None })
    }

    async fn get_uid(&self) -> Result<Probe, DeliveryError> {
        let builder = self.client.get(self.base.join(UID_PATH)).header(AUTHORIZATION, self.authorization.clone());
        let answer = self.call(builder, "get_uid", None).await?;
        let uid = self.read(&answer, wire::uid, "uid")?;
        Ok(Probe {
            checked: true,
            detail: format!("access token accepted for Weibo user {uid}"),
            expires_at: self.expires_at,
        })
    }

    /// Read a successful answer of a call that publishes nothing.
    fn read<T>(&self, answer: &Answer, parse: fn(&[u8]) -> Option<T>, what: &str) -> Result<T, DeliveryError> {
        if let Some(error) = wire::error(answer.status.as_u16(), &answer.body) {
            return Err(errors::failure(&error, Utc::now()));
        }
        answer.error_for_status(MAX_RETRY_AFTER)?;
        parse(&answer.body).ok_or_else(|| {
            DeliveryError::transient(answer.platform_answer(), format!("Weibo's {what} answer could not be read"))
        })
    }

    fn receipt(&self, status: &wire::Status, answer: PlatformAnswer) -> Receipt {
        let user = self.user_id.as_deref().or(status.user_id.as_deref());
        let item = status.mid.as_deref().unwrap_or(&status.id);
        Receipt { remote_id: Some(status.id.clone()), url: user.map(|user| format!("{WEB_URL}/{user}/{item}")), answer }
    }

    async fn call(
        &self,
        builder: reqwest::RequestBuilder,
        call: &'static str,
        request: Option<&PublishRequest<'_>>,
    ) -> Result<Answer, DeliveryError> {
        http::traced_exchange(builder, "weibo", call, request.map(|r| r.delivery_id)).await
    }
}

impl Adapter for WeiboAdapter {
    fn platform(&self) -> Platform {
        Platform::Weibo
    }

    fn recall<'a>(&'a self, request: RecallRequest<'a>) -> BoxFuture<'a, Result<Recalled, DeliveryError>> {
        Box::pin(self.destroy(request))
    }

    fn limit_scope(&self) -> Option<String> {
        Some(format!("weibo {} from this host", self.base.host()))
    }

    fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
        self.rules.render(content)
    }

    fn publish<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Receipt, DeliveryError>> {
        Box::pin(self.share(request))
    }

    fn lookup<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Option<Receipt>, DeliveryError>> {
        Box::pin(self.find(request))
    }

    fn probe(&self) -> BoxFuture<'_, Result<Probe, DeliveryError>> {
        Box::pin(self.get_uid())
    }

    fn refresh_credentials(&self) -> BoxFuture<'_, Result<(), DeliveryError>> {
        Box::pin(async { Err(DeliveryError::permanent(PlatformAnswer::default(), errors::TOKEN_REASON)) })
    }
}

impl fmt::Debug for WeiboAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeiboAdapter")
            .field("host", &self.base.host())
            .field("safe_domain", &self.rules.safe_domain)
            .field("max_length", &self.rules.max_length)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::InvalidSetting { field, message: message.into() }
}

/// `OAuth2 <token>`, checked without quoting the token.
fn authorization(token: &Secret) -> Result<HeaderValue, BuildError> {
    let value = token.expose();
    if value.trim().is_empty() {
        return Err(invalid("access_token", "must not be empty"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("access_token", "must be printable ASCII without spaces"));
    }
    let mut header = HeaderValue::from_str(&format!("OAuth2 {value}"))
        .map_err(|_| invalid("access_token", "cannot be sent in an HTTP header"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// The bare domain, lowercase: `example.gov.cn` (a leading `.` or `*.` is dropped).
fn safe_domain(text: &str) -> Result<String, BuildError> {
    let domain = text.trim().trim_start_matches("*.").trim_start_matches('.').to_ascii_lowercase();
    let bare = !domain.is_empty()
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if !bare {
        return Err(invalid("safe_domain", "must be the bare domain registered for the app, such as example.gov.cn"));
    }
    Ok(domain)
}

/// An RFC 3339 time, as a string or a TOML date-time (which arrives as a
/// one-entry map holding its text).
fn optional_time<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = DateTime<Utc>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 date and time with an offset, such as 2026-06-01T00:00:00+08:00")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
            DateTime::parse_from_rfc3339(text.trim())
                .map(|time| time.with_timezone(&Utc))
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(text), &self))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<DateTime<Utc>, A::Error> {
            let Some((_, text)) = map.next_entry::<String, String>()? else {
                return Err(serde::de::Error::custom("empty date-time"));
            };
            self.visit_str(&text)
        }
    }
    deserializer.deserialize_any(Visitor).map(Some)
}

/// A numeric id written as a string or an integer.
fn optional_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(u64),
    }
    Ok(Some(match Id::deserialize(deserializer)? {
        Id::Text(text) => text.trim().to_string(),
        Id::Number(number) => number.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(extra: serde_json::Value) -> Settings {
        let mut table =
            json!({ "access_token": "2.00tokenSEKRIT", "safe_domain": "example.gov.cn", "rip": "203.0.113.7" });
        if let (Some(table), Some(extra)) = (table.as_object_mut(), extra.as_object()) {
            table.extend(extra.clone());
        }
        serde_json::from_value(table).unwrap()
    }

    fn build(extra: serde_json::Value) -> Result<WeiboAdapter, BuildError> {
        WeiboAdapter::new(settings(extra), HttpOptions::default())
    }

    #[test]
    fn reads_settings_with_defaults() {
        let s = settings(json!({ "expires_at": "2026-06-01T00:00:00+08:00", "user_id": 1234567890 }));
        assert_eq!(s.max_length, 140);
        assert_eq!(s.user_id.as_deref(), Some("1234567890"));
        assert_eq!(s.expires_at.unwrap().to_rfc3339(), "2026-05-31T16:00:00+00:00");
        let adapter = WeiboAdapter::new(s, HttpOptions::default()).unwrap();
        assert_eq!(adapter.base.as_str(), "https://api.weibo.com");
        // A TOML date-time arrives as a one-entry map.
        let toml_like = settings(json!({ "expires_at": { "$__toml_private_datetime": "2026-06-01T00:00:00Z" } }));
        assert_eq!(toml_like.expires_at.unwrap().to_rfc3339(), "2026-06-01T00:00:00+00:00");
    }

    #[test]
    fn refuses_bad_settings() {
        let cases = [
            (json!({ "safe_domain": "https://example.gov.cn/" }), "invalid setting `safe_domain`"),
            (json!({ "safe_domain": "" }), "invalid setting `safe_domain`"),
            (json!({ "rip": "not an ip" }), "invalid setting `rip`"),
            (json!({ "rip": null }), "invalid setting `rip`: required"),
            (json!({ "user_id": "u123" }), "invalid setting `user_id`"),
            (json!({ "max_length": 0 }), "invalid setting `max_length`"),
            (json!({ "access_token": "" }), "invalid setting `access_token`: must not be empty"),
            (json!({ "access_token": "two SEKRIT words" }), "invalid setting `access_token`"),
        ];
        for (extra, expected) in cases {
            let error = build(extra.clone()).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{extra}: {error}");
            assert!(!error.contains("SEKRIT"), "{error}");
        }
        let error = serde_json::from_value::<Settings>(
            json!({ "access_token": "t", "safe_domain": "a.cn", "expires_at": "soon" }),
        )
        .unwrap_err();
        assert!(error.to_string().contains("RFC 3339"), "{error}");
        let error =
            serde_json::from_value::<Settings>(json!({ "access_token": "t", "safe_domain": "a.cn", "tokn": "x" }))
                .unwrap_err();
        assert!(error.to_string().contains("unknown field `tokn`"), "{error}");
    }

    #[test]
    fn normalizes_the_safe_domain() {
        let adapter = build(json!({ "safe_domain": " *.Example.GOV.cn " })).unwrap();
        assert_eq!(adapter.rules.safe_domain, "example.gov.cn");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let adapter = build(json!({})).unwrap();
        let shown = format!("{adapter:?} {:?}", settings(json!({})));
        assert!(!shown.contains("SEKRIT"), "{shown}");
        assert!(shown.contains("api.weibo.com"), "{shown}");
    }
}
