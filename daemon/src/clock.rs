//! The daemon's wall clock. In debug builds only (the test suite), it can be
//! shifted by `HERALD_TEST_CLOCK_OFFSET_MS`, so a schedule test starts herald
//! a few seconds before a minute boundary instead of waiting for one in real
//! time. Release builds (what is installed) never read the variable.

use chrono::{DateTime, Utc};

/// The variable the test suite sets (milliseconds, may be negative).
pub const OFFSET_VAR: &str = "HERALD_TEST_CLOCK_OFFSET_MS";

/// Now, as the daemon's schedule sees it.
pub fn now() -> DateTime<Utc> {
    Utc::now() + offset()
}

#[cfg(debug_assertions)]
fn offset() -> chrono::Duration {
    static OFFSET: std::sync::OnceLock<chrono::Duration> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        let ms = std::env::var(OFFSET_VAR).ok().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        chrono::Duration::milliseconds(ms)
    })
}

#[cfg(not(debug_assertions))]
fn offset() -> chrono::Duration {
    chrono::Duration::zero()
}
