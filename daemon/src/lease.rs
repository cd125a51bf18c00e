//! Several daemons, one schedule: the scheduler lease and its fence.
//!
//! Daemons sharing one store (PostgreSQL) take turns as the **leader**, the
//! one daemon that runs the scheduler; the others are **standbys** that
//! serve `status` and the log from the shared store and keep trying to take
//! the lease. The lease is a row in the store (name, holder, epoch,
//! expires), timed by the database's clock, never the hosts'. The holder
//! renews it every [`RENEW`]; a standby takes over a lease that has not
//! been renewed for [`LENGTH`], which adds one to its **epoch**.
//!
//! The epoch is a fencing token: the leader's scheduler writes through a
//! [`FencedStore`], whose every `apply` checks, in the same transaction,
//! that this daemon still holds the lease with that epoch and that it has
//! not expired ([`StoreError::NotLeader`] otherwise, nothing written). A
//! delivery is sent only after its `in_flight` mark is durable, so a daemon
//! cut off from the database, paused or slow can never send after another
//! daemon took over: its mark is refused.
//!
//! The sled store (one host, one daemon: the lock file) keeps the trait's
//! defaults: the lease is always granted and the fence never refuses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audit_chain::ChainHead;
use crate::model::{AuditRecord, Content, Delivery, DeliveryId, Millis, State};
use crate::store::{AuditQuery, Changes, DueKey, Planned, PostRecord, Result, Store, StoreError};

/// The one lease of this first step: who runs the scheduler.
pub const SCHEDULER: &str = "scheduler";
/// How long a lease lasts without renewal: a dead leader's work is picked
/// up this long (plus one [`RENEW`] poll) after its last renewal.
pub const LENGTH: Duration = Duration::from_secs(10);
/// How often the leader renews, and a standby tries to take over.
pub const RENEW: Duration = Duration::from_secs(2);

/// How long a lease lasts and how often it is renewed: [`LENGTH`] and
/// [`RENEW`], shorter only in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub length: Duration,
    pub renew: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { length: LENGTH, renew: RENEW }
    }
}

/// Keeps renewing a lease from a thread of its own while blocking work runs
/// under it (a takeover: recovery and the first reconcile, which can take
/// longer than the lease at a big schedule), until dropped. Each answer is
/// recorded in `role`; a renewal that fails stops it, and the work's next
/// fenced write is refused as for any lost lease. Each renewal also feeds
/// systemd's watchdog (`notifier`): a standby taking over a big schedule is
/// working, not stuck, and must not be killed after `WatchdogSec` (each
/// statement of the work is bounded by the connection's timeouts).
pub struct Renewing {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Renewing {
    pub fn start(
        store: Arc<dyn Store>,
        fence: Fence,
        timing: Timing,
        role: Arc<Role>,
        notifier: Arc<crate::notify::Notifier>,
    ) -> Renewing {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("herald-lease".into()).spawn(move || {
            // A disconnect (the guard dropped) ends the loop as a stop does.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timing.renew) {
                let state = store.lease(fence.name, &fence.holder, Some(fence.epoch), timing.length);
                let held = matches!(state, Ok(LeaseState::Held { epoch }) if epoch == fence.epoch);
                role.saw(&state);
                if !held {
                    tracing::warn!(epoch = fence.epoch, "the scheduler lease was lost while taking over");
                    return;
                }
                notifier.watchdog();
            }
        });
        match thread {
            Ok(thread) => Renewing { stop: Some(stop), thread: Some(thread) },
            Err(e) => {
                // Without the thread the lease is not renewed during the work:
                // a long takeover is then refused by the fence, never unsafe.
                tracing::warn!(error = %e, "cannot start the thread renewing the scheduler lease");
                Renewing { stop: None, thread: None }
            }
        }
    }
}

impl Drop for Renewing {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// This daemon as a lease holder: `host pid <pid> boot <random>`. The boot
/// id tells two runs of one pid apart (a restart in a container).
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host} pid {} boot {:08x}", std::process::id(), fastrand::u32(..))
}

/// What the store answered to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// This daemon holds the lease with this epoch.
    Held { epoch: u64 },
    /// Another daemon holds it (and it has not expired).
    Other { holder: String, epoch: u64 },
}

/// The lease a leader writes under: checked by every fenced `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: &'static str,
    pub holder: String,
    pub epoch: u64,
}

/// The role of this daemon, as `status`, `/metrics` and systemd's STATUS= show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleView {
    /// Does this daemon hold the scheduler lease (and run the scheduler)?
    pub leader: bool,
    /// This daemon, as a lease holder.
    pub me: String,
    /// Who holds the lease, as last seen (this daemon when it is the leader).
    pub holder: Option<String>,
    /// The lease's epoch, as last seen: one more on every takeover.
    pub epoch: u64,
    /// Why the lease could not be read or renewed (the database unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How a standby's config differs from the one the leader applied
    /// (`reconcile::differences`); `None` when they agree or not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_differs: Option<String>,
}

impl RoleView {
    /// "leader (epoch 3)", "standby; the leader is host-b pid 812 boot ..."
    pub fn describe(&self) -> String {
        let mut text = if self.leader {
            format!("leader (epoch {})", self.epoch)
        } else {
            match &self.holder {
                Some(holder) => format!("standby; the leader is {holder} (epoch {})", self.epoch),
                None => "standby; no leader".to_string(),
            }
        };
        if let Some(error) = &self.error {
            text.push_str(&format!("; the store is unreachable: {error}"));
        }
        if let Some(differs) = &self.config_differs {
            text.push_str(&format!("; THIS HOST'S CONFIG DIFFERS from the one applied: {differs}"));
        }
        text
    }
}

