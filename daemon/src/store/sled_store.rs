//! The sled backend of [`Store`].
//!
//! Durability: sled writes its buffers every 500 ms on its own; herald calls
//! [`Store::flush`] before any request leaves the host and after recording
//! outcomes. sled's own flush writes its log with `sync_file_range`, which
//! flushes data pages only (not the file's size, not the disk's write cache),
//! and fsyncs only every 500 ms; so [`Store::flush`] follows it with a real
//! `fdatasync` of the log file (and an fsync of any new blob file and of the
//! blob directory): what it covers survives a power cut, not only a kill.
//! Flushes are shared: a caller whose writes were already covered by a flush
//! that started after them returns at once (group commit).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};

use super::keys;
use super::{
    AuditQuery, Changes, DueKey, Planned, PostRecord, Result, SCHEMA_VERSION, Store, StoreError, corrupt, decode,
    is_retrying,
};
use crate::audit_chain::{self, ChainHead, ChainWriter};
use crate::model::{AuditRecord, Delivery, DeliveryId, Event, Millis, State};

const LOCK_FILE: &str = "herald.lock";
const DB_DIR: &str = "db";
const SCHEMA_KEY: &[u8] = b"schema_version";
/// Written beside the database once its schema version is durable: a
/// database that then has no schema version has lost its data (a damaged
/// disk, bytes overwritten), and must not be taken for a new, empty store.
const CREATED_MARKER: &str = "store-created";

/// What [`Store::flush`] fsyncs after sled's own flush.
struct SyncFiles {
    /// sled's log file, opened again for `fdatasync`.
    log: File,
    blobs_dir: PathBuf,
    /// Blob files already fsynced, by name (sled writes them without fsync).
    synced_blobs: std::collections::HashSet<std::ffi::OsString>,
}

pub struct SledStore {
    db: sled::Db,
    deliveries: sled::Tree,
    due: sled::Tree,
    by_post: sled::Tree,
    in_flight: sled::Tree,
    /// Failed deliveries (ids), so `status` lists them without a scan.
    failed: sled::Tree,
    posts: sled::Tree,
    timers: sled::Tree,
    /// Planned occurrences: occurrence, then post id (keys like `timers`).
    planned: sled::Tree,
    audit: sled::Tree,
    content: sled::Tree,
    meta: sled::Tree,
    /// Serialises writers, so audit sequence numbers have no gaps; holds the
    /// head of the audit chain (the last record's seq and hash).
    write_lock: Mutex<ChainHead>,
    writes: AtomicU64,
    flushed: AtomicU64,
    /// The last audit sequence number applied (committed to sled, maybe
    /// not yet on disk), and the last one a flush made durable. Readers of
    /// the audit log see records up to `durable_seq` only: a record that a
    /// kill could still take back is never shown, so no sequence number
    /// ever names two records (DESIGN invariant 8).
    applied_seq: AtomicU64,
    durable_seq: AtomicU64,
    /// Held by the one flush at a time (the others wait and share it).
    flush_lock: Box<Mutex<SyncFiles>>,
    _lock: File,
    dir: PathBuf,
}

fn dir_error(dir: &Path, source: std::io::Error) -> StoreError {
    StoreError::Dir { dir: dir.display().to_string(), error: source }
}

/// [`super::encode`] inside a sled transaction: a value that cannot be
/// serialised aborts the whole transaction.
fn encode<T: serde::Serialize>(what: &str, value: &T) -> std::result::Result<Vec<u8>, Abort> {
    super::encode(what, value).map_err(Abort::Abort)
}

fn count_key(state: State) -> Vec<u8> {
    format!("count/{}", state.name()).into_bytes()
}

const RETRYING_KEY: &[u8] = b"count/retrying";
const PLANNED_KEY: &[u8] = b"count/planned";

