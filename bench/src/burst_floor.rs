//! The floors under a burst (issue 16): what herald's store does per
//! delivery when many are due at once, made with no HTTP, no scheduler and
//! no herald code, in three engines on the same disk:
//!
//! - **sled**, exactly the operations `SledStore` makes: read the due index
//!   (pages of 1,000 into memory, as the scheduler does), get each delivery,
//!   one transaction per batch moving it from `due` to `in_flight` with its
//!   new record, its audit record and the state counters, then the group
//!   commit (sled's flush + `fdatasync` of its log), then one transaction
//!   per batch for the outcomes (out of `in_flight`, the record, the audit
//!   record, the counters), made durable by the next batch's flush.
//! - **append**, the disk's own floor: one file of checksummed records of
//!   the same bytes (the delivery's record and its audit record, per
//!   transition), written once per batch and `fdatasync`ed; the due index
//!   lives in memory and is rebuilt by reading the file at start.
//! - **sqlite**, `bench/peer/sqlite_floor.py` (python3's `sqlite3`): the
//!   same rows in WAL mode with `synchronous = FULL`, one transaction per
//!   batch (the previous batch's outcomes and this batch's claims).
//!
//! Each store is made by one child process (`make`), then used by another
//! (`burst` or `hold`), so the peak RSS and CPU are the part's own. The
//! children are this binary again (`--floor-child JSON`) or the script; each
//! prints one JSON line of what it measured about itself.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The size of herald's JSON delivery record and audit record (as the
/// reconcile floor uses).
const DELIVERY_BYTES: usize = 330;
const AUDIT_BYTES: usize = 430;
/// The scheduler reads the due index in pages of this many.
const SCAN: usize = 1_000;
/// All the burst's deliveries are due at this instant (ms).
const DUE: i64 = 1_800_000_000_000;
/// Deliveries per post (one post to every account of the burst).
const ACCOUNTS: u64 = 1_000;

/// What a child is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// `make`, `burst` or `hold`.
    pub mode: String,
    /// `sled`, `append` or `sqlite`.
    pub engine: String,
    pub dir: PathBuf,
    pub deliveries: usize,
    /// Deliveries per group commit (burst).
    pub batch: usize,
    /// sled's `cache_capacity` in MiB (herald's `cache_mb`).
    pub cache_mb: u64,
}

/// What a child measured about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildReport {
    pub seconds: f64,
    pub cpu_s: f64,
    pub fdatasyncs: u64,
    /// RSS (KiB) right after opening the store (hold, burst).
    pub rss_open_kib: u64,
    /// RSS (KiB) at the end.
    pub rss_end_kib: u64,
    /// VmHWM (KiB).
    pub peak_kib: u64,
    /// Deliveries it found pending (hold, burst) or wrote (make).
    pub deliveries: usize,
}

/// One burst of one engine.
#[derive(Debug, Clone, Serialize)]
pub struct BurstFloor {
    pub engine: String,
    pub deliveries: usize,
    pub batch: usize,
    pub round: usize,
    pub per_s: f64,
    pub seconds: f64,
    pub cpu_us_per_delivery: f64,
    pub peak_mib: f64,
    /// The store's allocated bytes with the schedule in it, and after the burst.
    pub made_bytes: u64,
    pub after_bytes: u64,
    pub fdatasyncs: u64,
    /// The disk's 4 KiB write + fdatasync rate, measured just before.
    pub disk_fsyncs_per_s: f64,
    pub load1: f64,
    /// Instructions (callgrind) per delivery, when `--callgrind`.
    pub instructions_per_delivery: Option<f64>,
}

/// One store held open (memory and size floors).
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub engine: String,
    pub deliveries: usize,
    pub cache_mb: u64,
    pub made_bytes: u64,
    pub rss_open_mib: f64,
    pub rss_after_read_mib: f64,
    pub peak_mib: f64,
    pub open_and_read_s: f64,
}

// ---------------------------------------------------------------- children

