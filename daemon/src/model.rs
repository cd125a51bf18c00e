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
    /// Since when an operator's pause (or a missing approval) holds this
    /// pending delivery past its due time; cleared when it is released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Millis>,
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
            held: None,
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
    /// The hash chain starts here, on a store written before it existed:
    /// `prev_hash` is the digest of every earlier record (see `audit_chain`).
    ChainStarted,
    /// A config was applied (at start or on a reload): which files, their
    /// digests, and what changed.
    ConfigApplied,
    /// A reload was refused: the running config stays; the errors are kept.
    ConfigRefused,
    /// The head of the chain (sequence number and hash) was published outside
    /// the host (the journal, the alert webhook or command).
    AuditHead,
    /// An operator paused deliveries (`herald pause`): all, or an account,
    /// post or platform. A record about herald: no delivery.
    Paused,
    /// An operator lifted a pause (`herald resume`).
    Resumed,
    /// A due delivery was not started: a pause covers it (or its post awaits
    /// approval). It stays pending, and goes out when released.
    Held,
    /// A member of the approvers' group approved a post's content and
    /// targets (`herald approve`). A record about the post: no delivery.
    Approved,
    /// An approved post changed: its approval no longer holds.
    ApprovalInvalidated,
    /// `herald recall` took the delivered copy down (the delivery stays
    /// `delivered`; this record says its copy is gone).
    Recalled,
    /// `herald recall` could not take the copy down: not possible on the
    /// platform (the reason says what to do by hand), or the delete failed.
    RecallFailed,
}

impl Event {
    pub const ALL: [Event; 25] = [
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
        Event::ChainStarted,
        Event::ConfigApplied,
        Event::ConfigRefused,
        Event::AuditHead,
        Event::Paused,
        Event::Resumed,
        Event::Held,
        Event::Approved,
        Event::ApprovalInvalidated,
        Event::Recalled,
        Event::RecallFailed,
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
            Event::ChainStarted => "chain_started",
            Event::ConfigApplied => "config_applied",
            Event::ConfigRefused => "config_refused",
            Event::AuditHead => "audit_head",
            Event::Paused => "paused",
            Event::Resumed => "resumed",
            Event::Held => "held",
            Event::Approved => "approved",
            Event::ApprovalInvalidated => "approval_invalidated",
            Event::Recalled => "recalled",
            Event::RecallFailed => "recall_failed",
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

/// Who made a change: a person through the control socket or the store,
/// a signal, or the start of the daemon. Records herald writes on its own
/// (attempts, retries) have none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// How the action reached herald: `control_socket` (the peer's
    /// credentials), `store` (the CLI opened the store of a stopped daemon:
    /// the CLI's own user), `signal`, or `start`.
    pub via: String,
    /// The Unix user name, the signal (`SIGHUP`) or what started herald
    /// (`systemd`, or `herald run` when not under a service manager).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

impl Actor {
    /// A Unix user, by uid, named from the password database when it can be read.
    pub fn user(via: &str, uid: u32) -> Actor {
        Actor { via: via.to_string(), name: user_name(uid).unwrap_or_else(|| format!("uid {uid}")), uid: Some(uid) }
    }

    /// The user running this process.
    pub fn current_user(via: &str) -> Actor {
        Actor::user(via, rustix::process::getuid().as_raw())
    }

    pub fn signal(name: &str) -> Actor {
        Actor { via: "signal".into(), name: name.to_string(), uid: None }
    }

    /// The start of the daemon: by systemd when it set `$NOTIFY_SOCKET` or
    /// `$INVOCATION_ID`, else by whoever ran `herald run`.
    pub fn start() -> Actor {
        let managed = std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some();
        let name = if managed { "systemd".to_string() } else { "herald run".to_string() };
        Actor { via: "start".into(), name, uid: Some(rustix::process::getuid().as_raw()) }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uid {
            Some(uid) if self.via != "start" => write!(f, "{} (uid {uid})", self.name),
            _ => write!(f, "{} ({})", self.name, self.via),
        }
    }
}

/// The name of a uid in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// One file of an applied config and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: String,
    pub sha256: String,
}

impl FileDigest {
    pub fn of(path: &std::path::Path, bytes: &[u8]) -> FileDigest {
        FileDigest { path: path.display().to_string(), sha256: hex::encode(Sha256::digest(bytes)) }
    }

    /// The digest of the image file at `path` as it is now; a file that
    /// cannot be read (missing, not a regular file, over 64 MiB, more than
    /// any platform takes) gets `unreadable: WHY` instead of a hash
    /// (publishing fails on it too, and says why).
    pub fn read(path: &str) -> FileDigest {
        use herald_adapters::files::{FileError, read_bounded};
        const LIMIT: u64 = 64 << 20;
        match read_bounded(std::path::Path::new(path), LIMIT) {
            Ok(bytes) => FileDigest::of(std::path::Path::new(path), &bytes),
            Err(FileError::Io(e)) => FileDigest { path: path.to_string(), sha256: format!("unreadable: {}", e.kind()) },
            Err(e) => FileDigest { path: path.to_string(), sha256: format!("unreadable: {e}") },
        }
    }

    /// Whether this digest names no bytes (the file could not be read).
    pub fn unreadable(&self) -> bool {
        self.sha256.starts_with("unreadable:")
    }
}

/// The exact content of deliveries, as stored under its content hash: what
/// the platform receives, and the SHA-256 of each image file's bytes when
/// it was rendered (the hash covers them, so two deliveries with the same
/// content hash sent the same pictures).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    #[serde(flatten)]
    pub rendered: herald_adapters::Rendered,
    /// One per entry of `images`, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_sha256: Vec<FileDigest>,
}

