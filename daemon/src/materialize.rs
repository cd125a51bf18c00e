//! Turning a post's occurrences into deliveries: the next occurrence of every
//! post is materialized as pending deliveries (one per target account), and
//! occurrences missed while herald was down are settled by the post's
//! misfire policy. Both reconcile and the scheduler's timers come here.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_adapters::{Platform, PostContent, Rendered};

use crate::config::{Account, Config, Misfire, Post};
use crate::model::{AuditRecord, Content, Delivery, DeliveryId, Event, Millis, State, from_millis, to_millis};
use crate::store::{Changes, Planned, PostRecord, Result, Store};

/// An occurrence handled within this long of its time is on time; later than
/// that (herald was down, or the host was suspended) it is *missed* and the
/// misfire policy decides.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// Deliveries (or post records) per slice of writes; see [`Builder::take_slice`].
const SLICE: usize = 2_000;

/// Safety bound on how many missed occurrences of one post are walked.
const MAX_MISSED_WALK: usize = 100_000;

/// What becomes of one occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    OnTime,
    /// Missed, but published now.
    Late(String),
    /// Missed and not published; recorded as skipped.
    Skip(String),
}

/// Decide the fate of the occurrences `past` (all at or before `now`, in
/// order) under the post's misfire policy.
pub fn verdicts(post: &Post, past: &[DateTime<Utc>], now: DateTime<Utc>) -> Vec<Verdict> {
    let on_time = chrono::Duration::from_std(ON_TIME).unwrap_or_default();
    let grace = chrono::Duration::from_std(post.grace).unwrap_or(chrono::Duration::MAX);
    let grace_text = humantime::format_duration(post.grace);
    let last = past.len().saturating_sub(1);
    past.iter()
        .enumerate()
        .map(|(i, &t)| {
            let late = now - t;
            if late <= on_time {
                Verdict::OnTime
            } else if post.misfire == Misfire::Skip {
                Verdict::Skip("missed while herald was not running (misfire = skip)".into())
            } else if late > grace {
                Verdict::Skip(format!(
                    "missed while herald was not running, by more than the grace window of {grace_text}"
                ))
            } else if post.misfire == Misfire::Latest && i != last {
                Verdict::Skip(
                    "missed while herald was not running; a later occurrence is published instead (misfire = latest)"
                        .into(),
                )
            } else {
                Verdict::Late(format!(
                    "missed while herald was not running; published late (misfire = {})",
                    post.misfire
                ))
            }
        })
        .collect()
}

/// Render a post for one account: the exact content and its hash.
pub fn render(post: &Post, account: &Account) -> std::result::Result<(String, Rendered), String> {
    Renderer::default().render(post, account)
}

/// How many distinct renderings of one post a [`Renderer`] remembers.
const RENDERINGS_KEPT: usize = 16;

/// Renders posts account by account, hashing each distinct rendering of a
/// post once. The accounts of a platform mostly render a post alike, and the
/// hash (canonical JSON, then SHA-256) costs far more than a comparison:
/// with thousands of targets per post, this is most of the work of `check`
/// and of scheduling.
#[derive(Default)]
pub struct Renderer {
    /// The post (id and definition hash) the remembered renderings are of.
    post: Option<(String, String)>,
    /// Its content per platform, overrides applied.
    contents: Vec<(Platform, PostContent)>,
    /// Its renderings so far, with their hashes and image digests.
    seen: Vec<(Content, String)>,
}

impl Renderer {
    /// What [`render`] answers, for one account of a post.
    pub fn render(&mut self, post: &Post, account: &Account) -> std::result::Result<(String, Rendered), String> {
        self.render_content(post, account).map(|(hash, content)| (hash, content.rendered))
    }

