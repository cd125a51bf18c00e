//! Log output through tracing-subscriber: readable on a terminal, JSON for
//! machines (`--log-format json`, or automatically under systemd's journal).

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines (the default on a terminal).
    Human,
    /// One JSON object per line, with delivery, post, account and platform as fields.
    Json,
}

/// Install the global subscriber. `default_level` applies unless RUST_LOG is set.
pub fn init(format: Option<LogFormat>, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let format =
        format.unwrap_or(if std::env::var_os("JOURNAL_STREAM").is_some() { LogFormat::Json } else { LogFormat::Human });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
