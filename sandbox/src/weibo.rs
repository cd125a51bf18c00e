//! Weibo emulator: `statuses/share.json` (form or multipart with `pic`),
//! `account/get_uid.json` and `statuses/user_timeline.json`, with the checks
//! the real API makes: a known access token (parameter or `Authorization:
//! OAuth2` header), a `status` of at most 140 Chinese characters (two ASCII
//! characters count as one) holding a URL on the app's safe domain, a JPEG,
//! GIF or PNG picture under 5 MB, and no identical text from the same user
//! within a short window. Errors are `{"request", "error_code", "error"}`.
//!
//! `statuses/destroy.json` (POST, `id`) deletes one of the user's statuses
//! where the app has the permission (`destroy_permission`; 10014 otherwise),
//! answering the status; an unknown or deleted id is answered 20101. A
//! deleted status stays in `/_sandbox/published` with `deleted_at` set and
//! leaves the timeline.
//!
//! Control API (under the emulator's base URL): `GET /_sandbox/published`,
//! `POST /_sandbox/faults` ([`FaultSpec`]), `POST /_sandbox/errors`
//! ([`ErrorSpec`]: answer the next requests with an `error_code`),
//! `POST /_sandbox/reset`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::emulator::{self, Hosting, Planned, Reply, detached, lock};
use crate::faults::{Fault, FaultPlan, FaultSpec, Injected};
use crate::server::Stopping;
use crate::tokens::{Tokens, owner_number};

const SHARE: &str = "/2/statuses/share.json";
const GET_UID: &str = "/2/account/get_uid.json";
const USER_TIMELINE: &str = "/2/statuses/user_timeline.json";
const DESTROY: &str = "/2/statuses/destroy.json";

/// Pictures must be smaller than this.
pub const MAX_PICTURE_BYTES: usize = 5 * 1024 * 1024;

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct WeiboConfig {
    pub tokens: Tokens,
    /// The app's registered domain: every status must link to it or a subdomain.
    pub safe_domain: String,
    /// In Weibo characters; 140 on the real platform.
    pub max_length: usize,
    /// The same text from the same user within this window is refused (20019).
    pub duplicate_window: Duration,
    /// Whether the app may read the user timeline; many share.json apps
    /// may not, and are answered 10014 there.
    pub timeline_permission: bool,
    /// Whether the app may delete statuses (`statuses/destroy.json`);
    /// answered 10014 when not.
    pub destroy_permission: bool,
}

impl WeiboConfig {
    pub fn new(tokens: Tokens, safe_domain: impl Into<String>) -> WeiboConfig {
        WeiboConfig {
            tokens,
            safe_domain: safe_domain.into().to_ascii_lowercase(),
            max_length: 140,
            duplicate_window: Duration::from_secs(600),
            timeline_permission: true,
            destroy_permission: true,
        }
    }
}

/// How the form arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Form,
    Multipart,
    /// Neither (a GET, or an unexpected content type).
    Other,
}

/// A picture received as the `pic` part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Picture {
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub size: usize,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
}

/// One status the emulator published, with the exact fields received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeiboPost {
    pub id: u64,
    pub mid: String,
    pub uid: u64,
    pub received_at: DateTime<Utc>,
    pub encoding: Encoding,
    /// Whether the token came as the `access_token` parameter (else the header).
    pub token_in_parameter: bool,
    /// Every text field, exactly as received (`access_token`, `status`, `rip`...).
    pub fields: BTreeMap<String, String>,
    pub pic: Option<Picture>,
    /// When `statuses/destroy.json` deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl WeiboPost {
    /// The `status` field: the text as published.
    pub fn status(&self) -> &str {
        self.fields.get("status").map_or("", String::as_str)
    }
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WeiboOutcome {
    Published {
        id: u64,
    },
    /// Answered an error (`answered_code` for a planned [`ErrorSpec`]).
    Refused {
        error_code: u32,
    },
    /// Published, but answered a planned error (20032: "posted, server slow").
    PublishedWithError {
        id: u64,
        error_code: u32,
    },
    Faulted {
        status: u16,
    },
    Dropped,
    /// A read-only call answered normally.
    Answered,
    /// `statuses/destroy.json` deleted the status.
    Deleted {
        id: u64,
    },
}