/// The role of this daemon, shared by the lease keeper, the control socket
/// and the metrics.
#[derive(Debug, Default)]
pub struct Role(Mutex<RoleView>);

impl Role {
    pub fn new(me: String) -> Role {
        Role(Mutex::new(RoleView { me, ..Default::default() }))
    }

    pub fn view(&self) -> RoleView {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn me(&self) -> String {
        self.view().me
    }

    pub fn is_leader(&self) -> bool {
        self.view().leader
    }

    /// Record what the store answered.
    pub fn saw(&self, state: &Result<LeaseState>) {
        let mut view = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match state {
            Ok(LeaseState::Held { epoch }) => {
                view.leader = true;
                view.holder = Some(view.me.clone());
                view.epoch = *epoch;
                view.error = None;
            }
            Ok(LeaseState::Other { holder, epoch }) => {
                view.leader = false;
                view.holder = Some(holder.clone());
                view.epoch = *epoch;
                view.error = None;
            }
            Err(e) => {
                // Not renewed: the fence refuses the leader's writes once the
                // lease expires; the scheduler steps down at once.
                view.leader = false;
                view.error = Some(e.to_string());
            }
        }
    }

    /// What a standby found comparing its config with the applied one.
    pub fn config_checked(&self, differs: Option<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).config_differs = differs;
    }

    /// The leader stepped down (its lease lost or refused).
    pub fn stepped_down(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).leader = false;
    }

    /// The error a standby answers to a change of the schedule.
    pub fn refusal(&self) -> StoreError {
        let view = self.view();
        StoreError::NotLeader(match view.holder {
            Some(holder) if holder != view.me => format!("this daemon is standby; the leader is {holder}"),
            _ => "this daemon is standby and no daemon holds the lease now".to_string(),
        })
    }
}

/// A store whose every `apply` is fenced by the scheduler lease: the
/// leader's scheduler writes through one, so a write after the lease was
/// lost (or taken over) is refused in the transaction that would make it.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    fence: Fence,
}

impl FencedStore {
    pub fn new(inner: Arc<dyn Store>, fence: Fence) -> FencedStore {
        FencedStore { inner, fence }
    }
}

impl Store for FencedStore {
    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        self.inner.delivery(id)
    }
    fn deliveries_of_post(&self, post: &str) -> Result<Vec<Delivery>> {
        self.inner.deliveries_of_post(post)
    }
    fn deliveries_of_occurrence(&self, post: &str, occurrence: Millis) -> Result<Vec<Delivery>> {
        self.inner.deliveries_of_occurrence(post, occurrence)
    }
    fn due(&self, after: Option<&DueKey>, until: Millis, limit: usize) -> Result<Vec<DueKey>> {
        self.inner.due(after, until, limit)
    }
    fn next_due_after(&self, after: Millis) -> Result<Option<Millis>> {
        self.inner.next_due_after(after)
    }
    fn in_flight(&self) -> Result<Vec<Delivery>> {
        self.inner.in_flight()
    }
    fn deliveries_in_state(&self, state: State, limit: usize) -> Result<Vec<Delivery>> {
        self.inner.deliveries_in_state(state, limit)
    }
    fn post(&self, id: &str) -> Result<Option<PostRecord>> {
        self.inner.post(id)
    }
    fn post_ids(&self) -> Result<Vec<String>> {
        self.inner.post_ids()
    }
    fn timers_due(&self, until: Millis) -> Result<Vec<(Millis, String)>> {
        self.inner.timers_due(until)
    }
    fn next_timer(&self) -> Result<Option<Millis>> {
        self.inner.next_timer()
    }
    fn content(&self, hash: &str) -> Result<Option<Content>> {
        self.inner.content(hash)
    }
    fn content_hashes(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        self.inner.content_hashes(prefix, limit)
    }
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.meta(key)
    }
    fn has_content(&self, hash: &str) -> Result<bool> {
        self.inner.has_content(hash)
    }
    fn apply(&self, changes: Changes) -> Result<Vec<AuditRecord>> {
        self.inner.apply_fenced(changes, &self.fence)
    }
    fn apply_fenced(&self, changes: Changes, fence: &Fence) -> Result<Vec<AuditRecord>> {
        self.inner.apply_fenced(changes, fence)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        self.inner.audit(query)
    }
    fn audit_raw(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.audit_raw(after, limit)
    }
    fn audit_head(&self) -> Result<ChainHead> {
        self.inner.audit_head()
    }
    fn counts(&self) -> Result<BTreeMap<State, u64>> {
        self.inner.counts()
    }
    fn retrying(&self) -> Result<u64> {
        self.inner.retrying()
    }
    fn planned(&self, limit: usize) -> Result<Vec<(String, Planned)>> {
        self.inner.planned(limit)
    }
    fn planned_deliveries(&self) -> Result<u64> {
        self.inner.planned_deliveries()
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
    fn lease(&self, name: &'static str, holder: &str, held: Option<u64>, length: Duration) -> Result<LeaseState> {
        self.inner.lease(name, holder, held, length)
    }
    fn release_lease(&self, fence: &Fence) -> Result<()> {
        self.inner.release_lease(fence)
    }
    fn commands(&self) -> Option<&dyn crate::forward::CommandQueue> {
        self.inner.commands()
    }
}
