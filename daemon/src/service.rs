//! `herald run`: load the config, open the store, recover, reconcile, then
//! run the scheduler until asked to stop. SIGHUP reloads the config (a bad
//! one is refused and the running one kept); SIGTERM and SIGINT stop
//! gracefully.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, Config};
use crate::credentials::StoreCache;
use crate::scheduler::{Control, Scheduler};
use crate::store::{SledStore, Store};

/// A daemon running inside this process (for `herald run`, the demo and tests).
pub struct Daemon {
    pub store: Arc<SledStore>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<crate::store::Result<()>>,
}

impl Daemon {
    /// Open the store, recover interrupted deliveries, apply the config and
    /// start the scheduler. Returns once herald is ready.
    pub fn start(mut config: Config) -> anyhow::Result<Daemon> {
        let dir = config.daemon.state_dir.clone();
        let store = Arc::new(SledStore::open(&dir, config.daemon.cache_mb)?);
        let shared: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
        config.bind(|account| StoreCache::services(&shared, account)).map_err(anyhow::Error::msg)?;
        let config = Arc::new(config);
        let mut scheduler = Scheduler::new(Arc::clone(&shared), Arc::clone(&config));
        let now = Utc::now();
        let recovered = scheduler.recover(now).context("recovering deliveries that were in flight")?;
        let summary = scheduler.reconcile(config, now).context("applying the config to the store")?;
        tracing::info!(recovered, %summary, state_dir = %dir.display(), "herald is ready");
        let (control, rx) = mpsc::channel(8);
        let task = tokio::spawn(scheduler.run(rx));
        Ok(Daemon { store, control, task })
    }

    /// Apply a new, valid config; answers what changed.
    pub async fn reload(&self, mut config: Config) -> anyhow::Result<crate::reconcile::Summary> {
        let shared: Arc<dyn Store> = Arc::clone(&self.store) as Arc<dyn Store>;
        config.bind(|account| StoreCache::services(&shared, account)).map_err(anyhow::Error::msg)?;
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Reload(Arc::new(config), tx))
            .await
            .map_err(|_| anyhow::anyhow!("the scheduler has stopped"))?;
        Ok(rx.await.map_err(|_| anyhow::anyhow!("the scheduler has stopped"))??)
    }

    /// Stop: no new deliveries; in-flight ones finish up to the deadline.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.control.send(Control::Shutdown).await;
        self.task.await.context("the scheduler task failed")??;
        Ok(())
    }

    /// Has the scheduler stopped on its own (a storage error)?
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Print a config's findings to stderr; true when it has errors.
pub fn report(outcome: &config::LoadOutcome) -> bool {
    for d in &outcome.diagnostics {
        eprintln!("{d}");
    }
    outcome.config.is_none()
}

/// `herald run --config FILE`.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let outcome = config::load(path);
    for d in &outcome.diagnostics {
        if d.is_error() {
            tracing::error!(file = %d.file.display(), line = d.line, column = d.column, "{}", d.message);
        } else {
            tracing::warn!(file = %d.file.display(), line = d.line, column = d.column, "{}", d.message);
        }
    }
    let Some(config) = outcome.config else {
        anyhow::bail!("the config {} has errors; herald did not start", path.display());
    };
    let daemon = Daemon::start(config)?;
    wait_for_signals(&daemon, path.to_path_buf()).await?;
    tracing::info!("stopping");
    daemon.stop().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signals(daemon: &Daemon, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut watchdog = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(daemon, &path).await,
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = watchdog.tick() => {
                if daemon.is_finished() {
                    anyhow::bail!("the scheduler stopped unexpectedly");
                }
            }
        }
    }
}

/// Reload on SIGHUP: a config with errors is refused and the running one kept.
async fn reload(daemon: &Daemon, path: &Path) {
    tracing::info!(config = %path.display(), "reloading the config");
    let outcome = config::load(path);
    match outcome.config {
        Some(config) => match daemon.reload(config).await {
            Ok(summary) => tracing::info!(%summary, "config reloaded"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "reload failed; the running config stays"),
        },
        None => {
            for d in outcome.errors() {
                tracing::error!(file = %d.file.display(), line = d.line, column = d.column, "{}", d.message);
            }
            tracing::error!("the new config has errors; keeping the running config");
        }
    }
}
