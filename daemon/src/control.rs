//! The control API: HTTP over a Unix socket (mode 0660), so the CLI can ask
//! the running daemon (which alone holds the store) for status, the log,
//! the upcoming plan, and to retry, cancel or reload. Peers that are not
//! root, the daemon's user or a member of its group are refused. On a
//! standby (several daemons on PostgreSQL), the changes (retry, cancel,
//! pause, resume, approve, recall) are forwarded to the leader
//! (`crate::forward`) and answered with the leader's answer.

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
use crate::reconcile::Summary;
use crate::retry_cancel::{OperationError, Selection};
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
    /// The operators' pauses in force (`herald pause`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pauses: Vec<crate::pauses::Pause>,
    /// Due deliveries those pauses hold back (counted up to [`MAX_ROWS`]).
    #[serde(default)]
    pub held: u64,
    /// Leader or standby, and who holds the scheduler lease: when several
    /// daemons share the store (PostgreSQL), from the daemon answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::lease::RoleView>,
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
    /// An occurrence after the post's next one, read from the schedule: the
    /// store holds nothing of it yet, so `cancel` cannot take it until it is next.
    #[serde(default)]
    pub later: bool,
    /// The pause that holds it (`herald pause`), if one covers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// For a post that needs approval: whether it has it (`herald approve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
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
    /// Records written by this daemon (`HOST pid N boot R`; `*` matches any characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
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

/// What `GET /v1/hello` answers: which state directory this daemon serves,
/// so the CLI acts only on the daemon of its own config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloView {
    pub identity: StateIdentity,
    pub version: String,
}

/// A state directory: its canonical path, and its device and inode (the
/// same path in another mount namespace or after a move is another store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateIdentity {
    pub path: PathBuf,
    pub device: u64,
    pub inode: u64,
}

impl StateIdentity {
    /// The identity of the state directory `dir`, which must exist.
    pub fn of(dir: &Path) -> std::io::Result<StateIdentity> {
        use std::os::unix::fs::MetadataExt;
        let path = std::fs::canonicalize(dir)?;
        let meta = std::fs::metadata(&path)?;
        Ok(StateIdentity { path, device: meta.dev(), inode: meta.ino() })
    }

    /// Same directory (the path is only for messages: a directory seen
    /// through a different path is still the same one).
    pub fn same_as(&self, other: &StateIdentity) -> bool {
        self.device == other.device && self.inode == other.inode
    }
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

/// How the control socket shows the daemon: times in `time_zone`, and the
/// role (leader or standby) when several daemons share the store.
pub struct Shown {
    pub time_zone: chrono_tz::Tz,
    pub role: Option<Arc<crate::lease::Role>>,
}

/// The peer of a control-socket connection, from its credentials
/// (SO_PEERCRED): who is asking.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: Option<u32>,
    /// Its primary group (for `herald approve`'s membership check).
    pub gid: Option<u32>,
}

impl Peer {
    /// The actor of an operation this peer asked for.
    fn actor(&self) -> Option<Actor> {
        self.uid.map(|uid| Actor::user("control_socket", uid))
    }
}

#[derive(Clone)]
struct Ctx {
    store: Arc<dyn Store>,
    control: mpsc::Sender<Control>,
    reloader: Arc<dyn Reloader>,
    time_zone: chrono_tz::Tz,
    identity: StateIdentity,
    /// This daemon's role, when several daemons share the store.
    role: Option<Arc<crate::lease::Role>>,
}

/// An error answer: its HTTP status (which the CLI's exit follows) and message.
pub struct ApiError(pub StatusCode, pub String);

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
        .route("/v1/hello", get(hello))
        .route("/v1/status", get(status))
        .route("/v1/log", get(log))
        .route("/v1/content/{hash}", get(content))
        .route("/v1/upcoming", get(upcoming))
        .route("/v1/retry", post(retry))
        .route("/v1/cancel", post(cancel))
        .route("/v1/reload", post(reload))
        .route("/v1/audit/verify", get(verify))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route("/v1/approve", post(approve))
        .route("/v1/recall", post(recall))
        .with_state(ctx)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// The most rows `status` (failed deliveries) and `upcoming` answer at
/// once, whatever the client asks: every answer of the socket is bounded.
pub const MAX_ROWS: usize = 10_000;

