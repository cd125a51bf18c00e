//! The scheduler: sleeps until the earliest due delivery or post timer,
//! dispatches through per-account gates and a global concurrency limit, and
//! records every outcome. It is the only writer of delivery state while
//! herald runs (others only append audit notes or their own `meta` keys;
//! ARCHITECTURE.md, "Several writers, one delivery writer").
//!
//! [`Scheduler::tick`] does one round of work and returns what it did, so
//! tests can drive the loop a step at a time; [`Scheduler::run`] is the loop.

mod attempt;
pub mod backoff;
mod gates;
mod retry;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_adapters::PlatformAnswer;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

pub use attempt::Finished;
use gates::{Blocked, Gates};

use crate::alerts::{Alert, Alerter};
use crate::approvals::{Approval, ApprovalError, ApproveRequest, ApproveView};
use crate::blocking::off_the_workers;
use crate::config::Config;
use crate::materialize::{Builder, ON_TIME, Verdict};
use crate::metrics::{Metrics, outcome};
use crate::model::{AuditRecord, Content, Delivery, DeliveryId, Event, Millis, State, from_millis, to_millis};
use crate::notify::Notifier;
use crate::pauses::{PauseError, PauseRequest, PauseView, Pauses};
use crate::reconcile::{self, Summary};
use crate::retry_cancel::{self, OperationError, Selection};
use crate::store::{Changes, DueKey, Result, Store};

/// How many due keys one scan of the due index reads.
const SCAN: usize = 1_000;
/// One round of the loop fires post timers for about this long at most.
const TIMER_ROUND: Duration = Duration::from_millis(500);
/// How many contents the scheduler keeps at hand.
const CONTENT_CACHE: usize = 256;
/// The longest the loop sleeps without looking around.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Messages to a running scheduler.
pub enum Control {
    /// Apply a new, already validated config; answers what changed.
    Reload(Arc<Config>, oneshot::Sender<Result<Summary>>),
    /// Retry failed deliveries (`herald retry` through the control socket).
    Retry(Selection, oneshot::Sender<std::result::Result<usize, OperationError>>),
    /// Cancel pending deliveries (`herald cancel` through the control socket).
    Cancel(Selection, oneshot::Sender<std::result::Result<usize, OperationError>>),
    /// `herald upcoming` through the control socket: the plan, from the store and the config.
    Upcoming {
        until: Option<DateTime<Utc>>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<crate::control::Upcoming>>>,
    },
    /// Stop dispatching, wait for in-flight deliveries up to the deadline, return.
    Shutdown,
    /// The scheduler lease is lost (`lease`): stop dispatching at once, let
    /// the requests on the wire finish (their outcomes may fail to record:
    /// the new leader recovers them), return [`crate::store::StoreError::NotLeader`].
    StepDown(String),
    /// `herald pause` through the control socket: no new delivery it covers starts.
    Pause(PauseRequest, oneshot::Sender<std::result::Result<PauseView, PauseError>>),
    /// `herald resume`: lift pauses; what they held goes out under its post's misfire policy.
    Resume(PauseRequest, oneshot::Sender<std::result::Result<PauseView, PauseError>>),
    /// Which group may approve posts (`[daemon] approvers_group` of the running config).
    ApproversGroup(oneshot::Sender<Option<String>>),
    /// The running config (a standby takes down a forwarded recall's copies with its accounts).
    RunningConfig(oneshot::Sender<Arc<Config>>),
    /// `herald approve`: approve a post's content as the running config has it.
    Approve(ApproveRequest, oneshot::Sender<std::result::Result<ApproveView, ApprovalError>>),
    /// `herald recall` through the control socket: cancel what has not gone
    /// out, and answer the copies to take down (the control task deletes them).
    Recall(
        crate::recall::RecallOrder,
        oneshot::Sender<std::result::Result<crate::recall::Plan, crate::recall::RecallError>>,
    ),
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tick {
    pub timers_fired: usize,
    pub scheduled: usize,
    pub dispatched: usize,
}

pub struct Scheduler {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    gates: Gates,
    /// Due deliveries waiting for their account's gate, per account.
    ready: HashMap<String, VecDeque<DueKey>>,
    queued: HashSet<DeliveryId>,
    /// The last due key read; the next scan starts after it.
    cursor: Option<DueKey>,
    running: JoinSet<Finished>,
    running_ids: HashMap<tokio::task::Id, Delivery>,
    /// Source of randomness for jitter.
    rng: fastrand::Rng,
    notifier: Arc<Notifier>,
    metrics: Arc<Metrics>,
    alerter: Option<Arc<Alerter>>,
    last_status: Option<std::time::Instant>,
    /// When each account was last warned about expiring credentials.
    expiry_warned: HashMap<String, std::time::Instant>,
    /// Contents recently sent, by hash.
    contents: HashMap<String, Content>,
    /// Outcomes applied but not yet flushed: the next dispatch's flush (or
    /// the end of the tick) covers them, so a busy loop pays one fsync per
    /// round for both (group commit).
    unflushed: bool,
    /// The operators' pauses, as the store keeps them (`herald pause`).
    pauses: Pauses,
    /// Due deliveries held back now (by a pause), for the metrics.
    held: HashSet<DeliveryId>,
    /// Posts that need approval, with `Post::approval_hash` of the running config.
    approval_hashes: HashMap<String, String>,
    /// The stored approvals of those posts.
    approvals: HashMap<String, Approval>,
    /// This daemon's role, shown in the status line when several daemons share the store.
    role: Option<Arc<crate::lease::Role>>,
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>) -> Self {
        let mut gates = Gates::default();
        gates.update(&config);
        Scheduler {
            store,
            config,
            gates,
            ready: HashMap::new(),
            queued: HashSet::new(),
            cursor: None,
            running: JoinSet::new(),
            running_ids: HashMap::new(),
            rng: fastrand::Rng::new(),
            notifier: Arc::new(Notifier::disabled()),
            metrics: Arc::new(Metrics::default()),
            alerter: None,
            last_status: None,
            expiry_warned: HashMap::new(),
            contents: HashMap::new(),
            unflushed: false,
            pauses: Pauses::default(),
            held: HashSet::new(),
            approval_hashes: HashMap::new(),
            approvals: HashMap::new(),
            role: None,
        }
    }

