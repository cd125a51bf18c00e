//! Mastodon emulator: `POST /api/v1/statuses` (JSON or form),
//! `GET /api/v1/statuses/{id}` and `GET /api/v1/accounts/verify_credentials`,
//! with the checks the real server makes: a known `Authorization: Bearer`
//! token (401 otherwise), a non-empty `status`, a known `visibility`, at most
//! 500 characters of text and content warning (422 otherwise), and the
//! `Idempotency-Key` remembered for an hour per account: a repeat answers the
//! original status and creates nothing. `POST /api/v2/media` takes an
//! image (multipart `file`, JPEG/PNG/GIF, with an optional `description`)
//! and answers its attachment id, which a status names in `media_ids` (at
//! most 4, each the account's own, 422 otherwise).
//!
//! `DELETE /api/v1/statuses/{id}` deletes one of the token's account's
//! statuses (answers it; 404 when unknown or already deleted); a deleted
//! status keeps its place in `/_sandbox/published` with `deleted_at` set,
//! and `GET` answers 404 for it.
//!
//! Control API (under the emulator's base URL): `GET /_sandbox/published`,
//! `POST /_sandbox/faults` ([`FaultSpec`]), `POST /_sandbox/rate_limit`
//! ([`RateLimitSpec`]: 429 with `X-RateLimit-Reset`), `POST /_sandbox/reset`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::emulator::{self, Hosting, Planned, Reply, detached, lock};
use crate::faults::{Fault, FaultPlan, FaultSpec, Injected};
use crate::server::Stopping;
use crate::tokens::{Tokens, owner_number};

const STATUSES: &str = "/api/v1/statuses";
const MEDIA: &str = "/api/v2/media";
/// The most attachments a status takes.
const MAX_MEDIA: usize = 4;
const VERIFY_CREDENTIALS: &str = "/api/v1/accounts/verify_credentials";
const VISIBILITIES: &[&str] = &["public", "unlisted", "private", "direct"];

/// How the emulator behaves.
#[derive(Debug, Clone)]
pub struct MastodonConfig {
    pub tokens: Tokens,
    /// Characters of text and content warning; 500 by default on real instances.
    pub max_length: usize,
    /// How long an idempotency key is remembered (an hour on real instances).
    pub idempotency_window: Duration,
}

impl MastodonConfig {
    pub fn new(tokens: Tokens) -> MastodonConfig {
        MastodonConfig { tokens, max_length: 500, idempotency_window: Duration::from_secs(3600) }
    }
}

/// One status the emulator created, with the exact body received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MastodonStatus {
    pub id: String,
    pub url: String,
    pub account_id: u64,
    pub username: String,
    pub received_at: DateTime<Utc>,
    /// `application/json` or `application/x-www-form-urlencoded`.
    pub content_type: String,
    pub idempotency_key: Option<String>,
    /// The body as received (a form becomes an object of strings).
    pub body: Value,
    /// When `DELETE /api/v1/statuses/{id}` deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl MastodonStatus {
    /// A field of the body, as text.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// An image uploaded with `POST /api/v2/media`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MastodonMedia {
    pub id: String,
    pub account_id: u64,
    pub description: Option<String>,
    pub content_type: Option<String>,
    pub bytes: usize,
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MastodonOutcome {
    Created {
        id: String,
    },
    /// A repeated idempotency key: the original status, nothing created.
    Replayed {
        id: String,
    },
    Refused {
        status: u16,
        error: String,
    },
    RateLimited,
    Faulted {
        status: u16,
    },
    Dropped,
    Answered,
    /// `DELETE` took the status down.
    Deleted {
        id: String,
    },
}

/// One request the emulator got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MastodonRequest {
    pub received_at: DateTime<Utc>,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub outcome: MastodonOutcome,
}

/// The body of `POST /_sandbox/rate_limit`: answer the next `count` (default
/// 1) API requests 429 with `X-RateLimit-Reset` `reset_in_secs` from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub count: Option<usize>,
    pub reset_in_secs: u64,
}

