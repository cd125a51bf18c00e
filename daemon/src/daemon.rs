//! `herald run`: load the config, open the store, recover, reconcile, then
//! run the scheduler until asked to stop. SIGHUP (or `herald reload`)
//! reloads the config: a bad one is refused and the running one kept.
//! SIGTERM and SIGINT stop gracefully. systemd is told about each step.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

use crate::anchor::Anchor;
use crate::config::{self, Config};
use crate::control::{self, ControlServer, ReloadView, Reloader};
use crate::credentials::StoreCache;
use crate::ha::Leadership;
use crate::metrics::Metrics;
use crate::model::{Actor, AuditRecord};
use crate::notify::Notifier;
use crate::reconcile::Summary;
use crate::scheduler::Control;
use crate::store::Store;
use crate::store::open::{Location, Role};

/// A daemon running inside this process (for `herald run`, the demo and tests).
pub struct Daemon {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<crate::store::Result<()>>,
    reloader: Arc<FileReloader>,
    notifier: Arc<Notifier>,
    _control_server: ControlServer,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    anchor: Arc<Anchor>,
    anchor_task: tokio::task::JoinHandle<()>,
}

/// Reloads the config file and hands a valid one to the scheduler.
pub struct FileReloader {
    path: PathBuf,
    store: Arc<dyn Store>,
    control: mpsc::Sender<Control>,
    notifier: Arc<Notifier>,
    anchor: Arc<Anchor>,
}

impl FileReloader {
    async fn apply(&self, mut config: Config) -> anyhow::Result<Summary> {
        let store = Arc::clone(&self.store);
        config.bind(|account| StoreCache::services(&store, account)).map_err(anyhow::Error::msg)?;
        tracing::info!(
            posts = config.posts.len(),
            accounts = config.accounts.len(),
            "applying the config to the store"
        );
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Reload(Arc::new(config), tx))
            .await
            .map_err(|_| anyhow::anyhow!("the scheduler has stopped"))?;
        Ok(rx.await.map_err(|_| anyhow::anyhow!("the scheduler has stopped"))??)
    }

    /// Read, check and apply the config file on behalf of `actor`; log
    /// what happened.
    pub async fn reload_file(&self, actor: Actor, reason: Option<String>) -> ReloadView {
        self.notifier.reloading();
        tracing::info!(config = %self.path.display(), %actor, reason = reason.as_deref().unwrap_or(""), "reloading the config");
        // Reading and checking a large config takes a while: off the async workers.
        let path = self.path.clone();
        let outcome = match tokio::task::spawn_blocking(move || config::load(&path)).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "reading the config failed; keeping the running config");
                self.notifier.ready();
                return ReloadView { applied: false, summary: None, errors: vec![format!("reading the config: {e}")] };
            }
        };
        let files = outcome.files.clone();
        let view = match outcome.config {
            Some(config) => match ((config.alerts.clone(), config.clone()), self.apply(config).await) {
                ((alerts, applied), Ok(summary)) => {
                    self.anchor.configure(alerts.as_ref());
                    // Who changed which post needing approval; approvals of changed posts end.
                    let (store, by) = (Arc::clone(&self.store), actor.clone());
                    let settled = tokio::task::spawn_blocking(move || {
                        crate::approvals::settle(store.as_ref(), &applied, &by, crate::clock::now())
                    });
                    if let Err(e) = settled.await.map_err(anyhow::Error::from).and_then(|r| Ok(r?)) {
                        tracing::error!(error = %format!("{e:#}"), "could not record the approvals the reload changed");
                    }
                    tracing::info!(%summary, "config reloaded");
                    ReloadView { applied: true, summary: Some(summary), errors: Vec::new() }
                }
                (_, Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "reload failed; the running config stays");
                    ReloadView { applied: false, summary: None, errors: vec![format!("{e:#}")] }
                }
            },
            None => {
                let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
                for d in outcome.errors() {
                    tracing::error!(file = %d.file.display(), line = d.line, column = d.column, "{d}");
                }
                tracing::error!(errors = errors.len(), "the new config has errors; keeping the running config");
                ReloadView { applied: false, summary: None, errors }
            }
        };
        let summary = view.summary.as_ref().map(ToString::to_string);
        let note = AuditRecord::config(crate::clock::now(), files, summary, view.errors.clone(), actor, reason);
        let store = Arc::clone(&self.store);
        let written = tokio::task::spawn_blocking(move || write_note(store.as_ref(), note)).await;
        if let Err(e) = written.map_err(anyhow::Error::from).and_then(|r| r) {
            tracing::error!(error = %format!("{e:#}"), "could not record the reload in the audit log");
        }
        if let Err(e) = self.anchor.publish("reload").await {
            tracing::error!(error = %format!("{e:#}"), "could not publish the audit head");
        }
        self.notifier.ready();
        view
    }
}

