//! Property tests (proptest) of herald's core:
//!
//! - `cron`: the crontab(5) evaluator against a reference written here from
//!   crontab(5) and the DST rules documented in `calendar/cron.rs`, by brute
//!   force over UTC minutes, for random expressions, time zones and instants
//!   around daylight-saving changes;
//! - `reconcile`: applying config A then B leaves the same pending deliveries
//!   and content as applying B alone, and applying A twice changes nothing;
//! - `state_machine`: random outcomes, retries, cancels, reloads and crashes
//!   driven through the real scheduler never take a delivery out of a
//!   terminal state except through `retry`, and attempts never exceed
//!   `max_attempts`;
//! - `loader`: arbitrary bytes and mutations of `config.example.toml` never
//!   make the config loader panic.
//!
//! Case counts are modest so the suite stays fast; raise them with
//! `PROPTEST_CASES=N` for a longer search (see RELIABILITY.md).

#[allow(dead_code)]
#[path = "daemon/helpers.rs"]
mod helpers;

use std::path::Path;

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Timelike, Utc};
use proptest::prelude::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("RFC 3339").with_timezone(&Utc)
}

/// Cases from `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------
// cron
// ---------------------------------------------------------------------------

mod cron {
    use super::*;
    use chrono::Datelike;
    use chrono_tz::Tz;
    use herald::calendar::CronExpr;

    /// The zones the brief names, plus three with unusual transitions:
    /// São Paulo (DST gap at midnight, until 2019), Chatham (+12:45/+13:45)
    /// and Kolkata (+5:30, no DST).
    pub const ZONES: &[&str] = &[
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Shanghai",
        "UTC",
        "America/Sao_Paulo",
        "Pacific/Chatham",
        "Asia/Kolkata",
    ];

    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

    /// A crontab(5) time specification as the reference understands it:
    /// one set of allowed values per field, and whether the day fields are
    /// restricted (their text does not begin with `*`).
    #[derive(Debug, Clone)]
    pub struct Reference {
        minute: Vec<bool>,
        hour: Vec<bool>,
        dom: Vec<bool>,
        month: Vec<bool>,
        dow: Vec<bool>,
        dom_restricted: bool,
        dow_restricted: bool,
    }

