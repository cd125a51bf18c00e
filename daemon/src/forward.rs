//! Changes through any daemon: a standby forwards each change of the
//! schedule (retry, cancel, pause, resume, approve, recall) to the leader
//! through the shared store, and answers the CLI with the leader's answer.
//!
//! - The standby's control socket fills in the actor (and, for approve,
//!   the group check) from its own peer's credentials, as for a local
//!   change, and [`forward`]s a [`Forwarded`] command: one row in the
//!   store's command queue ([`CommandQueue`], PostgreSQL's `commands`
//!   table), waited for at most [`wait`].
//! - The leader [`serve`]s the queue beside its scheduler: it takes a
//!   waiting command (under its fence, marked taken in a transaction of its
//!   own before anything is done), sends it to its scheduler as the same
//!   [`Control`] message its own socket sends, and writes the [`Answer`]:
//!   the value, or the error's HTTP status and message, so the CLI on the
//!   standby prints the same and exits the same as on the leader.
//! - At most once: a taken command is never taken again. A leader killed
//!   between taking and answering leaves it unanswered: the standby's CLI
//!   is told that it may or may not have been carried out (`herald log`
//!   says). A command no leader takes within the wait is withdrawn by the
//!   standby (the leader takes none past its wait), so "not carried out"
//!   is then certain.
//! - Recall: the leader cancels what has not gone out and names the copies
//!   ([`crate::recall::PlanWire`]); the standby takes them down with its
//!   own accounts and records the outcomes, as the leader's socket would.
//!
//! A store one daemon owns (sled) has no queue: that daemon always leads.

use std::convert::identity;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::control::ApiError;
use crate::lease::{Fence, Role};
use crate::model::Actor;
use crate::scheduler::Control;
use crate::store::{Result, Store, StoreError};

/// How long a standby waits for the leader's answer.
const WAIT: Duration = Duration::from_secs(30);
/// How often the leader looks for waiting commands, and the standby for its answer.
const LOOK: Duration = Duration::from_millis(200);
/// How often the leader deletes old commands.
const SWEEP: Duration = Duration::from_secs(600);

/// How long a standby waits for the leader's answer: [`WAIT`], or
/// `HERALD_TEST_FORWARD_WAIT_MS` (for the tests only: a test that stops the
/// leader must see the standby give up before the lease expires and the
/// standby takes the lead itself).
pub fn wait() -> Duration {
    std::env::var("HERALD_TEST_FORWARD_WAIT_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(WAIT)
}

/// The store's queue of forwarded commands (PostgreSQL's `commands` table).
pub trait CommandQueue: Send + Sync {
    /// A standby forwards `request` (JSON); the leader takes it only within `wait`.
    fn submit(&self, request: &str, by: &str, wait: Duration) -> Result<i64>;
    /// The answer (JSON) and the daemon that wrote it, once there is one.
    fn answer_of(&self, id: i64) -> Result<Option<(String, String)>>;
    /// Withdraw a command not taken yet: `None` when withdrawn (it will never
    /// be carried out), else the daemon that took it.
    fn withdraw(&self, id: i64) -> Result<Option<String>>;
    /// The leader under `fence` takes the oldest waiting command, marked
    /// taken (committed) before it is returned. [`StoreError::NotLeader`]
    /// when the fence no longer holds (nothing taken).
    fn take(&self, fence: &Fence) -> Result<Option<Taken>>;
    /// Write the answer of a taken command.
    fn answer(&self, id: i64, answer: &str, by: &str) -> Result<()>;
    /// Delete old commands (answered or abandoned over an hour ago); how many.
    fn sweep(&self) -> Result<u64>;
}

/// A command the leader took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub id: i64,
    pub request: String,
    pub forwarded_by: String,
}

/// A change, as the control socket received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Retry {
        selection: crate::retry_cancel::Selection,
    },
    Cancel {
        selection: crate::retry_cancel::Selection,
    },
    Pause {
        request: crate::pauses::PauseRequest,
    },
    Resume {
        request: crate::pauses::PauseRequest,
    },
    /// `member`: the standby's socket checked the peer against `approvers_group`.
    Approve {
        request: crate::approvals::ApproveRequest,
        member: bool,
    },
    Recall {
        order: crate::recall::RecallOrder,
    },
}

