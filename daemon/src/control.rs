//! The control API: HTTP over a Unix socket (mode 0660), so the CLI can ask
//! the running daemon (which alone holds the store) for status, the log,
//! the upcoming plan, and to retry, cancel or reload. Peers that are not
//! root, the daemon's user or a member of its group are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path as UrlPath, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::model::{Actor, AuditRecord, Delivery, State, from_millis};
use crate::operations::{OperationError, Selection};
use crate::reconcile::Summary;
use crate::scheduler::Control;
use crate::store::{AuditQuery, Store};

/// What `GET /v1/status` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub line: String,
    pub counts: std::collections::BTreeMap<State, u64>,
    pub retrying: u64,
    /// Deliveries of occurrences more than `schedule_ahead` away, not created yet.
    #[serde(default)]
    pub planned: u64,
    pub next: Option<Upcoming>,
    pub failed: Vec<Delivery>,
}

/// One pending delivery in due order (`GET /v1/upcoming`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Upcoming {
    pub due: chrono::DateTime<chrono::Utc>,
    pub delivery: String,
    pub post: String,
    pub account: String,
    pub platform: String,
    pub attempt: u32,
    /// Not created yet: its occurrence is more than `schedule_ahead` away.
    #[serde(default)]
    pub planned: bool,
}

/// The filters of `GET /v1/log`, as the CLI writes them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LogParams {
    pub post: Option<String>,
    pub account: Option<String>,
    pub platform: Option<String>,
    /// Comma-separated event names.
    pub events: Option<String>,
    pub delivery: Option<String>,
    /// Actions by this actor (user name, signal, `systemd`; `*` matches any characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

/// What `POST /v1/reload` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadView {
    pub applied: bool,
    pub summary: Option<Summary>,
    pub errors: Vec<String>,
}

/// What `GET /v1/audit/verify` answers: the log is intact, or where it breaks.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyView {
    pub verified: Option<crate::audit_chain::Verified>,
    pub broken: Option<crate::audit_chain::Break>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CountView {
    pub count: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
}

/// Reloads the config on request (SIGHUP or the control API), on behalf
/// of `actor`, for `reason`.
pub trait Reloader: Send + Sync {
    fn reload(
        &self,
        actor: Actor,
        reason: Option<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ReloadView> + Send + '_>>;
}

/// The peer of a control-socket connection, from its credentials
/// (SO_PEERCRED): who is asking.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: Option<u32>,
}

impl Peer {
    /// The actor of an operation this peer asked for.
    fn actor(&self) -> Option<Actor> {
        self.uid.map(|uid| Actor::user("control_socket", uid))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Authorized>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Authorized>) -> Self {
        Peer { uid: stream.io().peer_cred().ok().map(|c| c.uid()) }
    }
}

