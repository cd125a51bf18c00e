//! Discourse emulator: `POST /posts.json` creating a topic (JSON body),
//! `GET /t/external_id/{id}.json` (a 301 to the topic, as the real forum
//! answers), `GET /t/{slug}/{id}.json`, `GET /session/current.json` and
//! `GET /site.json`, with the checks the real forum makes: a known `Api-Key`
//! with an `Api-Username` (403 otherwise), title and body lengths, a known
//! category, a unique `external_id`, and no body too similar to one the same
//! user posted within a few minutes (422 with `{"errors": [...]}`).
//!
//! `DELETE /t/{id}.json` soft-deletes a topic as Discourse does: it stays
//! in `/_sandbox/published` (and in `GET`, as staff see it) with
//! `deleted_at` set; deleting it again answers 404.
//!
//! Control API (under the emulator's base URL): `GET /_sandbox/published`,
//! `POST /_sandbox/faults` ([`FaultSpec`]), `POST /_sandbox/rate_limit`
//! ([`WaitSpec`]: 429 with `extras.wait_seconds`), `POST /_sandbox/reset`.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::emulator::{self, Hosting, Planned, Reply, detached, lock};
use crate::faults::{Fault, FaultPlan, FaultSpec, Injected};
use crate::server::Stopping;
use crate::tokens::Tokens;

const POSTS: &str = "/posts.json";
const SESSION: &str = "/session/current.json";
const SITE: &str = "/site.json";

/// How the emulator behaves; lengths default to Discourse's own defaults.
#[derive(Debug, Clone)]
pub struct DiscourseConfig {
    pub api_keys: Tokens,
    /// The category ids that exist.
    pub categories: Vec<u64>,
    pub min_title_length: usize,
    pub max_title_length: usize,
    pub min_post_length: usize,
    pub max_post_length: usize,
    /// The same body from the same user within this window is refused
    /// ("too similar"; Discourse's `unique_posts_mins` is 5).
    pub similar_window: Duration,
}

impl DiscourseConfig {
    pub fn new(api_keys: Tokens) -> DiscourseConfig {
        DiscourseConfig {
            api_keys,
            categories: vec![1, 2, 3, 4, 5],
            min_title_length: 15,
            max_title_length: 255,
            min_post_length: 20,
            max_post_length: 32_000,
            similar_window: Duration::from_secs(300),
        }
    }
}

/// One topic the emulator created, with the exact body received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscourseTopic {
    pub topic_id: u64,
    pub post_id: u64,
    pub slug: String,
    pub url: String,
    pub api_username: String,
    pub received_at: DateTime<Utc>,
    /// The JSON body as received.
    pub body: Value,
    /// When `DELETE /t/{id}.json` (soft-)deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl DiscourseTopic {
    pub fn title(&self) -> &str {
        self.body.get("title").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn raw(&self) -> &str {
        self.body.get("raw").and_then(Value::as_str).unwrap_or_default()
    }

    pub fn external_id(&self) -> Option<&str> {
        self.body.get("external_id").and_then(Value::as_str)
    }
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiscourseOutcome {
    Created {
        topic_id: u64,
    },
    Refused {
        status: u16,
        errors: Vec<String>,
    },
    RateLimited,
    Faulted {
        status: u16,
    },
    Dropped,
    Answered {
        status: u16,
    },
    /// `DELETE /t/{id}.json` soft-deleted the topic.
    Deleted {
        topic_id: u64,
    },
}

/// One request the emulator got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscourseRequest {
    pub received_at: DateTime<Utc>,
    pub path: String,
    pub outcome: DiscourseOutcome,
}

/// The body of `POST /_sandbox/rate_limit`: answer the next `count`
/// (default 1) API requests 429 with `extras.wait_seconds`, and with
/// `Retry-After` too unless `retry_after_header` is false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSpec {
    pub count: Option<usize>,
    pub wait_seconds: u64,
    #[serde(default = "yes")]
    pub retry_after_header: bool,
}

fn yes() -> bool {
    true
}

/// A Discourse emulator. Dropping it shuts its own server down.
pub struct DiscourseEmulator {
    hosting: Hosting,
    discourse: Arc<Discourse>,
}

impl DiscourseEmulator {
    pub async fn start(addr: SocketAddr, config: DiscourseConfig) -> io::Result<DiscourseEmulator> {
        let (binding, stopping, addr) = emulator::bind(addr).await?;
        let mut emulator = DiscourseEmulator::mounted(addr, "", stopping, config);
        emulator.hosting.server = Some(binding.serve(emulator.router()));
        tracing::info!(%addr, "discourse emulator listening");
        Ok(emulator)
    }

