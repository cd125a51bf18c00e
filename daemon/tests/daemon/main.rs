//! The daemon end to end: the real `herald` binary as a child process, a
//! config in a fresh directory, real sled files, real signals, and a webhook
//! receiver from the sandbox on loopback. Each test asserts what a user of
//! herald would notice: what arrived where and when, and what `herald status`
//! and `herald log` say afterwards.

mod approval;
mod audit;
mod control_plane;
mod helpers;
mod operations;
mod pause;
mod platforms;
mod postgres;
mod recall;
mod runtime;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use herald_sandbox::{Fault, Outcome, ReceivedPost, Signature};
use serde_json::Value;

use helpers::*;

/// How long until `t` (zero if past), plus the usual deadline.
fn until(t: DateTime<Utc>) -> Duration {
    (t - Utc::now()).to_std().unwrap_or_default() + DEADLINE
}

fn body_str<'a>(p: &'a ReceivedPost, key: &str) -> &'a str {
    p.body.as_ref().and_then(|b| b[key].as_str()).unwrap_or_else(|| panic!("no `{key}` in {:?}", p.body))
}

fn body_text(p: &ReceivedPost) -> &str {
    p.body.as_ref().and_then(|b| b["content"]["text"].as_str()).unwrap_or_else(|| panic!("no text in {:?}", p.body))
}

