//! `--only peer`: herald beside a persistent Python scheduler doing the same
//! work, one after the other on the same sink, in one invocation.
//!
//! The peer is APScheduler 3.11 with a SQLite job store and a thread pool
//! (`bench/peer/apscheduler_peer.py`), installed into a venv from the pinned
//! `bench/peer/requirements.txt` on first use. For each case both get the
//! same burst (one-shot deliveries due at one whole second, herald's webhook
//! body, one receiver path per account) and the sink's `received_at` times
//! both; CPU time and peak RSS come from `/proc/<pid>` of each child.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::Serialize;

use crate::procs::{self, Guarded, Sink};
use crate::{Bins, Budget, BurstResult, configs};

/// The peer's script and pinned requirements, in the source tree.
fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peer")
}

/// One case of the side-by-side run.
#[derive(Debug, Serialize)]
pub struct Case {
    pub name: String,
    pub deliveries: usize,
    pub accounts: usize,
    pub herald_concurrency: usize,
    pub peer_threads: usize,
    pub herald: BurstResult,
    /// `None` when the peer did not finish within the harness's budget
    /// (`peer_error` says why).
    pub peer: Option<PeerRun>,
    pub peer_error: Option<String>,
}

/// What the peer did in one case.
#[derive(Debug, Serialize)]
pub struct PeerRun {
    pub deliveries: usize,
    pub threads: usize,
    /// Time `add_job` took for every job (each one SQLite transaction).
    pub scheduled_s: f64,
    /// How long before the due instant the last job was stored.
    pub scheduled_before_due_s: f64,
    /// The SQLite file right after the jobs were added (allocated blocks).
    pub sqlite_mib: f64,
    pub delivered: u64,
    pub failed: u64,
    pub received_first_arrivals: usize,
    pub received_repeats: usize,
    pub due_to_first_received_s: f64,
    pub due_to_last_received_s: f64,
    pub per_s: f64,
    pub peak_mib: f64,
    /// The peer's CPU time (user + system) from the jobs being stored until
    /// all had run.
    pub cpu_s: f64,
}

/// Make (once) the venv with the pinned requirements; its python.
pub fn venv(dir: &Path) -> anyhow::Result<PathBuf> {
    let requirements = peer_dir().join("requirements.txt");
    let wanted =
        std::fs::read_to_string(&requirements).with_context(|| format!("reading {}", requirements.display()))?;
    let marker = dir.join("herald-requirements.txt");
    let python = dir.join("bin/python");
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|had| had == wanted) {
        return Ok(python);
    }
    eprintln!("installing the peer (APScheduler, SQLAlchemy, requests) into {} ...", dir.display());
    let status = Command::new("python3").args(["-m", "venv"]).arg(dir).status().context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv {} failed (is python3-venv installed?)", dir.display());
    }
    let status = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "-r"])
        .arg(&requirements)
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install -r {} failed", requirements.display());
    }
    std::fs::write(&marker, wanted)?;
    Ok(python)
}

