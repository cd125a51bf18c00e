//! crontab(5) schedule expressions for herald: parsing, matching, and "when does this fire next" in a time zone.
//!
//! The semantics are those of crontab(5) as implemented by Vixie cron / cronie, NOT the Quartz dialect of the
//! `cron` crate (which herald does not use):
//!
//! - Exactly five whitespace-separated fields: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or
//!   `jan`..`dec`, day-of-week 0-7 or `sun`..`sat` (0 and 7 are both Sunday, 1 is Monday). Names are three
//!   letters, case-insensitive, and may be used alone, in ranges and in lists.
//! - `*`, lists `a,b,c`, ranges `a-b` (a <= b), steps `*/n` and `a-b/n` (1 <= n <= number of values in the
//!   range, so `*/60` in the minute field means minute 0 only). `a/n` without a range is rejected (write
//!   `a-MAX/n`).
//! - The day rule: when both day-of-month and day-of-week are restricted, a day matches if EITHER matches
//!   (`0 0 13 * 5` fires on every 13th and on every Friday). As in Vixie cron, a field whose text begins with
//!   `*` counts as unrestricted (even `*/2`), and then BOTH must match (`0 0 */2 * 5` fires on odd-numbered
//!   Fridays only). `1-31` is a restriction, so `0 0 1-31 * 5` fires every day.
//! - Macros (lowercase, alone): `@yearly`/`@annually` = `0 0 1 1 *`, `@monthly` = `0 0 1 * *`, `@weekly` =
//!   `0 0 * * 0`, `@daily`/`@midnight` = `0 0 * * *`, `@hourly` = `0 * * * *`. `@reboot` is rejected.
//! - There is no seconds or year field and no Quartz `?`, `L`, `W` or `#`; these get an error that says so.
//! - An expression that can never fire (`0 0 30 2 *`, `0 0 31 4,6,9,11 *`) is a parse error. Feb 29 is possible.
//! - Errors ([`CronError`]) name the field, say what was expected, and carry the char offset of the problem.
//!
//! Time zones and DST ([`CronExpr::next_after`], [`CronExpr::is_occurrence`]): the expression is matched against
//! LOCAL wall-clock minutes in the given zone, and each matching local minute is mapped to one instant:
//! a unique local time -> that instant; an ambiguous local time (clocks go back) -> only the EARLIER instant, so
//! the repeated hour does not fire twice; a nonexistent local time (clocks go forward) -> the first instant after
//! the gap (02:30 on the spring-forward day in Europe/Berlin fires at 03:00 CEST), and all skipped minutes
//! collapse into that one firing. `next_after` returns the first mapped instant strictly after its argument.
//! Searches give up (return `None`) when nothing fires within 10 years; with the parse-time "never fires" check
//! this can only happen for rare AND-rule combinations such as `0 0 29 2 */7` (Feb 29 falling on a Sunday).

use chrono::{DateTime, Datelike, LocalResult, Months, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};

/// A parsed crontab(5) time specification (the five time fields of a crontab line, or a macro).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    /// Bit n set = minute n (0-59).
    minutes: u64,
    /// Bit n set = hour n (0-23).
    hours: u64,
    /// Bit n set = day of month n (1-31).
    dom: u64,
    /// Bit n set = month n (1-12).
    months: u64,
    /// Bit n set = weekday n, 0 = Sunday .. 6 = Saturday (a written 7 is stored as 0).
    dow: u64,
    /// The day-of-month field text began with `*` (Vixie DOM_STAR).
    dom_star: bool,
    /// The day-of-week field text began with `*` (Vixie DOW_STAR).
    dow_star: bool,
    /// The expression as written (surrounding whitespace trimmed).
    source: String,
}

/// Why an expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    pub message: String,
    /// Char (not byte) offset in the expression where the problem starts.
    pub offset: usize,
}

/// How far ahead the next-occurrence searches look before giving up.
const SEARCH_HORIZON_MONTHS: u32 = 120;

/// Longest clock-forward gap we are prepared to step over when mapping a nonexistent local time (the largest
/// real one is a skipped calendar day, e.g. Pacific/Apia on 2011-12-30).
const MAX_GAP_MINUTES: u32 = 48 * 60;

const FIELD_LIST: &str = "minute hour day-of-month month day-of-week";

const QUARTZ_HINT: &str =
    "herald uses crontab(5) 5-field syntax (minute hour day-of-month month day-of-week), which has no ?, L, W or #";

const MONTH_NAMES: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const MONTH_FULL_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DOW_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// Longest possible length of each month (February counts 29: leap years exist).
const MAX_MONTH_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    /// Three-letter names and the value of the first one.
    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            Field::Month => Some((&MONTH_NAMES, 1)),
            Field::DayOfWeek => Some((&DOW_NAMES, 0)),
            _ => None,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Field::Minute => "a number 0-59",
            Field::Hour => "a number 0-23",
            Field::DayOfMonth => "a number 1-31",
            Field::Month => "a number 1-12 or a name jan..dec",
            Field::DayOfWeek => "a number 0-7 (0 and 7 are Sunday) or a name sun..sat",
        }
    }
}

/// A piece of the expression and the char offset where it starts.
#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    offset: usize,
}

impl<'a> Tok<'a> {
    /// The sub-token starting at byte index `byte` (must be a char boundary).
    fn tail(self, byte: usize) -> Tok<'a> {
        Tok { text: &self.text[byte..], offset: self.offset + self.text[..byte].chars().count() }
    }

    /// Splits at the first `sep` into (before, after); both keep correct offsets.
    fn split_once(self, sep: char) -> Option<(Tok<'a>, Tok<'a>)> {
        let idx = self.text.find(sep)?;
        let head = Tok { text: &self.text[..idx], offset: self.offset };
        Some((head, self.tail(idx + sep.len_utf8())))
    }
}

fn err(offset: usize, message: impl Into<String>) -> CronError {
    CronError { message: message.into(), offset }
}

/// Whitespace-separated words with their char offsets.
fn words(s: &str) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (byte, char) where the current word began
    for (chars, (byte, c)) in s.char_indices().enumerate() {
        if c.is_whitespace() {
            if let Some((b, o)) = start.take() {
                out.push(Tok { text: &s[b..byte], offset: o });
            }
        } else if start.is_none() {
            start = Some((byte, chars));
        }
    }
    if let Some((b, o)) = start {
        out.push(Tok { text: &s[b..], offset: o });
    }
    out
}

