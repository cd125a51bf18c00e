//! `herald recall`: take a post's published copies down from every platform
//! that allows it, and stop what has not gone out yet.
//!
//! Three steps. [`prepare`] (the store's writer: the scheduler on a running
//! daemon, the CLI on a stopped one) cancels the post's pending and planned
//! deliveries that the order names, and lists the delivered ones with their
//! adapters. [`execute`] asks each platform to delete its copy, all targets
//! at once, retrying transient errors and rate limits with the `[retry]`
//! policy's backoff within [`DEADLINE`] (the CLI waits for the answer), and
//! refreshing expired credentials once. [`record`] writes one audit record
//! per target (`recalled`, or `recall_failed` with the platform's scrubbed
//! answer), attributed to the operator with their reason, and builds the
//! report the CLI prints. A delivered delivery stays `delivered`: the
//! records say what became of its copy.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_adapters::{Adapter, DeliveryError, ErrorClass, Platform, PlatformAnswer, Recalled};
use serde::{Deserialize, Serialize};

use crate::config::{Config, RetryPolicy};
use crate::model::{Actor, AuditRecord, Delivery, Event, State, from_millis, to_millis};
use crate::retry_cancel::{self, OperationError, Selection};
use crate::scrub::Scrubber;
use crate::store::{Changes, Store, StoreError, wildcard_match};

/// How long one recall keeps retrying in all: the CLI waits for the answer
/// (its request times out after 60 s). A target still failing then is
/// reported failed; running `herald recall` again retries it.
pub const DEADLINE: Duration = Duration::from_secs(45);
/// The longest single wait between two tries of one target.
const MAX_WAIT: Duration = Duration::from_secs(15);

/// What `herald recall` asks (`POST /v1/recall`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecallOrder {
    pub post: String,
    /// Only this occurrence (else every occurrence of the post).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<DateTime<Utc>>,
    /// Only these accounts (`*` matches any characters); else every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    /// Why: required, kept in every record.
    pub reason: String,
    /// Who asks: never taken from the request (see [`Selection::actor`]).
    #[serde(skip)]
    pub actor: Option<Actor>,
}

impl RecallOrder {
    fn names(&self, d: &Delivery) -> bool {
        self.occurrence.is_none_or(|o| to_millis(o) == d.occurrence) && self.names_account(&d.account)
    }

    fn names_account(&self, account: &str) -> bool {
        self.accounts.is_empty() || self.accounts.iter().any(|a| wildcard_match(a, account))
    }

    /// How the order is named in reasons: "`herald recall`: <its reason>".
    fn because(&self) -> String {
        format!("`herald recall`: {}", self.reason.trim())
    }
}

/// What became of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The platform deleted the copy (or says it is gone).
    TakenDown,
    /// It had not gone out: its delivery is cancelled.
    Cancelled,
    /// The platform offers no delete here: a person must act (`detail` says how).
    NotPossible,
    /// The delete failed (`detail` says why); run `herald recall` again.
    Failed,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::TakenDown => "taken down",
            Verdict::Cancelled => "cancelled (not sent)",
            Verdict::NotPossible => "NOT POSSIBLE: do it by hand",
            Verdict::Failed => "FAILED",
        }
    }
}

/// One target's line in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetOutcome {
    pub account: String,
    pub platform: Platform,
    pub delivery: String,
    pub occurrence: DateTime<Utc>,
    pub verdict: Verdict,
    /// What the platform said, what to do by hand, or why it failed.
    pub detail: String,
    /// The copy's public URL, when herald recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Delete calls made (0 for cancelled deliveries).
    pub tries: u32,
}

impl TargetOutcome {
    /// `d`'s line, after `tries` delete calls.
    fn of(d: &Delivery, verdict: Verdict, detail: String, tries: u32) -> TargetOutcome {
        TargetOutcome {
            account: d.account.clone(),
            platform: d.platform,
            delivery: d.id.to_string(),
            occurrence: from_millis(d.occurrence),
            verdict,
            detail,
            url: d.url.clone(),
            tries,
        }
    }
}

/// What `herald recall` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecallReport {
    pub targets: Vec<TargetOutcome>,
}

