//! `herald status`, `log`, `retry` and `cancel`: commands that read or change
//! the store. They open it directly, so they need herald not to be running.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use super::LogOutput;
use super::output;
use crate::config::TimeValue;
use crate::model::{AuditRecord, DeliveryId, Event, State, from_millis, to_millis};
use crate::store::{AuditQuery, Changes, SledStore, Store, StoreError};

fn open(location: &(PathBuf, u64)) -> anyhow::Result<SledStore> {
    let (dir, cache_mb) = location;
    if !dir.join("db").exists() {
        bail!("no herald state in {} (has herald run with this config yet?)", dir.display());
    }
    match SledStore::open(dir, *cache_mb) {
        Ok(store) => {
            eprintln!("(reading the state directory {} directly: no herald daemon holds it)", dir.display());
            Ok(store)
        }
        Err(e @ StoreError::Locked { .. }) => {
            Err(anyhow::Error::new(e).context("herald is running; stop it (systemctl stop herald) to use this command"))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn status(location: &(PathBuf, u64), failed_limit: usize) -> anyhow::Result<ExitCode> {
    let store = open(location)?;
    let counts = store.counts()?;
    let summary: Vec<String> =
        State::ALL.iter().map(|s| format!("{} {}", counts.get(s).copied().unwrap_or(0), s)).collect();
    println!("deliveries: {}", summary.join(", "));
    let now = Utc::now();
    let next = store.due(None, i64::MAX, 1)?.into_iter().next();
    match next {
        Some(key) => {
            let due = from_millis(key.due);
            let when = if due <= now {
                "now".to_string()
            } else {
                let wait = (due - now).to_std().unwrap_or_default();
                format!("in {}", humantime::format_duration(std::time::Duration::from_secs(wait.as_secs())))
            };
            let post = store.delivery(key.id)?.map(|d| d.post_id).unwrap_or_default();
            println!(
                "next due: {} ({when}): post {post} to {} [{}]",
                due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                key.account,
                key.id
            );
        }
        None => println!("next due: nothing pending"),
    }
    let failed = store.deliveries_in_state(State::Failed, failed_limit)?;
    let total_failed = counts.get(&State::Failed).copied().unwrap_or(0);
    if total_failed > 0 {
        println!("failed ({total_failed}; retry with `herald retry ID` or `herald retry --post POST`):");
        for d in failed {
            println!(
                "  {}  post {}  account {} ({})  attempts {}  occurrence {}: {}",
                d.id,
                d.post_id,
                d.account,
                d.platform,
                d.attempt,
                from_millis(d.occurrence).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                d.reason.as_deref().unwrap_or("no reason recorded")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_time(text: &str, what: &str) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    let full = if text.len() == 10 { format!("{text}T00:00:00") } else { text.to_string() };
    let value = TimeValue::parse(&full).map_err(anyhow::Error::msg).with_context(|| format!("--{what}"))?;
    value.resolve(&chrono_tz::Tz::UTC).map_err(anyhow::Error::msg)
}

pub fn query(
    post: Option<String>,
    account: Option<String>,
    platform: Option<String>,
    events: Vec<String>,
    delivery: Option<String>,
    since: Option<String>,
    until: Option<String>,
) -> anyhow::Result<AuditQuery> {
    let events = events
        .iter()
        .map(|e| Event::parse(e).with_context(|| format!("unknown event `{e}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let delivery = match delivery {
        Some(d) => Some(DeliveryId::parse(&d).with_context(|| format!("`{d}` is not a delivery id"))?),
        None => None,
    };
    Ok(AuditQuery {
        post,
        account,
        platform,
        events,
        delivery,
        since: since.map(|s| parse_time(&s, "since")).transpose()?,
        until: until.map(|s| parse_time(&s, "until")).transpose()?,
        after_seq: None,
        limit: None,
    })
}

pub fn log(location: &(PathBuf, u64), query: &AuditQuery, format: LogOutput) -> anyhow::Result<ExitCode> {
    let store = open(location)?;
    let records: Vec<AuditRecord> = store.audit(query)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        LogOutput::Table => output::table(&records, &mut out)?,
        LogOutput::Json => output::json_lines(&records, &mut out)?,
        LogOutput::Csv => output::csv(&records, &mut out)?,
    }
    out.flush()?;
    if format == LogOutput::Table {
        eprintln!("{} record(s); `herald log --content HASH` shows the exact text sent", records.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn content(location: &(PathBuf, u64), hash: &str) -> anyhow::Result<ExitCode> {
    let store = open(location)?;
    match store.content(hash)? {
        Some(rendered) => {
            println!("{}", serde_json::to_string_pretty(&rendered)?);
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("no content with hash {hash}"),
    }
}

fn targets(
    store: &SledStore,
    delivery: Option<String>,
    post: Option<String>,
    state: &[State],
) -> anyhow::Result<Vec<crate::model::Delivery>> {
    match (delivery, post) {
        (Some(id), _) => {
            let parsed = DeliveryId::parse(&id).with_context(|| format!("`{id}` is not a delivery id"))?;
            let d = store.delivery(parsed)?.with_context(|| format!("no delivery {id}"))?;
            if !state.contains(&d.state) {
                bail!("delivery {id} is {}; only {} deliveries qualify", d.state, names(state));
            }
            Ok(vec![d])
        }
        (None, Some(post)) => {
            Ok(store.deliveries_of_post(&post)?.into_iter().filter(|d| state.contains(&d.state)).collect())
        }
        (None, None) => bail!("name a delivery id, or --post POST"),
    }
}

fn names(states: &[State]) -> String {
    states.iter().map(|s| s.name()).collect::<Vec<_>>().join(" or ")
}

fn change(
    store: &SledStore,
    deliveries: Vec<crate::model::Delivery>,
    event: Event,
    apply: impl Fn(&mut crate::model::Delivery),
) -> anyhow::Result<usize> {
    let now = Utc::now();
    let mut changes = Changes::default();
    for mut d in deliveries {
        apply(&mut d);
        d.updated = to_millis(now);
        let record = AuditRecord::of(&d, event, now);
        changes.deliveries.push((d, record));
    }
    let n = changes.deliveries.len();
    store.apply(changes)?;
    store.flush()?;
    Ok(n)
}

pub fn retry(location: &(PathBuf, u64), delivery: Option<String>, post: Option<String>) -> anyhow::Result<ExitCode> {
    let store = open(location)?;
    let chosen = targets(&store, delivery, post.clone(), &[State::Failed, State::Skipped])?;
    let now = to_millis(Utc::now());
    let n = change(&store, chosen, Event::Requeued, |d| {
        d.state = State::Pending;
        d.due = now;
        d.attempt = 0;
        d.reason = Some("requeued by `herald retry`; attempts count from 1 again".into());
    })?;
    println!(
        "{n} deliver{} queued again; herald sends {} at its next start",
        if n == 1 { "y" } else { "ies" },
        if n == 1 { "it" } else { "them" }
    );
    Ok(if n == 0 && post.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn cancel(location: &(PathBuf, u64), delivery: Option<String>, post: Option<String>) -> anyhow::Result<ExitCode> {
    let store = open(location)?;
    let chosen = targets(&store, delivery, post, &[State::Pending])?;
    let n = change(&store, chosen, Event::Cancelled, |d| {
        d.state = State::Cancelled;
        d.reason = Some("cancelled by `herald cancel`".into());
    })?;
    println!("{n} deliver{} cancelled", if n == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}
