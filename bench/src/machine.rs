//! What the numbers were measured on: cores, memory, kernel, the disk under
//! the scratch directory and its fsync rate, and the load average.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
    pub cpu: String,
    /// The file system under the scratch directory: device and type.
    pub disk: String,
    /// 4 KiB write + fdatasync per iteration, for about two seconds.
    pub fsyncs_per_s: f64,
}

pub fn describe(scratch: &Path) -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_mib: memory_kb / 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpu,
        disk: disk_of(scratch),
        fsyncs_per_s: fsync_rate(scratch).unwrap_or(f64::NAN),
    }
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The mount holding `path` (the longest mount point that prefixes it).
fn disk_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, at, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), format!("{dev} ({kind}, mounted at {at})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".to_string(), |(_, d)| d)
}

/// How many small durable writes the disk takes per second: the floor under
/// every durable state change.
pub fn fsync_rate(dir: &Path) -> std::io::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        file.write_all(&block)?;
        file.sync_data()?;
        n += 1;
    }
    let rate = f64::from(n) / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// fdatasync latencies measured on a thread beside a benchmark: what one
/// durable write costs on this disk at that moment.
pub struct FsyncProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl FsyncProbe {
    /// Every `every`, write 4 KiB to a file in `dir` and fdatasync it.
    pub fn start(dir: &Path, every: Duration) -> std::io::Result<FsyncProbe> {
        use std::sync::atomic::Ordering;
        let path = dir.join("fsync-probe-latency");
        let mut file = std::fs::File::create(&path)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let block = [0x5au8; 4096];
            let mut latencies = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                if file.write_all(&block).and_then(|()| file.sync_data()).is_err() {
                    break;
                }
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(every);
            }
            let _ = std::fs::remove_file(&path);
            latencies
        });
        Ok(FsyncProbe { stop, thread })
    }

    /// Stop; the latencies in milliseconds, sorted.
    pub fn finish(self) -> Vec<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut latencies = self.thread.join().unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        latencies
    }
}

/// The `p` quantile (0 to 1) of sorted values (NaN when empty).
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}
