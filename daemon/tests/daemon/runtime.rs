//! herald's async workers are never held by blocking work: a reload that
//! reconciles thousands of posts (sled writes, fsyncs) runs while the
//! control socket keeps answering. herald runs with one async worker (as
//! on a one-core host, `TOKIO_WORKER_THREADS=1`), so a single blocked
//! worker would stop every answer until the reload ends.

use std::time::Duration;

use crate::helpers::*;

/// Posts the big reload adds, each with one delivery due within
/// `schedule_ahead`: enough that the reconcile lasts far longer than one
/// `herald status` round trip.
const POSTS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_a_big_reload_is_being_applied_with_one_async_worker() {
    let dir = TestDir::new();
    // Nothing is sent: the posts are due in half an hour, to a port nothing listens on.
    let url = format!("http://127.0.0.1:{}/hook", free_port());
    let at = in_secs(1_800);
    let mut config = daemon_section() + &webhook_account("office", &url);
    config += &post_at("first", "first", &["office"], at);
    dir.write_config(&config);
    let mut herald = dir.start_with(&[("TOKIO_WORKER_THREADS", "1")]).await;

    for n in 0..POSTS {
        config += &post_at(&format!("p{n}"), "drill", &["office"], at);
    }
    dir.write_config(&config);
    herald.signal("HUP");
    // The new config is read and valid; the store is being changed.
    herald.wait_for_log("applying the config to the store").await;

    // The daemon answers while the reload is still being applied: its
    // answer counts fewer pending deliveries than the reload creates, and
    // herald had not logged the reload's end when the answer came.
    let status = dir.ask_daemon_ok(&["status"]);
    let reloaded_before_the_answer = herald.stderr().contains("config reloaded");
    let pending = status_counts(&status).get("pending").copied().unwrap_or(0);
    assert!(
        !reloaded_before_the_answer && pending < 1 + POSTS as u64,
        "herald status was answered only after the reload ended ({pending} pending):\n{status}\n{}",
        herald.stderr()
    );

    // The reload itself completes, and then every delivery is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !herald.stderr().contains("config reloaded") {
        assert!(herald.exited().is_none(), "herald exited during the reload:\n{}", herald.stderr());
        assert!(tokio::time::Instant::now() < deadline, "the reload did not end:\n{}", herald.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = dir.ask_daemon_ok(&["status"]);
    assert_eq!(status_counts(&status).get("pending").copied(), Some(1 + POSTS as u64), "{status}");
    herald.stop().await;
}
