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
