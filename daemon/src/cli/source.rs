//! Where the inspecting commands get their answers: the running daemon,
//! through its control socket, or, when no daemon runs, the store itself.
//! Each command says which on stderr.

use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::Utc;
use serde::de::DeserializeOwned;

use crate::config::Peek;
use crate::control::{
    CountView, ErrorView, LogParams, ReloadView, StatusView, Upcoming, VerifyView, status_view, upcoming_list,
};
use crate::model::AuditRecord;
use crate::operations::{self, Selection};
use crate::store::{SledStore, Store, StoreError};

pub enum Source {
    Daemon { client: reqwest::Client, socket: PathBuf, runtime: tokio::runtime::Runtime },
    Store { store: Box<SledStore>, peek: Peek },
}

/// The sockets a running daemon may listen on, in the order tried.
fn candidates(peek: &Peek) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = &peek.control_socket {
        out.push(path.clone());
    }
    out.push(PathBuf::from("/run/herald/herald.sock"));
    out.push(peek.state_dir.join("herald.sock"));
    out
}

impl Source {
    /// The running daemon if one answers, else the store (which needs the
    /// daemon to be stopped).
    pub fn open(peek: Peek) -> anyhow::Result<Source> {
        if let Some(socket) = candidates(&peek).into_iter().find(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        {
            eprintln!("(asking the running herald daemon through {})", socket.display());
            let client = reqwest::Client::builder()
                .unix_socket(socket.as_path())
                .timeout(std::time::Duration::from_secs(60))
                .build()?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            return Ok(Source::Daemon { client, socket, runtime });
        }
        let dir = &peek.state_dir;
        if !dir.join("db").exists() {
            bail!(
                "no herald daemon is running and there is no herald state in {} (has herald run with this config yet?)",
                dir.display()
            );
        }
        match SledStore::open(dir, peek.cache_mb) {
            Ok(store) => {
                eprintln!("(no herald daemon is running: reading the state directory {} directly)", dir.display());
                Ok(Source::Store { store: Box::new(store), peek })
            }
            Err(e @ StoreError::Locked { .. }) => Err(anyhow::Error::new(e)
                .context("herald is running but its control socket does not answer; check `[daemon] control_socket`")),
            Err(e) => Err(e.into()),
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        request: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let Source::Daemon { client, socket, runtime } = self else { bail!("not connected to a daemon") };
        runtime.block_on(async {
            let response =
                request(client).send().await.with_context(|| format!("asking herald through {}", socket.display()))?;
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
            Source::Store { store, peek } => Ok(status_view(store.as_ref(), peek.time_zone, failed)?),
        }
    }

    pub fn log(&self, params: &LogParams) -> anyhow::Result<Vec<AuditRecord>> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.get(url("/v1/log")).query(params)),
            Source::Store { store, .. } => Ok(store.audit(&params.to_query().map_err(anyhow::Error::msg)?)?),
        }
    }

    pub fn content(&self, hash: &str) -> anyhow::Result<crate::model::Content> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.get(url(&format!("/v1/content/{hash}")))),
            Source::Store { store, .. } => store.content(hash)?.with_context(|| format!("no content with hash {hash}")),
        }
    }

    pub fn upcoming(&self, limit: usize) -> anyhow::Result<Vec<Upcoming>> {
        match self {
            Source::Daemon { .. } => self.call(|c| c.get(url("/v1/upcoming")).query(&[("limit", limit)])),
            Source::Store { store, .. } => Ok(upcoming_list(store.as_ref(), limit)?),
        }
    }

    pub fn retry(&self, selection: &Selection) -> anyhow::Result<usize> {
        match self {
            Source::Daemon { .. } => Ok(self.call::<CountView>(|c| c.post(url("/v1/retry")).json(selection))?.count),
            Source::Store { store, .. } => Ok(operations::retry(store.as_ref(), &by_me(selection), Utc::now())?),
        }
    }

    pub fn cancel(&self, selection: &Selection) -> anyhow::Result<usize> {
        match self {
            Source::Daemon { .. } => Ok(self.call::<CountView>(|c| c.post(url("/v1/cancel")).json(selection))?.count),
            Source::Store { store, .. } => Ok(operations::cancel(store.as_ref(), &by_me(selection), Utc::now())?),
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
            Source::Store { store, .. } => bail!(
                "herald is not running (its state directory {} is free); the config is read when it starts",
                store.dir().display()
            ),
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

    pub fn is_daemon(&self) -> bool {
        matches!(self, Source::Daemon { .. })
    }
}

/// An operation done by the CLI on the store itself: by the CLI's own user.
fn by_me(selection: &Selection) -> Selection {
    Selection { actor: Some(crate::model::Actor::current_user("store")), ..selection.clone() }
}

/// A URL on the control socket (the host is ignored: the socket is the address).
fn url(path: &str) -> String {
    format!("http://herald{path}")
}