#[derive(Clone)]
struct Ctx {
    store: Arc<dyn Store>,
    control: mpsc::Sender<Control>,
    reloader: Arc<dyn Reloader>,
    time_zone: chrono_tz::Tz,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorView { error: self.1 })).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl From<OperationError> for ApiError {
    fn from(e: OperationError) -> Self {
        let status = match e {
            OperationError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            OperationError::NoSuchDelivery(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/log", get(log))
        .route("/v1/content/{hash}", get(content))
        .route("/v1/upcoming", get(upcoming))
        .route("/v1/retry", post(retry))
        .route("/v1/cancel", post(cancel))
        .route("/v1/reload", post(reload))
        .route("/v1/audit/verify", get(verify))
        .with_state(ctx)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn status(AxumState(ctx): AxumState<Ctx>, Query(limit): Query<Limit>) -> ApiResult<StatusView> {
    Ok(Json(status_view(ctx.store.as_ref(), ctx.time_zone, limit.limit.unwrap_or(20))?))
}

/// The status of a store: counts, the next due delivery, failed deliveries.
pub fn status_view(
    store: &dyn Store,
    tz: chrono_tz::Tz,
    failed: usize,
) -> Result<StatusView, crate::store::StoreError> {
    let next = upcoming_list(store, 1)?.into_iter().next();
    let counts = store.counts()?;
    let in_flight = counts.get(&State::InFlight).copied().unwrap_or(0) as usize;
    // From the index of failed deliveries: as many as asked for, whatever the history.
    let failed = store.deliveries_in_state(State::Failed, failed)?;
    Ok(StatusView {
        line: crate::scheduler::status_line(store, tz, in_flight, chrono::Utc::now())?,
        retrying: store.retrying()?,
        planned: store.planned_deliveries()?,
        failed,
        counts,
        next,
    })
}

/// Pending deliveries in due order, with the deliveries that planned
/// occurrences will create.
pub fn upcoming_list(store: &dyn Store, limit: usize) -> Result<Vec<Upcoming>, crate::store::StoreError> {
    let mut out = Vec::new();
    for key in store.due(None, i64::MAX, limit)? {
        if let Some(d) = store.delivery(key.id)? {
            out.push(Upcoming {
                due: from_millis(key.due),
                delivery: d.id.to_string(),
                post: d.post_id,
                account: d.account,
                platform: d.platform.to_string(),
                attempt: d.attempt,
                planned: false,
            });
        }
    }
    // Both lists are in time order: the first `limit` of their merge are
    // among the first `limit` of each.
    let mut rows = 0;
    'plans: for (post, plan) in store.planned(limit)? {
        for (id, account, platform) in plan.delivery_ids(&post) {
            if rows == limit {
                break 'plans;
            }
            rows += 1;
            out.push(Upcoming {
                due: from_millis(plan.occurrence),
                delivery: id.to_string(),
                post: post.clone(),
                account: account.to_string(),
                platform: platform.to_string(),
                attempt: 0,
                planned: true,
            });
        }
    }
    out.sort_by_key(|u| u.due);
    out.truncate(limit);
    Ok(out)
}

async fn upcoming(AxumState(ctx): AxumState<Ctx>, Query(limit): Query<Limit>) -> ApiResult<Vec<Upcoming>> {
    Ok(Json(upcoming_list(ctx.store.as_ref(), limit.limit.unwrap_or(50))?))
}

async fn log(AxumState(ctx): AxumState<Ctx>, Query(params): Query<LogParams>) -> ApiResult<Vec<AuditRecord>> {
    let query = params.to_query().map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(ctx.store.audit(&query)?))
}

async fn content(AxumState(ctx): AxumState<Ctx>, UrlPath(hash): UrlPath<String>) -> ApiResult<crate::model::Content> {
    match ctx.store.content(&hash)? {
        Some(rendered) => Ok(Json(rendered)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no content with hash {hash}"))),
    }
}

async fn operation(
    ctx: &Ctx,
    make: impl FnOnce(oneshot::Sender<Result<usize, OperationError>>) -> Control,
) -> ApiResult<CountView> {
    let (tx, rx) = oneshot::channel();
    let stopped = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "herald is stopping".into());
    ctx.control.send(make(tx)).await.map_err(|_| stopped())?;
    let count = rx.await.map_err(|_| stopped())??;
    Ok(Json(CountView { count }))
}

async fn retry(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut selection): Json<Selection>,
) -> ApiResult<CountView> {
    selection.actor = peer.actor();
    operation(&ctx, |tx| Control::Retry(selection, tx)).await
}

async fn cancel(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut selection): Json<Selection>,
) -> ApiResult<CountView> {
    selection.actor = peer.actor();
    operation(&ctx, |tx| Control::Cancel(selection, tx)).await
}

/// The operator's reason for a reload (`herald reload --reason`).
#[derive(Deserialize)]
struct ReasonParam {
    reason: Option<String>,
}

async fn reload(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(param): Query<ReasonParam>,
) -> Json<ReloadView> {
    let actor =
        peer.actor().unwrap_or_else(|| Actor { via: "control_socket".into(), name: "unknown".into(), uid: None });
    Json(ctx.reloader.reload(actor, param.reason).await)
}

#[derive(Deserialize)]
struct HeadParam {
    head: Option<String>,
}

