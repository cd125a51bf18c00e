//! The webhook adapter against the sandbox's webhook receiver, over real
//! loopback HTTP: the document and headers sent, receipts, and how every
//! kind of failure is classified.

use std::net::SocketAddr;
use std::time::Duration;

use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::webhook::{Settings, WebhookAdapter};
use herald_adapters::{Adapter, ErrorClass, PostContent, PublishRequest, Rendered, Secret};
use herald_sandbox::{Fault, Outcome, WebhookReceiver};
use serde_json::json;

const SECRET: &str = "s3cret-signing-key";

async fn receiver(secret: Option<&str>) -> WebhookReceiver {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    WebhookReceiver::start(addr, secret.map(str::to_string)).await.unwrap()
}

fn quick() -> HttpOptions {
    HttpOptions { connect_timeout: Duration::from_secs(2), timeout: Duration::from_secs(5), ..HttpOptions::default() }
}

fn adapter(url: &str, secret: Option<&str>, http: HttpOptions) -> WebhookAdapter {
    let settings = Settings { url: url.to_string(), secret: secret.map(Secret::new), legacy_signature: false };
    WebhookAdapter::new(settings, http).unwrap()
}

/// One delivery, owning what a [`PublishRequest`] borrows.
struct Delivery {
    id: String,
    attempt: u32,
    content: Rendered,
}

impl Delivery {
    fn new(id: &str) -> Self {
        Delivery {
            id: id.to_string(),
            attempt: 1,
            content: Rendered {
                title: Some("Fraud alert".into()),
                text: "Police never ask you to move money to a \"safe account\".".into(),
                link: Some("https://example.gov.cn/alerts/42".into()),
                images: vec!["posters/alert.png".into(), "posters/qr.png".into()],
            },
        }
    }

    fn request(&self) -> PublishRequest<'_> {
        PublishRequest {
            delivery_id: &self.id,
            post_id: "fraud-alert",
            account_id: "wuhan-hook",
            occurrence: "2025-03-01T01:00:00Z",
            attempt: self.attempt,
            uncertain: false,
            content: &self.content,
        }
    }
}

#[tokio::test]
async fn a_publish_arrives_exactly_and_signed_and_returns_a_receipt() {
    let receiver = receiver(Some(SECRET)).await;
    let adapter = adapter(&receiver.url(), Some(SECRET), quick());

    let receipt = adapter.publish(Delivery::new("d-001").request()).await.unwrap();

    let received = receiver.received();
    assert_eq!(received.len(), 1);
    let post = &received[0];
    assert_eq!(
        post.body,
        Some(json!({
            "delivery_id": "d-001",
            "post_id": "fraud-alert",
            "account": "wuhan-hook",
            "occurrence": "2025-03-01T01:00:00Z",
            "attempt": 1,
            "content": {
                "title": "Fraud alert",
                "text": "Police never ask you to move money to a \"safe account\".",
                "link": "https://example.gov.cn/alerts/42",
                "images": ["posters/alert.png", "posters/qr.png"],
            },
        }))
    );
    assert_eq!(post.idempotency_key.as_deref(), Some("d-001"));
    assert_eq!(post.delivery_id.as_deref(), Some("d-001"));
    assert!(post.signature_verified(), "{:?}", post.signature);
    assert_eq!(post.path, "/hook");

    assert_eq!(receipt.remote_id.as_deref(), Some("1"));
    assert_eq!(receipt.url, Some(format!("{}/posts/1", receiver.base_url())));
    assert_eq!(receipt.answer.status, Some(200));
}

#[tokio::test]
async fn absent_content_fields_are_sent_as_null() {
    let receiver = receiver(None).await;
    let adapter = adapter(&receiver.url(), None, quick());
    let mut delivery = Delivery::new("d-002");
    delivery.content = Rendered { title: None, text: "Text only.".into(), link: None, images: vec![] };

    adapter.publish(delivery.request()).await.unwrap();

    let body = receiver.received()[0].body.clone().unwrap();
    assert_eq!(body["content"], json!({ "title": null, "text": "Text only.", "link": null, "images": [] }));
    assert!(!receiver.received()[0].signature_verified(), "no secret, no signature");
}

#[tokio::test]
async fn a_server_error_is_transient() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::status_with_body(500, "upstream down"));
    let adapter = adapter(&receiver.url(), None, quick());

    let error = adapter.publish(Delivery::new("d-500").request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Transient);
    assert_eq!(error.answer.status, Some(500));
    assert_eq!(error.answer.message.as_deref(), Some("upstream down"));
    assert!(!error.maybe_sent, "an answer says what happened");
}