/// One request the emulator got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeiboRequest {
    pub received_at: DateTime<Utc>,
    pub path: String,
    pub outcome: WeiboOutcome,
}

/// The body of `POST /_sandbox/errors`: answer the next `count` (default 1)
/// API requests with `error_code`. 20032 publishes, then answers the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorSpec {
    pub count: Option<usize>,
    pub error_code: u32,
}

/// A Weibo emulator. Dropping it shuts its own server down.
pub struct WeiboEmulator {
    hosting: Hosting,
    weibo: Arc<Weibo>,
}

impl WeiboEmulator {
    /// Serve on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr, config: WeiboConfig) -> io::Result<WeiboEmulator> {
        let (binding, stopping, addr) = emulator::bind(addr).await?;
        let mut emulator = WeiboEmulator::mounted(addr, "", stopping, config);
        emulator.hosting.server = Some(binding.serve(emulator.router()));
        tracing::info!(%addr, "weibo emulator listening");
        Ok(emulator)
    }

    /// An emulator whose [`router`](Self::router) is mounted at `prefix` of
    /// a server on `addr`.
    pub(crate) fn mounted(addr: SocketAddr, prefix: &str, stopping: Stopping, config: WeiboConfig) -> WeiboEmulator {
        let weibo = Arc::new(Weibo {
            base_url: emulator::base_url(addr, prefix),
            config,
            faults: FaultPlan::default(),
            errors: Planned::default(),
            stopping,
            ledger: Mutex::default(),
        });
        WeiboEmulator { hosting: Hosting { server: None, addr }, weibo }
    }

    /// The emulator's routes, for mounting.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.weibo))
    }

    pub fn addr(&self) -> SocketAddr {
        self.hosting.addr
    }

    /// The `base_url` to give the adapter: `http://ADDR` (or `http://ADDR/weibo` when mounted).
    pub fn base_url(&self) -> &str {
        &self.weibo.base_url
    }

    /// Every status published, in order.
    pub fn published(&self) -> Vec<WeiboPost> {
        lock(&self.weibo.ledger).published.clone()
    }

    /// Every API request received, in order.
    pub fn requests(&self) -> Vec<WeiboRequest> {
        lock(&self.weibo.ledger).requests.clone()
    }

    /// The user id the emulator gives the owner of `token`.
    pub fn uid_of(token: &str) -> u64 {
        uid_of(token)
    }

    /// The next `count` API requests get `fault`.
    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.weibo.faults.fail_next(count, fault);
    }

    /// The next `count` API requests are answered with `error_code` (after
    /// any [`Fault`]); 20032 publishes first, as the real one does.
    pub fn answer_next(&self, count: usize, error_code: u32) {
        self.weibo.errors.push(count, error_code);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.weibo.faults.set_latency(latency);
    }

    /// Forget statuses, requests and faults (ids keep counting).
    pub fn reset(&self) {
        self.weibo.reset();
    }

    pub async fn shutdown(self) {
        self.hosting.shutdown().await;
    }
}

impl std::fmt::Debug for WeiboEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeiboEmulator").field("base_url", &self.weibo.base_url).finish_non_exhaustive()
    }
}

struct Weibo {
    base_url: String,
    config: WeiboConfig,
    faults: FaultPlan,
    errors: Planned<u32>,
    stopping: Stopping,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    published: Vec<WeiboPost>,
    requests: Vec<WeiboRequest>,
    last_id: u64,
}

/// A share request as read off the wire.
struct Submission {
    received_at: DateTime<Utc>,
    encoding: Encoding,
    header_token: Option<String>,
    fields: BTreeMap<String, String>,
    pic: Option<(Picture, Bytes)>,
    /// The multipart body could not be read.
    broken: bool,
}

fn uid_of(token: &str) -> u64 {
    owner_number(token, 5_000_000_000, 1_000_000_000)
}

/// An error the emulator answers: the HTTP status and `error_code`.
struct Refusal(StatusCode, u32);