/// A Mastodon emulator. Dropping it shuts its own server down.
pub struct MastodonEmulator {
    hosting: Hosting,
    mastodon: Arc<Mastodon>,
}

impl MastodonEmulator {
    pub async fn start(addr: SocketAddr, config: MastodonConfig) -> io::Result<MastodonEmulator> {
        let (binding, stopping, addr) = emulator::bind(addr).await?;
        let mut emulator = MastodonEmulator::mounted(addr, "", stopping, config);
        emulator.hosting.server = Some(binding.serve(emulator.router()));
        tracing::info!(%addr, "mastodon emulator listening");
        Ok(emulator)
    }

    pub(crate) fn mounted(
        addr: SocketAddr,
        prefix: &str,
        stopping: Stopping,
        config: MastodonConfig,
    ) -> MastodonEmulator {
        let mastodon = Arc::new(Mastodon {
            base_url: emulator::base_url(addr, prefix),
            config,
            faults: FaultPlan::default(),
            rate_limits: Planned::default(),
            stopping,
            ledger: Mutex::default(),
        });
        MastodonEmulator { hosting: Hosting { server: None, addr }, mastodon }
    }

    pub fn router(&self) -> Router {
        router(Arc::clone(&self.mastodon))
    }

    pub fn addr(&self) -> SocketAddr {
        self.hosting.addr
    }

    /// The `base_url` to give the adapter.
    pub fn base_url(&self) -> &str {
        &self.mastodon.base_url
    }

    /// Every status created, in order (replays left out).
    pub fn published(&self) -> Vec<MastodonStatus> {
        lock(&self.mastodon.ledger).published.clone()
    }

    pub fn requests(&self) -> Vec<MastodonRequest> {
        lock(&self.mastodon.ledger).requests.clone()
    }

    /// Every image uploaded, in order.
    pub fn media(&self) -> Vec<MastodonMedia> {
        lock(&self.mastodon.ledger).media.clone()
    }

    /// The username the emulator gives the owner of `token`.
    pub fn username_of(token: &str) -> String {
        username(account_of(token))
    }

    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.mastodon.faults.fail_next(count, fault);
    }

    /// The next `count` API requests are answered 429 with
    /// `X-RateLimit-Reset: reset_at`.
    pub fn rate_limit_next(&self, count: usize, reset_at: DateTime<Utc>) {
        self.mastodon.rate_limits.push(count, reset_at);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.mastodon.faults.set_latency(latency);
    }

    /// Forget statuses, keys, requests and faults (ids keep counting).
    pub fn reset(&self) {
        self.mastodon.reset();
    }

    pub async fn shutdown(self) {
        self.hosting.shutdown().await;
    }
}

impl std::fmt::Debug for MastodonEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MastodonEmulator").field("base_url", &self.mastodon.base_url).finish_non_exhaustive()
    }
}

struct Mastodon {
    base_url: String,
    config: MastodonConfig,
    faults: FaultPlan,
    rate_limits: Planned<DateTime<Utc>>,
    stopping: Stopping,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    published: Vec<MastodonStatus>,
    media: Vec<MastodonMedia>,
    requests: Vec<MastodonRequest>,
    /// (account, key) -> (index in `published`, when first used).
    keys: HashMap<(u64, String), (usize, DateTime<Utc>)>,
    last_id: u64,
}

/// A request as read off the wire.
struct Arrival {
    path: String,
    received_at: DateTime<Utc>,
    token: Option<String>,
    idempotency_key: Option<String>,
    content_type: String,
    body: Option<Value>,
}

