//! The `herald` command line: argument parsing and the commands.

mod audit;
mod check;
mod filters;
mod inspect;
mod output;
mod recall;
mod source;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::logging::{self, LogFormat};

const DEFAULT_CONFIG: &str = "/etc/herald/herald.toml";

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Publish scheduled warning and education posts to many social accounts, on time, with an audit log.",
    long_about = "herald keeps a persistent schedule of posts written in TOML and publishes each one, at its time, \
to many accounts on several platforms, retrying when a platform fails and recording every attempt in an \
append-only audit log.\n\nStart with `herald demo`, then `herald check --config config.example.toml`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// The main config file.
    #[arg(long, short, env = "HERALD_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(clap::Args, Clone)]
struct StateArgs {
    /// The main config file; its [daemon] section says where the daemon's
    /// control socket and state are (no secrets are read).
    #[arg(long, short, env = "HERALD_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The state directory, instead of reading it from the config.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: publish every post at its time until stopped (SIGTERM).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format; JSON is chosen automatically under systemd.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Check a config and show what it will publish, where and when. Exits 1 on errors.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// How many upcoming occurrences of each post to list (at most 1000).
        #[arg(long, default_value_t = 3, value_parser = check::parse_upcoming)]
        upcoming: usize,
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
        /// Also make one harmless authenticated call per account (no publishing) and report
        /// whether its credentials work and when they expire.
        #[arg(long)]
        probe: bool,
        /// Read `{ credential = "name" }` secrets from this folder (as systemd's
        /// LoadCredential= would provide them), e.g. /etc/herald/secrets.
        #[arg(long, value_name = "DIR", env = "CREDENTIALS_DIRECTORY")]
        credentials_dir: Option<PathBuf>,
    },
    /// Show deliveries by state, the next one due, and failed deliveries with their reasons.
    Status {
        #[command(flatten)]
        state: StateArgs,
        /// How many failed deliveries to list.
        #[arg(long, default_value_t = 20)]
        failed: usize,
    },
    /// Read the audit log: every state change of every delivery.
    Log {
        #[command(flatten)]
        state: StateArgs,
        /// Only this post (`*` matches any characters).
        #[arg(long)]
        post: Option<String>,
        /// Only this account (`*` matches any characters, e.g. "wuhan-*").
        #[arg(long)]
        account: Option<String>,
        /// Only this platform (webhook, weibo, wechat, ...).
        #[arg(long)]
        platform: Option<String>,
        /// Only these events (delivered, failed, attempt, retry_scheduled, cancelled, skipped, ...);
        /// repeatable, or comma-separated.
        #[arg(long = "event", value_name = "EVENT")]
        events: Vec<String>,
        /// Only one delivery.
        #[arg(long)]
        delivery: Option<String>,
        /// Only actions by this actor: a user name, a signal (SIGHUP) or `systemd` (`*` matches any characters).
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
        /// Only records written by this daemon, as `herald log` shows it: `HOST pid N boot R`
        /// (PostgreSQL; `*` matches any characters, e.g. 'host-a *').
        #[arg(long, value_name = "DAEMON")]
        daemon: Option<String>,
        /// From this time on: RFC 3339, a date such as 2026-03-01 (midnight UTC), `today`,
        /// `yesterday`, `now`, or a time ago such as `-2h` or `2 days ago`.
        #[arg(long, allow_hyphen_values = true)]
        since: Option<String>,
        /// Before this time (the same forms as --since).
        #[arg(long, allow_hyphen_values = true)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = LogOutput::Table)]
        format: LogOutput,
        /// Print the exact content sent under this content hash (or an unambiguous prefix of
        /// it), instead of records.
        #[arg(long, value_name = "HASH")]
        content: Option<String>,
    },
    /// Send a failed (or skipped) delivery again, or every failed delivery of a post.
    Retry {
        #[command(flatten)]
        state: StateArgs,
        /// The delivery id (from `herald status` or `herald log`).
        delivery: Option<String>,
        /// Every failed delivery of this post.
        #[arg(long, conflicts_with = "delivery")]
        post: Option<String>,
        /// Why: kept in the audit record with your user name.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// List every delivery due next, in order: pending ones and planned ones.
    ///
    /// Pending deliveries exist (from `schedule_ahead` before their occurrence); planned ones are
    /// the occurrences further ahead, every one of them within the window asked (`--until`),
    /// up to `--limit` rows. `herald cancel` takes the id of a pending or planned row; "planned
    /// (later)" rows, after a post's next occurrence, only once they are next.
    Upcoming {
        #[command(flatten)]
        state: StateArgs,
        /// How many rows to list at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only what is due by then: RFC 3339, a date (midnight UTC), `tomorrow`, or a time from
        /// now such as `2h`, `+3d` or `in 2 days`.
        #[arg(long)]
        until: Option<String>,
    },
    /// Ask the running daemon to re-read its config (like SIGHUP); a config with errors is refused.
    Reload {
        #[command(flatten)]
        state: StateArgs,
        /// Why: kept in the `config_applied` record with your user name.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Cancel a pending or planned delivery, or every one of a post.
    ///
    /// Takes a delivery id as `herald upcoming` lists it: pending, or planned (recorded cancelled
    /// at once). Rows marked "planned (later)", occurrences after a post's next one, cannot be
    /// cancelled until they are next. `--post` cancels the post's pending deliveries and its next
    /// planned occurrence; later occurrences stay scheduled. A cancellation holds until the post
    /// is changed in the config.
    Cancel {
        #[command(flatten)]
        state: StateArgs,
        /// The delivery id.
        delivery: Option<String>,
        /// Every pending delivery of this post.
        #[arg(long, conflicts_with = "delivery")]
        post: Option<String>,
        /// Why: kept in the audit record with your user name.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// herald's job end to end on local emulators, in about ten seconds.
    ///
    /// Starts emulators of Weibo, WeChat, Tieba, Discourse, Mastodon and a webhook receiver on
    /// 127.0.0.1, writes a config for seven accounts with two posts due within seconds, runs the
    /// daemon on a temporary state directory until every delivery has settled, and prints the
    /// audit log. On the way Weibo answers one request "rate limited", the archive webhook fails
    /// twice and the WeChat token expires: herald waits, retries and refreshes. Nothing leaves the
    /// machine. Builds without the `demo` feature (the installed binary) do not have it.
    Demo,
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Move herald's store to another backend (herald stopped).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Take a post's published copies down from every platform that allows it.
    ///
    /// Deletes what each delivery published (by the remote id herald recorded), cancels the
    /// post's pending and planned deliveries, records each target's outcome in the audit log
    /// (`recalled`, `recall_failed`, `cancelled`) with your user name and reason, and prints a
    /// table: taken down, cancelled, not possible (with what to do by hand), failed. Transient
    /// errors are retried for up to 45 s. Exits 0 when every target is taken down or cancelled,
    /// 3 when any is not (never silently partial), 1 on an error.
    Recall {
        #[command(flatten)]
        state: StateArgs,
        /// The post's id.
        #[arg(long)]
        post: String,
        /// Only this occurrence (RFC 3339, as `herald log` shows it); else every occurrence.
        #[arg(long, value_name = "TIME")]
        occurrence: Option<String>,
        /// Only this account (repeatable; `*` matches any characters); else every account.
        #[arg(long = "account", value_name = "ACCOUNT")]
        accounts: Vec<String>,
        /// Why (required): kept in every record with your user name.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Stop deliveries from starting: everything (--all), or by account, post or platform.
    ///
    /// Takes effect at once through the running daemon (requests already sent finish; nothing new
    /// starts) and is kept in the store, so it survives restarts. Without a running daemon it is
    /// written to the store and holds from the next start. `herald resume` with the same
    /// selectors lifts it; `herald status` lists the pauses in force.
    Pause {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        selectors: PauseSelectors,
    },
    /// Lift pauses made by `herald pause`, naming the same selectors.
    ///
    /// Due deliveries the pauses held go out at once, under each post's misfire policy: a
    /// delivery held past its time by more than a minute is skipped with `misfire = "skip"` or
    /// beyond its `grace`, and with `latest` only the latest held occurrence goes (each
    /// decision is an audit record).
    Resume {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        selectors: PauseSelectors,
    },
    /// Approve a post that needs approval (`approval = "required"`), as it is now.
    ///
    /// Only a member of `[daemon] approvers_group` may, through the running daemon (which reads
    /// who asks from the control socket). The approval covers the post's text, title, link,
    /// images (by their bytes) and targets: any change to them needs a new approval. A due
    /// delivery of an unapproved post is held, and goes out once approved, under its misfire policy.
    Approve {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        args: ApproveArgs,
    },
}

/// `herald approve`'s arguments (a variant of its own, after `Resume`).
#[derive(clap::Args, Clone)]
struct ApproveArgs {
    /// The post to approve, as the running config has it now.
    #[arg(long, value_name = "ID")]
    post: String,
    /// Why: kept in the `approved` record with your user name.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

/// What `herald pause` and `herald resume` apply to.
#[derive(clap::Args, Clone)]
struct PauseSelectors {
    /// Every delivery.
    #[arg(long)]
    all: bool,
    /// Deliveries to this account (repeatable).
    #[arg(long = "account", value_name = "ID")]
    accounts: Vec<String>,
    /// Deliveries of this post (repeatable).
    #[arg(long = "post", value_name = "ID")]
    posts: Vec<String>,
    /// Deliveries to accounts on this platform: weibo, wechat, tieba, discourse, mastodon, webhook (repeatable).
    #[arg(long = "platform", value_name = "NAME")]
    platforms: Vec<String>,
    /// Why: kept with the pause and in its audit record with your user name.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

impl PauseSelectors {
    fn request(self) -> crate::pauses::PauseRequest {
        crate::pauses::PauseRequest {
            all: self.all,
            accounts: self.accounts,
            posts: self.posts,
            platforms: self.platforms,
            reason: self.reason,
            actor: None,
        }
    }
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy the sled store of `[daemon] state_dir`, with its whole history, into the empty
    /// PostgreSQL database that `[store]` names (`--to postgres`), or that database back into
    /// a new sled store in `--state-dir DIR` (`--to sled`); then compare the two and verify the
    /// copy's audit chain, before anyone switches. herald must be stopped (every daemon on the
    /// database); the source is left as it was. Exits 0 when the copy is verified, 1 otherwise.
    Copy {
        #[command(flatten)]
        config: ConfigArg,
        /// The backend to copy to (from the other one).
        #[arg(long, value_enum)]
        to: store::Backend,
        /// With `--to sled`: the new state directory (absent or empty) to create the sled store in.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain: exit 0 when intact, 2 naming the first
    /// bad sequence number and what is wrong (altered, missing, inserted, reordered).
    Verify {
        #[command(flatten)]
        state: StateArgs,
        /// Verify this export of `herald log --format json` instead of the store
        /// (needs neither the store nor the config).
        #[arg(long, value_name = "EXPORT")]
        file: Option<PathBuf>,
        /// With --file: the export is a range; HASH is the hash of the record before its first.
        #[arg(long, value_name = "HASH", requires = "file")]
        prev: Option<String>,
        /// Also prove the log still extends this head, as published earlier
        /// (journal, alert): SEQ:HASH.
        #[arg(long, value_name = "SEQ:HASH")]
        head: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    /// The plan for people: each post's next occurrences and the exact text per platform.
    Text,
    /// The same, with every error and warning, as one JSON document for tools.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogOutput {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object per record, one per line (JSON lines), every field.
    Json,
    /// Comma-separated values with a header row, for a spreadsheet.
    Csv,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    quiet_on_broken_pipe();
    // Whatever herald creates (the store, sled's later snapshots) is for
    // its own user only, whatever umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) if broken_pipe(&e) => ExitCode::from(BROKEN_PIPE),
        Err(e) => {
            // Under systemd, the journal files these lines as errors.
            let priority = if crate::logging::stderr_is_journal() { "<3>" } else { "" };
            let store = e.chain().find_map(|c| c.downcast_ref::<crate::store::StoreError>());
            if store.is_some_and(crate::store::StoreError::needs_an_operator) {
                // One line for the journal: what broke and what to do.
                eprintln!(
                    "{priority}herald: {e:#}. herald exits {} so that it is not restarted in a loop; keep the state \
                     directory as it is: copy it aside (cp -a) before any repair, then see RELIABILITY.md, \
                     \"A store that does not open\"",
                    crate::store::StoreError::EXIT_CODE
                );
                return ExitCode::from(crate::store::StoreError::EXIT_CODE);
            }
            eprintln!("{priority}herald: {e:#}");
            match e.downcast_ref::<crate::daemon::ConfigRefused>() {
                Some(_) => ExitCode::from(crate::daemon::ConfigRefused::EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// The exit status of a command whose reader went away (as if killed by SIGPIPE).
const BROKEN_PIPE: u8 = 128 + 13;

/// `herald check … | head`: when the reader goes away, end quietly. Rust
/// ignores SIGPIPE, so a write to the closed pipe fails: `print!` panics
/// (caught here, by its message) and `write!` returns an error (`main`).
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with("failed printing to std") && m.contains("Broken pipe")) {
            std::process::exit(BROKEN_PIPE.into());
        }
        default(info);
    }));
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, log_format } => {
            let reexec = bound_malloc_arenas();
            let level =
                crate::config::peek(&config.config).ok().and_then(|p| p.log_level).unwrap_or_else(|| "info".into());
            logging::init(log_format, &level);
            if let Err(e) = reexec {
                tracing::warn!(
                    "could not run with MALLOC_ARENA_MAX=2 ({e}); memory may grow by what glibc's per-thread arenas keep"
                );
            }
            let runtime = runtime()?;
            let result = runtime.block_on(crate::daemon::run(&config.config));
            // Stop the runtime's workers here, in order, rather than in their
            // thread-local destructors at exit, where a task dropped late can
            // no longer log.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, upcoming, format, probe, credentials_dir } => {
            check::run(&config.config, upcoming, format, probe, credentials_dir)
        }
        Command::Status { state, failed } => inspect::status(&state.source()?, failed),
        Command::Log {
            state,
            post,
            account,
            platform,
            events,
            delivery,
            actor,
            daemon,
            since,
            until,
            format,
            content,
        } => {
            let source = state.source()?;
            if let Some(hash) = content {
                return inspect::content(&source, &hash);
            }
            let now = chrono::Utc::now();
            let since = since.map(|t| filters::instant("since", &t, now)).transpose().map_err(anyhow::Error::msg)?;
            let until = until.map(|t| filters::instant("until", &t, now)).transpose().map_err(anyhow::Error::msg)?;
            let events = filters::events(&events).map_err(anyhow::Error::msg)?;
            let events = (!events.is_empty()).then(|| events.join(","));
            let params =
                crate::control::LogParams { post, account, platform, events, delivery, actor, daemon, since, until };
            inspect::log(&source, &params, format)
        }
        Command::Upcoming { state, limit, until } => {
            let tz = state.peek()?.time_zone;
            let until = until.map(|t| filters::ahead("until", &t, chrono::Utc::now())).transpose();
            inspect::upcoming(&state.source()?, limit, until.map_err(anyhow::Error::msg)?, &state.config, tz)
        }
        Command::Reload { state, reason } => inspect::reload(&state.source()?, reason.as_deref()),
        Command::Retry { state, delivery, post, reason } => {
            inspect::retry(&state.source()?, crate::retry_cancel::Selection { delivery, post, reason, actor: None })
        }
        Command::Cancel { state, delivery, post, reason } => {
            inspect::cancel(&state.source()?, crate::retry_cancel::Selection { delivery, post, reason, actor: None })
        }
        Command::Audit { command: AuditCommand::Verify { state, file, prev, head } } => match file {
            Some(file) => audit::verify_file(&file, prev.as_deref(), head.as_deref()),
            None => audit::verify_store(&state.source()?, head.as_deref()),
        },
        Command::Store { command: StoreCommand::Copy { config, to, state_dir } } => {
            store::copy(&config.config, to, state_dir.as_deref())
        }
        Command::Pause { state, selectors } => inspect::pause(&state.source()?, &selectors.request()),
        Command::Resume { state, selectors } => inspect::resume(&state.source()?, &selectors.request()),
        Command::Approve { state, args } => {
            let request =
                crate::approvals::ApproveRequest { post: args.post, reason: args.reason, ..Default::default() };
            inspect::approve(&state.source()?, &request)
        }
        Command::Recall { state, post, occurrence, accounts, reason } => {
            let occurrence = occurrence.map(|t| recall::occurrence(&t)).transpose()?;
            let order = crate::recall::RecallOrder { post, occurrence, accounts, reason, actor: None };
            recall::recall(&state.source()?, &order, &state.config)
        }
        #[cfg(feature = "demo")]
        Command::Demo => {
            logging::init(None, "info,herald_sandbox=warn");
            runtime()?.block_on(crate::demo::run())?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo => anyhow::bail!(
            "this herald was built without the demo (cargo feature `demo`, left out of the installed binary); \
             from a clone of the repository, run `cargo run -p herald -- demo`"
        ),
    }
}

impl StateArgs {
    fn peek(&self) -> anyhow::Result<crate::config::Peek> {
        let mut peek = match crate::config::peek(&self.config) {
            Ok(peek) => peek,
            Err(e) if self.state_dir.is_none() && !self.config.exists() && self.config == Path::new(DEFAULT_CONFIG) => {
                anyhow::bail!(
                    "{e}\nno config given: name it with --config FILE or the HERALD_CONFIG environment variable \
                     (the default is {DEFAULT_CONFIG}), or give the state directory with --state-dir DIR"
                )
            }
            Err(e) if self.state_dir.is_none() => return Err(anyhow::Error::msg(e)),
            Err(_) => crate::config::Peek {
                state_dir: PathBuf::new(),
                cache_mb: 64,
                control_socket: None,
                time_zone: chrono_tz::Tz::UTC,
                log_level: None,
                store: Ok(crate::config::StoreSettings::Sled),
            },
        };
        if let Some(dir) = &self.state_dir {
            peek.state_dir = dir.clone();
        }
        // Messages name the state directory: say where it is.
        peek.state_dir = std::path::absolute(&peek.state_dir).unwrap_or(peek.state_dir);
        Ok(peek)
    }

    fn source(&self) -> anyhow::Result<source::Source> {
        source::Source::open(self.peek()?)
    }
}

/// Print audit records as the `herald log` table.
pub fn print_table(records: &[crate::model::AuditRecord], out: &mut impl std::io::Write) -> std::io::Result<()> {
    output::table(records, out)
}

/// `herald run` with at most two glibc malloc arenas. glibc gives threads
/// that allocate at once arenas of their own (up to 8 per core) and keeps
/// freed memory in each; herald's blocking work (sled, fsync) moves between
/// the runtime's threads, so each arena kept what a page of a long
/// `herald log` had used: a million-record log took the daemon's peak from
/// 89 to 230 MiB, and to 149 MiB with two arenas. glibc reads
/// `MALLOC_ARENA_MAX` only when the process starts, so herald executes
/// itself again once, with the same arguments and process id, unless the
/// operator set the variable (their value is kept). Returns only when it
/// did not re-execute: not glibc, already set, or exec failed (the error).
fn bound_malloc_arenas() -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return Ok(());
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let exe = std::env::current_exe()?;
    Err(std::process::Command::new(exe).arg0(arg0).args(args).env("MALLOC_ARENA_MAX", "2").exec())
}
