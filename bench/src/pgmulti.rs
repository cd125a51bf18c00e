//! Several herald daemons on PostgreSQL (issue 17), on the cluster of
//! `.ci/postgres.sh start`, against the same sink and the same burst as
//! `--only store-burst` (posts due at one whole second, each to every
//! account):
//!
//! - `pg-standby`: a leader and a standby (two `herald run` processes, two
//!   state directories, one config, one database), alternated with one
//!   daemon alone. Besides the throughput: the standby's CPU over the burst
//!   and the transactions it makes (`pg_stat_database.xact_commit` over a
//!   window with the leader alone, then one with both, both idle before the
//!   burst: the difference is the standby's).
//! - `pg-split`: two daemons, each leading its own database in the same
//!   cluster with half the accounts and half the burst, alternated with one
//!   daemon with everything: the most an active/active design that leases
//!   accounts to daemons could reach on this machine.
//! - `pg-failover`: the leader SIGKILLed mid-burst; the time from the kill
//!   to the survivor's first request at the sink.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;

use crate::configs::{self, PostSpec, Scenario};
use crate::pg::{self, Cluster};
use crate::procs::{self, Herald, Sink};
use crate::{Bins, Budget, seconds, start, wait_settled};

/// The idle windows over which the standby's transactions are counted.
const XACT_WINDOW: Duration = Duration::from_secs(8);
/// Requests the sink records up to this long after the kill may have left
/// the killed leader before it died; the pick-up is the first one after.
const QUIET_AFTER_KILL: Duration = Duration::from_millis(300);
/// How much later each `pg-failover` round kills than the one before
/// (modulo five rounds: the lease's renewal period, 2 s).
const KILL_STAGGER: Duration = Duration::from_millis(400);

/// The burst with a leader and a standby on one database.
#[derive(Debug, Serialize)]
pub struct StandbyBurst {
    pub round: usize,
    pub deliveries: usize,
    pub delivered: usize,
    pub received_first_arrivals: usize,
    pub received_repeats: usize,
    pub due_to_last_delivered_s: f64,
    pub per_s: f64,
    /// CPU (user + system) from just before the due instant until all were delivered.
    pub leader_cpu_s: f64,
    pub standby_cpu_s: f64,
    pub server_cpu_s: f64,
    pub standby_rss_mib: f64,
    /// Transactions/s committed in the database, both daemons idle before
    /// the burst: the leader alone, then leader and standby.
    pub xact_leader_idle_per_s: f64,
    pub xact_both_idle_per_s: f64,
    /// Transactions/s over the burst (due instant to 1 s after the last).
    pub xact_burst_per_s: f64,
    pub load1: f64,
}

/// One daemon's half of the split burst.
#[derive(Debug, Serialize)]
pub struct Half {
    pub deliveries: usize,
    pub delivered: usize,
    pub received_first_arrivals: usize,
    pub due_to_last_delivered_s: f64,
    pub per_s: f64,
    pub cpu_s: f64,
    pub ready_s: f64,
}

/// Two daemons each leading its own database, the burst split between them.
#[derive(Debug, Serialize)]
pub struct SplitBurst {
    pub round: usize,
    pub deliveries: usize,
    pub halves: Vec<Half>,
    /// Both daemons' deliveries over the time until the later one's last.
    pub aggregate_per_s: f64,
    pub server_cpu_s: f64,
    pub sink_cpu_s: f64,
    pub received_repeats: usize,
    pub load1: f64,
}

/// The leader SIGKILLed mid-burst.
#[derive(Debug, Serialize)]
pub struct Failover {
    pub round: usize,
    pub deliveries: usize,
    /// Delivered (by the status counts) when the leader was killed.
    pub delivered_at_kill: u64,
    /// The kill to the survivor's first request at the sink.
    pub pickup_s: f64,
    /// The last request before the kill to the first after it: how long
    /// the sink heard nothing.
    pub gap_s: f64,
    pub delivered: u64,
    pub failed: u64,
    /// Deliveries the survivor found in flight and recovered.
    pub recovered: usize,
    pub received_first_arrivals: usize,
    pub received_repeats: usize,
    pub load1: f64,
}

