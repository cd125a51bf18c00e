//! Webhook receiver: accepts herald's webhook deliveries on any path, checks
//! their `X-Herald-Signature`, de-duplicates them by `Idempotency-Key`, and
//! records everything that arrived, for tests and `herald demo`.
//!
//! HTTP surface (besides `POST <any path>`):
//! - `GET /posts/{id}`: an accepted post's body (the URL given in receipts);
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
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::faults::{Fault, FaultPlan, FaultSpec, Injected, LatencySpec};
use crate::server::{Binding, Connection, Server, Stopping};

/// The path [`WebhookReceiver::url`] points at (any other path works too).
pub const HOOK_PATH: &str = "/hook";

const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
const DELIVERY_HEADER: &str = "x-herald-delivery";
const SIGNATURE_HEADER: &str = "x-herald-signature";

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
    pub signature: Signature,
    /// An earlier request carried the same idempotency key (whatever its
    /// outcome): this one is a retry.
    pub key_seen_before: bool,
    pub outcome: Outcome,
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
}

/// A webhook receiver running in this process. Dropping it shuts the server
/// down.
pub struct WebhookReceiver {
    server: Server,
    receiver: Arc<Receiver>,
}

impl WebhookReceiver {
    /// Listen on `addr` (port 0 picks a free port). With a `secret`, every
    /// request must carry a valid `X-Herald-Signature`.
    pub async fn start(addr: SocketAddr, secret: Option<String>) -> io::Result<WebhookReceiver> {
        check_secret(secret.as_deref())?;
        let binding = Binding::bind(addr).await?;
        let receiver = receiver(&binding, secret);
        let server = binding.serve(router(Arc::clone(&receiver)));
        tracing::info!(addr = %server.addr(), signed = receiver.secret.is_some(), "webhook receiver listening");
        Ok(WebhookReceiver { server, receiver })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
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
        self.server.shutdown().await;
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

fn check_secret(secret: Option<&str>) -> io::Result<()> {
    if secret == Some("") {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the webhook secret must not be empty"));
    }
    Ok(())
}

fn receiver(binding: &Binding, secret: Option<String>) -> Arc<Receiver> {
    Arc::new(Receiver {
        base_url: format!("http://{}", binding.addr()),
        secret: secret.map(String::into_bytes),
        faults: FaultPlan::default(),
        stopping: binding.stopping(),
        ledger: Mutex::default(),
        arrivals: Notify::new(),
    })
}

/// The receiver's routes, to mount at the root of a shared server (see
/// [`crate::Sandbox`]); its URL is `http://ADDR/hook`.
pub(crate) fn mounted(binding: &Binding, secret: Option<String>) -> io::Result<Router> {
    check_secret(secret.as_deref())?;
    Ok(router(receiver(binding, secret)))
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
        Arrival {
            received_at: Utc::now(),
            path: path.to_string(),
            idempotency_key: text(IDEMPOTENCY_KEY_HEADER),
            delivery_id: text(DELIVERY_HEADER),
            body: serde_json::from_slice(body).ok(),
            signature: self.check_signature(headers.get(SIGNATURE_HEADER).map(|value| value.as_bytes()), body),
        }
    }

    /// Check `sha256=<hex HMAC-SHA256(secret, body)>`, in constant time.
    fn check_signature(&self, header: Option<&[u8]>, body: &[u8]) -> Signature {
        let Some(secret) = &self.secret else {
            return Signature::Unchecked;
        };
        let Some(header) = header else {
            return Signature::Missing;
        };
        let Some(signature) = header.strip_prefix(b"sha256=").and_then(|hex_digits| hex::decode(hex_digits).ok())
        else {
            return Signature::Invalid;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return Signature::Invalid;
        };
        mac.update(body);
        if mac.verify_slice(&signature).is_ok() { Signature::Valid } else { Signature::Invalid }
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
                signature: arrival.signature,
                key_seen_before,
                outcome,
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
        if self.secret.is_some() && arrival.signature != Signature::Valid {
            return rejected(StatusCode::UNAUTHORIZED, "missing or wrong X-Herald-Signature");
        }
        if arrival.body.is_none() {
            return rejected(StatusCode::BAD_REQUEST, "the body is not JSON");
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
    match found.and_then(|post| post.body.clone()) {
        Some(body) => Json(body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