pub fn child(spec_json: &str) -> anyhow::Result<()> {
    let spec: Spec = serde_json::from_str(spec_json).context("--floor-child")?;
    let cpu0 = cpu_now();
    let started = Instant::now();
    let mut report = match (spec.mode.as_str(), spec.engine.as_str()) {
        ("make", "sled") => sled_make(&spec)?,
        ("burst", "sled") => sled_burst(&spec)?,
        ("hold", "sled") => sled_hold(&spec)?,
        ("make", "append") => append_make(&spec)?,
        ("burst", "append") => append_burst(&spec)?,
        ("hold", "append") => append_hold(&spec)?,
        (mode, engine) => bail!("no {mode} for {engine}"),
    };
    if report.seconds == 0.0 {
        report.seconds = started.elapsed().as_secs_f64();
        report.cpu_s = cpu_now() - cpu0;
    }
    report.rss_end_kib = self_kb("VmRSS");
    report.peak_kib = self_kb("VmHWM");
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// This process's CPU time (user + system), to the nanosecond; 0 under
/// valgrind (`--callgrind`), where rustix's vDSO lookup would crash and
/// only the instruction count matters.
fn cpu_now() -> f64 {
    if std::env::var_os(UNDER_VALGRIND).is_some() {
        return 0.0;
    }
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Set in the environment of a child run under valgrind.
const UNDER_VALGRIND: &str = "HERALD_BENCH_UNDER_VALGRIND";

fn self_kb(field: &str) -> u64 {
    crate::procs::proc_kb(std::process::id(), field).unwrap_or(0)
}

fn delivery_id(n: u64) -> [u8; 16] {
    crate::floor::id(n)
}

fn account(n: u64) -> String {
    format!("city-{:04}", n % ACCOUNTS + 1)
}

/// A record of `len` bytes that differs per delivery and per state (so
/// nothing compresses or deduplicates it away).
fn record(len: usize, n: u64, state: u8) -> Vec<u8> {
    let mut v = vec![b'a' + state; len];
    let tag = format!("{n:016x}");
    v[..16].copy_from_slice(tag.as_bytes());
    v
}

fn due_key(due: i64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = due.to_be_bytes().to_vec();
    k.extend_from_slice(id);
    k
}

struct SledTrees {
    db: sled::Db,
    deliveries: sled::Tree,
    due: sled::Tree,
    by_post: sled::Tree,
    in_flight: sled::Tree,
    audit: sled::Tree,
    meta: sled::Tree,
}

fn sled_open(spec: &Spec) -> anyhow::Result<SledTrees> {
    // herald's configuration of sled (`SledStore::open`).
    let db = sled::Config::new()
        .path(spec.dir.join("db"))
        .cache_capacity(spec.cache_mb * 1024 * 1024)
        .flush_every_ms(Some(500))
        .open()?;
    let t = |name: &str| db.open_tree(name);
    Ok(SledTrees {
        deliveries: t("deliveries")?,
        due: t("due")?,
        by_post: t("by_post")?,
        in_flight: t("in_flight")?,
        audit: t("audit")?,
        meta: t("meta")?,
        db,
    })
}

fn sled_make(spec: &Spec) -> anyhow::Result<ChildReport> {
    let s = sled_open(spec)?;
    // What a reconcile writes: the delivery, the due index, the per-post
    // index, a `scheduled` audit record, the pending counter.
    for start in (0..spec.deliveries as u64).step_by(2_000) {
        let mut batches: [sled::Batch; 4] = Default::default();
        for n in start..(start + 2_000).min(spec.deliveries as u64) {
            let id = delivery_id(n);
            batches[0].insert(&id, record(DELIVERY_BYTES, n, 0));
            batches[1].insert(due_key(DUE, &id), account(n).as_bytes());
            let mut post_key = format!("burst-{:06}", n / ACCOUNTS).into_bytes();
            post_key.push(0);
            post_key.extend_from_slice(&DUE.to_be_bytes());
            post_key.extend_from_slice(&id);
            batches[2].insert(post_key, &[][..]);
            batches[3].insert(&(n + 1).to_be_bytes(), record(AUDIT_BYTES, n, 0));
        }
        let [a, b, c, d] = batches;
        s.deliveries.apply_batch(a)?;
        s.due.apply_batch(b)?;
        s.by_post.apply_batch(c)?;
        s.audit.apply_batch(d)?;
    }
    s.meta.insert("count/pending", &(spec.deliveries as u64).to_be_bytes())?;
    s.db.flush()?;
    std::fs::File::open(spec.dir.join("db/db"))?.sync_data()?;
    Ok(ChildReport { deliveries: spec.deliveries, ..Default::default() })
}

fn tx_add(
    meta: &sled::transaction::TransactionalTree,
    key: &str,
    delta: i64,
) -> sled::transaction::ConflictableTransactionResult<(), ()> {
    let old = meta.get(key)?.map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
    meta.insert(key, &((old as i64 + delta) as u64).to_be_bytes())?;
    Ok(())
}

fn sled_burst(spec: &Spec) -> anyhow::Result<ChildReport> {
    use sled::Transactional;
    let s = sled_open(spec)?;
    let log = std::fs::File::open(spec.dir.join("db/db"))?;
    let rss_open_kib = self_kb("VmRSS");
    let mut seq = s.audit.last()?.map_or(0, |(k, _)| u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])));
    let cpu0 = cpu_now();
    let started = Instant::now();
    let mut fdatasyncs = 0;
    let mut done = 0usize;
    let mut cursor: Option<Vec<u8>> = None;
    let mut queue: std::collections::VecDeque<(Vec<u8>, [u8; 16])> = Default::default();
    let trees = (&s.deliveries, &s.due, &s.in_flight, &s.audit, &s.meta);
    loop {
        if queue.is_empty() {
            // One page of the due index, as `Scheduler::queue_due`.
            let range = match &cursor {
                Some(c) => {
                    let mut start = c.clone();
                    start.push(0);
                    s.due.range(start..)
                }
                None => s.due.range::<&[u8], _>(..),
            };
            for entry in range.take(SCAN) {
                let (k, account) = entry?;
                let id: [u8; 16] = k[8..24].try_into()?;
                std::hint::black_box(String::from_utf8(account.to_vec())?);
                cursor = Some(k.to_vec());
                queue.push_back((k.to_vec(), id));
            }
            if queue.is_empty() {
                break;
            }
        }
        let batch: Vec<(Vec<u8>, [u8; 16])> = queue.drain(..spec.batch.min(queue.len())).collect();
        // The scheduler reads each delivery before it starts it.
        for (_, id) in &batch {
            std::hint::black_box(s.deliveries.get(id)?.context("a queued delivery is missing")?);
        }
        // The in-flight transition of the batch: one transaction.
        let first = seq;
        trees
            .transaction(|(deliveries, due, in_flight, audit, meta)| {
                let mut seq = first;
                for (key, id) in &batch {
                    std::hint::black_box(deliveries.get(id)?);
                    due.remove(key.as_slice())?;
                    in_flight.insert(id, &[])?;
                    let n = u64::from_be_bytes(id[..8].try_into().unwrap_or([0; 8]));
                    deliveries.insert(id, record(DELIVERY_BYTES, n, 1))?;
                    seq += 1;
                    audit.insert(&seq.to_be_bytes(), record(AUDIT_BYTES, n, 1))?;
                }
                tx_add(meta, "count/pending", -(batch.len() as i64))?;
                tx_add(meta, "count/in_flight", batch.len() as i64)?;
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("the in-flight transaction: {e:?}"))?;
        seq += batch.len() as u64;
        // The group commit: before any request of the batch leaves.
        s.db.flush()?;
        log.sync_data()?;
        fdatasyncs += 1;
        // The outcomes, durable with the next batch's flush.
        let first = seq;
        trees
            .transaction(|(deliveries, _due, in_flight, audit, meta)| {
                let mut seq = first;
                for (_, id) in &batch {
                    std::hint::black_box(deliveries.get(id)?);
                    in_flight.remove(id)?;
                    let n = u64::from_be_bytes(id[..8].try_into().unwrap_or([0; 8]));
                    deliveries.insert(id, record(DELIVERY_BYTES, n, 2))?;
                    seq += 1;
                    audit.insert(&seq.to_be_bytes(), record(AUDIT_BYTES, n, 2))?;
                }
                tx_add(meta, "count/in_flight", -(batch.len() as i64))?;
                tx_add(meta, "count/delivered", batch.len() as i64)?;
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("the outcome transaction: {e:?}"))?;
        seq += batch.len() as u64;
        done += batch.len();
    }
    s.db.flush()?;
    log.sync_data()?;
    fdatasyncs += 1;
    Ok(ChildReport {
        seconds: started.elapsed().as_secs_f64(),
        cpu_s: cpu_now() - cpu0,
        fdatasyncs,
        rss_open_kib,
        deliveries: done,
        ..Default::default()
    })
}

fn sled_hold(spec: &Spec) -> anyhow::Result<ChildReport> {
    let s = sled_open(spec)?;
    let rss_open_kib = self_kb("VmRSS");
    // What a daemon touches: the whole due index and every pending delivery.
    let mut n = 0;
    for entry in s.due.iter() {
        let (k, _) = entry?;
        std::hint::black_box(s.deliveries.get(&k[8..24])?);
        n += 1;
    }
    Ok(ChildReport { rss_open_kib, deliveries: n, ..Default::default() })
}

// ----------------------------------------------- append-only log (the disk)

/// A record of the log: kind (1 scheduled, 2 in flight, 3 delivered), the
/// delivery id, its due time, the delivery record and the audit record,
/// then a CRC-32 of all of it. A record of zeros ends the log (the rest of
/// the file is written ahead with zeros, below).
const LOG_RECORD: usize = 1 + 16 + 8 + DELIVERY_BYTES + AUDIT_BYTES + 4;
const SCHEDULED: u8 = 1;
const IN_FLIGHT: u8 = 2;
const DELIVERED: u8 = 3;

/// CRC-32 (IEEE), a table of 256 entries.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &b| CRC_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8))
}

