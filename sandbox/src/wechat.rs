//! WeChat Official Account emulator: the token calls, media uploads, drafts,
//! free publishing and mass send, checked as WeChat checks them (AppID and
//! secret, token validity and expiry, the multipart `media` field, draft
//! field limits, media ids, clientmsgid de-duplication), every answer HTTP
//! 200 with an `errcode`, and WeChat's own faults on demand.
//!
//! HTTP surface (below the emulator's base URL): the `cgi-bin/*` APIs,
//! `GET /s/{publish_id}` (a published article's HTML, the receipt URL),
//! `GET /mmbiz/{n}` (an uploaded body image), and the control API:
//! `GET /_sandbox/published`, `GET /_sandbox/calls`, `POST /_sandbox/faults`
//! ([`FaultSpec`]), `POST /_sandbox/errcodes` ([`ErrcodeSpec`]),
//! `POST /_sandbox/lose_answers` ([`LoseSpec`]: handle a call, then cut the
//! connection, as when the answer is lost or herald dies waiting),
//! `POST /_sandbox/expire_tokens`, `POST /_sandbox/publish_plan`
//! ([`PublishPlan`]), `POST /_sandbox/reset`.
//!
//! Recall: `freepublish/delete` (`article_id`) marks a published article
//! deleted (`deleted_at` in `/_sandbox/published`, `is_deleted` in
//! `batchget`, `publish_status` 5 in `freepublish/get`, and its page
//! answers 404); `message/mass/delete` (`msg_id`) marks a mass send deleted
//! (`deleted_at` in `/_sandbox/mass_sent`). An unknown or deleted id is
//! answered 40007.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, Multipart, Path, Query, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::faults::{Fault, FaultPlan, FaultSpec, Injected};
use crate::server::{Binding, Connection, Server, Stopping};

/// The AppID the `herald-sandbox` binary accepts.
pub const SANDBOX_APPID: &str = "sandbox-wechat-appid";
/// The AppSecret the `herald-sandbox` binary accepts.
pub const SANDBOX_SECRET: &str = "sandbox-wechat-secret";
/// WeChat's token lifetime.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(7200);
/// The errcode answered for a `publish_id` the emulator never issued. WeChat
/// does not document it; it is a guess.
pub const UNKNOWN_PUBLISH_ID_ERRCODE: i64 = 40007;

const MAX_TITLE_CHARS: usize = 32;
const MAX_AUTHOR_CHARS: usize = 16;
const MAX_DIGEST_CHARS: usize = 128;
const MAX_CONTENT_CHARS: usize = 20_000;
const MAX_CONTENT_BYTES: usize = 1024 * 1024;
const MAX_THUMB_BYTES: usize = 64 * 1024;
const MAX_BODY_IMAGE_BYTES: usize = 1024 * 1024;
const MAX_CLIENTMSGID_BYTES: usize = 64;

/// How the emulator is set up.
#[derive(Clone)]
pub struct WechatConfig {
    pub appid: String,
    pub secret: String,
    /// The lifetime of every token issued (`expires_in`, at least 1 s).
    pub token_lifetime: Duration,
}

impl WechatConfig {
    pub fn new(appid: &str, secret: &str) -> Self {
        WechatConfig { appid: appid.into(), secret: secret.into(), token_lifetime: DEFAULT_TOKEN_LIFETIME }
    }
}

impl Default for WechatConfig {
    /// The documented sandbox credentials.
    fn default() -> Self {
        WechatConfig::new(SANDBOX_APPID, SANDBOX_SECRET)
    }
}

impl std::fmt::Debug for WechatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatConfig")
            .field("appid", &self.appid)
            .field("token_lifetime", &self.token_lifetime)
            .finish_non_exhaustive()
    }
}

/// The APIs the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WechatApi {
    /// `POST cgi-bin/stable_token`
    StableToken,
    /// `GET cgi-bin/token`
    Token,
    /// `POST cgi-bin/material/add_material`
    AddMaterial,
    /// `POST cgi-bin/media/uploadimg`
    UploadImage,
    /// `POST cgi-bin/draft/add`
    DraftAdd,
    /// `POST cgi-bin/freepublish/submit`
    Submit,
    /// `POST cgi-bin/freepublish/get`
    PublishStatus,
    /// `POST cgi-bin/message/mass/sendall`
    MassSend,
    /// `POST cgi-bin/freepublish/batchget`
    BatchGet,
    /// `POST cgi-bin/draft/delete`
    DraftDelete,
    /// `POST cgi-bin/freepublish/delete`
    PublishDelete,
    /// `POST cgi-bin/message/mass/delete`
    MassDelete,
}

impl WechatApi {
    pub const ALL: [WechatApi; 12] = [
        WechatApi::StableToken,
        WechatApi::Token,
        WechatApi::AddMaterial,
        WechatApi::UploadImage,
        WechatApi::DraftAdd,
        WechatApi::Submit,
        WechatApi::PublishStatus,
        WechatApi::MassSend,
        WechatApi::BatchGet,
        WechatApi::DraftDelete,
        WechatApi::PublishDelete,
        WechatApi::MassDelete,
    ];

