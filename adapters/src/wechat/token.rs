//! The account's access_token: fetched from `stable_token` (or the older
//! `token`), kept with its expiry in the credential cache so every delivery
//! of the account and the next run share it, refreshed a little before it
//! expires, and replaced at once when WeChat rejects it. One fetch at a
//! time per adapter.
//!
//! A replacement is first asked for without forcing (WeChat's current
//! stable token may already differ from the rejected one); only when WeChat
//! answers the rejected token again is a new one forced, and forced
//! refreshes are budgeted per AppID as WeChat allows them: one every 30 s,
//! 20 a day (counted per day in Beijing time). When the budget is gone the
//! attempt ends rate limited with the reason, and nothing is forced.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::TokenEndpoint;
use super::api::WechatApi;
use super::errors::{self, Api};
use super::wire::{StableTokenRequest, TokenAnswer};
use crate::{CredentialCache, DeliveryError, PlatformAnswer, Secret};

/// A token is renewed this long before it expires at most...
const MAX_MARGIN_SECS: i64 = 300;
/// ...and at least a tenth of its lifetime before.
const MARGIN_FRACTION: i64 = 10;
/// WeChat allows a forced `stable_token` at most this often per AppID...
pub(super) const FORCE_SPACING_SECS: i64 = 30;
/// ...and this many times a day.
pub(super) const FORCES_PER_DAY: u32 = 20;

/// The forced refreshes of one AppID, under `wechat-appid/<appid>/forced`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ForcedRefreshes {
    /// The day counted, in Beijing time (`YYYY-MM-DD`).
    pub(super) day: String,
    pub(super) count: u32,
    /// When the last one was made (Unix seconds).
    pub(super) last_at: i64,
}

impl ForcedRefreshes {
    /// Take one forced refresh at `now`, or say why not (rate limited until
    /// the spacing or the day's budget allows one again).
    pub(super) fn take(&mut self, now: DateTime<Utc>) -> Result<(), DeliveryError> {
        let today = beijing_day(now);
        if self.day != today {
            self.day = today;
            self.count = 0;
        }
        if self.count >= FORCES_PER_DAY {
            let wait = errors::until_beijing_midnight(now);
            return Err(DeliveryError::rate_limited(
                PlatformAnswer::default(),
                Some(wait),
                format!(
                    "WeChat rejected the access_token and the {FORCES_PER_DAY} forced refreshes WeChat allows a day \
                     for this AppID are used up: not forcing another before midnight, Beijing time ({}s)",
                    wait.as_secs()
                ),
            ));
        }
        let since = now.timestamp() - self.last_at;
        if (0..FORCE_SPACING_SECS).contains(&since) {
            let wait = std::time::Duration::from_secs((FORCE_SPACING_SECS - since) as u64);
            return Err(DeliveryError::rate_limited(
                PlatformAnswer::default(),
                Some(wait),
                format!(
                    "WeChat rejected the access_token again {since}s after a forced refresh; WeChat allows one every \
                     {FORCE_SPACING_SECS}s per AppID: waiting {}s",
                    wait.as_secs()
                ),
            ));
        }
        self.count += 1;
        self.last_at = now.timestamp();
        Ok(())
    }
}

/// The date in Beijing (UTC+8, no DST), where WeChat's daily limits reset.
fn beijing_day(now: DateTime<Utc>) -> String {
    (now + chrono::TimeDelta::hours(8)).format("%Y-%m-%d").to_string()
}

/// An access_token in hand.
#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) value: Secret,
    pub(super) expires_at: DateTime<Utc>,
}

/// The cached form: JSON under `wechat/<account>/token`.
#[derive(Clone, Serialize, Deserialize)]
struct StoredToken {
    appid: String,
    access_token: String,
    /// Unix seconds.
    fetched_at: i64,
    expires_at: i64,
    /// WeChat refused it (40001/40014/42001): the next fetch forces a new one.
    #[serde(default)]
    rejected: bool,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("appid", &self.appid)
            .field("access_token", &"<redacted>")
            .field("fetched_at", &self.fetched_at)
            .field("expires_at", &self.expires_at)
            .field("rejected", &self.rejected)
            .finish()
    }
}

impl StoredToken {
    /// Renew when less than this many seconds are left.
    fn margin(&self) -> i64 {
        ((self.expires_at - self.fetched_at) / MARGIN_FRACTION).clamp(0, MAX_MARGIN_SECS)
    }

    /// Good for `appid` at `now`: not rejected, and not about to expire.
    fn usable(&self, appid: &str, now: i64) -> bool {
        !self.rejected && self.appid == appid && now < self.expires_at - self.margin()
    }

