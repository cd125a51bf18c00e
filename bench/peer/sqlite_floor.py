"""SQLite's floor under a burst, for `herald-bench --only burst-floor,memory-floor`.

The same records as the sled and append-only floors of bench/src/burst_floor.rs
(a 330-byte delivery record and a 430-byte audit record per transition, 1,000
accounts, every delivery due at one instant), in one SQLite file in WAL mode
with synchronous = FULL: a commit is durable when it returns. Standard library
only. Called by the harness with one JSON argument (mode, engine, dir,
deliveries, batch, cache_mb); prints one JSON line of what it measured about
itself (the same fields as the Rust children).
"""

import json
import os
import resource
import sqlite3
import sys
import time

DELIVERY_BYTES = 330
AUDIT_BYTES = 430
DUE = 1_800_000_000_000
ACCOUNTS = 1000
SCAN = 1000


def kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def delivery_id(n):
    # Spread like a hash, as the Rust side's ids (the values differ; the shape matters).
    return (n * 0x9E3779B97F4A7C15 % (1 << 128)).to_bytes(16, "big")


def record(length, n, state):
    tag = ("%016x" % n).encode()
    return tag + bytes([ord("a") + state]) * (length - 16)


def connect(directory):
    db = sqlite3.connect(os.path.join(directory, "floor.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


SCHEMA = """
CREATE TABLE deliveries (
    id BLOB PRIMARY KEY, post TEXT NOT NULL, due INTEGER NOT NULL,
    account TEXT NOT NULL, state INTEGER NOT NULL, body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX due ON deliveries (due, id) WHERE state = 0;
CREATE INDEX in_flight ON deliveries (state) WHERE state = 1;
CREATE INDEX by_post ON deliveries (post, due);
CREATE TABLE audit (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);
"""


def make(spec):
    db = connect(spec["dir"])
    db.executescript(SCHEMA)
    n_all = spec["deliveries"]
    for start in range(0, n_all, 2000):
        rows = range(start, min(start + 2000, n_all))
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO deliveries VALUES (?, ?, ?, ?, 0, ?)",
            (
                (delivery_id(n), "burst-%06d" % (n // ACCOUNTS), DUE, "city-%04d" % (n % ACCOUNTS + 1),
                 record(DELIVERY_BYTES, n, 0))
                for n in rows
            ),
        )
        db.executemany("INSERT INTO audit (body) VALUES (?)", ((record(AUDIT_BYTES, n, 0),) for n in rows))
        db.execute("COMMIT")
    db.execute("INSERT INTO counts VALUES (0, ?)", (n_all,))
    db.close()
    return {"deliveries": n_all}


def burst(spec):
    db = connect(spec["dir"])
    rss_open = kib("VmRSS")
    cpu0 = time.process_time()
    started = time.monotonic()
    batch_size = spec["batch"]
    done = 0
    commits = 0
    outcomes = []
    queue = []
    after = (-1, b"")
    while True:
        if not queue:
            # One page of the due index, as the scheduler reads it.
            queue = db.execute(
                "SELECT due, id, account FROM deliveries WHERE state = 0 AND (due, id) > (?, ?) "
                "ORDER BY due, id LIMIT ?",
                (after[0], after[1], SCAN),
            ).fetchall()
            if queue:
                after = (queue[-1][0], queue[-1][1])
                queue.reverse()
        batch = [queue.pop() for _ in range(min(batch_size, len(queue)))]
        if not batch and not outcomes:
            break
        db.execute("BEGIN")
        # The previous batch's outcomes and this batch's claims: one commit.
        for _due, ident, _account in outcomes:
            db.execute("SELECT body FROM deliveries WHERE id = ?", (ident,)).fetchone()
            n = int.from_bytes(ident[:8], "big")
            db.execute("UPDATE deliveries SET state = 2, body = ? WHERE id = ?", (record(DELIVERY_BYTES, n, 2), ident))
            db.execute("INSERT INTO audit (body) VALUES (?)", (record(AUDIT_BYTES, n, 2),))
        if outcomes:
            db.execute("UPDATE counts SET n = n - ? WHERE state = 1", (len(outcomes),))
            db.execute("INSERT INTO counts VALUES (2, ?) ON CONFLICT (state) DO UPDATE SET n = n + excluded.n",
                       (len(outcomes),))
        for _due, ident, _account in batch:
            db.execute("SELECT body FROM deliveries WHERE id = ?", (ident,)).fetchone()
            n = int.from_bytes(ident[:8], "big")
            db.execute("UPDATE deliveries SET state = 1, body = ? WHERE id = ?", (record(DELIVERY_BYTES, n, 1), ident))
            db.execute("INSERT INTO audit (body) VALUES (?)", (record(AUDIT_BYTES, n, 1),))
        if batch:
            db.execute("UPDATE counts SET n = n - ? WHERE state = 0", (len(batch),))
            db.execute("INSERT INTO counts VALUES (1, ?) ON CONFLICT (state) DO UPDATE SET n = n + excluded.n",
                       (len(batch),))
        db.execute("COMMIT")
        commits += 1
        done += len(batch)
        outcomes = batch
    seconds = time.monotonic() - started
    cpu = time.process_time() - cpu0
    db.close()
    return {"deliveries": done, "seconds": seconds, "cpu_s": cpu, "fdatasyncs": commits, "rss_open_kib": rss_open}


def hold(spec):
    db = connect(spec["dir"])
    rss_open = kib("VmRSS")
    n = 0
    for (ident,) in db.execute("SELECT id FROM deliveries WHERE state = 0 ORDER BY due, id").fetchall():
        db.execute("SELECT body FROM deliveries WHERE id = ?", (ident,)).fetchone()
        n += 1
    return {"deliveries": n, "rss_open_kib": rss_open}


def main():
    spec = json.loads(sys.argv[1])
    cpu0 = time.process_time()
    started = time.monotonic()
    report = {"make": make, "burst": burst, "hold": hold}[spec["mode"]](spec)
    report.setdefault("seconds", time.monotonic() - started)
    report.setdefault("cpu_s", time.process_time() - cpu0)
    report.setdefault("fdatasyncs", 0)
    report.setdefault("rss_open_kib", 0)
    report["rss_end_kib"] = kib("VmRSS")
    report["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(report))


if __name__ == "__main__":
    main()
