//! The Discourse adapter against the sandbox's Discourse emulator, over
//! real loopback HTTP: the topic and headers sent, the receipt URL, lookup
//! by external id, a 422 on an uncertain retry, every status class, probe
//! and the content rules.

use std::net::SocketAddr;
use std::time::Duration;

use herald_adapters::discourse::{DiscourseAdapter, Settings};
use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::{Adapter, ErrorClass, PostContent, PublishRequest, Rendered, Secret, Services};
use herald_sandbox::discourse::DiscourseOutcome;
use herald_sandbox::{DiscourseConfig, DiscourseEmulator, Fault, Tokens};
use serde_json::json;

const KEY: &str = "discourse-api-key";

async fn emulator() -> DiscourseEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    DiscourseEmulator::start(addr, DiscourseConfig::new(Tokens::new([KEY]))).await.unwrap()
}

fn quick() -> HttpOptions {
    HttpOptions { connect_timeout: Duration::from_secs(2), timeout: Duration::from_secs(5), ..HttpOptions::default() }
}

fn settings(base_url: &str, key: &str) -> Settings {
    Settings {
        base_url: base_url.to_string(),
        api_key: Secret::new(key),
        api_username: "herald".into(),
        category: Some(3),
        min_title_length: 15,
        max_title_length: 255,
        min_length: 20,
        max_length: 32_000,
    }
}

fn adapter_with(discourse: &DiscourseEmulator, http: HttpOptions) -> DiscourseAdapter {
    DiscourseAdapter::new(settings(discourse.base_url(), KEY), http).unwrap()
}

fn adapter(discourse: &DiscourseEmulator) -> DiscourseAdapter {
    adapter_with(discourse, quick())
}

fn content(title: Option<&str>, body: &str) -> PostContent {
    PostContent {
        title: title.map(str::to_string),
        body: body.into(),
        link: Some("https://example.gov.cn/alerts/42".into()),
        images: vec![],
    }
}

struct Delivery {
    id: String,
    attempt: u32,
    uncertain: bool,
    content: Rendered,
}

impl Delivery {
    fn new(adapter: &DiscourseAdapter, id: &str, body: &str) -> Self {
        let content = adapter.render(&content(Some("Fraud alert: fake refund calls"), body)).unwrap();
        Delivery { id: id.into(), attempt: 1, uncertain: false, content }
    }

    fn request(&self) -> PublishRequest<'_> {
        PublishRequest {
            delivery_id: &self.id,
            post_id: "fraud-alert",
            account_id: "city-forum",
            occurrence: "2025-03-01T01:00:00+00:00",
            attempt: self.attempt,
            uncertain: self.uncertain,
            content: &self.content,
        }
    }

    fn retried_uncertain(mut self) -> Self {
        self.attempt += 1;
        self.uncertain = true;
        self
    }
}

#[tokio::test]
async fn a_topic_is_created_with_its_external_id_and_returns_its_url() {
    let discourse = emulator().await;
    let adapter = adapter(&discourse);
    let delivery = Delivery::new(&adapter, "0123456789abcdef0123456789abcdef", "Police never ask you to move money.");
    assert_eq!(delivery.content.text, "Police never ask you to move money.\n\nhttps://example.gov.cn/alerts/42");

    let receipt = adapter.publish(delivery.request()).await.unwrap();

    let published = discourse.published();
    assert_eq!(published.len(), 1);
    let topic = &published[0];
    assert_eq!(
        topic.body,
        json!({
            "title": "Fraud alert: fake refund calls",
            "raw": delivery.content.text,
            "category": 3,
            "external_id": "0123456789abcdef0123456789abcdef",
        })
    );
    assert_eq!(topic.api_username, "herald");
    assert_eq!(receipt.remote_id, Some(topic.topic_id.to_string()));
    assert_eq!(
        receipt.url,
        Some(format!("{}/t/fraud-alert-fake-refund-calls/{}", discourse.base_url(), topic.topic_id))
    );
    assert_eq!(receipt.url.as_deref(), Some(topic.url.as_str()));
    assert_eq!(receipt.answer.status, Some(200));
}

