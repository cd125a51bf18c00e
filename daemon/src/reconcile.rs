//! Reconcile: make the store's schedule agree with a config. New posts are
//! scheduled, changed posts replace their pending deliveries, removed posts
//! and accounts cancel theirs, and delivered history is never touched.
//! Applying the same config twice changes nothing.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::calendar::Recurrence;
use crate::config::{Config, Post};
use crate::materialize::Builder;
use crate::model::{Event, State, to_millis};
use crate::store::{Result, Store};

const ACCOUNTS_META: &str = "accounts_hash";
/// The `schedule_ahead` (milliseconds) that planned occurrences were timed with.
const AHEAD_META: &str = "schedule_ahead_ms";

/// What a reconcile changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub posts_added: usize,
    pub posts_changed: usize,
    pub posts_removed: usize,
    pub deliveries_scheduled: usize,
    /// Deliveries of occurrences more than `schedule_ahead` away: planned,
    /// created later.
    #[serde(default)]
    pub deliveries_planned: usize,
    pub deliveries_replaced: usize,
    pub deliveries_cancelled: usize,
    /// Planned deliveries dropped before they were created (their post left
    /// the config).
    #[serde(default)]
    pub planned_dropped: usize,
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
            "posts: {} added, {} changed, {} removed; deliveries: {} scheduled, {} planned, {} replaced, {} cancelled",
            self.posts_added,
            self.posts_changed,
            self.posts_removed,
            self.deliveries_scheduled,
            self.deliveries_planned,
            self.deliveries_replaced,
            self.deliveries_cancelled
        )?;
        if self.planned_dropped > 0 {
            write!(f, ", {} planned dropped", self.planned_dropped)?;
        }
        Ok(())
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

/// How `config` differs from the config last applied to the store (by
/// whichever daemon applied it): the posts (ids and definitions), the
/// accounts and `schedule_ahead`. Empty when they agree. Reads only: a
/// standby checks its config with it (`ha`).
pub fn differences(store: &dyn Store, config: &Config) -> Result<Vec<String>> {
    let mut found = Vec::new();
    if store.meta(ACCOUNTS_META)?.as_deref() != Some(accounts_hash(config).as_slice()) {
        found.push("the accounts differ".to_string());
    }
    let ahead = (config.daemon.schedule_ahead.as_millis() as u64).to_be_bytes();
    if store.meta(AHEAD_META)?.as_deref() != Some(ahead.as_slice()) {
        found.push("schedule_ahead differs".to_string());
    }
    let applied: BTreeSet<String> = store.post_ids()?.into_iter().collect();
    let mut posts: Vec<&str> =
        applied.iter().filter(|id| !config.posts.contains_key(*id)).map(String::as_str).collect();
    for post in config.posts.values() {
        if store.post(&post.id)?.is_none_or(|r| r.hash != post.hash) {
            posts.push(&post.id);
        }
    }
    if let Some(first) = posts.first() {
        found.push(format!("{} post(s) differ (first: {first})", posts.len()));
    }
    Ok(found)
}

/// Apply `config` to the store as of `now`.
pub fn reconcile(store: &dyn Store, config: &Config, now: DateTime<Utc>) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut b = Builder::new(store, config, now);
    b.revive_cancelled = true;

    // Posts that left the config: cancel what has not gone out.
    let known: BTreeSet<String> = store.post_ids()?.into_iter().collect();
    for id in known.iter().filter(|id| !config.posts.contains_key(*id)) {
        if let Some(plan) = store.post(id)?.and_then(|r| r.planned) {
            summary.planned_dropped += plan.targets.len();
        }
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

    // Accounts that left the config: cancel their pending deliveries. Planned
    // occurrences are planned again (their targets, and their timers when
    // `schedule_ahead` changed).
    let hash = accounts_hash(config);
    let ahead = (config.daemon.schedule_ahead.as_millis() as u64).to_be_bytes();
    let mut replan = store.meta(AHEAD_META)?.as_deref() != Some(ahead.as_slice());
    if replan {
        b.changes.meta.push((AHEAD_META.into(), ahead.to_vec()));
    }
    if store.meta(ACCOUNTS_META)?.as_deref() != Some(hash.as_slice()) {
        replan = true;
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
            Some(r) if r.hash == post.hash => {
                if let Some(plan) = r.planned.as_ref().filter(|_| replan) {
                    // The post did not change: a cancellation made while it
                    // was planned holds, as a timer would keep it.
                    let at = crate::model::from_millis(plan.occurrence);
                    b.revive_cancelled = false;
                    summary.deliveries_scheduled += b.schedule_from(post, Some(at), &post.hash)?;
                    b.revive_cancelled = true;
                    flush_if_large(&mut b)?;
                }
                continue;
            }
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
        summary.deliveries_scheduled += revive_later(&mut b, post)?;
        flush_if_large(&mut b)?;
    }
    store.apply(std::mem::take(&mut b.changes))?;
    store.flush()?;
    summary.deliveries_planned = b.planned;
    Ok(summary)
}

