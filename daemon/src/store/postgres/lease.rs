//! The scheduler lease on PostgreSQL (see `crate::lease`): a row per lease
//! in `leases` (migration 2), timed by the database's clock (`now()`),
//! never the hosts'. Taking over an expired lease adds one to its epoch,
//! the fencing token that every fenced write checks in its transaction.

use std::time::Duration;

use postgres::Transaction;

use super::{PostgresStore, pool};
use crate::lease::{Fence, LeaseState};
use crate::store::{Result, StoreError};

/// The migration that adds the lease table (appended to `schema::MIGRATIONS`).
pub const MIGRATION: &str = r#"
-- The scheduler lease (one row per lease name): who holds it, its epoch
-- (the fencing token, one more on every takeover), and until when, by the
-- database's clock.
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    expires timestamptz NOT NULL
);
"#;

/// Who holds the lease, as a standby reports it, while an offline `herald`
/// command (`herald retry` on a stopped host, `herald store copy`) holds
/// the database alone.
pub const OFFLINE_COMMAND: &str = "an offline herald command (it holds the database alone until it ends)";

impl PostgresStore {
    /// Take (`held` None: a standby, or a leader that stepped down) or renew
    /// (`held` = the epoch this daemon holds) a lease. Taking succeeds only
    /// when the lease is free or expired (or already this holder's), and
    /// always starts a new epoch; renewing succeeds only while the same
    /// epoch is held and unexpired.
    pub fn lease_row(&self, name: &str, holder: &str, held: Option<u64>, length: Duration) -> Result<LeaseState> {
        let target = self.target().to_string();
        let err = |e: postgres::Error| pool::error(&target, &e);
        let ms = length.as_millis() as f64;
        let mut conn = self.pool.get()?;
        let mut tx = conn.client.transaction().map_err(err)?;
        if held.is_none() {
            // An offline `herald` command holds the database alone
            // (`claim_exclusive`, a session lock on the same key): no daemon
            // takes the lease while it writes. The command checked that no
            // lease was live after taking its lock, so one of the two waits.
            let free = tx
                .query_one("SELECT pg_try_advisory_xact_lock_shared($1)", &[&super::EXCLUSIVE_LOCK])
                .map_err(err)?
                .get::<_, bool>(0);
            if !free {
                let epoch = tx
                    .query_opt("SELECT epoch FROM leases WHERE name = $1", &[&name])
                    .map_err(err)?
                    .map_or(0, |row| row.get::<_, i64>(0) as u64);
                tx.commit().map_err(err)?;
                return Ok(LeaseState::Other { holder: OFFLINE_COMMAND.to_string(), epoch });
            }
        }
        let client = &mut tx;
        let taken = match held {
            None => client
                .query_opt(
                    "INSERT INTO leases (name, holder, epoch, expires)
                     VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond')
                     ON CONFLICT (name) DO UPDATE
                        SET holder = EXCLUDED.holder, epoch = leases.epoch + 1, expires = EXCLUDED.expires
                        WHERE leases.expires < now() OR leases.holder = EXCLUDED.holder
                     RETURNING epoch",
                    &[&name, &holder, &ms],
                )
                .map_err(err)?,
            Some(epoch) => client
                .query_opt(
                    "UPDATE leases SET expires = now() + $3 * interval '1 millisecond'
                     WHERE name = $1 AND holder = $2 AND epoch = $4 AND expires > now()
                     RETURNING epoch",
                    &[&name, &holder, &ms, &(epoch as i64)],
                )
                .map_err(err)?,
        };
        let state = match taken {
            Some(row) => LeaseState::Held { epoch: row.get::<_, i64>(0) as u64 },
            None => {
                let row = client
                    .query_opt("SELECT holder, epoch FROM leases WHERE name = $1", &[&name])
                    .map_err(err)?
                    .ok_or_else(|| {
                        StoreError::Backend(format!("PostgreSQL database {target}: the lease {name} vanished"))
                    })?;
                LeaseState::Other { holder: row.get(0), epoch: row.get::<_, i64>(1) as u64 }
            }
        };
        tx.commit().map_err(err)?;
        Ok(state)
    }

