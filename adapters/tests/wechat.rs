//! The WeChat adapter against the sandbox's WeChat emulator, over real
//! loopback HTTP: the exact requests, the publish job followed to its end,
//! token caching and refresh, media caching, lookup of uncertain
//! deliveries, mass send de-duplication, and every error class.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::wechat::{Mode, Settings, TokenEndpoint, WechatAdapter};
use herald_adapters::{
    Adapter, DeliveryError, ErrorClass, MemoryCache, PostContent, PublishRequest, Receipt, Rendered, Secret, Services,
};
use herald_sandbox::wechat::{PublishPlan, WechatApi, WechatConfig, WechatEmulator};
use herald_sandbox::{Fault, wechat};
use serde_json::{Value, json};

const APPID: &str = "wx-test-appid";
const SECRET: &str = "wechat-s3cret-value";
const ACCOUNT: &str = "wuhan-wechat";

const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0xFF, 0xD9];
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];

async fn emulator() -> WechatEmulator {
    emulator_with(WechatConfig::new(APPID, SECRET)).await
}

async fn emulator_with(config: WechatConfig) -> WechatEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    WechatEmulator::start(addr, config).await.unwrap()
}

fn quick() -> HttpOptions {
    HttpOptions { connect_timeout: Duration::from_secs(2), timeout: Duration::from_secs(5), ..HttpOptions::default() }
}

fn settings(emulator: &WechatEmulator) -> Settings {
    let mut settings = Settings::new(APPID, Secret::new(SECRET));
    settings.base_url = emulator.base_url().to_string();
    settings.author = Some("市反诈中心".into());
    settings.poll_interval = "10ms".into();
    settings.poll_timeout = "3s".into();
    settings
}

fn adapter(settings: Settings, services: &Services) -> WechatAdapter {
    WechatAdapter::new(settings, quick(), services).unwrap()
}

/// A post with a cover and one more image, in a folder of its own.
struct Post {
    _dir: tempfile::TempDir,
    content: PostContent,
}

impl Post {
    fn new() -> Post {
        let dir = tempfile::tempdir().unwrap();
        let cover = write(dir.path(), "cover.jpg", JPEG);
        let poster = write(dir.path(), "poster.png", PNG);
        Post {
            content: PostContent {
                title: Some("警惕“安全账户”诈骗".into()),
                body: "Police never ask you to move money to a \"safe account\".\nHang up & call 110.".into(),
                link: Some("https://example.gov.cn/alerts/42".into()),
                images: vec![cover, poster],
            },
            _dir: dir,
        }
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
    path.to_string_lossy().into_owned()
}

/// One delivery, owning what a [`PublishRequest`] borrows.
struct Delivery {
    id: String,
    attempt: u32,
    uncertain: bool,
    content: Rendered,
}

impl Delivery {
    fn new(id: &str, adapter: &WechatAdapter, post: &Post) -> Delivery {
        let content = adapter.render(&post.content).unwrap();
        Delivery { id: id.to_string(), attempt: 1, uncertain: false, content }
    }

    fn request(&self) -> PublishRequest<'_> {
        PublishRequest {
            delivery_id: &self.id,
            post_id: "fraud-alert",
            account_id: ACCOUNT,
            occurrence: "2025-03-01T01:00:00Z",
            attempt: self.attempt,
            uncertain: self.uncertain,
            content: &self.content,
        }
    }
}

/// One attempt as the daemon makes it: look up an uncertain delivery, then
/// publish; after "credentials expired", refresh once and publish once more.
async fn attempt(adapter: &dyn Adapter, delivery: &Delivery) -> Result<Receipt, DeliveryError> {
    if delivery.uncertain
        && let Some(receipt) = adapter.lookup(delivery.request()).await?
    {
        return Ok(receipt);
    }
    match adapter.publish(delivery.request()).await {
        Err(error) if error.class == ErrorClass::CredentialsExpired => {
            adapter.refresh_credentials().await?;
            adapter.publish(delivery.request()).await
        }
        other => other,
    }
}

fn errcodes(calls: &[wechat::WechatCall]) -> Vec<Option<i64>> {
    calls.iter().map(|call| call.errcode).collect()
}

