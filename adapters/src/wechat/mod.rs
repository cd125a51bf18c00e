//! WeChat Official Account: publish each delivery as an article.
//!
//! Default mode `publish`: upload the cover (`material/add_material`,
//! `type=thumb`) and the body's other images (`media/uploadimg`), save a
//! draft (`draft/add`), submit it (`freepublish/submit`), and poll
//! `freepublish/get` until WeChat says it is published; the receipt is the
//! publish_id and the article URL. Mode `mass_send` sends the draft to every
//! follower with `message/mass/sendall`, the delivery id as `clientmsgid`.
//!
//! Every answer is HTTP 200 with an `errcode`, classified by [`errors`]. The
//! access_token, uploaded media and publish records live in the daemon's
//! credential cache ([`crate::Services`]), so retries, restarts and
//! concurrent deliveries share them.

mod api;
mod errors;
mod publish;
mod recall;
mod records;
pub mod render;
mod token;
mod wire;

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use self::api::WechatApi;
use self::records::Records;
use self::token::TokenKeeper;
use crate::content::char_len;
use crate::registry::{BuildError, HttpOptions, Platform};
use crate::{
    Adapter, BoxFuture, ContentProblem, DeliveryError, PostContent, Probe, PublishRequest, Receipt, Rendered, Secret,
    Services, http,
};

/// The settings that hold secrets.
pub const SECRET_FIELDS: &[&str] = &["secret"];

/// Where the API lives unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.weixin.qq.com";
/// How often `freepublish/get` is polled unless `poll_interval` says otherwise.
pub const DEFAULT_POLL_INTERVAL: &str = "5s";
/// How long a publish job is followed unless `poll_timeout` says otherwise.
pub const DEFAULT_POLL_TIMEOUT: &str = "10m";

/// Which call fetches the access_token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpoint {
    /// `POST cgi-bin/stable_token` (preferred: a fetch does not invalidate
    /// the token other systems hold).
    #[default]
    Stable,
    /// `GET cgi-bin/token` (each fetch invalidates the previous token after
    /// about five minutes).
    Classic,
}

/// What a delivery does with its article.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Free publishing (`freepublish/submit`): no notification to followers.
    #[default]
    Publish,
    /// Mass send to every follower (`message/mass/sendall`); tight quotas.
    MassSend,
}

/// The `[accounts.<id>]` settings of a WeChat Official Account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub appid: String,
    /// The AppSecret.
    pub secret: Secret,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default)]
    pub token_endpoint: TokenEndpoint,
    #[serde(default)]
    pub mode: Mode,
    /// The article's author (at most 16 characters).
    #[serde(default)]
    pub author: Option<String>,
    /// How often to ask whether a submitted article is published (e.g. "5s").
    #[serde(default = "default_poll_interval")]
    pub poll_interval: String,
    /// How long to wait for a final publish status before the attempt ends
    /// as transient and uncertain (e.g. "10m"); the next attempt looks the
    /// job up instead of submitting again.
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout: String,
    #[serde(default)]
    pub need_open_comment: bool,
    #[serde(default)]
    pub only_fans_can_comment: bool,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}

fn default_poll_interval() -> String {
    DEFAULT_POLL_INTERVAL.to_string()
}

fn default_poll_timeout() -> String {
    DEFAULT_POLL_TIMEOUT.to_string()
}

impl Settings {
    /// Settings with every default, for `appid` and `secret`.
    pub fn new(appid: &str, secret: Secret) -> Self {
        Settings {
            appid: appid.to_string(),
            secret,
            base_url: default_base_url(),
            token_endpoint: TokenEndpoint::default(),
            mode: Mode::default(),
            author: None,
            poll_interval: default_poll_interval(),
            poll_timeout: default_poll_timeout(),
            need_open_comment: false,
            only_fans_can_comment: false,
        }
    }
}

