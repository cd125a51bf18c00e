//! When a post is due: a one-shot time or a crontab(5) expression in a time
//! zone, bounded by optional `start` and `until`.

pub mod cron;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use chrono_tz::Tz;

pub use self::cron::{CronError, CronExpr};

/// How a post recurs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recurrence {
    /// Exactly once, at this instant.
    Once(DateTime<Utc>),
    /// At every match of a crontab(5) expression, in the schedule's time zone.
    Cron(CronExpr),
}

/// A post's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub recurrence: Recurrence,
    pub tz: Tz,
    /// No occurrence before this instant (cron only).
    pub start: Option<DateTime<Utc>>,
    /// No occurrence after this instant (cron only).
    pub until: Option<DateTime<Utc>>,
}

impl Schedule {
    /// The first occurrence strictly after `after`, if any.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = match &self.recurrence {
            Recurrence::Once(at) => (*at > after).then_some(*at),
            Recurrence::Cron(expr) => {
                let from = match self.start {
                    Some(start) if start > after => start - ChronoDuration::milliseconds(1),
                    _ => after,
                };
                expr.next_after(&self.tz, from)
            }
        }?;
        match self.until {
            Some(until) if next > until => None,
            _ => Some(next),
        }
    }

    /// The first occurrence at or after `t`.
    pub fn first_from(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_after(t - ChronoDuration::milliseconds(1))
    }

    /// Is `t` one of this schedule's occurrences?
    pub fn is_occurrence(&self, t: DateTime<Utc>) -> bool {
        self.first_from(t) == Some(t)
    }

    /// The next `n` occurrences strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// A stable text that changes whenever the schedule's meaning changes.
    pub fn canonical(&self) -> String {
        let what = match &self.recurrence {
            Recurrence::Once(at) => format!("at {}", at.to_rfc3339()),
            Recurrence::Cron(expr) => format!("cron {}", expr.source()),
        };
        let bound = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        format!("{what} tz {} start {} until {}", self.tz, bound(self.start), bound(self.until))
    }

    /// A short description for people, such as `cron "0 9 * * 1" (Asia/Shanghai)`.
    pub fn describe(&self) -> String {
        match &self.recurrence {
            Recurrence::Once(at) => format!("once at {}", at.with_timezone(&self.tz).format("%Y-%m-%d %H:%M:%S %Z")),
            Recurrence::Cron(expr) => format!("cron \"{}\" ({})", expr.source(), self.tz),
        }
    }

    pub fn is_recurring(&self) -> bool {
        matches!(self.recurrence, Recurrence::Cron(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn start_and_until_bound_a_cron_schedule() {
        let schedule = Schedule {
            recurrence: Recurrence::Cron(CronExpr::parse("0 9 * * *").unwrap()),
            tz: "Asia/Shanghai".parse().unwrap(),
            start: Some(utc("2026-12-03T01:00:00Z")),
            until: Some(utc("2026-12-05T01:00:00Z")),
        };
        let got = schedule.upcoming(utc("2026-12-01T00:00:00Z"), 10);
        assert_eq!(got, vec![utc("2026-12-03T01:00:00Z"), utc("2026-12-04T01:00:00Z"), utc("2026-12-05T01:00:00Z")]);
        assert!(schedule.is_occurrence(utc("2026-12-04T01:00:00Z")));
        assert!(!schedule.is_occurrence(utc("2026-12-04T01:01:00Z")));
        assert!(!schedule.is_occurrence(utc("2026-12-02T01:00:00Z")));
    }

    #[test]
    fn a_one_shot_schedule_has_one_occurrence() {
        let at = utc("2026-12-01T01:00:00Z");
        let schedule = Schedule { recurrence: Recurrence::Once(at), tz: Tz::UTC, start: None, until: None };
        assert_eq!(schedule.upcoming(utc("2026-11-01T00:00:00Z"), 3), vec![at]);
        assert_eq!(schedule.next_after(at), None);
        assert!(schedule.is_occurrence(at));
    }
}