    pub fn path(self) -> &'static str {
        match self {
            WechatApi::StableToken => "/cgi-bin/stable_token",
            WechatApi::Token => "/cgi-bin/token",
            WechatApi::AddMaterial => "/cgi-bin/material/add_material",
            WechatApi::UploadImage => "/cgi-bin/media/uploadimg",
            WechatApi::DraftAdd => "/cgi-bin/draft/add",
            WechatApi::Submit => "/cgi-bin/freepublish/submit",
            WechatApi::PublishStatus => "/cgi-bin/freepublish/get",
            WechatApi::MassSend => "/cgi-bin/message/mass/sendall",
            WechatApi::BatchGet => "/cgi-bin/freepublish/batchget",
            WechatApi::DraftDelete => "/cgi-bin/draft/delete",
            WechatApi::PublishDelete => "/cgi-bin/freepublish/delete",
            WechatApi::MassDelete => "/cgi-bin/message/mass/delete",
        }
    }
}

/// One article of a draft, with the exact fields received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftArticle {
    pub title: String,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
    /// The content as WeChat keeps it: images not uploaded to this account
    /// are stripped.
    pub content: String,
    #[serde(default)]
    pub content_source_url: Option<String>,
    pub thumb_media_id: String,
    #[serde(default)]
    pub need_open_comment: Option<u8>,
    #[serde(default)]
    pub only_fans_can_comment: Option<u8>,
}

/// An article free publishing made public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedArticle {
    pub publish_id: String,
    /// `article_id` in `freepublish/batchget` and `freepublish/get`.
    pub article_id: String,
    /// Unix seconds, when it was published.
    pub update_time: i64,
    pub article_url: String,
    pub draft_media_id: String,
    pub article: DraftArticle,
    /// Unix seconds, when `freepublish/delete` deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
}

/// A mass send that went out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MassSend {
    pub msg_id: String,
    pub clientmsgid: Option<String>,
    pub draft_media_id: String,
    pub articles: Vec<DraftArticle>,
    /// Unix seconds, when `message/mass/delete` deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
}

/// A file received in a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// The form field's name (WeChat wants `media`).
    pub field: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub bytes: usize,
}

/// One call the emulator answered, as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WechatCall {
    pub api: WechatApi,
    /// The query string's pairs (`access_token`, `type`, ...).
    pub query: BTreeMap<String, String>,
    /// The JSON body, when there was one.
    pub body: Option<Value>,
    /// The multipart parts, for uploads.
    pub uploads: Vec<Upload>,
    /// What it answered: 0 for success; `None` when a transport fault
    /// (an error status or a dropped connection) answered instead.
    pub errcode: Option<i64>,
}

/// How the next submitted publish jobs end: `publishing_polls` answers of
/// `publish_status` 1, then `final_status` (0 published, 2..6 failures).
/// The default publishes at the first poll.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishPlan {
    pub publishing_polls: u32,
    pub final_status: i64,
}

/// The body of `POST /_sandbox/errcodes`: answer the next `count` calls of
/// `api` with `errcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrcodeSpec {
    pub api: WechatApi,
    #[serde(default = "one")]
    pub count: usize,
    pub errcode: i64,
}

fn one() -> usize {
    1
}

/// The body of `POST /_sandbox/lose_answers`: handle the next `count` calls
/// of `api` as usual, then close the connection without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoseSpec {
    pub api: WechatApi,
    #[serde(default = "one")]
    pub count: usize,
}

/// A WeChat emulator running in this process (on its own server, or
/// mounted in a shared one). Dropping it shuts its own server down.
pub struct WechatEmulator {
    server: Option<Server>,
    wechat: Arc<Wechat>,
}