fn log_record(out: &mut Vec<u8>, kind: u8, n: u64, id: &[u8; 16], due: i64) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(id);
    out.extend_from_slice(&due.to_be_bytes());
    out.extend_from_slice(&record(DELIVERY_BYTES, n, kind));
    out.extend_from_slice(&record(AUDIT_BYTES, n, kind));
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn append_make(spec: &Spec) -> anyhow::Result<ChildReport> {
    std::fs::create_dir_all(&spec.dir)?;
    let mut file = std::fs::File::create(spec.dir.join("log"))?;
    let mut buf = Vec::with_capacity(2_000 * LOG_RECORD);
    for n in 0..spec.deliveries as u64 {
        log_record(&mut buf, SCHEDULED, n, &delivery_id(n), DUE);
        if buf.len() >= 2_000 * LOG_RECORD {
            file.write_all(&buf)?;
            buf.clear();
        }
    }
    file.write_all(&buf)?;
    file.sync_data()?;
    Ok(ChildReport { deliveries: spec.deliveries, ..Default::default() })
}

/// The in-memory state a log-structured store keeps: each delivery's state
/// and the due index (the records themselves stay on disk).
struct Index {
    states: HashMap<[u8; 16], (u8, i64)>,
    due: BTreeSet<(i64, [u8; 16])>,
}

