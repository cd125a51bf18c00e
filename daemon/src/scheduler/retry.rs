//! The retry decision: what becomes of a delivery after a failed attempt.
//!
//! A pure function of the attempt's number, the answer's class (which
//! carries the platform's Retry-After), the `[retry]` policy and the time;
//! the scheduler applies what it says to the store, the gates and the
//! alerts. Kept apart from storage so its table of cases below is the
//! whole story.

use std::time::Duration;

use herald_adapters::ErrorClass;

use super::backoff;
use crate::config::RetryPolicy;
use crate::model::Millis;

/// The next state of a delivery whose attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Try again at `at`, after the policy's backoff. The account's
    /// failures in a row count one more (the platform may be down).
    Backoff { at: Millis },
    /// The platform rate limited the account: try again at `at` (its
    /// Retry-After, capped by the policy, or the backoff when it gave none),
    /// `wait` from now; the account waits until then as a whole.
    RateLimited { at: Millis, wait: Duration },
    /// The delivery fails for `reason`. `account_backoff`: the failure was
    /// transient, so the account's failures in a row count one more.
    Failed { reason: String, account_backoff: bool },
}

/// What follows attempt number `attempt` (1 for the first) that failed with
/// `class`, explained by `reason`, at `now`. `unit` is a uniform random
/// number in [0, 1) for the backoff's jitter (injected so tests are exact).
pub fn next(attempt: u32, class: &ErrorClass, reason: &str, policy: &RetryPolicy, now: Millis, unit: f64) -> Next {
    let at = |wait: Duration| now + wait.as_millis() as Millis;
    match class {
        ErrorClass::Permanent | ErrorClass::CredentialsExpired => {
            Next::Failed { reason: reason.to_string(), account_backoff: false }
        }
        _ if attempt >= policy.max_attempts => {
            let plural = if attempt == 1 { "" } else { "s" };
            Next::Failed {
                reason: format!("gave up after {attempt} attempt{plural}; last error: {reason}"),
                account_backoff: *class == ErrorClass::Transient,
            }
        }
        ErrorClass::RateLimited { retry_after } => {
            let wait = match retry_after {
                Some(w) => (*w).min(policy.max_retry_after),
                None => backoff::delay(policy, attempt, unit),
            };
            Next::RateLimited { at: at(wait), wait }
        }
        ErrorClass::Transient => Next::Backoff { at: at(backoff::delay(policy, attempt, unit)) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.5,
            max_retry_after: Duration::from_secs(600),
        }
    }

    fn failed(reason: &str, account_backoff: bool) -> Next {
        Next::Failed { reason: reason.to_string(), account_backoff }
    }

    fn limited(secs: u64) -> Next {
        Next::RateLimited { at: NOW + secs as Millis * 1000, wait: Duration::from_secs(secs) }
    }

    fn backoff_secs(secs: u64) -> Next {
        Next::Backoff { at: NOW + secs as Millis * 1000 }
    }

    #[test]
    fn the_table_of_cases() {
        let limit = |secs: Option<u64>| ErrorClass::RateLimited { retry_after: secs.map(Duration::from_secs) };
        // (attempt, class, jitter unit, what follows)
        let cases: Vec<(u32, ErrorClass, f64, Next)> = vec![
            // A permanent answer or expired credentials fail at once, whatever the attempt.
            (1, ErrorClass::Permanent, 0.5, failed("boom", false)),
            (3, ErrorClass::Permanent, 0.5, failed("boom", false)),
            (1, ErrorClass::CredentialsExpired, 0.5, failed("boom", false)),
            // Transient: exponential backoff with jitter, then give up at max_attempts.
            (1, ErrorClass::Transient, 0.5, backoff_secs(10)),
            (2, ErrorClass::Transient, 0.5, backoff_secs(20)),
            (1, ErrorClass::Transient, 0.0, backoff_secs(5)),
            (1, ErrorClass::Transient, 1.0, backoff_secs(15)),
            (3, ErrorClass::Transient, 0.5, failed("gave up after 3 attempts; last error: boom", true)),
            (4, ErrorClass::Transient, 0.5, failed("gave up after 4 attempts; last error: boom", true)),
            // Rate limited: the platform's Retry-After, capped by the policy; the backoff without one.
            (1, limit(Some(120)), 0.5, limited(120)),
            (2, limit(Some(0)), 0.5, limited(0)),
            (1, limit(Some(86_400)), 0.5, limited(600)),
            (2, limit(None), 0.5, limited(20)),
            // ... and the last attempt gives up even when the platform says when to come back,
            // without counting against the account (the platform is up, only busy).
            (3, limit(Some(120)), 0.5, failed("gave up after 3 attempts; last error: boom", false)),
        ];
        for (attempt, class, unit, want) in cases {
            let got = next(attempt, &class, "boom", &policy(), NOW, unit);
            assert_eq!(got, want, "attempt {attempt}, {class:?}, unit {unit}");
        }
    }

    #[test]
    fn one_allowed_attempt_gives_up_after_the_first_in_the_singular() {
        let once = RetryPolicy { max_attempts: 1, ..policy() };
        let got = next(1, &ErrorClass::Transient, "timed out", &once, NOW, 0.5);
        assert_eq!(got, failed("gave up after 1 attempt; last error: timed out", true));
    }
}
