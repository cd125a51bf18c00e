//! Active/standby: the task that decides whether this daemon runs the
//! scheduler. It holds the scheduler lease (`lease`) while it leads,
//! renewing it every [`RENEW`](crate::lease::RENEW) beside the running scheduler; when the
//! lease is lost (renewal refused or failed, or a fenced write refused) the
//! scheduler steps down and this daemon becomes a standby again. A standby
//! tries to take the lease every [`RENEW`](crate::lease::RENEW); taking it over is crash
//! recovery (`Scheduler::recover`), then the config is reconciled and the
//! scheduler runs. On a store one daemon owns (sled) the lease is always
//! this daemon's, so this is the scheduler as it always was.
//!
//! Control messages go through here: to the scheduler while leading; a
//! standby answers reads (`upcoming`, the approvers group) from the store
//! and refuses changes (retry, cancel, pause, resume, approve, recall,
//! reload) with [`StoreError::NotLeader`] naming the leader. A standby's
//! control socket forwards those changes (but reload) to the leader
//! through the store instead (`forward`) while a leader lives; the leader
//! serves them here, beside its scheduler.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::blocking::off_the_workers;
use crate::config::Config;
use crate::lease::{Fence, LeaseState, Renewing, Role, SCHEDULER, Timing};

/// How often a standby compares its config with the applied one.
const CONFIG_CHECK: std::time::Duration = std::time::Duration::from_secs(30);
use crate::metrics::Metrics;
use crate::model::{Actor, AuditRecord};
use crate::notify::Notifier;
use crate::reconcile::Summary;
use crate::scheduler::{Control, Scheduler};
use crate::store::{Changes, Result, Store, StoreError};

/// Everything a daemon needs to lead, or to stand by.
pub struct Leadership {
    pub store: Arc<dyn Store>,
    pub role: Arc<Role>,
    pub notifier: Arc<Notifier>,
    pub metrics: Arc<Metrics>,
    /// The config to apply at the next takeover (the latest valid one).
    pub config: Arc<Config>,
    /// The lease's length and renewal period (`Timing::default()` but in tests).
    pub timing: Timing,
}

/// What taking the lead did.
pub struct Took {
    pub scheduler: Scheduler,
    pub fence: Fence,
    pub recovered: usize,
    pub summary: Summary,
}

/// Did this error (anywhere in its chain) end this daemon's turn as leader?
pub fn lost_the_lead(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.downcast_ref::<StoreError>().is_some_and(StoreError::loses_leadership))
}

impl Leadership {
    /// One try at the scheduler lease; `Some` when this daemon holds it now. Blocks.
    pub fn try_lead(&self) -> Result<Option<Fence>> {
        let me = self.role.me();
        let before = self.role.view();
        let state = self.store.lease(SCHEDULER, &me, None, self.timing.length);
        self.role.saw(&state);
        match state {
            Ok(LeaseState::Held { epoch }) => Ok(Some(Fence { name: SCHEDULER, holder: me, epoch })),
            Ok(LeaseState::Other { holder, epoch }) => {
                if before.holder.as_deref() != Some(holder.as_str()) || before.error.is_some() {
                    tracing::info!(leader = %holder, epoch, "standby: another daemon holds the scheduler lease");
                }
                Ok(None)
            }
            Err(e) => {
                if before.error.is_none() {
                    tracing::error!(error = %e, "cannot reach the store to take the scheduler lease; trying again");
                }
                Err(e)
            }
        }
    }

