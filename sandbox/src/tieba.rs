//! Baidu Tieba emulator: the mobile client's login (`/c/s/login`, answers
//! `anti.tbs`) and new-thread call (`/c/c/thread/add`), checked as the real
//! server would: the BDUSS is known, the `sign` is the MD5 of the sorted
//! raw parameters and `tiebaclient!!!`, the `tbs` is the account's, the
//! forum exists (and `fid` matches it when sent). Captcha demands, "too
//! frequent" answers and other errors on demand.
//!
//! Tieba documents no error codes: the codes below are the sandbox's own.
//!
//! HTTP surface (below the base URL): `POST /c/s/login`, `POST
//! /c/c/thread/add`, `GET /p/{tid}` (a thread's content), and the control
//! API: `GET /_sandbox/threads`, `GET /_sandbox/calls`, `POST
//! /_sandbox/faults` ([`FaultSpec`]), `POST /_sandbox/reset`.
//!
//! `POST /c/c/bawu/delthread` (`z` = tid, `fid`, `tbs`, signed) deletes a
//! thread as open-source clients call it: the thread stays in
//! `/_sandbox/threads` with `deleted: true` and `GET /p/{tid}` answers 404;
//! an unknown or deleted thread is answered [`ERROR_NO_THREAD`]. The sandbox
//! lets any known account delete any thread (the real rules are unknown).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::faults::{Fault, FaultPlan, FaultSpec, Injected};
use crate::server::{Binding, Connection, Server, Stopping};

/// The BDUSS the `herald-sandbox` binary accepts.
pub const SANDBOX_BDUSS: &str = "sandbox-tieba-bduss";
/// The forum the `herald-sandbox` binary has.
pub const SANDBOX_FORUM: &str = "herald-sandbox";
/// Its fid.
pub const SANDBOX_FID: u64 = 1001;
/// The salt of the `sign`.
pub const SIGN_SALT: &str = "tiebaclient!!!";

/// The sandbox's error codes (Tieba publishes none).
pub const ERROR_NOT_LOGGED_IN: i64 = 1;
pub const ERROR_BAD_SIGN: i64 = 2;
pub const ERROR_BAD_TBS: i64 = 3;
pub const ERROR_NO_FORUM: i64 = 4;
pub const ERROR_BAD_PARAMS: i64 = 5;
pub const ERROR_TOO_FREQUENT: i64 = 220034;
pub const ERROR_NO_THREAD: i64 = 6;

/// How the emulator is set up.
#[derive(Clone)]
pub struct TiebaConfig {
    /// The BDUSS cookies of the accounts it knows.
    pub bduss: Vec<String>,
    /// The forums that exist: (name, fid).
    pub forums: Vec<(String, u64)>,
}

impl Default for TiebaConfig {
    /// The documented sandbox account and forum.
    fn default() -> Self {
        TiebaConfig { bduss: vec![SANDBOX_BDUSS.into()], forums: vec![(SANDBOX_FORUM.into(), SANDBOX_FID)] }
    }
}

impl std::fmt::Debug for TiebaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TiebaConfig").field("accounts", &self.bduss.len()).field("forums", &self.forums).finish()
    }
}

/// The calls the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TiebaApi {
    /// `POST /c/s/login`
    Login,
    /// `POST /c/c/thread/add`
    AddThread,
    /// `POST /c/c/bawu/delthread`
    DeleteThread,
}

/// A Tieba-level answer planned for the next calls of an API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TiebaFault {
    /// `error_code` and `error_msg`.
    Error { code: i64, message: String },
    /// "You post too frequently" (error 220034).
    TooFrequent,
    /// `data.info.need_vcode = 1` and no thread (add_thread only).
    Captcha,
}

/// A thread that was posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: String,
    pub fid: u64,
    pub forum: String,
    pub title: String,
    pub content: String,
    /// `delthread` deleted it.
    #[serde(default)]
    pub deleted: bool,
}

/// One call the emulator answered, as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TiebaCall {
    pub api: TiebaApi,
    /// The form's pairs, decoded, in the order sent (`sign` included).
    pub form: Vec<(String, String)>,
    /// The `sign` was present and right.
    pub sign_valid: bool,
    /// What it answered; `None` when a transport fault answered instead.
    pub error_code: Option<i64>,
}