/// Splits on commas, keeping empty parts (so `1,,2` can be reported).
fn list_elements(tok: Tok<'_>) -> Vec<Tok<'_>> {
    let mut out = Vec::new();
    let mut rest = tok;
    while let Some((head, tail)) = rest.split_once(',') {
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

fn bit(mask: u64, n: u32) -> bool {
    n < 64 && mask & (1u64 << n) != 0
}

/// The smallest set bit >= `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let shifted = mask >> from;
    (shifted != 0).then(|| from + shifted.trailing_zeros())
}

/// Joins words as "a", "a or b", "a, b or c".
fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// Quartz-only day tokens such as `L`, `LW`, `15W`, `5L`.
fn looks_quartz(s: &str) -> bool {
    s.chars().any(|c| matches!(c, 'L' | 'l' | 'W' | 'w')) && s.chars().all(|c| c.is_ascii_digit() || "LlWw".contains(c))
}

/// Whether the word after five fields looks like the start of a crontab command rather than the day-of-week
/// field of a seconds-first (Quartz) expression.
fn looks_like_command(tok: Tok<'_>) -> bool {
    let s = tok.text;
    s.starts_with('/')
        || !s.chars().all(|c| c.is_ascii_alphanumeric() || "*,/?#-".contains(c))
        || (s.chars().all(|c| c.is_ascii_alphabetic())
            && parse_field(Field::DayOfWeek, tok).is_err()
            && !looks_quartz(s))
}

fn parse_value(field: Field, tok: Tok<'_>) -> Result<u32, CronError> {
    let f = field.name();
    let (min, max) = field.bounds();
    let s = tok.text;
    if s.is_empty() {
        return Err(err(tok.offset, format!("{f}: a value is missing; expected {}", field.expected())));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(err(tok.offset, format!("{f}: {s} is out of range {min}-{max}"))),
        };
    }
    if let Some((names, first)) = field.names() {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // `i` < 12, so the cast cannot truncate.
            return Ok(first + i as u32);
        }
    }
    if looks_quartz(s) {
        return Err(err(tok.offset, format!("{f}: `{s}` is Quartz cron syntax; {QUARTZ_HINT}")));
    }
    if s == "*" {
        return Err(err(tok.offset, format!("{f}: `*` cannot be an end of a range; write `*` alone or `a-b`")));
    }
    if let Some((names, _)) = field.names() {
        let lower = s.to_ascii_lowercase();
        let hint = match names.iter().find(|n| lower.starts_with(**n)) {
            Some(n) => format!(" (names are three letters: `{n}`)"),
            None => String::new(),
        };
        return Err(err(tok.offset, format!("{f}: unknown name `{s}`; expected {}{hint}", field.expected())));
    }
    Err(err(tok.offset, format!("{f}: `{s}` is not a number; expected {}", field.expected())))
}

/// One list element: `*`, `v`, `a-b`, `*/n` or `a-b/n`.
fn parse_element(field: Field, elem: Tok<'_>) -> Result<u64, CronError> {
    let f = field.name();
    let (min, max) = field.bounds();
    if elem.text.is_empty() {
        return Err(err(elem.offset, format!("{f}: empty list element (stray comma?); expected {}", field.expected())));
    }
    let (range, step) = match elem.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (elem, None),
    };
    let (lo, hi, is_range) = if range.text == "*" {
        (min, max, true)
    } else if let Some((a, b)) = range.split_once('-') {
        let lo = parse_value(field, a)?;
        let hi = parse_value(field, b)?;
        if lo > hi {
            return Err(err(elem.offset, format!("{f}: range {} is backwards; a range a-b needs a <= b", range.text)));
        }
        (lo, hi, true)
    } else {
        let v = parse_value(field, range)?;
        (v, v, false)
    };
    let step = match step {
        None => 1,
        Some(s) => {
            if !is_range {
                return Err(err(
                    elem.offset,
                    format!(
                        "{f}: `{}` is not crontab(5) syntax (a step needs a range or `*`); did you mean `{}-{max}/{}`?",
                        elem.text, range.text, s.text
                    ),
                ));
            }
            if s.text.is_empty() || !s.text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(s.offset, format!("{f}: step `{}` must be a whole number >= 1", s.text)));
            }
            let count = hi - lo + 1;
            match s.text.parse::<u32>() {
                Ok(0) => return Err(err(s.offset, format!("{f}: step must be at least 1"))),
                Ok(n) if n <= count => n,
                _ => {
                    return Err(err(
                        s.offset,
                        format!("{f}: step {} is larger than the range {lo}-{hi} it applies to", s.text),
                    ));
                }
            }
        }
    };
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        bits |= 1u64 << v;
        v += step;
    }
    Ok(bits)
}

fn parse_field(field: Field, tok: Tok<'_>) -> Result<u64, CronError> {
    if let Some((i, c)) = tok.text.chars().enumerate().find(|(_, c)| matches!(c, '?' | '#')) {
        let what = if c == '?' { " (use `*` for \"any\")" } else { "" };
        return Err(err(tok.offset + i, format!("{}: `{c}` is Quartz cron syntax{what}; {QUARTZ_HINT}", field.name())));
    }
    let mut bits = 0u64;
    for elem in list_elements(tok) {
        bits |= parse_element(field, elem)?;
    }
    if field == Field::DayOfWeek && bit(bits, 7) {
        bits = (bits & !(1u64 << 7)) | 1;
    }
    Ok(bits)
}

