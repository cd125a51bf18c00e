//! `herald recall`: the order as typed, and the per-account report.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::output::printable;
use super::source::Source;
use crate::recall::{RecallOrder, RecallReport, Verdict};

/// `--occurrence`: an RFC 3339 time, as `herald log` shows occurrences.
pub fn occurrence(text: &str) -> anyhow::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text.trim()).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        anyhow::anyhow!("--occurrence `{text}` is not an RFC 3339 time such as 2026-03-01T09:00:00+08:00 ({e})")
    })
}

pub fn recall(source: &Source, order: &RecallOrder, config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let report = source.recall(order, config)?;
    print(&report, &mut std::io::stdout().lock())?;
    Ok(if report.complete() { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// The table, then one line per kind of outcome; what to do by hand is
/// printed in full, under the table.
pub fn print(report: &RecallReport, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(out, "{:<24} {:<10} {:<25} {:<28} DETAIL", "ACCOUNT", "PLATFORM", "OCCURRENCE", "OUTCOME")?;
    for t in &report.targets {
        writeln!(
            out,
            "{:<24} {:<10} {:<25} {:<28} {}",
            printable(&t.account),
            t.platform.name(),
            t.occurrence.to_rfc3339(),
            t.verdict.label(),
            printable(&t.detail)
        )?;
    }
    let count = |v: Verdict| report.targets.iter().filter(|t| t.verdict == v).count();
    writeln!(
        out,
        "\n{} taken down, {} cancelled before sending, {} not possible, {} failed",
        count(Verdict::TakenDown),
        count(Verdict::Cancelled),
        count(Verdict::NotPossible),
        count(Verdict::Failed)
    )?;
    let by_hand: Vec<_> = report.targets.iter().filter(|t| t.verdict == Verdict::NotPossible).collect();
    if !by_hand.is_empty() {
        writeln!(out, "\nTake these down by hand:")?;
        for t in by_hand {
            writeln!(out, "  {} ({}): {}", printable(&t.account), t.platform, printable(&t.detail))?;
        }
    }
    if count(Verdict::Failed) > 0 {
        writeln!(out, "\nSome copies are still up: run the same `herald recall` again (it retries them).")?;
    }
    Ok(())
}
