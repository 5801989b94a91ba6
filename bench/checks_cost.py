"""What the data-quality layer costs on one day of the 4,500-point site (target: < 20 % of a day).

Each run is a new process (`--child on|off`) that loads the definitions with VITALS_CHECKS=on
or off and materializes the day (288 five-minute partitions, 6.48M samples, one range run of
`<site>/timeseries` with its checks, as `dagster asset materialize` and `vitals backfill` select
them) on a fresh DAGSTER_HOME (the shipped dagster.yaml) and DuckDB file, in-process executor;
then a scheduled-style tick over the stored day (the newest partition and 10 minutes of
lookback, re-fetched, through the fleet job as the schedule launches it: checks run in the step,
only changed results recorded). Off = no quality table, no assessment, no checks. The rounds
alternate the order (off, on / on, off, ...), all against one simulator process.

Figures, per run:
- run s: wall of `execute_in_process` (run creation included, process start and imports not);
- CPU s: user + system CPU of the process during it (every thread);
- the checks' own work, from timers around the quality functions (thread CPU, and wall): the
  points and history read before the store (fetch thread), the assessment (its own thread,
  beside the samples' insert), the quality table's share of the store (frame check and merge),
  the stored window's verification and the results (after the store), the future-row count;
- before step = from the call to the step's start (run creation: Dagster's planned rows).
The summary: medians over rounds, on against off (wall and CPU), and the checks' own CPU as a
share of the off run's CPU.

The simulator (`--server`): `warm` (default) serves the day from memory after an untimed first
pass, so the runs time the client alone, the smallest day run and so the largest share for the
checks; `render` renders every page on request (as ACE), on the same 2 cores.

    .venv/bin/python bench/checks_cost.py [--points 4500] [--hours 24] [--rounds 3] [--server warm]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RENDER,
    WARM,
    WARM_CACHE_MB,
    Simulator,
    bench_home,
    commit,
    download_floor,
    load_average,
    record,
)

SITE = "big"
DAY = datetime(2025, 10, 12, tzinfo=UTC)
PARTS = ("inputs", "assess", "quality_store", "check_results", "count_future")


class Timers:
    """Wall and thread-CPU seconds spent inside wrapped functions, by part (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.wall = dict.fromkeys(PARTS, 0.0)
        self.cpu = dict.fromkeys(PARTS, 0.0)

    def wrap(self, part, fn, when=lambda *a, **k: True):
        def timed(*args, **kwargs):
            if not when(*args, **kwargs):
                return fn(*args, **kwargs)
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.wall[part] += time.perf_counter() - wall
                    self.cpu[part] += time.thread_time() - cpu
        return timed


def child(mode: str, first: str, last: str) -> None:
    """One day and one tick in this process (environment already set); prints a JSON line."""
    import dagster as dg

    from vitals_pipeline.assets.keys import range_tags, timeseries_key
    from vitals_pipeline.automation.jobs import FLEET_JOB
    from vitals_pipeline.checks import specs
    from vitals_pipeline.config import Settings
    from vitals_pipeline.definitions import build_definitions
    from vitals_pipeline.storage import duckdb_io
    from vitals_pipeline.windows import PARTITION, partition_key, partition_start

    timers = Timers()
    # The asset calls these through their modules, so wrapping the module attributes times them.
    specs.read_quality_inputs = timers.wrap("inputs", specs.read_quality_inputs)
    specs.assess = timers.wrap("assess", specs.assess)
    specs.count_future = timers.wrap("count_future", specs.count_future)
    specs.RunQuality.check_results = timers.wrap("check_results", specs.RunQuality.check_results)
    duckdb_io.check_frame = timers.wrap(
        "quality_store", duckdb_io.check_frame, lambda *a, table, **k: table.endswith(".quality"))
    duckdb_io.merge_rows = timers.wrap(
        "quality_store", duckdb_io.merge_rows, lambda conn, target, *a, **k: target.table == "quality")

    defs = build_definitions(Settings.from_env())
    key = timeseries_key(SITE)

    def measured(job, tags) -> dict:
        timers.reset()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        began_at, began = time.time(), time.perf_counter()
        result = job.execute_in_process(instance=instance, asset_selection=[key], tags=tags,
                                        raise_on_error=False)
        seconds = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
        step_start = min(
            entry.timestamp for entry in instance.all_logs(result.run_id)
            if entry.dagster_event is not None and entry.dagster_event.event_type_value == "STEP_START"
        )
        return {
            "success": result.success,
            "seconds": seconds,
            "cpu": (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime),
            "before_step": step_start - began_at,
            "wall": dict(timers.wall),
            "thread_cpu": dict(timers.cpu),
            "checks": {e.check_name: e.passed for e in result.get_asset_check_evaluations()},
        }

    with dg.DagsterInstance.get() as instance:
        day = measured(defs.resolve_implicit_global_asset_job_def(), range_tags(first, last))
        tick_first = partition_key(partition_start(last) - 2 * PARTITION)
        tick = measured(defs.resolve_job_def(FLEET_JOB), range_tags(tick_first, last))
    print(json.dumps({"mode": mode, "day": day, "tick": tick}))


def run_child(mode: str, env: dict, first: str, last: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--range", f"{first}...{last}"],
        env=env, capture_output=True, text=True, cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"the checks-{mode} run failed (its output is above)")
    row = json.loads(lines[-1])
    for what in ("day", "tick"):
        if not row[what]["success"]:
            raise SystemExit(f"the checks-{mode} {what} run did not succeed: {row[what]['checks']}")
    return row


def own_cpu(run: dict) -> float:
    return sum(run["thread_cpu"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4500)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs, alternating order")
    parser.add_argument("--server", choices=[WARM, RENDER], default=WARM)
    parser.add_argument("--no-record", action="store_true", help="do not add to RESULTS.md")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--range", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        first, last = args.range.split("...")
        child(args.child, first, last)
        return

    from vitals_pipeline.windows import PARTITION, partition_key

    start, end = DAY, DAY + timedelta(hours=args.hours)
    first, last = partition_key(start), partition_key(end - PARTITION)
    runs: list[dict] = []
    load = load_average()
    cache_mb = WARM_CACHE_MB if args.server == WARM else 0
    with Simulator(SITE, args.points, cache_mb, now=end + timedelta(hours=1)) as sim:
        print(f"simulator {sim.url} ({args.server}): {args.points} points x 1/min, {first} .. {last}"
              f" ({int((end - start) / PARTITION)} partitions); load {load:.1f}")
        if args.server == WARM:
            print(f"untimed first pass: {download_floor(sim.url, SITE, start, end).seconds:.1f}s")
        for round_no in range(args.rounds):
            for mode in ("off", "on") if round_no % 2 == 0 else ("on", "off"):
                home, env = bench_home("vitals-checks-", sim.url, SITE, start - timedelta(days=1))
                env["VITALS_CHECKS"] = mode
                try:
                    row = run_child(mode, env, first, last)
                finally:
                    shutil.rmtree(home.parent, ignore_errors=True)
                runs.append(row)
                for what in ("day", "tick"):
                    r = row[what]
                    own = (f"; checks' own work {own_cpu(r):.2f} CPU s ("
                           + ", ".join(f"{p} {r['thread_cpu'][p]:.2f}/{r['wall'][p]:.2f}"
                                       for p in PARTS)
                           + " CPU/wall s)") if mode == "on" else ""
                    print(f"round {round_no + 1} checks {mode:>3} {what}: run {r['seconds']:.2f}s, "
                          f"{r['cpu']:.2f} CPU s, before step {r['before_step']:.2f}s{own}",
                          flush=True)
    load = max(load, load_average())

    def med(mode: str, what: str, value) -> float:
        return statistics.median(value(r[what]) for r in runs if r["mode"] == mode)

    print()
    print(HEADER)
    lines = []
    for what, label in (("day", f"{args.points}x{args.hours:g}h"), ("tick", "tick, 3 partitions")):
        off_s, on_s = med("off", what, lambda r: r["seconds"]), med("on", what, lambda r: r["seconds"])
        off_cpu, on_cpu = med("off", what, lambda r: r["cpu"]), med("on", what, lambda r: r["cpu"])
        own = med("on", what, own_cpu)
        parts = " + ".join(f"{med('on', what, lambda r, p=p: r['thread_cpu'][p]):.2f}"
                           for p in PARTS)
        before = med("on", what, lambda r: r["before_step"]) - med("off", what, lambda r: r["before_step"])
        lines.append(
            f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {label} | {args.server} | {args.rounds} | "
            f"{off_s:.2f} | {on_s:.2f} | {100 * (on_s - off_s) / off_s:+.0f} % | {off_cpu:.2f} | "
            f"{on_cpu:.2f} | {100 * (on_cpu - off_cpu) / off_cpu:+.0f} % | {own:.2f} ({parts}) | "
            f"{100 * own / off_cpu:.0f} % | {before:+.2f} | {load:.1f} |"
        )
    print("\n".join(lines))
    if not args.no_record:
        for line in lines:
            record(HEADER, PREAMBLE, line)


PREAMBLE = """## Data-quality cost on the fleet code (bench/checks_cost.py)

Each run a new process with VITALS_CHECKS=off or on; the rounds alternate the order. Medians over
the rounds. run s = wall of `execute_in_process` (run creation included); CPU s = the process's
user + system CPU during it (every thread); on/off = (on - off) / off. Own work = thread CPU of
the checks' functions in the on runs: points/history read + assessment + quality table store +
verification and results + future-row count (s); own / off CPU = own work / CPU of the off run.
before step = on - off of the time from the call to the step's start (run creation). day = the
implicit asset job with the checks selected (as `dagster asset materialize` and `vitals backfill`);
tick = the fleet job (checks run in the step, only changed results recorded), 3 partitions
re-fetched over the stored day. server: warm = the simulator serves from memory, render = it
renders every page on request. load = highest 1-min load average seen (2 cores, shared).

"""
HEADER = (
    "| date | commit | window | server | rounds | off s | on s | on/off wall | off CPU s | "
    "on CPU s | on/off CPU | checks' own CPU s | own / off CPU | before step s | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