impl TiebaCall {
    /// The value of form field `key`.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A Tieba emulator in this process. Dropping it shuts its own server down.
pub struct TiebaEmulator {
    server: Option<Server>,
    tieba: Arc<Tieba>,
}

impl TiebaEmulator {
    /// Listen on `addr` (port 0 picks a free port).
    pub async fn start(addr: SocketAddr, config: TiebaConfig) -> io::Result<TiebaEmulator> {
        let binding = Binding::bind(addr).await?;
        let emulator = Self::mounted(&binding, "", config);
        let server = binding.serve(emulator.router());
        tracing::info!(addr = %server.addr(), "tieba emulator listening");
        Ok(TiebaEmulator { server: Some(server), ..emulator })
    }

    /// An emulator to be mounted at `prefix` of `binding`'s server.
    pub(crate) fn mounted(binding: &Binding, prefix: &str, config: TiebaConfig) -> TiebaEmulator {
        let tieba = Arc::new(Tieba {
            base_url: format!("http://{}{prefix}", binding.addr()),
            config,
            faults: FaultPlan::default(),
            stopping: binding.stopping(),
            state: Mutex::default(),
        });
        TiebaEmulator { server: None, tieba }
    }

    /// The routes of this emulator, to serve or mount.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.tieba))
    }

    /// The base URL herald's `base_url` setting takes.
    pub fn base_url(&self) -> &str {
        &self.tieba.base_url
    }

    /// Every thread posted, in order.
    pub fn published(&self) -> Vec<Thread> {
        self.tieba.state().threads.clone()
    }

    /// Every call answered, in order.
    pub fn calls(&self) -> Vec<TiebaCall> {
        self.tieba.state().calls.clone()
    }

    /// The calls answered of one API.
    pub fn calls_to(&self, api: TiebaApi) -> Vec<TiebaCall> {
        self.tieba.state().calls.iter().filter(|call| call.api == api).cloned().collect()
    }

    /// The next `count` calls (any API) get `fault` (an HTTP-level fault).
    pub fn fail_next(&self, count: usize, fault: Fault) {
        self.tieba.faults.fail_next(count, fault);
    }

    /// The next `count` calls of `api` are answered with `fault`.
    pub fn fail_api(&self, api: TiebaApi, count: usize, fault: TiebaFault) {
        if count > 0 {
            self.tieba.state().planned.entry(api).or_default().push_back((count, fault));
        }
    }

    /// Forget threads, calls and faults (ids keep counting).
    pub fn reset(&self) {
        self.tieba.reset();
    }

    /// Stop the emulator's own server (nothing for a mounted one).
    pub async fn shutdown(self) {
        if let Some(server) = self.server {
            server.shutdown().await;
        }
    }
}

impl std::fmt::Debug for TiebaEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TiebaEmulator").field("base_url", &self.tieba.base_url).finish_non_exhaustive()
    }
}

struct Tieba {
    base_url: String,
    config: TiebaConfig,
    faults: FaultPlan,
    stopping: Stopping,
    state: Mutex<Forums>,
}

#[derive(Default)]
struct Forums {
    /// BDUSS -> the tbs its login answered.
    tbs: HashMap<String, String>,
    threads: Vec<Thread>,
    planned: HashMap<TiebaApi, VecDeque<(usize, TiebaFault)>>,
    calls: Vec<TiebaCall>,
    last_id: u64,
}

impl Forums {
    fn planned(&mut self, api: TiebaApi) -> Option<TiebaFault> {
        let queue = self.planned.get_mut(&api)?;
        let (left, fault) = queue.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
        }
        Some(fault)
    }
}

/// What a handler sends back on the connection.
enum Reply {
    Answer(Response),
    Drop,
}

fn error(code: i64, message: &str) -> Value {
    json!({ "error_code": code.to_string(), "error_msg": message })
}

