//! `herald status`, `log`, `upcoming`, `retry`, `cancel` and `reload`: they
//! ask the running daemon through its control socket, or read the store
//! directly when no daemon runs (see [`super::source`]).

use std::io::Write;
use std::process::ExitCode;

use chrono::Utc;

use super::LogOutput;
use super::output;
use super::source::Source;
use crate::control::LogParams;
use crate::model::{State, from_millis};
use crate::retry_cancel::Selection;

pub fn status(source: &Source, failed_limit: usize) -> anyhow::Result<ExitCode> {
    let view = source.status(failed_limit)?;
    if let Some(role) = &view.role {
        // Several daemons share the store: which one answered, and who leads.
        println!("daemon: {} ({})", role.describe(), role.me);
    }
    let summary: Vec<String> =
        State::ALL.iter().map(|s| format!("{} {}", view.counts.get(s).copied().unwrap_or(0), s)).collect();
    println!("deliveries: {} ({} retrying)", summary.join(", "), view.retrying);
    if !view.pauses.is_empty() {
        println!("PAUSED: due deliveries held: {}; `herald resume` lifts a pause:", view.held);
        for pause in &view.pauses {
            println!("  {pause}");
        }
    }
    if view.planned > 0 {
        println!(
            "planned: {} more, of occurrences further ahead than `schedule_ahead`; created as pending when they come close",
            view.planned
        );
    }
    let now = Utc::now();
    match &view.next {
        Some(next) => {
            let when = if next.due <= now {
                "now".to_string()
            } else {
                let wait = (next.due - now).to_std().unwrap_or_default();
                format!("in {}", humantime::format_duration(std::time::Duration::from_secs(wait.as_secs())))
            };
            println!(
                "next due: {} ({when}): post {} to {} [{}]{}",
                next.due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                next.post,
                next.account,
                next.delivery,
                if next.planned { " (planned)" } else { "" }
            );
        }
        None => println!("next due: nothing pending"),
    }
    let total_failed = view.counts.get(&State::Failed).copied().unwrap_or(0);
    if total_failed > 0 {
        println!("failed ({total_failed}; retry with `herald retry ID` or `herald retry --post POST`):");
        for d in &view.failed {
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

pub fn log(source: &Source, params: &LogParams, format: LogOutput) -> anyhow::Result<ExitCode> {
    params.to_query().map_err(anyhow::Error::msg)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Page by page: JSON and CSV are written as they come, so neither the
    // daemon nor this command holds the whole log; a table needs every row
    // to size its columns.
    let mut table = Vec::new();
    let mut after = None;
    if format == LogOutput::Csv {
        output::csv(&[], &mut out)?;
    }
    loop {
        let page = source.log_page(params, after)?;
        match format {
            LogOutput::Table => table.extend(page.records),
            LogOutput::Json => output::json_lines(&page.records, &mut out)?,
            LogOutput::Csv => output::csv_rows(&page.records, &mut out)?,
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if format == LogOutput::Table {
        output::table(&table, &mut out)?;
    }
    out.flush()?;
    if format == LogOutput::Table {
        eprintln!("{} record(s); `herald log --content HASH` shows the exact text sent", table.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn content(source: &Source, hash: &str) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&source.content(hash)?)?);
    Ok(ExitCode::SUCCESS)
}

pub fn upcoming(
    source: &Source,
    limit: usize,
    until: Option<chrono::DateTime<Utc>>,
    config: &std::path::Path,
    tz: chrono_tz::Tz,
) -> anyhow::Result<ExitCode> {
    let list = source.upcoming(limit, until, config)?;
    if list.is_empty() {
        println!("nothing pending");
    }
    if list.len() == limit {
        eprintln!("(the first {limit}; --limit N or --until TIME for more)");
    }
    for u in list {
        let mut paused = u.paused.as_ref().map(|p| format!("  PAUSED ({p})")).unwrap_or_default();
        if let Some(approval) = &u.approval {
            paused.push_str(&format!("  approval: {approval}"));
        }
        println!(
            "{}  {}  post {}  to {} ({})  {}  [{}]{paused}",
            u.due.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z"),
            u.due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            u.post,
            u.account,
            u.platform,
            match (u.planned, u.later) {
                (true, true) => "planned (later)".to_string(),
                (true, false) => "planned".to_string(),
                _ => format!("attempt {}", u.attempt + 1),
            },
            u.delivery
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn retry(source: &Source, selection: Selection) -> anyhow::Result<ExitCode> {
    let n = source.retry(&selection)?;
    let when = if source.is_daemon() { "now" } else { "when herald runs" };
    match n {
        0 => println!("nothing to retry: no failed or skipped delivery matches"),
        1 => println!("1 delivery queued again; it goes out {when}"),
        n => println!("{n} deliveries queued again; they go out {when}"),
    }
    Ok(if n == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn cancel(source: &Source, selection: Selection) -> anyhow::Result<ExitCode> {
    match source.cancel(&selection)? {
        0 => {
            println!("nothing to cancel: no pending delivery matches");
            Ok(ExitCode::FAILURE)
        }
        1 => {
            println!("1 delivery cancelled");
            Ok(ExitCode::SUCCESS)
        }
        n => {
            println!("{n} deliveries cancelled");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `herald pause`: what it paused, and every pause now in force.
pub fn pause(source: &Source, request: &crate::pauses::PauseRequest) -> anyhow::Result<ExitCode> {
    let view = source.pause(request)?;
    for what in &view.changed {
        println!("paused: {what}");
    }
    for what in &view.unchanged {
        println!("already paused: {what}");
    }
    if !source.is_daemon() {
        println!("(herald is not running: the pause is in its store and holds from its next start)");
    }
    print_pauses(&view.active);
    Ok(ExitCode::SUCCESS)
}

/// `herald resume`: what it lifted, and the pauses still in force.
pub fn resume(source: &Source, request: &crate::pauses::PauseRequest) -> anyhow::Result<ExitCode> {
    let view = source.resume(request)?;
    for what in &view.changed {
        println!("resumed: {what}");
    }
    println!("due deliveries it held go out now, under each post's misfire policy (skip, latest, all; grace)");
    print_pauses(&view.active);
    Ok(ExitCode::SUCCESS)
}

fn print_pauses(active: &[crate::pauses::Pause]) {
    if active.is_empty() {
        println!("no pause in force");
    } else {
        println!("in force:");
        for pause in active {
            println!("  {pause}");
        }
    }
}

/// `herald approve`: what was approved (content hash and targets).
pub fn approve(source: &Source, request: &crate::approvals::ApproveRequest) -> anyhow::Result<ExitCode> {
    let view = source.approve(request)?;
    let what = if view.already { "already approved" } else { "approved" };
    println!(
        "{what}: post {} as it is now (content {}) to {} account(s): {}",
        view.post,
        view.hash,
        view.targets.len(),
        view.targets.join(", ")
    );
    println!("any change to its text, images, link or targets needs a new approval");
    Ok(ExitCode::SUCCESS)
}

pub fn reload(source: &Source, reason: Option<&str>) -> anyhow::Result<ExitCode> {
    let view = source.reload(reason)?;
    if view.applied {
        match view.summary {
            Some(summary) => println!("config reloaded: {summary}"),
            None => println!("config reloaded"),
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for e in &view.errors {
            eprintln!("{e}");
        }
        eprintln!("the new config was refused; herald keeps running on the old one");
        Ok(ExitCode::FAILURE)
    }
}
