//! The PostgreSQL schema, as versioned migrations applied at connect.
//!
//! [`MIGRATIONS`] is the whole history: each entry's SQL runs once, in
//! version order, and `herald_schema` records the highest applied. All
//! pending migrations run in one transaction under a transaction-level
//! advisory lock, so two daemons starting at once migrate once; a database
//! whose version is above the last entry was written by a newer herald and
//! is refused ([`StoreError::NewerSchema`]), left as it is.
//!
//! To change the schema, append an entry with the next version; never edit
//! one that has shipped.
//!
//! Text columns that are ordered (`post`, ids, content hashes) use the "C"
//! collation: byte order, as the sled backend orders its keys, whatever the
//! database's locale. Records are stored as the sled store stores them (the
//! same JSON bytes, audit records byte for byte), so both backends hold the
//! same bytes and `herald store copy` moves them unchanged.

use postgres::Transaction;

use super::pool;
use crate::store::{Result, StoreError};

/// The key of the transaction advisory lock held while migrating ("herald" + 1).
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_0001;

/// (version, SQL), in version order.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE deliveries (
    id bytea PRIMARY KEY,
    post text COLLATE "C" NOT NULL,
    occurrence bigint NOT NULL,
    account text COLLATE "C" NOT NULL,
    state text NOT NULL,
    due bigint NOT NULL,
    -- pending after at least one attempt
    retrying boolean NOT NULL,
    -- the delivery as the sled store encodes it (JSON)
    record bytea NOT NULL
);
-- due(), next_due_after(): pending deliveries in due order
CREATE INDEX deliveries_due ON deliveries (due, id) WHERE state = 'pending';
-- deliveries_of_post(), deliveries_of_occurrence()
CREATE INDEX deliveries_post ON deliveries (post, occurrence, id);
-- in_flight(), deliveries_in_state()
CREATE INDEX deliveries_state ON deliveries (state, id);

CREATE TABLE posts (
    id text COLLATE "C" PRIMARY KEY,
    timer bigint,
    planned_occurrence bigint,
    -- how many deliveries the planned occurrence will create
    planned_targets bigint NOT NULL DEFAULT 0,
    record bytea NOT NULL
);
CREATE INDEX posts_timer ON posts (timer, id) WHERE timer IS NOT NULL;
CREATE INDEX posts_planned ON posts (planned_occurrence, id) WHERE planned_occurrence IS NOT NULL;

CREATE TABLE contents (
    hash text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE meta (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);

-- The audit log: each record's exact bytes (the hash chain covers them),
-- and columns to filter on.
CREATE TABLE audit (
    seq bigint PRIMARY KEY,
    record bytea NOT NULL,
    post text COLLATE "C",
    account text COLLATE "C",
    event text,
    time_ms bigint
);

-- The head of the audit chain: one row, locked by every write (FOR UPDATE),
-- which numbers the log gaplessly across writers and daemons.
CREATE TABLE chain_head (
    id smallint PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    hash text NOT NULL,
    -- the log holds records from before the chain and none after
    unstarted boolean NOT NULL
);
INSERT INTO chain_head VALUES (1, 0, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', false);

-- Deliveries per state, retrying and planned deliveries, kept in step by
-- every write in its transaction.
CREATE TABLE counts (
    name text PRIMARY KEY,
    n bigint NOT NULL
);
"#,
    ),
    // The scheduler lease: several daemons, one leader (`super::lease`).
    (2, super::lease::MIGRATION),
    // Changes a standby forwards to the leader (`super::commands`).
    (3, super::commands::MIGRATION),
];

/// The schema version this build writes: the last migration's.
pub fn known() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Bring the database to [`known`], or refuse it if it is newer. Runs in
/// `tx`, which the caller commits.
pub fn migrate(tx: &mut Transaction<'_>, target: &str) -> Result<u32> {
    let err = |e: postgres::Error| pool::error(target, &e);
    // A migration of a large table may take longer than one statement is
    // allowed to otherwise, and so may waiting for the lock while another
    // daemon migrates: an hour, only inside this transaction.
    tx.batch_execute("SET LOCAL statement_timeout = '1h'; SET LOCAL lock_timeout = '1h'").map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).map_err(err)?;
    // Created only when missing: `IF NOT EXISTS` would have the server send
    // a NOTICE, logged at every connect.
    let exists: bool = tx.query_one("SELECT to_regclass('herald_schema') IS NOT NULL", &[]).map_err(err)?.get(0);
    if !exists {
        tx.batch_execute("CREATE TABLE herald_schema (version integer NOT NULL)").map_err(err)?;
    }
    let found: Option<i32> = tx.query_one("SELECT max(version) FROM herald_schema", &[]).map_err(err)?.get(0);
    let found = found.map_or(0, |v| v.max(0) as u32);
    let known = known();
    if found > known {
        return Err(StoreError::NewerSchema { store: format!("the PostgreSQL database {target}"), found, known });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).map_err(|e| {
            StoreError::Backend(format!("PostgreSQL database {target}: migration {version}: {}", pool::chain(&e)))
        })?;
    }
    if found < known {
        tx.execute("DELETE FROM herald_schema", &[]).map_err(err)?;
        tx.execute("INSERT INTO herald_schema (version) VALUES ($1)", &[&(known as i32)]).map_err(err)?;
    }
    Ok(known)
}
