//! The one table for Tieba's answers. Tieba publishes no list of codes:
//! `error_code` 0 is success, a captcha demand is permanent (a person must
//! post), a message saying the server is busy or the account posts too
//! often is rate limited for a long window, and anything else is permanent.
//!
//! Uncertain paths: Tieba has neither a look-up nor an idempotency key, so
//! a thread whose answer was lost (timeout, reset, crash) is posted again
//! by the next attempt: a duplicate, documented in README and shown by
//! `adapters/tests/contract.rs`.

use std::time::Duration;

use crate::ErrorClass;

/// How long to wait after "busy" or "too frequent".
pub(super) const BUSY_WINDOW: Duration = Duration::from_secs(3600);

/// Words in `error_msg` that mean "slow down" (English and Chinese).
pub(super) const BUSY_WORDS: &[&str] = &["busy", "too frequent", "频繁", "繁忙", "太快"];

/// What an answer's `error_code` and `error_msg` call for; `None` for success.
pub(super) fn classify(error_code: i64, error_msg: &str) -> Option<ErrorClass> {
    if error_code == 0 {
        return None;
    }
    let lower = error_msg.to_lowercase();
    if BUSY_WORDS.iter().any(|word| lower.contains(word)) {
        return Some(ErrorClass::RateLimited { retry_after: Some(BUSY_WINDOW) });
    }
    Some(ErrorClass::Permanent)
}

/// A captcha demand (`data.info.need_vcode > 0`): never retried.
pub(super) const CAPTCHA_REASON: &str = "Tieba demanded a captcha; a person must post";

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITED: ErrorClass = ErrorClass::RateLimited { retry_after: Some(BUSY_WINDOW) };

    #[test]
    fn zero_is_success() {
        assert_eq!(classify(0, ""), None);
        assert_eq!(classify(0, "busy"), None);
    }

    #[test]
    fn busy_or_too_frequent_waits_an_hour() {
        for message in ["server busy", "You post Too Frequent", "您的操作太频繁了", "服务器繁忙", "发帖太快"]
        {
            assert_eq!(classify(220034, message), Some(LIMITED), "{message}");
        }
        assert_eq!(BUSY_WINDOW, Duration::from_secs(3600));
    }

    #[test]
    fn anything_else_is_permanent() {
        for (code, message) in [(1, "用户未登录或登录失败"), (-1, ""), (340006, "贴吧已被封禁"), (2, "sign error")]
        {
            assert_eq!(classify(code, message), Some(ErrorClass::Permanent), "{code} {message}");
        }
    }
}
