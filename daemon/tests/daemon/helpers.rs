//! Helpers for the daemon's integration tests: a fresh directory with a
//! config, the real `herald` binary run as a child process, a webhook
//! receiver from the sandbox in the test process, and readers for the CLI's
//! output (`herald status`, `herald log --format json`).
//!
//! Every wait polls against a deadline; nothing here measures speed.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use herald_sandbox::{Outcome, ReceivedPost, WebhookReceiver};
use serde_json::Value;

/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// Copy a folder's folders and regular files (links followed; sockets and
/// FIFOs left out), e.g. a stopped store to tamper with or the examples.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.path().is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Run blocking work (a child process, a file read) without stalling the
/// receiver, which serves from the same runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A webhook receiver on 127.0.0.1, any free port.
pub async fn receiver(secret: Option<&str>) -> WebhookReceiver {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    WebhookReceiver::start(addr, secret.map(str::to_string)).await.expect("starting a webhook receiver")
}

/// A whole second at least `secs` from now (RFC 3339 in the config keeps
/// whole seconds, so the test knows the exact time it wrote).
pub fn in_secs(secs: i64) -> DateTime<Utc> {
    (Utc::now() + chrono::Duration::seconds(secs)).trunc_subsecs(0) + chrono::Duration::seconds(1)
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `[daemon]` and `[retry]` settings that keep runs short.
pub fn daemon_section() -> String {
    r#"[daemon]
state_dir = "state"
time_zone = "UTC"
shutdown_deadline = "5s"

[retry]
max_attempts = 5
initial_backoff = "1s"
max_backoff = "8s"
multiplier = 2.0
jitter = 0.0
"#
    .to_string()
}

/// `[accounts.<id>]` for a webhook account posting to `url`.
pub fn webhook_account(id: &str, url: &str) -> String {
    format!("\n[accounts.{id}]\nplatform = \"webhook\"\nurl = \"{url}\"\n")
}

/// A one-shot post.
pub fn post_at(id: &str, body: &str, targets: &[&str], at: DateTime<Utc>) -> String {
    format!(
        "\n[[posts]]\nid = \"{id}\"\ntitle = \"{id}\"\nbody = \"{body}\"\ntargets = {targets}\nat = \"{at}\"\n",
        targets = toml_list(targets),
        at = rfc3339(at)
    )
}

/// A recurring post.
pub fn post_cron(id: &str, body: &str, targets: &[&str], cron: &str) -> String {
    format!(
        "\n[[posts]]\nid = \"{id}\"\nbody = \"{body}\"\ntargets = {targets}\ncron = \"{cron}\"\n",
        targets = toml_list(targets)
    )
}

pub fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The 1-based line of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("`{needle}` not in the text")) + 1
}

/// Remove ANSI colour sequences (the human log format colours fields).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Does `text` point at `file:line:column`, either as `herald.toml:12:1` or
/// as the log fields `file=.../herald.toml line=12 column=1`?
pub fn names_location(text: &str, file: &str, line: usize, column: Option<usize>) -> bool {
    text.lines().any(|l| {
        let compact = match column {
            Some(c) => format!("{file}:{line}:{c}"),
            None => format!("{file}:{line}:"),
        };
        if l.contains(&compact) {
            return true;
        }
        let fields = l.contains(file) && l.contains(&format!("line={line}"));
        fields && column.is_none_or(|c| l.contains(&format!("column={c}")))
    })
}