#[tokio::test]
async fn a_publish_sends_exactly_what_wechat_expects_and_returns_the_article_url() {
    let emulator = emulator().await;
    emulator.set_publish_plan(PublishPlan { publishing_polls: 2, final_status: 0 });
    let services = Services::in_memory(ACCOUNT);
    let adapter = adapter(settings(&emulator), &services);
    let post = Post::new();
    let delivery = Delivery::new("d-001", &adapter, &post);

    let receipt = adapter.publish(delivery.request()).await.unwrap();

    let calls = emulator.calls();
    let apis: Vec<_> = calls.iter().map(|call| call.api).collect();
    assert_eq!(
        apis,
        [
            WechatApi::StableToken,
            WechatApi::AddMaterial,
            WechatApi::UploadImage,
            WechatApi::DraftAdd,
            WechatApi::Submit,
            WechatApi::PublishStatus,
            WechatApi::PublishStatus,
            WechatApi::PublishStatus,
        ]
    );
    assert!(calls.iter().all(|call| call.errcode == Some(0)), "{:?}", errcodes(&calls));

    // The token call.
    assert_eq!(
        calls[0].body,
        Some(json!({ "grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": false }))
    );
    let token = calls[1].query["access_token"].clone();
    assert!(token.starts_with("sandbox-token-"));
    for call in &calls[1..] {
        assert_eq!(call.query.get("access_token"), Some(&token), "{:?}", call.api);
    }

    // The cover, as a thumb, in the multipart field `media`.
    assert_eq!(calls[1].query.get("type").map(String::as_str), Some("thumb"));
    assert_eq!(calls[1].uploads.len(), 1);
    let cover = &calls[1].uploads[0];
    assert_eq!(cover.field, "media");
    assert_eq!(cover.file_name.as_deref(), Some("cover.jpg"));
    assert_eq!(cover.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(cover.bytes, JPEG.len());
    // The body image, through uploadimg.
    let image = &calls[2].uploads[0];
    assert_eq!((image.field.as_str(), image.content_type.as_deref()), ("media", Some("image/png")));
    assert_eq!(image.bytes, PNG.len());

    // The draft, field by field.
    let published = emulator.published();
    assert_eq!(published.len(), 1);
    let thumb_media_id = published[0].article.thumb_media_id.clone();
    let image_url = format!("{}/mmbiz/", emulator.base_url());
    let draft = calls[3].body.clone().unwrap();
    let content = draft["articles"][0]["content"].as_str().unwrap().to_string();
    assert!(content.contains(&format!("<p><img src=\"{image_url}")), "{content}");
    assert_eq!(
        draft,
        json!({ "articles": [{
            "title": "警惕“安全账户”诈骗",
            "author": "市反诈中心",
            "digest": "Police never ask you to move money to a \"safe account\". Hang up & call 110.",
            "content": content,
            "content_source_url": "https://example.gov.cn/alerts/42",
            "thumb_media_id": thumb_media_id,
            "need_open_comment": 0,
            "only_fans_can_comment": 0,
        }]})
    );
    assert!(content.starts_with(
        "<p>Police never ask you to move money to a &quot;safe account&quot;.</p>\n<p>Hang up &amp; call 110.</p>\n"
    ));

    // Submit the draft, then poll the job until status 0.
    assert_eq!(calls[4].body, Some(json!({ "media_id": published[0].draft_media_id })));
    let publish_id = published[0].publish_id.clone();
    for poll in &calls[5..] {
        assert_eq!(poll.body, Some(json!({ "publish_id": publish_id })));
    }

    assert_eq!(receipt.remote_id.as_deref(), Some(publish_id.as_str()));
    assert_eq!(receipt.url.as_deref(), Some(published[0].article_url.as_str()));
    assert_eq!(published[0].article_url, format!("{}/s/{publish_id}", emulator.base_url()));
    assert_eq!(receipt.answer.status, Some(200));
    assert_eq!(published[0].article.content, content, "the uploaded image is kept");
}

#[tokio::test]
async fn a_delivery_is_delivered_only_once_wechat_says_status_0() {
    let emulator = emulator().await;
    emulator.set_publish_plan(PublishPlan { publishing_polls: 1_000, final_status: 0 });
    let mut settings = settings(&emulator);
    settings.poll_timeout = "100ms".into();
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();

    let error = adapter.publish(Delivery::new("d-slow", &adapter, &post).request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Transient);
    assert!(error.maybe_sent, "submitted: the next attempt must look before re-sending");
    assert!(error.reason.contains("still publishing"), "{}", error.reason);
    assert!(emulator.published().is_empty());
    assert!(emulator.calls_to(WechatApi::PublishStatus).len() >= 2);
}

#[tokio::test]
async fn a_failure_status_is_permanent_with_its_reason() {
    let emulator = emulator().await;
    emulator.set_publish_plan(PublishPlan { publishing_polls: 1, final_status: 4 });
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();

    let error = adapter.publish(Delivery::new("d-rejected", &adapter, &post).request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(
        error.reason.contains("rejected by review") && error.reason.contains("publish_status 4"),
        "{}",
        error.reason
    );
    assert_eq!(error.answer.code.as_deref(), Some("publish_status 4"));
    assert!(emulator.published().is_empty());
}

/// The class a draft/add errcode ends in.
async fn draft_error(errcode: i64) -> DeliveryError {
    let emulator = emulator().await;
    emulator.fail_api(WechatApi::DraftAdd, 1, errcode);
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let error = adapter.publish(Delivery::new("d-err", &adapter, &post).request()).await.unwrap_err();
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 0, "{errcode}: nothing is submitted");
    assert_eq!(error.answer.status, Some(200));
    assert_eq!(error.answer.code, Some(errcode.to_string()));
    assert!(error.answer.message.as_deref().unwrap_or_default().contains("injected"), "{error:?}");
    error
}

#[tokio::test]
async fn errcodes_are_classified_by_the_table() {
    assert_eq!(draft_error(-1).await.class, ErrorClass::Transient);
    assert_eq!(draft_error(42001).await.class, ErrorClass::CredentialsExpired);
    assert_eq!(draft_error(45011).await.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(60)) });

    let daily = draft_error(45009).await;
    let ErrorClass::RateLimited { retry_after: Some(wait) } = daily.class else { panic!("{daily:?}") };
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(24 * 3600), "{wait:?}");
    // WeChat's quotas are the AppID's: every account of it waits.
    assert!(daily.shared_limit && draft_error(45011).await.shared_limit);
    assert!(!draft_error(-1).await.shared_limit);

    let whitelist = draft_error(40164).await;
    assert_eq!(whitelist.class, ErrorClass::Permanent);
    assert!(whitelist.reason.contains("whitelist") && whitelist.reason.contains("40164"), "{}", whitelist.reason);

    let too_large = draft_error(45002).await;
    assert_eq!(too_large.class, ErrorClass::Permanent);

    let person = draft_error(53503).await;
    assert_eq!(person.class, ErrorClass::Permanent);
    assert!(person.reason.contains("a person must act"), "{}", person.reason);
}