fn first_of_next_month(d: NaiveDate) -> Option<NaiveDate> {
    if d.month() == 12 {
        NaiveDate::from_ymd_opt(d.year().checked_add(1)?, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(d.year(), d.month() + 1, 1)
    }
}

/// The first instant after the clock-forward gap that swallows the nonexistent local time `local`.
fn instant_after_gap<Tz: TimeZone>(tz: &Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let mut probe = local;
    for _ in 0..MAX_GAP_MINUTES {
        probe = probe.checked_add_signed(TimeDelta::minutes(1))?;
        let Some(first_valid) = earliest_instant(tz.from_local_datetime(&probe)) else {
            continue;
        };
        // `probe` is the first existing local minute after `local`, so the transition lies in
        // (first_valid - 60s, first_valid]; it is usually exactly `first_valid`, but zones with
        // offsets in seconds (old LMT offsets) need the search. Before the transition the local time
        // is < `local`, from it on it is > `local`.
        let mut lo = first_valid.checked_sub_signed(TimeDelta::seconds(60))?;
        let mut hi = first_valid;
        while (hi - lo).num_seconds() > 1 {
            let mid = lo.checked_add_signed(TimeDelta::seconds((hi - lo).num_seconds() / 2))?;
            if mid.with_timezone(tz).naive_local() > local {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        return Some(hi);
    }
    None
}

fn earliest_instant<Tz: TimeZone>(r: LocalResult<DateTime<Tz>>) -> Option<DateTime<Utc>> {
    match r {
        LocalResult::Single(dt) => Some(dt.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.with_timezone(&Utc).min(b.with_timezone(&Utc))),
        LocalResult::None => None,
    }
}

/// Maps a local wall-clock time to the instant it fires at (see the module docs for the DST rules).
/// Also how `at`, `start` and `until` written without an offset are read, so every kind of
/// schedule treats a daylight-saving gap and a repeated hour alike.
pub(crate) fn fire_instant<Tz: TimeZone>(tz: &Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::None => instant_after_gap(tz, local),
        other => earliest_instant(other),
    }
}

impl CronExpr {
    /// Parses a crontab(5) time specification: five fields or one of the `@` macros.
    pub fn parse(expr: &str) -> Result<CronExpr, CronError> {
        let toks = words(expr);
        let Some(first) = toks.first().copied() else {
            return Err(err(
                0,
                format!("empty schedule; expected crontab(5) 5-field syntax ({FIELD_LIST}) or a macro such as @daily"),
            ));
        };
        if first.text.starts_with('@') {
            let expansion = Self::expand_macro(first)?;
            if let Some(extra) = toks.get(1) {
                return Err(err(
                    extra.offset,
                    format!("{} must stand alone; found `{}` after it", first.text, extra.text),
                ));
            }
            let mut parsed = Self::parse_fields(&words(expansion))?;
            parsed.source = expr.trim().to_string();
            return Ok(parsed);
        }
        match toks.len() {
            5 => {}
            6 if !looks_like_command(toks[5]) => {
                return Err(err(
                    first.offset,
                    format!(
                        "herald uses crontab(5) 5-field syntax ({FIELD_LIST}); \
                         a seconds field is not supported (found 6 fields)"
                    ),
                ));
            }
            7 if !looks_like_command(toks[5]) => {
                return Err(err(
                    first.offset,
                    format!(
                        "herald uses crontab(5) 5-field syntax ({FIELD_LIST}); \
                         a seconds field is not supported, nor a year field (found 7 fields)"
                    ),
                ));
            }
            n if n < 5 => {
                let missing: Vec<&str> = FIELD_LIST.split(' ').skip(n).collect();
                return Err(err(
                    expr.chars().count(),
                    format!(
                        "expected crontab(5) 5-field syntax ({FIELD_LIST}), found {n} field{}; missing {}",
                        if n == 1 { "" } else { "s" },
                        missing.join(" ")
                    ),
                ));
            }
            n => {
                return Err(err(
                    toks[5].offset,
                    format!(
                        "expected crontab(5) 5-field syntax ({FIELD_LIST}), found {n} fields; \
                         a schedule is only the time fields, not a command (`{}`)",
                        toks[5].text
                    ),
                ));
            }
        }
        let mut parsed = Self::parse_fields(&toks)?;
        parsed.source = expr.trim().to_string();
        Ok(parsed)
    }

    fn expand_macro(tok: Tok<'_>) -> Result<&'static str, CronError> {
        if let Some((_, expansion)) = MACROS.iter().find(|(name, _)| *name == tok.text) {
            return Ok(expansion);
        }
        let lower = tok.text.to_ascii_lowercase();
        if lower == "@reboot" {
            return Err(err(
                tok.offset,
                "@reboot has no meaning for a schedule (it runs when cron starts); \
                 use a time-based expression such as @daily",
            ));
        }
        if let Some((name, _)) = MACROS.iter().find(|(name, _)| *name == lower) {
            return Err(err(tok.offset, format!("macros are lowercase in crontab(5): write `{name}`")));
        }
        let names: Vec<&str> = MACROS.iter().map(|(name, _)| *name).collect();
        Err(err(tok.offset, format!("unknown macro `{}`; expected one of {}", tok.text, join_or(&names))))
    }

    /// Parses exactly five field tokens (the caller checked the count).
    fn parse_fields(toks: &[Tok<'_>]) -> Result<CronExpr, CronError> {
        let [minute, hour, dom, month, dow] = toks else {
            return Err(err(0, format!("expected crontab(5) 5-field syntax ({FIELD_LIST})")));
        };
        let e = CronExpr {
            minutes: parse_field(Field::Minute, *minute)?,
            hours: parse_field(Field::Hour, *hour)?,
            dom: parse_field(Field::DayOfMonth, *dom)?,
            months: parse_field(Field::Month, *month)?,
            dow: parse_field(Field::DayOfWeek, *dow)?,
            dom_star: dom.text.starts_with('*'),
            dow_star: dow.text.starts_with('*'),
            source: String::new(),
        };
        // With the OR rule every month has matching weekdays, so only the AND rule can make the
        // day-of-month/month combination impossible.
        if e.dom_star || e.dow_star {
            let possible = (1..=12u32).any(|m| {
                bit(e.months, m) && MAX_MONTH_DAYS.get(m as usize - 1).is_some_and(|&n| (1..=n).any(|d| bit(e.dom, d)))
            });
            if !possible {
                let months: Vec<&str> = (1..=12u32)
                    .filter(|&m| bit(e.months, m))
                    .filter_map(|m| MONTH_FULL_NAMES.get(m as usize - 1).copied())
                    .collect();
                let hint = if e.months == 1 << 2 { " (February has at most 29 days)" } else { "" };
                return Err(err(
                    dom.offset,
                    format!("never fires: day-of-month `{}` never occurs in {}{hint}", dom.text, join_or(&months)),
                ));
            }
        }
        Ok(e)
    }

    /// The expression as written (surrounding whitespace trimmed).
    pub fn source(&self) -> &str {
        &self.source
    }

    fn day_matches(&self, d: NaiveDate) -> bool {
        let dom = bit(self.dom, d.day());
        let dow = bit(self.dow, d.weekday().num_days_from_sunday());
        if self.dom_star || self.dow_star { dom && dow } else { dom || dow }
    }

    /// Does this local wall-clock minute match (seconds ignored)?
    pub fn matches_local(&self, t: NaiveDateTime) -> bool {
        bit(self.minutes, t.minute())
            && bit(self.hours, t.hour())
            && bit(self.months, t.month())
            && self.day_matches(t.date())
    }

    /// The first matching local minute strictly after `t`, or None if none within 10 years.
    pub fn next_local_after(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = t.date().and_hms_opt(t.hour(), t.minute(), 0)?.checked_add_signed(TimeDelta::minutes(1))?;
        let limit = t.checked_add_months(Months::new(SEARCH_HORIZON_MONTHS)).unwrap_or(NaiveDateTime::MAX);
        let mut date = start.date();
        let mut hour = start.hour();
        let mut minute = start.minute();
        while date <= limit.date() {
            if !bit(self.months, date.month()) {
                date = first_of_next_month(date)?;
                (hour, minute) = (0, 0);
                continue;
            }
            let next_hour = if self.day_matches(date) { next_bit(self.hours, hour) } else { None };
            if let Some(h) = next_hour {
                let from = if h == hour { minute } else { 0 };
                if let Some(m) = next_bit(self.minutes, from) {
                    let found = date.and_hms_opt(h, m, 0)?;
                    return (found <= limit).then_some(found);
                }
                if h < 23 {
                    (hour, minute) = (h + 1, 0);
                    continue;
                }
            }
            date = date.succ_opt()?;
            (hour, minute) = (0, 0);
        }
        None
    }

    /// The first occurrence instant strictly after `after`, evaluated in `tz` with the DST rules of the module docs.
    pub fn next_after<Tz: TimeZone>(&self, tz: &Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_timezone(tz).naive_local();
        let limit = start.checked_add_months(Months::new(SEARCH_HORIZON_MONTHS)).unwrap_or(NaiveDateTime::MAX);
        let mut cursor = start;
        loop {
            let local = self.next_local_after(cursor)?;
            if local > limit {
                return None;
            }
            // Candidates mapping to <= `after` are the second pass of a repeated hour (or gap times
            // already delivered at the transition instant): skip them.
            if let Some(instant) = fire_instant(tz, local).filter(|i| *i > after) {
                return Some(instant);
            }
            cursor = local;
        }
    }

    /// Is `instant` exactly an occurrence of this schedule in `tz`, i.e. would `next_after` called just before it
    /// land on it? Used to decide whether an already-scheduled delivery still belongs to a changed schedule.
    pub fn is_occurrence<Tz: TimeZone>(&self, tz: &Tz, instant: DateTime<Utc>) -> bool {
        instant
            .checked_sub_signed(TimeDelta::nanoseconds(1))
            .is_some_and(|before| self.next_after(tz, before) == Some(instant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;

    fn p(s: &str) -> CronExpr {
        CronExpr::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn perr(s: &str) -> CronError {
        match CronExpr::parse(s) {
            Ok(e) => panic!("{s:?} should not parse, got {e:?}"),
            Err(e) => e,
        }
    }

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap().and_utc()
    }

    fn fmt_local(t: NaiveDateTime) -> String {
        t.format("%Y-%m-%d %H:%M").to_string()
    }

    fn fmt_utc(t: DateTime<Utc>) -> String {
        t.format("%Y-%m-%d %H:%M:%S").to_string()
    }

    /// The next `n` local occurrences after `start`.
    fn next_locals(e: &str, start: &str, n: usize) -> Vec<String> {
        let e = p(e);
        let mut t = local(start);
        let mut out = Vec::new();
        for _ in 0..n {
            t = e.next_local_after(t).unwrap();
            out.push(fmt_local(t));
        }
        out
    }

    /// The next `n` instants after `start` (UTC) in `tz`.
    fn next_instants<Tz: TimeZone>(e: &str, tz: &Tz, start: &str, n: usize) -> Vec<String> {
        let e = p(e);
        let mut t = utc(start);
        let mut out = Vec::new();
        for _ in 0..n {
            t = e.next_after(tz, t).unwrap();
            out.push(fmt_utc(t));
        }
        out
    }

    fn values(mask: u64) -> Vec<u32> {
        (0..64).filter(|&i| bit(mask, i)).collect()
    }

    fn same_schedule(a: &CronExpr, b: &CronExpr) -> bool {
        (a.minutes, a.hours, a.dom, a.months, a.dow, a.dom_star, a.dow_star)
            == (b.minutes, b.hours, b.dom, b.months, b.dow, b.dom_star, b.dow_star)
    }

    #[test]
    fn macros_expand_and_fire_when_expected() {
        // 2026-05-10 is a Sunday.
        let start = "2026-05-10 12:00";
        let cases = [
            ("@yearly", "0 0 1 1 *", "2027-01-01 00:00"),
            ("@annually", "0 0 1 1 *", "2027-01-01 00:00"),
            ("@monthly", "0 0 1 * *", "2026-06-01 00:00"),
            ("@weekly", "0 0 * * 0", "2026-05-17 00:00"),
            ("@daily", "0 0 * * *", "2026-05-11 00:00"),
            ("@midnight", "0 0 * * *", "2026-05-11 00:00"),
            ("@hourly", "0 * * * *", "2026-05-10 13:00"),
        ];
        for (mac, expansion, next) in cases {
            let e = p(mac);
            assert_eq!(e.source(), mac);
            assert!(same_schedule(&e, &p(expansion)), "{mac} should equal {expansion}");
            assert_eq!(next_locals(mac, start, 1), vec![next.to_string()], "{mac}");
        }
        assert_eq!(next_locals("@weekly", start, 3), ["2026-05-17 00:00", "2026-05-24 00:00", "2026-05-31 00:00"]);
        assert_eq!(p("  @daily \n").source(), "@daily");
    }

    #[test]
    fn macro_errors() {
        let e = perr("@reboot");
        assert!(e.message.contains("has no meaning for a schedule"), "{e}");
        assert_eq!(e.offset, 0);
        let e = perr("@Daily");
        assert_eq!(e.message, "macros are lowercase in crontab(5): write `@daily`");
        let e = perr("@every 5m");
        assert!(e.message.starts_with("unknown macro `@every`"), "{e}");
        let e = perr("@daily 5");
        assert_eq!(e.message, "@daily must stand alone; found `5` after it");
        assert_eq!(e.offset, 7);
        assert_eq!(p("  @hourly ").source(), "@hourly");
    }

    #[test]
    fn names_are_case_insensitive_and_work_in_ranges_and_lists() {
        assert!(same_schedule(&p("0 9 * JAN,jul-Sep mon-FRI"), &p("0 9 * 1,7-9 1-5")));
        assert!(same_schedule(&p("0 0 * Dec sUn"), &p("0 0 * 12 0")));
        assert!(same_schedule(&p("0 0 * jan-dec/3 *"), &p("0 0 * 1,4,7,10 *")));
        assert!(same_schedule(&p("0 0 * * mon,wed,fri"), &p("0 0 * * 1,3,5")));
        assert_eq!(values(p("0 0 * feb,apr-jun *").months), [2, 4, 5, 6]);
        // 2026-05-10 is a Sunday: weekdays only.
        assert_eq!(
            next_locals("30 8 * * Mon-Fri", "2026-05-08 09:00", 3),
            ["2026-05-11 08:30", "2026-05-12 08:30", "2026-05-13 08:30"]
        );
        assert_eq!(
            next_locals("0 12 1 MAR,sep *", "2026-05-10 00:00", 3),
            ["2026-09-01 12:00", "2027-03-01 12:00", "2027-09-01 12:00"]
        );
    }

    #[test]
    fn sunday_is_0_and_7_and_monday_is_1() {
        assert!(same_schedule(&p("0 0 * * 0"), &p("0 0 * * 7")));
        assert!(same_schedule(&p("0 0 * * 7"), &p("0 0 * * sun")));
        assert_eq!(values(p("0 0 * * 7").dow), [0]);
        assert_eq!(next_locals("0 0 * * 7", "2026-05-11 00:00", 2), ["2026-05-17 00:00", "2026-05-24 00:00"]);
        assert_eq!(next_locals("0 0 * * 0", "2026-05-11 00:00", 1), ["2026-05-17 00:00"]);
        assert_eq!(next_locals("0 0 * * 1", "2026-05-10 12:00", 1), ["2026-05-11 00:00"]);
        // fri-sun via 7.
        assert_eq!(values(p("0 0 * * 5-7").dow), [0, 5, 6]);
        // */2 over 0-7 is 0,2,4,6; */7 is 0 and 7, i.e. Sunday only.
        assert_eq!(values(p("0 0 * * */2").dow), [0, 2, 4, 6]);
        assert_eq!(values(p("0 0 * * */7").dow), [0]);
        assert_eq!(values(p("0 0 * * 1-7/2").dow), [0, 1, 3, 5]);
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_restricted() {
        // Every 13th and every Friday (2026-01-13 is a Tuesday, 2026-02-13 a Friday).
        assert_eq!(
            next_locals("0 0 13 * 5", "2026-01-01 00:00", 9),
            [
                "2026-01-02 00:00",
                "2026-01-09 00:00",
                "2026-01-13 00:00",
                "2026-01-16 00:00",
                "2026-01-23 00:00",
                "2026-01-30 00:00",
                "2026-02-06 00:00",
                "2026-02-13 00:00",
                "2026-02-20 00:00",
            ]
        );
        let e = p("0 0 13 * fri");
        assert!(e.matches_local(local("2026-01-13 00:00"))); // Tuesday the 13th
        assert!(e.matches_local(local("2026-01-16 00:00"))); // Friday the 16th
        assert!(!e.matches_local(local("2026-01-14 00:00")));
        // `1-31` is a restriction: OR with Fridays = every day.
        assert_eq!(
            next_locals("0 0 1-31 * 5", "2026-01-01 00:00", 3),
            ["2026-01-02 00:00", "2026-01-03 00:00", "2026-01-04 00:00"]
        );
        // A 31st-only day-of-month still ORs with the weekday, also in 30-day months.
        assert_eq!(next_locals("0 0 31 4 1", "2026-01-01 00:00", 2), ["2026-04-06 00:00", "2026-04-13 00:00"]);
    }

    #[test]
    fn star_prefixed_day_field_means_and() {
        // Odd-numbered days that are Fridays.
        assert_eq!(
            next_locals("0 0 */2 * 5", "2026-01-01 00:00", 5),
            ["2026-01-09 00:00", "2026-01-23 00:00", "2026-02-13 00:00", "2026-02-27 00:00", "2026-03-13 00:00"]
        );
        let e = p("0 0 */2 * 5");
        assert!(e.dom_star && !e.dow_star);
        assert!(!e.matches_local(local("2026-01-16 00:00"))); // Friday, but even day
        assert!(!e.matches_local(local("2026-01-11 00:00"))); // odd day, but Sunday
        // Day-of-week starting with `*` makes the day-of-month alone decide.
        assert_eq!(next_locals("0 0 13 * *,5", "2026-01-01 00:00", 2), ["2026-01-13 00:00", "2026-02-13 00:00"]);
        // Friday the 13th only when the day-of-week is `*`-prefixed.
        assert_eq!(next_locals("0 0 13 * */1", "2026-01-01 00:00", 2), ["2026-01-13 00:00", "2026-02-13 00:00"]);
        assert_eq!(next_locals("0 0 * * 5", "2026-01-01 00:00", 2), ["2026-01-02 00:00", "2026-01-09 00:00"]);
    }

    #[test]
    fn steps_ranges_and_lists() {
        assert_eq!(values(p("*/15 * * * *").minutes), [0, 15, 30, 45]);
        assert_eq!(values(p("10-50/20 * * * *").minutes), [10, 30, 50]);
        assert_eq!(values(p("1,2,5-7,30-40/5 * * * *").minutes), [1, 2, 5, 6, 7, 30, 35, 40]);
        assert_eq!(values(p("0 */6 * * *").hours), [0, 6, 12, 18]);
        assert_eq!(values(p("0 9-17/4 * * *").hours), [9, 13, 17]);
        assert_eq!(values(p("0 0 */10 * *").dom), [1, 11, 21, 31]);
        assert_eq!(values(p("0 0 1 */4 *").months), [1, 5, 9]);
        assert_eq!(values(p("*/60 * * * *").minutes), [0]);
        assert_eq!(values(p("0-59/59 * * * *").minutes), [0, 59]);
        assert_eq!(values(p("05 007 * * *").hours), [7]);
        assert_eq!(values(p("*,5 * * * *").minutes).len(), 60);
        assert_eq!(values(p("5-5/1 * * * *").minutes), [5]);
        assert_eq!(
            next_locals("*/20 9-10 * * *", "2026-05-10 09:45", 5),
            ["2026-05-10 10:00", "2026-05-10 10:20", "2026-05-10 10:40", "2026-05-11 09:00", "2026-05-11 09:20"]
        );
        assert_eq!(p(" 0  9\t* * 1 ").source(), "0  9\t* * 1");
    }

    #[test]
    fn next_local_after_is_strict_and_ignores_seconds() {
        let e = p("30 9 * * *");
        let at = local("2026-05-10 09:30");
        assert!(e.matches_local(at));
        assert!(e.matches_local(at + TimeDelta::seconds(59)));
        assert_eq!(fmt_local(e.next_local_after(at).unwrap()), "2026-05-11 09:30");
        let just_before = at - TimeDelta::milliseconds(1);
        assert_eq!(fmt_local(e.next_local_after(just_before).unwrap()), "2026-05-10 09:30");
        let just_after = at + TimeDelta::seconds(1);
        assert_eq!(fmt_local(e.next_local_after(just_after).unwrap()), "2026-05-11 09:30");
        // Crossing a year boundary.
        assert_eq!(next_locals("59 23 31 12 *", "2026-12-31 23:59", 1), ["2027-12-31 23:59"]);
    }

    #[test]
    fn february_29() {
        assert_eq!(
            next_locals("0 0 29 2 *", "2026-03-01 00:00", 3),
            ["2028-02-29 00:00", "2032-02-29 00:00", "2036-02-29 00:00"]
        );
        assert_eq!(next_locals("0 0 29 2 *", "2028-02-29 00:00", 1), ["2032-02-29 00:00"]);
        // 31st skips short months.
        assert_eq!(
            next_locals("0 0 31 * *", "2026-01-31 00:00", 3),
            ["2026-03-31 00:00", "2026-05-31 00:00", "2026-07-31 00:00"]
        );
        // Feb 29 that is also a Sunday (AND rule): 2032, then not again until 2060 (beyond 10 years).
        let e = p("0 0 29 2 */7");
        assert_eq!(fmt_local(e.next_local_after(local("2026-01-01 00:00")).unwrap()), "2032-02-29 00:00");
        assert_eq!(e.next_local_after(local("2032-03-01 00:00")), None);
        assert_eq!(e.next_after(&Berlin, utc("2032-03-01 00:00:00")), None);
    }

    #[test]
    fn never_firing_expressions_are_rejected() {
        let e = perr("0 0 30 2 *");
        assert_eq!(e.message, "never fires: day-of-month `30` never occurs in February (February has at most 29 days)");
        assert_eq!(e.offset, 4);
        let e = perr("0 0 31 4,6,9,11 *");
        assert_eq!(e.message, "never fires: day-of-month `31` never occurs in April, June, September or November");
        let e = perr("0 0 30,31 feb *");
        assert!(e.message.starts_with("never fires: day-of-month `30,31`"), "{e}");
        // Same with a `*`-prefixed weekday (still the AND rule).
        assert!(perr("0 0 30 2 */2").message.starts_with("never fires"));
        // These can fire.
        p("0 0 29 2 *");
        p("0 0 31 2,3 *");
        p("0 0 30 2 mon"); // OR rule: every Monday in February
        p("0 0 31 4,6,9,11 1");
    }

    #[test]
    fn field_count_errors() {
        let e = perr("0 * * * * *");
        assert!(
            e.message.starts_with(
                "herald uses crontab(5) 5-field syntax (minute hour day-of-month month day-of-week); \
                 a seconds field is not supported"
            ),
            "{e}"
        );
        let e = perr("0 0 12 * * ? 2026");
        assert!(e.message.contains("a seconds field is not supported"), "{e}");
        let e = perr("* * * *");
        assert_eq!(e.offset, 7);
        assert!(e.message.contains("found 4 fields; missing day-of-week"), "{e}");
        let e = perr("0 5 * * * /usr/bin/backup --all now");
        assert!(e.message.contains("found 8 fields; a schedule is only the time fields, not a command"), "{e}");
        assert_eq!(e.offset, 10);
        // A crontab line pasted with its command is not mistaken for a seconds field.
        for line in ["0 5 * * * /usr/bin/backup", "0 5 * * * echo hi", "0 5 * * * ./run.sh now"] {
            let e = perr(line);
            assert!(e.message.contains("not a command (`"), "{line:?}: {e}");
            assert_eq!(e.offset, 10, "{line:?}");
        }
        for quartz in ["0 0 12 ? * MON-FRI", "0 0 12 * * ?", "0 15 10 ? * 6L", "0 0 12 * * 2#1 2026", "*/5 * * * * *"] {
            let e = perr(quartz);
            assert!(e.message.contains("a seconds field is not supported"), "{quartz:?}: {e}");
        }
        let e = perr("   ");
        assert!(e.message.starts_with("empty schedule"), "{e}");
    }

    #[test]
    fn every_error_names_the_field_and_points_at_it() {
        // (expression, expected message start, offset)
        let cases: &[(&str, &str, usize)] = &[
            ("60 * * * *", "minute: 60 is out of range 0-59", 0),
            ("* 24 * * *", "hour: 24 is out of range 0-23", 2),
            ("* * 0 * *", "day-of-month: 0 is out of range 1-31", 4),
            ("* * 32 * *", "day-of-month: 32 is out of range 1-31", 4),
            ("* * * 13 *", "month: 13 is out of range 1-12", 6),
            ("* * * 0 *", "month: 0 is out of range 1-12", 6),
            ("* * * * 8", "day-of-week: 8 is out of range 0-7", 8),
            ("* * * * 1,9", "day-of-week: 9 is out of range 0-7", 10),
            ("99999999999 * * * *", "minute: 99999999999 is out of range 0-59", 0),
            ("* * * foo *", "month: unknown name `foo`; expected a number 1-12 or a name jan..dec", 6),
            ("* * * january *", "month: unknown name `january`", 6),
            ("* * * * monday", "day-of-week: unknown name `monday`", 8),
            ("x * * * *", "minute: `x` is not a number; expected a number 0-59", 0),
            ("* jan * * *", "hour: `jan` is not a number", 2),
            ("5-1 * * * *", "minute: range 5-1 is backwards", 0),
            ("0 0 * * sat-sun", "day-of-week: range sat-sun is backwards", 8),
            ("0 0 * dec-jan *", "month: range dec-jan is backwards", 6),
            ("*/0 * * * *", "minute: step must be at least 1", 2),
            ("*/61 * * * *", "minute: step 61 is larger than the range 0-59", 2),
            ("0-10/12 * * * *", "minute: step 12 is larger than the range 0-10", 5),
            ("0 */25 * * *", "hour: step 25 is larger than the range 0-23", 4),
            ("*/x * * * *", "minute: step `x` must be a whole number", 2),
            ("*/ * * * *", "minute: step `` must be a whole number", 2),
            ("5/15 * * * *", "minute: `5/15` is not crontab(5) syntax", 0),
            ("0 0 * jan/2 *", "month: `jan/2` is not crontab(5) syntax", 6),
            ("1,,2 * * * *", "minute: empty list element", 2),
            ("1, * * * *", "minute: empty list element", 2),
            ("5- * * * *", "minute: a value is missing", 2),
            ("-5 * * * *", "minute: a value is missing", 0),
            ("*-5 * * * *", "minute: `*` cannot be an end of a range", 0),
            ("0 0 ? * MON", "day-of-month: `?` is Quartz cron syntax", 4),
            ("0 0 * * ?", "day-of-week: `?` is Quartz cron syntax", 8),
            ("0 0 L * *", "day-of-month: `L` is Quartz cron syntax", 4),
            ("0 0 15W * *", "day-of-month: `15W` is Quartz cron syntax", 4),
            ("0 0 LW * *", "day-of-month: `LW` is Quartz cron syntax", 4),
            ("0 0 * * 5L", "day-of-week: `5L` is Quartz cron syntax", 8),
            ("0 0 * * 5#3", "day-of-week: `#` is Quartz cron syntax", 9),
            ("0 0 * * mon-", "day-of-week: a value is missing", 12),
            ("0 0 * * +1", "day-of-week: unknown name `+1`", 8),
            // Offsets count chars, not bytes (U+3000 is a 3-byte whitespace).
            ("*\u{3000}* * * 8", "day-of-week: 8 is out of range 0-7", 8),
        ];
        for &(expr, start, offset) in cases {
            let e = perr(expr);
            assert!(e.message.starts_with(start), "{expr:?}: got {:?}, want prefix {start:?}", e.message);
            assert_eq!(e.offset, offset, "{expr:?}: {}", e.message);
            assert_eq!(e.to_string(), e.message);
        }
        // Suggestions and hints.
        assert!(perr("5/15 * * * *").message.contains("did you mean `5-59/15`?"));
        assert!(perr("0 0 * jan/2 *").message.contains("did you mean `jan-12/2`?"));
        assert!(perr("0 0 * * mon/2").message.contains("did you mean `mon-7/2`?"));
        assert!(perr("0 0 * * monday").message.contains("names are three letters: `mon`"));
        assert!(perr("0 0 ? * *").message.contains("crontab(5) 5-field syntax"));
        assert!(perr("0 0 L * *").message.contains("no ?, L, W or #"));
    }

    #[test]
    fn dst_berlin_spring_forward_gap() {
        // 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC); 02:00-02:59 local do not exist.
        let e = p("30 2 * * *");
        assert_eq!(
            next_instants("30 2 * * *", &Berlin, "2026-03-28 00:00:00", 3),
            ["2026-03-28 01:30:00", "2026-03-29 01:00:00", "2026-03-30 00:30:00"]
        );
        assert!(e.is_occurrence(&Berlin, utc("2026-03-29 01:00:00")));
        assert!(!e.is_occurrence(&Berlin, utc("2026-03-29 01:30:00")));
        // Fires once, even when asked from inside the hour after the transition.
        assert_eq!(fmt_utc(e.next_after(&Berlin, utc("2026-03-29 01:00:00")).unwrap()), "2026-03-30 00:30:00");
        // A job at 03:00 lands on the same instant.
        assert_eq!(next_instants("0 3 * * *", &Berlin, "2026-03-29 00:00:00", 1), ["2026-03-29 01:00:00"]);
    }

    #[test]
    fn dst_berlin_fall_back_overlap() {
        // 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC); 02:00-02:59 local happen twice.
        let e = p("30 2 * * *");
        assert_eq!(
            next_instants("30 2 * * *", &Berlin, "2026-10-24 00:00:00", 3),
            ["2026-10-24 00:30:00", "2026-10-25 00:30:00", "2026-10-26 01:30:00"]
        );
        // Asked during the repeated hour (second pass), it does not fire again that day.
        assert_eq!(fmt_utc(e.next_after(&Berlin, utc("2026-10-25 01:10:00")).unwrap()), "2026-10-26 01:30:00");
        assert!(e.is_occurrence(&Berlin, utc("2026-10-25 00:30:00")));
        assert!(!e.is_occurrence(&Berlin, utc("2026-10-25 01:30:00")));
    }

    #[test]
    fn dst_new_york() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT (07:00 UTC).
        assert_eq!(
            next_instants("30 2 * * *", &New_York, "2026-03-07 00:00:00", 3),
            ["2026-03-07 07:30:00", "2026-03-08 07:00:00", "2026-03-09 06:30:00"]
        );
        // 2026-11-01: 02:00 EDT -> 01:00 EST (06:00 UTC); 01:00-01:59 local happen twice.
        assert_eq!(
            next_instants("30 1 * * *", &New_York, "2026-10-31 00:00:00", 3),
            ["2026-10-31 05:30:00", "2026-11-01 05:30:00", "2026-11-02 06:30:00"]
        );
        let e = p("30 1 * * *");
        assert!(e.is_occurrence(&New_York, utc("2026-11-01 05:30:00")));
        assert!(!e.is_occurrence(&New_York, utc("2026-11-01 06:30:00")));
        assert!(p("0 3 * * *").is_occurrence(&New_York, utc("2026-03-08 07:00:00")));
        assert!(p("0 2 * * *").is_occurrence(&New_York, utc("2026-03-08 07:00:00")));
        assert!(!p("0 2 * * *").is_occurrence(&New_York, utc("2026-03-08 07:00:01")));
    }

    #[test]
    fn every_15_minutes_across_both_transitions() {
        let every15 = "*/15 * * * *";
        assert_eq!(
            next_instants(every15, &Berlin, "2026-03-29 00:00:00", 6),
            [
                "2026-03-29 00:15:00", // 01:15 CET
                "2026-03-29 00:30:00",
                "2026-03-29 00:45:00",
                "2026-03-29 01:00:00", // 02:00..02:45 (nonexistent) and 03:00 CEST, once
                "2026-03-29 01:15:00", // 03:15 CEST
                "2026-03-29 01:30:00",
            ]
        );
        assert_eq!(
            next_instants(every15, &Berlin, "2026-10-25 00:00:00", 6),
            [
                "2026-10-25 00:15:00", // 02:15 CEST (first pass)
                "2026-10-25 00:30:00",
                "2026-10-25 00:45:00",
                "2026-10-25 02:00:00", // 03:00 CET; the second pass 02:00-02:45 CET does not fire
                "2026-10-25 02:15:00",
                "2026-10-25 02:30:00",
            ]
        );
        assert_eq!(
            next_instants(every15, &New_York, "2026-03-08 06:30:00", 5),
            [
                "2026-03-08 06:45:00", // 01:45 EST
                "2026-03-08 07:00:00", // 02:00..02:45 (nonexistent) and 03:00 EDT, once
                "2026-03-08 07:15:00",
                "2026-03-08 07:30:00",
                "2026-03-08 07:45:00",
            ]
        );
        assert_eq!(
            next_instants(every15, &New_York, "2026-11-01 05:00:00", 6),
            [
                "2026-11-01 05:15:00", // 01:15 EDT
                "2026-11-01 05:30:00",
                "2026-11-01 05:45:00",
                "2026-11-01 07:00:00", // 02:00 EST; 01:00-01:45 EST do not fire again
                "2026-11-01 07:15:00",
                "2026-11-01 07:30:00",
            ]
        );
        // Every instant listed is an occurrence; instants in the repeated hour are not.
        let e = p(every15);
        assert!(e.is_occurrence(&Berlin, utc("2026-03-29 01:00:00")));
        assert!(e.is_occurrence(&Berlin, utc("2026-10-25 00:45:00")));
        assert!(!e.is_occurrence(&Berlin, utc("2026-10-25 01:00:00")));
        assert!(!e.is_occurrence(&Berlin, utc("2026-10-25 01:15:00")));
        assert!(!e.is_occurrence(&Berlin, utc("2026-10-25 00:50:00")));
        assert!(!e.is_occurrence(&New_York, utc("2026-11-01 06:30:00")));
        // Utc behaves like local time.
        assert_eq!(
            next_instants(every15, &Utc, "2026-10-25 00:50:00", 2),
            ["2026-10-25 01:00:00", "2026-10-25 01:15:00"]
        );
    }

    #[test]
    fn gap_with_a_seconds_offset_fires_at_the_exact_transition() {
        // Liberia moved from -0:44:30 to UTC on 1972-01-07: local 00:00:00-00:44:29 never happened, and
        // the first instant after the gap is 00:44:30 UTC.
        let tz = chrono_tz::Africa::Monrovia;
        assert_eq!(
            next_instants("30 0 * * *", &tz, "1972-01-06 02:00:00", 2),
            ["1972-01-07 00:44:30", "1972-01-08 00:30:00"]
        );
        assert_eq!(next_instants("30 0 * * *", &tz, "1972-01-05 00:00:00", 1), ["1972-01-05 01:14:30"]);
        assert!(p("30 0 * * *").is_occurrence(&tz, utc("1972-01-07 00:44:30")));
    }

    /// splitmix64: a tiny deterministic PRNG for the comparison test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in lo..=hi.
        fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + (self.next() % u64::from(hi - lo + 1)) as u32
        }
    }

    /// One generated field: its text, its value set (computed independently of the parser) and whether it
    /// starts with `*`.
    fn gen_field(rng: &mut Rng, field: Field) -> (String, Vec<bool>, bool) {
        let (min, max) = field.bounds();
        let mut set = vec![false; 64];
        let mark = |lo: u32, hi: u32, step: u32, set: &mut [bool]| {
            let mut v = lo;
            while v <= hi {
                set[if field == Field::DayOfWeek && v == 7 { 0 } else { v as usize }] = true;
                v += step;
            }
        };
        let render = |rng: &mut Rng, v: u32| -> String {
            match field.names() {
                Some((names, first)) if v >= first && ((v - first) as usize) < names.len() && rng.range(0, 2) == 0 => {
                    let name = names[(v - first) as usize];
                    name.chars().map(|c| if rng.range(0, 1) == 0 { c.to_ascii_uppercase() } else { c }).collect()
                }
                _ => v.to_string(),
            }
        };
        match rng.range(0, 9) {
            0..=2 => {
                mark(min, max, 1, &mut set);
                ("*".to_string(), set, true)
            }
            3 => {
                let step = rng.range(1, (max - min + 1).min(12));
                mark(min, max, step, &mut set);
                (format!("*/{step}"), set, true)
            }
            _ => {
                let mut parts = Vec::new();
                for _ in 0..rng.range(1, 3) {
                    let a = rng.range(min, max);
                    match rng.range(0, 2) {
                        0 => {
                            mark(a, a, 1, &mut set);
                            parts.push(render(rng, a));
                        }
                        kind => {
                            let b = rng.range(a, max);
                            let step = if kind == 2 { rng.range(1, b - a + 1) } else { 1 };
                            mark(a, b, step, &mut set);
                            let (ra, rb) = (render(rng, a), render(rng, b));
                            parts.push(if kind == 2 { format!("{ra}-{rb}/{step}") } else { format!("{ra}-{rb}") });
                        }
                    }
                }
                (parts.join(","), set, false)
            }
        }
    }

    #[test]
    fn next_local_after_agrees_with_brute_force() {
        const EXPRESSIONS: usize = 400;
        const WINDOW_DAYS: i64 = 400;
        const MAX_MATCHES: usize = 40;
        let fields = [Field::Minute, Field::Hour, Field::DayOfMonth, Field::Month, Field::DayOfWeek];
        let mut rng = Rng(0x5eed_2026);
        let (mut compared, mut never, mut occurrences) = (0, 0, 0);
        for _ in 0..EXPRESSIONS {
            let generated: Vec<(String, Vec<bool>, bool)> = fields.iter().map(|&f| gen_field(&mut rng, f)).collect();
            let text = generated.iter().map(|g| g.0.as_str()).collect::<Vec<_>>().join(" ");
            let [min_s, hour_s, dom_s, mon_s, dow_s] = [0, 1, 2, 3, 4].map(|i| &generated[i].1);
            let and_rule = generated[2].2 || generated[4].2;
            let possible =
                !and_rule || (1..=12).any(|m| mon_s[m] && (1..=MAX_MONTH_DAYS[m - 1] as usize).any(|d| dom_s[d]));
            let reference = |t: NaiveDateTime| -> bool {
                let dom_ok = dom_s[t.day() as usize];
                let dow_ok = dow_s[t.weekday().num_days_from_sunday() as usize];
                min_s[t.minute() as usize]
                    && hour_s[t.hour() as usize]
                    && mon_s[t.month() as usize]
                    && if and_rule { dom_ok && dow_ok } else { dom_ok || dow_ok }
            };
            let e = match CronExpr::parse(&text) {
                Ok(e) => {
                    assert!(possible, "{text:?} can never fire but parsed");
                    e
                }
                Err(err) => {
                    assert!(!possible, "{text:?} failed to parse: {err}");
                    assert!(err.message.starts_with("never fires"), "{text:?}: {err}");
                    never += 1;
                    continue;
                }
            };
            let start = NaiveDate::from_ymd_opt(rng.range(1995, 2045) as i32, rng.range(1, 12), rng.range(1, 28))
                .and_then(|d| d.and_hms_opt(rng.range(0, 23), rng.range(0, 59), rng.range(0, 59)))
                .unwrap();
            let window_end = start + TimeDelta::days(WINDOW_DAYS);
            // Brute force: every minute in the window.
            let mut expected = Vec::new();
            let mut t = start.with_second(0).unwrap() + TimeDelta::minutes(1);
            while t <= window_end && expected.len() < MAX_MATCHES {
                let hit = reference(t);
                if hit {
                    expected.push(t);
                }
                if hit || t.minute() == 7 {
                    assert_eq!(e.matches_local(t), hit, "{text:?} at {t}");
                }
                t += TimeDelta::minutes(1);
            }
            let mut cursor = start;
            for want in &expected {
                let got = e.next_local_after(cursor);
                assert_eq!(got, Some(*want), "{text:?} after {cursor}");
                cursor = *want;
            }
            if expected.len() < MAX_MATCHES {
                let got = e.next_local_after(cursor);
                assert!(got.is_none_or(|g| g > window_end), "{text:?} after {cursor}: got {got:?}");
            }
            occurrences += expected.len();
            compared += 1;
        }
        assert!(compared > 300, "only {compared} expressions compared");
        assert!(never > 0 || compared == EXPRESSIONS);
        assert!(occurrences > 5_000, "only {occurrences} occurrences compared");
    }
}