/// The sign of a form, computed as the server does: every pair but `sign`,
/// sorted by key, `key=value` with raw values, then the salt; MD5, hex.
pub fn expected_sign(form: &[(String, String)]) -> String {
    let mut pairs: Vec<_> = form.iter().filter(|(key, _)| key != "sign").collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Md5::new();
    for (key, value) in pairs {
        hasher.update(key.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
    }
    hasher.update(SIGN_SALT.as_bytes());
    hex::encode_upper(hasher.finalize())
}

impl Tieba {
    fn state(&self) -> MutexGuard<'_, Forums> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&self) {
        self.faults.reset();
        let mut state = self.state();
        *state = Forums { last_id: state.last_id, ..Forums::default() };
    }

    async fn handle(&self, api: TiebaApi, form: Vec<(String, String)>) -> Reply {
        let injected = self.faults.apply(&self.stopping).await;
        // Upper- or lowercase hex: open-source clients send either.
        let sign_valid = field(&form, "sign").is_some_and(|sign| sign.eq_ignore_ascii_case(&expected_sign(&form)));
        let mut call = TiebaCall { api, form, sign_valid, error_code: None };
        let reply = match injected {
            Injected::Status(fault) => Reply::Answer(fault.into_response()),
            Injected::Drop => Reply::Drop,
            Injected::None => {
                let mut state = self.state();
                let answer = self.answer(&mut state, &call);
                call.error_code = answer.get("error_code").and_then(Value::as_str).and_then(|code| code.parse().ok());
                tracing::info!(api = ?api, error_code = call.error_code.unwrap_or(0), "tieba call answered");
                Reply::Answer(Json(answer).into_response())
            }
        };
        self.state().calls.push(call);
        reply
    }

    fn answer(&self, state: &mut Forums, call: &TiebaCall) -> Value {
        if !call.sign_valid {
            return error(ERROR_BAD_SIGN, "sign error");
        }
        let planned = state.planned(call.api);
        match planned {
            Some(TiebaFault::Error { code, message }) => return error(code, &message),
            Some(TiebaFault::TooFrequent) => return error(ERROR_TOO_FREQUENT, "您的操作太频繁了 (too frequent)"),
            Some(TiebaFault::Captcha) if call.api == TiebaApi::AddThread => {
                return json!({
                    "error_code": "0",
                    "error_msg": "",
                    "data": { "info": { "need_vcode": "1", "vcode_type": "4", "vcode_md5": "sandbox" } },
                });
            }
            Some(TiebaFault::Captcha) | None => {}
        }
        let result = match call.api {
            TiebaApi::Login => self.login(state, &call.form),
            TiebaApi::AddThread => self.add_thread(state, &call.form),
            TiebaApi::DeleteThread => self.delete_thread(state, &call.form),
        };
        result.unwrap_or_else(|error| error)
    }

    fn known(&self, bduss: Option<&str>) -> Result<String, Value> {
        match bduss {
            Some(bduss) if self.config.bduss.iter().any(|known| known == bduss) => Ok(bduss.to_string()),
            _ => Err(error(ERROR_NOT_LOGGED_IN, "用户未登录或登录失败，请更换账号或重试")),
        }
    }

    fn login(&self, state: &mut Forums, form: &[(String, String)]) -> Result<Value, Value> {
        let bduss = self.known(field(form, "bdusstoken"))?;
        let tbs = match state.tbs.get(&bduss) {
            Some(tbs) => tbs.clone(),
            None => {
                state.last_id += 1;
                let tbs = format!("{:032x}", u128::from(state.last_id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                state.tbs.insert(bduss.clone(), tbs.clone());
                tbs
            }
        };
        Ok(json!({ "error_code": "0", "error_msg": "", "anti": { "tbs": tbs }, "user": { "is_login": 1 } }))
    }

    fn add_thread(&self, state: &mut Forums, form: &[(String, String)]) -> Result<Value, Value> {
        let bduss = self.known(field(form, "BDUSS"))?;
        if state.tbs.get(&bduss).map(String::as_str) != field(form, "tbs") {
            return Err(error(ERROR_BAD_TBS, "tbs check failed"));
        }
        if field(form, "_client_type") != Some("2") || field(form, "_client_version").is_none_or(str::is_empty) {
            return Err(error(ERROR_BAD_PARAMS, "missing client parameters"));
        }
        let name = field(form, "kw").or_else(|| field(form, "fname")).unwrap_or_default();
        let Some((forum, fid)) = self.config.forums.iter().find(|(forum, _)| forum == name) else {
            return Err(error(ERROR_NO_FORUM, "forum not found"));
        };
        if let Some(sent) = field(form, "fid")
            && sent != fid.to_string()
        {
            return Err(error(ERROR_NO_FORUM, "fid does not match the forum"));
        }
        let title = field(form, "title").unwrap_or_default();
        let content = field(form, "content").unwrap_or_default();
        if title.trim().is_empty() || content.trim().is_empty() || field(form, "anonymous") != Some("0") {
            return Err(error(ERROR_BAD_PARAMS, "title, content and anonymous=0 are required"));
        }
        state.last_id += 1;
        let tid = format!("{}", 9_000_000_000u64 + state.last_id);
        state.threads.push(Thread {
            tid: tid.clone(),
            fid: *fid,
            forum: forum.clone(),
            title: title.to_string(),
            content: content.to_string(),
            deleted: false,
        });
        Ok(json!({
            "error_code": "0",
            "error_msg": "",
            "msg": "发送成功",
            "data": { "tid": tid, "pid": format!("{}", 100_000_000_000u64 + state.last_id), "info": { "need_vcode": "0" } },
        }))
    }
}

impl Tieba {
    fn delete_thread(&self, state: &mut Forums, form: &[(String, String)]) -> Result<Value, Value> {
        let bduss = self.known(field(form, "BDUSS"))?;
        if state.tbs.get(&bduss).map(String::as_str) != field(form, "tbs") {
            return Err(error(ERROR_BAD_TBS, "tbs check failed"));
        }
        let (tid, fid) = (field(form, "z").unwrap_or_default(), field(form, "fid").unwrap_or_default());
        match state.threads.iter_mut().find(|t| t.tid == tid && t.fid.to_string() == fid && !t.deleted) {
            Some(thread) => {
                thread.deleted = true;
                Ok(json!({ "error_code": "0", "error_msg": "", "time": 0 }))
            }
            None => Err(error(ERROR_NO_THREAD, "thread not found")),
        }
    }
}

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn router(tieba: Arc<Tieba>) -> Router {
    Router::new()
        .route("/c/s/login", post(login))
        .route("/c/c/thread/add", post(add_thread))
        .route("/c/c/bawu/delthread", post(delete_thread))
        .route("/p/{tid}", get(show_thread))
        .route("/_sandbox/threads", get(list_threads))
        .route("/_sandbox/calls", get(list_calls))
        .route("/_sandbox/faults", post(plan_faults))
        .route("/_sandbox/reset", post(reset))
        .with_state(tieba)
}

async fn login(
    State(tieba): State<Arc<Tieba>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    serve(tieba, connection, TiebaApi::Login, form).await
}

async fn add_thread(
    State(tieba): State<Arc<Tieba>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    serve(tieba, connection, TiebaApi::AddThread, form).await
}

async fn delete_thread(
    State(tieba): State<Arc<Tieba>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    serve(tieba, connection, TiebaApi::DeleteThread, form).await
}

async fn serve(tieba: Arc<Tieba>, connection: Connection, api: TiebaApi, form: Vec<(String, String)>) -> Response {
    // On a task of its own, so a client that gives up does not stop the
    // server from finishing, as a real one would.
    let handling = tokio::spawn(async move { tieba.handle(api, form).await });
    match handling.await {
        Ok(Reply::Answer(response)) => response,
        Ok(Reply::Drop) => {
            connection.cut();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(error) => {
            tracing::error!(%error, "tieba call handling failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn show_thread(State(tieba): State<Arc<Tieba>>, Path(tid): Path<String>) -> Response {
    match tieba.state().threads.iter().find(|thread| thread.tid == tid && !thread.deleted) {
        Some(thread) => Json(thread.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn list_threads(State(tieba): State<Arc<Tieba>>) -> Json<Vec<Thread>> {
    Json(tieba.state().threads.clone())
}

async fn list_calls(State(tieba): State<Arc<Tieba>>) -> Json<Vec<TiebaCall>> {
    Json(tieba.state().calls.clone())
}

async fn plan_faults(State(tieba): State<Arc<Tieba>>, Json(spec): Json<FaultSpec>) -> Response {
    match tieba.faults.apply_spec(&spec) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, Json(json!({ "error": error.to_string() }))).into_response(),
    }
}

async fn reset(State(tieba): State<Arc<Tieba>>) -> StatusCode {
    tieba.reset();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_sign_ignores_order_and_the_sign_field() {
        let a = pairs(&[("kw", "f"), ("BDUSS", "b"), ("sign", "x")]);
        let b = pairs(&[("BDUSS", "b"), ("kw", "f")]);
        assert_eq!(expected_sign(&a), expected_sign(&b));
        let manual = hex::encode_upper(Md5::digest(b"BDUSS=bkw=ftiebaclient!!!"));
        assert_eq!(expected_sign(&b), manual);
    }

    #[test]
    fn config_debug_hides_the_bduss() {
        assert!(!format!("{:?}", TiebaConfig::default()).contains(SANDBOX_BDUSS));
    }
}
