//! The adapter contract: every platform's adapter against its emulator in
//! the sandbox, over loopback HTTP, through the same faults, so a platform
//! cannot skip a case. Each fault hits the request that publishes (after
//! WeChat's draft and Tieba's login), once the account is warm (token and
//! media cached).
//!
//! What every adapter must do:
//! - a connection refused or a failed TLS handshake (nothing sent):
//!   transient, not uncertain;
//! - no answer in time, or the connection reset after sending: transient
//!   and uncertain (the next attempt looks before re-sending);
//! - 5xx without Retry-After: transient; 5xx with Retry-After and 429:
//!   rate limited (for the given time where the platform honours it);
//! - an HTML error page from a proxy: transient, its text in the answer;
//! - a 2xx that cannot be read (malformed JSON, an oversized answer):
//!   success where the platform defines none (webhook), else transient and
//!   uncertain; the answer kept for the audit log stays short;
//! - killed in flight, then recovered: exactly one item where the platform
//!   can de-duplicate or be looked up; Tieba, which can neither, publishes
//!   twice (README says so).
//!
//! A token expiring mid-attempt is WeChat's alone (the others' tokens do
//! not expire while herald runs): `wechat.rs` covers it.

use std::sync::Arc;
use std::time::Duration;

use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::{Adapter, DeliveryError, ErrorClass, PostContent, PublishRequest, Receipt, Rendered, Services};
use herald_sandbox::tieba::{SANDBOX_BDUSS, SANDBOX_FORUM};
use herald_sandbox::wechat::{SANDBOX_APPID, SANDBOX_SECRET};
use herald_sandbox::{Fault, Sandbox, SandboxOptions, StatusFault};
use serde_json::{Value, json};

const PLATFORMS: [Platform; 6] =
    [Platform::Weibo, Platform::Wechat, Platform::Tieba, Platform::Discourse, Platform::Mastodon, Platform::Webhook];

/// A JPEG header: enough for WeChat's cover checks.
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0xFF, 0xD9];

const TIMEOUT: Duration = Duration::from_millis(700);

fn http() -> HttpOptions {
    HttpOptions { connect_timeout: Duration::from_secs(2), timeout: TIMEOUT, ..HttpOptions::default() }
}

/// The account settings of `platform` in a sandbox at `base`.
fn settings(platform: Platform, base: &str) -> Value {
    match platform {
        Platform::Weibo => json!({ "base_url": format!("{base}/weibo"), "access_token": "sandbox-w",
            "safe_domain": "example.gov.cn", "rip": "203.0.113.7" }),
        Platform::Wechat => json!({ "base_url": format!("{base}/wechat"), "appid": SANDBOX_APPID,
            "secret": SANDBOX_SECRET, "poll_interval": "10ms", "poll_timeout": "300ms" }),
        Platform::Tieba => {
            json!({ "base_url": format!("{base}/tieba"), "bduss": SANDBOX_BDUSS, "forum": SANDBOX_FORUM })
        }
        Platform::Discourse => {
            json!({ "base_url": format!("{base}/discourse"), "api_key": "sandbox-d", "api_username": "system" })
        }
        Platform::Mastodon => json!({ "base_url": format!("{base}/mastodon"), "access_token": "sandbox-m" }),
        Platform::Webhook => json!({ "url": format!("{base}/hook") }),
    }
}

/// One platform's account in a fresh sandbox, warmed by one publish.
struct Target {
    platform: Platform,
    sandbox: Sandbox,
    adapter: Arc<dyn Adapter>,
    post: PostContent,
    _dir: tempfile::TempDir,
}

