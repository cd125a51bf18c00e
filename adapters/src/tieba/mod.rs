//! Baidu Tieba (experimental): post each delivery as a new thread through
//! the mobile client's endpoints, with the account's `BDUSS` cookie.
//!
//! There is no official posting API. Accounts that post this way have been
//! frozen or banned, so this adapter is marked experimental, its platform's
//! default rate is low, and a captcha demand is never retried. Flow: `POST
//! /c/s/login` (`bdusstoken`) for the `tbs` token, then `POST
//! /c/c/thread/add`, form-encoded and signed ([`sign`]). Answers are
//! classified by [`errors`]; the receipt URL is
//! `https://tieba.baidu.com/p/<tid>`.

mod errors;
mod sign;
mod wire;

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Deserialize;

use self::wire::{LoginAnswer, Status, ThreadAnswer};
use crate::content::char_len;
use crate::http::{self, Answer};
use crate::registry::{BuildError, HttpOptions, Platform};
use crate::{
    Adapter, BoxFuture, ContentProblem, DeliveryError, PlatformAnswer, PostContent, Probe, PublishRequest,
    RecallRequest, Recalled, Receipt, Rendered, Secret,
};

/// The settings that hold secrets.
pub const SECRET_FIELDS: &[&str] = &["bduss"];

/// The mobile client's host unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://tiebac.baidu.com";
/// The `_client_version` sent unless `client_version` says otherwise: the
/// one an open-source client (TiebaBackup) sends; unconfirmed.
pub const DEFAULT_CLIENT_VERSION: &str = "9.9.8.32";
/// The longest title, in characters, unless `max_title_chars` says
/// otherwise. Unconfirmed: Tieba documents no limit.
pub const DEFAULT_MAX_TITLE_CHARS: usize = 30;
/// The longest content, in characters, unless `max_content_chars` says
/// otherwise. Unconfirmed: Tieba documents no limit.
pub const DEFAULT_MAX_CONTENT_CHARS: usize = 5000;
/// Where a thread is seen: this prefix and its tid.
pub const THREAD_URL_PREFIX: &str = "https://tieba.baidu.com/p/";

/// The longest `Retry-After` honoured on an HTTP 429.
/// The client API's thread deletion, as open-source clients call it
/// (experimental, like the rest of Tieba: named for moderators, and not
/// confirmed to let an author delete their own thread; a refusal is
/// reported as not possible, with what to do by hand).
const DELETE_PATH: &str = "/c/c/bawu/delthread";
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The `[accounts.<id>]` settings of a Tieba account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The account's `BDUSS` cookie.
    pub bduss: Secret,
    /// The forum's name (sent as `kw`).
    pub forum: String,
    /// The forum's numeric id, sent as `fid` when set.
    #[serde(default)]
    pub fid: Option<u64>,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_client_version")]
    pub client_version: String,
    #[serde(default = "default_max_title_chars")]
    pub max_title_chars: usize,
    #[serde(default = "default_max_content_chars")]
    pub max_content_chars: usize,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}

fn default_client_version() -> String {
    DEFAULT_CLIENT_VERSION.to_string()
}

fn default_max_title_chars() -> usize {
    DEFAULT_MAX_TITLE_CHARS
}

fn default_max_content_chars() -> usize {
    DEFAULT_MAX_CONTENT_CHARS
}

impl Settings {
    /// Settings with every default, for `bduss` and `forum`.
    pub fn new(bduss: Secret, forum: &str) -> Self {
        Settings {
            bduss,
            forum: forum.to_string(),
            fid: None,
            base_url: default_base_url(),
            client_version: default_client_version(),
            max_title_chars: DEFAULT_MAX_TITLE_CHARS,
            max_content_chars: DEFAULT_MAX_CONTENT_CHARS,
        }
    }
}

/// A Tieba account, ready to post.
pub struct TiebaAdapter {
    bduss: Secret,
    forum: String,
    fid: Option<u64>,
    client_version: String,
    max_title_chars: usize,
    max_content_chars: usize,
    login_url: Url,
    thread_url: Url,
    delete_url: Url,
    client: reqwest::Client,
}