#[tokio::test]
async fn a_retry_carries_the_same_key_and_publishes_once() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::status(503));
    let adapter = adapter(&receiver.url(), None, quick());
    let mut delivery = Delivery::new("d-retry");

    assert_eq!(adapter.publish(delivery.request()).await.unwrap_err().class, ErrorClass::Transient);
    delivery.attempt = 2;
    let receipt = adapter.publish(delivery.request()).await.unwrap();

    assert_eq!(receipt.remote_id.as_deref(), Some("1"));
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert!(received[1].key_seen_before);
    assert_eq!(received[1].body.as_ref().unwrap()["attempt"], 2);
    assert_eq!(receiver.accepted().len(), 1);
}

#[tokio::test]
async fn too_many_requests_is_rate_limited_for_the_retry_after() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::rate_limited(7));
    receiver.fail_next(1, Fault::rate_limited(86_400));
    let adapter = adapter(&receiver.url(), None, quick());

    let error = adapter.publish(Delivery::new("d-429").request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(7)) });
    assert_eq!(error.answer.status, Some(429));

    let clamped = adapter.publish(Delivery::new("d-429").request()).await.unwrap_err();
    assert_eq!(clamped.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(3600)) });
}

#[tokio::test]
async fn a_client_error_is_permanent_with_the_answer_excerpt() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::status_with_body(400, r#"{"error": "text contains a banned word"}"#));
    let long = "x".repeat(1000);
    receiver.fail_next(1, Fault::status_with_body(422, long.clone()));
    let adapter = adapter(&receiver.url(), None, quick());

    let error = adapter.publish(Delivery::new("d-400").request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert_eq!(error.answer.status, Some(400));
    assert_eq!(error.answer.message.as_deref(), Some(r#"{"error": "text contains a banned word"}"#));
    assert!(error.reason.contains("400"), "{}", error.reason);

    let error = adapter.publish(Delivery::new("d-422").request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Permanent);
    assert_eq!(error.answer.message, Some(long[..300].to_string()));
}

#[tokio::test]
async fn a_wrong_secret_is_refused_permanently() {
    let receiver = receiver(Some(SECRET)).await;
    let adapter = adapter(&receiver.url(), Some("not-the-secret"), quick());

    let error = adapter.publish(Delivery::new("d-401").request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Permanent);
    assert_eq!(error.answer.status, Some(401));
    assert!(matches!(receiver.received()[0].outcome, Outcome::Rejected { status: 401, .. }));
    assert!(receiver.accepted().is_empty());
}

#[tokio::test]
async fn a_timeout_is_transient_and_maybe_sent_and_the_retry_is_a_duplicate() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::Delay(Duration::from_millis(800)));
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(200),
        ..HttpOptions::default()
    };
    let adapter = adapter(&receiver.url(), None, http);
    let mut delivery = Delivery::new("d-slow");

    let error = adapter.publish(delivery.request()).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Transient);
    assert!(error.maybe_sent);
    assert_eq!(error.answer.status, None);

    // It was sent: the receiver publishes it once its delay is over, and the
    // retry with the same idempotency key gets the original post back.
    assert!(receiver.wait_until(Duration::from_secs(5), |received| received.len() == 1).await);
    delivery.attempt = 2;
    let receipt = adapter.publish(delivery.request()).await.unwrap();
    assert_eq!(receipt.remote_id.as_deref(), Some("1"));
    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(receiver.duplicates(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_transient() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::Drop);
    let adapter = adapter(&receiver.url(), None, quick());

    let error = adapter.publish(Delivery::new("d-drop").request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Transient);
    assert!(error.maybe_sent, "the request was written before the connection went");
    assert_eq!(error.answer.status, None);
    assert_eq!(receiver.received()[0].outcome, Outcome::Dropped);
}

#[tokio::test]
async fn a_refused_connection_is_transient_and_not_sent_and_names_no_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{addr}/hook?access_token=sekrit-token");
    let adapter = adapter(&url, Some(SECRET), quick());

    let error = adapter.publish(Delivery::new("d-refused").request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::Transient);
    assert!(!error.maybe_sent);
    let message = error.answer.message.clone().unwrap_or_default();
    assert!(!message.is_empty());
    for text in [&message, &error.reason, &format!("{error:?}")] {
        assert!(!text.contains("sekrit") && !text.contains("http://") && !text.contains(SECRET), "{text}");
    }
}

fn content(body: &str) -> PostContent {
    PostContent {
        title: Some("Title".into()),
        body: body.into(),
        link: Some("https://example.org".into()),
        images: vec!["a.png".into()],
    }
}

