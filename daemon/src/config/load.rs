//! Reading the config: the main file, its includes, every section, and the
//! cross-checks between them. All findings are collected before answering.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use herald_adapters::registry::{self, HttpOptions};
use herald_adapters::{AccountSettings, Platform, PostContent, Services};
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde_spanned::Spanned;
use toml_edit::{Item, Table};

use super::diag::{Diagnostics, SourceFile};
use super::secrets::{self, Resolved};
use super::values::{Misfire, Rate, TimeValue, parse_duration};
use super::{Account, Config, ContentOverride, DaemonSettings, Diagnostic, Post, RetryPolicy};
use crate::schedule::{CronExpr, Recurrence, Schedule};

/// The result of reading a config: the config when it has no errors, and
/// every error and warning found.
pub struct LoadOutcome {
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
    /// Every file read, with the SHA-256 of its bytes (for the audit log).
    pub files: Vec<crate::model::FileDigest>,
}

impl LoadOutcome {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }
}

/// Read and check the config at `path`, judging `at` times against now.
pub fn load(path: &Path) -> LoadOutcome {
    load_at(path, Utc::now())
}

/// Read and check the config at `path`, judging `at` times against `now`.
/// `{ credential }` secrets are read from `$CREDENTIALS_DIRECTORY`.
pub fn load_at(path: &Path, now: DateTime<Utc>) -> LoadOutcome {
    load_with(path, now, std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))
}

/// [`load_at`], reading `{ credential }` secrets from `credentials_dir`.
pub fn load_with(path: &Path, now: DateTime<Utc>, credentials_dir: Option<PathBuf>) -> LoadOutcome {
    let mut loader = Loader { diags: Diagnostics::default(), now, credentials_dir, ..Loader::default() };
    let config = loader.run(path);
    let mut diagnostics = loader.diags.items;
    diagnostics.sort_by(|a, b| (a.severity, &a.file, a.line, a.column).cmp(&(b.severity, &b.file, b.line, b.column)));
    let files: Vec<crate::model::FileDigest> =
        loader.files.iter().map(|f| crate::model::FileDigest::of(&f.path, f.text.as_bytes())).collect();
    let config = if diagnostics.iter().any(Diagnostic::is_error) { None } else { config };
    let config = config.map(|c| Config { files: files.clone(), ..c });
    LoadOutcome { config, diagnostics, files }
}

/// `[daemon] schedule_ahead` unless set: deliveries exist from an hour
/// before their occurrence.
pub const DEFAULT_SCHEDULE_AHEAD: Duration = Duration::from_secs(3600);
/// `[daemon] audit_head_interval` unless set: the audit log's head is
/// published hourly.
pub const DEFAULT_AUDIT_HEAD_INTERVAL: Duration = Duration::from_secs(3600);
const MAIN_KEYS: &[&str] = &["daemon", "retry", "alerts", "accounts", "groups", "posts"];
const INCLUDED_KEYS: &[&str] = &["accounts", "groups", "posts"];
const ACCOUNT_KEYS_OWNED_BY_DAEMON: &[&str] = &["platform", "rate", "concurrency", "timeout", "connect_timeout"];
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Default)]
struct Loader {
    diags: Diagnostics,
    now: DateTime<Utc>,
    /// Where `{ credential = "name" }` secrets are read.
    credentials_dir: Option<PathBuf>,
    files: Vec<SourceFile>,
    accounts: BTreeMap<String, (Account, usize, Range<usize>)>,
    groups: BTreeMap<String, GroupDef>,
    /// Every account id written, including those whose settings have errors
    /// (so a reference to them is not reported a second time).
    declared: BTreeSet<String>,
    raw_posts: Vec<PostDef>,
    /// Target lists seen so far, so that posts with the same targets share one.
    target_lists: HashMap<Vec<String>, super::Targets>,
}

/// A group as written: its members, and the file index and span defining it.
#[derive(Clone)]
struct GroupDef {
    members: Vec<Spanned<String>>,
    file: usize,
    span: Range<usize>,
}

/// A post as written, before checks.
struct PostDef {
    raw: RawPost,
    file: usize,
    span: Range<usize>,
    /// Where each `overrides.<platform>` key is.
    override_spans: BTreeMap<String, Range<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<Spanned<String>>,
    time_zone: Option<Spanned<String>>,
    include: Option<Vec<Spanned<String>>>,
    concurrency: Option<Spanned<i64>>,
    cache_mb: Option<Spanned<i64>>,
    shutdown_deadline: Option<Spanned<String>>,
    schedule_ahead: Option<Spanned<String>>,
    audit_head_interval: Option<Spanned<String>>,
    control_socket: Option<String>,
    socket_group: Option<String>,
    metrics_listen: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    initial_backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
    multiplier: Option<Spanned<f64>>,
    jitter: Option<Spanned<f64>>,
    max_retry_after: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    webhook: Option<Spanned<String>>,
    secret: Option<herald_adapters::Secret>,
    command: Option<Spanned<Vec<String>>>,
    pause_threshold: Option<Spanned<String>>,
    credential_warning: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPost {
    id: Spanned<String>,
    title: Option<String>,
    body: Option<String>,
    link: Option<String>,
    images: Option<Vec<String>>,
    targets: Spanned<Vec<Spanned<String>>>,
    at: Option<Spanned<TimeValue>>,
    cron: Option<Spanned<String>>,
    time_zone: Option<Spanned<String>>,
    start: Option<Spanned<TimeValue>>,
    until: Option<Spanned<TimeValue>>,
    misfire: Option<Misfire>,
    grace: Option<Spanned<String>>,
    overrides: Option<BTreeMap<String, RawOverride>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    title: Option<String>,
    body: Option<String>,
    link: Option<String>,
    images: Option<Vec<String>>,
}

fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

/// Deserialize one item of a document, keeping spans for error messages.
fn from_item<T: serde::de::DeserializeOwned>(item: Item) -> Result<T, toml_edit::de::Error> {
    let value = match item {
        Item::Value(v) => v,
        Item::Table(t) => toml_edit::Value::InlineTable(t.into_inline_table()),
        Item::ArrayOfTables(a) => toml_edit::Value::Array(a.into_array()),
        Item::None => return Err(<toml_edit::de::Error as serde::de::Error>::custom("missing value")),
    };
    T::deserialize(value.into_deserializer())
}

fn describe_de_error(e: &toml_edit::de::Error) -> String {
    let message = e.message().trim().to_string();
    if let Some(field) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) {
        let expected = message.split_once("expected ").map(|(_, rest)| rest).unwrap_or("");
        return format!("unknown key `{field}`; expected {expected}");
    }
    message
}

