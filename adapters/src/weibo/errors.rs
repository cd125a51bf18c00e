//! The one table that maps Weibo's `error_code`s to what herald does next,
//! as PLATFORMS.md documents them. A code missing from the table is
//! transient: the daemon bounds the attempts.
//!
//! Uncertain paths (each tested in `adapters/tests/weibo.rs` or
//! `contract.rs`): no answer in time, a reset after sending, 10010 "job
//! expired" and a 2xx without a status make the next attempt uncertain; it
//! looks in the user timeline for the exact text, and when that look-up is
//! refused (10014) it re-sends, saying so in the audit record: 20017, 20019
//! and 20111 on such a retry count as published. A crash in flight is the
//! same (the daemon marks the delivery uncertain on start).

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

use crate::{DeliveryError, PlatformAnswer};

/// What a documented code calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    /// System error, busy, unavailable: retry with backoff.
    Retry,
    /// Retry, but the post may have gone through: the next attempt is
    /// uncertain, so the daemon looks before re-posting.
    RetryMaybePosted,
    /// Rate limited: retry at the next whole hour (Weibo sends no Retry-After).
    NextHour,
    /// As `NextHour`, but the limit is the IP's (10022): every account
    /// calling from this host waits.
    NextHourShared,
    /// The app or host is not allowed: fix the configuration.
    Configuration,
    /// The post itself is refused.
    Refused,
    /// Similar, identical or repeated content: refused, unless the delivery
    /// is uncertain, when it is evidence an earlier attempt was published.
    Duplicate,
    /// A captcha: a person has to act.
    NeedsPerson,
    /// The access token is invalid, expired or revoked; it cannot be refreshed.
    Token,
    /// Published, the server was slow: success, do not retry.
    Posted,
}

/// Weibo's documented codes: (codes, rule, meaning).
pub(super) const TABLE: &[(&[u32], Rule, &str)] = &[
    (&[10001, 10002, 10003, 10009, 10011, 21331], Rule::Retry, "system error, busy or temporarily unavailable"),
    (&[10010], Rule::RetryMaybePosted, "job expired"),
    (&[10022], Rule::NextHourShared, "rate limited (the host's IP, shared by the app's accounts)"),
    (&[10023, 10024, 20016], Rule::NextHour, "rate limited"),
    (&[10004, 10005, 10014], Rule::Configuration, "IP limit, or the app lacks permission"),
    (&[10006, 10008, 10016, 10017, 10018, 10020, 10021], Rule::Refused, "bad parameters, size or method"),
    (&[20005, 20006, 20007], Rule::Refused, "picture type or size, or multipart missing"),
    (&[20012], Rule::Refused, "text too long"),
    (&[20017, 20019, 20111], Rule::Duplicate, "similar, identical or repeated content"),
    (&[20018, 20020, 20021], Rule::Refused, "illegal URL, advertising or illegal content"),
    (&[20031, 20507], Rule::NeedsPerson, "captcha required"),
    (&[20032], Rule::Posted, "posted, the server is slow"),
    // 21332 (`invalid_access_token`) is not in PLATFORMS.md's table; it is
    // what Weibo answers for an unknown token (seen in open-source clients).
    (
        &[21301, 21314, 21315, 21316, 21317, 21319, 21325, 21327, 21332],
        Rule::Token,
        "token invalid, expired or revoked",
    ),
];

/// The reason given for every token error: refreshing is impossible.
pub(super) const TOKEN_REASON: &str = "token invalid or expired; re-authorize the account";

/// The rule and meaning of `code`, when the table has it.
pub(super) fn rule(code: &str) -> Option<(Rule, &'static str)> {
    let code: u32 = code.trim().parse().ok()?;
    TABLE.iter().find(|(codes, _, _)| codes.contains(&code)).map(|(_, rule, meaning)| (*rule, *meaning))
}