    /// Field number -> (lowest, highest value, names and the value of the first).
    fn field_range(field: usize) -> (u32, u32, &'static [&'static str], u32) {
        match field {
            0 => (0, 59, &[], 0),
            1 => (0, 23, &[], 0),
            2 => (1, 31, &[], 0),
            3 => (1, 12, &MONTHS, 1),
            _ => (0, 7, &DAYS, 0),
        }
    }

    fn ref_value(text: &str, field: usize) -> Option<u32> {
        let (lo, hi, names, first) = field_range(field);
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let v: u32 = text.parse().ok()?;
            return (lo..=hi).contains(&v).then_some(v);
        }
        let lower = text.to_ascii_lowercase();
        names.iter().position(|n| *n == lower).map(|i| first + i as u32)
    }

    /// One field: a comma list of `*`, `v`, `a-b`, `*/n`, `a-b/n`. Herald's
    /// documented restrictions: a <= b, 1 <= n <= the number of values in
    /// the range, and a step needs a range or `*`.
    fn ref_field(text: &str, field: usize) -> Option<Vec<bool>> {
        let (lo, hi, _, _) = field_range(field);
        let mut set = vec![false; hi as usize + 1];
        for element in text.split(',') {
            let (range, step) = match element.split_once('/') {
                Some((r, s)) => (r, Some(s)),
                None => (element, None),
            };
            let (a, b, is_range) = if range == "*" {
                (lo, hi, true)
            } else if let Some((a, b)) = range.split_once('-') {
                (ref_value(a, field)?, ref_value(b, field)?, true)
            } else {
                let v = ref_value(range, field)?;
                (v, v, false)
            };
            if a > b {
                return None;
            }
            let step = match step {
                None => 1,
                Some(s) => {
                    if !is_range || s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    let n: u32 = s.parse().ok()?;
                    if n == 0 || n > b - a + 1 {
                        return None;
                    }
                    n
                }
            };
            let mut v = a;
            while v <= b {
                set[v as usize] = true;
                v += step;
            }
        }
        if field == 4 {
            // 7 is Sunday too.
            if set[7] {
                set[0] = true;
            }
            set.truncate(7);
        }
        Some(set)
    }

    /// Parse `text` per crontab(5) (five fields or a macro); `None` if
    /// herald must reject it.
    pub fn reference(text: &str) -> Option<Reference> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let expanded;
        let words = match words.as_slice() {
            [one] if one.starts_with('@') => {
                expanded = match *one {
                    "@yearly" | "@annually" => "0 0 1 1 *",
                    "@monthly" => "0 0 1 * *",
                    "@weekly" => "0 0 * * 0",
                    "@daily" | "@midnight" => "0 0 * * *",
                    "@hourly" => "0 * * * *",
                    _ => return None,
                };
                expanded.split_whitespace().collect::<Vec<_>>()
            }
            five if five.len() == 5 => five.to_vec(),
            _ => return None,
        };
        let r = Reference {
            minute: ref_field(words[0], 0)?,
            hour: ref_field(words[1], 1)?,
            dom: ref_field(words[2], 2)?,
            month: ref_field(words[3], 3)?,
            dow: ref_field(words[4], 4)?,
            dom_restricted: !words[2].starts_with('*'),
            dow_restricted: !words[4].starts_with('*'),
        };
        // Never fires: under the AND rule, no chosen month has a chosen day
        // (February counts 29 days: leap years exist).
        let and_rule = !(r.dom_restricted && r.dow_restricted);
        if and_rule {
            let lengths = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let possible = (1..=12).any(|m| r.month[m] && (1..=lengths[m - 1]).any(|d| r.dom[d]));
            if !possible {
                return None;
            }
        }
        Some(r)
    }

    impl Reference {
        /// Does this local wall-clock minute match?
        pub fn matches(&self, t: NaiveDateTime) -> bool {
            let dom = self.dom[t.day() as usize];
            let dow = self.dow[t.weekday().num_days_from_sunday() as usize];
            let day = if self.dom_restricted && self.dow_restricted { dom || dow } else { dom && dow };
            self.minute[t.minute() as usize] && self.hour[t.hour() as usize] && self.month[t.month() as usize] && day
        }
    }

    /// The wall-clock time at instant `t` in `tz`: the only thing the
    /// reference asks of the time zone database (no local-to-UTC mapping).
    fn local(tz: &Tz, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(tz).naive_local()
    }

    /// Walks UTC minute by minute and says which instants fire:
    /// - an instant whose local time matches and is seen for the first time
    ///   (the second pass of a repeated hour does not fire again);
    /// - the first instant after a gap (clocks went forward) when any local
    ///   minute skipped by the gap matches, once for all of them.
    pub struct Scanner<'a> {
        reference: &'a Reference,
        tz: Tz,
        /// The next instant to look at (a whole minute).
        t: DateTime<Utc>,
        prev_local: NaiveDateTime,
        /// The latest local time seen so far.
        high_water: NaiveDateTime,
    }

    impl<'a> Scanner<'a> {
        /// Ready to report instants strictly after `after`.
        pub fn new(reference: &'a Reference, tz: Tz, after: DateTime<Utc>) -> Self {
            let floor = after.with_second(0).and_then(|t| t.with_nanosecond(0)).expect("whole minute");
            let first = floor + Duration::minutes(1);
            // Local times of the previous 3 hours count as seen (no zone here
            // moves its clocks back by more than an hour).
            let mut high_water = local(&tz, first - Duration::hours(3));
            let mut s = first - Duration::hours(3);
            while s < first {
                high_water = high_water.max(local(&tz, s));
                s += Duration::minutes(1);
            }
            Scanner { reference, tz, t: first, prev_local: local(&tz, first - Duration::minutes(1)), high_water }
        }

        /// The next firing instant, if one comes before `limit`.
        pub fn next_before(&mut self, limit: DateTime<Utc>) -> Option<DateTime<Utc>> {
            while self.t <= limit {
                let t = self.t;
                let now = local(&self.tz, t);
                let fresh = now > self.high_water;
                let mut fires = fresh && self.reference.matches(now);
                if now - self.prev_local > Duration::minutes(1) {
                    let mut skipped = self.prev_local + Duration::minutes(1);
                    while skipped < now && !fires {
                        fires = self.reference.matches(skipped);
                        skipped += Duration::minutes(1);
                    }
                }
                self.high_water = self.high_water.max(now);
                self.prev_local = now;
                self.t = t + Duration::minutes(1);
                if fires {
                    return Some(t);
                }
            }
            None
        }
    }

    /// Instants where `tz` changes its offset during `year`, to the minute.
    fn transitions(tz: &Tz, year: i32) -> Vec<DateTime<Utc>> {
        use chrono::Offset;
        let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc();
        let mut out = Vec::new();
        let mut t = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0).unwrap();
        while t < end {
            let next = t + Duration::hours(6);
            if offset(t) != offset(next) {
                let (mut lo, mut hi) = (t, next);
                while hi - lo > Duration::minutes(1) {
                    let mid = lo + Duration::minutes((hi - lo).num_minutes() / 2);
                    if offset(mid) == offset(t) { lo = mid } else { hi = mid }
                }
                out.push(hi);
            }
            t = next;
        }
        out
    }

    /// One element of a field: valid most of the time, sometimes not.
    fn element(field: usize) -> BoxedStrategy<String> {
        let (lo, hi, names, first) = field_range(field);
        let value = move |with_names: bool| -> BoxedStrategy<String> {
            let number = (lo..=hi + 1).prop_map(|v| v.to_string()).boxed();
            if names.is_empty() || !with_names {
                return number;
            }
            let named = (0..names.len(), any::<bool>())
                .prop_map(move |(i, upper)| if upper { names[i].to_uppercase() } else { names[i].to_string() })
                .boxed();
            let _ = first;
            prop_oneof![3 => number, 1 => named].boxed()
        };
        let count = hi - lo + 1;
        prop_oneof![
            3 => Just("*".to_string()),
            2 => (1..=count + 1).prop_map(|n| format!("*/{n}")),
            4 => value(true),
            2 => (value(true), value(true)).prop_map(|(a, b)| format!("{a}-{b}")),
            1 => (value(false), value(false), 1..=count).prop_map(|(a, b, n)| format!("{a}-{b}/{n}")),
            1 => (value(false), 1..=count).prop_map(|(a, n)| format!("{a}/{n}")),
        ]
        .boxed()
    }

    fn field(field: usize) -> BoxedStrategy<String> {
        let list = proptest::collection::vec(element(field), 1..=3).prop_map(|parts| parts.join(","));
        match field {
            // Keep day and month fields mostly `*`, so that most expressions
            // fire within the reference's horizon.
            2 | 3 => prop_oneof![3 => Just("*".to_string()), 2 => list].boxed(),
            _ => list.boxed(),
        }
    }

    pub fn expression() -> impl Strategy<Value = String> {
        let fields =
            (field(0), field(1), field(2), field(3), field(4), proptest::sample::select(vec![" ", "  ", "\t"]))
                .prop_map(|(m, h, dom, mon, dow, sep)| [m, h, dom, mon, dow].join(sep));
        let macros = proptest::sample::select(vec![
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "@reboot",
            "@Daily",
        ])
        .prop_map(str::to_string);
        prop_oneof![12 => fields, 1 => macros]
    }

    /// A zone and an instant: most near one of the zone's offset changes in
    /// a random year, the rest anywhere in that year.
    pub fn zone_and_instant() -> impl Strategy<Value = (Tz, DateTime<Utc>)> {
        (
            proptest::sample::select(ZONES.to_vec()),
            1995i32..=2037,
            any::<bool>(),
            any::<prop::sample::Index>(),
            -3 * 24 * 3600i64..2 * 24 * 3600,
            0i64..366 * 24 * 3600,
            0u32..1000,
        )
            .prop_map(|(zone, year, near, pick, around, anywhere, millis)| {
                let tz: Tz = zone.parse().expect("zone");
                let changes = transitions(&tz, year);
                let base = if near && !changes.is_empty() {
                    *pick.get(&changes) + Duration::seconds(around)
                } else {
                    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(anywhere)
                };
                (tz, base + Duration::milliseconds(i64::from(millis)))
            })
    }

    /// How far the brute force looks.
    pub const HORIZON_DAYS: i64 = 120;

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

        #[test]
        fn cron_agrees_with_a_brute_force_reference(text in expression(), (tz, after) in zone_and_instant()) {
            let reference = reference(&text);
            let parsed = CronExpr::parse(&text);
            prop_assert_eq!(
                reference.is_some(),
                parsed.is_ok(),
                "`{}`: reference {} but herald {:?}", text, if reference.is_some() { "accepts" } else { "rejects" }, parsed
            );
            let (Some(reference), Ok(expr)) = (reference, parsed) else { return Ok(()) };
            let horizon = after + Duration::days(HORIZON_DAYS);
            let mut scanner = Scanner::new(&reference, tz, after);
            let mut t = after;
            // Four successive occurrences: the chain crosses the transition.
            for _ in 0..4 {
                let got = expr.next_after(&tz, t);
                let want = scanner.next_before(horizon);
                match (got, want) {
                    (Some(g), Some(w)) => prop_assert_eq!(
                        g, w,
                        "`{}` in {} after {}: herald says {} ({} local), the reference {} ({} local)",
                        text, tz, t, g, local(&tz, g), w, local(&tz, w)
                    ),
                    (None, None) => break,
                    (Some(g), None) => {
                        // Beyond the horizon: the reference saw nothing before it.
                        prop_assert!(g > horizon, "`{}` in {} after {}: herald says {}, the reference nothing", text, tz, t, g);
                        break;
                    }
                    (None, Some(w)) => prop_assert!(false, "`{}` in {} after {}: herald says never, the reference {}", text, tz, t, w),
                }
                let g = got.expect("matched above");
                prop_assert!(expr.is_occurrence(&tz, g), "`{}`: {} is not an occurrence of itself", text, g);
                t = g;
            }
        }
    }

    #[test]
    fn the_reference_knows_the_documented_dst_examples() {
        // From cron.rs: 02:30 on the spring-forward day in Berlin fires at
        // 03:00 CEST; in the fall-back hour only the first pass fires.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let r = reference("30 2 * * *").unwrap();
        let mut s = Scanner::new(&r, berlin, utc("2026-03-28T12:00:00Z"));
        assert_eq!(s.next_before(utc("2026-04-01T00:00:00Z")), Some(utc("2026-03-29T01:00:00Z")));
        let mut s = Scanner::new(&r, berlin, utc("2026-10-24T12:00:00Z"));
        assert_eq!(s.next_before(utc("2026-10-27T00:00:00Z")), Some(utc("2026-10-25T00:30:00Z")));
        assert_eq!(s.next_before(utc("2026-10-27T00:00:00Z")), Some(utc("2026-10-26T01:30:00Z")));
        assert!(reference("0 0 30 2 *").is_none());
        assert!(reference("0 0 30 2 5").is_some(), "OR rule: Fridays in February");
        assert!(reference("*/60 * * * *").is_some());
        assert!(reference("5/10 * * * *").is_none());
    }
}

