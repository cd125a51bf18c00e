//! [`Store`] on PostgreSQL: the same semantics as the sled store.
//!
//! Each `apply` is one transaction. It first locks the one `chain_head` row
//! (`SELECT … FOR UPDATE`): writers, in this process or in another daemon,
//! take turns there, so the audit records they write are numbered without
//! gaps and chained by [`ChainWriter`] exactly as the sled store does, and
//! the per-state counts (table `counts`) change in the same transaction as
//! the deliveries they count. Records are the bytes the sled store writes.
//!
//! A committed transaction is durable (`synchronous_commit` is checked at
//! connect), so [`Store::flush`] has nothing to do, and [`Store::audit`]
//! shows every committed record: none can be taken back by a crash.

use std::collections::{BTreeMap, HashMap};

use postgres::Row;
use postgres::types::ToSql;

use super::PostgresStore;
use super::pool::{self, CachedTx, Connection};
use crate::audit_chain::{ChainHead, ChainWriter, LegacyDigest};
use crate::model::{AuditRecord, Content, Delivery, DeliveryId, Millis, State};
use crate::store::{
    AuditQuery, Changes, DueKey, Planned, PostRecord, Result, Store, StoreError, corrupt, decode, encode, is_retrying,
};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A failure inside a transaction: the database's, or ours (a record that
/// does not decode or encode).
pub(super) enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl Fail {
    pub(super) fn into_store(self, target: &str) -> StoreError {
        match self {
            Fail::Pg(e) => pool::error(target, &e),
            Fail::Store(e) => e,
        }
    }
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

fn state_named(name: &str) -> Result<State> {
    State::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| corrupt("delivery state", name))
}

fn id_from(bytes: &[u8]) -> Result<DeliveryId> {
    Ok(DeliveryId(bytes.try_into().map_err(|_| corrupt("delivery id", "not 16 bytes"))?))
}

/// A `LIMIT` from a count (`usize::MAX` is "all").
fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const RETRYING: &str = "retrying";
const PLANNED: &str = "planned";

fn head_from(row: &Row) -> ChainHead {
    ChainHead { seq: row.get::<_, i64>(0) as u64, hash: row.get(1), unstarted: row.get(2) }
}

/// Run `sql` (prepared once per connection) on `client`.
fn run(conn: &mut Connection, sql: &'static str, params: Params<'_>) -> std::result::Result<Vec<Row>, postgres::Error> {
    let statement = conn.statement(sql)?;
    conn.client.query(&statement, params)
}

impl PostgresStore {
    /// One read statement on a pooled connection.
    /// A read on a pooled connection the server has closed since (a
    /// restart, a terminated backend) is run again, once, on a new one:
    /// reads change nothing, so running one twice is harmless.
    pub(super) fn query(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let mut conn = self.pool.get()?;
        match run(&mut conn, sql, params) {
            Err(e) if pool::connection_lost(&e) => {
                conn.discard();
                drop(conn);
                let mut conn = self.pool.get()?;
                run(&mut conn, sql, params).map_err(|e| {
                    if pool::connection_lost(&e) {
                        conn.discard();
                    }
                    pool::error(self.target(), &e)
                })
            }
            other => other.map_err(|e| pool::error(self.target(), &e)),
        }
    }

    fn records<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<T>> {
        self.query(sql, params)?.iter().map(|row| decode(what, row.get::<_, &[u8]>(0))).collect()
    }

