//! Small value types of the config language: durations ("90s", "1h 30m"),
//! rate limits ("20/hour"), points in time (RFC 3339 or local) and the
//! misfire policy.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Parse a human duration such as `30s`, `5m`, `1h 30m`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); expected a number and a unit, such as \"30s\", \"5m\", \"1h 30m\"")
    })
}

/// At most `count` requests in any window of `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    pub count: u32,
    #[serde(with = "humantime_serde_like")]
    pub per: Duration,
}

impl Rate {
    /// Parse `N/second`, `N/minute`, `N/hour`, `N/day`, or `N/<duration>` such as `5/10m`.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let expected = "expected a rate such as \"20/hour\", \"1/minute\" or \"5/10m\"";
        let (count, per) = text.split_once('/').ok_or_else(|| format!("`{text}` is not a rate; {expected}"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a whole number of requests; {expected}", count.trim()))?;
        if count == 0 {
            return Err(format!("a rate of 0 would never publish; {expected}"));
        }
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => parse_duration(other).map_err(|_| format!("`{other}` is not a time window; {expected}"))?,
        };
        if per.is_zero() {
            return Err(format!("the window of a rate must be longer than zero; {expected}"));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

mod humantime_serde_like {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// What to do with occurrences missed while herald was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Misfire {
    /// Skip every missed occurrence (each is recorded in the audit log).
    Skip,
    /// Publish the most recent missed occurrence if it is within the grace
    /// window; skip the others.
    #[default]
    Latest,
    /// Publish every missed occurrence within the grace window; skip older ones.
    All,
}

impl fmt::Display for Misfire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Misfire::Skip => "skip",
            Misfire::Latest => "latest",
            Misfire::All => "all",
        })
    }
}

/// A point in time as written in the config: a TOML date-time or a string,
/// with an offset (RFC 3339) or without one (local to the post's time zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeValue {
    Absolute(DateTime<Utc>),
    Local(NaiveDateTime),
}

impl TimeValue {
    pub fn parse(text: &str) -> Result<TimeValue, String> {
        let text = text.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(TimeValue::Absolute(t.with_timezone(&Utc)));
        }
        for format in
            ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S%.f"]
        {
            if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
                return Ok(TimeValue::Local(t));
            }
        }
        Err(format!(
            "`{text}` is not a date and time; expected RFC 3339 such as 2026-12-01T09:00:00+08:00, \
             or a local time such as 2026-12-01T09:00 in the post's time zone"
        ))
    }

    /// The instant this value names in `tz`, by the rules `cron` follows: a
    /// local time that does not exist (clocks go forward) is the first
    /// instant after the gap; one that happens twice, the earlier instant.
    pub fn resolve(&self, tz: &Tz) -> Result<DateTime<Utc>, String> {
        match self {
            TimeValue::Absolute(t) => Ok(*t),
            TimeValue::Local(local) => crate::calendar::cron::fire_instant(tz, *local)
                .ok_or_else(|| format!("{local} cannot be placed in {tz}; give the time with an offset")),
        }
    }
}

impl<'de> Deserialize<'de> for TimeValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TimeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a date and time (RFC 3339, or local time without an offset)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TimeValue, E> {
                TimeValue::parse(v).map_err(E::custom)
            }
            // TOML date-times arrive as a one-entry map holding their text.
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TimeValue, A::Error> {
                let Some((_, text)) = map.next_entry::<String, String>()? else {
                    return Err(serde::de::Error::custom("empty date-time"));
                };
                TimeValue::parse(&text).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(Rate::parse("20/hour").unwrap(), Rate { count: 20, per: Duration::from_secs(3600) });
        assert_eq!(Rate::parse("5/10m").unwrap(), Rate { count: 5, per: Duration::from_secs(600) });
        assert_eq!(Rate::parse(" 1 / minute ").unwrap(), Rate { count: 1, per: Duration::from_secs(60) });
        assert!(Rate::parse("0/hour").unwrap_err().contains("never publish"));
        assert!(Rate::parse("20 per hour").unwrap_err().contains("20/hour"));
        assert!(Rate::parse("x/hour").unwrap_err().contains("whole number"));
        assert!(Rate::parse("3/fortnight").unwrap_err().contains("time window"));
    }

    #[test]
    fn times_with_offset_and_local_times() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        let abs = TimeValue::parse("2026-12-01T09:00:00+08:00").unwrap();
        assert_eq!(abs.resolve(&tz).unwrap().to_rfc3339(), "2026-12-01T01:00:00+00:00");
        let local = TimeValue::parse("2026-12-01T09:00").unwrap();
        assert_eq!(local.resolve(&tz).unwrap().to_rfc3339(), "2026-12-01T01:00:00+00:00");
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let gap = TimeValue::parse("2026-03-29T02:30:00").unwrap();
        // Inside the spring-forward gap: the first instant after it (03:00 CEST), as for cron.
        assert_eq!(gap.resolve(&berlin).unwrap().to_rfc3339(), "2026-03-29T01:00:00+00:00");
        let ambiguous = TimeValue::parse("2026-10-25T02:30:00").unwrap();
        assert_eq!(ambiguous.resolve(&berlin).unwrap().to_rfc3339(), "2026-10-25T00:30:00+00:00");
        assert!(TimeValue::parse("tomorrow 9am").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn durations_name_the_expected_form() {
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("-5s").unwrap_err().contains("\"30s\""));
    }
}
