//! Alerts: a delivery that ends `failed`, or an account paused by a rate
//! limit for longer than a threshold, is reported to a webhook (JSON, signed
//! like the webhook adapter) and/or a command (JSON on its stdin). Alerts
//! are sent from their own task, never blocking the scheduler, and each is
//! recorded in the audit log (`alerted`) with what became of it.

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
}

impl Alert {
    fn what(&self) -> &'static str {
        match self {
            Alert::DeliveryFailed { .. } => "delivery failed",
            Alert::AccountPaused { .. } => "account paused by a rate limit",
            Alert::CredentialsExpiring { .. } => "credentials expire soon",
            Alert::AuditHead { .. } => "audit log head",
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

pub struct Alerter {
    settings: AlertSettings,
    signer: Option<Signer>,
    client: reqwest::Client,
    store: Arc<dyn Store>,
}

impl Alerter {
    pub fn new(settings: AlertSettings, store: Arc<dyn Store>) -> anyhow::Result<Alerter> {
        let signer = settings.secret.as_ref().map(Signer::new).transpose()?;
        let client = reqwest::Client::builder().timeout(SEND_LIMIT).connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Alerter { settings, signer, client, store })
    }

    pub fn pause_threshold(&self) -> Duration {
        self.settings.pause_threshold
    }

    /// How long before credentials expire to alert.
    pub fn credential_warning(&self) -> Duration {
        self.settings.credential_warning
    }

    /// Send an alert about `delivery` in the background.
    pub fn raise(self: &Arc<Self>, delivery: &Delivery, alert: Alert) {
        let this = Arc::clone(self);
        let delivery = delivery.clone();
        tokio::spawn(async move {
            let body = Body {
                alert: &alert,
                delivery: Some(delivery.id.to_string()),
                post: Some(&delivery.post_id),
                account: &delivery.account,
                platform: delivery.platform.name(),
                occurrence: Some(crate::model::from_millis(delivery.occurrence)),
                time: Utc::now(),
            };
            let outcome = this.send(&body, &delivery.account).await;
            let mut record = AuditRecord::of(&delivery, Event::Alerted, Utc::now());
            record.reason = Some(format!("alert ({}): {outcome}", alert.what()));
            this.record(record);
        });
    }

    /// Send an alert about an account (no delivery) in the background; the
    /// audit log gets an account record of `event`.
    pub fn raise_for_account(self: &Arc<Self>, account: &str, platform: Platform, event: Event, alert: Alert) {
        let this = Arc::clone(self);
        let account = account.to_string();
        tokio::spawn(async move {
            let body = Body {
                alert: &alert,
                delivery: None,
                post: None,
                account: &account,
                platform: platform.name(),
                occurrence: None,
                time: Utc::now(),
            };
            let outcome = this.send(&body, &account).await;
            let detail = match &alert {
                Alert::CredentialsExpiring { expires_at, days_left } => {
                    format!("credentials expire at {} (in {days_left} days)", expires_at.to_rfc3339())
                }
                other => other.what().to_string(),
            };
            let reason = format!("alert ({detail}): {outcome}");
            this.record(AuditRecord::about_account(&account, platform, event, Utc::now(), reason));
        });
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
            time: Utc::now(),
        };
        self.send(&body, "").await
    }

    fn record(&self, record: AuditRecord) {
        let changes = Changes { notes: vec![record], ..Changes::default() };
        if let Err(e) = self.store.apply(changes).and_then(|_| self.store.flush()) {
            tracing::error!(error = %e, "cannot record an alert in the audit log");
        }
    }

    async fn send(&self, body: &Body<'_>, account: &str) -> String {
        let Ok(json) = serde_json::to_vec(body) else { return "could not encode the alert".into() };
        let mut results = Vec::new();
        if let Some(url) = &self.settings.webhook {
            let mut request = self.client.post(url.as_str()).header("Content-Type", "application/json");
            if let Some(signer) = &self.signer {
                request = request.header("X-Herald-Signature", signer.sign(&json));
            }
            results.push(match request.body(json.clone()).send().await {
                Ok(r) if r.status().is_success() => format!("webhook answered {}", r.status().as_u16()),
                Ok(r) => format!("webhook answered {}", r.status().as_u16()),
                Err(e) => format!("webhook failed: {}", e.without_url()),
            });
        }
        if let Some(command) = &self.settings.command {
            results.push(run_command(command, &json).await);
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
