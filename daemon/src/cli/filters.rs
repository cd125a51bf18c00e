//! `herald log` filters as people type them: relative times (`yesterday`,
//! `-2h`, `2 days ago`) and event names with a suggestion for a typo. They
//! are turned into what the log query reads (RFC 3339 instants, exact event
//! names) here, against this machine's clock, before the query is asked.

use std::time::Duration;

use chrono::{DateTime, NaiveTime, SecondsFormat, Utc};

use crate::model::Event;

const TIME_FORMS: &str = "expected RFC 3339 (2026-03-01T09:00:00+08:00), a date (2026-03-01, midnight UTC), \
                          `now`, `today` or `yesterday` (midnight UTC), or a time ago: `-2h`, `90m ago`, `2 days ago`";

/// The instant `--since`/`--until` names, as RFC 3339. `flag` is the option's
/// name, for the message.
pub fn instant(flag: &str, text: &str, now: DateTime<Utc>) -> Result<String, String> {
    let text = text.trim();
    let midnight = |days_back: i64| {
        let day = now.date_naive() - chrono::Duration::days(days_back);
        day.and_time(NaiveTime::MIN).and_utc()
    };
    let when = match text.to_ascii_lowercase().as_str() {
        "now" => Some(now),
        "today" => Some(midnight(0)),
        "yesterday" => Some(midnight(1)),
        lower => ago(lower).map(|d| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
    };
    if let Some(when) = when {
        return Ok(when.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    // An absolute time: checked here with the same rules the query uses, so
    // a mistake is answered with every form accepted.
    let full = if text.len() == 10 { format!("{text}T00:00:00") } else { text.to_string() };
    match crate::config::TimeValue::parse(&full).and_then(|v| v.resolve(&chrono_tz::Tz::UTC)) {
        Ok(_) => Ok(text.to_string()),
        Err(_) => Err(format!("--{flag} `{text}` is not a time; {TIME_FORMS}")),
    }
}

/// The instant `upcoming --until` names: an absolute time as for `herald log`,
/// `tomorrow` (midnight UTC), or a time from now (`2h`, `+3d`, `in 2 days`).
pub fn ahead(flag: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_ascii_lowercase();
    if lower == "tomorrow" {
        let day = now.date_naive() + chrono::Duration::days(1);
        return Ok(day.and_time(NaiveTime::MIN).and_utc());
    }
    let span = lower.strip_prefix('+').or_else(|| lower.strip_prefix("in ")).unwrap_or(&lower);
    if let Some(d) = ago(&format!("{span} ago")) {
        return Ok(now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    }
    let full = if trimmed.len() == 10 { format!("{trimmed}T00:00:00") } else { trimmed.to_string() };
    crate::config::TimeValue::parse(&full).and_then(|v| v.resolve(&chrono_tz::Tz::UTC)).map_err(|_| {
        format!(
            "--{flag} `{trimmed}` is not a time; expected RFC 3339 (2026-03-01T09:00:00+08:00), a date \
             (2026-03-01, midnight UTC), `tomorrow`, or a time from now: `2h`, `+3d`, `in 2 days`"
        )
    })
}

/// `-2h`, `2h ago`, `2 days ago`, `1h 30m ago`: how long ago.
fn ago(text: &str) -> Option<Duration> {
    let span = match (text.strip_prefix('-'), text.strip_suffix("ago")) {
        (Some(span), None) => span,
        (None, Some(span)) => span,
        _ => return None,
    };
    // humantime reads `2days` and `1h 30m`; people also write `2 days`.
    let mut joined = String::new();
    for word in span.split_whitespace() {
        let unit_follows_number =
            word.starts_with(|c: char| c.is_ascii_alphabetic()) && joined.ends_with(|c: char| c.is_ascii_digit());
        if !joined.is_empty() && !unit_follows_number {
            joined.push(' ');
        }
        joined.push_str(word);
    }
    humantime::parse_duration(&joined).ok()
}

/// The event names, each checked; a typo gets the nearest name and the list.
pub fn events(names: &[String]) -> Result<Vec<String>, String> {
    let valid: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
    names
        .iter()
        .flat_map(|n| n.split(','))
        .filter(|n| !n.is_empty())
        .map(|name| match Event::parse(name) {
            Some(e) => Ok(e.name().to_string()),
            None => {
                let hint = nearest(name, &valid).map(|n| format!("did you mean `{n}`? ")).unwrap_or_default();
                Err(format!("unknown event `{name}`; {hint}events are: {}", valid.join(", ")))
            }
        })
        .collect()
}

/// The name closest to `typed` within two edits, if any.
pub fn nearest<'a>(typed: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (strsim::levenshtein(typed, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn relative_times_count_back_from_now() {
        let now = at("2026-03-10T15:20:00Z");
        let since = |t: &str| instant("since", t, now).unwrap();
        assert_eq!(since("now"), "2026-03-10T15:20:00Z");
        assert_eq!(since("today"), "2026-03-10T00:00:00Z");
        assert_eq!(since("Yesterday"), "2026-03-09T00:00:00Z");
        assert_eq!(since("-2h"), "2026-03-10T13:20:00Z");
        assert_eq!(since("90m ago"), "2026-03-10T13:50:00Z");
        assert_eq!(since("2 days ago"), "2026-03-08T15:20:00Z");
        assert_eq!(since("1h 30m ago"), "2026-03-10T13:50:00Z");
        assert_eq!(since("-1 week"), "2026-03-03T15:20:00Z");
        // `--until now` includes what was recorded a moment ago, within the second.
        let now = at("2026-03-10T15:20:00.250Z");
        assert_eq!(instant("until", "now", now).unwrap(), "2026-03-10T15:20:00.250Z");
    }

    #[test]
    fn absolute_times_pass_through_and_mistakes_list_every_form() {
        let now = at("2026-03-10T15:20:00Z");
        assert_eq!(instant("since", "2026-03-01", now).unwrap(), "2026-03-01");
        assert_eq!(instant("until", "2026-03-01T09:00:00+08:00", now).unwrap(), "2026-03-01T09:00:00+08:00");
        let e = instant("since", "yesterdy", now).unwrap_err();
        assert!(e.starts_with("--since `yesterdy` is not a time;"), "{e}");
        assert!(e.contains("yesterday") && e.contains("2 days ago"), "{e}");
        assert!(!e.contains("post's time zone"), "{e}");
        assert!(instant("since", "2 fortnights ago", now).is_err());
        assert!(instant("since", "ago", now).is_err());
    }

    #[test]
    fn times_ahead_count_from_now() {
        let now = at("2026-03-10T15:20:00Z");
        let until = |t: &str| ahead("until", t, now).unwrap().to_rfc3339();
        assert_eq!(until("2h"), "2026-03-10T17:20:00+00:00");
        assert_eq!(until("+3d"), "2026-03-13T15:20:00+00:00");
        assert_eq!(until("in 2 days"), "2026-03-12T15:20:00+00:00");
        assert_eq!(until("tomorrow"), "2026-03-11T00:00:00+00:00");
        assert_eq!(until("2026-04-01"), "2026-04-01T00:00:00+00:00");
        assert!(ahead("until", "soonish", now).unwrap_err().contains("in 2 days"));
    }

    #[test]
    fn a_mistyped_event_gets_the_nearest_name_and_the_list() {
        assert_eq!(events(&["delivered".into(), "failed,late".into()]).unwrap(), ["delivered", "failed", "late"]);
        let e = events(&["deliverd".into()]).unwrap_err();
        assert!(
            e.starts_with("unknown event `deliverd`; did you mean `delivered`? events are: scheduled, attempt"),
            "{e}"
        );
        let e = events(&["zzzzzz".into()]).unwrap_err();
        assert!(!e.contains("did you mean") && e.contains("retry_scheduled"), "{e}");
    }
}