    /// [`Renderer::render`], with the digests of the images it names.
    pub fn render_content(&mut self, post: &Post, account: &Account) -> std::result::Result<(String, Content), String> {
        if self.post.as_ref().is_none_or(|(id, hash)| *id != post.id || *hash != post.hash) {
            self.post = Some((post.id.clone(), post.hash.clone()));
            self.contents.clear();
            self.seen.clear();
        }
        let index = match self.contents.iter().position(|(p, _)| *p == account.platform) {
            Some(i) => i,
            None => {
                self.contents.push((account.platform, post.content_for(account.platform)));
                self.contents.len() - 1
            }
        };
        match account.adapter.render(&self.contents[index].1) {
            Ok(rendered) => {
                if let Some((content, hash)) = self.seen.iter().find(|(c, _)| c.rendered == rendered) {
                    return Ok((hash.clone(), content.clone()));
                }
                let (hash, content) = Content::of(rendered);
                if self.seen.len() < RENDERINGS_KEPT {
                    self.seen.push((content.clone(), hash.clone()));
                }
                Ok((hash, content))
            }
            Err(problems) => {
                let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
                Err(format!("content refused by {}: {}", account.platform, text.join("; ")))
            }
        }
    }
}

/// The content hash of `rendered` (see [`Content::of`]: images by their bytes).
pub fn content_hash(rendered: &Rendered) -> String {
    Content::of(rendered.clone()).0
}

/// Collects the changes of one step, with the content it references.
pub struct Builder<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    pub now: DateTime<Utc>,
    pub changes: Changes,
    /// Bring cancelled deliveries back when their occurrence is scheduled
    /// again (a reconcile of a new or changed post), rather than leaving them
    /// cancelled (a timer: `herald cancel` must hold).
    pub revive_cancelled: bool,
    /// Deliveries planned (not created: their occurrence is more than
    /// `schedule_ahead` away) by this step.
    pub planned: usize,
    contents: HashSet<String>,
    renderer: Renderer,
}

impl<'a> Builder<'a> {
    pub fn new(store: &'a dyn Store, config: &'a Config, now: DateTime<Utc>) -> Self {
        Builder {
            store,
            config,
            now,
            changes: Changes::default(),
            revive_cancelled: false,
            planned: 0,
            contents: HashSet::new(),
            renderer: Renderer::default(),
        }
    }

    /// The changes so far, once they make a slice worth writing: a campaign
    /// to thousands of accounts, or a reconcile of thousands of posts, is
    /// written in slices of about [`SLICE`] rather than one huge transaction.
    pub fn take_slice(&mut self) -> Option<Changes> {
        (self.changes.deliveries.len() >= SLICE || self.changes.posts.len() >= SLICE)
            .then(|| std::mem::take(&mut self.changes))
    }

    pub fn record(&mut self, delivery: Delivery, event: Event) {
        let record = AuditRecord::of(&delivery, event, self.now);
        self.changes.deliveries.push((delivery, record));
    }

    fn remember_content(&mut self, hash: &str, content: Content) -> Result<()> {
        if self.contents.insert(hash.to_string()) && !self.store.has_content(hash)? {
            self.changes.contents.push((hash.to_string(), content));
        }
        Ok(())
    }