#[tokio::test]
async fn a_wrong_secret_is_permanent_and_never_shown() {
    let emulator = emulator().await;
    let mut settings = settings(&emulator);
    settings.secret = Secret::new("not-the-s3cret");
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();

    let error = adapter.publish(Delivery::new("d-secret", &adapter, &post).request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Permanent);
    assert_eq!(error.answer.code.as_deref(), Some("40125"));
    assert!(error.reason.contains("wrong AppSecret: check appid and secret"), "{}", error.reason);
    assert_eq!(emulator.calls().len(), 1, "nothing but the token call");
    let shown = format!("{error:?} {error}");
    assert!(!shown.contains("not-the-s3cret") && !shown.contains(SECRET), "{shown}");

    // `check --probe` says the same.
    let probe = adapter.probe().await.unwrap_err();
    assert_eq!((probe.class, probe.answer.code.as_deref()), (ErrorClass::Permanent, Some("40125")));
    assert!(probe.reason.contains("check appid and secret"), "{}", probe.reason);

    // The older token call answers 40001 for the same mistake.
    let mut classic = self::settings(&emulator);
    classic.secret = Secret::new("not-the-s3cret");
    classic.token_endpoint = TokenEndpoint::Classic;
    let classic = self::adapter(classic, &Services::in_memory(ACCOUNT));
    let error = classic.publish(Delivery::new("d-classic", &classic, &post).request()).await.unwrap_err();
    assert_eq!((error.class, error.answer.code.as_deref()), (ErrorClass::Permanent, Some("40001")));
    assert!(error.reason.contains("check appid and secret"), "{}", error.reason);
}

#[tokio::test]
async fn transport_faults_are_transient() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let delivery = Delivery::new("d-net", &adapter, &post);

    emulator.fail_next(1, Fault::status(502));
    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!((error.class.clone(), error.answer.status), (ErrorClass::Transient, Some(502)));

    emulator.fail_next(1, Fault::Drop);
    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    assert!(error.maybe_sent);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_publish_retried_once() {
    let emulator = emulator().await;
    let services = Services::in_memory(ACCOUNT);
    let adapter = adapter(settings(&emulator), &services);
    let post = Post::new();
    attempt(&adapter, &Delivery::new("d-first", &adapter, &post)).await.unwrap();
    assert_eq!(emulator.tokens_issued(), 1);

    emulator.expire_tokens();
    let receipt = attempt(&adapter, &Delivery::new("d-second", &adapter, &post)).await.unwrap();

    assert!(receipt.url.is_some());
    assert_eq!(emulator.tokens_issued(), 2, "exactly one refresh");
    let token_calls = emulator.calls_to(WechatApi::StableToken);
    assert_eq!(token_calls.len(), 2);
    // The token had expired: WeChat gives a new one without forcing, so
    // none of the day's 20 forced refreshes is spent.
    assert_eq!(token_calls[1].body.as_ref().unwrap()["force_refresh"], json!(false));
    // The draft was refused once with the stale token, then made once.
    assert_eq!(errcodes(&emulator.calls_to(WechatApi::DraftAdd)), [Some(0), Some(42001), Some(0)]);
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 2, "one submit per delivery");
    assert_eq!(emulator.published().len(), 2);
}

#[tokio::test]
async fn a_second_expiry_right_after_the_refresh_does_not_loop() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let delivery = Delivery::new("d-expired", &adapter, &post);

    emulator.fail_api(WechatApi::DraftAdd, 1, 40014);
    assert_eq!(adapter.publish(delivery.request()).await.unwrap_err().class, ErrorClass::CredentialsExpired);
    adapter.refresh_credentials().await.unwrap();
    emulator.expire_tokens();
    let again = adapter.publish(delivery.request()).await.unwrap_err();

    // The daemon fails the delivery on this second "expired": no loop.
    assert_eq!(again.class, ErrorClass::CredentialsExpired);
    assert_eq!(again.answer.code.as_deref(), Some("42001"));
    assert_eq!(emulator.tokens_issued(), 2);
    assert!(emulator.published().is_empty());
}

#[tokio::test]
async fn concurrent_refreshes_fetch_one_token() {
    let emulator = emulator().await;
    let adapter = Arc::new(adapter(settings(&emulator), &Services::in_memory(ACCOUNT)));
    let post = Post::new();
    adapter.publish(Delivery::new("d-0", &adapter, &post).request()).await.unwrap();

    // The cached token is now expired: whichever delivery hits 42001 first
    // refreshes it; the others find the new token (one fetch in all).
    emulator.expire_tokens();
    let deliveries: Vec<_> = (1..=3).map(|n| Delivery::new(&format!("d-{n}"), &adapter, &post)).collect();
    let results =
        futures_join(deliveries.iter().map(|delivery| attempt(adapter.as_ref(), delivery)).collect::<Vec<_>>()).await;

    for result in results {
        result.unwrap();
    }
    assert_eq!(emulator.tokens_issued(), 2, "one refresh for all three deliveries");
}

