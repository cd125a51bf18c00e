//! Operator pauses (`herald pause`, `herald resume`): which deliveries may
//! not start now. The pauses are one short list in the store's `meta` tree
//! ([`PAUSES_KEY`]), so a pause survives restarts; the scheduler keeps a
//! copy and checks each due delivery against it before starting it (see
//! `Scheduler::dispatch`). Requests already on the wire finish.

use std::fmt;

use chrono::{DateTime, Utc};
use herald_adapters::Platform;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::materialize::Verdict;
use crate::model::{Actor, AuditRecord, Delivery, DeliveryId, Event, Millis, State, from_millis, to_millis};
use crate::store::{Changes, Store, StoreError};

/// The `meta` key holding the active pauses (a JSON list of [`Pause`]).
pub const PAUSES_KEY: &str = "control/pauses";

/// What one pause covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Every delivery.
    All,
    Account(String),
    Post(String),
    Platform(Platform),
}

impl Selector {
    /// Does this pause cover a delivery of `post` to `account` on `platform`?
    pub fn covers(&self, post: &str, account: &str, platform: Platform) -> bool {
        match self {
            Selector::All => true,
            Selector::Account(a) => a == account,
            Selector::Post(p) => p == post,
            Selector::Platform(p) => *p == platform,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::All => f.write_str("all deliveries"),
            Selector::Account(a) => write!(f, "account {a}"),
            Selector::Post(p) => write!(f, "post {p}"),
            Selector::Platform(p) => write!(f, "platform {}", p.name()),
        }
    }
}

/// One active pause: what, since when, by whom, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub selector: Selector,
    pub since: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (since {}", self.selector, self.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))?;
        if let Some(actor) = &self.actor {
            write!(f, ", by {actor}")?;
        }
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        f.write_str(")")
    }
}

/// The active pauses, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pauses(pub Vec<Pause>);

impl Pauses {
    /// The pauses kept in `store` (none when it never had any).
    pub fn load(store: &dyn Store) -> Result<Pauses, StoreError> {
        match store.meta(PAUSES_KEY)? {
            None => Ok(Pauses::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("the list of pauses (meta `{PAUSES_KEY}`): {e}"))),
        }
    }

    /// The first pause covering a delivery of `post` to `account` on `platform`.
    pub fn covering(&self, post: &str, account: &str, platform: Platform) -> Option<&Pause> {
        self.0.iter().find(|p| p.selector.covers(post, account, platform))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// "PAUSED (all deliveries, account wuhan-weibo)", or nothing.
    pub fn headline(&self) -> Option<String> {
        (!self.is_empty()).then(|| {
            let what: Vec<String> = self.0.iter().map(|p| p.selector.to_string()).collect();
            format!("PAUSED ({})", what.join(", "))
        })
    }

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::Encode { what: "list of pauses".into(), error: e.to_string() })
    }
}

/// What `herald pause` and `herald resume` ask for: each selector given is
/// paused (or its pause lifted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PauseRequest {
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default)]
    pub posts: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    /// The operator's `--reason`, kept in the pause and its audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asks: never taken from the request (see `operations::Selection`).
    #[serde(skip)]
    pub actor: Option<Actor>,
}

impl PauseRequest {
    /// The selectors asked for; accounts and posts are checked against
    /// `config` when there is one (a running daemon's).
    fn selectors(&self, config: Option<&Config>) -> Result<Vec<Selector>, PauseError> {
        let mut out = Vec::new();
        if self.all {
            out.push(Selector::All);
        }
        for a in &self.accounts {
            if config.is_some_and(|c| !c.accounts.contains_key(a)) {
                return Err(PauseError::UnknownAccount(a.clone()));
            }
            out.push(Selector::Account(a.clone()));
        }
        for p in &self.posts {
            if config.is_some_and(|c| !c.posts.contains_key(p)) {
                return Err(PauseError::UnknownPost(p.clone()));
            }
            out.push(Selector::Post(p.clone()));
        }
        for name in &self.platforms {
            out.push(Selector::Platform(
                Platform::parse(name).ok_or_else(|| PauseError::UnknownPlatform(name.clone()))?,
            ));
        }
        if out.is_empty() {
            return Err(PauseError::NothingSelected);
        }
        out.dedup();
        Ok(out)
    }