fn append_open(dir: &Path) -> anyhow::Result<(std::fs::File, Index, u64)> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("log"))?;
    // Read record by record: what stays in memory is the index, not the file.
    let mut reader = std::io::BufReader::with_capacity(1 << 16, &file);
    let mut index = Index { states: HashMap::new(), due: BTreeSet::new() };
    let mut rec = [0u8; LOG_RECORD];
    let mut end = 0u64;
    loop {
        match reader.read_exact(&mut rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        if rec.iter().all(|&b| b == 0) {
            break;
        }
        end += LOG_RECORD as u64;
        let (body, crc) = rec.split_at(LOG_RECORD - 4);
        if crc32(body) != u32::from_be_bytes(crc.try_into()?) {
            bail!("a damaged record in the log");
        }
        let id: [u8; 16] = body[1..17].try_into()?;
        let due = i64::from_be_bytes(body[17..25].try_into()?);
        if let Some((SCHEDULED, old_due)) = index.states.insert(id, (body[0], due)) {
            index.due.remove(&(old_due, id));
        }
        if body[0] == SCHEDULED {
            index.due.insert((due, id));
        }
    }
    drop(reader);
    Ok((file, index, end))
}

fn append_burst(spec: &Spec) -> anyhow::Result<ChildReport> {
    use std::os::unix::fs::FileExt;
    let (file, mut index, mut end) = append_open(&spec.dir)?;
    // Write the space the burst will use ahead with zeros and make it
    // durable, before the clock starts, as a log-structured store recycles
    // or pre-writes its segments off the hot path (PostgreSQL zero-fills its
    // WAL segments; SQLite reuses its WAL): overwriting written blocks in
    // place lets fdatasync flush the data alone, where growing the file
    // also makes it commit the file's new size (an ext4 journal commit).
    let zeros = vec![0u8; 1 << 20];
    let ahead = (2 * spec.deliveries + 2) as u64 * LOG_RECORD as u64;
    let mut at = end;
    while at < end + ahead {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()?;
    let rss_open_kib = self_kb("VmRSS");
    let cpu0 = cpu_now();
    let started = Instant::now();
    let mut fdatasyncs = 0;
    let mut done = 0usize;
    let mut buf = Vec::with_capacity(2 * spec.batch * LOG_RECORD);
    let mut outcomes: Vec<(i64, [u8; 16])> = Vec::new();
    loop {
        let batch: Vec<(i64, [u8; 16])> = std::iter::from_fn(|| index.due.pop_first()).take(spec.batch).collect();
        // The previous batch's outcomes and this batch's claims, one write
        // and one fdatasync: the group commit.
        for &(due, id) in &outcomes {
            let n = u64::from_be_bytes(id[..8].try_into()?);
            log_record(&mut buf, DELIVERED, n, &id, due);
            index.states.insert(id, (DELIVERED, due));
        }
        for &(due, id) in &batch {
            let n = u64::from_be_bytes(id[..8].try_into()?);
            log_record(&mut buf, IN_FLIGHT, n, &id, due);
            index.states.insert(id, (IN_FLIGHT, due));
        }
        if buf.is_empty() {
            break;
        }
        file.write_all_at(&buf, end)?;
        end += buf.len() as u64;
        buf.clear();
        file.sync_data()?;
        fdatasyncs += 1;
        done += batch.len();
        outcomes = batch;
    }
    Ok(ChildReport {
        seconds: started.elapsed().as_secs_f64(),
        cpu_s: cpu_now() - cpu0,
        fdatasyncs,
        rss_open_kib,
        deliveries: done,
        ..Default::default()
    })
}

fn append_hold(spec: &Spec) -> anyhow::Result<ChildReport> {
    let (_file, index, _) = append_open(&spec.dir)?;
    // What stays after the file was read: the index.
    Ok(ChildReport {
        rss_open_kib: self_kb("VmRSS"),
        deliveries: std::hint::black_box(&index).due.len(),
        ..Default::default()
    })
}

// ------------------------------------------------------------------ parent

/// How the parent runs children.
pub struct Runner {
    pub exe: PathBuf,
    /// python3 itself (not a wrapper script such as pyenv's shim, which
    /// valgrind would count instead).
    pub python: PathBuf,
    pub script: PathBuf,
    pub callgrind: bool,
}

impl Runner {
    pub fn new(callgrind: bool) -> anyhow::Result<Runner> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peer/sqlite_floor.py");
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .context("running python3 (the SQLite floor needs it)")?;
        let python = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        Ok(Runner { exe: std::env::current_exe()?, python, script, callgrind })
    }

    /// Run one child; its report and, under callgrind, its instruction count.
    pub fn run(&self, spec: &Spec, counted: bool) -> anyhow::Result<(ChildReport, Option<u64>)> {
        let json = serde_json::to_string(spec)?;
        let mut cmd = if counted && self.callgrind {
            let mut c = Command::new("valgrind");
            c.args(["--tool=callgrind", "--callgrind-out-file=/dev/null"]).env(UNDER_VALGRIND, "1");
            c
        } else {
            Command::new(if spec.engine == "sqlite" { &self.python } else { &self.exe })
        };
        if counted && self.callgrind {
            cmd.arg(if spec.engine == "sqlite" { &self.python } else { &self.exe });
        }
        if spec.engine == "sqlite" {
            cmd.arg(&self.script).arg(&json);
        } else {
            cmd.arg("--floor-child").arg(&json);
        }
        let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().context("running a floor child")?;
        if !out.status.success() {
            bail!("the {} {} child failed: {}", spec.engine, spec.mode, String::from_utf8_lossy(&out.stderr));
        }
        let line = out.stdout.lines().map_while(Result::ok).last().context("the child printed nothing")?;
        let report: ChildReport =
            serde_json::from_str(&line).with_context(|| format!("the child's report {line:?}"))?;
        let instructions = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.split_once("Collected :").and_then(|(_, n)| n.trim().parse::<u64>().ok()));
        Ok((report, instructions))
    }
}

