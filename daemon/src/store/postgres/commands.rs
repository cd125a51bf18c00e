//! The commands a standby forwards to the leader (`crate::forward`), on
//! PostgreSQL: a row per command in `commands` (migration 3), timed by the
//! database's clock. The standby inserts it; the leader marks it taken
//! (`FOR UPDATE SKIP LOCKED`, under its fence) in a transaction of its own
//! before it carries it out, then writes the answer: a command is carried
//! out at most once, by a daemon that held the lease when it took it.

use std::time::Duration;

use super::{PostgresStore, pool};
use crate::forward::{CommandQueue, Taken};
use crate::lease::Fence;
use crate::store::Result;

/// The migration that adds the commands table (appended to `schema::MIGRATIONS`).
pub const MIGRATION: &str = r#"
-- Changes a standby forwards to the leader (retry, cancel, pause, resume,
-- approve, recall): the request (JSON), who forwarded it and until when it
-- waits; who took it and when; the answer (JSON) and when. Timed by the
-- database's clock.
CREATE TABLE commands (
    id bigserial PRIMARY KEY,
    request text NOT NULL,
    forwarded_by text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    -- the standby stops waiting then: a command not taken by then is never taken
    expires timestamptz NOT NULL,
    taken_by text,
    taken timestamptz,
    answer text,
    answered_by text,
    answered timestamptz
);
-- The leader's look for waiting commands: cheap when there are none.
CREATE INDEX commands_waiting ON commands (id) WHERE taken IS NULL;
"#;

/// Answered commands are deleted this long after their answer; commands
/// taken and never answered (the leader died) and never-taken ones, this
/// long after they were created.
const KEEP: &str = "1 hour";

impl CommandQueue for PostgresStore {
    fn submit(&self, request: &str, by: &str, wait: Duration) -> Result<i64> {
        let target = self.target().to_string();
        let mut conn = self.pool.get()?;
        let row = conn
            .client
            .query_one(
                "INSERT INTO commands (request, forwarded_by, expires)
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond') RETURNING id",
                &[&request, &by, &(wait.as_millis() as f64)],
            )
            .map_err(|e| pool::error(&target, &e))?;
        Ok(row.get(0))
    }

    fn answer_of(&self, id: i64) -> Result<Option<(String, String)>> {
        let rows =
            self.query("SELECT answer, answered_by FROM commands WHERE id = $1 AND answer IS NOT NULL", &[&id])?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }

    fn withdraw(&self, id: i64) -> Result<Option<String>> {
        let target = self.target().to_string();
        let err = |e: postgres::Error| pool::error(&target, &e);
        let mut conn = self.pool.get()?;
        let deleted =
            conn.client.execute("DELETE FROM commands WHERE id = $1 AND taken IS NULL", &[&id]).map_err(err)?;
        if deleted == 1 {
            return Ok(None);
        }
        let row = conn.client.query_opt("SELECT taken_by FROM commands WHERE id = $1", &[&id]).map_err(err)?;
        Ok(Some(row.and_then(|r| r.get::<_, Option<String>>(0)).unwrap_or_default()))
    }