/// A WeChat Official Account, ready to publish.
pub struct WechatAdapter {
    appid: String,
    base_host: String,
    mode: Mode,
    author: Option<String>,
    need_open_comment: bool,
    only_fans_can_comment: bool,
    poll_interval: Duration,
    poll_timeout: Duration,
    api: WechatApi,
    tokens: TokenKeeper,
    records: Records,
}

impl WechatAdapter {
    pub fn new(settings: Settings, http: HttpOptions, services: &Services) -> Result<Self, BuildError> {
        if settings.appid.trim().is_empty() {
            return Err(invalid("appid", "must not be empty"));
        }
        if settings.secret.expose().is_empty() {
            return Err(invalid("secret", "must not be empty"));
        }
        let base = reqwest::Url::parse(&settings.base_url)
            .map_err(|error| invalid("base_url", format!("not a valid URL: {error}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("base_url", "must be an http or https URL with a host"));
        }
        if let Some(author) = &settings.author
            && char_len(author) > render::MAX_AUTHOR_CHARS
        {
            return Err(invalid(
                "author",
                format!("{} characters; WeChat allows at most {}", char_len(author), render::MAX_AUTHOR_CHARS),
            ));
        }
        let poll_interval = duration("poll_interval", &settings.poll_interval)?;
        let poll_timeout = duration("poll_timeout", &settings.poll_timeout)?;
        let client = http::client(&http)?;
        Ok(WechatAdapter {
            appid: settings.appid.clone(),
            base_host: base.host_str().unwrap_or_default().to_string(),
            mode: settings.mode,
            author: settings.author.clone(),
            need_open_comment: settings.need_open_comment,
            only_fans_can_comment: settings.only_fans_can_comment,
            poll_interval,
            poll_timeout,
            api: WechatApi::new(client, &settings.base_url),
            tokens: TokenKeeper::new(
                &services.account,
                &settings.appid,
                settings.secret.clone(),
                settings.token_endpoint,
                services.cache.clone(),
            ),
            records: Records::new(&services.account, &settings.appid, services.cache.clone()),
        })
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> BuildError {
    BuildError::InvalidSetting { field, message: message.into() }
}

fn duration(field: &'static str, text: &str) -> Result<Duration, BuildError> {
    let value = humantime::parse_duration(text)
        .map_err(|error| invalid(field, format!("not a duration like \"5s\" or \"10m\": {error}")))?;
    if value.is_zero() {
        return Err(invalid(field, "must be longer than zero"));
    }
    Ok(value)
}

impl Adapter for WechatAdapter {
    fn attempt_limit(&self) -> Option<Duration> {
        // Token, uploads and submit, then following the publish job.
        Some(self.poll_timeout + Duration::from_secs(120))
    }

    fn platform(&self) -> Platform {
        Platform::Wechat
    }

    fn limit_scope(&self) -> Option<String> {
        Some(format!("wechat appid {}", self.appid))
    }

    fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>> {
        render::render(content)
    }

    fn publish<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Receipt, DeliveryError>> {
        Box::pin(self.deliver(request))
    }

    fn lookup<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Option<Receipt>, DeliveryError>> {
        Box::pin(self.look_up(request))
    }

    fn probe(&self) -> BoxFuture<'_, Result<Probe, DeliveryError>> {
        Box::pin(async {
            let token = self.tokens.probe(&self.api).await?;
            Ok(Probe {
                checked: true,
                detail: "access_token fetched from stable_token (AppID, AppSecret and IP whitelist accepted)".into(),
                expires_at: Some(token.expires_at),
            })
        })
    }

    fn refresh_credentials(&self) -> BoxFuture<'_, Result<(), DeliveryError>> {
        Box::pin(self.tokens.refresh(&self.api))
    }

    fn recall<'a>(
        &'a self,
        request: crate::RecallRequest<'a>,
    ) -> BoxFuture<'a, Result<crate::Recalled, DeliveryError>> {
        Box::pin(self.take_down(request))
    }
}

