//! Retry delays: exponential, capped, with jitter.

use std::time::Duration;

use crate::config::RetryPolicy;

/// The delay before attempt `attempt + 1`, after `attempt` attempts failed.
/// `unit` is a uniform random number in [0, 1) (injected so tests are exact).
pub fn delay(policy: &RetryPolicy, attempt: u32, unit: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(64) as i32;
    let base = policy.initial_backoff.as_secs_f64() * policy.multiplier.powi(exponent);
    let capped = base.min(policy.max_backoff.as_secs_f64());
    let spread = 1.0 + policy.jitter * (2.0 * unit - 1.0);
    Duration::from_secs_f64((capped * spread).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.5,
            max_retry_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn delays_grow_then_stop_at_the_cap() {
        let got: Vec<u64> = (1..=5).map(|n| delay(&policy(), n, 0.5).as_secs()).collect();
        assert_eq!(got, vec![10, 20, 40, 60, 60]);
    }

    #[test]
    fn jitter_spreads_both_ways_within_its_fraction() {
        assert_eq!(delay(&policy(), 1, 0.0), Duration::from_secs(5));
        assert_eq!(delay(&policy(), 1, 1.0), Duration::from_secs(15));
        let no_jitter = RetryPolicy { jitter: 0.0, ..policy() };
        assert_eq!(delay(&no_jitter, 2, 0.9), Duration::from_secs(20));
    }
}