    fn take(&self, fence: &Fence) -> Result<Option<Taken>> {
        let target = self.target().to_string();
        let err = |e: postgres::Error| pool::error(&target, &e);
        let mut conn = self.pool.get()?;
        let mut tx = conn.client.transaction().map_err(err)?;
        let row = tx
            .query_opt(
                "UPDATE commands SET taken_by = $1, taken = now()
                 WHERE id = (SELECT id FROM commands WHERE taken IS NULL AND expires > now()
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, request, forwarded_by",
                &[&fence.holder],
            )
            .map_err(err)?;
        let Some(row) = row else {
            return Ok(None); // rolled back: nothing was written
        };
        // Taken only by a daemon that leads now: its scheduler's writes are fenced too.
        super::lease::check_fence(&mut tx, fence, &target)?;
        tx.commit().map_err(err)?;
        Ok(Some(Taken { id: row.get(0), request: row.get(1), forwarded_by: row.get(2) }))
    }

    fn answer(&self, id: i64, answer: &str, by: &str) -> Result<()> {
        let target = self.target().to_string();
        let mut conn = self.pool.get()?;
        conn.client
            .execute(
                "UPDATE commands SET answer = $2, answered_by = $3, answered = now() WHERE id = $1",
                &[&id, &answer, &by],
            )
            .map_err(|e| pool::error(&target, &e))?;
        Ok(())
    }

    fn sweep(&self) -> Result<u64> {
        let target = self.target().to_string();
        let mut conn = self.pool.get()?;
        let sql = format!(
            "DELETE FROM commands WHERE answered < now() - interval '{KEEP}'
                OR (answered IS NULL AND created < now() - interval '{KEEP}')"
        );
        conn.client.execute(sql.as_str(), &[]).map_err(|e| pool::error(&target, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::SCHEDULER;
    use crate::store::StoreError;

    const LONG: Duration = Duration::from_secs(600);

    /// A standby's and a leader's view of one fresh database; `host-a` leads.
    fn two() -> Option<(PostgresStore, PostgresStore, Fence)> {
        let url = super::super::testing::fresh_database()?;
        let (a, b) = (PostgresStore::connect(&url, 2).unwrap(), PostgresStore::connect(&url, 2).unwrap());
        a.lease_row(SCHEDULER, "host-a", None, LONG).unwrap();
        Some((a, b, Fence { name: SCHEDULER, holder: "host-a".into(), epoch: 1 }))
    }

    fn sql(store: &PostgresStore, statement: &str) {
        store.pool.get().unwrap().client.batch_execute(statement).unwrap();
    }

    #[test]
    fn postgres_a_forwarded_command_is_taken_once_and_its_answer_read_back() {
        let Some((leader, standby, fence)) = two() else { return };
        assert!(leader.take(&fence).unwrap().is_none(), "nothing waits yet");
        let id = standby.submit(r#"{"command":"retry"}"#, "host-b", LONG).unwrap();
        assert_eq!(standby.answer_of(id).unwrap(), None);
        let taken = leader.take(&fence).unwrap().expect("the leader takes the waiting command");
        assert_eq!(
            (taken.id, taken.request.as_str(), taken.forwarded_by.as_str()),
            (id, r#"{"command":"retry"}"#, "host-b")
        );
        assert!(leader.take(&fence).unwrap().is_none(), "a taken command is never taken again");
        assert_eq!(standby.withdraw(id).unwrap().as_deref(), Some("host-a"), "taken: too late to withdraw");
        leader.answer(id, r#"{"outcome":"ok"}"#, "host-a").unwrap();
        assert_eq!(standby.answer_of(id).unwrap(), Some((r#"{"outcome":"ok"}"#.into(), "host-a".into())));
    }

    #[test]
    fn postgres_a_deposed_leader_takes_no_command() {
        let Some((leader, standby, fence)) = two() else { return };
        let id = standby.submit("{}", "host-b", LONG).unwrap();
        let stale = Fence { epoch: 0, ..fence };
        let refused = leader.take(&stale).unwrap_err();
        assert!(matches!(refused, StoreError::NotLeader(_)), "{refused}");
        assert_eq!(standby.withdraw(id).unwrap(), None, "still waiting: withdrawn untouched");
    }

    #[test]
    fn postgres_a_command_withdrawn_or_past_its_wait_is_never_taken() {
        let Some((leader, standby, fence)) = two() else { return };
        let withdrawn = standby.submit("{}", "host-b", LONG).unwrap();
        assert_eq!(standby.withdraw(withdrawn).unwrap(), None);
        standby.submit("{}", "host-b", Duration::ZERO).unwrap();
        assert!(leader.take(&fence).unwrap().is_none(), "withdrawn, or its standby stopped waiting");
    }

    #[test]
    fn postgres_the_sweep_deletes_old_commands_only() {
        let Some((leader, standby, fence)) = two() else { return };
        let old = standby.submit("{}", "host-b", LONG).unwrap();
        leader.take(&fence).unwrap().unwrap();
        leader.answer(old, "{}", "host-a").unwrap();
        let fresh = standby.submit("{}", "host-b", LONG).unwrap();
        let lost = standby.submit("{}", "host-b", LONG).unwrap();
        sql(&leader, &format!("UPDATE commands SET answered = now() - interval '2 hours' WHERE id = {old}"));
        sql(&leader, &format!("UPDATE commands SET created = now() - interval '2 hours' WHERE id = {lost}"));
        assert_eq!(leader.sweep().unwrap(), 2);
        assert!(standby.answer_of(old).unwrap().is_none());
        assert_eq!(standby.withdraw(fresh).unwrap(), None, "the recent command is still there");
    }
}