/// A command and who asked for it (the requests never carry their actor
/// in JSON: a client cannot name itself; here the standby's socket did).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    pub command: Command,
    pub actor: Option<Actor>,
}

impl Forwarded {
    pub fn new(command: Command) -> Forwarded {
        let actor = match &command {
            Command::Retry { selection } | Command::Cancel { selection } => selection.actor.clone(),
            Command::Pause { request } | Command::Resume { request } => request.actor.clone(),
            Command::Approve { request, .. } => request.actor.clone(),
            Command::Recall { order } => order.actor.clone(),
        };
        Forwarded { command, actor }
    }

    /// The command with its actor (and approver check) put back.
    fn restored(self) -> Command {
        let mut command = self.command;
        match &mut command {
            Command::Retry { selection } | Command::Cancel { selection } => selection.actor = self.actor,
            Command::Pause { request } | Command::Resume { request } => request.actor = self.actor,
            Command::Approve { request, member } => {
                request.actor = self.actor;
                request.member = *member;
            }
            Command::Recall { order } => order.actor = self.actor,
        }
        command
    }
}

/// The leader's answer: what its socket would have answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Answer {
    Ok { value: serde_json::Value },
    Err { status: u16, error: String },
}

impl From<ApiError> for Answer {
    fn from(e: ApiError) -> Answer {
        Answer::Err { status: e.0.as_u16(), error: e.1 }
    }
}

/// The leader this standby would forward to: `Some` only when this daemon
/// shares its store, does not lead, and another daemon does (a standby
/// with no leader answers with its refusal at once, as before).
pub fn leader_elsewhere(role: Option<&Role>) -> Option<String> {
    let view = role?.view();
    match view.holder {
        Some(holder) if !view.leader && view.error.is_none() && holder != view.me => Some(holder),
        _ => None,
    }
}

/// Forward `forwarded` to `leader` through `store` and wait for the answer
/// (at most `wait`, [`wait()`] in the daemon); the value as the leader's
/// socket answered it.
pub async fn forward<T: DeserializeOwned>(
    store: &Arc<dyn Store>,
    role: &Role,
    leader: &str,
    forwarded: Forwarded,
    wait: Duration,
) -> std::result::Result<T, ApiError> {
    let internal = |e: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e);
    let request = serde_json::to_string(&forwarded).map_err(|e| internal(e.to_string()))?;
    let me = role.me();
    let id = blocking(store, move |q| q.submit(&request, &me, wait)).await?;
    tracing::info!(command = id, leader = %leader, "forwarded a change to the leader");
    let deadline = tokio::time::Instant::now() + wait;
    let mut look = tokio::time::interval(LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        look.tick().await;
        if let Some((answer, by)) = blocking(store, move |q| q.answer_of(id)).await? {
            tracing::debug!(command = id, leader = %by, "the leader answered");
            return match serde_json::from_str::<Answer>(&answer).map_err(|e| internal(e.to_string()))? {
                Answer::Ok { value } => serde_json::from_value(value).map_err(|e| internal(e.to_string())),
                Answer::Err { status, error } => {
                    Err(ApiError(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), error))
                }
            };
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    let secs = wait.as_secs_f64();
    let message = match blocking(store, move |q| q.withdraw(id)).await? {
        None => format!(
            "forwarded to the leader {leader}, which did not take it within {secs} s: withdrawn, not carried out; \
             try again (`herald status` shows which daemon leads)"
        ),
        Some(taker) => format!(
            "forwarded to the leader {taker}, no answer within {secs} s; it may still be carried out: see `herald log`"
        ),
    };
    tracing::warn!(command = id, leader = %leader, "no answer from the leader in time");
    Err(ApiError(StatusCode::GATEWAY_TIMEOUT, message))
}

