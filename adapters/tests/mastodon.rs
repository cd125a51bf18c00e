//! The Mastodon adapter against the sandbox's Mastodon emulator, over real
//! loopback HTTP: the JSON status and headers sent, the idempotency key that
//! makes a retry answer the original status, every status class, probe and
//! the length rule.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use herald_adapters::mastodon::{MastodonAdapter, Settings, Visibility};
use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::{Adapter, ErrorClass, PostContent, PublishRequest, Rendered, Secret, Services};
use herald_sandbox::mastodon::MastodonOutcome;
use herald_sandbox::{Fault, MastodonConfig, MastodonEmulator, Tokens};
use serde_json::json;

const TOKEN: &str = "mastodon-access-token";

async fn emulator() -> MastodonEmulator {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MastodonEmulator::start(addr, MastodonConfig::new(Tokens::new([TOKEN]))).await.unwrap()
}

fn quick() -> HttpOptions {
    HttpOptions { connect_timeout: Duration::from_secs(2), timeout: Duration::from_secs(5), ..HttpOptions::default() }
}

fn settings(base_url: &str, token: &str) -> Settings {
    Settings {
        base_url: base_url.to_string(),
        access_token: Secret::new(token),
        visibility: Visibility::Public,
        language: None,
        title_as_spoiler: false,
        max_length: 500,
    }
}

fn adapter(mastodon: &MastodonEmulator) -> MastodonAdapter {
    MastodonAdapter::new(settings(mastodon.base_url(), TOKEN), quick()).unwrap()
}

fn content(body: &str) -> PostContent {
    PostContent {
        title: Some("Fraud alert".into()),
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
    fn new(id: &str, content: Rendered) -> Self {
        Delivery { id: id.into(), attempt: 1, uncertain: false, content }
    }

    fn request(&self) -> PublishRequest<'_> {
        PublishRequest {
            delivery_id: &self.id,
            post_id: "fraud-alert",
            account_id: "city-mastodon",
            occurrence: "2025-03-01T01:00:00+00:00",
            attempt: self.attempt,
            uncertain: self.uncertain,
            content: &self.content,
        }
    }
}

fn text(body: &str) -> Rendered {
    Rendered { text: body.into(), ..Rendered::default() }
}

#[tokio::test]
async fn a_status_is_sent_as_json_with_the_idempotency_key() {
    let mastodon = emulator().await;
    let mut settings = settings(mastodon.base_url(), TOKEN);
    settings.visibility = Visibility::Unlisted;
    settings.language = Some("zh".into());
    settings.title_as_spoiler = true;
    let adapter = MastodonAdapter::new(settings, quick()).unwrap();
    let rendered = adapter.render(&content("Police never ask you to move money.")).unwrap();
    assert_eq!(rendered.text, "Police never ask you to move money.\n\nhttps://example.gov.cn/alerts/42");
    assert_eq!(rendered.title.as_deref(), Some("Fraud alert"));
    assert!(rendered.images.is_empty());

    let receipt = adapter.publish(Delivery::new("d-001", rendered.clone()).request()).await.unwrap();

    let published = mastodon.published();
    assert_eq!(published.len(), 1);
    let status = &published[0];
    assert_eq!(
        status.body,
        json!({ "status": rendered.text, "visibility": "unlisted", "language": "zh", "spoiler_text": "Fraud alert" })
    );
    assert_eq!(status.content_type, "application/json");
    assert_eq!(status.idempotency_key.as_deref(), Some("d-001"));
    assert_eq!(status.username, MastodonEmulator::username_of(TOKEN));
    assert_eq!(receipt.remote_id.as_deref(), Some(status.id.as_str()));
    assert_eq!(receipt.url, Some(format!("{}/@{}/{}", mastodon.base_url(), status.username, status.id)));
    assert_eq!(receipt.answer.status, Some(200));
}

#[tokio::test]
async fn optional_fields_are_left_out() {
    let mastodon = emulator().await;
    let adapter = adapter(&mastodon);
    let rendered = adapter.render(&content("Beware.")).unwrap();
    assert_eq!(rendered.title, None, "the title is not sent without title_as_spoiler");
    adapter.publish(Delivery::new("d-002", rendered.clone()).request()).await.unwrap();
    assert_eq!(mastodon.published()[0].body, json!({ "status": rendered.text, "visibility": "public" }));
}

#[tokio::test]
async fn a_crash_recovered_retry_with_the_same_key_creates_one_status() {
    let mastodon = emulator().await;
    let adapter = adapter(&mastodon);
    let mut delivery = Delivery::new("d-crash", text("Beware of fake refund calls."));

    let first = adapter.publish(delivery.request()).await.unwrap();
    // The daemon crashed before recording the receipt: the retry is uncertain.
    delivery.attempt = 2;
    delivery.uncertain = true;
    assert_eq!(adapter.lookup(delivery.request()).await.unwrap(), None, "no lookup: the key de-duplicates");
    let second = adapter.publish(delivery.request()).await.unwrap();

    assert_eq!(second.remote_id, first.remote_id);
    assert_eq!(second.url, first.url);
    assert_eq!(mastodon.published().len(), 1);
    let outcomes: Vec<MastodonOutcome> = mastodon.requests().into_iter().map(|r| r.outcome).collect();
    let id = first.remote_id.unwrap();
    assert_eq!(outcomes, [MastodonOutcome::Created { id: id.clone() }, MastodonOutcome::Replayed { id }]);
    assert!(mastodon.requests().iter().all(|r| r.idempotency_key.as_deref() == Some("d-crash")));
}