/// Run futures concurrently on this task and collect their outputs.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn the_token_is_shared_through_the_cache_by_adapters_of_the_account() {
    let emulator = emulator().await;
    let cache = Arc::new(MemoryCache::default());
    let services = Services { account: ACCOUNT.into(), cache };
    let first = adapter(settings(&emulator), &services);
    let second = adapter(settings(&emulator), &services);
    let post = Post::new();

    first.publish(Delivery::new("d-a", &first, &post).request()).await.unwrap();
    second.publish(Delivery::new("d-b", &second, &post).request()).await.unwrap();

    assert_eq!(emulator.tokens_issued(), 1);
    assert_eq!(emulator.calls_to(WechatApi::StableToken).len(), 1);
    assert_eq!(emulator.calls_to(WechatApi::AddMaterial).len(), 1, "the cover is shared too");

    // Another cache asks for its own; stable_token answers the same token.
    let other = adapter(settings(&emulator), &Services::in_memory("another"));
    other.publish(Delivery::new("d-c", &other, &post).request()).await.unwrap();
    assert_eq!(emulator.calls_to(WechatApi::StableToken).len(), 2);
    assert_eq!(emulator.tokens_issued(), 1);
}

#[tokio::test]
async fn a_retry_reuses_the_uploaded_cover_and_image() {
    let emulator = emulator().await;
    emulator.fail_api(WechatApi::DraftAdd, 1, -1);
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let mut delivery = Delivery::new("d-retry", &adapter, &post);

    assert_eq!(adapter.publish(delivery.request()).await.unwrap_err().class, ErrorClass::Transient);
    delivery.attempt = 2;
    adapter.publish(delivery.request()).await.unwrap();

    assert_eq!(emulator.calls_to(WechatApi::AddMaterial).len(), 1);
    assert_eq!(emulator.calls_to(WechatApi::UploadImage).len(), 1);
    assert_eq!(emulator.calls_to(WechatApi::DraftAdd).len(), 2);
    assert_eq!(emulator.published().len(), 1);
}

#[tokio::test]
async fn an_uncertain_delivery_already_published_is_found_and_not_sent_again() {
    let emulator = emulator().await;
    emulator.set_publish_plan(PublishPlan { publishing_polls: 3, final_status: 0 });
    let services = Services::in_memory(ACCOUNT);
    let mut impatient = settings(&emulator);
    impatient.poll_timeout = "1ms".into();
    let first = adapter(impatient, &services);
    let post = Post::new();
    let mut delivery = Delivery::new("d-uncertain", &first, &post);

    let error = first.publish(delivery.request()).await.unwrap_err();
    assert!(error.maybe_sent && error.class == ErrorClass::Transient, "{error:?}");

    // The next attempt (after a restart: a new adapter, the same store).
    let second = adapter(settings(&emulator), &services);
    delivery.uncertain = true;
    delivery.attempt = 2;
    let receipt = attempt(&second, &delivery).await.unwrap();

    let published = emulator.published();
    assert_eq!(published.len(), 1);
    assert_eq!(receipt.remote_id.as_deref(), Some(published[0].publish_id.as_str()));
    assert_eq!(receipt.url.as_deref(), Some(published[0].article_url.as_str()));
    assert_eq!(emulator.calls_to(WechatApi::DraftAdd).len(), 1, "not sent again");
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 1, "not sent again");

    // Once known as published, it is answered from the record.
    let calls = emulator.calls().len();
    assert_eq!(
        second.lookup(delivery.request()).await.unwrap(),
        Some(Receipt { answer: Default::default(), ..receipt })
    );
    assert_eq!(emulator.calls().len(), calls);
}

#[tokio::test]
async fn lookup_without_a_record_or_after_a_failure_says_publish() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let mut delivery = Delivery::new("d-unknown", &adapter, &post);
    delivery.uncertain = true;

    assert_eq!(adapter.lookup(delivery.request()).await.unwrap(), None);
    assert!(emulator.calls().is_empty());

    emulator.set_publish_plan(PublishPlan { publishing_polls: 0, final_status: 3 });
    assert_eq!(adapter.publish(delivery.request()).await.unwrap_err().class, ErrorClass::Permanent);
    assert_eq!(adapter.lookup(delivery.request()).await.unwrap(), None);

    // `herald retry` after a failure submits again.
    emulator.set_publish_plan(PublishPlan::default());
    adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 2);
}

#[tokio::test]
async fn an_expiry_while_polling_resumes_the_same_job_after_the_refresh() {
    let emulator = emulator().await;
    emulator.set_publish_plan(PublishPlan { publishing_polls: 1, final_status: 0 });
    emulator.fail_api(WechatApi::PublishStatus, 1, 42001);
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();

    let receipt = attempt(&adapter, &Delivery::new("d-poll", &adapter, &post)).await.unwrap();

    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 1, "the job is followed, not submitted again");
    assert_eq!(emulator.tokens_issued(), 2);
    assert_eq!(receipt.url.as_deref(), Some(emulator.published()[0].article_url.as_str()));
}

#[tokio::test]
async fn mass_send_with_the_same_clientmsgid_sends_once() {
    let emulator = emulator().await;
    let mut settings = settings(&emulator);
    settings.mode = Mode::MassSend;
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let delivery = Delivery::new("0123456789abcdef0123456789abcdef", &adapter, &post);

    let first = adapter.publish(delivery.request()).await.unwrap();
    let again = adapter.publish(delivery.request()).await.unwrap();

    let sent = emulator.mass_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(first.remote_id.as_deref(), Some(sent[0].msg_id.as_str()));
    assert_eq!(again.remote_id, first.remote_id, "the repeat names the original send");
    assert_eq!(again.answer.code.as_deref(), Some("45065"));
    let sends = emulator.calls_to(WechatApi::MassSend);
    assert_eq!(errcodes(&sends), [Some(0), Some(45065)]);
    assert_eq!(
        sends[0].body,
        Some(json!({
            "filter": { "is_to_all": true },
            "mpnews": { "media_id": sent[0].draft_media_id },
            "msgtype": "mpnews",
            "send_ignore_reprint": 0,
            "clientmsgid": "0123456789abcdef0123456789abcdef",
        }))
    );
    assert!(emulator.calls_to(WechatApi::Submit).is_empty());
    assert_eq!(adapter.lookup(delivery.request()).await.unwrap(), None, "mass send relies on clientmsgid");
}