impl Limit {
    fn or(&self, default: usize) -> usize {
        self.limit.unwrap_or(default).min(MAX_ROWS)
    }
}

async fn hello(AxumState(ctx): AxumState<Ctx>) -> Json<HelloView> {
    Json(HelloView { identity: ctx.identity.clone(), version: env!("CARGO_PKG_VERSION").to_string() })
}

async fn status(AxumState(ctx): AxumState<Ctx>, Query(limit): Query<Limit>) -> ApiResult<StatusView> {
    let (store, time_zone, limit) = (Arc::clone(&ctx.store), ctx.time_zone, limit.or(20));
    let mut view = in_blocking_pool(move || status_view(store.as_ref(), time_zone, limit)).await??;
    if let Some(role) = &ctx.role {
        let role = role.view();
        view.line = format!("{}; {}", role.describe(), view.line);
        view.role = Some(role);
    }
    Ok(Json(view))
}

/// Run a store read on tokio's blocking pool, so a slow disk never holds
/// up the async workers (and with them every other request).
async fn in_blocking_pool<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(read).await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The status of a store: counts, the next due delivery, failed deliveries.
pub fn status_view(
    store: &dyn Store,
    tz: chrono_tz::Tz,
    failed: usize,
) -> Result<StatusView, crate::store::StoreError> {
    let next = next_due(store, crate::clock::now())?;
    let counts = store.counts()?;
    let in_flight = counts.get(&State::InFlight).copied().unwrap_or(0) as usize;
    // From the index of failed deliveries: as many as asked for, whatever the history.
    let failed = store.deliveries_in_state(State::Failed, failed)?;
    let pauses = crate::pauses::Pauses::load(store)?;
    let mut held = 0;
    if !pauses.is_empty() {
        for key in store.due(None, crate::model::to_millis(crate::clock::now()), MAX_ROWS)? {
            if let Some(d) = store.delivery(key.id)?
                && pauses.covering(&d.post_id, &d.account, d.platform).is_some()
            {
                held += 1;
            }
        }
    }
    Ok(StatusView {
        pauses: pauses.0,
        held,
        line: crate::scheduler::status_line(store, tz, in_flight, crate::clock::now())?,
        role: None,
        retrying: store.retrying()?,
        planned: store.planned_deliveries()?,
        failed,
        counts,
        next,
    })
}

/// The delivery that can go first: pending ones in due order, each no
/// earlier than the end of its account's rate-limit pause (a paused
/// account's delivery is not "due now" while the pause lasts).
fn next_due(
    store: &dyn Store,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Upcoming>, crate::store::StoreError> {
    let mut pauses = std::collections::HashMap::new();
    let mut first: Option<Upcoming> = None;
    for mut upcoming in upcoming_list(store, 500)? {
        if first.as_ref().is_some_and(|first| first.due <= upcoming.due) {
            break; // in due order: nothing later can go earlier
        }
        let paused_until = match pauses.get(&upcoming.account) {
            Some(until) => *until,
            None => {
                let key = crate::scheduler::pause_key(&upcoming.account);
                let until = store
                    .meta(&key)?
                    .and_then(|bytes| String::from_utf8(bytes).ok()?.parse::<i64>().ok())
                    .map(from_millis)
                    .filter(|until| *until > now);
                pauses.insert(upcoming.account.clone(), until);
                until
            }
        };
        if let Some(until) = paused_until
            && until > upcoming.due
        {
            upcoming.due = until;
        }
        if first.as_ref().is_none_or(|first| upcoming.due < first.due) {
            first = Some(upcoming);
        }
    }
    Ok(first)
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
                later: false,
                paused: None,
                approval: None,
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
                later: false,
                paused: None,
                approval: None,
            });
        }
    }
    out.sort_by_key(|u| u.due);
    out.truncate(limit);
    mark_paused(store, &mut out)?;
    Ok(out)
}

/// Mark each row of a post that needs approval with its approval state.
fn mark_approval(
    store: &dyn Store,
    config: &crate::config::Config,
    rows: &mut [Upcoming],
) -> Result<(), crate::store::StoreError> {
    let mut states: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    for row in rows {
        if !states.contains_key(&row.post) {
            let state = match config.posts.get(&row.post).filter(|p| p.requires_approval(&config.daemon)) {
                Some(post) => {
                    let found = crate::approvals::approval(store, &post.id)?;
                    Some(crate::approvals::ApprovalState::of(post, config, found).to_string())
                }
                None => None,
            };
            states.insert(row.post.clone(), state);
        }
        row.approval = states.get(&row.post).cloned().flatten();
    }
    Ok(())
}