impl TiebaAdapter {
    pub fn new(settings: Settings, http: HttpOptions) -> Result<Self, BuildError> {
        if settings.bduss.expose().trim().is_empty() {
            return Err(invalid("bduss", "must not be empty"));
        }
        if settings.forum.trim().is_empty() {
            return Err(invalid("forum", "must not be empty"));
        }
        if settings.client_version.trim().is_empty() {
            return Err(invalid("client_version", "must not be empty"));
        }
        if settings.max_title_chars == 0 || settings.max_content_chars == 0 {
            return Err(invalid("max_title_chars", "the limits must be above zero"));
        }
        let base = settings.base_url.trim_end_matches('/');
        let url = |path: &str| {
            Url::parse(&format!("{base}{path}"))
                .map_err(|error| invalid("base_url", format!("not a valid URL: {error}")))
        };
        let login_url = url("/c/s/login")?;
        if !matches!(login_url.scheme(), "http" | "https") || login_url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("base_url", "must be an http or https URL with a host"));
        }
        Ok(TiebaAdapter {
            bduss: settings.bduss.clone(),
            forum: settings.forum.trim().to_string(),
            fid: settings.fid,
            client_version: settings.client_version.clone(),
            max_title_chars: settings.max_title_chars,
            max_content_chars: settings.max_content_chars,
            thread_url: url("/c/c/thread/add")?,
            delete_url: url(DELETE_PATH)?,
            login_url,
            client: http::client(&http)?,
        })
    }

    /// Send a signed form; the answer body, or what went wrong.
    async fn call(
        &self,
        what: &'static str,
        url: &Url,
        form: Vec<(&'static str, String)>,
    ) -> Result<Answer, DeliveryError> {
        let started = Instant::now();
        let form = sign::signed(form);
        let response = self.client.post(url.clone()).form(&form).send().await.map_err(|error| {
            let error = http::transport_error(error);
            tracing::debug!(call = what, maybe_sent = error.maybe_sent, error = %error.reason, "tieba request failed");
            DeliveryError { reason: format!("Tieba {what}: {}", error.reason), ..error }
        })?;
        let answer = Answer::read(response).await;
        let status: Status = serde_json::from_slice(&answer.body).unwrap_or_default();
        tracing::debug!(
            call = what,
            status = answer.status.as_u16(),
            error_code = status.error_code.unwrap_or(0),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "tieba answered"
        );
        let platform_answer = PlatformAnswer {
            status: Some(answer.status.as_u16()),
            code: status.error_code.map(|code| code.to_string()),
            message: status.error_msg.clone().filter(|message| !message.is_empty()),
        };
        let Some(code) = status.error_code else {
            answer.error_for_status(MAX_RETRY_AFTER)?;
            return Err(DeliveryError::transient(
                answer.platform_answer(),
                format!("Tieba {what}: no error_code in the answer"),
            )
            .maybe_sent());
        };
        if let Some(class) = errors::classify(code, status.error_msg.as_deref().unwrap_or_default()) {
            let message = status.error_msg.as_deref().unwrap_or("no message");
            return Err(DeliveryError::new(
                class,
                platform_answer,
                format!("Tieba {what}: error_code {code}: {message}"),
            ));
        }
        answer.error_for_status(MAX_RETRY_AFTER)?;
        Ok(answer)
    }

    /// Log in with the BDUSS and get the `tbs` anti-CSRF token.
    async fn tbs(&self) -> Result<Secret, DeliveryError> {
        let form =
            vec![("_client_version", self.client_version.clone()), ("bdusstoken", self.bduss.expose().to_string())];
        let answer = self.call("login", &self.login_url, form).await?;
        let login: LoginAnswer = serde_json::from_slice(&answer.body).map_err(|error| {
            DeliveryError::transient(answer.platform_answer(), format!("Tieba login: unexpected answer: {error}"))
        })?;
        login.anti.and_then(|anti| anti.tbs).filter(|tbs| !tbs.is_empty()).map(Secret::new).ok_or_else(|| {
            DeliveryError::permanent(answer.platform_answer(), "Tieba login: the BDUSS was not accepted (no tbs)")
        })
    }

    async fn post_thread(&self, request: PublishRequest<'_>) -> Result<Receipt, DeliveryError> {
        let content = request.content;
        let title = content
            .title
            .clone()
            .ok_or_else(|| DeliveryError::permanent(PlatformAnswer::default(), "Tieba threads need a title"))?;
        let tbs = self.tbs().await?;
        let mut form = vec![
            ("BDUSS", self.bduss.expose().to_string()),
            ("_client_type", "2".to_string()),
            ("_client_version", self.client_version.clone()),
            ("anonymous", "0".to_string()),
            ("content", content.text.clone()),
            ("kw", self.forum.clone()),
            ("tbs", tbs.expose().to_string()),
            ("title", title),
        ];
        if let Some(fid) = self.fid {
            form.push(("fid", fid.to_string()));
        }
        let answer = self.call("thread/add", &self.thread_url, form).await?;
        let thread: ThreadAnswer = serde_json::from_slice(&answer.body).map_err(|error| {
            DeliveryError::transient(answer.platform_answer(), format!("Tieba thread/add: unexpected answer: {error}"))
                .maybe_sent()
        })?;
        if thread.needs_captcha() {
            tracing::warn!(delivery = request.delivery_id, account = request.account_id, "tieba demanded a captcha");
            return Err(DeliveryError::permanent(answer.platform_answer(), errors::CAPTCHA_REASON));
        }
        let Some(tid) = thread.tid() else {
            return Err(DeliveryError::transient(answer.platform_answer(), "Tieba thread/add: no tid in the answer")
                .maybe_sent());
        };
        tracing::info!(delivery = request.delivery_id, account = request.account_id, tid, "tieba thread posted");
        Ok(Receipt {
            remote_id: Some(tid.to_string()),
            url: Some(format!("{THREAD_URL_PREFIX}{tid}")),
            answer: PlatformAnswer { message: None, ..answer.platform_answer() },
        })
    }
}