// ---------------------------------------------------------------------------
// reconcile
// ---------------------------------------------------------------------------

/// Small random configs, written as TOML and read by the real loader.
mod configs {
    use super::*;

    pub const NOW: &str = "2026-12-01T00:00:00Z";
    pub const ACCOUNTS: [&str; 3] = ["wuhan-hook", "xian-hook", "province-toot"];
    const BODIES: [&str; 4] =
        ["Beware of phone fraud.", "反诈提醒：陌生来电要求转账，一律是诈骗。", "Two\nlines", "Ne répondez pas."];
    const CRONS: [&str; 6] = ["0 9 * * *", "*/30 * * * *", "0 0 * * 1", "15 8 1 * *", "0 12 * * mon-fri", "30 2 * * *"];
    const ZONES: [&str; 3] = ["Asia/Shanghai", "Europe/Berlin", "UTC"];

    #[derive(Debug, Clone)]
    pub enum When {
        /// Minutes from now (negative: already past).
        At(i64),
        /// A cron expression, a zone, and optional (start, until) in hours from now.
        Cron(usize, usize, Option<(i64, i64)>),
    }

    #[derive(Debug, Clone)]
    pub struct PostSpec {
        pub id: usize,
        pub when: When,
        /// Indexes into the accounts, 3 meaning the group.
        pub targets: Vec<usize>,
        pub body: usize,
        pub title: bool,
    }

