//! The WeChat and Tieba emulators over real loopback HTTP: what they check
//! as the real platforms do, their faults, and the combined sandbox that
//! the `herald-sandbox` binary serves.

use std::net::SocketAddr;
use std::time::Duration;

use herald_sandbox::tieba::{self, TiebaApi, TiebaConfig, TiebaEmulator, expected_sign};
use herald_sandbox::wechat::{WechatApi, WechatConfig, WechatEmulator};
use herald_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

const ANY_PORT: &str = "127.0.0.1:0";
const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 0xFF, 0xD9];
const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0];

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

async fn wechat(lifetime: Duration) -> WechatEmulator {
    let mut config = WechatConfig::new("wx-app", "wx-secret");
    config.token_lifetime = lifetime;
    WechatEmulator::start(ANY_PORT.parse::<SocketAddr>().unwrap(), config).await.unwrap()
}

/// POST JSON to `path`; the HTTP status and the JSON answer.
async fn post_json(base: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = client().post(format!("{base}{path}")).json(&body);
    if let Some(token) = token {
        request = request.query(&[("access_token", token)]);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn token(base: &str) -> String {
    let body = json!({ "grant_type": "client_credential", "appid": "wx-app", "secret": "wx-secret" });
    let (_, answer) = post_json(base, "/cgi-bin/stable_token", None, body).await;
    answer["access_token"].as_str().unwrap().to_string()
}

async fn upload(base: &str, path: &str, token: &str, kind: Option<&str>, field: &str, bytes: &[u8]) -> Value {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("f.jpg").mime_str("image/jpeg").unwrap();
    let form = reqwest::multipart::Form::new().part(field.to_string(), part);
    let mut query = vec![("access_token", token)];
    if let Some(kind) = kind {
        query.push(("type", kind));
    }
    let response = client().post(format!("{base}{path}")).query(&query).multipart(form).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

fn errcode(answer: &Value) -> i64 {
    answer["errcode"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn wechat_token_calls_check_appid_secret_and_grant() {
    let emulator = wechat(Duration::from_secs(7200)).await;
    let base = emulator.base_url();
    let call = |appid: &str, secret: &str, grant: &str| json!({ "grant_type": grant, "appid": appid, "secret": secret, "force_refresh": false });
    for (body, expected) in [
        (call("wx-other", "wx-secret", "client_credential"), 40013),
        (call("wx-app", "nope", "client_credential"), 40125),
        (call("wx-app", "wx-secret", "password"), 40002),
    ] {
        let (status, answer) = post_json(base, "/cgi-bin/stable_token", None, body).await;
        assert_eq!((status, errcode(&answer)), (200, expected), "{answer}");
    }
    let (_, first) =
        post_json(base, "/cgi-bin/stable_token", None, call("wx-app", "wx-secret", "client_credential")).await;
    assert_eq!(first["expires_in"], 7200);
    let (_, same) =
        post_json(base, "/cgi-bin/stable_token", None, call("wx-app", "wx-secret", "client_credential")).await;
    assert_eq!(same["access_token"], first["access_token"], "non-forced calls answer the current token");
    let mut forced = call("wx-app", "wx-secret", "client_credential");
    forced["force_refresh"] = json!(true);
    let (_, new) = post_json(base, "/cgi-bin/stable_token", None, forced).await;
    assert_ne!(new["access_token"], first["access_token"]);
    assert_eq!(emulator.tokens_issued(), 2);

    let classic = client()
        .get(format!("{base}/cgi-bin/token"))
        .query(&[("grant_type", "client_credential"), ("appid", "wx-app"), ("secret", "wx-secret")])
        .send()
        .await
        .unwrap();
    let classic: Value = classic.json().await.unwrap();
    assert!(classic["access_token"].as_str().is_some(), "{classic}");
}

#[tokio::test]
async fn wechat_apis_check_the_token_and_its_expiry() {
    let emulator = wechat(Duration::from_secs(1)).await;
    let base = emulator.base_url();
    let draft = json!({ "articles": [] });
    let (_, missing) = post_json(base, "/cgi-bin/draft/add", None, draft.clone()).await;
    assert_eq!(errcode(&missing), 41001);
    let (_, unknown) = post_json(base, "/cgi-bin/draft/add", Some("made-up"), draft.clone()).await;
    assert_eq!(errcode(&unknown), 40001);

    let token = token(base).await;
    let (_, empty) = post_json(base, "/cgi-bin/draft/add", Some(&token), draft.clone()).await;
    assert_eq!(errcode(&empty), 44003, "the token was accepted, the draft is empty");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, expired) = post_json(base, "/cgi-bin/draft/add", Some(&token), draft.clone()).await;
    assert_eq!(errcode(&expired), 42001);

    let token = self::token(base).await;
    emulator.expire_tokens();
    let (_, invalidated) = post_json(base, "/cgi-bin/draft/add", Some(&token), draft).await;
    assert_eq!(errcode(&invalidated), 42001);
}

#[tokio::test]
async fn wechat_uploads_drafts_and_publishing_are_checked() {
    let emulator = wechat(Duration::from_secs(7200)).await;
    let base = emulator.base_url();
    let token = token(base).await;
    let material = "/cgi-bin/material/add_material";

    assert_eq!(errcode(&upload(base, material, &token, Some("thumb"), "file", JPEG).await), 41005);
    assert_eq!(errcode(&upload(base, material, &token, Some("thumb"), "media", PNG).await), 40005);
    let mut big = JPEG.to_vec();
    big.resize(64 * 1024 + 1, 0);
    assert_eq!(errcode(&upload(base, material, &token, Some("thumb"), "media", &big).await), 40006);
    assert_eq!(errcode(&upload(base, material, &token, Some("sound"), "media", JPEG).await), 40004);
    let thumb = upload(base, material, &token, Some("thumb"), "media", JPEG).await;
    let thumb_id = thumb["media_id"].as_str().unwrap().to_string();
    let image = upload(base, "/cgi-bin/media/uploadimg", &token, None, "media", PNG).await;
    let image_url = image["url"].as_str().unwrap().to_string();

    let article = |title: &str, thumb: &str| {
        json!({ "articles": [{
            "title": title, "author": "a", "digest": "d", "thumb_media_id": thumb,
            "content": format!("<p>x</p><img src=\"{image_url}\"><img src=\"https://elsewhere.example/a.png\">"),
        }]})
    };
    let (_, long) = post_json(base, "/cgi-bin/draft/add", Some(&token), article(&"标".repeat(33), &thumb_id)).await;
    assert_eq!(errcode(&long), 45003);
    let (_, bad_thumb) = post_json(base, "/cgi-bin/draft/add", Some(&token), article("t", "nope")).await;
    assert_eq!(errcode(&bad_thumb), 40007);
    let (_, draft) = post_json(base, "/cgi-bin/draft/add", Some(&token), article("t", &thumb_id)).await;
    let draft_id = draft["media_id"].as_str().unwrap().to_string();

    let (_, bad_submit) =
        post_json(base, "/cgi-bin/freepublish/submit", Some(&token), json!({ "media_id": "x" })).await;
    assert_eq!(errcode(&bad_submit), 40007);
    emulator.set_publish_plan(herald_sandbox::wechat::PublishPlan { publishing_polls: 1, final_status: 0 });
    let (_, submitted) =
        post_json(base, "/cgi-bin/freepublish/submit", Some(&token), json!({ "media_id": draft_id })).await;
    assert_eq!(errcode(&submitted), 0);
    let publish_id = submitted["publish_id"].clone();
    let get = json!({ "publish_id": publish_id });
    let (_, first) = post_json(base, "/cgi-bin/freepublish/get", Some(&token), get.clone()).await;
    assert_eq!(first["publish_status"], 1);
    assert!(emulator.published().is_empty());
    let (_, done) = post_json(base, "/cgi-bin/freepublish/get", Some(&token), get).await;
    assert_eq!(done["publish_status"], 0);
    let url = done["article_detail"]["item"][0]["article_url"].as_str().unwrap().to_string();

    let published = emulator.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].article_url, url);
    assert_eq!(published[0].article.content, format!("<p>x</p><img src=\"{image_url}\">"), "external image stripped");
    let page = client().get(&url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<p>x</p>"), "{page}");

    let (_, unknown) = post_json(base, "/cgi-bin/freepublish/get", Some(&token), json!({ "publish_id": "1" })).await;
    assert_eq!(errcode(&unknown), herald_sandbox::wechat::UNKNOWN_PUBLISH_ID_ERRCODE);
}

#[tokio::test]
async fn wechat_errcodes_are_planned_per_api_and_through_the_control_api() {
    let emulator = wechat(Duration::from_secs(7200)).await;
    let base = emulator.base_url();
    emulator.fail_api(WechatApi::StableToken, 1, -1);
    let body = json!({ "grant_type": "client_credential", "appid": "wx-app", "secret": "wx-secret" });
    let (status, busy) = post_json(base, "/cgi-bin/stable_token", None, body.clone()).await;
    assert_eq!((status, errcode(&busy)), (200, -1));

    let plan = client()
        .post(format!("{base}/_sandbox/errcodes"))
        .json(&json!({ "api": "stable_token", "count": 1, "errcode": 40164 }))
        .send()
        .await
        .unwrap();
    assert_eq!(plan.status().as_u16(), 204);
    let (_, whitelist) = post_json(base, "/cgi-bin/stable_token", None, body.clone()).await;
    assert_eq!(errcode(&whitelist), 40164);
    let (_, ok) = post_json(base, "/cgi-bin/stable_token", None, body).await;
    assert_eq!(errcode(&ok), 0);
    let calls: Vec<Value> = client().get(format!("{base}/_sandbox/calls")).send().await.unwrap().json().await.unwrap();
    assert_eq!(calls.len(), 3);
}

/// A new-thread form, unsigned.
fn thread<'a>(tbs: &'a str, kw: &'a str, fid: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("BDUSS", "B"),
        ("_client_type", "2"),
        ("_client_version", "9.9.8.32"),
        ("anonymous", "0"),
        ("content", "c"),
        ("fid", fid),
        ("kw", kw),
        ("tbs", tbs),
        ("title", "t"),
    ]
}

/// POST a signed form to Tieba; the JSON answer.
async fn tieba_call(base: &str, path: &str, pairs: &[(&str, &str)], sign: bool) -> Value {
    let mut form: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if sign {
        let sign = expected_sign(&form);
        form.push(("sign".into(), sign));
    }
    client().post(format!("{base}{path}")).form(&form).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn tieba_checks_bduss_sign_tbs_and_forum() {
    let config = TiebaConfig { bduss: vec!["B".into()], forums: vec![("f".into(), 7)] };
    let emulator = TiebaEmulator::start(ANY_PORT.parse().unwrap(), config).await.unwrap();
    let base = emulator.base_url();

    let unsigned = tieba_call(base, "/c/s/login", &[("bdusstoken", "B")], false).await;
    assert_eq!(unsigned["error_code"], tieba::ERROR_BAD_SIGN.to_string());
    let stranger = tieba_call(base, "/c/s/login", &[("bdusstoken", "X")], true).await;
    assert_eq!(stranger["error_code"], tieba::ERROR_NOT_LOGGED_IN.to_string());
    let login = tieba_call(base, "/c/s/login", &[("bdusstoken", "B")], true).await;
    let tbs = login["anti"]["tbs"].as_str().unwrap().to_string();
    let tbs = tbs.as_str();

    let bad_tbs = tieba_call(base, "/c/c/thread/add", &thread("wrong", "f", "7"), true).await;
    assert_eq!(bad_tbs["error_code"], tieba::ERROR_BAD_TBS.to_string());
    let no_forum = tieba_call(base, "/c/c/thread/add", &thread(tbs, "g", "7"), true).await;
    assert_eq!(no_forum["error_code"], tieba::ERROR_NO_FORUM.to_string());
    let bad_fid = tieba_call(base, "/c/c/thread/add", &thread(tbs, "f", "8"), true).await;
    assert_eq!(bad_fid["error_code"], tieba::ERROR_NO_FORUM.to_string());

    // A value changed after signing breaks the sign.
    let mut tampered: Vec<(String, String)> =
        thread(tbs, "f", "7").iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let sign = expected_sign(&tampered);
    tampered[4].1 = "changed".into();
    tampered.push(("sign".into(), sign));
    let answer: Value =
        client().post(format!("{base}/c/c/thread/add")).form(&tampered).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["error_code"], tieba::ERROR_BAD_SIGN.to_string());

    let posted = tieba_call(base, "/c/c/thread/add", &thread(tbs, "f", "7"), true).await;
    assert_eq!(posted["error_code"], "0");
    assert_eq!(posted["data"]["tid"], emulator.published()[0].tid);
    assert_eq!(emulator.calls_to(TiebaApi::AddThread).len(), 5);
}

#[tokio::test]
async fn the_sandbox_serves_every_emulator_on_one_address() {
    let sandbox = Sandbox::start(ANY_PORT.parse().unwrap(), SandboxOptions::default()).await.unwrap();
    let root = format!("http://{}", sandbox.addr());
    assert_eq!(sandbox.webhook.url(), format!("{root}/hook"));
    assert_eq!(sandbox.wechat.base_url(), format!("{root}/wechat"));
    assert_eq!(sandbox.tieba.base_url(), format!("{root}/tieba"));

    let hook = client().post(sandbox.webhook.url()).json(&json!({ "a": 1 })).send().await.unwrap();
    assert_eq!(hook.status().as_u16(), 200);
    let body = json!({
        "grant_type": "client_credential",
        "appid": herald_sandbox::wechat::SANDBOX_APPID,
        "secret": herald_sandbox::wechat::SANDBOX_SECRET,
    });
    let (_, token) = post_json(sandbox.wechat.base_url(), "/cgi-bin/stable_token", None, body).await;
    assert!(token["access_token"].is_string(), "{token}");
    let login = tieba_call(sandbox.tieba.base_url(), "/c/s/login", &[("bdusstoken", tieba::SANDBOX_BDUSS)], true).await;
    assert_eq!(login["error_code"], "0");
    sandbox.shutdown().await;
}
