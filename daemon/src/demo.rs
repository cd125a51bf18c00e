//! `herald demo`: herald's main job, end to end, on this machine only. It
//! starts local webhook receivers (the sandbox), writes a small config for
//! three city accounts, runs the daemon on a temporary state directory until
//! every delivery has settled (one receiver fails twice first, so a retry
//! shows), then prints the audit log.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use chrono::{SecondsFormat, Utc};
use herald_sandbox::{Fault, WebhookReceiver};

use crate::config;
use crate::model::State;
use crate::service::Daemon;
use crate::store::{AuditQuery, Store};

const SECRET: &str = "demo-signing-key-not-for-production";
const DEADLINE: Duration = Duration::from_secs(90);

pub async fn run() -> anyhow::Result<()> {
    let loopback: SocketAddr = "127.0.0.1:0".parse()?;
    let healthy = WebhookReceiver::start(loopback, Some(SECRET.into())).await.context("starting a webhook receiver")?;
    let flaky = WebhookReceiver::start(loopback, Some(SECRET.into())).await.context("starting a webhook receiver")?;
    flaky.fail_next(2, Fault::status(503));

    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    std::fs::write(dir.path().join("webhook-secret"), SECRET)?;
    let now = Utc::now();
    let at = |secs: i64| (now + chrono::Duration::seconds(secs)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let text = format!(
        r#"# A demo office: three cities, one webhook account each.
[daemon]
state_dir = "state"
time_zone = "Asia/Shanghai"

[retry]
max_attempts = 5
initial_backoff = "1s"
max_backoff = "4s"

[accounts.wuhan-hook]
platform = "webhook"
url = "{healthy}/wuhan"
secret = {{ file = "webhook-secret" }}

[accounts.nanjing-hook]
platform = "webhook"
url = "{flaky}"
secret = {{ file = "webhook-secret" }}

[accounts.xian-hook]
platform = "webhook"
url = "{healthy}/xian"
secret = {{ file = "webhook-secret" }}

[groups]
all-cities = ["wuhan-hook", "nanjing-hook", "xian-hook"]

[[posts]]
id = "fraud-warning-demo"
title = "Warning: fake 'refund' calls"
body = "Callers posing as shop staff offer a refund and ask for a bank code. Hang up: no real refund needs your code."
link = "https://example.org/warnings/refund-calls"
targets = ["all-cities"]
at = "{first}"

[[posts]]
id = "campus-loan-education"
title = "Campus loans: read before you sign"
body = "Loans advertised as 'no interest, no checks' often hide fees. Ask your school's office first."
targets = ["wuhan-hook", "xian-hook"]
at = "{second}"
"#,
        healthy = healthy.base_url(),
        flaky = flaky.url(),
        first = at(3),
        second = at(5),
    );
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, &text)?;
    println!("herald demo: 3 webhook accounts on local receivers, 2 posts due in 3 and 5 seconds;");
    println!("the nanjing receiver fails its first 2 requests (HTTP 503), so herald retries.\n");

    let outcome = config::load(&path);
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    let config = outcome.config.ok_or_else(|| anyhow::anyhow!("the demo config is invalid:\n{}", errors.join("\n")))?;
    let daemon = Daemon::start(config, std::sync::Arc::new(crate::notify::Notifier::disabled()))?;
    let store = std::sync::Arc::clone(&daemon.store);
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let counts = store.counts()?;
        let open = counts[&State::Pending] + counts[&State::InFlight];
        let settled = counts[&State::Delivered] + counts[&State::Failed];
        if open == 0 && settled >= 5 {
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
    let counts = store.counts()?;
    println!(
        "\n{} delivered, {} failed; the receivers accepted {} posts, every one signed and verified: {}",
        counts[&State::Delivered],
        counts[&State::Failed],
        healthy.accepted().len() + flaky.accepted().len(),
        healthy.accepted().iter().chain(flaky.accepted().iter()).all(|p| p.signature_verified())
    );
    Ok(())
}
