//! Anchoring the audit log outside the host: its head (the last record's
//! seq and hash) is published to the journal, and to the alert webhook and
//! command when configured (kind `audit_head`), at start, at every reload,
//! at stop and every `[daemon] audit_head_interval`. Each publication is
//! recorded in the log too (`audit_head`). Someone who can rewrite the state
//! directory can rewrite the whole chain, but not what already left the
//! host: `herald audit verify --head SEQ:HASH` proves the log still extends it.

use std::sync::{Arc, Mutex};

use crate::alerts::Alerter;
use crate::audit_chain::ChainHead;
use crate::config::AlertSettings;
use crate::model::{AuditRecord, Event};
use crate::store::{Changes, Store};

pub struct Anchor {
    store: Arc<dyn Store>,
    alerter: Mutex<Option<Arc<Alerter>>>,
}

impl Anchor {
    pub fn new(store: Arc<dyn Store>, alerts: Option<&AlertSettings>) -> Anchor {
        let anchor = Anchor { store, alerter: Mutex::new(None) };
        anchor.configure(alerts);
        anchor
    }

    /// Use the alert settings of a newly applied config.
    pub fn configure(&self, alerts: Option<&AlertSettings>) {
        let alerter = alerts.and_then(|settings| match Alerter::new(settings.clone(), Arc::clone(&self.store)) {
            Ok(alerter) => Some(Arc::new(alerter)),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the audit head cannot be sent to the alerts");
                None
            }
        });
        if let Ok(mut slot) = self.alerter.lock() {
            *slot = alerter;
        }
    }

    /// Publish the current head (`occasion`: start, reload, stop, interval)
    /// and record that it was published. Returns the head published.
    pub async fn publish(&self, occasion: &str) -> anyhow::Result<ChainHead> {
        // The head sits behind the store's writer lock: wait for it off the async workers.
        let store = Arc::clone(&self.store);
        let head = tokio::task::spawn_blocking(move || store.audit_head()).await??;
        tracing::info!(seq = head.seq, hash = %head.hash, occasion, anchor = %head.anchor(), "audit head");
        let mut places = vec!["the journal".to_string()];
        let alerter = self.alerter.lock().ok().and_then(|slot| slot.clone());
        if let Some(alerter) = alerter {
            places.push(format!("the alerts ({})", alerter.send_head(head.seq, &head.hash, occasion).await));
        }
        let reason = format!("head {} published at {occasion} to {}", head.anchor(), places.join(" and "));
        let record = AuditRecord::about_herald(Event::AuditHead, crate::clock::now(), Some(reason));
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            store.apply(Changes { notes: vec![record], ..Changes::default() })?;
            store.flush()
        })
        .await??;
        Ok(head)
    }

    /// Publish at start, then every `interval`, until the task is aborted.
    pub fn run(self: &Arc<Self>, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut occasion = "start";
            loop {
                if let Err(e) = this.publish(occasion).await {
                    tracing::error!(error = %format!("{e:#}"), occasion, "could not publish the audit head");
                }
                occasion = "interval";
                tokio::time::sleep(interval).await;
            }
        })
    }
}