    pub(crate) fn mounted(
        addr: SocketAddr,
        prefix: &str,
        stopping: Stopping,
        config: DiscourseConfig,
    ) -> DiscourseEmulator {
        let discourse = Arc::new(Discourse {
            base_url: emulator::base_url(addr, prefix),
            base_path: prefix.to_string(),
            config,
            faults: FaultPlan::default(),
            waits: Planned::default(),
            stopping,
            ledger: Mutex::default(),
        });
        DiscourseEmulator { hosting: Hosting { server: None, addr }, discourse }
    }

    pub fn router(&self) -> Router {
        router(Arc::clone(&self.discourse))
    }

    pub fn addr(&self) -> SocketAddr {
        self.hosting.addr
    }

    /// The `base_url` to give the adapter.
    pub fn base_url(&self) -> &str {
        &self.discourse.base_url
    }

    /// Every topic created, in order.
    pub fn published(&self) -> Vec<DiscourseTopic> {
        lock(&self.discourse.ledger).published.clone()
    }

    pub fn requests(&self) -> Vec<DiscourseRequest> {
        lock(&self.discourse.ledger).requests.clone()
    }

    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.discourse.faults.fail_next(count, fault);
    }

    /// The next `count` API requests are answered 429 with
    /// `extras.wait_seconds` (and `Retry-After` when `retry_after_header`).
    pub fn rate_limit_next(&self, count: usize, wait_seconds: u64, retry_after_header: bool) {
        self.discourse.waits.push(count, WaitSpec { count: None, wait_seconds, retry_after_header });
    }

    pub fn set_latency(&self, latency: Duration) {
        self.discourse.faults.set_latency(latency);
    }

    /// Forget topics, requests and faults (ids keep counting).
    pub fn reset(&self) {
        self.discourse.reset();
    }

    pub async fn shutdown(self) {
        self.hosting.shutdown().await;
    }
}

impl std::fmt::Debug for DiscourseEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscourseEmulator").field("base_url", &self.discourse.base_url).finish_non_exhaustive()
    }
}

struct Discourse {
    base_url: String,
    /// The path the emulator is mounted at ("" at the root), for redirects.
    base_path: String,
    config: DiscourseConfig,
    faults: FaultPlan,
    waits: Planned<WaitSpec>,
    stopping: Stopping,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    published: Vec<DiscourseTopic>,
    requests: Vec<DiscourseRequest>,
    last_id: u64,
}

/// A request as read off the wire.
struct Arrival {
    path: String,
    received_at: DateTime<Utc>,
    api_key: Option<String>,
    api_username: Option<String>,
    body: Option<Value>,
}

impl Arrival {
    fn read(path: &str, headers: &HeaderMap, body: &[u8]) -> Arrival {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Arrival {
            path: path.to_string(),
            received_at: Utc::now(),
            api_key: text("api-key"),
            api_username: text("api-username"),
            body: serde_json::from_slice(body).ok(),
        }
    }
}

fn errors(status: StatusCode, errors: &[String], error_type: Option<&str>) -> Response {
    let mut body = json!({ "errors": errors });
    if let Some(error_type) = error_type {
        body["error_type"] = json!(error_type);
    }
    (status, Json(body)).into_response()
}

/// Discourse's ASCII slug: lowercase words joined by `-`, or "topic".
fn slug(title: &str) -> String {
    let words: Vec<String> = title
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    if words.is_empty() { "topic".to_string() } else { words.join("-") }
}

impl Discourse {
    fn reset(&self) {
        self.faults.reset();
        self.waits.clear();
        let mut ledger = lock(&self.ledger);
        *ledger = Ledger { last_id: ledger.last_id, ..Ledger::default() };
    }

    fn record(&self, ledger: &mut Ledger, arrival: &Arrival, outcome: DiscourseOutcome) {
        tracing::info!(path = %arrival.path, outcome = ?outcome, "discourse request handled");
        ledger.requests.push(DiscourseRequest {
            received_at: arrival.received_at,
            path: arrival.path.clone(),
            outcome,
        });
    }

    fn refuse(
        &self,
        ledger: &mut Ledger,
        arrival: &Arrival,
        status: StatusCode,
        list: Vec<String>,
        error_type: Option<&str>,
    ) -> Reply {
        let answer = errors(status, &list, error_type);
        self.record(ledger, arrival, DiscourseOutcome::Refused { status: status.as_u16(), errors: list });
        answer.into()
    }

