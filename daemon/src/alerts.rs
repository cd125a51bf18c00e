//! Alerts: a delivery that ends `failed`, or an account paused by a rate
//! limit for longer than a threshold, is reported to a webhook (JSON, signed
//! like the webhook adapter) and/or a command (JSON on its stdin). An alert
//! is held until the scheduler's next flush has made the record it reports
//! durable (at most [`QUEUE`] held), then waits in a bounded queue ([`QUEUE`]) served by a fixed number of senders
//! ([`SENDERS`]), never blocking the scheduler; an alert that finds the
//! queue full is recorded as not sent. What is queued is sent at shutdown
//! within the shutdown deadline. Each alert is recorded in the audit log
//! (`alerted`) with what became of it. The command runs with a minimal
//! environment; the webhook client follows no redirect and uses no proxy.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use herald_adapters::webhook::Signer;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::config::AlertSettings;
use crate::model::{AuditRecord, Delivery, Event};
use crate::store::{Changes, Store};
use herald_adapters::Platform;

const SEND_LIMIT: Duration = Duration::from_secs(30);

/// What an alert is about.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alert {
    DeliveryFailed {
        reason: String,
    },
    AccountPaused {
        until: chrono::DateTime<Utc>,
        seconds: u64,
    },
    CredentialsExpiring {
        expires_at: chrono::DateTime<Utc>,
        days_left: i64,
    },
    /// The audit log's head, published outside the host (see `anchor`).
    AuditHead {
        seq: u64,
        hash: String,
        occasion: String,
    },
    /// A due delivery is held: its post needs approval (`herald approve`).
    AwaitingApproval {
        reason: String,
    },
}

impl Alert {
    fn what(&self) -> &'static str {
        match self {
            Alert::DeliveryFailed { .. } => "delivery failed",
            Alert::AccountPaused { .. } => "account paused by a rate limit",
            Alert::CredentialsExpiring { .. } => "credentials expire soon",
            Alert::AuditHead { .. } => "audit log head",
            Alert::AwaitingApproval { .. } => "post held until approved",
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(flatten)]
    alert: &'a Alert,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    post: Option<&'a str>,
    account: &'a str,
    platform: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurrence: Option<chrono::DateTime<Utc>>,
    time: chrono::DateTime<Utc>,
}

/// Alerts waiting to be sent, at most.
pub const QUEUE: usize = 256;
/// Alerts sent at once, at most (webhook requests and commands).
pub const SENDERS: usize = 4;

/// The environment of the alert command: nothing of herald's own (which
/// may hold secrets), only a fixed PATH and locale.
const COMMAND_ENV: [(&str, &str); 2] = [("PATH", "/usr/local/bin:/usr/bin:/bin"), ("LANG", "C.UTF-8")];

/// One alert to send, and the audit record that says what became of it.
struct Job {
    body: Vec<u8>,
    account: String,
    what: String,
    record: AuditRecord,
}

/// What the senders share.
struct Sender {
    settings: AlertSettings,
    signer: Option<Signer>,
    client: reqwest::Client,
    store: Arc<dyn Store>,
}

pub struct Alerter {
    sender: Arc<Sender>,
    /// Alerts raised since the scheduler's last flush, at most [`QUEUE`]:
    /// an alert leaves only once the record it reports is durable
    /// ([`Alerter::release`]), so `herald log` always shows what an alert
    /// names.
    held: std::sync::Mutex<Vec<Job>>,
    queue: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Job>>>,
    senders: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Alerter {
    /// Start the senders; must run inside a tokio runtime.
    pub fn new(settings: AlertSettings, store: Arc<dyn Store>) -> anyhow::Result<Alerter> {
        let signer = settings.secret.as_ref().map(Signer::new).transpose()?;
        // Like the adapters' client: no redirects (a redirect would re-send
        // the signed body elsewhere), no proxy from the environment.
        let client = reqwest::Client::builder()
            .timeout(SEND_LIMIT)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        let runtime = tokio::runtime::Handle::try_current()?;
        let sender = Arc::new(Sender { settings, signer, client, store });
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let senders = (0..SENDERS)
            .map(|_| {
                let (sender, rx) = (Arc::clone(&sender), Arc::clone(&rx));
                runtime.spawn(async move {
                    loop {
                        let job = rx.lock().await.recv().await;
                        let Some(job) = job else { return };
                        sender.deliver(job).await;
                    }
                })
            })
            .collect();
        Ok(Alerter {
            sender,
            held: std::sync::Mutex::new(Vec::new()),
            queue: std::sync::Mutex::new(Some(tx)),
            senders: std::sync::Mutex::new(senders),
        })
    }

    pub fn pause_threshold(&self) -> Duration {
        self.sender.settings.pause_threshold
    }

    /// How long before credentials expire to alert.
    pub fn credential_warning(&self) -> Duration {
        self.sender.settings.credential_warning
    }

    /// Queue an alert about `delivery`.
    pub fn raise(self: &Arc<Self>, delivery: &Delivery, alert: Alert) {
        let body = Body {
            alert: &alert,
            delivery: Some(delivery.id.to_string()),
            post: Some(&delivery.post_id),
            account: &delivery.account,
            platform: delivery.platform.name(),
            occurrence: Some(crate::model::from_millis(delivery.occurrence)),
            time: crate::clock::now(),
        };
        let record = AuditRecord::of(delivery, Event::Alerted, crate::clock::now());
        self.enqueue(&body, alert.what().to_string(), record);
    }

    /// Queue an alert about an account (no delivery); the audit log gets an
    /// account record of `event`.
    pub fn raise_for_account(self: &Arc<Self>, account: &str, platform: Platform, event: Event, alert: Alert) {
        let body = Body {
            alert: &alert,
            delivery: None,
            post: None,
            account,
            platform: platform.name(),
            occurrence: None,
            time: crate::clock::now(),
        };
        let what = match &alert {
            Alert::CredentialsExpiring { expires_at, days_left } => {
                format!("credentials expire at {} (in {days_left} days)", expires_at.to_rfc3339())
            }
            other => other.what().to_string(),
        };
        let record = AuditRecord::about_account(account, platform, event, crate::clock::now(), String::new());
        self.enqueue(&body, what, record);
    }

    fn enqueue(&self, body: &Body<'_>, what: String, record: AuditRecord) {
        let account = body.account.to_string();
        let Ok(body) = serde_json::to_vec(body) else {
            self.sender.record(record, &what, "could not encode the alert");
            return;
        };
        let job = Job { body, account, what, record };
        if let Ok(mut held) = self.held.lock()
            && held.len() < QUEUE
        {
            held.push(job);
            return;
        }
        tracing::warn!(account = %job.account, alert = %job.what, "not sent: too many alerts waiting");
        self.sender.record(job.record, &job.what, "not sent: too many alerts waiting");
    }

    /// Queue the alerts raised so far for sending. The scheduler calls it
    /// after a flush, which made durable the records they report.
    pub fn release(&self) {
        let held = self.held.lock().map(|mut h| std::mem::take(&mut *h)).unwrap_or_default();
        for job in held {
            self.send_later(job);
        }
    }

    fn send_later(&self, job: Job) {
        let queue = self.queue.lock().ok().and_then(|q| q.clone());
        let refused = match queue {
            Some(queue) => match queue.try_send(job) {
                Ok(()) => return,
                Err(tokio::sync::mpsc::error::TrySendError::Full(job)) => (job, "not sent: too many alerts waiting"),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(job)) => (job, "not sent: herald is stopping"),
            },
            None => (job, "not sent: herald is stopping"),
        };
        let (job, why) = refused;
        tracing::warn!(account = %job.account, alert = %job.what, "{why}");
        self.sender.record(job.record, &job.what, why);
    }

