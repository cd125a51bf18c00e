//! `herald demo`: herald's main job, end to end, on this machine only. It
//! starts the sandbox (local emulators of Weibo, WeChat, Tieba, Discourse,
//! Mastodon and a webhook receiver), writes a config for two cities' accounts
//! and an archive, runs the daemon on a temporary state directory until every
//! delivery has settled, and prints the audit log. On the way, Weibo answers
//! one request with a rate limit, the archive fails twice, and the WeChat
//! access token expires mid-run: the log shows the wait, the retries and the
//! token refresh, and every post delivered with its URL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{SecondsFormat, Utc};
use herald_sandbox::tieba::{SANDBOX_BDUSS, SANDBOX_FID, SANDBOX_FORUM};
use herald_sandbox::wechat::{SANDBOX_APPID, SANDBOX_SECRET};
use herald_sandbox::{Fault, Sandbox, SandboxOptions};

use crate::config;
use crate::daemon::Daemon;
use crate::model::{Event, State};
use crate::notify::Notifier;
use crate::store::AuditQuery;

const SECRET: &str = "demo-signing-key-not-for-production";
const DEADLINE: Duration = Duration::from_secs(120);
/// The example cover image, so WeChat articles have one.
const COVER: &[u8] = include_bytes!("../../examples/images/anti-fraud-cover.jpg");
/// Weibo's "too many posts by this user" (rate limited until the next hour).
const WEIBO_USER_RATE_LIMIT: u32 = 10023;