    /// Faults, rate limits and the key. `Ok(Some(username))` for a valid
    /// key, `Ok(None)` without one (when `required` is false).
    async fn admit(&self, arrival: &Arrival, required: bool) -> Result<Option<String>, Reply> {
        match self.faults.apply(&self.stopping).await {
            Injected::None => {}
            Injected::Status(fault) => {
                self.record(&mut lock(&self.ledger), arrival, DiscourseOutcome::Faulted { status: fault.status });
                return Err(fault.into());
            }
            Injected::Drop => {
                self.record(&mut lock(&self.ledger), arrival, DiscourseOutcome::Dropped);
                return Err(Reply::Drop);
            }
        }
        let mut ledger = lock(&self.ledger);
        if let Some(wait) = self.waits.take() {
            self.record(&mut ledger, arrival, DiscourseOutcome::RateLimited);
            let seconds = wait.wait_seconds;
            let body = json!({
                "errors": [format!("You’ve performed this action too many times. Please wait {seconds} seconds before trying again.")],
                "error_type": "rate_limit",
                "extras": { "wait_seconds": seconds, "time_left": format!("{seconds} seconds") },
            });
            let mut answer = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            if wait.retry_after_header {
                answer.headers_mut().insert(header::RETRY_AFTER, seconds.into());
            }
            return Err(answer.into());
        }
        match (&arrival.api_key, &arrival.api_username) {
            (Some(key), Some(username)) if self.config.api_keys.accepts(key) => Ok(Some(username.clone())),
            (None, _) if !required => Ok(None),
            _ => {
                let list = vec![
                    "You are not permitted to view the requested resource. The API username or key is invalid."
                        .to_string(),
                ];
                Err(self.refuse(&mut ledger, arrival, StatusCode::FORBIDDEN, list, Some("invalid_access")))
            }
        }
    }

    async fn create(self: Arc<Self>, arrival: Arrival) -> Reply {
        let username = match self.admit(&arrival, true).await {
            Ok(username) => username.unwrap_or_default(),
            Err(reply) => return reply,
        };
        let mut ledger = lock(&self.ledger);
        let Some(body) = arrival.body.clone().filter(Value::is_object) else {
            let list = vec!["param is missing or the value is empty: raw".to_string()];
            return self.refuse(&mut ledger, &arrival, StatusCode::BAD_REQUEST, list, Some("invalid_parameters"));
        };
        let problems = self.validate(&ledger, &body, &username, arrival.received_at);
        if !problems.is_empty() {
            return self.refuse(&mut ledger, &arrival, StatusCode::UNPROCESSABLE_ENTITY, problems, None);
        }
        ledger.last_id += 1;
        let topic_id = ledger.last_id;
        let post_id = 1000 + topic_id;
        let title = body.get("title").and_then(Value::as_str).unwrap_or_default();
        let slug = slug(title);
        let topic = DiscourseTopic {
            topic_id,
            post_id,
            url: format!("{}/t/{slug}/{topic_id}", self.base_url),
            slug: slug.clone(),
            api_username: username.clone(),
            received_at: arrival.received_at,
            body: body.clone(),
            deleted_at: None,
        };
        ledger.published.push(topic);
        self.record(&mut ledger, &arrival, DiscourseOutcome::Created { topic_id });
        Json(json!({
            "id": post_id,
            "username": username,
            "created_at": arrival.received_at.to_rfc3339(),
            "raw": body.get("raw"),
            "post_number": 1,
            "post_type": 1,
            "topic_id": topic_id,
            "topic_slug": slug,
        }))
        .into()
    }

