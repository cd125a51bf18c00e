//! Per-account gates: concurrency, rate limit (a sliding window), and pauses
//! after a platform said "rate limited".

use std::collections::{HashMap, VecDeque};

use crate::config::{Config, Rate};
use crate::model::Millis;

/// The gate of one account.
#[derive(Debug, Default)]
pub struct Gate {
    pub concurrency: u32,
    pub rate: Option<Rate>,
    pub in_flight: u32,
    /// Start times within the current rate window, oldest first.
    starts: VecDeque<Millis>,
    pub paused_until: Option<Millis>,
    /// Transient failures in a row: while a platform is down, the whole
    /// account backs off, not only each delivery (no retry storm).
    pub consecutive_failures: u32,
}

/// Why an account cannot start a delivery now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// All its slots are busy: wait for a delivery to finish.
    Busy,
    /// Wait until this instant (rate window or pause).
    Until(Millis),
}

impl Gate {
    pub fn check(&mut self, now: Millis) -> Result<(), Blocked> {
        if let Some(until) = self.paused_until {
            if until > now {
                return Err(Blocked::Until(until));
            }
            self.paused_until = None;
        }
        if self.in_flight >= self.concurrency {
            return Err(Blocked::Busy);
        }
        if let Some(rate) = self.rate {
            let window = rate.per.as_millis() as Millis;
            while self.starts.front().is_some_and(|&t| t + window <= now) {
                self.starts.pop_front();
            }
            if self.starts.len() >= rate.count as usize
                && let Some(&oldest) = self.starts.front()
            {
                return Err(Blocked::Until(oldest + window));
            }
        }
        Ok(())
    }

    pub fn start(&mut self, now: Millis) {
        self.in_flight += 1;
        if self.rate.is_some() {
            self.starts.push_back(now);
        }
    }

    /// A start made before this gate existed (by another daemon, read
    /// from the audit log at a takeover): it counts against the rate window.
    pub fn started_before(&mut self, at: Millis) {
        if self.rate.is_some() {
            self.starts.push_back(at);
        }
    }

    pub fn finish(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn pause_until(&mut self, until: Millis) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }
}

/// The gates of every account.
#[derive(Debug, Default)]
pub struct Gates {
    gates: HashMap<String, Gate>,
}

impl Gates {
    /// Gates for the accounts of `config`, keeping the state (in flight,
    /// recent starts, pauses) of accounts that stay.
    pub fn update(&mut self, config: &Config) {
        self.gates.retain(|id, g| config.accounts.contains_key(id) || g.in_flight > 0);
        for (id, account) in &config.accounts {
            let gate = self.gates.entry(id.clone()).or_default();
            gate.concurrency = account.concurrency;
            gate.rate = account.rate;
        }
    }

    pub fn get(&mut self, account: &str) -> Option<&mut Gate> {
        self.gates.get_mut(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_rate_allows_count_starts_per_window() {
        let mut g =
            Gate { concurrency: 10, rate: Some(Rate { count: 2, per: Duration::from_secs(60) }), ..Gate::default() };
        assert_eq!(g.check(0), Ok(()));
        g.start(0);
        g.start(1_000);
        assert_eq!(g.check(2_000), Err(Blocked::Until(60_000)));
        assert_eq!(g.check(60_000), Ok(()));
    }

    #[test]
    fn concurrency_and_pauses_block() {
        let mut g = Gate { concurrency: 1, ..Gate::default() };
        g.start(0);
        assert_eq!(g.check(0), Err(Blocked::Busy));
        g.finish();
        g.pause_until(5_000);
        assert_eq!(g.check(1_000), Err(Blocked::Until(5_000)));
        assert_eq!(g.check(5_000), Ok(()));
    }
}
