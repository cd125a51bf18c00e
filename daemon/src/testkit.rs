//! Helpers for the library's unit tests: configs from TOML text, stores in
//! temporary directories.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::config::{Config, load_at};

/// The head of a unit test's config: a state directory, Beijing time and
/// one webhook account `wuhan` (on a port nothing listens on).
pub const WUHAN_WEBHOOK: &str = r#"
[daemon]
state_dir = "state"
time_zone = "Asia/Shanghai"

[accounts.wuhan]
platform = "webhook"
url = "http://127.0.0.1:9/wuhan"
"#;

/// Write `text` as `herald.toml` in `dir` and load it as of `now`; panics
/// with the diagnostics if it has errors.
pub fn config(dir: &Path, text: &str, now: DateTime<Utc>) -> Config {
    let path = dir.join("herald.toml");
    std::fs::write(&path, text).expect("write config");
    let outcome = load_at(&path, now);
    let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
    outcome.config.unwrap_or_else(|| panic!("config has errors:\n{}", errors.join("\n")))
}

/// The RFC 3339 instant `text`.
pub fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("RFC 3339").with_timezone(&Utc)
}
