//! Printing audit records as a table, JSON lines or CSV.

use std::io::Write;

use crate::model::AuditRecord;

const COLUMNS: [&str; N] = [
    "seq",
    "time",
    "event",
    "state",
    "delivery",
    "post",
    "account",
    "platform",
    "occurrence",
    "attempt",
    "answer",
    "latency_ms",
    "url",
    "content",
    "actor",
    "detail",
    // Last, so CSV readers that go by position keep their columns.
    "daemon",
];
const N: usize = 17;

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
    if let Some(config) = &r.config {
        parts.extend(config.summary.clone());
        parts.extend(config.errors.iter().cloned());
        parts.extend(config.files.iter().map(|f| format!("{} sha256 {}", f.path, f.sha256)));
    }
    parts.join("; ")
}

fn row(r: &AuditRecord) -> [String; N] {
    // Records about an account or herald itself name no delivery (all zeros).
    let delivery = if r.delivery.0 == [0; 16] { String::new() } else { r.delivery.to_string() };
    let about_delivery = !delivery.is_empty();
    [
        r.seq.to_string(),
        r.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.event.to_string(),
        r.state.map(|s| s.to_string()).unwrap_or_default(),
        delivery,
        r.post.clone(),
        r.account.clone(),
        r.platform.map(|p| p.to_string()).unwrap_or_default(),
        if about_delivery { r.occurrence.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) } else { String::new() },
        r.attempt.to_string(),
        answer(r),
        r.latency_ms.map(|l| l.to_string()).unwrap_or_default(),
        r.url.clone().unwrap_or_default(),
        r.content_hash.clone(),
        r.actor.as_ref().map(ToString::to_string).unwrap_or_default(),
        detail(r),
        r.daemon.clone().unwrap_or_default(),
    ]
}