/// One round of a two-daemon case: what every case is given.
#[derive(Clone, Copy)]
pub struct Round<'a> {
    pub bins: &'a Bins,
    pub sink: &'a Sink,
    /// This round's scratch directory.
    pub dir: &'a Path,
    /// Deliveries in the burst.
    pub n: usize,
    pub accounts: usize,
    pub opts: &'a configs::DaemonOpts,
    /// From the start to the due instant.
    pub lead: Duration,
    pub budget: &'a Budget,
    pub cluster: &'a Cluster,
    /// 1, 2, ...
    pub round: usize,
}

/// Hosts a and b in `dir` with one config: `posts` posts due at `due` to
/// `accounts` accounts, on the new database `db`.
fn two_hosts(run: &Round<'_>, db: &str, posts: usize, due: DateTime<Utc>) -> anyhow::Result<(Scenario, Scenario)> {
    let url = run.cluster.new_database(db, &run.dir.join("pg"))?;
    let opts = configs::DaemonOpts { postgres_url_file: Some(url), ..run.opts.clone() };
    let a = configs::write(&run.dir.join("host-a"), run.sink, run.accounts, &opts, &burst_posts("burst", posts, due))?;
    let b = second_host(&a, &run.dir.join("host-b"))?;
    Ok((a, b))
}

/// Start host b, once a leads: ready, answering, and a standby.
fn start_standby(bins: &Bins, b: &Scenario, within: Duration) -> anyhow::Result<Herald> {
    let mut standby = start(bins, b, "run")?;
    standby.wait_ready(within)?;
    wait_answering(&standby, within)?;
    if !standby.log().contains("herald is ready: standby") {
        bail!("the second daemon did not start as a standby:\n{}", standby.log());
    }
    Ok(standby)
}

/// A second host: the same config (main file and posts) in `dir`, with
/// its own state directory (and so its own control socket).
fn second_host(first: &Scenario, dir: &Path) -> anyhow::Result<Scenario> {
    std::fs::create_dir_all(dir.join("posts.d"))?;
    std::fs::copy(&first.main, dir.join("herald.toml"))?;
    for entry in std::fs::read_dir(first.dir.join("posts.d"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join("posts.d").join(entry.file_name()))?;
    }
    Ok(Scenario { dir: dir.to_path_buf(), main: dir.join("herald.toml"), state: dir.join("state") })
}

/// `posts` posts (ids `prefix-NNN`) due at `due`, each to the group `all`.
fn burst_posts(prefix: &str, posts: usize, due: DateTime<Utc>) -> Vec<PostSpec> {
    (0..posts)
        .map(|i| PostSpec { id: format!("{prefix}-{i:03}"), at: due, targets: vec!["all".into()], revision: 0 })
        .collect()
}

/// The time of the last `delivered` audit record and how many there are.
fn last_delivered(herald: &Herald) -> anyhow::Result<(usize, DateTime<Utc>)> {
    let records = herald.audit("delivered")?;
    let last = records
        .iter()
        .filter_map(|r| r.get("time").and_then(|t| t.as_str()).and_then(|t| t.parse::<DateTime<Utc>>().ok()))
        .max()
        .context("no delivered record in the audit log")?;
    Ok((records.len(), last))
}

fn sleep_until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        std::thread::sleep(wait);
    }
}