    /// Say in the status line that this daemon leads (several daemons share the store).
    pub fn leading(mut self, role: Arc<crate::lease::Role>) -> Self {
        self.role = Some(role);
        self
    }

    /// Report to systemd and to the metrics endpoint.
    pub fn observed_by(mut self, notifier: Arc<Notifier>, metrics: Arc<Metrics>) -> Self {
        self.notifier = notifier;
        self.metrics = metrics;
        self
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Write changes, and rescan the due index if they put a pending
    /// delivery behind the cursor.
    fn apply(&mut self, changes: Changes) -> Result<Vec<AuditRecord>> {
        if let Some(cursor) = &self.cursor
            && changes.deliveries.iter().any(|(d, _)| d.state == State::Pending && d.due <= cursor.due)
        {
            self.cursor = None;
        }
        self.store.apply(changes)
    }

    /// Start-up: deliveries found in flight were interrupted by a crash or a
    /// kill. They become pending again, keeping their idempotency key, and
    /// are marked uncertain so adapters look before re-posting. One whose
    /// interrupted attempt was the last allowed gets it again where the
    /// adapter says a re-send is safe, and fails (check the account) elsewhere.
    pub fn recover(&mut self, now: DateTime<Utc>) -> Result<usize> {
        // The pauses hold from the first tick on: read them before anything is sent.
        self.pauses = Pauses::load(self.store.as_ref())?;
        let found = self.store.in_flight()?;
        let count = found.len();
        let mut changes = Changes::default();
        for mut d in found {
            d.updated = to_millis(now);
            d.uncertain = true;
            let resend_is_safe = self.config.accounts.get(&d.account).is_some_and(|a| a.adapter.resend_is_safe());
            if d.attempt >= self.config.retry.max_attempts && resend_is_safe {
                // The interrupted attempt does not count: the platform
                // de-duplicates (or herald looks before sending), so giving
                // the last attempt again cannot publish the post twice.
                d.attempt -= 1;
                d.state = State::Pending;
                d.due = to_millis(now);
                d.reason = Some(format!(
                    "herald stopped while attempt {} (the last allowed) was in flight; the platform recognises a \
                     repeated delivery, so that attempt is made again with the same idempotency key",
                    d.attempt + 1
                ));
                let record = AuditRecord::of(&d, Event::Recovered, now);
                changes.deliveries.push((d, record));
            } else if d.attempt >= self.config.retry.max_attempts {
                d.state = State::Failed;
                d.reason = Some(format!(
                    "herald stopped while attempt {} (the last allowed) was in flight; the platform may or may not \
                     have published it: check the account, then `herald retry` if it is missing",
                    d.attempt
                ));
                let record = AuditRecord::of(&d, Event::Failed, now);
                changes.deliveries.push((d, record));
            } else {
                d.state = State::Pending;
                d.due = to_millis(now);
                d.reason = Some(
                    "herald stopped while this delivery was in flight; retrying with the same idempotency key".into(),
                );
                let record = AuditRecord::of(&d, Event::Recovered, now);
                changes.deliveries.push((d, record));
            }
        }
        self.apply(changes)?;
        self.store.flush()?;
        if count > 0 {
            tracing::warn!(deliveries = count, "recovered deliveries that were in flight when herald stopped");
        }
        Ok(count)
    }

    /// At a takeover: the attempts the last leader started within each
    /// account's rate window (from the audit log) count against the new
    /// leader's windows, so a failover never lets an account exceed its
    /// rate. Call after [`Scheduler::reconcile`] (the gates follow the config).
    pub fn count_earlier_starts(&mut self, now: DateTime<Utc>) -> Result<usize> {
        let windows: HashMap<String, Millis> = self
            .config
            .accounts
            .iter()
            .filter_map(|(id, a)| a.rate.map(|r| (id.clone(), r.per.as_millis() as Millis)))
            .collect();
        let Some(longest) = windows.values().copied().max() else { return Ok(0) };
        let now_ms = to_millis(now);
        let query = crate::store::AuditQuery {
            events: vec![Event::Attempt],
            since: Some(from_millis(now_ms - longest)),
            ..Default::default()
        };
        let mut counted = 0;
        for record in self.store.audit(&query)? {
            let at = to_millis(record.time);
            if let (Some(window), Some(gate)) = (windows.get(&record.account), self.gates.get(&record.account))
                && at + window > now_ms
            {
                gate.started_before(at);
                counted += 1;
            }
        }
        Ok(counted)
    }

    /// Apply a config: reconcile the store with it and use its accounts from now on.
    pub fn reconcile(&mut self, config: Arc<Config>, now: DateTime<Utc>) -> Result<Summary> {
        let summary = reconcile::reconcile(self.store.as_ref(), &config, now)?;
        self.gates.update(&config);
        self.alerter = match &config.alerts {
            Some(settings) => match Alerter::new(settings.clone(), Arc::clone(&self.store)) {
                Ok(alerter) => Some(Arc::new(alerter)),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "alerts are not available");
                    None
                }
            },
            None => None,
        };
        self.config = config;
        self.cursor = None;
        self.held.clear();
        self.read_approvals()?;
        Ok(summary)
    }

    /// One round: fire due post timers, pick up due deliveries, start what
    /// the gates allow.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Result<Tick> {
        let mut tick = Tick::default();
        let now_ms = to_millis(now);

        // Deliveries already due go out before the post timers are
        // processed (thousands of posts due at one instant each have one),
        // so the first request of a burst does not wait for them. Only
        // those due within `ON_TIME`: a timer can only find those on time
        // (`materialize::verdicts`), so it never settles one of them by
        // the misfire policy; older ones wait until the timers are done.
        let timers_due = self.store.next_timer()?.is_some_and(|t| t <= now_ms);
        if timers_due {
            // One page of the due index is enough to fill the free slots.
            self.queue_due(now_ms, 1)?;
            tick.dispatched += self.dispatch(now, now_ms - ON_TIME.as_millis() as Millis)?;
        }

        // Post timers: schedule the following occurrences.
        let timers = if timers_due { self.store.timers_due(now_ms)? } else { Vec::new() };
        if !timers.is_empty() {
            let started = std::time::Instant::now();
            let config = Arc::clone(&self.config);
            let store = Arc::clone(&self.store);
            let mut b = Builder::new(store.as_ref(), &config, now);
            for (t, post_id) in &timers {
                match config.posts.get(post_id) {
                    Some(post) => tick.scheduled += b.advance(post, *t)?,
                    None => b.changes.posts.push((post_id.clone(), None)),
                }
                tick.timers_fired += 1;
                // Each post's timer moves with the slice holding its last deliveries.
                if let Some(slice) = b.take_slice() {
                    self.apply(slice)?;
                }
                // Timers due at once for a huge schedule (a million
                // deliveries within the hour) are taken a round at a time,
                // so due deliveries still go out and the watchdog is fed
                // in between; the rest stay due and come next round.
                if started.elapsed() >= TIMER_ROUND {
                    break;
                }
            }
            let changes = std::mem::take(&mut b.changes);
            drop(b);
            self.apply(changes)?;
            // The `scheduled` records are shown (log, status) once durable:
            // one flush for the round, so they are not held back long.
            self.store.flush()?;
            tracing::debug!(
                timers = tick.timers_fired,
                created = tick.scheduled,
                ms = started.elapsed().as_millis() as u64,
                "post timers fired"
            );
        }

        self.queue_due(now_ms, usize::MAX)?;
        tick.dispatched += self.dispatch(now, Millis::MIN)?;
        if self.unflushed {
            self.store.flush()?;
            self.unflushed = false;
        }
        Ok(tick)
    }

    /// Due deliveries into the per-account queues: up to `pages` reads of
    /// the due index; the cursor keeps the place for the next call.
    fn queue_due(&mut self, now_ms: Millis, pages: usize) -> Result<()> {
        for _ in 0..pages {
            let keys = self.store.due(self.cursor.as_ref(), now_ms, SCAN)?;
            let full = keys.len() == SCAN;
            for key in keys {
                self.cursor = Some(key.clone());
                if self.queued.insert(key.id) {
                    self.ready.entry(key.account.clone()).or_default().push_back(key);
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Start every delivery the gates allow; the in-flight transitions are
    /// made durable (one flush for the batch) before any request is sent.
    /// An account whose next queued delivery was due before `not_before`
    /// waits for a later call.
    fn dispatch(&mut self, now: DateTime<Utc>, not_before: Millis) -> Result<usize> {
        let now_ms = to_millis(now);
        let mut free = self.config.daemon.concurrency.saturating_sub(self.running.len());
        let mut starting: Vec<Delivery> = Vec::new();
        let mut accounts: Vec<(Millis, String)> =
            self.ready.iter().filter_map(|(a, q)| q.front().map(|k| (k.due, a.clone()))).collect();
        accounts.sort();
        let max_attempts = self.config.retry.max_attempts;
        // Deliveries that already had every attempt the config now allows
        // (a reload lowered `max_attempts`): failed, not attempted again.
        let mut used_up: Vec<Delivery> = Vec::new();
        // Due deliveries a pause or a missing approval holds (newly), and what released ones became.
        let mut holding: Vec<(Delivery, String)> = Vec::new();
        let mut awaiting: Vec<(Delivery, String)> = Vec::new();
        let mut released = Changes::default();
        let mut progress = true;
        while free > 0 && progress {
            progress = false;
            for (_, account) in &accounts {
                if free == 0 {
                    break;
                }
                let Some(gate) = self.gates.get(account) else {
                    // Not in the config (a reconcile cancels these); leave them.
                    continue;
                };
                if gate.check(now_ms).is_err() {
                    continue;
                }
                let Some(queue) = self.ready.get_mut(account) else { continue };
                loop {
                    if queue.front().is_none_or(|k| k.due < not_before) {
                        break;
                    }
                    let Some(key) = queue.pop_front() else { break };
                    self.queued.remove(&key.id);
                    let Some(mut d) = self.store.delivery(key.id)? else { continue };
                    if d.state != State::Pending || d.due != key.due {
                        continue; // changed since it was queued
                    }
                    if let Some(pause) = self.pauses.covering(&d.post_id, &d.account, d.platform) {
                        // Not started; it stays pending, and a resume rescans the due index.
                        self.held.insert(d.id);
                        if d.held.is_none() {
                            d.held = Some(now_ms);
                            holding.push((d, format!("held: {pause}")));
                        }
                        continue;
                    }
                    self.held.remove(&d.id);
                    if let Some(hash) = self.approval_hashes.get(&d.post_id)
                        && self.approvals.get(&d.post_id).is_none_or(|a| &a.hash != hash)
                    {
                        if d.held.is_none() {
                            d.held = Some(now_ms);
                            let why = format!(
                                "held: post {} awaits approval (`herald approve --post {}`)",
                                d.post_id, d.post_id
                            );
                            awaiting.push((d.clone(), why.clone()));
                            holding.push((d, why));
                        }
                        continue;
                    }
                    if let Some(since) = d.held.take() {
                        match crate::pauses::release_verdict(&self.config, self.store.as_ref(), &d, since, now)? {
                            Verdict::OnTime => {}
                            Verdict::Late(reason) => {
                                let mut record = AuditRecord::of(&d, Event::Late, now);
                                record.reason = Some(reason);
                                released.deliveries.push((d.clone(), record));
                            }
                            Verdict::Skip(reason) => {
                                d.state = State::Skipped;
                                d.updated = now_ms;
                                d.reason = Some(reason);
                                let record = AuditRecord::of(&d, Event::Skipped, now);
                                released.deliveries.push((d, record));
                                continue;
                            }
                        }
                    }
                    if d.attempt >= max_attempts {
                        d.state = State::Failed;
                        d.updated = now_ms;
                        let plural = if d.attempt == 1 { "" } else { "s" };
                        d.reason = Some(format!(
                            "gave up after {} attempt{plural}: max_attempts is now {max_attempts}; last error: {}",
                            d.attempt,
                            d.reason.as_deref().unwrap_or("none recorded")
                        ));
                        used_up.push(d);
                        continue;
                    }
                    d.state = State::InFlight;
                    d.attempt += 1;
                    d.updated = now_ms;
                    gate.start(now_ms);
                    starting.push(d);
                    free -= 1;
                    progress = true;
                    break;
                }
            }
        }
        self.ready.retain(|_, q| !q.is_empty());
        self.metrics.held_by_pause(self.held.len());
        if !holding.is_empty() {
            let mut changes = Changes::default();
            for (d, why) in holding {
                tracing::info!(delivery = %d.id, post = %d.post_id, account = %d.account, reason = %why, "delivery held");
                let mut record = AuditRecord::of(&d, Event::Held, now);
                record.reason = Some(why);
                changes.deliveries.push((d, record));
            }
            // Not `self.apply`: their due time is unchanged, so no rescan is needed.
            self.store.apply(changes)?;
            self.unflushed = true;
        }
        if let Some(alerter) = &self.alerter {
            for (d, reason) in awaiting {
                alerter.raise(&d, Alert::AwaitingApproval { reason });
            }
        }
        if !released.is_empty() {
            // Before the attempts below, which write the same deliveries again.
            self.store.apply(released)?;
            self.unflushed = true;
        }
        if !used_up.is_empty() {
            let mut changes = Changes::default();
            for d in used_up {
                tracing::error!(delivery = %d.id, post = %d.post_id, account = %d.account, platform = %d.platform,
                    reason = d.reason.as_deref().unwrap_or(""), "delivery failed");
                if let Some(alerter) = &self.alerter {
                    alerter.raise(&d, Alert::DeliveryFailed { reason: d.reason.clone().unwrap_or_default() });
                }
                let record = AuditRecord::of(&d, Event::Failed, now);
                changes.deliveries.push((d, record));
            }
            self.apply(changes)?;
            self.store.flush()?;
        }
        if starting.is_empty() {
            return Ok(0);
        }
        let mut changes = Changes::default();
        for d in &starting {
            let record = AuditRecord::of(d, Event::Attempt, now);
            changes.deliveries.push((d.clone(), record));
        }
        self.apply(changes)?;
        // One fsync for these transitions and any outcomes recorded since the last.
        self.store.flush()?;
        self.unflushed = false;
        let count = starting.len();
        for d in starting {
            let late = (now_ms - d.due).max(0) as u64;
            self.metrics.dispatched(Duration::from_millis(late));
            self.spawn(d, now)?;
        }
        Ok(count)
    }

    /// The content with this hash, through a small cache: a campaign sends
    /// the same content to many accounts, and content never changes.
    fn content(&mut self, hash: &str) -> Result<Option<Content>> {
        if let Some(content) = self.contents.get(hash) {
            return Ok(Some(content.clone()));
        }
        let found = self.store.content(hash)?;
        if let Some(content) = &found {
            if self.contents.len() >= CONTENT_CACHE {
                self.contents.clear();
            }
            self.contents.insert(hash.to_string(), content.clone());
        }
        Ok(found)
    }

    fn spawn(&mut self, d: Delivery, now: DateTime<Utc>) -> Result<()> {
        let account = self.config.accounts.get(&d.account).map(|a| (Arc::clone(&a.adapter), a.http.clone()));
        let content = self.content(&d.content_hash)?;
        let (Some((adapter, http)), Some(content)) = (account, content) else {
            let reason = "the account or the content of this delivery is missing from the config or the store";
            let finished = Finished {
                result: Err(herald_adapters::DeliveryError::permanent(PlatformAnswer::default(), reason)),
                delivery: d,
                latency: Duration::ZERO,
                refreshed: false,
                found: false,
                looked_up: false,
            };
            return self.record_outcomes(vec![finished], now);
        };
        tracing::debug!(delivery = %d.id, post = %d.post_id, account = %d.account, attempt = d.attempt, "attempt started");
        let default_limit = http.timeout * 2 + http.connect_timeout + Duration::from_secs(5);
        let limit = adapter.attempt_limit().map_or(default_limit, |l| l.max(default_limit));
        let delivery = d.clone();
        let handle = self.running.spawn(attempt::run(adapter, d, content, limit));
        self.running_ids.insert(handle.id(), delivery);
        Ok(())
    }

    /// Record the outcomes of finished attempts, in one write and one flush.
    pub fn record(&mut self, batch: Vec<Finished>, now: DateTime<Utc>) -> Result<()> {
        self.record_outcomes(batch, now)?;
        self.store.flush()?;
        self.unflushed = false;
        Ok(())
    }

    /// [`Scheduler::record`] without the flush: the loop's next flush
    /// (before any request leaves, or at the end of the tick) covers it.
    fn record_outcomes(&mut self, batch: Vec<Finished>, now: DateTime<Utc>) -> Result<()> {
        let mut changes = Changes::default();
        for f in batch {
            let mut d = f.delivery;
            if let Some(gate) = self.gates.get(&d.account) {
                gate.finish();
            }
            d.updated = to_millis(now);
            if f.refreshed {
                self.metrics.refreshed(&d.account);
                let record = AuditRecord::of(&d, Event::CredentialsRefreshed, now);
                changes.deliveries.push((d.clone(), record));
            }
            let latency = Some(f.latency.as_millis() as u64);
            let mut paused = false;
            // The one place an attempt's outcome becomes a record: scrub secrets the answer echoes.
            let result = match self.config.accounts.get(&d.account) {
                Some(account) => crate::scrub::Scrubber::for_account(account).outcome(f.result),
                None => f.result,
            };
            let (event, answer) = match result {
                Ok(receipt) => {
                    if let Some(gate) = self.gates.get(&d.account) {
                        gate.consecutive_failures = 0;
                    }
                    d.state = State::Delivered;
                    d.remote_id = receipt.remote_id;
                    d.url = receipt.url;
                    d.reason = f.found.then(|| {
                        "an earlier attempt had already published it (found on the platform); not sent again"
                            .to_string()
                    });
                    tracing::info!(delivery = %d.id, post = %d.post_id, account = %d.account, platform = %d.platform,
                        url = d.url.as_deref().unwrap_or(""), latency_ms = f.latency.as_millis() as u64, "delivered");
                    (Event::Delivered, receipt.answer)
                }
                Err(e) => {
                    d.uncertain = d.uncertain || e.maybe_sent;
                    let reason = describe(&e);
                    let unit = self.rng.f64();
                    let next = retry::next(d.attempt, &e.class, &reason, &self.config.retry, to_millis(now), unit);
                    let event = match next {
                        retry::Next::Failed { reason, account_backoff } => {
                            if account_backoff {
                                self.account_backoff(&d.account, now);
                            }
                            d.state = State::Failed;
                            d.reason = Some(reason);
                            Event::Failed
                        }
                        retry::Next::RateLimited { at, wait } => {
                            d.state = State::Pending;
                            d.due = at;
                            d.reason = Some(reason);
                            if let Some(gate) = self.gates.get(&d.account) {
                                gate.pause_until(d.due);
                            }
                            let mut paused_accounts = vec![d.account.clone()];
                            if e.shared_limit {
                                paused_accounts.extend(self.pause_limit_scope(&d.account, d.due));
                            }
                            // Kept in the store, so `status` shows when the account's deliveries can go.
                            for account in paused_accounts {
                                changes.meta.push((pause_key(&account), d.due.to_string().into_bytes()));
                            }
                            paused = true;
                            if let Some(alerter) = &self.alerter
                                && wait > alerter.pause_threshold()
                            {
                                let until = from_millis(d.due);
                                alerter.raise(&d, Alert::AccountPaused { until, seconds: wait.as_secs() });
                            }
                            tracing::warn!(account = %d.account, platform = %d.platform, until = %from_millis(d.due).to_rfc3339(),
                                "rate limited; account paused");
                            Event::RetryScheduled
                        }
                        retry::Next::Backoff { at } => {
                            self.account_backoff(&d.account, now);
                            d.state = State::Pending;
                            d.due = at;
                            d.reason = Some(reason);
                            Event::RetryScheduled
                        }
                    };
                    if d.state == State::Failed
                        && let Some(alerter) = &self.alerter
                    {
                        alerter.raise(&d, Alert::DeliveryFailed { reason: d.reason.clone().unwrap_or_default() });
                    }
                    if d.state == State::Failed {
                        tracing::error!(delivery = %d.id, post = %d.post_id, account = %d.account, platform = %d.platform,
                            reason = d.reason.as_deref().unwrap_or(""), "delivery failed");
                    } else {
                        tracing::warn!(delivery = %d.id, post = %d.post_id, account = %d.account, platform = %d.platform,
                            attempt = d.attempt, reason = d.reason.as_deref().unwrap_or(""), "attempt failed; will retry");
                    }
                    (event, e.answer)
                }
            };
            let kind = match (event, d.state) {
                (Event::Delivered, _) => outcome::DELIVERED,
                (Event::Failed, _) => outcome::FAILED,
                _ if d.reason.is_some() && paused => outcome::RATE_LIMITED,
                _ => outcome::RETRY,
            };
            self.metrics.finished(
                &d.account,
                d.platform.name(),
                kind,
                f.latency,
                now.timestamp_millis() as f64 / 1000.0,
            );
            let mut record = AuditRecord::of(&d, event, now);
            record.answer = answer;
            record.latency_ms = latency;
            changes.deliveries.push((d, record));
        }
        self.apply(changes)?;
        self.unflushed = true;
        Ok(())
    }

    /// A transient failure: the account as a whole waits the backoff of its
    /// failures in a row, so a platform that is down sees a few requests per
    /// backoff period, not one per pending delivery.
    fn account_backoff(&mut self, account: &str, now: DateTime<Utc>) {
        let unit = self.rng.f64();
        let config = Arc::clone(&self.config);
        if let Some(gate) = self.gates.get(account) {
            gate.consecutive_failures += 1;
            let wait = backoff::delay(&config.retry, gate.consecutive_failures, unit);
            gate.pause_until(to_millis(now) + wait.as_millis() as Millis);
            if gate.consecutive_failures == 3 {
                tracing::warn!(account, failures = 3, "the platform keeps failing; the account backs off as a whole");
            }
        }
    }

    /// A rate limit of what `account` shares with others (an AppID's quota,
    /// the host's IP): pause every account of the same limit scope until
    /// `until`, so they do not each spend a request to learn it.
    fn pause_limit_scope(&mut self, account: &str, until: Millis) -> Vec<String> {
        let config = Arc::clone(&self.config);
        let mut paused = Vec::new();
        let Some(scope) = config.accounts.get(account).and_then(|a| a.adapter.limit_scope()) else { return paused };
        for (id, other) in &config.accounts {
            if id != account
                && other.adapter.limit_scope().as_deref() == Some(scope.as_str())
                && let Some(gate) = self.gates.get(id)
            {
                gate.pause_until(until);
                paused.push(id.clone());
                tracing::warn!(account = %id, scope = %scope, until = %from_millis(until).to_rfc3339(),
                    "rate limit shared with another account; account paused");
            }
        }
        paused
    }

    /// When the loop should look again: the next timer, the next due
    /// delivery, or the end of a gate's wait, whichever is first.
    pub fn next_wake(&mut self, now: DateTime<Utc>) -> Result<Option<Millis>> {
        let now_ms = to_millis(now);
        let mut wake = [self.store.next_timer()?, self.store.next_due_after(now_ms)?].into_iter().flatten().min();
        for account in self.ready.keys() {
            if let Some(gate) = self.gates.get(account)
                && let Err(Blocked::Until(t)) = gate.check(now_ms)
            {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        }
        Ok(wake)
    }

    /// Wait for one attempt to finish (with any others already done) and record them.
    async fn collect(&mut self) -> Result<()> {
        let Some(first) = self.running.join_next_with_id().await else { return Ok(()) };
        let mut batch = vec![first];
        while let Some(more) = self.running.try_join_next_with_id() {
            batch.push(more);
        }
        let mut finished = Vec::with_capacity(batch.len());
        for result in batch {
            match result {
                Ok((id, f)) => {
                    self.running_ids.remove(&id);
                    finished.push(f);
                }
                Err(e) => {
                    // The attempt's task panicked: retry the delivery like a transient error.
                    if let Some(delivery) = self.running_ids.remove(&e.id()) {
                        finished.push(Finished {
                            delivery,
                            result: Err(herald_adapters::DeliveryError::transient(
                                PlatformAnswer::default(),
                                "internal error during the attempt",
                            )
                            .maybe_sent()),
                            latency: Duration::ZERO,
                            refreshed: false,
                            found: false,
                            looked_up: false,
                        });
                    }
                }
            }
        }
        off_the_workers(|| self.record_outcomes(finished, crate::clock::now()))
    }

    /// The loop: runs until [`Control::Shutdown`] (or the control channel
    /// closes), then lets in-flight deliveries finish up to the deadline.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) -> Result<()> {
        match self.serve(&mut control).await {
            Ok(()) => self.drain().await,
            Err(e) if e.loses_leadership() => self.step_down(e).await,
            Err(e) => Err(e),
        }
    }

    /// The loop itself: returns at [`Control::Shutdown`], or with the error that stopped it.
    async fn serve(&mut self, control: &mut mpsc::Receiver<Control>) -> Result<()> {
        let max_sleep = self.notifier.watchdog_interval().map_or(MAX_SLEEP, |w| w.min(MAX_SLEEP));
        loop {
            let now = crate::clock::now();
            // A round reads and writes the store and waits for its fsync:
            // off the async workers, so they keep serving the control
            // socket and the requests in flight meanwhile.
            let wake = off_the_workers(|| -> Result<Option<Millis>> {
                self.tick(now)?;
                // Pinged from the loop itself: a stuck scheduler gets restarted by systemd.
                self.notifier.watchdog();
                self.report_status(now)?;
                self.warn_of_expiring_credentials(now);
                // The round ended with a flush: what the alerts raised so far report is durable.
                if let Some(alerter) = &self.alerter {
                    alerter.release();
                }
                self.next_wake(now)
            })?;
            // From the clock as it is now, not as it was when the tick
            // started: a tick that created a campaign's deliveries took
            // time, and the next due instant has not moved.
            let sleep = match wake {
                Some(t) => Duration::from_millis((t - to_millis(crate::clock::now())).max(0) as u64).min(max_sleep),
                None => max_sleep,
            };
            tokio::select! {
                result = self.collect(), if !self.running.is_empty() => result?,
                _ = tokio::time::sleep(sleep) => {}
                message = control.recv() => match message {
                    Some(Control::Shutdown) | None => return Ok(()),
                    Some(Control::StepDown(why)) => return Err(crate::store::StoreError::NotLeader(why)),
                    // Each writes or reads the store (a reload reconciles a
                    // whole config): off the async workers too.
                    Some(message) => off_the_workers(|| self.obey(message))?,
                },
            }
        }
    }

    /// The approval hash of each post that needs approval, and its stored approval.
    fn read_approvals(&mut self) -> Result<()> {
        self.approval_hashes.clear();
        self.approvals.clear();
        let config = Arc::clone(&self.config);
        for post in config.posts.values().filter(|p| p.requires_approval(&config.daemon)) {
            self.approval_hashes.insert(post.id.clone(), post.approval_hash());
            if let Some(approval) = crate::approvals::approval(self.store.as_ref(), &post.id)? {
                self.approvals.insert(post.id.clone(), approval);
            }
        }
        Ok(())
    }

    /// Read the pauses again after `herald pause` or `resume`: what they no
    /// longer cover is found again by a rescan of the due index.
    fn pauses_changed(&mut self) -> Result<()> {
        self.pauses = Pauses::load(self.store.as_ref())?;
        self.held.clear();
        self.cursor = None;
        self.last_status = None;
        Ok(())
    }

    /// Carry out one control message other than [`Control::Shutdown`].
    fn obey(&mut self, message: Control) -> Result<()> {
        match message {
            Control::Reload(config, reply) => {
                let result = self.reconcile(config, crate::clock::now());
                let _ = reply.send(result);
            }
            Control::Retry(selection, reply) => {
                let result = retry_cancel::retry(self.store.as_ref(), &selection, crate::clock::now());
                self.cursor = None;
                let _ = reply.send(result);
            }
            Control::Cancel(selection, reply) => {
                let _ = reply.send(retry_cancel::cancel(self.store.as_ref(), &selection, crate::clock::now()));
            }
            Control::Upcoming { until, limit, reply } => {
                let config = Arc::clone(&self.config);
                let _ = reply.send(crate::control::upcoming_window(self.store.as_ref(), Some(&config), until, limit));
            }
            Control::Pause(request, reply) => {
                let config = Arc::clone(&self.config);
                let result = crate::pauses::pause(self.store.as_ref(), &request, Some(&config), crate::clock::now());
                self.pauses_changed()?;
                let _ = reply.send(result);
            }
            Control::Resume(request, reply) => {
                let config = Arc::clone(&self.config);
                let result = crate::pauses::resume(self.store.as_ref(), &request, Some(&config), crate::clock::now());
                self.pauses_changed()?;
                let _ = reply.send(result);
            }
            Control::ApproversGroup(reply) => {
                let _ = reply.send(self.config.daemon.approvers_group.clone());
            }
            Control::RunningConfig(reply) => {
                let _ = reply.send(Arc::clone(&self.config));
            }
            Control::Approve(request, reply) => {
                let config = Arc::clone(&self.config);
                let result = crate::approvals::approve(self.store.as_ref(), &config, &request, crate::clock::now());
                let result = result.map(|(view, approval)| {
                    self.approvals.insert(view.post.clone(), approval);
                    // What it held is found again by a rescan of the due index.
                    self.cursor = None;
                    view
                });
                let _ = reply.send(result);
            }
            Control::Recall(order, reply) => {
                let now = crate::clock::now();
                let _ = reply.send(crate::recall::prepare(self.store.as_ref(), &self.config, &order, now));
            }
            Control::Shutdown | Control::StepDown(_) => {}
        }
        Ok(())
    }

    /// Accounts whose credentials expire within `[alerts] credential_warning`
    /// (Weibo tokens have a fixed lifetime) raise an alert once a day, and the
    /// log says so; the audit log gets a `credentials_expiring` record.
    fn warn_of_expiring_credentials(&mut self, now: DateTime<Utc>) {
        const DAY: Duration = Duration::from_secs(86_400);
        let Some(alerter) = self.alerter.clone() else { return };
        let horizon = chrono::Duration::from_std(alerter.credential_warning()).unwrap_or(chrono::Duration::MAX);
        for account in self.config.accounts.values() {
            let Some(expires_at) = account.settings.credentials_expire_at() else { continue };
            if expires_at - now > horizon || self.expiry_warned.get(&account.id).is_some_and(|t| t.elapsed() < DAY) {
                continue;
            }
            self.expiry_warned.insert(account.id.clone(), std::time::Instant::now());
            let days_left = (expires_at - now).num_days();
            tracing::warn!(account = %account.id, platform = %account.platform, expires_at = %expires_at.to_rfc3339(),
                days_left, "credentials expire soon; re-authorize the account");
            alerter.raise_for_account(
                &account.id,
                account.platform,
                Event::CredentialsExpiring,
                Alert::CredentialsExpiring { expires_at, days_left },
            );
        }
    }

    /// A line for `systemctl status`, refreshed at most once a second.
    fn report_status(&mut self, now: DateTime<Utc>) -> Result<()> {
        if self.last_status.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        self.last_status = Some(std::time::Instant::now());
        let line = status_line(self.store.as_ref(), self.config.daemon.time_zone, self.running.len(), now)?;
        match &self.role {
            Some(role) => self.notifier.status(&format!("{}; {line}", role.view().describe())),
            None => self.notifier.status(&line),
        }
        Ok(())
    }

    /// The lease is lost: start nothing more; let the requests on the wire
    /// finish up to the shutdown deadline and try to record their outcomes
    /// (refused by the fence once another daemon leads: that daemon
    /// recovers them, same idempotency key, look-up before re-send). Never
    /// a crash: returns `why`, and the daemon goes back to standby.
    async fn step_down(mut self, why: crate::store::StoreError) -> Result<()> {
        tracing::error!(error = %why, in_flight = self.running.len(),
            "stepping down: no new deliveries; letting the requests on the wire finish");
        if let Some(role) = &self.role {
            role.stepped_down();
        }
        let deadline = tokio::time::Instant::now() + self.config.daemon.shutdown_deadline;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.collect()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e,
                    "an outcome was not recorded; the leader recovers that delivery with the same idempotency key"),
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.running.len(),
                        "deadline reached; abandoning the requests still running"
                    );
                    self.running.abort_all();
                    break;
                }
            }
        }
        if let Err(e) = off_the_workers(|| self.store.flush()) {
            tracing::warn!(error = %e, "flush after stepping down failed");
        }
        Err(why)
    }

    /// Stop starting deliveries; wait for those in flight up to the deadline.
    /// Any still unfinished stay `in_flight` in the store and are recovered
    /// on the next start.
    async fn drain(mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.daemon.shutdown_deadline;
        tracing::info!(in_flight = self.running.len(), "stopping: waiting for deliveries in flight");
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.collect()).await {
                Ok(result) => result?,
                Err(_) => {
                    tracing::warn!(
                        in_flight = self.running.len(),
                        "shutdown deadline reached; unfinished deliveries will be recovered at the next start"
                    );
                    self.running.abort_all();
                    break;
                }
            }
        }
        // Alerts raised up to now (the last failures included) go out
        // within the deadline, once what they report is durable.
        off_the_workers(|| self.store.flush())?;
        if let Some(alerter) = &self.alerter {
            alerter.release();
            alerter.finish(deadline).await;
        }
        off_the_workers(|| self.store.flush())
    }
}