    /// Lead under `fence`: what the last leader left in flight is recovered
    /// as after a crash (same idempotency key, uncertain, so adapters look
    /// before re-sending), the pauses and approvals are read, the config is
    /// reconciled and recorded. Every write is fenced. Blocks.
    pub fn take_over(&self, fence: Fence) -> anyhow::Result<Took> {
        use anyhow::Context;
        // Renewed beside the work: recovery and the first reconcile of a big
        // schedule can take longer than the lease.
        let _renewing = self.store.is_shared().then(|| {
            let notifier = Arc::clone(&self.notifier);
            Renewing::start(Arc::clone(&self.store), fence.clone(), self.timing, Arc::clone(&self.role), notifier)
        });
        let fenced: Arc<dyn Store> = Arc::new(crate::lease::FencedStore::new(Arc::clone(&self.store), fence.clone()));
        let config = Arc::clone(&self.config);
        let mut scheduler = Scheduler::new(Arc::clone(&fenced), Arc::clone(&config))
            .observed_by(Arc::clone(&self.notifier), Arc::clone(&self.metrics));
        if self.store.is_shared() {
            // The leader applies its own config: nothing to differ from.
            self.role.config_checked(None);
            scheduler = scheduler.leading(Arc::clone(&self.role));
            tracing::info!(epoch = fence.epoch, "took the scheduler lease: leading");
        }
        let now = crate::clock::now();
        let recovered = scheduler.recover(now).context("recovering deliveries that were in flight")?;
        let summary = scheduler.reconcile(Arc::clone(&config), now).context("applying the config to the store")?;
        if self.store.is_shared() {
            // Another daemon may have led until now: its recent starts count against the rate windows.
            let counted = scheduler.count_earlier_starts(now).context("reading the recent attempts")?;
            tracing::debug!(attempts = counted, "recent attempts counted against the accounts' rate windows");
        }
        crate::approvals::settle(fenced.as_ref(), &config, &Actor::start(), now)
            .context("checking the approvals of changed posts")?;
        let note =
            AuditRecord::config(now, config.files.clone(), Some(summary.to_string()), Vec::new(), Actor::start(), None);
        (|| -> Result<()> {
            fenced.apply(Changes { notes: vec![note], ..Default::default() })?;
            fenced.flush()
        })()
        .context("recording the config in the audit log")?;
        Ok(Took { scheduler, fence, recovered, summary })
    }

    /// Lead or stand by until [`Control::Shutdown`]; `leading` is the
    /// scheduler when this daemon already took the lead.
    pub async fn supervise(mut self, mut control: mpsc::Receiver<Control>, mut leading: Option<Took>) -> Result<()> {
        loop {
            if let Some(took) = leading.take()
                && self.lead(took, &mut control).await?
            {
                return Ok(());
            }
            match self.stand_by(&mut control).await? {
                Some(took) => leading = Some(took),
                None => return Ok(()),
            }
        }
    }

    /// Run the scheduler and renew the lease beside it. `Ok(true)` at a
    /// shutdown, `Ok(false)` when the lease was lost (the scheduler has
    /// stepped down).
    async fn lead(&mut self, took: Took, control: &mut mpsc::Receiver<Control>) -> Result<bool> {
        let Took { scheduler, fence, .. } = took;
        let (tx, rx) = mpsc::channel(8);
        let mut task = tokio::spawn(scheduler.run(rx));
        // Changes forwarded by standbys go to the scheduler as this daemon's own socket sends them.
        let _forwarded = crate::forward::AbortOnDrop(tokio::spawn(crate::forward::serve(
            Arc::clone(&self.store),
            fence.clone(),
            tx.clone(),
        )));
        let mut renew = tokio::time::interval(self.timing.renew);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        let (mut lost, mut stopping) = (false, false);
        loop {
            tokio::select! {
                ended = &mut task => {
                    let ended = ended.map_err(|e| StoreError::Backend(format!("the scheduler task failed: {e}")))?;
                    return match ended {
                        Ok(()) => {
                            // A clean stop: a standby need not wait for the lease to expire.
                            let store = Arc::clone(&self.store);
                            if let Err(e) = off_the_workers(|| store.release_lease(&fence)) {
                                tracing::warn!(error = %e, "could not release the scheduler lease; it expires on its own");
                            }
                            Ok(true)
                        }
                        Err(e) if e.loses_leadership() => {
                            self.role.stepped_down();
                            tracing::warn!(error = %e, "stepped down: standby now");
                            Ok(stopping)
                        }
                        Err(e) => Err(e),
                    };
                }
                _ = renew.tick(), if !lost => {
                    let store = Arc::clone(&self.store);
                    let length = self.timing.length;
                    let state = off_the_workers(|| store.lease(SCHEDULER, &fence.holder, Some(fence.epoch), length));
                    self.role.saw(&state);
                    let why = match state {
                        Ok(LeaseState::Held { epoch }) if epoch == fence.epoch => None,
                        Ok(LeaseState::Held { epoch }) => Some(format!("the lease moved to epoch {epoch}")),
                        Ok(LeaseState::Other { holder, epoch }) => {
                            Some(format!("the lease was taken over by {holder} (epoch {epoch})"))
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot reach the store to renew the scheduler lease; stepping down");
                            Some(format!("the lease could not be renewed ({e})"))
                        }
                    };
                    if let Some(why) = why {
                        lost = true;
                        let _ = tx.send(Control::StepDown(why)).await;
                    }
                }
                message = control.recv(), if !stopping => match message {
                    None | Some(Control::Shutdown) => {
                        stopping = true;
                        let _ = tx.send(Control::Shutdown).await;
                    }
                    Some(Control::Reload(config, reply)) => {
                        self.config = Arc::clone(&config);
                        if let Err(mpsc::error::SendError(Control::Reload(_, reply))) =
                            tx.send(Control::Reload(config, reply)).await
                        {
                            let _ = reply.send(Err(self.role.refusal()));
                        }
                    }
                    Some(message) => {
                        if let Err(mpsc::error::SendError(message)) = tx.send(message).await {
                            self.refuse(message);
                        }
                    }
                },
            }
        }
    }

