//! The emulators' delete calls over real loopback HTTP, as `herald-sandbox`
//! serves them: a deleted item is shown deleted by the control API, the
//! platform's own view no longer serves it, and faults planned over HTTP
//! hit the delete calls too.

use std::time::Duration;

use herald_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

async fn get(url: String) -> (u16, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn mastodon_delete_is_shown_deleted_and_faults_hit_it() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxOptions::default()).await.unwrap();
    let base = format!("http://{}/mastodon", sandbox.addr());
    let create = |text: &'static str| {
        client().post(format!("{base}/api/v1/statuses")).bearer_auth("sandbox-m").form(&[("status", text)]).send()
    };
    let first: Value = create("River levels are rising.").await.unwrap().json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    let delete = || client().delete(format!("{base}/api/v1/statuses/{id}")).bearer_auth("sandbox-m").send();

    // A fault planned over HTTP answers the DELETE instead; nothing is deleted.
    let planned = client().post(format!("{base}/_sandbox/faults")).json(&json!({ "status": 503 })).send();
    assert_eq!(planned.await.unwrap().status().as_u16(), 204);
    assert_eq!(delete().await.unwrap().status().as_u16(), 503);
    let (_, listed) = get(format!("{base}/_sandbox/published")).await;
    assert!(listed[0].get("deleted_at").is_none(), "{listed}");

    assert_eq!(delete().await.unwrap().status().as_u16(), 200);
    let (_, listed) = get(format!("{base}/_sandbox/published")).await;
    assert!(listed[0]["deleted_at"].is_string(), "shown deleted: {listed}");
    let shown = client().get(format!("{base}/api/v1/statuses/{id}")).bearer_auth("sandbox-m").send();
    assert_eq!(shown.await.unwrap().status().as_u16(), 404, "the status is gone");
    assert_eq!(delete().await.unwrap().status().as_u16(), 404, "deleting it again: not found");
}

#[tokio::test]
async fn weibo_destroy_is_shown_deleted_and_leaves_the_timeline() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxOptions::default()).await.unwrap();
    let base = format!("http://{}/weibo", sandbox.addr());
    let shared: Value = client()
        .post(format!("{base}/2/statuses/share.json"))
        .form(&[("access_token", "sandbox-w"), ("status", "提示 https://example.gov.cn/a"), ("rip", "203.0.113.7")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = shared["idstr"].as_str().unwrap().to_string();
    let destroy = || {
        client()
            .post(format!("{base}/2/statuses/destroy.json"))
            .form(&[("access_token", "sandbox-w"), ("id", id.as_str())])
            .send()
    };
    let destroyed: Value = destroy().await.unwrap().json().await.unwrap();
    assert_eq!(destroyed["idstr"], id.as_str());
    let (_, listed) = get(format!("{base}/_sandbox/published")).await;
    assert!(listed[0]["deleted_at"].is_string(), "shown deleted: {listed}");
    let timeline = client()
        .get(format!("{base}/2/statuses/user_timeline.json"))
        .header("Authorization", "OAuth2 sandbox-w")
        .send()
        .await
        .unwrap();
    let timeline: Value = timeline.json().await.unwrap();
    assert_eq!(timeline["statuses"].as_array().map(Vec::len), Some(0), "{timeline}");
    let again: Value = destroy().await.unwrap().json().await.unwrap();
    assert_eq!(again["error_code"], 20101, "{again}");
}

#[tokio::test]
async fn a_webhook_recall_event_marks_the_post_recalled() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxOptions::default()).await.unwrap();
    let root = format!("http://{}", sandbox.addr());
    let hook = format!("{root}/hook");
    let delivery = json!({ "delivery_id": "d1", "post_id": "p", "account": "a", "content": { "text": "x" } });
    let accepted: Value = client()
        .post(&hook)
        .header("X-Herald-Delivery", "d1")
        .header("Idempotency-Key", "d1")
        .json(&delivery)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let post_url = accepted["url"].as_str().unwrap().to_string();
    assert_eq!(get(post_url.clone()).await.0, 200);
    let recall = json!({ "type": "herald.recall", "delivery_id": "d1", "post_id": "p", "account": "a" });
    let answered = client().post(&hook).header("Idempotency-Key", "d1.recall").json(&recall).send().await.unwrap();
    assert_eq!(answered.status().as_u16(), 200);
    let (_, received) = get(format!("{root}/_sandbox/received")).await;
    assert!(received[0]["recalled_at"].is_string(), "shown recalled: {received}");
    assert_eq!(received[1]["outcome"]["kind"], "recalled");
    assert_eq!(get(post_url).await.0, 410, "the post is gone");
    let unknown = json!({ "type": "herald.recall", "delivery_id": "never-sent" });
    let answered = client().post(&hook).json(&unknown).send().await.unwrap();
    assert_eq!(answered.status().as_u16(), 404);
}