/// A reason for people: the adapter's words plus the platform's code.
/// The `meta` key holding until when (milliseconds) a rate limit paused
/// `account`; read by `status` so "next due" says when a delivery can go.
pub fn pause_key(account: &str) -> String {
    format!("paused/{account}")
}

fn describe(e: &herald_adapters::DeliveryError) -> String {
    let mut text = e.reason.clone();
    let mut extra = Vec::new();
    if let Some(status) = e.answer.status {
        extra.push(format!("HTTP {status}"));
    }
    if let Some(code) = &e.answer.code {
        extra.push(format!("code {code}"));
    }
    if !extra.is_empty() {
        text.push_str(&format!(" ({})", extra.join(", ")));
    }
    text
}

/// "120 pending (2 retrying), 5000 planned, 3 in flight, 4100 delivered, 1 failed; next 2026-12-01 09:00 CST"
pub fn status_line(store: &dyn Store, tz: chrono_tz::Tz, in_flight: usize, now: DateTime<Utc>) -> Result<String> {
    let counts = store.counts()?;
    let count = |s: State| counts.get(&s).copied().unwrap_or(0);
    let due = store.due(None, i64::MAX, 1)?.first().map(|k| k.due);
    let planned = store.planned(1)?.first().map(|(_, plan)| plan.occurrence);
    let next = match due.into_iter().chain(planned).min() {
        Some(t) if t <= to_millis(now) => "next: due now".to_string(),
        Some(t) => {
            let local = from_millis(t).with_timezone(&tz);
            format!("next {}", local.format("%Y-%m-%d %H:%M %Z"))
        }
        None => "nothing scheduled".to_string(),
    };
    let paused = Pauses::load(store)?.headline().map(|h| format!("{h}; ")).unwrap_or_default();
    Ok(format!(
        "{paused}{} pending ({} retrying), {} planned, {in_flight} in flight, {} delivered, {} failed; {next}",
        count(State::Pending),
        store.retrying()?,
        store.planned_deliveries()?,
        count(State::Delivered),
        count(State::Failed),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditQuery, SledStore};
    use crate::testkit::{WUHAN_WEBHOOK, config, utc};

    /// Post `soon` is due at 01:00 UTC (its deliveries are created an hour
    /// before, and its timer is at 01:00); post `next`, due at 02:00, has
    /// its timer at 01:00 too. Nothing is ever sent: attempts are spawned on
    /// a runtime that is never driven.
    fn setup(misfire: &str) -> (tempfile::TempDir, Arc<SledStore>, Scheduler) {
        let dir = tempfile::tempdir().unwrap();
        let now = utc("2026-11-30T02:00:00Z");
        let text = format!(
            r#"{WUHAN_WEBHOOK}
[[posts]]
id = "soon"
body = "stay safe"
targets = ["wuhan"]
at = 2026-12-01T09:00:00+08:00
misfire = "{misfire}"

[[posts]]
id = "next"
body = "stay safe again"
targets = ["wuhan"]
at = 2026-12-01T10:00:00+08:00
"#
        );
        let cfg = Arc::new(config(dir.path(), &text, now));
        let store = Arc::new(SledStore::open(&dir.path().join("state"), 8).unwrap());
        let mut scheduler = Scheduler::new(Arc::clone(&store) as Arc<dyn Store>, Arc::clone(&cfg));
        scheduler.recover(now).unwrap();
        scheduler.reconcile(cfg, now).unwrap();
        // The timer an hour before `soon` creates its delivery.
        let tick = scheduler.tick(utc("2026-12-01T00:00:00.100Z")).unwrap();
        assert_eq!((tick.scheduled, tick.dispatched), (1, 0));
        (dir, store, scheduler)
    }

    fn records(store: &SledStore, post: &str, event: Event) -> Vec<AuditRecord> {
        let query = AuditQuery { post: Some(post.into()), events: vec![event], ..Default::default() };
        store.audit(&query).unwrap()
    }

    #[test]
    fn a_due_delivery_starts_before_the_timers_of_its_round_are_processed() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let (_dir, store, mut scheduler) = setup("latest");
        let tick = scheduler.tick(utc("2026-12-01T01:00:00.100Z")).unwrap();
        assert_eq!((tick.timers_fired, tick.scheduled, tick.dispatched), (2, 1, 1));
        let attempt = records(&store, "soon", Event::Attempt);
        let scheduled = records(&store, "next", Event::Scheduled);
        assert_eq!((attempt.len(), scheduled.len()), (1, 1));
        assert!(
            attempt[0].seq < scheduled[0].seq,
            "the due delivery should be in flight before the timers create anything: {attempt:?} {scheduled:?}"
        );
    }

    #[test]
    fn a_delivery_missed_by_more_than_on_time_waits_for_its_timer_and_its_misfire_policy() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let (_dir, store, mut scheduler) = setup("skip");
        // The round comes five minutes late (the host was suspended).
        let tick = scheduler.tick(utc("2026-12-01T01:05:00Z")).unwrap();
        assert_eq!(tick.dispatched, 0);
        assert!(records(&store, "soon", Event::Attempt).is_empty(), "a missed delivery was sent");
        let soon = store.deliveries_of_post("soon").unwrap();
        assert_eq!(soon.len(), 1);
        assert_eq!(soon[0].state, State::Skipped, "{:?}", soon[0]);
    }
}
