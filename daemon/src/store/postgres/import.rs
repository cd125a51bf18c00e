//! Bulk import for `herald store copy`: another store's records written into
//! an empty database as they are, bytes unchanged (the audit chain and the
//! content hashes cover the bytes), with the columns the queries need
//! derived from them, the counts, and the chain's head, all in one
//! transaction: a copy that fails half-way leaves the database empty.

use std::collections::BTreeMap;

use super::PostgresStore;
use super::pool;
use crate::audit_chain::{ChainHead, LegacyDigest};
use crate::model::{AuditRecord, Delivery};
use crate::store::{PostRecord, Result, StoreError};

/// Rows written per statement.
const BATCH: usize = 5_000;

/// What a copy moves: each kind of record as the source stores it.
pub enum Records {
    /// `Delivery` JSON, by id.
    Deliveries(Vec<Vec<u8>>),
    /// `PostRecord` JSON, by post id.
    Posts(Vec<(String, Vec<u8>)>),
    /// Rendered content JSON, by content hash.
    Contents(Vec<(String, Vec<u8>)>),
    /// Metadata values, by key.
    Meta(Vec<(String, Vec<u8>)>),
    /// Audit records' exact bytes, by sequence number, in order.
    Audit(Vec<(u64, Vec<u8>)>),
}

/// How many records of each kind an import wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Imported {
    pub deliveries: u64,
    pub posts: u64,
    pub contents: u64,
    pub meta: u64,
    pub audit: u64,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl PostgresStore {
    /// Does the database hold any herald data (a delivery, post, content,
    /// metadata value or audit record)?
    pub fn holds_data(&self) -> Result<bool> {
        let mut conn = self.pool.get()?;
        let row = conn
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM deliveries) OR EXISTS (SELECT 1 FROM posts) \
                 OR EXISTS (SELECT 1 FROM contents) OR EXISTS (SELECT 1 FROM meta) OR EXISTS (SELECT 1 FROM audit)",
                &[],
            )
            .map_err(|e| pool::error(self.target(), &e))?;
        Ok(row.get(0))
    }

    /// Write every batch `source` yields into this database, which must
    /// hold no herald data, in one transaction; then the counts and the
    /// audit chain's head, as `apply` would have left them. Audit batches
    /// come in sequence order.
    pub fn import(&self, source: impl Iterator<Item = Result<Records>>) -> Result<Imported> {
        let target = self.target().to_string();
        let pg = |e: postgres::Error| pool::error(&target, &e);
        let mut conn = self.pool.get()?;
        let mut tx = conn.client.transaction().map_err(pg)?;
        // Taken first, as every writer does: no write can slip in meanwhile.
        tx.query_one("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE", &[]).map_err(pg)?;
        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        let mut imported = Imported::default();
        let mut legacy = LegacyDigest::default();
        let mut last: Option<(u64, Option<String>)> = None;
        for batch in source {
            match batch? {
                Records::Deliveries(rows) => {
                    for chunk in rows.chunks(BATCH) {
                        write_deliveries(&mut tx, chunk, &mut counts).map_err(|e| e.into_store(&target))?;
                    }
                    imported.deliveries += rows.len() as u64;
                }
                Records::Posts(rows) => {
                    for chunk in rows.chunks(BATCH) {
                        write_posts(&mut tx, chunk, &mut counts).map_err(|e| e.into_store(&target))?;
                    }
                    imported.posts += rows.len() as u64;
                }
                Records::Contents(rows) => {
                    for chunk in rows.chunks(BATCH) {
                        let (hashes, records): (Vec<&str>, Vec<&[u8]>) =
                            chunk.iter().map(|(h, r)| (h.as_str(), r.as_slice())).unzip();
                        tx.execute(
                            "INSERT INTO contents (hash, record) SELECT * FROM unnest($1::text[], $2::bytea[])",
                            &[&hashes, &records],
                        )
                        .map_err(pg)?;
                    }
                    imported.contents += rows.len() as u64;
                }
                Records::Meta(rows) => {
                    for chunk in rows.chunks(BATCH) {
                        let (keys, values): (Vec<&str>, Vec<&[u8]>) =
                            chunk.iter().map(|(k, v)| (k.as_str(), v.as_slice())).unzip();
                        tx.execute(
                            "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::bytea[])",
                            &[&keys, &values],
                        )
                        .map_err(pg)?;
                    }
                    imported.meta += rows.len() as u64;
                }
                Records::Audit(rows) => {
                    for chunk in rows.chunks(BATCH) {
                        write_audit(&mut tx, chunk, &mut legacy, &mut last).map_err(|e| e.into_store(&target))?;
                    }
                    imported.audit += rows.len() as u64;
                }
            }
        }
        // The head as the sled store derives it: the last record's hash, or
        // for a log from before the chain the digest of all of it.
        let head = match last {
            None => ChainHead::empty(),
            Some((seq, Some(hash))) => ChainHead { seq, hash, unstarted: false },
            Some((seq, None)) => ChainHead { seq, hash: legacy.finish(), unstarted: true },
        };
        tx.execute(
            "UPDATE chain_head SET seq = $1, hash = $2, unstarted = $3 WHERE id = 1",
            &[&(head.seq as i64), &head.hash, &head.unstarted],
        )
        .map_err(pg)?;
        let (names, values): (Vec<&str>, Vec<i64>) = counts.into_iter().unzip();
        tx.execute(
            "INSERT INTO counts (name, n) SELECT * FROM unnest($1::text[], $2::int8[]) \
             ON CONFLICT (name) DO UPDATE SET n = excluded.n",
            &[&names, &values],
        )
        .map_err(pg)?;
        tx.commit().map_err(pg)?;
        Ok(imported)
    }
}