impl Target {
    async fn new(platform: Platform) -> Target {
        let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxOptions::default()).await.unwrap();
        let base = format!("http://{}", sandbox.addr());
        let dir = tempfile::tempdir().unwrap();
        let cover = dir.path().join("cover.jpg");
        std::fs::write(&cover, JPEG).unwrap();
        let settings = AccountSettings::deserialize(platform, settings(platform, &base)).unwrap();
        let adapter = registry::build(&settings, http(), &Services::in_memory("contract")).unwrap();
        let post = PostContent {
            title: Some("Fraud alert: fake refund calls".into()),
            body: "Police never ask you to move money to a safe account.".into(),
            link: Some("https://www.example.gov.cn/alerts/42".into()),
            images: if platform == Platform::Wechat { vec![cover.to_string_lossy().into_owned()] } else { vec![] },
        };
        let target = Target { platform, sandbox, adapter, post, _dir: dir };
        target.publish("d-warm").await.unwrap();
        assert_eq!(target.published(), 1, "{platform}: warm-up");
        target
    }

    /// The post of delivery `id`: its own text, so no two deliveries look alike.
    fn content(&self, id: &str) -> Rendered {
        let mut post = self.post.clone();
        post.body = format!("{} ({id})", post.body);
        self.adapter.render(&post).unwrap()
    }

    fn request<'a>(id: &'a str, uncertain: bool, content: &'a Rendered) -> PublishRequest<'a> {
        PublishRequest {
            delivery_id: id,
            post_id: "p",
            account_id: "contract",
            occurrence: "2020-01-01T00:00:00+00:00",
            attempt: if uncertain { 2 } else { 1 },
            uncertain,
            content,
        }
    }

    /// Items published (one per idempotency key for the webhook).
    fn published(&self) -> usize {
        let s = &self.sandbox;
        match self.platform {
            Platform::Weibo => s.weibo.published().len(),
            Platform::Wechat => s.wechat.published().len(),
            Platform::Tieba => s.tieba.published().len(),
            Platform::Discourse => s.discourse.published().len(),
            Platform::Mastodon => s.mastodon.published().len(),
            Platform::Webhook => s.webhook.accepted().len(),
        }
    }

    /// Requests the emulator has finished handling.
    fn handled(&self) -> usize {
        let s = &self.sandbox;
        match self.platform {
            Platform::Weibo => s.weibo.requests().len(),
            Platform::Wechat => s.wechat.calls().len(),
            Platform::Tieba => s.tieba.calls().len(),
            Platform::Discourse => s.discourse.requests().len(),
            Platform::Mastodon => s.mastodon.requests().len(),
            Platform::Webhook => s.webhook.received().len(),
        }
    }

    /// The next publishing request gets `fault` (the requests before it in
    /// an attempt, WeChat's draft and Tieba's login, go through).
    fn fail_publishing_request(&self, fault: Fault) {
        let s = &self.sandbox;
        let before = match self.platform {
            Platform::Wechat | Platform::Tieba => 1,
            _ => 0,
        };
        let plan = |count: usize, fault: Fault| match self.platform {
            Platform::Weibo => s.weibo.fail_next(count, fault),
            Platform::Wechat => s.wechat.fail_next(count, fault),
            Platform::Tieba => s.tieba.fail_next(count, fault),
            Platform::Discourse => s.discourse.fail_next(count, fault),
            Platform::Mastodon => s.mastodon.fail_next(count, fault),
            Platform::Webhook => s.webhook.fail_next(count, fault),
        };
        if before > 0 {
            plan(before, Fault::Delay(Duration::ZERO));
        }
        plan(1, fault);
    }

    async fn publish(&self, id: &str) -> Result<Receipt, DeliveryError> {
        let content = self.content(id);
        self.adapter.publish(Target::request(id, false, &content)).await
    }

    /// The next attempt of an uncertain delivery, as the daemon makes it.
    async fn recover(&self, id: &str) -> Result<Receipt, DeliveryError> {
        let content = self.content(id);
        if let Some(receipt) = self.adapter.lookup(Target::request(id, true, &content)).await? {
            return Ok(receipt);
        }
        self.adapter.publish(Target::request(id, true, &content)).await
    }
}

fn status(status: u16, retry_after: Option<u64>, body: &str) -> Fault {
    Fault::Status(StatusFault { status, retry_after, body: Some(body.to_string()) })
}

/// Run `case` on every platform, collecting what broke the contract.
async fn on_every_platform<F, Fut>(case: F)
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let mut broken = Vec::new();
    for platform in PLATFORMS {
        broken.extend(case(Target::new(platform).await).await);
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

fn expect(broken: &mut Vec<String>, platform: Platform, ok: bool, what: &str, result: &Result<Receipt, DeliveryError>) {
    if !ok {
        broken.push(format!("{platform}: {what}; got {result:?}"));
    }
}

#[tokio::test]
async fn a_refused_connection_is_transient_and_certain() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    unreachable_everywhere(&base, "a refused connection").await;
}

#[tokio::test]
async fn a_failed_tls_handshake_is_transient_and_certain() {
    // The sandbox speaks plain HTTP: an https:// client fails its handshake
    // before anything is sent.
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxOptions::default()).await.unwrap();
    unreachable_everywhere(&format!("https://{}", sandbox.addr()), "a TLS failure").await;
    assert!(sandbox.webhook.received().is_empty() && sandbox.weibo.requests().is_empty());
}