    /// Send the audit log's head (kind `audit_head`) and wait for the
    /// outcome (bounded by the send limit); the caller records it.
    pub async fn send_head(&self, seq: u64, hash: &str, occasion: &str) -> String {
        let alert = Alert::AuditHead { seq, hash: hash.to_string(), occasion: occasion.to_string() };
        let body = Body {
            alert: &alert,
            delivery: None,
            post: None,
            account: "",
            platform: "",
            occurrence: None,
            time: crate::clock::now(),
        };
        let Ok(json) = serde_json::to_vec(&body) else { return "could not encode the alert".into() };
        self.sender.send(&json, "").await
    }

    /// Stop taking alerts and send those queued, until `deadline`; what is
    /// still unsent then is given up (and said in the journal).
    pub async fn finish(&self, deadline: tokio::time::Instant) {
        drop(self.queue.lock().ok().and_then(|mut q| q.take()));
        let senders = self.senders.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();
        for mut sender in senders {
            if tokio::time::timeout_at(deadline, &mut sender).await.is_err() {
                sender.abort();
                tracing::warn!("shutdown deadline reached; alerts still queued were not sent");
            }
        }
    }
}

impl Sender {
    async fn deliver(&self, job: Job) {
        let outcome = self.send(&job.body, &job.account).await;
        // A store write and its fsync: off the async workers.
        crate::blocking::off_the_workers(|| self.record(job.record, &job.what, &outcome));
    }

    fn record(&self, mut record: AuditRecord, what: &str, outcome: &str) {
        record.reason = Some(format!("alert ({what}): {outcome}"));
        let changes = Changes { notes: vec![record], ..Changes::default() };
        if let Err(e) = self.store.apply(changes).and_then(|_| self.store.flush()) {
            tracing::error!(error = %e, "cannot record an alert in the audit log");
        }
    }

    async fn send(&self, json: &[u8], account: &str) -> String {
        let mut results = Vec::new();
        if let Some(url) = &self.settings.webhook {
            let mut request = self.client.post(url.as_str()).header("Content-Type", "application/json");
            if let Some(signer) = &self.signer {
                let id = herald_adapters::webhook::sign::message_id(json);
                for (name, value) in signer.headers(&id, json) {
                    request = request.header(name, value);
                }
            }
            results.push(match request.body(json.to_vec()).send().await {
                Ok(r) if r.status().is_success() => format!("webhook answered {}", r.status().as_u16()),
                Ok(r) => format!("webhook answered {}", r.status().as_u16()),
                Err(e) => format!("webhook failed: {}", e.without_url()),
            });
        }
        if let Some(command) = &self.settings.command {
            results.push(run_command(command, json).await);
        }
        for r in &results {
            tracing::info!(account, outcome = %r, "alert sent");
        }
        results.join("; ")
    }
}

async fn run_command(command: &[String], json: &[u8]) -> String {
    let Some((program, args)) = command.split_first() else { return "no command".into() };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(COMMAND_ENV)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return format!("command {program} could not start: {e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(json).await;
    }
    match tokio::time::timeout(SEND_LIMIT, child.wait()).await {
        Ok(Ok(status)) if status.success() => format!("command {program} succeeded"),
        Ok(Ok(status)) => format!("command {program} exited with {status}"),
        Ok(Err(e)) => format!("command {program} failed: {e}"),
        Err(_) => format!("command {program} did not finish within {}s", SEND_LIMIT.as_secs()),
    }
}