impl WechatEmulator {
    /// Listen on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr, config: WechatConfig) -> io::Result<WechatEmulator> {
        let binding = Binding::bind(addr).await?;
        let emulator = Self::mounted(&binding, "", config);
        let server = binding.serve(emulator.router());
        tracing::info!(addr = %server.addr(), "wechat emulator listening");
        Ok(WechatEmulator { server: Some(server), ..emulator })
    }

    /// An emulator to be mounted at `prefix` of `binding`'s server.
    pub(crate) fn mounted(binding: &Binding, prefix: &str, config: WechatConfig) -> WechatEmulator {
        let wechat = Arc::new(Wechat {
            base_url: format!("http://{}{prefix}", binding.addr()),
            config,
            faults: FaultPlan::default(),
            stopping: binding.stopping(),
            state: Mutex::default(),
        });
        WechatEmulator { server: None, wechat }
    }

    /// The routes of this emulator, to serve or mount.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.wechat))
    }

    /// The base URL herald's `base_url` setting takes.
    pub fn base_url(&self) -> &str {
        &self.wechat.base_url
    }

    /// Every article published so far (status 0 reached), in order.
    pub fn published(&self) -> Vec<PublishedArticle> {
        self.wechat.state().published.clone()
    }

    /// Every mass send that went out (one per clientmsgid).
    pub fn mass_sent(&self) -> Vec<MassSend> {
        self.wechat.state().mass_sent.clone()
    }

    /// Every call answered, in order.
    pub fn calls(&self) -> Vec<WechatCall> {
        self.wechat.state().calls.clone()
    }

    /// The calls answered of one API.
    pub fn calls_to(&self, api: WechatApi) -> Vec<WechatCall> {
        self.wechat.state().calls.iter().filter(|call| call.api == api).cloned().collect()
    }

    /// How many access_tokens were issued (a non-forced `stable_token` call
    /// that returns the current token issues none).
    pub fn tokens_issued(&self) -> usize {
        self.wechat.state().tokens_issued
    }

    /// The next `count` calls (any API) get `fault` (an HTTP-level fault).
    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.wechat.faults.fail_next(count, fault);
    }

    /// The next `count` calls of `api` are answered with `errcode`.
    pub fn fail_api(&self, api: WechatApi, count: usize, errcode: i64) {
        if count > 0 {
            self.wechat.state().errcodes.entry(api).or_default().push_back((count, errcode));
        }
    }

    /// From now on, every error answer repeats the request's query string
    /// (the access_token with it) in its `errmsg`, as some gateways do.
    pub fn echo_requests_in_errors(&self) {
        self.wechat.state().echo_requests = true;
    }

    /// The next `count` calls of `api` are handled (an article submitted is
    /// published), then the connection is closed without an answer.
    pub fn lose_answers(&self, api: WechatApi, count: usize) {
        *self.wechat.state().lose.entry(api).or_default() += count;
    }

    /// The next `count` calls of `api` wait `wait` before they are handled
    /// (herald can be killed while one is in flight).
    pub fn hold(&self, api: WechatApi, count: usize, wait: Duration) {
        self.wechat.state().hold.insert(api, (count, wait));
    }

    /// How many calls of `api` arrived, handled or still held.
    pub fn arrived(&self, api: WechatApi) -> usize {
        self.wechat.state().arrived.get(&api).copied().unwrap_or(0)
    }

    /// The drafts in the account's draft box, by media_id.
    pub fn drafts(&self) -> BTreeMap<String, Vec<DraftArticle>> {
        self.wechat.state().drafts.iter().map(|(id, articles)| (id.clone(), articles.clone())).collect()
    }

    /// Empty the draft box, as someone might in the web console.
    pub fn reset_drafts(&self) {
        self.wechat.state().drafts.clear();
    }

    /// Publish an article as if someone did in the web console (or an
    /// earlier run whose records were lost): `freepublish/batchget` lists it.
    pub fn publish_outside(&self, article: DraftArticle) -> PublishedArticle {
        let mut state = self.wechat.state();
        let id = state.next_id();
        let publish_id = format!("{}", 100_000_000 + id);
        let published = PublishedArticle {
            article_id: format!("sandbox-article-{publish_id}"),
            article_url: format!("{}/s/{publish_id}", self.wechat.base_url),
            publish_id,
            update_time: unix_now(),
            draft_media_id: String::new(),
            article,
            deleted_at: None,
        };
        state.published.push(published.clone());
        published
    }

    /// Every token issued so far becomes invalid: the next call with one is
    /// answered 42001.
    pub fn expire_tokens(&self) {
        self.wechat.state().expire_tokens();
    }

    /// How the publish jobs submitted from now on end.
    pub fn set_publish_plan(&self, plan: PublishPlan) {
        self.wechat.state().plan = plan;
    }

    /// Forget everything but the issued-id counters.
    pub fn reset(&self) {
        self.wechat.reset();
    }

    /// Stop the emulator's own server (nothing for a mounted one).
    pub async fn shutdown(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
    }
}

impl std::fmt::Debug for WechatEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatEmulator").field("base_url", &self.wechat.base_url).finish_non_exhaustive()
    }
}

/// The emulator's shared state.
struct Wechat {
    base_url: String,
    config: WechatConfig,
    faults: FaultPlan,
    stopping: Stopping,
    state: Mutex<Platform>,
}

#[derive(Default)]
struct Platform {
    tokens: HashMap<String, IssuedToken>,
    /// The stable token a non-forced `stable_token` call answers.
    current_stable: Option<String>,
    tokens_issued: usize,
    /// media_id -> is a thumb.
    materials: HashMap<String, bool>,
    image_urls: Vec<String>,
    drafts: HashMap<String, Vec<DraftArticle>>,
    jobs: HashMap<String, Job>,
    published: Vec<PublishedArticle>,
    /// clientmsgid -> msg_id.
    clientmsgids: HashMap<String, String>,
    mass_sent: Vec<MassSend>,
    errcodes: HashMap<WechatApi, VecDeque<(usize, i64)>>,
    /// How many of the next calls of an API are handled and then cut.
    lose: HashMap<WechatApi, usize>,
    /// How many of the next calls of an API wait, and how long, before
    /// they are handled.
    hold: HashMap<WechatApi, (usize, Duration)>,
    /// Calls that arrived, per API, handled or not yet.
    arrived: HashMap<WechatApi, usize>,
    /// Error answers repeat the request's query in `errmsg`, as some
    /// gateways in front of an API do (it holds the access_token).
    echo_requests: bool,
    plan: PublishPlan,
    calls: Vec<WechatCall>,
    last_id: u64,
}

struct IssuedToken {
    expires_at: Instant,
    invalidated: bool,
    stable: bool,
}

struct Job {
    draft_media_id: String,
    plan: PublishPlan,
    polls: u32,
}

impl Platform {
    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    fn expire_tokens(&mut self) {
        for token in self.tokens.values_mut() {
            token.invalidated = true;
        }
        self.current_stable = None;
    }

    fn issue(&mut self, lifetime: Duration, stable: bool) -> String {
        let id = self.next_id();
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let token = format!("sandbox-token-{id}-{nanos:08x}");
        self.tokens
            .insert(token.clone(), IssuedToken { expires_at: Instant::now() + lifetime, invalidated: false, stable });
        self.tokens_issued += 1;
        token
    }

