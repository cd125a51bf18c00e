//! Operating herald: what systemd hears on `$NOTIFY_SOCKET`, a graceful stop
//! with deliveries cut off and recovered, every CLI command against the
//! running daemon through its control socket, the Prometheus endpoint, the
//! `[alerts]` webhook and command, and the control socket's permissions.
//! Real processes, real signals, real sockets, loopback only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_sandbox::{Fault, Outcome, Signature};
use serde_json::Value;

use crate::helpers::*;

fn count(status: &str, state: &str) -> u64 {
    status_counts(status).get(state).copied().unwrap_or_else(|| panic!("no `{state}` count in:\n{status}"))
}

/// Now on CLOCK_MONOTONIC, in microseconds (what systemd compares
/// MONOTONIC_USEC with).
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

fn events_in(records: &[Record], event: &str) -> usize {
    records.iter().filter(|r| r.event == event).count()
}

// ---------------------------------------------------------------------------
// 1. systemd notifications

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let at = in_secs(1800);
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("later", "Later today.", &["wuhan-hook"], at);
    dir.write_config(&config);
    let notify = NotifySocket::bind(&dir.path().join("notify.sock"), dir.socket());
    let mut herald = dir.spawn(&[("NOTIFY_SOCKET", notify.path()), ("WATCHDOG_USEC", "2000000")]);

    // READY=1 once herald is ready: its store exists and its control socket
    // already answered when the message arrived.
    let messages = notify.wait_for("READY=1", DEADLINE, |m| m.iter().any(|n| n.text == "READY=1")).await;
    assert!(herald.exited().is_none(), "herald exited:\n{}", herald.stderr());
    let ready_at = messages.iter().position(|n| n.text == "READY=1").unwrap();
    let ready = &messages[ready_at];
    assert!(ready.control_socket_answered, "READY=1 came before the control socket answered: {messages:?}");
    assert!(dir.state_dir().join("db").is_dir(), "READY=1 came before the store was created");
    assert!(herald.stderr().contains("herald is ready"), "READY=1 before herald logged it was ready");
    let status = dir.ask_daemon_ok(&["status"]);
    assert_eq!(count(&status, "pending"), 1, "{status}");
    assert!(
        messages[..ready_at].iter().all(|n| !n.text.starts_with("RELOADING") && !n.text.starts_with("STOPPING")),
        "{messages:?}"
    );

    // STATUS= a person can read: the pending count and the next due time.
    let next = at.format("%Y-%m-%d %H:%M").to_string();
    let is_status = |n: &Notification| n.field("STATUS").is_some_and(|s| s.contains("1 pending") && s.contains(&next));
    notify
        .wait_for("a STATUS= line with the pending count and the next due time", DEADLINE, |m| m.iter().any(is_status))
        .await;

    // WatchdogSec=2s: pings from the scheduler loop, at least two in ~5 s.
    let watchdog_since_ready =
        |m: &[Notification]| m.iter().filter(|n| n.text == "WATCHDOG=1" && n.at >= ready.at).count();
    notify.wait_for("two WATCHDOG=1 pings", Duration::from_secs(6), |m| watchdog_since_ready(m) >= 2).await;

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, as systemd
    // expects for Type=notify-reload), then READY=1 again.
    let before_reload = notify.messages().len();
    let before = monotonic_usec();
    herald.signal("HUP");
    let reloaded = |m: &[Notification]| {
        let tail = &m[before_reload..];
        let reloading = tail.iter().position(|n| n.text.lines().any(|l| l == "RELOADING=1"));
        reloading.is_some_and(|i| tail[i..].iter().any(|n| n.text == "READY=1"))
    };
    let messages = notify.wait_for("RELOADING=1 followed by READY=1", DEADLINE, reloaded).await;
    let after = monotonic_usec();
    let reloading = messages[before_reload..].iter().find(|n| n.text.lines().any(|l| l == "RELOADING=1")).unwrap();
    let usec = reloading.field("MONOTONIC_USEC").unwrap_or_else(|| panic!("no MONOTONIC_USEC in {:?}", reloading.text));
    assert!(!usec.is_empty() && usec.bytes().all(|b| b.is_ascii_digit()), "MONOTONIC_USEC={usec}");
    let usec: u64 = usec.parse().unwrap();
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not CLOCK_MONOTONIC at the reload (between {before} and {after})"
    );
    herald.wait_for_log("config reloaded").await;

    // SIGTERM: STOPPING=1, then a clean exit.
    let before_stop = notify.messages().len();
    herald.signal("TERM");
    let status = herald.wait_exit().await;
    assert!(status.success(), "herald exited with {status}:\n{}", herald.stderr());
    notify.wait_for("STOPPING=1", DEADLINE, |m| m[before_stop..].iter().any(|n| n.text == "STOPPING=1")).await;
    assert!(herald.stderr().contains("stopped cleanly"), "{}", herald.stderr());
    assert!(hook.received().is_empty(), "{:?}", hook.received());
}