impl SledStore {
    /// Open (or create) the store in `dir`, holding its lock for as long as
    /// the store lives. `cache_mb` bounds sled's page cache.
    pub fn open(dir: &Path, cache_mb: u64) -> Result<SledStore> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // The store is private: a new state directory is 0700, its files
        // 0600, whatever the umask (herald run outside the unit).
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| dir_error(dir, e))?;
        }
        refuse_links(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock_path)
            .map_err(|e| dir_error(dir, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.display().to_string(),
                    lock: lock_path.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(dir_error(dir, e)),
        }
        let db_path = dir.join(DB_DIR);
        let fresh = !db_path.exists();
        if !fresh {
            refuse_links(&db_path)?;
            refuse_links(&db_path.join("blobs"))?;
            clear_unfinished_files(&db_path)?;
        }
        let marker = dir.join(CREATED_MARKER);
        let config = sled::Config::new()
            .path(&db_path)
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
            .flush_every_ms(Some(500));
        let db = open_sled(&config).map_err(|e| match e {
            sled::Error::Io(io) => dir_error(&db_path, io),
            other => StoreError::from(other),
        })?;
        let tree = |name: &str| db.open_tree(name);
        let meta = tree("meta")?;
        match meta.get(SCHEMA_KEY)? {
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt("schema version", "bad length"))?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        store: format!("the state directory {}", dir.display()),
                        found,
                        known: SCHEMA_VERSION,
                    });
                }
                if found < SCHEMA_VERSION {
                    // Older records read as they are (new fields default);
                    // the failed index is built once; an older herald must
                    // now refuse this store.
                    index_failed(&db.open_tree("deliveries")?, &db.open_tree("failed")?)?;
                    meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                    db.flush()?;
                }
            }
            None if !marker.exists() && (fresh || db.tree_names().len() <= 2) => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            None => {
                return Err(StoreError::Corrupt(format!(
                    "{} holds no readable herald data although herald created a store there (its schema \
                     version is gone): the files are damaged, and herald will neither start on them nor \
                     re-initialise them",
                    db_path.display()
                )));
            }
        }
        if !marker.exists() {
            // Stores created before the marker existed get it on their next start.
            File::options()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&marker)
                .and_then(|f| f.sync_all())
                .map_err(|e| dir_error(dir, e))?;
        }
        // sled creates its files with the umask's mode; make them private
        // (and those of a store made before this rule).
        make_private(&db_path)?;
        let audit = tree("audit")?;
        let failed = tree("failed")?;
        let head = chain_head(&audit)?;
        let last_seq = match audit.last()? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().map_err(|_| corrupt("audit key", "bad length"))?),
            None => 0,
        };
        // What sled recovered may sit in the page cache only (written before
        // a kill, never flushed): make it durable before it is shown. The
        // directories too, so the files themselves survive a power cut.
        db.flush()?;
        let log_file = File::open(db_path.join("db")).map_err(|e| dir_error(&db_path, e))?;
        log_file.sync_data().map_err(|e| dir_error(&db_path, e))?;
        for d in [&db_path, dir] {
            File::open(d).and_then(|f| f.sync_all()).map_err(|e| dir_error(d, e))?;
        }
        Ok(SledStore {
            deliveries: tree("deliveries")?,
            due: tree("due")?,
            by_post: tree("by_post")?,
            in_flight: tree("in_flight")?,
            failed,
            posts: tree("posts")?,
            timers: tree("timers")?,
            planned: tree("planned")?,
            content: tree("content")?,
            audit,
            meta,
            db,
            write_lock: Mutex::new(head),
            writes: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            applied_seq: AtomicU64::new(last_seq),
            durable_seq: AtomicU64::new(last_seq),
            flush_lock: Box::new(Mutex::new(SyncFiles {
                log: log_file,
                blobs_dir: db_path.join("blobs"),
                synced_blobs: std::collections::HashSet::new(),
            })),
            _lock: lock,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The deliveries an index of ids (`in_flight`, `failed`) names, at most `limit`.
    fn indexed(&self, index: &sled::Tree, what: &str, limit: usize) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for key in index.iter().keys().take(limit) {
            let key = key?;
            let id: [u8; 16] = key.as_ref().try_into().map_err(|_| corrupt(what, "bad key"))?;
            out.extend(self.delivery(DeliveryId(id))?);
        }
        Ok(out)
    }

    fn counter(&self, key: &[u8]) -> Result<u64> {
        match self.meta.get(key)? {
            Some(v) => {
                Ok(i64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt("counter", "bad length"))?).max(0)
                    as u64)
            }
            None => Ok(0),
        }
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// A tree of the store, as [`SledStore::export`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exported {
    /// Delivery id (16 bytes) to the `Delivery` JSON.
    Deliveries,
    /// Post id to the `PostRecord` JSON.
    Posts,
    /// Content hash to the rendered content JSON.
    Contents,
    /// Every metadata key and value (`schema_version` and `count/*` included).
    Meta,
}

impl SledStore {
    /// Every key and value of one tree, in key order, exactly as stored:
    /// what `herald store copy` moves to another backend. The audit log is
    /// read through [`Store::audit_raw`]; the indexes are derived data.
    pub fn export(&self, what: Exported) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + '_ {
        let tree = match what {
            Exported::Deliveries => &self.deliveries,
            Exported::Posts => &self.posts,
            Exported::Contents => &self.content,
            Exported::Meta => &self.meta,
        };
        tree.iter().map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from))
    }
}

