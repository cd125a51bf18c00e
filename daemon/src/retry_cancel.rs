//! What staff do to deliveries by hand: retry failed ones, cancel pending
//! ones. The same code runs whether the CLI opened the store itself or the
//! running daemon does it on the CLI's behalf through the control socket.

use chrono::{DateTime, Utc};
use herald_adapters::Platform;

use crate::model::{Actor, AuditRecord, Delivery, DeliveryId, Event, State, to_millis};
use crate::store::{Changes, Planned, Store, StoreError};

/// Which deliveries an operation applies to, who asks, and why.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub delivery: Option<String>,
    pub post: Option<String>,
    /// The operator's `--reason`, kept in each audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asks: never taken from the request, set by whoever knows (the
    /// control socket from the peer's credentials, the CLI from its own user).
    #[serde(skip)]
    pub actor: Option<Actor>,
}

impl Selection {
    /// What the records say: the operation, and the operator's reason if given.
    fn because(&self, what: &str) -> String {
        match self.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            Some(reason) => format!("{what}: {reason}"),
            None => what.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("name a delivery id, or --post POST")]
    NothingSelected,
    #[error("`{0}` is not a delivery id (32 hexadecimal characters, from `herald status` or `herald log`)")]
    BadId(String),
    #[error("no delivery {0}")]
    NoSuchDelivery(String),
    #[error("delivery {id} is {state}; only {wanted} deliveries qualify")]
    WrongState { id: String, state: State, wanted: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn select(store: &dyn Store, selection: &Selection, states: &[State]) -> Result<Vec<Delivery>, OperationError> {
    match (&selection.delivery, &selection.post) {
        (Some(id), _) => {
            let parsed = DeliveryId::parse(id).ok_or_else(|| OperationError::BadId(id.clone()))?;
            let d = store.delivery(parsed)?.ok_or_else(|| OperationError::NoSuchDelivery(id.clone()))?;
            if !states.contains(&d.state) {
                let wanted = states.iter().map(|s| s.name()).collect::<Vec<_>>().join(" or ");
                return Err(OperationError::WrongState { id: id.clone(), state: d.state, wanted });
            }
            Ok(vec![d])
        }
        (None, Some(post)) => {
            Ok(store.deliveries_of_post(post)?.into_iter().filter(|d| states.contains(&d.state)).collect())
        }
        (None, None) => Err(OperationError::NothingSelected),
    }
}

/// Change each delivery by `apply`, with its `event` record, and write them
/// after `changes` (what the operation changed besides), in one durable
/// step. Returns how many deliveries changed in all.
fn change(
    store: &dyn Store,
    mut changes: Changes,
    deliveries: Vec<Delivery>,
    (event, actor): (Event, &Option<Actor>),
    now: DateTime<Utc>,
    apply: impl Fn(&mut Delivery),
) -> Result<usize, OperationError> {
    for mut d in deliveries {
        apply(&mut d);
        d.updated = to_millis(now);
        let record = AuditRecord::of(&d, event, now).by(actor.clone());
        changes.deliveries.push((d, record));
    }
    let n = changes.deliveries.len();
    store.apply(changes)?;
    store.flush()?;
    Ok(n)
}

/// Put failed (or skipped) deliveries back to pending, due now; their
/// attempts count from 1 again. Returns how many.
pub fn retry(store: &dyn Store, selection: &Selection, now: DateTime<Utc>) -> Result<usize, OperationError> {
    let chosen = select(store, selection, &[State::Failed, State::Skipped])?;
    let reason = selection.because("requeued by `herald retry`") + "; attempts count from 1 again";
    change(store, Changes::default(), chosen, (Event::Requeued, &selection.actor), now, |d| {
        d.state = State::Pending;
        d.due = to_millis(now);
        d.attempt = 0;
        d.reason = Some(reason.clone());
    })
}

/// Cancel pending deliveries, and planned ones (not created yet: they are
/// created cancelled, so an auditor sees the cancellation and the post's
/// timer passes them by). Returns how many.
pub fn cancel(store: &dyn Store, selection: &Selection, now: DateTime<Utc>) -> Result<usize, OperationError> {
    let planned = cancel_planned(store, selection, now)?;
    let chosen = match select(store, selection, &[State::Pending]) {
        Err(OperationError::NoSuchDelivery(_)) if !planned.deliveries.is_empty() => Vec::new(),
        other => other?,
    };
    let reason = selection.because("cancelled by `herald cancel`");
    change(store, planned, chosen, (Event::Cancelled, &selection.actor), now, |d| {
        d.state = State::Cancelled;
        d.reason = Some(reason.clone());
    })
}

/// The planned (not yet created) deliveries a selection names, created
/// cancelled, with their posts' records updated to plan the rest.
fn cancel_planned(store: &dyn Store, selection: &Selection, now: DateTime<Utc>) -> Result<Changes, OperationError> {
    let mut wanted = None;
    let plans: Vec<(String, Planned)> = match (&selection.delivery, &selection.post) {
        (Some(id), _) => {
            let id = DeliveryId::parse(id).ok_or_else(|| OperationError::BadId(id.clone()))?;
            wanted = Some(id);
            // A planned delivery has no record of its own: look through the
            // plans (a rare, manual operation), unless it was created.
            if store.delivery(id)?.is_some() { Vec::new() } else { store.planned(usize::MAX)? }
        }
        (None, Some(post)) => {
            store.post(post)?.and_then(|r| r.planned).map(|p| (post.clone(), p)).into_iter().collect()
        }
        (None, None) => return Err(OperationError::NothingSelected),
    };
    let mut changes = Changes::default();
    for (post, mut plan) in plans {
        let chosen: Vec<(String, Platform)> = plan
            .delivery_ids(&post)
            .filter(|(id, _, _)| wanted.is_none_or(|w| w == *id))
            .map(|(_, account, platform)| (account.to_string(), platform))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let Some(mut record) = store.post(&post)? else { continue };
        let now_ms = to_millis(now);
        for (account, platform) in &chosen {
            let mut d = Delivery::new(&post, plan.occurrence, account, *platform, now_ms);
            d.state = State::Cancelled;
            d.reason = Some(selection.because("cancelled by `herald cancel` while planned, before it was created"));
            let record = AuditRecord::of(&d, Event::Cancelled, now).by(selection.actor.clone());
            changes.deliveries.push((d, record));
        }
        plan.targets.retain(|target| !chosen.contains(target));
        record.planned = if plan.targets.is_empty() {
            // Nothing left to create: the timer moves on at the occurrence itself.
            record.timer = Some(plan.occurrence);
            None
        } else {
            Some(plan)
        };
        changes.posts.push((post, Some(record)));
    }
    Ok(changes)
}