    /// Who holds the lease `name` now (not expired), if anyone.
    pub fn live_holder(&self, name: &str) -> Result<Option<String>> {
        let rows = self.query("SELECT holder FROM leases WHERE name = $1 AND expires > now()", &[&name])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// A clean stop: the lease expires now, so a standby takes it at its next try.
    pub fn release_lease_row(&self, fence: &Fence) -> Result<()> {
        let target = self.target().to_string();
        let mut conn = self.pool.get()?;
        conn.client
            .execute(
                "UPDATE leases SET expires = '-infinity' WHERE name = $1 AND holder = $2 AND epoch = $3",
                &[&fence.name, &fence.holder, &(fence.epoch as i64)],
            )
            .map_err(|e| pool::error(&target, &e))?;
        Ok(())
    }
}

/// In a write's transaction, first: does `fence` still hold its lease (same
/// holder and epoch, not expired by the database's clock)? The row is
/// locked `FOR SHARE` until the transaction ends, so a takeover (an UPDATE
/// of that row) waits for this write to commit and then recovers what it
/// marked in flight; a write after a takeover finds the new epoch and is
/// refused with [`StoreError::NotLeader`].
pub fn check_fence(tx: &mut Transaction<'_>, fence: &Fence, target: &str) -> Result<()> {
    let row = tx
        .query_opt(
            "SELECT holder, epoch, expires > clock_timestamp() FROM leases WHERE name = $1 FOR SHARE",
            &[&fence.name],
        )
        .map_err(|e| pool::error(target, &e))?;
    let why = match row {
        None => "no daemon holds the scheduler lease".to_string(),
        Some(row) => {
            let (holder, epoch, live): (String, i64, bool) = (row.get(0), row.get(1), row.get(2));
            if holder == fence.holder && epoch as u64 == fence.epoch && live {
                return Ok(());
            }
            if holder == fence.holder && epoch as u64 == fence.epoch {
                format!("this daemon's scheduler lease (epoch {epoch}) expired")
            } else {
                format!(
                    "the scheduler lease was taken over by {holder} (epoch {epoch}, this daemon had {})",
                    fence.epoch
                )
            }
        }
    };
    Err(StoreError::NotLeader(why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SCHEDULER;

    const LONG: Duration = Duration::from_secs(600);

    /// Two stores on one fresh database: two daemons' views of it.
    fn two() -> Option<(PostgresStore, PostgresStore)> {
        let url = super::super::testing::fresh_database()?;
        Some((PostgresStore::connect(&url, 2).unwrap(), PostgresStore::connect(&url, 2).unwrap()))
    }

    fn fence(holder: &str, epoch: u64) -> Fence {
        Fence { name: SCHEDULER, holder: holder.into(), epoch }
    }

    /// Run `check_fence` in a transaction of `store`, as a fenced write does.
    fn fenced_write(store: &PostgresStore, fence: &Fence) -> Result<()> {
        let mut conn = store.pool.get()?;
        let mut tx = conn.client.transaction().unwrap();
        check_fence(&mut tx, fence, "test")?;
        tx.commit().unwrap();
        Ok(())
    }

    /// Wait (a safety-net deadline, not a timing assertion) until `b` takes the lease.
    fn take_when_expired(b: &PostgresStore, holder: &str) -> LeaseState {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let state = b.lease_row(SCHEDULER, holder, None, LONG).unwrap();
            if matches!(state, LeaseState::Held { .. }) || std::time::Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn postgres_one_daemon_holds_the_lease_and_the_other_sees_who() {
        let Some((a, b)) = two() else { return };
        assert_eq!(a.lease_row(SCHEDULER, "host-a pid 1", None, LONG).unwrap(), LeaseState::Held { epoch: 1 });
        assert_eq!(
            b.lease_row(SCHEDULER, "host-b pid 2", None, LONG).unwrap(),
            LeaseState::Other { holder: "host-a pid 1".into(), epoch: 1 }
        );
        // Renewing keeps the epoch; the standby cannot renew what it does not hold.
        assert_eq!(a.lease_row(SCHEDULER, "host-a pid 1", Some(1), LONG).unwrap(), LeaseState::Held { epoch: 1 });
        assert!(matches!(b.lease_row(SCHEDULER, "host-b pid 2", Some(1), LONG).unwrap(), LeaseState::Other { .. }));
        fenced_write(&a, &fence("host-a pid 1", 1)).unwrap();
        let refused = fenced_write(&b, &fence("host-b pid 2", 1)).unwrap_err();
        assert!(matches!(refused, StoreError::NotLeader(_)), "{refused}");
        assert!(refused.to_string().contains("host-a pid 1"), "{refused}");
    }

    #[test]
    fn postgres_an_expired_lease_is_taken_over_with_a_new_epoch_and_the_old_leader_is_fenced() {
        let Some((a, b)) = two() else { return };
        // A leader that stops renewing (dead, paused, cut off): a lease of 1 ms.
        assert_eq!(
            a.lease_row(SCHEDULER, "host-a", None, Duration::from_millis(1)).unwrap(),
            LeaseState::Held { epoch: 1 }
        );
        assert_eq!(take_when_expired(&b, "host-b"), LeaseState::Held { epoch: 2 });
        // The old leader's renewal and its writes are refused from now on.
        assert_eq!(
            a.lease_row(SCHEDULER, "host-a", Some(1), LONG).unwrap(),
            LeaseState::Other { holder: "host-b".into(), epoch: 2 }
        );
        let refused = fenced_write(&a, &fence("host-a", 1)).unwrap_err();
        assert!(matches!(refused, StoreError::NotLeader(_)), "{refused}");
        assert!(refused.to_string().contains("taken over by host-b (epoch 2"), "{refused}");
        fenced_write(&b, &fence("host-b", 2)).unwrap();
    }

    #[test]
    fn postgres_an_expired_lease_fences_its_holder_even_before_anyone_takes_it() {
        let Some((a, _b)) = two() else { return };
        a.lease_row(SCHEDULER, "host-a", None, Duration::from_millis(1)).unwrap();
        // Wait for the database's clock to pass the expiry (a safety-net deadline only).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let refused = loop {
            match fenced_write(&a, &fence("host-a", 1)) {
                Err(e) => break e,
                Ok(()) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(()) => panic!("an expired lease still let its holder write"),
            }
        };
        assert!(refused.to_string().contains("expired"), "{refused}");
        // Renewing an expired lease is refused too: the holder takes it again, with a new epoch.
        assert!(matches!(a.lease_row(SCHEDULER, "host-a", Some(1), LONG).unwrap(), LeaseState::Other { .. }));
        assert_eq!(a.lease_row(SCHEDULER, "host-a", None, LONG).unwrap(), LeaseState::Held { epoch: 2 });
    }

    #[test]
    fn postgres_a_takeover_waits_for_a_fenced_write_in_progress_to_commit() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let Some((a, b)) = two() else { return };
        a.lease_row(SCHEDULER, "host-a", None, Duration::from_millis(300)).unwrap();
        // host-a's write passes the fence, then is slow to commit; its lease expires meanwhile.
        let mut conn = a.pool.get().unwrap();
        let mut tx = conn.client.transaction().unwrap();
        check_fence(&mut tx, &fence("host-a", 1), "test").unwrap();
        tx.execute("CREATE TABLE marked (x int)", &[]).unwrap();
        let committing = AtomicBool::new(false);
        let (taken, committed_first) = std::thread::scope(|s| {
            // host-b keeps trying to take over: it must not get the lease before host-a's write commits.
            let taker = s.spawn(|| {
                let state = take_when_expired(&b, "host-b");
                (state, committing.load(Ordering::SeqCst))
            });
            std::thread::sleep(Duration::from_millis(1_000));
            committing.store(true, Ordering::SeqCst);
            tx.commit().unwrap();
            taker.join().unwrap()
        });
        assert_eq!(taken, LeaseState::Held { epoch: 2 });
        assert!(committed_first, "host-b took the lease while host-a's fenced write was still open");
        // So what host-a marked under its lease is there for host-b's recovery.
        b.pool.get().unwrap().client.query_one("SELECT count(*) FROM marked", &[]).unwrap();
    }

    /// An offline command claims the database, then checks that no daemon
    /// leads; a standby that tries to take the lease meanwhile must wait
    /// for the command to end, or two writers would share the database.
    #[test]
    fn postgres_no_daemon_takes_the_lease_while_an_offline_command_holds_the_database() {
        let Some(url) = super::super::testing::fresh_database() else { return };
        let (cli, daemon) = (PostgresStore::connect(&url, 2).unwrap(), PostgresStore::connect(&url, 2).unwrap());
        cli.claim_exclusive().unwrap();
        assert_eq!(cli.live_holder(SCHEDULER).unwrap(), None, "the command found no leader and writes");
        assert_eq!(
            daemon.lease_row(SCHEDULER, "host-b", None, LONG).unwrap(),
            LeaseState::Other { holder: OFFLINE_COMMAND.into(), epoch: 0 }
        );
        assert_eq!(cli.live_holder(SCHEDULER).unwrap(), None, "still nobody leads while the command runs");
        drop(cli); // the command ends: its session, and its lock, go
        assert_eq!(daemon.lease_row(SCHEDULER, "host-b", None, LONG).unwrap(), LeaseState::Held { epoch: 1 });
        // And the other way round: a command finds the leader and refuses (`store::open`).
        let cli = PostgresStore::connect(&url, 2).unwrap();
        cli.claim_exclusive().unwrap();
        assert_eq!(cli.live_holder(SCHEDULER).unwrap().as_deref(), Some("host-b"));
    }

    #[test]
    fn postgres_a_released_lease_is_taken_at_once() {
        let Some((a, b)) = two() else { return };
        assert_eq!(b.live_holder(SCHEDULER).unwrap(), None);
        a.lease_row(SCHEDULER, "host-a", None, LONG).unwrap();
        assert_eq!(b.live_holder(SCHEDULER).unwrap().as_deref(), Some("host-a"));
        a.release_lease_row(&fence("host-a", 1)).unwrap();
        assert_eq!(b.live_holder(SCHEDULER).unwrap(), None, "released: nobody leads");
        assert_eq!(b.lease_row(SCHEDULER, "host-b", None, LONG).unwrap(), LeaseState::Held { epoch: 2 });
    }
}
