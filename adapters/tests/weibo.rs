//! The Weibo adapter against the sandbox's Weibo emulator, over real
//! loopback HTTP: the form and multipart requests sent, receipts, every
//! class of the error table, duplicates on uncertain retries, lookup, probe
//! and the content rules.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{Timelike, Utc};
use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::weibo::{Settings, WeiboAdapter, weibo_length};
use herald_adapters::{
    Adapter, DeliveryError, ErrorClass, PostContent, PublishRequest, Receipt, Rendered, Secret, Services,
};
use herald_sandbox::weibo::{Encoding, WeiboOutcome};
use herald_sandbox::{Fault, Tokens, WeiboConfig, WeiboEmulator};
use serde_json::json;
use sha2::{Digest, Sha256};

const TOKEN: &str = "2.00wuhan-token";
const DOMAIN: &str = "example.gov.cn";
const LINK: &str = "https://www.example.gov.cn/alerts/42";
const TOKEN_REASON: &str = "token invalid or expired; re-authorize the account";

async fn emulator() -> WeiboEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    WeiboEmulator::start(addr, WeiboConfig::new(Tokens::new([TOKEN]), DOMAIN)).await.unwrap()
}

fn quick() -> HttpOptions {
    HttpOptions { connect_timeout: Duration::from_secs(2), timeout: Duration::from_secs(5), ..HttpOptions::default() }
}

/// A client that gives up after 200 ms: shorter than the emulator's delay,
/// so a request is sent and its answer never waited for.
fn impatient() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(200),
        ..HttpOptions::default()
    }
}

/// What the emulator answers a share.json request written by hand, not by herald.
async fn share_by_hand(weibo: &WeiboEmulator, form: &[(&str, &str)]) -> serde_json::Value {
    let answer = reqwest::Client::new()
        .post(format!("{}/2/statuses/share.json", weibo.base_url()))
        .form(form)
        .send()
        .await
        .unwrap();
    answer.json().await.unwrap()
}

fn settings(base_url: &str, token: &str) -> Settings {
    Settings {
        base_url: Some(base_url.to_string()),
        access_token: Secret::new(token),
        safe_domain: DOMAIN.into(),
        rip: Some("203.0.113.7".into()),
        expires_at: Some("2026-06-01T00:00:00+08:00".parse().unwrap()),
        user_id: None,
        max_length: 140,
    }
}

fn adapter(weibo: &WeiboEmulator) -> WeiboAdapter {
    WeiboAdapter::new(settings(weibo.base_url(), TOKEN), quick()).unwrap()
}

fn content(body: &str) -> PostContent {
    PostContent { title: Some("Fraud alert".into()), body: body.into(), link: Some(LINK.into()), images: vec![] }
}

/// One delivery, owning what a [`PublishRequest`] borrows.
struct Delivery {
    id: String,
    attempt: u32,
    uncertain: bool,
    occurrence: String,
    content: Rendered,
}

impl Delivery {
    fn new(id: &str, content: Rendered) -> Self {
        let occurrence = Utc::now().with_nanosecond(0).unwrap().to_rfc3339();
        Delivery { id: id.into(), attempt: 1, uncertain: false, occurrence, content }
    }

    fn of(adapter: &WeiboAdapter, id: &str, body: &str) -> Self {
        Delivery::new(id, adapter.render(&content(body)).unwrap())
    }

    fn request(&self) -> PublishRequest<'_> {
        PublishRequest {
            delivery_id: &self.id,
            post_id: "fraud-alert",
            account_id: "wuhan-weibo",
            occurrence: &self.occurrence,
            attempt: self.attempt,
            uncertain: self.uncertain,
            content: &self.content,
        }
    }

    /// The next attempt of a delivery whose last one may have gone through.
    fn retried_uncertain(mut self) -> Self {
        self.attempt += 1;
        self.uncertain = true;
        self
    }
}

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0D, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x60, 0x60, 0x60, 0xF8, 0x0F, 0x00, 0x01, 0x04, 0x01, 0x00, 0x5F, 0xE5, 0xC3,
    0x4B, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// A file in a fresh temporary folder, removed when the folder is dropped.
fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, String) {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (folder, path.to_string_lossy().into_owned())
}