#[test]
fn render_refuses_an_empty_body_and_keeps_everything_else() {
    let adapter = adapter("http://127.0.0.1:9/hook", None, quick());
    for empty in ["", "  \n\t"] {
        let problems = adapter.render(&content(empty)).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "body");
    }
    let rendered = adapter.render(&content("Beware.")).unwrap();
    assert_eq!(
        rendered,
        Rendered {
            title: Some("Title".into()),
            text: "Beware.".into(),
            link: Some("https://example.org".into()),
            images: vec!["a.png".into()],
        }
    );
}

#[test]
fn the_secret_never_shows_in_debug_output() {
    let settings = Settings {
        url: "https://hooks.example.org/hook".into(),
        secret: Some(Secret::new(SECRET)),
        legacy_signature: false,
    };
    let adapter = WebhookAdapter::new(settings.clone(), quick()).unwrap();
    let account = AccountSettings::Webhook(settings.clone());
    for shown in [format!("{settings:?}"), format!("{adapter:?}"), format!("{account:?}"), format!("{settings:#?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
    }
}

#[tokio::test]
async fn the_registry_builds_a_working_adapter_from_account_settings() {
    let receiver = receiver(Some(SECRET)).await;
    let table = json!({ "url": receiver.url(), "secret": SECRET });
    let settings = AccountSettings::deserialize(Platform::Webhook, table).unwrap();
    assert_eq!(settings.platform(), Platform::Webhook);
    let adapter = registry::build(&settings, quick(), &herald_adapters::Services::in_memory("test")).unwrap();
    assert_eq!(adapter.platform(), Platform::Webhook);

    let receipt = adapter.publish(Delivery::new("d-registry").request()).await.unwrap();

    assert_eq!(receipt.remote_id.as_deref(), Some("1"));
    assert!(receiver.received()[0].signature_verified());
    let unknown = AccountSettings::deserialize(Platform::Webhook, json!({ "url": "http://x/", "token": "t" }));
    assert!(unknown.unwrap_err().to_string().contains("unknown field `token`"));
}

#[tokio::test]
async fn signed_the_standard_way_with_a_whsec_secret_and_the_legacy_header_on_request() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = receiver(Some(secret)).await;
    let settings = Settings { url: receiver.url(), secret: Some(Secret::new(secret)), legacy_signature: true };
    let adapter = WebhookAdapter::new(settings, quick()).unwrap();

    adapter.publish(Delivery::new("d-std").request()).await.unwrap();
    // A retry is signed afresh with the same webhook-id: the same post.
    adapter.publish(Delivery::new("d-std").request()).await.unwrap();

    let received = receiver.received();
    assert!(received.iter().all(|post| post.signature_verified()), "{received:?}");
    assert_eq!(received[0].webhook_headers[0], ("webhook-id".to_string(), "d-std".to_string()));
    assert_eq!(receiver.accepted().len(), 1);
    assert!(matches!(received[1].outcome, Outcome::Duplicate { .. }));
}

/// Writes one request signed by herald, as the sandbox received it, to
/// `$HERALD_WEBHOOK_SAMPLE` for the Standard Webhooks reference verifier
/// (`.ci/run`'s step, `adapters/tests/verify_standard_webhook.py`).
#[tokio::test]
#[ignore = "run by .ci/run with HERALD_WEBHOOK_SAMPLE set"]
async fn write_a_signed_request_for_the_reference_verifier() {
    let path = std::env::var("HERALD_WEBHOOK_SAMPLE").expect("HERALD_WEBHOOK_SAMPLE names the file to write");
    let secret = std::env::var("HERALD_WEBHOOK_SECRET").expect("HERALD_WEBHOOK_SECRET holds the whsec_ secret");
    let receiver = receiver(Some(&secret)).await;
    let settings = Settings { url: receiver.url(), secret: Some(Secret::new(&secret)), legacy_signature: false };
    let adapter = WebhookAdapter::new(settings, quick()).unwrap();
    let mut delivery = Delivery::new("d-reference");
    delivery.content.text = "非 ASCII text, \"quotes\" and a newline\nsurvive signing.".into();

    adapter.publish(delivery.request()).await.unwrap();

    assert!(receiver.received()[0].signature_verified());
    receiver.dump_first_accepted(std::path::Path::new(&path)).unwrap();
}

#[tokio::test]
async fn a_503_with_retry_after_waits_as_asked() {
    let receiver = receiver(None).await;
    let adapter = adapter(&receiver.url(), None, quick());
    receiver.fail_next(
        1,
        Fault::Status(herald_sandbox::faults::StatusFault { status: 503, retry_after: Some(90), body: None }),
    );

    let error = adapter.publish(Delivery::new("d-503").request()).await.unwrap_err();

    assert_eq!(error.class, ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(90)) });
    assert!(error.reason.contains("retry after 90s"), "{}", error.reason);
}