/// A new or changed post gets back the cancelled deliveries of its later
/// occurrences (materialized early under an earlier version of the post,
/// then cancelled when it or its account left the config): the post
/// targets them again, and its timers, which never revive a cancellation,
/// would otherwise pass them by. `schedule_from` handles the occurrences up
/// to the next one.
fn revive_later(b: &mut Builder, post: &Post) -> Result<usize> {
    let Some(next) = post.schedule.next_after(b.now) else { return Ok(0) };
    let next = crate::model::to_millis(next);
    let occurrences: BTreeSet<i64> = b
        .store
        .deliveries_of_post(&post.id)?
        .into_iter()
        .filter(|d| d.state == State::Cancelled && d.occurrence > next && post.targets.contains(&d.account))
        .map(|d| d.occurrence)
        .filter(|&t| post.schedule.is_occurrence(crate::model::from_millis(t)))
        .collect();
    let mut revived = 0;
    for t in occurrences {
        revived += b.ensure_occurrence(post, crate::model::from_millis(t), &crate::materialize::Verdict::OnTime)?;
    }
    Ok(revived)
}

fn flush_if_large(b: &mut Builder) -> Result<()> {
    if let Some(slice) = b.take_slice() {
        b.store.apply(slice)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeliveryId, Event};
    use crate::store::{AuditQuery, SledStore};
    use crate::testkit::{config, utc};

    const HEAD: &str = r#"
[daemon]
state_dir = "state"
time_zone = "Asia/Shanghai"
schedule_ahead = "30d"

[accounts.wuhan]
platform = "webhook"
url = "http://127.0.0.1:9/wuhan"

[accounts.xian]
platform = "webhook"
url = "http://127.0.0.1:9/xian"
"#;

    fn post(id: &str, schedule: &str, body: &str, targets: &str) -> String {
        format!("\n[[posts]]\nid = \"{id}\"\nbody = \"{body}\"\ntargets = {targets}\n{schedule}\n")
    }

    fn events(store: &SledStore) -> Vec<(Event, String, String)> {
        store.audit(&AuditQuery::default()).unwrap().into_iter().map(|r| (r.event, r.post, r.account)).collect()
    }

    #[test]
    fn applying_the_same_config_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let now = utc("2026-12-01T00:00:00Z");
        let text = format!(
            "{HEAD}{}{}",
            post("once", "at = 2026-12-02T09:00:00+08:00", "hello", "[\"wuhan\", \"xian\"]"),
            post("weekly", "cron = \"0 9 * * 1\"", "weekly", "[\"wuhan\"]")
        );
        let cfg = config(dir.path(), &text, now);
        let store = SledStore::open(&dir.path().join("state"), 8).unwrap();
        let first = reconcile(&store, &cfg, now).unwrap();
        assert_eq!(first.posts_added, 2);
        assert_eq!(first.deliveries_scheduled, 3);
        let records = store.audit(&AuditQuery::default()).unwrap().len();
        let second = reconcile(&store, &cfg, now).unwrap();
        assert!(second.is_empty(), "{second}");
        assert_eq!(store.audit(&AuditQuery::default()).unwrap().len(), records);
        // The weekly post has exactly its next occurrence materialized: Monday 7 Dec 09:00 CST.
        let weekly = store.deliveries_of_post("weekly").unwrap();
        assert_eq!(weekly.len(), 1);
        assert_eq!(crate::model::from_millis(weekly[0].occurrence), utc("2026-12-07T01:00:00Z"));
    }

    #[test]
    fn a_changed_post_replaces_content_and_cancels_what_no_longer_belongs() {
        let dir = tempfile::tempdir().unwrap();
        let now = utc("2026-12-01T00:00:00Z");
        let at = "at = 2026-12-02T09:00:00+08:00";
        let a = config(dir.path(), &format!("{HEAD}{}", post("p", at, "old text", "[\"wuhan\", \"xian\"]")), now);
        let store = SledStore::open(&dir.path().join("state"), 8).unwrap();
        reconcile(&store, &a, now).unwrap();
        let b = config(dir.path(), &format!("{HEAD}{}", post("p", at, "new text", "[\"wuhan\"]")), now);
        let summary = reconcile(&store, &b, now).unwrap();
        assert_eq!((summary.posts_changed, summary.deliveries_replaced, summary.deliveries_cancelled), (1, 1, 1));
        let occurrence = crate::model::to_millis(utc("2026-12-02T01:00:00Z"));
        let wuhan = store.delivery(DeliveryId::derive("p", occurrence, "wuhan")).unwrap().unwrap();
        let xian = store.delivery(DeliveryId::derive("p", occurrence, "xian")).unwrap().unwrap();
        assert_eq!(wuhan.state, State::Pending);
        assert_eq!(store.content(&wuhan.content_hash).unwrap().unwrap().rendered.text, "new text");
        assert_eq!(xian.state, State::Cancelled);
        assert!(xian.reason.unwrap().contains("no longer targets"));
    }

    #[test]
    fn a_removed_post_cancels_pending_but_never_touches_delivered_history() {
        let dir = tempfile::tempdir().unwrap();
        let now = utc("2026-12-01T00:00:00Z");
        let text = format!("{HEAD}{}", post("p", "at = 2026-12-02T09:00:00+08:00", "x", "[\"wuhan\", \"xian\"]"));
        let cfg = config(dir.path(), &text, now);
        let store = SledStore::open(&dir.path().join("state"), 8).unwrap();
        reconcile(&store, &cfg, now).unwrap();
        // Pretend the wuhan delivery went out.
        let occurrence = crate::model::to_millis(utc("2026-12-02T01:00:00Z"));
        let mut wuhan = store.delivery(DeliveryId::derive("p", occurrence, "wuhan")).unwrap().unwrap();
        wuhan.state = State::Delivered;
        let record = crate::model::AuditRecord::of(&wuhan, Event::Delivered, now);
        store.apply(crate::store::Changes { deliveries: vec![(wuhan, record)], ..Default::default() }).unwrap();

        let empty = config(dir.path(), HEAD, now);
        let summary = reconcile(&store, &empty, now).unwrap();
        assert_eq!((summary.posts_removed, summary.deliveries_cancelled), (1, 1));
        let states: Vec<State> = store.deliveries_of_post("p").unwrap().iter().map(|d| d.state).collect();
        assert!(states.contains(&State::Delivered) && states.contains(&State::Cancelled), "{states:?}");
        let last = events(&store).pop().unwrap();
        assert_eq!(last, (Event::Cancelled, "p".into(), "xian".into()));
    }

    #[test]
    fn reconcile_order_does_not_matter_a_then_b_equals_b() {
        let now = utc("2026-12-01T00:00:00Z");
        let a_text = format!(
            "{HEAD}{}{}",
            post("p", "at = 2026-12-02T09:00:00+08:00", "a", "[\"wuhan\", \"xian\"]"),
            post("q", "cron = \"30 8 * * *\"", "q", "[\"xian\"]")
        );
        let b_text = format!(
            "{HEAD}{}{}",
            post("p", "at = 2026-12-02T09:00:00+08:00", "b", "[\"wuhan\"]"),
            post("r", "cron = \"0 20 * * 5\"", "r", "[\"wuhan\"]")
        );
        let pending = |store: &SledStore| {
            let mut keys: Vec<(String, i64, String)> = store
                .due(None, i64::MAX, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|k| {
                    let d = store.delivery(k.id).unwrap().unwrap();
                    (d.post_id, d.due, store.content(&d.content_hash).unwrap().unwrap().rendered.text)
                })
                .collect();
            keys.sort();
            keys
        };
        let one = tempfile::tempdir().unwrap();
        let store = SledStore::open(&one.path().join("state"), 8).unwrap();
        reconcile(&store, &config(one.path(), &a_text, now), now).unwrap();
        reconcile(&store, &config(one.path(), &b_text, now), now).unwrap();
        let two = tempfile::tempdir().unwrap();
        let direct = SledStore::open(&two.path().join("state"), 8).unwrap();
        reconcile(&direct, &config(two.path(), &b_text, now), now).unwrap();
        assert_eq!(pending(&store), pending(&direct));
    }

    #[test]
    fn planned_posts_are_replanned_when_schedule_ahead_changes_and_dropped_with_their_post() {
        let dir = tempfile::tempdir().unwrap();
        let now = utc("2026-12-01T00:00:00Z");
        let body = post("p", "at = 2026-12-03T09:00:00+08:00", "x", "[\"wuhan\", \"xian\"]");
        let near = config(dir.path(), &format!("{HEAD}{body}").replace("\"30d\"", "\"1h\""), now);
        let store = SledStore::open(&dir.path().join("state"), 8).unwrap();
        let summary = reconcile(&store, &near, now).unwrap();
        assert_eq!((summary.deliveries_scheduled, summary.deliveries_planned), (0, 2), "{summary}");
        assert_eq!(store.planned_deliveries().unwrap(), 2);
        assert!(reconcile(&store, &near, now).unwrap().is_empty(), "a second run changes nothing");
        // schedule_ahead grows past the occurrence: its deliveries are created now.
        let far = config(dir.path(), &format!("{HEAD}{body}"), now);
        let summary = reconcile(&store, &far, now).unwrap();
        assert_eq!((summary.deliveries_scheduled, summary.deliveries_planned), (2, 0), "{summary}");
        assert_eq!(store.planned_deliveries().unwrap(), 0);
        // Planned again under a short window, then the post is removed.
        let other = post("q", "at = 2026-12-20T09:00:00+08:00", "y", "[\"wuhan\"]");
        let with_q = config(dir.path(), &format!("{HEAD}{body}{other}").replace("\"30d\"", "\"1h\""), now);
        assert_eq!(reconcile(&store, &with_q, now).unwrap().deliveries_planned, 1);
        let summary = reconcile(&store, &near, now).unwrap();
        assert_eq!((summary.posts_removed, summary.planned_dropped), (1, 1), "{summary}");
        assert!(summary.to_string().contains("1 planned dropped"), "{summary}");
        assert_eq!(store.planned_deliveries().unwrap(), 0);
    }

    #[test]
    fn a_cancellation_made_while_planned_holds_through_a_replan_and_ends_when_the_post_changes() {
        let dir = tempfile::tempdir().unwrap();
        let now = utc("2026-12-01T00:00:00Z");
        let head = HEAD.replace("\"30d\"", "\"1h\"");
        let at = "at = 2026-12-03T09:00:00+08:00";
        let both = "[\"wuhan\", \"xian\"]";
        let cfg = config(dir.path(), &format!("{head}{}", post("p", at, "x", both)), now);
        let store = SledStore::open(&dir.path().join("state"), 8).unwrap();
        reconcile(&store, &cfg, now).unwrap();
        let occurrence = crate::model::to_millis(utc("2026-12-03T01:00:00Z"));
        let xian = DeliveryId::derive("p", occurrence, "xian");
        let selection = crate::retry_cancel::Selection { delivery: Some(xian.to_string()), ..Default::default() };
        assert_eq!(crate::retry_cancel::cancel(&store, &selection, now).unwrap(), 1);
        assert_eq!(store.planned_deliveries().unwrap(), 1);

        // An account is added: planned posts are planned again, the cancelled one stays out.
        let more = head.clone() + "\n[accounts.nanjing]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/nj\"\n";
        let cfg = config(dir.path(), &format!("{more}{}", post("p", at, "x", both)), now);
        let summary = reconcile(&store, &cfg, now).unwrap();
        assert_eq!(summary.deliveries_planned, 1, "{summary}");
        assert_eq!(store.planned_deliveries().unwrap(), 1);
        assert_eq!(store.delivery(xian).unwrap().unwrap().state, State::Cancelled);

        // Staff change the post: the cancellation ends, as it would for a created delivery.
        let cfg = config(dir.path(), &format!("{more}{}", post("p", at, "new text", both)), now);
        reconcile(&store, &cfg, now).unwrap();
        let xian = store.delivery(xian).unwrap().unwrap();
        assert_eq!((xian.state, xian.due), (State::Pending, occurrence));
        assert_eq!(store.content(&xian.content_hash).unwrap().unwrap().rendered.text, "new text");
        assert_eq!(store.deliveries_of_post("p").unwrap().len(), 2, "the occurrence was created with it");
        assert_eq!(store.planned_deliveries().unwrap(), 0);
    }
}