impl Arrival {
    fn read(path: &str, headers: &HeaderMap, body: &[u8]) -> Arrival {
        let text = |name| headers.get(name).and_then(|value: &HeaderValue| value.to_str().ok()).map(str::to_string);
        let content_type = text(header::CONTENT_TYPE.as_str()).unwrap_or_default();
        let body = if content_type.starts_with("application/x-www-form-urlencoded") {
            serde_urlencoded_object(body)
        } else if body.is_empty() {
            None
        } else {
            serde_json::from_slice(body).ok()
        };
        Arrival {
            path: path.to_string(),
            received_at: Utc::now(),
            token: text(header::AUTHORIZATION.as_str())
                .and_then(|value| value.strip_prefix("Bearer ").map(|token| token.trim().to_string())),
            idempotency_key: text("idempotency-key"),
            content_type,
            body,
        }
    }
}

/// A form body as a JSON object of strings.
fn serde_urlencoded_object(body: &[u8]) -> Option<Value> {
    let pairs = form_pairs(body)?;
    Some(Value::Object(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<_, _>>()))
}

fn form_pairs(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?;
    let decode = |part: &str| -> Option<String> {
        let spaced = part.replace('+', " ");
        let bytes = spaced.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = spaced.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(key)?, decode(value)?))
        })
        .collect()
}

fn account_of(token: &str) -> u64 {
    owner_number(token, 100_000, 900_000)
}