impl Content {
    /// The content of `rendered`, reading its image files, and its hash: the
    /// SHA-256 of the rendered JSON followed, for each image, by a newline,
    /// its path, a newline and the hex SHA-256 of its bytes; the first 16
    /// bytes, in hex. Without images it is the hash of the JSON alone, as
    /// before images were hashed by their bytes.
    pub fn of(rendered: herald_adapters::Rendered) -> (String, Content) {
        let image_sha256: Vec<FileDigest> = rendered.images.iter().map(|path| FileDigest::read(path)).collect();
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&rendered).unwrap_or_default());
        for image in &image_sha256 {
            h.update(b"\n");
            h.update(image.path.as_bytes());
            h.update(b"\n");
            h.update(image.sha256.as_bytes());
        }
        let hash = hex::encode(&h.finalize()[..16]);
        (hash, Content { rendered, image_sha256 })
    }
}

/// What a `config_applied` or `config_refused` record says about the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigNote {
    /// Every file that made up the config, in the order it was read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileDigest>,
    /// What changed (posts added, changed, removed; deliveries scheduled,
    /// replaced, cancelled), as `herald reload` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Why a reload was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One append-only audit record: a state change of one delivery, or a note
/// about an account or herald itself. Field order is part of the format:
/// the chain hashes the JSON as written (see `audit_chain`); new fields go
/// before `prev_hash`, and are left out when empty.
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
    /// None for records about herald itself (config, chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
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
    /// Who did it, for operator actions, reloads and starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// The config's files and changes, on `config_applied` / `config_refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigNote>,
    /// The daemon that wrote it (its lease holder id, `host pid N boot R`),
    /// on a store several daemons share (PostgreSQL); absent on sled, whose
    /// records keep the bytes they always had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// The hash of the record before this one (hex SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// SHA-256 (hex) of this record's JSON without `hash`; always the last field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
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
            platform: Some(platform),
            occurrence: time,
            attempt: 0,
            answer: PlatformAnswer::default(),
            latency_ms: None,
            remote_id: None,
            url: None,
            content_hash: String::new(),
            next_due: None,
            reason: Some(reason),
            actor: None,
            config: None,
            daemon: None,
            prev_hash: None,
            hash: None,
        }
    }

    /// A record about herald itself (its config, its chain): no delivery,
    /// account, platform or state.
    pub fn about_herald(event: Event, time: DateTime<Utc>, reason: Option<String>) -> Self {
        let mut record = AuditRecord::about_account("", Platform::Webhook, event, time, String::new());
        record.platform = None;
        record.reason = reason;
        record
    }

    /// A `config_applied` (or, with errors, `config_refused`) record.
    pub fn config(
        time: DateTime<Utc>,
        files: Vec<FileDigest>,
        summary: Option<String>,
        errors: Vec<String>,
        actor: Actor,
        reason: Option<String>,
    ) -> Self {
        let event = if errors.is_empty() { Event::ConfigApplied } else { Event::ConfigRefused };
        let mut record = AuditRecord::about_herald(event, time, reason).by(Some(actor));
        record.config = Some(ConfigNote { files, summary, errors });
        record
    }

    /// This record, attributed to `actor`.
    pub fn by(mut self, actor: Option<Actor>) -> Self {
        self.actor = actor;
        self
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
            platform: Some(delivery.platform),
            occurrence: from_millis(delivery.occurrence),
            attempt: delivery.attempt,
            answer: PlatformAnswer::default(),
            latency_ms: None,
            remote_id: delivery.remote_id.clone(),
            url: delivery.url.clone(),
            content_hash: delivery.content_hash.clone(),
            next_due: (delivery.state == State::Pending).then(|| from_millis(delivery.due)),
            reason: delivery.reason.clone(),
            actor: None,
            config: None,
            daemon: None,
            prev_hash: None,
            hash: None,
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
    fn images_are_hashed_by_their_bytes_not_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("warning.png");
        std::fs::write(&image, b"the first picture").unwrap();
        let rendered = herald_adapters::Rendered {
            title: None,
            text: "Keep away from the river.".into(),
            link: None,
            images: vec![image.display().to_string()],
        };
        let (first, content) = Content::of(rendered.clone());
        assert_eq!(content.image_sha256[0].sha256, hex::encode(Sha256::digest(b"the first picture")));
        assert_eq!(content.image_sha256[0].path, image.display().to_string());
        std::fs::write(&image, b"another picture, same name").unwrap();
        let (second, _) = Content::of(rendered.clone());
        assert_ne!(first, second, "the same path with other bytes is other content");
        // Stored, it reads back whole, and as the rendering adapters know.
        let json = serde_json::to_vec(&content).unwrap();
        assert_eq!(serde_json::from_slice::<Content>(&json).unwrap(), content);
        assert_eq!(serde_json::from_slice::<herald_adapters::Rendered>(&json).unwrap(), rendered);
        // Without images the hash is what it was before images were read.
        let plain = herald_adapters::Rendered { images: Vec::new(), ..rendered };
        let before = hex::encode(&Sha256::digest(serde_json::to_vec(&plain).unwrap())[..16]);
        assert_eq!(Content::of(plain).0, before);
    }

    #[test]
    fn every_event_name_reads_back() {
        for e in Event::ALL {
            assert_eq!(Event::parse(e.name()), Some(e));
        }
        assert_eq!(Event::parse("exploded"), None);
    }
}
