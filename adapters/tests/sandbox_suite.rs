//! Every adapter against the whole sandbox on one address, as
//! `herald-sandbox` serves it: the platform emulators under their prefixes,
//! reached with the documented `sandbox-` tokens.

use std::time::Duration;

use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::{PostContent, PublishRequest, Services};
use herald_sandbox::{Sandbox, SandboxOptions};
use serde_json::json;

fn request<'a>(id: &'a str, uncertain: bool, content: &'a herald_adapters::Rendered) -> PublishRequest<'a> {
    PublishRequest {
        delivery_id: id,
        post_id: "p",
        account_id: "a",
        occurrence: "2020-01-01T00:00:00+00:00",
        attempt: 1,
        uncertain,
        content,
    }
}

#[tokio::test]
async fn every_adapter_publishes_to_the_mounted_emulators() {
    let sandbox = Sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxOptions::default()).await.unwrap();
    let base = format!("http://{}", sandbox.addr());
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        ..HttpOptions::default()
    };
    let accounts = [
        (
            Platform::Weibo,
            json!({ "base_url": format!("{base}/weibo"), "access_token": "sandbox-w", "safe_domain": "example.gov.cn", "rip": "203.0.113.7" }),
        ),
        (Platform::Mastodon, json!({ "base_url": format!("{base}/mastodon"), "access_token": "sandbox-m" })),
        (
            Platform::Discourse,
            json!({ "base_url": format!("{base}/discourse"), "api_key": "sandbox-d", "api_username": "system" }),
        ),
    ];
    let post = PostContent {
        title: Some("Fraud alert: fake refund calls".into()),
        body: "Police never ask you to move money to a safe account.".into(),
        link: Some("https://www.example.gov.cn/alerts/42".into()),
        images: vec![],
    };
    for (platform, table) in accounts {
        let settings = AccountSettings::deserialize(platform, table).unwrap();
        let adapter = registry::build(&settings, http.clone(), &Services::in_memory("a")).unwrap();
        let rendered = adapter.render(&post).unwrap();
        let receipt = adapter.publish(request("d-suite", false, &rendered)).await.unwrap();
        assert!(receipt.remote_id.is_some(), "{platform}");
        adapter.probe().await.unwrap();
        if platform != Platform::Mastodon {
            let found = adapter.lookup(request("d-suite", true, &rendered)).await.unwrap();
            assert_eq!(found.map(|r| r.url), Some(receipt.url.clone()), "{platform}");
        }
    }
    assert_eq!(sandbox.weibo.published().len(), 1);
    assert_eq!(sandbox.mastodon.published().len(), 1);
    assert_eq!(sandbox.discourse.published().len(), 1);
    assert!(sandbox.webhook.received().is_empty(), "nothing fell through to the webhook");
    sandbox.shutdown().await;
}