fn username(account: u64) -> String {
    format!("sandbox{account}")
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

impl Mastodon {
    fn reset(&self) {
        self.faults.reset();
        self.rate_limits.clear();
        let mut ledger = lock(&self.ledger);
        *ledger = Ledger { last_id: ledger.last_id, ..Ledger::default() };
    }

    fn record(&self, ledger: &mut Ledger, arrival: &Arrival, outcome: MastodonOutcome) {
        tracing::info!(path = %arrival.path, key = arrival.idempotency_key.as_deref().unwrap_or("-"), outcome = ?outcome, "mastodon request handled");
        ledger.requests.push(MastodonRequest {
            received_at: arrival.received_at,
            path: arrival.path.clone(),
            idempotency_key: arrival.idempotency_key.clone(),
            outcome,
        });
    }

    /// Faults, rate limits and the token; `Err` is the answer.
    async fn admit(&self, arrival: &Arrival) -> Result<u64, Reply> {
        match self.faults.apply(&self.stopping).await {
            Injected::None => {}
            Injected::Status(fault) => {
                self.record(&mut lock(&self.ledger), arrival, MastodonOutcome::Faulted { status: fault.status });
                return Err(fault.into());
            }
            Injected::Drop => {
                self.record(&mut lock(&self.ledger), arrival, MastodonOutcome::Dropped);
                return Err(Reply::Drop);
            }
        }
        let mut ledger = lock(&self.ledger);
        if let Some(reset_at) = self.rate_limits.take() {
            self.record(&mut ledger, arrival, MastodonOutcome::RateLimited);
            let reset = reset_at.to_rfc3339_opts(SecondsFormat::Millis, true);
            let headers = [
                ("x-ratelimit-limit", "300".to_string()),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", reset),
            ];
            return Err((StatusCode::TOO_MANY_REQUESTS, headers, Json(json!({ "error": "Too many requests" }))).into());
        }
        match arrival.token.as_deref() {
            Some(token) if self.config.tokens.accepts(token) => Ok(account_of(token)),
            _ => {
                let error = "The access token is invalid";
                self.record(&mut ledger, arrival, MastodonOutcome::Refused { status: 401, error: error.into() });
                Err(refusal(StatusCode::UNAUTHORIZED, error).into())
            }
        }
    }

    async fn create(self: Arc<Self>, arrival: Arrival) -> Reply {
        let account = match self.admit(&arrival).await {
            Ok(account) => account,
            Err(reply) => return reply,
        };
        let mut ledger = lock(&self.ledger);
        let window = chrono::Duration::from_std(self.config.idempotency_window).unwrap_or(chrono::Duration::zero());
        if let Some(key) = &arrival.idempotency_key
            && let Some((index, at)) = ledger.keys.get(&(account, key.clone())).copied()
            && arrival.received_at - at < window
            && let Some(original) = ledger.published.get(index).cloned()
        {
            self.record(&mut ledger, &arrival, MastodonOutcome::Replayed { id: original.id.clone() });
            return Json(status_json(&original)).into();
        }
        let validated = self.validate(arrival.body.as_ref()).and_then(|()| {
            media_ids(arrival.body.as_ref()).into_iter().try_for_each(|id| {
                let known = ledger.media.iter().any(|media| media.id == id && media.account_id == account);
                if known { Ok(()) } else { Err(format!("Validation failed: media {id} not found")) }
            })
        });
        let validated = validated.and_then(|()| {
            if media_ids(arrival.body.as_ref()).len() > MAX_MEDIA {
                Err(format!("Validation failed: at most {MAX_MEDIA} media attachments"))
            } else {
                Ok(())
            }
        });
        if let Err(error) = validated {
            self.record(&mut ledger, &arrival, MastodonOutcome::Refused { status: 422, error: error.clone() });
            return refusal(StatusCode::UNPROCESSABLE_ENTITY, &error).into();
        }
        ledger.last_id += 1;
        let id = (110_000_000_000_000_000 + ledger.last_id).to_string();
        let name = username(account);
        let status = MastodonStatus {
            url: format!("{}/@{name}/{id}", self.base_url),
            id: id.clone(),
            account_id: account,
            username: name,
            received_at: arrival.received_at,
            content_type: arrival.content_type.clone(),
            idempotency_key: arrival.idempotency_key.clone(),
            body: arrival.body.clone().unwrap_or(Value::Null),
            deleted_at: None,
        };
        let answer = status_json(&status);
        if let Some(key) = &arrival.idempotency_key {
            let index = ledger.published.len();
            ledger.keys.insert((account, key.clone()), (index, arrival.received_at));
        }
        ledger.published.push(status);
        self.record(&mut ledger, &arrival, MastodonOutcome::Created { id });
        Json(answer).into()
    }

    /// Mastodon's validation, with its messages.
    fn validate(&self, body: Option<&Value>) -> Result<(), String> {
        let text = |name: &str| body.and_then(|body| body.get(name)).and_then(Value::as_str);
        let status = text("status").unwrap_or_default();
        if status.trim().is_empty() {
            return Err("Validation failed: Text can't be blank".into());
        }
        if let Some(visibility) = text("visibility")
            && !VISIBILITIES.contains(&visibility)
        {
            return Err("Validation failed: Visibility is not included in the list".into());
        }
        let length = status.chars().count() + text("spoiler_text").map_or(0, |s| s.chars().count());
        if length > self.config.max_length {
            return Err(format!("Validation failed: Text character limit of {} exceeded", self.config.max_length));
        }
        Ok(())
    }

    async fn upload(self: Arc<Self>, arrival: Arrival, content_type: Option<String>, body: Bytes) -> Reply {
        let account = match self.admit(&arrival).await {
            Ok(account) => account,
            Err(reply) => return reply,
        };
        let parts = read_multipart(content_type.as_deref(), body).await;
        let mut ledger = lock(&self.ledger);
        let refuse = |ledger: &mut Ledger, error: &str| {
            self.record(ledger, &arrival, MastodonOutcome::Refused { status: 422, error: error.into() });
            Reply::from(refusal(StatusCode::UNPROCESSABLE_ENTITY, error))
        };
        let Some(parts) = parts else { return refuse(&mut ledger, "Validation failed: File can't be blank") };
        let Some((file_type, file)) =
            parts.iter().find(|(name, ..)| name == "file").map(|(_, kind, bytes)| (kind, bytes))
        else {
            return refuse(&mut ledger, "Validation failed: File can't be blank");
        };
        let image = file.starts_with(&[0xFF, 0xD8, 0xFF])
            || file.starts_with(b"\x89PNG\r\n\x1a\n")
            || file.starts_with(b"GIF8");
        if !image {
            return refuse(&mut ledger, "Validation failed: File content type is invalid");
        }
        let description = parts
            .iter()
            .find(|(name, ..)| name == "description")
            .map(|(_, _, bytes)| String::from_utf8_lossy(bytes).into_owned());
        if description.as_deref().is_some_and(|text| text.chars().count() > 1500) {
            return refuse(&mut ledger, "Validation failed: Description is too long (maximum is 1500 characters)");
        }
        ledger.last_id += 1;
        let id = (120_000_000_000_000_000 + ledger.last_id).to_string();
        let media = MastodonMedia {
            id: id.clone(),
            account_id: account,
            description: description.clone(),
            content_type: file_type.clone(),
            bytes: file.len(),
        };
        ledger.media.push(media);
        self.record(&mut ledger, &arrival, MastodonOutcome::Created { id: id.clone() });
        let url = format!("{}/media/{id}", self.base_url);
        Json(json!({ "id": id, "type": "image", "url": url, "preview_url": url, "description": description })).into()
    }

    async fn show(self: Arc<Self>, arrival: Arrival, id: String) -> Reply {
        if let Err(reply) = self.admit(&arrival).await {
            return reply;
        }
        let mut ledger = lock(&self.ledger);
        let found = ledger.published.iter().find(|status| status.id == id && status.deleted_at.is_none()).cloned();
        match found {
            Some(status) => {
                self.record(&mut ledger, &arrival, MastodonOutcome::Answered);
                Json(status_json(&status)).into()
            }
            None => {
                self.record(
                    &mut ledger,
                    &arrival,
                    MastodonOutcome::Refused { status: 404, error: "Record not found".into() },
                );
                refusal(StatusCode::NOT_FOUND, "Record not found").into()
            }
        }
    }

    /// Delete one of the account's statuses; 404 when it has none by that
    /// id (another account's, unknown, or deleted already).
    async fn delete(self: Arc<Self>, arrival: Arrival, id: String) -> Reply {
        let account = match self.admit(&arrival).await {
            Ok(account) => account,
            Err(reply) => return reply,
        };
        let mut ledger = lock(&self.ledger);
        let found = ledger
            .published
            .iter_mut()
            .find(|status| status.id == id && status.account_id == account && status.deleted_at.is_none());
        match found {
            Some(status) => {
                status.deleted_at = Some(arrival.received_at);
                let answer = status_json(status);
                self.record(&mut ledger, &arrival, MastodonOutcome::Deleted { id });
                Json(answer).into()
            }
            None => {
                let error = "Record not found";
                self.record(&mut ledger, &arrival, MastodonOutcome::Refused { status: 404, error: error.into() });
                refusal(StatusCode::NOT_FOUND, error).into()
            }
        }
    }

    async fn verify(self: Arc<Self>, arrival: Arrival) -> Reply {
        let account = match self.admit(&arrival).await {
            Ok(account) => account,
            Err(reply) => return reply,
        };
        self.record(&mut lock(&self.ledger), &arrival, MastodonOutcome::Answered);
        let name = username(account);
        Json(json!({
            "id": account.to_string(),
            "username": name,
            "acct": name,
            "display_name": "herald sandbox",
            "url": format!("{}/@{name}", self.base_url),
        }))
        .into()
    }
}

/// The `media_ids` of a status body (a JSON array, or a form's one value).
fn media_ids(body: Option<&Value>) -> Vec<String> {
    match body.and_then(|body| body.get("media_ids").or_else(|| body.get("media_ids[]"))) {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(id)) => vec![id.clone()],
        _ => Vec::new(),
    }
}