impl Loader {
    fn run(&mut self, path: &Path) -> Option<Config> {
        let main = self.read_file(path)?;
        let doc = self.parse(main)?;
        let root = doc.into_table();
        let main_idx = 0;
        for (key, _) in root.iter() {
            if !MAIN_KEYS.contains(&key) {
                let span = root.key(key).and_then(|k| k.span());
                self.diags.error(
                    &self.files[main_idx],
                    span,
                    format!("unknown section `{key}`; expected one of {}", MAIN_KEYS.join(", ")),
                );
            }
        }
        let mut root = root;
        // Includes are read even when [daemon] has other errors, so that
        // every file is checked in one go.
        let include = root.get("daemon").and_then(|d| d.get("include")).map(include_patterns).unwrap_or_default();
        let time_zone =
            root.get("daemon").and_then(|d| d.get("time_zone")).and_then(Item::as_str).and_then(|s| parse_tz(s).ok());
        let daemon = self.daemon_settings(main_idx, root.remove("daemon"));
        let retry = self.retry_policy(main_idx, root.remove("retry"));
        let alerts = self.alerts(main_idx, root.remove("alerts"));
        self.sections(main_idx, &mut root);
        for (pattern, at) in &include {
            self.include(main_idx, pattern, at.clone());
        }
        let groups = self.expand_groups();
        let default_tz = daemon.as_ref().map(|d| d.time_zone).or(time_zone).unwrap_or(Tz::UTC);
        let posts = self.posts(default_tz, &groups);
        let daemon = daemon?;
        let retry = retry?;
        let alerts = alerts?;
        if self.diags.has_errors() {
            return None;
        }
        Some(Config {
            path: path.to_path_buf(),
            daemon,
            retry,
            accounts: std::mem::take(&mut self.accounts).into_iter().map(|(id, (a, _, _))| (id, a)).collect(),
            groups,
            posts,
            alerts,
            files: Vec::new(),
        })
    }

    /// `[alerts]`; `Some(None)` when absent, `None` when it has errors.
    fn alerts(&mut self, idx: usize, item: Option<Item>) -> Option<Option<super::AlertSettings>> {
        let Some(mut item) = item else { return Some(None) };
        let span = item.span();
        let dir = self.files[idx].dir().to_path_buf();
        if let Some(secret) = item.as_table_like_mut().and_then(|t| t.get_mut("secret"))
            && !self.resolve_secret(idx, "[alerts]", "secret", secret, &dir)
        {
            return None;
        }
        let raw: RawAlerts = match from_item(item) {
            Ok(raw) => raw,
            Err(e) => {
                self.de_error(idx, span, "in [alerts]", &e);
                return None;
            }
        };
        let mut ok = true;
        let pause_threshold = self.duration(idx, raw.pause_threshold.as_ref(), Duration::from_secs(30 * 60), &mut ok);
        let credential_warning =
            self.duration(idx, raw.credential_warning.as_ref(), Duration::from_secs(14 * 86_400), &mut ok);
        let file = &self.files[idx];
        if let Some(url) = &raw.webhook
            && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
        {
            self.diags.error(file, span_of(url), "[alerts] `webhook` must be an http:// or https:// URL");
            ok = false;
        }
        if let Some(command) = &raw.command
            && command.get_ref().is_empty()
        {
            self.diags.error(
                file,
                span_of(command),
                "[alerts] `command` must name a program, e.g. [\"/usr/local/bin/page-ops\"]",
            );
            ok = false;
        }
        if raw.webhook.is_none() && raw.command.is_none() {
            self.diags.error(file, span, "[alerts] needs `webhook` or `command` (or remove the section)");
            ok = false;
        }
        ok.then(|| {
            Some(super::AlertSettings {
                webhook: raw.webhook.map(Spanned::into_inner),
                secret: raw.secret,
                command: raw.command.map(Spanned::into_inner),
                pause_threshold,
                credential_warning,
            })
        })
    }

    fn read_file(&mut self, path: &Path) -> Option<usize> {
        self.read_file_from(path, None)
    }