fn spec(mode: &str, engine: &str, dir: &Path, deliveries: usize, batch: usize, cache_mb: u64) -> Spec {
    Spec { mode: mode.into(), engine: engine.into(), dir: dir.to_path_buf(), deliveries, batch, cache_mb }
}

pub const ENGINES: [&str; 3] = ["sled", "append", "sqlite"];

/// The burst floors: every engine, alternated, `rounds` times.
pub fn bursts(
    runner: &Runner,
    scratch: &Path,
    sizes: &[usize],
    batches: &[usize],
    rounds: usize,
) -> anyhow::Result<Vec<BurstFloor>> {
    let mut out = Vec::new();
    for &n in sizes {
        for &batch in batches {
            for round in 1..=rounds {
                for engine in ENGINES {
                    let dir = scratch.join(format!("burst-floor-{engine}-{n}-{batch}"));
                    std::fs::remove_dir_all(&dir).ok();
                    std::fs::create_dir_all(&dir)?;
                    runner.run(&spec("make", engine, &dir, n, batch, 64), false)?;
                    let made_bytes = crate::disk_usage(&dir);
                    let disk_fsyncs_per_s = crate::machine::fsync_rate(scratch).unwrap_or(f64::NAN);
                    let load1 = crate::machine::load1();
                    let (r, instructions) = runner.run(&spec("burst", engine, &dir, n, batch, 64), true)?;
                    if r.deliveries != n {
                        bail!("the {engine} burst delivered {} of {n}", r.deliveries);
                    }
                    let row = BurstFloor {
                        engine: engine.into(),
                        deliveries: n,
                        batch,
                        round,
                        per_s: n as f64 / r.seconds,
                        seconds: r.seconds,
                        cpu_us_per_delivery: r.cpu_s / n as f64 * 1e6,
                        peak_mib: r.peak_kib as f64 / 1024.0,
                        made_bytes,
                        after_bytes: crate::disk_usage(&dir),
                        fdatasyncs: r.fdatasyncs,
                        disk_fsyncs_per_s,
                        load1,
                        instructions_per_delivery: instructions.map(|i| i as f64 / n as f64),
                    };
                    eprintln!(
                        "burst floor {engine} {n} x{batch} (round {round}): {:.0}/s, {:.1} µs CPU, peak {:.1} MiB, \
                         {:.1} MiB made, {} fdatasyncs; disk {:.0} fdatasync/s, load {:.2}{}",
                        row.per_s,
                        row.cpu_us_per_delivery,
                        row.peak_mib,
                        made_bytes as f64 / 1048576.0,
                        r.fdatasyncs,
                        disk_fsyncs_per_s,
                        load1,
                        row.instructions_per_delivery.map_or(String::new(), |i| format!(", {i:.0} instructions"))
                    );
                    out.push(row);
                    std::fs::remove_dir_all(&dir).ok();
                }
            }
        }
    }
    Ok(out)
}

