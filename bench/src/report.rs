//! The tables printed at the end, with the targets beside the numbers.

use crate::Results;

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for row in rows {
        line(row.clone());
    }
}

fn s(v: f64) -> String {
    format!("{v:.2} s")
}

fn mib(v: f64) -> String {
    format!("{v:.0} MiB")
}

pub fn print(r: &Results) {
    let m = &r.machine;
    println!();
    println!(
        "machine: {} cores ({}), {} MiB RAM, Linux {}; scratch on {}, {:.0} fsync/s (4 KiB write + fdatasync)",
        m.cores, m.cpu, m.memory_mib, m.kernel, m.disk, m.fsyncs_per_s
    );
    println!(
        "load average (1 min): {:.2} before, {:.2} after; [daemon] concurrency = {}, schedule_ahead = {}",
        r.load_before,
        r.load_after,
        r.concurrency,
        r.schedule_ahead.as_deref().unwrap_or("1h (default)")
    );
    if !r.loads.is_empty() {
        println!("\nLoad and start-up (100 accounts; one-shot posts, each to all accounts)");
        let rows: Vec<Vec<String>> = r
            .loads
            .iter()
            .map(|l| {
                vec![
                    format!("{}", l.deliveries),
                    format!("{} ({:.1} CPU)", s(l.check_s), l.check_cpu_s),
                    mib(l.check_peak_mib),
                    format!("{} ({:.1} CPU)", s(l.first_ready_s), l.first_ready_cpu_s),
                    s(l.reload_same_s),
                    s(l.reload_changed_s),
                    mib(l.run_peak_mib),
                    mib(l.state_mib),
                    format!("{} ({:.2} CPU)", s(l.startup_s), l.startup_cpu_s),
                    mib(l.startup_peak_mib),
                    mib(l.steady_rss_mib),
                ]
            })
            .collect();
        table(
            &[
                "deliveries",
                "check",
                "check peak",
                "1st reconcile",
                "reload same",
                "reload 1%",
                "peak RSS (1)",
                "state dir",
                "start-up",
                "peak RSS (2)",
                "steady RSS",
            ],
            &rows,
        );
        println!(
            "targets at 1M: check <= 5 s, 1st reconcile <= 20 s, reload same <= 3 s, start-up <= 2 s, steady RSS <= 150 MiB"
        );
        for l in &r.loads {
            println!("  {}: reload same -> {}; reload 1% -> {}", l.deliveries, l.reload_same, l.reload_changed);
        }
    }
    if !r.floor.is_empty() {
        println!(
            "\nStore floor: the same sled writes per delivery as a reconcile, in batches of 2,000, without herald"
        );
        let rows: Vec<Vec<String>> = r
            .floor
            .iter()
            .map(|f| vec![format!("{}", f.deliveries), s(f.seconds), s(f.cpu_seconds), format!("{:.0}", f.per_s)])
            .collect();
        table(&["deliveries", "time", "CPU", "deliveries/s"], &rows);
    }
    if let Some(a) = &r.ahead {
        println!(
            "\nPlanned, coming due: {} deliveries at one instant, created by the posts' timers {} s before it",
            a.deliveries, a.schedule_ahead_s
        );
        table(
            &["created in", "created/s", "done before due", "slowest status", "peak RSS", "RSS after settling"],
            &[vec![
                s(a.created_s),
                format!("{:.0}", a.per_s),
                s(a.before_due_s),
                format!("{:.0} ms ({} polls)", a.status_max_ms, a.status_polls),
                mib(a.peak_mib),
                mib(a.steady_mib),
            ]],
        );
    }
    if let Some(b) = &r.burst {
        println!(
            "\nBurst: {} deliveries due at one instant across {} accounts, every change durable",
            b.deliveries, b.accounts
        );
        table(
            &[
                "delivered",
                "failed",
                "due -> first request",
                "due -> last request",
                "due -> last delivered",
                "deliveries/s",
                "peak RSS",
            ],
            &[vec![
                format!("{}", b.delivered),
                format!("{}", b.failed),
                s(b.due_to_first_received_s),
                s(b.due_to_last_received_s),
                s(b.due_to_last_delivered_s),
                format!("{:.0}", b.per_s),
                mib(b.peak_mib),
            ]],
        );
        println!(
            "target: >= 5000/s; herald was ready {:.1} s before the due instant; the sink saw {} first requests, {} repeats",
            b.ready_before_due_s, b.received_first_arrivals, b.received_repeats
        );
    }
    if let Some(l) = &r.lateness {
        println!(
            "\nLateness: {} deliveries spread over {} s (request received at the sink - due time)",
            l.deliveries, l.window_s
        );
        table(
            &["received", "min", "p50", "p99", "max"],
            &[vec![
                format!("{}", l.received),
                format!("{:.1} ms", l.min_ms),
                format!("{:.1} ms", l.p50_ms),
                format!("{:.1} ms", l.p99_ms),
                format!("{:.1} ms", l.max_ms),
            ]],
        );
        println!(
            "target: p99 <= 20 ms; meanwhile a 4 KiB fdatasync took p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; load {:.2}",
            l.fsync_p50_ms, l.fsync_p99_ms, l.fsync_max_ms, l.load_during
        );
    }
}