#[tokio::test]
async fn a_post_is_shared_as_a_form_and_returns_the_public_url() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    let delivery = Delivery::of(&adapter, "d-form", "警方提示：谨防冒充客服退款诈骗。");
    assert_eq!(delivery.content.text, format!("警方提示：谨防冒充客服退款诈骗。 {LINK}"));

    let receipt = adapter.publish(delivery.request()).await.unwrap();

    let published = weibo.published();
    assert_eq!(published.len(), 1);
    let post = &published[0];
    assert_eq!(post.encoding, Encoding::Form);
    assert!(post.token_in_parameter);
    let fields: Vec<(&str, &str)> = post.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(fields, [("access_token", TOKEN), ("rip", "203.0.113.7"), ("status", delivery.content.text.as_str())]);
    assert_eq!(post.pic, None);

    let uid = WeiboEmulator::uid_of(TOKEN);
    assert_eq!(receipt.remote_id, Some(post.id.to_string()));
    assert_eq!(receipt.url, Some(format!("https://weibo.com/{uid}/{}", post.mid)));
    assert_eq!(receipt.answer.status, Some(200));
    assert_eq!(receipt.answer.code, None);
}

#[tokio::test]
async fn a_configured_user_id_makes_the_url() {
    let weibo = emulator().await;
    let mut settings = settings(weibo.base_url(), TOKEN);
    settings.user_id = Some("1234567890".into());
    let adapter = WeiboAdapter::new(settings, quick()).unwrap();
    let receipt = adapter.publish(Delivery::of(&adapter, "d-uid", "提示").request()).await.unwrap();
    let post = &weibo.published()[0];
    assert_eq!(receipt.url, Some(format!("https://weibo.com/1234567890/{}", post.mid)));
}

#[tokio::test]
async fn an_account_without_rip_is_refused_as_share_json_refuses_its_posts() {
    let weibo = emulator().await;
    let mut settings = settings(weibo.base_url(), TOKEN);
    settings.rip = None;
    let error = WeiboAdapter::new(settings, quick()).err().unwrap().to_string();
    assert!(error.starts_with("invalid setting `rip`: required"), "{error}");
    assert!(error.contains("10016"), "{error}");

    // What Weibo answers a share without it.
    let form = [("access_token", TOKEN), ("status", "提示 https://www.example.gov.cn/a")];
    let body = share_by_hand(&weibo, &form).await;
    assert_eq!(body["error_code"], json!(10016));
    assert!(weibo.published().is_empty());
}

#[tokio::test]
async fn a_picture_goes_as_multipart_pic() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    let (_folder, path) = temp_file("poster.png", PNG);
    let mut post = content("请看海报。");
    post.images = vec![path.clone(), "second-is-not-sent.png".into()];
    let rendered = adapter.render(&post).unwrap();
    assert_eq!(rendered.images, [path], "only the first picture");

    adapter.publish(Delivery::new("d-pic", rendered.clone()).request()).await.unwrap();

    let published = weibo.published();
    let post = &published[0];
    assert_eq!(post.encoding, Encoding::Multipart);
    assert_eq!(post.status(), rendered.text);
    assert_eq!(post.fields.get("access_token").map(String::as_str), Some(TOKEN));
    assert_eq!(post.fields.get("rip").map(String::as_str), Some("203.0.113.7"));
    let pic = post.pic.as_ref().unwrap();
    assert_eq!(pic.file_name.as_deref(), Some("poster.png"));
    assert_eq!(pic.content_type.as_deref(), Some("image/png"));
    assert_eq!(pic.size, PNG.len());
    assert_eq!(pic.sha256, hex::encode(Sha256::digest(PNG)));
}

#[tokio::test]
async fn posted_but_slow_20032_is_a_success() {
    let weibo = emulator().await;
    weibo.answer_next(1, 20032);
    let adapter = adapter(&weibo);

    let receipt = adapter.publish(Delivery::of(&adapter, "d-20032", "提示").request()).await.unwrap();

    assert_eq!(receipt.remote_id, None);
    assert_eq!(receipt.answer.code.as_deref(), Some("20032"));
    assert!(receipt.answer.message.unwrap().contains("counted as published"));
    assert_eq!(weibo.published().len(), 1, "the emulator published it, as Weibo does");
}

