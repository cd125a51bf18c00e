//! The `herald` command line: argument parsing and the commands.

mod check;
mod inspect;
mod output;
mod source;

use std::path::PathBuf;
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
        /// How many upcoming occurrences of each post to list.
        #[arg(long, default_value_t = 3)]
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
        /// Only these events (delivered, failed, attempt, retry_scheduled, cancelled, skipped, ...); repeatable.
        #[arg(long = "event", value_name = "EVENT")]
        events: Vec<String>,
        /// Only one delivery.
        #[arg(long)]
        delivery: Option<String>,
        /// From this time on (RFC 3339, or a date such as 2026-03-01, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339, or a date such as 2026-04-01, UTC).
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = LogOutput::Table)]
        format: LogOutput,
        /// Print the exact content sent under this content hash, instead of records.
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
    },
    /// List pending deliveries in the order they are due (the plan).
    Upcoming {
        #[command(flatten)]
        state: StateArgs,
        /// How many to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Ask the running daemon to re-read its config (like SIGHUP); a config with errors is refused.
    Reload {
        #[command(flatten)]
        state: StateArgs,
    },
    /// Cancel a pending delivery, or every pending delivery of a post.
    Cancel {
        #[command(flatten)]
        state: StateArgs,
        /// The delivery id.
        delivery: Option<String>,
        /// Every pending delivery of this post.
        #[arg(long, conflicts_with = "delivery")]
        post: Option<String>,
    },
    /// Run herald against local emulators for a minute: posts due in seconds, one failure retried.
    Demo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogOutput {
    Table,
    Json,
    Csv,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // Whatever herald creates (the store, sled's later snapshots) is for
    // its own user only, whatever umask it was started with.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            let store = e.chain().find_map(|c| c.downcast_ref::<crate::store::StoreError>());
            if store.is_some_and(crate::store::StoreError::needs_an_operator) {
                // One line for the journal: what broke and what to do.
                eprintln!(
                    "herald: {e:#}. herald exits {} so that it is not restarted in a loop; keep the state \
                     directory as it is: copy it aside (cp -a) before any repair, then see RELIABILITY.md, \
                     \"A store that does not open\"",
                    crate::store::StoreError::EXIT_CODE
                );
                return ExitCode::from(crate::store::StoreError::EXIT_CODE);
            }
            eprintln!("herald: {e:#}");
            match e.downcast_ref::<crate::service::ConfigRefused>() {
                Some(_) => ExitCode::from(crate::service::ConfigRefused::EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, log_format } => {
            let level =
                crate::config::peek(&config.config).ok().and_then(|p| p.log_level).unwrap_or_else(|| "info".into());
            logging::init(log_format, &level);
            let runtime = runtime()?;
            let result = runtime.block_on(crate::service::run(&config.config));
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
        Command::Log { state, post, account, platform, events, delivery, since, until, format, content } => {
            let source = state.source()?;
            if let Some(hash) = content {
                return inspect::content(&source, &hash);
            }
            let events = (!events.is_empty()).then(|| events.join(","));
            let params = crate::control::LogParams { post, account, platform, events, delivery, since, until };
            inspect::log(&source, &params, format)
        }
        Command::Upcoming { state, limit } => {
            let tz = state.peek()?.time_zone;
            inspect::upcoming(&state.source()?, limit, tz)
        }
        Command::Reload { state } => inspect::reload(&state.source()?),
        Command::Retry { state, delivery, post } => {
            inspect::retry(&state.source()?, crate::operations::Selection { delivery, post })
        }
        Command::Cancel { state, delivery, post } => {
            inspect::cancel(&state.source()?, crate::operations::Selection { delivery, post })
        }
        Command::Demo => {
            logging::init(None, "info,herald_sandbox=warn");
            runtime()?.block_on(crate::demo::run())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl StateArgs {
    fn peek(&self) -> anyhow::Result<crate::config::Peek> {
        let mut peek = match crate::config::peek(&self.config) {
            Ok(peek) => peek,
            Err(e) if self.state_dir.is_none() => return Err(anyhow::Error::msg(e)),
            Err(_) => crate::config::Peek {
                state_dir: PathBuf::new(),
                cache_mb: 64,
                control_socket: None,
                time_zone: chrono_tz::Tz::UTC,
                log_level: None,
            },
        };
        if let Some(dir) = &self.state_dir {
            peek.state_dir = dir.clone();
        }
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
