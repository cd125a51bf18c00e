//! The experimental Tieba adapter against the sandbox's Tieba emulator, over
//! real loopback HTTP: the exact signed form, receipts, captcha, "too
//! frequent", a bad BDUSS, and the registry's caution for this platform.

use std::net::SocketAddr;
use std::time::Duration;

use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::tieba::{DEFAULT_CLIENT_VERSION, Settings, TiebaAdapter};
use herald_adapters::{Adapter, ErrorClass, PostContent, PublishRequest, Rendered, Secret, Services};
use herald_sandbox::Fault;
use herald_sandbox::tieba::{TiebaApi, TiebaConfig, TiebaEmulator, TiebaFault, expected_sign};
use md5::{Digest, Md5};
use serde_json::json;

const BDUSS: &str = "bduss-s3cret-cookie";
const FORUM: &str = "武汉反诈";
const FID: u64 = 52_013;

async fn emulator() -> TiebaEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = TiebaConfig { bduss: vec![BDUSS.into()], forums: vec![(FORUM.into(), FID)] };
    TiebaEmulator::start(addr, config).await.unwrap()
}

fn quick() -> HttpOptions {
    HttpOptions { connect_timeout: Duration::from_secs(2), timeout: Duration::from_secs(5), ..HttpOptions::default() }
}

fn settings(emulator: &TiebaEmulator) -> Settings {
    let mut settings = Settings::new(Secret::new(BDUSS), FORUM);
    settings.base_url = emulator.base_url().to_string();
    settings.fid = Some(FID);
    settings
}

fn adapter(settings: Settings) -> TiebaAdapter {
    TiebaAdapter::new(settings, quick()).unwrap()
}

fn content() -> PostContent {
    PostContent {
        title: Some("警惕冒充公检法诈骗".into()),
        body: "公检法机关不会通过电话要求转账到“安全账户”。\nHang up & call 110 + report.".into(),
        link: Some("https://example.gov.cn/alerts/42?a=1&b=2".into()),
        images: vec![],
    }
}

fn rendered(adapter: &TiebaAdapter) -> Rendered {
    adapter.render(&content()).unwrap()
}

fn request<'a>(id: &'a str, content: &'a Rendered) -> PublishRequest<'a> {
    PublishRequest {
        delivery_id: id,
        post_id: "fraud-alert",
        account_id: "wuhan-tieba",
        occurrence: "2025-03-01T01:00:00Z",
        attempt: 1,
        uncertain: false,
        content,
    }
}

#[tokio::test]
async fn a_thread_is_posted_with_the_exact_signed_form() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator));
    let content = rendered(&adapter);

    let receipt = adapter.publish(request("d-1", &content)).await.unwrap();

    let calls = emulator.calls();
    assert_eq!(calls.len(), 2);
    let login = &calls[0];
    assert_eq!(login.api, TiebaApi::Login);
    let keys: Vec<_> = login.form.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["_client_version", "bdusstoken", "sign"]);
    assert_eq!(login.field("bdusstoken"), Some(BDUSS));
    assert!(login.sign_valid);

    let thread = &calls[1];
    assert_eq!(thread.api, TiebaApi::AddThread);
    let tbs = thread.field("tbs").unwrap().to_string();
    let text = "公检法机关不会通过电话要求转账到“安全账户”。\nHang up & call 110 + report.\nhttps://example.gov.cn/alerts/42?a=1&b=2";
    let expected: Vec<(String, String)> = [
        ("BDUSS", BDUSS),
        ("_client_type", "2"),
        ("_client_version", DEFAULT_CLIENT_VERSION),
        ("anonymous", "0"),
        ("content", text),
        ("fid", "52013"),
        ("kw", FORUM),
        ("tbs", &tbs),
        ("title", "警惕冒充公检法诈骗"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(thread.form[..thread.form.len() - 1], expected[..], "sorted by key, raw values, sign last");

    // The sign, recomputed here from the recorded form.
    let mut concatenated = String::new();
    for (key, value) in &expected {
        concatenated.push_str(&format!("{key}={value}"));
    }
    concatenated.push_str("tiebaclient!!!");
    let sign = hex::encode_upper(Md5::digest(concatenated.as_bytes()));
    assert_eq!(thread.form.last(), Some(&("sign".to_string(), sign.clone())));
    assert_eq!(expected_sign(&thread.form), sign);
    assert!(thread.sign_valid);

    let threads = emulator.published();
    assert_eq!(threads.len(), 1);
    assert_eq!((threads[0].title.as_str(), threads[0].content.as_str()), ("警惕冒充公检法诈骗", text));
    assert_eq!((threads[0].forum.as_str(), threads[0].fid), (FORUM, FID));
    assert_eq!(receipt.remote_id.as_deref(), Some(threads[0].tid.as_str()));
    assert_eq!(receipt.url, Some(format!("https://tieba.baidu.com/p/{}", threads[0].tid)));
}

#[tokio::test]
async fn without_a_fid_the_forum_is_named_only() {
    let emulator = emulator().await;
    let mut settings = settings(&emulator);
    settings.fid = None;
    let adapter = adapter(settings);
    let content = rendered(&adapter);

    adapter.publish(request("d-nofid", &content)).await.unwrap();

    assert_eq!(emulator.calls()[1].field("fid"), None);
    assert_eq!(emulator.published()[0].fid, FID);
}

#[tokio::test]
async fn a_captcha_demand_is_permanent_and_posts_nothing() {
    let emulator = emulator().await;
    emulator.fail_api(TiebaApi::AddThread, 1, TiebaFault::Captcha);
    let adapter = adapter(settings(&emulator));
    let content = rendered(&adapter);

    let error = adapter.publish(request("d-captcha", &content)).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(error.reason.contains("captcha") && error.reason.contains("a person must post"), "{}", error.reason);
    assert!(!error.maybe_sent);
    assert!(emulator.published().is_empty());
}

#[tokio::test]
async fn too_frequent_is_rate_limited_for_an_hour() {
    let emulator = emulator().await;
    emulator.fail_api(TiebaApi::AddThread, 1, TiebaFault::TooFrequent);
    let adapter = adapter(settings(&emulator));
    let content = rendered(&adapter);

    let error = adapter.publish(request("d-busy", &content)).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(3600)) });
    assert_eq!(error.answer.code.as_deref(), Some("220034"));
    assert!(emulator.published().is_empty());
}