/// A Weibo error answer.
fn error(status: StatusCode, path: &str, code: u32, as_text: bool) -> Response {
    let error_code = if as_text { json!(code.to_string()) } else { json!(code) };
    (status, Json(json!({ "request": path, "error_code": error_code, "error": message(code) }))).into_response()
}

fn message(code: u32) -> &'static str {
    match code {
        10001 => "system error",
        10006 => "source paramter(appkey) is missing",
        10010 => "job expired",
        10014 => "Insufficient app permissions",
        10016 => "miss required parameter (status) , see doc for more info.",
        10017 => "text not find domain",
        10022 => "IP requests out of rate limit",
        10023 => "User requests out of rate limit",
        10024 => "User requests for (statuses/share) out of rate limit",
        20005 => "unsupported image type, only suport JPG, GIF, PNG",
        20006 => "image size too large",
        20007 => "does multipart has image?",
        20012 => "Text too long, please input text less than 140 characters!",
        20016 => "out of limit",
        20019 => "repeat content!",
        20031 => "test and verify",
        20032 => "update success, while server slow now, please wait 1-2 minutes",
        20101 => "target weibo does not exist!",
        21327 => "expired_token",
        21332 => "invalid_access_token",
        _ => "sandbox error",
    }
}

impl Weibo {
    fn reset(&self) {
        self.faults.reset();
        self.errors.clear();
        let mut ledger = lock(&self.ledger);
        *ledger = Ledger { last_id: ledger.last_id, ..Ledger::default() };
    }

    fn record(&self, ledger: &mut Ledger, path: &str, outcome: WeiboOutcome) {
        tracing::info!(path, outcome = ?outcome, "weibo request handled");
        ledger.requests.push(WeiboRequest { received_at: Utc::now(), path: path.to_string(), outcome });
    }

    /// Faults first: `Some(reply)` when one answers the request.
    async fn faulted(&self, path: &str) -> Option<Reply> {
        match self.faults.apply(&self.stopping).await {
            Injected::None => None,
            Injected::Status(fault) => {
                self.record(&mut lock(&self.ledger), path, WeiboOutcome::Faulted { status: fault.status });
                Some(fault.into())
            }
            Injected::Drop => {
                self.record(&mut lock(&self.ledger), path, WeiboOutcome::Dropped);
                Some(Reply::Drop)
            }
        }
    }

    /// The token's user, or the error answer.
    fn authenticate(&self, token: Option<&str>) -> Result<u64, Refusal> {
        match token {
            None | Some("") => Err(Refusal(StatusCode::BAD_REQUEST, 10006)),
            Some(token) if self.config.tokens.accepts(token) => Ok(uid_of(token)),
            Some(_) => Err(Refusal(StatusCode::UNAUTHORIZED, 21332)),
        }
    }

    async fn share(self: Arc<Self>, submission: Submission) -> Reply {
        if let Some(reply) = self.faulted(SHARE).await {
            return reply;
        }
        let planned = self.errors.take();
        let mut ledger = lock(&self.ledger);
        if let Some(code) = planned.filter(|code| *code != 20032) {
            self.record(&mut ledger, SHARE, WeiboOutcome::Refused { error_code: code });
            return error(StatusCode::FORBIDDEN, SHARE, code, true).into();
        }
        match self.check(&ledger, &submission) {
            Err(Refusal(status, code)) => {
                self.record(&mut ledger, SHARE, WeiboOutcome::Refused { error_code: code });
                error(status, SHARE, code, false).into()
            }
            Ok(uid) => {
                ledger.last_id += 1;
                let id = 4_900_000_000_000_000 + ledger.last_id;
                let post = WeiboPost {
                    id,
                    mid: id.to_string(),
                    uid,
                    received_at: submission.received_at,
                    encoding: submission.encoding,
                    token_in_parameter: submission.fields.contains_key("access_token"),
                    fields: submission.fields,
                    pic: submission.pic.map(|(picture, _)| picture),
                    deleted_at: None,
                };
                let answer = status_json(&post);
                ledger.published.push(post);
                if let Some(code) = planned {
                    self.record(&mut ledger, SHARE, WeiboOutcome::PublishedWithError { id, error_code: code });
                    return error(StatusCode::OK, SHARE, code, true).into();
                }
                self.record(&mut ledger, SHARE, WeiboOutcome::Published { id });
                Json(answer).into()
            }
        }
    }