    #[derive(Debug, Clone)]
    pub struct ConfigSpec {
        pub accounts: [bool; 3],
        pub group: bool,
        pub posts: Vec<PostSpec>,
    }

    fn when() -> impl Strategy<Value = When> {
        prop_oneof![
            (-240i64..2 * 24 * 60).prop_map(When::At),
            (0..CRONS.len(), 0..ZONES.len(), proptest::option::of((-48i64..96, 0i64..240)))
                .prop_map(|(c, z, bounds)| When::Cron(c, z, bounds)),
        ]
    }

    fn post(id: usize) -> impl Strategy<Value = PostSpec> {
        (when(), proptest::collection::vec(0usize..4, 1..=3), 0..BODIES.len(), any::<bool>())
            .prop_map(move |(when, targets, body, title)| PostSpec { id, when, targets, body, title })
    }

    pub fn config() -> impl Strategy<Value = ConfigSpec> {
        (
            any::<[bool; 3]>(),
            any::<bool>(),
            proptest::option::of(post(0)),
            proptest::option::of(post(1)),
            proptest::option::of(post(2)),
            proptest::option::of(post(3)),
        )
            .prop_map(|(accounts, group, a, b, c, d)| ConfigSpec {
                accounts,
                group,
                posts: [a, b, c, d].into_iter().flatten().collect(),
            })
    }

    fn quote(text: &str) -> String {
        serde_json::to_string(text).expect("a string")
    }

    fn rfc3339(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    impl ConfigSpec {
        /// The config as TOML. Every post id keeps one misfire policy and
        /// grace across configs: changing them does not bring back what was
        /// already skipped (skipped is terminal; `herald retry` revives it).
        pub fn toml(&self) -> String {
            let now = utc(NOW);
            let mut accounts = self.accounts;
            if !accounts.iter().any(|a| *a) {
                accounts[0] = true;
            }
            let present: Vec<&str> = ACCOUNTS.iter().zip(accounts).filter(|(_, p)| *p).map(|(a, _)| *a).collect();
            let mut out = String::from("[daemon]\nstate_dir = \"state\"\ntime_zone = \"Asia/Shanghai\"\n");
            for (i, account) in ACCOUNTS.iter().enumerate() {
                if !accounts[i] {
                    continue;
                }
                if account.ends_with("toot") {
                    out += &format!(
                        "\n[accounts.{account}]\nplatform = \"mastodon\"\nbase_url = \"http://127.0.0.1:9\"\naccess_token = \"t\"\n"
                    );
                } else {
                    out += &format!(
                        "\n[accounts.{account}]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/{account}\"\n"
                    );
                }
            }
            let group: Vec<&str> = present.iter().take(2).copied().collect();
            if self.group {
                out += &format!(
                    "\n[groups]\ncities = [{}]\n",
                    group.iter().map(|a| quote(a)).collect::<Vec<_>>().join(", ")
                );
            }
            for p in &self.posts {
                let mut targets: Vec<&str> = p
                    .targets
                    .iter()
                    .filter_map(|&t| match t {
                        3 if self.group => Some("cities"),
                        3 => None,
                        i => accounts[i].then_some(ACCOUNTS[i]),
                    })
                    .collect();
                targets.dedup();
                if targets.is_empty() {
                    targets.push(present[0]);
                }
                let (misfire, grace) = [("latest", "1h"), ("all", "30m"), ("skip", "1h"), ("latest", "3h")][p.id];
                out += &format!(
                    "\n[[posts]]\nid = \"post-{}\"\nbody = {}\ntargets = [{}]\nmisfire = \"{misfire}\"\ngrace = \"{grace}\"\n",
                    p.id,
                    quote(BODIES[p.body]),
                    targets.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", ")
                );
                if p.title {
                    out += &format!("title = \"Notice {}\"\n", p.id);
                }
                match &p.when {
                    When::At(minutes) => out += &format!("at = \"{}\"\n", rfc3339(now + Duration::minutes(*minutes))),
                    When::Cron(c, z, bounds) => {
                        out += &format!("cron = \"{}\"\ntime_zone = \"{}\"\n", CRONS[*c], ZONES[*z]);
                        if let Some((start, length)) = bounds {
                            let start = now + Duration::hours(*start);
                            out += &format!(
                                "start = \"{}\"\nuntil = \"{}\"\n",
                                rfc3339(start),
                                rfc3339(start + Duration::hours(*length))
                            );
                        }
                    }
                }
            }
            out
        }
    }

