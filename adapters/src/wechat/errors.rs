//! The one table mapping WeChat's `errcode`s to what herald does next, as
//! PLATFORMS.md documents them, and the rate-limit windows they imply.
//!
//! Uncertain paths (tested in `adapters/tests/wechat.rs`, `contract.rs`
//! and the daemon's `platforms.rs`): before `freepublish/submit` leaves,
//! the intent is saved; no answer (timeout, reset, crash) leaves it, and the
//! next attempt looks in `freepublish/batchget` until a job started then
//! would have ended, submitting the same draft again only when the article
//! is not there. A known publish job is followed, whatever happens (token
//! rejections are refreshed, within the budget, and followed on). Mass send
//! re-sends with the same `clientmsgid`: 45065 is success. Quotas (45009,
//! 45011, 45028) are the AppID's and pause every account of it.

use std::time::Duration;

use chrono::{DateTime, Days, FixedOffset, Utc};

use crate::ErrorClass;

/// The WeChat API a call went to; a few codes mean different things on the
/// token call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    /// `stable_token`.
    Token,
    /// The older `token`.
    ClassicToken,
    AddMaterial,
    UploadImage,
    DraftAdd,
    Submit,
    PublishStatus,
    MassSend,
    /// `freepublish/batchget`: the published articles (the look-up).
    BatchGet,
    /// `draft/delete`: an abandoned draft.
    DraftDelete,
    /// `freepublish/delete`: recall a published article.
    PublishDelete,
    /// `message/mass/delete`: recall a mass-sent article.
    MassDelete,
}

impl Api {
    /// The path below the base URL, also used in reasons and logs.
    pub(super) fn path(self) -> &'static str {
        match self {
            Api::Token => "cgi-bin/stable_token",
            Api::ClassicToken => "cgi-bin/token",
            Api::AddMaterial => "cgi-bin/material/add_material",
            Api::UploadImage => "cgi-bin/media/uploadimg",
            Api::DraftAdd => "cgi-bin/draft/add",
            Api::Submit => "cgi-bin/freepublish/submit",
            Api::PublishStatus => "cgi-bin/freepublish/get",
            Api::MassSend => "cgi-bin/message/mass/sendall",
            Api::BatchGet => "cgi-bin/freepublish/batchget",
            Api::DraftDelete => "cgi-bin/draft/delete",
            Api::PublishDelete => "cgi-bin/freepublish/delete",
            Api::MassDelete => "cgi-bin/message/mass/delete",
        }
    }
}

/// When a rate-limited call may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Window {
    /// 60 seconds.
    NextMinute,
    /// WeChat's quotas reset at midnight, Beijing time (UTC+8, no DST).
    NextDay,
}

/// What an errcode calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Transient: back off and try again.
    Retry,
    /// Rate limited until the window ends.
    Rate(Window),
    /// The access_token is invalid or expired: refresh once, retry once.
    Refresh,
    /// Permanent: the account's configuration must change.
    Configuration,
    /// Permanent: the content or the account is refused.
    Refused,
    /// Permanent: only a person, in the web console, can go on.
    NeedsPerson,
    /// The call was already made with this idempotency key: evidence that
    /// an earlier attempt went through.
    AlreadyDone,
}

/// One row of the table.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) code: i64,
    pub(super) meaning: &'static str,
    pub(super) verdict: Verdict,
}

const fn entry(code: i64, meaning: &'static str, verdict: Verdict) -> Entry {
    Entry { code, meaning, verdict }
}

/// Every errcode herald knows, from PLATFORMS.md, except the last three
/// (mass-send de-duplication), which come from WeChat's mass-send
/// documentation and are not in PLATFORMS.md.
pub(super) const TABLE: &[Entry] = &[
    entry(-1, "system busy", Verdict::Retry),
    entry(40001, "invalid or stale credential", Verdict::Refresh),
    entry(40014, "invalid access_token", Verdict::Refresh),
    entry(42001, "access_token expired", Verdict::Refresh),
    entry(45009, "daily API quota reached", Verdict::Rate(Window::NextDay)),
    entry(45011, "per-minute API quota reached", Verdict::Rate(Window::NextMinute)),
    entry(45028, "no mass-send quota left", Verdict::Rate(Window::NextDay)),
    entry(40125, "invalid AppSecret", Verdict::Configuration),
    entry(40013, "invalid AppID", Verdict::Configuration),
    entry(40164, "this host's IP is not on the account's whitelist", Verdict::Configuration),
    entry(41001, "access_token missing", Verdict::Configuration),
    entry(48001, "API not authorized for this account", Verdict::Configuration),
    entry(48004, "API banned for this account", Verdict::Configuration),
    entry(44003, "empty content", Verdict::Refused),
    entry(45002, "content too large", Verdict::Refused),
    entry(45166, "invalid content", Verdict::Refused),
    entry(47001, "bad request format", Verdict::Refused),
    entry(50002, "user limited", Verdict::Refused),
    entry(53503, "the draft failed the publish check", Verdict::NeedsPerson),
    entry(53504, "the draft must be published in the web console", Verdict::NeedsPerson),
    entry(53505, "the draft must be saved manually in the web console", Verdict::NeedsPerson),
    // Not in PLATFORMS.md: WeChat's mass-send documentation.
    entry(45065, "a mass send with this clientmsgid already exists", Verdict::AlreadyDone),
    entry(45066, "same clientmsgid retried too fast", Verdict::Rate(Window::NextMinute)),
    entry(45067, "clientmsgid too long", Verdict::Configuration),
];

