//! Platform behaviour that needs the scheduler: limits that several
//! accounts share.

use std::net::SocketAddr;
use std::time::Duration;

use herald_sandbox::{Outcome, Tokens, WeiboConfig, WeiboEmulator};

use crate::helpers::*;

fn weibo_account(id: &str, base_url: &str, token: &str) -> String {
    format!(
        "\n[accounts.{id}]\nplatform = \"weibo\"\nbase_url = \"{base_url}\"\naccess_token = \"{token}\"\n\
         safe_domain = \"example.gov.cn\"\nrip = \"127.0.0.1\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weibo_ip_limit_10022_pauses_every_weibo_account_of_the_host() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let weibo = WeiboEmulator::start(addr, WeiboConfig::new(Tokens::new(["token-a", "token-b"]), "example.gov.cn"))
        .await
        .unwrap();
    weibo.answer_next(1, 10022);
    let hook = receiver(None).await;
    let dir = TestDir::new();
    let first = in_secs(2);
    let config = daemon_section()
        + &weibo_account("wuhan-weibo", weibo.base_url(), "token-a")
        + &weibo_account("xian-weibo", weibo.base_url(), "token-b")
        + &webhook_account("archive", &hook.url())
        + &post_at("first", "Beware https://example.gov.cn/a", &["wuhan-weibo"], first)
        + &post_at("second", "Beware https://example.gov.cn/b", &["xian-weibo"], first + chrono::Duration::seconds(1))
        + &post_at("marker", "after both", &["archive"], first + chrono::Duration::seconds(2));
    dir.write_config(&config);
    let mut herald = dir.start().await;

    // The marker is due after both Weibo posts: once it arrives, the
    // scheduler has passed their times.
    assert!(
        hook.wait_until(Duration::from_secs(30), |received| received
            .iter()
            .any(|post| matches!(post.outcome, Outcome::Accepted { .. })))
            .await
    );
    // One request reached Weibo (refused 10022); xian-weibo waited with it.
    let requests: Vec<_> = weibo.requests().into_iter().filter(|r| r.path.ends_with("share.json")).collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    herald.wait_for_log("rate limit shared with another account; account paused").await;
    herald.stop().await;
    assert!(weibo.published().is_empty());
    let status = dir.status();
    assert!(status.contains("2 pending"), "{status}");
}

/// A JPEG header: enough for WeChat's cover checks.
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0xFF, 0xD9];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_killed_while_submit_is_in_flight_publishes_one_article() {
    use herald_sandbox::wechat::{WechatApi, WechatConfig, WechatEmulator};

    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let wechat = WechatEmulator::start(addr, WechatConfig::new("wx-kill", "wx-kill-secret")).await.unwrap();
    // The submit is held 1.5 s: herald is killed while it waits for the answer.
    wechat.hold(WechatApi::Submit, 1, Duration::from_millis(1500));
    let dir = TestDir::new();
    std::fs::write(dir.path().join("cover.jpg"), JPEG).unwrap();
    let config = daemon_section()
        + &format!(
            "\n[accounts.wuhan-wechat]\nplatform = \"wechat\"\nbase_url = \"{}\"\nappid = \"wx-kill\"\n\
             secret = \"wx-kill-secret\"\npoll_interval = \"100ms\"\npoll_timeout = \"3s\"\n",
            wechat.base_url()
        )
        + &post_at("alert", "Police never ask for a bank code.", &["wuhan-wechat"], in_secs(1))
        + "images = [\"cover.jpg\"]\n";
    dir.write_config(&config);
    let herald = dir.start().await;

    eventually("the submit is in flight", Duration::from_secs(30), || wechat.arrived(WechatApi::Submit) == 1).await;
    let first_run = herald.kill().await;
    assert!(wechat.calls_to(WechatApi::Submit).is_empty(), "killed before WeChat answered the submit");
    // WeChat finishes the submit it received.
    eventually("WeChat publishes", Duration::from_secs(30), || wechat.published().len() == 1).await;

    let herald = dir.start().await;
    eventually("herald records the delivery", Duration::from_secs(60), || {
        status_counts(&text(&dir.cli(&["status"]).stdout)).get("delivered").copied() == Some(1)
    })
    .await;
    herald.stop().await;

    assert_eq!(wechat.published().len(), 1, "one article; first run:\n{first_run}");
    let submits = wechat.calls_to(WechatApi::Submit).len();
    assert_eq!(submits, 1, "submitted once");
    assert!(!wechat.calls_to(WechatApi::BatchGet).is_empty(), "the restart looked for the article");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_a_paused_accounts_next_delivery_can_really_go() {
    use herald_sandbox::{Fault, StatusFault};

    let hook = receiver(None).await;
    // Rate limited for an hour.
    hook.fail_next(1, Fault::Status(StatusFault { status: 429, retry_after: Some(3600), body: None }));
    let dir = TestDir::new();
    let second = in_secs(2);
    let config = daemon_section()
        + &webhook_account("nanjing-hook", &hook.url())
        + &post_at("first", "River levels are rising.", &["nanjing-hook"], in_secs(1))
        + &post_at("second", "Stay away from the banks.", &["nanjing-hook"], second);
    dir.write_config(&config);
    let herald = dir.start().await;

    assert!(hook.wait_until(Duration::from_secs(30), |received| !received.is_empty()).await);
    eventually("the second post is due", Duration::from_secs(30), || chrono::Utc::now() > second).await;
    eventually("herald records the rate limit", Duration::from_secs(30), || {
        dir.log().iter().any(|record| record.event == "retry_scheduled")
    })
    .await;
    let status = dir.status();
    herald.stop().await;

    let next = status.lines().find(|line| line.starts_with("next due:")).unwrap_or_default().to_string();
    assert!(!next.contains("(now)"), "the account is paused for an hour: {status}");
    assert!(next.contains("(in 59m") || next.contains("(in 1h"), "{status}");
    assert_eq!(hook.received().len(), 1, "nothing else was sent while paused");
}

/// A JPEG of `len` bytes (header, padding, end marker): the sizes tell the
/// pictures apart at the emulator, which records each upload's size.
fn jpeg_of(len: usize) -> Vec<u8> {
    let mut bytes = JPEG[..JPEG.len() - 2].to_vec();
    bytes.resize(len - 2, 0);
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_overwritten_after_scheduling_is_never_sent_under_the_old_hash() {
    use herald_sandbox::wechat::{WechatConfig, WechatEmulator};

    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let wechat = WechatEmulator::start(addr, WechatConfig::new("wx-bytes", "wx-bytes-secret")).await.unwrap();
    let dir = TestDir::new();
    let (scheduled_picture, overwritten, kept) = (jpeg_of(200), jpeg_of(300), jpeg_of(400));
    std::fs::write(dir.path().join("changed.jpg"), &scheduled_picture).unwrap();
    std::fs::write(dir.path().join("kept.jpg"), &kept).unwrap();
    // Due in 30 minutes: the first run only schedules them (inside `schedule_ahead`).
    let due = in_secs(30 * 60);
    let config = daemon_section()
        + &format!(
            "\n[accounts.wuhan-wechat]\nplatform = \"wechat\"\nbase_url = \"{}\"\nappid = \"wx-bytes\"\n\
             secret = \"wx-bytes-secret\"\npoll_interval = \"100ms\"\npoll_timeout = \"3s\"\n",
            wechat.base_url()
        )
        + &post_at("changed", "Police never ask for a bank code.", &["wuhan-wechat"], due)
        + "images = [\"changed.jpg\"]\n"
        + &post_at("kept", "Hang up on fake police.", &["wuhan-wechat"], due)
        + "images = [\"kept.jpg\"]\n";
    dir.write_config(&config);
    let herald = dir.start().await;
    eventually("both deliveries scheduled", Duration::from_secs(30), || {
        dir.log_from_daemon(&["--event", "scheduled"]).len() == 2
    })
    .await;
    herald.stop().await;

    // The picture is replaced under the same name; the post is unchanged.
    std::fs::write(dir.path().join("changed.jpg"), &overwritten).unwrap();
    // herald comes back with its clock at the posts' time.
    let offset = (due - chrono::Utc::now()).num_milliseconds();
    let herald = dir.start_with(&[(herald::clock::OFFSET_VAR, &offset.to_string())]).await;
    eventually("both deliveries finished", Duration::from_secs(60), || {
        let counts = status_counts(&text(&dir.cli(&["status"]).stdout));
        counts.get("delivered").copied() == Some(1) && counts.get("failed").copied() == Some(1)
    })
    .await;
    herald.stop().await;

    let log = dir.log();
    let failed: Vec<_> = log.iter().filter(|r| r.event == "failed").collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].post, "changed");
    let reason = failed[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("changed.jpg"), "the reason names the image: {reason}");
    assert!(reason.contains(&sha256_hex(&scheduled_picture)), "the reason has the scheduled digest: {reason}");
    assert!(reason.contains(&sha256_hex(&overwritten)), "the reason has the digest now: {reason}");
    let scheduled = log.iter().find(|r| r.event == "scheduled" && r.post == "changed").unwrap();
    assert_eq!(failed[0].content_hash, scheduled.content_hash, "the record keeps the hash it was scheduled under");
    assert!(log.iter().any(|r| r.event == "delivered" && r.post == "kept"), "an unchanged picture still goes");

    // WeChat received the kept picture and neither version of the changed one.
    let sizes: Vec<usize> = wechat.calls().iter().flat_map(|c| c.uploads.iter().map(|u| u.bytes)).collect();
    assert!(sizes.contains(&kept.len()), "{sizes:?}");
    assert!(!sizes.contains(&overwritten.len()), "the overwritten picture reached WeChat: {sizes:?}");
    assert!(!sizes.contains(&scheduled_picture.len()), "{sizes:?}");
    assert_eq!(wechat.published().len(), 1, "only the kept post was published");
}
