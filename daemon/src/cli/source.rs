//! Where the inspecting commands get their answers: the running daemon,
//! through its control socket, or, when no daemon runs, the store itself.
//! Each command says which on stderr.

use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::Utc;
use serde::de::DeserializeOwned;

use crate::config::Peek;
use crate::control::{
    CountView, ErrorView, HelloView, LogPage, LogParams, ReloadView, StateIdentity, StatusView, Upcoming, VerifyView,
    log_page, status_view,
};
use crate::pauses::{PauseRequest, PauseView};
use crate::retry_cancel::{self, Selection};
use crate::store::open::{Location, Role};
use crate::store::{Store, StoreError};

/// How long the CLI keeps asking a daemon that is at its connection bound
/// (idle connections are cut after 5 s, so a slot frees up well within it).
const BUSY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

pub enum Source {
    Daemon { client: reqwest::Client, socket: PathBuf, runtime: tokio::runtime::Runtime },
    Store { store: std::sync::Arc<dyn Store>, peek: Peek, location: Location },
}

/// The one socket the CLI asks: the config's `control_socket`, else
/// `<state_dir>/herald.sock`. Never another daemon's default socket: the
/// CLI acts only on the daemon of its own state directory.
fn socket_of(peek: &Peek) -> PathBuf {
    peek.control_socket.clone().unwrap_or_else(|| peek.state_dir.join("herald.sock"))
}