    fn count(&self, name: &str) -> Result<u64> {
        let rows = self.query("SELECT n FROM counts WHERE name = $1", &[&name])?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// Set the audit chain's head from the audit table: after records were
    /// written there other than by [`Store::apply`] (a copy of another
    /// store's log, bytes unchanged). A log whose last record has no hash
    /// predates the chain: the head is the digest of all of it, and the
    /// next write starts the chain, as on a sled store from before it.
    pub fn rebuild_chain_head(&self) -> Result<ChainHead> {
        let mut conn = self.pool.get()?;
        let target = self.target().to_string();
        let result = (|| -> std::result::Result<ChainHead, Fail> {
            let mut tx = conn.client.transaction()?;
            tx.query_one("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE", &[])?;
            let last = tx.query_opt("SELECT seq, record FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
            let head = match last {
                None => ChainHead::empty(),
                Some(row) => {
                    let seq = row.get::<_, i64>(0) as u64;
                    let record: AuditRecord = decode("audit record", row.get::<_, &[u8]>(1))?;
                    match record.hash {
                        Some(hash) => ChainHead { seq, hash, unstarted: false },
                        None => {
                            let mut digest = LegacyDigest::default();
                            let mut after = 0i64;
                            loop {
                                let rows = tx.query(
                                    "SELECT seq, record FROM audit WHERE seq > $1 ORDER BY seq LIMIT 10000",
                                    &[&after],
                                )?;
                                let Some(last) = rows.last() else { break };
                                after = last.get(0);
                                rows.iter().for_each(|r| digest.add(r.get::<_, &[u8]>(1)));
                            }
                            ChainHead { seq, hash: digest.finish(), unstarted: true }
                        }
                    }
                }
            };
            tx.execute(
                "UPDATE chain_head SET seq = $1, hash = $2, unstarted = $3 WHERE id = 1",
                &[&(head.seq as i64), &head.hash, &head.unstarted],
            )?;
            tx.commit()?;
            Ok(head)
        })();
        result.map_err(|f| match f {
            Fail::Pg(e) => pool::error(&target, &e),
            Fail::Store(e) => e,
        })
    }
}

/// The body of [`Store::apply`], in the open transaction `tx`.
/// Each record is stamped with `writer` (the daemon writing, if it said).
fn apply_in(
    tx: &mut CachedTx<'_, '_>,
    changes: &Changes,
    writer: Option<&str>,
) -> std::result::Result<(Vec<AuditRecord>, ChainHead), Fail> {
    let row = tx.query_one("SELECT seq, hash, unstarted FROM chain_head WHERE id = 1 FOR UPDATE", &[])?;
    let head = head_from(&row);
    let mut chain = ChainWriter::new(&head);
    let mut stored = Vec::with_capacity(changes.deliveries.len() + changes.notes.len() + 1);
    let mut audit_rows: Vec<Vec<u8>> = Vec::new();
    let mut append = |record: &AuditRecord, stored: &mut Vec<AuditRecord>| {
        let (record, bytes) = match writer {
            Some(writer) if record.daemon.is_none() => {
                chain.append(&AuditRecord { daemon: Some(writer.to_string()), ..record.clone() })
            }
            _ => chain.append(record),
        };
        audit_rows.push(bytes);
        stored.push(record);
    };
    if let Some(record) = ChainWriter::start_record(&head) {
        append(&record, &mut stored);
    }
    let mut counters: BTreeMap<&'static str, i64> = BTreeMap::new();

    for (hash, rendered) in &changes.contents {
        let bytes = encode("content", rendered)?;
        tx.execute(
            "INSERT INTO contents (hash, record) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            &[hash, &bytes],
        )?;
    }
    for (key, value) in &changes.meta {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[key, value],
        )?;
    }
    for (id, record) in &changes.posts {
        if let Some(old) = tx.query_opt("SELECT planned_targets FROM posts WHERE id = $1", &[id])? {
            *counters.entry(PLANNED).or_default() -= old.get::<_, i64>(0);
        }
        match record {
            Some(r) => {
                let bytes = encode("post record", r)?;
                let planned_occurrence = r.planned.as_ref().map(|p| p.occurrence);
                let targets = r.planned.as_ref().map_or(0, |p| p.targets.len() as i64);
                *counters.entry(PLANNED).or_default() += targets;
                tx.execute(
                    "INSERT INTO posts (id, timer, planned_occurrence, planned_targets, record) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET timer = excluded.timer, \
                     planned_occurrence = excluded.planned_occurrence, planned_targets = excluded.planned_targets, \
                     record = excluded.record",
                    &[id, &r.timer, &planned_occurrence, &targets, &bytes],
                )?;
            }
            None => {
                tx.execute("DELETE FROM posts WHERE id = $1", &[id])?;
            }
        }
    }

    if !changes.deliveries.is_empty() {
        let ids: Vec<&[u8]> = changes.deliveries.iter().map(|(d, _)| d.id.0.as_slice()).collect();
        let mut current: HashMap<DeliveryId, (State, bool)> = HashMap::new();
        for row in tx.query("SELECT id, state, retrying FROM deliveries WHERE id = ANY($1)", &[&ids])? {
            current.insert(id_from(row.get(0))?, (state_named(row.get(1))?, row.get(2)));
        }
        // The last write of each delivery in this set is the one stored.
        let mut last: HashMap<DeliveryId, usize> = HashMap::new();
        for (i, (delivery, record)) in changes.deliveries.iter().enumerate() {
            if let Some((state, retrying)) = current.get(&delivery.id) {
                *counters.entry(state.name()).or_default() -= 1;
                if *retrying {
                    *counters.entry(RETRYING).or_default() -= 1;
                }
            }
            *counters.entry(delivery.state.name()).or_default() += 1;
            if is_retrying(delivery) {
                *counters.entry(RETRYING).or_default() += 1;
            }
            current.insert(delivery.id, (delivery.state, is_retrying(delivery)));
            last.insert(delivery.id, i);
            append(record, &mut stored);
        }
        let n = last.len();
        let (mut id, mut post, mut occurrence, mut account, mut state, mut due, mut retrying, mut bytes) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, (d, _)) in changes.deliveries.iter().enumerate() {
            if last.get(&d.id) != Some(&i) {
                continue;
            }
            id.push(d.id.0.to_vec());
            post.push(d.post_id.as_str());
            occurrence.push(d.occurrence);
            account.push(d.account.as_str());
            state.push(d.state.name());
            due.push(d.due);
            retrying.push(is_retrying(d));
            bytes.push(encode("delivery", d)?);
        }
        tx.execute(
            "INSERT INTO deliveries (id, post, occurrence, account, state, due, retrying, record) \
             SELECT * FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[], \
             $7::bool[], $8::bytea[]) \
             ON CONFLICT (id) DO UPDATE SET post = excluded.post, occurrence = excluded.occurrence, \
             account = excluded.account, state = excluded.state, due = excluded.due, \
             retrying = excluded.retrying, record = excluded.record",
            &[&id, &post, &occurrence, &account, &state, &due, &retrying, &bytes],
        )?;
    }
    for note in &changes.notes {
        append(note, &mut stored);
    }