/// The memory and size floors: each engine's store of `n` pending
/// deliveries, opened by a fresh process that reads the due index and every
/// delivery; sled at each of `caches`.
pub fn holds(runner: &Runner, scratch: &Path, sizes: &[usize], caches: &[u64]) -> anyhow::Result<Vec<Hold>> {
    let mut out = Vec::new();
    for &n in sizes {
        for engine in ENGINES {
            let dir = scratch.join(format!("hold-{engine}-{n}"));
            std::fs::remove_dir_all(&dir).ok();
            std::fs::create_dir_all(&dir)?;
            runner.run(&spec("make", engine, &dir, n, 1, 64), false)?;
            let made_bytes = crate::disk_usage(&dir);
            let caches: &[u64] = if engine == "sled" { caches } else { &[0] };
            for &cache_mb in caches {
                let (r, _) = runner.run(&spec("hold", engine, &dir, n, 1, cache_mb), false)?;
                if r.deliveries != n {
                    bail!("the {engine} store held {} of {n}", r.deliveries);
                }
                let row = Hold {
                    engine: engine.into(),
                    deliveries: n,
                    cache_mb,
                    made_bytes,
                    rss_open_mib: r.rss_open_kib as f64 / 1024.0,
                    rss_after_read_mib: r.rss_end_kib as f64 / 1024.0,
                    peak_mib: r.peak_kib as f64 / 1024.0,
                    open_and_read_s: r.seconds,
                };
                eprintln!(
                    "hold {engine} {n} cache {cache_mb} MiB: {:.1} MiB on disk, RSS {:.1} MiB open, {:.1} MiB after \
                     reading, peak {:.1} MiB ({:.2} s)",
                    made_bytes as f64 / 1048576.0,
                    row.rss_open_mib,
                    row.rss_after_read_mib,
                    row.peak_mib,
                    r.seconds
                );
                out.push(row);
            }
            std::fs::remove_dir_all(&dir).ok();
        }
    }
    Ok(out)
}

