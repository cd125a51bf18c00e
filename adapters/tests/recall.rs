//! The recall contract (`Adapter::recall`): every platform's adapter
//! against its emulator in the sandbox, over loopback HTTP. What every
//! adapter must do:
//! - take down what it published, by the receipt's remote id, so the
//!   emulator shows it deleted;
//! - answer a second recall of the same copy "taken down" (already gone),
//!   never an error an operator would chase;
//! - classify a failed delete like a failed publish: a 5xx is transient
//!   (the daemon retries), and the copy is still there;
//! - say "not possible", with what to do by hand, where the platform or the
//!   app's permissions allow no delete (Weibo 10014; WeChat 48001), and
//!   where herald recorded no remote id.

use std::sync::Arc;
use std::time::Duration;

use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::{
    Adapter, ErrorClass, PostContent, PublishRequest, RecallRequest, Recalled, Receipt, Rendered, Services,
};
use herald_sandbox::tieba::{SANDBOX_BDUSS, SANDBOX_FID, SANDBOX_FORUM};
use herald_sandbox::wechat::{SANDBOX_APPID, SANDBOX_SECRET, WechatApi};
use herald_sandbox::{Fault, Sandbox, SandboxOptions};
use serde_json::{Value, json};

const PLATFORMS: [Platform; 6] =
    [Platform::Weibo, Platform::Wechat, Platform::Tieba, Platform::Discourse, Platform::Mastodon, Platform::Webhook];

/// A JPEG header: enough for WeChat's cover checks.
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0xFF, 0xD9];

/// The webhook receiver checks signatures with this secret.
const WEBHOOK_SECRET: &str = "recall-contract-secret";

fn settings(platform: Platform, base: &str, mass_send: bool) -> Value {
    match platform {
        Platform::Weibo => json!({ "base_url": format!("{base}/weibo"), "access_token": "sandbox-w",
            "safe_domain": "example.gov.cn", "rip": "203.0.113.7" }),
        Platform::Wechat => json!({ "base_url": format!("{base}/wechat"), "appid": SANDBOX_APPID,
            "secret": SANDBOX_SECRET, "poll_interval": "10ms", "poll_timeout": "2s",
            "mode": if mass_send { "mass_send" } else { "publish" } }),
        Platform::Tieba => json!({ "base_url": format!("{base}/tieba"), "bduss": SANDBOX_BDUSS,
            "forum": SANDBOX_FORUM, "fid": SANDBOX_FID }),
        Platform::Discourse => {
            json!({ "base_url": format!("{base}/discourse"), "api_key": "sandbox-d", "api_username": "system" })
        }
        Platform::Mastodon => json!({ "base_url": format!("{base}/mastodon"), "access_token": "sandbox-m" }),
        Platform::Webhook => json!({ "url": format!("{base}/hook"), "secret": WEBHOOK_SECRET }),
    }
}

/// One account of `platform` in a fresh sandbox.
struct Target {
    platform: Platform,
    sandbox: Sandbox,
    adapter: Arc<dyn Adapter>,
    content: Rendered,
    _dir: tempfile::TempDir,
}

impl Target {
    async fn new(platform: Platform) -> Target {
        Target::with_mode(platform, false).await
    }