    if !stored.is_empty() {
        let seqs: Vec<i64> = stored.iter().map(|r| r.seq as i64).collect();
        let posts: Vec<&str> = stored.iter().map(|r| r.post.as_str()).collect();
        let accounts: Vec<&str> = stored.iter().map(|r| r.account.as_str()).collect();
        let events: Vec<&str> = stored.iter().map(|r| r.event.name()).collect();
        let times: Vec<i64> = stored.iter().map(|r| r.time.timestamp_millis()).collect();
        tx.execute(
            "INSERT INTO audit (seq, record, post, account, event, time_ms) \
             SELECT * FROM unnest($1::int8[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::int8[])",
            &[&seqs, &audit_rows, &posts, &accounts, &events, &times],
        )?;
        let new = chain.head();
        tx.execute(
            "UPDATE chain_head SET seq = $1, hash = $2, unstarted = false WHERE id = 1",
            &[&(new.seq as i64), &new.hash],
        )?;
    }
    let (names, deltas): (Vec<&str>, Vec<i64>) = counters.into_iter().filter(|(_, d)| *d != 0).unzip();
    if !names.is_empty() {
        tx.execute(
            "INSERT INTO counts (name, n) SELECT * FROM unnest($1::text[], $2::int8[]) \
             ON CONFLICT (name) DO UPDATE SET n = counts.n + excluded.n",
            &[&names, &deltas],
        )?;
    }
    let new = chain.head().clone();
    Ok((stored, new))
}

