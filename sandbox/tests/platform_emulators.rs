//! The platform emulators' control APIs and routing, over real loopback
//! HTTP, as `herald demo` and people drive them through `herald-sandbox`.

use std::time::Duration;

use herald_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

async fn sandbox() -> (Sandbox, String) {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxOptions::default()).await.unwrap();
    let base = format!("http://{}", sandbox.addr());
    (sandbox, base)
}

async fn control(url: String, body: Value) -> u16 {
    client().post(url).json(&body).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn weibo_errors_are_planned_over_http_and_published_is_listed() {
    let (sandbox, base) = sandbox().await;
    assert_eq!(control(format!("{base}/weibo/_sandbox/errors"), json!({ "error_code": 10022 })).await, 204);
    let share = || {
        client()
            .post(format!("{base}/weibo/2/statuses/share.json"))
            .form(&[("access_token", "sandbox-w"), ("status", "提示 https://example.gov.cn/a"), ("rip", "203.0.113.7")])
            .send()
    };
    let limited: Value = share().await.unwrap().json().await.unwrap();
    assert_eq!(limited["error_code"], "10022");
    let status: Value = share().await.unwrap().json().await.unwrap();
    assert_eq!(status["text"], "提示 https://example.gov.cn/a");
    let listed: Value =
        client().get(format!("{base}/weibo/_sandbox/published")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(sandbox.weibo.published().len(), 1);

    assert_eq!(control(format!("{base}/weibo/_sandbox/reset"), json!({})).await, 204);
    assert!(sandbox.weibo.published().is_empty());
    let unknown: Value = client().get(format!("{base}/weibo/2/nope.json")).send().await.unwrap().json().await.unwrap();
    assert!(unknown["error_code"].is_number());
    assert!(sandbox.webhook.received().is_empty(), "unknown emulator paths do not reach the webhook");
}

#[tokio::test]
async fn mastodon_and_discourse_rate_limits_are_planned_over_http() {
    let (_sandbox, base) = sandbox().await;
    assert_eq!(control(format!("{base}/mastodon/_sandbox/rate_limit"), json!({ "reset_in_secs": 60 })).await, 204);
    let limited = client()
        .post(format!("{base}/mastodon/api/v1/statuses"))
        .bearer_auth("sandbox-m")
        .json(&json!({ "status": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let reset = limited.headers()["x-ratelimit-reset"].to_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(reset).is_ok(), "{reset}");

    let planned = json!({ "wait_seconds": 7, "retry_after_header": false });
    assert_eq!(control(format!("{base}/discourse/_sandbox/rate_limit"), planned).await, 204);
    let limited = client()
        .post(format!("{base}/discourse/posts.json"))
        .header("Api-Key", "sandbox-d")
        .header("Api-Username", "system")
        .json(&json!({ "title": "A long enough title", "raw": "A long enough body for the forum." }))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_none());
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["extras"]["wait_seconds"], 7);

    assert_eq!(control(format!("{base}/discourse/_sandbox/faults"), json!({ "status": 503 })).await, 204);
    let failed = client().get(format!("{base}/discourse/site.json")).send().await.unwrap();
    assert_eq!(failed.status(), 503);
}

#[tokio::test]
async fn tokens_outside_the_sandbox_prefix_are_refused() {
    let (_sandbox, base) = sandbox().await;
    let refused = client()
        .get(format!("{base}/mastodon/api/v1/accounts/verify_credentials"))
        .bearer_auth("real-looking-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let accepted = client()
        .get(format!("{base}/mastodon/api/v1/accounts/verify_credentials"))
        .bearer_auth("sandbox-anything")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
}