/// Mark each row a pause covers with that pause.
fn mark_paused(store: &dyn Store, rows: &mut [Upcoming]) -> Result<(), crate::store::StoreError> {
    let pauses = crate::pauses::Pauses::load(store)?;
    if pauses.is_empty() {
        return Ok(());
    }
    for row in rows {
        let platform = herald_adapters::Platform::parse(&row.platform).unwrap_or(herald_adapters::Platform::Webhook);
        row.paused = pauses.covering(&row.post, &row.account, platform).map(|p| p.selector.to_string());
    }
    Ok(())
}

/// Every occurrence due by `until` (all of them without it), at most `limit`
/// rows in due order: the store's pending and planned deliveries and, given
/// the config, each post's occurrences after the ones the store holds (also
/// planned: they are created one occurrence at a time, `schedule_ahead`
/// before each).
pub fn upcoming_window(
    store: &dyn Store,
    config: Option<&crate::config::Config>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    limit: usize,
) -> Result<Vec<Upcoming>, crate::store::StoreError> {
    let mut out = upcoming_list(store, limit)?;
    let until = until.unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    for post in config.map(|c| c.posts.values()).into_iter().flatten() {
        let Some(record) = store.post(&post.id)? else { continue };
        let Some(mut t) = record.planned.as_ref().map(|p| p.occurrence).or(record.current).map(from_millis) else {
            continue;
        };
        let mut rows = 0;
        while rows < limit {
            let Some(next) = post.schedule.next_after(t).filter(|n| *n <= until) else { break };
            for account in post.targets.iter() {
                let Some(a) = config.and_then(|c| c.accounts.get(account)) else { continue };
                let id = crate::model::DeliveryId::derive(&post.id, crate::model::to_millis(next), account);
                out.push(Upcoming {
                    due: next,
                    delivery: id.to_string(),
                    post: post.id.clone(),
                    account: account.clone(),
                    platform: a.platform.to_string(),
                    attempt: 0,
                    planned: true,
                    later: true,
                    paused: None,
                    approval: None,
                });
                rows += 1;
            }
            t = next;
        }
    }
    out.retain(|u| u.due <= until);
    out.sort_by_key(|u| u.due);
    out.truncate(limit);
    mark_paused(store, &mut out)?;
    if let Some(config) = config {
        mark_approval(store, config, &mut out)?;
    }
    Ok(out)
}

/// The query of `GET /v1/upcoming`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct UpcomingParams {
    pub limit: Option<usize>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

async fn upcoming(AxumState(ctx): AxumState<Ctx>, Query(q): Query<UpcomingParams>) -> ApiResult<Vec<Upcoming>> {
    // The scheduler holds the config the occurrences come from.
    let (tx, rx) = oneshot::channel();
    let stopped = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "herald is stopping".into());
    let limit = q.limit.unwrap_or(50).min(MAX_ROWS);
    ctx.control.send(Control::Upcoming { until: q.until, limit, reply: tx }).await.map_err(|_| stopped())?;
    Ok(Json(rx.await.map_err(|_| stopped())??))
}

/// How many audit records one page reads at most: the memory and time of
/// one `GET /v1/log` are bounded whatever the log's size and the filters.
pub const LOG_PAGE_SCAN: usize = 2_000;

/// One page of the audit log (`GET /v1/log`).
#[derive(Debug, Serialize, Deserialize)]
pub struct LogPage {
    /// The records of this page that match the filters, in sequence order.
    pub records: Vec<AuditRecord>,
    /// Ask again with `after` = this to read on; `None` at the end of the log.
    pub next: Option<u64>,
}

/// Where a `GET /v1/log` page starts (after this sequence number).
#[derive(Debug, Default, Deserialize)]
struct After {
    after: Option<u64>,
}