/// Every adapter pointed at `base`, where no request can be delivered:
/// transient and certain (nothing was sent).
async fn unreachable_everywhere(base: &str, what: &str) {
    let base = base.to_string();
    let mut broken = Vec::new();
    for platform in PLATFORMS {
        let settings = AccountSettings::deserialize(platform, settings(platform, &base)).unwrap();
        let adapter = registry::build(&settings, http(), &Services::in_memory("contract")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cover = dir.path().join("cover.jpg");
        std::fs::write(&cover, JPEG).unwrap();
        let post = PostContent {
            title: Some("Fraud alert: fake refund calls".into()),
            body: "Police never ask you to move money.".into(),
            link: Some("https://www.example.gov.cn/alerts/42".into()),
            images: if platform == Platform::Wechat { vec![cover.to_string_lossy().into_owned()] } else { vec![] },
        };
        let content = adapter.render(&post).unwrap();
        let request = PublishRequest {
            delivery_id: "d-closed",
            post_id: "p",
            account_id: "contract",
            occurrence: "2020-01-01T00:00:00+00:00",
            attempt: 1,
            uncertain: false,
            content: &content,
        };
        let result = adapter.publish(request).await;
        let ok = matches!(&result, Err(e) if e.class == ErrorClass::Transient && !e.maybe_sent);
        expect(&mut broken, platform, ok, &format!("{what}: transient, not sent"), &result);
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[tokio::test]
async fn no_answer_in_time_and_a_reset_after_sending_are_uncertain() {
    on_every_platform(|target| async move {
        let mut broken = Vec::new();
        for (what, fault) in [("a timeout", Fault::Delay(TIMEOUT * 3)), ("a reset", Fault::Drop)] {
            target.fail_publishing_request(fault);
            let result = target.publish(&format!("d-{what}")).await;
            let ok = matches!(&result, Err(e) if e.class == ErrorClass::Transient && e.maybe_sent);
            expect(&mut broken, target.platform, ok, &format!("{what}: transient and maybe sent"), &result);
        }
        broken
    })
    .await;
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_retried_as_they_ask() {
    on_every_platform(|target| async move {
        let mut broken = Vec::new();
        let p = target.platform;

        target.fail_publishing_request(status(500, None, ""));
        let result = target.publish("d-500").await;
        let ok = matches!(&result, Err(e) if e.class == ErrorClass::Transient);
        expect(&mut broken, p, ok, "500: transient", &result);

        target.fail_publishing_request(status(503, Some(30), ""));
        let result = target.publish("d-503").await;
        let ok = matches!(&result, Err(e) if e.class == ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(30)) });
        expect(&mut broken, p, ok, "503 with Retry-After 30: rate limited for 30 s", &result);

        target.fail_publishing_request(status(429, Some(7), ""));
        let result = target.publish("d-429").await;
        let ok = matches!(&result, Err(e) if matches!(e.class, ErrorClass::RateLimited { .. }));
        expect(&mut broken, p, ok, "429: rate limited", &result);
        broken
    })
    .await;
}

#[tokio::test]
async fn a_proxy_error_page_is_transient_and_kept_short() {
    on_every_platform(|target| async move {
        let mut broken = Vec::new();
        let page = format!("<html><body><h1>502 Bad Gateway</h1>{}</body></html>", "<p>nginx</p>".repeat(200));
        target.fail_publishing_request(status(502, None, &page));
        let result = target.publish("d-proxy").await;
        let ok = matches!(&result, Err(e) if e.class == ErrorClass::Transient
            && e.answer.status == Some(502)
            && e.answer.message.as_deref().is_some_and(|m| m.contains("Bad Gateway") && m.chars().count() <= 300));
        expect(&mut broken, target.platform, ok, "502 HTML: transient, an excerpt of the page", &result);
        broken
    })
    .await;
}

#[tokio::test]
async fn an_unreadable_success_answer_is_uncertain_never_permanent() {
    on_every_platform(|target| async move {
        let mut broken = Vec::new();
        let oversized = format!("{{\"padding\": \"{}\"", "x".repeat(2 * 1024 * 1024));
        for (what, body) in [("malformed JSON", "{\"id\": 12,".to_string()), ("an oversized answer", oversized)] {
            target.fail_publishing_request(status(200, None, &body));
            let result = target.publish(&format!("d-{what}")).await;
            let ok = match &result {
                Ok(receipt) => {
                    target.platform == Platform::Webhook
                        && receipt.answer.message.as_deref().is_none_or(|m| m.chars().count() <= 300)
                }
                Err(e) => {
                    e.class == ErrorClass::Transient
                        && e.maybe_sent
                        && e.answer.message.as_deref().is_none_or(|m| m.chars().count() <= 300)
                }
            };
            expect(&mut broken, target.platform, ok, &format!("{what}: transient and maybe sent"), &result);
        }
        broken
    })
    .await;
}

#[tokio::test]
async fn killed_in_flight_then_recovered_publishes_once_where_the_platform_allows() {
    on_every_platform(|target| async move {
        let mut broken = Vec::new();
        let p = target.platform;
        let handled = target.handled();
        // The platform handles the request after herald gave up on it (as
        // after a kill: the answer never reaches herald).
        target.fail_publishing_request(Fault::Delay(TIMEOUT * 2));
        let lost = target.publish("d-killed").await;
        let ok = matches!(&lost, Err(e) if e.maybe_sent);
        expect(&mut broken, p, ok, "the lost answer is uncertain", &lost);
        let expected_requests = handled + if matches!(p, Platform::Wechat | Platform::Tieba) { 2 } else { 1 };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while target.handled() < expected_requests && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let result = target.recover("d-killed").await;
        expect(&mut broken, p, result.is_ok(), "the recovery publishes or finds it", &result);
        // Tieba has no look-up and no idempotency key: a duplicate.
        let expected = if p == Platform::Tieba { 3 } else { 2 };
        if target.published() != expected {
            broken.push(format!("{p}: {} items after the recovery, expected {expected}", target.published()));
        }
        broken
    })
    .await;
}
