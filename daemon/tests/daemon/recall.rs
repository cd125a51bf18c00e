//! `herald recall` through the real daemon against the sandbox: every
//! platform's copy taken down and shown deleted by its emulator, each
//! target's outcome an attributed audit record, transient errors retried,
//! "not possible" reported (exit 3, never silently partial), and what has
//! not gone out cancelled.

use std::time::Duration;

use herald_sandbox::tieba::{SANDBOX_BDUSS, SANDBOX_FID, SANDBOX_FORUM};
use herald_sandbox::wechat::{SANDBOX_APPID, SANDBOX_SECRET};
use herald_sandbox::{Fault, Sandbox, SandboxOptions};

use crate::helpers::*;

/// A JPEG header: enough for WeChat's cover checks.
pub(crate) const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0xFF, 0xD9];
const SECRET: &str = "recall-test-webhook-secret";

/// One account per platform in `sandbox`, named after its platform.
pub(crate) fn accounts(sandbox: &Sandbox) -> String {
    let base = format!("http://{}", sandbox.addr());
    format!(
        r#"
[accounts.weibo]
platform = "weibo"
base_url = "{base}/weibo"
access_token = "sandbox-w"
safe_domain = "example.gov.cn"
rip = "127.0.0.1"

[accounts.wechat]
platform = "wechat"
base_url = "{base}/wechat"
appid = "{SANDBOX_APPID}"
secret = "{SANDBOX_SECRET}"
poll_interval = "100ms"
poll_timeout = "5s"

[accounts.tieba]
platform = "tieba"
base_url = "{base}/tieba"
bduss = "{SANDBOX_BDUSS}"
forum = "{SANDBOX_FORUM}"
fid = {SANDBOX_FID}

[accounts.discourse]
platform = "discourse"
base_url = "{base}/discourse"
api_key = "sandbox-d"
api_username = "system"

[accounts.mastodon]
platform = "mastodon"
base_url = "{base}/mastodon"
access_token = "sandbox-m"

[accounts.webhook]
platform = "webhook"
url = "{base}/hook"
secret = "{SECRET}"
"#
    )
}

/// A post every platform takes (WeChat gets the cover, the others no image).
pub(crate) fn post(id: &str, targets: &[&str], at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        r#"
[[posts]]
id = "{id}"
title = "Fraud alert: fake refund calls"
body = "Police never ask you to move money. Call 110."
link = "https://www.example.gov.cn/alerts/42"
images = ["cover.jpg"]
targets = {targets}
at = "{at}"

[posts.overrides.weibo]
images = []
[posts.overrides.tieba]
images = []
[posts.overrides.mastodon]
images = []
[posts.overrides.discourse]
images = []
[posts.overrides.webhook]
images = []
"#,
        targets = toml_list(targets),
        at = rfc3339(at)
    )
}

pub(crate) async fn sandbox() -> Sandbox {
    let options = SandboxOptions { webhook_secret: Some(SECRET.into()), ..SandboxOptions::default() };
    Sandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap()
}

