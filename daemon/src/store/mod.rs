//! Persistent state behind one narrow interface: deliveries, the ordered due
//! index, post records and their timers, rendered content, the append-only
//! audit log, and metadata. [`Store`] is what the rest of herald sees; it
//! has two backends: sled ([`sled_store::SledStore`], embedded, the default)
//! and PostgreSQL ([`postgres::PostgresStore`]).

#[cfg(test)]
pub(crate) mod conformance;
pub mod copy;
mod keys;
pub mod open;
pub mod postgres;
pub mod sled_store;

use std::collections::BTreeMap;

use herald_adapters::Platform;
use serde::{Deserialize, Serialize};

use crate::model::{AuditRecord, Content, Delivery, DeliveryId, Millis, State};

pub use sled_store::SledStore;

/// The schema version this build writes. A store with a newer one is refused.
/// Version 2 added planned occurrences (post records with `planned`) and
/// the index of failed deliveries; a version 1 store gets the index and is
/// marked 2 on open. Version 3 chains the audit log (`prev_hash`, `hash`):
/// older records keep their bytes, and the first record written by this
/// version, `chain_started`, commits to all of them (see `audit_chain`); an
/// older herald, which would write records without a hash, must refuse it.
pub const SCHEMA_VERSION: u32 = 3;

/// Errors of the store. None of them is a panic: a broken disk or a store
/// written by another version ends in one of these.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state directory {dir} is in use by another herald process (lock {lock} is held); \
         stop that process, or use a different state_dir"
    )]
    Locked { dir: String, lock: String },
    // Not `source`: the message already says it, and a chained error would say it twice.
    #[error("cannot use the state directory {dir}: {error}")]
    Dir { dir: String, error: std::io::Error },
    /// `store` names it: "the state directory …" or "the PostgreSQL database …".
    #[error(
        "{store} was written by a newer herald (schema {found}, this build knows {known}); \
         upgrade herald, or restore a backup made by this version"
    )]
    NewerSchema { store: String, found: u32, known: u32 },
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    #[error("cannot store a {what}: it does not serialise ({error}); nothing of this change was written")]
    Encode { what: String, error: String },
    #[error("storage error: {0}")]
    Backend(String),
    /// A write of the scheduler refused by the lease's fence, or a change
    /// asked of a standby (see `lease`): nothing was written.
    #[error("not the leader: {0}; nothing was written")]
    NotLeader(String),
    /// The database cannot be reached, or refused the connection. `target`
    /// is `user@host:port/database`: never the URL, whose password it would show.
    #[error("cannot reach the PostgreSQL database {target}: {error}")]
    Unreachable { target: String, error: String },
    /// The server refused the login (SQLSTATE class 28: a wrong password,
    /// no pg_hba.conf entry for this user, host or TLS state). `reason` is
    /// the server's own message, which never holds the password.
    #[error(
        "PostgreSQL at {target} refused the login for user {user}: {reason}; check the password in [store] url \
         (or the file, credential or variable it comes from) and the server's pg_hba.conf entry for this user and host"
    )]
    LoginRefused { target: String, user: String, reason: String },
    /// The server has no database of that name (SQLSTATE 3D000).
    #[error(
        "PostgreSQL at {target} has no database {database}: check the database name in [store] url, or create it \
         (createdb -O <user> {database})"
    )]
    NoDatabase { target: String, database: String },
    /// TLS was asked for and could not be set up with the server: `problem`
    /// says what failed and what to fix.
    #[error("TLS to the PostgreSQL database {target} failed: {problem}")]
    Tls { target: String, problem: String },
    /// The PostgreSQL URL cannot be used as written (the message never repeats it).
    #[error("the PostgreSQL URL is not usable: {0}")]
    BadUrl(String),
    #[error(
        "the PostgreSQL database {database} is in use by another herald daemon (it holds herald's exclusive \
         claim on it); stop that daemon, or give this one another database"
    )]
    Claimed { database: String },
    #[error(
        "the PostgreSQL database {database} runs with synchronous_commit = off: a commit there is not durable \
         when it returns, and herald must not send on a record a crash could take back; set it back to on \
         (ALTER ROLE … SET synchronous_commit = on, or ALTER DATABASE …, or in postgresql.conf)"
    )]
    SynchronousCommitOff { database: String },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Backend(other.to_string()),
        }
    }
}

