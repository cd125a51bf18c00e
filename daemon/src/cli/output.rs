//! Printing audit records as a table, JSON lines or CSV.

use std::io::Write;

use crate::model::AuditRecord;

const COLUMNS: [&str; 14] = [
    "seq",
    "time",
    "event",
    "state",
    "post",
    "account",
    "platform",
    "occurrence",
    "attempt",
    "answer",
    "latency_ms",
    "url",
    "content",
    "detail",
];

fn answer(r: &AuditRecord) -> String {
    let mut parts = Vec::new();
    if let Some(s) = r.answer.status {
        parts.push(s.to_string());
    }
    if let Some(c) = &r.answer.code {
        parts.push(c.clone());
    }
    parts.join(" ")
}

fn detail(r: &AuditRecord) -> String {
    let mut parts = Vec::new();
    if let Some(reason) = &r.reason
        && r.event != crate::model::Event::Attempt
    {
        parts.push(reason.clone());
    }
    if let Some(m) = &r.answer.message
        && r.event != crate::model::Event::Delivered
    {
        parts.push(format!("platform said: {m}"));
    }
    if let Some(next) = r.next_due
        && matches!(
            r.event,
            crate::model::Event::RetryScheduled | crate::model::Event::Recovered | crate::model::Event::Requeued
        )
    {
        parts.push(format!("next attempt {}", next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    parts.join("; ")
}

fn row(r: &AuditRecord) -> [String; 14] {
    [
        r.seq.to_string(),
        r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.event.to_string(),
        r.state.map(|s| s.to_string()).unwrap_or_default(),
        r.post.clone(),
        r.account.clone(),
        r.platform.map(|p| p.to_string()).unwrap_or_default(),
        r.occurrence.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        r.attempt.to_string(),
        answer(r),
        r.latency_ms.map(|l| l.to_string()).unwrap_or_default(),
        r.url.clone().unwrap_or_default(),
        r.content_hash.clone(),
        detail(r),
    ]
}

/// A readable table; the last column (detail) is not padded.
pub fn table(records: &[AuditRecord], out: &mut impl Write) -> std::io::Result<()> {
    // Columns shown in the table (content hash and occurrence are in JSON/CSV).
    let shown = [0usize, 1, 2, 4, 5, 6, 8, 9, 10, 11, 13];
    let rows: Vec<[String; 14]> = records.iter().map(row).collect();
    let mut widths = [0usize; 14];
    for (i, name) in COLUMNS.iter().enumerate() {
        widths[i] = name.len();
    }
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[String; 14], out: &mut dyn Write| -> std::io::Result<()> {
        let mut text = String::new();
        for (n, &i) in shown.iter().enumerate() {
            if n + 1 == shown.len() {
                text.push_str(&cells[i]);
            } else {
                let pad = widths[i] - cells[i].chars().count();
                text.push_str(&cells[i]);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    let header: [String; 14] = COLUMNS.map(str::to_string);
    line(&header, out)?;
    for r in &rows {
        line(r, out)?;
    }
    Ok(())
}

/// One JSON object per line, every field.
pub fn json_lines(records: &[AuditRecord], out: &mut impl Write) -> std::io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut *out, r)?;
        writeln!(out)?;
    }
    Ok(())
}

/// CSV (RFC 4180) with a header row.
pub fn csv(records: &[AuditRecord], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", COLUMNS.join(","))?;
    for r in records {
        let cells: Vec<String> = row(r).iter().map(|c| csv_cell(c)).collect();
        writeln!(out, "{}", cells.join(","))?;
    }
    Ok(())
}

fn csv_cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_are_quoted_when_needed() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
