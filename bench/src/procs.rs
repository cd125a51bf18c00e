//! The processes under test: the sandbox webhook receiver (the sink) and
//! `herald run`, each a child process killed if the harness stops early.
//! Readiness comes from herald's `READY=1` on a notify socket the harness
//! binds, as systemd would; memory from `/proc/<pid>/status`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde::Deserialize;

use crate::http;

/// A child process that is killed (and reaped) when dropped.
pub struct Guarded(pub Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`, `VmRSS`).
pub fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].split_whitespace().next()?.parse().ok()
}

/// User + system CPU time of a process, from `/proc/<pid>/stat` (in clock
/// ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The sandbox's webhook receiver in its own process.
pub struct Sink {
    _child: Guarded,
    pub addr: SocketAddr,
}

/// One request the sink recorded (the fields the harness reads).
#[derive(Debug, Deserialize)]
pub struct Received {
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub key_seen_before: bool,
    pub body: Option<serde_json::Value>,
}

impl Sink {
    pub fn start(bin: &Path) -> anyhow::Result<Sink> {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("the sink's stdout")?;
        let child = Guarded(child);
        let (tx, rx) = mpsc::channel();
        // Keep reading its stdout so the sink never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).context("the sink did not say where it listens")?;
            if let Some(addr) = line.strip_prefix("listening on ") {
                let addr: SocketAddr = addr.trim().parse().context("the sink's address")?;
                if !addr.ip().is_loopback() {
                    bail!("the sink listens on {addr}, not on loopback");
                }
                return Ok(Sink { _child: child, addr });
            }
        }
    }

    /// The sink's process id (its CPU is on the same cores).
    pub fn pid(&self) -> u32 {
        self._child.0.id()
    }

    pub fn url(&self, account: &str) -> String {
        format!("http://{}/hook/{account}", self.addr)
    }

    /// Forget everything received so far.
    pub fn reset(&self) -> anyhow::Result<()> {
        let answer = http::tcp(self.addr, "POST", "/_sandbox/reset", Some(""), Duration::from_secs(30))?;
        if !(200..300).contains(&answer.status) {
            bail!("resetting the sink: HTTP {}", answer.status);
        }
        Ok(())
    }

    /// Every request received since the last reset.
    pub fn received(&self) -> anyhow::Result<Vec<Received>> {
        http::tcp(self.addr, "GET", "/_sandbox/received", None, Duration::from_secs(120))?.json()
    }
}

/// Messages herald sent to the notify socket, read on a thread so herald
/// never blocks on a full socket buffer.
struct Notifications {
    rx: Receiver<(Instant, String)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Notifications {
    fn listen(path: &Path) -> anyhow::Result<Notifications> {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if tx.send((Instant::now(), text)).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Notifications { rx, stop, thread: Some(thread) })
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `herald run --config FILE` as a child process.
pub struct Herald {
    child: Guarded,
    notes: Notifications,
    started: Instant,
    pub config: PathBuf,
    pub socket: PathBuf,
    log: PathBuf,
}

/// The counts `GET /v1/status` answers.
#[derive(Debug, Deserialize)]
struct StatusView {
    counts: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    planned: u64,
}

impl Herald {
    /// Start herald on `config` (whose state dir is `state`); its log goes to `log`.
    pub fn start(bin: &Path, config: &Path, state: &Path, log: &Path) -> anyhow::Result<Herald> {
        let notify = config.with_file_name("notify.sock");
        let notes = Notifications::listen(&notify)?;
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", &notify)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Herald {
            child: Guarded(child),
            notes,
            started,
            config: config.to_path_buf(),
            socket: state.join("herald.sock"),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Wait for `READY=1`; answers the time from process start.
    pub fn wait_ready(&mut self, within: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.try_wait()? {
                bail!("herald exited ({status}) before it was ready:\n{}", self.log_tail());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("herald was not ready within {within:?}");
            }
            match self.notes.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((at, text)) if text.lines().any(|l| l == "READY=1") => return Ok(at - self.started),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("the notify socket closed"),
            }
        }
    }

    /// CPU time (user + system) herald has used so far, in seconds: unlike
    /// wall time, it does not count waiting for a core on a busy machine.
    pub fn cpu_s(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(f64::NAN)
    }

    /// Peak resident memory so far, in MiB.
    pub fn peak_mib(&self) -> f64 {
        proc_kb(self.pid(), "VmHWM").map_or(f64::NAN, |kb| kb as f64 / 1024.0)
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        proc_kb(self.pid(), "VmRSS").map_or(f64::NAN, |kb| kb as f64 / 1024.0)
    }

    /// `herald reload` (through the control socket): its wall time and answer.
    pub fn reload(&self, bin: &Path, within: Duration) -> anyhow::Result<(Duration, String)> {
        let (elapsed, out) = crate::run_cli(bin, &["reload", "--config"], &self.config, within)?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            bail!("herald reload failed: {text} {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok((elapsed, text))
    }

    /// Delivery counts by state, from the control API.
    pub fn counts(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let view: StatusView =
            http::unix(&self.socket, "GET", "/v1/status?limit=0", Duration::from_secs(60))?.json()?;
        let mut counts = view.counts;
        counts.insert("planned".into(), view.planned);
        Ok(counts)
    }

    /// Audit records of one event, from the control API (page by page).
    pub fn audit(&self, event: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut records = Vec::new();
        let mut after = None;
        loop {
            let path = match after {
                Some(after) => format!("/v1/log?events={event}&after={after}"),
                None => format!("/v1/log?events={event}"),
            };
            let page: serde_json::Value = http::unix(&self.socket, "GET", &path, Duration::from_secs(300))?.json()?;
            records.extend(page["records"].as_array().cloned().unwrap_or_default());
            match page["next"].as_u64() {
                Some(next) => after = Some(next),
                None => return Ok(records),
            }
        }
    }

    /// SIGTERM, then wait for a clean exit (killed after `within`).
    pub fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        kill_process(Pid::from_child(&self.child.0), Signal::TERM).context("signalling herald")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.try_wait()? {
                if !status.success() {
                    bail!("herald exited with {status}:\n{}", self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("herald did not stop within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a host dying would, and reap it.
    pub fn kill(mut self) -> anyhow::Result<()> {
        kill_process(Pid::from_child(&self.child.0), Signal::KILL).context("killing herald")?;
        self.child.0.wait()?;
        Ok(())
    }

    /// herald's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}