    /// The content hash for `post` on `account`, storing the content if new.
    pub fn content_for(&mut self, post: &Post, account: &Account) -> Result<std::result::Result<String, String>> {
        match self.renderer.render_content(post, account) {
            Ok((hash, content)) => {
                self.remember_content(&hash, content)?;
                Ok(Ok(hash))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }

    /// Make sure occurrence `t` of `post` has its deliveries, settled by `verdict`.
    /// Returns how many deliveries were created or revived.
    pub fn ensure_occurrence(&mut self, post: &Post, t: DateTime<Utc>, verdict: &Verdict) -> Result<usize> {
        let existing = self.store.deliveries_of_occurrence(&post.id, to_millis(t))?;
        self.settle_occurrence(post, t, verdict, existing)
    }

    /// [`Builder::ensure_occurrence`], given the deliveries the occurrence already has.
    fn settle_occurrence(
        &mut self,
        post: &Post,
        t: DateTime<Utc>,
        verdict: &Verdict,
        existing: Vec<Delivery>,
    ) -> Result<usize> {
        let occurrence = to_millis(t);
        let existing: std::collections::HashMap<DeliveryId, Delivery> =
            existing.into_iter().map(|d| (d.id, d)).collect();
        let mut created = 0;
        let mut missed = 0;
        let now = to_millis(self.now);
        for account_id in &post.targets {
            let Some(account) = self.config.accounts.get(account_id) else { continue };
            let id = DeliveryId::derive(&post.id, occurrence, account_id);
            match existing.get(&id) {
                Some(d) if d.state == State::Pending && d.attempt == 0 => {
                    // Already scheduled: settle it if it was missed.
                    let mut d = d.clone();
                    missed += 1;
                    match verdict {
                        Verdict::OnTime => continue,
                        Verdict::Late(reason) => {
                            d.reason = Some(reason.clone());
                            d.updated = now;
                            self.record(d, Event::Late);
                        }
                        Verdict::Skip(reason) => {
                            d.state = State::Skipped;
                            d.reason = Some(reason.clone());
                            d.updated = now;
                            self.record(d, Event::Skipped);
                        }
                    }
                }
                Some(d)
                    if self.revive_cancelled && d.state == State::Cancelled && !matches!(verdict, Verdict::Skip(_)) =>
                {
                    let mut d = d.clone();
                    d.updated = now;
                    // The post may have changed since it was cancelled: send what it says now.
                    match self.content_for(post, account)? {
                        Ok(hash) => {
                            d.content_hash = hash;
                            d.state = State::Pending;
                            d.due = occurrence.max(now);
                            d.reason =
                                Some("scheduled again: the post targets this occurrence and account again".into());
                            self.record(d, Event::Requeued);
                        }
                        Err(reason) => {
                            d.state = State::Failed;
                            d.reason = Some(reason);
                            self.record(d, Event::Failed);
                        }
                    }
                    created += 1;
                }
                Some(_) => {}
                None => {
                    let content = self.content_for(post, account)?;
                    let mut d = Delivery::new(&post.id, occurrence, account_id, account.platform, now);
                    let event = match (&content, verdict) {
                        (Err(reason), _) => {
                            d.state = State::Failed;
                            d.reason = Some(reason.clone());
                            Event::Failed
                        }
                        (Ok(_), Verdict::OnTime) => Event::Scheduled,
                        (Ok(_), Verdict::Late(reason)) => {
                            d.due = now;
                            d.reason = Some(reason.clone());
                            Event::Late
                        }
                        (Ok(_), Verdict::Skip(reason)) => {
                            d.state = State::Skipped;
                            d.reason = Some(reason.clone());
                            Event::Skipped
                        }
                    };
                    if let Ok(hash) = content {
                        d.content_hash = hash;
                    }
                    if matches!(event, Event::Late | Event::Skipped) {
                        missed += 1;
                    }
                    self.record(d, event);
                    created += 1;
                }
            }
        }
        // Said once per occurrence, and only when it happens now: an
        // occurrence settled before (delivered, cancelled, skipped) is quiet.
        if let (Verdict::Late(reason) | Verdict::Skip(reason), 1..) = (verdict, missed) {
            let published = matches!(verdict, Verdict::Late(_));
            tracing::warn!(post = %post.id, occurrence = %t.to_rfc3339(), deliveries = missed, published, "{reason}");
        }
        Ok(created)
    }

    /// Schedule `post` from occurrence `first` on: every occurrence up to now
    /// is settled by the misfire policy, and the first future one gets
    /// pending deliveries and the post's timer when it is within
    /// `schedule_ahead`, or is planned (one record, a timer `schedule_ahead`
    /// before it) when it is further away.
    pub fn schedule_from(&mut self, post: &Post, first: Option<DateTime<Utc>>, hash: &str) -> Result<usize> {
        let mut past = Vec::new();
        let mut next = first;
        while let Some(t) = next {
            if t > self.now || past.len() >= MAX_MISSED_WALK {
                break;
            }
            past.push(t);
            next = post.schedule.next_after(t);
        }
        let future = next.filter(|t| *t > self.now);
        let mut created = 0;
        for (t, verdict) in past.iter().zip(verdicts(post, &past, self.now)) {
            created += self.ensure_occurrence(post, *t, &verdict)?;
        }
        let ahead = chrono::Duration::from_std(self.config.daemon.schedule_ahead).unwrap_or(chrono::Duration::MAX);
        let past_current = past.last().copied().map(to_millis);
        // Deliveries of the next occurrence that exist already: cancelled
        // while it was planned. A reconcile of a new or changed post brings
        // them back (as it does for created ones), so it creates the
        // occurrence now; otherwise they stay out of the plan.
        let existing = match future {
            Some(t) => self.store.deliveries_of_occurrence(&post.id, to_millis(t))?,
            None => Vec::new(),
        };
        let revive = self.revive_cancelled && existing.iter().any(|d| d.state == State::Cancelled);
        let record = match future {
            Some(t) if t - self.now <= ahead || revive => {
                created += self.settle_occurrence(post, t, &Verdict::OnTime, existing)?;
                PostRecord {
                    hash: hash.to_string(),
                    current: Some(to_millis(t)),
                    timer: Some(to_millis(t)),
                    planned: None,
                }
            }
            Some(t) => {
                let existing: HashSet<&str> = existing.iter().map(|d| d.account.as_str()).collect();
                let targets: Vec<(String, Platform)> = post
                    .targets
                    .iter()
                    .filter(|a| !existing.contains(a.as_str()))
                    .filter_map(|a| self.config.accounts.get(a).map(|account| (a.clone(), account.platform)))
                    .collect();
                self.planned += targets.len();
                PostRecord {
                    hash: hash.to_string(),
                    current: past_current,
                    timer: Some(to_millis(t - ahead)),
                    planned: Some(Planned { occurrence: to_millis(t), targets }),
                }
            }
            None => PostRecord { hash: hash.to_string(), current: past_current, timer: None, planned: None },
        };
        self.changes.posts.push((post.id.clone(), Some(record)));
        Ok(created)
    }

    /// The post's timer fired at `t`: its planned occurrence is close (or
    /// occurrence `t` is due). Settle what is due (and any occurrences
    /// missed after it, when the timer itself fired late) and schedule the
    /// next one.
    pub fn advance(&mut self, post: &Post, t: Millis) -> Result<usize> {
        let record = self.store.post(&post.id)?;
        let on_time = to_millis(self.now) - t <= ON_TIME.as_millis() as i64;
        let first = match record {
            Some(PostRecord { planned: Some(plan), .. }) => Some(from_millis(plan.occurrence)),
            // On time at an occurrence whose deliveries all exist (the record
            // left the plan in the same write as the last of them): nothing
            // to settle, and reading a campaign's deliveries back would only
            // delay sending them.
            Some(PostRecord { current: Some(c), .. }) if c == t && on_time => post.schedule.next_after(from_millis(t)),
            _ => Some(from_millis(t)),
        };
        self.schedule_from(post, first, &post.hash.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::reconcile;
    use crate::store::SledStore;
    use crate::testkit::{WUHAN_WEBHOOK, config, utc};

    fn setup(schedule: &str, misfire: &str, grace: &str, now: DateTime<Utc>) -> (tempfile::TempDir, Config, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"{WUHAN_WEBHOOK}
[[posts]]
id = "p"
body = "stay safe"
targets = ["wuhan"]
{schedule}
misfire = "{misfire}"
grace = "{grace}"
"#
        );
        let cfg = config(dir.path(), &text, now);
        let store = SledStore::open(&dir.path().join("state"), 8).unwrap();
        reconcile(&store, &cfg, now).unwrap();
        (dir, cfg, store)
    }

    /// Fire the post's timer as the scheduler would, at `now`.
    fn fire_timer(store: &SledStore, cfg: &Config, now: DateTime<Utc>) {
        let timers = store.timers_due(to_millis(now)).unwrap();
        assert_eq!(timers.len(), 1, "one timer should be due");
        let mut b = Builder::new(store, cfg, now);
        b.advance(&cfg.posts["p"], timers[0].0).unwrap();
        let changes = std::mem::take(&mut b.changes);
        store.apply(changes).unwrap();
        store.flush().unwrap(); // as the scheduler does: records are shown once durable
    }

    /// (local hour, state) of every delivery, in occurrence order.
    fn hours(store: &SledStore) -> Vec<(String, State)> {
        let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        store
            .deliveries_of_post("p")
            .unwrap()
            .iter()
            .map(|d| (from_millis(d.occurrence).with_timezone(&tz).format("%d %H:%M").to_string(), d.state))
            .collect()
    }

    #[test]
    fn on_time_the_next_occurrence_is_scheduled() {
        let (_dir, cfg, store) = setup("cron = \"0 * * * *\"", "latest", "3h", utc("2026-12-01T00:30:00Z"));
        fire_timer(&store, &cfg, utc("2026-12-01T01:00:00.200Z"));
        assert_eq!(hours(&store), vec![("01 09:00".into(), State::Pending), ("01 10:00".into(), State::Pending)]);
    }

    #[test]
    fn misfire_latest_publishes_only_the_most_recent_missed_occurrence() {
        let (_dir, cfg, store) = setup("cron = \"0 * * * *\"", "latest", "3h", utc("2026-12-01T00:30:00Z"));
        // herald was down from before 09:00 until 12:30 local.
        fire_timer(&store, &cfg, utc("2026-12-01T04:30:00Z"));
        assert_eq!(
            hours(&store),
            vec![
                ("01 09:00".into(), State::Skipped),
                ("01 10:00".into(), State::Skipped),
                ("01 11:00".into(), State::Skipped),
                ("01 12:00".into(), State::Pending),
                ("01 13:00".into(), State::Pending),
            ]
        );
        let late = store.deliveries_of_post("p").unwrap()[3].clone();
        assert_eq!(late.due, to_millis(utc("2026-12-01T04:30:00Z")), "published now, not at its old time");
        assert!(late.reason.unwrap().contains("published late"));
    }

    #[test]
    fn misfire_all_publishes_every_missed_occurrence_within_grace() {
        let (_dir, cfg, store) = setup("cron = \"0 * * * *\"", "all", "3h", utc("2026-12-01T00:30:00Z"));
        fire_timer(&store, &cfg, utc("2026-12-01T04:30:00Z"));
        let states: Vec<State> = hours(&store).into_iter().map(|(_, s)| s).collect();
        // 09:00 is 3h30 late, beyond the grace window; 10, 11 and 12 go out late; 13:00 is next.
        assert_eq!(states, vec![State::Skipped, State::Pending, State::Pending, State::Pending, State::Pending]);
    }

    #[test]
    fn misfire_skip_records_every_missed_occurrence_as_skipped() {
        let (_dir, cfg, store) = setup("cron = \"0 * * * *\"", "skip", "3h", utc("2026-12-01T00:30:00Z"));
        fire_timer(&store, &cfg, utc("2026-12-01T02:30:00Z"));
        let states: Vec<State> = hours(&store).into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, vec![State::Skipped, State::Skipped, State::Pending]);
        let skipped =
            store.audit(&crate::store::AuditQuery { events: vec![Event::Skipped], ..Default::default() }).unwrap();
        assert_eq!(skipped.len(), 2, "each missed occurrence is in the audit log");
        assert!(skipped[0].reason.as_deref().unwrap().contains("misfire = skip"));
    }

    #[test]
    fn a_one_shot_post_past_its_grace_is_skipped_within_it_is_late() {
        let now = utc("2026-12-01T02:00:00Z");
        let (_dir, _cfg, store) = setup("at = 2026-12-01T09:30:00+08:00", "latest", "1h", now);
        assert_eq!(store.deliveries_of_post("p").unwrap()[0].state, State::Pending, "30 minutes late, within 1h");
        let (_dir, _cfg, store) = setup("at = 2026-12-01T08:00:00+08:00", "latest", "1h", now);
        assert_eq!(store.deliveries_of_post("p").unwrap()[0].state, State::Skipped, "2 hours late, beyond 1h");
    }

    fn pending_and_planned(store: &SledStore) -> (u64, u64) {
        (store.counts().unwrap().get(&State::Pending).copied().unwrap_or(0), store.planned_deliveries().unwrap())
    }

    #[test]
    fn an_occurrence_beyond_schedule_ahead_is_planned_then_created_an_hour_before() {
        // Default schedule_ahead: 1h. The post is due at 09:00 CST (01:00 UTC) tomorrow.
        let now = utc("2026-11-30T02:00:00Z");
        let (_dir, cfg, store) = setup("at = 2026-12-01T09:00:00+08:00", "latest", "1h", now);
        assert!(store.deliveries_of_post("p").unwrap().is_empty(), "created a day early");
        assert_eq!(pending_and_planned(&store), (0, 1));
        let plans = store.planned(10).unwrap();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].1.occurrence, to_millis(utc("2026-12-01T01:00:00Z")));
        assert_eq!(store.next_timer().unwrap(), Some(to_millis(utc("2026-12-01T00:00:00Z"))), "an hour before");
        assert!(store.timers_due(to_millis(utc("2026-11-30T23:59:59Z"))).unwrap().is_empty());

        fire_timer(&store, &cfg, utc("2026-12-01T00:00:00.100Z"));
        let created = store.deliveries_of_post("p").unwrap();
        assert_eq!(created.len(), 1);
        assert_eq!((created[0].state, created[0].due), (State::Pending, to_millis(utc("2026-12-01T01:00:00Z"))));
        assert_eq!(pending_and_planned(&store), (1, 0));
        let scheduled =
            store.audit(&crate::store::AuditQuery { events: vec![Event::Scheduled], ..Default::default() }).unwrap();
        assert_eq!(scheduled.len(), 1, "the delivery's life starts in the audit log when it is created");
    }

