//! Prometheus metrics: counters and histograms the scheduler updates, and
//! the text exposition format served on `[daemon] metrics_listen`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::model::State;
use crate::store::Store;

/// Upper bounds (seconds) of the histogram buckets.
const LATENESS_BUCKETS: [f64; 10] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0];
const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (i, bound) in bounds.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in bounds.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// (account, platform, outcome) -> count.
    outcomes: BTreeMap<(String, String, &'static str), u64>,
    lateness: Histogram,
    latency: BTreeMap<String, Histogram>,
    refreshes: BTreeMap<String, u64>,
    pauses: BTreeMap<String, u64>,
    last_success: BTreeMap<String, f64>,
    /// Due deliveries an operator's pause holds now.
    held_by_pause: usize,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// This daemon's role, when several daemons share the store.
    role: Mutex<Option<std::sync::Arc<crate::lease::Role>>>,
}

/// How an attempt ended, for `herald_deliveries_total{outcome=...}`.
pub mod outcome {
    pub const DELIVERED: &str = "delivered";
    pub const FAILED: &str = "failed";
    pub const RETRY: &str = "retry";
    pub const RATE_LIMITED: &str = "rate_limited";
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut inner) = self.inner.lock() {
            f(&mut inner);
        }
    }

    /// An attempt started `late` after its due time.
    pub fn dispatched(&self, late: Duration) {
        self.with(|m| m.lateness.observe(&LATENESS_BUCKETS, late.as_secs_f64()));
    }

    /// An attempt ended with `outcome` after `latency` on the platform.
    pub fn finished(&self, account: &str, platform: &str, outcome: &'static str, latency: Duration, at_unix: f64) {
        self.with(|m| {
            *m.outcomes.entry((account.to_string(), platform.to_string(), outcome)).or_default() += 1;
            m.latency.entry(platform.to_string()).or_default().observe(&LATENCY_BUCKETS, latency.as_secs_f64());
            if outcome == self::outcome::DELIVERED {
                m.last_success.insert(account.to_string(), at_unix);
            }
            if outcome == self::outcome::RATE_LIMITED {
                *m.pauses.entry(account.to_string()).or_default() += 1;
            }
        });
    }

    /// How many due deliveries a pause holds now.
    pub fn held_by_pause(&self, held: usize) {
        self.with(|m| m.held_by_pause = held);
    }

    pub fn refreshed(&self, account: &str) {
        self.with(|m| *m.refreshes.entry(account.to_string()).or_default() += 1);
    }

    /// The exposition text; gauges are read from the store now.
    /// Show this role (`herald_leader`, `herald_lease_epoch`, `herald_store_reachable`).
    pub fn set_role(&self, role: Option<std::sync::Arc<crate::lease::Role>>) {
        *self.role.lock().unwrap_or_else(|e| e.into_inner()) = role;
    }

    pub fn render(&self, store: &dyn Store) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP herald_build_info The running herald build.");
        let _ = writeln!(out, "# TYPE herald_build_info gauge");
        let _ = writeln!(out, "herald_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        let role = self.role.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.view());
        if let Some(role) = role {
            let _ = writeln!(
                out,
                "# HELP herald_leader 1 if this daemon holds the scheduler lease (runs the scheduler), 0 if standby."
            );
            let _ = writeln!(out, "# TYPE herald_leader gauge");
            let _ = writeln!(out, "herald_leader {}", u8::from(role.leader));
            let _ = writeln!(
                out,
                "# HELP herald_lease_epoch The scheduler lease's epoch as last seen (one more per takeover)."
            );
            let _ = writeln!(out, "# TYPE herald_lease_epoch gauge");
            let _ = writeln!(out, "herald_lease_epoch {}", role.epoch);
            let _ =
                writeln!(out, "# HELP herald_store_reachable 0 if the last lease request could not reach the store.");
            let _ = writeln!(out, "# TYPE herald_store_reachable gauge");
            let _ = writeln!(out, "herald_store_reachable {}", u8::from(role.error.is_none()));
            let _ = writeln!(
                out,
                "# HELP herald_config_matches_applied 0 if this standby's config differs from the one the leader applied."
            );
            let _ = writeln!(out, "# TYPE herald_config_matches_applied gauge");
            let _ = writeln!(out, "herald_config_matches_applied {}", u8::from(role.config_differs.is_none()));
        }
        if let (Ok(counts), Ok(retrying)) = (store.counts(), store.retrying()) {
            let _ = writeln!(out, "# HELP herald_deliveries Deliveries in each state now.");
            let _ = writeln!(out, "# TYPE herald_deliveries gauge");
            for state in State::ALL {
                let _ = writeln!(
                    out,
                    "herald_deliveries{{state=\"{state}\"}} {}",
                    counts.get(&state).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(out, "# HELP herald_retrying Pending deliveries that have been attempted before.");
            let _ = writeln!(out, "# TYPE herald_retrying gauge");
            let _ = writeln!(out, "herald_retrying {retrying}");
        }
        if let Ok(planned) = store.planned_deliveries() {
            let _ = writeln!(
                out,
                "# HELP herald_planned_deliveries Deliveries of occurrences further ahead than schedule_ahead, not created yet."
            );
            let _ = writeln!(out, "# TYPE herald_planned_deliveries gauge");
            let _ = writeln!(out, "herald_planned_deliveries {planned}");
        }
        if let Ok(pauses) = crate::pauses::Pauses::load(store) {
            let _ = writeln!(out, "# HELP herald_paused_selectors Operator pauses in force (herald pause).");
            let _ = writeln!(out, "# TYPE herald_paused_selectors gauge");
            let _ = writeln!(out, "herald_paused_selectors {}", pauses.0.len());
        }
        let Ok(m) = self.inner.lock() else { return out };
        let _ = writeln!(out, "# HELP herald_deliveries_held_by_pause Due deliveries a pause holds back now.");
        let _ = writeln!(out, "# TYPE herald_deliveries_held_by_pause gauge");
        let _ = writeln!(out, "herald_deliveries_held_by_pause {}", m.held_by_pause);
        let _ = writeln!(out, "# HELP herald_deliveries_total Finished attempts by account, platform and outcome.");
        let _ = writeln!(out, "# TYPE herald_deliveries_total counter");
        for ((account, platform, outcome), n) in &m.outcomes {
            let _ = writeln!(
                out,
                "herald_deliveries_total{{account=\"{}\",platform=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(account),
                escape(platform)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_dispatch_lateness_seconds Time from a delivery's due time to the start of its attempt."
        );
        let _ = writeln!(out, "# TYPE herald_dispatch_lateness_seconds histogram");
        m.lateness.write(&mut out, "herald_dispatch_lateness_seconds", "", &LATENESS_BUCKETS);
        let _ = writeln!(out, "# HELP herald_platform_latency_seconds Time a platform took to answer an attempt.");
        let _ = writeln!(out, "# TYPE herald_platform_latency_seconds histogram");
        for (platform, h) in &m.latency {
            h.write(
                &mut out,
                "herald_platform_latency_seconds",
                &format!("platform=\"{}\"", escape(platform)),
                &LATENCY_BUCKETS,
            );
        }
        let _ = writeln!(out, "# HELP herald_token_refreshes_total Credential refreshes by account.");
        let _ = writeln!(out, "# TYPE herald_token_refreshes_total counter");
        for (account, n) in &m.refreshes {
            let _ = writeln!(out, "herald_token_refreshes_total{{account=\"{}\"}} {n}", escape(account));
        }
        let _ = writeln!(
            out,
            "# HELP herald_rate_limit_pauses_total Times an account was paused by a rate-limited answer."
        );
        let _ = writeln!(out, "# TYPE herald_rate_limit_pauses_total counter");
        for (account, n) in &m.pauses {
            let _ = writeln!(out, "herald_rate_limit_pauses_total{{account=\"{}\"}} {n}", escape(account));
        }
        let _ = writeln!(
            out,
            "# HELP herald_last_success_timestamp_seconds When each account last had a delivery published."
        );
        let _ = writeln!(out, "# TYPE herald_last_success_timestamp_seconds gauge");
        for (account, t) in &m.last_success {
            let _ = writeln!(out, "herald_last_success_timestamp_seconds{{account=\"{}\"}} {t:.3}", escape(account));
        }
        out
    }
}