/// An error answer from Weibo: `{"request", "error_code", "error"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WeiboError {
    /// The HTTP status it came with (not documented; 403 has been seen).
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl WeiboError {
    fn answer(&self) -> PlatformAnswer {
        PlatformAnswer {
            status: Some(self.status),
            code: Some(self.code.clone()),
            message: (!self.message.is_empty()).then(|| self.message.clone()),
        }
    }
}

/// What a publish answered with an `error_code` comes to: `Ok(note)` when it
/// counts as published (the note says why, for the audit log), or the error.
pub(super) fn publish_outcome(
    error: &WeiboError,
    uncertain: bool,
    now: DateTime<Utc>,
) -> Result<String, DeliveryError> {
    match rule(&error.code) {
        Some((Rule::Posted, meaning)) => Ok(format!("{} {meaning}: counted as published", error.code)),
        Some((Rule::Duplicate, meaning)) if uncertain => Ok(format!(
            "{} {meaning} on a retry whose earlier attempt may have gone through: taken as evidence it was published; \
             no remote id",
            error.code
        )),
        _ => Err(failure(error, now)),
    }
}

/// The [`DeliveryError`] for an error answer. Used for every call; on a
/// call that publishes nothing, "posted" and "duplicate" make no sense and
/// are transient.
pub(super) fn failure(error: &WeiboError, now: DateTime<Utc>) -> DeliveryError {
    let code = &error.code;
    let answer = error.answer();
    let Some((rule, meaning)) = rule(code) else {
        return DeliveryError::transient(answer, format!("Weibo answered an undocumented error code {code}"));
    };
    match rule {
        Rule::Retry => DeliveryError::transient(answer, format!("Weibo answered {code} ({meaning})")),
        Rule::RetryMaybePosted => DeliveryError::transient(
            answer,
            format!("Weibo answered {code} ({meaning}): the post may have gone through; look before re-posting"),
        )
        .maybe_sent(),
        Rule::NextHour | Rule::NextHourShared => {
            let wait = until_next_hour(now);
            let error = DeliveryError::rate_limited(
                answer,
                Some(wait),
                format!("Weibo answered {code} ({meaning}); the hourly window resets in {}s", wait.as_secs()),
            );
            if rule == Rule::NextHourShared { error.shared_limit() } else { error }
        }
        Rule::Configuration => {
            DeliveryError::permanent(answer, format!("Weibo refused the account's configuration: {code} ({meaning})"))
        }
        Rule::Refused => DeliveryError::permanent(answer, format!("Weibo refused the post: {code} ({meaning})")),
        Rule::Duplicate => {
            DeliveryError::permanent(answer, format!("Weibo refused the post as a repeat: {code} ({meaning})"))
        }
        Rule::NeedsPerson => DeliveryError::permanent(
            answer,
            format!("Weibo demands a captcha ({code}): a person must act on the account"),
        ),
        Rule::Token => DeliveryError::permanent(answer, TOKEN_REASON),
        Rule::Posted => {
            DeliveryError::transient(answer, format!("Weibo answered {code} ({meaning}) to a call that posts nothing"))
        }
    }
}

