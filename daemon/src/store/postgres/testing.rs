//! Test support (not used by herald itself): a fresh, empty database for
//! each test on the PostgreSQL server named by `HERALD_TEST_POSTGRES`, for
//! unit tests and for the integration tests alike.
//!
//! `eval "$(bash .ci/postgres.sh start)"` starts a throwaway server and sets
//! the variable (README, "Development"). Without it, PostgreSQL tests say
//! loudly that they skipped; with `HERALD_REQUIRE_POSTGRES=1` (CI) they fail.

use std::sync::atomic::{AtomicU64, Ordering};

/// The variable naming the test server (a superuser URL).
pub const SERVER_VAR: &str = "HERALD_TEST_POSTGRES";
/// Set to 1 where PostgreSQL tests must run (CI): a missing server fails them.
pub const REQUIRE_VAR: &str = "HERALD_REQUIRE_POSTGRES";

/// The URL of a new database with a unique name on the test server, or
/// `None` (after a loud line on stderr) when no server is configured.
/// Panics when the server is configured but unusable, or when
/// `HERALD_REQUIRE_POSTGRES=1` and none is configured.
pub fn fresh_database() -> Option<String> {
    let Some(server) = std::env::var(SERVER_VAR).ok().filter(|s| !s.is_empty()) else {
        if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
            panic!(
                "{REQUIRE_VAR}=1 but {SERVER_VAR} is not set: start a throwaway server with \
                 `eval \"$(bash .ci/postgres.sh start)\"` (README, Development), or unset {REQUIRE_VAR}"
            );
        }
        // Straight to the file descriptor: the test harness captures
        // `eprintln!`, and a skip must be seen. Once per test binary.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "PostgreSQL tests SKIPPED: set {SERVER_VAR}, see README (Development)");
        });
        return None;
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name =
        format!("herald_test_{}_{}_{:08x}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst), fastrand::u32(..));
    let mut client = postgres::Client::connect(&server, postgres::NoTls)
        .unwrap_or_else(|e| panic!("{SERVER_VAR} is set but its server cannot be reached: {e}"));
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    Some(with_database(&server, &name))
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// The test server's URL, if configured (for tests that make their own roles).
pub fn server() -> Option<String> {
    std::env::var(SERVER_VAR).ok().filter(|s| !s.is_empty())
}

/// The variable naming the CA that signed the test server's certificate
/// (`.ci/postgres.sh` serves TLS too and prints it).
pub const CA_VAR: &str = "HERALD_TEST_POSTGRES_CA";

/// The test server's CA file, when the server is configured. Panics when
/// the server is configured without it: its TLS tests would not run.
pub fn ca() -> Option<std::path::PathBuf> {
    server()?;
    let ca = std::env::var(CA_VAR).ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        panic!(
            "{SERVER_VAR} is set but {CA_VAR} is not: start the server with `eval \"$(bash .ci/postgres.sh start)\"`"
        )
    });
    Some(ca.into())
}

/// A loopback TCP forwarder to `upstream` listening on `ip` (any address of
/// 127.0.0.0/8), recording every byte it passes in either direction: it lets
/// a test reach the server under another address (a host name check) and
/// see what went over the wire. Its threads end with the test process.
pub struct Forwarder {
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Forwarder {
    pub fn start(ip: &str, upstream: std::net::SocketAddr) -> Forwarder {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("binding {ip}:0: {e}"));
        let port = listener.local_addr().expect("a bound address").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(upstream) else { continue };
                for (mut from, mut to) in
                    [(client.try_clone().expect("clone"), server.try_clone().expect("clone")), (server, client)]
                {
                    let record = record.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            record.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&buf[..n]);
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Forwarder { port, seen }
    }

    /// Every byte passed so far, both directions mixed.
    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `url` with its host and port replaced by `host:port`.
pub fn with_host(url: &str, host: &str, port: u16) -> String {
    let (_, without_tls) = super::tls::Settings::take(url).expect("a test URL");
    let config: postgres::Config = without_tls.parse().expect("a test URL");
    let (from_host, from_port) = match (config.get_hosts().first(), config.get_ports().first()) {
        (Some(postgres::config::Host::Tcp(h)), Some(p)) => (h.clone(), *p),
        _ => panic!("the test URL names no TCP host and port"),
    };
    url.replacen(&format!("@{from_host}:{from_port}/"), &format!("@{host}:{port}/"), 1)
}