/// Run a command-queue call on the blocking pool.
async fn blocking<R: Send + 'static>(
    store: &Arc<dyn Store>,
    call: impl FnOnce(&dyn CommandQueue) -> Result<R> + Send + 'static,
) -> std::result::Result<R, ApiError> {
    let store = Arc::clone(store);
    let result = tokio::task::spawn_blocking(move || match store.commands() {
        Some(queue) => call(queue),
        None => Err(StoreError::Backend("this store has no command queue: one daemon owns it".into())),
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(result?)
}

/// The leader's side, beside its scheduler (`ha::Leadership::lead`): take
/// waiting commands every [`LOOK`], carry each out through `control`, write
/// its answer; delete old ones every [`SWEEP`]. Returns when the fence no
/// longer holds (the lease keeper steps the scheduler down).
pub async fn serve(store: Arc<dyn Store>, fence: Fence, control: mpsc::Sender<Control>) {
    if store.commands().is_none() {
        return;
    }
    let mut look = tokio::time::interval(LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut swept: Option<tokio::time::Instant> = None;
    let mut failing = false;
    loop {
        look.tick().await;
        let f = fence.clone();
        match blocking(&store, move |q| q.take(&f)).await {
            Ok(Some(taken)) => {
                failing = false;
                tracing::info!(command = taken.id, from = %taken.forwarded_by, "carrying out a change forwarded by a standby");
                let answer = match serde_json::from_str::<Forwarded>(&taken.request) {
                    Ok(forwarded) => carry_out(&control, forwarded.restored()).await,
                    Err(e) => Answer::Err {
                        status: StatusCode::BAD_REQUEST.as_u16(),
                        error: format!(
                            "the leader cannot read the forwarded command ({e}); are both hosts on one herald version?"
                        ),
                    },
                };
                let (id, by) = (taken.id, fence.holder.clone());
                let text = serde_json::to_string(&answer).unwrap_or_default();
                if let Err(e) = blocking(&store, move |q| q.answer(id, &text, &by)).await {
                    tracing::error!(command = id, error = %e.1, "could not write the answer of a forwarded change");
                }
                look.reset_immediately(); // more may wait
            }
            Ok(None) => failing = false,
            Err(ApiError(_, e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot look for changes forwarded by standbys");
                }
                failing = true;
            }
        }
        if swept.is_none_or(|t| t.elapsed() >= SWEEP) {
            swept = Some(tokio::time::Instant::now());
            match blocking(&store, |q| q.sweep()).await {
                Ok(n) if n > 0 => tracing::debug!(deleted = n, "old forwarded changes deleted"),
                Ok(_) => {}
                Err(ApiError(_, e)) => tracing::warn!(error = %e, "cannot delete old forwarded changes"),
            }
        }
    }
}

/// Send `command` to this daemon's scheduler as its own socket does, and
/// answer what the socket would answer.
pub async fn carry_out(control: &mpsc::Sender<Control>, command: Command) -> Answer {
    match command {
        Command::Retry { selection } => ask(control, |tx| Control::Retry(selection, tx), identity).await,
        Command::Cancel { selection } => ask(control, |tx| Control::Cancel(selection, tx), identity).await,
        Command::Pause { request } => ask(control, |tx| Control::Pause(request, tx), identity).await,
        Command::Resume { request } => ask(control, |tx| Control::Resume(request, tx), identity).await,
        Command::Approve { request, .. } => ask(control, |tx| Control::Approve(request, tx), identity).await,
        // The copies by delivery id: the forwarding daemon takes them down with its own adapters.
        Command::Recall { order } => ask(control, |tx| Control::Recall(order, tx), |plan| plan.wire()).await,
    }
}

/// Send the message `make` builds to the scheduler; its answer, as `shown`.
async fn ask<T, S: Serialize, E: Into<ApiError>>(
    control: &mpsc::Sender<Control>,
    make: impl FnOnce(oneshot::Sender<std::result::Result<T, E>>) -> Control,
    shown: impl FnOnce(T) -> S,
) -> Answer {
    let (tx, rx) = oneshot::channel();
    if control.send(make(tx)).await.is_err() {
        return stopping();
    }
    match rx.await {
        Ok(Ok(value)) => ok(&shown(value)),
        Ok(Err(e)) => e.into().into(),
        Err(_) => stopping(),
    }
}

fn ok<T: Serialize>(value: &T) -> Answer {
    match serde_json::to_value(value) {
        Ok(value) => Answer::Ok { value },
        Err(e) => Answer::Err { status: 500, error: e.to_string() },
    }
}

fn stopping() -> Answer {
    Answer::Err { status: StatusCode::SERVICE_UNAVAILABLE.as_u16(), error: "the leader is stopping".into() }
}

/// Aborts the task it holds when dropped: the leader's [`serve`] ends with its turn.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SCHEDULER;
    use crate::store::postgres::{PostgresStore, testing};

    const SHORT: Duration = Duration::from_millis(600);

    /// A standby ("host-b") and a leader ("host-a", holding the lease) on one fresh database.
    fn two() -> Option<(Arc<dyn Store>, Arc<PostgresStore>, Fence)> {
        let url = testing::fresh_database()?;
        let standby: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url, 2).unwrap());
        let leader = Arc::new(PostgresStore::connect(&url, 2).unwrap());
        leader.lease_row(SCHEDULER, "host-a", None, Duration::from_secs(600)).unwrap();
        Some((standby, leader, Fence { name: SCHEDULER, holder: "host-a".into(), epoch: 1 }))
    }

    fn cancel_later() -> Forwarded {
        let selection = crate::retry_cancel::Selection {
            post: Some("later".into()),
            actor: Some(Actor { via: "control_socket".into(), name: "operator".into(), uid: Some(1000) }),
            ..Default::default()
        };
        Forwarded::new(Command::Cancel { selection })
    }

    /// Act as the leader: take the next command (waiting for it, a safety net only).
    fn take(leader: &PostgresStore, fence: &Fence) -> Taken {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(taken) = leader.take(fence).unwrap() {
                return taken;
            }
            assert!(std::time::Instant::now() < deadline, "nothing was forwarded");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_the_leaders_answer_comes_back_with_its_status_and_the_actor_goes_over() {
        let Some((standby, leader, fence)) = tokio::task::spawn_blocking(two).await.unwrap() else { return };
        let role = Role::new("host-b".into());
        let acting = std::thread::spawn(move || {
            let taken = take(&leader, &fence);
            let forwarded: Forwarded = serde_json::from_str(&taken.request).unwrap();
            let answer = Answer::Err { status: 404, error: "no delivery 0123".into() };
            leader.answer(taken.id, &serde_json::to_string(&answer).unwrap(), "host-a").unwrap();
            (taken.forwarded_by, forwarded.restored())
        });
        let err =
            forward::<usize>(&standby, &role, "host-a", cancel_later(), Duration::from_secs(60)).await.unwrap_err();
        assert_eq!((err.0, err.1.as_str()), (StatusCode::NOT_FOUND, "no delivery 0123"));
        let (by, command) = tokio::task::spawn_blocking(move || acting.join().unwrap()).await.unwrap();
        assert_eq!(by, "host-b");
        let Command::Cancel { selection } = command else { panic!("{command:?}") };
        assert_eq!(selection.post.as_deref(), Some("later"));
        assert_eq!(selection.actor.map(|a| (a.name, a.uid)), Some(("operator".to_string(), Some(1000))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_command_taken_and_never_answered_may_still_be_carried_out() {
        let Some((standby, leader, fence)) = tokio::task::spawn_blocking(two).await.unwrap() else { return };
        let role = Role::new("host-b".into());
        // The leader takes it and dies before answering.
        let acting = std::thread::spawn(move || take(&leader, &fence));
        let err = forward::<usize>(&standby, &role, "host-a", cancel_later(), SHORT).await.unwrap_err();
        assert_eq!(err.0, StatusCode::GATEWAY_TIMEOUT);
        assert!(err.1.contains("forwarded to the leader host-a, no answer within 0.6 s"), "{}", err.1);
        assert!(err.1.contains("it may still be carried out: see `herald log`"), "{}", err.1);
        tokio::task::spawn_blocking(move || acting.join().unwrap()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_command_no_leader_takes_is_withdrawn_and_never_carried_out() {
        let Some((standby, leader, fence)) = tokio::task::spawn_blocking(two).await.unwrap() else { return };
        let role = Role::new("host-b".into());
        let err = forward::<usize>(&standby, &role, "host-a", cancel_later(), SHORT).await.unwrap_err();
        assert_eq!(err.0, StatusCode::GATEWAY_TIMEOUT);
        assert!(err.1.contains("which did not take it within 0.6 s: withdrawn, not carried out"), "{}", err.1);
        let later = tokio::task::spawn_blocking(move || leader.take(&fence).unwrap()).await.unwrap();
        assert_eq!(later, None, "a withdrawn command was taken");
    }
}