    fn token(&self) -> Token {
        Token {
            value: Secret::new(self.access_token.clone()),
            expires_at: Utc.timestamp_opt(self.expires_at, 0).single().unwrap_or_default(),
        }
    }
}

/// Keeps one account's access_token.
pub(super) struct TokenKeeper {
    key: String,
    /// Where the AppID's forced refreshes are counted (shared by every
    /// account with this AppID in the same store).
    forced_key: String,
    appid: String,
    secret: Secret,
    endpoint: TokenEndpoint,
    cache: Arc<dyn CredentialCache>,
    fetching: Mutex<()>,
}

impl fmt::Debug for TokenKeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeeper")
            .field("key", &self.key)
            .field("appid", &self.appid)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl TokenKeeper {
    pub(super) fn new(
        account: &str,
        appid: &str,
        secret: Secret,
        endpoint: TokenEndpoint,
        cache: Arc<dyn CredentialCache>,
    ) -> Self {
        TokenKeeper {
            key: format!("wechat/{account}/token"),
            forced_key: format!("wechat-appid/{appid}/forced"),
            appid: appid.to_string(),
            secret,
            endpoint,
            cache,
            fetching: Mutex::new(()),
        }
    }

    fn load(&self) -> Option<StoredToken> {
        let bytes = self.cache.load(&self.key)?;
        serde_json::from_slice::<StoredToken>(&bytes).ok().filter(|stored| stored.appid == self.appid)
    }

    fn save(&self, stored: &StoredToken) {
        if let Ok(bytes) = serde_json::to_vec(stored) {
            self.cache.save(&self.key, &bytes);
        }
    }

    /// A usable token: the cached one, or a new one when it is missing,
    /// about to expire, or was rejected.
    pub(super) async fn current(&self, api: &WechatApi) -> Result<Token, DeliveryError> {
        let _one_at_a_time = self.fetching.lock().await;
        let stored = self.load();
        if let Some(stored) = &stored
            && stored.usable(&self.appid, Utc::now().timestamp())
        {
            return Ok(stored.token());
        }
        let fresh = match stored.filter(|stored| stored.rejected) {
            Some(rejected) => self.replace(api, &rejected.access_token).await?,
            None => self.fetch(api, self.endpoint, false).await?,
        };
        self.save(&fresh);
        Ok(fresh.token())
    }

    /// A token other than `rejected`: asked for without forcing first, then
    /// forced within the AppID's budget.
    async fn replace(&self, api: &WechatApi, rejected: &str) -> Result<StoredToken, DeliveryError> {
        let plain = self.fetch(api, self.endpoint, false).await?;
        if self.endpoint == TokenEndpoint::Classic || plain.access_token != rejected {
            return Ok(plain);
        }
        let mut budget: ForcedRefreshes =
            self.cache.load(&self.forced_key).and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        budget.take(Utc::now())?;
        if let Ok(bytes) = serde_json::to_vec(&budget) {
            self.cache.save(&self.forced_key, &bytes);
        }
        tracing::info!(key = %self.key, forced_today = budget.count, "forcing a new access_token");
        self.fetch(api, self.endpoint, true).await
    }

    /// Replace a rejected token with a new one (forced), unless another
    /// delivery already did since it was rejected.
    pub(super) async fn refresh(&self, api: &WechatApi) -> Result<(), DeliveryError> {
        let _one_at_a_time = self.fetching.lock().await;
        if self.load().is_some_and(|stored| stored.usable(&self.appid, Utc::now().timestamp())) {
            tracing::debug!(key = %self.key, "access_token already replaced; no refresh needed");
            return Ok(());
        }
        let rejected = self.load().map(|stored| stored.access_token).unwrap_or_default();
        let fresh = self.replace(api, &rejected).await?;
        self.save(&fresh);
        tracing::info!(key = %self.key, expires_at = fresh.expires_at, "access_token refreshed");
        Ok(())
    }

    /// WeChat refused `token`: mark it so it is not used again.
    pub(super) fn reject(&self, token: &Token) {
        if let Some(mut stored) = self.load()
            && stored.access_token == token.value.expose()
        {
            stored.rejected = true;
            self.save(&stored);
        }
    }

    /// Fetch a token from `stable_token` without forcing (a harmless call
    /// that proves the AppID, secret and IP whitelist), and keep it when
    /// the account uses `stable_token` anyway.
    pub(super) async fn probe(&self, api: &WechatApi) -> Result<Token, DeliveryError> {
        let _one_at_a_time = self.fetching.lock().await;
        let fresh = self.fetch(api, TokenEndpoint::Stable, false).await?;
        if self.endpoint == TokenEndpoint::Stable {
            self.save(&fresh);
        }
        Ok(fresh.token())
    }

    async fn fetch(&self, api: &WechatApi, endpoint: TokenEndpoint, force: bool) -> Result<StoredToken, DeliveryError> {
        let (call, request) = match endpoint {
            TokenEndpoint::Stable => {
                let body = StableTokenRequest {
                    grant_type: "client_credential",
                    appid: &self.appid,
                    secret: self.secret.expose(),
                    force_refresh: force,
                };
                (Api::Token, api.client.post(api.url(Api::Token.path())?).json(&body))
            }
            TokenEndpoint::Classic => {
                let query =
                    [("grant_type", "client_credential"), ("appid", &self.appid), ("secret", self.secret.expose())];
                (Api::ClassicToken, api.client.get(api.url(Api::ClassicToken.path())?).query(&query))
            }
        };
        let now = Utc::now().timestamp();
        let reply = api.send(call, request).await?;
        let answer: TokenAnswer = reply.parse(call).map_err(|error| DeliveryError { maybe_sent: false, ..error })?;
        if answer.expires_in <= 0 || answer.access_token.is_empty() {
            return Err(DeliveryError::transient(reply.answer, "WeChat gave an access_token without a lifetime"));
        }
        tracing::debug!(key = %self.key, force, expires_in = answer.expires_in, "access_token fetched");
        Ok(StoredToken {
            appid: self.appid.clone(),
            access_token: answer.access_token,
            fetched_at: now,
            expires_at: now.saturating_add(answer.expires_in),
            rejected: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(fetched_at: i64, lifetime: i64) -> StoredToken {
        StoredToken {
            appid: "wx1".into(),
            access_token: "T0KEN".into(),
            fetched_at,
            expires_at: fetched_at + lifetime,
            rejected: false,
        }
    }

    #[test]
    fn a_token_is_renewed_five_minutes_before_a_long_lifetime_ends() {
        let token = stored(1000, 7200);
        assert!(token.usable("wx1", 1000));
        assert!(token.usable("wx1", 1000 + 7200 - 301));
        assert!(!token.usable("wx1", 1000 + 7200 - 300));
    }

    #[test]
    fn a_short_lifetime_is_renewed_a_tenth_before_it_ends() {
        let token = stored(0, 300);
        assert!(token.usable("wx1", 269));
        assert!(!token.usable("wx1", 270));
        let tiny = stored(0, 5);
        assert!(tiny.usable("wx1", 4));
        assert!(!tiny.usable("wx1", 5));
    }

    #[test]
    fn a_rejected_token_or_another_appid_is_never_usable() {
        let mut token = stored(0, 7200);
        assert!(!token.usable("wx2", 1));
        token.rejected = true;
        assert!(!token.usable("wx1", 1));
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn forced_refreshes_are_spaced_30_seconds_apart() {
        let mut budget = ForcedRefreshes::default();
        budget.take(at("2025-03-01T12:00:00Z")).unwrap();
        let error = budget.take(at("2025-03-01T12:00:12Z")).unwrap_err();
        assert_eq!(
            error.class,
            crate::ErrorClass::RateLimited { retry_after: Some(std::time::Duration::from_secs(18)) }
        );
        assert!(error.reason.contains("one every 30s"), "{}", error.reason);
        budget.take(at("2025-03-01T12:00:30Z")).unwrap();
        assert_eq!(budget.count, 2);
    }

    #[test]
    fn twenty_forced_refreshes_a_beijing_day_then_none_until_midnight() {
        let mut budget = ForcedRefreshes::default();
        let start = at("2025-03-01T12:00:00Z");
        for n in 0..20 {
            budget.take(start + chrono::TimeDelta::minutes(n)).unwrap();
        }
        // 20:30 in Beijing: three and a half hours to midnight there.
        let error = budget.take(at("2025-03-01T12:30:00Z")).unwrap_err();
        assert_eq!(
            error.class,
            crate::ErrorClass::RateLimited { retry_after: Some(std::time::Duration::from_secs(12_600)) }
        );
        assert!(error.reason.contains("used up"), "{}", error.reason);
        // 16:00 UTC is midnight in Beijing: a new day's budget.
        budget.take(at("2025-03-01T16:00:00Z")).unwrap();
        assert_eq!((budget.day.as_str(), budget.count), ("2025-03-02", 1));
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", stored(0, 1)).contains("T0KEN"));
        let keeper = TokenKeeper::new(
            "acct",
            "wx1",
            Secret::new("S3CRET"),
            TokenEndpoint::Stable,
            Arc::new(crate::MemoryCache::default()),
        );
        let shown = format!("{keeper:?}");
        assert!(!shown.contains("S3CRET") && shown.contains("wechat/acct/token"), "{shown}");
    }
}