impl Store for PostgresStore {
    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        let mut found = self.records("delivery", "SELECT record FROM deliveries WHERE id = $1", &[&id.0.as_slice()])?;
        Ok(found.pop())
    }

    fn deliveries_of_post(&self, post: &str) -> Result<Vec<Delivery>> {
        self.records("delivery", "SELECT record FROM deliveries WHERE post = $1 ORDER BY occurrence, id", &[&post])
    }

    fn deliveries_of_occurrence(&self, post: &str, occurrence: Millis) -> Result<Vec<Delivery>> {
        self.records(
            "delivery",
            "SELECT record FROM deliveries WHERE post = $1 AND occurrence = $2 ORDER BY id",
            &[&post, &occurrence],
        )
    }

    fn due(&self, after: Option<&DueKey>, until: Millis, n: usize) -> Result<Vec<DueKey>> {
        let rows = match after {
            None => self.query(
                "SELECT due, id, account FROM deliveries WHERE state = 'pending' AND due <= $1 \
                 ORDER BY due, id LIMIT $2",
                &[&until, &limit(n)],
            )?,
            Some(k) => self.query(
                "SELECT due, id, account FROM deliveries WHERE state = 'pending' AND due <= $1 \
                 AND (due, id) > ($3, $4) ORDER BY due, id LIMIT $2",
                &[&until, &limit(n), &k.due, &k.id.0.as_slice()],
            )?,
        };
        rows.iter().map(|r| Ok(DueKey { due: r.get(0), id: id_from(r.get(1))?, account: r.get(2) })).collect()
    }

    fn next_due_after(&self, after: Millis) -> Result<Option<Millis>> {
        let rows = self.query("SELECT min(due) FROM deliveries WHERE state = 'pending' AND due > $1", &[&after])?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    fn in_flight(&self) -> Result<Vec<Delivery>> {
        self.records("delivery", "SELECT record FROM deliveries WHERE state = 'in_flight' ORDER BY id", &[])
    }

    fn deliveries_in_state(&self, state: State, n: usize) -> Result<Vec<Delivery>> {
        if state == State::InFlight {
            return self.in_flight();
        }
        self.records(
            "delivery",
            "SELECT record FROM deliveries WHERE state = $1 ORDER BY id LIMIT $2",
            &[&state.name(), &limit(n)],
        )
    }

    fn post(&self, id: &str) -> Result<Option<PostRecord>> {
        Ok(self.records("post record", "SELECT record FROM posts WHERE id = $1", &[&id])?.pop())
    }

    fn post_ids(&self) -> Result<Vec<String>> {
        Ok(self.query("SELECT id FROM posts ORDER BY id", &[])?.iter().map(|r| r.get(0)).collect())
    }

    fn timers_due(&self, until: Millis) -> Result<Vec<(Millis, String)>> {
        let rows = self.query("SELECT timer, id FROM posts WHERE timer <= $1 ORDER BY timer, id", &[&until])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn next_timer(&self) -> Result<Option<Millis>> {
        Ok(self.query("SELECT min(timer) FROM posts", &[])?.first().and_then(|r| r.get(0)))
    }

    fn content(&self, hash: &str) -> Result<Option<Content>> {
        Ok(self.records("content", "SELECT record FROM contents WHERE hash = $1", &[&hash])?.pop())
    }

    fn content_hashes(&self, prefix: &str, n: usize) -> Result<Vec<String>> {
        // Hashes with the prefix come first from it on, in byte order.
        let rows =
            self.query("SELECT hash FROM contents WHERE hash >= $1 ORDER BY hash LIMIT $2", &[&prefix, &limit(n)])?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).take_while(|h| h.starts_with(prefix)).collect())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.query("SELECT value FROM meta WHERE key = $1", &[&key])?.first().map(|r| r.get(0)))
    }

    fn has_content(&self, hash: &str) -> Result<bool> {
        Ok(!self.query("SELECT 1 FROM contents WHERE hash = $1", &[&hash])?.is_empty())
    }

    fn apply(&self, changes: Changes) -> Result<Vec<AuditRecord>> {
        self.apply_under(changes, None)
    }

    /// Fenced by the scheduler lease: checked first in the same transaction (`super::lease`).
    fn apply_fenced(&self, changes: Changes, fence: &crate::lease::Fence) -> Result<Vec<AuditRecord>> {
        self.apply_under(changes, Some(fence))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn lease(
        &self,
        name: &'static str,
        holder: &str,
        held: Option<u64>,
        length: std::time::Duration,
    ) -> Result<crate::lease::LeaseState> {
        self.lease_row(name, holder, held, length)
    }

    fn release_lease(&self, fence: &crate::lease::Fence) -> Result<()> {
        self.release_lease_row(fence)
    }

    fn commands(&self) -> Option<&dyn crate::forward::CommandQueue> {
        Some(self)
    }

    /// Nothing to do: every applied change is a committed transaction, and
    /// the server made it durable before the commit returned.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        const PAGE: i64 = 1000;
        // Narrow in the database where a filter is exact; `matches` decides.
        let exact = |p: &Option<String>| p.clone().filter(|p| !p.contains('*'));
        let (post, account) = (exact(&query.post), exact(&query.account));
        let events: Option<Vec<&str>> =
            (!query.events.is_empty()).then(|| query.events.iter().map(|e| e.name()).collect());
        let since = query.since.map(|t| t.timestamp_millis());
        let until = query.until.map(|t| t.timestamp_millis());
        let mut after = query.after_seq.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let mut out = Vec::new();
        loop {
            let rows = self.query(
                "SELECT seq, record FROM audit WHERE seq > $1 \
                 AND ($2::text IS NULL OR post = $2) AND ($3::text IS NULL OR account = $3) \
                 AND ($4::text[] IS NULL OR event = ANY($4)) \
                 AND ($5::int8 IS NULL OR time_ms >= $5) AND ($6::int8 IS NULL OR time_ms <= $6) \
                 ORDER BY seq LIMIT $7",
                &[&after, &post, &account, &events, &since, &until, &PAGE],
            )?;
            for row in &rows {
                let record: AuditRecord = decode("audit record", row.get::<_, &[u8]>(1))?;
                if query.matches(&record) {
                    out.push(record);
                    if query.limit.is_some_and(|l| out.len() >= l) {
                        return Ok(out);
                    }
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == PAGE => after = last.get(0),
                _ => return Ok(out),
            }
        }
    }

    fn audit_raw(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let after = after.map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        let rows =
            self.query("SELECT seq, record FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", &[&after, &limit(n)])?;
        Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1))).collect())
    }

    fn audit_head(&self) -> Result<ChainHead> {
        let rows = self.query("SELECT seq, hash, unstarted FROM chain_head WHERE id = 1", &[])?;
        rows.first().map(head_from).ok_or_else(|| corrupt("chain_head", "the row is missing"))
    }

    fn counts(&self) -> Result<BTreeMap<State, u64>> {
        let mut counts: BTreeMap<State, u64> = State::ALL.into_iter().map(|s| (s, 0)).collect();
        for row in self.query("SELECT name, n FROM counts", &[])? {
            let name: &str = row.get(0);
            if let Some(state) = State::ALL.into_iter().find(|s| s.name() == name) {
                counts.insert(state, row.get::<_, i64>(1).max(0) as u64);
            }
        }
        Ok(counts)
    }

    fn retrying(&self) -> Result<u64> {
        self.count(RETRYING)
    }

    fn planned(&self, n: usize) -> Result<Vec<(String, Planned)>> {
        let rows = self.query(
            "SELECT id, record FROM posts WHERE planned_occurrence IS NOT NULL \
             ORDER BY planned_occurrence, id LIMIT $1",
            &[&limit(n)],
        )?;
        let mut out = Vec::new();
        for row in rows {
            let record: PostRecord = decode("post record", row.get::<_, &[u8]>(1))?;
            if let Some(plan) = record.planned {
                out.push((row.get(0), plan));
            }
        }
        Ok(out)
    }

    fn planned_deliveries(&self) -> Result<u64> {
        self.count(PLANNED)
    }
}