    /// The errcode planned for the next call of `api`, if any.
    fn planned_errcode(&mut self, api: WechatApi) -> Option<i64> {
        let queue = self.errcodes.get_mut(&api)?;
        let (left, errcode) = queue.front_mut()?;
        let errcode = *errcode;
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
        }
        Some(errcode)
    }

    /// Whether this call's answer is to be lost (counted down).
    fn take_lost(&mut self, api: WechatApi) -> bool {
        match self.lose.get_mut(&api) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    }

    /// Make a submitted job's article public (once).
    fn publish_job(&mut self, publish_id: &str, base_url: &str) -> String {
        let article_url = format!("{base_url}/s/{publish_id}");
        if self.published.iter().any(|article| article.publish_id == publish_id) {
            return article_url;
        }
        let draft_media_id = self.jobs.get(publish_id).map(|job| job.draft_media_id.clone()).unwrap_or_default();
        let articles = self.drafts.get(&draft_media_id).cloned().unwrap_or_default();
        for article in articles {
            self.published.push(PublishedArticle {
                publish_id: publish_id.to_string(),
                article_id: format!("sandbox-article-{publish_id}"),
                update_time: unix_now(),
                article_url: article_url.clone(),
                draft_media_id: draft_media_id.clone(),
                article,
                deleted_at: None,
            });
        }
        article_url
    }

    /// 0 when `query` carries a valid, unexpired token.
    fn check_token(&self, query: &BTreeMap<String, String>) -> Result<(), Value> {
        let Some(token) = query.get("access_token").filter(|token| !token.is_empty()) else {
            return Err(error(41001, "access_token missing"));
        };
        match self.tokens.get(token) {
            None => Err(error(40001, "invalid credential, access_token is invalid or not latest")),
            Some(issued) if issued.invalidated || Instant::now() >= issued.expires_at => {
                Err(error(42001, "access_token expired"))
            }
            Some(_) => Ok(()),
        }
    }
}

/// What a handler sends back on the connection.
enum Reply {
    Answer(Response),
    Drop,
}

/// A request as read off the wire.
struct Arrival {
    api: WechatApi,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Bytes,
}

/// Append the request's query to an error answer's `errmsg`.
fn echo_request(answer: &mut Value, query: &BTreeMap<String, String>) {
    if answer.get("errcode").and_then(Value::as_i64).unwrap_or(0) == 0 {
        return;
    }
    let request: Vec<String> = query.iter().map(|(key, value)| format!("{key}={value}")).collect();
    let errmsg = answer.get("errmsg").and_then(Value::as_str).unwrap_or_default();
    answer["errmsg"] = Value::String(format!("{errmsg} (request: {})", request.join("&")));
}

fn error(errcode: i64, errmsg: &str) -> Value {
    json!({ "errcode": errcode, "errmsg": format!("{errmsg} rid: sandbox") })
}

impl Wechat {
    fn state(&self) -> MutexGuard<'_, Platform> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&self) {
        self.faults.reset();
        let mut state = self.state();
        *state = Platform { last_id: state.last_id, ..Platform::default() };
    }

    async fn handle(&self, arrival: Arrival) -> Reply {
        let hold = {
            let mut state = self.state();
            *state.arrived.entry(arrival.api).or_default() += 1;
            match state.hold.get_mut(&arrival.api) {
                Some((left, wait)) if *left > 0 => {
                    *left -= 1;
                    Some(*wait)
                }
                _ => None,
            }
        };
        if let Some(wait) = hold {
            self.stopping.sleep(wait).await;
        }
        let injected = self.faults.apply(&self.stopping).await;
        let mut call = WechatCall {
            api: arrival.api,
            query: arrival.query.clone(),
            body: serde_json::from_slice(&arrival.body).ok(),
            uploads: Vec::new(),
            errcode: None,
        };
        let reply = match injected {
            Injected::Status(fault) => Reply::Answer(fault.into_response()),
            Injected::Drop => Reply::Drop,
            Injected::None => {
                let uploads = match arrival.api {
                    WechatApi::AddMaterial | WechatApi::UploadImage => {
                        read_multipart(arrival.content_type.as_deref(), arrival.body.clone()).await
                    }
                    _ => Ok(Vec::new()),
                };
                let answer = {
                    let mut state = self.state();
                    let mut answer = self.answer(&mut state, &arrival, &call, uploads.as_deref());
                    if state.echo_requests {
                        echo_request(&mut answer, &arrival.query);
                    }
                    call.uploads =
                        uploads.map(|files| files.into_iter().map(|(upload, _)| upload).collect()).unwrap_or_default();
                    call.errcode = Some(answer.get("errcode").and_then(Value::as_i64).unwrap_or(0));
                    answer
                };
                tracing::info!(api = ?arrival.api, errcode = call.errcode.unwrap_or(0), "wechat call answered");
                if self.state().take_lost(arrival.api) {
                    Reply::Drop
                } else {
                    Reply::Answer(Json(answer).into_response())
                }
            }
        };
        self.state().calls.push(call);
        reply
    }

    /// Decide the answer of one call.
    fn answer(
        &self,
        state: &mut Platform,
        arrival: &Arrival,
        call: &WechatCall,
        uploads: Result<&[(Upload, Bytes)], &Value>,
    ) -> Value {
        if let Some(errcode) = state.planned_errcode(arrival.api) {
            return error(errcode, "injected by the sandbox");
        }
        let result = match arrival.api {
            WechatApi::StableToken => self.stable_token(state, call.body.as_ref()),
            WechatApi::Token => self.classic_token(state, &arrival.query),
            api => state.check_token(&arrival.query).and_then(|()| match api {
                WechatApi::AddMaterial => add_material(state, &arrival.query, uploads, &self.base_url),
                WechatApi::UploadImage => upload_image(state, uploads, &self.base_url),
                WechatApi::DraftAdd => draft_add(state, call.body.as_ref()),
                WechatApi::Submit => submit(state, call.body.as_ref(), &self.base_url),
                WechatApi::BatchGet => batch_get(state, call.body.as_ref()),
                WechatApi::DraftDelete => draft_delete(state, call.body.as_ref()),
                WechatApi::PublishStatus => publish_status(state, call.body.as_ref(), &self.base_url),
                WechatApi::MassSend => mass_send(state, call.body.as_ref()),
                WechatApi::PublishDelete => publish_delete(state, call.body.as_ref()),
                WechatApi::MassDelete => mass_delete(state, call.body.as_ref()),
                WechatApi::StableToken | WechatApi::Token => Err(error(-1, "system error")),
            }),
        };
        result.unwrap_or_else(|error| error)
    }

    /// `stable_token` answers a wrong secret 40125, the older `token` 40001.
    fn check_credentials(
        &self,
        grant_type: Option<&str>,
        appid: Option<&str>,
        secret: Option<&str>,
        wrong_secret: i64,
    ) -> Result<(), Value> {
        if grant_type != Some("client_credential") {
            return Err(error(40002, "invalid grant_type"));
        }
        if appid != Some(self.config.appid.as_str()) {
            return Err(error(40013, "invalid appid"));
        }
        if secret != Some(self.config.secret.as_str()) {
            return Err(error(wrong_secret, "invalid appsecret"));
        }
        Ok(())
    }

    fn lifetime(&self) -> Duration {
        self.config.token_lifetime.max(Duration::from_secs(1))
    }

    fn stable_token(&self, state: &mut Platform, body: Option<&Value>) -> Result<Value, Value> {
        let body = body.ok_or_else(|| error(47001, "data format error"))?;
        let text = |key: &str| body.get(key).and_then(Value::as_str);
        self.check_credentials(text("grant_type"), text("appid"), text("secret"), 40125)?;
        let force = body.get("force_refresh").and_then(Value::as_bool).unwrap_or(false);
        let now = Instant::now();
        if !force
            && let Some(current) = &state.current_stable
            && let Some(issued) = state.tokens.get(current)
            && !issued.invalidated
            && issued.expires_at > now
        {
            let left = issued.expires_at.duration_since(now).as_secs().max(1);
            return Ok(json!({ "access_token": current, "expires_in": left }));
        }
        let token = state.issue(self.lifetime(), true);
        state.current_stable = Some(token.clone());
        Ok(json!({ "access_token": token, "expires_in": self.lifetime().as_secs() }))
    }

    fn classic_token(&self, state: &mut Platform, query: &BTreeMap<String, String>) -> Result<Value, Value> {
        let text = |key: &str| query.get(key).map(String::as_str);
        self.check_credentials(text("grant_type"), text("appid"), text("secret"), 40001)?;
        // A new classic token ends the older ones within five minutes.
        let soon = Instant::now() + Duration::from_secs(300);
        for token in state.tokens.values_mut().filter(|token| !token.stable) {
            token.expires_at = token.expires_at.min(soon);
        }
        let token = state.issue(self.lifetime(), false);
        Ok(json!({ "access_token": token, "expires_in": self.lifetime().as_secs() }))
    }
}