impl TiebaAdapter {
    /// `POST /c/c/bawu/delthread` (`z` = the thread id, `fid`), signed like
    /// a post. Busy answers are retried like a post's; any other refusal is
    /// "not possible": a person deletes the thread in the app or on the web.
    async fn delete_thread(&self, request: RecallRequest<'_>) -> Result<Recalled, DeliveryError> {
        let Some(tid) = request.remote_id.filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())) else {
            return Ok(request.without_remote_id("Tieba"));
        };
        let by_hand = |why: String, answer: PlatformAnswer| Recalled::NotPossible {
            what_to_do: format!(
                "{why}; sign in to Tieba as the account and delete the thread {THREAD_URL_PREFIX}{tid} by hand"
            ),
            answer,
        };
        let Some(fid) = self.fid else {
            return Ok(by_hand(
                "the account has no `fid` setting, which Tieba's delete call needs".into(),
                PlatformAnswer::default(),
            ));
        };
        let tbs = self.tbs().await?;
        let form = vec![
            ("BDUSS", self.bduss.expose().to_string()),
            ("_client_type", "2".to_string()),
            ("_client_version", self.client_version.clone()),
            ("fid", fid.to_string()),
            ("is_frs_mask", "0".to_string()),
            ("tbs", tbs.expose().to_string()),
            ("z", tid.to_string()),
        ];
        match self.call("delthread", &self.delete_url, form).await {
            Ok(answer) => Ok(Recalled::TakenDown { answer: answer.platform_answer(), note: None }),
            Err(error) if error.class == crate::ErrorClass::Permanent => Ok(by_hand(error.reason, error.answer)),
            Err(error) => Err(error),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::InvalidSetting { field, message: message.into() }
}

impl Adapter for TiebaAdapter {
    fn platform(&self) -> Platform {
        Platform::Tieba
    }

    fn recall<'a>(&'a self, request: RecallRequest<'a>) -> BoxFuture<'a, Result<Recalled, DeliveryError>> {
        Box::pin(self.delete_thread(request))
    }

    fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
        let mut problems = Vec::new();
        match content.title.as_deref().map(str::trim) {
            None | Some("") => problems.push(ContentProblem::new("title", "Tieba threads need a title")),
            Some(title) if char_len(title) > self.max_title_chars => problems.push(ContentProblem::new(
                "title",
                format!(
                    "{} characters; the limit is {} (setting max_title_chars)",
                    char_len(title),
                    self.max_title_chars
                ),
            )),
            Some(_) => {}
        }
        if content.body.trim().is_empty() {
            problems.push(ContentProblem::new("body", "must not be empty"));
        }
        if !content.images.is_empty() {
            problems.push(ContentProblem::new(
                "images",
                "the Tieba adapter cannot post images; set `images = []` in the post's tieba overrides",
            ));
        }
        let text = match &content.link {
            Some(link) => format!("{}\n{link}", content.body.trim()),
            None => content.body.trim().to_string(),
        };
        if char_len(&text) > self.max_content_chars {
            problems.push(ContentProblem::new(
                "body",
                format!(
                    "{} characters with the link; the limit is {} (setting max_content_chars)",
                    char_len(&text),
                    self.max_content_chars
                ),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Rendered {
            title: content.title.as_deref().map(|title| title.trim().to_string()),
            text,
            link: content.link.clone(),
            images: Vec::new(),
        })
    }

    fn publish<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Receipt, DeliveryError>> {
        Box::pin(self.post_thread(request))
    }

    fn probe(&self) -> BoxFuture<'_, Result<Probe, DeliveryError>> {
        Box::pin(async {
            self.tbs().await?;
            Ok(Probe {
                checked: true,
                detail: "BDUSS accepted (tbs fetched); the Tieba adapter is experimental".into(),
                expires_at: None,
            })
        })
    }
}

/// Shows the forum and host, never the BDUSS.
impl fmt::Debug for TiebaAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TiebaAdapter")
            .field("forum", &self.forum)
            .field("fid", &self.fid)
            .field("host", &self.login_url.host_str().unwrap_or_default())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(settings: Settings) -> TiebaAdapter {
        TiebaAdapter::new(settings, HttpOptions::default()).unwrap()
    }

    fn content(title: Option<&str>, body: &str) -> PostContent {
        PostContent {
            title: title.map(str::to_string),
            body: body.into(),
            link: Some("https://example.gov.cn/a".into()),
            images: vec![],
        }
    }

    #[test]
    fn settings_read_with_defaults() {
        let settings: Settings = serde_json::from_str(r#"{"bduss": "B", "forum": "武汉"}"#).unwrap();
        assert_eq!(settings.base_url, DEFAULT_BASE_URL);
        assert_eq!(settings.client_version, DEFAULT_CLIENT_VERSION);
        assert_eq!((settings.max_title_chars, settings.max_content_chars), (30, 5000));
        assert_eq!(settings.fid, None);
        let error = serde_json::from_str::<Settings>(r#"{"bduss": "B", "forum": "f", "tbs": "x"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `tbs`"));
    }

    #[test]
    fn render_puts_the_link_after_the_body_and_checks_limits() {
        let mut settings = Settings::new(Secret::new("B"), "f");
        settings.max_title_chars = 5;
        settings.max_content_chars = 40;
        let adapter = adapter(settings);
        let rendered = adapter.render(&content(Some(" 反诈提醒 "), " Beware. ")).unwrap();
        assert_eq!(rendered.text, "Beware.\nhttps://example.gov.cn/a");
        assert_eq!(rendered.title.as_deref(), Some("反诈提醒"));

        let problems = adapter.render(&content(Some("反诈提醒反诈提醒"), &"x".repeat(20))).unwrap_err();
        let fields: Vec<_> = problems.iter().map(|problem| problem.field.as_str()).collect();
        assert_eq!(fields, ["title", "body"]);
        assert!(problems[0].message.contains("max_title_chars"));

        let mut with_image = content(None, "b");
        with_image.images.push("a.jpg".into());
        let fields: Vec<_> =
            adapter.render(&with_image).unwrap_err().into_iter().map(|problem| problem.field).collect();
        assert_eq!(fields, ["title", "images"]);
    }

    #[test]
    fn bad_settings_are_refused() {
        for (bduss, forum, base) in [("", "f", DEFAULT_BASE_URL), ("B", " ", DEFAULT_BASE_URL), ("B", "f", "ftp://x")] {
            let mut settings = Settings::new(Secret::new(bduss), forum);
            settings.base_url = base.into();
            assert!(TiebaAdapter::new(settings, HttpOptions::default()).is_err(), "{bduss} {forum} {base}");
        }
    }

    #[test]
    fn debug_hides_the_bduss() {
        let settings = Settings::new(Secret::new("BDUSS-S3CRET"), "f");
        let adapter = adapter(settings.clone());
        for shown in [format!("{settings:?}"), format!("{adapter:?}")] {
            assert!(!shown.contains("BDUSS-S3CRET"), "{shown}");
        }
    }
}
