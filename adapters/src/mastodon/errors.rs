//! The one table that maps Mastodon's HTTP statuses to what herald does
//! next, as PLATFORMS.md documents them; other statuses follow the shared
//! HTTP table ([`crate::http::classify_status`]).
//!
//! Uncertain paths: every attempt sends the delivery id as
//! `Idempotency-Key`, which the server remembers for an hour and answers
//! with the original status, so a re-send after no answer, a reset or a
//! crash publishes nothing new within that hour (`contract.rs`); after it,
//! a duplicate is possible (README).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;

use crate::ErrorClass;
use crate::http;

/// The header giving, as an ISO 8601 time, when the rate-limit window resets.
pub(super) const RATE_LIMIT_RESET: &str = "x-ratelimit-reset";

/// The longest wait honoured from `X-RateLimit-Reset` (the statuses window
/// is three hours).
pub(super) const MAX_WAIT: Duration = Duration::from_secs(3 * 3600);

/// The class of an answer's status: `Ok` for 2xx. `reset` is the wait
/// until `X-RateLimit-Reset`, `retry_after` the `Retry-After` (a proxy's or
/// a server's in maintenance), when the answer has them.
pub(super) fn classify(status: u16, reset: Option<Duration>, retry_after: Option<Duration>) -> Result<(), ErrorClass> {
    match status {
        200..=299 => Ok(()),
        // No Retry-After: the window's reset, else the daemon's backoff.
        429 => Err(ErrorClass::RateLimited { retry_after: reset }),
        // Bad token, forbidden, validation failed (too long, bad visibility).
        401 | 403 | 422 => Err(ErrorClass::Permanent),
        500..=599 => Err(match retry_after {
            Some(wait) => ErrorClass::RateLimited { retry_after: Some(wait) },
            None => ErrorClass::Transient,
        }),
        other => http::classify_status(StatusCode::from_u16(other).unwrap_or(StatusCode::BAD_REQUEST), reset),
    }
}

/// What a failed status means, for people.
pub(super) fn describe(status: u16) -> &'static str {
    match status {
        401 => "the access token was refused; create a new one for the account",
        403 => "the account may not do this (suspended, or the token lacks the write:statuses scope)",
        422 => "the status was refused as invalid",
        429 => "rate limited",
        500..=599 => "the server failed",
        _ => "the request was refused",
    }
}

/// The wait until `X-RateLimit-Reset` (ISO 8601): zero if it has passed,
/// at most `max`; `None` when absent or unreadable.
pub(super) fn reset_wait(value: Option<&str>, now: DateTime<Utc>, max: Duration) -> Option<Duration> {
    let reset = DateTime::parse_from_rfc3339(value?.trim()).ok()?.with_timezone(&Utc);
    Some((reset - now).to_std().unwrap_or(Duration::ZERO).min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_status_has_its_class() {
        assert_eq!(classify(200, None, None), Ok(()));
        for permanent in [401, 403, 422] {
            assert_eq!(classify(permanent, None, None), Err(ErrorClass::Permanent), "{permanent}");
        }
        for transient in [500, 501, 502, 503, 504] {
            assert_eq!(classify(transient, None, None), Err(ErrorClass::Transient), "{transient}");
        }
        let wait = Some(Duration::from_secs(60));
        for unavailable in [500, 503] {
            assert_eq!(classify(unavailable, None, wait), Err(ErrorClass::RateLimited { retry_after: wait }));
        }
        assert_eq!(classify(429, wait, None), Err(ErrorClass::RateLimited { retry_after: wait }));
        assert_eq!(classify(429, None, None), Err(ErrorClass::RateLimited { retry_after: None }));
    }

    #[test]
    fn other_statuses_follow_the_shared_table() {
        assert_eq!(classify(404, None, None), Err(ErrorClass::Permanent));
        assert_eq!(classify(408, None, None), Err(ErrorClass::Transient));
        assert_eq!(classify(400, None, None), Err(ErrorClass::Permanent));
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-03-01T09:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn reads_the_reset_time() {
        let max = MAX_WAIT;
        assert_eq!(reset_wait(Some("2025-03-01T09:05:00.000Z"), now(), max), Some(Duration::from_secs(300)));
        assert_eq!(reset_wait(Some("2025-03-01T17:00:30+08:00"), now(), max), Some(Duration::from_secs(30)));
        assert_eq!(reset_wait(Some("2025-03-01T08:00:00Z"), now(), max), Some(Duration::ZERO));
        assert_eq!(reset_wait(Some("2025-03-02T09:00:00Z"), now(), max), Some(max));
        assert_eq!(reset_wait(Some("in a minute"), now(), max), None);
        assert_eq!(reset_wait(None, now(), max), None);
    }
}