impl PostgresStore {
    /// [`Store::apply`], and first, when `fence` is given, the lease check (`super::lease::check_fence`).
    fn apply_under(&self, changes: Changes, fence: Option<&crate::lease::Fence>) -> Result<Vec<AuditRecord>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut retried = false;
        loop {
            let mut conn = self.pool.get()?;
            let Connection { client, statements } = &mut *conn;
            let outcome = match client.transaction() {
                Ok(tx) => {
                    let mut tx = CachedTx { tx, statements };
                    let fenced = match fence {
                        Some(fence) => super::lease::check_fence(&mut tx.tx, fence, self.target()).map_err(Fail::Store),
                        None => Ok(()),
                    };
                    Ok(fenced.and_then(|()| apply_in(&mut tx, &changes, self.writer.as_deref())).and_then(
                        |(stored, _)| {
                            tx.tx.commit()?;
                            Ok(stored)
                        },
                    ))
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Ok(stored)) => return Ok(stored),
                Ok(Err(Fail::Store(e))) => return Err(e),
                // Lost during the write, or at its commit: whether the
                // commit happened is unknown, so it is not run again; the
                // caller sees the error (fail closed) and reads again.
                Ok(Err(Fail::Pg(e))) => {
                    if pool::connection_lost(&e) {
                        conn.discard();
                    }
                    return Err(pool::error(self.target(), &e));
                }
                // A pooled connection the server closed while it was idle:
                // nothing of this write reached the server, so it starts
                // again, once, on a new connection.
                Err(e) if pool::connection_lost(&e) => {
                    conn.discard();
                    if retried {
                        return Err(pool::error(self.target(), &e));
                    }
                    retried = true;
                }
                Err(e) => return Err(pool::error(self.target(), &e)),
            }
        }
    }
}