    /// Discourse's validations, with its messages.
    fn validate(&self, ledger: &Ledger, body: &Value, username: &str, now: DateTime<Utc>) -> Vec<String> {
        let config = &self.config;
        let text = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or_default().trim();
        let mut problems = Vec::new();
        let title = text("title").chars().count();
        if title == 0 {
            problems.push("Title can't be blank".to_string());
        } else if title < config.min_title_length {
            problems.push(format!("Title is too short (minimum is {} characters)", config.min_title_length));
        } else if title > config.max_title_length {
            problems.push(format!("Title is too long (maximum is {} characters)", config.max_title_length));
        }
        let raw = text("raw");
        let length = raw.chars().count();
        if length < config.min_post_length {
            problems.push(format!("Body is too short (minimum is {} characters)", config.min_post_length));
        } else if length > config.max_post_length {
            problems.push(format!("Body is limited to {} characters; you entered {length}.", config.max_post_length));
        }
        match body.get("category") {
            None | Some(Value::Null) => {}
            Some(category) => {
                let id = category.as_u64().or_else(|| category.as_str().and_then(|s| s.parse().ok()));
                if !id.is_some_and(|id| config.categories.contains(&id)) {
                    problems.push("Category can't be blank".to_string());
                }
            }
        }
        if let Some(external_id) = body.get("external_id").and_then(Value::as_str) {
            if external_id.len() > 50 {
                problems.push("External is too long (maximum is 50 characters)".to_string());
            } else if ledger.published.iter().any(|topic| topic.external_id() == Some(external_id)) {
                problems.push("External has already been taken".to_string());
            }
        }
        let window = chrono::Duration::from_std(config.similar_window).unwrap_or(chrono::Duration::zero());
        let similar = ledger.published.iter().any(|topic| {
            topic.api_username == username && topic.raw().trim() == raw && now - topic.received_at < window
        });
        if similar && !raw.is_empty() {
            problems.push("Body is too similar to what you recently posted".to_string());
        }
        problems
    }

    fn topic_json(&self, topic: &DiscourseTopic) -> Value {
        json!({
            "id": topic.topic_id,
            "slug": topic.slug,
            "title": topic.title(),
            "external_id": topic.external_id(),
            "posts_count": 1,
            "deleted_at": topic.deleted_at.map(|t| t.to_rfc3339()),
            "post_stream": { "posts": [{ "id": topic.post_id, "post_number": 1, "username": topic.api_username }] },
        })
    }

    async fn by_external_id(self: Arc<Self>, arrival: Arrival, external_id: String) -> Reply {
        if let Err(reply) = self.admit(&arrival, false).await {
            return reply;
        }
        let mut ledger = lock(&self.ledger);
        let found = ledger.published.iter().find(|topic| topic.external_id() == Some(external_id.as_str())).cloned();
        match found {
            Some(topic) => {
                self.record(&mut ledger, &arrival, DiscourseOutcome::Answered { status: 301 });
                let location = format!("{}/t/{}/{}.json", self.base_path, topic.slug, topic.topic_id);
                (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]).into()
            }
            None => self.not_found(&mut ledger, &arrival),
        }
    }

    fn not_found(&self, ledger: &mut Ledger, arrival: &Arrival) -> Reply {
        let list = vec!["The requested URL or resource could not be found.".to_string()];
        self.refuse(ledger, arrival, StatusCode::NOT_FOUND, list, Some("not_found"))
    }

    async fn show(self: Arc<Self>, arrival: Arrival, topic_id: String) -> Reply {
        if let Err(reply) = self.admit(&arrival, false).await {
            return reply;
        }
        let mut ledger = lock(&self.ledger);
        let id = topic_id.trim_end_matches(".json").parse::<u64>().ok();
        let found = ledger.published.iter().find(|topic| Some(topic.topic_id) == id).cloned();
        match found {
            Some(topic) => {
                self.record(&mut ledger, &arrival, DiscourseOutcome::Answered { status: 200 });
                Json(self.topic_json(&topic)).into()
            }
            None => self.not_found(&mut ledger, &arrival),
        }
    }

    /// Soft-delete a topic; 404 when unknown or already deleted.
    async fn delete(self: Arc<Self>, arrival: Arrival, topic_id: String) -> Reply {
        if let Err(reply) = self.admit(&arrival, true).await {
            return reply;
        }
        let mut ledger = lock(&self.ledger);
        let id = topic_id.trim_end_matches(".json").parse::<u64>().ok();
        let found = ledger.published.iter_mut().find(|topic| Some(topic.topic_id) == id && topic.deleted_at.is_none());
        match found {
            Some(topic) => {
                topic.deleted_at = Some(arrival.received_at);
                let topic_id = topic.topic_id;
                self.record(&mut ledger, &arrival, DiscourseOutcome::Deleted { topic_id });
                Json(json!({ "success": "OK" })).into()
            }
            None => self.not_found(&mut ledger, &arrival),
        }
    }

    async fn session(self: Arc<Self>, arrival: Arrival) -> Reply {
        let username = match self.admit(&arrival, false).await {
            Ok(username) => username,
            Err(reply) => return reply,
        };
        let mut ledger = lock(&self.ledger);
        match username {
            Some(username) => {
                self.record(&mut ledger, &arrival, DiscourseOutcome::Answered { status: 200 });
                Json(json!({ "current_user": { "id": 1, "username": username, "admin": true } })).into()
            }
            None => self.refuse(
                &mut ledger,
                &arrival,
                StatusCode::NOT_FOUND,
                vec!["not logged in".into()],
                Some("not_logged_in"),
            ),
        }
    }

    async fn site(self: Arc<Self>, arrival: Arrival) -> Reply {
        if let Err(reply) = self.admit(&arrival, false).await {
            return reply;
        }
        self.record(&mut lock(&self.ledger), &arrival, DiscourseOutcome::Answered { status: 200 });
        let categories: Vec<Value> =
            self.config.categories.iter().map(|id| json!({ "id": id, "name": format!("Category {id}") })).collect();
        Json(json!({ "categories": categories })).into()
    }
}