impl StoreError {
    /// `herald` exits with this (EX_DATAERR) when the store cannot be used
    /// as it is (damaged, or written by a newer herald): starting again
    /// would fail the same way, so the systemd unit names it in
    /// `RestartPreventExitStatus=` and the unit stops with the cause.
    pub const EXIT_CODE: u8 = 65;

    /// Will the same store refuse every start until someone acts?
    pub fn needs_an_operator(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt(_)
                | StoreError::NewerSchema { .. }
                | StoreError::BadUrl(_)
                | StoreError::SynchronousCommitOff { .. }
        )
    }

    /// Does this error end this daemon's turn as the leader (the fence
    /// refused a write, or the shared store cannot be reached)? The leader
    /// then steps down to standby instead of stopping (`lease`).
    pub fn loses_leadership(&self) -> bool {
        // A refused login or a failed handshake on a running daemon (a
        // password or certificate rotated) is an outage like any other: the
        // daemon stands by and tries again, as for an unreachable server.
        matches!(
            self,
            StoreError::NotLeader(_)
                | StoreError::Unreachable { .. }
                | StoreError::LoginRefused { .. }
                | StoreError::NoDatabase { .. }
                | StoreError::Tls { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Both backends hold each value as its JSON bytes (the same bytes, so a
/// copy between them keeps them). A value that does not decode means the
/// store is damaged.
pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what, e))
}

/// A value as stored. One that cannot be serialised fails the whole write
/// with an error naming it: storing empty bytes instead would lose the
/// record and break the store's next read of it.
pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode { what: what.to_string(), error: e.to_string() })
}

/// Pending after at least one attempt (counted by [`Store::retrying`]).
pub(crate) fn is_retrying(d: &Delivery) -> bool {
    d.state == State::Pending && d.attempt > 0
}

/// What the store remembers of a post between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostRecord {
    /// The definition hash last applied.
    pub hash: String,
    /// The latest occurrence that has deliveries.
    pub current: Option<Millis>,
    /// When the post's timer fires: at `current` to move on to the
    /// occurrence after it, or `schedule_ahead` before a planned occurrence
    /// to create its deliveries.
    pub timer: Option<Millis>,
    /// The next occurrence, when it is too far ahead for its deliveries to
    /// exist yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<Planned>,
}

/// An occurrence of a post more than `schedule_ahead` away: one record
/// instead of one delivery per account. Its deliveries are created when the
/// post's timer fires; until then `status` counts them as planned and
/// `upcoming` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    pub occurrence: Millis,
    /// The accounts it will go to, as the config said when it was planned.
    pub targets: Vec<(String, Platform)>,
}

impl Planned {
    /// The delivery each target will become.
    pub fn delivery_ids<'a>(&'a self, post: &'a str) -> impl Iterator<Item = (DeliveryId, &'a str, Platform)> + 'a {
        self.targets.iter().map(move |(a, p)| (DeliveryId::derive(post, self.occurrence, a), a.as_str(), *p))
    }
}

/// One atomic set of changes. Either all of it is stored, with its audit
/// records, or none of it.
#[derive(Debug, Default)]
pub struct Changes {
    /// New states of deliveries, each with the audit record of its change.
    /// The store keeps the due, in-flight and per-post indexes in step.
    pub deliveries: Vec<(Delivery, AuditRecord)>,
    /// Post records to write (`Some`) or remove (`None`); timers follow them.
    pub posts: Vec<(String, Option<PostRecord>)>,
    /// Rendered content by hash, with its images' digests (written once).
    pub contents: Vec<(String, Content)>,
    /// Small metadata values to write.
    pub meta: Vec<(String, Vec<u8>)>,
    /// Audit records about a delivery that do not change it (alerts sent).
    pub notes: Vec<AuditRecord>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
            && self.posts.is_empty()
            && self.contents.is_empty()
            && self.meta.is_empty()
            && self.notes.is_empty()
    }
}

