//! Webhook receiver: accepts herald's webhook deliveries on any path, checks
//! their Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`; a timestamp more than [`TOLERANCE`] away from now
//! is refused, so a captured request cannot be replayed later),
//! de-duplicates them by `webhook-id` (else `Idempotency-Key`), and records
//! everything that arrived, with the raw body and signature headers, for
//! tests, `herald demo` and reference verifiers.
//!
//! HTTP surface (besides `POST <any path>`):
//! - `GET /posts/{id}`: an accepted post's body (the URL given in receipts;
//!   410 once recalled);
//! - a recall event (`POST` of `{"type": "herald.recall", "delivery_id", ...}`,
//!   signed like a delivery) marks the post of that delivery recalled
//!   (`recalled_at` on its entry in `/_sandbox/received`) and answers 200;
//!   404 when no post of that delivery was accepted;
//! - `GET /_sandbox/received`: every request received, as a JSON list of
//!   [`ReceivedPost`];
//! - `POST /_sandbox/faults`: plan faults ([`FaultSpec`]);
//! - `POST /_sandbox/latency`: set the latency of every answer ([`LatencySpec`]);
//! - `POST /_sandbox/reset`: forget posts, faults and latency (ids keep
//!   counting, so an id is never handed out twice).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::emulator::Hosting;
use crate::faults::{Fault, FaultPlan, FaultSpec, Injected, LatencySpec};
use crate::server::{Binding, Connection, Stopping};

/// The path [`WebhookReceiver::url`] points at (any other path works too).
pub const HOOK_PATH: &str = "/hook";

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
const DELIVERY_HEADER: &str = "x-herald-delivery";
const ID_HEADER: &str = "webhook-id";
const TIMESTAMP_HEADER: &str = "webhook-timestamp";
const SIGNATURE_HEADER: &str = "webhook-signature";

/// How far a `webhook-timestamp` may be from the receiver's clock (the
/// reference libraries' window).
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// One request the receiver got, whatever became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedPost {
    pub received_at: DateTime<Utc>,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The `X-Herald-Delivery` header.
    pub delivery_id: Option<String>,
    /// The body, when it is JSON.
    pub body: Option<Value>,
    /// The body as received (invalid UTF-8 replaced), for verifiers.
    #[serde(default)]
    pub raw_body: String,
    /// The `webhook-id`, `webhook-timestamp` and `webhook-signature`
    /// headers as received.
    #[serde(default)]
    pub webhook_headers: Vec<(String, String)>,
    pub signature: Signature,
    /// An earlier request carried the same idempotency key (whatever its
    /// outcome): this one is a retry.
    pub key_seen_before: bool,
    pub outcome: Outcome,
    /// When a recall event took this accepted post down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalled_at: Option<DateTime<Utc>>,
}

impl ReceivedPost {
    /// The signature was present and matched the receiver's secret.
    pub fn signature_verified(&self) -> bool {
        self.signature == Signature::Valid
    }

    /// The id and URL this request was answered with, when it was accepted
    /// (now or, for a duplicate, earlier).
    pub fn post(&self) -> Option<(&str, &str)> {
        match &self.outcome {
            Outcome::Accepted { id, url } | Outcome::Duplicate { id, url } => Some((id, url)),
            _ => None,
        }
    }
}

/// What became of the signature check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    /// The receiver has no secret: signatures are not checked.
    Unchecked,
    Valid,
    Missing,
    Invalid,
    /// Correctly signed, but the timestamp is outside [`TOLERANCE`]: a
    /// replay, or a badly wrong clock.
    Stale,
}

/// How the receiver answered a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// A new post: 200 with its id and URL.
    Accepted { id: String, url: String },
    /// Its idempotency key was already accepted: 200 with the original id
    /// and URL, and no new post.
    Duplicate { id: String, url: String },
    /// Refused: 401 for a missing or wrong signature, 400 for a body that is
    /// not JSON.
    Rejected { status: u16, reason: String },
    /// Answered with an injected error status.
    Faulted { status: u16 },
    /// The connection was closed without an answer (an injected fault).
    Dropped,
    /// A recall event: the post `id` is taken down (now, or it was already).
    Recalled { id: String },
}

/// A webhook receiver running in this process. Dropping it shuts the server
/// down.
pub struct WebhookReceiver {
    hosting: Hosting,
    receiver: Arc<Receiver>,
}