impl Reloader for FileReloader {
    fn reload(
        &self,
        actor: Actor,
        reason: Option<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ReloadView> + Send + '_>> {
        Box::pin(self.reload_file(actor, reason))
    }
}

impl Daemon {
    /// Open the store, recover interrupted deliveries, apply the config,
    /// start the scheduler, the control socket and (if configured) metrics.
    /// Returns once herald is ready. Must run inside a tokio runtime.
    pub fn start(mut config: Config, notifier: Arc<Notifier>) -> anyhow::Result<Daemon> {
        let dir = config.daemon.state_dir.clone();
        let location = Location::of(&config);
        let me = crate::lease::holder_id();
        let store = location.open_as(Role::Daemon, Some(&me))?;
        let shared = Arc::clone(&store);
        config.bind(|account| StoreCache::services(&shared, account)).map_err(anyhow::Error::msg)?;
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        // Lead (recover, reconcile, run the scheduler) if this daemon holds the
        // scheduler lease; otherwise stand by (`ha`). Always the lead on sled.
        let role = Arc::new(crate::lease::Role::new(me));
        let leadership = Leadership {
            store: Arc::clone(&shared),
            role: Arc::clone(&role),
            notifier: Arc::clone(&notifier),
            metrics: Arc::clone(&metrics),
            config: Arc::clone(&config),
            timing: crate::lease::Timing::default(),
        };
        let leading = match leadership.try_lead().context("taking the scheduler lease")? {
            Some(fence) => Some(leadership.take_over(fence)?),
            None => None,
        };
        let shared_role = shared.is_shared().then(|| Arc::clone(&role));
        metrics.set_role(shared_role.clone());
        let (control, rx) = mpsc::channel(8);
        let anchor = Arc::new(Anchor::new(Arc::clone(&shared), config.alerts.as_ref()));
        let reloader = Arc::new(FileReloader {
            path: config.path.clone(),
            store: Arc::clone(&shared),
            control: control.clone(),
            notifier: Arc::clone(&notifier),
            anchor: Arc::clone(&anchor),
        });
        let socket = config.daemon.socket_path();
        let control_server = control::serve(
            &socket,
            &dir,
            config.daemon.socket_group.as_deref(),
            Arc::clone(&shared),
            control.clone(),
            Arc::clone(&reloader) as Arc<dyn Reloader>,
            control::Shown { time_zone: config.daemon.time_zone, role: shared_role },
        )?;
        let metrics_server = match config.daemon.metrics_listen {
            Some(addr) => Some(serve_metrics(addr, Arc::clone(&metrics), Arc::clone(&shared))?),
            None => None,
        };
        match &leading {
            Some(took) => {
                tracing::info!(recovered = took.recovered, summary = %took.summary, store = %location.describe(),
                socket = %socket.display(), "herald is ready")
            }
            None => tracing::info!(role = %role.view().describe(), store = %location.describe(),
                socket = %socket.display(), "herald is ready: standby"),
        }
        let task = tokio::spawn(leadership.supervise(rx, leading));
        let anchor_task = anchor.run(config.daemon.audit_head_interval);
        notifier.ready();
        Ok(Daemon {
            store,
            metrics,
            control,
            task,
            reloader,
            notifier,
            _control_server: control_server,
            metrics_server,
            anchor,
            anchor_task,
        })
    }