#[tokio::test]
async fn no_mass_send_quota_waits_for_the_next_day() {
    let emulator = emulator().await;
    emulator.fail_api(WechatApi::MassSend, 1, 45028);
    let mut settings = settings(&emulator);
    settings.mode = Mode::MassSend;
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();

    let error = adapter.publish(Delivery::new("d-quota", &adapter, &post).request()).await.unwrap_err();

    let ErrorClass::RateLimited { retry_after: Some(wait) } = error.class else { panic!("{error:?}") };
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(24 * 3600), "{wait:?}");
    assert!(emulator.mass_sent().is_empty());
}

#[tokio::test]
async fn the_classic_token_endpoint_works_too() {
    let emulator = emulator().await;
    let mut settings = settings(&emulator);
    settings.token_endpoint = TokenEndpoint::Classic;
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();

    adapter.publish(Delivery::new("d-classic", &adapter, &post).request()).await.unwrap();

    let calls = emulator.calls_to(WechatApi::Token);
    assert_eq!(calls.len(), 1);
    let query: Vec<_> = calls[0].query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(query, [("appid", APPID), ("grant_type", "client_credential"), ("secret", SECRET)]);
    assert!(emulator.calls_to(WechatApi::StableToken).is_empty());
}

#[tokio::test]
async fn probe_fetches_a_token_and_reports_its_expiry() {
    let mut config = WechatConfig::new(APPID, SECRET);
    config.token_lifetime = Duration::from_secs(600);
    let emulator = emulator_with(config).await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));

    let before = chrono::Utc::now();
    let probe = adapter.probe().await.unwrap();

    let expires_at = probe.expires_at.unwrap();
    let lifetime = (expires_at - before).num_seconds();
    assert!((599..=601).contains(&lifetime), "{lifetime}");
    assert_eq!(emulator.calls_to(WechatApi::StableToken)[0].body.as_ref().unwrap()["force_refresh"], json!(false));
    assert!(emulator.published().is_empty() && emulator.calls().len() == 1);
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires() {
    let mut config = WechatConfig::new(APPID, SECRET);
    config.token_lifetime = Duration::from_secs(1);
    let emulator = emulator_with(config).await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();

    adapter.publish(Delivery::new("d-1", &adapter, &post).request()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    adapter.publish(Delivery::new("d-2", &adapter, &post).request()).await.unwrap();

    assert_eq!(emulator.tokens_issued(), 2);
    assert!(emulator.calls().iter().all(|call| call.errcode == Some(0)), "never a 42001");
}

#[test]
fn render_refuses_what_wechat_would() {
    let adapter =
        WechatAdapter::new(Settings::new(APPID, Secret::new(SECRET)), quick(), &Services::in_memory(ACCOUNT)).unwrap();
    let post = Post::new();

    let mut no_cover = post.content.clone();
    no_cover.images.clear();
    let problems = adapter.render(&no_cover).unwrap_err();
    assert_eq!(problems[0].to_string(), "images: WeChat articles need a cover image");

    let mut long_title = post.content.clone();
    long_title.title = Some("标".repeat(33));
    assert_eq!(adapter.render(&long_title).unwrap_err()[0].field, "title");

    let mut long_body = post.content.clone();
    long_body.body = "电信诈骗预警".repeat(4000);
    let problems = adapter.render(&long_body).unwrap_err();
    assert_eq!(problems[0].field, "body");
    assert!(problems[0].message.contains("20000"), "{}", problems[0]);

    // Near the limit, the body image's real URL (not its short placeholder)
    // tips the article over: refused by check, as WeChat would.
    let mut near = post.content.clone();
    near.body = "诈".repeat(19_880);
    let problems = adapter.render(&near).unwrap_err();
    assert!(problems[0].message.contains("20000"), "{}", problems[0]);
    near.images.truncate(1);
    assert!(adapter.render(&near).is_ok(), "without the body image it fits");
}

#[tokio::test]
async fn no_secret_or_token_shows_in_debug_output_or_errors() {
    let emulator = emulator().await;
    let settings = settings(&emulator);
    let services = Services::in_memory(ACCOUNT);
    let adapter = adapter(settings.clone(), &services);
    let post = Post::new();
    let delivery = Delivery::new("d-debug", &adapter, &post);
    adapter.publish(delivery.request()).await.unwrap();
    let token = emulator.calls()[1].query["access_token"].clone();
    emulator.expire_tokens();
    let error = adapter.publish(delivery.request()).await;
    emulator.fail_api(WechatApi::DraftAdd, 1, 40164);
    let other = adapter.publish(Delivery::new("d-debug-2", &adapter, &post).request()).await;

    let account = AccountSettings::Wechat(settings.clone());
    for shown in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{adapter:?}"),
        format!("{account:?}"),
        format!("{error:?}"),
        format!("{other:?}"),
        format!("{:?}", delivery.request()),
    ] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(&token), "{shown}");
    }
}

