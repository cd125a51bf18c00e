//! Platform adapters for herald: the [`Adapter`] trait every platform
//! implements, the error classes that tell the daemon what to do after a
//! failed attempt, and one module per platform.
//!
//! This crate knows nothing of the store, the scheduler or cron: an adapter
//! turns a post's content into what its platform accepts ([`Adapter::render`])
//! and publishes one rendered post ([`Adapter::publish`]). Retries, backoff,
//! rate limits and the audit log belong to the daemon.

pub mod content;
pub mod discourse;
pub mod endpoint;
pub mod error;
pub mod files;
pub mod http;
pub mod mastodon;
pub mod registry;
pub mod secret;
pub mod services;
pub mod tieba;
pub mod webhook;
pub mod wechat;
pub mod weibo;

use std::future::Future;
use std::pin::Pin;

pub use content::{ContentProblem, PostContent, Rendered};
pub use error::{DeliveryError, ErrorClass, PlatformAnswer};
pub use registry::{AccountSettings, BuildError, Platform};
pub use secret::Secret;
pub use services::{CredentialCache, MemoryCache, Services};

/// A boxed future, so that [`Adapter`] stays object-safe (`Arc<dyn Adapter>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One attempt to publish one delivery.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    /// The delivery id; also the idempotency key sent to platforms that accept one.
    pub delivery_id: &'a str,
    pub post_id: &'a str,
    pub account_id: &'a str,
    /// The occurrence this delivery belongs to (RFC 3339, UTC).
    pub occurrence: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// True when an earlier attempt may have reached the platform (a crash
    /// while in flight, or a timeout after the request was sent). Adapters
    /// use it to treat "duplicate content" answers as evidence of success.
    pub uncertain: bool,
    pub content: &'a Rendered,
}

/// What the platform answered to a successful publish.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The platform's id of the published item, when it gives one.
    pub remote_id: Option<String>,
    /// The public URL of the published item, when there is one.
    pub url: Option<String>,
    /// The HTTP status and platform code/message of the final answer.
    pub answer: PlatformAnswer,
}

/// What a harmless authenticated call told about an account (`herald check --probe`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    /// False when the platform offers no harmless authenticated call, so
    /// nothing could be verified.
    pub checked: bool,
    /// What was checked, for people (e.g. "token fetched", "credentials accepted").
    pub detail: String,
    /// When the credentials stop working, when the platform or config says.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A published copy to take down (`herald recall`): what herald recorded
/// when the delivery went out.
#[derive(Debug, Clone)]
pub struct RecallRequest<'a> {
    pub delivery_id: &'a str,
    pub post_id: &'a str,
    pub account_id: &'a str,
    /// The platform's id of the published item, from the delivery's receipt.
    pub remote_id: Option<&'a str>,
    /// Its public URL, from the receipt.
    pub url: Option<&'a str>,
}

/// What became of a recall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recalled {
    /// The platform took the copy down, or says it is already gone.
    TakenDown {
        answer: PlatformAnswer,
        /// What stays visible despite the take-down (WeChat: followers keep
        /// a mass-sent message card), for the operator's report.
        note: Option<String>,
    },
    /// The platform (or this account's permissions) offers no way to take
    /// it down: a person must, and `what_to_do` says how.
    NotPossible { what_to_do: String, answer: PlatformAnswer },
}

impl RecallRequest<'_> {
    /// The answer when herald recorded no remote id for the copy (the
    /// platform gave none): only a person can find it.
    pub fn without_remote_id(&self, platform: &str) -> Recalled {
        let place = self.url.map(|url| format!(" at {url}")).unwrap_or_default();
        Recalled::NotPossible {
            what_to_do: format!(
                "{platform} gave no id for this copy when it was published, so herald cannot name it; \
                 find the post{place} and delete it by hand"
            ),
            answer: PlatformAnswer::default(),
        }
    }
}

/// One platform account, ready to publish.
///
/// Implementations hold their HTTP client and settings; they are shared by
/// every delivery of the account (`Arc<dyn Adapter>`), so `publish` may run
/// concurrently when the account's concurrency allows it.
pub trait Adapter: Send + Sync {
    /// The platform this adapter speaks to.
    fn platform(&self) -> Platform;

    /// Render a post's content the way this platform will receive it, or say
    /// why the platform would refuse it. Pure: no network, used by `check`.
    fn render(&self, content: &PostContent) -> Result<Rendered, Vec<ContentProblem>>;

    /// Publish one rendered post.
    fn publish<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Receipt, DeliveryError>>;

    /// Look on the platform for a delivery whose earlier attempt may have
    /// gone through (`request.uncertain`), matched by its idempotency key or
    /// content. `Ok(Some(receipt))` means it is there and must not be sent
    /// again; `Ok(None)` means it is not (or the platform cannot tell), so
    /// the daemon publishes.
    fn lookup<'a>(&'a self, request: PublishRequest<'a>) -> BoxFuture<'a, Result<Option<Receipt>, DeliveryError>> {
        let _ = request;
        Box::pin(async { Ok(None) })
    }

    /// Can the daemon send a delivery again without publishing it twice,
    /// when it does not know whether an earlier attempt went through (herald
    /// was killed while it was in flight)? True when the platform
    /// de-duplicates by the idempotency key, or when `lookup` reliably finds
    /// an earlier attempt. The daemon then gives an interrupted last attempt
    /// again instead of failing the delivery. Default: no.
    fn resend_is_safe(&self) -> bool {
        false
    }

    /// Make one harmless authenticated call (no publishing) to show the
    /// account's credentials work.
    fn probe(&self) -> BoxFuture<'_, Result<Probe, DeliveryError>> {
        Box::pin(async {
            Ok(Probe {
                checked: false,
                detail: "not checked: this platform has no harmless authenticated call".into(),
                expires_at: None,
            })
        })
    }

    /// What this account shares its platform limits with, when some limits
    /// are not the account's own: accounts with the same scope are paused
    /// together after a [`DeliveryError::shared_limit`] rate limit. WeChat:
    /// the AppID (its API quotas); Weibo: the API host as reached from this
    /// host (its per-IP limit, 10022). `None`: every limit is the account's.
    fn limit_scope(&self) -> Option<String> {
        None
    }

    /// How long one attempt may take in all, when the adapter needs longer
    /// than the daemon's default (request timeouts plus a margin): WeChat
    /// follows a publish job for minutes. `None` keeps the default.
    fn attempt_limit(&self) -> Option<std::time::Duration> {
        None
    }

    /// Take a published copy down (`herald recall`), by the remote id herald
    /// recorded. Errors are classified like a publish's: the daemon retries
    /// transient ones and refreshes expired credentials once. Default: not
    /// possible on this platform.
    fn recall<'a>(&'a self, request: RecallRequest<'a>) -> BoxFuture<'a, Result<Recalled, DeliveryError>> {
        let what_to_do = match request.url {
            Some(url) => format!("herald cannot delete on this platform; delete {url} by hand"),
            None => "herald cannot delete on this platform; delete the post by hand".to_string(),
        };
        Box::pin(async move { Ok(Recalled::NotPossible { what_to_do, answer: PlatformAnswer::default() }) })
    }

    /// Obtain fresh credentials after the platform said they expired. The
    /// daemon calls this at most once per attempt, then publishes once more.
    /// Platforms without refreshable credentials answer a permanent error.
    fn refresh_credentials(&self) -> BoxFuture<'_, Result<(), DeliveryError>> {
        Box::pin(async {
            Err(DeliveryError::permanent(
                PlatformAnswer::default(),
                "credentials expired and this platform cannot refresh them",
            ))
        })
    }
}
