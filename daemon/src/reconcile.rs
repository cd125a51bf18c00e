//! Reconcile: make the store's schedule agree with a config. New posts are
//! scheduled, changed posts replace their pending deliveries, removed posts
//! and accounts cancel theirs, and delivered history is never touched.
//! Applying the same config twice changes nothing.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::config::{Config, Post};
use crate::model::{Event, State, to_millis};
use crate::occurrences::Builder;
use crate::schedule::Recurrence;
use crate::store::{Result, Store};

const ACCOUNTS_META: &str = "accounts_hash";
/// Changes are written in slices of about this many deliveries.
const BATCH: usize = 2_000;

/// What a reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub posts_added: usize,
    pub posts_changed: usize,
    pub posts_removed: usize,
    pub deliveries_scheduled: usize,
    pub deliveries_replaced: usize,
    pub deliveries_cancelled: usize,
}

impl Summary {
    pub fn is_empty(&self) -> bool {
        self == &Summary::default()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "posts: {} added, {} changed, {} removed; deliveries: {} scheduled, {} replaced, {} cancelled",
            self.posts_added,
            self.posts_changed,
            self.posts_removed,
            self.deliveries_scheduled,
            self.deliveries_replaced,
            self.deliveries_cancelled
        )
    }
}

fn accounts_hash(config: &Config) -> Vec<u8> {
    let mut h = Sha256::new();
    for id in config.accounts.keys() {
        h.update(id.as_bytes());
        h.update([0]);
    }
    h.finalize().to_vec()
}

/// Apply `config` to the store as of `now`.
pub fn reconcile(store: &dyn Store, config: &Config, now: DateTime<Utc>) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut b = Builder::new(store, config, now);
    b.revive_cancelled = true;

    // Posts that left the config: cancel what has not gone out.
    let known: BTreeSet<String> = store.post_ids()?.into_iter().collect();
    for id in known.iter().filter(|id| !config.posts.contains_key(*id)) {
        for d in store.deliveries_of_post(id)? {
            if d.state == State::Pending {
                summary.deliveries_cancelled += 1;
                cancel(&mut b, d, "the post was removed from the config");
            }
        }
        b.changes.posts.push((id.clone(), None));
        summary.posts_removed += 1;
        flush_if_large(&mut b)?;
    }

    // Accounts that left the config: cancel their pending deliveries.
    let hash = accounts_hash(config);
    if store.meta(ACCOUNTS_META)?.as_deref() != Some(hash.as_slice()) {
        for key in store.due(None, i64::MAX, usize::MAX)? {
            if !config.accounts.contains_key(&key.account)
                && let Some(d) = store.delivery(key.id)?
            {
                summary.deliveries_cancelled += 1;
                cancel(&mut b, d, "the account was removed from the config");
            }
        }
        b.changes.meta.push((ACCOUNTS_META.into(), hash));
    }

    for post in config.posts.values() {
        let record = store.post(&post.id)?;
        match &record {
            Some(r) if r.hash == post.hash => continue,
            Some(_) => {
                summary.posts_changed += 1;
                replace_pending(&mut b, post, &mut summary)?;
            }
            None => summary.posts_added += 1,
        }
        let first = match post.schedule.recurrence {
            Recurrence::Once(at) => Some(at),
            Recurrence::Cron(_) => post.schedule.first_from(now),
        };
        summary.deliveries_scheduled += b.schedule_from(post, first, &post.hash)?;
        flush_if_large(&mut b)?;
    }
    store.apply(std::mem::take(&mut b.changes))?;
    store.flush()?;
    Ok(summary)
}

fn flush_if_large(b: &mut Builder) -> Result<()> {
    if b.changes.deliveries.len() >= BATCH {
        b.store.apply(std::mem::take(&mut b.changes))?;
    }
    Ok(())
}

fn cancel(b: &mut Builder, mut d: crate::model::Delivery, reason: &str) {
    d.state = State::Cancelled;
    d.reason = Some(reason.to_string());
    d.updated = to_millis(b.now);
    b.record(d, Event::Cancelled);
}

/// A post changed: its pending deliveries follow the new definition, or are
/// cancelled when their occurrence or account is no longer part of it.
fn replace_pending(b: &mut Builder, post: &Post, summary: &mut Summary) -> Result<()> {
    for d in b.store.deliveries_of_post(&post.id)? {
        if d.state != State::Pending {
            continue;
        }
        let occurrence = crate::model::from_millis(d.occurrence);
        if !post.targets.contains(&d.account) {
            summary.deliveries_cancelled += 1;
            cancel(b, d, "the post changed and no longer targets this account");
        } else if !post.schedule.is_occurrence(occurrence) {
            summary.deliveries_cancelled += 1;
            cancel(b, d, "the post changed and this occurrence is no longer in its schedule");
        } else if let Some(account) = b.config.accounts.get(&d.account) {
            match b.content_for(post, account)? {
                Ok(hash) if hash != d.content_hash => {
                    let mut d = d;
                    d.content_hash = hash;
                    d.reason = Some("the post changed; this delivery now sends the new content".into());
                    d.updated = to_millis(b.now);
                    summary.deliveries_replaced += 1;
                    b.record(d, Event::Replaced);
                }
                Ok(_) => {}
                Err(reason) => {
                    let mut d = d;
                    d.state = State::Failed;
                    d.reason = Some(reason);
                    d.updated = to_millis(b.now);
                    b.record(d, Event::Failed);
                }
            }
        }
    }
    Ok(())
}