/// Copies each emulator still shows live (not deleted), by platform.
pub(crate) fn live(sandbox: &Sandbox) -> [(&'static str, usize); 6] {
    [
        ("weibo", sandbox.weibo.published().iter().filter(|p| p.deleted_at.is_none()).count()),
        ("wechat", sandbox.wechat.published().iter().filter(|p| p.deleted_at.is_none()).count()),
        ("tieba", sandbox.tieba.published().iter().filter(|t| !t.deleted).count()),
        ("discourse", sandbox.discourse.published().iter().filter(|t| t.deleted_at.is_none()).count()),
        ("mastodon", sandbox.mastodon.published().iter().filter(|p| p.deleted_at.is_none()).count()),
        ("webhook", sandbox.webhook.accepted().iter().filter(|p| p.recalled_at.is_none()).count()),
    ]
}

async fn delivered(dir: &TestDir, n: u64) {
    eventually("every delivery delivered", Duration::from_secs(60), || {
        status_counts(&text(&dir.cli(&["status"]).stdout)).get("delivered").copied() == Some(n)
    })
    .await;
}

pub(crate) const ALL: [&str; 6] = ["weibo", "wechat", "tieba", "discourse", "mastodon", "webhook"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_takes_the_post_down_on_every_platform_and_records_each_target() {
    let sandbox = sandbox().await;
    let dir = TestDir::new();
    std::fs::write(dir.path().join("cover.jpg"), JPEG).unwrap();
    dir.write_config(&(daemon_section() + &accounts(&sandbox) + &post("alert", &ALL, in_secs(1))));
    let herald = dir.start().await;
    delivered(&dir, 6).await;
    assert!(live(&sandbox).iter().all(|(_, n)| *n == 1), "{:?}", live(&sandbox));

    let out = dir.ask_daemon(&["recall", "--post", "alert", "--reason", "wrong hotline number"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "exit {}: {stdout}{}", out.status, text(&out.stderr));
    assert!(stdout.contains("6 taken down, 0 cancelled before sending, 0 not possible, 0 failed"), "{stdout}");
    for (platform, n) in live(&sandbox) {
        assert_eq!(n, 0, "{platform}: the emulator still shows the copy\n{stdout}");
    }

    let recalled = dir.log_from_daemon(&["--event", "recalled"]);
    herald.stop().await;
    let mut accounts: Vec<&str> = recalled.iter().map(|r| r.account.as_str()).collect();
    accounts.sort();
    let mut expected = ALL.to_vec();
    expected.sort();
    assert_eq!(accounts, expected, "one `recalled` record per target");
    for record in &recalled {
        let reason = record.reason.clone().unwrap_or_default();
        assert!(reason.contains("wrong hotline number"), "{reason}");
        assert!(record.raw["actor"]["via"] == "control_socket", "attributed: {}", record.raw);
        assert_eq!(record.state, "delivered", "the delivery's state is unchanged");
    }
    // The audit chain still verifies with the new records in it.
    let verify = dir.cli(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_delete_error_is_retried_and_a_refused_delete_exits_non_zero() {
    let sandbox = sandbox().await;
    let dir = TestDir::new();
    std::fs::write(dir.path().join("cover.jpg"), JPEG).unwrap();
    let targets = ["mastodon", "weibo", "discourse"];
    dir.write_config(&(daemon_section() + &accounts(&sandbox) + &post("alert", &targets, in_secs(1))));
    let herald = dir.start().await;
    delivered(&dir, 3).await;

    // Mastodon's first DELETE fails with a 503; Weibo's app may not delete;
    // Discourse is rate limited for ten minutes, longer than a recall waits.
    sandbox.mastodon.fail_next(1, Fault::status(503));
    sandbox.weibo.answer_next(1, 10014);
    sandbox.discourse.rate_limit_next(1, 600, true);
    let out = dir.ask_daemon(&["recall", "--post", "alert", "--reason", "wrong number"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "not every copy is down: exit 3\n{stdout}");
    assert!(stdout.contains("1 taken down, 0 cancelled before sending, 1 not possible, 1 failed"), "{stdout}");
    assert!(stdout.contains("asks to wait 600 s: run `herald recall` again"), "{stdout}");
    assert!(sandbox.discourse.published()[0].deleted_at.is_none(), "Discourse's copy is still up");
    assert!(stdout.contains("Take these down by hand:"), "{stdout}");
    assert!(stdout.contains("sign in to weibo.com"), "says what to do: {stdout}");

    let deletes: Vec<_> =
        sandbox.mastodon.requests().into_iter().filter(|r| r.path.starts_with("/api/v1/statuses/")).collect();
    assert_eq!(deletes.len(), 2, "the DELETE was tried again after the 503: {deletes:?}");
    assert!(sandbox.mastodon.published()[0].deleted_at.is_some(), "Mastodon's copy is gone");
    assert!(sandbox.weibo.published()[0].deleted_at.is_none(), "Weibo's copy is still up");

    let failed = dir.log_from_daemon(&["--event", "recall_failed"]);
    herald.stop().await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let failed: Vec<_> = failed.into_iter().filter(|r| r.account == "weibo").collect();
    assert_eq!(failed[0].raw["answer"]["code"], "10014", "the platform's answer is kept: {}", failed[0].raw);
    assert!(failed[0].reason.clone().unwrap_or_default().contains("not possible"), "{:?}", failed[0].reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recalling_a_post_not_sent_yet_cancels_its_pending_and_planned_deliveries() {
    let hook = receiver(None).await;
    let dir = TestDir::new();
    // `soon` is pending (within schedule_ahead); `later` is planned (3 h away).
    let config = daemon_section()
        + &webhook_account("hook-a", &hook.url())
        + &webhook_account("hook-b", &hook.url())
        + &post_at("soon", "River levels are rising.", &["hook-a", "hook-b"], in_secs(30 * 60))
        + &post_at("later", "Stay away from the banks.", &["hook-a", "hook-b"], in_secs(3 * 3600));
    dir.write_config(&config);
    let herald = dir.start().await;
    eventually("both deliveries of `soon` scheduled", Duration::from_secs(30), || {
        dir.log_from_daemon(&["--event", "scheduled"]).len() == 2
    })
    .await;

    let stdout = dir.ask_daemon_ok(&["recall", "--post", "soon", "--account", "hook-*", "--reason", "superseded"]);
    assert!(stdout.contains("0 taken down, 2 cancelled before sending"), "{stdout}");
    let cancelled = dir.log_from_daemon(&["--event", "cancelled"]);
    assert_eq!(cancelled.len(), 2, "{cancelled:?}");
    assert!(cancelled.iter().all(|r| r.reason.clone().unwrap_or_default().contains("superseded")));
    herald.stop().await;

    // With herald stopped, the CLI recalls on the store itself.
    let out = dir.cli(&["recall", "--post", "later", "--account", "hook-b", "--reason", "superseded"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(READ_STORE), "{}", text(&out.stderr));
    assert!(stdout.contains("0 taken down, 1 cancelled before sending"), "{stdout}");
    let upcoming = text(&dir.cli(&["upcoming"]).stdout);
    let later: Vec<&str> = upcoming.lines().filter(|l| l.contains("later")).collect();
    assert_eq!(later.len(), 1, "only hook-a's delivery of `later` is still to come:\n{upcoming}");
    assert!(later[0].contains("hook-a"), "{upcoming}");
    assert!(hook.received().is_empty(), "nothing reached the receiver");

    // A recall needs a reason.
    let blank = dir.cli(&["recall", "--post", "later", "--reason", " "]);
    assert_eq!(blank.status.code(), Some(1), "{}", text(&blank.stdout));
    assert!(text(&blank.stderr).contains("--reason"), "{}", text(&blank.stderr));

    // Nothing left to recall is an error, not a silent success.
    let again = dir.cli(&["recall", "--post", "soon", "--reason", "superseded"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stdout));
    assert!(text(&again.stderr).contains("nothing to recall"), "{}", text(&again.stderr));
}
