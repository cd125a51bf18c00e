//! Fuzz the config loader: any bytes, written as the main config file, go
//! through `herald::config::load_at`. It must answer (a config, or errors
//! with places), never panic, and never hang.
//!
//!     cargo +nightly fuzz run config_loader -- -max_total_time=60
//!
//! Seed the corpus with the example config and the broken-config corpus
//! first (`fuzz/seed.sh`) so the fuzzer starts from real configs.

#![no_main]

use libfuzzer_sys::fuzz_target;

thread_local! {
    /// One folder per fuzzing thread, reused across inputs.
    static DIR: tempfile::TempDir = tempfile::tempdir().expect("a temporary folder");
}

fuzz_target!(|data: &[u8]| {
    DIR.with(|dir| {
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, data).expect("writing the input");
        // A fixed "now", so that a crash reproduces whatever the date.
        let now = chrono::DateTime::from_timestamp(1_796_083_200, 0).expect("a valid instant");
        let outcome = herald::config::load_at(&path, now);
        if outcome.config.is_none() {
            assert!(outcome.errors().next().is_some(), "no config and no error");
        }
    });
});