/// A directory holding `herald.toml` (and its state once herald ran).
pub struct TestDir {
    pub dir: tempfile::TempDir,
    runs: std::sync::atomic::AtomicUsize,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::tempdir().expect("creating a temporary folder"),
            runs: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("herald.toml")
    }

    pub fn write_config(&self, text: &str) {
        self.write("herald.toml", text);
    }

    pub fn write(&self, relative: &str, text: &str) {
        let path = self.dir.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        // Write then rename, so a reload never reads half a file.
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// A `herald` command in this directory, with a clean environment plus `envs`.
    pub fn command(&self, envs: &[(&str, &str)]) -> Command {
        let mut command = Command::new(HERALD);
        command
            .current_dir(self.path())
            .env_remove("RUST_LOG")
            .env_remove("HERALD_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(envs.iter().copied())
            .stdin(Stdio::null());
        command
    }

    /// Start `herald run` on this directory's config and wait until it is ready.
    pub async fn start(&self) -> Herald {
        self.start_with(&[]).await
    }

    /// Start `herald run` with extra environment variables (for the child
    /// only), and wait until it is ready.
    pub async fn start_with(&self, envs: &[(&str, &str)]) -> Herald {
        let mut herald = self.spawn(envs);
        herald.wait_for_log("herald is ready").await;
        herald
    }

    /// Start `herald run` without waiting for anything.
    pub fn spawn(&self, envs: &[(&str, &str)]) -> Herald {
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let stderr_path = self.path().join(format!("run-{run}.stderr"));
        let stdout_path = self.path().join(format!("run-{run}.stdout"));
        let child = self
            .command(envs)
            .arg("run")
            .arg("--config")
            .arg(self.config())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .expect("starting herald");
        Herald { child: Some(child), stderr_path }
    }

    /// Run a herald command to completion (`--config` is added).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[])
    }

    pub fn cli_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        blocking(|| {
            self.command(envs).args(args).arg("--config").arg(self.config()).output().expect("running a herald command")
        })
    }

    /// `herald status`: its stdout; the command must succeed.
    pub fn status(&self) -> String {
        let out = self.cli(&["status"]);
        assert!(out.status.success(), "herald status failed: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `herald log --format json`: every audit record.
    pub fn log(&self) -> Vec<Record> {
        self.log_args(&[])
    }

    /// `herald log --format json` with filters.
    pub fn log_args(&self, filters: &[&str]) -> Vec<Record> {
        let mut args = vec!["log", "--format", "json"];
        args.extend_from_slice(filters);
        let out = self.cli(&args);
        assert!(out.status.success(), "herald log failed: {}", text(&out.stderr));
        records(&out.stdout)
    }

    /// The state directory `daemon_section()` names.
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Where herald puts its control socket by default (no `control_socket`,
    /// no `RUNTIME_DIRECTORY`).
    pub fn socket(&self) -> PathBuf {
        self.state_dir().join("herald.sock")
    }

    /// Run a herald command that must be answered by the running daemon
    /// through its control socket (its stderr says so). Success is not
    /// checked here.
    pub fn ask_daemon(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(ASKED_DAEMON),
            "herald {args:?} did not ask the running daemon (exit {}); stderr:\n{stderr}",
            out.status
        );
        out
    }

    /// [`TestDir::ask_daemon`], and the command must succeed: its stdout.
    pub fn ask_daemon_ok(&self, args: &[&str]) -> String {
        let out = self.ask_daemon(args);
        assert!(out.status.success(), "herald {args:?} failed ({}): {}", out.status, text(&out.stderr));
        text(&out.stdout)
    }

    /// `herald log --format json` with filters, answered by the running daemon.
    pub fn log_from_daemon(&self, filters: &[&str]) -> Vec<Record> {
        let mut args = vec!["log", "--format", "json"];
        args.extend_from_slice(filters);
        records(self.ask_daemon_ok(&args).as_bytes())
    }
}

/// What the inspecting commands print on stderr when a daemon answered them.
pub const ASKED_DAEMON: &str = "(asking the running herald daemon through ";
/// ... and when they read the state directory themselves.
pub const READ_STORE: &str = "(no herald daemon is running: reading the state directory ";

/// The path of the `herald` binary under test.
pub fn herald_binary() -> &'static str {
    HERALD
}

/// The records `herald log --format json` printed.
pub fn records(stdout: &[u8]) -> Vec<Record> {
    text(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Record::parse(serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))))
        .collect()
}

/// Poll `check` until it holds, at most `within`; fails naming `what`.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not so within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// One message herald sent to `$NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct Notification {
    pub text: String,
    pub at: std::time::Instant,
    /// Did herald's control socket accept a connection when this arrived?
    pub control_socket_answered: bool,
}