    /// Load `text` as `herald.toml` in `dir`; it must be valid.
    pub fn load(dir: &Path, text: &str, now: DateTime<Utc>) -> herald::config::Config {
        let path = dir.join("herald.toml");
        std::fs::write(&path, text).expect("writing the config");
        let outcome = herald::config::load_at(&path, now);
        let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
        outcome.config.unwrap_or_else(|| panic!("the generated config has errors:\n{}\n{text}", errors.join("\n")))
    }
}

mod reconcile {
    use super::configs::{ConfigSpec, NOW, config, load};
    use super::*;
    use herald::model::State;
    use herald::reconcile::reconcile;
    use herald::store::{AuditQuery, SledStore, Store};

    /// What a pending delivery will send, and when.
    type PendingView = (String, String, String, i64, i64, u32, Option<String>, String);

    fn pending(store: &SledStore) -> Vec<PendingView> {
        let mut out: Vec<PendingView> = store
            .deliveries_in_state(State::Pending, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|d| {
                let content =
                    store.content(&d.content_hash).unwrap().expect("the content of a pending delivery").rendered;
                (d.id.to_string(), d.post_id, d.account, d.occurrence, d.due, d.attempt, content.title, content.text)
            })
            .collect();
        out.sort();
        out
    }

    /// Fire every post timer up to `horizon`, each at its time, as the
    /// scheduler's tick does.
    fn materialize(store: &SledStore, config: &herald::config::Config, horizon: DateTime<Utc>) {
        use herald::materialize::Builder;
        use herald::model::{from_millis, to_millis};
        while let Some((t, post_id)) = store.timers_due(to_millis(horizon)).unwrap().into_iter().next() {
            let mut b = Builder::new(store, config, from_millis(t));
            match config.posts.get(&post_id) {
                Some(post) => {
                    b.advance(post, t).unwrap();
                }
                None => b.changes.posts.push((post_id, None)),
            }
            let changes = std::mem::take(&mut b.changes);
            store.apply(changes).unwrap();
            store.flush().unwrap(); // as the scheduler does: records are shown once durable
        }
    }

    fn timers(store: &SledStore) -> Vec<(i64, String)> {
        store.timers_due(i64::MAX).unwrap()
    }

    /// Every delivery, whatever its state.
    fn everything(store: &SledStore) -> Vec<String> {
        let mut out: Vec<String> = State::ALL
            .iter()
            .flat_map(|s| store.deliveries_in_state(*s, usize::MAX).unwrap())
            .map(|d| format!("{d:?}"))
            .collect();
        out.sort();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]

