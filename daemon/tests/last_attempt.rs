//! A crash during the last allowed attempt is recovered, not failed, where
//! re-sending is safe. Before, a delivery whose `max_attempts`-th attempt
//! was in flight when herald was killed ended `failed` ("check the
//! account"), although the webhook receiver de-duplicates by the
//! idempotency key and may well have published it.

#[allow(dead_code)]
#[path = "daemon/helpers.rs"]
mod helpers;

use std::time::Duration;

use helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_last_attempt_is_recovered_and_published_once() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    // One attempt allowed: the one in flight at the kill is the last.
    let config = daemon_section().replace("max_attempts = 5", "max_attempts = 1")
        + &webhook_account("wuhan-hook", &hook.url())
        + &post_at("warning", "Never share a verification code.", &["wuhan-hook"], in_secs(2));
    dir.write_config(&config);
    // The receiver answers after 30 s: herald is killed long before that.
    hook.set_latency(Duration::from_secs(30));
    let herald = dir.start().await;
    eventually("the attempt is in flight", DEADLINE, || dir.log_from_daemon(&["--event", "attempt"]).len() == 1).await;
    herald.kill().await;

    hook.set_latency(Duration::ZERO);
    let herald = dir.start().await;
    eventually("the delivery is published", DEADLINE, || hook.accepted().len() == 1).await;
    eventually("the delivery is recorded delivered", DEADLINE, || {
        status_counts(&dir.ask_daemon_ok(&["status"])).get("delivered") == Some(&1)
    })
    .await;
    herald.stop().await;

    let all = dir.log();
    assert_gapless(&all);
    // The delivery's own history (the log also holds config and audit-head records).
    let log: Vec<_> = all.into_iter().filter(|r| r.post == "warning").collect();
    let events: Vec<&str> = log.iter().map(|r| r.event.as_str()).collect();
    assert_eq!(events, ["scheduled", "attempt", "recovered", "attempt", "delivered"], "{log:#?}");
    let recovered = &log[2];
    assert!(
        recovered.reason.as_deref().is_some_and(|r| r.contains("the last allowed")),
        "the record says why the attempt is made again: {recovered:?}"
    );
    // Never more attempts than allowed: the interrupted one does not count.
    assert!(log.iter().all(|r| r.attempt <= 1), "{log:#?}");
    // The receiver saw the same idempotency key each time and published once.
    let keys: Vec<String> = hook.received().iter().filter_map(|p| p.idempotency_key.clone()).collect();
    assert!(keys.iter().all(|k| *k == log[0].delivery), "{keys:?}");
    assert_eq!(distinct_accepted(&hook.received()), 1);
}
