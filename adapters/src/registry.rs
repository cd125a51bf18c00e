//! The registry: which platforms exist, how an account's settings are read,
//! and how an adapter is built from them. The daemon goes through this module
//! and the [`Adapter`] trait only; it has no platform logic of its own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::{Adapter, Secret, Services, discourse, mastodon, tieba, webhook, wechat, weibo};

/// The platforms herald can publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Weibo,
    Discourse,
    Mastodon,
    Webhook,
    Wechat,
    /// Experimental: no official API (see [`crate::tieba`]).
    Tieba,
}

impl Platform {
    /// Every platform, in the order documentation lists them.
    pub const ALL: &'static [Platform] = &[
        Platform::Weibo,
        Platform::Wechat,
        Platform::Tieba,
        Platform::Discourse,
        Platform::Mastodon,
        Platform::Webhook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Platform::Weibo => "weibo",
            Platform::Discourse => "discourse",
            Platform::Mastodon => "mastodon",
            Platform::Webhook => "webhook",
            Platform::Wechat => "wechat",
            Platform::Tieba => "tieba",
        }
    }

    pub fn parse(name: &str) -> Option<Platform> {
        Self::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// The account settings of this platform that hold secrets. The daemon
    /// resolves `{ env | file | credential }` forms for these keys and warns
    /// about inline values.
    pub fn secret_fields(self) -> &'static [&'static str] {
        match self {
            Platform::Weibo => weibo::SECRET_FIELDS,
            Platform::Discourse => discourse::SECRET_FIELDS,
            Platform::Mastodon => mastodon::SECRET_FIELDS,
            Platform::Webhook => webhook::SECRET_FIELDS,
            Platform::Wechat => wechat::SECRET_FIELDS,
            Platform::Tieba => tieba::SECRET_FIELDS,
        }
    }

    /// A sensible default rate limit for accounts of this platform, as
    /// (requests, per window); `None` means unlimited unless configured.
    pub fn default_rate(self) -> Option<(u32, Duration)> {
        match self {
            // About 30 posts an hour per user at Weibo's normal level.
            Platform::Weibo => Some((30, HOUR)),
            // The default admin API limit: 60 requests a minute per key.
            Platform::Discourse => Some((60, Duration::from_secs(60))),
            // 300 statuses per 3 hours per account.
            Platform::Mastodon => Some((300, 3 * HOUR)),
            Platform::Webhook | Platform::Wechat => None,
            // Accounts posting through the client API get frozen: go slowly.
            Platform::Tieba => Some((6, HOUR)),
        }
    }

    /// Whether this platform's adapter is experimental (shown by `check`).
    pub fn experimental(self) -> bool {
        matches!(self, Platform::Tieba)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The platform-specific settings of one account, as read from its
/// `[accounts.<id>]` table (without the keys the daemon owns: `platform`,
/// `rate`, `concurrency`, `timeout`, `connect_timeout`).
#[derive(Debug, Clone)]
pub enum AccountSettings {
    Weibo(weibo::Settings),
    Discourse(discourse::Settings),
    Mastodon(mastodon::Settings),
    Webhook(webhook::Settings),
    Wechat(wechat::Settings),
    Tieba(tieba::Settings),
}

impl AccountSettings {
    /// Read the settings of `platform` from a deserializer (the account's
    /// table). Unknown keys are errors.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        platform: Platform,
        deserializer: D,
    ) -> Result<Self, D::Error> {
        Ok(match platform {
            Platform::Weibo => AccountSettings::Weibo(weibo::Settings::deserialize(deserializer)?),
            Platform::Discourse => AccountSettings::Discourse(discourse::Settings::deserialize(deserializer)?),
            Platform::Mastodon => AccountSettings::Mastodon(mastodon::Settings::deserialize(deserializer)?),
            Platform::Webhook => AccountSettings::Webhook(webhook::Settings::deserialize(deserializer)?),
            Platform::Wechat => AccountSettings::Wechat(wechat::Settings::deserialize(deserializer)?),
            Platform::Tieba => AccountSettings::Tieba(tieba::Settings::deserialize(deserializer)?),
        })
    }

    pub fn platform(&self) -> Platform {
        match self {
            AccountSettings::Weibo(_) => Platform::Weibo,
            AccountSettings::Discourse(_) => Platform::Discourse,
            AccountSettings::Mastodon(_) => Platform::Mastodon,
            AccountSettings::Webhook(_) => Platform::Webhook,
            AccountSettings::Wechat(_) => Platform::Wechat,
            AccountSettings::Tieba(_) => Platform::Tieba,
        }
    }

    /// What must never be stored or shown, should a platform (or a proxy)
    /// echo it in an answer: the account's secrets, and its endpoint URL
    /// (a webhook URL often carries a token in its path or query).
    pub fn sensitive_values(&self) -> Vec<&str> {
        let (secrets, url): (Vec<&Secret>, Option<&str>) = match self {
            AccountSettings::Weibo(s) => (vec![&s.access_token], s.base_url.as_deref()),
            AccountSettings::Discourse(s) => (vec![&s.api_key], Some(&s.base_url)),
            AccountSettings::Mastodon(s) => (vec![&s.access_token], Some(&s.base_url)),
            AccountSettings::Webhook(s) => (s.secret.iter().collect(), Some(&s.url)),
            AccountSettings::Wechat(s) => (vec![&s.secret], Some(&s.base_url)),
            AccountSettings::Tieba(s) => (vec![&s.bduss], Some(&s.base_url)),
        };
        secrets.into_iter().map(Secret::expose).chain(url).collect()
    }

    /// When the account's credentials stop working, when its settings say
    /// (Weibo's `expires_at`): `check` warns ahead of it.
    pub fn credentials_expire_at(&self) -> Option<DateTime<Utc>> {
        match self {
            AccountSettings::Weibo(s) => s.expires_at,
            AccountSettings::Discourse(_)
            | AccountSettings::Mastodon(_)
            | AccountSettings::Webhook(_)
            | AccountSettings::Wechat(_)
            | AccountSettings::Tieba(_) => None,
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Per-request network settings, common to every platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, from sending to the end of the answer.
    pub timeout: Duration,
    /// Certificates (PEM) of a private CA this account's client trusts
    /// besides the public roots: an office behind its own TLS proxy.
    pub extra_roots_pem: Option<Arc<[u8]>>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(10), timeout: Duration::from_secs(30), extra_roots_pem: None }
    }
}

/// Why an adapter could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid setting `{field}`: {message}")]
    InvalidSetting { field: &'static str, message: String },
    #[error("could not create the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Build the adapter for one account.
pub fn build(
    settings: &AccountSettings,
    http: HttpOptions,
    services: &Services,
) -> Result<Arc<dyn Adapter>, BuildError> {
    Ok(match settings {
        AccountSettings::Weibo(s) => Arc::new(weibo::WeiboAdapter::new(s.clone(), http)?),
        AccountSettings::Discourse(s) => Arc::new(discourse::DiscourseAdapter::new(s.clone(), http)?),
        AccountSettings::Mastodon(s) => Arc::new(mastodon::MastodonAdapter::new(s.clone(), http)?),
        AccountSettings::Webhook(s) => Arc::new(webhook::WebhookAdapter::new(s.clone(), http)?),
        AccountSettings::Wechat(s) => Arc::new(wechat::WechatAdapter::new(s.clone(), http, services)?),
        AccountSettings::Tieba(s) => Arc::new(tieba::TiebaAdapter::new(s.clone(), http)?),
    })
}