    /// Read a config file. `origin` is the include pattern that matched it
    /// (file index and span): a file that cannot be read is reported there.
    fn read_file_from(&mut self, path: &Path, origin: Option<(usize, &str, Option<Range<usize>>)>) -> Option<usize> {
        let refuse = |diags: &mut Diagnostics, files: &[SourceFile], problem: String| match &origin {
            Some((idx, pattern, at)) => diags.error(
                &files[*idx],
                at.clone(),
                format!("cannot read {}, matched by include pattern `{pattern}`: {problem}", path.display()),
            ),
            None => diags.file_error(path, format!("cannot read the config file: {problem}")),
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                refuse(&mut self.diags, &self.files, e.to_string());
                return None;
            }
        };
        if meta.len() > MAX_FILE_BYTES {
            let problem =
                format!("the file is {} bytes; config files are limited to {MAX_FILE_BYTES} bytes", meta.len());
            refuse(&mut self.diags, &self.files, problem);
            return None;
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                refuse(&mut self.diags, &self.files, e.to_string());
                return None;
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => {
                self.files.push(SourceFile::new(path.to_path_buf(), text));
                Some(self.files.len() - 1)
            }
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
                let file = SourceFile::new(path.to_path_buf(), prefix);
                self.diags.error(&file, Some(valid..valid), "the file is not valid UTF-8; save it as UTF-8");
                None
            }
        }
    }

    fn parse(&mut self, idx: usize) -> Option<toml_edit::Document<String>> {
        match toml_edit::Document::parse(self.files[idx].text.clone()) {
            Ok(doc) => Some(doc),
            Err(e) => {
                let message = e.message().trim().replace('\n', " ");
                self.diags.error(&self.files[idx], e.span(), format!("TOML syntax error: {message}"));
                None
            }
        }
    }

    fn de_error(&mut self, idx: usize, fallback: Option<Range<usize>>, context: &str, e: &toml_edit::de::Error) {
        let span = e.span().or(fallback);
        self.diags.error(&self.files[idx], span, format!("{context}: {}", describe_de_error(e)));
    }

    fn daemon_settings(&mut self, idx: usize, item: Option<Item>) -> Option<DaemonSettings> {
        let span = item.as_ref().and_then(Item::span);
        let raw: RawDaemon = match item {
            None => {
                self.diags.error(&self.files[idx], None, "missing [daemon] section; it needs at least `state_dir`");
                return None;
            }
            Some(item) => match from_item(item) {
                Ok(raw) => raw,
                Err(e) => {
                    self.de_error(idx, span, "in [daemon]", &e);
                    return None;
                }
            },
        };
        let file = &self.files[idx];
        let mut ok = true;
        let state_dir = match raw.state_dir {
            Some(dir) if !dir.get_ref().trim().is_empty() => file.dir().join(dir.get_ref()),
            Some(dir) => {
                self.diags.error(file, span_of(&dir), "`state_dir` is empty; give a folder herald may write to");
                ok = false;
                PathBuf::new()
            }
            None => {
                self.diags.error(
                    file,
                    span.clone(),
                    "[daemon] needs `state_dir`, the folder where herald keeps its state",
                );
                ok = false;
                PathBuf::new()
            }
        };
        let time_zone = match raw.time_zone {
            Some(tz) => match parse_tz(tz.get_ref()) {
                Ok(tz) => tz,
                Err(msg) => {
                    self.diags.error(file, span_of(&tz), msg);
                    ok = false;
                    Tz::UTC
                }
            },
            None => Tz::UTC,
        };
        let concurrency = match raw.concurrency {
            Some(c) if (1..=10_000).contains(c.get_ref()) => *c.get_ref() as usize,
            Some(c) => {
                self.diags.error(file, span_of(&c), format!("`concurrency` is {}; expected 1 to 10000", c.get_ref()));
                ok = false;
                1
            }
            None => 64,
        };
        let cache_mb = match raw.cache_mb {
            Some(c) if (1..=65_536).contains(c.get_ref()) => *c.get_ref() as u64,
            Some(c) => {
                self.diags.error(file, span_of(&c), format!("`cache_mb` is {}; expected 1 to 65536", c.get_ref()));
                ok = false;
                1
            }
            None => 64,
        };
        let shutdown_deadline = self.duration(idx, raw.shutdown_deadline.as_ref(), Duration::from_secs(30), &mut ok);
        let schedule_ahead = self.duration(idx, raw.schedule_ahead.as_ref(), DEFAULT_SCHEDULE_AHEAD, &mut ok);
        let audit_head_interval =
            self.duration(idx, raw.audit_head_interval.as_ref(), DEFAULT_AUDIT_HEAD_INTERVAL, &mut ok);
        if let Some(v) = raw.audit_head_interval.as_ref().filter(|_| audit_head_interval.is_zero()) {
            self.diags.error(&self.files[idx], span_of(v), "`audit_head_interval` must be longer than 0s".to_string());
            ok = false;
        }
        let include = raw.include.unwrap_or_default().into_iter().map(Spanned::into_inner).collect();
        let file = &self.files[idx];
        let metrics_listen = match &raw.metrics_listen {
            Some(addr) => match addr.get_ref().parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    let msg = format!(
                        "`metrics_listen` is `{}`; expected an address and port such as \"127.0.0.1:9464\"",
                        addr.get_ref()
                    );
                    self.diags.error(file, span_of(addr), msg);
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let log_level = match raw.log_level {
            Some(level) if ["error", "warn", "info", "debug", "trace"].contains(&level.get_ref().as_str()) => {
                Some(level.into_inner())
            }
            Some(level) => {
                let msg = format!("`log_level` is `{}`; expected error, warn, info, debug or trace", level.get_ref());
                self.diags.error(file, span_of(&level), msg);
                ok = false;
                None
            }
            None => None,
        };
        let control_socket = raw.control_socket.map(|p| file.dir().join(p));
        ok.then_some(DaemonSettings {
            state_dir,
            time_zone,
            include,
            concurrency,
            cache_mb,
            shutdown_deadline,
            schedule_ahead,
            audit_head_interval,
            control_socket,
            socket_group: raw.socket_group,
            metrics_listen,
            log_level,
        })
    }

    fn duration(&mut self, idx: usize, value: Option<&Spanned<String>>, default: Duration, ok: &mut bool) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(msg) => {
                    self.diags.error(&self.files[idx], span_of(v), msg);
                    *ok = false;
                    default
                }
            },
        }
    }

    fn retry_policy(&mut self, idx: usize, item: Option<Item>) -> Option<RetryPolicy> {
        let defaults = RetryPolicy::default();
        let Some(item) = item else { return Some(defaults) };
        let span = item.span();
        let raw: RawRetry = match from_item(item) {
            Ok(raw) => raw,
            Err(e) => {
                self.de_error(idx, span, "in [retry]", &e);
                return None;
            }
        };
        let mut ok = true;
        let max_attempts = match raw.max_attempts {
            Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                let msg = format!("`max_attempts` is {}; expected 1 to 100 (1 means no retry)", n.get_ref());
                self.diags.error(&self.files[idx], span_of(&n), msg);
                ok = false;
                1
            }
            None => defaults.max_attempts,
        };
        // Compare the backoffs only when both parsed: a default standing in
        // for a bad value would give a second, misleading error.
        let mut backoffs_ok = true;
        let initial_backoff =
            self.duration(idx, raw.initial_backoff.as_ref(), defaults.initial_backoff, &mut backoffs_ok);
        let max_backoff = self.duration(idx, raw.max_backoff.as_ref(), defaults.max_backoff, &mut backoffs_ok);
        ok &= backoffs_ok;
        let max_retry_after = self.duration(idx, raw.max_retry_after.as_ref(), defaults.max_retry_after, &mut ok);
        let file = &self.files[idx];
        if initial_backoff.is_zero() {
            let at = raw.initial_backoff.as_ref().and_then(span_of);
            self.diags.error(file, at, "`initial_backoff` must be longer than zero");
            ok = false;
        }
        if backoffs_ok && max_backoff < initial_backoff {
            let at = raw.max_backoff.as_ref().and_then(span_of).or(span.clone());
            self.diags.error(file, at, "`max_backoff` is shorter than `initial_backoff`");
            ok = false;
        }
        let multiplier = match raw.multiplier {
            Some(m) if (1.0..=10.0).contains(m.get_ref()) => *m.get_ref(),
            Some(m) => {
                self.diags.error(file, span_of(&m), format!("`multiplier` is {}; expected 1.0 to 10.0", m.get_ref()));
                ok = false;
                1.0
            }
            None => defaults.multiplier,
        };
        let jitter = match raw.jitter {
            Some(j) if (0.0..=1.0).contains(j.get_ref()) => *j.get_ref(),
            Some(j) => {
                self.diags.error(file, span_of(&j), format!("`jitter` is {}; expected 0.0 to 1.0", j.get_ref()));
                ok = false;
                0.0
            }
            None => defaults.jitter,
        };
        ok.then_some(RetryPolicy { max_attempts, initial_backoff, max_backoff, multiplier, jitter, max_retry_after })
    }

    /// Read the sections a file of posts may hold: accounts, groups, posts.
    fn sections(&mut self, idx: usize, root: &mut Table) {
        if let Some(item) = root.remove("accounts") {
            match item {
                Item::Table(table) => {
                    for (key, item) in table.into_iter() {
                        self.account(idx, key, item);
                    }
                }
                other => {
                    self.diags.error(&self.files[idx], other.span(), "`accounts` must be a table of [accounts.<id>]")
                }
            }
        }
        if let Some(item) = root.remove("groups") {
            match item.as_table_like() {
                Some(table) => {
                    for (name, members) in table.iter() {
                        let span = table.key(name).and_then(|k| k.span()).or_else(|| members.span());
                        match from_item::<Vec<Spanned<String>>>(members.clone()) {
                            Ok(list) => self.add_group(idx, name, list, span.unwrap_or(0..0)),
                            Err(e) => self.de_error(idx, span, &format!("group `{name}`"), &e),
                        }
                    }
                }
                None => {
                    self.diags.error(&self.files[idx], item.span(), "`groups` must be a table of name = [accounts]")
                }
            }
        }
        if let Some(item) = root.remove("posts") {
            match item {
                Item::ArrayOfTables(array) => {
                    for table in array.into_iter() {
                        self.raw_post(idx, table);
                    }
                }
                other => {
                    self.diags.error(&self.files[idx], other.span(), "`posts` must be written as [[posts]] tables")
                }
            }
        }
    }

    fn add_group(&mut self, idx: usize, name: &str, members: Vec<Spanned<String>>, span: Range<usize>) {
        if let Some(GroupDef { file: other, .. }) = self.groups.get(name) {
            let other = self.files[*other].path.display().to_string();
            self.diags.error(&self.files[idx], Some(span), format!("group `{name}` is already defined in {other}"));
            return;
        }
        self.groups.insert(name.to_string(), GroupDef { members, file: idx, span });
    }

    fn account(&mut self, idx: usize, id: String, item: Item) {
        let file_dir = self.files[idx].dir().to_path_buf();
        let header = item.span();
        let Item::Table(mut table) = item else {
            self.diags.error(&self.files[idx], header, format!("account `{id}` must be a table [accounts.{id}]"));
            return;
        };
        let span = header.unwrap_or(0..0);
        self.declared.insert(id.clone());
        if !valid_id(&id) {
            self.diags.error(&self.files[idx], Some(span.clone()), format!("account id `{id}` {ID_RULE}"));
        }
        if let Some((_, other, _)) = self.accounts.get(&id) {
            let other = self.files[*other].path.display().to_string();
            self.diags.error(&self.files[idx], Some(span), format!("account `{id}` is already defined in {other}"));
            return;
        }
        let platform = match table.get("platform").map(|i| (i.as_str(), i.span())) {
            None => {
                let names: Vec<_> = Platform::ALL.iter().map(|p| p.name()).collect();
                let msg = format!("account `{id}` needs `platform`, one of {}", names.join(", "));
                self.diags.error(&self.files[idx], Some(span), msg);
                return;
            }
            Some((Some(name), at)) => match Platform::parse(name) {
                Some(p) => p,
                None => {
                    let names: Vec<_> = Platform::ALL.iter().map(|p| p.name()).collect();
                    let msg = format!("unknown platform `{name}`; expected one of {}", names.join(", "));
                    self.diags.error(&self.files[idx], at, msg);
                    return;
                }
            },
            Some((None, at)) => {
                self.diags.error(&self.files[idx], at, "`platform` must be a string");
                return;
            }
        };
        let mut ok = true;
        let take_str = |table: &mut Table, key: &str, diags: &mut Diagnostics, file: &SourceFile, ok: &mut bool| {
            let item = table.remove(key)?;
            match item.as_str() {
                Some(s) => Some((s.to_string(), item.span())),
                None => {
                    diags.error(file, item.span(), format!("`{key}` must be a string"));
                    *ok = false;
                    None
                }
            }
        };
        let file = &self.files[idx];
        let rate = match take_str(&mut table, "rate", &mut self.diags, file, &mut ok) {
            Some((text, at)) => match Rate::parse(&text) {
                Ok(rate) => Some(rate),
                Err(msg) => {
                    self.diags.error(file, at, msg);
                    ok = false;
                    None
                }
            },
            None => platform.default_rate().map(|(count, per)| Rate { count, per }),
        };
        let concurrency = match table.remove("concurrency") {
            None => 1,
            Some(item) => match item.as_integer() {
                Some(n) if (1..=1000).contains(&n) => n as u32,
                _ => {
                    self.diags.error(file, item.span(), "`concurrency` must be a whole number from 1 to 1000");
                    ok = false;
                    1
                }
            },
        };
        let mut http = HttpOptions::default();
        for key in ["timeout", "connect_timeout"] {
            if let Some((text, at)) = take_str(&mut table, key, &mut self.diags, file, &mut ok) {
                match parse_duration(&text) {
                    Ok(d) if !d.is_zero() => {
                        if key == "timeout" {
                            http.timeout = d;
                        } else {
                            http.connect_timeout = d;
                        }
                    }
                    Ok(_) => {
                        self.diags.error(file, at, format!("`{key}` must be longer than zero"));
                        ok = false;
                    }
                    Err(msg) => {
                        self.diags.error(file, at, msg);
                        ok = false;
                    }
                }
            }
        }
        table.remove("platform");
        for key in platform.secret_fields() {
            let Some(item) = table.get_mut(key) else { continue };
            if !self.resolve_secret(idx, &format!("account `{id}`:"), key, item, &file_dir) {
                ok = false;
            }
        }
        let file = &self.files[idx];
        let value = toml_edit::Value::InlineTable(table.into_inline_table());
        let settings = match AccountSettings::deserialize(platform, value.into_deserializer()) {
            Ok(s) => s,
            Err(e) => {
                let mut msg = describe_de_error(&e);
                if msg.starts_with("unknown key") {
                    msg.push_str(&format!(
                        " (or one of {}, which herald reads for every account)",
                        ACCOUNT_KEYS_OWNED_BY_DAEMON.join(", ")
                    ));
                }
                self.diags.error(file, e.span().or(Some(span)), format!("account `{id}` ({platform}): {msg}"));
                return;
            }
        };
        if !ok {
            return;
        }
        let adapter = match registry::build(&settings, http, &Services::in_memory(&id)) {
            Ok(a) => a,
            Err(e) => {
                self.diags.error(file, Some(span), format!("account `{id}` ({platform}): {e}"));
                return;
            }
        };
        if let Some(expires) = settings.credentials_expire_at() {
            let left = expires - self.now;
            if left <= chrono::Duration::zero() {
                let msg = format!(
                    "account `{id}`: its credentials expired at {}; re-authorize the account",
                    expires.to_rfc3339()
                );
                self.diags.error(file, Some(span.clone()), msg);
                return;
            } else if left <= chrono::Duration::days(14) {
                let msg = format!(
                    "account `{id}`: its credentials expire at {} (in {} days); re-authorize it before then",
                    expires.to_rfc3339(),
                    left.num_days()
                );
                self.diags.warning(file, Some(span.clone()), msg);
            }
        }
        if platform.experimental() {
            let msg =
                format!("account `{id}`: the {platform} adapter is experimental; read the README before relying on it");
            self.diags.warning(file, Some(span.clone()), msg);
        }
        let account = Account { id: id.clone(), platform, settings, adapter, rate, concurrency, http };
        self.accounts.insert(id, (account, idx, span));
    }

    /// Resolve a secret setting in place (its item becomes the value);
    /// errors and warnings are reported, prefixed with `owner`. False when it
    /// cannot be resolved.
    fn resolve_secret(&mut self, idx: usize, owner: &str, key: &str, item: &mut Item, dir: &Path) -> bool {
        let at = item.span();
        let file = &self.files[idx];
        match secrets::resolve(key, item, dir, self.credentials_dir.as_deref()) {
            Ok(Resolved::Value(value)) => secrets::replace(item, value),
            Ok(Resolved::Exposed { value, path, mode }) => {
                let msg = format!(
                    "{owner} `{key}` comes from {}, which every user on this host can read (mode {mode:o}); \
                     chmod o-r it",
                    path.display()
                );
                self.diags.warning(file, at, msg);
                secrets::replace(item, value);
            }
            Ok(Resolved::Inline(value)) => {
                let mut msg = format!(
                    "{owner} `{key}` is written inline; prefer {{ env = \"VAR\" }}, {{ file = \"path\" }} \
                     or {{ credential = \"name\" }} so the secret stays out of the config file"
                );
                if let Some(mode) = secrets::world_readable(&file.path) {
                    msg.push_str(&format!(", which every user on this host can read (mode {mode:o})"));
                }
                self.diags.warning(file, at, msg);
                secrets::replace(item, value);
            }
            Err(msg) => {
                self.diags.error(file, at, format!("{owner} {msg}"));
                secrets::replace(item, String::new());
                return false;
            }
        }
        true
    }

    fn raw_post(&mut self, idx: usize, table: Table) {
        let span = table.span().unwrap_or(0..0);
        let mut override_spans = BTreeMap::new();
        if let Some(overrides) = table.get("overrides").and_then(Item::as_table_like) {
            for (name, item) in overrides.iter() {
                let at = overrides.key(name).and_then(|k| k.span()).or_else(|| item.span()).unwrap_or(span.clone());
                override_spans.insert(name.to_string(), at);
            }
        }
        match from_item::<RawPost>(Item::Table(table)) {
            Ok(raw) => self.raw_posts.push(PostDef { raw, file: idx, span, override_spans }),
            Err(e) => self.de_error(idx, Some(span), "in [[posts]]", &e),
        }
    }

    fn include(&mut self, main_idx: usize, pattern: &str, at: Option<Range<usize>>) {
        let base = self.files[main_idx].dir().to_path_buf();
        let full = base.join(pattern);
        let full_text = full.to_string_lossy().into_owned();
        let paths = match glob::glob(&full_text) {
            Ok(paths) => paths,
            Err(e) => {
                // The position is in the joined path; count it in the pattern as written.
                let offset = full_text.chars().count().saturating_sub(pattern.chars().count());
                let msg = format!(
                    "include pattern `{pattern}` is not a valid glob: {} at character {}",
                    e.msg,
                    e.pos.saturating_sub(offset) + 1
                );
                self.diags.error(&self.files[main_idx], at, msg);
                return;
            }
        };
        let mut seen: HashSet<PathBuf> = self.files.iter().filter_map(|f| f.path.canonicalize().ok()).collect();
        let mut matched = 0;
        for entry in paths {
            let path = match entry {
                Ok(p) => p,
                Err(e) => {
                    let msg = format!(
                        "cannot read {}, matched by include pattern `{pattern}`: {}",
                        e.path().display(),
                        e.error()
                    );
                    self.diags.error(&self.files[main_idx], at.clone(), msg);
                    continue;
                }
            };
            matched += 1;
            if !seen.insert(path.canonicalize().unwrap_or_else(|_| path.clone())) {
                continue;
            }
            let Some(idx) = self.read_file_from(&path, Some((main_idx, pattern, at.clone()))) else { continue };
            let Some(doc) = self.parse(idx) else { continue };
            let mut root = doc.into_table();
            let keys: Vec<String> = root.iter().map(|(k, _)| k.to_string()).collect();
            for key in keys {
                if !INCLUDED_KEYS.contains(&key.as_str()) {
                    let at = root.key(&key).and_then(|k| k.span());
                    let msg = if MAIN_KEYS.contains(&key.as_str()) {
                        format!("[{key}] may only be set in the main config file, not in an included file")
                    } else {
                        format!("unknown section `{key}`; an included file may hold {}", INCLUDED_KEYS.join(", "))
                    };
                    self.diags.error(&self.files[idx], at, msg);
                }
            }
            self.sections(idx, &mut root);
        }
        if matched == 0 {
            let msg = format!("include pattern `{pattern}` matches no file");
            self.diags.warning(&self.files[main_idx], at, msg);
        }
    }

    /// Expand groups into sorted account lists, reporting unknown members and cycles.
    fn expand_groups(&mut self) -> BTreeMap<String, Vec<String>> {
        let mut out = BTreeMap::new();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let GroupDef { file: idx, span, .. } = &self.groups[&name];
            if self.accounts.contains_key(&name) {
                let msg = format!("group `{name}` has the same name as an account; rename one of them");
                self.diags.error(&self.files[*idx], Some(span.clone()), msg);
                continue;
            }
            let mut members = BTreeSet::new();
            let mut path = vec![name.clone()];
            self.expand_into(&name, &mut members, &mut path);
            out.insert(name, members.into_iter().collect());
        }
        out
    }

    fn expand_into(&mut self, group: &str, out: &mut BTreeSet<String>, path: &mut Vec<String>) {
        let Some(GroupDef { members, file: idx, .. }) = self.groups.get(group).cloned() else { return };
        for member in members {
            let name = member.get_ref();
            if self.accounts.contains_key(name) {
                out.insert(name.clone());
            } else if self.groups.contains_key(name) {
                if path.contains(name) {
                    let msg = format!("groups include each other in a circle: {} -> {name}", path.join(" -> "));
                    self.diags.error(&self.files[idx], span_of(&member), msg);
                    continue;
                }
                path.push(name.clone());
                self.expand_into(name, out, path);
                path.pop();
            } else if path.len() == 1 && !self.declared.contains(name) {
                let msg = format!("group `{group}` lists `{name}`, which is neither an account nor a group");
                self.diags.error(&self.files[idx], span_of(&member), msg);
            }
        }
    }

    fn posts(&mut self, default_tz: Tz, groups: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Post> {
        let mut posts: BTreeMap<String, Post> = BTreeMap::new();
        let mut defined_at: BTreeMap<String, (usize, Range<usize>)> = BTreeMap::new();
        for PostDef { raw, file: idx, span, override_spans } in std::mem::take(&mut self.raw_posts) {
            let id = raw.id.get_ref().clone();
            if let Some((other_idx, other_span)) = defined_at.get(&id) {
                let other = &self.files[*other_idx];
                let (line, _) = other.line_col(other_span.start);
                let msg = format!(
                    "post id `{id}` is already used at {}:{line}; post ids must be unique",
                    other.path.display()
                );
                self.diags.error(&self.files[idx], span_of(&raw.id), msg);
                continue;
            }
            defined_at.insert(id.clone(), (idx, span.clone()));
            if let Some(post) = self.post(raw, idx, span, override_spans, default_tz, groups) {
                posts.insert(id, post);
            }
        }
        posts
    }

    fn post(
        &mut self,
        raw: RawPost,
        idx: usize,
        span: Range<usize>,
        override_spans: BTreeMap<String, Range<usize>>,
        default_tz: Tz,
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Option<Post> {
        let id = raw.id.get_ref().clone();
        let file = &self.files[idx];
        let dir = file.dir().to_path_buf();
        let mut ok = true;
        if !valid_id(&id) {
            self.diags.error(file, span_of(&raw.id), format!("post id `{id}` {ID_RULE}"));
            ok = false;
        }
        let tz = match &raw.time_zone {
            Some(tz) => match parse_tz(tz.get_ref()) {
                Ok(tz) => tz,
                Err(msg) => {
                    self.diags.error(file, span_of(tz), msg);
                    return None;
                }
            },
            None => default_tz,
        };
        let resolve = |value: &Option<Spanned<TimeValue>>, diags: &mut Diagnostics, ok: &mut bool| {
            let v = value.as_ref()?;
            match v.get_ref().resolve(&tz) {
                Ok(t) => Some(t),
                Err(msg) => {
                    diags.error(file, span_of(v), msg);
                    *ok = false;
                    None
                }
            }
        };
        let start = resolve(&raw.start, &mut self.diags, &mut ok);
        let until = resolve(&raw.until, &mut self.diags, &mut ok);
        let at = resolve(&raw.at, &mut self.diags, &mut ok);
        let recurrence = match (&raw.at, &raw.cron) {
            (Some(_), Some(cron)) => {
                self.diags.error(file, span_of(cron), format!("post `{id}` has both `at` and `cron`; give one"));
                return None;
            }
            (None, None) => {
                let msg = format!(
                    "post `{id}` has no schedule; add `at = 2026-12-01T09:00:00+08:00` (once) or `cron = \"0 9 * * 1\"` (recurring)"
                );
                self.diags.error(file, Some(span.clone()), msg);
                return None;
            }
            (Some(_), None) => {
                for (name, bound) in [("start", &raw.start), ("until", &raw.until)] {
                    if let Some(b) = bound {
                        let msg = format!("`{name}` applies to `cron` schedules; a post with `at` happens once");
                        self.diags.error(file, span_of(b), msg);
                        ok = false;
                    }
                }
                Recurrence::Once(at?)
            }
            (None, Some(cron)) => match CronExpr::parse(cron.get_ref()) {
                Ok(expr) => Recurrence::Cron(expr),
                Err(e) => {
                    // Point at the offending part: the string starts one byte after its quote.
                    let at = cron.span().start + 1 + byte_offset(cron.get_ref(), e.offset);
                    self.diags.error(file, Some(at..at), format!("bad cron expression `{}`: {e}", cron.get_ref()));
                    return None;
                }
            },
        };
        if let (Some(s), Some(u)) = (start, until)
            && u < s
        {
            self.diags.error(file, raw.until.as_ref().and_then(span_of), "`until` is before `start`");
            ok = false;
        }
        let grace = match &raw.grace {
            None => Duration::from_secs(3600),
            Some(g) => match parse_duration(g.get_ref()) {
                Ok(d) => d,
                Err(msg) => {
                    self.diags.error(file, span_of(g), msg);
                    ok = false;
                    Duration::ZERO
                }
            },
        };
        let misfire = raw.misfire.unwrap_or_default();
        let schedule = Schedule { recurrence, tz, start, until };

        // Targets.
        let mut targets = BTreeSet::new();
        if raw.targets.get_ref().is_empty() {
            self.diags.error(
                file,
                span_of(&raw.targets),
                format!("post `{id}` has no targets; name accounts or groups"),
            );
            ok = false;
        }
        for target in raw.targets.get_ref() {
            let name = target.get_ref();
            if let Some((account, _, _)) = self.accounts.get(name) {
                targets.insert(account.id.clone());
            } else if let Some(members) = groups.get(name) {
                targets.extend(members.iter().cloned());
            } else if self.declared.contains(name) || self.groups.contains_key(name) {
                ok = false; // the account or group itself has errors, reported there
            } else {
                let mut msg = format!("target `{name}` is neither an account nor a group");
                if let Some(close) = closest(name, self.declared.iter().chain(self.groups.keys())) {
                    msg.push_str(&format!("; did you mean `{close}`?"));
                }
                self.diags.error(file, span_of(target), msg);
                ok = false;
            }
        }

        // Content.
        let resolve_images =
            |images: Vec<String>| images.into_iter().map(|p| dir.join(p).to_string_lossy().into_owned()).collect();
        let content = PostContent {
            title: raw.title,
            body: raw.body.unwrap_or_default(),
            link: raw.link,
            images: resolve_images(raw.images.unwrap_or_default()),
        };
        let mut overrides = BTreeMap::new();
        for (name, o) in raw.overrides.unwrap_or_default() {
            match Platform::parse(&name) {
                Some(p) => {
                    let images = o.images.map(resolve_images);
                    overrides.insert(p, ContentOverride { title: o.title, body: o.body, link: o.link, images });
                }
                None => {
                    let names: Vec<_> = Platform::ALL.iter().map(|p| p.name()).collect();
                    let msg = format!("`overrides.{name}`: unknown platform; expected one of {}", names.join(", "));
                    self.diags.error(file, override_spans.get(&name).cloned(), msg);
                    ok = false;
                }
            }
        }
        let (line, _) = file.line_col(span.start);
        let mut post = Post {
            id: id.clone(),
            content,
            overrides,
            targets: self
                .target_lists
                .entry(targets.into_iter().collect())
                .or_insert_with_key(|l| l.clone().into())
                .clone(),
            schedule,
            misfire,
            grace,
            file: file.path.clone(),
            line,
            hash: String::new(),
        };
        post.compute_hash();

        // What each platform would say of the content.
        let mut refused: BTreeMap<(Platform, String), Vec<String>> = BTreeMap::new();
        let mut contents: BTreeMap<Platform, PostContent> = BTreeMap::new();
        for account_id in &post.targets {
            let Some((account, _, _)) = self.accounts.get(account_id) else { continue };
            let content = contents.entry(account.platform).or_insert_with(|| post.content_for(account.platform));
            if let Err(problems) = account.adapter.render(content) {
                for p in problems {
                    refused.entry((account.platform, p.to_string())).or_default().push(account_id.clone());
                }
            }
        }
        for ((platform, problem), accounts) in refused {
            let msg = format!("post `{id}` would be refused by {platform} ({}): {problem}", list_accounts(&accounts));
            self.diags.error(file, Some(span.clone()), msg);
            ok = false;
        }

        if let Recurrence::Once(at) = post.schedule.recurrence
            && at <= self.now
        {
            let late = (self.now - at).to_std().unwrap_or_default();
            let what = match post.misfire {
                Misfire::Skip => "it will be skipped (misfire = \"skip\") and recorded in the audit log".to_string(),
                _ if late <= post.grace => format!(
                    "if not yet published, it goes out as soon as herald runs (misfire = \"{}\"), until the grace \
                     window of {} ends",
                    post.misfire,
                    humantime::format_duration(post.grace)
                ),
                _ => format!(
                    "it is past its grace window of {} (misfire = \"{}\"), so it will be skipped and recorded in \
                     the audit log",
                    humantime::format_duration(post.grace),
                    post.misfire
                ),
            };
            let msg = format!("post `{id}`: `at` {} is already past; {what}", at.to_rfc3339());
            self.diags.warning(file, raw.at.as_ref().and_then(span_of), msg);
        } else if post.schedule.next_after(self.now).is_none() && post.schedule.is_recurring() {
            let msg = format!("post `{id}`: the schedule has no occurrence after now (check `until`)");
            self.diags.warning(file, Some(span.clone()), msg);
        }
        ok.then_some(post)
    }
}

/// The include patterns of `[daemon]` and where each is written, read
/// leniently (errors are reported when [daemon] itself is checked).
fn include_patterns(item: &Item) -> Vec<(String, Option<Range<usize>>)> {
    item.as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(|s| (s.to_string(), v.span()))).collect())
        .unwrap_or_default()
}