#[tokio::test]
async fn a_repeat_is_refused_on_a_first_attempt_and_a_success_when_uncertain() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);

    weibo.answer_next(1, 20019);
    let first = adapter.publish(Delivery::of(&adapter, "d-dup", "提示").request()).await.unwrap_err();
    assert_eq!(first.class, ErrorClass::Permanent);
    assert_eq!(first.answer.code.as_deref(), Some("20019"), "a string error_code");
    assert_eq!(first.answer.message.as_deref(), Some("repeat content!"));

    weibo.answer_next(1, 20019);
    let retry = Delivery::of(&adapter, "d-dup", "提示").retried_uncertain();
    let receipt = adapter.publish(retry.request()).await.unwrap();
    assert_eq!((receipt.remote_id, receipt.url), (None, None));
    assert_eq!(receipt.answer.code.as_deref(), Some("20019"));
    let message = receipt.answer.message.unwrap();
    assert!(message.starts_with("repeat content!") && message.contains("evidence"), "{message}");
}

#[tokio::test]
async fn the_emulator_refuses_identical_text_and_the_adapter_reads_a_numeric_code() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    adapter.publish(Delivery::of(&adapter, "d-1", "同样的提示").request()).await.unwrap();

    let again = adapter.publish(Delivery::of(&adapter, "d-2", "同样的提示").request()).await.unwrap_err();
    assert_eq!(again.class, ErrorClass::Permanent);
    assert_eq!(again.answer.code.as_deref(), Some("20019"));
    assert_eq!(again.answer.status, Some(400));
    assert_eq!(weibo.published().len(), 1);
}

#[tokio::test]
async fn each_class_of_the_error_table() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    let publish = |code: u32| {
        weibo.answer_next(1, code);
        let delivery = Delivery::of(&adapter, "d-codes", "提示");
        let adapter = &adapter;
        async move { adapter.publish(delivery.request()).await.unwrap_err() }
    };

    let busy = publish(10001).await;
    assert_eq!((busy.class, busy.maybe_sent), (ErrorClass::Transient, false));
    let expired = publish(10010).await;
    assert_eq!((expired.class, expired.maybe_sent), (ErrorClass::Transient, true), "the post may have gone through");
    let unknown = publish(99999).await;
    assert_eq!(unknown.class, ErrorClass::Transient);
    for code in [10004, 20005, 20018, 20031] {
        assert_eq!(publish(code).await.class, ErrorClass::Permanent, "{code}");
    }
    let token = publish(21327).await;
    assert_eq!(token.class, ErrorClass::Permanent);
    assert_eq!(token.reason, TOKEN_REASON);
    assert_eq!(token.answer.message.as_deref(), Some("expired_token"));
    assert!(weibo.published().is_empty());
}

#[tokio::test]
async fn a_rate_limit_waits_for_the_next_whole_hour() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    for code in [10022, 10023, 10024, 20016] {
        weibo.answer_next(1, code);
        let before = Utc::now();
        let error = adapter.publish(Delivery::of(&adapter, "d-rate", "提示").request()).await.unwrap_err();
        let after = Utc::now();
        let ErrorClass::RateLimited { retry_after: Some(wait) } = error.class else { panic!("{code}: {error:?}") };
        let to_hour = |now: chrono::DateTime<Utc>| 3600 - u64::from(now.minute() * 60 + now.second());
        assert!(
            before.hour() != after.hour()
                || (to_hour(after).saturating_sub(1)..=to_hour(before)).contains(&wait.as_secs()),
            "{code}: {wait:?}"
        );
        assert_eq!(error.answer.code, Some(code.to_string()));
        // Only the IP limit is shared with the host's other Weibo accounts.
        assert_eq!(error.shared_limit, code == 10022, "{code}");
    }
    assert_eq!(adapter.limit_scope().as_deref(), Some("weibo 127.0.0.1 from this host"));
}

#[tokio::test]
async fn what_the_emulator_checks_comes_back_permanent() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    // Bypass render to see the platform's own checks.
    let no_domain = Rendered { text: "提示 https://other.example.org/x".into(), ..Rendered::default() };
    let refused = adapter.publish(Delivery::new("d-10017", no_domain).request()).await.unwrap_err();
    assert_eq!((refused.class, refused.answer.code.as_deref()), (ErrorClass::Permanent, Some("10017")));
    assert_eq!(refused.answer.message.as_deref(), Some("text not find domain"));

    let long = Rendered { text: format!("{} {LINK}", "长".repeat(130)), ..Rendered::default() };
    let refused = adapter.publish(Delivery::new("d-20012", long).request()).await.unwrap_err();
    assert_eq!((refused.class, refused.answer.code.as_deref()), (ErrorClass::Permanent, Some("20012")));
}