impl SledStore {
    /// Write one batch of another store's records as they are, into a new
    /// store (`herald store copy --to sled`): the records, the indexes
    /// derived from them and the counters, but no audit record of their own;
    /// audit records keep their bytes and sequence numbers. A delivery id,
    /// post, content or audit seq already present is an error, not an
    /// overwrite. Call [`SledStore::finish_import`] after the last batch.
    pub fn import(&self, batch: &super::postgres::Import) -> Result<()> {
        let _writer = self.write_lock.lock().map_err(|_| StoreError::Backend("a writer panicked".into()))?;
        let present = |what: &str, key: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("the copy meets {what} {key} twice (the target held it already)"))
        };
        let mut counters: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        for d in &batch.deliveries {
            let id = d.id;
            if self.deliveries.insert(id.0, super::encode("delivery", d)?)?.is_some() {
                return Err(present("the delivery", &id));
            }
            self.by_post.insert(keys::by_post(&d.post_id, d.occurrence, &id), &[])?;
            match d.state {
                State::Pending => {
                    self.due.insert(keys::due(d.due, &id), d.account.as_bytes())?;
                }
                State::InFlight => {
                    self.in_flight.insert(id.0, &[])?;
                }
                State::Failed => {
                    self.failed.insert(id.0, &[])?;
                }
                _ => {}
            }
            *counters.entry(count_key(d.state)).or_default() += 1;
            if is_retrying(d) {
                *counters.entry(RETRYING_KEY.to_vec()).or_default() += 1;
            }
        }
        for (id, r) in &batch.posts {
            if self.posts.insert(id.as_bytes(), super::encode("post record", r)?)?.is_some() {
                return Err(present("the post", id));
            }
            if let Some(t) = r.timer {
                self.timers.insert(keys::timer(t, id), &[])?;
            }
            if let Some(p) = &r.planned {
                self.planned.insert(keys::timer(p.occurrence, id), &[])?;
                *counters.entry(PLANNED_KEY.to_vec()).or_default() += p.targets.len() as i64;
            }
        }
        for (hash, content) in &batch.contents {
            if self.content.insert(hash.as_bytes(), super::encode("content", content)?)?.is_some() {
                return Err(present("the content", hash));
            }
        }
        for (key, value) in &batch.meta {
            if self.meta.insert(format!("user/{key}").as_bytes(), value.as_slice())?.is_some() {
                return Err(present("the metadata key", key));
            }
        }
        for (seq, bytes) in &batch.audit {
            let record: AuditRecord = decode("audit record", bytes)?;
            if record.seq != *seq {
                return Err(StoreError::Corrupt(format!("audit record under {seq} says seq {}", record.seq)));
            }
            if self.audit.insert(seq.to_be_bytes(), bytes.as_slice())?.is_some() {
                return Err(present("the audit record", seq));
            }
        }
        for (key, delta) in counters {
            let current = self.counter(&key)? as i64;
            self.meta.insert(key, &(current + delta).to_be_bytes())?;
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// After the last [`SledStore::import`]: take the chain's head and the
    /// last seq from the imported audit log, and make the whole copy durable.
    pub fn finish_import(&self) -> Result<ChainHead> {
        let head = chain_head(&self.audit)?;
        *self.write_lock.lock().map_err(|_| StoreError::Backend("a writer panicked".into()))? = head.clone();
        self.applied_seq.store(head.seq, Ordering::SeqCst);
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.flush()?;
        Ok(head)
    }
}

/// Refuse symbolic links among the entries of `dir` (the state directory,
/// sled's directory and its blobs): one planted there could send herald's
/// writes anywhere its user may write, or show it another store.
fn refuse_links(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(dir_error(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| dir_error(dir, e))?;
        if entry.file_type().map_err(|e| dir_error(dir, e))?.is_symlink() {
            return Err(StoreError::Dir {
                dir: dir.display().to_string(),
                error: std::io::Error::other(format!(
                    "{} is a symbolic link; herald refuses links in its state directory (a link could redirect \
                     its writes): replace it with the file or directory itself",
                    entry.path().display()
                )),
            });
        }
    }
    Ok(())
}

/// Mode 0700 for sled's directories and 0600 for its files.
fn make_private(db_path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| dir_error(path, e))
    };
    for dir in [db_path.to_path_buf(), db_path.join("blobs")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        set(&dir, 0o700)?;
        for entry in entries {
            let entry = entry.map_err(|e| dir_error(&dir, e))?;
            let kind = entry.file_type().map_err(|e| dir_error(&dir, e))?;
            if kind.is_file() {
                set(&entry.path(), 0o600)?;
            }
        }
    }
    Ok(())
}