/// What `errcode` on `api` calls for, with its meaning; `None` for success
/// (0). A code missing from the table is retried like a transient error:
/// the daemon bounds the attempts, and the reason (with the raw code in the
/// audit log) names it so the table can be extended.
pub(super) fn classify(api: Api, errcode: i64) -> Option<(Verdict, &'static str)> {
    if errcode == 0 {
        return None;
    }
    if matches!(api, Api::Token | Api::ClassicToken) {
        match errcode {
            // On the token call itself, 40001 means the AppSecret is wrong.
            40001 | 40125 => return Some((Verdict::Configuration, "wrong AppSecret: check appid and secret")),
            40013 => return Some((Verdict::Configuration, "invalid AppID: check appid and secret")),
            _ => {}
        }
    }
    Some(match TABLE.iter().find(|row| row.code == errcode) {
        Some(row) => (row.verdict, row.meaning),
        None => (Verdict::Retry, "undocumented errcode"),
    })
}

/// How a publish job ended, from `freepublish/get`'s `publish_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PublishStatus {
    /// 0: published.
    Published,
    /// 1: still publishing: poll again.
    Publishing,
    /// 2 to 6, or a status herald does not know: failed for good.
    Failed(&'static str),
}

/// The one table of `publish_status` values (PLATFORMS.md).
pub(super) fn publish_status(status: i64) -> PublishStatus {
    match status {
        0 => PublishStatus::Published,
        1 => PublishStatus::Publishing,
        2 => PublishStatus::Failed("the originality check failed"),
        3 => PublishStatus::Failed("publishing failed"),
        4 => PublishStatus::Failed("rejected by review"),
        5 => PublishStatus::Failed("deleted after publishing"),
        6 => PublishStatus::Failed("banned after publishing"),
        _ => PublishStatus::Failed("an undocumented publish_status"),
    }
}

/// The [`ErrorClass`] of a verdict at `now`. `AlreadyDone` is not an error:
/// callers handle it before asking.
pub(super) fn error_class(verdict: Verdict, now: DateTime<Utc>) -> ErrorClass {
    match verdict {
        Verdict::Retry => ErrorClass::Transient,
        Verdict::Rate(window) => ErrorClass::RateLimited { retry_after: Some(wait(window, now)) },
        Verdict::Refresh => ErrorClass::CredentialsExpired,
        Verdict::Configuration | Verdict::Refused | Verdict::NeedsPerson | Verdict::AlreadyDone => {
            ErrorClass::Permanent
        }
    }
}

/// How long to wait for `window` to end, from `now`.
pub(super) fn wait(window: Window, now: DateTime<Utc>) -> Duration {
    match window {
        Window::NextMinute => Duration::from_secs(60),
        Window::NextDay => until_beijing_midnight(now),
    }
}

/// Beijing time: UTC+8 all year.
const BEIJING_OFFSET_SECS: i32 = 8 * 3600;

