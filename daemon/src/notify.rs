//! The systemd notification protocol (sd_notify): READY, STATUS, WATCHDOG,
//! RELOADING, STOPPING, sent as datagrams to `$NOTIFY_SOCKET`. Without that
//! variable (not under systemd) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    last_status: Mutex<String>,
}

impl Notifier {
    /// Read `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring `$WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = if let Some(name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()?
            } else {
                SocketAddr::from_pathname(&path).ok()?
            };
            let socket = UnixDatagram::unbound().ok()?;
            Some((socket, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog, last_ping: Mutex::new(None), last_status: Mutex::new(String::new()) }
    }

    /// A notifier that sends nothing (tests, the demo).
    pub fn disabled() -> Notifier {
        Notifier { target: None, watchdog: None, last_ping: Mutex::new(None), last_status: Mutex::new(String::new()) }
    }

    /// A notifier sending to the socket at `path`, with this watchdog
    /// period (tests: the messages are read from a socket bound there).
    #[cfg(test)]
    pub fn to_socket(path: &std::path::Path, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), SocketAddr::from_pathname(path).unwrap())),
            watchdog,
            last_ping: Mutex::new(None),
            last_status: Mutex::new(String::new()),
        }
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// herald is ready: config loaded, store open, recovery done.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload begins (systemd expects MONOTONIC_USEC with it).
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// A line for `systemctl status`; repeated identical lines are not resent.
    pub fn status(&self, text: &str) {
        if let Ok(mut last) = self.last_status.lock() {
            if *last == text {
                return;
            }
            text.clone_into(&mut last);
        }
        self.send(&format!("STATUS={text}"));
    }

    /// How often the loop must call [`Notifier::watchdog`]: half of WatchdogSec.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Tell systemd the scheduler loop is alive (at most every quarter of WatchdogSec).
    pub fn watchdog(&self) {
        let Some(period) = self.watchdog else { return };
        if let Ok(mut last) = self.last_ping.lock() {
            if last.is_some_and(|t| t.elapsed() < period / 4) {
                return;
            }
            *last = Some(Instant::now());
        }
        self.send("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_on_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to_socket(&path, Some(Duration::from_secs(20)));
        notifier.ready();
        notifier.status("3 pending");
        notifier.status("3 pending");
        notifier.watchdog();
        notifier.watchdog();
        notifier.reloading();
        notifier.stopping();
        listener.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = listener.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got[..3], ["READY=1", "STATUS=3 pending", "WATCHDOG=1"]);
        assert!(got[3].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{got:?}");
        assert_eq!(got[4], "STOPPING=1");
        assert_eq!(got.len(), 5, "repeated status and early watchdog pings are not resent: {got:?}");
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(10)));
    }
}