/// Shows the AppID and host, never the secret or a token.
impl fmt::Debug for WechatAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WechatAdapter")
            .field("appid", &self.appid)
            .field("host", &self.base_host)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(settings: Settings) -> Result<WechatAdapter, BuildError> {
        WechatAdapter::new(settings, HttpOptions::default(), &Services::in_memory("acct"))
    }

    #[test]
    fn settings_read_with_defaults() {
        let settings: Settings = serde_json::from_str(r#"{"appid": "wx1", "secret": "S3CRET"}"#).unwrap();
        assert_eq!(settings.base_url, DEFAULT_BASE_URL);
        assert_eq!(settings.token_endpoint, TokenEndpoint::Stable);
        assert_eq!(settings.mode, Mode::Publish);
        assert_eq!((settings.poll_interval.as_str(), settings.poll_timeout.as_str()), ("5s", "10m"));
        assert!(!settings.need_open_comment && !settings.only_fans_can_comment);
        let adapter = build(settings).unwrap();
        assert_eq!((adapter.poll_interval, adapter.poll_timeout), (Duration::from_secs(5), Duration::from_secs(600)));
    }

    #[test]
    fn settings_read_every_option() {
        let settings: Settings = serde_json::from_str(
            r#"{"appid": "wx1", "secret": "S3CRET", "base_url": "http://127.0.0.1:9/wechat",
                "token_endpoint": "classic", "mode": "mass_send", "author": "市公安局",
                "poll_interval": "250ms", "poll_timeout": "1m", "need_open_comment": true,
                "only_fans_can_comment": true}"#,
        )
        .unwrap();
        assert_eq!((settings.token_endpoint, settings.mode), (TokenEndpoint::Classic, Mode::MassSend));
        let adapter = build(settings).unwrap();
        assert_eq!(adapter.poll_interval, Duration::from_millis(250));
        assert!(adapter.need_open_comment && adapter.only_fans_can_comment);
    }

    #[test]
    fn bad_settings_are_refused_without_quoting_the_secret() {
        let unknown = serde_json::from_str::<Settings>(r#"{"appid": "wx1", "secret": "S3CRET", "mdoe": "x"}"#);
        assert!(unknown.unwrap_err().to_string().contains("unknown field `mdoe`"));
        let bad_mode = serde_json::from_str::<Settings>(r#"{"appid": "wx1", "secret": "S3CRET", "mode": "blast"}"#);
        assert!(bad_mode.is_err());

        let mut settings = Settings::new("wx1", Secret::new("S3CRET"));
        settings.author = Some("作".repeat(17));
        let error = build(settings).unwrap_err().to_string();
        assert!(error.starts_with("invalid setting `author`: 17 characters"), "{error}");

        for (field, value) in [("poll_interval", "soon"), ("poll_timeout", "0s"), ("base_url", "ftp://x/")] {
            let mut settings = Settings::new("wx1", Secret::new("S3CRET"));
            match field {
                "poll_interval" => settings.poll_interval = value.into(),
                "poll_timeout" => settings.poll_timeout = value.into(),
                _ => settings.base_url = value.into(),
            }
            let error = build(settings).unwrap_err().to_string();
            assert!(error.starts_with(&format!("invalid setting `{field}`")), "{error}");
            assert!(!error.contains("S3CRET"), "{error}");
        }
        assert!(build(Settings::new("wx1", Secret::new(""))).is_err());
        assert!(build(Settings::new(" ", Secret::new("S3CRET"))).is_err());
    }

    #[test]
    fn debug_shows_neither_secret_nor_token() {
        let settings = Settings::new("wx1", Secret::new("S3CRET"));
        let adapter = build(settings.clone()).unwrap();
        for shown in [format!("{settings:?}"), format!("{adapter:?}")] {
            assert!(!shown.contains("S3CRET"), "{shown}");
        }
        assert!(format!("{adapter:?}").contains("api.weixin.qq.com"));
    }
}