#[tokio::test]
async fn lookup_finds_a_topic_an_earlier_attempt_created() {
    let discourse = emulator().await;
    let adapter = adapter(&discourse);
    let delivery = Delivery::new(&adapter, "d-earlier", "A warning about fake refund calls.");
    let created = adapter.publish(delivery.request()).await.unwrap();

    let retry = delivery.retried_uncertain();
    let found = adapter.lookup(retry.request()).await.unwrap().expect("found by external id");
    assert_eq!(found.remote_id, created.remote_id);
    assert_eq!(found.url, created.url);
    assert_eq!(found.answer.status, Some(301), "Discourse redirects to the topic");

    let unknown = Delivery::new(&adapter, "d-never-sent", "A warning about fake refund calls.").retried_uncertain();
    assert_eq!(adapter.lookup(unknown.request()).await.unwrap(), None);
    assert_eq!(discourse.published().len(), 1);
}

#[tokio::test]
async fn a_timeout_is_maybe_sent_and_lookup_then_finds_the_topic() {
    let discourse = emulator().await;
    discourse.fail_next(1, Fault::Delay(Duration::from_millis(800)));
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(200),
        ..HttpOptions::default()
    };
    let adapter = adapter_with(&discourse, http);
    let delivery = Delivery::new(&adapter, "d-slow", "A slow warning about fake refund calls.");

    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!((error.class, error.maybe_sent, error.answer.status), (ErrorClass::Transient, true, None));

    for _ in 0..50 {
        if !discourse.published().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let found = adapter.lookup(delivery.retried_uncertain().request()).await.unwrap().unwrap();
    assert_eq!(found.remote_id, Some(discourse.published()[0].topic_id.to_string()));
}

#[tokio::test]
async fn a_422_is_permanent_first_and_checked_by_lookup_when_uncertain() {
    let discourse = emulator().await;
    let adapter = adapter(&discourse);
    let delivery = Delivery::new(&adapter, "d-422", "A warning about fake refund calls.");
    let created = adapter.publish(delivery.request()).await.unwrap();

    // A plain second send: the external id is taken (and the body too similar).
    let again = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!((&again.class, again.answer.status), (&ErrorClass::Permanent, Some(422)));
    let message = again.answer.message.unwrap();
    assert!(message.contains("External has already been taken"), "{message}");

    let retry = delivery.retried_uncertain();
    let receipt = adapter.publish(retry.request()).await.unwrap();
    assert_eq!(receipt.remote_id, created.remote_id);
    assert_eq!(receipt.url, created.url);
    assert_eq!(receipt.answer.status, Some(422));
    assert!(receipt.answer.message.unwrap().contains("found by its external id"));
    assert_eq!(discourse.published().len(), 1);
}

#[tokio::test]
async fn a_rate_limit_waits_for_retry_after_or_wait_seconds() {
    let discourse = emulator().await;
    let adapter = adapter(&discourse);
    let delivery = Delivery::new(&adapter, "d-429", "A warning about fake refund calls.");

    discourse.rate_limit_next(1, 9, true);
    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(9)) });
    assert_eq!((error.answer.status, error.answer.code.as_deref()), (Some(429), Some("rate_limit")));

    discourse.rate_limit_next(1, 12, false);
    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(12)) });

    assert!(discourse.published().is_empty());
    let outcomes: Vec<DiscourseOutcome> = discourse.requests().into_iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, [DiscourseOutcome::RateLimited, DiscourseOutcome::RateLimited]);
}