impl RecallReport {
    /// Every target is taken down or was never sent.
    pub fn complete(&self) -> bool {
        self.targets.iter().all(|t| matches!(t.verdict, Verdict::TakenDown | Verdict::Cancelled))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    #[error("say why with --reason TEXT: it is kept in every record of the recall")]
    NoReason,
    #[error("post `{0}` has no delivery{1} in the store: nothing to recall or cancel")]
    NothingToRecall(String, String),
    #[error(transparent)]
    Operation(#[from] OperationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One delivered copy to take down.
pub struct Target {
    delivery: Delivery,
    adapter: Arc<dyn Adapter>,
    scrubber: Scrubber,
}

/// What [`prepare`] found: copies to take down, and targets already settled.
pub struct Plan {
    pub targets: Vec<Target>,
    pub settled: Vec<TargetOutcome>,
    /// Audit records of settled targets that are not cancellations (an
    /// account gone from the config): written by [`record`].
    notes: Vec<AuditRecord>,
    pub policy: RetryPolicy,
}

impl Plan {
    /// Add a delivered copy to take down with `config`'s account; settled
    /// as not possible (with a note) when the account is gone from it.
    fn take_down(&mut self, d: Delivery, config: &Config, order: &RecallOrder, now: DateTime<Utc>) {
        match config.accounts.get(&d.account) {
            Some(account) => self.targets.push(Target {
                adapter: Arc::clone(&account.adapter),
                scrubber: Scrubber::for_account(account),
                delivery: d,
            }),
            None => {
                let place = d.url.as_deref().map(|url| format!(" at {url}")).unwrap_or_default();
                let detail = format!(
                    "account `{}` is no longer in the config, so herald cannot reach it; delete the copy{place} by \
                     hand",
                    d.account
                );
                let mut record = AuditRecord::of(&d, Event::RecallFailed, now).by(order.actor.clone());
                record.reason = Some(format!("{detail} ({})", order.because()));
                self.notes.push(record);
                self.settled.push(TargetOutcome::of(&d, Verdict::NotPossible, detail, 0));
            }
        }
    }

    /// The plan as the leader answers a forwarded recall: the copies to
    /// take down by delivery id (adapters are the forwarding daemon's own).
    pub fn wire(&self) -> PlanWire {
        PlanWire {
            targets: self.targets.iter().map(|t| t.delivery.id.to_string()).collect(),
            settled: self.settled.clone(),
            notes: self.notes.clone(),
        }
    }

    /// The plan a leader answered (`wire`), with this daemon's accounts:
    /// each copy is read again from the store (delivered, as the leader
    /// found it) and taken down with `config`'s adapter.
    pub fn from_wire(
        store: &dyn Store,
        config: &Config,
        order: &RecallOrder,
        wire: PlanWire,
        now: DateTime<Utc>,
    ) -> Result<Plan, RecallError> {
        let mut plan =
            Plan { targets: Vec::new(), settled: wire.settled, notes: wire.notes, policy: config.retry.clone() };
        for id in wire.targets {
            let parsed = crate::model::DeliveryId::parse(&id).ok_or_else(|| OperationError::BadId(id.clone()))?;
            let d = store.delivery(parsed)?.ok_or_else(|| OperationError::NoSuchDelivery(id.clone()))?;
            plan.take_down(d, config, order, now);
        }
        Ok(plan)
    }
}

/// A [`Plan`] between daemons (`crate::forward`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanWire {
    pub targets: Vec<String>,
    pub settled: Vec<TargetOutcome>,
    pub notes: Vec<AuditRecord>,
}

/// Cancel what the order names that has not gone out, and list the copies
/// to take down. Runs as the store's writer.
pub fn prepare(
    store: &dyn Store,
    config: &Config,
    order: &RecallOrder,
    now: DateTime<Utc>,
) -> Result<Plan, RecallError> {
    if order.reason.trim().is_empty() {
        return Err(RecallError::NoReason);
    }
    let because = order.because();
    let mut plan = Plan { targets: Vec::new(), settled: Vec::new(), notes: Vec::new(), policy: config.retry.clone() };
    let outcome = |d: &Delivery, verdict, detail: String| TargetOutcome::of(d, verdict, detail, 0);

    // Planned occurrences (no delivery yet): created cancelled.
    if let Some(planned) = store.post(&order.post)?.and_then(|r| r.planned) {
        for (id, account, platform) in planned.delivery_ids(&order.post) {
            if order.occurrence.is_some_and(|o| to_millis(o) != planned.occurrence) || !order.names_account(account) {
                continue;
            }
            let selection = Selection {
                delivery: Some(id.to_string()),
                post: None,
                reason: Some(because.clone()),
                actor: order.actor.clone(),
            };
            retry_cancel::cancel(store, &selection, now)?;
            let mut d = Delivery::new(&order.post, planned.occurrence, account, platform, to_millis(now));
            d.state = State::Cancelled;
            plan.settled.push(outcome(&d, Verdict::Cancelled, "planned, not created yet: cancelled".into()));
        }
    }

    let mut cancel = Changes::default();
    for mut d in store.deliveries_of_post(&order.post)?.into_iter().filter(|d| order.names(d)) {
        match d.state {
            State::Pending => {
                d.state = State::Cancelled;
                d.reason = Some(format!("cancelled by {because}"));
                d.updated = to_millis(now);
                plan.settled.push(outcome(&d, Verdict::Cancelled, "pending, not sent: cancelled".into()));
                let record = AuditRecord::of(&d, Event::Cancelled, now).by(order.actor.clone());
                cancel.deliveries.push((d, record));
            }
            State::InFlight => {
                // Its outcome is not known yet: a delete now could come
                // before the post, so the operator runs the recall again.
                let detail = "being sent as the recall ran; run `herald recall` again once `herald log` shows it \
                              delivered or failed"
                    .to_string();
                let mut record = AuditRecord::of(&d, Event::RecallFailed, now).by(order.actor.clone());
                record.reason = Some(format!("{detail} ({because})"));
                plan.notes.push(record);
                plan.settled.push(outcome(&d, Verdict::Failed, detail));
            }
            State::Delivered => plan.take_down(d, config, order, now),
            // Nothing went out: nothing to take down.
            State::Failed | State::Cancelled | State::Skipped => {}
        }
    }
    if !cancel.deliveries.is_empty() {
        store.apply(cancel)?;
        store.flush()?;
    }
    if plan.targets.is_empty() && plan.settled.is_empty() {
        let which = match (&order.occurrence, order.accounts.is_empty()) {
            (Some(o), true) => format!(" at {}", o.to_rfc3339()),
            (Some(o), false) => format!(" at {} to {}", o.to_rfc3339(), order.accounts.join(", ")),
            (None, false) => format!(" to {}", order.accounts.join(", ")),
            (None, true) => String::new(),
        };
        return Err(RecallError::NothingToRecall(
            order.post.clone(),
            format!("{which} that was sent or is to be sent"),
        ));
    }
    Ok(plan)
}

/// How one target's delete ended.
pub struct Finished {
    delivery: Delivery,
    result: Result<Recalled, DeliveryError>,
    tries: u32,
    gave_up: Option<String>,
}

/// Ask every platform to delete its copy, at once; each target retried
/// within [`DEADLINE`].
pub async fn execute(plan: Plan) -> (Vec<Finished>, Vec<TargetOutcome>, Vec<AuditRecord>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut running = tokio::task::JoinSet::new();
    let mut started = std::collections::HashMap::new();
    for target in plan.targets {
        let delivery = target.delivery.clone();
        let task = running.spawn(take_down(target, plan.policy.clone(), deadline));
        started.insert(task.id(), delivery);
    }
    let mut finished = Vec::new();
    while let Some(done) = running.join_next_with_id().await {
        match done {
            Ok((_, done)) => finished.push(done),
            // A task that panicked still gets its line and record: a
            // recall is never silently partial.
            Err(error) => {
                if let Some(delivery) = started.remove(&error.id()) {
                    let reason = format!("the recall of this copy stopped unexpectedly ({error})");
                    let result = Err(DeliveryError::transient(PlatformAnswer::default(), reason));
                    finished.push(Finished { delivery, result, tries: 0, gave_up: None });
                }
            }
        }
    }
    (finished, plan.settled, plan.notes)
}

async fn take_down(target: Target, policy: RetryPolicy, deadline: tokio::time::Instant) -> Finished {
    let Target { delivery, adapter, scrubber } = target;
    let delivery_id = delivery.id.to_string();
    let mut refreshed = false;
    let mut rng = fastrand::Rng::new();
    let mut tries = 0;
    loop {
        tries += 1;
        let request = herald_adapters::RecallRequest {
            delivery_id: &delivery_id,
            post_id: &delivery.post_id,
            account_id: &delivery.account,
            remote_id: delivery.remote_id.as_deref(),
            url: delivery.url.as_deref(),
        };
        let result = match tokio::time::timeout_at(deadline, adapter.recall(request)).await {
            Ok(result) => result,
            Err(_) => {
                Err(DeliveryError::transient(PlatformAnswer::default(), "no answer before the recall's deadline"))
            }
        };
        let result = scrub(&scrubber, result);
        let error = match result {
            Ok(recalled) => return Finished { delivery, result: Ok(recalled), tries, gave_up: None },
            Err(error) => error,
        };
        tracing::warn!(delivery = %delivery_id, account = %delivery.account, tries, error = %error.reason,
            "recall attempt failed");
        let wait = match &error.class {
            ErrorClass::Permanent => None,
            ErrorClass::CredentialsExpired if !refreshed => {
                refreshed = true;
                match adapter.refresh_credentials().await {
                    Ok(()) => Some(Duration::ZERO),
                    Err(refresh) => {
                        let refresh = scrub(&scrubber, Err(refresh)).err().map(|e| e.reason).unwrap_or_default();
                        let why = format!("{}; refreshing the credentials failed: {refresh}", error.reason);
                        return Finished { delivery, result: Err(error), tries, gave_up: Some(why) };
                    }
                }
            }
            ErrorClass::CredentialsExpired => None,
            ErrorClass::Transient => Some(crate::scheduler::backoff::delay(&policy, tries, rng.f64())),
            ErrorClass::RateLimited { retry_after: Some(wait) } if *wait > MAX_WAIT => {
                // Asking again sooner would only be refused again.
                let why = format!(
                    "{}; the platform asks to wait {} s: run `herald recall` again after that",
                    error.reason,
                    wait.as_secs()
                );
                return Finished { delivery, result: Err(error), tries, gave_up: Some(why) };
            }
            ErrorClass::RateLimited { retry_after } => {
                Some(retry_after.unwrap_or_else(|| crate::scheduler::backoff::delay(&policy, tries, rng.f64())))
            }
        };
        let Some(wait) = wait else {
            return Finished { delivery, result: Err(error), tries, gave_up: None };
        };
        // The `[retry]` backoff (30 s at first by default) is shortened: the
        // operator is waiting, and the whole recall has `DEADLINE`.
        let wait = wait.min(MAX_WAIT);
        if tries >= policy.max_attempts.max(1) {
            let why = format!("{}; gave up after {tries} tries", error.reason);
            return Finished { delivery, result: Err(error), tries, gave_up: Some(why) };
        }
        if tokio::time::Instant::now() + wait >= deadline {
            let why = format!(
                "{}; gave up after {tries} tries within the recall's {} s: run `herald recall` again",
                error.reason,
                DEADLINE.as_secs()
            );
            return Finished { delivery, result: Err(error), tries, gave_up: Some(why) };
        }
        tokio::time::sleep(wait).await;
    }
}

fn scrub(scrubber: &Scrubber, result: Result<Recalled, DeliveryError>) -> Result<Recalled, DeliveryError> {
    match result {
        Ok(Recalled::TakenDown { answer, note }) => {
            Ok(Recalled::TakenDown { answer: scrubber.answer(answer), note: note.map(|n| scrubber.text(&n)) })
        }
        Ok(Recalled::NotPossible { what_to_do, answer }) => {
            Ok(Recalled::NotPossible { what_to_do: scrubber.text(&what_to_do), answer: scrubber.answer(answer) })
        }
        Err(mut error) => {
            error.answer = scrubber.answer(error.answer);
            error.reason = scrubber.text(&error.reason);
            Err(error)
        }
    }
}

/// Write one audit record per target, durably, and build the report.
pub fn record(
    store: &dyn Store,
    (finished, settled, notes): (Vec<Finished>, Vec<TargetOutcome>, Vec<AuditRecord>),
    order: &RecallOrder,
    now: DateTime<Utc>,
) -> Result<RecallReport, StoreError> {
    let because = order.because();
    let mut report = RecallReport { targets: settled };
    let mut changes = Changes { notes, ..Changes::default() };
    for f in finished {
        let (event, verdict, detail, answer) = match f.result {
            Ok(Recalled::TakenDown { answer, note }) => {
                let detail = note.unwrap_or_else(|| "deleted".into());
                (Event::Recalled, Verdict::TakenDown, detail, answer)
            }
            Ok(Recalled::NotPossible { what_to_do, answer }) => {
                (Event::RecallFailed, Verdict::NotPossible, what_to_do, answer)
            }
            Err(error) => (Event::RecallFailed, Verdict::Failed, f.gave_up.unwrap_or(error.reason), error.answer),
        };
        let mut record = AuditRecord::of(&f.delivery, event, now).by(order.actor.clone());
        record.answer = answer;
        record.reason = Some(match verdict {
            Verdict::TakenDown => format!("taken down by {because} ({detail})"),
            Verdict::NotPossible => format!("not possible on this platform: {detail} ({because})"),
            _ => format!("{detail} ({because})"),
        });
        tracing::info!(delivery = %f.delivery.id, post = %f.delivery.post_id, account = %f.delivery.account,
            verdict = verdict.label(), tries = f.tries, "recall");
        changes.notes.push(record);
        report.targets.push(TargetOutcome::of(&f.delivery, verdict, detail, f.tries));
    }
    if !changes.notes.is_empty() {
        store.apply(changes)?;
        store.flush()?;
    }
    report.targets.sort_by(|a, b| (a.occurrence, &a.account).cmp(&(b.occurrence, &b.account)));
    Ok(report)
}

/// The whole recall as one call, for the CLI on a stopped daemon. Only the
/// network work runs on `runtime`: the store is used outside it (the
/// PostgreSQL client blocks on a runtime of its own, which cannot run
/// inside another).
pub fn run(
    store: &dyn Store,
    config: &Config,
    order: &RecallOrder,
    runtime: &tokio::runtime::Runtime,
) -> Result<RecallReport, RecallError> {
    let plan = prepare(store, config, order, crate::clock::now())?;
    let done = runtime.block_on(execute(plan));
    Ok(record(store, done, order, crate::clock::now())?)
}