/// Remove what sled can leave half-done when it is killed, or when the disk
/// is full, while it writes outside its log. sled 0.34 (read from its
/// source) writes three kinds of files beside its log `db`:
///
/// - `snap.<lsn>.generating`: a snapshot being written, renamed to
///   `snap.<lsn>` only after it is complete and fsynced. An unfinished one
///   is never authoritative, but sled's own reader takes the newest
///   `snap.*` file, `.generating` or not, so a torn one (a kill mid-write,
///   0 bytes after ENOSPC) would be read as the store and refused as
///   damaged at every start. The complete snapshot before it, or the log,
///   holds the same data, so it is removed.
/// - `conf`: the storage parameters, written in place once when the store
///   is created (no temporary file, no fsync). sled rewrites a missing or
///   short one itself, but takes a torn one that fails its checksum for
///   damage. herald always opens sled with the same parameters, so a torn
///   `conf` is removed and sled writes it again.
/// - `blobs/<lsn>`: values too large for the log, written before the log
///   record that points to them; sled removes those past its recovered
///   point itself, so nothing is needed here.
///
/// Each removal is logged (warn) with the file and its size.
fn clear_unfinished_files(db_path: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(db_path) {
        Ok(entries) => entries,
        Err(e) => return Err(dir_error(db_path, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| dir_error(db_path, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let unfinished = match name {
            "conf" => !sled_conf_is_whole(&path).map_err(|e| dir_error(db_path, e))?,
            _ => name.starts_with("snap.") && name.ends_with(".generating"),
        };
        if unfinished {
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(|e| dir_error(db_path, e))?;
            tracing::warn!(file = %path.display(), bytes,
                "removed a file sled left unfinished (a kill or a full disk while it was written); the store's data is elsewhere");
        }
    }
    Ok(())
}

/// Does sled's `conf` end with the CRC-32 of what comes before it? (sled
/// itself treats 8 bytes or fewer as absent and rewrites them.)
fn sled_conf_is_whole(path: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    if bytes.len() <= 8 {
        return Ok(true);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    Ok(crc32(body).to_le_bytes() == crc)
}

/// CRC-32 (IEEE, reflected), as sled uses for its files. Bit by bit: it
/// checks a file of a few dozen bytes once per start.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// fsync blob files sled wrote since the last flush (it writes them without
/// one, before the log record pointing to them), then their directory.
/// herald's values rarely reach sled's blob size (about 128 KiB), so the
/// directory is usually empty and this is one `readdir`.
fn sync_new_blobs(dir: &Path, synced: &mut std::collections::HashSet<std::ffi::OsString>) -> std::io::Result<()> {
    let mut present = std::collections::HashSet::new();
    let mut new = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !synced.contains(&name) {
            match File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                // sled removed it meanwhile (garbage collection).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            new = true;
        }
        present.insert(name);
    }
    if new {
        File::open(dir)?.sync_all()?;
    }
    *synced = present;
    Ok(())
}

/// Index every failed delivery (a store from before the failed index).
fn index_failed(deliveries: &sled::Tree, failed: &sled::Tree) -> Result<()> {
    for entry in deliveries.iter() {
        let (k, v) = entry?;
        if decode::<Delivery>("delivery", &v)?.state == State::Failed {
            failed.insert(k, &[])?;
        }
    }
    Ok(())
}

/// Open sled, waiting a moment while its own file lock is still held by
/// this process. herald already holds the state directory's lock, so no
/// other herald has the store: the holder can only be background threads of
/// a store this process has just closed (sled finishes a snapshot or a
/// flush on its thread pool after the last handle is dropped), as when a
/// daemon in this process stops and another starts on the same directory.
fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);
    let start = std::time::Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && start.elapsed() < PATIENCE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The head of the audit chain: the last record's seq and hash. On a store
/// whose records predate the chain, the digest of all of them, so that the
/// first chained record commits to the whole earlier history.
fn chain_head(audit: &sled::Tree) -> Result<ChainHead> {
    let Some((key, last)) = audit.last()? else { return Ok(ChainHead::empty()) };
    let seq = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| corrupt("audit key", "bad length"))?);
    if let Some(hash) = decode::<AuditRecord>("audit record", &last)?.hash {
        return Ok(ChainHead { seq, hash, unstarted: false });
    }
    let mut digest = audit_chain::LegacyDigest::default();
    for entry in audit.iter() {
        digest.add(&entry?.1);
    }
    Ok(ChainHead { seq, hash: digest.finish(), unstarted: true })
}

type Abort = ConflictableTransactionError<StoreError>;

fn tx_get<T: serde::de::DeserializeOwned>(
    tree: &TransactionalTree,
    key: &[u8],
    what: &str,
) -> std::result::Result<Option<T>, Abort> {
    match tree.get(key)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Abort::Abort(corrupt(what, e))),
        None => Ok(None),
    }
}

fn tx_add(meta: &TransactionalTree, key: &[u8], delta: i64) -> std::result::Result<(), Abort> {
    let current = match meta.get(key)? {
        Some(v) => i64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        None => 0,
    };
    meta.insert(key, &(current + delta).to_be_bytes())?;
    Ok(())
}

