//! The webhook receiver over real loopback HTTP: de-duplication, Standard
//! Webhooks signature checks with their tolerance window (replays),
//! injected faults, and the `/_sandbox/*` control API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use herald_sandbox::{Fault, Outcome, ReceivedPost, Signature, WebhookReceiver};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const ANY_PORT: &str = "127.0.0.1:0";

async fn receiver(secret: Option<&str>) -> WebhookReceiver {
    let addr: SocketAddr = ANY_PORT.parse().unwrap();
    WebhookReceiver::start(addr, secret.map(str::to_string)).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`.
fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A signature as sent: the `webhook-timestamp` and `webhook-signature` values.
type Signed = (i64, String);

/// POST `body` with an optional idempotency key (also the `webhook-id`) and signature.
async fn deliver(url: &str, key: Option<&str>, signed: Option<&Signed>, body: &str) -> reqwest::Response {
    let mut request = client().post(url).header("content-type", "application/json").body(body.to_string());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key).header("X-Herald-Delivery", key).header("webhook-id", key);
    }
    if let Some((timestamp, signature)) = signed {
        request = request.header("webhook-timestamp", timestamp.to_string()).header("webhook-signature", signature);
    }
    request.send().await.unwrap()
}

async fn answer_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const BODY: &str = r#"{"delivery_id": "d1", "content": {"text": "beware of fake refund calls"}}"#;

#[tokio::test]
async fn a_repeated_idempotency_key_answers_the_original_post() {
    let receiver = receiver(None).await;
    let url = receiver.url();

    let (status, first) = answer_json(deliver(&url, Some("key-1"), None, BODY).await).await;
    assert_eq!(status, 200);
    let expected = json!({ "id": "1", "url": format!("{}/posts/1", receiver.base_url()) });
    assert_eq!(first, expected);

    let (status, again) = answer_json(deliver(&url, Some("key-1"), None, BODY).await).await;
    assert_eq!((status, &again), (200, &expected));

    let (_, other) = answer_json(deliver(&url, Some("key-2"), None, BODY).await).await;
    assert_eq!(other["id"], "2");

    assert_eq!(receiver.accepted().len(), 2);
    assert_eq!(receiver.duplicates(), 1);
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    assert!(!received[0].key_seen_before);
    assert!(received[1].key_seen_before);
    assert_eq!(
        received[1].outcome,
        Outcome::Duplicate { id: "1".into(), url: expected["url"].as_str().unwrap().into() }
    );
    assert_eq!(received[1].post(), received[0].post());
    assert_eq!(received[0].idempotency_key.as_deref(), Some("key-1"));
    assert_eq!(received[0].delivery_id.as_deref(), Some("key-1"));
    assert_eq!(received[0].path, "/hook");
    assert_eq!(received[0].body, Some(serde_json::from_str::<Value>(BODY).unwrap()));
    assert_eq!(received[0].signature, Signature::Unchecked);
}

#[tokio::test]
async fn without_a_key_every_post_is_new() {
    let receiver = receiver(None).await;
    deliver(&receiver.url(), None, None, BODY).await;
    deliver(&receiver.url(), None, None, BODY).await;
    assert_eq!(receiver.accepted().len(), 2);
    assert_eq!(receiver.duplicates(), 0);
}

#[tokio::test]
async fn a_key_first_refused_then_accepted_is_not_a_duplicate() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::status(503));
    assert_eq!(deliver(&receiver.url(), Some("k"), None, BODY).await.status(), 503);
    assert_eq!(deliver(&receiver.url(), Some("k"), None, BODY).await.status(), 200);
    let received = receiver.received();
    assert_eq!(received[0].outcome, Outcome::Faulted { status: 503 });
    assert!(matches!(received[1].outcome, Outcome::Accepted { .. }));
    assert!(received[1].key_seen_before, "the retry carries a key seen before");
    assert_eq!(receiver.duplicates(), 0);
}

#[tokio::test]
async fn posts_on_any_path_are_received_and_readable_at_their_url() {
    let receiver = receiver(None).await;
    let url = format!("{}/some/other/path", receiver.base_url());
    let (_, post) = answer_json(deliver(&url, Some("k"), None, BODY).await).await;
    assert_eq!(receiver.received()[0].path, "/some/other/path");

    let shown: Value = client().get(post["url"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown, serde_json::from_str::<Value>(BODY).unwrap());
    let missing = client().get(format!("{}/posts/99", receiver.base_url())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let get_hook = client().get(receiver.url()).send().await.unwrap();
    assert_eq!(get_hook.status(), 405);
}

#[tokio::test]
async fn signatures_are_verified_when_a_secret_is_set() {
    let receiver = receiver(Some("s3cret")).await;
    let url = receiver.url();
    let key = b"s3cret";
    let at = now();
    let signed = |id: &str, key: &[u8], body: &[u8]| (at, sign(key, id, at, body));

    assert_eq!(deliver(&url, Some("a"), Some(&signed("a", key, BODY.as_bytes())), BODY).await.status(), 200);
    assert_eq!(deliver(&url, Some("b"), None, BODY).await.status(), 401);
    assert_eq!(deliver(&url, Some("c"), Some(&signed("c", b"other", BODY.as_bytes())), BODY).await.status(), 401);
    assert_eq!(deliver(&url, Some("d"), Some(&signed("d", key, b"{}")), BODY).await.status(), 401);
    assert_eq!(deliver(&url, Some("e"), Some(&(at, "v1,zz".into())), BODY).await.status(), 401);
    let unversioned = signed("f", key, BODY.as_bytes()).1.trim_start_matches("v1,").to_string();
    assert_eq!(deliver(&url, Some("f"), Some(&(at, unversioned)), BODY).await.status(), 401);
    // The id is signed: another id with a's signature is refused.
    assert_eq!(deliver(&url, Some("g"), Some(&signed("a", key, BODY.as_bytes())), BODY).await.status(), 401);
    // One good signature in a list is enough (key rotation).
    let list = format!("v1,AAAA {}", signed("h", key, BODY.as_bytes()).1);
    assert_eq!(deliver(&url, Some("h"), Some(&(at, list)), BODY).await.status(), 200);

    let received = receiver.received();
    let signatures: Vec<Signature> = received.iter().map(|post| post.signature).collect();
    use Signature::*;
    assert_eq!(signatures, [Valid, Missing, Invalid, Invalid, Invalid, Invalid, Invalid, Valid]);
    assert!(received[0].signature_verified());
    assert!(received[1..7].iter().all(|post| matches!(post.outcome, Outcome::Rejected { status: 401, .. })));
    assert_eq!(receiver.accepted().len(), 2);
    let names: Vec<&str> = received[0].webhook_headers.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["webhook-id", "webhook-timestamp", "webhook-signature"]);
    assert_eq!(received[0].raw_body, BODY);
}

#[tokio::test]
async fn replays_are_refused_outside_the_window_and_answered_once_inside_it() {
    let secret = format!("whsec_{}", STANDARD.encode(b"a key of the standard form"));
    let receiver = receiver(Some(&secret)).await;
    let url = receiver.url();
    let key = b"a key of the standard form";

    let at = now();
    let captured = (at, sign(key, "msg-1", at, BODY.as_bytes()));
    assert_eq!(deliver(&url, Some("msg-1"), Some(&captured), BODY).await.status(), 200);
    // The same request again at once: the same post, no new one.
    let (status, again) = answer_json(deliver(&url, Some("msg-1"), Some(&captured), BODY).await).await;
    assert_eq!((status, again["id"].as_str()), (200, Some("1")));

    // Captured six minutes ago (or dated six minutes ahead): refused, even
    // under a new id, whose signature matches.
    for offset in [-6 * 60, 6 * 60] {
        let stale = (at + offset, sign(key, "msg-2", at + offset, BODY.as_bytes()));
        assert_eq!(deliver(&url, Some("msg-2"), Some(&stale), BODY).await.status(), 401);
    }
    let received = receiver.received();
    assert_eq!(received[2].signature, Signature::Stale);
    assert_eq!(received[3].signature, Signature::Stale);
    assert_eq!(receiver.accepted().len(), 1);
}

#[tokio::test]
async fn a_bad_receiver_secret_is_refused() {
    let addr: SocketAddr = ANY_PORT.parse().unwrap();
    for secret in ["", "whsec_", "whsec_!!"] {
        assert!(WebhookReceiver::start(addr, Some(secret.into())).await.is_err(), "{secret:?}");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_rejected() {
    let receiver = receiver(None).await;
    let response = deliver(&receiver.url(), Some("k"), None, "not json").await;
    assert_eq!(response.status(), 400);
    assert_eq!(receiver.received()[0].body, None);
    assert!(matches!(receiver.received()[0].outcome, Outcome::Rejected { status: 400, .. }));
}

#[tokio::test]
async fn status_faults_apply_in_order_with_retry_after_and_body() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::rate_limited(7));
    receiver.fail_next(1, Fault::status_with_body(400, r#"{"error": "banned word"}"#));
    receiver.fail_next(1, Fault::status_with_body(500, "try later"));

    let limited = deliver(&receiver.url(), Some("k"), None, BODY).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "7");

    let refused = deliver(&receiver.url(), Some("k"), None, BODY).await;
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.headers()["content-type"], "application/json");
    assert_eq!(refused.text().await.unwrap(), r#"{"error": "banned word"}"#);

    let failed = deliver(&receiver.url(), Some("k"), None, BODY).await;
    assert_eq!(failed.status(), 500);
    assert!(failed.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    assert_eq!(failed.text().await.unwrap(), "try later");

    assert_eq!(deliver(&receiver.url(), Some("k"), None, BODY).await.status(), 200);
    assert_eq!(receiver.accepted().len(), 1);
}

#[tokio::test]
async fn a_dropped_connection_gets_no_answer_and_no_post() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::Drop);
    let error = client().post(receiver.url()).body(BODY).send().await.unwrap_err();
    assert!(!error.is_timeout() && !error.is_connect(), "{error:?}");
    assert_eq!(receiver.received()[0].outcome, Outcome::Dropped);
    assert_eq!(deliver(&receiver.url(), None, None, BODY).await.status(), 200);
}

#[tokio::test]
async fn a_delayed_request_still_goes_through_after_the_client_gave_up() {
    let receiver = receiver(None).await;
    receiver.fail_next(1, Fault::Delay(Duration::from_millis(600)));
    let impatient = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(150)).build().unwrap();
    let error = impatient.post(receiver.url()).header("Idempotency-Key", "k").body(BODY).send().await.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(receiver.received().is_empty(), "still waiting");
    assert!(receiver.wait_until(Duration::from_secs(5), |received| received.len() == 1).await);
    assert!(matches!(receiver.received()[0].outcome, Outcome::Accepted { .. }));
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let receiver = receiver(None).await;
    receiver.set_latency(Duration::from_millis(200));
    let started = Instant::now();
    deliver(&receiver.url(), None, None, BODY).await;
    deliver(&receiver.url(), None, None, BODY).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
}

async fn control(receiver: &WebhookReceiver, path: &str, body: Value) -> reqwest::Response {
    client().post(format!("{}/_sandbox/{path}", receiver.base_url())).json(&body).send().await.unwrap()
}

async fn received_over_http(receiver: &WebhookReceiver) -> Vec<ReceivedPost> {
    let url = format!("{}/_sandbox/received", receiver.base_url());
    client().get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn the_control_api_sets_faults_lists_and_resets() {
    let receiver = receiver(None).await;

    let planned = control(&receiver, "faults", json!({ "count": 2, "status": 429, "retry_after": 3 })).await;
    assert_eq!(planned.status(), 204);
    for _ in 0..2 {
        let limited = deliver(&receiver.url(), Some("k"), None, BODY).await;
        assert_eq!((limited.status().as_u16(), limited.headers()["retry-after"].to_str().unwrap()), (429, "3"));
    }
    assert_eq!(deliver(&receiver.url(), Some("k"), None, BODY).await.status(), 200);

    let received = received_over_http(&receiver).await;
    assert_eq!(received, receiver.received());
    let outcomes: Vec<&str> = received.iter().map(|post| outcome_kind(&post.outcome)).collect();
    assert_eq!(outcomes, ["faulted", "faulted", "accepted"]);

    let raw: Value =
        client().get(format!("{}/_sandbox/received", receiver.base_url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        raw[2]["outcome"],
        json!({ "kind": "accepted", "id": "1", "url": format!("{}/posts/1", receiver.base_url()) })
    );
    assert_eq!(raw[0]["outcome"], json!({ "kind": "faulted", "status": 429 }));

    let dropped = control(&receiver, "faults", json!({ "drop": true })).await;
    assert_eq!(dropped.status(), 204);
    assert!(client().post(receiver.url()).body(BODY).send().await.is_err());

    let refused = control(&receiver, "faults", json!({ "status": 500, "drop": true })).await;
    assert_eq!(refused.status(), 400);
    let message: Value = refused.json().await.unwrap();
    assert!(message["error"].as_str().unwrap().contains("exactly one"), "{message}");

    assert_eq!(control(&receiver, "latency", json!({ "latency_ms": 150 })).await.status(), 204);
    let started = Instant::now();
    deliver(&receiver.url(), None, None, BODY).await;
    assert!(started.elapsed() >= Duration::from_millis(150));

    assert_eq!(control(&receiver, "faults", json!({ "count": 5, "status": 500 })).await.status(), 204);
    assert_eq!(control(&receiver, "latency", json!({ "latency_ms": 4000 })).await.status(), 204);
    assert_eq!(control(&receiver, "reset", json!({})).await.status(), 204);
    assert!(received_over_http(&receiver).await.is_empty());
    let started = Instant::now();
    let (status, post) = answer_json(deliver(&receiver.url(), Some("k"), None, BODY).await).await;
    assert!(started.elapsed() < Duration::from_secs(2), "latency was reset");
    assert_eq!(status, 200, "faults were reset");
    assert_eq!(post["id"], "3", "ids keep counting after a reset; the key was forgotten");
    assert_eq!(receiver.duplicates(), 0);
}

fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Accepted { .. } => "accepted",
        Outcome::Duplicate { .. } => "duplicate",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Faulted { .. } => "faulted",
        Outcome::Recalled { .. } => "recalled",
        Outcome::Dropped => "dropped",
    }
}

#[tokio::test]
async fn shutdown_closes_the_port_and_cuts_delays_short() {
    let receiver = receiver(None).await;
    let url = receiver.url();
    receiver.fail_next(1, Fault::Delay(Duration::from_secs(60)));
    let slow = tokio::spawn(async move { deliver(&url, None, None, BODY).await.status() });
    assert!(!receiver.wait_until(Duration::from_millis(100), |received| !received.is_empty()).await);

    let url = receiver.url();
    let started = Instant::now();
    receiver.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(slow.await.unwrap(), 200, "the request in progress was answered");
    let error = client().post(&url).body(BODY).send().await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let receiver = receiver(None).await;
    let url = receiver.url();
    drop(receiver);
    let mut refused = false;
    for _ in 0..50 {
        match client().post(&url).body(BODY).send().await {
            Err(error) if error.is_connect() => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(refused, "the port still answers after the handle was dropped");
}

#[tokio::test]
async fn an_empty_secret_is_refused() {
    let error = WebhookReceiver::start(ANY_PORT.parse().unwrap(), Some(String::new())).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