/// Wait until herald answers `GET /v1/status` (a standby's READY=1 may
/// come before its control socket is bound on a slow machine: no harm in
/// asking until it answers).
fn wait_answering(herald: &Herald, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while herald.counts().is_err() {
        if Instant::now() > deadline {
            bail!("herald did not answer on its control socket within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `pg-standby`, one round: the burst of `n` over `accounts` with a leader
/// and a standby on one new database.
pub fn standby_burst(run: &Round<'_>) -> anyhow::Result<StandbyBurst> {
    let Round { bins, sink, n, accounts, lead, budget, cluster, round, .. } = *run;
    let posts = (n / accounts).max(1);
    let n = posts * accounts;
    eprintln!("\n== burst with a leader and a standby: {posts} posts x {accounts} accounts = {n} deliveries");
    // Two idle windows and two starts before the due instant.
    let lead = lead.max(XACT_WINDOW * 2 + Duration::from_secs(10));
    sink.reset()?;
    let load1 = crate::machine::load1();
    let due = (Utc::now() + chrono::Duration::from_std(lead)?).trunc_subsecs(0);
    let db = format!("herald_standby_{round}");
    let (a, b) = two_hosts(run, &db, posts, due)?;
    let step = budget.left(lead + Duration::from_secs(600))?;

    let mut leader = start(bins, &a, "run")?;
    leader.wait_ready(step)?;
    wait_answering(&leader, step)?;
    // The leader's start-up transactions are published within a second.
    std::thread::sleep(Duration::from_secs(1));
    let x0 = cluster.xact_commit(&db)?;
    std::thread::sleep(XACT_WINDOW);
    let x1 = cluster.xact_commit(&db)?;
    let standby = start_standby(bins, &b, step)?;
    std::thread::sleep(Duration::from_secs(1));
    let x2 = cluster.xact_commit(&db)?;
    std::thread::sleep(XACT_WINDOW);
    let x3 = cluster.xact_commit(&db)?;
    if Utc::now() > due - chrono::Duration::milliseconds(200) {
        bail!("the idle windows ran past the due instant; use a longer --lead");
    }
    // From just before the due instant.
    sleep_until(due - chrono::Duration::milliseconds(200));
    let (leader_cpu0, standby_cpu0, server0) = (leader.cpu_s(), standby.cpu_s(), cluster.cpu_by_pid());
    let x4 = cluster.xact_commit(&db)?;
    let (_, failed) = wait_settled(&leader, n as u64, step)?;
    let leader_cpu_s = leader.cpu_s() - leader_cpu0;
    let standby_cpu_s = standby.cpu_s() - standby_cpu0;
    let server_cpu_s = pg::cpu_between(&server0, &cluster.cpu_by_pid());
    let standby_rss_mib = standby.rss_mib();
    let (delivered, last) = last_delivered(&leader)?;
    sleep_until(last + chrono::Duration::seconds(1));
    let x5 = cluster.xact_commit(&db)?;
    // The standby first, so that the leader's stop hands nothing over.
    standby.stop(budget.left(Duration::from_secs(60))?)?;
    leader.stop(budget.left(Duration::from_secs(60))?)?;
    let received = sink.received()?;
    let firsts = received.iter().filter(|r| !r.key_seen_before).count();
    let due_to_last_delivered_s = seconds(due, last);
    let window = XACT_WINDOW.as_secs_f64();
    let result = StandbyBurst {
        round,
        deliveries: n,
        delivered,
        received_first_arrivals: firsts,
        received_repeats: received.len() - firsts,
        due_to_last_delivered_s,
        per_s: delivered as f64 / due_to_last_delivered_s,
        leader_cpu_s,
        standby_cpu_s,
        server_cpu_s,
        standby_rss_mib,
        xact_leader_idle_per_s: (x1 - x0) as f64 / window,
        xact_both_idle_per_s: (x3 - x2) as f64 / window,
        xact_burst_per_s: (x5 - x4) as f64 / (due_to_last_delivered_s + 1.2),
        load1,
    };
    if failed > 0 {
        eprintln!("warning: {failed} deliveries failed");
    }
    eprintln!(
        "leader + standby: {delivered} delivered in {:.2} s = {:.0}/s; standby {:.3} s CPU over the burst, \
         {:.0} MiB; transactions/s idle: leader alone {:.2}, both {:.2}; over the burst {:.0}",
        result.due_to_last_delivered_s,
        result.per_s,
        result.standby_cpu_s,
        result.standby_rss_mib,
        result.xact_leader_idle_per_s,
        result.xact_both_idle_per_s,
        result.xact_burst_per_s
    );
    Ok(result)
}

/// `pg-split`, one round: two daemons, each leading its own new database
/// with half of `accounts` (named `city-NNNN` and `town-NNNN`) and half of
/// the `n` deliveries, all due at one instant.
pub fn split_burst(run: &Round<'_>) -> anyhow::Result<SplitBurst> {
    let Round { bins, sink, dir, n, accounts, opts, lead, budget, cluster, round } = *run;
    let half_accounts = (accounts / 2).max(1);
    let posts = (n / accounts).max(1);
    let n = 2 * posts * half_accounts;
    eprintln!(
        "\n== burst split over two daemons, two databases: 2 x {posts} posts x {half_accounts} accounts = {n} deliveries"
    );
    sink.reset()?;
    let load1 = crate::machine::load1();
    let due = (Utc::now() + chrono::Duration::from_std(lead)?).trunc_subsecs(0);
    let mut hosts = Vec::new();
    for name in ["a", "b"] {
        let db = format!("herald_split_{name}_{round}");
        let host = dir.join(format!("host-{name}"));
        let url = cluster.new_database(&db, &host.join("pg"))?;
        let opts = configs::DaemonOpts { postgres_url_file: Some(url), ..opts.clone() };
        let scenario =
            configs::write(&host, sink, half_accounts, &opts, &burst_posts(&format!("burst-{name}"), posts, due))?;
        if name == "b" {
            // Other accounts than host a's (same sink, other paths).
            let main = std::fs::read_to_string(&scenario.main)?.replace("city-", "town-");
            std::fs::write(&scenario.main, main)?;
        }
        hosts.push(scenario);
    }
    let step = budget.left(lead + Duration::from_secs(600))?;
    let mut daemons = Vec::new();
    let mut ready = Vec::new();
    for host in &hosts {
        let mut herald = start(bins, host, "run")?;
        ready.push(herald.wait_ready(step)?.as_secs_f64());
        daemons.push(herald);
    }
    if Utc::now() > due {
        eprintln!("warning: the daemons were ready after the due instant; use a longer --lead");
    }
    sleep_until(due - chrono::Duration::milliseconds(200));
    let cpu0: Vec<f64> = daemons.iter().map(Herald::cpu_s).collect();
    let server0 = cluster.cpu_by_pid();
    let sink0 = procs::cpu_seconds(sink.pid()).unwrap_or(f64::NAN);
    let half = (posts * half_accounts) as u64;
    // Each daemon's CPU when it has settled its half.
    let mut cpu = [f64::NAN; 2];
    let deadline = Instant::now() + step;
    while cpu.iter().any(|c| c.is_nan()) {
        for (i, herald) in daemons.iter().enumerate() {
            if cpu[i].is_nan() {
                let counts = herald.counts()?;
                let settled = ["delivered", "failed"].iter().filter_map(|k| counts.get(*k)).sum::<u64>();
                if settled >= half {
                    cpu[i] = herald.cpu_s() - cpu0[i];
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the split burst did not settle within {step:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let server_cpu_s = pg::cpu_between(&server0, &cluster.cpu_by_pid());
    let sink_cpu_s = procs::cpu_seconds(sink.pid()).unwrap_or(f64::NAN) - sink0;
    let mut lasts = Vec::new();
    for herald in &daemons {
        lasts.push(last_delivered(herald)?);
    }
    for herald in daemons {
        herald.stop(budget.left(Duration::from_secs(60))?)?;
    }
    let received = sink.received()?;
    let firsts: Vec<&procs::Received> = received.iter().filter(|r| !r.key_seen_before).collect();
    let halves: Vec<Half> = lasts
        .iter()
        .zip(["burst-a-", "burst-b-"])
        .enumerate()
        .map(|(i, ((delivered, last), prefix))| {
            let span = seconds(due, *last);
            let arrivals = firsts
                .iter()
                .filter(|r| {
                    r.body
                        .as_ref()
                        .and_then(|b| b.get("post_id"))
                        .and_then(|p| p.as_str())
                        .is_some_and(|p| p.starts_with(prefix))
                })
                .count();
            Half {
                deliveries: half as usize,
                delivered: *delivered,
                received_first_arrivals: arrivals,
                due_to_last_delivered_s: span,
                per_s: *delivered as f64 / span,
                cpu_s: cpu[i],
                ready_s: ready[i],
            }
        })
        .collect();
    let span = halves.iter().map(|h| h.due_to_last_delivered_s).fold(f64::NAN, f64::max);
    let total: usize = halves.iter().map(|h| h.delivered).sum();
    let result = SplitBurst {
        round,
        deliveries: n,
        aggregate_per_s: total as f64 / span,
        halves,
        server_cpu_s,
        sink_cpu_s,
        received_repeats: received.len() - firsts.len(),
        load1,
    };
    eprintln!(
        "split: {total} delivered in {span:.2} s = {:.0}/s together ({}); server {:.2} s CPU, sink {:.2} s CPU",
        result.aggregate_per_s,
        result.halves.iter().map(|h| format!("{:.0}/s, {:.2} s CPU", h.per_s, h.cpu_s)).collect::<Vec<_>>().join("; "),
        result.server_cpu_s,
        result.sink_cpu_s
    );
    Ok(result)
}

/// `pg-failover`, one round: a leader and a standby on one new database,
/// the leader SIGKILLed once a third of the `n` are delivered, plus the
/// round's stagger.
pub fn failover(run: &Round<'_>) -> anyhow::Result<Failover> {
    let Round { bins, sink, n, accounts, lead, budget, round, .. } = *run;
    let posts = (n / accounts).max(1);
    let n = posts * accounts;
    let kill_at = (n / 3) as u64;
    eprintln!("\n== failover: {n} deliveries due at one instant, the leader SIGKILLed after {kill_at}");
    sink.reset()?;
    let load1 = crate::machine::load1();
    let due = (Utc::now() + chrono::Duration::from_std(lead)?).trunc_subsecs(0);
    let (a, b) = two_hosts(run, &format!("herald_failover_{round}"), posts, due)?;
    let step = budget.left(lead + Duration::from_secs(600))?;
    let mut leader = start(bins, &a, "run")?;
    leader.wait_ready(step)?;
    let standby = start_standby(bins, &b, step)?;
    if Utc::now() > due {
        bail!("both daemons were ready only after the due instant; use a longer --lead");
    }
    let deadline = Instant::now() + step;
    let delivered_at_kill = loop {
        let delivered = leader.counts()?.get("delivered").copied().unwrap_or(0);
        if delivered >= kill_at {
            break delivered;
        }
        if Instant::now() > deadline {
            bail!("only {delivered} delivered before the kill within {step:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Everything before is at fixed offsets from the start, the leader's
    // renewals too (every 2 s from its start): without a stagger each
    // round would kill at the same point of the renewal cycle. Round r
    // waits (r - 1) x 400 ms more (mod 2 s), so five rounds cover it.
    std::thread::sleep(KILL_STAGGER * ((round as u32 - 1) % 5));
    let delivered_at_kill = leader.counts()?.get("delivered").copied().unwrap_or(delivered_at_kill);
    leader.kill()?;
    let killed_at = Utc::now();
    eprintln!("killed the leader after {delivered_at_kill} delivered");
    let (delivered, failed) = wait_settled(&standby, n as u64, step)?;
    if !standby.log().contains("took over: leading") {
        bail!("the standby settled the burst without taking over?\n{}", standby.log());
    }
    let recovered = standby.audit("recovered")?.len();
    standby.stop(budget.left(Duration::from_secs(60))?)?;
    let received = sink.received()?;
    let quiet = killed_at + chrono::Duration::from_std(QUIET_AFTER_KILL)?;
    let first_after = received
        .iter()
        .map(|r| r.received_at)
        .filter(|t| *t > quiet)
        .min()
        .context("the survivor sent nothing after the kill")?;
    let last_before = received.iter().map(|r| r.received_at).filter(|t| *t <= quiet).max().unwrap_or(killed_at);
    let firsts = received.iter().filter(|r| !r.key_seen_before).count();
    let result = Failover {
        round,
        deliveries: n,
        delivered_at_kill,
        pickup_s: seconds(killed_at, first_after),
        gap_s: seconds(last_before, first_after),
        delivered,
        failed,
        recovered,
        received_first_arrivals: firsts,
        received_repeats: received.len() - firsts,
        load1,
    };
    eprintln!(
        "failover: pick-up {:.2} s (kill to the survivor's first request), the sink silent {:.2} s; \
         {delivered} delivered, {failed} failed, {recovered} recovered, {} repeated requests",
        result.pickup_s, result.gap_s, result.received_repeats
    );
    Ok(result)
}

/// The tables of the three cases.
pub fn print(standby: &[StandbyBurst], split: &[SplitBurst], failovers: &[Failover]) {
    if !standby.is_empty() {
        println!("\nThe burst with a leader and a standby on one database:");
        let rows: Vec<Vec<String>> = standby
            .iter()
            .map(|r| {
                vec![
                    r.round.to_string(),
                    format!("{} / {}", r.delivered, r.deliveries),
                    r.received_repeats.to_string(),
                    format!("{:.2} s", r.due_to_last_delivered_s),
                    format!("{:.0}", r.per_s),
                    format!("{:.0} µs", r.leader_cpu_s / r.delivered as f64 * 1e6),
                    format!("{:.0} µs", r.server_cpu_s / r.delivered as f64 * 1e6),
                    format!(
                        "{:.3} s ({:.1}% of a core)",
                        r.standby_cpu_s,
                        100.0 * r.standby_cpu_s / r.due_to_last_delivered_s
                    ),
                    format!("{:.0} MiB", r.standby_rss_mib),
                    format!("{:.2} / {:.2}", r.xact_leader_idle_per_s, r.xact_both_idle_per_s),
                    format!("{:.0}", r.xact_burst_per_s),
                    format!("{:.2}", r.load1),
                ]
            })
            .collect();
        crate::report::table(
            &[
                "round",
                "delivered",
                "repeats",
                "due -> last delivered",
                "deliveries/s",
                "leader CPU/delivery",
                "server CPU/delivery",
                "standby CPU (burst)",
                "standby RSS",
                "xact/s idle: leader / both",
                "xact/s burst",
                "load",
            ],
            &rows,
        );
    }
    if !split.is_empty() {
        println!("\nThe burst split over two daemons, each leading its own database (half the accounts each):");
        let rows: Vec<Vec<String>> = split
            .iter()
            .map(|r| {
                let h = |i: usize, f: &dyn Fn(&Half) -> String| r.halves.get(i).map_or("-".into(), f);
                vec![
                    r.round.to_string(),
                    r.halves.iter().map(|h| h.delivered).sum::<usize>().to_string() + &format!(" / {}", r.deliveries),
                    r.received_repeats.to_string(),
                    format!("{:.0}", r.aggregate_per_s),
                    h(0, &|h| format!("{:.0}/s in {:.2} s", h.per_s, h.due_to_last_delivered_s)),
                    h(1, &|h| format!("{:.0}/s in {:.2} s", h.per_s, h.due_to_last_delivered_s)),
                    format!("{:.2} s", r.halves.iter().map(|h| h.cpu_s).sum::<f64>()),
                    format!("{:.2} s", r.server_cpu_s),
                    format!("{:.2} s", r.sink_cpu_s),
                    format!("{:.2}", r.load1),
                ]
            })
            .collect();
        crate::report::table(
            &[
                "round",
                "delivered",
                "repeats",
                "deliveries/s together",
                "daemon a",
                "daemon b",
                "herald CPU (both)",
                "server CPU",
                "sink CPU",
                "load",
            ],
            &rows,
        );
    }
    if !failovers.is_empty() {
        println!("\nThe leader SIGKILLed mid-burst (lease 10 s, renewed every 2 s):");
        let rows: Vec<Vec<String>> = failovers
            .iter()
            .map(|r| {
                vec![
                    r.round.to_string(),
                    format!("{} / {}", r.delivered_at_kill, r.deliveries),
                    format!("{:.2} s", r.pickup_s),
                    format!("{:.2} s", r.gap_s),
                    format!("{} / {}", r.delivered, r.deliveries),
                    r.failed.to_string(),
                    r.recovered.to_string(),
                    r.received_repeats.to_string(),
                    format!("{:.2}", r.load1),
                ]
            })
            .collect();
        crate::report::table(
            &[
                "round",
                "killed after",
                "pick-up (kill to first request)",
                "sink silent",
                "delivered",
                "failed",
                "recovered",
                "repeats at the sink",
                "load",
            ],
            &rows,
        );
    }
}

/// A restart on PostgreSQL with a schedule too big for one first start.
#[derive(Debug, Serialize)]
pub struct CopiedRestart {
    pub deliveries: usize,
    /// The sled first start that made the schedule (start to ready).
    pub sled_first_ready_s: f64,
    /// `herald store copy --to postgres`, to its exit (verified).
    pub copy_s: f64,
    pub database_mib: f64,
    /// Each start on the copy: start to ready, herald's CPU, peak RSS.
    pub starts: Vec<(f64, f64, f64)>,
    /// RSS `--settle` seconds after the last start.
    pub steady_rss_mib: f64,
    pub pending_after_restart: u64,
}

/// `pg-restart`: `deliveries` created at once (`schedule_ahead` 60d) by a
/// first start on sled, then moved with
/// `herald store copy --to postgres` (as an office would move) and herald
/// started on the copy `starts` times.
#[allow(clippy::too_many_arguments)]
pub fn copied_restart(
    bins: &Bins,
    sink: &Sink,
    dir: &Path,
    deliveries: usize,
    opts: &configs::DaemonOpts,
    settle: Duration,
    budget: &Budget,
    cluster: &Cluster,
    starts: usize,
) -> anyhow::Result<CopiedRestart> {
    let posts = (deliveries / crate::LOAD_ACCOUNTS).max(1);
    let n = posts * crate::LOAD_ACCOUNTS;
    eprintln!("\n== restart on PostgreSQL: {n} deliveries made on sled, copied with herald store copy");
    let base = (Utc::now() + chrono::Duration::days(30)).trunc_subsecs(0);
    let sled = configs::DaemonOpts { schedule_ahead: Some("60d".into()), postgres_url_file: None, ..opts.clone() };
    let scenario = configs::write(dir, sink, crate::LOAD_ACCOUNTS, &sled, &crate::load_posts(posts, base, 0))?;
    let step = Duration::from_secs(1800);
    let mut herald = start(bins, &scenario, "sled")?;
    let sled_first_ready_s = herald.wait_ready(budget.left(step)?)?.as_secs_f64();
    herald.stop(budget.left(Duration::from_secs(120))?)?;
    eprintln!("sled first start: {sled_first_ready_s:.2} s");

    let db = "herald_copied";
    let url = cluster.new_database(db, &dir.join("pg"))?;
    let mut main = std::fs::read_to_string(&scenario.main)?;
    main.push_str(&format!("\n[store]\nbackend = \"postgres\"\nurl = {{ file = \"{}\" }}\n", url.display()));
    std::fs::write(&scenario.main, main)?;
    let (took, out) = crate::run_cli(
        &bins.herald,
        &["store", "copy", "--to", "postgres", "--config"],
        &scenario.main,
        budget.left(step)?,
    )?;
    if !out.status.success() {
        bail!(
            "herald store copy failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let copy_s = took.as_secs_f64();
    let database_mib = cluster.database_size(db)? as f64 / (1024.0 * 1024.0);
    eprintln!("store copy: {copy_s:.1} s, verified; pg_database_size {database_mib:.0} MiB");

    let mut times = Vec::new();
    let mut last = None;
    for i in 1..=starts {
        let mut herald = start(bins, &scenario, &format!("pg-{i}"))?;
        let ready = herald.wait_ready(budget.left(step)?)?.as_secs_f64();
        let (cpu, peak) = (herald.cpu_s(), herald.peak_mib());
        eprintln!("start {i} on the copy: {ready:.2} s ({cpu:.2} s CPU), peak {peak:.0} MiB");
        times.push((ready, cpu, peak));
        if i == starts {
            std::thread::sleep(settle);
            let counts = herald.counts()?;
            let pending = ["pending", "planned"].iter().filter_map(|k| counts.get(*k)).sum::<u64>();
            last = Some((herald.rss_mib(), pending));
        }
        herald.stop(budget.left(Duration::from_secs(120))?)?;
    }
    let (steady_rss_mib, pending_after_restart) = last.context("no start on the copy")?;
    eprintln!("steady RSS {steady_rss_mib:.0} MiB, {pending_after_restart} pending");
    Ok(CopiedRestart {
        deliveries: n,
        sled_first_ready_s,
        copy_s,
        database_mib,
        starts: times,
        steady_rss_mib,
        pending_after_restart,
    })
}
