//! Approval (four eyes): a post with `approval = "required"` (or under
//! `[daemon] approval = "required"`) goes out only once a member of
//! `[daemon] approvers_group` has approved its exact content and targets
//! (`Post::approval_hash`). An approval is kept in the store's `meta` tree
//! (`approval/<post>`) with that hash; a post whose hash differs has no
//! valid approval, so any edit of its text, images, link or targets holds
//! it again. After each config is applied, [`settle`] records who made the
//! change (`author/<post>`) and writes `approval_invalidated` where an
//! approval no longer matches.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Post};
use crate::model::{Actor, AuditRecord, Event};
use crate::store::{Changes, Store, StoreError, encode};

/// The `meta` key of a post's approval.
pub fn approval_key(post: &str) -> String {
    format!("approval/{post}")
}

/// The `meta` key of who last changed a post.
pub fn author_key(post: &str) -> String {
    format!("author/{post}")
}

/// An approval of one post's content and targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `Post::approval_hash` when it was approved.
    pub hash: String,
    pub targets: Vec<String>,
    pub by: Actor,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Who applied the config that last changed a post's content or targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authorship {
    pub hash: String,
    pub by: Actor,
    pub at: DateTime<Utc>,
}

impl Authorship {
    /// The Unix user who made the change, when one is known: a reload
    /// through the control socket (or the CLI). A change applied at a start
    /// or by a signal names no person.
    pub fn person(&self) -> Option<u32> {
        (self.by.via == "control_socket" || self.by.via == "store").then_some(self.by.uid).flatten()
    }
}

fn read<T: serde::de::DeserializeOwned>(store: &dyn Store, key: &str) -> Result<Option<T>, StoreError> {
    match store.meta(key)? {
        // Written empty when an approval is withdrawn.
        Some(bytes) if !bytes.is_empty() => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Corrupt(format!("meta `{key}`: {e}")))
        }
        _ => Ok(None),
    }
}

pub fn approval(store: &dyn Store, post: &str) -> Result<Option<Approval>, StoreError> {
    read(store, &approval_key(post))
}

pub fn author(store: &dyn Store, post: &str) -> Result<Option<Authorship>, StoreError> {
    read(store, &author_key(post))
}

/// Where a post stands, as `check` and `upcoming` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalState {
    NotRequired,
    Awaiting,
    Approved(Approval),
    /// Approved, then changed: held until approved again.
    Outdated(Approval),
}

impl ApprovalState {
    /// The state of `post` given its stored approval.
    pub fn of(post: &Post, config: &Config, approval: Option<Approval>) -> ApprovalState {
        if !post.requires_approval(&config.daemon) {
            return ApprovalState::NotRequired;
        }
        match approval {
            None => ApprovalState::Awaiting,
            Some(a) if a.hash == post.approval_hash() => ApprovalState::Approved(a),
            Some(a) => ApprovalState::Outdated(a),
        }
    }

    /// May its deliveries go out?
    pub fn allows_sending(&self) -> bool {
        matches!(self, ApprovalState::NotRequired | ApprovalState::Approved(_))
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |a: &Approval| a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match self {
            ApprovalState::NotRequired => f.write_str("not required"),
            ApprovalState::Awaiting => f.write_str("awaiting approval"),
            ApprovalState::Approved(a) => write!(f, "approved by {} at {}", a.by, at(a)),
            ApprovalState::Outdated(a) => {
                write!(f, "awaiting approval again: changed after {} approved it at {}", a.by, at(a))
            }
        }
    }
}