/// The parts of a multipart body: (name, content type, bytes).
async fn read_multipart(content_type: Option<&str>, body: Bytes) -> Option<Vec<(String, Option<String>, Bytes)>> {
    use axum::extract::{FromRequest, Multipart};
    let content_type = content_type.filter(|value| value.starts_with("multipart/form-data"))?;
    let request = axum::http::Request::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .ok()?;
    let mut multipart = Multipart::from_request(request, &()).await.ok()?;
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.ok()? {
        let name = field.name().unwrap_or_default().to_string();
        let kind = field.content_type().map(str::to_string);
        parts.push((name, kind, field.bytes().await.ok()?));
    }
    Some(parts)
}

fn status_json(status: &MastodonStatus) -> Value {
    let text = |name: &str| status.field(name).map(str::to_string);
    json!({
        "id": status.id,
        "created_at": status.received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "uri": format!("{}/activity", status.url),
        "url": status.url,
        "visibility": text("visibility").unwrap_or_else(|| "public".into()),
        "language": text("language"),
        "spoiler_text": text("spoiler_text").unwrap_or_default(),
        "content": format!("<p>{}</p>", text("status").unwrap_or_default()),
        "account": { "id": status.account_id.to_string(), "username": status.username, "acct": status.username },
    })
}

fn router(mastodon: Arc<Mastodon>) -> Router {
    Router::new()
        .route(STATUSES, post(create))
        .route(MEDIA, post(upload))
        .route("/api/v1/statuses/{id}", get(show).delete(delete))
        .route(VERIFY_CREDENTIALS, get(verify))
        .route("/_sandbox/published", get(list_published))
        .route("/_sandbox/faults", post(plan_faults))
        .route("/_sandbox/rate_limit", post(plan_rate_limit))
        .route("/_sandbox/reset", post(reset))
        .fallback(|| async { refusal(StatusCode::NOT_FOUND, "Record not found") })
        .with_state(mastodon)
}