        /// Configs applied one after the other end where the last one alone
        /// would; the last one applied again changes nothing.
        #[test]
        fn reconcile_is_order_independent_and_idempotent(
            earlier in proptest::collection::vec(config(), 1..=3),
            last in config(),
        ) {
            let now = utc(NOW);
            let dir = tempfile::tempdir().unwrap();
            let sequence = SledStore::open(&dir.path().join("sequence"), 8).unwrap();
            let direct = SledStore::open(&dir.path().join("direct"), 8).unwrap();
            let texts: Vec<String> = earlier.iter().chain([&last]).map(ConfigSpec::toml).collect();
            for text in &texts {
                reconcile(&sequence, &load(dir.path(), text, now), now).unwrap();
            }
            let last_config = load(dir.path(), texts.last().unwrap(), now);
            reconcile(&direct, &last_config, now).unwrap();
            // A post changed to a schedule that includes an occurrence the
            // store already holds keeps that delivery, materialized early;
            // so compare the plan once every occurrence up to a horizon past
            // the latest `at` is materialized, as the timers will do.
            let horizon = now + Duration::hours(60);
            materialize(&sequence, &last_config, horizon);
            materialize(&direct, &last_config, horizon);
            let (seq_near, seq_far): (Vec<_>, Vec<_>) = pending(&sequence).into_iter().partition(|p| p.3 <= horizon.timestamp_millis());
            let (direct_near, direct_far): (Vec<_>, Vec<_>) = pending(&direct).into_iter().partition(|p| p.3 <= horizon.timestamp_millis());
            prop_assert!(
                seq_near == direct_near,
                "pending deliveries differ after the sequence of configs:\nonly after the sequence: {:?}\nonly after the last alone: {:?}\n{}",
                seq_near.iter().filter(|p| !direct_near.contains(p)).collect::<Vec<_>>(),
                direct_near.iter().filter(|p| !seq_near.contains(p)).collect::<Vec<_>>(),
                texts.join("\n----\n")
            );
            // Beyond the horizon, anything pending must be an occurrence the
            // last config would publish, with its content.
            for p in seq_far.iter().chain(&direct_far) {
                let post = last_config.posts.get(&p.1);
                prop_assert!(post.is_some_and(|post| post.targets.contains(&p.2)
                    && post.schedule.is_occurrence(herald::model::from_millis(p.3))),
                    "{:?} is pending but not part of the last config:\n{}", p, texts.join("\n----\n"));
            }
            prop_assert_eq!(timers(&sequence), timers(&direct), "post timers differ:\n{}", texts.join("\n----\n"));

            // Idempotent: the same config again changes nothing at all.
            for store in [&sequence, &direct] {
                let records = store.audit(&AuditQuery::default()).unwrap().len();
                let before = everything(store);
                let again = reconcile(store, &last_config, now).unwrap();
                prop_assert!(again.is_empty(), "applying the same config again changed: {}", again);
                prop_assert_eq!(store.audit(&AuditQuery::default()).unwrap().len(), records);
                prop_assert_eq!(everything(store), before);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the delivery state machine
// ---------------------------------------------------------------------------

mod state_machine {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use herald::config::Config;
    use herald::model::{Delivery, DeliveryId, Event, State};
    use herald::retry_cancel::{self, Selection};
    use herald::scheduler::{Finished, Scheduler};
    use herald::store::{AuditQuery, SledStore, Store};
    use herald_adapters::{DeliveryError, PlatformAnswer, Receipt};

    #[derive(Debug, Clone)]
    enum Outcome {
        Delivered,
        Transient,
        /// A timeout after sending: the next attempt is uncertain.
        MaybeSent,
        RateLimited(Option<u64>),
        Permanent,
        CredentialsExpired,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Let this many seconds pass, then run one scheduler tick.
        Advance(u32),
        /// The attempt of one in-flight delivery ends so.
        Finish(prop::sample::Index, Outcome, bool),
        /// `herald retry` of one delivery (any state), or of a whole post.
        Retry(prop::sample::Index, bool),
        /// `herald cancel` of one delivery, or of a whole post.
        Cancel(prop::sample::Index, bool),
        /// SIGKILL and restart: a new scheduler recovers and reconciles.
        Crash,
        /// Reload config variant n (0: the first; 1: another body; 2: another max_attempts).
        Reload(usize),
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            3 => Just(Outcome::Delivered),
            3 => Just(Outcome::Transient),
            1 => Just(Outcome::MaybeSent),
            1 => proptest::option::of(0u64..600).prop_map(Outcome::RateLimited),
            1 => Just(Outcome::Permanent),
            1 => Just(Outcome::CredentialsExpired),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..900).prop_map(Op::Advance),
            8 => (any::<prop::sample::Index>(), outcome(), any::<bool>()).prop_map(|(i, o, r)| Op::Finish(i, o, r)),
            2 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, p)| Op::Retry(i, p)),
            1 => (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, p)| Op::Cancel(i, p)),
            1 => Just(Op::Crash),
            1 => (0usize..3).prop_map(Op::Reload),
        ]
    }

    fn config_text(max_attempts: u32, body: &str, now: DateTime<Utc>) -> String {
        let at = |minutes: i64| (now + Duration::minutes(minutes)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        format!(
            r#"[daemon]
state_dir = "state"
concurrency = 10000

[retry]
max_attempts = {max_attempts}
initial_backoff = "10s"
max_backoff = "1m"
jitter = 0.5

[accounts.wuhan-hook]
platform = "webhook"
url = "http://127.0.0.1:9/wuhan"
concurrency = 2

[accounts.xian-hook]
platform = "webhook"
url = "http://127.0.0.1:9/xian"

[[posts]]
id = "alert"
body = "{body}"
targets = ["wuhan-hook", "xian-hook"]
at = "{}"

[[posts]]
id = "every-ten-minutes"
body = "{body} (recurring)"
targets = ["wuhan-hook"]
cron = "*/10 * * * *"

[[posts]]
id = "later"
body = "Later."
targets = ["xian-hook"]
at = "{}"
"#,
            at(1),
            at(7)
        )
    }

    fn all(store: &SledStore) -> BTreeMap<DeliveryId, Delivery> {
        State::ALL.iter().flat_map(|s| store.deliveries_in_state(*s, usize::MAX).unwrap()).map(|d| (d.id, d)).collect()
    }

    /// The state an audit event moves a delivery between.
    fn valid(event: Event, from: Option<State>, to: State) -> bool {
        use State::*;
        match (event, from) {
            (Event::Scheduled, None) => to == Pending,
            (Event::Late, None | Some(Pending)) => to == Pending,
            (Event::Skipped, None | Some(Pending)) => to == Skipped,
            (Event::Failed, None | Some(Pending) | Some(InFlight)) => to == Failed,
            (Event::Attempt, Some(Pending)) => to == InFlight,
            (Event::Delivered, Some(InFlight)) => to == Delivered,
            (Event::RetryScheduled, Some(InFlight)) => to == Pending,
            (Event::Recovered, Some(InFlight)) => to == Pending,
            (Event::CredentialsRefreshed, Some(InFlight)) => to == InFlight,
            (Event::Cancelled, Some(Pending)) => to == Cancelled,
            (Event::Replaced, Some(Pending)) => to == Pending,
            (Event::Requeued, Some(Failed | Skipped | Cancelled)) => to == Pending,
            _ => false,
        }
    }

    fn finished(d: Delivery, outcome: &Outcome, refreshed: bool) -> Finished {
        let answer = PlatformAnswer { status: Some(500), code: None, message: Some("test".into()) };
        let result = match outcome {
            Outcome::Delivered => Ok(Receipt {
                remote_id: Some(format!("r-{}", d.id)),
                url: Some(format!("http://127.0.0.1:9/{}", d.id)),
                answer: PlatformAnswer { status: Some(200), ..PlatformAnswer::default() },
            }),
            Outcome::Transient => Err(DeliveryError::transient(answer, "server error")),
            Outcome::MaybeSent => Err(DeliveryError::transient(answer, "no answer").maybe_sent()),
            Outcome::RateLimited(secs) => Err(DeliveryError::rate_limited(
                PlatformAnswer { status: Some(429), ..PlatformAnswer::default() },
                secs.map(std::time::Duration::from_secs),
                "slow down",
            )),
            Outcome::Permanent => Err(DeliveryError::permanent(answer, "refused")),
            Outcome::CredentialsExpired => Err(DeliveryError::credentials_expired(answer, "token expired")),
        };
        Finished {
            delivery: d,
            result,
            latency: std::time::Duration::from_millis(5),
            refreshed,
            found: false,
            looked_up: false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

        #[test]
        fn deliveries_leave_terminal_states_only_through_retry(
            max_attempts in 1u32..=4,
            other_max in 1u32..=4,
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            // Attempt tasks are spawned on a runtime that is never driven:
            // the test decides how each attempt ends.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _guard = runtime.enter();
            let dir = tempfile::tempdir().unwrap();
            let mut now = utc("2026-12-01T00:00:00Z");
            let variants: Vec<Arc<Config>> = [(max_attempts, "Beware."), (max_attempts, "Beware, changed."), (other_max, "Beware.")]
                .iter()
                .map(|(max, body)| Arc::new(super::configs::load(dir.path(), &config_text(*max, body, now), now)))
                .collect();
            let store = Arc::new(SledStore::open(&dir.path().join("state"), 8).unwrap());
            let shared: Arc<dyn Store> = Arc::clone(&store) as Arc<dyn Store>;
            let mut config = Arc::clone(&variants[0]);
            let mut scheduler = Scheduler::new(Arc::clone(&shared), Arc::clone(&config));
            scheduler.recover(now).unwrap();
            scheduler.reconcile(Arc::clone(&config), now).unwrap();
            let mut seen_seq = 0u64;
            let mut history: BTreeMap<DeliveryId, State> = BTreeMap::new();

            for (step, op) in ops.iter().enumerate() {
                let before = all(&store);
                match op {
                    Op::Advance(secs) => {
                        now += Duration::seconds(i64::from(*secs));
                        scheduler.tick(now).unwrap();
                    }
                    Op::Finish(index, outcome, refreshed) => {
                        let flying = store.in_flight().unwrap();
                        if !flying.is_empty() {
                            let d = index.get(&flying).clone();
                            scheduler.record(vec![finished(d, outcome, *refreshed)], now).unwrap();
                        }
                    }
                    Op::Retry(index, by_post) | Op::Cancel(index, by_post) => {
                        let ids: Vec<&Delivery> = before.values().collect();
                        if !ids.is_empty() {
                            let d = index.get(&ids);
                            let selection = if *by_post {
                                Selection { post: Some(d.post_id.clone()), ..Selection::default() }
                            } else {
                                Selection { delivery: Some(d.id.to_string()), ..Selection::default() }
                            };
                            // Refusals (wrong state) are fine; what matters is what changed.
                            let _ = if matches!(op, Op::Retry(..)) {
                                retry_cancel::retry(store.as_ref(), &selection, now)
                            } else {
                                retry_cancel::cancel(store.as_ref(), &selection, now)
                            };
                        }
                    }
                    Op::Crash => {
                        drop(scheduler);
                        scheduler = Scheduler::new(Arc::clone(&shared), Arc::clone(&config));
                        scheduler.recover(now).unwrap();
                        scheduler.reconcile(Arc::clone(&config), now).unwrap();
                    }
                    Op::Reload(n) => {
                        config = Arc::clone(&variants[*n]);
                        scheduler.reconcile(Arc::clone(&config), now).unwrap();
                    }
                }
                let after = all(&store);

                // Terminal states are left only through retry (and, as
                // documented, a cancelled delivery comes back when its post
                // changes in the config).
                for (id, b) in &before {
                    let a = after.get(id);
                    prop_assert!(a.is_some(), "step {} ({:?}): delivery {} vanished", step, op, id);
                    let a = a.unwrap();
                    if !b.state.is_terminal() || a == b {
                        continue;
                    }
                    let retried = matches!(op, Op::Retry(..))
                        && matches!(b.state, State::Failed | State::Skipped)
                        && a.state == State::Pending
                        && a.attempt == 0;
                    let revived = matches!(op, Op::Reload(_) | Op::Crash)
                        && b.state == State::Cancelled
                        && a.state == State::Pending;
                    prop_assert!(
                        retried || revived,
                        "step {} ({:?}): delivery {} left terminal state {} for {} ({:?} -> {:?})",
                        step, op, id, b.state, a.state, b, a
                    );
                }

                // The audit log: gapless, one valid transition per record,
                // attempts within the max_attempts in force.
                let records = store.audit(&AuditQuery { after_seq: Some(seen_seq), ..AuditQuery::default() }).unwrap();
                for r in &records {
                    prop_assert_eq!(r.seq, seen_seq + 1, "audit sequence has a gap or repeats");
                    seen_seq = r.seq;
                    if r.event == Event::Alerted {
                        continue;
                    }
                    let Some(state) = r.state else { continue };
                    let from = history.get(&r.delivery).copied();
                    prop_assert!(
                        valid(r.event, from, state),
                        "step {} ({:?}): invalid audit transition {:?} --{}--> {}",
                        step, op, from, r.event, state
                    );
                    history.insert(r.delivery, state);
                    if r.event == Event::Attempt {
                        prop_assert!(
                            r.attempt <= config.retry.max_attempts,
                            "step {} ({:?}): attempt {} started with max_attempts = {}",
                            step, op, r.attempt, config.retry.max_attempts
                        );
                    }
                }
                // The log agrees with the store.
                for (id, d) in &after {
                    prop_assert_eq!(history.get(id).copied(), Some(d.state), "delivery {} in the store vs its last audit record", id);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// the config loader never panics
// ---------------------------------------------------------------------------

mod loader {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config.example.toml");

    /// A folder with the example's companions (includes, secrets, images),
    /// so mutated configs still reach every part of the loader.
    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        helpers::copy_dir(&examples, &dir.path().join("examples"));
        dir
    }

    fn load_bytes(dir: &Path, bytes: &[u8]) -> herald::config::LoadOutcome {
        let path = dir.join("herald.toml");
        std::fs::write(&path, bytes).unwrap();
        herald::config::load_at(&path, utc("2026-11-20T00:00:00Z"))
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Delete(prop::sample::Index, usize),
        Insert(prop::sample::Index, Vec<u8>),
        InsertText(prop::sample::Index, String),
        Replace(prop::sample::Index, u8),
        DuplicateLine(prop::sample::Index),
        SwapLines(prop::sample::Index, prop::sample::Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let tokens = proptest::sample::select(vec![
            "[",
            "]",
            "[[posts]]",
            "\"",
            "'''",
            "=",
            "{",
            "}",
            ",",
            "\n",
            "#",
            "\\",
            "\\u",
            "-",
            "*",
            "@",
            "1e999",
            "nan",
            "-0",
            "9999999999999999999999",
            "2026-02-30T25:61:00Z",
            "\u{0}",
            "\u{feff}",
            "é",
            "𝕏",
            "\r\n",
            "targets = []",
            "cron = \"",
            "at = ",
            "include = [\"**\"]",
            "state_dir = \"/\"",
            "id = \"",
        ]);
        prop_oneof![
            (any::<prop::sample::Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
            (any::<prop::sample::Index>(), proptest::collection::vec(any::<u8>(), 1..8))
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            (any::<prop::sample::Index>(), tokens).prop_map(|(i, t)| Mutation::InsertText(i, t.to_string())),
            (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
            any::<prop::sample::Index>().prop_map(Mutation::DuplicateLine),
            (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        ]
    }

    fn apply(text: &[u8], mutations: &[Mutation]) -> Vec<u8> {
        let mut bytes = text.to_vec();
        for m in mutations {
            let len = bytes.len().max(1);
            match m {
                Mutation::Delete(i, n) => {
                    let at = i.index(len).min(bytes.len());
                    let end = (at + n).min(bytes.len());
                    bytes.drain(at..end);
                }
                Mutation::Insert(i, b) => {
                    let at = i.index(len).min(bytes.len());
                    bytes.splice(at..at, b.iter().copied());
                }
                Mutation::InsertText(i, t) => {
                    let at = i.index(len).min(bytes.len());
                    bytes.splice(at..at, t.bytes());
                }
                Mutation::Replace(i, b) => {
                    if !bytes.is_empty() {
                        let at = i.index(bytes.len());
                        bytes[at] = *b;
                    }
                }
                Mutation::DuplicateLine(i) | Mutation::SwapLines(i, _) => {
                    let mut lines: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                    let a = i.index(lines.len());
                    if let Mutation::SwapLines(_, j) = m {
                        let b = j.index(lines.len());
                        lines.swap(a, b);
                    } else {
                        let line = lines[a].clone();
                        lines.insert(a, line);
                    }
                    bytes = lines.join(&b'\n');
                }
            }
        }
        bytes
    }

    #[test]
    fn the_unmutated_example_loads() {
        let dir = workspace();
        let outcome = load_bytes(dir.path(), EXAMPLE.as_bytes());
        let errors: Vec<String> = outcome.errors().map(ToString::to_string).collect();
        assert!(outcome.config.is_some(), "{}", errors.join("\n"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let dir = tempfile::tempdir().unwrap();
            let outcome = load_bytes(dir.path(), &bytes);
            // Whatever it says, an error always has a place and a message.
            for d in outcome.errors() {
                prop_assert!(!d.message.is_empty());
            }
        }

        #[test]
        fn mutations_of_the_example_never_panic(mutations in proptest::collection::vec(mutation(), 1..6)) {
            thread_local! {
                static DIR: tempfile::TempDir = workspace();
            }
            let bytes = apply(EXAMPLE.as_bytes(), &mutations);
            DIR.with(|dir| {
                let outcome = load_bytes(dir.path(), &bytes);
                if outcome.config.is_none() {
                    prop_assert!(outcome.errors().count() > 0, "no config and no error");
                }
                Ok(())
            })?;
        }
    }
}