/// Assert the counts `herald status` shows, as (pending, in_flight,
/// delivered, failed, cancelled, skipped).
fn assert_counts(status: &str, expected: [u64; 6]) {
    let counts = status_counts(status);
    let got = ["pending", "in_flight", "delivered", "failed", "cancelled", "skipped"]
        .map(|state| counts.get(state).copied().unwrap_or_else(|| panic!("no `{state}` count in:\n{status}")));
    assert_eq!(got, expected, "(pending, in_flight, delivered, failed, cancelled, skipped) in:\n{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_post_reaches_every_account_at_its_time() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let at = in_secs(3);
    let body = "Callers posing as shop staff offer a refund and ask for a bank code. Hang up.";
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &webhook_account("xian-hook", &format!("{}/xian", hook.base_url()))
        + &post_at("refund-call-warning", body, &["wuhan-hook", "xian-hook"], at);
    dir.write_config(&config);
    let herald = dir.start().await;

    assert!(hook.wait_until(until(at), |r| r.len() >= 2).await, "not delivered: {:?}", hook.received());
    let received = hook.received();
    assert_eq!(received.len(), 2, "{received:?}");
    for p in &received {
        assert!(p.received_at >= at, "arrived at {} before its time {at}", p.received_at);
        assert!(matches!(p.outcome, Outcome::Accepted { .. }), "{p:?}");
        assert_eq!(body_text(p), body);
        assert_eq!(body_str(p, "post_id"), "refund-call-warning");
        assert_eq!(p.idempotency_key, p.delivery_id);
    }
    let paths: BTreeSet<&str> = received.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, BTreeSet::from(["/hook", "/xian"]));
    let accounts: BTreeSet<&str> = received.iter().map(|p| body_str(p, "account")).collect();
    assert_eq!(accounts, BTreeSet::from(["wuhan-hook", "xian-hook"]));

    herald.stop().await;
    let records = dir.log();
    assert_gapless(&records);
    let ids = deliveries(&records);
    assert_eq!(ids.len(), 2, "{records:#?}");
    for id in &ids {
        // On time by herald's own rule (a `late` record otherwise).
        assert_eq!(events_of(&records, id), ["scheduled", "attempt", "delivered"], "delivery {id}");
        let delivered = records.iter().find(|r| r.delivery == *id && r.event == "delivered").unwrap();
        assert_eq!(delivered.state, "delivered");
        assert_eq!(delivered.platform, "webhook");
        assert_eq!(Some(delivered.account.as_str()), accepted_account(&received, id).as_deref());
        assert_eq!(delivered.post, "refund-call-warning");
        assert_eq!(delivered.occurrence, at);
        assert_eq!(delivered.attempt, 1);
        assert_eq!(delivered.status, Some(200));
        let url = accepted_url(&received, id).unwrap_or_else(|| panic!("the receiver never accepted key {id}"));
        assert_eq!(delivered.url.as_deref(), Some(url.as_str()), "{:?}", delivered.raw);
        assert!(delivered.remote_id.is_some(), "{:?}", delivered.raw);
    }
    // The exact text sent can be looked up by its hash.
    let hash = &records[0].content_hash;
    let shown = dir.cli(&["log", "--content", hash]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert!(text(&shown.stdout).contains(body), "{}", text(&shown.stdout));

    let status = dir.status();
    assert_counts(&status, [0, 0, 2, 0, 0, 0]);
    assert!(status.contains("2 delivered"), "{status}");
    assert!(status.contains("next due: nothing pending"), "{status}");
}

/// herald's clock offset (a debug-build seam, `HERALD_TEST_CLOCK_OFFSET_MS`)
/// that puts its "now" `lead` before a whole minute, and that minute.
fn clock_before_a_minute(lead: chrono::Duration) -> (i64, DateTime<Utc>) {
    let now = Utc::now();
    let minute = (now + lead + chrono::Duration::minutes(1)).with_second(0).unwrap().with_nanosecond(0).unwrap();
    ((minute - lead - now).num_milliseconds(), minute)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_post_fires_each_occurrence_at_a_whole_minute() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &webhook_account("xian-hook", &hook.url())
        + &post_cron("every-minute", "Do not share verification codes.", &["wuhan-hook", "xian-hook"], "* * * * *");
    dir.write_config(&config);

    // Rather than wait for two real minute boundaries, herald's clock is set
    // a few seconds before one, and after that occurrence, restarted a few
    // seconds before the next: each goes out when herald's clock reaches it.
    let lead = chrono::Duration::seconds(4);
    let (offset, first) = clock_before_a_minute(lead);
    let herald = dir.start_with(&[(herald::clock::OFFSET_VAR, &offset.to_string())]).await;
    assert!(
        hook.wait_until(DEADLINE, |r| distinct_accepted(r) >= 2).await,
        "the first occurrence did not arrive: {:?}",
        hook.received()
    );
    let upcoming = dir.ask_daemon_ok(&["upcoming"]);
    herald.stop().await;
    let next = first + chrono::Duration::minutes(1);
    assert_eq!(upcoming.matches(&rfc3339(next)).count(), 2, "the next occurrence is not the next minute:\n{upcoming}");

    let offset_second = (next - lead - Utc::now()).num_milliseconds();
    let herald = dir.start_with(&[(herald::clock::OFFSET_VAR, &offset_second.to_string())]).await;
    assert!(
        hook.wait_until(DEADLINE, |r| distinct_accepted(r) >= 4).await,
        "the second occurrence did not arrive: {:?}",
        hook.received()
    );
    herald.stop().await;

    let received = hook.received();
    let mut per_account: BTreeMap<String, BTreeSet<DateTime<Utc>>> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for p in received.iter().filter(|p| matches!(p.outcome, Outcome::Accepted { .. })) {
        let occurrence: DateTime<Utc> = body_str(p, "occurrence").parse().expect("an RFC 3339 occurrence");
        assert_eq!((occurrence.second(), occurrence.nanosecond()), (0, 0), "not a whole minute: {occurrence}");
        // Not early, by herald's clock at the time.
        let offset = if occurrence == first { offset } else { offset_second };
        let arrived = p.received_at + chrono::Duration::milliseconds(offset);
        assert!(arrived >= occurrence, "arrived at {arrived} (herald's clock) before its occurrence {occurrence}");
        assert!(keys.insert(p.idempotency_key.clone().unwrap()), "an idempotency key was accepted twice");
        per_account.entry(body_str(p, "account").to_string()).or_default().insert(occurrence);
    }
    assert_eq!(per_account.len(), 2, "{per_account:?}");
    for (account, occurrences) in &per_account {
        assert_eq!(occurrences.iter().copied().collect::<Vec<_>>(), [first, next], "{account}");
    }

    let records = dir.log();
    assert_gapless(&records);
    // Each went out on time by herald's own rule: nothing late, nothing skipped.
    assert!(records.iter().all(|r| r.event != "late" && r.event != "skipped"), "{records:#?}");
    let delivered: Vec<&Record> = records.iter().filter(|r| r.event == "delivered").collect();
    assert!(delivered.len() >= 4, "{records:#?}");
    let delivered_ids: BTreeSet<&str> = delivered.iter().map(|r| r.delivery.as_str()).collect();
    assert_eq!(delivered_ids.len(), delivered.len(), "one delivery was delivered twice");
    for r in &delivered {
        assert!(keys.contains(&r.delivery), "delivered {} but the receiver has no such key", r.delivery);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_with_growing_delays_then_delivered() {
    let hook = receiver(None).await;
    hook.fail_next(3, Fault::status(503));
    let dir = TestDir::new();
    let at = in_secs(2);
    let config = daemon_section()
        + &webhook_account("nanjing-hook", &hook.url())
        + &post_at("flood-warning", "Stay away from the river banks tonight.", &["nanjing-hook"], at);
    dir.write_config(&config);
    let herald = dir.start().await;

    // Delays of 1 s, 2 s and 4 s: about 7 s after the post's time.
    assert!(hook.wait_until(until(at) + Duration::from_secs(7), |r| r.len() >= 4).await, "{:?}", hook.received());
    herald.stop().await;
    let received = hook.received();
    assert_eq!(received.len(), 4, "{received:?}");
    let key = received[0].idempotency_key.clone().expect("an idempotency key");
    assert!(received.iter().all(|p| p.idempotency_key.as_deref() == Some(key.as_str())), "{received:?}");
    for p in &received[..3] {
        assert_eq!(p.outcome, Outcome::Faulted { status: 503 });
    }
    assert!(matches!(received[3].outcome, Outcome::Accepted { .. }), "{:?}", received[3]);
    let attempts: Vec<u64> = received.iter().map(|p| p.body.as_ref().unwrap()["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);

    // Gaps: at least the planned delay each (herald waits from the answer,
    // which comes after the arrival), and each longer than the one before.
    let gaps: Vec<f64> = received.windows(2).map(|w| (w[1].received_at - w[0].received_at).as_seconds_f64()).collect();
    for (gap, planned) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(*gap >= planned - 0.05, "gap {gap:.3}s is shorter than the planned {planned}s: {gaps:?}");
    }
    assert!(gaps[1] > gaps[0] && gaps[2] > gaps[1], "the delays did not grow: {gaps:?}");

    let records = dir.log();
    assert_gapless(&records);
    assert_eq!(
        events_of(&records, &key),
        [
            "scheduled",
            "attempt",
            "retry_scheduled",
            "attempt",
            "retry_scheduled",
            "attempt",
            "retry_scheduled",
            "attempt",
            "delivered"
        ]
    );
    let retries: Vec<&Record> = records.iter().filter(|r| r.event == "retry_scheduled").collect();
    assert_eq!(retries.len(), 3);
    for (r, planned_ms) in retries.iter().zip([1_000i64, 2_000, 4_000]) {
        assert_eq!(r.status, Some(503), "{:?}", r.raw);
        assert_eq!(r.state, "pending");
        let next = r.next_due.unwrap_or_else(|| panic!("no next_due: {:?}", r.raw));
        let planned = (next - r.time).num_milliseconds();
        assert!((planned_ms - 2..=planned_ms).contains(&planned), "next attempt planned {planned} ms after, {r:?}");
        assert!(r.reason.as_deref().unwrap_or("").contains("503"), "{:?}", r.raw);
    }
    assert_counts(&dir.status(), [0, 0, 1, 0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_fails_at_once_and_herald_retry_sends_it_again() {
    let hook = receiver(None).await;
    hook.fail_next(1, Fault::status_with_body(400, r#"{"error": "the text contains a banned word"}"#));
    let dir = TestDir::new();
    let at = in_secs(2);
    let config = daemon_section()
        + &webhook_account("hefei-hook", &hook.url())
        + &post_at("loan-education", "Read the contract before you sign.", &["hefei-hook"], at);
    dir.write_config(&config);
    let herald = dir.start().await;

    assert!(hook.wait_until(until(at), |r| !r.is_empty()).await, "nothing arrived");
    // `failed` is final: once herald records it, no retry can follow.
    eventually("the delivery failed", DEADLINE, || {
        dir.log_from_daemon(&["--event", "failed"]).len() == 1
            || dir.log_from_daemon(&["--event", "retry_scheduled"]).len() == 1
    })
    .await;
    assert!(dir.log_from_daemon(&["--event", "retry_scheduled"]).is_empty(), "a permanent failure was retried");
    let received = hook.received();
    assert_eq!(received.len(), 1, "a permanent failure was retried: {received:?}");
    assert_eq!(received[0].outcome, Outcome::Faulted { status: 400 });
    herald.stop().await;

    let status = dir.status();
    assert_counts(&status, [0, 0, 0, 1, 0, 0]);
    // The failed delivery is listed under its id (the idempotency key the
    // receiver saw), with its post, account and reason.
    assert!(status.lines().any(|l| l.starts_with("failed (1;")), "{status}");
    let id = received[0].idempotency_key.clone().expect("an idempotency key");
    let line = status.lines().find(|l| l.trim_start().starts_with(&id));
    let line = line.unwrap_or_else(|| panic!("delivery {id} is not listed:\n{status}"));
    assert!(line.contains("post loan-education") && line.contains("account hefei-hook"), "{line}");
    assert!(line.contains("attempts 1"), "{line}");
    let reason = line.split_once(": ").map(|(_, r)| r).unwrap_or("");
    assert!(reason.contains("400"), "the reason does not name the status: {line}");

    let records = dir.log();
    assert_eq!(events_of(&records, &id), ["scheduled", "attempt", "failed"]);
    let failed = records.iter().find(|r| r.event == "failed").unwrap();
    assert_eq!(failed.status, Some(400));
    assert!(failed.message.as_deref().unwrap_or("").contains("banned word"), "{:?}", failed.raw);
    assert!(failed.reason.as_deref().unwrap_or("").contains("400"), "{:?}", failed.raw);

    let retry = dir.cli(&["retry", &id]);
    assert!(retry.status.success(), "herald retry failed: {}", text(&retry.stderr));
    assert!(text(&retry.stdout).contains("1 delivery queued again"), "{}", text(&retry.stdout));

    let herald = dir.start().await;
    assert!(hook.wait_until(DEADLINE, |r| r.len() >= 2).await, "not sent again: {:?}", hook.received());
    herald.stop().await;
    let received = hook.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(matches!(received[1].outcome, Outcome::Accepted { .. }), "{:?}", received[1]);
    assert_eq!(received[1].idempotency_key.as_deref(), Some(id.as_str()));

    let records = dir.log();
    assert_gapless(&records);
    assert_eq!(events_of(&records, &id), ["scheduled", "attempt", "failed", "requeued", "attempt", "delivered"]);
    assert_counts(&dir.status(), [0, 0, 1, 0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_loses_nothing_after_a_restart() {
    const POSTS: usize = 30;
    const ACCOUNTS: [&str; 3] = ["city-a", "city-b", "city-c"];
    let hook = receiver(None).await;
    hook.set_latency(Duration::from_millis(300));
    let dir = TestDir::new();
    let base = in_secs(3);
    let mut config = daemon_section();
    for account in ACCOUNTS {
        config += &webhook_account(account, &format!("{}/{account}", hook.base_url()));
        config += "concurrency = 4\n";
    }
    for i in 0..POSTS {
        let at = base + chrono::Duration::seconds((i % 2) as i64);
        config += &post_at(&format!("post-{i:02}"), &format!("campaign message {i}"), &ACCOUNTS, at);
    }
    dir.write_config(&config);
    let herald = dir.start().await;

    // Kill it part-way: some delivered, some in flight, some not yet started.
    assert!(hook.wait_until(until(base), |r| r.len() >= 20).await, "{:?}", hook.received().len());
    let first_run = herald.kill().await;
    let at_kill = hook.received().len();
    assert!(at_kill < POSTS * ACCOUNTS.len(), "everything was sent before the kill; stderr:\n{first_run}");

    let herald = dir.start().await;
    let total = POSTS * ACCOUNTS.len();
    assert!(
        hook.wait_until(Duration::from_secs(60), |r| distinct_accepted(r) >= total).await,
        "only {} of {total} deliveries arrived",
        distinct_accepted(&hook.received())
    );
    // Deliveries the receiver took before the kill, unrecorded then, are sent
    // again after the restart: wait for herald to have recorded every one.
    eventually("herald records every delivery", Duration::from_secs(60), || {
        status_counts(&text(&dir.cli(&["status"]).stdout)).get("delivered").copied() == Some(total as u64)
    })
    .await;
    herald.stop().await;

    let received = hook.received();
    let records = dir.log();
    assert_gapless(&records);
    let ids = deliveries(&records);
    assert_eq!(ids.len(), total);
    let mut last_state: HashMap<&str, &str> = HashMap::new();
    for r in records.iter().filter(|r| r.is_about_a_delivery()) {
        last_state.insert(&r.delivery, &r.state);
    }
    let not_delivered: Vec<_> = last_state.iter().filter(|(_, s)| **s != "delivered").collect();
    assert!(not_delivered.is_empty(), "deliveries that did not end delivered: {not_delivered:?}");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in &received {
        *seen.entry(p.idempotency_key.clone().expect("an idempotency key")).or_default() += 1;
    }
    let id_set: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let key_set: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
    assert_eq!(key_set, id_set, "the receiver's keys and the audit log's deliveries differ");
    let recovered: BTreeSet<&str> =
        records.iter().filter(|r| r.event == "recovered").map(|r| r.delivery.as_str()).collect();
    let duplicates = seen.values().filter(|n| **n > 1).count();
    eprintln!("{at_kill} requests before the kill; {} recovered, {duplicates} sent twice", recovered.len());
    assert!(!recovered.is_empty(), "nothing was in flight at the kill ({at_kill} requests had arrived)");
    for (key, count) in &seen {
        if *count > 1 {
            assert!(recovered.contains(key.as_str()), "key {key} was sent {count} times but never recovered");
        }
    }
    for id in &recovered {
        let reason = records.iter().find(|r| r.delivery == *id && r.event == "recovered").unwrap().reason.clone();
        assert!(reason.unwrap_or_default().contains("same idempotency key"));
    }
    assert_counts(&dir.status(), [0, 0, total as u64, 0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_post_from_the_config_cancels_its_deliveries() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let at = in_secs(10);
    let accounts =
        daemon_section() + &webhook_account("wuhan-hook", &hook.url()) + &webhook_account("xian-hook", &hook.url());
    let keep = post_at("keep-me", "Typhoon season: check your emergency kit.", &["wuhan-hook", "xian-hook"], at);
    let remove = post_at("remove-me", "This draft went out by mistake.", &["wuhan-hook", "xian-hook"], at);
    dir.write_config(&(accounts.clone() + &keep + &remove));
    let herald = dir.start().await;
    herald.stop().await;

    dir.write_config(&(accounts + &keep));
    let herald = dir.start().await;
    assert!(hook.wait_until(until(at), |r| r.len() >= 2).await, "{:?}", hook.received());
    // Both posts were due at the same moment: once keep-me is delivered and
    // nothing is pending or in flight, nothing of remove-me can go out.
    eventually("keep-me delivered, nothing left to send", DEADLINE, || {
        let counts = status_counts(&dir.ask_daemon_ok(&["status"]));
        counts.get("delivered") == Some(&2) && counts.get("pending") == Some(&0) && counts.get("in_flight") == Some(&0)
    })
    .await;
    herald.stop().await;

    let received = hook.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(received.iter().all(|p| body_str(p, "post_id") == "keep-me"), "{received:?}");

    let records = dir.log();
    assert_gapless(&records);
    let removed: Vec<Record> = records.iter().filter(|r| r.post == "remove-me").cloned().collect();
    let removed_ids = deliveries(&removed);
    assert_eq!(removed_ids.len(), 2, "{removed:#?}");
    for id in &removed_ids {
        assert_eq!(events_of(&records, id), ["scheduled", "cancelled"]);
        let cancelled = records.iter().find(|r| r.delivery == *id && r.event == "cancelled").unwrap();
        assert_eq!(cancelled.state, "cancelled");
        let reason = cancelled.reason.as_deref().unwrap_or("");
        assert!(reason.contains("removed"), "the reason does not mention the removal: {reason}");
    }
    let cancelled_only = dir.log_args(&["--post", "remove-me", "--event", "cancelled"]);
    assert_eq!(cancelled_only.len(), 2);
    assert_counts(&dir.status(), [0, 0, 2, 0, 2, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_and_keeps_the_old_one_when_broken() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let old_at = in_secs(14);
    let mut config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("old-post", "Scheduled before the reload.", &["wuhan-hook"], old_at);
    dir.write_config(&config);
    let mut herald = dir.start().await;

    // A new post, added while herald runs.
    let new_at = in_secs(3);
    config += &post_at("new-post", "Added by a reload.", &["wuhan-hook"], new_at);
    dir.write_config(&config);
    herald.signal("HUP");
    herald.wait_for_log("config reloaded").await;
    assert!(
        hook.wait_until(until(new_at), |r| r.iter().any(|p| body_str(p, "post_id") == "new-post")).await,
        "the post added by the reload was not delivered: {:?}",
        hook.received()
    );
    let new = hook.received().into_iter().find(|p| body_str(p, "post_id") == "new-post").unwrap();
    assert!(new.received_at >= new_at, "arrived at {} before its time {new_at}", new.received_at);

    // A broken config: refused, the running one kept.
    let broken = config.clone() + "\n[[posts]]\nid = \"broken\"\nbody = \"an unterminated string\n";
    let broken_line = line_of(&broken, "an unterminated string");
    dir.write_config(&broken);
    herald.signal("HUP");
    herald.wait_for_log("keeping the running config").await;
    let stderr = herald.stderr();
    assert!(names_location(&stderr, "herald.toml", broken_line, None), "no herald.toml:{broken_line} in:\n{stderr}");
    assert!(herald.exited().is_none(), "herald exited after a broken reload:\n{stderr}");

    assert!(
        hook.wait_until(until(old_at), |r| r.iter().any(|p| body_str(p, "post_id") == "old-post")).await,
        "the old post was not delivered after a refused reload: {:?}",
        hook.received()
    );
    let old = hook.received().into_iter().find(|p| body_str(p, "post_id") == "old-post").unwrap();
    assert!(old.received_at >= old_at);
    let stderr = herald.stop().await;
    assert_eq!(stderr.matches("config reloaded").count(), 1, "{stderr}");
    assert_eq!(hook.received().len(), 2);
}

/// A config with an unknown key in a post.
fn config_with_unknown_key(url: &str) -> (String, usize) {
    let text = daemon_section()
        + &webhook_account("wuhan-hook", url)
        + &post_at("typo", "Body.", &["wuhan-hook"], in_secs(600))
        + "colour = \"red\"\n";
    let line = line_of(&text, "colour");
    (text, line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_with_every_error_and_its_place() {
    let dir = TestDir::new();
    let (bad, line) = config_with_unknown_key("http://127.0.0.1:9/hook");
    dir.write_config(&bad);

    // `herald run` refuses to start, saying where and what.
    let mut herald = dir.spawn(&[]);
    let status = herald.wait_exit().await;
    let stderr = herald.stderr();
    assert!(!status.success(), "herald run started on a bad config:\n{stderr}");
    assert_eq!(status.code(), Some(78), "a refused config exits 78 (EX_CONFIG), which the unit does not restart");
    assert!(names_location(&stderr, "herald.toml", line, Some(1)), "no herald.toml:{line}:1 in:\n{stderr}");
    assert!(stderr.contains("unknown key `colour`"), "{stderr}");
    assert!(stderr.contains("did not start"), "{stderr}");
    assert!(!dir.path().join("state/db").exists(), "a refused config touched the store");

    // `herald check` reports every error at once, in every file.
    let main = daemon_section()
        .replace("initial_backoff = \"1s\"", "initial_backoff = \"soon\"")
        .replace("shutdown_deadline = \"5s\"\n", "shutdown_deadline = \"5s\"\ninclude = [\"posts.d/*.toml\"]\n")
        + &webhook_account("wuhan-hook", "http://127.0.0.1:9/hook")
        + &post_at("typo", "Body.", &["wuhan-hook"], in_secs(600))
        + "colour = \"red\"\n";
    let included = post_at("campaign", "Body.", &["wuhan-hook", "nanjing-hok"], in_secs(600));
    dir.write_config(&main);
    dir.write("posts.d/campaign.toml", &included);

    let backoff_line = line_of(&main, "initial_backoff");
    let backoff_col = main.lines().nth(backoff_line - 1).unwrap().find('"').unwrap() + 1;
    let colour_line = line_of(&main, "colour");
    let target_line = line_of(&included, "nanjing-hok");
    let target_col = included.lines().nth(target_line - 1).unwrap().find("\"nanjing-hok\"").unwrap() + 1;

    let out = dir.cli(&["check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "herald check accepted a bad config:\n{stderr}");
    for (file, line, col, what) in [
        ("herald.toml", backoff_line, backoff_col, "soon"),
        ("herald.toml", colour_line, 1, "colour"),
        ("posts.d/campaign.toml", target_line, target_col, "nanjing-hok"),
    ] {
        let place = format!("{file}:{line}:{col}: error:");
        let found = stderr.lines().find(|l| l.contains(&place));
        let found = found.unwrap_or_else(|| panic!("no `{place}` in:\n{stderr}"));
        assert!(found.contains(what), "the error at {place} does not mention `{what}`: {found}");
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    assert!(stderr.contains("nothing is scheduled"), "{stderr}");
}

/// Under systemd, stderr is the journal's stream: journald reads a `<N>`
/// prefix as the line's syslog priority, which `journalctl -p` filters on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_journal_each_line_carries_its_syslog_priority() {
    use std::os::unix::fs::MetadataExt;
    let dir = TestDir::new();
    // A warning (a secret written inline) and an error (an unknown key).
    let (bad, _) = config_with_unknown_key("http://127.0.0.1:9/hook");
    dir.write_config(&bad.replacen(
        "platform = \"webhook\"\n",
        "platform = \"webhook\"\nsecret = \"inline-hunter2\"\n",
        1,
    ));
    // systemd names the stream in JOURNAL_STREAM as device:inode; here the
    // "journal" is a file, named the same way.
    let journal = dir.path().join("journal");
    let file = std::fs::File::create(&journal).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let status = blocking(|| {
        dir.command(&[("JOURNAL_STREAM", &stream)])
            .args(["run", "--config"])
            .arg(dir.config())
            .stderr(file)
            .status()
            .expect("running herald")
    });
    assert_eq!(status.code(), Some(78));
    let written = std::fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with('<')), "a line without its priority:\n{written}");
    let warning = lines.iter().find(|l| l.contains("is written inline"));
    assert!(warning.is_some_and(|l| l.starts_with("<4>{")), "the inline-secret warning is not priority 4:\n{written}");
    let error = lines.iter().find(|l| l.contains("unknown key `colour`"));
    assert!(error.is_some_and(|l| l.starts_with("<3>{")), "the config error is not priority 3:\n{written}");
    let refused = lines.iter().find(|l| l.contains("did not start"));
    assert!(refused.is_some_and(|l| l.starts_with("<3>")), "the refusal is not priority 3:\n{written}");
    assert!(!written.contains("inline-hunter2"), "a secret reached the journal");

    // The same stream variable, but stderr elsewhere (a child that
    // redirected it): no prefixes.
    let out = dir.cli_with(&["run"], &[("JOURNAL_STREAM", &stream)]);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown key `colour`") && !stderr.contains("<3>"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_plan_as_json_and_warns_about_a_past_time() {
    let dir = TestDir::new();
    let tomorrow = in_secs(24 * 3600);
    let missed = in_secs(-600);
    let weekly = "\n[[posts]]\nid = \"weekly-reminder\"\nbody = \"Monday reminder.\"\ntargets = [\"cities\"]\n\
                  cron = \"0 9 * * 1\"\ntime_zone = \"Asia/Shanghai\"\n";
    let config = daemon_section()
        + &webhook_account("wuhan-hook", "http://127.0.0.1:9/wuhan")
        + &webhook_account("xian-hook", "http://127.0.0.1:9/xian")
        + "\n[groups]\ncities = [\"wuhan-hook\", \"xian-hook\"]\n"
        + weekly
        + &post_at("tomorrow", "Tomorrow's notice.", &["wuhan-hook"], tomorrow)
        + &post_at("missed", "Already late.", &["xian-hook"], missed);
    dir.write_config(&config);

    let out = dir.cli(&["check", "--format", "json"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("check --format json prints JSON");
    assert_eq!(report["ok"], true);
    assert_eq!(report["errors"], Value::Array(vec![]));
    let posts = report["posts"].as_array().unwrap();
    let ids: Vec<&str> = posts.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["missed", "tomorrow", "weekly-reminder"]);
    let post = |id: &str| posts.iter().find(|p| p["id"] == id).unwrap();

    let weekly = post("weekly-reminder");
    assert_eq!(weekly["targets"], serde_json::json!(["wuhan-hook", "xian-hook"]));
    assert_eq!(weekly["time_zone"], "Asia/Shanghai");
    let upcoming = weekly["upcoming"].as_array().unwrap();
    assert_eq!(upcoming.len(), 3);
    let mut previous = Utc::now();
    for o in upcoming {
        let utc: DateTime<Utc> = o["utc"].as_str().unwrap().parse().unwrap();
        // 09:00 in Shanghai is 01:00 UTC, on a Monday.
        assert_eq!((utc.hour(), utc.minute(), utc.second()), (1, 0, 0), "{o}");
        assert_eq!(utc.format("%a").to_string(), "Mon", "{o}");
        assert!(utc > previous, "{upcoming:?}");
        assert!(o["local"].as_str().unwrap().contains("09:00:00"), "{o}");
        previous = utc;
    }
    let tomorrow_plan = post("tomorrow");
    assert_eq!(tomorrow_plan["targets"], serde_json::json!(["wuhan-hook"]));
    assert_eq!(tomorrow_plan["upcoming"][0]["utc"], rfc3339(tomorrow));
    assert_eq!(tomorrow_plan["rendered"][0]["text"], "Tomorrow's notice.");

    let warnings = report["warnings"].as_array().unwrap();
    let warning = warnings
        .iter()
        .find(|w| w["message"].as_str().unwrap_or("").contains("`missed`"))
        .unwrap_or_else(|| panic!("no warning about the past `at`: {warnings:?}"));
    let message = warning["message"].as_str().unwrap();
    assert!(message.contains("is past and herald has not handled it"), "{message}");
    assert!(message.contains("goes out as soon as herald runs"), "{message}");
    assert!(message.contains("misfire"), "the warning does not mention the misfire policy: {message}");
    assert_eq!(warning["severity"], "warning");
    assert_eq!(warning["line"].as_u64().unwrap() as usize, line_of(&config, "id = \"missed\"") - 1);
}

/// A past one-shot post is warned about while it is still to happen, and
/// never again once herald has handled it (delivered, or skipped, or cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_one_shot_post_is_warned_about_only_until_herald_handles_it() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("missed", "Already late.", &["wuhan-hook"], in_secs(-600))
        + &post_at("long-gone", "Past its grace.", &["wuhan-hook"], in_secs(-3 * 3600));
    dir.write_config(&config);
    let warned =
        |stderr: &str, post: &str| stderr.lines().any(|l| l.contains("warning") && l.contains(&format!("`{post}`")));

    let out = dir.cli(&["check"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("post `missed`: `at`") && stderr.contains("goes out as soon as herald runs"), "{stderr}");
    assert!(stderr.contains("post `long-gone`: `at`") && stderr.contains("it will be skipped"), "{stderr}");

    // The daemon says so once, when it happens.
    let herald = dir.start().await;
    assert!(hook.wait_until(DEADLINE, |r| !r.is_empty()).await, "the late post never arrived");
    let stderr = herald.stop().await;
    assert!(stderr.contains("published late"), "{stderr}");
    assert!(stderr.contains("by more than the grace window"), "{stderr}");

    // Handled: `check` and the next start are quiet about both.
    let out = dir.cli(&["check"]);
    let stderr = text(&out.stderr);
    assert!(!warned(&stderr, "missed") && !warned(&stderr, "long-gone"), "{stderr}");
    let herald = dir.start().await;
    let stderr = herald.stop().await;
    assert!(!stderr.contains("WARN"), "a restart warned again:\n{stderr}");
    assert_eq!(hook.received().len(), 1, "the late post went out again");
}

/// `herald log` filters as people type them: relative times, content-hash
/// prefixes (ambiguous ones listed), and a suggestion for a mistyped event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_filters_take_relative_times_hash_prefixes_and_suggest_event_names() {
    let dir = TestDir::new();
    // 17 posts with different texts: two of their content hashes share a
    // first character (there are 16), so some prefix is ambiguous.
    let mut config = daemon_section() + &webhook_account("wuhan-hook", "http://127.0.0.1:9/hook");
    for i in 0..17 {
        config += &post_at(&format!("p{i}"), &format!("Notice number {i}."), &["wuhan-hook"], in_secs(1800));
    }
    dir.write_config(&config);
    let herald = dir.start().await;
    let records = dir.log_from_daemon(&["--event", "scheduled"]);
    assert_eq!(records.len(), 17, "{records:?}");
    let hashes: Vec<(String, String)> = records.iter().map(|r| (r.content_hash.clone(), r.post.clone())).collect();
    // A prefix of one hash that no other hash starts with, asked of the running daemon.
    let (hash, post) = &hashes[0];
    let unique = (1..=hash.len())
        .map(|n| &hash[..n])
        .find(|p| hashes.iter().filter(|(h, _)| h.starts_with(p)).count() == 1)
        .unwrap();
    let body = format!("Notice number {}.", &post[1..]);
    let shown = dir.ask_daemon_ok(&["log", "--content", unique]);
    assert!(shown.contains(&body), "--content {unique} showed:\n{shown}");
    herald.stop().await;

    // The same from the store, and an ambiguous prefix lists the candidates.
    let out = dir.cli(&["log", "--content", unique]);
    assert!(text(&out.stdout).contains(&body), "{}", text(&out.stderr));
    let (a, b) = hashes
        .iter()
        .enumerate()
        .find_map(|(i, (a, _))| hashes[i + 1..].iter().find(|(b, _)| a[..1] == b[..1]).map(|(b, _)| (a, b)))
        .expect("17 hex hashes: two share a first character");
    let common: String = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect();
    let out = dir.cli(&["log", "--content", &common]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an ambiguous prefix was accepted");
    assert!(stderr.contains("several content hashes") && stderr.contains(a) && stderr.contains(b), "{stderr}");

    // Relative times.
    assert_eq!(dir.log_args(&["--since", "-1h", "--event", "scheduled"]).len(), 17);
    assert_eq!(dir.log_args(&["--since", "2 days ago", "--event", "scheduled"]).len(), 17);
    assert_eq!(dir.log_args(&["--since", "yesterday", "--until", "now", "--event", "scheduled"]).len(), 17);
    assert_eq!(dir.log_args(&["--until", "yesterday"]).len(), 0);
    let out = dir.cli(&["log", "--since", "yesterdy"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("`yesterdy` is not a time"), "{stderr}");
    assert!(stderr.contains("2 days ago") && !stderr.contains("time zone"), "{stderr}");

    // A mistyped event: the nearest name and the list.
    let out = dir.cli(&["log", "--event", "deliverd"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("did you mean `delivered`?") && stderr.contains("retry_scheduled"), "{stderr}");
    assert_eq!(dir.log_args(&["--event", "scheduled,late"]).len(), 17);
}

/// `herald check … | head`: every command ends quietly when its reader goes
/// away, like any Unix tool (status 141, as if by SIGPIPE; nothing on stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_ends_quietly_when_its_reader_goes_away() {
    let dir = TestDir::new();
    let config = daemon_section()
        + &webhook_account("wuhan-hook", "http://127.0.0.1:9/hook")
        + &post_at("later", "In half an hour.", &["wuhan-hook"], in_secs(1800));
    dir.write_config(&config);
    dir.start().await.stop().await;
    for args in [
        &["check"][..],
        &["check", "--format", "json"],
        &["status"],
        &["upcoming"],
        &["log"],
        &["log", "--format", "csv"],
        &["log", "--format", "json"],
    ] {
        // The reading end is closed before herald starts: its first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out =
            blocking(|| dir.command(&[]).args(args).arg("--config").arg(dir.config()).stdout(writer).output().unwrap());
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "herald {args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "herald {args:?}: {stderr}");
    }
}

/// A local time inside a daylight-saving gap means the first instant after
/// the gap, for `at`, `start` and `cron` alike (README, "Schedules").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_time_in_a_dst_gap_is_the_first_instant_after_it_for_every_schedule() {
    let dir = TestDir::new();
    // 2027-03-28, Europe/Berlin: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    let post = |id: &str, schedule: &str| {
        format!(
            "\n[[posts]]\nid = \"{id}\"\nbody = \"x\"\ntargets = [\"wuhan-hook\"]\ntime_zone = \"Europe/Berlin\"\n{schedule}\n"
        )
    };
    let config = daemon_section()
        + &webhook_account("wuhan-hook", "http://127.0.0.1:9/hook")
        + &post("once", "at = \"2027-03-28T02:30:00\"")
        + &post("cron", "cron = \"30 2 * * *\"\nstart = \"2027-03-28T00:00:00\"")
        + &post("started", "cron = \"*/20 * * * *\"\nstart = \"2027-03-28T02:10:00\"");
    dir.write_config(&config);
    let out = dir.cli(&["check", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = |id: &str| {
        let post = report["posts"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap().clone();
        post["upcoming"][0]["utc"].as_str().unwrap().to_string()
    };
    assert_eq!(first("once"), "2027-03-28T01:00:00Z");
    assert_eq!(first("cron"), "2027-03-28T01:00:00Z");
    // start 02:10 does not exist: from 03:00 CEST on, so 03:00 is the first */20.
    assert_eq!(first("started"), "2027-03-28T01:00:00Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_is_refused() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let config = daemon_section()
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("later", "Later.", &["wuhan-hook"], in_secs(600));
    dir.write_config(&config);
    let mut first = dir.start().await;

    let mut second = dir.spawn(&[]);
    let status = second.wait_exit().await;
    let stderr = second.stderr();
    assert!(!status.success(), "a second herald ran on the same state:\n{stderr}");
    assert!(stderr.contains("herald.lock"), "the message does not name the lock:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A CLI command meanwhile answers or refuses cleanly, never panics.
    let out = dir.cli(&["status"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(!said.contains("panicked"), "{said}");
    assert!(out.status.success() || said.contains("herald is running"), "{said}");

    assert!(first.exited().is_none(), "the first herald stopped:\n{}", first.stderr());
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_check_or_the_audit_log() {
    const SECRET: &str = "hmac-K3y-d0-not-print-7f1c9a";
    let env = [("HERALD_TEST_SECRET", SECRET)];
    let hook = receiver(Some(SECRET)).await;
    hook.fail_next(2, Fault::status(503));
    hook.fail_next(1, Fault::status_with_body(400, r#"{"error": "refused"}"#));
    let dir = TestDir::new();
    let at = in_secs(2);
    let config = daemon_section()
        + &webhook_account("signed-hook", &hook.url())
        + "secret = { env = \"HERALD_TEST_SECRET\" }\n"
        + &post_at("first", "First message.", &["signed-hook"], at)
        + &post_at("second", "Second message.", &["signed-hook"], at);
    dir.write_config(&config);
    let herald = dir.start_with(&[("HERALD_TEST_SECRET", SECRET), ("RUST_LOG", "trace")]).await;

    // 503, 503, then a retry answered 400 (failed) and one accepted.
    assert!(hook.wait_until(until(at) + Duration::from_secs(2), |r| r.len() >= 4).await, "{:?}", hook.received());
    let stderr = herald.stop().await;
    let received = hook.received();
    assert!(received.iter().all(|p| p.signature == Signature::Valid), "unsigned or badly signed: {received:?}");
    assert!(stderr.contains("TRACE"), "RUST_LOG=trace gave no trace output");
    assert!(!stderr.contains(SECRET), "the secret is in the daemon's log");

    let mut outputs = Vec::new();
    for args in [&["check"][..], &["check", "--format", "json"], &["status"], &["log"], &["log", "--format", "json"]] {
        let out = dir.cli_with(args, &env);
        assert!(out.status.success(), "herald {args:?} failed: {}", text(&out.stderr));
        outputs.push((args, text(&out.stdout) + &text(&out.stderr)));
    }
    for (args, output) in &outputs {
        assert!(!output.contains(SECRET), "the secret is in the output of herald {args:?}");
    }

    let records = dir.log();
    let events: BTreeSet<&str> = records.iter().map(|r| r.event.as_str()).collect();
    for event in ["retry_scheduled", "failed", "delivered"] {
        assert!(events.contains(event), "no {event} in the run: {events:?}");
    }

    // Nor anywhere in the state directory's files.
    let mut stack = vec![dir.path().join("state")];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
                assert!(!found, "the secret is stored in {}", path.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_post_is_created_schedule_ahead_before_its_time_and_delivered_on_time() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let at = in_secs(8);
    let body = "A planned warning: created three seconds before its time.";
    let config = daemon_section().replace("[daemon]\n", "[daemon]\nschedule_ahead = \"3s\"\n")
        + &webhook_account("wuhan-hook", &hook.url())
        + &webhook_account("xian-hook", &format!("{}/xian", hook.base_url()))
        + &post_at("planned-warning", body, &["wuhan-hook", "xian-hook"], at);
    dir.write_config(&config);
    let herald = dir.start().await;

    // Eight seconds ahead, beyond schedule_ahead: planned, no delivery yet.
    let status = dir.status();
    assert_counts(&status, [0, 0, 0, 0, 0, 0]);
    assert!(status.contains("planned: 2 more"), "{status}");
    let upcoming = text(&dir.cli(&["upcoming"]).stdout);
    assert_eq!(upcoming.lines().filter(|l| l.contains("post planned-warning") && l.contains("planned")).count(), 2);
    let early: Vec<Record> = dir.log().into_iter().filter(Record::is_about_a_delivery).collect();
    assert!(early.is_empty(), "audit records before the deliveries exist: {early:#?}");

    // Three seconds before its time the timer creates both deliveries, pending.
    let created = at - chrono::Duration::seconds(3);
    eventually("the deliveries are created", until(at), || {
        status_counts(&dir.status()).get("pending").copied() == Some(2)
    })
    .await;
    assert!(Utc::now() >= created, "created before schedule_ahead");
    assert!(!dir.status().contains("planned:"), "{}", dir.status());

    assert!(hook.wait_until(until(at), |r| r.len() >= 2).await, "not delivered: {:?}", hook.received());
    for p in hook.received() {
        assert!(p.received_at >= at, "arrived at {} before its time {at}", p.received_at);
        assert!(p.received_at <= at + chrono::Duration::seconds(2), "arrived at {}, late for {at}", p.received_at);
        assert_eq!(body_text(&p), body);
    }
    herald.stop().await;
    let records = dir.log();
    assert_gapless(&records);
    for id in deliveries(&records) {
        assert_eq!(events_of(&records, &id), ["scheduled", "attempt", "delivered"], "delivery {id}");
        let scheduled = records.iter().find(|r| r.delivery == id && r.event == "scheduled").unwrap();
        assert!(scheduled.time >= created, "scheduled at {}, before {created}", scheduled.time);
    }
}