async fn create(
    State(mastodon): State<Arc<Mastodon>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Arrival::read(STATUSES, &headers, &body);
    detached(&extensions, mastodon.create(arrival)).await
}

async fn upload(
    State(mastodon): State<Arc<Mastodon>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Arrival::read(MEDIA, &headers, &[]);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_string);
    detached(&extensions, mastodon.upload(arrival, content_type, body)).await
}

async fn show(
    State(mastodon): State<Arc<Mastodon>>,
    extensions: Extensions,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let arrival = Arrival::read(&format!("{STATUSES}/{id}"), &headers, &[]);
    detached(&extensions, mastodon.show(arrival, id)).await
}

async fn delete(
    State(mastodon): State<Arc<Mastodon>>,
    extensions: Extensions,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let arrival = Arrival::read(&format!("{STATUSES}/{id}"), &headers, &[]);
    detached(&extensions, mastodon.delete(arrival, id)).await
}

async fn verify(State(mastodon): State<Arc<Mastodon>>, extensions: Extensions, headers: HeaderMap) -> Response {
    let arrival = Arrival::read(VERIFY_CREDENTIALS, &headers, &[]);
    detached(&extensions, mastodon.verify(arrival)).await
}

async fn list_published(State(mastodon): State<Arc<Mastodon>>) -> Json<Vec<MastodonStatus>> {
    Json(lock(&mastodon.ledger).published.clone())
}

async fn plan_faults(State(mastodon): State<Arc<Mastodon>>, Json(spec): Json<FaultSpec>) -> Response {
    match mastodon.faults.apply_spec(&spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error.to_string() }))).into_response(),
    }
}

async fn plan_rate_limit(State(mastodon): State<Arc<Mastodon>>, Json(spec): Json<RateLimitSpec>) -> StatusCode {
    let reset_at = i64::try_from(spec.reset_in_secs)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|wait| Utc::now().checked_add_signed(wait))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    mastodon.rate_limits.push(spec.count.unwrap_or(1), reset_at);
    StatusCode::NO_CONTENT
}

async fn reset(State(mastodon): State<Arc<Mastodon>>) -> StatusCode {
    mastodon.reset();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_form_bodies() {
        let object = serde_urlencoded_object(b"status=hello+world%21&visibility=public&empty=").unwrap();
        assert_eq!(object, json!({ "status": "hello world!", "visibility": "public", "empty": "" }));
        assert_eq!(serde_urlencoded_object(b"status=%zz"), None);
    }
}
