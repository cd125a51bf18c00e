//! `herald pause` and `herald resume` against the real daemon: a pause holds
//! due deliveries back (nothing reaches the receiver), survives a restart,
//! leaves what it does not cover alone, and on resume what it held goes out
//! under its post's misfire policy.

use super::helpers::*;

/// The records of `event` the running daemon shows.
fn events(dir: &TestDir, event: &str) -> Vec<Record> {
    dir.log_from_daemon(&["--event", event])
}

/// Wait until the daemon's log holds at least `count` records of `event`.
async fn wait_for_records(dir: &TestDir, event: &str, count: usize) -> Vec<Record> {
    let mut found = Vec::new();
    eventually(&format!("{count} `{event}` record(s)"), DEADLINE, || {
        found = events(dir, event);
        found.len() >= count
    })
    .await;
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_account_gets_nothing_until_resumed_even_across_a_restart_while_others_deliver() {
    let a = receiver(None).await;
    let b = receiver(None).await;
    let dir = TestDir::new();
    let base = daemon_section() + &webhook_account("a-hook", &a.url()) + &webhook_account("b-hook", &b.url());
    let due = in_secs(4);
    dir.write_config(
        &(base.clone() + &post_at("warning", "Call 110 if you are in danger.", &["a-hook", "b-hook"], due)),
    );
    let herald = dir.start().await;

    let out = dir.ask_daemon_ok(&["pause", "--account", "a-hook", "--reason", "the hotline number is wrong"]);
    assert!(out.contains("paused: account a-hook"), "{out}");
    let paused = events(&dir, "paused");
    assert_eq!(paused.len(), 1, "{paused:#?}");
    assert_eq!(paused[0].account, "a-hook");
    assert!(paused[0].reason.as_deref().unwrap().contains("the hotline number is wrong"), "{:?}", paused[0].raw);
    assert!(paused[0].raw["actor"]["name"].is_string(), "{}", paused[0].raw);

    // Past the due time: b-hook's copy goes out, a-hook's is held.
    let held = wait_for_records(&dir, "held", 1).await;
    assert_eq!(held[0].account, "a-hook", "{:?}", held[0].raw);
    assert!(held[0].reason.as_deref().unwrap().contains("account a-hook"), "{:?}", held[0].raw);
    assert!(b.wait_until(DEADLINE, |r| distinct_accepted(r) == 1).await, "b-hook got nothing");
    assert!(a.received().is_empty(), "the paused account received {:?}", a.received());
    let status = dir.ask_daemon_ok(&["status"]);
    assert!(status.contains("PAUSED: due deliveries held: 1;"), "{status}");
    assert!(status.contains("account a-hook"), "{status}");
    let upcoming = dir.ask_daemon_ok(&["upcoming"]);
    assert!(upcoming.contains("PAUSED (account a-hook)"), "{upcoming}");
    herald.stop().await;

    // After a restart the pause still holds: a second post due to a-hook is
    // held too (and, being later in due order, after the first was looked at).
    let second = in_secs(2);
    dir.write_config(
        &(base.clone()
            + &post_at("warning", "Call 110 if you are in danger.", &["a-hook", "b-hook"], due)
            + &post_at("follow-up", "Hang up on callers who ask for bank codes.", &["a-hook"], second)),
    );
    let herald = dir.start().await;
    let held = wait_for_records(&dir, "held", 2).await;
    assert_eq!(held[1].post, "follow-up", "{held:#?}");
    assert!(a.received().is_empty(), "the paused account received {:?} after a restart", a.received());

    let out = dir.ask_daemon_ok(&["resume", "--account", "a-hook", "--reason", "number corrected"]);
    assert!(out.contains("resumed: account a-hook") && out.contains("no pause in force"), "{out}");
    assert!(a.wait_until(DEADLINE, |r| distinct_accepted(r) == 2).await, "a-hook did not get both posts");
    let resumed = events(&dir, "resumed");
    assert_eq!(resumed.len(), 1, "{resumed:#?}");
    assert!(resumed[0].reason.as_deref().unwrap().contains("number corrected"));
    let status = dir.ask_daemon_ok(&["status"]);
    assert!(!status.contains("PAUSED"), "{status}");
    // Resuming what is not paused is refused, and says what is.
    let out = dir.ask_daemon(&["resume", "--all"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("all deliveries is not paused"), "{}", text(&out.stderr));
    herald.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_written_while_herald_is_stopped_holds_and_a_late_resume_skips_under_misfire_skip() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let config = |at| {
        let post = post_at("siren-test", "The siren is tested at noon.", &["a-hook"], at) + "misfire = \"skip\"\n";
        daemon_section() + &webhook_account("a-hook", &hook.url()) + &post
    };
    dir.write_config(&config(in_secs(3600)));
    dir.start().await.stop().await;

    // No daemon: the pause goes into the store and holds from the next start.
    let out = dir.cli(&["pause", "--all", "--reason", "exercise called off"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(READ_STORE), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("holds from its next start"), "{}", text(&out.stdout));

    dir.write_config(&config(in_secs(3)));
    let herald = dir.start().await;
    let held = wait_for_records(&dir, "held", 1).await;
    assert!(held[0].reason.as_deref().unwrap().contains("all deliveries"), "{:?}", held[0].raw);
    herald.stop().await;

    // Two minutes later by herald's clock, still paused; then resumed: the
    // post is past its time, and `misfire = "skip"` says it is not sent.
    let herald = dir.start_with(&[("HERALD_TEST_CLOCK_OFFSET_MS", "120000")]).await;
    dir.ask_daemon_ok(&["resume", "--all"]);
    let skipped = wait_for_records(&dir, "skipped", 1).await;
    assert_eq!(skipped[0].post, "siren-test");
    assert!(skipped[0].reason.as_deref().unwrap().contains("misfire = skip"), "{:?}", skipped[0].raw);
    let status = dir.ask_daemon_ok(&["status"]);
    assert!(status_counts(&status)["skipped"] == 1, "{status}");
    herald.stop().await;
    assert!(hook.received().is_empty(), "a post held past its time went out: {:?}", hook.received());
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shows_in_systemd_status_and_in_the_metrics_until_resumed() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let port = free_port();
    let config = daemon_section().replace("[daemon]\n", &format!("[daemon]\nmetrics_listen = \"127.0.0.1:{port}\"\n"))
        + &webhook_account("a-hook", &hook.url())
        + &post_at("drill", "Fire drill at 10:00.", &["a-hook"], in_secs(3));
    dir.write_config(&config);
    let notify = NotifySocket::bind(&dir.path().join("notify.sock"), dir.socket());
    let _herald = dir.spawn(&[("NOTIFY_SOCKET", notify.path())]);
    notify.wait_for("READY=1", DEADLINE, |m| m.iter().any(|n| n.text == "READY=1")).await;

    dir.ask_daemon_ok(&["pause", "--platform", "webhook"]);
    notify
        .wait_for("a STATUS= line saying what is paused", DEADLINE, |m| {
            m.iter().any(|n| n.text.starts_with("STATUS=PAUSED (platform webhook); "))
        })
        .await;
    wait_for_records(&dir, "held", 1).await;
    let client = reqwest::Client::new();
    let metrics = || async {
        let response = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.expect("GET /metrics");
        response.text().await.unwrap()
    };
    let body = metrics().await;
    assert_eq!(sample(&body, "herald_paused_selectors"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "herald_deliveries_held_by_pause"), Some(1.0), "{body}");
    assert!(hook.received().is_empty());

    dir.ask_daemon_ok(&["resume", "--platform", "webhook"]);
    assert!(hook.wait_until(DEADLINE, |r| distinct_accepted(r) == 1).await, "nothing went out after the resume");
    wait_for_records(&dir, "delivered", 1).await;
    let body = metrics().await;
    assert_eq!(sample(&body, "herald_paused_selectors"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "herald_deliveries_held_by_pause"), Some(0.0), "{body}");
    let last_status = notify.messages().into_iter().rev().find(|n| n.text.starts_with("STATUS=")).unwrap();
    assert!(!last_status.text.contains("PAUSED"), "{}", last_status.text);
}