/// The access_token is fetched at run time, so the daemon's scrubbing of
/// configured secrets cannot know it: the adapter hides it itself when an
/// answer repeats the request (as gateways in front of an API do).
#[tokio::test]
async fn an_answer_repeating_the_request_never_shows_the_access_token() {
    let emulator = emulator().await;
    emulator.echo_requests_in_errors();
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();

    // A permanent refusal of the draft, then a rate limit.
    emulator.fail_api(WechatApi::DraftAdd, 1, 40164);
    let refused = adapter.publish(Delivery::new("d-echo-1", &adapter, &post).request()).await.unwrap_err();
    emulator.fail_api(WechatApi::DraftAdd, 1, 45011);
    let limited = adapter.publish(Delivery::new("d-echo-2", &adapter, &post).request()).await.unwrap_err();
    let token = emulator.calls_to(WechatApi::DraftAdd)[0].query["access_token"].clone();
    assert!(token.len() >= 16, "the emulator issues real-looking tokens: {token}");

    for error in [&refused, &limited] {
        let message = error.answer.message.as_deref().unwrap_or_default();
        // The emulator did repeat the request, and the token in it is hidden.
        assert!(message.contains("access_token=<redacted>"), "{message}");
        for shown in [message, error.reason.as_str(), &format!("{error:?}")] {
            assert!(!shown.contains(&token), "{shown}");
        }
    }
    assert_eq!(refused.class, ErrorClass::Permanent);
    assert!(matches!(limited.class, ErrorClass::RateLimited { .. }), "{limited:?}");
}

#[tokio::test]
async fn the_registry_builds_a_working_wechat_adapter() {
    let emulator = emulator().await;
    assert_eq!(Platform::parse("wechat"), Some(Platform::Wechat));
    assert_eq!(Platform::Wechat.secret_fields(), ["secret"]);
    assert_eq!(Platform::Wechat.default_rate(), None);
    assert!(!Platform::Wechat.experimental());

    let table: Value = json!({
        "appid": APPID, "secret": SECRET, "base_url": emulator.base_url(),
        "poll_interval": "10ms", "need_open_comment": true,
    });
    let settings = AccountSettings::deserialize(Platform::Wechat, table).unwrap();
    assert_eq!(settings.platform(), Platform::Wechat);
    let adapter = registry::build(&settings, quick(), &Services::in_memory(ACCOUNT)).unwrap();
    assert_eq!(adapter.platform(), Platform::Wechat);
    let post = Post::new();
    let content = adapter.render(&post.content).unwrap();
    let delivery = Delivery { id: "d-registry".into(), attempt: 1, uncertain: false, content };

    adapter.publish(delivery.request()).await.unwrap();

    assert_eq!(emulator.published()[0].article.need_open_comment, Some(1));
    let unknown = AccountSettings::deserialize(Platform::Wechat, json!({ "appid": "a", "secret": "s", "token": "t" }));
    assert!(unknown.unwrap_err().to_string().contains("unknown field `token`"));
}

#[tokio::test]
async fn publishing_through_the_combined_sandbox_with_its_documented_credentials() {
    let sandbox = herald_sandbox::Sandbox::start("127.0.0.1:0".parse().unwrap(), Default::default()).await.unwrap();
    let mut settings = Settings::new(wechat::SANDBOX_APPID, Secret::new(wechat::SANDBOX_SECRET));
    settings.base_url = sandbox.wechat.base_url().to_string();
    settings.poll_interval = "10ms".into();
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();

    let receipt = adapter.publish(Delivery::new("d-sandbox", &adapter, &post).request()).await.unwrap();

    let published = sandbox.wechat.published();
    assert_eq!(receipt.url.as_deref(), Some(published[0].article_url.as_str()));
    assert!(published[0].article_url.starts_with(&format!("http://{}/wechat/s/", sandbox.addr())));
    sandbox.shutdown().await;
}

/// The key of a delivery's publish record in the credential cache.
fn publish_record(cache: &MemoryCache, delivery: &str) -> Option<Value> {
    let bytes = herald_adapters::CredentialCache::load(cache, &format!("wechat/{ACCOUNT}/publish/{delivery}"))?;
    serde_json::from_slice(&bytes).ok()
}

#[tokio::test]
async fn a_crash_while_submit_is_in_flight_publishes_exactly_one_article() {
    let emulator = emulator().await;
    let cache = Arc::new(MemoryCache::default());
    let services = Services { account: ACCOUNT.into(), cache: cache.clone() };
    let post = Post::new();
    // Warm the token and media caches: the next delivery calls only
    // draft/add and submit, both slowed down.
    let warm = adapter(settings(&emulator), &services);
    warm.publish(Delivery::new("d-warm", &warm, &post).request()).await.unwrap();
    emulator.fail_next(2, Fault::Delay(Duration::from_millis(300)));

    let dying = Arc::new(adapter(settings(&emulator), &services));
    let delivery = Arc::new(Delivery::new("d-crash", &dying, &post));
    let in_flight = tokio::spawn({
        let (dying, delivery) = (dying.clone(), delivery.clone());
        async move { dying.publish(delivery.request()).await }
    });
    // "Kill" the attempt once the intent to submit is durable, while the
    // submit is on its way.
    while publish_record(&cache, "d-crash").is_none_or(|record| record["state"] != "submitting") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    in_flight.abort();
    assert!(in_flight.await.unwrap_err().is_cancelled());
    // WeChat finishes the submit it received.
    while emulator.calls_to(WechatApi::Submit).len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The restart: a new adapter on the same store, the delivery uncertain.
    let recovered = adapter(settings(&emulator), &services);
    let mut delivery = Delivery::new("d-crash", &recovered, &post);
    delivery.uncertain = true;
    delivery.attempt = 2;
    let receipt = attempt(&recovered, &delivery).await.unwrap();

    let published = emulator.published();
    assert_eq!(published.len(), 2, "d-warm and d-crash, once each");
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 2, "not submitted again");
    assert_eq!(receipt.url.as_deref(), Some(published[1].article_url.as_str()));
    assert!(!emulator.calls_to(WechatApi::BatchGet).is_empty(), "found by looking");
    // Known now: a further attempt answers from the record.
    let calls = emulator.calls().len();
    assert!(attempt(&recovered, &delivery).await.is_ok());
    assert_eq!(emulator.calls().len(), calls);
}