pub async fn run() -> anyhow::Result<()> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let options = SandboxOptions { webhook_secret: Some(SECRET.into()), ..SandboxOptions::default() };
    let sandbox = Sandbox::start(loopback, options).await.context("starting the sandbox emulators")?;
    sandbox.weibo.answer_next(1, WEIBO_USER_RATE_LIMIT);
    sandbox.webhook.fail_next(2, Fault::status(503));

    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let root = dir.path();
    let write = |name: &str, bytes: &[u8]| std::fs::write(root.join(name), bytes);
    write("webhook-secret", SECRET.as_bytes())?;
    write("wuhan-weibo.token", b"sandbox-wuhan-weibo")?;
    write("xian-weibo.token", b"sandbox-xian-weibo")?;
    write("wuhan-wechat.secret", SANDBOX_SECRET.as_bytes())?;
    write("wuhan-tieba.bduss", SANDBOX_BDUSS.as_bytes())?;
    write("forum.key", b"sandbox-forum-key")?;
    write("mastodon.token", b"sandbox-mastodon")?;
    write("cover.jpg", COVER)?;
    let now = Utc::now();
    let at = |secs: i64| (now + chrono::Duration::seconds(secs)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let base = format!("http://{}", sandbox.addr());
    let text = format!(
        r#"# A demo office: Wuhan and Xi'an on Weibo, Wuhan on WeChat and Tieba,
# a Discourse forum, a Mastodon account, and an archive webhook.
[daemon]
state_dir = "state"
time_zone = "Asia/Shanghai"

[retry]
max_attempts = 5
initial_backoff = "1s"
max_backoff = "4s"
max_retry_after = "5s"     # the demo does not wait for Weibo's next hour

[accounts.wuhan-weibo]
platform = "weibo"
base_url = "{base}/weibo"
access_token = {{ file = "wuhan-weibo.token" }}
safe_domain = "example.gov.cn"
rip = "127.0.0.1"

[accounts.xian-weibo]
platform = "weibo"
base_url = "{base}/weibo"
access_token = {{ file = "xian-weibo.token" }}
safe_domain = "example.gov.cn"
rip = "127.0.0.1"

[accounts.wuhan-wechat]
platform = "wechat"
base_url = "{base}/wechat"
appid = "{SANDBOX_APPID}"
secret = {{ file = "wuhan-wechat.secret" }}
author = "Wuhan Police"
poll_interval = "500ms"

[accounts.wuhan-tieba]
platform = "tieba"
base_url = "{base}/tieba"
bduss = {{ file = "wuhan-tieba.bduss" }}
forum = "{SANDBOX_FORUM}"
fid = {SANDBOX_FID}

[accounts.city-forum]
platform = "discourse"
base_url = "{base}/discourse"
api_key = {{ file = "forum.key" }}
api_username = "herald"
category = 4

[accounts.city-mastodon]
platform = "mastodon"
base_url = "{base}/mastodon"
access_token = {{ file = "mastodon.token" }}

[accounts.archive]
platform = "webhook"
url = "{hook}"
secret = {{ file = "webhook-secret" }}

[groups]
weibo = ["wuhan-weibo", "xian-weibo"]
everyone = ["weibo", "wuhan-wechat", "wuhan-tieba", "city-forum", "city-mastodon", "archive"]

[[posts]]
id = "refund-call-warning"
title = "Warning: fake refund calls"
body = "Callers posing as shop staff offer a refund and ask for a bank code. Hang up: no real refund needs your code."
link = "https://www.example.gov.cn/warnings/refund-calls"
images = ["cover.jpg"]
targets = ["everyone"]
at = "{first}"

[posts.overrides.weibo]
body = "Fake refund calls: never give a bank code. No real refund needs it."

[posts.overrides.tieba]
images = []

[posts.overrides.discourse]
images = []

[[posts]]
id = "campus-loan-education"
title = "Campus loans: read first"
body = "Loans advertised as no interest and no checks often hide fees. Ask your school's office first."
link = "https://www.example.gov.cn/education/campus-loans"
images = ["cover.jpg"]
targets = ["everyone"]
at = "{second}"

[posts.overrides.weibo]
body = "Campus loans with no interest and no checks hide fees. Ask your school first."

[posts.overrides.tieba]
images = []

[posts.overrides.discourse]
images = []
"#,
        hook = sandbox.webhook.url(),
        first = at(3),
        second = at(9),
    );
    let path = root.join("herald.toml");
    std::fs::write(&path, &text)?;
    println!("herald demo: 7 accounts on 6 platforms (local emulators), 2 posts due in 3 and 9 seconds.");
    println!("Weibo answers one request 'rate limited', the archive fails twice (HTTP 503),");
    println!("and the WeChat access token expires between the two posts.\n");

    let outcome = config::load(&path);
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    let config = outcome.config.ok_or_else(|| anyhow::anyhow!("the demo config is invalid:\n{}", errors.join("\n")))?;
    let expected = config.posts.values().map(|p| p.targets.len() as u64).sum::<u64>();
    let daemon = Daemon::start(config, Arc::new(Notifier::disabled()))?;
    let store = Arc::clone(&daemon.store);
    let started = tokio::time::Instant::now();
    let mut token_expired = false;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !token_expired && !sandbox.wechat.published().is_empty() {
            sandbox.wechat.expire_tokens();
            token_expired = true;
            println!("(demo: every WeChat access token issued so far is now expired)");
        }
        let counts = store.counts()?;
        let open = counts[&State::Pending] + counts[&State::InFlight];
        let settled = counts[&State::Delivered] + counts[&State::Failed];
        if open == 0 && settled >= expected {
            break;
        }
        if started.elapsed() > DEADLINE {
            anyhow::bail!("the demo did not settle within {}s", DEADLINE.as_secs());
        }
    }
    daemon.stop().await?;

    println!("\naudit log (herald log):\n");
    let records = store.audit(&AuditQuery::default())?;
    let mut out = std::io::stdout().lock();
    crate::cli::print_table(&records, &mut out)?;
    let count = |e: Event| records.iter().filter(|r| r.event == e).count();
    let counts = store.counts()?;
    println!(
        "\n{} delivered, {} failed; {} retries, {} credential refresh(es); every URL above is the emulator's receipt.",
        counts[&State::Delivered],
        counts[&State::Failed],
        count(Event::RetryScheduled),
        count(Event::CredentialsRefreshed),
    );
    Ok(())
}