// ---------------------------------------------------------------------------
// 2. Graceful stop with slow deliveries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_slow_deliveries_exits_at_the_deadline_and_the_next_start_recovers_them() {
    let hook = receiver(None).await;
    hook.set_latency(Duration::from_secs(20));
    let dir = TestDir::new();
    let at = in_secs(1);
    let mut config = daemon_section().replace("shutdown_deadline = \"5s\"", "shutdown_deadline = \"2s\"")
        + &webhook_account("slow-hook", &hook.url())
        + "concurrency = 4\n";
    for i in 0..3 {
        config += &post_at(&format!("slow-{i}"), &format!("Slow message {i}."), &["slow-hook"], at);
    }
    dir.write_config(&config);
    let mut herald = dir.start().await;

    eventually("three attempts in flight", DEADLINE, || count(&dir.ask_daemon_ok(&["status"]), "in_flight") == 3).await;
    let in_flight = dir.log_from_daemon(&["--event", "attempt"]);
    assert_eq!(in_flight.len(), 3, "{in_flight:#?}");

    // herald waits for the deliveries in flight until its deadline (it says
    // so when the deadline ends the wait), then exits without their answers.
    herald.signal("TERM");
    let status = herald.wait_exit().await;
    let stderr = herald.stderr();
    assert!(status.success(), "herald exited with {status} after SIGTERM:\n{stderr}");
    assert!(stderr.contains("stopping: waiting for deliveries in flight"), "{stderr}");
    assert!(
        stderr.contains("shutdown deadline reached; unfinished deliveries will be recovered"),
        "herald did not wait its deadline for the deliveries in flight:\n{stderr}"
    );
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    assert!(hook.accepted().is_empty(), "herald waited for the 20 s answers: {:?}", hook.accepted());

    // Recorded as still in flight: an attempt and no outcome.
    let out = dir.cli(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(READ_STORE), "{}", text(&out.stderr));
    assert_eq!(count(&text(&out.stdout), "in_flight"), 3, "{}", text(&out.stdout));
    let records = dir.log();
    assert_gapless(&records);
    let ids = deliveries(&records);
    assert_eq!(ids.len(), 3, "{records:#?}");
    let cut_off: BTreeSet<String> = in_flight.iter().map(|r| r.delivery.clone()).collect();
    assert_eq!(cut_off, ids.iter().cloned().collect::<BTreeSet<_>>());
    for id in &ids {
        assert_eq!(events_of(&records, id), ["scheduled", "attempt"], "delivery {id}");
        let last = records.iter().rfind(|r| r.delivery == *id).unwrap();
        assert_eq!(last.state, "in_flight", "{:?}", last.raw);
    }

    // The next start, with a fast platform, recovers and delivers them.
    hook.set_latency(Duration::ZERO);
    let herald = dir.start().await;
    eventually("the three cut-off deliveries delivered", DEADLINE, || {
        events_in(&dir.log_from_daemon(&["--event", "delivered"]), "delivered") == 3
    })
    .await;
    let stderr = herald.stop().await;
    assert!(stderr.contains("recovered deliveries that were in flight"), "{stderr}");
    let records = dir.log();
    assert_gapless(&records);
    for id in &ids {
        assert_eq!(events_of(&records, id), ["scheduled", "attempt", "recovered", "attempt", "delivered"], "{id}");
        let recovered = records.iter().find(|r| r.delivery == *id && r.event == "recovered").unwrap();
        assert!(recovered.reason.as_deref().unwrap_or("").contains("same idempotency key"), "{:?}", recovered.raw);
        let delivered = records.iter().find(|r| r.delivery == *id && r.event == "delivered").unwrap();
        assert_eq!(delivered.attempt, 2, "{:?}", delivered.raw);
    }
    let accepted: BTreeSet<String> = accepted_keys(&hook.received()).into_iter().collect();
    assert_eq!(accepted, ids.iter().cloned().collect::<BTreeSet<_>>(), "{:?}", hook.received());
    let status = dir.status();
    assert_eq!((count(&status, "delivered"), count(&status, "in_flight")), (3, 0), "{status}");
}

// ---------------------------------------------------------------------------
// 3. Every CLI command against the running daemon

/// `herald upcoming` lines as (due, post, delivery id).
fn upcoming_rows(stdout: &str) -> Vec<(DateTime<Utc>, String, String)> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && *l != "nothing pending")
        .map(|l| {
            let fields: Vec<&str> = l.split("  ").map(str::trim).collect();
            let due = fields.iter().find_map(|f| DateTime::parse_from_rfc3339(f).ok());
            let due = due.unwrap_or_else(|| panic!("no RFC 3339 due time in `{l}`")).with_timezone(&Utc);
            let post =
                fields.iter().find_map(|f| f.strip_prefix("post ")).unwrap_or_else(|| panic!("no post in `{l}`"));
            let id = l.rsplit_once('[').and_then(|(_, rest)| rest.strip_suffix(']'));
            let id = id.unwrap_or_else(|| panic!("no [delivery id] in `{l}`"));
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "`{id}` in `{l}`");
            (due, post.to_string(), id.to_string())
        })
        .collect()
}