    async fn with_mode(platform: Platform, mass_send: bool) -> Target {
        let options = SandboxOptions { webhook_secret: Some(WEBHOOK_SECRET.into()), ..SandboxOptions::default() };
        let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), options).await.unwrap();
        let base = format!("http://{}", sandbox.addr());
        let dir = tempfile::tempdir().unwrap();
        let cover = dir.path().join("cover.jpg");
        std::fs::write(&cover, JPEG).unwrap();
        let settings = AccountSettings::deserialize(platform, settings(platform, &base, mass_send)).unwrap();
        let http = HttpOptions {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            ..HttpOptions::default()
        };
        let adapter = registry::build(&settings, http, &Services::in_memory("recall")).unwrap();
        let post = PostContent {
            title: Some("Fraud alert: fake refund calls".into()),
            body: "Police never ask you to move money to a safe account.".into(),
            link: Some("https://www.example.gov.cn/alerts/42".into()),
            images: if platform == Platform::Wechat { vec![cover.to_string_lossy().into_owned()] } else { vec![] },
        };
        let content = adapter.render(&post).unwrap();
        Target { platform, sandbox, adapter, content, _dir: dir }
    }

    async fn publish(&self) -> Receipt {
        let request = PublishRequest {
            delivery_id: "d-recall",
            post_id: "p",
            account_id: "recall",
            occurrence: "2020-01-01T00:00:00+00:00",
            attempt: 1,
            uncertain: false,
            content: &self.content,
        };
        let receipt = self.adapter.publish(request).await.unwrap();
        assert_eq!(self.live(), 1, "{}: published", self.platform);
        receipt
    }

    async fn recall(&self, receipt: &Receipt) -> Result<Recalled, herald_adapters::DeliveryError> {
        let request = RecallRequest {
            delivery_id: "d-recall",
            post_id: "p",
            account_id: "recall",
            remote_id: receipt.remote_id.as_deref(),
            url: receipt.url.as_deref(),
        };
        self.adapter.recall(request).await
    }

    /// How many published items the emulator still shows live (not deleted).
    fn live(&self) -> usize {
        let s = &self.sandbox;
        match self.platform {
            Platform::Weibo => s.weibo.published().iter().filter(|p| p.deleted_at.is_none()).count(),
            Platform::Wechat => {
                s.wechat.published().iter().filter(|p| p.deleted_at.is_none()).count()
                    + s.wechat.mass_sent().iter().filter(|m| m.deleted_at.is_none()).count()
            }
            Platform::Tieba => s.tieba.published().iter().filter(|t| !t.deleted).count(),
            Platform::Discourse => s.discourse.published().iter().filter(|t| t.deleted_at.is_none()).count(),
            Platform::Mastodon => s.mastodon.published().iter().filter(|p| p.deleted_at.is_none()).count(),
            Platform::Webhook => s.webhook.accepted().iter().filter(|p| p.recalled_at.is_none()).count(),
        }
    }

    /// The next request to the platform fails with a 503.
    fn fail_next_with_503(&self) {
        let s = &self.sandbox;
        let fault = Fault::status(503);
        match self.platform {
            Platform::Weibo => s.weibo.fail_next(1, fault),
            Platform::Wechat => s.wechat.fail_next(1, fault),
            Platform::Tieba => s.tieba.fail_next(1, fault),
            Platform::Discourse => s.discourse.fail_next(1, fault),
            Platform::Mastodon => s.mastodon.fail_next(1, fault),
            Platform::Webhook => s.webhook.fail_next(1, fault),
        }
    }
}

fn taken_down(outcome: Recalled) -> Option<String> {
    match outcome {
        Recalled::TakenDown { note, .. } => note,
        Recalled::NotPossible { what_to_do, .. } => panic!("not taken down: {what_to_do}"),
    }
}

#[tokio::test]
async fn every_adapter_takes_down_what_it_published_and_a_second_recall_finds_it_gone() {
    for platform in PLATFORMS {
        let target = Target::new(platform).await;
        let receipt = target.publish().await;
        taken_down(target.recall(&receipt).await.unwrap());
        assert_eq!(target.live(), 0, "{platform}: the emulator shows it deleted");
        let again = target.recall(&receipt).await;
        match platform {
            // Tieba's client API has no "already deleted" answer: a second
            // delete is refused, which herald reports as "by hand".
            Platform::Tieba => assert!(matches!(again, Ok(Recalled::NotPossible { .. })), "{platform}: {again:?}"),
            // The receiver acknowledges a repeated recall event again.
            Platform::Webhook => assert!(taken_down(again.unwrap()).is_none(), "{platform}"),
            _ => assert!(taken_down(again.unwrap()).is_some(), "{platform}: a second recall says it was already gone"),
        }
    }
}