#[tokio::test]
async fn server_errors_without_an_error_code_are_transient() {
    let weibo = emulator().await;
    weibo.fail_next(1, Fault::status_with_body(502, "<html>bad gateway</html>"));
    let adapter = adapter(&weibo);
    let error = adapter.publish(Delivery::of(&adapter, "d-502", "提示").request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    assert_eq!(error.answer.status, Some(502));
    assert_eq!(error.answer.code, None);
}

#[tokio::test]
async fn an_error_code_counts_whatever_the_http_status() {
    let weibo = emulator().await;
    weibo.fail_next(1, Fault::status_with_body(200, r#"{"error_code": "20012", "error": "too long"}"#));
    let adapter = adapter(&weibo);
    let error = adapter.publish(Delivery::of(&adapter, "d-200", "提示").request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert_eq!(error.answer.status, Some(200));
}

#[tokio::test]
async fn a_timeout_is_maybe_sent_and_lookup_then_finds_the_status() {
    let weibo = emulator().await;
    weibo.fail_next(1, Fault::Delay(Duration::from_millis(800)));
    let http = impatient();
    let adapter = WeiboAdapter::new(settings(weibo.base_url(), TOKEN), http).unwrap();
    let delivery = Delivery::of(&adapter, "d-slow", "迟到的提示");

    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    assert!(error.maybe_sent);
    assert_eq!(error.answer.status, None);

    // The emulator publishes once its delay is over; the retry looks first.
    for _ in 0..50 {
        if !weibo.published().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retry = delivery.retried_uncertain();
    let found = adapter.lookup(retry.request()).await.unwrap().expect("found in the timeline");
    let post = &weibo.published()[0];
    assert_eq!(found.remote_id, Some(post.id.to_string()));
    assert_eq!(found.url, Some(format!("https://weibo.com/{}/{}", post.uid, post.mid)));
    assert_eq!(weibo.published().len(), 1);
}

#[tokio::test]
async fn lookup_matches_the_exact_text_of_this_occurrence_only() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    let delivery = Delivery::of(&adapter, "d-look", "每周提示");
    adapter.publish(delivery.request()).await.unwrap();

    let other_text = Delivery::of(&adapter, "d-other", "另一条提示").retried_uncertain();
    assert_eq!(adapter.lookup(other_text.request()).await.unwrap(), None);

    // The same text for a later occurrence (a weekly post) is not this one.
    let mut next_week = Delivery::of(&adapter, "d-next", "每周提示").retried_uncertain();
    next_week.occurrence = (Utc::now() + chrono::Duration::days(7)).to_rfc3339();
    assert_eq!(adapter.lookup(next_week.request()).await.unwrap(), None);

    let found = adapter.lookup(delivery.retried_uncertain().request()).await.unwrap().unwrap();
    assert_eq!(found.remote_id, Some(weibo.published()[0].id.to_string()));
    let paths: Vec<String> = weibo.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.iter().filter(|p| p.ends_with("user_timeline.json")).count(), 3);
}

#[tokio::test]
async fn probe_names_the_user_and_the_expiry_or_fails_permanently() {
    let weibo = emulator().await;
    let probe = adapter(&weibo).probe().await.unwrap();
    assert_eq!(probe.detail, format!("access token accepted for Weibo user {}", WeiboEmulator::uid_of(TOKEN)));
    assert_eq!(probe.expires_at, Some("2026-05-31T16:00:00Z".parse().unwrap()));
    assert_eq!(weibo.requests()[0].outcome, WeiboOutcome::Answered);
    assert!(weibo.published().is_empty(), "a probe publishes nothing");

    let wrong = WeiboAdapter::new(settings(weibo.base_url(), "2.00not-the-token"), quick()).unwrap();
    let error = wrong.probe().await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert_eq!(error.reason, TOKEN_REASON);
    assert_eq!(error.answer.code.as_deref(), Some("21332"));
    for text in [&error.reason, &format!("{error:?}"), &format!("{wrong:?}")] {
        assert!(!text.contains("not-the-token"), "{text}");
    }
}

#[test]
fn render_counts_the_weibo_way_and_refuses_what_weibo_would() {
    let adapter = WeiboAdapter::new(settings("http://127.0.0.1:9", TOKEN), quick()).unwrap();
    let link_len = weibo_length(&format!(" {LINK}"));
    assert_eq!(link_len, 19, "37 half-width characters, rounded up");

    // Exactly 140: 121 Chinese characters (242 halves), a space and the link (37 halves).
    let fits = adapter.render(&content(&"防".repeat(121))).unwrap();
    assert_eq!(weibo_length(&fits.text), 140);
    assert_eq!(fits.title, None, "Weibo has no title");

    let problems = adapter.render(&content(&"防".repeat(122))).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "body");
    assert!(
        problems[0].message.contains("141 Weibo characters") && problems[0].message.contains("140"),
        "{}",
        problems[0]
    );

    // 240 ASCII characters and the link count 139.
    assert!(adapter.render(&content(&"a".repeat(240))).is_ok());

    let mut missing = content("提示");
    missing.link = None;
    let problems = adapter.render(&missing).unwrap_err();
    assert_eq!((problems[0].field.as_str(), problems[0].message.as_str()), ("link", "needs a link on example.gov.cn"));

    let mut elsewhere = content("提示");
    elsewhere.link = Some("https://example.gov.cn.evil.org/x".into());
    let problems = adapter.render(&elsewhere).unwrap_err();
    assert!(problems[0].message.starts_with("needs a link on example.gov.cn"), "{}", problems[0]);

    // A safe-domain URL already in the body is enough.
    let mut in_body = content(&format!("详见{LINK}"));
    in_body.link = None;
    assert_eq!(adapter.render(&in_body).unwrap().text, format!("详见{LINK}"));

    // Half-width katakana count one each: 121 of them and the link are 140.
    assert!(adapter.render(&content(&"ｱ".repeat(121))).is_ok());
    assert!(adapter.render(&content(&"ｱ".repeat(122))).is_err(), "Weibo would answer 20012");

    // share.json refuses #topic# tags; a link's #fragment is not one.
    let problems = adapter.render(&content("警惕 #电信诈骗# 提醒")).unwrap_err();
    assert_eq!(problems[0].field, "body");
    assert!(problems[0].message.contains("`#电信诈骗#` is a #topic# tag"), "{}", problems[0]);
    let mut fragment = content("提示");
    fragment.link = Some(format!("{LINK}#details"));
    assert!(adapter.render(&fragment).is_ok());

    let (_folder, not_a_picture) = temp_file("notes.txt", b"just text");
    let mut with_text_file = content("提示");
    with_text_file.images = vec![not_a_picture];
    let problems = adapter.render(&with_text_file).unwrap_err();
    assert_eq!(problems[0].field, "images");
    assert!(problems[0].message.contains("not a JPEG, GIF or PNG"), "{}", problems[0]);

    let mut big = content("提示");
    let mut bytes = PNG.to_vec();
    bytes.resize(5 * 1024 * 1024, 0);
    let (_big_folder, big_path) = temp_file("big.png", &bytes);
    big.images = vec![big_path];
    let problems = adapter.render(&big).unwrap_err();
    assert!(problems[0].message.contains("under 5 MB"), "{}", problems[0]);
}

#[tokio::test]
async fn the_registry_builds_weibo_from_account_settings() {
    let weibo = emulator().await;
    let table = json!({
        "base_url": weibo.base_url(),
        "access_token": TOKEN,
        "safe_domain": DOMAIN,
        "rip": "203.0.113.7",
        "expires_at": "2026-06-01T00:00:00Z",
        "max_length": 100,
    });
    let settings = AccountSettings::deserialize(Platform::Weibo, table).unwrap();
    assert_eq!(settings.platform(), Platform::Weibo);
    assert_eq!(settings.credentials_expire_at(), Some("2026-06-01T00:00:00Z".parse().unwrap()));
    assert!(!format!("{settings:?}").contains(TOKEN));
    let adapter = registry::build(&settings, quick(), &Services::in_memory("wuhan-weibo")).unwrap();
    assert_eq!(adapter.platform(), Platform::Weibo);
    assert!(adapter.render(&content(&"防".repeat(90))).is_err(), "max_length 100 applies");
    let rendered = adapter.render(&content("提示")).unwrap();
    adapter.publish(Delivery::new("d-registry", rendered).request()).await.unwrap();
    assert_eq!(weibo.published().len(), 1);

    assert_eq!(Platform::parse("weibo"), Some(Platform::Weibo));
    assert_eq!(Platform::Weibo.secret_fields(), ["access_token"]);
    assert_eq!(Platform::Weibo.default_rate(), Some((30, Duration::from_secs(3600))));
    let refresh = adapter.refresh_credentials().await.unwrap_err();
    assert_eq!((refresh.class, refresh.reason.as_str()), (ErrorClass::Permanent, TOKEN_REASON));
}

/// An emulator whose app may not read the user timeline (10014 there).
async fn emulator_without_timeline() -> WeiboEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = WeiboConfig::new(Tokens::new([TOKEN]), DOMAIN);
    config.timeline_permission = false;
    WeiboEmulator::start(addr, config).await.unwrap()
}

/// One attempt as the daemon makes it: look up an uncertain delivery, then publish.
async fn attempt(adapter: &WeiboAdapter, delivery: &Delivery) -> Result<Receipt, DeliveryError> {
    if delivery.uncertain
        && let Some(receipt) = adapter.lookup(delivery.request()).await?
    {
        return Ok(receipt);
    }
    adapter.publish(delivery.request()).await
}

#[tokio::test]
async fn a_refused_look_up_after_job_expired_re_sends_and_says_so() {
    let weibo = emulator_without_timeline().await;
    let adapter = adapter(&weibo);
    let delivery = Delivery::of(&adapter, "d-expired", "过期的提示");
    weibo.answer_next(1, 10010);
    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert!(error.maybe_sent && error.class == ErrorClass::Transient, "{error:?}");
    assert!(weibo.published().is_empty(), "job expired: nothing went out");

    let receipt = attempt(&adapter, &delivery.retried_uncertain()).await.unwrap();

    assert_eq!(weibo.published().len(), 1, "re-sent, not failed");
    assert_eq!(receipt.remote_id, Some(weibo.published()[0].id.to_string()));
    let message = receipt.answer.message.unwrap();
    assert!(message.contains("look-up before re-sending was impossible (user_timeline answered 10014)"), "{message}");
}

#[tokio::test]
async fn a_refused_look_up_after_a_timeout_that_published_ends_delivered_once() {
    let weibo = emulator_without_timeline().await;
    weibo.fail_next(1, Fault::Delay(Duration::from_millis(800)));
    let http = impatient();
    let adapter = WeiboAdapter::new(settings(weibo.base_url(), TOKEN), http).unwrap();
    let delivery = Delivery::of(&adapter, "d-live", "已经发出的提示");
    assert!(adapter.publish(delivery.request()).await.unwrap_err().maybe_sent);
    // The emulator publishes once its delay is over (a safety net, not a timing).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while weibo.published().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the delayed request was never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let receipt = attempt(&adapter, &delivery.retried_uncertain()).await.unwrap();

    assert_eq!(weibo.published().len(), 1, "the repeat was refused by Weibo, not published twice");
    assert_eq!(receipt.answer.code.as_deref(), Some("20019"));
    let message = receipt.answer.message.unwrap();
    assert!(message.contains("look-up before re-sending was impossible"), "{message}");
    assert!(message.contains("taken as evidence it was published"), "{message}");
}

#[tokio::test]
async fn an_upper_case_link_host_is_lower_cased_before_comparing_and_sending() {
    let weibo = emulator().await;
    let adapter = adapter(&weibo);
    let mut shouting = content("提示 详见HTTPS://WWW.Example.GOV.CN/alerts/Case42");
    shouting.link = Some("HTTPS://WWW.EXAMPLE.GOV.CN/alerts/Case42".into());
    let rendered = adapter.render(&shouting).unwrap();
    assert_eq!(rendered.link.as_deref(), Some("https://www.example.gov.cn/alerts/Case42"));
    assert!(rendered.text.contains("详见https://www.example.gov.cn/alerts/Case42"), "{}", rendered.text);

    adapter.publish(Delivery::new("d-case", rendered).request()).await.unwrap();
    assert_eq!(weibo.published().len(), 1, "accepted: the host was sent lower-cased");

    // Sent as written, Weibo refuses it (10017), as the emulator shows.
    let form = [("access_token", TOKEN), ("status", "提示 HTTPS://WWW.Example.GOV.CN/a"), ("rip", "203.0.113.7")];
    let body = share_by_hand(&weibo, &form).await;
    assert_eq!(body["error_code"], json!(10017));
}
