//! `herald-bench`: builds the release `herald` and `herald-sandbox`, then
//! measures the real daemon, as a child process, against the sandbox's
//! webhook receiver in another process on loopback. Prints tables; see
//! BENCHMARKS.md for the method and the numbers.
//!
//! ```sh
//! cargo run --release -p herald-bench            # the full run (about 5 minutes)
//! cargo run --release -p herald-bench -- --quick # 10k deliveries, a short burst (about 2 minutes)
//! ```

mod burst_floor;
mod configs;
mod floor;
mod http;
mod machine;
mod peer;
mod pg;
mod pgmulti;
mod procs;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, SubsecRound, Utc};
use clap::Parser;
use serde::Serialize;

use configs::{PostSpec, Scenario};
use procs::{Herald, Sink};

/// Benchmark herald: load, start-up, memory, burst dispatch and lateness.
#[derive(Debug, Parser)]
#[command(name = "herald-bench")]
struct Args {
    /// A short run: the load at 10,000 deliveries only, a burst of 5,000 and
    /// 200 deliveries over 12 s for lateness.
    #[arg(long)]
    quick: bool,
    /// Schedule sizes (deliveries) for the load and start-up measurements;
    /// 100 accounts each. Default: 10000,100000,1000000 (quick: 10000).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Run only these parts (load, ahead, burst, lateness, floor); default
    /// all of those. `peer` (only when named) runs herald and a Python
    /// scheduler (APScheduler + SQLite) side by side on the same bursts;
    /// `burst-floor` and `memory-floor` (only when named) measure sled, an
    /// append-only file and SQLite alone under a burst and held open.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Deliveries in the burst (default 50000; quick 5000), due at one instant.
    #[arg(long)]
    burst: Option<usize>,
    /// Accounts the burst is spread over.
    #[arg(long, default_value_t = 1000)]
    burst_accounts: usize,
    /// `[daemon] concurrency` for every run (herald's default is 64).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// `[daemon] schedule_ahead` for every run (herald's default is 1h). The
    /// load's posts are 30 days ahead: `60d` makes herald create all their
    /// deliveries at once, the most a reconcile can have to write.
    #[arg(long, value_name = "DURATION")]
    schedule_ahead: Option<String>,
    /// Seconds from starting herald to the burst's (and lateness') first due time.
    #[arg(long)]
    lead: Option<u64>,
    /// Seconds to let herald settle before reading its steady memory.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Do not run `cargo build --release -p herald -p herald-sandbox` first.
    #[arg(long)]
    no_build: bool,
    /// Where to make the scratch directory (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Keep the scratch directory (configs, state, logs) afterwards.
    #[arg(long)]
    keep: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The venv for `--only peer` (made and filled from
    /// bench/peer/requirements.txt when missing; default: herald-peer-venv
    /// in the target directory).
    #[arg(long, value_name = "DIR")]
    peer_venv: Option<PathBuf>,
    /// Give up after this many minutes in all.
    #[arg(long, default_value_t = 90)]
    max_minutes: u64,
    /// `--only burst-floor`: the bursts' sizes (default 5000,50000).
    #[arg(long, value_delimiter = ',')]
    floor_sizes: Vec<usize>,
    /// `--only burst-floor`: deliveries per group commit (default 20,1).
    #[arg(long, value_delimiter = ',')]
    floor_batches: Vec<usize>,
    /// `--only burst-floor`: how many times each engine runs, alternated.
    #[arg(long, default_value_t = 2)]
    floor_rounds: usize,
    /// `--only memory-floor`: sled's cache sizes to open the store with, MiB.
    #[arg(long, value_delimiter = ',', default_value = "64,8")]
    cache_mb: Vec<u64>,
    /// Run each floor's burst under `valgrind --tool=callgrind` too and
    /// report instructions per delivery (slow: use small sizes).
    #[arg(long)]
    callgrind: bool,
    /// `--only store-burst`: the burst on these stores, alternated
    /// (`sled`, `postgres`: a cluster from `.ci/postgres.sh start`).
    #[arg(long, value_delimiter = ',', default_value = "sled,postgres")]
    store: Vec<String>,
    /// The store of the load part: `sled` (default) or `postgres` (a new
    /// database per size in the cluster of `.ci/postgres.sh start`).
    #[arg(long, default_value = "sled")]
    load_store: String,
    /// `--only store-burst`, `pg-standby`, `pg-split`, `pg-failover`: how
    /// many times each case runs (`pg-standby` and `pg-split` alternate
    /// with one daemon alone on PostgreSQL); `pg-restart`: how many starts
    /// on the copied store (its size: the first of `--sizes`, default 1M).
    #[arg(long, default_value_t = 2)]
    store_rounds: usize,
    /// Internal: run one floor child (a JSON spec) and print its report.
    #[arg(long, hide = true, value_name = "JSON")]
    floor_child: Option<String>,
}

/// Accounts in the load measurements.
const LOAD_ACCOUNTS: usize = 100;
/// Accounts in the lateness measurement.
const LATENESS_ACCOUNTS: usize = 100;

/// Everything measured, for the tables and the JSON file.
#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: machine::Machine,
    pub load_before: f64,
    pub load_after: f64,
    pub concurrency: usize,
    pub schedule_ahead: Option<String>,
    pub loads: Vec<LoadResult>,
    pub ahead: Option<AheadResult>,
    pub burst: Option<BurstResult>,
    pub lateness: Option<LatenessResult>,
    pub floor: Vec<floor::Floor>,
    pub peer: Vec<peer::Case>,
    pub burst_floor: Vec<burst_floor::BurstFloor>,
    pub memory_floor: Vec<burst_floor::Hold>,
    pub store_bursts: Vec<StoreBurst>,
    pub pg_standby: Vec<pgmulti::StandbyBurst>,
    pub pg_split: Vec<pgmulti::SplitBurst>,
    pub pg_failover: Vec<pgmulti::Failover>,
    pub pg_restart: Option<pgmulti::CopiedRestart>,
}