/// The page of the log after sequence number `after`: at most
/// [`LOG_PAGE_SCAN`] records are read, and those matching `query` kept.
pub fn log_page(
    store: &dyn Store,
    query: &AuditQuery,
    after: Option<u64>,
) -> Result<LogPage, crate::store::StoreError> {
    let scan = AuditQuery { after_seq: after, limit: Some(LOG_PAGE_SCAN), ..AuditQuery::default() };
    let read = store.audit(&scan)?;
    let next = (read.len() == LOG_PAGE_SCAN).then(|| read.last().map(|r| r.seq)).flatten();
    let records = read.into_iter().filter(|r| query.matches(r)).collect();
    Ok(LogPage { records, next })
}

async fn log(
    AxumState(ctx): AxumState<Ctx>,
    Query(params): Query<LogParams>,
    Query(after): Query<After>,
) -> ApiResult<LogPage> {
    let query = params.to_query().map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let store = Arc::clone(&ctx.store);
    // Before the first page, make what is applied durable (a no-op when
    // nothing is new): the log then shows every record that `status`
    // already counts, and still nothing a crash could take back. Later
    // pages continue from a sequence number and need no flush of their own.
    let first_page = after.after.is_none();
    let page = tokio::task::spawn_blocking(move || {
        if first_page {
            store.flush()?;
        }
        log_page(store.as_ref(), &query, after.after)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(page))
}

async fn content(AxumState(ctx): AxumState<Ctx>, UrlPath(hash): UrlPath<String>) -> ApiResult<crate::model::Content> {
    let store = Arc::clone(&ctx.store);
    match in_blocking_pool(move || crate::store::content_by_prefix(store.as_ref(), &hash)).await?? {
        Ok(rendered) => Ok(Json(rendered)),
        Err(message) => Err(ApiError(StatusCode::NOT_FOUND, message)),
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

/// When this daemon is a standby and another daemon leads: its role and
/// the leader, to forward a change to (`crate::forward`).
fn standby_of(ctx: &Ctx) -> Option<(&crate::lease::Role, String)> {
    let role = ctx.role.as_deref()?;
    crate::forward::leader_elsewhere(Some(role)).map(|leader| (role, leader))
}

/// Carry `command` out on the leader (this daemon is `role`, a standby):
/// the leader's answer, value or error, as its own socket gives it.
async fn forwarded<T: serde::de::DeserializeOwned>(
    ctx: &Ctx,
    (role, leader): (&crate::lease::Role, String),
    command: crate::forward::Command,
) -> Result<T, ApiError> {
    let forwarded = crate::forward::Forwarded::new(command);
    crate::forward::forward(&ctx.store, role, &leader, forwarded, crate::forward::wait()).await
}

async fn retry(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut selection): Json<Selection>,
) -> ApiResult<CountView> {
    selection.actor = peer.actor();
    if let Some(standby) = standby_of(&ctx) {
        let count = forwarded(&ctx, standby, crate::forward::Command::Retry { selection }).await?;
        return Ok(Json(CountView { count }));
    }
    operation(&ctx, |tx| Control::Retry(selection, tx)).await
}

async fn cancel(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut selection): Json<Selection>,
) -> ApiResult<CountView> {
    selection.actor = peer.actor();
    if let Some(standby) = standby_of(&ctx) {
        let count = forwarded(&ctx, standby, crate::forward::Command::Cancel { selection }).await?;
        return Ok(Json(CountView { count }));
    }
    operation(&ctx, |tx| Control::Cancel(selection, tx)).await
}

impl From<crate::recall::RecallError> for ApiError {
    fn from(e: crate::recall::RecallError) -> Self {
        use crate::recall::RecallError;
        match e {
            RecallError::Operation(e) => e.into(),
            RecallError::Store(e) => e.into(),
            RecallError::NothingToRecall(..) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            RecallError::NoReason => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}

/// `herald recall`: the scheduler (the store's writer) cancels what has not
/// gone out and names the copies; this task deletes them, within
/// [`crate::recall::DEADLINE`], and records each outcome.
async fn recall(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut order): Json<crate::recall::RecallOrder>,
) -> ApiResult<crate::recall::RecallReport> {
    order.actor = peer.actor();
    let stopped = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "herald is stopping".into());
    let plan = match standby_of(&ctx) {
        // The leader cancels and names the copies; this daemon takes them down, as the leader's socket would.
        Some(standby) => {
            let command = crate::forward::Command::Recall { order: order.clone() };
            let wire: crate::recall::PlanWire = forwarded(&ctx, standby, command).await?;
            let (tx, rx) = oneshot::channel();
            ctx.control.send(Control::RunningConfig(tx)).await.map_err(|_| stopped())?;
            let config = rx.await.map_err(|_| stopped())?;
            let (store, order) = (Arc::clone(&ctx.store), order.clone());
            in_blocking_pool(move || {
                crate::recall::Plan::from_wire(store.as_ref(), &config, &order, wire, crate::clock::now())
            })
            .await??
        }
        None => {
            let (tx, rx) = oneshot::channel();
            ctx.control.send(Control::Recall(order.clone(), tx)).await.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())??
        }
    };
    // A task of its own: a client that goes away (Ctrl-C) does not stop
    // the deletes half-way, and every outcome is still recorded.
    let store = Arc::clone(&ctx.store);
    let work = tokio::spawn(async move {
        let done = crate::recall::execute(plan).await;
        tokio::task::spawn_blocking(move || crate::recall::record(store.as_ref(), done, &order, crate::clock::now()))
            .await
    });
    let failed = |e: tokio::task::JoinError| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let report = work.await.map_err(failed)?.map_err(failed)??;
    Ok(Json(report))
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

impl From<crate::pauses::PauseError> for ApiError {
    fn from(e: crate::pauses::PauseError) -> Self {
        let status = match e {
            crate::pauses::PauseError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

/// `herald pause` and `herald resume`: the scheduler changes the pauses,
/// so that it starts nothing they cover from its next round on.
async fn pause_or_resume(
    ctx: &Ctx,
    make: impl FnOnce(oneshot::Sender<Result<crate::pauses::PauseView, crate::pauses::PauseError>>) -> Control,
) -> ApiResult<crate::pauses::PauseView> {
    let (tx, rx) = oneshot::channel();
    let stopped = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "herald is stopping".into());
    ctx.control.send(make(tx)).await.map_err(|_| stopped())?;
    Ok(Json(rx.await.map_err(|_| stopped())??))
}

async fn pause(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut request): Json<crate::pauses::PauseRequest>,
) -> ApiResult<crate::pauses::PauseView> {
    request.actor = peer.actor();
    if let Some(standby) = standby_of(&ctx) {
        return forwarded(&ctx, standby, crate::forward::Command::Pause { request }).await.map(Json);
    }
    pause_or_resume(&ctx, |tx| Control::Pause(request, tx)).await
}

async fn resume(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut request): Json<crate::pauses::PauseRequest>,
) -> ApiResult<crate::pauses::PauseView> {
    request.actor = peer.actor();
    if let Some(standby) = standby_of(&ctx) {
        return forwarded(&ctx, standby, crate::forward::Command::Resume { request }).await.map(Json);
    }
    pause_or_resume(&ctx, |tx| Control::Resume(request, tx)).await
}

impl From<crate::approvals::ApprovalError> for ApiError {
    fn from(e: crate::approvals::ApprovalError) -> Self {
        let status = match e {
            crate::approvals::ApprovalError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            crate::approvals::ApprovalError::NotAMember { .. } | crate::approvals::ApprovalError::Author { .. } => {
                StatusCode::FORBIDDEN
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError(status, e.to_string())
    }
}

/// `herald approve`: the peer must be in the running config's
/// `approvers_group`, by its primary group or the group database (as for
/// the socket's own access check); the scheduler decides the rest.
async fn approve(
    AxumState(ctx): AxumState<Ctx>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Json(mut request): Json<crate::approvals::ApproveRequest>,
) -> ApiResult<crate::approvals::ApproveView> {
    let stopped = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "herald is stopping".into());
    let (tx, rx) = oneshot::channel();
    ctx.control.send(Control::ApproversGroup(tx)).await.map_err(|_| stopped())?;
    let group = rx.await.map_err(|_| stopped())?;
    request.actor = peer.actor();
    request.member = match (group, peer.uid, peer.gid) {
        (Some(name), Some(uid), Some(gid)) => {
            let check = tokio::task::spawn_blocking(move || {
                let target = nix::unistd::Group::from_name(&name).ok().flatten()?.gid.as_raw();
                Some(gid == target || member_of(uid, gid, target).ok()?)
            });
            matches!(tokio::time::timeout(GROUP_LOOKUP_LIMIT, check).await, Ok(Ok(Some(true))))
        }
        _ => false,
    };
    if let Some(standby) = standby_of(&ctx) {
        let command = crate::forward::Command::Approve { member: request.member, request };
        return forwarded(&ctx, standby, command).await.map(Json);
    }
    let (tx, rx) = oneshot::channel();
    ctx.control.send(Control::Approve(request, tx)).await.map_err(|_| stopped())?;
    Ok(Json(rx.await.map_err(|_| stopped())??))
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
            daemon: self.daemon.clone(),
            events,
            delivery,
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            after_seq: None,
            limit: None,
        })
    }
}