impl Notification {
    /// `KEY=value` lines of the message.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`: every
/// message herald sends is kept, in order of arrival.
pub struct NotifySocket {
    path: PathBuf,
    messages: std::sync::Arc<std::sync::Mutex<Vec<Notification>>>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySocket {
    /// Bind at `path`; `control_socket` is probed when each message arrives.
    pub fn bind(path: &Path, control_socket: PathBuf) -> NotifySocket {
        let socket = tokio::net::UnixDatagram::bind(path).expect("binding the notify socket");
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&messages);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let control_socket_answered = std::os::unix::net::UnixStream::connect(&control_socket).is_ok();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let at = std::time::Instant::now();
                kept.lock().unwrap().push(Notification { text, at, control_socket_answered });
            }
        });
        NotifySocket { path: path.to_path_buf(), messages, task }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 path")
    }

    pub fn messages(&self) -> Vec<Notification> {
        self.messages.lock().unwrap().clone()
    }

    /// Wait until `condition` holds for the messages so far, at most `within`.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        condition: impl Fn(&[Notification]) -> bool,
    ) -> Vec<Notification> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let messages = self.messages();
            if condition(&messages) {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} on NOTIFY_SOCKET within {within:?}; got: {:?}",
                messages.iter().map(|m| &m.text).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The counts of `herald status`'s first line,
/// `deliveries: 0 pending, 0 in_flight, 2 delivered, ...`, by state.
pub fn status_counts(status: &str) -> std::collections::BTreeMap<String, u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("deliveries: "));
    let line = line.unwrap_or_else(|| panic!("no `deliveries:` line in herald status:\n{status}"));
    line.split(", ")
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            let count = words.next()?.parse().ok()?;
            Some((words.next()?.to_string(), count))
        })
        .collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `herald run`. Dropping it kills the process.
pub struct Herald {
    child: Option<Child>,
    stderr_path: PathBuf,
}