#[tokio::test]
async fn a_bad_bduss_is_permanent_and_never_shown() {
    let emulator = emulator().await;
    let mut settings = settings(&emulator);
    settings.bduss = Secret::new("wrong-bduss-value");
    let adapter = adapter(settings);
    let content = rendered(&adapter);

    let error = adapter.publish(request("d-bduss", &content)).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Permanent);
    assert_eq!(error.answer.code.as_deref(), Some("1"));
    assert_eq!(emulator.calls().len(), 1, "the login refused it; no thread attempted");
    let shown = format!("{error:?} {error}");
    assert!(!shown.contains("wrong-bduss-value") && !shown.contains(BDUSS), "{shown}");
    assert_eq!(adapter.probe().await.unwrap_err().class, ErrorClass::Permanent);
}

#[tokio::test]
async fn other_errors_are_permanent_and_transport_faults_transient() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator));
    let content = rendered(&adapter);

    emulator.fail_api(TiebaApi::AddThread, 1, TiebaFault::Error { code: 340_006, message: "贴吧已被封禁".into() });
    let error = adapter.publish(request("d-ban", &content)).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(error.reason.contains("340006") && error.reason.contains("贴吧已被封禁"), "{}", error.reason);

    emulator.fail_next(1, Fault::status(503));
    assert_eq!(adapter.publish(request("d-503", &content)).await.unwrap_err().class, ErrorClass::Transient);

    let mut wrong_forum = settings(&emulator);
    wrong_forum.forum = "no-such-forum".into();
    let error = TiebaAdapter::new(wrong_forum, quick()).unwrap().publish(request("d-forum", &content)).await;
    assert_eq!(error.unwrap_err().class, ErrorClass::Permanent);
    assert!(emulator.published().is_empty());
}

#[tokio::test]
async fn probe_logs_in_and_posts_nothing() {
    let emulator = emulator().await;
    let probe = adapter(settings(&emulator)).probe().await.unwrap();
    assert!(probe.detail.contains("experimental"), "{}", probe.detail);
    assert_eq!(probe.expires_at, None);
    assert_eq!(emulator.calls().len(), 1);
    assert!(emulator.published().is_empty());
}

#[tokio::test]
async fn lookup_finds_nothing_so_the_daemon_decides() {
    let emulator = emulator().await;
    let adapter = adapter(settings(&emulator));
    let content = rendered(&adapter);
    assert_eq!(adapter.lookup(request("d-look", &content)).await.unwrap(), None);
    assert!(emulator.calls().is_empty());
}

#[test]
fn render_needs_a_title_and_refuses_images() {
    let adapter = TiebaAdapter::new(Settings::new(Secret::new(BDUSS), FORUM), quick()).unwrap();
    let mut untitled = content();
    untitled.title = None;
    untitled.images = vec!["poster.jpg".into()];
    let problems = adapter.render(&untitled).unwrap_err();
    let fields: Vec<_> = problems.iter().map(|problem| problem.field.as_str()).collect();
    assert_eq!(fields, ["title", "images"]);

    let mut long = content();
    long.body = "诈".repeat(5000);
    assert_eq!(adapter.render(&long).unwrap_err()[0].field, "body");
}

#[tokio::test]
async fn the_registry_marks_tieba_experimental_and_slow() {
    let emulator = emulator().await;
    assert_eq!(Platform::parse("tieba"), Some(Platform::Tieba));
    assert!(Platform::Tieba.experimental());
    assert_eq!(Platform::Tieba.default_rate(), Some((6, Duration::from_secs(3600))));
    assert_eq!(Platform::Tieba.secret_fields(), ["bduss"]);

    let table = json!({ "bduss": BDUSS, "forum": FORUM, "fid": FID, "base_url": emulator.base_url() });
    let settings = AccountSettings::deserialize(Platform::Tieba, table).unwrap();
    let built = registry::build(&settings, quick(), &Services::in_memory("wuhan-tieba")).unwrap();
    assert_eq!(built.platform(), Platform::Tieba);
    let content = built.render(&content()).unwrap();
    built.publish(request("d-registry", &content)).await.unwrap();
    assert_eq!(emulator.published().len(), 1);

    let adapter = adapter(crate::settings(&emulator));
    for shown in
        [format!("{settings:?}"), format!("{built:?}", built = adapter), format!("{:?}", crate::settings(&emulator))]
    {
        assert!(!shown.contains(BDUSS), "{shown}");
    }
}