    /// What the real API checks before publishing: the user, or the error.
    fn check(&self, ledger: &Ledger, submission: &Submission) -> Result<u64, Refusal> {
        let refuse = |code| Err(Refusal(StatusCode::BAD_REQUEST, code));
        if submission.broken {
            return refuse(20007);
        }
        let token = submission.fields.get("access_token").or(submission.header_token.as_ref());
        let uid = self.authenticate(token.map(String::as_str))?;
        let text = submission.fields.get("status").map_or("", String::as_str);
        // share.json requires `rip`, the real IP of the acting user.
        let rip = submission.fields.get("rip").map_or("", String::as_str);
        if text.trim().is_empty() || rip.trim().is_empty() {
            return refuse(10016);
        }
        if weibo_length(text) > self.config.max_length {
            return refuse(20012);
        }
        if !url_hosts(text).iter().any(|host| on_domain(host, &self.config.safe_domain)) {
            return refuse(10017);
        }
        if let Some((_, bytes)) = &submission.pic {
            if picture_type(bytes).is_none() {
                return refuse(20005);
            }
            if bytes.len() >= MAX_PICTURE_BYTES {
                return refuse(20006);
            }
        }
        let window = chrono::Duration::from_std(self.config.duplicate_window).unwrap_or(chrono::Duration::zero());
        let repeated = ledger.published.iter().any(|post| {
            post.uid == uid
                && post.deleted_at.is_none()
                && post.status() == text
                && submission.received_at - post.received_at < window
        });
        if repeated {
            return refuse(20019);
        }
        Ok(uid)
    }

    /// `statuses/destroy.json`: faults, planned errors, the token, the
    /// app's permission, then the user's own status by `id`.
    async fn destroy(self: Arc<Self>, submission: Submission) -> Reply {
        if let Some(reply) = self.faulted(DESTROY).await {
            return reply;
        }
        let planned = self.errors.take();
        let mut ledger = lock(&self.ledger);
        let refused = |ledger: &mut Ledger, status, code| {
            self.record(ledger, DESTROY, WeiboOutcome::Refused { error_code: code });
            Reply::from(error(status, DESTROY, code, false))
        };
        if let Some(code) = planned {
            return refused(&mut ledger, StatusCode::FORBIDDEN, code);
        }
        let token = submission.fields.get("access_token").or(submission.header_token.as_ref());
        let uid = match self.authenticate(token.map(String::as_str)) {
            Ok(uid) => uid,
            Err(Refusal(status, code)) => return refused(&mut ledger, status, code),
        };
        if !self.config.destroy_permission {
            return refused(&mut ledger, StatusCode::FORBIDDEN, 10014);
        }
        let id = submission.fields.get("id").and_then(|id| id.trim().parse::<u64>().ok());
        let now = submission.received_at;
        let found = ledger
            .published
            .iter_mut()
            .find(|post| Some(post.id) == id && post.uid == uid && post.deleted_at.is_none());
        match found {
            Some(post) => {
                post.deleted_at = Some(now);
                let answer = status_json(post);
                let id = post.id;
                self.record(&mut ledger, DESTROY, WeiboOutcome::Deleted { id });
                Json(answer).into()
            }
            None => refused(&mut ledger, StatusCode::BAD_REQUEST, 20101),
        }
    }