    #[test]
    fn a_planned_occurrence_missed_while_down_follows_the_misfire_policy() {
        let now = utc("2026-11-30T02:00:00Z");
        // Down from before the timer (00:00 UTC) until 30 minutes after 09:00 CST: within grace, late.
        let (_dir, cfg, store) = setup("at = 2026-12-01T09:00:00+08:00", "latest", "1h", now);
        fire_timer(&store, &cfg, utc("2026-12-01T01:30:00Z"));
        let d = &store.deliveries_of_post("p").unwrap()[0];
        assert_eq!((d.state, d.due), (State::Pending, to_millis(utc("2026-12-01T01:30:00Z"))));
        assert!(d.reason.as_deref().unwrap().contains("published late"), "{d:?}");
        // Down for two hours past it: beyond grace, skipped and recorded.
        let (_dir, cfg, store) = setup("at = 2026-12-01T09:00:00+08:00", "latest", "1h", now);
        fire_timer(&store, &cfg, utc("2026-12-01T03:00:00Z"));
        assert_eq!(store.deliveries_of_post("p").unwrap()[0].state, State::Skipped);
        assert_eq!(pending_and_planned(&store), (0, 0));
    }

    #[test]
    fn a_recurring_post_plans_its_next_occurrence_when_it_is_far() {
        // Weekly on Monday 09:00 CST; now is Tuesday.
        let now = utc("2026-12-01T02:00:00Z");
        let (_dir, cfg, store) = setup("cron = \"0 9 * * 1\"", "latest", "1h", now);
        assert_eq!(pending_and_planned(&store), (0, 1));
        fire_timer(&store, &cfg, utc("2026-12-07T00:00:00Z"));
        assert_eq!(hours(&store), vec![("07 09:00".into(), State::Pending)]);
        // At 09:00 the timer moves on: the next Monday is a week away, planned again.
        fire_timer(&store, &cfg, utc("2026-12-07T01:00:00Z"));
        assert_eq!(pending_and_planned(&store), (1, 1));
        assert_eq!(store.planned(1).unwrap()[0].1.occurrence, to_millis(utc("2026-12-14T01:00:00Z")));
    }

    #[test]
    fn cancelling_a_planned_post_records_it_and_nothing_goes_out_later() {
        let now = utc("2026-11-30T02:00:00Z");
        let (_dir, cfg, store) = setup("at = 2026-12-01T09:00:00+08:00", "latest", "1h", now);
        let selection = crate::retry_cancel::Selection { post: Some("p".into()), ..Default::default() };
        assert_eq!(crate::retry_cancel::cancel(&store, &selection, now).unwrap(), 1);
        assert_eq!(pending_and_planned(&store), (0, 0));
        let d = &store.deliveries_of_post("p").unwrap()[0];
        assert_eq!(d.state, State::Cancelled);
        let cancelled =
            store.audit(&crate::store::AuditQuery { events: vec![Event::Cancelled], ..Default::default() }).unwrap();
        assert_eq!(cancelled.len(), 1);
        // Its time comes: the timer passes it by.
        fire_timer(&store, &cfg, utc("2026-12-01T01:00:00.100Z"));
        assert_eq!(hours(&store), vec![("01 09:00".into(), State::Cancelled)]);
        assert!(store.timers_due(i64::MAX).unwrap().is_empty());
    }
}