#[tokio::test]
async fn a_lost_submit_answer_is_found_by_the_next_attempt_even_without_the_uncertain_flag() {
    let emulator = emulator().await;
    let services = Services::in_memory(ACCOUNT);
    let adapter = adapter(settings(&emulator), &services);
    let post = Post::new();
    let delivery = Delivery::new("d-lost", &adapter, &post);
    emulator.lose_answers(WechatApi::Submit, 1);

    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert!(error.maybe_sent && error.class == ErrorClass::Transient, "{error:?}");
    assert_eq!(emulator.published().len(), 1, "WeChat published it");

    let receipt = adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(emulator.published().len(), 1);
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 1);
    assert_eq!(receipt.url.as_deref(), Some(emulator.published()[0].article_url.as_str()));
}

#[tokio::test]
async fn a_lost_submit_that_published_nothing_is_submitted_again_with_the_same_draft() {
    let emulator = emulator().await;
    let mut settings = settings(&emulator);
    settings.poll_timeout = "200ms".into();
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let mut delivery = Delivery::new("d-gone", &adapter, &post);
    // The submit is received, its answer lost, and the job fails: nothing
    // is public.
    emulator.set_publish_plan(PublishPlan { publishing_polls: 0, final_status: 3 });
    emulator.lose_answers(WechatApi::Submit, 1);
    assert!(adapter.publish(delivery.request()).await.unwrap_err().maybe_sent);
    emulator.set_publish_plan(PublishPlan::default());

    delivery.uncertain = true;
    delivery.attempt = 2;
    attempt(&adapter, &delivery).await.unwrap();

    assert_eq!(emulator.published().len(), 1);
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 2, "shown not to exist, then submitted again");
    assert_eq!(emulator.calls_to(WechatApi::DraftAdd).len(), 1, "the same draft");
    assert!(!emulator.calls_to(WechatApi::BatchGet).is_empty());
}

#[tokio::test]
async fn an_article_published_before_the_lost_submit_is_not_taken_for_it() {
    let emulator = emulator().await;
    let mut settings = settings(&emulator);
    settings.poll_timeout = "100ms".into();
    let adapter = adapter(settings, &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let mut delivery = Delivery::new("d-other", &adapter, &post);
    // Another article with another title is public; the lost submit
    // published nothing.
    let mut other = emulator_article(&delivery);
    other.title = "another alert".into();
    emulator.publish_outside(other);
    emulator.set_publish_plan(PublishPlan { publishing_polls: 0, final_status: 3 });
    emulator.lose_answers(WechatApi::Submit, 1);
    adapter.publish(delivery.request()).await.unwrap_err();
    emulator.set_publish_plan(PublishPlan::default());

    delivery.uncertain = true;
    assert_eq!(adapter.lookup(delivery.request()).await.unwrap(), None);
    attempt(&adapter, &delivery).await.unwrap();
    assert_eq!(emulator.published().len(), 2);
}

/// The article as herald drafts it for `delivery`, for `publish_outside`.
fn emulator_article(delivery: &Delivery) -> wechat::DraftArticle {
    wechat::DraftArticle {
        title: delivery.content.title.clone().unwrap(),
        author: None,
        digest: None,
        content: delivery.content.text.clone(),
        content_source_url: None,
        thumb_media_id: "m".into(),
        need_open_comment: None,
        only_fans_can_comment: None,
    }
}

#[tokio::test]
async fn a_retry_after_a_refused_submit_reuses_the_draft_and_a_final_refusal_deletes_it() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let delivery = Delivery::new("d-drafts", &adapter, &post);

    emulator.fail_api(WechatApi::Submit, 1, -1);
    assert_eq!(adapter.publish(delivery.request()).await.unwrap_err().class, ErrorClass::Transient);
    adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(emulator.calls_to(WechatApi::DraftAdd).len(), 1, "one draft for both attempts");
    assert_eq!(emulator.drafts().len(), 1);

    let refused = Delivery::new("d-refused", &adapter, &post);
    emulator.fail_api(WechatApi::Submit, 1, 45166);
    assert_eq!(adapter.publish(refused.request()).await.unwrap_err().class, ErrorClass::Permanent);
    assert_eq!(emulator.drafts().len(), 1, "the refused delivery's draft was deleted");
    assert_eq!(errcodes(&emulator.calls_to(WechatApi::DraftDelete)), [Some(0)]);
}

#[tokio::test]
async fn a_saved_draft_deleted_in_the_console_is_replaced() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let delivery = Delivery::new("d-replaced", &adapter, &post);
    emulator.fail_api(WechatApi::Submit, 1, -1);
    adapter.publish(delivery.request()).await.unwrap_err();
    emulator.reset_drafts();

    adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(errcodes(&emulator.calls_to(WechatApi::Submit)), [Some(-1), Some(40007), Some(0)]);
    assert_eq!(emulator.calls_to(WechatApi::DraftAdd).len(), 2);
    assert_eq!(emulator.published().len(), 1);
}