/// A filter for reading the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub post: Option<String>,
    pub account: Option<String>,
    pub platform: Option<String>,
    /// The actor's name (`*` matches any characters).
    pub actor: Option<String>,
    /// The daemon that wrote the record (`*` matches any characters); a
    /// record naming none (sled) does not match.
    pub daemon: Option<String>,
    pub events: Vec<crate::model::Event>,
    pub delivery: Option<DeliveryId>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub after_seq: Option<u64>,
    pub limit: Option<usize>,
}

impl AuditQuery {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.post.as_ref().is_none_or(|p| wildcard_match(p, &r.post))
            && self.account.as_ref().is_none_or(|a| wildcard_match(a, &r.account))
            && self.platform.as_ref().is_none_or(|p| r.platform.is_some_and(|rp| rp.name() == p))
            && self.actor.as_ref().is_none_or(|a| r.actor.as_ref().is_some_and(|actor| wildcard_match(a, &actor.name)))
            && self.daemon.as_ref().is_none_or(|d| r.daemon.as_ref().is_some_and(|rd| wildcard_match(d, rd)))
            && (self.events.is_empty() || self.events.contains(&r.event))
            && self.delivery.is_none_or(|d| r.delivery == d)
            && self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time < t)
    }
}

/// The storage interface. Reads may run concurrently; writes are applied
/// one set at a time, in the order they are given.
pub trait Store: Send + Sync {
    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>>;
    /// Every delivery of a post, in occurrence order.
    fn deliveries_of_post(&self, post: &str) -> Result<Vec<Delivery>>;
    /// The deliveries of one occurrence of a post.
    fn deliveries_of_occurrence(&self, post: &str, occurrence: Millis) -> Result<Vec<Delivery>>;
    /// Pending deliveries due at or before `until`, in due order, starting
    /// after `after` (a key returned earlier), at most `limit`.
    fn due(&self, after: Option<&DueKey>, until: Millis, limit: usize) -> Result<Vec<DueKey>>;
    /// The earliest due time of a pending delivery strictly after `after`.
    fn next_due_after(&self, after: Millis) -> Result<Option<Millis>>;
    /// Deliveries in flight (after a crash: those to recover).
    fn in_flight(&self) -> Result<Vec<Delivery>>;
    /// Deliveries in a given state, at most `limit`: from an index for
    /// `in_flight` (all of them) and `failed`, by a scan for the others.
    fn deliveries_in_state(&self, state: State, limit: usize) -> Result<Vec<Delivery>>;
    fn post(&self, id: &str) -> Result<Option<PostRecord>>;
    fn post_ids(&self) -> Result<Vec<String>>;
    /// Posts whose timer fires at or before `until`, earliest first.
    fn timers_due(&self, until: Millis) -> Result<Vec<(Millis, String)>>;
    fn next_timer(&self) -> Result<Option<Millis>>;
    fn content(&self, hash: &str) -> Result<Option<Content>>;
    /// Up to `limit` stored content hashes that start with `prefix`, in order.
    fn content_hashes(&self, prefix: &str, limit: usize) -> Result<Vec<String>>;
    /// A small metadata value written through [`Changes::meta`].
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn has_content(&self, hash: &str) -> Result<bool>;
    /// Apply one atomic set of changes; returns the audit records as stored
    /// (with their sequence numbers, `prev_hash` and `hash`; the first write
    /// to a store from before the chain also returns its `chain_started`
    /// record, first).
    fn apply(&self, changes: Changes) -> Result<Vec<AuditRecord>>;
    /// Make everything applied so far durable (fsync). Concurrent callers
    /// share one flush (group commit). On PostgreSQL every apply is a
    /// committed, durable transaction already: nothing is left to do.
    fn flush(&self) -> Result<()>;
    /// Audit records matching a query, in sequence order, up to the last
    /// one made durable by [`Store::flush`]: a record applied but not yet
    /// flushed is not shown, since a crash could still take it back.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// The audit log as stored, for verifying its chain: (key, the record's
    /// exact bytes) after key `after`, in key order, at most `limit`.
    fn audit_raw(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;
    /// The head of the audit chain: the last record's seq and hash.
    fn audit_head(&self) -> Result<crate::audit_chain::ChainHead>;
    /// How many deliveries are in each state.
    fn counts(&self) -> Result<BTreeMap<State, u64>>;
    /// How many pending deliveries have been attempted before (retrying).
    fn retrying(&self) -> Result<u64>;
    /// Planned occurrences (post id and plan) in occurrence order, at most `limit`.
    fn planned(&self, limit: usize) -> Result<Vec<(String, Planned)>>;
    /// How many deliveries the planned occurrences will create.
    fn planned_deliveries(&self) -> Result<u64>;

    /// Can several daemons use this store at once (so they take turns
    /// through the scheduler lease, and show their role)? Not sled.
    fn is_shared(&self) -> bool {
        false
    }
    /// Take (`held` = None) or renew (`held` = the epoch this daemon
    /// holds) the lease `name` for `holder`, for `length` of the store's
    /// clock (see `lease`). The default is a store one daemon owns (sled,
    /// behind its lock file): the lease is always its own.
    fn lease(
        &self,
        _name: &'static str,
        _holder: &str,
        held: Option<u64>,
        _length: std::time::Duration,
    ) -> Result<crate::lease::LeaseState> {
        Ok(crate::lease::LeaseState::Held { epoch: held.unwrap_or(1) })
    }
    /// Give the lease up (a clean stop), so a standby need not wait for it to expire.
    fn release_lease(&self, _fence: &crate::lease::Fence) -> Result<()> {
        Ok(())
    }
    /// [`Store::apply`], only while `fence` still holds its lease (same
    /// epoch, not expired), checked in the same transaction; otherwise
    /// [`StoreError::NotLeader`] and nothing is written. The default (one
    /// daemon per store) never refuses.
    fn apply_fenced(&self, changes: Changes, _fence: &crate::lease::Fence) -> Result<Vec<AuditRecord>> {
        self.apply(changes)
    }
    /// The queue through which standbys forward changes to the leader
    /// (`forward`). The default (one daemon per store, always the leader)
    /// has none.
    fn commands(&self) -> Option<&dyn crate::forward::CommandQueue> {
        None
    }
}

/// A pending delivery in the due index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DueKey {
    pub due: Millis,
    pub id: DeliveryId,
    pub account: String,
}