impl WebhookReceiver {
    /// Listen on `addr` (port 0 picks a free port). With a `secret`
    /// (`whsec_<base64>`, or plain: its bytes are the key), every request
    /// must carry a valid, fresh Standard Webhooks signature.
    pub async fn start(addr: SocketAddr, secret: Option<String>) -> io::Result<WebhookReceiver> {
        let binding = Binding::bind(addr).await?;
        let mut receiver = WebhookReceiver::mounted(binding.addr(), binding.stopping(), secret)?;
        let server = binding.serve(receiver.router());
        tracing::info!(addr = %server.addr(), signed = receiver.receiver.secret.is_some(), "webhook receiver listening");
        receiver.hosting.server = Some(server);
        Ok(receiver)
    }

    /// A receiver whose [`router`](Self::router) is mounted at the root of a
    /// server on `addr`.
    pub(crate) fn mounted(addr: SocketAddr, stopping: Stopping, secret: Option<String>) -> io::Result<WebhookReceiver> {
        let secret = secret.map(|secret| signing_key(&secret)).transpose()?;
        let receiver = Arc::new(Receiver {
            base_url: format!("http://{addr}"),
            secret,
            faults: FaultPlan::default(),
            stopping,
            ledger: Mutex::default(),
            arrivals: Notify::new(),
        });
        Ok(WebhookReceiver { hosting: Hosting { server: None, addr }, receiver })
    }

    /// The receiver's routes (every path), for mounting.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.receiver))
    }

    pub fn addr(&self) -> SocketAddr {
        self.hosting.addr
    }

    /// `http://ADDR`, the root of the receiver and its control API.
    pub fn base_url(&self) -> &str {
        &self.receiver.base_url
    }

    /// The URL to deliver to: `http://ADDR/hook`.
    pub fn url(&self) -> String {
        format!("{}{HOOK_PATH}", self.receiver.base_url)
    }

    /// Every request received so far, in order of arrival (processing).
    pub fn received(&self) -> Vec<ReceivedPost> {
        self.receiver.ledger().received.clone()
    }

    /// Write the first accepted post's raw body and signature headers to
    /// `path` as JSON (`{"body", "headers"}`), for a verifier outside Rust.
    pub fn dump_first_accepted(&self, path: &std::path::Path) -> io::Result<()> {
        let first = self.accepted().into_iter().next().ok_or_else(|| io::Error::other("nothing accepted yet"))?;
        let headers: serde_json::Map<String, Value> =
            first.webhook_headers.into_iter().map(|(name, value)| (name, Value::String(value))).collect();
        let dump = json!({ "body": first.raw_body, "headers": headers });
        std::fs::write(path, serde_json::to_vec_pretty(&dump).map_err(io::Error::other)?)
    }

    /// The posts accepted: one per idempotency key, duplicates left out.
    pub fn accepted(&self) -> Vec<ReceivedPost> {
        let ledger = self.receiver.ledger();
        ledger.received.iter().filter(|post| matches!(post.outcome, Outcome::Accepted { .. })).cloned().collect()
    }

    /// How many requests repeated an already accepted idempotency key.
    pub fn duplicates(&self) -> usize {
        let ledger = self.receiver.ledger();
        ledger.received.iter().filter(|post| matches!(post.outcome, Outcome::Duplicate { .. })).count()
    }

    /// The next `count` requests get `fault` (after faults already planned).
    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.receiver.faults.fail_next(count, fault);
    }

    /// Wait this long before every answer (the control API excepted).
    pub fn set_latency(&self, latency: Duration) {
        self.receiver.faults.set_latency(latency);
    }

    /// Forget posts, faults and latency.
    pub fn reset(&self) {
        self.receiver.reset();
    }

    /// Wait until `condition` holds for the requests received, at most
    /// `within`; answers whether it held.
    pub async fn wait_until(&self, within: Duration, condition: impl Fn(&[ReceivedPost]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrival = self.receiver.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            if condition(&self.receiver.ledger().received) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrival).await.is_err() {
                return condition(&self.receiver.ledger().received);
            }
        }
    }

    /// Stop accepting connections, finish the answers in progress, and wait
    /// for the server to end.
    pub async fn shutdown(self) {
        self.hosting.shutdown().await;
    }
}