#[tokio::test]
async fn a_timeout_is_maybe_sent_and_the_retry_answers_the_original_status() {
    let mastodon = emulator().await;
    mastodon.fail_next(1, Fault::Delay(Duration::from_millis(800)));
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(200),
        ..HttpOptions::default()
    };
    let adapter = MastodonAdapter::new(settings(mastodon.base_url(), TOKEN), http).unwrap();
    let mut delivery = Delivery::new("d-slow", text("Slow but sure."));

    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!((error.class, error.maybe_sent, error.answer.status), (ErrorClass::Transient, true, None));

    for _ in 0..50 {
        if !mastodon.published().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delivery.attempt = 2;
    delivery.uncertain = true;
    let receipt = adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(receipt.remote_id.as_deref(), Some(mastodon.published()[0].id.as_str()));
    assert_eq!(mastodon.published().len(), 1);
}

#[tokio::test]
async fn a_rate_limit_waits_until_the_reset_time() {
    let mastodon = emulator().await;
    let adapter = adapter(&mastodon);
    mastodon.rate_limit_next(1, Utc::now() + chrono::Duration::seconds(120));
    let error = adapter.publish(Delivery::new("d-429", text("x")).request()).await.unwrap_err();
    let ErrorClass::RateLimited { retry_after: Some(wait) } = error.class else { panic!("{error:?}") };
    assert!((Duration::from_secs(115)..=Duration::from_secs(120)).contains(&wait), "{wait:?}");
    assert_eq!(error.answer.status, Some(429));
    assert_eq!(error.answer.message.as_deref(), Some("Too many requests"));

    mastodon.fail_next(1, Fault::status(429));
    let error = adapter.publish(Delivery::new("d-429", text("x")).request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::RateLimited { retry_after: None }, "no reset: the daemon's backoff");
}

