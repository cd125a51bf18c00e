//! `herald check`: validate a config and show the plan.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::CheckFormat;
use super::output::printable;
use crate::config::{self, Config, Diagnostic, Post};
use crate::materialize::Renderer;
use crate::store::open::{Location, Role};
use crate::store::{Store, StoreError};

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    errors: Vec<&'a Diagnostic>,
    warnings: Vec<&'a Diagnostic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<StoreView>,
    accounts: Vec<AccountView>,
    posts: Vec<PostPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probes: Option<Vec<ProbeView>>,
}

#[derive(Serialize)]
struct ProbeView {
    account: String,
    platform: String,
    ok: bool,
    checked: bool,
    detail: String,
    expires_at: Option<String>,
}

/// Where the config keeps herald's state; the URL never with its password.
#[derive(Serialize)]
struct StoreView {
    backend: &'static str,
    /// The state directory (sled), or `postgres://user@host:port/db`.
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<usize>,
    /// PostgreSQL: "plain text", "TLS verify-full", ... (the URL's `sslmode`).
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<String>,
    /// PostgreSQL: the schema version after connecting, or why it could not
    /// be used (an error of the check).
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl StoreView {
    fn of(config: &Config, readable: &Readable<'_>) -> StoreView {
        match &config.store {
            config::StoreSettings::Sled => StoreView {
                backend: "sled",
                location: std::path::absolute(&config.daemon.state_dir)
                    .unwrap_or_else(|_| config.daemon.state_dir.clone())
                    .display()
                    .to_string(),
                pool: None,
                transport: None,
                schema: None,
                error: None,
            },
            config::StoreSettings::Postgres(pg) => {
                // Connecting brings an empty database to this build's schema
                // (as `herald run` would) and refuses a newer one.
                let (schema, error) = match readable.get() {
                    Ok(_) => (Some(crate::store::postgres::schema::known()), None),
                    Err(Unread::Failed { error, .. }) => (None, Some(error.to_string())),
                    Err(other) => (None, Some(other.why())),
                };
                StoreView {
                    backend: "postgres",
                    location: pg.shown.clone(),
                    pool: Some(pg.pool),
                    transport: Some(pg.transport.clone()),
                    schema,
                    error,
                }
            }
        }
    }
}

#[derive(Serialize)]
struct AccountView {
    id: String,
    platform: String,
    experimental: bool,
    rate: Option<String>,
    concurrency: u32,
}

#[derive(Serialize)]
struct PostPlan {
    id: String,
    file: String,
    line: usize,
    schedule: String,
    time_zone: String,
    misfire: String,
    grace: String,
    targets: Vec<String>,
    /// Whether a second person must approve it, and its state when the
    /// store can be read here (see [`approval_of`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<String>,
    upcoming: Vec<Occurrence>,
    /// The exact content per platform (and per account where it differs).
    rendered: Vec<RenderedView>,
}

#[derive(Serialize)]
struct Occurrence {
    utc: String,
    local: String,
}

#[derive(Serialize)]
struct RenderedView {
    platform: String,
    accounts: Vec<String>,
    title: Option<String>,
    text: String,
    link: Option<String>,
    images: Vec<String>,
    characters: usize,
}

/// The most occurrences `check --upcoming` lists per post: enough for a
/// year of weekly posts, little enough that the listing cannot exhaust memory.
pub const MAX_UPCOMING: usize = 1000;

/// Parse `--upcoming N`, refusing counts beyond [`MAX_UPCOMING`] with the reason.
pub fn parse_upcoming(text: &str) -> Result<usize, String> {
    let too_many = || {
        format!(
            "at most {MAX_UPCOMING} occurrences per post can be listed; for the schedule of a running daemon \
             use `herald upcoming`"
        )
    };
    let digits = text.trim();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{text}` is not a whole number from 0 to {MAX_UPCOMING}"));
    }
    match digits.parse::<usize>() {
        Ok(n) if n <= MAX_UPCOMING => Ok(n),
        _ => Err(too_many()),
    }
}

pub fn run(
    path: &Path,
    upcoming: usize,
    format: CheckFormat,
    probe: bool,
    credentials_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let outcome = config::load_with(path, now, credentials_dir);
    // The store, opened at most once, by the first part of the report that reads it.
    let readable = outcome.config.as_ref().map(Readable::new);
    let (accounts, posts) = match (&outcome.config, &readable) {
        (Some(config), Some(readable)) => (accounts(config), plans(config, now, upcoming, readable)),
        _ => (Vec::new(), Vec::new()),
    };
    let probes = match (&outcome.config, probe) {
        (Some(config), true) => Some(probes(config)?),
        _ => None,
    };
    let probes_ok = probes.as_ref().is_none_or(|p| p.iter().all(|p| p.ok));
    let store = outcome.config.as_ref().zip(readable.as_ref()).map(|(c, r)| StoreView::of(c, r));
    let store_ok = store.as_ref().is_none_or(|s| s.error.is_none());
    let past =
        outcome.config.as_ref().zip(readable.as_ref()).map(|(c, r)| past_warnings(c, now, r)).unwrap_or_default();
    let report = Report {
        ok: outcome.config.is_some() && probes_ok && store_ok,
        errors: outcome.errors().collect(),
        warnings: outcome.warnings().chain(&past).collect(),
        store,
        accounts,
        posts,
        probes,
    };
    match format {
        CheckFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        CheckFormat::Text => print_text(&report, outcome.config.as_ref()),
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// What herald's store says of past one-shot occurrences.
enum History {
    /// Readable: these occurrences already have deliveries (whatever became of them).
    Known(std::collections::HashSet<String>),
    /// No store yet: nothing was ever published with this state directory.
    None,
    /// Not readable now; why.
    Unknown(String),
}

/// A warning for each one-shot post whose `at` is past and that herald has
/// not settled yet, saying what the misfire policy will do with it. The store
/// is read when no daemon holds it and it belongs to this user (reading it as
/// root could leave root-owned files in the daemon's state directory).
fn past_warnings(config: &Config, now: DateTime<Utc>, readable: &Readable<'_>) -> Vec<Diagnostic> {
    use crate::calendar::Recurrence;
    let past: Vec<(&Post, DateTime<Utc>)> = config
        .posts
        .values()
        .filter_map(|p| match p.schedule.recurrence {
            Recurrence::Once(at) if at <= now => Some((p, at)),
            _ => None,
        })
        .collect();
    if past.is_empty() {
        return Vec::new();
    }
    let history = history(readable, &past);
    past.into_iter()
        .filter_map(|(post, at)| {
            let fate = match crate::materialize::verdicts(post, &[at], now).pop()? {
                crate::materialize::Verdict::Skip(_) => format!(
                    "it will be skipped (misfire = \"{}\", grace {}) and recorded in the audit log",
                    post.misfire,
                    humantime::format_duration(post.grace)
                ),
                _ => format!(
                    "it goes out as soon as herald runs (misfire = \"{}\"), until its grace window of {} ends",
                    post.misfire,
                    humantime::format_duration(post.grace)
                ),
            };
            let message = match &history {
                History::Known(done) if done.contains(&post.id) => return None,
                History::Known(_) | History::None => {
                    format!(
                        "post `{}`: `at` {} is past and herald has not handled it; {fate}",
                        post.id,
                        at.to_rfc3339()
                    )
                }
                History::Unknown(why) => format!(
                    "post `{}`: `at` {} is past; if herald has not handled it yet, {fate} ({why})",
                    post.id,
                    at.to_rfc3339()
                ),
            };
            Some(Diagnostic {
                severity: crate::config::Severity::Warning,
                file: post.file.clone(),
                line: post.line,
                column: 1,
                message,
            })
        })
        .collect()
}

fn history(readable: &Readable<'_>, past: &[(&Post, DateTime<Utc>)]) -> History {
    let store = match readable.get() {
        Ok(store) => store,
        Err(Unread::NoStore) => return History::None,
        Err(Unread::Running) => return History::Unknown("herald is running; a reload settles it".into()),
        Err(other) => return History::Unknown(other.why()),
    };
    let mut done = std::collections::HashSet::new();
    for (post, at) in past {
        match store.deliveries_of_occurrence(&post.id, crate::model::to_millis(*at)) {
            Ok(found) if !found.is_empty() => {
                done.insert(post.id.clone());
            }
            Ok(_) => {}
            Err(e) => return History::Unknown(format!("the store could not be read: {e}")),
        }
    }
    History::Known(done)
}

/// Why `check` does not read the store.
enum Unread {
    /// Nothing was ever stored with this state directory.
    NoStore,
    /// A daemon holds it (sled's lock).
    Running,
    Other(String),
    /// Opening it failed.
    Failed {
        location: String,
        error: StoreError,
    },
}

impl Unread {
    fn why(&self) -> String {
        match self {
            Unread::NoStore => "no store yet".to_string(),
            Unread::Running => "herald is running: `herald upcoming` shows it".to_string(),
            Unread::Other(why) => why.clone(),
            Unread::Failed { location, error } => format!("{location} could not be read: {error}"),
        }
    }
}

/// The config's store for `check`, opened at most once: the store line,
/// the past one-shot warnings and the approval states all read it, and
/// connecting to PostgreSQL (up to its connect timeout for a database that
/// does not answer) or replaying a sled log is not to be paid three times.
struct Readable<'a> {
    config: &'a Config,
    opened: std::cell::OnceCell<Result<Arc<dyn Store>, Unread>>,
}

impl<'a> Readable<'a> {
    fn new(config: &'a Config) -> Self {
        Readable { config, opened: std::cell::OnceCell::new() }
    }

    fn get(&self) -> &Result<Arc<dyn Store>, Unread> {
        self.opened.get_or_init(|| open_for_reading(self.config))
    }
}

/// The store, when this user may read it and no daemon holds it; else why
/// not. A sled store is read only when it belongs to this user: reading it
/// as root could leave root-owned files in the daemon's state directory.
fn open_for_reading(config: &Config) -> Result<Arc<dyn Store>, Unread> {
    use std::os::unix::fs::MetadataExt;
    let location = Location::of(config);
    if let Some(dir) = location.sled_dir() {
        let dir_text = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string();
        match std::fs::metadata(dir.join("db")) {
            Ok(meta) if meta.uid() == rustix::process::geteuid().as_raw() => {}
            Ok(_) => {
                return Err(Unread::Other(format!("the state directory {dir_text} belongs to another user; not read")));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unread::NoStore),
            Err(e) => return Err(Unread::Other(format!("cannot read the state directory {dir_text}: {e}"))),
        }
    }
    location.open(Role::Reader).map_err(|e| match e {
        StoreError::Locked { .. } => Unread::Running,
        error => Unread::Failed { location: location.describe(), error },
    })
}

/// "required: approved by alice (uid 1000) at ..." or "required: awaiting approval", for posts that need it.
fn approval_of(config: &Config, post: &Post, store: &Result<Arc<dyn Store>, Unread>) -> Option<String> {
    if !post.requires_approval(&config.daemon) {
        return None;
    }
    let hash = post.approval_hash();
    Some(match store {
        Ok(store) => match crate::approvals::approval(store.as_ref(), &post.id) {
            Ok(found) => {
                format!("required (content {hash}): {}", crate::approvals::ApprovalState::of(post, config, found))
            }
            Err(e) => format!("required (content {hash}); the store could not be read: {e}"),
        },
        Err(unread) => {
            format!("required (content {hash}); whether it is approved is not known here ({})", unread.why())
        }
    })
}

/// One harmless authenticated call per account, a few at a time.
fn probes(config: &Config) -> anyhow::Result<Vec<ProbeView>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for account in config.accounts.values() {
            let account = account.clone();
            set.spawn(async move {
                let limit = account.http.timeout + account.http.connect_timeout;
                let result = tokio::time::timeout(limit, account.adapter.probe()).await;
                let (ok, checked, detail, expires_at) = match result {
                    Ok(Ok(p)) => (true, p.checked, p.detail, p.expires_at.map(|t| t.to_rfc3339())),
                    Ok(Err(e)) => (false, true, e.to_string(), None),
                    Err(_) => (false, true, format!("no answer within {}", humantime::format_duration(limit)), None),
                };
                // A probe's answer is printed: scrub what it may echo of the account's secrets.
                let detail = crate::scrub::Scrubber::for_account(&account).text(&detail);
                let platform = account.platform.to_string();
                ProbeView { account: account.id.clone(), platform, ok, checked, detail, expires_at }
            });
        }
        let mut out = Vec::new();
        while let Some(view) = set.join_next().await {
            out.push(view?);
        }
        out.sort_by(|a, b| a.account.cmp(&b.account));
        Ok(out)
    })
}

fn accounts(config: &Config) -> Vec<AccountView> {
    config
        .accounts
        .values()
        .map(|a| AccountView {
            id: a.id.clone(),
            platform: a.platform.to_string(),
            experimental: a.platform.experimental(),
            rate: a.rate.map(|r| r.to_string()),
            concurrency: a.concurrency,
        })
        .collect()
}

fn plans(config: &Config, now: DateTime<Utc>, upcoming: usize, readable: &Readable<'_>) -> Vec<PostPlan> {
    let mut plans: Vec<PostPlan> = config.posts.values().map(|post| plan(config, post, now, upcoming)).collect();
    if config.posts.values().any(|p| p.requires_approval(&config.daemon)) {
        let store = readable.get();
        for plan in &mut plans {
            if let Some(post) = config.posts.get(&plan.id) {
                plan.approval = approval_of(config, post, store);
            }
        }
    }
    // In the order they go out: the earliest next occurrence first.
    plans.sort_by(|a, b| (a.upcoming.first().map(|o| &o.utc), &a.id).cmp(&(b.upcoming.first().map(|o| &o.utc), &b.id)));
    plans
}

fn plan(config: &Config, post: &Post, now: DateTime<Utc>, upcoming: usize) -> PostPlan {
    let tz = post.schedule.tz;
    let occurrences = match post.schedule.recurrence {
        crate::calendar::Recurrence::Once(at) => vec![at],
        crate::calendar::Recurrence::Cron(_) => post.schedule.upcoming(now, upcoming),
    };
    let upcoming = occurrences
        .into_iter()
        .map(|t| Occurrence {
            utc: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            local: t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z (%a)").to_string(),
        })
        .collect();
    let mut rendered: BTreeMap<(String, String), RenderedView> = BTreeMap::new();
    let mut renderer = Renderer::default();
    for id in &post.targets {
        let Some(account) = config.accounts.get(id) else { continue };
        let Ok((hash, r)) = renderer.render(post, account) else { continue };
        let view = rendered.entry((account.platform.to_string(), hash)).or_insert_with(|| RenderedView {
            platform: account.platform.to_string(),
            accounts: Vec::new(),
            characters: r.text.chars().count(),
            title: r.title,
            text: r.text,
            link: r.link,
            images: r.images,
        });
        view.accounts.push(id.clone());
    }
    PostPlan {
        id: post.id.clone(),
        file: post.file.display().to_string(),
        line: post.line,
        schedule: post.schedule.describe(),
        time_zone: tz.to_string(),
        misfire: post.misfire.to_string(),
        grace: humantime::format_duration(post.grace).to_string(),
        targets: post.targets.to_vec(),
        approval: None,
        upcoming,
        rendered: rendered.into_values().collect(),
    }
}

fn print_text(report: &Report, config: Option<&Config>) {
    // Everything printed goes through `printable`: file names, ids and
    // platform answers cannot drive the terminal.
    for d in report.errors.iter().chain(&report.warnings) {
        eprintln!("{}", printable(&d.to_string()));
    }
    let Some(config) = config else {
        eprintln!(
            "\n{} error(s), {} warning(s): the config is refused; nothing is scheduled",
            report.errors.len(),
            report.warnings.len()
        );
        return;
    };
    println!(
        "config OK: {} account(s), {} group(s), {} post(s); {} warning(s)",
        config.accounts.len(),
        config.groups.len(),
        config.posts.len(),
        report.warnings.len()
    );
    if let Some(store) = &report.store {
        let pool = store.pool.map(|n| format!(", up to {n} connections")).unwrap_or_default();
        let schema = store.schema.map(|v| format!("; reachable, schema version {v}")).unwrap_or_default();
        let transport = store.transport.as_ref().map(|t| format!(" ({t})")).unwrap_or_default();
        println!("store: {} at {}{transport}{pool}{schema}", store.backend, printable(&store.location));
        if let Some(error) = &store.error {
            eprintln!("error: store: {} (the config is valid, but `herald run` would not start)", printable(error));
        }
    }
    for a in report.accounts.iter().filter(|a| a.experimental) {
        println!("note: account `{}` uses the experimental {} adapter", a.id, a.platform);
    }
    if let Some(probes) = &report.probes {
        println!();
        println!("credentials (one harmless call per account, nothing published):");
        for p in probes {
            let verdict = match (p.ok, p.checked) {
                (false, _) => "FAILED",
                (true, false) => "n/a   ",
                (true, true) => "ok    ",
            };
            let expires = p.expires_at.as_deref().map(|t| format!("; expires {t}")).unwrap_or_default();
            println!("  {verdict} {} ({}): {}{expires}", p.account, p.platform, printable(&p.detail));
        }
        let failed = probes.iter().filter(|p| !p.ok).count();
        if failed > 0 {
            println!("{failed} account(s) failed the probe: fix them before the campaign");
        }
    }
    for post in &report.posts {
        println!();
        println!("post {}  ({}:{})", post.id, printable(&post.file), post.line);
        println!("  schedule: {}; misfire {} within {}", post.schedule, post.misfire, post.grace);
        println!("  targets:  {} account(s): {}", post.targets.len(), abbreviate(&post.targets, 8));
        if let Some(approval) = &post.approval {
            println!("  approval: {}", printable(approval));
        }
        for o in &post.upcoming {
            println!("  at {}   = {}", o.local, o.utc);
        }
        if post.upcoming.is_empty() {
            println!("  no upcoming occurrence");
        }
        for r in &post.rendered {
            println!("  {} text ({} characters) for {}:", r.platform, r.characters, abbreviate(&r.accounts, 4));
            if let Some(title) = &r.title {
                println!("    | title: {}", printable(title));
            }
            for line in r.text.lines() {
                println!("    | {}", printable(line));
            }
            if let Some(link) = &r.link {
                println!("    | link: {}", printable(link));
            }
            for image in &r.images {
                println!("    | image: {}", printable(image));
            }
        }
    }
}

fn abbreviate(items: &[String], n: usize) -> String {
    if items.len() <= n { items.join(", ") } else { format!("{}, and {} more", items[..n].join(", "), items.len() - n) }
}