/// The control socket's listener: it serves root, the daemon's user, and
/// members of the socket's group, and refuses everyone else.
struct Authorized {
    inner: UnixListener,
    peers: Arc<Peers>,
}

/// Who may use the control socket.
struct Peers {
    uid: u32,
    gid: u32,
}

/// How long the group database may take to answer (LDAP, SSSD) before a
/// peer is refused.
const GROUP_LOOKUP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Peers {
    /// Root, herald's user, or a member of herald's group: by the peer's
    /// primary group (SO_PEERCRED) or, for its supplementary groups, by
    /// the system's group database (`getgrouplist`, so LDAP and SSSD
    /// users count). Nothing is read from /proc. Whatever cannot be
    /// decided (no such user, the lookup fails or hangs) is a refusal.
    async fn allows(self: Arc<Self>, uid: u32, gid: u32) -> bool {
        if uid == 0 || uid == self.uid || gid == self.gid {
            return true;
        }
        let target = self.gid;
        let lookup = tokio::task::spawn_blocking(move || member_of(uid, gid, target));
        match tokio::time::timeout(GROUP_LOOKUP_LIMIT, lookup).await {
            Ok(Ok(Ok(member))) => member,
            Ok(Ok(Err(e))) => {
                tracing::warn!(uid, error = %e, "control socket: cannot read the peer's groups; refusing it");
                false
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(uid, "control socket: the group database did not answer; refusing the peer");
                false
            }
        }
    }
}

