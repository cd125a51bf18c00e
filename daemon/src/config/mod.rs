//! The configuration: what staff and operators write in TOML, checked and
//! turned into typed values. [`load`] reads the main file and its includes
//! and reports every problem at once, each with file, line and column.

mod diag;
mod load;
mod secrets;
mod values;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use herald_adapters::registry::HttpOptions;
use herald_adapters::{AccountSettings, Adapter, Platform, PostContent};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use diag::{Diagnostic, Severity};
pub use load::{LoadOutcome, Peek, load, load_at, load_with, peek, postgres_url_shown};
pub use values::{Misfire, Rate, TimeValue, parse_duration};

use crate::calendar::Schedule;

/// A complete, valid configuration.
#[derive(Clone)]
pub struct Config {
    /// The main config file.
    pub path: PathBuf,
    pub daemon: DaemonSettings,
    pub retry: RetryPolicy,
    pub accounts: BTreeMap<String, Account>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub posts: BTreeMap<String, Post>,
    pub alerts: Option<AlertSettings>,
    /// `[store]`: sled in `state_dir` (the default) or PostgreSQL.
    pub store: StoreSettings,
    /// The files it was read from, with their digests, as read.
    pub files: Vec<crate::model::FileDigest>,
}

/// `[alerts]`: where to report failed deliveries and long rate-limit pauses.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// POST a JSON alert here (signed with `secret` like the webhook adapter).
    pub webhook: Option<String>,
    pub secret: Option<herald_adapters::Secret>,
    /// Run this program (with arguments), the alert as JSON on its stdin.
    pub command: Option<Vec<String>>,
    /// Alert when a rate limit pauses an account for longer than this.
    pub pause_threshold: Duration,
    /// Alert (once a day) when an account's credentials expire within this.
    pub credential_warning: Duration,
}

/// `[store]`: which backend holds the schedule and the audit log. An
/// ops-owned section: only the main config file may set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreSettings {
    /// sled, embedded, in `[daemon] state_dir` (the default).
    #[default]
    Sled,
    /// A PostgreSQL database.
    Postgres(PostgresSettings),
}

/// `[store] backend = "postgres"`.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// The connection URL, a secret: it may carry the password.
    pub url: herald_adapters::Secret,
    /// How many connections herald keeps open at most.
    pub pool: usize,
    /// The URL as messages may show it: `postgres://user@host:port/db`,
    /// without the password or any parameter.
    pub shown: String,
    /// How the connection is protected, from the URL's `sslmode`:
    /// "plain text", "TLS verify-full", ... (for `herald check`).
    pub transport: String,
}

impl std::fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings").field("url", &self.shown).field("pool", &self.pool).finish()
    }
}

/// `[store] pool` unless set.
pub const DEFAULT_POSTGRES_POOL: usize = 8;

/// `[daemon]`: where state lives and how the daemon behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    pub state_dir: PathBuf,
    /// The time zone of posts that do not name their own.
    pub time_zone: Tz,
    /// Campaign file patterns (`include`) as written, resolved against the
    /// main file's folder: posts and groups only.
    pub include: Vec<String>,
    /// Account file patterns (`accounts_include`), ops-owned: accounts and
    /// groups only.
    pub accounts_include: Vec<String>,
    /// At most this many deliveries in flight at once, over all accounts.
    pub concurrency: usize,
    /// The bound of the store's page cache, in MiB.
    pub cache_mb: u64,
    /// How long `herald run` waits for in-flight deliveries when asked to stop.
    pub shutdown_deadline: Duration,
    /// How long before an occurrence its deliveries are created; further
    /// ahead it is kept as one planned record per post.
    pub schedule_ahead: Duration,
    /// How often the audit log's head is published outside the host
    /// (journal, alerts), besides start, reload and stop.
    pub audit_head_interval: Duration,
    /// The control socket; by default `$RUNTIME_DIRECTORY/herald.sock` under
    /// systemd, else `<state_dir>/herald.sock`.
    pub control_socket: Option<PathBuf>,
    /// The group that may use the control socket (mode 0660).
    pub socket_group: Option<String>,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The log level unless RUST_LOG is set (`error`, `warn`, `info`, `debug`, `trace`).
    pub log_level: Option<String>,
    /// Whether posts need approval unless they say (`approval`).
    pub approval: ApprovalMode,
    /// The group whose members may approve posts (`herald approve`).
    pub approvers_group: Option<String>,
    /// Whether the author of a post's last change may approve it.
    pub author_may_approve: bool,
}

/// `approval` on a post or in `[daemon]`: must a second person approve a
/// post's exact content before it goes out?
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    Required,
    #[default]
    None,
}

impl DaemonSettings {
    /// Where the control socket lives.
    pub fn socket_path(&self) -> PathBuf {
        if let Some(path) = &self.control_socket {
            return path.clone();
        }
        match std::env::var_os("RUNTIME_DIRECTORY") {
            // systemd may pass several directories separated by ':'; the first is ours.
            Some(dirs) => {
                let dirs = dirs.to_string_lossy().into_owned();
                PathBuf::from(dirs.split(':').next().unwrap_or(&dirs)).join("herald.sock")
            }
            None => self.state_dir.join("herald.sock"),
        }
    }
}