/// Read a multipart body's parts; an error is the errcode answer.
async fn read_multipart(content_type: Option<&str>, body: Bytes) -> Result<Vec<(Upload, Bytes)>, Value> {
    let Some(content_type) = content_type.filter(|value| value.starts_with("multipart/form-data")) else {
        return Err(error(41005, "media data missing"));
    };
    let request = Request::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .map_err(|_| error(47001, "data format error"))?;
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|_| error(47001, "data format error"))?;
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|_| error(47001, "data format error"))? {
        let upload = Upload {
            field: field.name().unwrap_or_default().to_string(),
            file_name: field.file_name().map(str::to_string),
            content_type: field.content_type().map(str::to_string),
            bytes: 0,
        };
        let bytes = field.bytes().await.map_err(|_| error(47001, "data format error"))?;
        parts.push((Upload { bytes: bytes.len(), ..upload }, bytes));
    }
    Ok(parts)
}

/// The `media` part of an upload.
fn media<'a>(uploads: Result<&'a [(Upload, Bytes)], &Value>) -> Result<&'a Bytes, Value> {
    let uploads = uploads.map_err(Value::clone)?;
    uploads
        .iter()
        .find(|(upload, _)| upload.field == "media")
        .map(|(_, bytes)| bytes)
        .ok_or_else(|| error(41005, "media data missing"))
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A])
}

fn add_material(
    state: &mut Platform,
    query: &BTreeMap<String, String>,
    uploads: Result<&[(Upload, Bytes)], &Value>,
    base_url: &str,
) -> Result<Value, Value> {
    let kind = query.get("type").map(String::as_str);
    let thumb = match kind {
        Some("thumb") => true,
        Some("image") => false,
        _ => return Err(error(40004, "invalid media type")),
    };
    let bytes = media(uploads)?;
    let accepted = if thumb { is_jpeg(bytes) } else { is_jpeg(bytes) || is_png(bytes) };
    if !accepted {
        return Err(error(40005, "invalid file type"));
    }
    if thumb && bytes.len() > MAX_THUMB_BYTES || bytes.len() > 10 * 1024 * 1024 {
        return Err(error(40006, "invalid media size"));
    }
    let id = state.next_id();
    let media_id = format!("sandbox-media-{id}");
    state.materials.insert(media_id.clone(), thumb);
    Ok(json!({ "media_id": media_id, "url": format!("{base_url}/mmbiz/{id}") }))
}