/// The time from `now` to the next whole hour (a full hour at :00:00).
/// Whole hours are the same in UTC and Beijing time (UTC+8).
pub(super) fn until_next_hour(now: DateTime<Utc>) -> Duration {
    let into_hour = Duration::from_secs(u64::from(now.minute() * 60 + now.second()))
        + Duration::from_nanos(u64::from(now.nanosecond() % 1_000_000_000));
    Duration::from_secs(3600).saturating_sub(into_hour)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn error(code: &str) -> WeiboError {
        WeiboError { status: 403, code: code.to_string(), message: "raw message".into() }
    }

    const NOW: &str = "2025-03-01T09:45:30Z";

    fn class(code: &str) -> ErrorClass {
        failure(&error(code), at(NOW)).class
    }

    /// Every code PLATFORMS.md lists, with its class.
    #[test]
    fn every_documented_code_has_its_class() {
        for code in [10001, 10002, 10003, 10009, 10011, 21331, 10010] {
            assert_eq!(class(&code.to_string()), ErrorClass::Transient, "{code}");
        }
        let next_hour = ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(14 * 60 + 30)) };
        for code in [10022, 10023, 10024, 20016] {
            assert_eq!(class(&code.to_string()), next_hour, "{code}");
        }
        let permanent = [
            10004, 10005, 10014, 10006, 10008, 10016, 10017, 10018, 10020, 10021, 20005, 20006, 20007, 20012, 20017,
            20019, 20111, 20018, 20020, 20021, 20031, 20507, 21301, 21314, 21315, 21316, 21317, 21319, 21325, 21327,
        ];
        for code in permanent {
            assert_eq!(class(&code.to_string()), ErrorClass::Permanent, "{code}");
            assert_eq!(
                publish_outcome(&error(&code.to_string()), false, at(NOW)).unwrap_err().class,
                ErrorClass::Permanent
            );
        }
        assert!(publish_outcome(&error("20032"), false, at(NOW)).is_ok());
    }

    #[test]
    fn the_table_lists_each_code_once() {
        let mut codes: Vec<u32> = TABLE.iter().flat_map(|(codes, _, _)| codes.iter().copied()).collect();
        let count = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), count);
    }

    #[test]
    fn job_expired_may_have_posted() {
        let expired = failure(&error("10010"), at(NOW));
        assert_eq!(expired.class, ErrorClass::Transient);
        assert!(expired.maybe_sent);
        assert!(!failure(&error("10001"), at(NOW)).maybe_sent);
    }

    #[test]
    fn unknown_and_malformed_codes_are_transient() {
        for code in ["99999", "0", "abc", "", "-1"] {
            let unknown = failure(&error(code), at(NOW));
            assert_eq!(unknown.class, ErrorClass::Transient, "{code:?}");
            assert!(!unknown.maybe_sent);
        }
    }

    #[test]
    fn duplicates_are_success_only_when_uncertain() {
        for code in ["20017", "20019", "20111"] {
            let note = publish_outcome(&error(code), true, at(NOW)).unwrap();
            assert!(note.starts_with(code) && note.contains("evidence"), "{note}");
            let refused = publish_outcome(&error(code), false, at(NOW)).unwrap_err();
            assert_eq!(refused.class, ErrorClass::Permanent);
            assert_eq!(refused.answer.code.as_deref(), Some(code));
        }
    }

    #[test]
    fn posted_is_success_whether_or_not_uncertain() {
        for uncertain in [false, true] {
            assert!(publish_outcome(&error("20032"), uncertain, at(NOW)).unwrap().contains("published"));
        }
        assert_eq!(class("20032"), ErrorClass::Transient, "not a success on a call that posts nothing");
    }

    #[test]
    fn token_errors_say_to_re_authorize() {
        for code in ["21301", "21327", "21332"] {
            let refused = failure(&error(code), at(NOW));
            assert_eq!(refused.class, ErrorClass::Permanent);
            assert_eq!(refused.reason, TOKEN_REASON);
        }
    }

    #[test]
    fn the_answer_keeps_the_raw_code_and_message() {
        let refused = failure(&error("20012"), at(NOW));
        assert_eq!(
            refused.answer,
            PlatformAnswer { status: Some(403), code: Some("20012".into()), message: Some("raw message".into()) }
        );
        assert!(refused.reason.contains("20012") && refused.reason.contains("text too long"), "{}", refused.reason);
    }

    #[test]
    fn the_next_whole_hour() {
        assert_eq!(until_next_hour(at("2025-03-01T09:45:30Z")), Duration::from_secs(14 * 60 + 30));
        assert_eq!(until_next_hour(at("2025-03-01T09:00:00Z")), Duration::from_secs(3600));
        assert_eq!(until_next_hour(at("2025-03-01T09:59:59.250Z")), Duration::from_millis(750));
        // Beijing time has a whole-hour offset: the same instant.
        assert_eq!(until_next_hour(at("2025-03-01T17:45:30+08:00")), Duration::from_secs(14 * 60 + 30));
    }
}
