//! Writing another store's contents into a PostgreSQL store as they are,
//! for `herald store copy`: rows written directly (no audit record of
//! their own, audit records byte for byte), then the counts and the chain's
//! head worked out from what was written.

use super::PostgresStore;
use super::pool::{self, CachedTx, Connection};
use super::store::Fail;
use crate::audit_chain::ChainHead;
use crate::model::{AuditRecord, Content, Delivery};
use crate::store::sled_store::Exported;
use crate::store::{PostRecord, Result, StoreError, encode};

/// One batch of rows to import; import in batches of a few thousand.
#[derive(Debug, Default)]
pub struct Import {
    pub deliveries: Vec<Delivery>,
    pub posts: Vec<(String, PostRecord)>,
    pub contents: Vec<(String, Content)>,
    /// Metadata under the keys `Store::meta` reads.
    pub meta: Vec<(String, Vec<u8>)>,
    /// Audit records: (seq, the exact bytes as stored).
    pub audit: Vec<(u64, Vec<u8>)>,
}

impl PostgresStore {
    /// Does the database hold nothing herald wrote (no delivery, post,
    /// content, metadata or audit record)? A copy goes only into an empty one.
    pub fn is_empty(&self) -> Result<bool> {
        let mut conn = self.pool.get()?;
        let row = conn
            .client
            .query_one(
                "SELECT NOT (EXISTS (SELECT 1 FROM deliveries) OR EXISTS (SELECT 1 FROM posts) \
                 OR EXISTS (SELECT 1 FROM contents) OR EXISTS (SELECT 1 FROM meta) OR EXISTS (SELECT 1 FROM audit))",
                &[],
            )
            .map_err(|e| pool::error(self.target(), &e))?;
        Ok(row.get(0))
    }

    /// Up to `n` rows of one table after the key `after`, in key order, as
    /// stored (the key's bytes, the record's bytes): what `herald store copy
    /// --to sled` moves, a page at a time. [`Exported::Meta`] is herald's
    /// metadata under the keys `Store::meta` reads (PostgreSQL keeps its
    /// counts and chain head in tables of their own).
    pub fn export_page(&self, what: Exported, after: Option<&[u8]>, n: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        // The first page, then each after the last key: a range scan of the
        // primary key each time, however large the table.
        let (first, next) = match what {
            Exported::Deliveries => (
                "SELECT id, record FROM deliveries ORDER BY id LIMIT $1",
                "SELECT id, record FROM deliveries WHERE id > $2 ORDER BY id LIMIT $1",
            ),
            Exported::Posts => (
                "SELECT id, record FROM posts ORDER BY id LIMIT $1",
                "SELECT id, record FROM posts WHERE id > $2 ORDER BY id LIMIT $1",
            ),
            Exported::Contents => (
                "SELECT hash, record FROM contents ORDER BY hash LIMIT $1",
                "SELECT hash, record FROM contents WHERE hash > $2 ORDER BY hash LIMIT $1",
            ),
            Exported::Meta => (
                "SELECT key, value FROM meta ORDER BY key LIMIT $1",
                "SELECT key, value FROM meta WHERE key > $2 ORDER BY key LIMIT $1",
            ),
        };
        let rows = match (after, what) {
            (None, _) => self.query(first, &[&n])?,
            (Some(id), Exported::Deliveries) => self.query(next, &[&n, &id])?,
            (Some(key), _) => {
                let key =
                    std::str::from_utf8(key).map_err(|_| StoreError::Corrupt("a text key is not UTF-8".into()))?;
                self.query(next, &[&n, &key])?
            }
        };
        Ok(rows
            .iter()
            .map(|r| {
                let key = match what {
                    Exported::Deliveries => r.get::<_, Vec<u8>>(0),
                    _ => r.get::<_, String>(0).into_bytes(),
                };
                (key, r.get(1))
            })
            .collect())
    }

    /// Write one batch as it is, in one transaction (under the writers'
    /// lock). An audit seq or delivery id already present is an error, not
    /// an overwrite. Call [`PostgresStore::finish_import`] after the last batch.
    pub fn import(&self, batch: &Import) -> Result<()> {
        let mut conn = self.pool.get()?;
        let Connection { client, statements } = &mut *conn;
        let target = self.target().to_string();
        let result = (|| -> std::result::Result<(), Fail> {
            let tx = client.transaction()?;
            let mut tx = CachedTx { tx, statements };
            tx.query_one("SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE", &[])?;
            for d in &batch.deliveries {
                let retrying = d.state == crate::model::State::Pending && d.attempt > 0;
                tx.execute(
                    "INSERT INTO deliveries (id, post, occurrence, account, state, due, retrying, record) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &d.id.0.as_slice(),
                        &d.post_id,
                        &d.occurrence,
                        &d.account,
                        &d.state.name(),
                        &d.due,
                        &retrying,
                        &encode("delivery", d)?,
                    ],
                )?;
            }
            for (id, r) in &batch.posts {
                let planned_occurrence = r.planned.as_ref().map(|p| p.occurrence);
                let targets = r.planned.as_ref().map_or(0, |p| p.targets.len() as i64);
                tx.execute(
                    "INSERT INTO posts (id, timer, planned_occurrence, planned_targets, record) \
                     VALUES ($1, $2, $3, $4, $5)",
                    &[id, &r.timer, &planned_occurrence, &targets, &encode("post record", r)?],
                )?;
            }
            for (hash, content) in &batch.contents {
                tx.execute(
                    "INSERT INTO contents (hash, record) VALUES ($1, $2)",
                    &[hash, &encode("content", content)?],
                )?;
            }
            for (key, value) in &batch.meta {
                tx.execute("INSERT INTO meta (key, value) VALUES ($1, $2)", &[key, value])?;
            }
            for (seq, bytes) in &batch.audit {
                let record: AuditRecord = serde_json::from_slice(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}")))?;
                if record.seq != *seq {
                    return Err(StoreError::Corrupt(format!("audit record under {seq} says seq {}", record.seq)).into());
                }
                tx.execute(
                    "INSERT INTO audit (seq, record, post, account, event, time_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &i64::try_from(*seq).map_err(|_| StoreError::Corrupt(format!("audit seq {seq}")))?,
                        bytes,
                        &record.post,
                        &record.account,
                        &record.event.name(),
                        &record.time.timestamp_millis(),
                    ],
                )?;
            }
            tx.tx.commit()?;
            Ok(())
        })();
        result.map_err(|f| f.into_store(&target))
    }

    /// After the last [`PostgresStore::import`]: count the deliveries per
    /// state, the retrying and the planned ones, and set the chain's head
    /// from the audit log ([`PostgresStore::rebuild_chain_head`]).
    pub fn finish_import(&self) -> Result<ChainHead> {
        {
            let mut conn = self.pool.get()?;
            conn.client
                .batch_execute(
                    "BEGIN; \
                     SELECT seq FROM chain_head WHERE id = 1 FOR UPDATE; \
                     DELETE FROM counts; \
                     INSERT INTO counts (name, n) SELECT state, count(*) FROM deliveries GROUP BY state; \
                     INSERT INTO counts (name, n) SELECT 'retrying', count(*) FROM deliveries WHERE retrying; \
                     INSERT INTO counts (name, n) SELECT 'planned', coalesce(sum(planned_targets), 0) FROM posts; \
                     COMMIT",
                )
                .map_err(|e| {
                    conn.discard();
                    pool::error(self.target(), &e)
                })?;
        }
        self.rebuild_chain_head()
    }
}