fn upload_image(
    state: &mut Platform,
    uploads: Result<&[(Upload, Bytes)], &Value>,
    base_url: &str,
) -> Result<Value, Value> {
    let bytes = media(uploads)?;
    if !(is_jpeg(bytes) || is_png(bytes)) {
        return Err(error(40005, "invalid file type"));
    }
    if bytes.len() >= MAX_BODY_IMAGE_BYTES {
        return Err(error(40006, "invalid media size"));
    }
    let id = state.next_id();
    let url = format!("{base_url}/mmbiz/{id}");
    state.image_urls.push(url.clone());
    Ok(json!({ "url": url }))
}

fn draft_add(state: &mut Platform, body: Option<&Value>) -> Result<Value, Value> {
    let articles =
        body.and_then(|body| body.get("articles")).cloned().ok_or_else(|| error(47001, "data format error")).and_then(
            |articles| {
                serde_json::from_value::<Vec<DraftArticle>>(articles).map_err(|_| error(47001, "data format error"))
            },
        )?;
    if articles.is_empty() {
        return Err(error(44003, "empty news data"));
    }
    let mut kept = Vec::with_capacity(articles.len());
    for mut article in articles {
        let chars = |text: &str| text.chars().count();
        if article.title.trim().is_empty() {
            return Err(error(44003, "empty title"));
        }
        if chars(&article.title) > MAX_TITLE_CHARS {
            return Err(error(45003, "title size out of limit"));
        }
        if article.author.as_deref().is_some_and(|author| chars(author) > MAX_AUTHOR_CHARS) {
            return Err(error(45110, "author size out of limit"));
        }
        if article.digest.as_deref().is_some_and(|digest| chars(digest) > MAX_DIGEST_CHARS) {
            return Err(error(45004, "description size out of limit"));
        }
        if article.content.trim().is_empty() {
            return Err(error(44003, "empty content"));
        }
        if chars(&article.content) >= MAX_CONTENT_CHARS || article.content.len() >= MAX_CONTENT_BYTES {
            return Err(error(45002, "content size out of limit"));
        }
        if !state.materials.contains_key(&article.thumb_media_id) {
            return Err(error(40007, "invalid media_id"));
        }
        article.content = strip_foreign_images(&article.content, &state.image_urls);
        kept.push(article);
    }
    let media_id = format!("sandbox-draft-{}", state.next_id());
    state.drafts.insert(media_id.clone(), kept);
    Ok(json!({ "media_id": media_id }))
}

/// Remove `<img>` tags whose `src` was not uploaded with `uploadimg`, as
/// WeChat strips external images.
fn strip_foreign_images(content: &str, uploaded: &[String]) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(start) = rest.find("<img") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('>') else {
            rest = &rest[start..];
            break;
        };
        let tag = &rest[start..=start + len];
        let src = tag.split("src=\"").nth(1).and_then(|value| value.split('"').next()).unwrap_or_default();
        let src = src.replace("&amp;", "&");
        if uploaded.contains(&src) {
            out.push_str(tag);
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn text_field<'a>(body: Option<&'a Value>, key: &str) -> Result<&'a str, Value> {
    body.and_then(|body| body.get(key)).and_then(Value::as_str).ok_or_else(|| error(47001, "data format error"))
}

fn submit(state: &mut Platform, body: Option<&Value>, base_url: &str) -> Result<Value, Value> {
    let media_id = text_field(body, "media_id")?;
    if !state.drafts.contains_key(media_id) {
        return Err(error(40007, "invalid media_id"));
    }
    let id = state.next_id();
    let publish_id = format!("{}", 100_000_000 + id);
    let job = Job { draft_media_id: media_id.to_string(), plan: state.plan, polls: 0 };
    state.jobs.insert(publish_id.clone(), job);
    if state.plan == PublishPlan::default() {
        // A job that ends at once is public at once, polled or not (what
        // `freepublish/batchget` shows after a lost answer).
        state.publish_job(&publish_id, base_url);
    }
    Ok(json!({ "errcode": 0, "errmsg": "ok", "publish_id": publish_id, "msg_data_id": 2_247_483_000u64 + id }))
}

fn publish_status(state: &mut Platform, body: Option<&Value>, base_url: &str) -> Result<Value, Value> {
    let publish_id = text_field(body, "publish_id")?.to_string();
    let Some(job) = state.jobs.get_mut(&publish_id) else {
        return Err(error(UNKNOWN_PUBLISH_ID_ERRCODE, "invalid publish_id"));
    };
    job.polls += 1;
    if state.published.iter().any(|article| article.publish_id == publish_id && article.deleted_at.is_some()) {
        return Ok(json!({ "publish_id": publish_id, "publish_status": 5, "fail_idx": [] }));
    }
    let Some(job) = state.jobs.get_mut(&publish_id) else {
        return Err(error(UNKNOWN_PUBLISH_ID_ERRCODE, "invalid publish_id"));
    };
    if job.polls <= job.plan.publishing_polls {
        return Ok(json!({ "publish_id": publish_id, "publish_status": 1 }));
    }
    let status = job.plan.final_status;
    if status != 0 {
        return Ok(json!({ "publish_id": publish_id, "publish_status": status, "fail_idx": [1] }));
    }
    let article_url = state.publish_job(&publish_id, base_url);
    Ok(json!({
        "publish_id": publish_id,
        "publish_status": 0,
        "article_id": format!("sandbox-article-{publish_id}"),
        "article_detail": { "count": 1, "item": [{ "idx": 1, "article_url": article_url }] },
        "fail_idx": [],
    }))
}