#[tokio::test]
async fn refusals_are_permanent_and_server_errors_transient() {
    let mastodon = emulator().await;

    let wrong = MastodonAdapter::new(settings(mastodon.base_url(), "not-the-token"), quick()).unwrap();
    let error = wrong.publish(Delivery::new("d-401", text("x")).request()).await.unwrap_err();
    assert_eq!((&error.class, error.answer.status), (&ErrorClass::Permanent, Some(401)));
    assert_eq!(error.answer.message.as_deref(), Some("The access token is invalid"));
    for shown in [&error.reason, &format!("{error:?}"), &format!("{wrong:?}")] {
        assert!(!shown.contains("not-the-token"), "{shown}");
    }

    let adapter = adapter(&mastodon);
    // Bypass render to see the server's own check.
    let error = adapter.publish(Delivery::new("d-422", text(&"x".repeat(501))).request()).await.unwrap_err();
    assert_eq!((error.class, error.answer.status), (ErrorClass::Permanent, Some(422)));
    assert_eq!(error.answer.message.as_deref(), Some("Validation failed: Text character limit of 500 exceeded"));

    mastodon.fail_next(1, Fault::status_with_body(403, r#"{"error": "This action is not allowed"}"#));
    let error = adapter.publish(Delivery::new("d-403", text("x")).request()).await.unwrap_err();
    assert_eq!((error.class, error.answer.status), (ErrorClass::Permanent, Some(403)));

    for status in [500, 503] {
        mastodon.fail_next(1, Fault::status(status));
        let error = adapter.publish(Delivery::new("d-5xx", text("x")).request()).await.unwrap_err();
        assert_eq!((error.class, error.answer.status, error.maybe_sent), (ErrorClass::Transient, Some(status), false));
    }
    assert!(mastodon.published().is_empty());
}

#[tokio::test]
async fn probe_verifies_the_credentials() {
    let mastodon = emulator().await;
    let probe = adapter(&mastodon).probe().await.unwrap();
    assert_eq!(probe.detail, format!("access token accepted for @{}", MastodonEmulator::username_of(TOKEN)));
    assert!(mastodon.published().is_empty());

    let wrong = MastodonAdapter::new(settings(mastodon.base_url(), "nope"), quick()).unwrap();
    let error = wrong.probe().await.unwrap_err();
    assert_eq!((error.class, error.answer.status), (ErrorClass::Permanent, Some(401)));
}

#[test]
fn render_counts_characters_against_the_limit() {
    let adapter = MastodonAdapter::new(settings("https://social.example.org", TOKEN), quick()).unwrap();
    let link = "\n\nhttps://example.gov.cn/alerts/42";
    let room = 500 - link.chars().count();
    assert!(adapter.render(&content(&"防".repeat(room))).is_ok(), "exactly 500 characters");
    let problems = adapter.render(&content(&"防".repeat(room + 1))).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "body");
    assert_eq!(problems[0].message, "the text and link are 501 characters long; the limit is 500");

    // Images: at most 4, each a readable JPEG, PNG or GIF.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("poster.png");
    std::fs::write(&png, PNG).unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not an image").unwrap();
    let mut five = content("提示");
    five.images = vec![png.to_string_lossy().into_owned(); 5];
    let problems = adapter.render(&five).unwrap_err();
    assert!(problems[0].message.contains("at most 4"), "{}", problems[0]);
    let mut text_file = content("提示");
    text_file.images = vec![notes.to_string_lossy().into_owned()];
    let problems = adapter.render(&text_file).unwrap_err();
    assert!(problems[0].message.contains("not a JPEG, PNG or GIF"), "{}", problems[0]);
    let mut missing = content("提示");
    missing.images = vec!["/nonexistent/poster.png".into()];
    assert!(adapter.render(&missing).unwrap_err()[0].message.contains("cannot be read"));

    let mut spoiler = settings("https://social.example.org", TOKEN);
    spoiler.title_as_spoiler = true;
    let adapter = MastodonAdapter::new(spoiler, quick()).unwrap();
    let problems = adapter.render(&content(&"防".repeat(room))).unwrap_err();
    assert!(problems[0].message.contains("content warning are 511"), "{}", problems[0]);

    assert_eq!(adapter.render(&content("  ")).unwrap_err()[0].field, "body");
}

#[tokio::test]
async fn the_registry_builds_mastodon_from_account_settings() {
    let mastodon = emulator().await;
    let table = json!({ "base_url": mastodon.base_url(), "access_token": TOKEN, "visibility": "private" });
    let settings = AccountSettings::deserialize(Platform::Mastodon, table).unwrap();
    assert!(!format!("{settings:?}").contains(TOKEN));
    assert_eq!(settings.credentials_expire_at(), None);
    let adapter = registry::build(&settings, quick(), &Services::in_memory("city-mastodon")).unwrap();
    assert_eq!(adapter.platform(), Platform::Mastodon);
    adapter.publish(Delivery::new("d-registry", text("Hello.")).request()).await.unwrap();
    assert_eq!(mastodon.published()[0].field("visibility"), Some("private"));

    assert_eq!(Platform::parse("mastodon"), Some(Platform::Mastodon));
    assert_eq!(Platform::Mastodon.secret_fields(), ["access_token"]);
    assert_eq!(Platform::Mastodon.default_rate(), Some((300, Duration::from_secs(3 * 3600))));
    let missing = AccountSettings::deserialize(Platform::Mastodon, json!({ "access_token": TOKEN }));
    assert!(missing.unwrap_err().to_string().contains("base_url"));
}

/// A PNG header: enough for the image checks.
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R'];

#[tokio::test]
async fn images_are_uploaded_with_a_description_and_attached_in_order() {
    let mastodon = emulator().await;
    let mut settings = settings(mastodon.base_url(), TOKEN);
    settings.title_as_spoiler = true;
    let adapter = MastodonAdapter::new(settings, quick()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.png");
    let second = dir.path().join("second.png");
    std::fs::write(&first, PNG).unwrap();
    std::fs::write(&second, [PNG, b"more"].concat()).unwrap();
    let mut post = content("Police never ask you to move money.");
    post.images = vec![first.to_string_lossy().into_owned(), second.to_string_lossy().into_owned()];
    let rendered = adapter.render(&post).unwrap();
    assert_eq!(rendered.images, post.images);

    adapter.publish(Delivery::new("d-images", rendered).request()).await.unwrap();

    let media = mastodon.media();
    assert_eq!(media.len(), 2);
    assert_eq!(media.iter().map(|m| m.bytes).collect::<Vec<_>>(), [PNG.len(), PNG.len() + 4], "in order");
    assert!(media.iter().all(|m| m.description.as_deref() == Some("Fraud alert")), "{media:?}");
    assert!(media.iter().all(|m| m.content_type.as_deref() == Some("image/png")), "{media:?}");
    let status = &mastodon.published()[0];
    assert_eq!(status.body["media_ids"], json!([media[0].id, media[1].id]));
}

#[tokio::test]
async fn a_refused_upload_fails_before_any_status_is_created() {
    let mastodon = emulator().await;
    let adapter = adapter(&mastodon);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("poster.png");
    std::fs::write(&image, PNG).unwrap();
    let mut post = content("提示");
    post.images = vec![image.to_string_lossy().into_owned()];
    let rendered = adapter.render(&post).unwrap();
    // The file changes after check: no longer an image.
    std::fs::write(&image, "changed").unwrap();
    let error = adapter.publish(Delivery::new("d-changed", rendered.clone()).request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert!(error.reason.contains("not a JPEG, PNG or GIF"), "{}", error.reason);

    std::fs::write(&image, PNG).unwrap();
    mastodon.fail_next(1, Fault::status(503));
    let error = adapter.publish(Delivery::new("d-busy", rendered).request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    assert!(mastodon.published().is_empty());
}