impl Herald {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("herald was stopped").id()
    }

    /// Everything herald wrote to stderr so far, without colours.
    pub fn stderr(&self) -> String {
        strip_ansi(&blocking(|| std::fs::read_to_string(&self.stderr_path).unwrap_or_default()))
    }

    /// Has herald exited? Its status if so.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("waiting for herald"))
    }

    /// Wait until herald's stderr contains `needle`; fails if herald exits first.
    pub async fn wait_for_log(&mut self, needle: &str) {
        self.wait_for_log_count(needle, 1).await;
    }

    /// Wait until `needle` appears `count` times in herald's stderr.
    pub async fn wait_for_log_count(&mut self, needle: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let exited = self.exited();
            let stderr = self.stderr();
            if stderr.matches(needle).count() >= count {
                return;
            }
            assert!(exited.is_none(), "herald exited ({exited:?}) before `{needle}` appeared; stderr:\n{stderr}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{needle}` did not appear {count} time(s) in herald's stderr within {DEADLINE:?}:\n{stderr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send a signal with `kill -<SIG> <pid>`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status =
            blocking(|| Command::new("kill").arg(format!("-{signal}")).arg(&pid).status()).expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Wait for herald to exit on its own, at most `DEADLINE`.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald did not exit within {DEADLINE:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit. Returns herald's stderr.
    pub async fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.wait_exit().await;
        let stderr = self.stderr();
        assert!(status.success(), "herald exited with {status} after SIGTERM; stderr:\n{stderr}");
        assert!(stderr.contains("stopped cleanly"), "no clean stop in stderr:\n{stderr}");
        stderr
    }

    /// SIGKILL: no chance to clean up. Returns herald's stderr.
    pub async fn kill(mut self) -> String {
        if let Some(child) = self.child.as_mut() {
            blocking(|| {
                child.kill().expect("killing herald");
                child.wait().expect("waiting for herald");
            });
        }
        self.child = None;
        self.stderr()
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One audit record, as `herald log --format json` prints it.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub event: String,
    pub state: String,
    pub delivery: String,
    pub post: String,
    pub account: String,
    pub platform: String,
    pub occurrence: DateTime<Utc>,
    pub attempt: u64,
    pub status: Option<u64>,
    pub message: Option<String>,
    pub url: Option<String>,
    pub remote_id: Option<String>,
    pub content_hash: String,
    pub next_due: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub raw: Value,
}

impl Record {
    fn parse(raw: Value) -> Record {
        let string = |key: &str| raw[key].as_str().unwrap_or_else(|| panic!("`{key}` missing in {raw}")).to_string();
        let optional = |key: &str| raw.get(key).and_then(Value::as_str).map(str::to_string);
        let time = |key: &str| -> Option<DateTime<Utc>> {
            raw.get(key).and_then(Value::as_str).map(|t| {
                DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("`{key}` = {t}: {e}")).with_timezone(&Utc)
            })
        };
        Record {
            seq: raw["seq"].as_u64().unwrap_or_else(|| panic!("`seq` missing in {raw}")),
            time: time("time").unwrap_or_else(|| panic!("`time` missing in {raw}")),
            event: string("event"),
            // Account records (an expiring credential) have no state.
            state: raw["state"].as_str().unwrap_or_default().to_string(),
            delivery: string("delivery"),
            post: string("post"),
            account: string("account"),
            // Records about herald itself (config, chain) have no platform.
            platform: raw["platform"].as_str().unwrap_or_default().to_string(),
            occurrence: time("occurrence").unwrap_or_else(|| panic!("`occurrence` missing in {raw}")),
            attempt: raw["attempt"].as_u64().unwrap_or_else(|| panic!("`attempt` missing in {raw}")),
            status: raw.get("answer").and_then(|a| a.get("status")).and_then(Value::as_u64),
            message: raw.get("answer").and_then(|a| a.get("message")).and_then(Value::as_str).map(str::to_string),
            url: optional("url"),
            remote_id: optional("remote_id"),
            content_hash: string("content_hash"),
            next_due: time("next_due"),
            reason: optional("reason"),
            raw,
        }
    }
}

impl Record {
    /// Not a record about an account or herald itself (their delivery id is all zeros).
    pub fn is_about_a_delivery(&self) -> bool {
        self.delivery.bytes().any(|b| b != b'0')
    }
}

/// The events of one delivery, in order.
pub fn events_of(records: &[Record], delivery: &str) -> Vec<String> {
    records.iter().filter(|r| r.delivery == delivery).map(|r| r.event.clone()).collect()
}

/// The distinct delivery ids in the log, in order of first appearance
/// (records about an account or herald itself name none: all zeros).
pub fn deliveries(records: &[Record]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in records {
        if !out.contains(&r.delivery) && r.is_about_a_delivery() {
            out.push(r.delivery.clone());
        }
    }
    out
}

/// The seq numbers are exactly 1..=N.
pub fn assert_gapless(records: &[Record]) {
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..=records.len() as u64).collect();
    assert_eq!(seqs, expected, "audit seq numbers are not 1..N without gaps");
}

/// Requests that were accepted (new posts, not duplicates).
pub fn accepted_keys(received: &[ReceivedPost]) -> Vec<String> {
    received
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::Accepted { .. }))
        .filter_map(|p| p.idempotency_key.clone())
        .collect()
}

/// The number of distinct idempotency keys that were accepted.
pub fn distinct_accepted(received: &[ReceivedPost]) -> usize {
    let keys: std::collections::HashSet<String> = accepted_keys(received).into_iter().collect();
    keys.len()
}

/// The accepted URL for a key.
pub fn accepted_url(received: &[ReceivedPost], key: &str) -> Option<String> {
    received.iter().find_map(|p| match &p.outcome {
        Outcome::Accepted { url, .. } if p.idempotency_key.as_deref() == Some(key) => Some(url.clone()),
        _ => None,
    })
}

/// The account named in the body of the accepted request with this key.
pub fn accepted_account(received: &[ReceivedPost], key: &str) -> Option<String> {
    received
        .iter()
        .filter(|p| p.idempotency_key.as_deref() == Some(key))
        .find_map(|p| p.body.as_ref().and_then(|b| b["account"].as_str()).map(str::to_string))
}