/// `text` safe to print on a terminal: control characters (escape
/// sequences, BEL, line breaks, tabs) and bidirectional overrides are shown
/// as `\u{1b}` rather than acted on. Platform answers and file names reach
/// the operator's terminal through this.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let escape = |c: char| c.is_control() || herald_adapters::content::is_hostile_char(c);
    if !text.chars().any(escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escape(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A readable table; the last column (detail) is not padded. Cells are
/// [`printable`]: an answer cannot drive the terminal.
pub fn table(records: &[AuditRecord], out: &mut impl Write) -> std::io::Result<()> {
    // Columns shown in the table (the state is in JSON/CSV; the event says
    // it). The writing daemon only when some record names one (PostgreSQL),
    // before the detail, which stays last and unpadded.
    let mut shown = vec![0usize, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    if records.iter().any(|r| r.daemon.is_some()) {
        shown.insert(shown.len() - 1, 16);
    }
    let rows: Vec<[String; N]> = records.iter().map(|r| row(r).map(|cell| printable(&cell).into_owned())).collect();
    let mut widths = [0usize; N];
    for (i, name) in COLUMNS.iter().enumerate() {
        widths[i] = name.len();
    }
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[String; N], out: &mut dyn Write| -> std::io::Result<()> {
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
    let header: [String; N] = COLUMNS.map(str::to_string);
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
    csv_rows(records, out)
}

/// CSV rows without the header (for a log read page by page).
pub fn csv_rows(records: &[AuditRecord], out: &mut impl Write) -> std::io::Result<()> {
    for r in records {
        let cells: Vec<String> = row(r).iter().map(|c| csv_cell(c)).collect();
        writeln!(out, "{}", cells.join(","))?;
    }
    Ok(())
}

/// One CSV cell, quoted when needed, and formula-safe: a cell a spreadsheet
/// would read as a formula (starting with `=`, `+`, `-`, `@`, tab or CR, as
/// OWASP lists them) starts with `'`, so `=HYPERLINK(...)` in a platform's
/// answer stays text.
fn csv_cell(text: &str) -> String {
    let text: std::borrow::Cow<str> =
        if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}").into() } else { text.into() };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.into_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Delivery, Event, State, from_millis};
    use herald_adapters::Platform;

    #[test]
    fn table_and_csv_show_delivery_occurrence_content_and_actor() {
        let mut d = Delivery::new("flood-warning", 1_780_000_000_000, "wuhan-weibo", Platform::Weibo, 0);
        d.state = State::Cancelled;
        d.content_hash = "3f9c2a00112233445566778899aabbcc".into();
        let actor = Actor { via: "control_socket".into(), name: "alice".into(), uid: Some(1001) };
        let record = AuditRecord::of(&d, Event::Cancelled, from_millis(1_770_000_000_000)).by(Some(actor));
        let mut table = Vec::new();
        super::table(std::slice::from_ref(&record), &mut table).unwrap();
        let mut csv = Vec::new();
        super::csv(std::slice::from_ref(&record), &mut csv).unwrap();
        for out in [String::from_utf8(table).unwrap(), String::from_utf8(csv).unwrap()] {
            let header = out.lines().next().unwrap();
            for column in ["delivery", "occurrence", "content", "actor"] {
                assert!(header.contains(column), "{header}");
            }
            for value in [&d.id.to_string(), "2026-05-28T20:26:40Z", d.content_hash.as_str(), "alice (uid 1001)"] {
                assert!(out.contains(value), "`{value}` missing from:\n{out}");
            }
        }
    }

    #[test]
    fn the_writing_daemon_is_a_table_column_only_when_a_record_names_one_and_always_the_last_csv_column() {
        let time = from_millis(1_770_000_000_000);
        let mut named = AuditRecord::about_herald(Event::ConfigApplied, time, None);
        named.daemon = Some("herald-a pid 41 boot 0badcafe".into());
        let plain = AuditRecord::about_herald(Event::ConfigApplied, time, None);
        let text = |f: fn(&[AuditRecord], &mut Vec<u8>) -> std::io::Result<()>, records: &[AuditRecord]| {
            let mut out = Vec::new();
            f(records, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        let table = text(super::table, std::slice::from_ref(&plain));
        assert!(!table.lines().next().unwrap().contains("daemon"), "{table}");
        let table = text(super::table, &[plain.clone(), named.clone()]);
        assert!(table.lines().next().unwrap().contains("daemon"), "{table}");
        assert!(table.contains("herald-a pid 41 boot 0badcafe"), "{table}");
        let csv = text(super::csv, &[plain, named]);
        let lines: Vec<&str> = csv.lines().collect();
        assert!(lines[0].ends_with(",detail,daemon"), "{csv}");
        assert!(lines[1].ends_with(','), "a record without a daemon has an empty last cell: {csv}");
        assert!(lines[2].ends_with(",herald-a pid 41 boot 0badcafe"), "{csv}");
    }

    #[test]
    fn csv_cells_are_quoted_when_needed() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn csv_cells_a_spreadsheet_would_evaluate_stay_text() {
        assert_eq!(csv_cell("=HYPERLINK(\"http://x\",\"y\")"), "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"");
        for cell in ["+1+1", "-1+1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(csv_cell(cell).trim_start_matches('"').starts_with('\''), "{cell:?} -> {}", csv_cell(cell));
        }
        assert_eq!(csv_cell("1+1"), "1+1");
    }

    /// A record whose platform answer carries a terminal escape, a bidi
    /// override and a formula, as a hostile platform or proxy could send.
    fn hostile_record() -> AuditRecord {
        let time = chrono::DateTime::parse_from_rfc3339("2026-12-01T01:00:00Z").unwrap().to_utc();
        let mut r = AuditRecord::about_account("wuhan-hook", Platform::Webhook, Event::Failed, time, "refused".into());
        r.answer.message = Some("\u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}evil\nline".into());
        r.url = Some("=HYPERLINK(\"http://evil.example/\",\"click\")".into());
        r
    }

    #[test]
    fn the_table_escapes_what_would_drive_a_terminal() {
        let mut out = Vec::new();
        table(&[hostile_record()], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.chars().any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'), "{text:?}");
        assert_eq!(text.lines().count(), 2, "a line break in an answer split the row: {text}");
        assert!(text.contains("platform said: \\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{202e}evil\\u{a}line"), "{text}");
    }

    #[test]
    fn the_csv_export_is_formula_safe() {
        let mut out = Vec::new();
        csv(&[hostile_record()], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(",\"'=HYPERLINK(\"\"http://evil.example/\"\",\"\"click\"\")\","), "{text}");
    }
}
