//! Log output through tracing-subscriber: readable on a terminal, JSON for
//! machines (`--log-format json`, or automatically under systemd's journal).
//! When stderr is the journal's stream, each line starts with its syslog
//! priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace),
//! which journald reads and strips, so `journalctl -p warning` filters herald.

use std::io::{self, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
        .with_writer(Stderr { journal: stderr_is_journal() })
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Human => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder.json().flatten_event(true).with_current_span(false).finish(),
        ),
    };
    if installed.is_ok() && log::set_boxed_logger(Box::new(LogBridge(tracing_log::LogTracer::new()))).is_ok() {
        use tracing_log::AsLog;
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
}

/// Records of the `log` crate (sled and reqwest write there) go to the same
/// subscriber, except sled's debug and trace records.
///
/// sled writes those from crossbeam-epoch's deferred closures, which also
/// run inside a worker thread's thread-local destructors when the thread
/// exits; the fmt layer's own thread-local buffer may be gone by then, and
/// the access panics, which aborts the process at shutdown (seen with
/// `RUST_LOG=trace`). They are sled's internal buffer bookkeeping, of no
/// use to an operator. Any other record that reaches the subscriber in that
/// state is dropped instead of aborting herald (see [`LogBridge::log`]).
struct LogBridge(tracing_log::LogTracer);

/// Whether a `log` record is passed on at all.
fn bridged(metadata: &log::Metadata<'_>) -> bool {
    let sled = metadata.target() == "sled" || metadata.target().starts_with("sled::");
    !(sled && metadata.level() > log::Level::Info)
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        bridged(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !bridged(record.metadata()) {
            return;
        }
        // A panic here would unwind into a thread-local destructor, which
        // aborts the whole process: losing one log line is the lesser harm.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.log(record)));
    }

    fn flush(&self) {}
}

/// Is stderr connected to the journal? systemd sets `JOURNAL_STREAM` to the
/// `device:inode` of the stream it connected; a child whose stderr was
/// redirected elsewhere inherits the variable but not the stream, so both
/// must match (as sd_journal_stream_fd(3) recommends).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    match rustix::fs::fstat(io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// The syslog priority journald files a line of this level under.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The writer factory: stderr, with each line's priority when it is the journal.
struct Stderr {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Prefixed<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Prefixed::new(io::stderr(), self.journal.then_some(6))
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Prefixed::new(io::stderr(), self.journal.then(|| priority(meta.level())))
    }
}

/// A writer that starts every line with `<N>` (when given a priority), and
/// hands each `write` to the inner writer as one `write_all`, so lines from
/// different threads do not interleave in the journal.
pub struct Prefixed<W: Write> {
    inner: W,
    prefix: Option<String>,
    at_line_start: bool,
}

impl<W: Write> Prefixed<W> {
    pub fn new(inner: W, priority: Option<u8>) -> Self {
        Prefixed { inner, prefix: priority.map(|p| format!("<{p}>")), at_line_start: true }
    }
}

impl<W: Write> Write for Prefixed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(prefix) = &self.prefix else { return self.inner.write(buf) };
        let mut out = Vec::with_capacity(buf.len() + prefix.len());
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                out.extend_from_slice(prefix.as_bytes());
            }
            out.extend_from_slice(line);
            self.at_line_start = line.ends_with(b"\n");
        }
        self.inner.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(priority: Option<u8>, writes: &[&str]) -> String {
        let mut w = Prefixed::new(Vec::new(), priority);
        for s in writes {
            w.write_all(s.as_bytes()).unwrap();
        }
        String::from_utf8(w.inner).unwrap()
    }

    #[test]
    fn every_line_starts_with_the_priority() {
        assert_eq!(written(Some(4), &["{\"level\":\"WARN\"}\n"]), "<4>{\"level\":\"WARN\"}\n");
        assert_eq!(written(Some(3), &["one\ntwo\n"]), "<3>one\n<3>two\n");
        // A line written in pieces gets one prefix.
        assert_eq!(written(Some(6), &["par", "t\n", "next\n"]), "<6>part\n<6>next\n");
    }

    #[test]
    fn without_the_journal_nothing_is_added() {
        assert_eq!(written(None, &["plain\n"]), "plain\n");
    }

    fn record_of(target: &str, level: log::Level) -> bool {
        bridged(&log::Metadata::builder().target(target).level(level).build())
    }

    #[test]
    fn sled_internal_bookkeeping_is_not_bridged() {
        assert!(!record_of("sled::pagecache::iobuf", log::Level::Trace));
        assert!(!record_of("sled::pagecache::logger", log::Level::Debug));
        assert!(!record_of("sled", log::Level::Debug));
    }

    #[test]
    fn sled_problems_and_other_crates_are_bridged() {
        assert!(record_of("sled::tree", log::Level::Error));
        assert!(record_of("sled::pagecache", log::Level::Warn));
        assert!(record_of("reqwest::connect", log::Level::Debug));
        assert!(record_of("sledgehammer", log::Level::Trace));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let got: Vec<u8> =
            [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG, Level::TRACE].iter().map(priority).collect();
        assert_eq!(got, [3, 4, 6, 7, 7]);
    }
}
