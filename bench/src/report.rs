//! The tables printed at the end, with the targets beside the numbers.

use crate::Results;

pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
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

/// CPU time (user + system) per delivery, in microseconds.
fn per_delivery(cpu_s: f64, deliveries: f64) -> String {
    format!("{:.0} µs", cpu_s / deliveries * 1e6)
}

fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if r < 0.1 { format!("{r:.4}x") } else { format!("{r:.2}x") }
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
                    per_delivery(l.first_ready_cpu_s, l.deliveries as f64),
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
                "CPU/delivery",
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
            &[
                "created in",
                "created/s",
                "done before due",
                "slowest status",
                "peak RSS",
                "CPU/delivery",
                "RSS after settling",
            ],
            &[vec![
                s(a.created_s),
                format!("{:.0}", a.per_s),
                s(a.before_due_s),
                format!("{:.0} ms ({} polls)", a.status_max_ms, a.status_polls),
                mib(a.peak_mib),
                per_delivery(a.cpu_s, a.deliveries as f64),
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
                "CPU/delivery",
            ],
            &[vec![
                format!("{}", b.delivered),
                format!("{}", b.failed),
                s(b.due_to_first_received_s),
                s(b.due_to_last_received_s),
                s(b.due_to_last_delivered_s),
                format!("{:.0}", b.per_s),
                mib(b.peak_mib),
                per_delivery(b.cpu_s, b.delivered as f64),
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
            &["received", "min", "p50", "p99", "max", "CPU/delivery"],
            &[vec![
                format!("{}", l.received),
                format!("{:.1} ms", l.min_ms),
                format!("{:.1} ms", l.p50_ms),
                format!("{:.1} ms", l.p99_ms),
                format!("{:.1} ms", l.max_ms),
                per_delivery(l.cpu_s, l.received as f64),
            ]],
        );
        println!(
            "target: p99 <= 20 ms; meanwhile a 4 KiB fdatasync took p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; load {:.2}",
            l.fsync_p50_ms, l.fsync_p99_ms, l.fsync_max_ms, l.load_during
        );
    }
}

/// The side-by-side part: herald and the Python peer, case by case.
pub fn print_peer(cases: &[crate::peer::Case]) {
    if cases.is_empty() {
        return;
    }
    println!(
        "\nSide by side: herald and APScheduler 3.11 (SQLite job store, a thread pool) on the same bursts and sink \
         (deliveries/s = deliveries / (due -> last request at the sink))"
    );
    let mut rows = Vec::new();
    for c in cases {
        let h = &c.herald;
        let herald_per_s = h.received_first_arrivals as f64 / h.due_to_last_received_s;
        rows.push(vec![
            format!("{} ({} over {})", c.name, c.deliveries, c.accounts),
            "herald".into(),
            format!("{}", c.herald_concurrency.min(c.accounts)),
            format!("{}", h.received_first_arrivals),
            s(h.due_to_first_received_s),
            s(h.due_to_last_received_s),
            format!("{herald_per_s:.0}"),
            mib(h.peak_mib),
            per_delivery(h.cpu_s, h.delivered as f64),
            format!("{} (start to ready)", s(h.ready_s)),
            format!("{:.1} MiB (state dir)", h.state_mib),
        ]);
        let Some(p) = &c.peer else {
            let mut row = vec![String::new(), "peer".into(), format!("{}", c.peer_threads)];
            row.push("did not finish".into());
            row.resize(11, String::new());
            rows.push(row);
            continue;
        };
        rows.push(vec![
            String::new(),
            "peer".into(),
            format!("{}", c.peer_threads),
            format!("{}", p.received_first_arrivals),
            s(p.due_to_first_received_s),
            s(p.due_to_last_received_s),
            format!("{:.0}", p.per_s),
            mib(p.peak_mib),
            per_delivery(p.cpu_s, p.delivered as f64),
            format!("{} (add_job)", s(p.scheduled_s)),
            format!("{:.1} MiB (SQLite)", p.sqlite_mib),
        ]);
        rows.push(vec![
            String::new(),
            "herald / peer".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            ratio(herald_per_s, p.per_s),
            ratio(h.peak_mib, p.peak_mib),
            ratio(h.cpu_s / h.delivered as f64, p.cpu_s / p.delivered as f64),
            ratio(h.ready_s, p.scheduled_s),
            ratio(h.state_mib, p.sqlite_mib),
        ]);
    }
    table(
        &[
            "case",
            "program",
            "in flight",
            "received",
            "due -> first",
            "due -> last",
            "deliveries/s",
            "peak RSS",
            "CPU/delivery",
            "stored in",
            "on disk",
        ],
        &rows,
    );
    for c in cases {
        if let Some(e) = &c.peer_error {
            println!("  {}: the peer did not finish: {e}", c.name);
        }
        let Some(p) = &c.peer else { continue };
        if p.scheduled_before_due_s < 0.0 {
            println!(
                "  {}: the peer stored its jobs {:.1} s after the due instant; its times count from then",
                c.name, -p.scheduled_before_due_s
            );
        }
        if p.failed > 0 || p.received_repeats > 0 || c.herald.received_repeats > 0 {
            println!(
                "  {}: peer failed {}, repeats herald {} / peer {}",
                c.name, p.failed, c.herald.received_repeats, p.received_repeats
            );
        }
    }
}

/// `--only store-burst`: the same burst on each store, in the order run.
pub fn print_store_bursts(runs: &[crate::StoreBurst]) {
    if runs.is_empty() {
        return;
    }
    println!("\nThe burst on each store (herald's durable point on both; sink-timed first/last, audit-timed rate):");
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let b = &r.burst;
            vec![
                r.store.clone(),
                r.round.to_string(),
                format!("{} / {}", b.delivered, b.deliveries),
                format!("{:.2} s", b.due_to_first_received_s),
                format!("{:.2} s", b.due_to_last_delivered_s),
                format!("{:.0}", b.per_s),
                per_delivery(b.cpu_s, b.delivered as f64),
                b.server_cpu_s.map_or("-".into(), |s| per_delivery(s, b.delivered as f64)),
                mib(b.peak_mib),
                s(b.ready_s),
                format!("{:.0}", r.disk_fsyncs_per_s),
                format!("{:.2}", r.load1),
            ]
        })
        .collect();
    table(
        &[
            "store",
            "round",
            "delivered",
            "due -> first",
            "due -> last delivered",
            "deliveries/s",
            "herald CPU/delivery",
            "server CPU/delivery",
            "peak RSS",
            "start to ready",
            "disk fdatasync/s",
            "load",
        ],
        &rows,
    );
}