#[tokio::test]
async fn a_5xx_on_delete_is_transient_and_the_copy_stays_until_a_retry() {
    for platform in PLATFORMS {
        let target = Target::new(platform).await;
        let receipt = target.publish().await;
        target.fail_next_with_503();
        let error = target.recall(&receipt).await.expect_err(platform.name());
        assert_eq!(error.class, ErrorClass::Transient, "{platform}: {error:?}");
        assert_eq!(target.live(), 1, "{platform}: still there after the failed delete");
        taken_down(target.recall(&receipt).await.unwrap());
        assert_eq!(target.live(), 0, "{platform}: deleted by the retry");
    }
}

#[tokio::test]
async fn weibo_without_the_destroy_permission_says_what_to_do_by_hand() {
    let target = Target::new(Platform::Weibo).await;
    let receipt = target.publish().await;
    target.sandbox.weibo.answer_next(1, 10014);
    match target.recall(&receipt).await.unwrap() {
        Recalled::NotPossible { what_to_do, answer } => {
            assert!(what_to_do.contains("delete the status"), "{what_to_do}");
            assert!(what_to_do.contains(receipt.url.as_deref().unwrap()), "names the status: {what_to_do}");
            assert_eq!(answer.code.as_deref(), Some("10014"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(target.live(), 1, "nothing was deleted");
}

#[tokio::test]
async fn wechat_refused_by_the_api_says_to_use_the_web_console() {
    let target = Target::new(Platform::Wechat).await;
    let receipt = target.publish().await;
    target.sandbox.wechat.fail_api(WechatApi::PublishDelete, 1, 48001);
    match target.recall(&receipt).await.unwrap() {
        Recalled::NotPossible { what_to_do, .. } => assert!(what_to_do.contains("mp.weixin.qq.com"), "{what_to_do}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(target.live(), 1);
}

#[tokio::test]
async fn a_wechat_mass_send_is_deleted_and_the_report_says_followers_keep_the_card() {
    let target = Target::with_mode(Platform::Wechat, true).await;
    let receipt = target.publish().await;
    let note = taken_down(target.recall(&receipt).await.unwrap()).unwrap_or_default();
    assert!(note.contains("followers keep the message card"), "{note}");
    let sends = target.sandbox.wechat.mass_sent();
    assert_eq!(sends.len(), 1);
    assert!(sends[0].deleted_at.is_some(), "the mass send is deleted");
}

#[tokio::test]
async fn the_webhook_recall_is_a_signed_event_naming_the_delivery() {
    let target = Target::new(Platform::Webhook).await;
    let receipt = target.publish().await;
    taken_down(target.recall(&receipt).await.unwrap());
    let received = target.sandbox.webhook.received();
    let event = received.last().unwrap();
    assert!(event.signature_verified(), "signed with the account's secret");
    let body = event.body.as_ref().unwrap();
    assert_eq!(body["type"], "herald.recall");
    assert_eq!(body["delivery_id"], "d-recall");
    assert_eq!(body["remote_id"].as_str(), receipt.remote_id.as_deref());
}

#[tokio::test]
async fn without_a_remote_id_recall_is_not_possible_and_says_so() {
    for platform in PLATFORMS.into_iter().filter(|p| *p != Platform::Webhook) {
        let target = Target::new(platform).await;
        let receipt = Receipt { remote_id: None, url: None, answer: Default::default() };
        match target.recall(&receipt).await.unwrap() {
            Recalled::NotPossible { what_to_do, .. } => {
                assert!(what_to_do.contains("by hand"), "{platform}: {what_to_do}")
            }
            other => panic!("{platform}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_wechat_article_recorded_by_its_article_id_is_deleted_too() {
    // A delivery found by a look-up records the article_id, not a publish_id.
    let target = Target::new(Platform::Wechat).await;
    let published = target.publish().await;
    let article_id = target.sandbox.wechat.published()[0].article_id.clone();
    let receipt = Receipt { remote_id: Some(article_id), ..published };
    taken_down(target.recall(&receipt).await.unwrap());
    assert_eq!(target.live(), 0);
}