/// After `config` was applied by `actor`: for each post needing approval,
/// note who changed it (when its hash is new) and withdraw an approval of
/// other content, with an `approval_invalidated` record. The scheduler
/// does not wait for this: it compares hashes itself before sending.
pub fn settle(store: &dyn Store, config: &Config, actor: &Actor, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut changes = Changes::default();
    let mut invalidated = 0;
    for post in config.posts.values().filter(|p| p.requires_approval(&config.daemon)) {
        let hash = post.approval_hash();
        if author(store, &post.id)?.is_none_or(|a| a.hash != hash) {
            let authorship = Authorship { hash: hash.clone(), by: actor.clone(), at: now };
            changes.meta.push((author_key(&post.id), encode("author", &authorship)?));
        }
        if let Some(old) = approval(store, &post.id)?
            && old.hash != hash
        {
            let reason = format!(
                "post {} changed (content or targets) after {} approved it at {}; it is held until approved again",
                post.id,
                old.by,
                old.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            let mut record =
                AuditRecord::about_herald(Event::ApprovalInvalidated, now, Some(reason)).by(Some(actor.clone()));
            record.post = post.id.clone();
            record.content_hash = hash.clone();
            changes.notes.push(record);
            changes.meta.push((approval_key(&post.id), Vec::new()));
            invalidated += 1;
        }
    }
    if !changes.is_empty() {
        store.apply(changes)?;
        store.flush()?;
    }
    Ok(invalidated)
}

/// What `herald approve` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApproveRequest {
    pub post: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asks (from the control socket's peer credentials, never the request).
    #[serde(skip)]
    pub actor: Option<Actor>,
    /// Whether that peer is in `[daemon] approvers_group` (checked by the
    /// control socket, with the group database).
    #[serde(skip)]
    pub member: bool,
}

/// What an approval did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApproveView {
    pub post: String,
    pub hash: String,
    pub targets: Vec<String>,
    /// It was already approved as it is: nothing new was recorded.
    pub already: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no post `{0}` in the running config")]
    UnknownPost(String),
    #[error("post `{0}` does not need approval (`approval = \"required\"` on the post, or in [daemon])")]
    NotRequired(String),
    #[error("nobody may approve posts: `[daemon] approvers_group` is not set")]
    NoGroup,
    #[error("{user} is not a member of the approvers' group `{group}`; only its members may approve posts")]
    NotAMember { user: String, group: String },
    #[error(
        "{user} made the last change to post `{post}` (the config applied at {at}); another member of `{group}` \
         must approve it (or set `[daemon] author_may_approve = true`)"
    )]
    Author { user: String, post: String, at: String, group: String },
    #[error("herald approve needs the running daemon: it checks who you are through its control socket")]
    NotRunning,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Approve `request.post` as it is in `config` now, if the asker may.
pub fn approve(
    store: &dyn Store,
    config: &Config,
    request: &ApproveRequest,
    now: DateTime<Utc>,
) -> Result<(ApproveView, Approval), ApprovalError> {
    let post = config.posts.get(&request.post).ok_or_else(|| ApprovalError::UnknownPost(request.post.clone()))?;
    if !post.requires_approval(&config.daemon) {
        return Err(ApprovalError::NotRequired(post.id.clone()));
    }
    let group = config.daemon.approvers_group.clone().ok_or(ApprovalError::NoGroup)?;
    let actor = request.actor.clone().unwrap_or_else(|| Actor {
        via: "control_socket".into(),
        name: "unknown".into(),
        uid: None,
    });
    if !request.member {
        return Err(ApprovalError::NotAMember { user: actor.to_string(), group });
    }
    let hash = post.approval_hash();
    if !config.daemon.author_may_approve
        && let Some(authorship) = author(store, &post.id)?.filter(|a| a.hash == hash)
        && authorship.person().is_some()
        && authorship.person() == actor.uid
    {
        return Err(ApprovalError::Author {
            user: actor.to_string(),
            post: post.id.clone(),
            at: authorship.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            group,
        });
    }
    let targets: Vec<String> = post.targets.to_vec();
    let view = |already| ApproveView { post: post.id.clone(), hash: hash.clone(), targets: targets.clone(), already };
    if let Some(existing) = approval(store, &post.id)?.filter(|a| a.hash == hash) {
        return Ok((view(true), existing));
    }
    let reason = request.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()).map(str::to_string);
    let approval =
        Approval { hash: hash.clone(), targets: targets.clone(), by: actor.clone(), at: now, reason: reason.clone() };
    let text = format!(
        "approved content {hash} of post {} to {} account(s){}",
        post.id,
        targets.len(),
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    let mut record = AuditRecord::about_herald(Event::Approved, now, Some(text)).by(Some(actor));
    record.post = post.id.clone();
    record.content_hash = hash.clone();
    let changes = Changes {
        meta: vec![(approval_key(&post.id), encode("approval", &approval)?)],
        notes: vec![record],
        ..Changes::default()
    };
    store.apply(changes)?;
    store.flush()?;
    Ok((view(false), approval))
}