/// The content stored under `hash`, or under the one stored hash that starts
/// with it (`herald log --content 3f9c2a`). `Ok(Err(message))` when there is
/// none, or several (the message lists them).
pub fn content_by_prefix(store: &dyn Store, hash: &str) -> Result<std::result::Result<crate::model::Content, String>> {
    if let Some(rendered) = store.content(hash)? {
        return Ok(Ok(rendered));
    }
    let found = if hash.is_empty() { Vec::new() } else { store.content_hashes(hash, 11)? };
    Ok(match found.as_slice() {
        [] => Err(format!("no content with hash {hash}")),
        [one] => store.content(one)?.ok_or_else(|| format!("no content with hash {hash}")),
        many => {
            let more = if many.len() > 10 { " and more" } else { "" };
            let shown: Vec<&str> = many.iter().take(10).map(String::as_str).collect();
            Err(format!("`{hash}` is the start of several content hashes: {}{more}; give more of it", shown.join(", ")))
        }
    })
}

/// Match `value` against a pattern where `*` stands for any run of characters
/// (`wuhan-*` matches every Wuhan account).
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() || !value.ends_with(last) {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard_match("wuhan-*", "wuhan-weibo"));
        assert!(!wildcard_match("wuhan-*", "xi-an-weibo"));
        assert!(wildcard_match("*-weibo", "wuhan-weibo"));
        assert!(wildcard_match("*han*ei*", "wuhan-weibo"));
        assert!(wildcard_match("wuhan-weibo", "wuhan-weibo"));
        assert!(!wildcard_match("wuhan", "wuhan-weibo"));
        assert!(!wildcard_match("ab*ba", "aba"));
    }
}