#[tokio::test]
async fn refusals_are_permanent_and_server_errors_transient() {
    let discourse = emulator().await;
    let wrong = DiscourseAdapter::new(settings(discourse.base_url(), "not-the-key"), quick()).unwrap();
    let delivery = Delivery::new(&wrong, "d-403", "A warning about fake refund calls.");
    let error = wrong.publish(delivery.request()).await.unwrap_err();
    assert_eq!((&error.class, error.answer.status), (&ErrorClass::Permanent, Some(403)));
    assert_eq!(error.answer.code.as_deref(), Some("invalid_access"));
    for shown in [&error.reason, &format!("{error:?}"), &format!("{wrong:?}")] {
        assert!(!shown.contains("not-the-key"), "{shown}");
    }

    let adapter = adapter(&discourse);
    discourse.fail_next(1, Fault::status_with_body(401, r#"{"errors": ["unauthorized"]}"#));
    assert_eq!(adapter.publish(delivery.request()).await.unwrap_err().class, ErrorClass::Permanent);
    for status in [500, 502] {
        discourse.fail_next(1, Fault::status(status));
        let error = adapter.publish(delivery.request()).await.unwrap_err();
        assert_eq!((error.class, error.answer.status), (ErrorClass::Transient, Some(status)));
    }
    // The forum's own validation: a body that render would have refused.
    let short = Delivery {
        content: Rendered { title: Some("A long enough title".into()), text: "short".into(), ..Rendered::default() },
        ..Delivery::new(&adapter, "d-short", "A warning about fake refund calls.")
    };
    let error = adapter.publish(short.request()).await.unwrap_err();
    assert_eq!((&error.class, error.answer.status), (&ErrorClass::Permanent, Some(422)));
    assert_eq!(error.answer.message.as_deref(), Some("Body is too short (minimum is 20 characters)"));
    assert!(discourse.published().is_empty());
}

#[tokio::test]
async fn probe_reads_the_current_user() {
    let discourse = emulator().await;
    let probe = adapter(&discourse).probe().await.unwrap();
    assert_eq!(probe.detail, "API key accepted for @herald");
    assert!(discourse.published().is_empty());

    let wrong = DiscourseAdapter::new(settings(discourse.base_url(), "nope"), quick()).unwrap();
    let error = wrong.probe().await.unwrap_err();
    assert_eq!((error.class, error.answer.status), (ErrorClass::Permanent, Some(403)));
}

#[test]
fn render_requires_a_title_and_checks_lengths() {
    let adapter = DiscourseAdapter::new(settings("https://forum.example.org", KEY), quick()).unwrap();
    // Images are refused with the reason, never dropped silently.
    let mut with_image = content(Some("Fake refund calls are fraud"), "A warning about fake refund calls.");
    with_image.images = vec!["poster.png".into()];
    let problems = adapter.render(&with_image).unwrap_err();
    assert_eq!(problems[0].field, "images");
    assert!(problems[0].message.contains("override `images = []` for discourse"), "{}", problems[0]);

    let problems = adapter.render(&content(None, "A warning about fake refund calls.")).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!((problems[0].field.as_str(), problems[0].message.as_str()), ("title", "Discourse needs a title"));
    assert_eq!(
        adapter.render(&content(Some("   "), "A warning about fake refund calls.")).unwrap_err()[0].field,
        "title"
    );

    let problems = adapter.render(&content(Some("Short"), "A warning about fake refund calls.")).unwrap_err();
    assert_eq!(problems[0].message, "is 5 characters long; this forum takes 15 to 255");

    let mut no_link = content(Some("Fraud alert: fake refund calls"), "Too short.");
    no_link.link = None;
    let problems = adapter.render(&no_link).unwrap_err();
    assert_eq!(problems[0].field, "body");
    assert!(problems[0].message.contains("10 characters long"), "{}", problems[0]);

    let rendered = adapter.render(&content(Some(" Fraud alert: fake refund calls "), "Body.\n")).unwrap();
    assert_eq!(rendered.title.as_deref(), Some("Fraud alert: fake refund calls"));
    assert_eq!(rendered.text, "Body.\n\nhttps://example.gov.cn/alerts/42");
}

#[tokio::test]
async fn the_registry_builds_discourse_from_account_settings() {
    let discourse = emulator().await;
    let table = json!({ "base_url": discourse.base_url(), "api_key": KEY, "api_username": "system" });
    let settings = AccountSettings::deserialize(Platform::Discourse, table).unwrap();
    assert!(!format!("{settings:?}").contains(KEY));
    let adapter = registry::build(&settings, quick(), &Services::in_memory("city-forum")).unwrap();
    assert_eq!(adapter.platform(), Platform::Discourse);
    let rendered = adapter.render(&content(Some("Fraud alert: fake refund calls"), "A warning.")).unwrap();
    let delivery = Delivery { id: "d-registry".into(), attempt: 1, uncertain: false, content: rendered };
    adapter.publish(delivery.request()).await.unwrap();
    let topic = &discourse.published()[0];
    assert_eq!(topic.api_username, "system");
    assert_eq!(topic.body.get("category"), None, "no category set: left out");

    assert_eq!(Platform::parse("discourse"), Some(Platform::Discourse));
    assert_eq!(Platform::Discourse.secret_fields(), ["api_key"]);
    assert_eq!(Platform::Discourse.default_rate(), Some((60, Duration::from_secs(60))));
}