    fn reason(&self) -> Option<String> {
        self.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()).map(str::to_string)
    }
}

/// What a pause or resume did, and the pauses in force after it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PauseView {
    /// Selectors paused (or resumed) by this request.
    pub changed: Vec<String>,
    /// Selectors that were already paused (for a pause).
    pub unchanged: Vec<String>,
    pub active: Vec<Pause>,
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("name what to pause or resume: --all, --account ID, --post ID or --platform NAME (each repeatable)")]
    NothingSelected,
    #[error("no platform `{0}`: one of weibo, wechat, tieba, discourse, mastodon, webhook")]
    UnknownPlatform(String),
    #[error("no account `{0}` in the running config")]
    UnknownAccount(String),
    #[error("no post `{0}` in the running config")]
    UnknownPost(String),
    #[error("{0} is not paused, so nothing was resumed; paused now: {1}")]
    NotPaused(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The audit record of pausing or resuming `selector`.
fn record(event: Event, selector: &Selector, request: &PauseRequest, now: DateTime<Utc>) -> AuditRecord {
    let verb = if event == Event::Paused { "paused" } else { "resumed" };
    let text = match request.reason() {
        Some(reason) => format!("{verb} {selector}: {reason}"),
        None => format!("{verb} {selector}"),
    };
    let mut r = AuditRecord::about_herald(event, now, Some(text)).by(request.actor.clone());
    match selector {
        Selector::All => {}
        Selector::Account(a) => r.account = a.clone(),
        Selector::Post(p) => r.post = p.clone(),
        Selector::Platform(p) => r.platform = Some(*p),
    }
    r
}

/// Pause what `request` names (already paused selectors are left as they
/// are), with a `paused` record for each, in one durable step.
pub fn pause(
    store: &dyn Store,
    request: &PauseRequest,
    config: Option<&Config>,
    now: DateTime<Utc>,
) -> Result<PauseView, PauseError> {
    let selectors = request.selectors(config)?;
    let mut pauses = Pauses::load(store)?;
    let mut view = PauseView::default();
    let mut changes = Changes::default();
    for selector in selectors {
        if pauses.0.iter().any(|p| p.selector == selector) {
            view.unchanged.push(selector.to_string());
            continue;
        }
        changes.notes.push(record(Event::Paused, &selector, request, now));
        view.changed.push(selector.to_string());
        pauses.0.push(Pause { selector, since: now, actor: request.actor.clone(), reason: request.reason() });
    }
    save(store, pauses, changes, view)
}

/// Lift the pauses `request` names, with a `resumed` record for each; a
/// selector that is not paused refuses the whole request (nothing changes).
pub fn resume(
    store: &dyn Store,
    request: &PauseRequest,
    config: Option<&Config>,
    now: DateTime<Utc>,
) -> Result<PauseView, PauseError> {
    let selectors = request.selectors(config)?;
    let mut pauses = Pauses::load(store)?;
    let mut view = PauseView::default();
    let mut changes = Changes::default();
    for selector in selectors {
        let Some(i) = pauses.0.iter().position(|p| p.selector == selector) else {
            let active: Vec<String> = pauses.0.iter().map(|p| p.selector.to_string()).collect();
            let active = if active.is_empty() { "nothing".to_string() } else { active.join(", ") };
            return Err(PauseError::NotPaused(selector.to_string(), active));
        };
        pauses.0.remove(i);
        changes.notes.push(record(Event::Resumed, &selector, request, now));
        view.changed.push(selector.to_string());
    }
    save(store, pauses, changes, view)
}

/// Store the pauses with their records in one durable step (nothing when
/// there is no record: nothing changed), and answer what is in force.
fn save(store: &dyn Store, pauses: Pauses, mut changes: Changes, mut view: PauseView) -> Result<PauseView, PauseError> {
    if !changes.notes.is_empty() {
        changes.meta.push((PAUSES_KEY.to_string(), pauses.encode()?));
        store.apply(changes)?;
        store.flush()?;
    }
    view.active = pauses.0;
    Ok(view)
}

/// What becomes of a delivery held since `since` (by a pause) now that it
/// may go: its post's misfire policy decides, as for an occurrence missed
/// while herald was down, by how late it is against its occurrence.
pub fn release_verdict(
    config: &Config,
    store: &dyn Store,
    d: &Delivery,
    since: Millis,
    now: DateTime<Utc>,
) -> Result<Verdict, StoreError> {
    let Some(post) = config.posts.get(&d.post_id) else { return Ok(Verdict::OnTime) };
    let late = now - from_millis(d.occurrence);
    if late <= chrono::Duration::from_std(crate::materialize::ON_TIME).unwrap_or_default() {
        return Ok(Verdict::OnTime);
    }
    let held = format!("held from {}", from_millis(since).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    if post.misfire == crate::config::Misfire::Skip {
        return Ok(Verdict::Skip(format!("{held} until past its time; not published (misfire = skip)")));
    }
    if late > chrono::Duration::from_std(post.grace).unwrap_or(chrono::Duration::MAX) {
        return Ok(Verdict::Skip(format!(
            "{held} until past the grace window of {}; not published",
            humantime::format_duration(post.grace)
        )));
    }
    if post.misfire == crate::config::Misfire::Latest {
        // A later occurrence to the same account, also due: it goes instead.
        let later = post.schedule.next_after(from_millis(d.occurrence)).filter(|t| *t <= now);
        if let Some(t) = later
            && store
                .delivery(DeliveryId::derive(&d.post_id, to_millis(t), &d.account))?
                .is_some_and(|l| l.state == State::Pending)
        {
            return Ok(Verdict::Skip(format!("{held}; a later occurrence is published instead (misfire = latest)")));
        }
    }
    Ok(Verdict::Late(format!("{held}; published late (misfire = {})", post.misfire)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn request(all: bool, accounts: &[&str], platforms: &[&str]) -> PauseRequest {
        PauseRequest {
            all,
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            platforms: platforms.iter().map(|p| p.to_string()).collect(),
            reason: Some("wrong hotline number".into()),
            ..PauseRequest::default()
        }
    }

    #[test]
    fn pauses_are_kept_in_the_store_and_each_is_lifted_by_its_own_selector() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            let view = pause(&store, &request(true, &["wuhan-weibo"], &[]), None, now).unwrap();
            assert_eq!(view.changed, ["all deliveries", "account wuhan-weibo"]);
            // Again: nothing new, nothing recorded twice.
            let again = pause(&store, &request(true, &[], &[]), None, now).unwrap();
            assert_eq!((again.changed.len(), again.unchanged.len()), (0, 1));
        }
        let store = SledStore::open(dir.path(), 8).unwrap();
        let pauses = Pauses::load(&store).unwrap();
        assert!(pauses.covering("p", "xian-wechat", Platform::Wechat).is_some(), "`all` covers every delivery");
        let err = resume(&store, &request(false, &[], &["weibo"]), None, now).unwrap_err();
        assert!(err.to_string().contains("platform weibo is not paused"), "{err}");
        resume(&store, &request(true, &[], &[]), None, now).unwrap();
        let pauses = Pauses::load(&store).unwrap();
        assert!(pauses.covering("p", "xian-wechat", Platform::Wechat).is_none());
        assert!(pauses.covering("p", "wuhan-weibo", Platform::Weibo).is_some(), "the account's own pause stays");
        let records = store.audit(&crate::store::AuditQuery::default()).unwrap();
        let events: Vec<(Event, String)> = records.iter().map(|r| (r.event, r.account.clone())).collect();
        assert_eq!(
            events,
            [
                (Event::Paused, String::new()),
                (Event::Paused, "wuhan-weibo".to_string()),
                (Event::Resumed, String::new())
            ]
        );
        assert!(records[0].reason.as_deref().unwrap().contains("wrong hotline number"));
        assert!(matches!(pause(&store, &PauseRequest::default(), None, now), Err(PauseError::NothingSelected)));
        assert!(matches!(
            pause(&store, &request(false, &[], &["myspace"]), None, now),
            Err(PauseError::UnknownPlatform(_))
        ));
    }

    /// A post every hour at :00 to one account, with `misfire` and `grace`;
    /// its delivery of 09:00 held, and (with `later`) the 10:00 one pending too.
    fn held_at_nine(misfire: &str, grace: &str, later: bool) -> (tempfile::TempDir, Config, SledStore, Delivery) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[daemon]\nstate_dir = \"state\"\n\n[accounts.wuhan]\nplatform = \"webhook\"\nurl = \"http://127.0.0.1:9/w\"\n\n\
             [[posts]]\nid = \"p\"\nbody = \"stay safe\"\ntargets = [\"wuhan\"]\ncron = \"0 * * * *\"\n\
             misfire = \"{misfire}\"\ngrace = \"{grace}\"\n"
        );
        let cfg = crate::testkit::config(dir.path(), &text, crate::testkit::utc("2026-12-01T08:00:00Z"));
        let store = SledStore::open(&dir.path().join("state"), 8).unwrap();
        let nine = to_millis(crate::testkit::utc("2026-12-01T09:00:00Z"));
        let d = Delivery::new("p", nine, "wuhan", Platform::Webhook, nine);
        let mut changes = Changes::default();
        if later {
            let ten = Delivery::new("p", nine + 3_600_000, "wuhan", Platform::Webhook, nine);
            changes.deliveries.push((ten.clone(), AuditRecord::of(&ten, Event::Scheduled, Utc::now())));
        }
        changes.deliveries.push((d.clone(), AuditRecord::of(&d, Event::Scheduled, Utc::now())));
        store.apply(changes).unwrap();
        (dir, cfg, store, d)
    }

    fn verdict(misfire: &str, grace: &str, later: bool, released: &str) -> Verdict {
        let (_dir, cfg, store, d) = held_at_nine(misfire, grace, later);
        release_verdict(&cfg, &store, &d, d.occurrence, crate::testkit::utc(released)).unwrap()
    }

    #[test]
    fn a_released_delivery_follows_its_posts_misfire_policy() {
        // Released within a minute of its time: simply on time, whatever the policy.
        assert_eq!(verdict("skip", "1h", false, "2026-12-01T09:00:30Z"), Verdict::OnTime);
        assert!(
            matches!(verdict("skip", "1h", false, "2026-12-01T09:10:00Z"), Verdict::Skip(r) if r.contains("misfire = skip"))
        );
        assert!(
            matches!(verdict("all", "1h", false, "2026-12-01T09:10:00Z"), Verdict::Late(r) if r.contains("misfire = all"))
        );
        assert!(
            matches!(verdict("all", "30m", false, "2026-12-01T09:40:00Z"), Verdict::Skip(r) if r.contains("grace window of 30m"))
        );
        // `latest`: the 09:00 copy is dropped when the 10:00 one is due too, sent late when it is not.
        assert!(
            matches!(verdict("latest", "3h", true, "2026-12-01T10:05:00Z"), Verdict::Skip(r) if r.contains("later occurrence"))
        );
        assert!(matches!(verdict("latest", "3h", false, "2026-12-01T10:05:00Z"), Verdict::Late(_)));
        assert!(
            matches!(verdict("latest", "3h", true, "2026-12-01T09:30:00Z"), Verdict::Late(_)),
            "10:00 is not due yet"
        );
    }
}
