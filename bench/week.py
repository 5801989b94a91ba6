"""The week backfill: 7 days of the 4,500-point / 1-minute site, 45.36M samples, loaded by
`vitals backfill --chunk-hours 24` (one process, one run per day) into a fresh DuckDB file on a
fresh DAGSTER_HOME.

What is timed: the `vitals backfill` process from start to exit (wall), its CPU seconds and its
peak RSS (os.wait4: the kernel's figure for that process; target: within 1 GiB, as one day:
memory must not grow with the range). The RSS after each day-sized run is sampled from /proc as
the progress lines arrive. The simulator runs in its own process with no cache (`--cache-mb 0`):
it renders every page when asked for, as ACE does, on the same 2 cores. Appends a row to
bench/RESULTS.md.

    .venv/bin/python bench/week.py [--days 7] [--points 4500]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN, Simulator, bench_home, commit, load_average, record
from vitals_pipeline.windows import PARTITION, partition_key

SITE = "big"


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
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=args.days)
    expected = args.points * args.days * 24 * 60
    load = load_average()
    with Simulator(SITE, args.points, cache_mb=0) as sim:
        _, env = bench_home("vitals-week-", sim.url, SITE, start - timedelta(days=1), args.page_size)
        print(f"simulator {sim.url} (renders every page on request): {args.points} points x 1/min, "
              f"{start:%Y-%m-%d} .. {end:%Y-%m-%d} UTC, {expected:,} samples; load {load:.1f}")
        began = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "vitals"), "backfill", "--from", partition_key(start),
             "--to", partition_key(end - PARTITION), "--chunk-hours", "24"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith("["):
                line += f"  [RSS now {rss_mib(proc.pid) or 0:.0f} MiB]"
            if line:
                print(line, flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"vitals backfill failed (exit {proc.returncode}); its output is above")
        with duckdb.connect(env["VITALS_DUCKDB_PATH"], read_only=True) as con:
            stored = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchone()[0]
    load = max(load, load_average())
    peak = usage.ru_maxrss / 1024
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"week: {wall:.1f}s wall, {cpu:.1f} CPU s for {stored:,} samples (expected {expected:,}), "
        f"{stored / wall:,.0f} samples/s, peak RSS {peak:.0f} MiB"
    )
    if stored != expected:
        raise SystemExit("the backfill did not store every sample")
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {args.points}x{args.days}d | render | "
        f"{wall:.1f} | {cpu:.1f} | {stored:,} | {stored / wall:,.0f} | {peak:.0f} | {load:.1f} |"
    )
    print(line)
    if not args.no_record:
        record(WEEK_HEADER, WEEK_PREAMBLE, line)


WEEK_PREAMBLE = """## Week backfill, against a simulator that renders every page on request

Measured by bench/week.py: `vitals backfill --chunk-hours 24` over 7 days of the same site (one
process, one run per day). wall and CPU s of that process, start to exit; peak RSS = the kernel's
figure for it (os.wait4). server `render` = the simulator renders every page when asked for (no
cache), on the same 2 cores. load = highest 1-min load average seen (2 cores, shared).

"""
WEEK_HEADER = (
    "| date | commit | site x range | server | wall s | CPU s | samples stored | samples/s "
    "| peak RSS MiB | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