/// An every-minute post: `upcoming` lists every occurrence within the window
/// asked, not only the one the store holds, from the daemon and from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upcoming_lists_every_occurrence_within_the_window() {
    let dir = TestDir::new();
    let config = daemon_section()
        + &webhook_account("wuhan-hook", "http://127.0.0.1:9/hook")
        + &webhook_account("xian-hook", "http://127.0.0.1:9/xian")
        + &post_cron("every-minute", "Each minute.", &["wuhan-hook", "xian-hook"], "* * * * *");
    dir.write_config(&config);
    let herald = dir.start().await;

    let check = |rows: &[(DateTime<Utc>, String, String)], listing: &str| {
        // 30 minutes ahead: 29 or 30 whole minutes (now is not one), two accounts each.
        let minutes: BTreeSet<DateTime<Utc>> = rows.iter().map(|r| r.0).collect();
        assert!((29..=30).contains(&minutes.len()), "{listing}");
        assert_eq!(rows.len(), 2 * minutes.len(), "{listing}");
        let first = *minutes.first().unwrap();
        for (i, m) in minutes.iter().enumerate() {
            assert_eq!(*m, first + chrono::Duration::minutes(i as i64), "not every minute:\n{listing}");
        }
        let ids: BTreeSet<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        assert_eq!(ids.len(), rows.len(), "a delivery id listed twice:\n{listing}");
        assert!(listing.contains("planned (later)"), "{listing}");
    };
    let listing = dir.ask_daemon_ok(&["upcoming", "--until", "30m", "--limit", "1000"]);
    check(&upcoming_rows(&listing), &listing);
    let first_five = upcoming_rows(&dir.ask_daemon_ok(&["upcoming", "--until", "30m", "--limit", "5"]));
    assert_eq!(first_five.len(), 5, "--limit 5: {first_five:?}");
    assert!(first_five.windows(2).all(|w| w[0].0 <= w[1].0), "{first_five:?}");
    herald.stop().await;

    // From the store (the config is readable here: no secrets).
    let out = dir.cli(&["upcoming", "--until", "30m", "--limit", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    check(&upcoming_rows(&listing), &listing);

    let help = text(&dir.cli(&["cancel", "--help"]).stdout);
    assert!(help.contains("planned (later)"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_works_against_the_running_daemon_through_its_socket() {
    let hook = receiver(None).await;
    hook.fail_next(1, Fault::status_with_body(400, r#"{"error": "the text contains a banned word"}"#));
    let dir = TestDir::new();
    let soon = in_secs(2);
    let cancel_at = in_secs(12);
    let base = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &webhook_account("xian-hook", &format!("{}/xian", hook.base_url()));
    let posts = post_at("bad-then-good", "Sent twice: refused, then accepted.", &["wuhan-hook"], soon)
        + &post_at("later-b", "In two hours.", &["wuhan-hook"], in_secs(7200))
        + &post_at("to-cancel", "Withdrawn before its time.", &["wuhan-hook", "xian-hook"], cancel_at)
        + &post_at("later-a", "In half an hour.", &["xian-hook"], in_secs(1800));
    let config = base.clone() + &posts;
    dir.write_config(&config);
    let mut herald = dir.start().await;

    // upcoming: pending deliveries in due order, with post and delivery ids.
    let rows = upcoming_rows(&dir.ask_daemon_ok(&["upcoming"]));
    let dues: Vec<DateTime<Utc>> = rows.iter().map(|r| r.0).collect();
    assert!(dues.windows(2).all(|w| w[0] <= w[1]), "not in due order: {rows:?}");
    let order: Vec<&str> = rows.iter().map(|r| r.1.as_str()).filter(|p| *p != "bad-then-good").collect();
    assert_eq!(order, ["to-cancel", "to-cancel", "later-a", "later-b"], "{rows:?}");
    let to_cancel: BTreeSet<&str> = rows.iter().filter(|r| r.1 == "to-cancel").map(|r| r.2.as_str()).collect();
    assert_eq!(to_cancel.len(), 2, "{rows:?}");
    // later-b is two hours away, beyond the default schedule_ahead (1h):
    // listed as planned, its delivery not created yet.
    let listing = dir.ask_daemon_ok(&["upcoming"]);
    let planned: Vec<&str> = listing.lines().filter(|l| l.contains("  planned  ")).collect();
    assert!(planned.len() == 1 && planned[0].contains("post later-b"), "{listing}");

    // cancel --post: both of its pending deliveries.
    let out = dir.ask_daemon_ok(&["cancel", "--post", "to-cancel"]);
    assert!(out.contains("2 deliveries cancelled"), "{out}");
    let rows = upcoming_rows(&dir.ask_daemon_ok(&["upcoming"]));
    assert!(rows.iter().all(|r| r.1 != "to-cancel"), "still upcoming after cancel: {rows:?}");
    let again = dir.ask_daemon(&["cancel", "--post", "to-cancel"]);
    assert!(!again.status.success(), "cancelling nothing succeeded");
    assert!(text(&again.stdout).contains("nothing to cancel"), "{}", text(&again.stdout));

    // The first attempt is refused (400): failed, listed by status.
    eventually("bad-then-good failed", DEADLINE, || count(&dir.ask_daemon_ok(&["status"]), "failed") == 1).await;
    let status = dir.ask_daemon_ok(&["status"]);
    assert_eq!(
        ["pending", "delivered", "failed", "cancelled"].map(|s| count(&status, s)),
        [1, 0, 1, 2],
        "(pending, delivered, failed, cancelled) in:\n{status}"
    );
    assert!(status.contains("planned: 1 more"), "{status}");
    let failed = dir.log_from_daemon(&["--post", "bad-then-good", "--event", "failed"]);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let id = failed[0].delivery.clone();
    assert!(status.lines().any(|l| l.trim_start().starts_with(&id)), "{id} not listed as failed:\n{status}");

    // retry ID while the daemon runs: sent again without a restart.
    let out = dir.ask_daemon_ok(&["retry", &id]);
    assert!(out.contains("1 delivery queued again; it goes out now"), "{out}");
    assert!(
        hook.wait_until(DEADLINE, |r| r.iter().any(|p| matches!(p.outcome, Outcome::Accepted { .. }))).await,
        "the retried delivery was not sent: {:?}",
        hook.received()
    );
    eventually("bad-then-good delivered", DEADLINE, || {
        events_in(&dir.log_from_daemon(&["--post", "bad-then-good"]), "delivered") == 1
    })
    .await;

    // log --format json --post: only that post's records, its whole story.
    let records = dir.log_from_daemon(&["--post", "bad-then-good"]);
    assert!(records.iter().all(|r| r.post == "bad-then-good"), "{records:#?}");
    assert_eq!(events_of(&records, &id), ["scheduled", "attempt", "failed", "requeued", "attempt", "delivered"]);
    let all = dir.log_from_daemon(&[]);
    assert_gapless(&all);
    assert!(all.len() > records.len());
    // The table and CSV formats answer too.
    let table = dir.ask_daemon_ok(&["log", "--post", "bad-then-good"]);
    assert!(table.lines().next().unwrap_or("").starts_with("seq"), "{table}");
    let csv = dir.ask_daemon_ok(&["log", "--format", "csv", "--account", "xian-*"]);
    assert!(csv.lines().skip(1).all(|l| l.contains("xian-hook")), "{csv}");

    // log --content HASH: the exact text sent.
    let hash = &records.iter().find(|r| r.event == "delivered").unwrap().content_hash;
    let shown = dir.ask_daemon_ok(&["log", "--content", hash]);
    assert!(shown.contains("Sent twice: refused, then accepted."), "{shown}");
    let missing = dir.ask_daemon(&["log", "--content", &"0".repeat(64)]);
    assert!(!missing.status.success(), "an unknown hash was shown: {}", text(&missing.stdout));

    // reload: a new post is applied and the answer says so.
    let with_new = config.clone() + &post_at("added-by-reload", "Added while running.", &["xian-hook"], in_secs(5400));
    dir.write_config(&with_new);
    let out = dir.ask_daemon_ok(&["reload"]);
    assert!(out.contains("config reloaded") && out.contains("posts: 1 added"), "{out}");
    let rows = upcoming_rows(&dir.ask_daemon_ok(&["upcoming"]));
    let order: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(order, ["later-a", "added-by-reload", "later-b"], "{rows:?}");

    // reload with a broken config (valid TOML, but two errors herald finds):
    // refused, every error with file:line, the daemon still running on the
    // old config. (A TOML syntax error in the main file: see the test
    // below.)
    let broken = with_new.clone()
        + &post_at("broken", "Targets a typo.", &["nanjing-hok"], in_secs(600))
        + &post_at("coloured", "Has an unknown key.", &["wuhan-hook"], in_secs(600))
        + "colour = \"red\"\n";
    let broken_line = line_of(&broken, "nanjing-hok");
    let colour_line = line_of(&broken, "colour = \"red\"");
    dir.write_config(&broken);
    let out = dir.ask_daemon(&["reload"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a broken config was accepted:\n{stderr}");
    assert!(names_location(&stderr, "herald.toml", broken_line, None), "no herald.toml:{broken_line} in:\n{stderr}");
    assert!(names_location(&stderr, "herald.toml", colour_line, Some(1)), "no herald.toml:{colour_line} in:\n{stderr}");
    assert!(stderr.contains("nanjing-hok") && stderr.contains("colour"), "{stderr}");
    assert!(stderr.contains("keeps running on the old one"), "{stderr}");
    assert!(herald.exited().is_none(), "herald exited after a refused reload:\n{}", herald.stderr());
    let status = dir.ask_daemon_ok(&["status"]);
    assert_eq!(count(&status, "pending"), 1, "{status}");
    assert!(status.contains("planned: 2 more"), "{status}");
    herald.wait_for_log("keeping the running config").await;
    dir.write_config(&with_new);

    // cancel ID of a planned delivery: created cancelled, in the audit log,
    // gone from upcoming and from the planned count.
    let later_b = rows.iter().find(|r| r.1 == "later-b").map(|r| r.2.clone()).unwrap();
    let out = dir.ask_daemon_ok(&["cancel", &later_b]);
    assert!(out.contains("1 delivery cancelled"), "{out}");
    let rows = upcoming_rows(&dir.ask_daemon_ok(&["upcoming"]));
    assert!(rows.iter().all(|r| r.1 != "later-b"), "still upcoming after cancel: {rows:?}");
    assert!(dir.ask_daemon_ok(&["status"]).contains("planned: 1 more"));
    let records = dir.log_from_daemon(&["--post", "later-b"]);
    assert_eq!(events_of(&records, &later_b), ["cancelled"], "{records:#?}");

    // The cancelled post's time passes: nothing of it is sent. A post due
    // just after it, to the same two accounts, marks the moment: each
    // account sends in due order, so once both of its deliveries arrived,
    // the cancelled ones would have arrived before them.
    let marker_at = cancel_at.max(in_secs(0)) + chrono::Duration::seconds(1);
    let after = "after-cancel";
    dir.write_config(
        &(with_new.clone() + &post_at(after, "Due after the cancelled post.", &["wuhan-hook", "xian-hook"], marker_at)),
    );
    let out = dir.ask_daemon_ok(&["reload"]);
    assert!(out.contains("posts: 1 added"), "{out}");
    let is_marker = |p: &herald_sandbox::ReceivedPost| p.body.as_ref().is_some_and(|b| b["post_id"] == after);
    assert!(
        hook.wait_until(DEADLINE, |r| r.iter().filter(|p| is_marker(p)).count() == 2).await,
        "the post due after the cancelled one did not arrive: {:?}",
        hook.received()
    );
    let received: Vec<_> = hook.received().into_iter().filter(|p| !is_marker(p)).collect();
    assert!(
        received.iter().all(|p| p.body.as_ref().is_none_or(|b| b["post_id"] != "to-cancel")),
        "a cancelled delivery was sent: {received:?}"
    );
    assert_eq!(received.len(), 2, "{received:?}");
    let cancelled = dir.log_from_daemon(&["--post", "to-cancel"]);
    for id in &to_cancel {
        assert_eq!(events_of(&cancelled, id), ["scheduled", "cancelled"], "{cancelled:#?}");
    }

    // With the daemon stopped, reload has nothing to ask.
    herald.stop().await;
    assert!(!dir.socket().exists(), "the control socket outlived herald");
    let out = dir.cli(&["reload"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "herald reload succeeded without a daemon:\n{stderr}");
    assert!(stderr.contains("herald is not running"), "{stderr}");
    assert!(!stderr.contains(ASKED_DAEMON), "{stderr}");
    let out = dir.cli(&["upcoming"]);
    assert!(out.status.success() && text(&out.stderr).contains(READ_STORE), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_syntax_error_in_the_main_file_still_asks_the_daemon_and_names_the_line() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("later", "Later.", &["wuhan-hook"], in_secs(1800));
    dir.write_config(&config);
    let mut herald = dir.start().await;

    // Staff save a half-edited file: an unterminated string.
    let broken = config + "\n[[posts]]\nid = \"broken\"\nbody = \"an unterminated string\n";
    let line = line_of(&broken, "an unterminated string");
    dir.write_config(&broken);

    let out = dir.ask_daemon(&["reload"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a broken config was accepted:\n{stderr}");
    assert!(names_location(&stderr, "herald.toml", line, None), "no herald.toml:{line} in:\n{stderr}");
    assert!(stderr.contains("keeps running on the old one"), "{stderr}");
    // The running daemon still answers the other commands.
    assert_eq!(count(&dir.ask_daemon_ok(&["status"]), "pending"), 1);
    assert!(herald.exited().is_none(), "herald exited:\n{}", herald.stderr());
    herald.wait_for_log("keeping the running config").await;
    herald.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Metrics

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// `{a="x",b="y"}` at the start of `text`: the labels and the rest.
fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{').ok_or("no `{`")?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once('=').ok_or("a label without `=`")?;
        let name = name.trim();
        if !is_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        let mut chars = after.strip_prefix('"').ok_or("a label value without quotes")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next().ok_or("an unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape `\\{c}`")),
                },
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label `{name}` twice"));
        }
        rest = &after[1 + end + 1..];
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by `,`".into());
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name `{name}`"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };
    let mut words = rest.split_whitespace();
    let value = words.next().ok_or("no value")?;
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a float"))?;
    if let Some(timestamp) = words.next() {
        timestamp.parse::<i64>().map_err(|_| format!("`{timestamp}` is not a timestamp"))?;
    }
    if words.next().is_some() {
        return Err("more than a value and a timestamp".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Parse and check the exposition text: every line well formed, a TYPE for
/// every family before its samples, histograms cumulative and ending with
/// +Inf equal to their `_count`. Returns the samples.
fn parse_exposition(body: &str) -> Vec<Sample> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut samples = Vec::new();
    for (n, line) in body.lines().enumerate() {
        let at = format!("line {}: `{line}`", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.first().copied() {
                Some("HELP") => {
                    assert!(words.len() == 3 && is_metric_name(words[1]) && !words[2].trim().is_empty(), "{at}");
                    assert!(helps.insert(words[1].to_string()), "HELP twice for {}: {at}", words[1]);
                }
                Some("TYPE") => {
                    assert!(words.len() == 3 && is_metric_name(words[1]), "{at}");
                    let kind = words[2].trim();
                    assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{at}");
                    assert!(types.insert(words[1].to_string(), kind.to_string()).is_none(), "TYPE twice: {at}");
                    assert!(
                        !samples.iter().any(|s: &Sample| family(&s.name, &types) == words[1]),
                        "TYPE after samples: {at}"
                    );
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).unwrap_or_else(|e| panic!("{at}: {e}"));
        let fam = family(&sample.name, &types);
        let kind = types.get(&fam).unwrap_or_else(|| panic!("{at}: no TYPE for `{fam}`"));
        if kind == "counter" {
            assert!(sample.value >= 0.0, "{at}: a negative counter");
        }
        if kind == "histogram" {
            assert!(sample.name != fam, "{at}: a histogram sample must be _bucket, _sum or _count");
            if sample.name.ends_with("_bucket") {
                assert!(sample.labels.contains_key("le"), "{at}: a bucket without `le`");
            }
        }
        samples.push(sample);
    }

    // Histograms: per family and label set (le aside), cumulative buckets
    // in increasing `le`, the last `+Inf` and equal to `_count`.
    for (fam, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == format!("{fam}_bucket")) {
            let mut labels = s.labels.clone();
            let le = labels.remove("le").unwrap();
            let le = parse_value(&le).unwrap_or_else(|| panic!("{fam}: le=\"{le}\" is not a float"));
            series.entry(labels).or_default().push((le, s.value));
        }
        for (labels, buckets) in &series {
            assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "{fam}{labels:?}: le not increasing: {buckets:?}");
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{fam}{labels:?}: not cumulative: {buckets:?}");
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{fam}{labels:?}: the last bucket is not +Inf");
            let find = |suffix: &str| {
                samples.iter().find(|s| s.name == format!("{fam}{suffix}") && s.labels == *labels).map(|s| s.value)
            };
            let count = find("_count").unwrap_or_else(|| panic!("{fam}{labels:?}: no _count"));
            assert_eq!(last.1, count, "{fam}{labels:?}: +Inf bucket != _count");
            assert!(find("_sum").is_some(), "{fam}{labels:?}: no _sum");
        }
    }
    samples
}

/// The family a sample belongs to (a histogram's `_bucket`, `_sum` and
/// `_count` belong to the histogram).
fn family(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|k| k == "histogram" || k == "summary")
        {
            return base.to_string();
        }
    }
    name.to_string()
}

fn sum(samples: &[Sample], name: &str, label: (&str, &str)) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_parses_as_prometheus_text_and_matches_the_audit_log() {
    let hook = receiver(None).await;
    // Of five requests: one 503 (retried, then delivered), one 400 (failed).
    hook.fail_next(1, Fault::status(503));
    hook.fail_next(1, Fault::status_with_body(400, r#"{"error": "refused"}"#));
    let dir = TestDir::new();
    let port = free_port();
    let at = in_secs(2);
    let config = daemon_section().replace("[daemon]\n", &format!("[daemon]\nmetrics_listen = \"127.0.0.1:{port}\"\n"))
        + &webhook_account("wuhan-hook", &hook.url())
        + &webhook_account("xian-hook", &format!("{}/xian", hook.base_url()))
        + &post_at("first", "First.", &["wuhan-hook", "xian-hook"], at)
        + &post_at("second", "Second.", &["wuhan-hook", "xian-hook"], at);
    dir.write_config(&config);
    let herald = dir.start().await;

    eventually("all four deliveries finished", DEADLINE + Duration::from_secs(5), || {
        let status = dir.ask_daemon_ok(&["status"]);
        count(&status, "delivered") + count(&status, "failed") == 4 && count(&status, "pending") == 0
    })
    .await;
    let status = dir.ask_daemon_ok(&["status"]);
    let records = dir.log_from_daemon(&[]);

    let client = reqwest::Client::new();
    let response = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.expect("GET /metrics");
    assert!(response.status().is_success(), "{}", response.status());
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = response.text().await.unwrap();
    let samples = parse_exposition(&body);

    let delivered = events_in(&records, "delivered");
    let failed = events_in(&records, "failed");
    let retries = events_in(&records, "retry_scheduled");
    let attempts = events_in(&records, "attempt");
    assert_eq!((delivered, failed, retries, attempts), (3, 1, 1, 5), "{records:#?}");
    let total = "herald_deliveries_total";
    assert_eq!(sum(&samples, total, ("outcome", "delivered")), delivered as f64, "{body}");
    assert_eq!(sum(&samples, total, ("outcome", "failed")), failed as f64, "{body}");
    assert_eq!(sum(&samples, total, ("outcome", "retry")), retries as f64, "{body}");
    assert_eq!(sum(&samples, total, ("platform", "webhook")), attempts as f64, "{body}");
    for account in ["wuhan-hook", "xian-hook"] {
        let logged = records.iter().filter(|r| r.account == account && r.event == "delivered").count();
        let counted: f64 = samples
            .iter()
            .filter(|s| s.name == total && s.labels["account"] == account && s.labels["outcome"] == "delivered")
            .map(|s| s.value)
            .sum();
        assert_eq!(counted, logged as f64, "{account}: {body}");
    }
    assert_eq!(
        sum(&samples, "herald_deliveries", ("state", "delivered")),
        count(&status, "delivered") as f64,
        "{body}"
    );
    assert_eq!(sum(&samples, "herald_deliveries", ("state", "failed")), count(&status, "failed") as f64, "{body}");
    assert_eq!(sum(&samples, "herald_deliveries", ("state", "pending")), 0.0, "{body}");
    let one = |name: &str| samples.iter().filter(|s| s.name == name).map(|s| s.value).sum::<f64>();
    assert_eq!(one("herald_dispatch_lateness_seconds_count"), attempts as f64, "{body}");
    assert_eq!(sum(&samples, "herald_platform_latency_seconds_count", ("platform", "webhook")), attempts as f64);
    assert_eq!(one("herald_build_info"), 1.0, "{body}");
    let last_success = samples.iter().filter(|s| s.name == "herald_last_success_timestamp_seconds").count();
    assert_eq!(last_success, 2, "{body}");

    herald.stop().await;
    let gone = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await;
    assert!(gone.is_err(), "the metrics endpoint answers after herald stopped");
}

// ---------------------------------------------------------------------------
// 5. Alerts

/// An alert command writing each alert to its own file in `dir` (alerts,
/// audit heads among them, may run at the same time).
pub(super) fn alert_command(dir: &std::path::Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    format!("[\"sh\", \"-c\", \"cat > $(mktemp {}/alert.XXXXXX)\"]", dir.display())
}

/// What the alert command received, without the audit heads herald also
/// publishes there (see `audit.rs`).
pub(super) fn command_alerts(dir: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        if let Ok(alert) = serde_json::from_str::<Value>(&text)
            && alert["kind"] != "audit_head"
        {
            out.push(alert);
        }
    }
    out
}

/// The alerts a receiver got, without the audit heads.
fn received_alerts(alerts: &herald_sandbox::WebhookReceiver) -> Vec<herald_sandbox::ReceivedPost> {
    alerts.received().into_iter().filter(|p| p.body.as_ref().is_none_or(|b| b["kind"] != "audit_head")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_and_long_pauses_raise_signed_alerts_and_run_the_command() {
    const SECRET: &str = "alert-signing-s3cret-for-tests";
    let hook = receiver(None).await;
    hook.fail_next(1, Fault::status_with_body(400, r#"{"error": "the text contains a banned word"}"#));
    let alerts = receiver(Some(SECRET)).await;
    let dir = TestDir::new();
    let alert_dir = dir.path().join("alerts");
    let alerts_section = format!(
        "\n[alerts]\nwebhook = \"{}\"\nsecret = {{ env = \"HERALD_ALERT_SECRET\" }}\ncommand = {}\npause_threshold = \"1s\"\n",
        alerts.url(),
        alert_command(&alert_dir)
    );
    let config = daemon_section()
        + &alerts_section
        + &webhook_account("hefei-hook", &hook.url())
        + &post_at("refused", "A banned word.", &["hefei-hook"], in_secs(1));
    dir.write_config(&config);
    let env = [("HERALD_ALERT_SECRET", SECRET)];
    let mut herald = dir.start_with(&env).await;

    // A permanent failure: a signed webhook alert, the command, an `alerted` record.
    let failed_alert = |r: &[herald_sandbox::ReceivedPost]| {
        r.iter().any(|p| p.body.as_ref().is_some_and(|b| b["kind"] == "delivery_failed"))
    };
    assert!(alerts.wait_until(DEADLINE, failed_alert).await, "no delivery_failed alert: {:?}", alerts.received());
    eventually("an `alerted` record", DEADLINE, || {
        !dir.log_from_daemon(&["--post", "refused", "--event", "alerted"]).is_empty()
    })
    .await;
    let records = dir.log_from_daemon(&["--post", "refused"]);
    let failed = records.iter().find(|r| r.event == "failed").unwrap_or_else(|| panic!("{records:#?}"));
    let id = failed.delivery.clone();
    assert_eq!(events_of(&records, &id), ["scheduled", "attempt", "failed", "alerted"]);
    let alerted = records.iter().find(|r| r.event == "alerted").unwrap();
    let reason = alerted.reason.as_deref().unwrap_or("");
    assert!(reason.contains("delivery failed"), "{reason}");
    assert!(reason.contains("webhook answered 200") && reason.contains("succeeded"), "{reason}");

    let received = received_alerts(&alerts);
    assert_eq!(received.len(), 1, "{received:?}");
    let alert = &received[0];
    assert_eq!(alert.signature, Signature::Valid, "the alert is not signed with the secret: {alert:?}");
    assert!(matches!(alert.outcome, Outcome::Accepted { .. }), "{alert:?}");
    let body = alert.body.clone().unwrap();
    assert_eq!(body["kind"], "delivery_failed", "{body}");
    assert_eq!(body["delivery"], id.as_str(), "{body}");
    assert_eq!(body["post"], "refused", "{body}");
    assert_eq!(body["account"], "hefei-hook", "{body}");
    assert_eq!(body["platform"], "webhook", "{body}");
    assert!(body["reason"].as_str().unwrap_or("").contains("400"), "{body}");

    // The command got the same alert on its stdin (it finished before the record).
    let written = command_alerts(&alert_dir);
    assert_eq!(written.len(), 1, "{written:?}");
    let from_command = &written[0];
    assert_eq!(from_command["kind"], "delivery_failed", "{from_command}");
    assert_eq!(from_command["delivery"], id.as_str(), "{from_command}");
    assert_eq!(from_command["reason"], body["reason"], "{from_command}");

    // A rate limit pausing the account for 5 s, longer than pause_threshold.
    hook.fail_next(1, Fault::rate_limited(5));
    let config = config + &post_at("throttled", "Paused, then sent.", &["hefei-hook"], in_secs(1));
    dir.write_config(&config);
    herald.signal("HUP");
    herald.wait_for_log("config reloaded").await;
    let paused_alert = |r: &[herald_sandbox::ReceivedPost]| {
        r.iter().any(|p| p.body.as_ref().is_some_and(|b| b["kind"] == "account_paused"))
    };
    assert!(alerts.wait_until(DEADLINE, paused_alert).await, "no account_paused alert: {:?}", alerts.received());
    let paused = alerts.received().into_iter().find(|p| p.body.as_ref().unwrap()["kind"] == "account_paused").unwrap();
    assert_eq!(paused.signature, Signature::Valid, "{paused:?}");
    let body = paused.body.clone().unwrap();
    let throttled = dir.log_from_daemon(&["--post", "throttled", "--event", "retry_scheduled"]);
    assert_eq!(throttled.len(), 1, "{throttled:#?}");
    assert_eq!(body["delivery"], throttled[0].delivery.as_str(), "{body}");
    assert_eq!(body["account"], "hefei-hook", "{body}");
    assert_eq!(body["seconds"], 5, "{body}");
    let until: DateTime<Utc> = body["until"].as_str().unwrap_or_else(|| panic!("no until: {body}")).parse().unwrap();
    assert_eq!(Some(until), throttled[0].next_due, "{body}");

    eventually("the paused delivery delivered and its alert recorded", DEADLINE, || {
        let records = dir.log_from_daemon(&["--post", "throttled"]);
        events_in(&records, "delivered") == 1 && events_in(&records, "alerted") == 1
    })
    .await;
    let written = command_alerts(&alert_dir);
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(written.iter().any(|a| a["kind"] == "account_paused"), "{written:?}");
    assert_eq!(received_alerts(&alerts).len(), 2, "{:?}", alerts.received());

    let stderr = herald.stop().await;
    assert!(!stderr.contains(SECRET), "the alert secret is in the log");
}

// ---------------------------------------------------------------------------
// 6. The control socket's permissions

/// Is `name` an executable file on `$PATH`?
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// A way to run a command as `nobody` (with `extra_group` as its only
/// supplementary group, if given), when this test runs as root.
fn as_nobody(extra_group: Option<u32>) -> Option<Vec<String>> {
    if rustix::process::getuid().as_raw() != 0 {
        return None;
    }
    if on_path("setpriv") {
        let groups = extra_group.map_or("--clear-groups".to_string(), |g| format!("--groups={g}"));
        return Some(vec!["setpriv".into(), "--reuid=nobody".into(), "--regid=nogroup".into(), groups, "--".into()]);
    }
    if on_path("runuser") && extra_group.is_none() {
        return Some(["runuser", "-u", "nobody", "--"].map(str::to_string).to_vec());
    }
    None
}

/// Let `nobody` reach the socket (the temporary folder is 0700).
fn open_the_way_to_the_socket(dir: &TestDir) {
    for path in [dir.path(), dir.state_dir().as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
}

/// `herald status` run through `prefix` (another user), against `dir`'s state.
fn status_as(prefix: &[String], dir: &TestDir) -> std::process::Output {
    let mut command = Command::new(&prefix[0]);
    command
        .args(&prefix[1..])
        .arg(herald_binary())
        .arg("status")
        .arg("--config")
        .arg(dir.config())
        .arg("--state-dir")
        .arg(dir.state_dir())
        .current_dir("/")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUNTIME_DIRECTORY")
        .env_remove("HERALD_CONFIG");
    blocking(|| command.output().expect("running herald as another user"))
}

async fn started_with_one_pending(dir: &TestDir) -> (herald_sandbox::WebhookReceiver, Herald) {
    let hook = receiver(None).await;
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("later", "Later.", &["wuhan-hook"], in_secs(1800));
    dir.write_config(&config);
    let herald = dir.start().await;
    (hook, herald)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_0660_refuses_other_users_and_goes_away_on_stop() {
    let dir = TestDir::new();
    let (_hook, mut herald) = started_with_one_pending(&dir).await;

    let socket = dir.socket();
    let meta = std::fs::metadata(&socket).expect("no control socket");
    assert!(meta.file_type().is_socket(), "{} is not a socket", socket.display());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "mode {:o}", meta.permissions().mode() & 0o7777);
    assert_eq!(count(&dir.ask_daemon_ok(&["status"]), "pending"), 1);

    refused_as_nobody(&dir, &mut herald).await;

    herald.stop().await;
    assert!(!socket.exists(), "the control socket is still there after herald stopped");
}

/// Run `herald status` as `nobody`: refused by the socket's mode, and by
/// herald's own peer check when the mode would let it through.
async fn refused_as_nobody(dir: &TestDir, herald: &mut Herald) {
    let Some(prefix) = as_nobody(None) else {
        eprintln!(
            "NOTE: not checking that another user is refused: the test is not running as root, \
             or neither setpriv nor runuser is installed"
        );
        return;
    };
    open_the_way_to_the_socket(dir);
    let refused = |out: &std::process::Output, why: &str| {
        let said = text(&out.stdout) + &text(&out.stderr);
        assert!(!out.status.success(), "nobody got an answer ({why}):\n{said}");
        assert!(!text(&out.stdout).contains("deliveries:"), "nobody was shown the counts ({why}):\n{said}");
        assert!(!said.contains("panicked"), "{said}");
    };

    // Mode 0660, owned by root: nobody may not connect.
    let out = status_as(&prefix, dir);
    refused(&out, "socket mode 0660");

    // Were the mode wider, herald itself refuses a peer that is not root nor
    // its user or group.
    std::fs::set_permissions(dir.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = status_as(&prefix, dir);
    refused(&out, "socket mode 0666, herald's peer check");
    assert!(text(&out.stderr).contains(ASKED_DAEMON), "nobody did not reach the socket:\n{}", text(&out.stderr));
    herald.wait_for_log("refused a peer").await;
    assert!(herald.exited().is_none(), "herald exited:\n{}", herald.stderr());
    assert_eq!(count(&dir.ask_daemon_ok(&["status"]), "pending"), 1, "herald stopped answering its own user");
}

// Membership of the socket's group: `control_plane.rs`.

/// A Weibo token with a fixed lifetime that ends within `credential_warning`
/// raises an alert (once a day) and an account record in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_close_to_expiry_raise_an_alert_recorded_in_the_audit_log() {
    let dir = TestDir::new();
    let alert_dir = dir.path().join("alerts");
    let expires = rfc3339(in_secs(3 * 86_400));
    dir.write("weibo.token", "sandbox-wuhan");
    let config = daemon_section()
        + &format!("[alerts]\ncommand = {}\ncredential_warning = \"7d\"\n\n", alert_command(&alert_dir))
        + &format!(
            "[accounts.wuhan-weibo]\nplatform = \"weibo\"\nbase_url = \"http://127.0.0.1:9/weibo\"\n\
             access_token = {{ file = \"weibo.token\" }}\nsafe_domain = \"example.gov.cn\"\nrip = \"127.0.0.1\"\nexpires_at = \"{expires}\"\n\n"
        );
    dir.write_config(&config);
    let check = dir.cli(&["check"]);
    assert!(text(&check.stderr).contains("its credentials expire at"), "{}", text(&check.stderr));

    let herald = dir.start().await;
    eventually("the alert command ran", Duration::from_secs(20), || {
        command_alerts(&alert_dir).iter().any(|a| a["kind"] == "credentials_expiring")
    })
    .await;
    // The alert can run before the flush that makes its record visible.
    eventually("the credentials_expiring record", Duration::from_secs(20), || {
        !dir.log_from_daemon(&["--event", "credentials_expiring"]).is_empty()
    })
    .await;
    let records = dir.log_from_daemon(&["--event", "credentials_expiring"]);
    herald.stop().await;
    let written = command_alerts(&alert_dir);
    assert_eq!(written.len(), 1, "once: {written:?}");
    let alert = &written[0];
    assert_eq!(alert["account"], "wuhan-weibo");
    assert!(matches!(alert["days_left"].as_i64(), Some(2 | 3)), "about three days left: {alert}");
    assert_eq!(records.len(), 1, "one record for the account: {records:?}");
    assert_eq!(records[0].account, "wuhan-weibo");
    assert!(records[0].reason.as_deref().unwrap_or_default().contains("credentials expire at"), "{records:?}");
}