    /// Try to take the lease every [`RENEW`](crate::lease::RENEW); answer control messages as a
    /// standby meanwhile. `Some` once this daemon leads, `None` at a shutdown.
    async fn stand_by(&mut self, control: &mut mpsc::Receiver<Control>) -> Result<Option<Took>> {
        let mut poll = tokio::time::interval(self.timing.renew);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checked: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if checked.is_none_or(|t| t.elapsed() >= CONFIG_CHECK) {
                        checked = Some(std::time::Instant::now());
                        self.check_config();
                    }
                    // Fed by the standby loop as by the scheduler's: a stuck standby is restarted too.
                    self.notifier.watchdog();
                    let fence = off_the_workers(|| self.try_lead()).unwrap_or(None);
                    self.report_status();
                    if let Some(fence) = fence {
                        match off_the_workers(|| self.take_over(fence)) {
                            Ok(took) => {
                                tracing::info!(recovered = took.recovered, summary = %took.summary, epoch = took.fence.epoch,
                                    "took over: leading");
                                return Ok(Some(took));
                            }
                            Err(e) if lost_the_lead(&e) => {
                                self.role.stepped_down();
                                tracing::warn!(error = %format!("{e:#}"), "lost the lease while taking over; standby");
                            }
                            Err(e) => {
                                return Err(match e.downcast::<StoreError>() {
                                    Ok(store) => store,
                                    Err(e) => StoreError::Backend(format!("{e:#}")),
                                });
                            }
                        }
                    }
                }
                message = control.recv() => match message {
                    None | Some(Control::Shutdown) => return Ok(None),
                    Some(message) => self.refuse(message),
                },
            }
        }
    }

    /// Compare this host's config with the one applied to the store (the
    /// leader's); a difference is said loudly (log, status, metrics), once
    /// per change. A standby never reconciles: the leader's config rules.
    fn check_config(&self) {
        let (store, config) = (Arc::clone(&self.store), Arc::clone(&self.config));
        let Ok(found) = off_the_workers(|| crate::reconcile::differences(store.as_ref(), &config)) else { return };
        let differs = (!found.is_empty()).then(|| found.join("; "));
        if differs.is_some() && differs != self.role.view().config_differs {
            tracing::error!(
                differences = differs.as_deref().unwrap_or(""),
                "this host's config differs from the one the leader applied: give every host the same config"
            );
        }
        self.role.config_checked(differs);
    }

    /// systemd's STATUS= while standing by: the role, and the schedule as the shared store has it.
    fn report_status(&self) {
        let role = self.role.view().describe();
        let store = Arc::clone(&self.store);
        let (tz, now) = (self.config.daemon.time_zone, crate::clock::now());
        match off_the_workers(|| crate::scheduler::status_line(store.as_ref(), tz, 0, now)) {
            Ok(line) => self.notifier.status(&format!("{role}; {line}")),
            Err(_) => self.notifier.status(&role),
        }
    }

    /// A standby's answer: reads from the shared store, changes refused.
    fn refuse(&mut self, message: Control) {
        let refusal = || self.role.refusal();
        match message {
            Control::Reload(config, reply) => {
                // Kept for the takeover; the leader applies its own (the same, on every host).
                self.config = config;
                let _ = reply.send(Err(refusal()));
                self.check_config();
            }
            Control::Retry(_, reply) | Control::Cancel(_, reply) => {
                let _ = reply.send(Err(refusal().into()));
            }
            Control::Pause(_, reply) | Control::Resume(_, reply) => {
                let _ = reply.send(Err(refusal().into()));
            }
            Control::Approve(_, reply) => {
                let _ = reply.send(Err(refusal().into()));
            }
            Control::Recall(_, reply) => {
                let _ = reply.send(Err(refusal().into()));
            }
            Control::Upcoming { until, limit, reply } => {
                let (store, config) = (Arc::clone(&self.store), Arc::clone(&self.config));
                let answer =
                    off_the_workers(|| crate::control::upcoming_window(store.as_ref(), Some(&config), until, limit));
                let _ = reply.send(answer);
            }
            Control::ApproversGroup(reply) => {
                let _ = reply.send(self.config.daemon.approvers_group.clone());
            }
            Control::RunningConfig(reply) => {
                let _ = reply.send(Arc::clone(&self.config));
            }
            Control::Shutdown | Control::StepDown(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Event, State};
    use crate::store::AuditQuery;
    use crate::store::postgres::{PostgresStore, testing};
    use crate::testkit::{WUHAN_WEBHOOK, config};

    fn leadership(store: &Arc<PostgresStore>, config: &Arc<Config>, me: &str) -> Leadership {
        Leadership {
            store: Arc::clone(store) as Arc<dyn Store>,
            role: Arc::new(Role::new(me.into())),
            notifier: Arc::new(Notifier::disabled()),
            metrics: Arc::new(Metrics::default()),
            config: Arc::clone(config),
            timing: Timing::default(),
        }
    }

    /// The WATCHDOG=1 messages waiting on `socket`.
    fn pings(socket: &std::os::unix::net::UnixDatagram) -> usize {
        socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        std::iter::from_fn(|| socket.recv(&mut buf).ok().map(|n| buf[..n] == *b"WATCHDOG=1")).filter(|&w| w).count()
    }

    /// A config with one post to one account, due in half an hour; and when.
    fn one_post_in_half_an_hour(dir: &std::path::Path) -> (Arc<Config>, chrono::DateTime<chrono::Utc>) {
        let now = crate::clock::now();
        let at = now + chrono::Duration::minutes(30);
        let text = format!(
            "{WUHAN_WEBHOOK}\n[[posts]]\nid = \"warning\"\nbody = \"stay safe\"\ntargets = [\"wuhan\"]\nat = {}\n",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        (Arc::new(config(dir, &text, now)), at)
    }

    /// A takeover that takes longer than the lease (recovery and the first
    /// reconcile of a big schedule; here the deliveries table is locked by
    /// another session for twice the lease) keeps its lease: it is renewed
    /// beside the work, so the takeover completes and the new leader sends.
    #[test]
    fn postgres_a_takeover_longer_than_the_lease_keeps_the_lease() {
        let Some(url) = testing::fresh_database() else { return };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let dir = tempfile::tempdir().unwrap();
        let (cfg, at) = one_post_in_half_an_hour(dir.path());
        let store = Arc::new(PostgresStore::connect(&url, 3).unwrap());
        let mut lead = leadership(&store, &cfg, "host-a");
        let timing =
            Timing { length: std::time::Duration::from_millis(1_500), renew: std::time::Duration::from_millis(100) };
        lead.timing = timing;
        // systemd's watchdog, as a standby taking over after READY=1 has it.
        let systemd = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
        // 2 s: pinged at most every 0.5 s, so the few pings of the 3 s wait
        // fit the socket's queue, read only at the end.
        let watchdog = std::time::Duration::from_secs(2);
        lead.notifier = Arc::new(Notifier::to_socket(&dir.path().join("notify.sock"), Some(watchdog)));
        let fence = lead.try_lead().unwrap().expect("the only daemon takes the lease");

        // Another session holds the deliveries table for twice the lease: the
        // takeover's first read waits that long.
        let mut blocker = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut tx = blocker.transaction().unwrap();
        tx.batch_execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE").unwrap();
        let took = std::thread::scope(|s| {
            let taking = s.spawn(|| lead.take_over(fence.clone()));
            std::thread::sleep(timing.length * 2);
            let pings = pings(&systemd);
            tx.commit().unwrap();
            (taking.join().unwrap(), pings)
        });
        let (took, pings) = took;
        // 3 s stuck behind the lock, a watchdog of 2 s: fed all along.
        assert!(pings >= 3, "the watchdog was fed {pings} times while the takeover waited: systemd would kill it");
        let mut took = took.expect("the takeover outlived its lease: it must have been renewed meanwhile");
        assert_eq!(took.fence.epoch, 1);
        assert!(lead.role.is_leader());
        let tick = took.scheduler.tick(at + chrono::Duration::milliseconds(100)).unwrap();
        assert_eq!(tick.dispatched, 1, "the new leader sends");
    }

    /// Daemon A leads; its lease is taken from it (expired from the test,
    /// as if A had been cut off for longer than the lease); B takes over.
    /// A's next round marks nothing in flight (so sends nothing); B's does.
    #[test]
    fn postgres_a_deposed_leader_marks_nothing_in_flight_and_the_new_leader_sends() {
        let Some(url) = testing::fresh_database() else { return };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let dir = tempfile::tempdir().unwrap();
        let (cfg, at) = one_post_in_half_an_hour(dir.path());
        let (a, b) =
            (Arc::new(PostgresStore::connect(&url, 2).unwrap()), Arc::new(PostgresStore::connect(&url, 2).unwrap()));
        let (lead_a, lead_b) = (leadership(&a, &cfg, "host-a"), leadership(&b, &cfg, "host-b"));

        let fence = lead_a.try_lead().unwrap().expect("the first daemon takes the lease");
        assert!(lead_b.try_lead().unwrap().is_none(), "the second daemon must stand by");
        assert!(lead_a.role.is_leader() && !lead_b.role.is_leader());
        assert_eq!(lead_b.role.view().holder.as_deref(), Some("host-a"));
        let mut took_a = lead_a.take_over(fence).unwrap();
        assert_eq!(a.counts().unwrap().get(&State::Pending), Some(&1), "A reconciled the post");

        // A is cut off for longer than the lease: it expires; B takes over.
        postgres::Client::connect(&url, postgres::NoTls)
            .unwrap()
            .execute("UPDATE leases SET expires = now() - interval '1 second'", &[])
            .unwrap();
        let fence_b = lead_b.try_lead().unwrap().expect("an expired lease is taken over");
        assert_eq!(fence_b.epoch, 2);
        let mut took_b = lead_b.take_over(fence_b).unwrap();

        // A's round at the due time: its in-flight mark is refused, nothing started.
        let due = at + chrono::Duration::milliseconds(100);
        let err = took_a.scheduler.tick(due).expect_err("a deposed leader must not mark deliveries in flight");
        assert!(err.loses_leadership(), "{err}");
        assert!(err.to_string().contains("taken over by host-b (epoch 2"), "{err}");
        assert_eq!(took_a.scheduler.in_flight(), 0, "the deposed leader started a request");
        let attempts = |store: &PostgresStore| {
            store.audit(&AuditQuery { events: vec![Event::Attempt], ..Default::default() }).unwrap().len()
        };
        assert_eq!(attempts(&a), 0);
        assert_eq!(a.counts().unwrap().get(&State::Pending), Some(&1));

        // B's round sends it.
        let tick = took_b.scheduler.tick(due).unwrap();
        assert_eq!(tick.dispatched, 1);
        assert_eq!(attempts(&b), 1);
        assert_eq!(b.counts().unwrap().get(&State::InFlight), Some(&1));
        crate::audit_chain::verify_store(b.as_ref(), None).unwrap().expect("one chain across both daemons");
    }
}