    /// A read-only call: faults, planned errors, the token, then `answer`.
    async fn read(
        self: Arc<Self>,
        path: &'static str,
        token: Option<String>,
        answer: impl FnOnce(&Ledger, u64) -> Value + Send + 'static,
    ) -> Reply {
        if let Some(reply) = self.faulted(path).await {
            return reply;
        }
        let planned = self.errors.take();
        let mut ledger = lock(&self.ledger);
        if let Some(code) = planned {
            self.record(&mut ledger, path, WeiboOutcome::Refused { error_code: code });
            return error(StatusCode::FORBIDDEN, path, code, true).into();
        }
        match self.authenticate(token.as_deref()) {
            Err(Refusal(status, code)) => {
                self.record(&mut ledger, path, WeiboOutcome::Refused { error_code: code });
                error(status, path, code, false).into()
            }
            Ok(uid) => {
                let body = answer(&ledger, uid);
                self.record(&mut ledger, path, WeiboOutcome::Answered);
                Json(body).into()
            }
        }
    }
}

fn status_json(post: &WeiboPost) -> Value {
    let beijing = FixedOffset::east_opt(8 * 3600).map(|offset| post.received_at.with_timezone(&offset));
    let created_at = beijing.map(|time| time.format("%a %b %d %H:%M:%S %z %Y").to_string());
    let mut status = json!({
        "created_at": created_at,
        "id": post.id,
        "idstr": post.id.to_string(),
        "mid": post.mid,
        "text": post.status(),
        "source": "<a href=\"https://example.org\" rel=\"nofollow\">herald-sandbox</a>",
        "user": { "id": post.uid, "idstr": post.uid.to_string(), "screen_name": format!("sandbox_{}", post.uid) },
    });
    if post.pic.is_some() {
        status["original_pic"] = json!(format!("https://wx1.sinaimg.cn/large/{}.jpg", post.mid));
    }
    status
}

fn router(weibo: Arc<Weibo>) -> Router {
    Router::new()
        .route(SHARE, post(share))
        .route(GET_UID, get(get_uid))
        .route(USER_TIMELINE, get(user_timeline))
        .route(DESTROY, post(destroy))
        .route("/_sandbox/published", get(list_published))
        .route("/_sandbox/faults", post(plan_faults))
        .route("/_sandbox/errors", post(plan_errors))
        .route("/_sandbox/reset", post(reset))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "", 10020, false) })
        .with_state(weibo)
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("OAuth2 ").map(|token| token.trim().to_string())
}

async fn share(State(weibo): State<Arc<Weibo>>, extensions: Extensions, request: Request) -> Response {
    let submission = read_submission(request).await;
    detached(&extensions, weibo.share(submission)).await
}

async fn destroy(State(weibo): State<Arc<Weibo>>, extensions: Extensions, request: Request) -> Response {
    let submission = read_submission(request).await;
    detached(&extensions, weibo.destroy(submission)).await
}

async fn read_submission(request: Request) -> Submission {
    let header_token = header_token(request.headers());
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut submission = Submission {
        received_at: Utc::now(),
        encoding: Encoding::Other,
        header_token,
        fields: BTreeMap::new(),
        pic: None,
        broken: false,
    };
    if content_type.starts_with("multipart/form-data") {
        submission.encoding = Encoding::Multipart;
        let Ok(mut multipart) = Multipart::from_request(request, &()).await else {
            submission.broken = true;
            return submission;
        };
        loop {
            match multipart.next_field().await {
                Ok(Some(field)) => {
                    let name = field.name().unwrap_or_default().to_string();
                    let file_name = field.file_name().map(str::to_string);
                    let content_type = field.content_type().map(str::to_string);
                    let Ok(bytes) = field.bytes().await else {
                        submission.broken = true;
                        break;
                    };
                    if name == "pic" {
                        let sha256 = hex::encode(Sha256::digest(&bytes));
                        let picture = Picture { file_name, content_type, size: bytes.len(), sha256 };
                        submission.pic = Some((picture, bytes));
                    } else {
                        submission.fields.insert(name, String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    submission.broken = true;
                    break;
                }
            }
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        submission.encoding = Encoding::Form;
        if let Ok(Form(fields)) = Form::<Vec<(String, String)>>::from_request(request, &()).await {
            submission.fields = fields.into_iter().collect();
        }
    }
    submission
}

async fn get_uid(
    State(weibo): State<Arc<Weibo>>,
    extensions: Extensions,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let token = query.get("access_token").cloned().or_else(|| header_token(&headers));
    detached(&extensions, weibo.read(GET_UID, token, |_, uid| json!({ "uid": uid }))).await
}

async fn user_timeline(
    State(weibo): State<Arc<Weibo>>,
    extensions: Extensions,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let token = query.get("access_token").cloned().or_else(|| header_token(&headers));
    let count = query.get("count").and_then(|count| count.parse::<usize>().ok()).unwrap_or(20).clamp(1, 100);
    let answer = move |ledger: &Ledger, uid: u64| {
        let mine: Vec<&WeiboPost> =
            ledger.published.iter().filter(|post| post.uid == uid && post.deleted_at.is_none()).collect();
        let statuses: Vec<Value> = mine.iter().rev().take(count).map(|post| status_json(post)).collect();
        json!({ "statuses": statuses, "total_number": mine.len() })
    };
    if !weibo.config.timeline_permission {
        let refused = weibo.clone().read(USER_TIMELINE, token, |_, _| Value::Null);
        return detached(&extensions, async move {
            match refused.await {
                // Authenticated, but this app may not read the timeline.
                Reply::Answer(response) if response.status().is_success() => {
                    error(StatusCode::FORBIDDEN, USER_TIMELINE, 10014, false).into()
                }
                other => other,
            }
        })
        .await;
    }
    detached(&extensions, weibo.read(USER_TIMELINE, token, answer)).await
}

async fn list_published(State(weibo): State<Arc<Weibo>>) -> Json<Vec<WeiboPost>> {
    Json(lock(&weibo.ledger).published.clone())
}

async fn plan_faults(State(weibo): State<Arc<Weibo>>, Json(spec): Json<FaultSpec>) -> Response {
    match weibo.faults.apply_spec(&spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error.to_string() }))).into_response(),
    }
}