/// Verify the store's whole audit chain, off the async workers.
async fn verify(AxumState(ctx): AxumState<Ctx>, Query(param): Query<HeadParam>) -> ApiResult<VerifyView> {
    let head = param
        .head
        .map(|h| crate::audit_chain::parse_head(&h))
        .transpose()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let store = Arc::clone(&ctx.store);
    let outcome = tokio::task::spawn_blocking(move || crate::audit_chain::verify_store(store.as_ref(), head))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(match outcome {
        Ok(verified) => VerifyView { verified: Some(verified), broken: None },
        Err(broken) => VerifyView { verified: None, broken: Some(broken) },
    }))
}

impl LogParams {
    /// The store query these filters mean.
    pub fn to_query(&self) -> Result<AuditQuery, String> {
        let events = match &self.events {
            Some(list) => list
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| crate::model::Event::parse(e).ok_or_else(|| format!("unknown event `{e}`")))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let delivery = match &self.delivery {
            Some(d) => Some(crate::model::DeliveryId::parse(d).ok_or_else(|| format!("`{d}` is not a delivery id"))?),
            None => None,
        };
        let time = |text: &Option<String>, what: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
            let Some(text) = text else { return Ok(None) };
            let text = text.trim();
            let full = if text.len() == 10 { format!("{text}T00:00:00") } else { text.to_string() };
            let value = crate::config::TimeValue::parse(&full).map_err(|e| format!("--{what}: {e}"))?;
            value.resolve(&chrono_tz::Tz::UTC).map(Some)
        };
        Ok(AuditQuery {
            post: self.post.clone(),
            account: self.account.clone(),
            platform: self.platform.clone(),
            actor: self.actor.clone(),
            events,
            delivery,
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            after_seq: None,
            limit: None,
        })
    }
}

/// A Unix listener that refuses peers other than root, the daemon's user,
/// or members of the daemon's group.
pub struct Authorized {
    inner: UnixListener,
    uid: u32,
    gid: u32,
}

impl Authorized {
    /// Root, herald's user, or a member of herald's group (primary or
    /// supplementary). The socket's mode (0660) already keeps others out;
    /// this check refuses them even if the mode was widened. A peer whose
    /// groups cannot be read (systemd's ProtectProc hides other users'
    /// processes) passed the kernel's 0660 check, so it is a member.
    fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.uid || gid == self.gid {
            return true;
        }
        let groups = pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok());
        match groups {
            Some(status) => status
                .lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .is_some_and(|list| list.split_whitespace().any(|g| g.parse() == Ok(self.gid))),
            None => true,
        }
    }
}

impl axum::serve::Listener for Authorized {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match stream.peer_cred() {
                    Ok(cred) if self.allows(cred.uid(), cred.gid(), cred.pid()) => {
                        return (stream, addr);
                    }
                    Ok(cred) => {
                        tracing::warn!(
                            uid = cred.uid(),
                            gid = cred.gid(),
                            "control socket: refused a peer that is not root nor herald's user or group"
                        );
                    }
                    Err(e) => tracing::warn!(error = %e, "control socket: cannot read the peer's credentials"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The group id named `name` in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
    })
}

/// A running control server; it removes its socket file when dropped.
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind the control socket at `path` (mode 0660, optionally owned by `group`)
/// and serve it.
pub fn serve(
    path: &Path,
    group: Option<&str>,
    store: Arc<dyn Store>,
    control: mpsc::Sender<Control>,
    reloader: Arc<dyn Reloader>,
    time_zone: chrono_tz::Tz,
) -> anyhow::Result<ControlServer> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a process that died is stale: nobody answers on it.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another process answers on the control socket {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    let mut gid = rustix::process::getgid().as_raw();
    if let Some(name) = group {
        let id = group_id(name).with_context(|| format!("socket_group `{name}` is not a group on this host"))?;
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(id)))
            .with_context(|| format!("giving the control socket to group `{name}`"))?;
        gid = id;
    }
    let authorized = Authorized { inner: listener, uid: rustix::process::getuid().as_raw(), gid };
    let ctx = Ctx { store, control, reloader, time_zone };
    let app = router(ctx);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(authorized, app.into_make_service_with_connect_info::<Peer>()).await {
            tracing::error!(error = %e, "the control socket stopped");
        }
    });
    tracing::info!(socket = %path.display(), "control socket listening");
    Ok(ControlServer { path: path.to_path_buf(), task })
}