/// The forced-refresh record of the test AppID, as if its last forced
/// refresh were `ago` seconds back (the clock moving on).
fn forced_refresh_was(cache: &MemoryCache, ago: i64) -> Value {
    let key = format!("wechat-appid/{APPID}/forced");
    let mut record: Value =
        serde_json::from_slice(&herald_adapters::CredentialCache::load(cache, &key).unwrap()).unwrap();
    record["last_at"] = json!(chrono::Utc::now().timestamp() - ago);
    herald_adapters::CredentialCache::save(cache, &key, &serde_json::to_vec(&record).unwrap());
    record
}

#[tokio::test]
async fn token_rejections_after_a_successful_submit_never_end_the_delivery() {
    let emulator = emulator().await;
    emulator.set_publish_plan(PublishPlan { publishing_polls: 2, final_status: 0 });
    // WeChat rejects a token it still holds current: only a forced refresh
    // replaces it.
    emulator.fail_api(WechatApi::PublishStatus, 1, 42001);
    let cache = Arc::new(MemoryCache::default());
    let services = Services { account: ACCOUNT.into(), cache: cache.clone() };
    let adapter = adapter(settings(&emulator), &services);
    let post = Post::new();

    let receipt = attempt(&adapter, &Delivery::new("d-tokens", &adapter, &post)).await.unwrap();
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 1);
    assert_eq!(receipt.url.as_deref(), Some(emulator.published()[0].article_url.as_str()));
    let forced: Vec<_> = emulator
        .calls_to(WechatApi::StableToken)
        .iter()
        .map(|call| call.body.clone().unwrap()["force_refresh"].clone())
        .collect();
    assert_eq!(forced, [json!(false), json!(false), json!(true)], "asked plainly, then forced once");

    // A second rejection within 30 s of the forced refresh: WeChat allows no
    // other forced refresh yet; the attempt waits (rate limited, uncertain),
    // never fails.
    emulator.set_publish_plan(PublishPlan { publishing_polls: 1, final_status: 0 });
    emulator.fail_api(WechatApi::PublishStatus, 1, 42001);
    let delivery = Delivery::new("d-spaced", &adapter, &post);
    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert!(
        matches!(error.class, ErrorClass::RateLimited { retry_after: Some(wait) } if wait <= Duration::from_secs(30)),
        "{error:?}"
    );
    assert!(error.maybe_sent, "{error:?}");
    assert!(error.reason.contains("one every 30s") && error.reason.contains("follows the job"), "{}", error.reason);
    forced_refresh_was(&cache, 31);
    adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 2, "one submit per delivery");

    // A refresh that fails once the job exists: transient and uncertain.
    forced_refresh_was(&cache, 31);
    emulator.set_publish_plan(PublishPlan { publishing_polls: 1, final_status: 0 });
    emulator.fail_api(WechatApi::PublishStatus, 1, 42001);
    emulator.fail_api(WechatApi::StableToken, 1, -1);
    let delivery = Delivery::new("d-refresh-fails", &adapter, &post);
    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert!(error.class == ErrorClass::Transient && error.maybe_sent, "{error:?}");
    assert!(error.reason.contains("the next attempt follows the job"), "{}", error.reason);
    adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 3, "one submit per delivery");
}

#[tokio::test]
async fn when_the_days_forced_refreshes_are_used_up_nothing_is_forced() {
    let emulator = emulator().await;
    let cache = Arc::new(MemoryCache::default());
    let services = Services { account: ACCOUNT.into(), cache: cache.clone() };
    let adapter = adapter(settings(&emulator), &services);
    let post = Post::new();
    emulator.fail_api(WechatApi::DraftAdd, 1, 40001);
    attempt(&adapter, &Delivery::new("d-first", &adapter, &post)).await.unwrap();
    // Another 19 were forced today (by this or another account of the AppID).
    let mut record = forced_refresh_was(&cache, 3600);
    record["count"] = json!(20);
    herald_adapters::CredentialCache::save(
        cache.as_ref(),
        &format!("wechat-appid/{APPID}/forced"),
        &serde_json::to_vec(&record).unwrap(),
    );
    let forced_before = emulator.tokens_issued();

    emulator.fail_api(WechatApi::DraftAdd, 1, 40001);
    let error = attempt(&adapter, &Delivery::new("d-second", &adapter, &post)).await.unwrap_err();

    assert!(matches!(error.class, ErrorClass::RateLimited { retry_after: Some(_) }), "{error:?}");
    assert!(error.reason.contains("20 forced refreshes") && error.reason.contains("used up"), "{}", error.reason);
    assert_eq!(emulator.tokens_issued(), forced_before, "nothing forced");
    assert_eq!(emulator.published().len(), 1);
}

#[tokio::test]
async fn a_refused_look_up_after_a_lost_submit_is_retried_never_failed_nor_resubmitted() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator), &Services::in_memory(ACCOUNT));
    let post = Post::new();
    let mut delivery = Delivery::new("d-no-look", &adapter, &post);
    emulator.lose_answers(WechatApi::Submit, 1);
    adapter.publish(delivery.request()).await.unwrap_err();
    emulator.fail_api(WechatApi::BatchGet, 1, 48001);

    delivery.uncertain = true;
    let error = attempt(&adapter, &delivery).await.unwrap_err();

    assert!(error.class == ErrorClass::Transient && error.maybe_sent, "{error:?}");
    assert!(error.reason.contains("looking again before any new submit"), "{}", error.reason);
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 1, "not submitted again");
    // The next attempt can look, and finds it.
    attempt(&adapter, &delivery).await.unwrap();
    assert_eq!(emulator.published().len(), 1);
    assert_eq!(emulator.calls_to(WechatApi::Submit).len(), 1);
}