/// Why a peer's groups could not be read.
#[derive(Debug, thiserror::Error)]
enum GroupLookupError {
    #[error("no user with uid {0} in the user database")]
    NoSuchUser(u32),
    #[error("the user or group database: {0}")]
    Database(#[from] nix::Error),
    #[error("user name with a NUL byte")]
    BadName,
}

/// Does the group database put user `uid` (primary group `gid`) in `target`?
fn member_of(uid: u32, gid: u32, target: u32) -> Result<bool, GroupLookupError> {
    use nix::unistd::{Gid, Uid, User, getgrouplist};
    let user = User::from_uid(Uid::from_raw(uid))?.ok_or(GroupLookupError::NoSuchUser(uid))?;
    let name = std::ffi::CString::new(user.name).map_err(|_| GroupLookupError::BadName)?;
    let groups = getgrouplist(&name, Gid::from_raw(gid))?;
    Ok(groups.contains(&Gid::from_raw(target)))
}

impl crate::connections::Incoming for Authorized {
    type Io = UnixStream;
    type Info = Peer;

    async fn accept(&mut self) -> std::io::Result<UnixStream> {
        self.inner.accept().await.map(|(stream, _)| stream)
    }

    fn admit(&self, stream: UnixStream) -> impl Future<Output = Option<(UnixStream, Peer)>> + Send + 'static {
        let peers = Arc::clone(&self.peers);
        async move {
            let cred = match stream.peer_cred() {
                Ok(cred) => cred,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: cannot read the peer's credentials; refusing it");
                    return None;
                }
            };
            if peers.allows(cred.uid(), cred.gid()).await {
                Some((stream, Peer { uid: Some(cred.uid()), gid: Some(cred.gid()) }))
            } else {
                tracing::warn!(
                    uid = cred.uid(),
                    gid = cred.gid(),
                    "control socket: refused a peer that is not root nor herald's user or group"
                );
                None
            }
        }
    }
}