/// `freepublish/batchget`: the published articles, newest first, `count`
/// (1 to 20) from `offset`, with their content unless `no_content` is 1.
fn batch_get(state: &mut Platform, body: Option<&Value>) -> Result<Value, Value> {
    let number = |key: &str| body.and_then(|body| body.get(key)).and_then(Value::as_i64);
    let (Some(offset), Some(count)) = (number("offset"), number("count")) else {
        return Err(error(47001, "data format error"));
    };
    if offset < 0 || !(1..=20).contains(&count) {
        return Err(error(40097, "invalid args"));
    }
    let no_content = number("no_content") == Some(1);
    // One item per publish job (its articles in order), newest first.
    let mut jobs: Vec<(String, String, i64, Vec<Value>)> = Vec::new();
    for article in &state.published {
        let news = json!({
            "title": article.article.title,
            "author": article.article.author.clone().unwrap_or_default(),
            "digest": article.article.digest.clone().unwrap_or_default(),
            "content": if no_content { String::new() } else { article.article.content.clone() },
            "content_source_url": article.article.content_source_url.clone().unwrap_or_default(),
            "thumb_media_id": article.article.thumb_media_id,
            "url": article.article_url,
            "is_deleted": article.deleted_at.is_some(),
        });
        match jobs.iter_mut().find(|(publish_id, ..)| *publish_id == article.publish_id) {
            Some(job) => job.3.push(news),
            None => {
                jobs.push((article.publish_id.clone(), article.article_id.clone(), article.update_time, vec![news]))
            }
        }
    }
    let total = jobs.len();
    let items: Vec<Value> = jobs
        .into_iter()
        .rev()
        .skip(offset as usize)
        .take(count as usize)
        .map(|(_, article_id, update_time, news_item)| {
            json!({ "article_id": article_id, "content": { "news_item": news_item }, "update_time": update_time })
        })
        .collect();
    Ok(json!({ "total_count": total, "item_count": items.len(), "item": items }))
}

/// `draft/delete`: remove a draft from the draft box.
fn draft_delete(state: &mut Platform, body: Option<&Value>) -> Result<Value, Value> {
    let media_id = text_field(body, "media_id")?;
    match state.drafts.remove(media_id) {
        Some(_) => Ok(json!({ "errcode": 0, "errmsg": "ok" })),
        None => Err(error(40007, "invalid media_id")),
    }
}

/// `freepublish/delete`: delete a published article (every article of its
/// publish job; `index` is not checked).
fn publish_delete(state: &mut Platform, body: Option<&Value>) -> Result<Value, Value> {
    let article_id = text_field(body, "article_id")?.to_string();
    let now = unix_now();
    let mut found = false;
    for article in state.published.iter_mut().filter(|a| a.article_id == article_id && a.deleted_at.is_none()) {
        article.deleted_at = Some(now);
        found = true;
    }
    if found { Ok(json!({ "errcode": 0, "errmsg": "ok" })) } else { Err(error(40007, "invalid article_id")) }
}

/// `message/mass/delete`: delete a mass-sent article (`msg_id` a number or text).
fn mass_delete(state: &mut Platform, body: Option<&Value>) -> Result<Value, Value> {
    let msg_id = match body.and_then(|body| body.get("msg_id")) {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(id)) => id.to_string(),
        _ => return Err(error(47001, "data format error")),
    };
    let now = unix_now();
    match state.mass_sent.iter_mut().find(|send| send.msg_id == msg_id && send.deleted_at.is_none()) {
        Some(send) => {
            send.deleted_at = Some(now);
            Ok(json!({ "errcode": 0, "errmsg": "ok" }))
        }
        None => Err(error(40007, "invalid msg_id")),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs() as i64)
}

fn mass_send(state: &mut Platform, body: Option<&Value>) -> Result<Value, Value> {
    let body = body.ok_or_else(|| error(47001, "data format error"))?;
    if body.pointer("/filter/is_to_all").and_then(Value::as_bool) != Some(true)
        && body.pointer("/filter/tag_id").is_none()
    {
        return Err(error(47001, "data format error: filter"));
    }
    if body.get("msgtype").and_then(Value::as_str) != Some("mpnews") {
        return Err(error(40008, "invalid message type"));
    }
    let media_id =
        body.pointer("/mpnews/media_id").and_then(Value::as_str).ok_or_else(|| error(47001, "data format error"))?;
    let Some(articles) = state.drafts.get(media_id).cloned() else {
        return Err(error(40007, "invalid media_id"));
    };
    let clientmsgid = body.get("clientmsgid").and_then(Value::as_str).map(str::to_string);
    if let Some(key) = &clientmsgid {
        if key.len() > MAX_CLIENTMSGID_BYTES {
            return Err(error(45067, "clientmsgid size out of limit"));
        }
        if let Some(msg_id) = state.clientmsgids.get(key) {
            let msg_id: u64 = msg_id.parse().unwrap_or_default();
            return Err(json!({ "errcode": 45065, "errmsg": "clientmsgid exist rid: sandbox", "msg_id": msg_id }));
        }
    }
    let id = state.next_id();
    let msg_id = 3_147_480_000u64 + id;
    if let Some(key) = &clientmsgid {
        state.clientmsgids.insert(key.clone(), msg_id.to_string());
    }
    state.mass_sent.push(MassSend {
        msg_id: msg_id.to_string(),
        clientmsgid,
        draft_media_id: media_id.to_string(),
        articles,
        deleted_at: None,
    });
    Ok(
        json!({ "errcode": 0, "errmsg": "send job submission success", "msg_id": msg_id, "msg_data_id": 2_247_490_000u64 + id }),
    )
}

