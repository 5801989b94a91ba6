"""The week backfill (issue 5): 7 days of the 4,500-point / 1-minute site, 45.36M samples, loaded by
`vitals backfill` as day-sized runs into a fresh DuckDB file on a fresh DAGSTER_HOME.

Prints wall seconds, samples/s, the peak RSS of the backfill process (target: within 1 GB, the
same as one day: memory must not grow with the range), and the RSS after each day-sized run
(from the process's own /proc figures, sampled by a thread of this script), and appends a row
to bench/RESULTS.md. The simulator renders each day on demand (a week does not fit its cache),
in its own process.

    .venv/bin/python bench/week.py [--days 7] [--points 4500]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import BIN, SITE, bench_home, commit, record, start_simulator  # noqa: E402
from vitals_pipeline.windows import PARTITION, partition_key  # noqa: E402


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--points", type=int, default=4500)
    parser.add_argument("--page-size", type=int, default=50000)
    parser.add_argument("--cache-mb", type=int, default=800)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    expected = args.points * args.days * 24 * 60
    sim, url = start_simulator(args.points, args.cache_mb)
    _, env = bench_home("vitals-week-", url, start, args.page_size)
    try:
        print(f"simulator {url}: {args.points} points x 1/min, {start:%Y-%m-%d} .. {end:%Y-%m-%d} UTC, {expected:,} samples")
        began = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "vitals"), "backfill", "--from", partition_key(start),
             "--to", partition_key(end - PARTITION), "--chunk-hours", "24"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        peak = [0.0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], rss_mib(proc.pid) or 0.0)
                time.sleep(0.05)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        per_run = []
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith("["):
                per_run.append(f"{line}  [RSS now {rss_mib(proc.pid) or 0:.0f} MiB, peak so far {peak[0]:.0f} MiB]")
                print(per_run[-1], flush=True)
            elif line:
                print(line, flush=True)
        proc.wait()
        wall = time.perf_counter() - began
        watcher.join(timeout=1)
        if proc.returncode != 0:
            raise SystemExit(f"vitals backfill failed (exit {proc.returncode})")
        with duckdb.connect(env["VITALS_DUCKDB_PATH"], read_only=True) as con:
            stored = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchone()[0]
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(
        f"week: {wall:.1f}s wall for {stored:,} samples (expected {expected:,}), "
        f"{stored / wall:,.0f} samples/s, peak RSS {peak[0]:.0f} MiB"
    )
    if stored != expected:
        raise SystemExit("the backfill did not store every sample")
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {args.points}x{args.days}d | {wall:.1f} | "
        f"{stored:,} | {stored / wall:,.0f} | {peak[0]:.0f} |"
    )
    print(line)
    if not args.no_record:
        record(WEEK_HEADER, WEEK_PREAMBLE, line)


WEEK_PREAMBLE = """## Week backfill

Measured by bench/week.py: `vitals backfill --chunk-hours 24` over 7 days of the same site (one
process, one run per day), peak RSS of that process sampled every 50 ms from /proc.

"""
WEEK_HEADER = (
    "| date | commit | site x range | wall s | samples stored | samples/s | peak RSS MiB |\n"
    "|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