/// A running control server; it removes its socket file when dropped.
pub struct ControlServer {
    path: PathBuf,
    /// The socket file herald bound (device, inode): only that is removed.
    bound: Option<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.task.abort();
        // Remove the socket only if it is still the one herald bound.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && Some((meta.dev(), meta.ino())) == self.bound
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why the control socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "control_socket {0} exists and is not a socket; herald only ever replaces a stale socket of its own. \
         Name another path in `[daemon] control_socket` (or remove that file yourself if it is really not needed)"
    )]
    NotASocket(PathBuf),
    #[error(
        "control_socket {path} is a socket of another user (uid {owner}); herald only ever replaces a stale socket \
         of its own. Name another path in `[daemon] control_socket`"
    )]
    NotOurs { path: PathBuf, owner: u32 },
    #[error("another process answers on the control socket {0}")]
    InUse(PathBuf),
    #[error("socket_group `{0}` is not a group on this host")]
    NoSuchGroup(String),
    #[error("{what} {path}: {error}")]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
}

/// Make way for the socket at `path`: nothing there, or a socket of this
/// user that nobody answers on (left by a herald that died), which is
/// removed. Anything else is refused and left alone.
fn clear_stale_socket(path: &Path) -> Result<(), SocketError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(SocketError::Io { what: "reading", path: path.to_path_buf(), error }),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path.to_path_buf()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(SocketError::NotOurs { path: path.to_path_buf(), owner: meta.uid() });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|error| SocketError::Io {
        what: "removing the stale socket",
        path: path.to_path_buf(),
        error,
    })
}

/// Bind the control socket at `path` (mode 0660, optionally owned by `group`)
/// and serve it for the store in `state_dir`.
pub fn serve(
    path: &Path,
    state_dir: &Path,
    group: Option<&str>,
    store: Arc<dyn Store>,
    control: mpsc::Sender<Control>,
    reloader: Arc<dyn Reloader>,
    shown: Shown,
) -> anyhow::Result<ControlServer> {
    let Shown { time_zone, role } = shown;
    use anyhow::Context;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // A folder herald makes for its socket: herald runs with umask 077, so
    // open it to the socket's group (set below), which must reach the socket.
    let made_dir = match path.parent() {
        Some(dir) if !dir.exists() => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
            Some(dir)
        }
        _ => None,
    };
    clear_stale_socket(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding the control socket {}", path.display()))?;
    let bound =
        std::fs::symlink_metadata(path).with_context(|| format!("reading the control socket {}", path.display()))?;
    let server = |task| ControlServer { path: path.to_path_buf(), bound: Some((bound.dev(), bound.ino())), task };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    let mut gid = rustix::process::getgid().as_raw();
    if let Some(name) = group {
        let id = nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| SocketError::NoSuchGroup(name.to_string()))?
            .gid
            .as_raw();
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(id)))
            .with_context(|| format!("giving the control socket to group `{name}`"))?;
        gid = id;
    }
    if let Some(dir) = made_dir {
        rustix::fs::chown(dir, None, Some(rustix::fs::Gid::from_raw(gid)))
            .with_context(|| format!("giving {} to the control socket's group", dir.display()))?;
    }
    let peers = Arc::new(Peers { uid: rustix::process::getuid().as_raw(), gid });
    let authorized = Authorized { inner: listener, peers };
    let identity =
        StateIdentity::of(state_dir).with_context(|| format!("reading the state directory {}", state_dir.display()))?;
    let ctx = Ctx { store, control, reloader, time_zone, identity, role };
    let app = router(ctx);
    let task = tokio::spawn(crate::connections::serve(authorized, app, crate::connections::Limits::CONTROL, "control"));
    tracing::info!(socket = %path.display(), "control socket listening");
    Ok(server(task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid no user database knows (and a gid that is not herald's): the
    /// groups cannot be read, so the peer is refused, never let in.
    #[tokio::test]
    async fn a_peer_whose_groups_cannot_be_read_is_refused() {
        let me = rustix::process::getuid().as_raw();
        let peers = Arc::new(Peers { uid: me, gid: 4_000_000_001 });
        assert!(!Arc::clone(&peers).allows(4_000_000_000, 4_000_000_002).await);
        assert!(Arc::clone(&peers).allows(me, 4_000_000_002).await, "herald's own user");
        assert!(peers.allows(4_000_000_000, 4_000_000_001).await, "herald's group as primary group");
    }

    #[test]
    fn only_a_stale_socket_of_our_own_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store-file");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(clear_stale_socket(&file), Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        assert!(matches!(clear_stale_socket(dir.path()), Err(SocketError::NotASocket(_))));
        let socket = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        clear_stale_socket(&socket).unwrap();
        assert!(!socket.exists(), "the stale socket was not removed");
        clear_stale_socket(&socket).unwrap();
    }
}