impl Store for SledStore {
    fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        self.deliveries.get(id.0)?.map(|b| decode("delivery", &b)).transpose()
    }

    fn deliveries_of_post(&self, post: &str) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for entry in self.by_post.scan_prefix(keys::by_post_prefix(post)) {
            let (k, _) = entry?;
            let id = keys::read_by_post_id(&k).ok_or_else(|| corrupt("post index", "short key"))?;
            if let Some(d) = self.delivery(id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn deliveries_of_occurrence(&self, post: &str, occurrence: Millis) -> Result<Vec<Delivery>> {
        let mut prefix = keys::by_post_prefix(post);
        prefix.extend_from_slice(&keys::millis(occurrence));
        let mut out = Vec::new();
        for entry in self.by_post.scan_prefix(prefix) {
            let (k, _) = entry?;
            let id = keys::read_by_post_id(&k).ok_or_else(|| corrupt("post index", "short key"))?;
            if let Some(d) = self.delivery(id)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn due(&self, after: Option<&DueKey>, until: Millis, limit: usize) -> Result<Vec<DueKey>> {
        let end = keys::millis(until.saturating_add(1));
        let range = match after {
            Some(k) => {
                let mut start = keys::due(k.due, &k.id);
                start.push(0);
                self.due.range(start..end.to_vec())
            }
            None => self.due.range(..end.to_vec()),
        };
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (k, v) = entry?;
            let (due, id) = keys::read_due(&k).ok_or_else(|| corrupt("due index", "short key"))?;
            let account = String::from_utf8(v.to_vec()).map_err(|e| corrupt("due index", e))?;
            out.push(DueKey { due, id, account });
        }
        Ok(out)
    }

    fn next_due_after(&self, after: Millis) -> Result<Option<Millis>> {
        let start = keys::millis(after.saturating_add(1));
        match self.due.range(start.to_vec()..).next() {
            Some(entry) => Ok(keys::read_millis(&entry?.0)),
            None => Ok(None),
        }
    }

    fn in_flight(&self) -> Result<Vec<Delivery>> {
        self.indexed(&self.in_flight, "in-flight index", usize::MAX)
    }

    fn deliveries_in_state(&self, state: State, limit: usize) -> Result<Vec<Delivery>> {
        match state {
            State::InFlight => return self.in_flight(),
            State::Failed => return self.indexed(&self.failed, "failed index", limit),
            _ => {}
        }
        let mut out = Vec::new();
        for entry in self.deliveries.iter() {
            let (_, v) = entry?;
            let d: Delivery = decode("delivery", &v)?;
            if d.state == state {
                out.push(d);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn post(&self, id: &str) -> Result<Option<PostRecord>> {
        self.posts.get(id.as_bytes())?.map(|b| decode("post record", &b)).transpose()
    }

    fn post_ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for key in self.posts.iter().keys() {
            out.push(String::from_utf8(key?.to_vec()).map_err(|e| corrupt("post id", e))?);
        }
        Ok(out)
    }

    fn timers_due(&self, until: Millis) -> Result<Vec<(Millis, String)>> {
        let end = keys::millis(until.saturating_add(1));
        let mut out = Vec::new();
        for key in self.timers.range(..end.to_vec()).keys() {
            out.push(keys::read_timer(&key?).ok_or_else(|| corrupt("timer index", "bad key"))?);
        }
        Ok(out)
    }

    fn next_timer(&self) -> Result<Option<Millis>> {
        match self.timers.first()? {
            Some((k, _)) => Ok(keys::read_millis(&k)),
            None => Ok(None),
        }
    }

    fn content(&self, hash: &str) -> Result<Option<crate::model::Content>> {
        self.content.get(hash.as_bytes())?.map(|b| decode("content", &b)).transpose()
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(format!("user/{key}"))?.map(|v| v.to_vec()))
    }

    fn content_hashes(&self, prefix: &str, limit: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in self.content.scan_prefix(prefix.as_bytes()).keys().take(limit) {
            out.push(String::from_utf8_lossy(&entry?).into_owned());
        }
        Ok(out)
    }

    fn has_content(&self, hash: &str) -> Result<bool> {
        Ok(self.content.contains_key(hash.as_bytes())?)
    }

    fn apply(&self, changes: Changes) -> Result<Vec<AuditRecord>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut head = self.write_lock.lock().map_err(|_| StoreError::Backend("a writer panicked".into()))?;
        // A store whose records predate the chain: the first write starts it.
        let start = ChainWriter::start_record(&head);
        let trees = (
            &self.deliveries,
            &self.due,
            &self.by_post,
            &self.in_flight,
            &self.failed,
            &self.posts,
            &self.timers,
            &self.planned,
            &self.audit,
            &self.content,
            &self.meta,
        );
        let result = trees.transaction(
            |(deliveries, due, by_post, in_flight, failed, posts, timers, planned, audit, content, meta)| {
                let mut chain = ChainWriter::new(&head);
                // Number, seal and write one record after the previous one.
                let mut append = |record: &AuditRecord| -> std::result::Result<AuditRecord, Abort> {
                    let (record, bytes) = chain.append(record);
                    audit.insert(&record.seq.to_be_bytes(), bytes)?;
                    Ok(record)
                };
                let mut stored = Vec::with_capacity(changes.deliveries.len() + changes.notes.len() + 1);
                if let Some(record) = &start {
                    stored.push(append(record)?);
                }
                // Counter changes, written once per key at the end rather than once per delivery.
                let mut counters: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
                // Deliveries written earlier in this set, by id: their previous state.
                let mut written: HashMap<DeliveryId, (State, Millis, bool)> = HashMap::new();
                for (hash, rendered) in &changes.contents {
                    if content.get(hash.as_bytes())?.is_none() {
                        content.insert(hash.as_bytes(), encode("content", rendered)?)?;
                    }
                }
                for (key, value) in &changes.meta {
                    meta.insert(format!("user/{key}").as_bytes(), value.as_slice())?;
                }
                for (id, record) in &changes.posts {
                    let old: Option<PostRecord> = tx_get(posts, id.as_bytes(), "post record")?;
                    if let Some(t) = old.as_ref().and_then(|o| o.timer) {
                        timers.remove(keys::timer(t, id))?;
                    }
                    if let Some(p) = old.as_ref().and_then(|o| o.planned.as_ref()) {
                        planned.remove(keys::timer(p.occurrence, id))?;
                        *counters.entry(PLANNED_KEY.to_vec()).or_default() -= p.targets.len() as i64;
                    }
                    match record {
                        Some(r) => {
                            posts.insert(id.as_bytes(), encode("post record", r)?)?;
                            if let Some(t) = r.timer {
                                timers.insert(keys::timer(t, id), &[])?;
                            }
                            if let Some(p) = &r.planned {
                                planned.insert(keys::timer(p.occurrence, id), &[])?;
                                *counters.entry(PLANNED_KEY.to_vec()).or_default() += p.targets.len() as i64;
                            }
                        }
                        None => {
                            posts.remove(id.as_bytes())?;
                        }
                    }
                }
                for (delivery, record) in &changes.deliveries {
                    let id = delivery.id;
                    let post_key = keys::by_post(&delivery.post_id, delivery.occurrence, &id);
                    // The previous state, if any. Every stored delivery has its
                    // per-post key (post and occurrence never change), which sits
                    // beside its siblings: for a delivery being scheduled (most
                    // likely new) checking it first spares a lookup in the much
                    // larger, randomly keyed deliveries tree.
                    let old = match written.get(&id) {
                        Some(&previous) => Some(previous),
                        None if record.event == Event::Scheduled && by_post.get(&post_key)?.is_none() => None,
                        None => tx_get::<Delivery>(deliveries, &id.0, "delivery")?
                            .map(|old| (old.state, old.due, is_retrying(&old))),
                    };
                    match old {
                        Some((state, old_due, retrying)) => {
                            if state == State::Pending {
                                due.remove(keys::due(old_due, &id))?;
                            }
                            if state == State::InFlight {
                                in_flight.remove(&id.0)?;
                            }
                            if state == State::Failed {
                                failed.remove(&id.0)?;
                            }
                            *counters.entry(count_key(state)).or_default() -= 1;
                            if retrying {
                                *counters.entry(RETRYING_KEY.to_vec()).or_default() -= 1;
                            }
                        }
                        None => {
                            by_post.insert(post_key, &[])?;
                        }
                    }
                    match delivery.state {
                        State::Pending => {
                            due.insert(keys::due(delivery.due, &id), delivery.account.as_bytes())?;
                        }
                        State::InFlight => {
                            in_flight.insert(&id.0, &[])?;
                        }
                        State::Failed => {
                            failed.insert(&id.0, &[])?;
                        }
                        _ => {}
                    }
                    *counters.entry(count_key(delivery.state)).or_default() += 1;
                    if is_retrying(delivery) {
                        *counters.entry(RETRYING_KEY.to_vec()).or_default() += 1;
                    }
                    written.insert(id, (delivery.state, delivery.due, is_retrying(delivery)));
                    deliveries.insert(&id.0, encode("delivery", delivery)?)?;
                    stored.push(append(record)?);
                }
                for note in &changes.notes {
                    stored.push(append(note)?);
                }
                for (key, delta) in counters {
                    if delta != 0 {
                        tx_add(meta, &key, delta)?;
                    }
                }
                Ok(stored)
            },
        );
        match result {
            Ok(stored) => {
                if let Some(last) = stored.last() {
                    *head = ChainHead { seq: last.seq, hash: last.hash.clone().unwrap_or_default(), unstarted: false };
                }
                // Readers see these records once a flush covers them (`durable_seq`).
                self.applied_seq.store(head.seq, Ordering::SeqCst);
                self.writes.fetch_add(1, Ordering::SeqCst);
                Ok(stored)
            }
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(e.into()),
        }
    }

    fn flush(&self) -> Result<()> {
        let wanted = self.writes.load(Ordering::SeqCst);
        let mut files = self.flush_lock.lock().map_err(|_| StoreError::Backend("a flusher panicked".into()))?;
        if self.flushed.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        let covering = self.writes.load(Ordering::SeqCst);
        // Every record up to here is committed in sled, so the flush below covers it.
        let covering_seq = self.applied_seq.load(Ordering::SeqCst);
        self.db.flush()?;
        let io = |e: std::io::Error| StoreError::Backend(format!("making the store durable (fsync): {e}"));
        let SyncFiles { log, blobs_dir, synced_blobs } = &mut *files;
        log.sync_data().map_err(io)?;
        sync_new_blobs(blobs_dir, synced_blobs).map_err(io)?;
        self.flushed.fetch_max(covering, Ordering::SeqCst);
        self.durable_seq.fetch_max(covering_seq, Ordering::SeqCst);
        Ok(())
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let start = query.after_seq.map_or(0, |s| s + 1);
        // Only what is durable (see `durable_seq`).
        let end = self.durable_seq.load(Ordering::SeqCst);
        let mut out = Vec::new();
        if start > end {
            return Ok(out);
        }
        for entry in self.audit.range(start.to_be_bytes()..=end.to_be_bytes()) {
            let (_, v) = entry?;
            let record: AuditRecord = decode("audit record", &v)?;
            if query.matches(&record) {
                out.push(record);
                if query.limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn audit_raw(&self, after: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = after.map_or(0, |s| s + 1);
        let mut out = Vec::new();
        for entry in self.audit.range(start.to_be_bytes()..).take(limit) {
            let (k, v) = entry?;
            let key = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| corrupt("audit key", "bad length"))?);
            out.push((key, v.to_vec()));
        }
        Ok(out)
    }

    fn audit_head(&self) -> Result<ChainHead> {
        Ok(self.write_lock.lock().map_err(|_| StoreError::Backend("a writer panicked".into()))?.clone())
    }

    fn retrying(&self) -> Result<u64> {
        self.counter(RETRYING_KEY)
    }

    fn planned(&self, limit: usize) -> Result<Vec<(String, Planned)>> {
        let mut out = Vec::new();
        for key in self.planned.iter().keys().take(limit) {
            let (_, post) = keys::read_timer(&key?).ok_or_else(|| corrupt("planned index", "bad key"))?;
            if let Some(plan) = self.post(&post)?.and_then(|r| r.planned) {
                out.push((post, plan));
            }
        }
        Ok(out)
    }

    fn planned_deliveries(&self) -> Result<u64> {
        self.counter(PLANNED_KEY)
    }

    fn counts(&self) -> Result<BTreeMap<State, u64>> {
        State::ALL.into_iter().map(|state| Ok((state, self.counter(&count_key(state))?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_millis;
    use crate::store::conformance::{Subject, conformance_tests, delivery, put};

    /// The store suite every backend passes (`store::conformance`), on sled.
    mod sled_conformance {
        use super::*;
        conformance_tests!(Some({
            let dir = tempfile::tempdir().unwrap();
            Subject::new(move || Box::new(SledStore::open(dir.path(), 8).unwrap()))
        }));
    }

    fn verify_store(
        store: &SledStore,
        head: Option<(u64, String)>,
    ) -> std::result::Result<audit_chain::Verified, audit_chain::Break> {
        let raw: Vec<std::result::Result<audit_chain::Raw, StoreError>> =
            store.audit_raw(None, usize::MAX).unwrap().into_iter().map(|(k, v)| Ok((Some(k), v))).collect();
        audit_chain::verify(raw, audit_chain::Start::Beginning, head).unwrap()
    }

    #[test]
    fn an_old_store_keeps_its_records_and_the_chain_commits_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let legacy: Vec<Vec<u8>>;
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            // Records as a schema-2 herald wrote them: no prev_hash, no hash.
            legacy = (1..=3u64)
                .map(|seq| {
                    let mut r =
                        AuditRecord::of(&delivery(seq as u8, State::Pending, 1), Event::Scheduled, from_millis(0));
                    r.seq = seq;
                    let bytes = serde_json::to_vec(&r).unwrap();
                    store.audit.insert(seq.to_be_bytes(), bytes.clone()).unwrap();
                    bytes
                })
                .collect();
            store.meta.insert(SCHEMA_KEY, &2u32.to_be_bytes()).unwrap();
            store.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 8).unwrap();
        let stored = put(&store, &delivery(9, State::Pending, 1), Event::Scheduled);
        assert_eq!(stored.len(), 2, "chain_started, then the record itself");
        assert_eq!((stored[0].seq, stored[0].event), (4, Event::ChainStarted));
        let mut digest = audit_chain::LegacyDigest::default();
        legacy.iter().for_each(|b| digest.add(b));
        assert_eq!(stored[0].prev_hash, Some(digest.finish()));
        let raw = store.audit_raw(None, 3).unwrap();
        assert_eq!(raw.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(), legacy, "old records keep their bytes");
        let verified = verify_store(&store, None).unwrap();
        assert_eq!((verified.records, verified.legacy), (5, 3));
        // Changing an old record breaks the digest the chain starts from.
        let changed = String::from_utf8(legacy[1].clone()).unwrap().replace("\"pending\"", "\"skipped\"");
        assert_ne!(changed.as_bytes(), legacy[1]);
        store.audit.insert(2u64.to_be_bytes(), changed.as_bytes()).unwrap();
        let broken = verify_store(&store, None).unwrap_err();
        assert_eq!((broken.seq, broken.problem.as_str()), (4, "altered"), "{broken}");
    }

    #[test]
    fn sled_records_name_no_daemon_so_their_bytes_are_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        let stored = put(&store, &delivery(1, State::Pending, 1), Event::Scheduled);
        store.flush().unwrap();
        assert_eq!(stored[0].daemon, None);
        let raw = store.audit_raw(None, usize::MAX).unwrap();
        assert_eq!(raw.len(), 1);
        let text = String::from_utf8(raw[0].1.clone()).unwrap();
        assert!(!text.contains("\"daemon\""), "a sled record grew a field: {text}");
        // Byte for byte what a build without the field wrote (hash included).
        assert_eq!(
            text,
            r#"{"seq":1,"time":"1970-01-01T00:00:00Z","event":"scheduled","state":"pending","delivery":"01010101010101010101010101010101","post":"post-1","account":"wuhan","platform":"webhook","occurrence":"1970-01-01T00:00:00.001Z","attempt":0,"content_hash":"h","next_due":"1970-01-01T00:00:00.001Z","prev_hash":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","hash":"838d47550b9d32ee56c5c7d04a4cb04fe0aa3475def5fa201115149036e3b6f9"}"#
        );
        verify_store(&store, None).unwrap();
    }

    #[test]
    fn audit_records_are_shown_once_they_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        put(&store, &delivery(1, State::Pending, 1), Event::Scheduled);
        store.flush().unwrap();
        put(&store, &delivery(2, State::Pending, 1), Event::Scheduled);
        let shown = |q: &AuditQuery| store.audit(q).unwrap().iter().map(|r| r.seq).collect::<Vec<u64>>();
        assert_eq!(shown(&AuditQuery::default()), [1], "seq 2 is applied, not yet flushed: a kill could take it back");
        assert_eq!(shown(&AuditQuery { after_seq: Some(1), ..AuditQuery::default() }), Vec::<u64>::new());
        store.flush().unwrap();
        assert_eq!(shown(&AuditQuery::default()), [1, 2]);
    }

    #[test]
    fn a_second_opener_gets_a_clear_error_naming_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path(), 8).unwrap();
        let err = SledStore::open(dir.path(), 8).err().expect("the second open must fail");
        let text = err.to_string();
        assert!(matches!(err, StoreError::Locked { .. }));
        assert!(text.contains("herald.lock") && text.contains("another herald process"), "{text}");
    }

    #[test]
    fn failed_deliveries_are_listed_from_their_index_which_an_older_store_gets_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            for n in 1..=4u8 {
                put(&store, &delivery(n, State::Pending, 1_000), Event::Scheduled);
            }
            put(&store, &delivery(2, State::Failed, 1_000), Event::Failed);
            put(&store, &delivery(3, State::Failed, 1_000), Event::Failed);
            put(&store, &delivery(3, State::Pending, 2_000), Event::Requeued);
            let failed: Vec<DeliveryId> =
                store.deliveries_in_state(State::Failed, 10).unwrap().iter().map(|d| d.id).collect();
            assert_eq!(failed, [DeliveryId([2; 16])], "a requeued delivery leaves the index");
            // What a store written before the index (schema 1) looks like.
            store.failed.clear().unwrap();
            store.meta.insert(SCHEMA_KEY, &1u32.to_be_bytes()).unwrap();
            store.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 8).unwrap();
        let failed: Vec<DeliveryId> =
            store.deliveries_in_state(State::Failed, 10).unwrap().iter().map(|d| d.id).collect();
        assert_eq!(failed, [DeliveryId([2; 16])]);
        let version = store.meta.get(SCHEMA_KEY).unwrap().unwrap();
        assert_eq!(version.as_ref(), &SCHEMA_VERSION.to_be_bytes(), "marked with this build's schema");
    }

    #[test]
    fn a_store_from_a_newer_herald_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            store.meta.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
            store.db.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), 8).err().expect("a newer schema must be refused");
        assert!(err.to_string().contains("newer herald"), "{err}");
        let db = open_sled(&sled::Config::new().path(dir.path().join(DB_DIR))).unwrap();
        let version = db.open_tree("meta").unwrap().get(SCHEMA_KEY).unwrap().unwrap();
        assert_eq!(version.as_ref(), &(SCHEMA_VERSION + 1).to_be_bytes());
    }

    /// The LSN in the name of the newest `snap.*` file sled wrote (0: none yet).
    fn newest_snapshot(db: &Path) -> u64 {
        std::fs::read_dir(db)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn unfinished_sled_files_left_by_a_kill_or_a_full_disk_do_not_stop_the_store_opening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            for n in 1..=20u8 {
                put(&store, &delivery(n, State::Pending, 1_000 * i64::from(n)), Event::Scheduled);
            }
            store.flush().unwrap();
        }
        let db = dir.path().join(DB_DIR);
        let conf = std::fs::read(db.join("conf")).unwrap();
        // Each of what sled leaves half-done: a snapshot cut short by
        // ENOSPC (0 bytes), one cut by a kill (bytes, no checksum), a
        // `conf` without its checksum.
        let torn: [(&str, Vec<u8>); 3] = [
            ("generating", Vec::new()),
            ("generating", b"\x01\x02 half a snapshot, no length, no checksum \x7f".repeat(50)),
            ("conf", conf[..conf.len() - 4].to_vec()),
        ];
        for (kind, bytes) in torn {
            let path = match kind {
                "generating" => db.join(format!("snap.{:016X}.generating", newest_snapshot(&db) + 1)),
                _ => db.join("conf"),
            };
            std::fs::write(&path, &bytes).unwrap();
            // sled alone takes these for damage: this is what bricked herald.
            match open_sled(&sled::Config::new().path(&db)) {
                Err(sled::Error::Corruption { .. }) => {}
                other => panic!("sled opened a store with a torn {kind} file: {:?}", other.map(|_| ())),
            }
            let store = SledStore::open(dir.path(), 8).unwrap_or_else(|e| panic!("with a torn {kind} file: {e}"));
            assert_eq!(store.counts().unwrap()[&State::Pending], 20, "with a torn {kind} file");
            let seqs: Vec<u64> = store.audit(&AuditQuery::default()).unwrap().iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "with a torn {kind} file");
            assert!(!path.exists() || kind == "conf", "the torn snapshot is gone");
        }
        assert_eq!(std::fs::read(db.join("conf")).unwrap(), conf, "sled wrote `conf` again, as it was");
    }

    #[test]
    fn a_value_that_cannot_be_serialised_is_an_error_not_empty_bytes() {
        // JSON object keys must be strings: this map does not serialise.
        let map: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        match encode("delivery", &map) {
            Err(Abort::Abort(e @ StoreError::Encode { .. })) => {
                assert!(e.to_string().contains("cannot store a delivery"), "{e}");
            }
            other => panic!("expected an encode error, got {other:?}"),
        }
        assert_eq!(encode("delivery", &1u8).unwrap(), b"1");
    }

    #[test]
    fn crc32_is_the_ieee_checksum_sled_uses() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn an_unwritable_state_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let err = SledStore::open(&file.join("state"), 8).err().expect("must fail");
        assert!(matches!(err, StoreError::Dir { .. }), "{err}");
        assert!(err.to_string().contains("cannot use the state directory"), "{err}");
    }
}
