//! The domain: deliveries, their states, and audit records.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use herald_adapters::{Platform, PlatformAnswer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch, UTC: how the store keeps instants.
pub type Millis = i64;

pub fn to_millis(t: DateTime<Utc>) -> Millis {
    t.timestamp_millis()
}

pub fn from_millis(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The id of one delivery: derived from (post id, occurrence, account), so the
/// same occurrence of the same post to the same account is always the same
/// delivery. It is also the idempotency key sent to platforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct DeliveryId(pub [u8; 16]);

impl DeliveryId {
    pub fn derive(post_id: &str, occurrence: Millis, account: &str) -> Self {
        let mut h = Sha256::new();
        h.update(post_id.as_bytes());
        h.update([0]);
        h.update(occurrence.to_be_bytes());
        h.update(account.as_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        DeliveryId(id)
    }

    pub fn parse(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(DeliveryId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl From<DeliveryId> for String {
    fn from(id: DeliveryId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for DeliveryId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        DeliveryId::parse(&s).ok_or_else(|| format!("`{s}` is not a delivery id"))
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its due time (first attempt or a retry).
    Pending,
    /// A request is (or may be) on its way to the platform.
    InFlight,
    /// The platform accepted it.
    Delivered,
    /// It will not be attempted again unless someone runs `herald retry`.
    Failed,
    /// Staff removed or changed the post, or the account.
    Cancelled,
    /// Missed while herald was not running, and the misfire policy skipped it.
    Skipped,
}

impl State {
    pub const ALL: [State; 6] =
        [State::Pending, State::InFlight, State::Delivered, State::Failed, State::Cancelled, State::Skipped];

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Delivered | State::Failed | State::Cancelled | State::Skipped)
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::InFlight => "in_flight",
            State::Delivered => "delivered",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
            State::Skipped => "skipped",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One occurrence of one post to one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub post_id: String,
    pub account: String,
    pub platform: Platform,
    pub occurrence: Millis,
    pub state: State,
    /// Attempts started so far.
    pub attempt: u32,
    /// When the next attempt is due (meaningful while pending).
    pub due: Millis,
    /// The hash of the rendered content this delivery sends.
    pub content_hash: String,
    /// An earlier attempt may have reached the platform.
    pub uncertain: bool,
    /// Why it failed, was cancelled or skipped; the last error while retrying.
    pub reason: Option<String>,
    pub remote_id: Option<String>,
    pub url: Option<String>,
    pub updated: Millis,
}

impl Delivery {
    /// A delivery of one occurrence of a post to one account as it is first
    /// created: pending, due at its occurrence, no attempt, no content yet.
    pub fn new(post_id: &str, occurrence: Millis, account: &str, platform: Platform, now: Millis) -> Delivery {
        Delivery {
            id: DeliveryId::derive(post_id, occurrence, account),
            post_id: post_id.to_string(),
            account: account.to_string(),
            platform,
            occurrence,
            state: State::Pending,
            attempt: 0,
            due: occurrence,
            content_hash: String::new(),
            uncertain: false,
            reason: None,
            remote_id: None,
            url: None,
            updated: now,
        }
    }
}

/// What happened, in one audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A delivery was created, pending.
    Scheduled,
    /// An attempt started: the delivery is in flight.
    Attempt,
    /// The platform accepted the post.
    Delivered,
    /// The attempt failed and another is scheduled.
    RetryScheduled,
    /// The delivery failed for good.
    Failed,
    /// Staff removed the post or account, or someone ran `herald cancel`.
    Cancelled,
    /// The post changed; the pending delivery now sends the new content.
    Replaced,
    /// Found in flight at start-up (a crash): pending again, same idempotency key.
    Recovered,
    /// Missed while herald was down; skipped by the misfire policy.
    Skipped,
    /// Missed while herald was down; published late by the misfire policy.
    Late,
    /// Someone ran `herald retry`, or a cancelled delivery came back with its post.
    Requeued,
    /// Credentials were refreshed during an attempt.
    CredentialsRefreshed,
    /// An alert about this delivery was sent (or could not be).
    Alerted,
    /// An account's credentials expire soon; an alert was sent. An account
    /// record: no delivery, no state.
    CredentialsExpiring,
}

impl Event {
    pub const ALL: [Event; 14] = [
        Event::Scheduled,
        Event::Attempt,
        Event::Delivered,
        Event::RetryScheduled,
        Event::Failed,
        Event::Cancelled,
        Event::Replaced,
        Event::Recovered,
        Event::Skipped,
        Event::Late,
        Event::Requeued,
        Event::CredentialsRefreshed,
        Event::Alerted,
        Event::CredentialsExpiring,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Scheduled => "scheduled",
            Event::Attempt => "attempt",
            Event::Delivered => "delivered",
            Event::RetryScheduled => "retry_scheduled",
            Event::Failed => "failed",
            Event::Cancelled => "cancelled",
            Event::Replaced => "replaced",
            Event::Recovered => "recovered",
            Event::Skipped => "skipped",
            Event::Late => "late",
            Event::Requeued => "requeued",
            Event::CredentialsRefreshed => "credentials_refreshed",
            Event::Alerted => "alerted",
            Event::CredentialsExpiring => "credentials_expiring",
        }
    }

    pub fn parse(name: &str) -> Option<Event> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One append-only audit record: a state change of one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Strictly increasing, without gaps.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub event: Event,
    /// The delivery's state after this event (none for an account record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    pub delivery: DeliveryId,
    pub post: String,
    pub account: String,
    pub platform: Platform,
    pub occurrence: DateTime<Utc>,
    pub attempt: u32,
    /// The platform's answer, for attempts that got one.
    #[serde(default, skip_serializing_if = "is_empty_answer")]
    pub answer: PlatformAnswer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The hash of the exact content sent (look it up with `herald log --content HASH`).
    pub content_hash: String,
    /// When the next attempt is due, after `retry_scheduled`, `recovered`, `requeued`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditRecord {
    /// A record about an account rather than a delivery (an expiring
    /// credential): the delivery id is all zeros, with no post and no state.
    pub fn about_account(account: &str, platform: Platform, event: Event, time: DateTime<Utc>, reason: String) -> Self {
        AuditRecord {
            seq: 0,
            time,
            event,
            state: None,
            delivery: DeliveryId([0; 16]),
            post: String::new(),
            account: account.to_string(),
            platform,
            occurrence: time,
            attempt: 0,
            answer: PlatformAnswer::default(),
            latency_ms: None,
            remote_id: None,
            url: None,
            content_hash: String::new(),
            next_due: None,
            reason: Some(reason),
        }
    }
}

fn is_empty_answer(a: &PlatformAnswer) -> bool {
    a == &PlatformAnswer::default()
}

impl AuditRecord {
    /// A record of `event` for `delivery` as it stands after the event.
    pub fn of(delivery: &Delivery, event: Event, time: DateTime<Utc>) -> Self {
        AuditRecord {
            seq: 0,
            time,
            event,
            state: Some(delivery.state),
            delivery: delivery.id,
            post: delivery.post_id.clone(),
            account: delivery.account.clone(),
            platform: delivery.platform,
            occurrence: from_millis(delivery.occurrence),
            attempt: delivery.attempt,
            answer: PlatformAnswer::default(),
            latency_ms: None,
            remote_id: delivery.remote_id.clone(),
            url: delivery.url.clone(),
            content_hash: delivery.content_hash.clone(),
            next_due: (delivery.state == State::Pending).then(|| from_millis(delivery.due)),
            reason: delivery.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let a = DeliveryId::derive("fraud-warning", 1_700_000_000_000, "wuhan-weibo");
        assert_eq!(a, DeliveryId::derive("fraud-warning", 1_700_000_000_000, "wuhan-weibo"));
        assert_ne!(a, DeliveryId::derive("fraud-warning", 1_700_000_060_000, "wuhan-weibo"));
        assert_ne!(a, DeliveryId::derive("fraud-warning", 1_700_000_000_000, "wuhan-wechat"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(DeliveryId::derive("ab", 0, "c"), DeliveryId::derive("a", 0, "bc"));
        assert_eq!(DeliveryId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string().len(), 32);
    }

    #[test]
    fn every_event_name_reads_back() {
        for e in Event::ALL {
            assert_eq!(Event::parse(e.name()), Some(e));
        }
        assert_eq!(Event::parse("exploded"), None);
    }
}