/// A failure while writing a batch: the database's, or a record that does not decode.
enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
}

impl Fail {
    fn into_store(self, target: &str) -> StoreError {
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

fn write_deliveries(
    tx: &mut postgres::Transaction<'_>,
    rows: &[Vec<u8>],
    counts: &mut BTreeMap<&'static str, i64>,
) -> std::result::Result<(), Fail> {
    let decoded: Vec<Delivery> = rows
        .iter()
        .map(|bytes| serde_json::from_slice(bytes).map_err(|e| corrupt("delivery", e)))
        .collect::<Result<_>>()?;
    for d in &decoded {
        *counts.entry(d.state.name()).or_default() += 1;
        if d.state == crate::model::State::Pending && d.attempt > 0 {
            *counts.entry("retrying").or_default() += 1;
        }
    }
    let ids: Vec<&[u8]> = decoded.iter().map(|d| d.id.0.as_slice()).collect();
    let posts: Vec<&str> = decoded.iter().map(|d| d.post_id.as_str()).collect();
    let occurrences: Vec<i64> = decoded.iter().map(|d| d.occurrence).collect();
    let accounts: Vec<&str> = decoded.iter().map(|d| d.account.as_str()).collect();
    let states: Vec<&str> = decoded.iter().map(|d| d.state.name()).collect();
    let dues: Vec<i64> = decoded.iter().map(|d| d.due).collect();
    let retrying: Vec<bool> =
        decoded.iter().map(|d| d.state == crate::model::State::Pending && d.attempt > 0).collect();
    let records: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
    tx.execute(
        "INSERT INTO deliveries (id, post, occurrence, account, state, due, retrying, record) \
         SELECT * FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::int8[], \
         $7::bool[], $8::bytea[])",
        &[&ids, &posts, &occurrences, &accounts, &states, &dues, &retrying, &records],
    )?;
    Ok(())
}

fn write_posts(
    tx: &mut postgres::Transaction<'_>,
    rows: &[(String, Vec<u8>)],
    counts: &mut BTreeMap<&'static str, i64>,
) -> std::result::Result<(), Fail> {
    let decoded: Vec<PostRecord> = rows
        .iter()
        .map(|(_, bytes)| serde_json::from_slice(bytes).map_err(|e| corrupt("post record", e)))
        .collect::<Result<_>>()?;
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let timers: Vec<Option<i64>> = decoded.iter().map(|r| r.timer).collect();
    let planned: Vec<Option<i64>> = decoded.iter().map(|r| r.planned.as_ref().map(|p| p.occurrence)).collect();
    let targets: Vec<i64> = decoded.iter().map(|r| r.planned.as_ref().map_or(0, |p| p.targets.len() as i64)).collect();
    *counts.entry("planned").or_default() += targets.iter().sum::<i64>();
    let records: Vec<&[u8]> = rows.iter().map(|(_, bytes)| bytes.as_slice()).collect();
    tx.execute(
        "INSERT INTO posts (id, timer, planned_occurrence, planned_targets, record) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[])",
        &[&ids, &timers, &planned, &targets, &records],
    )?;
    Ok(())
}

fn write_audit(
    tx: &mut postgres::Transaction<'_>,
    rows: &[(u64, Vec<u8>)],
    legacy: &mut LegacyDigest,
    last: &mut Option<(u64, Option<String>)>,
) -> std::result::Result<(), Fail> {
    let mut decoded = Vec::with_capacity(rows.len());
    for (seq, bytes) in rows {
        let record: AuditRecord = serde_json::from_slice(bytes).map_err(|e| corrupt("audit record", e))?;
        legacy.add(bytes);
        *last = Some((*seq, record.hash.clone()));
        decoded.push(record);
    }
    let seqs: Vec<i64> = rows.iter().map(|(seq, _)| *seq as i64).collect();
    let records: Vec<&[u8]> = rows.iter().map(|(_, bytes)| bytes.as_slice()).collect();
    let posts: Vec<&str> = decoded.iter().map(|r| r.post.as_str()).collect();
    let accounts: Vec<&str> = decoded.iter().map(|r| r.account.as_str()).collect();
    let events: Vec<&str> = decoded.iter().map(|r| r.event.name()).collect();
    let times: Vec<i64> = decoded.iter().map(|r| r.time.timestamp_millis()).collect();
    tx.execute(
        "INSERT INTO audit (seq, record, post, account, event, time_ms) \
         SELECT * FROM unnest($1::int8[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::int8[])",
        &[&seqs, &records, &posts, &accounts, &events, &times],
    )?;
    Ok(())
}