/// The four cases: the 5,000 burst over 50 accounts at 20 in flight (like
/// for like) and with herald's defaults, 5,000 to one account (one at a
/// time each), and 50,000 over 1,000 accounts with herald's defaults.
pub fn run(
    bins: &Bins,
    python: &Path,
    sink: &Sink,
    scratch: &Path,
    quick: bool,
    budget: &Budget,
) -> anyhow::Result<Vec<Case>> {
    let mut cases = vec![
        ("20 in flight", 5_000, 50, 20, 20),
        ("herald's defaults", 5_000, 50, 64, 20),
        ("one account, one at a time", 5_000, 1, 64, 1),
        ("50,000, herald's defaults", 50_000, 1_000, 64, 20),
    ];
    if quick {
        cases.truncate(1);
    }
    // Seconds per job the peer's add_job takes (one SQLite transaction
    // each, so it follows the disk): sets how far ahead its due instant
    // must be. Measured first with 200 jobs due in an hour.
    let mut per_job = calibrate(python, sink, &scratch.join("peer-calibration"), budget)?;
    eprintln!("the peer stores a job in {:.1} ms", per_job * 1000.0);
    let mut out = Vec::new();
    for (name, n, accounts, concurrency, threads) in cases {
        if budget.left(Duration::from_secs(1)).is_err() {
            eprintln!("out of time (--max-minutes): {name} not run");
            break;
        }
        let dir = scratch.join(format!("peer-{}-{accounts}-{concurrency}-{threads}", n));
        eprintln!("\n== side by side: {name}: {n} deliveries over {accounts} accounts");
        let opts = configs::DaemonOpts { concurrency, schedule_ahead: None, postgres_url_file: None };
        let herald =
            crate::burst(bins, sink, &dir.join("herald"), n, accounts, &opts, Duration::from_secs(20), budget, None)
                .with_context(|| format!("herald, {name}"))?;
        sink.reset()?;
        // A little more than the adds should take; if they take longer, the
        // peer's times count from when they were done (and say so).
        let lead = Duration::from_secs_f64(5.0 + n as f64 * per_job * 1.2);
        let (peer, peer_error) = match peer(python, sink, &dir, n, accounts, threads, lead, budget) {
            Ok(peer) => {
                per_job = peer.scheduled_s / n as f64;
                (Some(peer), None)
            }
            Err(e) => {
                eprintln!("the peer, {name}: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        };
        out.push(Case {
            name: name.to_string(),
            deliveries: n,
            accounts,
            herald_concurrency: concurrency,
            peer_threads: threads,
            herald,
            peer,
            peer_error,
        });
    }
    Ok(out)
}

/// The peer as a child process, and its stdout's JSON lines.
struct Running {
    child: Guarded,
    lines: mpsc::Receiver<serde_json::Value>,
    log: PathBuf,
}

impl Running {
    fn next(&self, within: Duration) -> anyhow::Result<serde_json::Value> {
        match self.lines.recv_timeout(within) {
            Ok(v) => Ok(v),
            Err(_) => bail!("the peer said nothing within {within:?} (see {})", self.log.display()),
        }
    }
}

/// Seconds per job `add_job` takes now: 200 jobs due in an hour, then the
/// peer is killed.
fn calibrate(python: &Path, sink: &Sink, dir: &Path, budget: &Budget) -> anyhow::Result<f64> {
    let due = (Utc::now() + chrono::Duration::hours(1)).trunc_subsecs(0);
    let running = spawn(python, sink, dir, 200, 50, 1, due)?;
    let scheduled = running.next(budget.left(Duration::from_secs(300))?)?;
    scheduled["seconds"].as_f64().map(|s| s / 200.0).with_context(|| format!("the peer answered {scheduled}"))
}

fn spawn(
    python: &Path,
    sink: &Sink,
    dir: &Path,
    n: usize,
    accounts: usize,
    threads: usize,
    due: DateTime<Utc>,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir)?;
    let db = dir.join("jobs.sqlite");
    let _ = std::fs::remove_file(&db);
    let log = dir.join("peer.log");
    let stderr = std::fs::File::create(&log)?;
    let mut child = Guarded(
        Command::new(python)
            .arg(peer_dir().join("apscheduler_peer.py"))
            .arg("--db")
            .arg(&db)
            .arg("--sink")
            .arg(format!("http://{}", sink.addr))
            .args(["--jobs", &n.to_string(), "--accounts", &accounts.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--due", &due.to_rfc3339_opts(SecondsFormat::Secs, true)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?,
    );
    let stdout = child.0.stdout.take().context("the peer's stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default());
        }
    });
    Ok(Running { child, lines, log })
}

/// Run the peer once: store `n` jobs due `lead` from now, let them run.
#[allow(clippy::too_many_arguments)]
fn peer(
    python: &Path,
    sink: &Sink,
    dir: &Path,
    n: usize,
    accounts: usize,
    threads: usize,
    lead: Duration,
    budget: &Budget,
) -> anyhow::Result<PeerRun> {
    let due: DateTime<Utc> = (Utc::now() + chrono::Duration::from_std(lead)?).trunc_subsecs(0);
    let mut running = spawn(python, sink, dir, n, accounts, threads, due)?;
    let pid = running.child.0.id();
    let scheduled = running.next(budget.left(lead + Duration::from_secs(600))?)?;
    if scheduled["event"] != "scheduled" {
        bail!("the peer answered {scheduled} instead of scheduling");
    }
    let stored_at = Utc::now();
    let scheduled_before_due_s = crate::seconds(stored_at, due);
    let cpu_at_scheduled = procs::cpu_seconds(pid).unwrap_or(f64::NAN);
    // When the jobs were stored late, the peer starts when they are (it runs
    // late jobs at once): its times are counted from then, and flagged.
    let start = if scheduled_before_due_s < 0.0 {
        eprintln!(
            "warning: the peer stored its jobs {:.1} s after the due instant; its times count from then",
            -scheduled_before_due_s
        );
        stored_at
    } else {
        due
    };
    let scheduled_s = scheduled["seconds"].as_f64().unwrap_or(f64::NAN);
    let sqlite_mib = scheduled["sqlite_bytes"].as_f64().unwrap_or(f64::NAN) / (1024.0 * 1024.0);
    eprintln!(
        "peer: {n} jobs stored in {scheduled_s:.2} s ({sqlite_mib:.1} MiB of SQLite), {scheduled_before_due_s:.1} s before due"
    );
    let done = running.next(budget.left(lead + Duration::from_secs(900))?)?;
    let cpu_s = procs::cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_at_scheduled;
    let peak_mib = procs::proc_kb(pid, "VmHWM").map_or(f64::NAN, |kb| kb as f64 / 1024.0);
    // Closing stdin lets it stop.
    drop(running.child.0.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.child.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if done["event"] != "done" {
        bail!("the peer did not finish: {done}");
    }
    let received = sink.received()?;
    let firsts: Vec<&procs::Received> = received.iter().filter(|r| !r.key_seen_before).collect();
    let first = firsts.iter().map(|r| r.received_at).min().context("the sink received nothing")?;
    let last = firsts.iter().map(|r| r.received_at).max().context("the sink received nothing")?;
    let due_to_last_received_s = crate::seconds(start, last);
    let run = PeerRun {
        deliveries: n,
        threads,
        scheduled_s,
        scheduled_before_due_s,
        sqlite_mib,
        delivered: done["delivered"].as_u64().unwrap_or(0),
        failed: done["failed"].as_u64().unwrap_or(0),
        received_first_arrivals: firsts.len(),
        received_repeats: received.len() - firsts.len(),
        due_to_first_received_s: crate::seconds(start, first),
        due_to_last_received_s,
        per_s: firsts.len() as f64 / due_to_last_received_s,
        peak_mib,
        cpu_s,
    };
    eprintln!(
        "peer: {} delivered in {:.2} s = {:.0}/s ({:.2} s CPU, peak {:.0} MiB)",
        run.delivered, run.due_to_last_received_s, run.per_s, run.cpu_s, run.peak_mib
    );
    Ok(run)
}
