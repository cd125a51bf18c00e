"""The benchmark's persistent-scheduler peer: APScheduler 3.11 with a SQLite
job store (SQLAlchemyJobStore) and 20 worker threads (ThreadPoolExecutor),
doing herald's burst: JOBS one-shot jobs due at one instant, each one HTTP
POST of herald's webhook body to the harness's loopback receiver, spread
over ACCOUNTS receiver paths (/hook/city-0001 ...).

The harness (bench/src/peer.rs) runs it as a child process and reads its
stdout, one JSON object a line:

  {"event": "scheduled", "jobs": N, "seconds": S, "sqlite_bytes": B}
      every job is in the SQLite file (S: the time add_job took for all);
  {"event": "done", "delivered": D, "failed": F}
      every job ran; the process then waits for stdin to close, so the
      harness can read its CPU time and peak RSS from /proc first.

The receiver, not this script, times the deliveries. Installed by the
harness into a venv (bench/peer/requirements.txt pins every package).
"""

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import requests
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

_local = threading.local()
_lock = threading.Lock()
_counts = {"delivered": 0, "failed": 0}
_all_done = threading.Event()
_expected = 0


def deliver(url, key, body):
    """One job: POST the body, as herald's webhook adapter does (JSON, the
    delivery id as Idempotency-Key), on a keep-alive connection per thread."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    try:
        answer = session.post(
            url,
            data=body.encode("utf-8"),
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
            timeout=30,
        )
        ok = 200 <= answer.status_code < 300
        if not ok:
            print(f"{key}: HTTP {answer.status_code}", file=sys.stderr)
    except requests.RequestException as e:
        ok = False
        print(f"{key}: {e}", file=sys.stderr)
    with _lock:
        _counts["delivered" if ok else "failed"] += 1
        if _counts["delivered"] + _counts["failed"] >= _expected:
            _all_done.set()


def body_of(post_id, account, occurrence, key):
    """herald's webhook body for the harness's posts (bench/src/configs.rs)."""
    return json.dumps(
        {
            "delivery_id": key,
            "post_id": post_id,
            "account": account,
            "occurrence": occurrence,
            "attempt": 1,
            "content": {
                "title": f"防范电信诈骗 {post_id}",
                "text": "公安机关提醒：公检法机关不会通过电话、短信要求转账，也不存在所谓“安全账户”。\n"
                'Police reminder: no official will ever ask you to move money to a "safe account".',
                "link": f"https://www.example.gov.cn/fraud/{post_id}",
                "images": [],
            },
        },
        ensure_ascii=False,
    )


def say(**fields):
    print(json.dumps(fields), flush=True)


def main():
    global _expected
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="the SQLite file (created)")
    parser.add_argument("--sink", required=True, help="the receiver, http://127.0.0.1:PORT")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--accounts", type=int, required=True)
    parser.add_argument("--due", required=True, help="the due instant, RFC 3339 UTC")
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=600)
    args = parser.parse_args()
    host = urlsplit(args.sink).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        parser.error(f"--sink must be on loopback, not {host}")
    posts = max(args.jobs // args.accounts, 1)
    _expected = posts * args.accounts
    due = datetime.fromisoformat(args.due.replace("Z", "+00:00")).astimezone(timezone.utc)
    occurrence = due.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{args.db}")},
        executors={"default": ThreadPoolExecutor(args.threads)},
        # Run every job however late its thread gets to it (herald delivers
        # every post of a burst too); the default grace of 1 s would skip
        # most of a burst of thousands.
        job_defaults={"misfire_grace_time": None, "coalesce": False},
        timezone=timezone.utc,
    )
    # Paused: add_job writes each job to the store at once (one SQLite
    # transaction each), and nothing runs before resume().
    scheduler.start(paused=True)
    started = time.monotonic()
    for p in range(posts):
        post_id = f"burst-{p:03}"
        for a in range(1, args.accounts + 1):
            account = f"city-{a:04}"
            key = f"peer-{p:05}-{a:04}"
            scheduler.add_job(
                deliver,
                "date",
                run_date=due,
                args=[f"{args.sink}/hook/{account}", key, body_of(post_id, account, occurrence, key)],
                id=key,
            )
    seconds = time.monotonic() - started
    say(event="scheduled", jobs=_expected, seconds=seconds, sqlite_bytes=os.stat(args.db).st_blocks * 512)
    scheduler.resume()
    finished = _all_done.wait(timeout=max((due - datetime.now(timezone.utc)).total_seconds(), 0) + args.max_seconds)
    with _lock:
        say(event="done" if finished else "timeout", **_counts)
    # Hold still until the harness has read /proc, then stop.
    sys.stdin.read()
    scheduler.shutdown(wait=False)
    return 0 if finished and _counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