impl std::fmt::Debug for WebhookReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReceiver")
            .field("addr", &self.addr())
            .field("signed", &self.receiver.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// The receiver's shared state.
struct Receiver {
    base_url: String,
    secret: Option<Vec<u8>>,
    faults: FaultPlan,
    stopping: Stopping,
    ledger: Mutex<Ledger>,
    /// Notified after each request is recorded.
    arrivals: Notify,
}

#[derive(Default)]
struct Ledger {
    received: Vec<ReceivedPost>,
    seen_keys: HashSet<String>,
    /// Accepted idempotency key -> (id, url).
    accepted: HashMap<String, (String, String)>,
    last_id: u64,
}

/// What the handler sends back on the connection.
enum Reply {
    Answer(Response),
    Drop,
}

/// A request as read off the wire, before the receiver decides on it.
struct Arrival {
    received_at: DateTime<Utc>,
    path: String,
    idempotency_key: Option<String>,
    delivery_id: Option<String>,
    body: Option<Value>,
    raw_body: String,
    webhook_headers: Vec<(String, String)>,
    signature: Signature,
}

impl Receiver {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&self) {
        self.faults.reset();
        let mut ledger = self.ledger();
        *ledger = Ledger { last_id: ledger.last_id, ..Ledger::default() };
    }

    fn arrival(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> Arrival {
        let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_string);
        let received_at = Utc::now();
        let webhook_headers = [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER]
            .into_iter()
            .filter_map(|name| Some((name.to_string(), text(name)?)))
            .collect();
        let signature = self.check_signature(
            text(ID_HEADER).as_deref(),
            text(TIMESTAMP_HEADER).as_deref(),
            text(SIGNATURE_HEADER).as_deref(),
            body,
            received_at,
        );
        Arrival {
            received_at,
            path: path.to_string(),
            idempotency_key: text(ID_HEADER).or_else(|| text(IDEMPOTENCY_KEY_HEADER)),
            delivery_id: text(DELIVERY_HEADER),
            body: serde_json::from_slice(body).ok(),
            raw_body: String::from_utf8_lossy(body).into_owned(),
            webhook_headers,
            signature,
        }
    }

    /// Check a Standard Webhooks signature: any `v1,<base64>` of the
    /// space-separated list must be HMAC-SHA256(key, "id.timestamp.body")
    /// (compared in constant time), and the timestamp within [`TOLERANCE`].
    fn check_signature(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Signature {
        let Some(secret) = &self.secret else {
            return Signature::Unchecked;
        };
        let (Some(id), Some(timestamp), Some(signatures)) = (id, timestamp, signatures) else {
            return Signature::Missing;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return Signature::Invalid;
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let matches = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .any(|encoded| STANDARD.decode(encoded).is_ok_and(|given| mac.clone().verify_slice(&given).is_ok()));
        if !matches {
            return Signature::Invalid;
        }
        let Ok(sent) = timestamp.parse::<i64>() else {
            return Signature::Invalid;
        };
        if (now.timestamp() - sent).unsigned_abs() > TOLERANCE.as_secs() { Signature::Stale } else { Signature::Valid }
    }

    /// Apply latency and faults, decide, record, and answer.
    async fn handle(&self, arrival: Arrival) -> Reply {
        let injected = self.faults.apply(&self.stopping).await;
        let reply = {
            let mut ledger = self.ledger();
            let key_seen_before =
                arrival.idempotency_key.as_ref().is_some_and(|key| !ledger.seen_keys.insert(key.clone()));
            let (outcome, reply) = self.decide(&mut ledger, &arrival, injected);
            tracing::info!(
                path = %arrival.path,
                key = arrival.idempotency_key.as_deref().unwrap_or("-"),
                key_seen_before,
                signature = ?arrival.signature,
                outcome = ?outcome,
                "webhook request handled"
            );
            ledger.received.push(ReceivedPost {
                received_at: arrival.received_at,
                path: arrival.path,
                idempotency_key: arrival.idempotency_key,
                delivery_id: arrival.delivery_id,
                body: arrival.body,
                raw_body: arrival.raw_body,
                webhook_headers: arrival.webhook_headers,
                signature: arrival.signature,
                key_seen_before,
                outcome,
                recalled_at: None,
            });
            reply
        };
        self.arrivals.notify_waiters();
        reply
    }

    fn decide(&self, ledger: &mut Ledger, arrival: &Arrival, injected: Injected) -> (Outcome, Reply) {
        match injected {
            Injected::None => {}
            Injected::Status(fault) => {
                return (Outcome::Faulted { status: fault.status }, Reply::Answer(fault.into_response()));
            }
            Injected::Drop => return (Outcome::Dropped, Reply::Drop),
        }
        match arrival.signature {
            Signature::Unchecked | Signature::Valid => {}
            Signature::Stale => {
                return rejected(
                    StatusCode::UNAUTHORIZED,
                    "webhook-timestamp outside the tolerance window (a replay?)",
                );
            }
            Signature::Missing | Signature::Invalid => {
                return rejected(StatusCode::UNAUTHORIZED, "missing or wrong webhook-signature");
            }
        }
        if arrival.body.is_none() {
            return rejected(StatusCode::BAD_REQUEST, "the body is not JSON");
        }
        if arrival.body.as_ref().and_then(|body| body.get("type")).and_then(Value::as_str) == Some(RECALL_TYPE) {
            return recall(ledger, arrival);
        }
        if let Some(key) = &arrival.idempotency_key
            && let Some((id, url)) = ledger.accepted.get(key)
        {
            let reply = Reply::Answer(post_answer(id, url));
            return (Outcome::Duplicate { id: id.clone(), url: url.clone() }, reply);
        }
        ledger.last_id += 1;
        let id = ledger.last_id.to_string();
        let url = format!("{}/posts/{id}", self.base_url);
        if let Some(key) = &arrival.idempotency_key {
            ledger.accepted.insert(key.clone(), (id.clone(), url.clone()));
        }
        let reply = Reply::Answer(post_answer(&id, &url));
        (Outcome::Accepted { id, url }, reply)
    }
}

/// The `type` of a recall event.
pub const RECALL_TYPE: &str = "herald.recall";

/// A recall event: mark the post its delivery made recalled.
fn recall(ledger: &mut Ledger, arrival: &Arrival) -> (Outcome, Reply) {
    let delivery = arrival.body.as_ref().and_then(|body| body.get("delivery_id")).and_then(Value::as_str);
    let found = ledger.received.iter_mut().find(|post| {
        post.delivery_id.as_deref() == delivery
            && delivery.is_some()
            && matches!(post.outcome, Outcome::Accepted { .. })
    });
    match found {
        Some(post) => {
            post.recalled_at.get_or_insert(arrival.received_at);
            let id = post.post().map(|(id, _)| id.to_string()).unwrap_or_default();
            let answer = Json(json!({ "recalled": id })).into_response();
            (Outcome::Recalled { id }, Reply::Answer(answer))
        }
        None => rejected(StatusCode::NOT_FOUND, "no accepted post of this delivery"),
    }
}

/// The HMAC key of a receiver secret: `whsec_<base64>` decoded, or a
/// plain secret's bytes (as herald reads them).
fn signing_key(secret: &str) -> io::Result<Vec<u8>> {
    let refused = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("the webhook secret {why}"));
    let key = match secret.strip_prefix("whsec_") {
        Some(encoded) => base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|_| refused("after `whsec_` must be base64"))?,
        None => secret.as_bytes().to_vec(),
    };
    if key.is_empty() {
        return Err(refused("must not be empty"));
    }
    Ok(key)
}