fn router(discourse: Arc<Discourse>) -> Router {
    Router::new()
        .route(POSTS, post(create))
        .route("/t/external_id/{external_id}", get(by_external_id))
        .route("/t/{slug}/{id}", get(show))
        .route("/t/{id}", axum::routing::delete(delete))
        .route(SESSION, get(session))
        .route(SITE, get(site))
        .route("/_sandbox/published", get(list_published))
        .route("/_sandbox/faults", post(plan_faults))
        .route("/_sandbox/rate_limit", post(plan_rate_limit))
        .route("/_sandbox/reset", post(reset))
        .fallback(|| async {
            errors(
                StatusCode::NOT_FOUND,
                &["The requested URL or resource could not be found.".into()],
                Some("not_found"),
            )
        })
        .with_state(discourse)
}

async fn create(
    State(discourse): State<Arc<Discourse>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Arrival::read(POSTS, &headers, &body);
    detached(&extensions, discourse.create(arrival)).await
}

async fn by_external_id(
    State(discourse): State<Arc<Discourse>>,
    extensions: Extensions,
    headers: HeaderMap,
    Path(external_id): Path<String>,
) -> Response {
    let arrival = Arrival::read(&format!("/t/external_id/{external_id}"), &headers, &[]);
    let external_id = external_id.trim_end_matches(".json").to_string();
    detached(&extensions, discourse.by_external_id(arrival, external_id)).await
}

async fn show(
    State(discourse): State<Arc<Discourse>>,
    extensions: Extensions,
    headers: HeaderMap,
    Path((slug, id)): Path<(String, String)>,
) -> Response {
    let arrival = Arrival::read(&format!("/t/{slug}/{id}"), &headers, &[]);
    detached(&extensions, discourse.show(arrival, id)).await
}

async fn delete(
    State(discourse): State<Arc<Discourse>>,
    extensions: Extensions,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let arrival = Arrival::read(&format!("/t/{id}"), &headers, &[]);
    detached(&extensions, discourse.delete(arrival, id)).await
}

async fn session(State(discourse): State<Arc<Discourse>>, extensions: Extensions, headers: HeaderMap) -> Response {
    let arrival = Arrival::read(SESSION, &headers, &[]);
    detached(&extensions, discourse.session(arrival)).await
}

async fn site(State(discourse): State<Arc<Discourse>>, extensions: Extensions, headers: HeaderMap) -> Response {
    let arrival = Arrival::read(SITE, &headers, &[]);
    detached(&extensions, discourse.site(arrival)).await
}

async fn list_published(State(discourse): State<Arc<Discourse>>) -> Json<Vec<DiscourseTopic>> {
    Json(lock(&discourse.ledger).published.clone())
}

async fn plan_faults(State(discourse): State<Arc<Discourse>>, Json(spec): Json<FaultSpec>) -> Response {
    match discourse.faults.apply_spec(&spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error.to_string() }))).into_response(),
    }
}

async fn plan_rate_limit(State(discourse): State<Arc<Discourse>>, Json(spec): Json<WaitSpec>) -> StatusCode {
    discourse.waits.push(spec.count.unwrap_or(1), spec);
    StatusCode::NO_CONTENT
}

async fn reset(State(discourse): State<Arc<Discourse>>) -> StatusCode {
    discourse.reset();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_ascii_words() {
        assert_eq!(slug("Fraud alert: fake refund calls!"), "fraud-alert-fake-refund-calls");
        assert_eq!(slug("防范电信诈骗"), "topic");
    }
}