    /// Apply a new, valid config; answers what changed.
    pub async fn reload(&self, config: Config) -> anyhow::Result<Summary> {
        self.reloader.apply(config).await
    }

    /// Stop: no new deliveries; in-flight ones finish up to the deadline.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.notifier.stopping();
        let _ = self.control.send(Control::Shutdown).await;
        if let Some(server) = &self.metrics_server {
            server.abort();
        }
        self.anchor_task.abort();
        self.task.await.context("the scheduler task failed")??;
        // The last head, once nothing else writes.
        self.anchor.publish("stop").await.context("publishing the audit head at stop")?;
        Ok(())
    }

    /// Has the scheduler stopped on its own (a storage error)?
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Append one audit record that changes no delivery, durably.
fn write_note(store: &dyn Store, note: AuditRecord) -> anyhow::Result<()> {
    store.apply(crate::store::Changes { notes: vec![note], ..Default::default() })?;
    store.flush()?;
    Ok(())
}

fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding metrics_listen {addr}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, store) = (Arc::clone(&metrics), Arc::clone(&store));
            async move {
                // The counts are read from the store: off the async workers.
                let body =
                    tokio::task::spawn_blocking(move || metrics.render(store.as_ref())).await.unwrap_or_default();
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }
        }),
    );
    tracing::info!(%addr, "metrics listening");
    let limits = crate::connections::Limits::METRICS;
    Ok(tokio::spawn(crate::connections::serve(crate::connections::Tcp(listener), app, limits, "metrics")))
}

/// Raise the soft limit of open files to the hard limit: deliveries, the
/// store and the listeners share it, and the default soft limit (1024) is
/// far below what the host allows. Under the unit (`SystemCallFilter=`
/// without `@resources`) this is refused; `LimitNOFILE=` sets it there.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::debug!(soft = ?limit.maximum, "raised the open-files limit to the hard limit"),
            Err(e) => tracing::debug!(soft = ?limit.current, error = %e, "cannot raise the open-files limit"),
        }
    }
}

/// The config has errors, so herald did not start. `herald run` exits with
/// [`ConfigRefused::EXIT_CODE`] (EX_CONFIG), which the systemd unit names in
/// RestartPreventExitStatus= so a refused config is not retried in a loop.
#[derive(Debug, thiserror::Error)]
#[error("the config {} has errors; herald did not start", .0.display())]
pub struct ConfigRefused(pub PathBuf);

impl ConfigRefused {
    pub const EXIT_CODE: u8 = 78;
}

/// `herald run --config FILE`.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let outcome = config::load(path);
    for d in &outcome.diagnostics {
        if d.is_error() {
            tracing::error!(file = %d.file.display(), line = d.line, column = d.column, "{d}");
        } else {
            tracing::warn!(file = %d.file.display(), line = d.line, column = d.column, "{d}");
        }
    }
    let Some(config) = outcome.config else {
        return Err(ConfigRefused(path.to_path_buf()).into());
    };
    raise_open_files_limit();
    // Opening the store, recovering and the first reconcile block: off the async workers.
    let daemon = crate::blocking::off_the_workers(|| Daemon::start(config, Arc::new(Notifier::from_env())))?;
    if let Err(e) = wait_for_signals(&daemon).await {
        // The scheduler stopped on its own (a storage error): say why.
        return Err(match daemon.stop().await {
            Err(cause) => cause.context(e.to_string()),
            Ok(()) => e,
        });
    }
    tracing::info!("stopping");
    daemon.stop().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signals(daemon: &Daemon) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut health = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                daemon.reloader.reload_file(Actor::signal("SIGHUP"), None).await;
            }
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = health.tick() => {
                if daemon.is_finished() {
                    anyhow::bail!("the scheduler stopped unexpectedly");
                }
            }
        }
    }
}
