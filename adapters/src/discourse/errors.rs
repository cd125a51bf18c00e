//! The one table that maps Discourse's HTTP statuses to what herald does
//! next, as PLATFORMS.md documents them; other statuses follow the shared
//! HTTP table ([`crate::http::classify_status`]).
//!
//! Uncertain paths: the topic carries the delivery id as `external_id`; the
//! next attempt after no answer, a reset or a crash looks it up by that id
//! before creating it, and a 422 on such a retry is looked up the same way
//! (`adapters/tests/discourse.rs`, `contract.rs`).

use std::time::Duration;

use reqwest::StatusCode;

use crate::{ErrorClass, http};

/// The longest wait honoured from `Retry-After` or `extras.wait_seconds`.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(3600);

/// What a status calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rule {
    Ok,
    /// 429: wait `Retry-After`, else `extras.wait_seconds`.
    RateLimited,
    /// 422 (validation, e.g. a body too similar to a recent post): refused,
    /// unless the delivery is uncertain, when it is evidence an earlier
    /// attempt was published.
    Validation,
    /// 401, 403: the API key or username is refused.
    Credentials,
    /// Anything else, by the shared HTTP table.
    Other(ErrorClass),
}

pub(super) fn rule(status: u16) -> Rule {
    match status {
        200..=299 => Rule::Ok,
        429 => Rule::RateLimited,
        422 => Rule::Validation,
        401 | 403 => Rule::Credentials,
        500..=599 => Rule::Other(ErrorClass::Transient),
        other => match http::classify_status(StatusCode::from_u16(other).unwrap_or(StatusCode::BAD_REQUEST), None) {
            Ok(()) => Rule::Ok,
            Err(class) => Rule::Other(class),
        },
    }
}

/// The class a rule gives on a first attempt; `wait` is the rate limit's.
pub(super) fn class(rule: &Rule, wait: Option<Duration>) -> Option<ErrorClass> {
    match rule {
        Rule::Ok => None,
        Rule::RateLimited => Some(ErrorClass::RateLimited { retry_after: wait }),
        Rule::Validation | Rule::Credentials => Some(ErrorClass::Permanent),
        // A server error with a Retry-After: wait as asked.
        Rule::Other(ErrorClass::Transient) if wait.is_some() => Some(ErrorClass::RateLimited { retry_after: wait }),
        Rule::Other(class) => Some(class.clone()),
    }
}

/// `extras.wait_seconds` as a wait, at most `max`.
pub(super) fn wait_seconds(seconds: Option<f64>, max: Duration) -> Option<Duration> {
    let seconds = seconds.filter(|s| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs_f64(seconds.min(max.as_secs_f64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_status_has_its_rule_and_class() {
        assert_eq!(rule(200), Rule::Ok);
        assert_eq!(class(&rule(200), None), None);
        let wait = Some(Duration::from_secs(9));
        assert_eq!(class(&rule(429), wait), Some(ErrorClass::RateLimited { retry_after: wait }));
        assert_eq!(rule(422), Rule::Validation);
        assert_eq!(class(&rule(422), None), Some(ErrorClass::Permanent));
        for status in [401, 403] {
            assert_eq!(rule(status), Rule::Credentials);
            assert_eq!(class(&rule(status), None), Some(ErrorClass::Permanent));
        }
        for status in [500, 501, 502, 503, 504] {
            assert_eq!(class(&rule(status), None), Some(ErrorClass::Transient), "{status}");
            assert_eq!(class(&rule(status), wait), Some(ErrorClass::RateLimited { retry_after: wait }), "{status}");
        }
    }

    #[test]
    fn other_statuses_follow_the_shared_table() {
        assert_eq!(class(&rule(404), None), Some(ErrorClass::Permanent));
        assert_eq!(class(&rule(400), None), Some(ErrorClass::Permanent));
        assert_eq!(class(&rule(408), None), Some(ErrorClass::Transient));
    }

    #[test]
    fn wait_seconds_are_clamped() {
        assert_eq!(wait_seconds(Some(12.0), MAX_WAIT), Some(Duration::from_secs(12)));
        assert_eq!(wait_seconds(Some(1.5), MAX_WAIT), Some(Duration::from_millis(1500)));
        assert_eq!(wait_seconds(Some(86_400.0), MAX_WAIT), Some(MAX_WAIT));
        assert_eq!(wait_seconds(Some(-1.0), MAX_WAIT), None);
        assert_eq!(wait_seconds(Some(f64::NAN), MAX_WAIT), None);
        assert_eq!(wait_seconds(None, MAX_WAIT), None);
    }
}
