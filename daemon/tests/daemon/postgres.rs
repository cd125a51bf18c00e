//! herald on PostgreSQL end to end: `[store] backend = "postgres"` with the
//! URL from the environment (`{ env = ... }`), a real `herald run` against
//! the sandbox's emulators, the CLI through the daemon and on the database
//! itself, a restart, a SIGKILL in a burst, a second daemon refused, and
//! the URL's password nowhere herald writes.
//!
//! Each test takes a fresh database from `HERALD_TEST_POSTGRES`
//! (`eval "$(bash .ci/postgres.sh start)"`); without it they say loudly
//! that they skipped (and fail under `HERALD_REQUIRE_POSTGRES=1`).

use crate::helpers::*;

/// The variable the configs read the URL from.
const URL_VAR: &str = "HERALD_TEST_DATABASE_URL";

/// `[store]` on PostgreSQL, the URL from [`URL_VAR`].
fn store_section() -> String {
    format!("\n[store]\nbackend = \"postgres\"\nurl = {{ env = \"{URL_VAR}\" }}\npool = 4\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_check_and_run_naming_host_and_port() {
    const PASSWORD: &str = "unreachable-pw-5c1e";
    let port = free_port();
    let url = format!("postgres://herald:{PASSWORD}@127.0.0.1:{port}/herald");
    let env = [(URL_VAR, url.as_str())];
    let dir = TestDir::new();
    dir.write_config(&(daemon_section() + &store_section() + &webhook_account("hook", "http://127.0.0.1:9/")));

    let out = dir.cli_with(&["check"], &env);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "names host and port:\n{said}");
    assert!(said.contains("cannot reach"), "{said}");
    assert!(!said.contains(PASSWORD), "{said}");

    let mut herald = dir.spawn(&env);
    let status = herald.wait_exit().await;
    let stderr = herald.stderr();
    assert_eq!(status.code(), Some(1), "a failure systemd restarts (not 65 or 78):\n{stderr}");
    assert!(stderr.contains(&format!("cannot reach the PostgreSQL database herald@127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(!stderr.contains("herald is ready"), "{stderr}");
}
