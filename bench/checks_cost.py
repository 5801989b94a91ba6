"""What the data-quality layer costs on one day of the 4,500-point site (issue 3: < 20 %).

Materializes the same day (288 five-minute partitions, 6.48M samples, one single-run backfill)
into a fresh DuckDB file twice per round: once with VITALS_CHECKS=off (no checks, no quality
table) and once with the checks on (quality rows computed and merged in the same transaction,
the eight checks evaluated on the stored window). Each run is its own process, in-process
executor, against one simulator process serving from a warm cache.

The machine is shared and wall-clock runs vary by seconds, so the checks' own work is also timed
inside the runs: the assessment before the store (points, bounded history, the grid), the quality
table's share of the store (its frame check and merge) and the checks after the store (count
reconciliation of the stored window, results). Dagster's own bookkeeping is reported apart: when
a range run is created, Dagster 1.13 writes one "planned" row per check and partition (8 x 288 on
a day), timed as the difference in run-creation time. After each day, a scheduled-style tick
(the newest partition plus 10 minutes of lookback, re-fetched over the stored day) is timed too.

    .venv/bin/python bench/checks_cost.py [--points 4500] [--hours 24] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = "big"
KEY = "bench-key"
DAY = datetime(2025, 10, 12, tzinfo=UTC)


def start_simulator(points: int, now: datetime, cache_mb: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitals_pipeline.cli_simulate", "--port", "0", "--sites", SITE,
         "--points", str(points), "--interval", "60", "--api-key", KEY,
         "--now", now.strftime("%Y-%m-%dT%H:%M:%S"), "--cache-mb", str(cache_mb)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1]


def warm_up(url: str, start: datetime, end: datetime) -> float:
    """Fetch the window once so that the simulator serves every run from its cache."""
    sys.path.insert(0, str(ROOT))
    from vitals_pipeline.ace.client import AceClient, FetchStats

    began = time.perf_counter()
    with AceClient(url, KEY, page_size=50000) as client:
        for _ in client.iter_timeseries_pages(SITE, start, end, FetchStats()):
            pass
    return time.perf_counter() - began


def child(mode: str, first: str, last: str) -> None:
    """One measured run in this process (env already set); prints a JSON line."""
    sys.path.insert(0, str(ROOT))
    import dagster as dg

    from vitals_pipeline.assets.site import points_key, range_tags, timeseries_key
    from vitals_pipeline.checks import specs
    from vitals_pipeline.config import Settings
    from vitals_pipeline.definitions import build_definitions
    from vitals_pipeline.windows import PARTITION, partition_key, partition_start

    timings = {"assess": 0.0, "check_seconds": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[name] += time.perf_counter() - began
        return wrapper

    # The asset reads the points and history, then judges the window in a thread while the
    # samples are inserted: these seconds overlap the store's (which waits for the quality rows).
    specs.read_quality_inputs = timed("assess", specs.read_quality_inputs)
    specs.assess = timed("assess", specs.assess)
    specs.RunQuality.check_results = timed("check_seconds", specs.RunQuality.check_results)
    from dagster._core.instance.runs.run_domain import RunDomain

    from vitals_pipeline.storage import duckdb_io

    timings.update(store=0.0, quality_store=0.0, planned_events=0.0)
    duckdb_io.VitalsArrowTypeHandler.handle_output = timed(
        "store", duckdb_io.VitalsArrowTypeHandler.handle_output
    )
    # Dagster's bookkeeping when a run is created: one "planned" row per asset partition and,
    # for checks, per check and partition.
    RunDomain._log_asset_planned_events = timed("planned_events", RunDomain._log_asset_planned_events)
    # The quality table's share of the store: its frame check and its merge.
    check_frame, merge_rows = duckdb_io.check_frame, duckdb_io.merge_rows

    def timed_check_frame(frame, *, table, **kwargs):
        began = time.perf_counter()
        try:
            return check_frame(frame, table=table, **kwargs)
        finally:
            if table.endswith(".quality"):
                timings["quality_store"] += time.perf_counter() - began

    def timed_merge_rows(conn, target, frame, **kwargs):
        began = time.perf_counter()
        try:
            return merge_rows(conn, target, frame, **kwargs)
        finally:
            if target.table == "quality":
                timings["quality_store"] += time.perf_counter() - began

    duckdb_io.check_frame, duckdb_io.merge_rows = timed_check_frame, timed_merge_rows

    defs = build_definitions(Settings.from_env())
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    assert job.execute_in_process(instance=instance, asset_selection=[points_key(SITE)]).success
    profile_to = os.environ.get("CHECKS_COST_PROFILE")  # a path: write a pyinstrument profile
    if profile_to:
        from pyinstrument import Profiler

        profiler = Profiler()
        profiler.start()
    began = time.perf_counter()
    result = job.execute_in_process(
        instance=instance, asset_selection=[timeseries_key(SITE)], tags=range_tags(first, last),
        raise_on_error=False,
    )
    seconds = time.perf_counter() - began
    if profile_to:
        profiler.stop()
        Path(f"{profile_to}.{mode}.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=bool(os.environ.get("CHECKS_COST_PROFILE_ALL"))))
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    day = dict(timings)
    # A scheduled tick on top of the stored day: the newest partition + 10 minutes of lookback
    # (re-fetched, so the merge keeps and the assessment reads the stored window and history).
    for key in timings:
        timings[key] = 0.0
    tick_first = partition_key(partition_start(last) - 2 * PARTITION)
    began = time.perf_counter()
    tick = job.execute_in_process(
        instance=instance, asset_selection=[timeseries_key(SITE)],
        tags=range_tags(tick_first, last), raise_on_error=False,
    )
    tick_seconds = time.perf_counter() - began
    print(json.dumps({"mode": mode, "success": result.success and tick.success, "seconds": seconds,
                      **day, "checks": checks, "tick_seconds": tick_seconds,
                      "tick": dict(timings)}))


def run_child(mode: str, env: dict, first: str, last: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--range", f"{first}...{last}"],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{mode} run failed")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4500)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rounds", type=int, default=1, help="off/on pairs to run")
    parser.add_argument("--cache-mb", type=int, default=1500)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--range", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        first, last = args.range.split("...")
        child(args.child, first, last)
        return

    sys.path.insert(0, str(ROOT))
    from vitals_pipeline.windows import PARTITION, partition_key

    start, end = DAY, DAY + timedelta(hours=args.hours)
    first, last = partition_key(start), partition_key(end - PARTITION)
    sim, url = start_simulator(args.points, end + timedelta(hours=1), args.cache_mb)
    rows = []
    try:
        print(f"simulator {url}: {args.points} points x 1/min, {first} .. {last} "
              f"({int((end - start) / PARTITION)} partitions)")
        print(f"warm-up fetch: {warm_up(url, start, end):.1f}s")
        for round_no in range(args.rounds):
            for mode in ("off", "on"):
                work = Path(tempfile.mkdtemp(prefix="vitals-checks-bench-"))
                env = {
                    **os.environ,
                    "ACE_API_URL": url, "ACE_API_KEY": KEY, "ACE_SITES": SITE,
                    "ACE_PAGE_SIZE": "50000",
                    "VITALS_DUCKDB_PATH": str(work / "vitals.duckdb"),
                    "VITALS_PARTITIONS_START": partition_key(start - timedelta(days=1)),
                    "VITALS_CHECKS": mode,
                }
                env.pop("DAGSTER_HOME", None)
                try:
                    row = run_child(mode, env, first, last)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                rows.append(row)
                detail = (
                    f"; store {row['store']:.2f}s; run creation (planned events) "
                    f"{row['planned_events']:.2f}s"
                ) + (
                    f"; assessment {row['assess']:.2f}s, quality table store "
                    f"{row['quality_store']:.2f}s, checks after the store "
                    f"{row['check_seconds']:.2f}s; {sum(row['checks'].values())}/"
                    f"{len(row['checks'])} checks passed" if mode == "on" else ""
                )
                print(f"round {round_no + 1} checks {mode:>3}: run {row['seconds']:.2f}s{detail}")
                tick = row["tick"]
                print(f"        tick (3 partitions on the stored day): {row['tick_seconds']:.2f}s" + (
                    f"; assessment {tick['assess']:.2f}s, quality table store "
                    f"{tick['quality_store']:.2f}s, checks {tick['check_seconds']:.2f}s"
                    if mode == "on" else ""))
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    offs = [r for r in rows if r["mode"] == "off"]
    ons = [r for r in rows if r["mode"] == "on"]
    off = min(r["seconds"] for r in offs)
    on = min(r["seconds"] for r in ons)

    def least(key: str, runs: list[dict]) -> float:
        return min(r[key] for r in runs)

    # The checks' own work, attributed exactly in the on runs (least of the rounds: the machine
    # is shared, so wall-clock differences between two runs carry seconds of noise).
    own = least("assess", ons) + least("quality_store", ons) + least("check_seconds", ons)
    bookkeeping = least("planned_events", ons) - least("planned_events", offs)
    print()
    print("| window | checks off s | checks on s | on/off | checks' own work s (assessment + "
          "quality store + checks) | own / off | Dagster planned-check rows s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.points} points x {args.hours:g} h | {off:.1f} | {on:.1f} | "
          f"{100 * (on - off) / off:+.1f} % | {own:.2f} ({least('assess', ons):.2f} + "
          f"{least('quality_store', ons):.2f} + {least('check_seconds', ons):.2f}) | "
          f"{100 * own / off:.1f} % | {bookkeeping:+.2f} |")
    tick_off = min(r["tick_seconds"] for r in offs)
    tick_on = min(r["tick_seconds"] for r in ons)
    tick_own = min(r["tick"]["assess"] + r["tick"]["quality_store"] + r["tick"]["check_seconds"] for r in ons)
    print(f"| tick: 3 partitions on the stored day | {tick_off:.2f} | {tick_on:.2f} | "
          f"{100 * (tick_on - tick_off) / tick_off:+.1f} % | {tick_own:.2f} | "
          f"{100 * tick_own / tick_off:.1f} % | |")


if __name__ == "__main__":
    main()