impl Source {
    /// The running daemon if one answers on the config's socket and serves
    /// the config's state directory, else the store (which needs the
    /// daemon to be stopped).
    pub fn open(peek: Peek) -> anyhow::Result<Source> {
        let socket = socket_of(&peek);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            eprintln!("(asking the running herald daemon through {})", socket.display());
            let client = reqwest::Client::builder()
                .unix_socket(socket.as_path())
                .timeout(std::time::Duration::from_secs(60))
                // A connection per request: herald closes idle and old
                // connections, and a request sent on one as it closes fails.
                .pool_max_idle_per_host(0)
                .build()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let source = Source::Daemon { client, socket, runtime };
            source.check_identity(&peek)?;
            return Ok(source);
        }
        let location = Location {
            store: peek.store.clone().map_err(anyhow::Error::msg)?,
            state_dir: peek.state_dir.clone(),
            cache_mb: peek.cache_mb,
        };
        if !location.may_exist() {
            bail!(
                "no herald daemon answers on {} and there is no herald state in {} (has herald run with this config yet? \
                 under systemd, name its socket in `[daemon] control_socket`)",
                socket.display(),
                peek.state_dir.display()
            );
        }
        match location.open(Role::Offline) {
            Ok(store) => {
                eprintln!("(no herald daemon is running: reading {} directly)", location.describe());
                Ok(Source::Store { store, peek, location })
            }
            Err(e @ StoreError::Locked { .. }) => Err(anyhow::Error::new(e).context(format!(
                "herald is running but does not answer on {}; name its socket in `[daemon] control_socket` \
                 (under systemd: /run/herald/herald.sock)",
                socket.display()
            ))),
            Err(e @ StoreError::Claimed { .. }) => Err(anyhow::Error::new(e).context(format!(
                "a herald daemon holds the database but does not answer on {}: ask it on its own host, \
                 or name its socket in `[daemon] control_socket`",
                socket.display()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuse a daemon that serves another state directory than the
    /// config's, before anything is asked of it.
    fn check_identity(&self, peek: &Peek) -> anyhow::Result<()> {
        let Source::Daemon { socket, .. } = self else { return Ok(()) };
        let hello: HelloView = self.call(|c| c.get(url("/v1/hello"))).with_context(|| {
            format!("the daemon on {} did not say which state directory it serves", socket.display())
        })?;
        let ours = StateIdentity::of(&peek.state_dir);
        match ours {
            Ok(ours) if ours.same_as(&hello.identity) => Ok(()),
            Ok(ours) => bail!(
                "the herald daemon on {} serves the state directory {}, not {} (this config's); \
                 refusing to act on another daemon. Name this daemon's own socket in `[daemon] control_socket`",
                socket.display(),
                hello.identity.path.display(),
                ours.path.display()
            ),
            Err(e) => bail!(
                "the herald daemon on {} serves the state directory {}; this config's state directory {} \
                 cannot be read ({e}), so it is not that daemon's: refusing to act on it",
                socket.display(),
                hello.identity.path.display(),
                peek.state_dir.display()
            ),
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let Source::Daemon { client, socket, runtime } = self else { bail!("not connected to a daemon") };
        runtime.block_on(async {
            // A daemon at its connection bound answers 503 before reading
            // anything: nothing was done, so asking again is safe.
            let started = std::time::Instant::now();
            let response = loop {
                let response = request(client)
                    .send()
                    .await
                    .with_context(|| format!("asking herald through {}", socket.display()))?;
                let busy = response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && response.headers().contains_key(reqwest::header::RETRY_AFTER);
                if !busy || started.elapsed() > BUSY_PATIENCE {
                    break response;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            let status = response.status();
            let body = response.bytes().await?;
            if !status.is_success() {
                let message =
                    serde_json::from_slice::<ErrorView>(&body).map(|e| e.error).unwrap_or_else(|_| status.to_string());
                bail!("{message}");
            }
            serde_json::from_slice(&body).context("reading herald's answer")
        })
    }

    pub fn status(&self, failed: usize) -> anyhow::Result<StatusView> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.get(url("/v1/status")).query(&[("limit", failed)])),
            Source::Store { store, peek, .. } => Ok(status_view(store.as_ref(), peek.time_zone, failed)?),
        }
    }

    /// One page of the log, after sequence number `after` (see [`LogPage`]).
    pub fn log_page(&self, params: &LogParams, after: Option<u64>) -> anyhow::Result<LogPage> {
        match self {
            Source::Daemon { .. } => self.call(|c| {
                let request = c.get(url("/v1/log")).query(params);
                match after {
                    Some(after) => request.query(&[("after", after)]),
                    None => request,
                }
            }),
            Source::Store { store, .. } => {
                Ok(log_page(store.as_ref(), &params.to_query().map_err(anyhow::Error::msg)?, after)?)
            }
        }
    }

    pub fn content(&self, hash: &str) -> anyhow::Result<crate::model::Content> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.get(url(&format!("/v1/content/{hash}")))),
            Source::Store { store, .. } => {
                crate::store::content_by_prefix(store.as_ref(), hash)?.map_err(anyhow::Error::msg)
            }
        }
    }

    /// Every occurrence due by `until`, at most `limit`. Without a daemon, the
    /// occurrences after each post's next one come from the config at
    /// `config` when it can be read here (its secrets included).
    pub fn upcoming(
        &self,
        limit: usize,
        until: Option<chrono::DateTime<Utc>>,
        config: &std::path::Path,
    ) -> anyhow::Result<Vec<Upcoming>> {
        match self {
            Source::Daemon { .. } => {
                let query = crate::control::UpcomingParams { limit: Some(limit), until };
                self.call(|c| c.get(url("/v1/upcoming")).query(&query))
            }
            Source::Store { store, .. } => {
                let config = crate::config::load(config).config;
                if config.is_none() {
                    eprintln!(
                        "(the config cannot be read in full here, so each post shows only its next occurrence; \
                         a running herald lists them all)"
                    );
                }
                Ok(crate::control::upcoming_window(store.as_ref(), config.as_ref(), until, limit)?)
            }
        }
    }

    pub fn retry(&self, selection: &Selection) -> anyhow::Result<usize> {
        match self {
            Source::Daemon { .. } => Ok(self.call::<CountView>(|c| c.post(url("/v1/retry")).json(selection))?.count),
            Source::Store { store, .. } => Ok(retry_cancel::retry(store.as_ref(), &by_me(selection), Utc::now())?),
        }
    }

    pub fn cancel(&self, selection: &Selection) -> anyhow::Result<usize> {
        match self {
            Source::Daemon { .. } => Ok(self.call::<CountView>(|c| c.post(url("/v1/cancel")).json(selection))?.count),
            Source::Store { store, .. } => Ok(retry_cancel::cancel(store.as_ref(), &by_me(selection), Utc::now())?),
        }
    }

    pub fn reload(&self, reason: Option<&str>) -> anyhow::Result<ReloadView> {
        match self {
            Source::Daemon { .. } => self.call(|c| {
                let request = c.post(url("/v1/reload"));
                match reason {
                    Some(r) => request.query(&[("reason", r)]),
                    None => request,
                }
            }),
            Source::Store { location, .. } => {
                bail!("herald is not running ({} is free); the config is read when it starts", location.describe())
            }
        }
    }

    /// Verify the store's whole audit chain (by the daemon when it runs).
    pub fn verify(&self, head: Option<&str>) -> anyhow::Result<VerifyView> {
        match self {
            Source::Daemon { .. } => self.call(|c| {
                let request = c.get(url("/v1/audit/verify"));
                match head {
                    Some(h) => request.query(&[("head", h)]),
                    None => request,
                }
            }),
            Source::Store { store, .. } => {
                let head = head.map(crate::audit_chain::parse_head).transpose().map_err(anyhow::Error::msg)?;
                Ok(match crate::audit_chain::verify_store(store.as_ref(), head)? {
                    Ok(verified) => VerifyView { verified: Some(verified), broken: None },
                    Err(broken) => VerifyView { verified: None, broken: Some(broken) },
                })
            }
        }
    }

    /// `herald recall`: by the daemon when it runs; else here, on the
    /// store, with the adapters of the config at `config`.
    pub fn recall(
        &self,
        order: &crate::recall::RecallOrder,
        config: &std::path::Path,
    ) -> anyhow::Result<crate::recall::RecallReport> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.post(url("/v1/recall")).json(order)),
            Source::Store { store, .. } => {
                let Some(config) = crate::config::load(config).config else {
                    bail!(
                        "herald is not running, and the config {} has errors (`herald check` shows them): recall needs its accounts",
                        config.display()
                    )
                };
                let order = crate::recall::RecallOrder {
                    actor: Some(crate::model::Actor::current_user("store")),
                    ..order.clone()
                };
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                Ok(crate::recall::run(store.as_ref(), &config, &order, &runtime)?)
            }
        }
    }

    /// `herald pause`: by the daemon (at once), or written to the store of
    /// a stopped herald, where it holds from the next start on.
    pub fn pause(&self, request: &PauseRequest) -> anyhow::Result<PauseView> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.post(url("/v1/pause")).json(request)),
            Source::Store { store, .. } => {
                Ok(crate::pauses::pause(store.as_ref(), &request_by_me(request), None, Utc::now())?)
            }
        }
    }

    /// `herald resume`: by the daemon, or in the store of a stopped herald.
    pub fn resume(&self, request: &PauseRequest) -> anyhow::Result<PauseView> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.post(url("/v1/resume")).json(request)),
            Source::Store { store, .. } => {
                Ok(crate::pauses::resume(store.as_ref(), &request_by_me(request), None, Utc::now())?)
            }
        }
    }

    /// `herald approve`: only the running daemon approves (it knows who asks).
    pub fn approve(&self, request: &crate::approvals::ApproveRequest) -> anyhow::Result<crate::approvals::ApproveView> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.post(url("/v1/approve")).json(request)),
            Source::Store { .. } => Err(crate::approvals::ApprovalError::NotRunning.into()),
        }
    }

    pub fn is_daemon(&self) -> bool {
        matches!(self, Source::Daemon { .. })
    }
}

/// An operation done by the CLI on the store itself: by the CLI's own user.
fn by_me(selection: &Selection) -> Selection {
    Selection { actor: Some(crate::model::Actor::current_user("store")), ..selection.clone() }
}

/// A pause or resume done by the CLI on the store itself: by the CLI's own user.
fn request_by_me(request: &PauseRequest) -> PauseRequest {
    PauseRequest { actor: Some(crate::model::Actor::current_user("store")), ..request.clone() }
}

/// A URL on the control socket (the host is ignored: the socket is the address).
fn url(path: &str) -> String {
    format!("http://herald{path}")
}