const ID_RULE: &str = "must be 1 to 64 characters of letters, digits, '-', '_' or '.'";

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_tz(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone `{name}`; expected an IANA name such as \"Asia/Shanghai\" or \"UTC\""))
}

fn byte_offset(text: &str, char_offset: usize) -> usize {
    text.char_indices().nth(char_offset).map_or(text.len(), |(i, _)| i)
}

fn list_accounts(accounts: &[String]) -> String {
    match accounts.len() {
        0..=3 => accounts.join(", "),
        n => format!("{}, and {} more", accounts[..3].join(", "), n - 3),
    }
}

/// The known name closest to a misspelt one, if one is close enough.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known.map(|k| (edit_distance(name, k), k)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// What the inspecting commands (`status`, `log`, `retry`, `cancel`,
/// `reload`, `upcoming`) need from the main config file: read leniently,
/// without the accounts' secrets.
#[derive(Debug, Clone)]
pub struct Peek {
    pub state_dir: PathBuf,
    pub cache_mb: u64,
    pub control_socket: Option<PathBuf>,
    pub time_zone: Tz,
    pub log_level: Option<String>,
}

/// The `[daemon]` section of a config's text, as a document of its own.
fn daemon_section(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            inside = trimmed.starts_with("[daemon]");
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Read [`Peek`] from the main config file.
pub fn peek(path: &Path) -> Result<Peek, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read the config file: {e}", path.display()))?;
    let doc = match toml_edit::Document::parse(text.clone()) {
        Ok(doc) => doc,
        // A half-edited file elsewhere must not cut the CLI off from the
        // running daemon: read the [daemon] section on its own.
        Err(whole) => toml_edit::Document::parse(daemon_section(&text)).map_err(|_| {
            let file = SourceFile::new(path.to_path_buf(), text.clone());
            let (line, column) = whole.span().map_or((0, 0), |s| file.line_col(s.start));
            format!("{}:{line}:{column}: TOML syntax error: {}", path.display(), whole.message().trim())
        })?,
    };
    let daemon = doc.get("daemon").and_then(Item::as_table_like);
    let get = |key: &str| daemon.and_then(|d| d.get(key));
    let base = path.parent().unwrap_or(Path::new("."));
    let state_dir = get("state_dir")
        .and_then(Item::as_str)
        .ok_or_else(|| format!("{}: [daemon] state_dir is missing", path.display()))?;
    Ok(Peek {
        state_dir: base.join(state_dir),
        cache_mb: get("cache_mb").and_then(Item::as_integer).unwrap_or(64).clamp(1, 65_536) as u64,
        control_socket: get("control_socket").and_then(Item::as_str).map(|p| base.join(p)),
        time_zone: get("time_zone").and_then(Item::as_str).and_then(|s| parse_tz(s).ok()).unwrap_or(Tz::UTC),
        log_level: get("log_level").and_then(Item::as_str).map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::utc;

    fn check(files: &[(&str, &str)]) -> LoadOutcome {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let outcome = load_at(&dir.path().join(files[0].0), utc("2026-12-01T00:00:00Z"));
        // Keep paths short in assertions.
        let mut outcome = outcome;
        for d in &mut outcome.diagnostics {
            d.file = d.file.strip_prefix(dir.path()).map(Path::to_path_buf).unwrap_or(d.file.clone());
        }
        outcome
    }

    fn lines(outcome: &LoadOutcome) -> Vec<String> {
        outcome.diagnostics.iter().map(ToString::to_string).collect()
    }

    const HEAD: &str =
        "[daemon]\nstate_dir = \"s\"\n\n[accounts.wuhan]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n";

    #[test]
    fn every_error_names_file_line_column_and_all_are_reported() {
        let main = format!(
            "{HEAD}include = [\"posts.d/*.toml\"]\n\n[[posts]]\nid = \"a\"\nbody = \"x\"\ntargets = [\"wuhn\"]\nat = 2027-01-01T00:00:00Z\n"
        );
        // `include` after [accounts.wuhan] belongs to the account: an unknown key there.
        let outcome = check(&[
            ("herald.toml", &main),
            ("posts.d/a.toml", "[[posts]]\nid = \"a\"\nbody = \"y\"\ntargets = [\"wuhan\"]\ncron = \"61 * * * *\"\n"),
        ]);
        let text = lines(&outcome).join("\n");
        assert!(outcome.config.is_none());
        assert!(text.contains("herald.toml:7:1: error: account `wuhan` (webhook): unknown key `include`"), "{text}");
        assert!(
            text.contains(
                "herald.toml:12:12: error: target `wuhn` is neither an account nor a group; did you mean `wuhan`?"
            ),
            "{text}"
        );
    }

    #[test]
    fn errors_across_included_files_come_together() {
        let main = "[daemon]\nstate_dir = \"s\"\ninclude = [\"posts.d/*.toml\"]\n\n[accounts.wuhan]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\n[[posts]]\nid = \"a\"\nbody = \"x\"\ntargets = [\"wuhan\"]\nat = 2027-01-01T00:00:00Z\n";
        let outcome = check(&[
            ("herald.toml", main),
            ("posts.d/a.toml", "[[posts]]\nid = \"a\"\nbody = \"y\"\ntargets = [\"wuhan\"]\ncron = \"61 * * * *\"\n"),
            (
                "posts.d/b.toml",
                "[[posts]]\nid = \"b\"\nbody = \"y\"\ntargets = [\"wuhan\"]\ncron = \"0 9 * * mon-fri\"\ntime_zone = \"Asia/Shangai\"\n",
            ),
        ]);
        let text = lines(&outcome).join("\n");
        assert!(text.contains("posts.d/a.toml:2:6: error: post id `a` is already used at"), "{text}");
        assert!(text.contains("posts.d/b.toml:6:13: error: unknown time zone `Asia/Shangai`"), "{text}");
        assert_eq!(outcome.errors().count(), 2, "{text}");
    }

    #[test]
    fn syntax_errors_and_invalid_utf8_point_at_the_place() {
        let outcome = check(&[("herald.toml", "[daemon]\nstate_dir = \"s\nx = 1\n")]);
        let text = lines(&outcome).join("\n");
        assert!(text.starts_with("herald.toml:2:"), "{text}");
        assert!(text.contains("TOML syntax error"), "{text}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, b"[daemon]\nstate_dir = \"caf\xe9\"\n").unwrap();
        let outcome = load_at(&path, utc("2026-12-01T00:00:00Z"));
        let d = &outcome.diagnostics[0];
        assert_eq!((d.line, d.column), (2, 17));
        assert!(d.message.contains("not valid UTF-8"));
    }

    #[test]
    fn a_bad_cron_expression_points_into_the_expression() {
        let outcome = check(&[(
            "herald.toml",
            &format!("{HEAD}\n[[posts]]\nid = \"a\"\nbody = \"x\"\ntargets = [\"wuhan\"]\ncron = \"0 9 * * 8\"\n"),
        )]);
        let text = lines(&outcome).join("\n");
        assert!(text.contains("herald.toml:12:17: error: bad cron expression `0 9 * * 8`: day-of-week"), "{text}");
    }

    #[test]
    fn secrets_from_missing_sources_are_errors_and_inline_secrets_warnings() {
        let text = "[daemon]\nstate_dir = \"s\"\n\n[accounts.a]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = { env = \"HERALD_TEST_UNSET_VARIABLE\" }\n\n[accounts.b]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"inline-hunter2\"\n\n[accounts.c]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = { file = \"missing.key\" }\n";
        let outcome = check(&[("herald.toml", text)]);
        let text = lines(&outcome).join("\n");
        assert!(text.contains("herald.toml:7:10: error: account `a`: `secret` comes from environment variable HERALD_TEST_UNSET_VARIABLE, which is not set"), "{text}");
        assert!(text.contains("herald.toml:12:10: warning: account `b`: `secret` is written inline"), "{text}");
        assert!(text.contains("herald.toml:17:10: error: account `c`: `secret` comes from file"), "{text}");
        assert!(!text.contains("inline-hunter2"), "a secret must never be echoed: {text}");
    }

    #[test]
    fn secrets_other_users_can_read_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hook.key");
        std::fs::write(&key, "s3cret-value").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let main = dir.path().join("herald.toml");
        let text = "[daemon]\nstate_dir = \"s\"\n\n[accounts.a]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = { file = \"hook.key\" }\n\n[accounts.b]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"inline-s3cret\"\n";
        std::fs::write(&main, text).unwrap();
        std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o644)).unwrap();
        let outcome = load_at(&main, utc("2026-12-01T00:00:00Z"));
        let all: Vec<String> = outcome.diagnostics.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(outcome.config.is_some(), "{all}");
        assert!(all.contains(":7:10: warning: account `a`: `secret` comes from"), "{all}");
        assert!(all.contains("every user on this host can read (mode 644)"), "{all}");
        assert!(all.contains(":12:10: warning: account `b`: `secret` is written inline"), "{all}");
        assert!(!all.contains("s3cret"), "a secret must never be echoed: {all}");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let outcome = load_at(&main, utc("2026-12-01T00:00:00Z"));
        assert!(!outcome.diagnostics.iter().any(|d| d.message.contains("hook.key")));
    }

    #[test]
    fn a_past_one_shot_time_warns_with_what_the_misfire_policy_will_do() {
        let outcome = check(&[(
            "herald.toml",
            &format!("{HEAD}\n[[posts]]\nid = \"a\"\nbody = \"x\"\ntargets = [\"wuhan\"]\nat = 2026-11-30T23:30:00Z\n"),
        )]);
        assert!(outcome.config.is_some());
        let text = lines(&outcome).join("\n");
        assert!(
            text.contains("herald.toml:12:6: warning: post `a`: `at` 2026-11-30T23:30:00+00:00 is already past"),
            "{text}"
        );
        assert!(text.contains("grace window of 1h"), "{text}");
    }

    #[test]
    fn absurd_values_are_refused_with_the_expected_range() {
        let text = "[daemon]\nstate_dir = \"s\"\nconcurrency = 0\n\n[retry]\nmax_attempts = 0\ninitial_backoff = \"0s\"\nmultiplier = 0.5\njitter = 2.0\n";
        let text = lines(&check(&[("herald.toml", text)])).join("\n");
        for expected in [
            "herald.toml:3:15: error: `concurrency` is 0; expected 1 to 10000",
            "herald.toml:6:16: error: `max_attempts` is 0; expected 1 to 100",
            "herald.toml:7:19: error: `initial_backoff` must be longer than zero",
            "herald.toml:8:14: error: `multiplier` is 0.5; expected 1.0 to 10.0",
            "herald.toml:9:10: error: `jitter` is 2; expected 0.0 to 1.0",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    #[test]
    fn groups_expand_through_groups_and_circles_are_errors() {
        let text = format!(
            "{HEAD}\n[accounts.xian]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\n[groups]\ncentral = [\"wuhan\"]\nall = [\"central\", \"xian\"]\nloop-a = [\"loop-b\"]\nloop-b = [\"loop-a\"]\n"
        );
        let outcome = check(&[("herald.toml", &text)]);
        let text = lines(&outcome).join("\n");
        assert!(text.contains("groups include each other in a circle"), "{text}");
        let ok = check(&[(
            "herald.toml",
            &format!(
                "{HEAD}\n[accounts.xian]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n\n[groups]\ncentral = [\"wuhan\"]\nall = [\"central\", \"xian\"]\n\n[[posts]]\nid = \"p\"\nbody = \"x\"\ntargets = [\"all\"]\ncron = \"@daily\"\n"
            ),
        )]);
        let config = ok.config.expect("valid");
        assert_eq!(config.posts["p"].targets, vec!["wuhan".to_string(), "xian".to_string()]);
    }
}