/// The time from `now` to the next midnight in Beijing (never zero: at
/// midnight exactly, a whole day).
pub(super) fn until_beijing_midnight(now: DateTime<Utc>) -> Duration {
    let Some(beijing) = FixedOffset::east_opt(BEIJING_OFFSET_SECS) else {
        return Duration::from_secs(24 * 3600);
    };
    let local = now.with_timezone(&beijing);
    let next = local
        .date_naive()
        .checked_add_days(Days::new(1))
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .and_then(|midnight| midnight.and_local_timezone(beijing).single());
    match next {
        Some(midnight) => (midnight.with_timezone(&Utc) - now).to_std().unwrap_or(Duration::from_secs(24 * 3600)),
        None => Duration::from_secs(24 * 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn noon() -> DateTime<Utc> {
        // 20:00 in Beijing: four hours to midnight there.
        at("2025-03-01T12:00:00Z")
    }

    fn class(api: Api, code: i64) -> Option<ErrorClass> {
        classify(api, code).map(|(verdict, _)| error_class(verdict, noon()))
    }

    const DAY: ErrorClass = ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(4 * 3600)) };
    const MINUTE: ErrorClass = ErrorClass::RateLimited { retry_after: Some(Duration::from_secs(60)) };

    /// Every code of PLATFORMS.md's WeChat table, with its class.
    #[test]
    fn every_documented_code_has_its_class() {
        let documented: &[(i64, ErrorClass)] = &[
            (-1, ErrorClass::Transient),
            (40001, ErrorClass::CredentialsExpired),
            (40014, ErrorClass::CredentialsExpired),
            (42001, ErrorClass::CredentialsExpired),
            (45009, DAY),
            (45011, MINUTE),
            (45028, DAY),
            (40125, ErrorClass::Permanent),
            (40013, ErrorClass::Permanent),
            (40164, ErrorClass::Permanent),
            (41001, ErrorClass::Permanent),
            (48001, ErrorClass::Permanent),
            (48004, ErrorClass::Permanent),
            (44003, ErrorClass::Permanent),
            (45002, ErrorClass::Permanent),
            (45166, ErrorClass::Permanent),
            (47001, ErrorClass::Permanent),
            (50002, ErrorClass::Permanent),
            (53503, ErrorClass::Permanent),
            (53504, ErrorClass::Permanent),
            (53505, ErrorClass::Permanent),
        ];
        for (code, expected) in documented {
            for api in
                [Api::AddMaterial, Api::UploadImage, Api::DraftAdd, Api::Submit, Api::PublishStatus, Api::MassSend]
            {
                assert_eq!(class(api, *code).as_ref(), Some(expected), "{code} on {api:?}");
            }
        }
        assert_eq!(TABLE.len(), documented.len() + 3, "every row is tested");
    }

    #[test]
    fn the_documented_codes_keep_their_kind_of_permanence() {
        let verdict = |code| classify(Api::DraftAdd, code).unwrap().0;
        for code in [40125, 40013, 40164, 41001, 48001, 48004] {
            assert_eq!(verdict(code), Verdict::Configuration, "{code}");
        }
        for code in [44003, 45002, 45166, 47001, 50002] {
            assert_eq!(verdict(code), Verdict::Refused, "{code}");
        }
        for code in [53503, 53504, 53505] {
            assert_eq!(verdict(code), Verdict::NeedsPerson, "{code}");
        }
    }

    #[test]
    fn on_the_token_call_40001_is_a_wrong_secret() {
        for code in [40001, 40125] {
            let (verdict, meaning) = classify(Api::Token, code).unwrap();
            assert_eq!(verdict, Verdict::Configuration);
            assert_eq!(meaning, "wrong AppSecret: check appid and secret");
        }
        assert_eq!(classify(Api::ClassicToken, 40013).unwrap().1, "invalid AppID: check appid and secret");
        assert_eq!(class(Api::Token, 40001), Some(ErrorClass::Permanent));
        assert_eq!(class(Api::ClassicToken, 40001), Some(ErrorClass::Permanent));
        assert_eq!(class(Api::Token, 42001), Some(ErrorClass::CredentialsExpired));
        assert_eq!(class(Api::Token, -1), Some(ErrorClass::Transient));
    }

    #[test]
    fn mass_send_de_duplication_codes() {
        assert_eq!(classify(Api::MassSend, 45065).unwrap().0, Verdict::AlreadyDone);
        assert_eq!(class(Api::MassSend, 45066), Some(MINUTE));
        assert_eq!(class(Api::MassSend, 45067), Some(ErrorClass::Permanent));
    }

    #[test]
    fn zero_is_success_and_unknown_codes_are_retried_a_bounded_number_of_times() {
        assert_eq!(classify(Api::DraftAdd, 0), None);
        let (verdict, meaning) = classify(Api::DraftAdd, 99999).unwrap();
        assert_eq!((verdict, meaning), (Verdict::Retry, "undocumented errcode"));
        assert_eq!(class(Api::Submit, 40007), Some(ErrorClass::Transient));
    }

    #[test]
    fn publish_statuses() {
        assert_eq!(publish_status(0), PublishStatus::Published);
        assert_eq!(publish_status(1), PublishStatus::Publishing);
        let failures = [
            (2, "the originality check failed"),
            (3, "publishing failed"),
            (4, "rejected by review"),
            (5, "deleted after publishing"),
            (6, "banned after publishing"),
            (7, "an undocumented publish_status"),
            (-1, "an undocumented publish_status"),
        ];
        for (status, reason) in failures {
            assert_eq!(publish_status(status), PublishStatus::Failed(reason), "{status}");
        }
    }

    #[test]
    fn daily_quotas_reset_at_beijing_midnight() {
        assert_eq!(until_beijing_midnight(at("2025-03-01T12:00:00Z")), Duration::from_secs(4 * 3600));
        // 15:59:30 UTC is 23:59:30 in Beijing.
        assert_eq!(until_beijing_midnight(at("2025-03-01T15:59:30Z")), Duration::from_secs(30));
        // 16:00 UTC is midnight in Beijing: a whole day to the next one.
        assert_eq!(until_beijing_midnight(at("2025-03-01T16:00:00Z")), Duration::from_secs(24 * 3600));
        // Early morning in Beijing is still the previous UTC day.
        assert_eq!(until_beijing_midnight(at("2025-02-28T17:00:00Z")), Duration::from_secs(23 * 3600));
    }
}