fn post_answer(id: &str, url: &str) -> Response {
    Json(json!({ "id": id, "url": url })).into_response()
}

fn rejected(status: StatusCode, reason: &str) -> (Outcome, Reply) {
    let answer = (status, Json(json!({ "error": reason }))).into_response();
    (Outcome::Rejected { status: status.as_u16(), reason: reason.to_string() }, Reply::Answer(answer))
}

fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/_sandbox/received", get(list_received))
        .route("/_sandbox/faults", post(plan_faults))
        .route("/_sandbox/latency", post(set_latency))
        .route("/_sandbox/reset", post(reset))
        .route("/posts/{id}", get(show_post))
        .fallback(receive)
        .with_state(receiver)
}

/// `POST <any path>`: a delivery.
async fn receive(
    State(receiver): State<Arc<Receiver>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response();
    }
    let arrival = receiver.arrival(uri.path(), &headers, &body);
    // Handled on a task of its own, so a client that gives up (a timeout)
    // does not stop the receiver from finishing, as a real platform would.
    let handling = tokio::spawn(async move { receiver.handle(arrival).await });
    match handling.await {
        Ok(Reply::Answer(response)) => response,
        Ok(Reply::Drop) => {
            connection.cut();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(error) => {
            tracing::error!(%error, "webhook request handling failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn list_received(State(receiver): State<Arc<Receiver>>) -> Json<Vec<ReceivedPost>> {
    Json(receiver.ledger().received.clone())
}

async fn plan_faults(State(receiver): State<Arc<Receiver>>, Json(spec): Json<FaultSpec>) -> Response {
    match receiver.faults.apply_spec(&spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error.to_string() }))).into_response(),
    }
}

async fn set_latency(State(receiver): State<Arc<Receiver>>, Json(spec): Json<LatencySpec>) -> StatusCode {
    receiver.faults.set_latency(Duration::from_millis(spec.latency_ms));
    StatusCode::NO_CONTENT
}

async fn reset(State(receiver): State<Arc<Receiver>>) -> StatusCode {
    receiver.reset();
    StatusCode::NO_CONTENT
}

async fn show_post(State(receiver): State<Arc<Receiver>>, Path(id): Path<String>) -> Response {
    let ledger = receiver.ledger();
    let found = ledger
        .received
        .iter()
        .find(|post| matches!(&post.outcome, Outcome::Accepted { id: accepted, .. } if *accepted == id));
    if found.is_some_and(|post| post.recalled_at.is_some()) {
        return StatusCode::GONE.into_response();
    }
    match found.and_then(|post| post.body.clone()) {
        Some(body) => Json(body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