/// The tables, one row per run.
pub fn print(bursts: &[BurstFloor], holds: &[Hold]) {
    if !bursts.is_empty() {
        println!(
            "\n| burst floor | deliveries | per commit | round | deliveries/s | CPU/delivery | instructions/delivery | peak RSS | made | after | fdatasyncs | disk fdatasync/s | load |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for b in bursts {
            println!(
                "| {} | {} | {} | {} | {:.0} | {:.1} µs | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {:.0} | {:.2} |",
                b.engine,
                b.deliveries,
                b.batch,
                b.round,
                b.per_s,
                b.cpu_us_per_delivery,
                b.instructions_per_delivery.map_or("-".to_string(), |i| format!("{i:.0}")),
                b.peak_mib,
                b.made_bytes as f64 / 1048576.0,
                b.after_bytes as f64 / 1048576.0,
                b.fdatasyncs,
                b.disk_fsyncs_per_s,
                b.load1
            );
        }
    }
    if !holds.is_empty() {
        println!(
            "\n| held open | pending | cache_mb | on disk | RSS opened | RSS after reading all | peak RSS | open + read |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for h in holds {
            println!(
                "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} s |",
                h.engine,
                h.deliveries,
                if h.engine == "sled" { h.cache_mb.to_string() } else { "-".into() },
                h.made_bytes as f64 / 1048576.0,
                h.rss_open_mib,
                h.rss_after_read_mib,
                h.peak_mib,
                h.open_and_read_s
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_is_the_ieee_one() {
        // The check value of CRC-32/ISO-HDLC (zlib's, Python's zlib.crc32).
        assert_eq!(super::crc32(b"123456789"), 0xcbf4_3926);
    }
}