async fn plan_errors(State(weibo): State<Arc<Weibo>>, Json(spec): Json<ErrorSpec>) -> StatusCode {
    weibo.errors.push(spec.count.unwrap_or(1), spec.error_code);
    StatusCode::NO_CONTENT
}

async fn reset(State(weibo): State<Arc<Weibo>>) -> StatusCode {
    weibo.reset();
    StatusCode::NO_CONTENT
}

/// Weibo's length: two half-width characters count as one, rounded up.
fn weibo_length(text: &str) -> usize {
    let halves: usize = text
        .chars()
        .map(|c| {
            // Half-width katakana count as whole characters.
            let katakana = ('\u{FF65}'..='\u{FF9F}').contains(&c);
            let half = c.is_ascii()
                || (('\u{FF61}'..='\u{FFDC}').contains(&c) && !katakana)
                || ('\u{FFE8}'..='\u{FFEE}').contains(&c);
            if half { 1 } else { 2 }
        })
        .sum();
    halves.div_ceil(2)
}

/// The hosts of the http(s) URLs in `text`, as written: Weibo compares the
/// safe domain with the host as sent, so `WWW.Example.gov.cn` is not on
/// `example.gov.cn`.
fn url_hosts(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    lower
        .match_indices("://")
        .filter(|(at, _)| lower[..*at].ends_with("http") || lower[..*at].ends_with("https"))
        .map(|(at, _)| {
            text[at + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                .collect::<String>()
                .trim_end_matches('.')
                .to_string()
        })
        .filter(|host| !host.is_empty())
        .collect()
}

fn on_domain(host: &str, domain: &str) -> bool {
    host == domain || host.strip_suffix(domain).is_some_and(|prefix| prefix.ends_with('.'))
}

fn picture_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert_eq!(weibo_length("ab防诈"), 3);
        assert_eq!(weibo_length("ｱｲ"), 2, "half-width katakana count one each");
        assert_eq!(url_hosts("见https://A.example.gov.cn/x，HTTP://t.cn"), ["A.example.gov.cn", "t.cn"]);
        assert!(!on_domain("www.Example.GOV.cn", "example.gov.cn"), "compared as sent");
        assert!(on_domain("a.example.gov.cn", "example.gov.cn"));
        assert!(!on_domain("badexample.gov.cn", "example.gov.cn"));
        assert_eq!(picture_type(b"GIF89a"), Some("gif"));
    }
}