fn router(wechat: Arc<Wechat>) -> Router {
    let mut router = Router::new();
    for api in WechatApi::ALL {
        router = router.route(api.path(), endpoint(api));
    }
    router
        .route("/s/{publish_id}", get(show_article))
        .route("/mmbiz/{id}", get(|| async { ([(header::CONTENT_TYPE, "image/png")], Bytes::new()) }))
        .route("/_sandbox/published", get(list_published))
        .route("/_sandbox/calls", get(list_calls))
        .route("/_sandbox/mass_sent", get(list_mass_sent))
        .route("/_sandbox/faults", post(plan_faults))
        .route("/_sandbox/errcodes", post(plan_errcodes))
        .route("/_sandbox/lose_answers", post(plan_lost_answers))
        .route("/_sandbox/expire_tokens", post(expire_tokens))
        .route("/_sandbox/publish_plan", post(set_publish_plan))
        .route("/_sandbox/reset", post(reset))
        .with_state(wechat)
}

/// The handler of one API: GET for the classic token, POST for the rest.
fn endpoint(api: WechatApi) -> MethodRouter<Arc<Wechat>> {
    let handler = move |State(wechat): State<Arc<Wechat>>,
                        ConnectInfo(connection): ConnectInfo<Connection>,
                        Query(query): Query<BTreeMap<String, String>>,
                        headers: HeaderMap,
                        body: Bytes| async move {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_string);
        let arrival = Arrival { api, query, content_type, body };
        // On a task of its own, so a client that gives up does not stop
        // the platform from finishing, as a real one would.
        let handling = tokio::spawn(async move { wechat.handle(arrival).await });
        match handling.await {
            Ok(Reply::Answer(response)) => response,
            Ok(Reply::Drop) => {
                connection.cut();
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            Err(error) => {
                tracing::error!(%error, "wechat call handling failed");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    };
    match api {
        WechatApi::Token => get(handler),
        _ => post(handler),
    }
}

async fn show_article(State(wechat): State<Arc<Wechat>>, Path(publish_id): Path<String>) -> Response {
    let state = wechat.state();
    match state.published.iter().find(|article| article.publish_id == publish_id && article.deleted_at.is_none()) {
        Some(published) => Html(format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{}</title>\n{}",
            published.article.title.replace('<', "&lt;"),
            published.article.content
        ))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn list_published(State(wechat): State<Arc<Wechat>>) -> Json<Vec<PublishedArticle>> {
    Json(wechat.state().published.clone())
}

async fn list_mass_sent(State(wechat): State<Arc<Wechat>>) -> Json<Vec<MassSend>> {
    Json(wechat.state().mass_sent.clone())
}

async fn list_calls(State(wechat): State<Arc<Wechat>>) -> Json<Vec<WechatCall>> {
    Json(wechat.state().calls.clone())
}

async fn plan_faults(State(wechat): State<Arc<Wechat>>, Json(spec): Json<FaultSpec>) -> Response {
    match wechat.faults.apply_spec(&spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error.to_string() }))).into_response(),
    }
}

async fn plan_errcodes(State(wechat): State<Arc<Wechat>>, Json(spec): Json<ErrcodeSpec>) -> StatusCode {
    if spec.count > 0 {
        wechat.state().errcodes.entry(spec.api).or_default().push_back((spec.count, spec.errcode));
    }
    StatusCode::NO_CONTENT
}

async fn plan_lost_answers(State(wechat): State<Arc<Wechat>>, Json(spec): Json<LoseSpec>) -> StatusCode {
    *wechat.state().lose.entry(spec.api).or_default() += spec.count;
    StatusCode::NO_CONTENT
}

async fn expire_tokens(State(wechat): State<Arc<Wechat>>) -> StatusCode {
    wechat.state().expire_tokens();
    StatusCode::NO_CONTENT
}

async fn set_publish_plan(State(wechat): State<Arc<Wechat>>, Json(plan): Json<PublishPlan>) -> StatusCode {
    wechat.state().plan = plan;
    StatusCode::NO_CONTENT
}

async fn reset(State(wechat): State<Arc<Wechat>>) -> StatusCode {
    wechat.reset();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_images_are_stripped_and_uploaded_ones_kept() {
        let uploaded = vec!["http://127.0.0.1:1/mmbiz/3?a=1&b=2".to_string()];
        let content = "<p>a</p><p><img src=\"http://127.0.0.1:1/mmbiz/3?a=1&amp;b=2\"></p>\
                       <p><img src=\"https://elsewhere.example/x.png\"></p><p>b</p>";
        assert_eq!(
            strip_foreign_images(content, &uploaded),
            "<p>a</p><p><img src=\"http://127.0.0.1:1/mmbiz/3?a=1&amp;b=2\"></p><p></p><p>b</p>"
        );
    }

    #[test]
    fn planned_errcodes_apply_per_api_in_order() {
        let mut state = Platform::default();
        state.errcodes.entry(WechatApi::DraftAdd).or_default().push_back((2, -1));
        state.errcodes.entry(WechatApi::DraftAdd).or_default().push_back((1, 45009));
        assert_eq!(state.planned_errcode(WechatApi::Submit), None);
        let taken: Vec<_> = (0..4).map(|_| state.planned_errcode(WechatApi::DraftAdd)).collect();
        assert_eq!(taken, [Some(-1), Some(-1), Some(45009), None]);
    }

    #[test]
    fn config_debug_hides_the_secret() {
        assert!(!format!("{:?}", WechatConfig::new("wx", "S3CRET")).contains("S3CRET"));
    }
}