/// `[retry]`: how failed attempts are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Each delay is spread by up to this fraction either way (0.2 = ±20%).
    pub jitter: f64,
    /// A platform's Retry-After is honoured up to this long.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30 * 60),
            multiplier: 2.0,
            jitter: 0.2,
            max_retry_after: Duration::from_secs(6 * 3600),
        }
    }
}

/// `[accounts.<id>]`: one destination.
#[derive(Clone)]
pub struct Account {
    pub id: String,
    pub platform: Platform,
    pub settings: AccountSettings,
    pub adapter: Arc<dyn Adapter>,
    pub rate: Option<Rate>,
    pub concurrency: u32,
    pub http: HttpOptions,
}

/// Content fields a post replaces for one platform (`[posts.overrides.<platform>]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContentOverride {
    pub title: Option<String>,
    pub body: Option<String>,
    pub link: Option<String>,
    pub images: Option<Vec<String>>,
}

/// One post: what to publish, where, and when.
#[derive(Debug, Clone)]
pub struct Post {
    pub id: String,
    pub content: PostContent,
    pub overrides: BTreeMap<Platform, ContentOverride>,
    /// The accounts this post goes to, groups expanded, sorted, without repeats.
    pub targets: Targets,
    pub schedule: Schedule,
    pub misfire: Misfire,
    pub grace: Duration,
    /// `approval` as the post says it; else `[daemon] approval` decides.
    pub approval: Option<ApprovalMode>,
    /// Where the post is defined, for messages.
    pub file: PathBuf,
    pub line: usize,
    /// A digest of everything that defines the post: two configs that give a
    /// post the same hash schedule it identically.
    pub hash: String,
}

/// A post's target accounts, sorted and without repeats. Posts with the same
/// targets share one list: ten thousand posts to a group of a hundred
/// accounts hold a hundred names, not a million.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(Arc<[String]>);

impl std::ops::Deref for Targets {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Targets {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Vec<String>> for Targets {
    fn from(list: Vec<String>) -> Self {
        Targets(list.into())
    }
}

impl PartialEq<Vec<String>> for Targets {
    fn eq(&self, other: &Vec<String>) -> bool {
        *self.0 == **other
    }
}

impl Post {
    /// The content for one platform, with that platform's overrides applied.
    pub fn content_for(&self, platform: Platform) -> PostContent {
        let mut content = self.content.clone();
        if let Some(o) = self.overrides.get(&platform) {
            if o.title.is_some() {
                content.title.clone_from(&o.title);
            }
            if let Some(body) = &o.body {
                content.body.clone_from(body);
            }
            if o.link.is_some() {
                content.link.clone_from(&o.link);
            }
            if let Some(images) = &o.images {
                content.images.clone_from(images);
            }
        }
        content
    }

    fn compute_hash(&mut self) {
        #[derive(Serialize)]
        struct Definition<'a> {
            content: &'a PostContent,
            overrides: &'a BTreeMap<Platform, ContentOverride>,
            targets: &'a [String],
            schedule: String,
            misfire: Misfire,
            grace_ms: u128,
        }
        let definition = Definition {
            content: &self.content,
            overrides: &self.overrides,
            targets: &self.targets,
            schedule: self.schedule.canonical(),
            misfire: self.misfire,
            grace_ms: self.grace.as_millis(),
        };
        let json = serde_json::to_vec(&definition).unwrap_or_default();
        self.hash = hex::encode(&Sha256::digest(&json)[..16]);
    }
}

impl Post {
    /// Must this post be approved before it goes out?
    pub fn requires_approval(&self, daemon: &DaemonSettings) -> bool {
        self.approval.unwrap_or(daemon.approval) == ApprovalMode::Required
    }

    /// What an approval is bound to: the content (text, title, link, the
    /// images by their bytes, the per-platform overrides) and the targets,
    /// not the schedule. The first 16 bytes of a SHA-256, in hex.
    pub fn approval_hash(&self) -> String {
        #[derive(Serialize)]
        struct Approved<'a> {
            content: &'a PostContent,
            overrides: &'a BTreeMap<Platform, ContentOverride>,
            targets: &'a [String],
        }
        let approved = Approved { content: &self.content, overrides: &self.overrides, targets: &self.targets };
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&approved).unwrap_or_default());
        let images = self.overrides.values().filter_map(|o| o.images.as_ref()).flatten();
        for image in self.content.images.iter().chain(images) {
            let digest = crate::model::FileDigest::read(image);
            h.update(b"\n");
            h.update(digest.path.as_bytes());
            h.update(b"\n");
            h.update(digest.sha256.as_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }
}

impl Config {
    /// Rebuild every account's adapter with `services` (the daemon lends its
    /// store as the credential cache). The loader builds adapters with an
    /// in-memory cache, which is all `check` needs.
    pub fn bind(&mut self, services: impl Fn(&str) -> herald_adapters::Services) -> Result<(), String> {
        for account in self.accounts.values_mut() {
            account.adapter =
                herald_adapters::registry::build(&account.settings, account.http.clone(), &services(&account.id))
                    .map_err(|e| format!("account `{}`: {e}", account.id))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("platform", &self.platform)
            .field("rate", &self.rate)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}