/// The burst on one store (`--only store-burst`).
#[derive(Debug, Serialize)]
pub struct StoreBurst {
    pub store: String,
    pub round: usize,
    pub burst: BurstResult,
    /// The disk's 4 KiB write + fdatasync rate just before.
    pub disk_fsyncs_per_s: f64,
    pub load1: f64,
}

#[derive(Debug, Serialize)]
pub struct LoadResult {
    pub deliveries: usize,
    pub posts: usize,
    pub check_s: f64,
    pub check_cpu_s: f64,
    pub check_peak_mib: f64,
    pub first_ready_s: f64,
    pub first_ready_cpu_s: f64,
    pub first_peak_mib: f64,
    pub reload_same_s: f64,
    pub reload_same: String,
    pub reload_changed_s: f64,
    pub reload_changed: String,
    pub run_peak_mib: f64,
    pub state_mib: f64,
    pub startup_s: f64,
    pub startup_cpu_s: f64,
    pub startup_peak_mib: f64,
    pub steady_rss_mib: f64,
    pub pending_after_restart: u64,
    /// With `--load-store postgres`: `pg_database_size` after the second stop.
    pub database_mib: Option<f64>,
}

/// Planned occurrences coming due at once: their deliveries created by the
/// posts' timers, `schedule_ahead` before the due instant.
#[derive(Debug, Serialize)]
pub struct AheadResult {
    pub deliveries: usize,
    pub schedule_ahead_s: u64,
    /// From the timers' instant (due - schedule_ahead) until none is planned.
    pub created_s: f64,
    pub per_s: f64,
    /// How long before the due instant the last was created (negative: late).
    pub before_due_s: f64,
    /// The slowest `GET /v1/status` answer while they were being created.
    pub status_max_ms: f64,
    pub status_polls: usize,
    pub peak_mib: f64,
    /// herald's CPU time from the timers' instant until none was planned.
    pub cpu_s: f64,
    /// Resident memory once they are all created and herald has settled
    /// (`--settle` seconds), before the due instant.
    pub steady_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct BurstResult {
    pub deliveries: usize,
    pub accounts: usize,
    /// Start to ready: config, store and the deliveries written.
    pub ready_s: f64,
    pub ready_before_due_s: f64,
    /// The state directory 1 s before the due instant: the schedule on disk.
    pub state_mib: f64,
    pub delivered: usize,
    pub failed: u64,
    pub received_first_arrivals: usize,
    pub received_repeats: usize,
    pub due_to_first_received_s: f64,
    pub due_to_last_received_s: f64,
    pub due_to_last_delivered_s: f64,
    pub per_s: f64,
    pub peak_mib: f64,
    /// herald's CPU time (user + system) from ready until all were
    /// delivered: what the burst cost, whatever else ran on the machine.
    pub cpu_s: f64,
    /// With `--store postgres`: the PostgreSQL server's CPU time (the
    /// postmaster and its children) over the same span.
    pub server_cpu_s: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LatenessResult {
    pub deliveries: usize,
    pub window_s: u64,
    pub received: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
    /// fdatasync latency on the same disk during the window (4 KiB every 50 ms).
    pub fsync_p50_ms: f64,
    pub fsync_p99_ms: f64,
    pub fsync_max_ms: f64,
    pub load_during: f64,
    /// herald's CPU time from ready until all were settled.
    pub cpu_s: f64,
}

/// Paths of the binaries under test.
pub struct Bins {
    herald: PathBuf,
    sandbox: PathBuf,
}

/// A global deadline: every wait is bounded by it.
pub struct Budget(Instant);

impl Budget {
    fn left(&self, step: Duration) -> anyhow::Result<Duration> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the benchmark ran out of time (--max-minutes)");
        }
        Ok(step.min(left))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(spec) = &args.floor_child {
        return burst_floor::child(spec);
    }
    let budget = Budget(Instant::now() + Duration::from_secs(args.max_minutes * 60));
    let bins = binaries(!args.no_build)?;
    let scratch = match &args.dir {
        Some(dir) => tempfile::Builder::new().prefix("herald-bench-").tempdir_in(dir)?,
        None => tempfile::Builder::new().prefix("herald-bench-").tempdir()?,
    };
    eprintln!("scratch directory: {}", scratch.path().display());
    let load_before = machine::load1();
    let machine = machine::describe(scratch.path());
    eprintln!(
        "machine: {} cores, {} MiB, fsync {:.0}/s on {}; load average {load_before:.2}",
        machine.cores, machine.memory_mib, machine.fsyncs_per_s, machine.disk
    );
    let sink = Sink::start(&bins.sandbox)?;
    eprintln!("sink: herald-sandbox on {}", sink.addr);
    let named = |part: &str| args.only.iter().any(|o| o == part);
    let wants = |part: &str| {
        (args.only.is_empty()
            && ![
                "peer",
                "burst-floor",
                "memory-floor",
                "store-burst",
                "pg-standby",
                "pg-split",
                "pg-failover",
                "pg-restart",
            ]
            .contains(&part))
            || named(part)
    };

    let sizes = match (&args.sizes[..], args.quick) {
        ([], true) => vec![10_000],
        ([], false) => vec![10_000, 100_000, 1_000_000],
        (sizes, _) => sizes.to_vec(),
    };
    let mut results = Results {
        machine,
        load_before,
        load_after: f64::NAN,
        concurrency: args.concurrency,
        schedule_ahead: args.schedule_ahead.clone(),
        loads: Vec::new(),
        ahead: None,
        burst: None,
        lateness: None,
        floor: Vec::new(),
        peer: Vec::new(),
        burst_floor: Vec::new(),
        memory_floor: Vec::new(),
        store_bursts: Vec::new(),
        pg_standby: Vec::new(),
        pg_split: Vec::new(),
        pg_failover: Vec::new(),
        pg_restart: None,
    };
    let opts = configs::DaemonOpts {
        concurrency: args.concurrency,
        schedule_ahead: args.schedule_ahead.clone(),
        postgres_url_file: None,
    };
    let settle = Duration::from_secs(if args.quick { args.settle.min(3) } else { args.settle });
    if wants("load") {
        let cluster = match args.load_store.as_str() {
            "sled" => None,
            "postgres" => Some(pg::Cluster::from_env()?),
            other => bail!("--load-store {other}: sled or postgres"),
        };
        for &size in &sizes {
            let dir = scratch.path().join(format!("load-{size}"));
            let database = format!("herald_load_{size}");
            let opts = match &cluster {
                Some(c) => configs::DaemonOpts {
                    postgres_url_file: Some(c.new_database(&database, &dir.join("pg"))?),
                    ..opts.clone()
                },
                None => opts.clone(),
            };
            let mut result = load(&bins, &sink, &dir, size, &opts, settle, &budget)
                .with_context(|| format!("the load measurement at {size} deliveries"))?;
            if let Some(c) = &cluster {
                let mib = c.database_size(&database)? as f64 / (1024.0 * 1024.0);
                eprintln!("pg_database_size: {mib:.0} MiB");
                result.database_mib = Some(mib);
            }
            results.loads.push(result);
            if !args.keep {
                std::fs::remove_dir_all(&dir).ok();
            }
        }
    }
    let lead = Duration::from_secs(args.lead.unwrap_or(if args.quick { 10 } else { 20 }));
    if wants("ahead") {
        let n = *sizes.iter().max().unwrap_or(&10_000);
        let ahead_s = if args.quick { 10 } else { 120 };
        let dir = scratch.path().join("ahead");
        results.ahead =
            Some(ahead(&bins, &sink, &dir, n, ahead_s, &opts, settle, &budget).context("planned, coming due")?);
    }
    if wants("burst") {
        let n = args.burst.unwrap_or(if args.quick { 5_000 } else { 50_000 });
        let dir = scratch.path().join("burst");
        results.burst =
            Some(burst(&bins, &sink, &dir, n, args.burst_accounts, &opts, lead, &budget, None).context("the burst")?);
    }
    if wants("lateness") {
        let (n, window) = if args.quick { (200, 12) } else { (1_000, 60) };
        let dir = scratch.path().join("lateness");
        results.lateness = Some(lateness(&bins, &sink, &dir, n, window, &opts, lead, &budget).context("lateness")?);
    }
    if wants("floor") {
        for &size in &sizes {
            eprintln!("\n== store floor: the sled writes of a reconcile of {size} deliveries, without herald");
            let floor = floor::measure(scratch.path(), size, 64)?;
            eprintln!(
                "floor: {:.2} s ({:.2} s CPU), {:.0} deliveries/s",
                floor.seconds, floor.cpu_seconds, floor.per_s
            );
            results.floor.push(floor);
        }
    }
    if wants("peer") {
        let target = bins.herald.parent().and_then(Path::parent).context("the target directory")?;
        let python = peer::venv(&args.peer_venv.clone().unwrap_or_else(|| target.join("herald-peer-venv")))?;
        results.peer = peer::run(&bins, &python, &sink, scratch.path(), args.quick, &budget).context("side by side")?;
    }
    if named("burst-floor") || named("memory-floor") {
        let runner = burst_floor::Runner::new(args.callgrind)?;
        let sizes = if args.floor_sizes.is_empty() { vec![5_000, 50_000] } else { args.floor_sizes.clone() };
        if named("burst-floor") {
            let batches = if args.floor_batches.is_empty() { vec![20, 1] } else { args.floor_batches.clone() };
            eprintln!("\n== burst floors: sled, an append-only file and SQLite, no herald");
            results.burst_floor = burst_floor::bursts(&runner, scratch.path(), &sizes, &batches, args.floor_rounds)?;
        }
        if named("memory-floor") {
            eprintln!("\n== memory and size floors: a store of pending deliveries, held open");
            results.memory_floor = burst_floor::holds(&runner, scratch.path(), &sizes, &args.cache_mb)?;
        }
    }
    if named("store-burst") {
        let n = args.burst.unwrap_or(5_000);
        let cluster = if args.store.iter().any(|s| s == "postgres") { Some(pg::Cluster::from_env()?) } else { None };
        for round in 1..=args.store_rounds {
            for store in &args.store {
                let dir = scratch.path().join(format!("store-burst-{store}-{round}"));
                let (opts, pg) = match (store.as_str(), &cluster) {
                    ("sled", _) => (opts.clone(), None),
                    ("postgres", Some(c)) => {
                        let url = c.new_database(&format!("herald_bench_{round}"), &scratch.path().join("pg"))?;
                        (configs::DaemonOpts { postgres_url_file: Some(url), ..opts.clone() }, Some(c))
                    }
                    (other, _) => bail!("--store {other}: sled or postgres"),
                };
                let disk_fsyncs_per_s = machine::fsync_rate(scratch.path()).unwrap_or(f64::NAN);
                let load1 = machine::load1();
                eprintln!("\n== store burst on {store} (round {round})");
                let burst = burst(&bins, &sink, &dir, n, args.burst_accounts, &opts, lead, &budget, pg)
                    .with_context(|| format!("the burst on {store}"))?;
                results.store_bursts.push(StoreBurst { store: store.clone(), round, burst, disk_fsyncs_per_s, load1 });
                if !args.keep {
                    std::fs::remove_dir_all(&dir).ok();
                }
            }
        }
    }
    if named("pg-standby") || named("pg-split") || named("pg-failover") {
        let cluster = pg::Cluster::from_env()?;
        let n = args.burst.unwrap_or(5_000);
        for round in 1..=args.store_rounds {
            for case in ["pg-standby", "pg-split"].into_iter().filter(|c| named(c)) {
                // One daemon alone, then the case, alternated.
                let dir = scratch.path().join(format!("{case}-one-{round}"));
                let url = cluster.new_database(&format!("herald_one_{round}"), &dir.join("pg"))?;
                let one = configs::DaemonOpts { postgres_url_file: Some(url), ..opts.clone() };
                let disk_fsyncs_per_s = machine::fsync_rate(scratch.path()).unwrap_or(f64::NAN);
                let load1 = machine::load1();
                eprintln!("\n== one daemon on postgres (round {round}, beside {case})");
                let burst = burst(&bins, &sink, &dir, n, args.burst_accounts, &one, lead, &budget, Some(&cluster))
                    .context("the burst with one daemon")?;
                results.store_bursts.push(StoreBurst {
                    store: format!("postgres, one daemon ({case})"),
                    round,
                    burst,
                    disk_fsyncs_per_s,
                    load1,
                });
                let dir = scratch.path().join(format!("{case}-{round}"));
                let accounts = args.burst_accounts;
                let run = pgmulti::Round {
                    bins: &bins,
                    sink: &sink,
                    dir: &dir,
                    n,
                    accounts,
                    opts: &opts,
                    lead,
                    budget: &budget,
                    cluster: &cluster,
                    round,
                };
                if case == "pg-standby" {
                    results.pg_standby.push(pgmulti::standby_burst(&run).context("the burst with a standby")?);
                } else {
                    results.pg_split.push(pgmulti::split_burst(&run).context("the split burst")?);
                }
            }
            if named("pg-failover") {
                let dir = scratch.path().join(format!("pg-failover-{round}"));
                let run = pgmulti::Round {
                    bins: &bins,
                    sink: &sink,
                    dir: &dir,
                    n,
                    accounts: args.burst_accounts,
                    opts: &opts,
                    lead,
                    budget: &budget,
                    cluster: &cluster,
                    round,
                };
                results.pg_failover.push(pgmulti::failover(&run).context("the failover")?);
            }
        }
    }
    if named("pg-restart") {
        let cluster = pg::Cluster::from_env()?;
        let size = args.sizes.first().copied().unwrap_or(1_000_000);
        let dir = scratch.path().join("pg-restart");
        let r = pgmulti::copied_restart(&bins, &sink, &dir, size, &opts, settle, &budget, &cluster, args.store_rounds)
            .context("the restart on a copied store")?;
        results.pg_restart = Some(r);
    }
    results.load_after = machine::load1();
    report::print(&results);
    report::print_store_bursts(&results.store_bursts);
    pgmulti::print(&results.pg_standby, &results.pg_split, &results.pg_failover);
    burst_floor::print(&results.burst_floor, &results.memory_floor);
    report::print_peer(&results.peer);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
        eprintln!("results written to {}", path.display());
    }
    if args.keep {
        let kept = scratch.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

/// `deliveries` planned (one post per 100 of them, all due at one instant
/// `ahead_s` + 15 s after the start): the posts' timers create them all
/// `ahead_s` before the instant. herald is stopped before the instant when
/// it can be: this part measures creation, the burst measures sending.
#[allow(clippy::too_many_arguments)]
fn ahead(
    bins: &Bins,
    sink: &Sink,
    dir: &Path,
    deliveries: usize,
    ahead_s: u64,
    opts: &configs::DaemonOpts,
    settle: Duration,
    budget: &Budget,
) -> anyhow::Result<AheadResult> {
    let posts = (deliveries / LOAD_ACCOUNTS).max(1);
    let n = posts * LOAD_ACCOUNTS;
    eprintln!("\n== planned, coming due: {posts} posts x {LOAD_ACCOUNTS} accounts = {n} deliveries due at one instant");
    let due = (Utc::now() + chrono::Duration::seconds(ahead_s as i64 + 15)).trunc_subsecs(0);
    let fire = due - chrono::Duration::seconds(ahead_s as i64);
    let specs: Vec<PostSpec> = (0..posts)
        .map(|i| PostSpec { id: format!("ahead-{i:06}"), at: due, targets: vec!["all".into()], revision: 0 })
        .collect();
    let opts = configs::DaemonOpts { schedule_ahead: Some(format!("{ahead_s}s")), ..opts.clone() };
    let scenario = configs::write(dir, sink, LOAD_ACCOUNTS, &opts, &specs)?;
    let mut herald = start(bins, &scenario, "run")?;
    herald.wait_ready(budget.left(Duration::from_secs(300))?)?;
    if Utc::now() >= fire {
        bail!("herald was ready after the timers' instant; nothing to measure");
    }
    let mut status_max = Duration::ZERO;
    let mut polls = 0;
    let mut cpu_at_fire = None;
    let deadline = Instant::now() + budget.left(Duration::from_secs(ahead_s + 600))?;
    let created_at = loop {
        let asked = Instant::now();
        let counts = herald.counts()?;
        let now = Utc::now();
        if now >= fire {
            status_max = status_max.max(asked.elapsed());
            polls += 1;
        } else {
            cpu_at_fire = Some(herald.cpu_s());
        }
        if counts.get("planned") == Some(&0) && counts.get("pending").copied().unwrap_or(0) >= n as u64 {
            break now;
        }
        if Instant::now() > deadline {
            bail!("the timers did not create {n} deliveries in time: {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let peak_mib = herald.peak_mib();
    let cpu_s = herald.cpu_s() - cpu_at_fire.unwrap_or(f64::NAN);
    std::thread::sleep(settle);
    let steady_mib = herald.rss_mib();
    herald.stop(budget.left(Duration::from_secs(120))?)?;
    let created_s = (created_at - fire).num_milliseconds() as f64 / 1000.0;
    let result = AheadResult {
        deliveries: n,
        schedule_ahead_s: ahead_s,
        created_s,
        per_s: n as f64 / created_s.max(0.001),
        before_due_s: (due - created_at).num_milliseconds() as f64 / 1000.0,
        status_max_ms: status_max.as_secs_f64() * 1000.0,
        status_polls: polls,
        peak_mib,
        cpu_s,
        steady_mib,
    };
    eprintln!(
        "created {n} in {:.1} s ({:.0}/s), {:.1} s before the due instant; slowest status {:.0} ms of {polls}; \
         peak RSS {:.0} MiB, {:.0} MiB after settling",
        result.created_s, result.per_s, result.before_due_s, result.status_max_ms, result.peak_mib, result.steady_mib
    );
    Ok(result)
}

/// Build the release binaries (unless told not to) and find them.
fn binaries(build: bool) -> anyhow::Result<Bins> {
    let exe = std::env::current_exe()?;
    // <target>/<profile>/herald-bench
    let target = exe.parent().and_then(Path::parent).context("where is the target directory?")?.to_path_buf();
    if build {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the workspace")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building the release herald and herald-sandbox ...");
        let status = Command::new(cargo)
            .args(["build", "--release", "--locked", "-p", "herald", "-p", "herald-sandbox"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(workspace)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build failed");
        }
    }
    let bins = Bins { herald: target.join("release/herald"), sandbox: target.join("release/herald-sandbox") };
    for bin in [&bins.herald, &bins.sandbox] {
        if !bin.exists() {
            bail!("{} is missing; build it with cargo build --release", bin.display());
        }
    }
    Ok(bins)
}

/// Run a herald CLI command (`args` then `config`) to completion.
pub fn run_cli(bin: &Path, args: &[&str], config: &Path, within: Duration) -> anyhow::Result<(Duration, Output)> {
    let started = Instant::now();
    let mut child = procs::Guarded(
        Command::new(bin)
            .args(args)
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let stdout = child.0.stdout.take();
    let stderr = child.0.stderr.take();
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(stdout.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let err = read(stderr.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let status = wait_bounded(&mut child, within)?;
    let elapsed = started.elapsed();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((elapsed, Output { status, stdout, stderr }))
}

fn wait_bounded(child: &mut procs::Guarded, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.0.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("a command did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `herald check --config FILE` with its output thrown away: wall time, CPU
/// time and peak memory (VmHWM), the last two sampled until it exits.
fn check(bin: &Path, config: &Path, within: Duration) -> anyhow::Result<(f64, f64, f64)> {
    let err = config.with_file_name("check.err");
    let started = Instant::now();
    let mut child = procs::Guarded(
        Command::new(bin)
            .args(["check", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .spawn()?,
    );
    let pid = child.0.id();
    let deadline = started + within;
    let mut peak_kb = 0;
    let mut cpu = f64::NAN;
    let status = loop {
        if let Some(kb) = procs::proc_kb(pid, "VmHWM") {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(c) = procs::cpu_seconds(pid) {
            cpu = c;
        }
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            bail!("herald check did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("herald check failed: {}", std::fs::read_to_string(&err).unwrap_or_default());
    }
    Ok((elapsed, cpu, peak_kb as f64 / 1024.0))
}

/// Bytes the state directory takes on disk (allocated blocks).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += disk_usage(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

fn load_posts(posts: usize, base: DateTime<Utc>, revised: usize) -> Vec<PostSpec> {
    (0..posts)
        .map(|i| PostSpec {
            id: format!("load-{i:06}"),
            at: base + chrono::Duration::minutes(i as i64),
            targets: vec!["all".into()],
            revision: u32::from(i < revised),
        })
        .collect()
}

/// Items 1, 2, 3 and 6 of the issue at one size.
fn load(
    bins: &Bins,
    sink: &Sink,
    dir: &Path,
    deliveries: usize,
    opts: &configs::DaemonOpts,
    settle: Duration,
    budget: &Budget,
) -> anyhow::Result<LoadResult> {
    let posts = (deliveries / LOAD_ACCOUNTS).max(1);
    eprintln!("\n== load: {posts} posts x {LOAD_ACCOUNTS} accounts = {} deliveries", posts * LOAD_ACCOUNTS);
    // Far enough ahead that nothing falls due while measuring.
    let base = (Utc::now() + chrono::Duration::days(30)).trunc_subsecs(0);
    let scenario = configs::write(dir, sink, LOAD_ACCOUNTS, opts, &load_posts(posts, base, 0))?;
    let step = Duration::from_secs(900);

    let (check_s, check_cpu_s, check_peak_mib) = check(&bins.herald, &scenario.main, budget.left(step)?)?;
    eprintln!("check: {check_s:.2} s ({check_cpu_s:.2} s CPU), peak {check_peak_mib:.0} MiB");

    let mut herald = start(bins, &scenario, "run-1")?;
    let first_ready_s = herald.wait_ready(budget.left(step)?)?.as_secs_f64();
    let first_ready_cpu_s = herald.cpu_s();
    let first_peak_mib = herald.peak_mib();
    eprintln!(
        "first reconcile (start to ready, empty state): {first_ready_s:.2} s ({first_ready_cpu_s:.2} s CPU), \
         peak {first_peak_mib:.0} MiB"
    );

    let (t, reload_same) = herald.reload(&bins.herald, budget.left(step)?)?;
    let reload_same_s = t.as_secs_f64();
    eprintln!("reload, nothing changed: {reload_same_s:.2} s: {reload_same}");

    let changed = (posts / 100).max(1);
    let all = load_posts(posts, base, changed);
    for file in 0..=configs::file_of(changed - 1) {
        let from = file * configs::PER_FILE_POSTS;
        let to = (from + configs::PER_FILE_POSTS).min(posts);
        configs::write_posts(&scenario.dir, file, &all[from..to])?;
    }
    let (t, reload_changed) = herald.reload(&bins.herald, budget.left(step)?)?;
    let reload_changed_s = t.as_secs_f64();
    eprintln!("reload, {changed} posts changed: {reload_changed_s:.2} s: {reload_changed}");
    let run_peak_mib = herald.peak_mib();
    herald.stop(budget.left(Duration::from_secs(60))?)?;
    let state_mib = disk_usage(&scenario.state) as f64 / (1024.0 * 1024.0);
    eprintln!("state dir: {state_mib:.0} MiB");

    let mut herald = start(bins, &scenario, "run-2")?;
    let startup_s = herald.wait_ready(budget.left(step)?)?.as_secs_f64();
    let startup_cpu_s = herald.cpu_s();
    std::thread::sleep(settle);
    let steady_rss_mib = herald.rss_mib();
    // The peak of the whole run: start-up, then settling.
    let startup_peak_mib = herald.peak_mib();
    eprintln!(
        "start-up with {deliveries} pending: {startup_s:.2} s ({startup_cpu_s:.2} s CPU), peak {startup_peak_mib:.0} MiB, \
         steady {steady_rss_mib:.0} MiB"
    );
    // Pending, and planned: the deliveries of occurrences further ahead than
    // schedule_ahead, which herald keeps as one record per post.
    let counts = herald.counts()?;
    let pending_after_restart = ["pending", "planned"].iter().filter_map(|k| counts.get(*k)).sum();
    herald.stop(budget.left(Duration::from_secs(60))?)?;
    Ok(LoadResult {
        deliveries: posts * LOAD_ACCOUNTS,
        posts,
        check_s,
        check_cpu_s,
        check_peak_mib,
        first_ready_s,
        first_ready_cpu_s,
        first_peak_mib,
        reload_same_s,
        reload_same,
        reload_changed_s,
        reload_changed,
        run_peak_mib,
        state_mib,
        startup_s,
        startup_cpu_s,
        startup_peak_mib,
        steady_rss_mib,
        pending_after_restart,
        database_mib: None,
    })
}

fn start(bins: &Bins, scenario: &Scenario, name: &str) -> anyhow::Result<Herald> {
    Herald::start(&bins.herald, &scenario.main, &scenario.state, &scenario.dir.join(format!("{name}.log")))
}

/// Wait until `n` deliveries are settled (delivered or failed).
fn wait_settled(herald: &Herald, n: u64, within: Duration) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + within;
    loop {
        let counts = herald.counts()?;
        let delivered = counts.get("delivered").copied().unwrap_or(0);
        let failed = counts.get("failed").copied().unwrap_or(0);
        if delivered + failed >= n {
            return Ok((delivered, failed));
        }
        if Instant::now() >= deadline {
            bail!("only {delivered} delivered and {failed} failed of {n} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().map_or(f64::NAN, |us| us as f64 / 1e6)
}

/// Item 4: `n` deliveries due at one instant across `accounts` accounts.
#[allow(clippy::too_many_arguments)]
fn burst(
    bins: &Bins,
    sink: &Sink,
    dir: &Path,
    n: usize,
    accounts: usize,
    opts: &configs::DaemonOpts,
    lead: Duration,
    budget: &Budget,
    pg: Option<&pg::Cluster>,
) -> anyhow::Result<BurstResult> {
    let posts = (n / accounts).max(1);
    let n = posts * accounts;
    eprintln!("\n== burst: {posts} posts x {accounts} accounts = {n} deliveries due at one instant");
    sink.reset()?;
    let due = (Utc::now() + chrono::Duration::from_std(lead)?).trunc_subsecs(0);
    let specs: Vec<PostSpec> = (0..posts)
        .map(|i| PostSpec { id: format!("burst-{i:03}"), at: due, targets: vec!["all".into()], revision: 0 })
        .collect();
    let scenario = configs::write(dir, sink, accounts, opts, &specs)?;
    let mut herald = start(bins, &scenario, "run")?;
    let ready_s = herald.wait_ready(budget.left(lead + Duration::from_secs(600))?)?.as_secs_f64();
    let ready_before_due_s = seconds(Utc::now(), due);
    let cpu_at_ready = herald.cpu_s();
    let server_at_ready = pg.map(|c| c.cpu_by_pid());
    if ready_before_due_s < 0.0 {
        eprintln!("warning: herald was ready {:.1} s after the due instant; use a longer --lead", -ready_before_due_s);
    }
    // The schedule on disk, 1 s before it falls due (sled writes its log
    // out every 500 ms).
    if ready_before_due_s > 2.0 {
        std::thread::sleep(Duration::from_secs_f64(ready_before_due_s - 1.0));
    }
    let state_mib = disk_usage(&scenario.state) as f64 / (1024.0 * 1024.0);
    let (delivered, failed) = wait_settled(&herald, n as u64, budget.left(lead + Duration::from_secs(600))?)?;
    let cpu_s = herald.cpu_s() - cpu_at_ready;
    // Before herald stops, while its connections (server processes) live.
    let server_cpu_s = pg.zip(server_at_ready.as_ref()).map(|(c, before)| pg::cpu_between(before, &c.cpu_by_pid()));
    let peak_mib = herald.peak_mib();
    let records = herald.audit("delivered")?;
    let last_delivered = records
        .iter()
        .filter_map(|r| r.get("time").and_then(|t| t.as_str()).and_then(|t| t.parse::<DateTime<Utc>>().ok()))
        .max()
        .context("no delivered record in the audit log")?;
    herald.stop(budget.left(Duration::from_secs(60))?)?;
    let received = sink.received()?;
    let firsts: Vec<&procs::Received> = received.iter().filter(|r| !r.key_seen_before).collect();
    let first = firsts.iter().map(|r| r.received_at).min().context("the sink received nothing")?;
    let last = firsts.iter().map(|r| r.received_at).max().context("the sink received nothing")?;
    let due_to_last_delivered_s = seconds(due, last_delivered);
    let result = BurstResult {
        deliveries: n,
        accounts,
        ready_s,
        ready_before_due_s,
        state_mib,
        delivered: records.len(),
        failed,
        received_first_arrivals: firsts.len(),
        received_repeats: received.len() - firsts.len(),
        due_to_first_received_s: seconds(due, first),
        due_to_last_received_s: seconds(due, last),
        due_to_last_delivered_s,
        per_s: delivered as f64 / due_to_last_delivered_s,
        peak_mib,
        cpu_s,
        server_cpu_s,
    };
    eprintln!(
        "burst: {} delivered in {:.2} s = {:.0}/s ({:.2} s herald CPU)",
        result.delivered, result.due_to_last_delivered_s, result.per_s, result.cpu_s
    );
    Ok(result)
}

/// Item 5: `n` deliveries spread evenly over `window` seconds.
#[allow(clippy::too_many_arguments)]
fn lateness(
    bins: &Bins,
    sink: &Sink,
    dir: &Path,
    n: usize,
    window: u64,
    opts: &configs::DaemonOpts,
    lead: Duration,
    budget: &Budget,
) -> anyhow::Result<LatenessResult> {
    eprintln!("\n== lateness: {n} deliveries over {window} s, {LATENESS_ACCOUNTS} accounts");
    sink.reset()?;
    let first = (Utc::now() + chrono::Duration::from_std(lead)?).trunc_subsecs(0);
    let step_us = window as i64 * 1_000_000 / n as i64;
    let specs: Vec<PostSpec> = (0..n)
        .map(|i| PostSpec {
            id: format!("late-{i:04}"),
            // Whole milliseconds: the config keeps milliseconds.
            at: (first + chrono::Duration::microseconds(step_us * i as i64)).trunc_subsecs(3),
            targets: vec![configs::account_id(i % LATENESS_ACCOUNTS + 1)],
            revision: 0,
        })
        .collect();
    let scenario = configs::write(dir, sink, LATENESS_ACCOUNTS, opts, &specs)?;
    let mut herald = start(bins, &scenario, "run")?;
    herald.wait_ready(budget.left(lead + Duration::from_secs(300))?)?;
    let cpu_at_ready = herald.cpu_s();
    if Utc::now() > first {
        eprintln!("warning: herald was ready after the first due time; use a longer --lead");
    }
    let within = lead + Duration::from_secs(window + 120);
    let probe = machine::FsyncProbe::start(dir, Duration::from_millis(50))?;
    wait_settled(&herald, n as u64, budget.left(within)?)?;
    let cpu_s = herald.cpu_s() - cpu_at_ready;
    let fsyncs = probe.finish();
    let load_during = machine::load1();
    herald.stop(budget.left(Duration::from_secs(60))?)?;
    let mut late_ms: Vec<f64> = sink
        .received()?
        .iter()
        .filter(|r| !r.key_seen_before)
        .filter_map(|r| {
            let occurrence = r.body.as_ref()?.get("occurrence")?.as_str()?.parse::<DateTime<Utc>>().ok()?;
            Some(seconds(occurrence, r.received_at) * 1000.0)
        })
        .collect();
    late_ms.sort_by(f64::total_cmp);
    if late_ms.is_empty() {
        bail!("the sink received nothing");
    }
    let pct = |p: f64| machine::quantile(&late_ms, p);
    let result = LatenessResult {
        deliveries: n,
        window_s: window,
        received: late_ms.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: late_ms[late_ms.len() - 1],
        min_ms: late_ms[0],
        fsync_p50_ms: machine::quantile(&fsyncs, 0.5),
        fsync_p99_ms: machine::quantile(&fsyncs, 0.99),
        fsync_max_ms: fsyncs.last().copied().unwrap_or(f64::NAN),
        load_during,
        cpu_s,
    };
    eprintln!(
        "lateness: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; fdatasync meanwhile p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        result.p50_ms, result.p99_ms, result.max_ms, result.fsync_p50_ms, result.fsync_p99_ms, result.fsync_max_ms
    );
    Ok(result)
}
