"""What the fleet's automation and `vitals status` cost with VITALS_PARTITIONS_START 400 days back
(~115,000 five-minute partitions per site): the fleet schedule's tick (`fleet_timeseries_schedule`,
one run for every site) < 0.5 s, the catch-up sensor's tick (`fleet_catchup`, every site's gaps)
< 1 s, `vitals status` < 3 s as a command, imports included.

Setup (not timed): a temporary DAGSTER_HOME with the shipped dagster.yaml, the simulator in this
process on the real clock (60 points a site), a fresh DuckDB file, and a day of history made by
real runs of the fleet job: the last 24 h of every site in two range runs around a one-hour hole,
plus one failed run (a revoked key) of an older partition, so that the sensor and the status
command have gaps, failures and runs to find.

Timed, `--rounds` times each (medians and maxima printed):
- schedule tick: the schedule's evaluation as the daemon's code server does it (definitions
  loaded, instance open), in this process;
- catch-up sensor tick: the sensor's evaluation, in this process; the first one separately (it
  builds Dagster's partition-status cache from the event log). Evaluated at a moment outside the
  minute before a schedule tick (when the sensor holds back without reading anything);
- vitals status (in-process queries): `collect_status` in this process;
- vitals status (subprocess): `vitals status` as a new process, wall and CPU;
- floor: a new Python process that imports dagster and opens the instance, what any process
  that reads the instance pays before asking anything (wall and CPU).

    .venv/bin/python bench/ticks.py [--sites 1] [--rounds 5] [--history-hours 24]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEY = "bench-key"
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
FLOOR_LABEL = "floor: python -c 'import dagster; open instance'"
SCHEDULE_LABEL = "schedule tick"
SENSOR_LABEL = "catch-up sensor tick"
STATUS_LABEL = "vitals status (subprocess)"
TARGETS = {SCHEDULE_LABEL: 0.5, SENSOR_LABEL: 1.0, STATUS_LABEL: 3.0}


def site_names(count: int) -> list[str]:
    return ["bench_site"] if count == 1 else [f"s{i:04d}" for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=1, help="sites of the fleet")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--history-hours", type=int, default=24)
    parser.add_argument("--no-record", action="store_true", help="do not add a row to RESULTS.md")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a median misses its target")
    args = parser.parse_args()
    if args.history_hours < 4:
        parser.error("--history-hours must be 4 or more (a 1 h hole and a failed run 2 h back)")

    workdir = Path(tempfile.mkdtemp(prefix="vitals-ticks-"))
    home = workdir / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=400)
    sites = site_names(args.sites)
    os.environ.update(
        {
            "DAGSTER_HOME": str(home),
            "ACE_SITES": ",".join(sites),
            "ACE_API_KEY": KEY,
            "VITALS_DUCKDB_PATH": str(workdir / "vitals.duckdb"),
            "VITALS_PARTITIONS_START": start.strftime("%Y-%m-%d-%H:%M"),
        }
    )

    import logging

    import dagster as dg

    logging.getLogger("dagster").setLevel(logging.WARNING)  # the sensor explains held gaps at INFO

    from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
    from vitals_pipeline.assets.keys import range_tags, timeseries_key
    from vitals_pipeline.automation import sensors
    from vitals_pipeline.automation.jobs import FLEET_JOB
    from vitals_pipeline.automation.schedules import SCHEDULE_NAME
    from vitals_pipeline.automation.settings import AutomationSettings
    from vitals_pipeline.config import Settings
    from vitals_pipeline.status import Thresholds, collect_status
    from vitals_pipeline.windows import PARTITION, floor_to_partition, partition_key

    specs = [SiteSpec(site, points=60, seed=5 + i) for i, site in enumerate(sites)]
    sim = Simulator(SimulatorConfig(sites=specs, api_key=KEY))
    try:
        with SimulatorServer(sim) as server:
            os.environ["ACE_API_URL"] = server.url
            settings = Settings.from_env()
            automation = AutomationSettings.from_env()
            from vitals_pipeline.definitions import build_definitions

            defs = build_definitions(settings)
            partitions = int((floor_to_partition(now) - settings.partitions_start) / PARTITION)
            print(f"{len(sites)} site(s), {partitions:,} partitions each "
                  f"(from {settings.partitions_start:%Y-%m-%d})")

            with dg.DagsterInstance.get() as instance:
                instance.upgrade()
                end = floor_to_partition(now)
                history_start = end - timedelta(hours=args.history_hours)
                middle = end - timedelta(hours=args.history_hours // 2)
                hole = (middle - timedelta(hours=1), middle)
                job = defs.resolve_job_def(FLEET_JOB)
                keys = [timeseries_key(site) for site in sites]
                setup = time.perf_counter()
                for first, last in ((history_start, hole[0] - PARTITION), (hole[1], end - PARTITION)):
                    result = job.execute_in_process(
                        instance=instance, asset_selection=keys, run_config=QUIET,
                        tags=range_tags(partition_key(first), partition_key(last)),
                        raise_on_error=False,
                    )
                    if not result.success:
                        failures = [e.message for e in result.all_events if e.is_step_failure]
                        raise SystemExit(f"a history run failed: {failures}")
                os.environ["ACE_API_KEY"] = "revoked"
                failed_key = partition_key(end - timedelta(hours=2))
                job.execute_in_process(
                    instance=instance, asset_selection=keys, run_config=QUIET,
                    tags=range_tags(failed_key, failed_key), raise_on_error=False,
                )
                os.environ["ACE_API_KEY"] = KEY
                print(
                    f"history: {args.history_hours} h in 2 range runs around a 1 h hole, 1 failed "
                    f"run (setup {time.perf_counter() - setup:.0f} s, not timed)"
                )

                results: dict[str, list[float]] = {}
                schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
                for _ in range(args.rounds):
                    with dg.build_schedule_context(instance=instance, scheduled_execution_time=now) as ctx:
                        t = time.perf_counter()
                        data = schedule.evaluate_tick(ctx)
                        results.setdefault(SCHEDULE_LABEL, []).append(time.perf_counter() - t)
                [tick_run] = data.run_requests
                assert len(tick_run.asset_selection) >= len(sites), "the tick left sites out"

                # In the minute before a schedule tick the sensor launches nothing and reads
                # nothing: evaluate it at a moment outside that minute (its clock is a seam).
                moment = now
                if sensors.tick_due_within(moment, automation.schedule_cron, sensors.HOLD_BEFORE_TICK):
                    moment -= timedelta(seconds=70)
                sensors._utcnow = lambda: moment  # the sensor's documented seam
                sensor = defs.resolve_sensor_def(sensors.CATCHUP_SENSOR_NAME)
                for i in range(args.rounds + 1):
                    with dg.build_sensor_context(instance=instance, definitions=defs) as ctx:
                        t = time.perf_counter()
                        data = sensor.evaluate_tick(ctx)
                        label = f"{SENSOR_LABEL} (first, cold cache)" if i == 0 else SENSOR_LABEL
                        results.setdefault(label, []).append(time.perf_counter() - t)
                requested = sorted(
                    (r.tags["dagster/asset_partition_range_start"],
                     r.tags["dagster/asset_partition_range_end"], len(r.asset_selection))
                    for r in data.run_requests
                )
                if not requested:
                    raise SystemExit(f"the catch-up sensor found nothing to do: {data.skip_message}")

                thresholds = Thresholds.from_settings(automation)
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    report = collect_status(instance, settings, thresholds)
                    results.setdefault("vitals status (in-process queries)", []).append(
                        time.perf_counter() - t)

            vitals = Path(sys.executable).parent / "vitals"
            floor = "import dagster; dagster.DagsterInstance.get()"
            for _ in range(args.rounds):
                with timed_child(results, FLOOR_LABEL):
                    subprocess.run([sys.executable, "-W", "ignore", "-c", floor],
                                   capture_output=True, check=True)
            for _ in range(args.rounds):
                with timed_child(results, STATUS_LABEL):
                    done = subprocess.run([str(vitals), "status"], capture_output=True, text=True,
                                          timeout=120)
                if "Traceback" in done.stderr or done.returncode not in (0, 1, 2):
                    print(done.stdout[-2000:] + done.stderr[-4000:])
                    return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"catch-up requests (first, last, sites): {requested}")
    missing = sum(s["missing_partitions"] for s in report["sites"])
    failed = sum(s["failed_partitions"] for s in report["sites"])
    print(f"status: {report['health']}, {missing} missing and {failed} failed partitions in 24 h "
          f"over {len(report['sites'])} site(s); DuckDB {report['duckdb']['state']}")
    print()
    print(f"{'measurement':<52} {'median':>8} {'max':>8} {'target':>8}")
    ok = True
    for label, times in results.items():
        target = TARGETS.get(label)
        median = statistics.median(times)
        verdict = ""
        if target is not None:
            verdict = "ok" if median < target else "OVER"
            ok = ok and median < target
        print(
            f"{label:<52} {median:>7.3f}s {max(times):>7.3f}s "
            f"{(f'<{target:g}s' if target else ''):>8} {verdict}"
        )
    load = os.getloadavg()[0]
    print(f"\nload average: {load:.1f} on {os.cpu_count()} cores")
    if not args.no_record:
        from bench.common import commit, record

        def med(label: str) -> str:
            return f"{statistics.median(results[label]):.3f}" if label in results else "-"

        record(
            TICKS_HEADER,
            TICKS_PREAMBLE,
            f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {len(sites)} | {partitions:,} | "
            f"{med(SCHEDULE_LABEL)} | {med(SENSOR_LABEL)} | "
            f"{med(SENSOR_LABEL + ' (first, cold cache)')} | {med(STATUS_LABEL)} | "
            f"{med(STATUS_LABEL + ' CPU')} | {med(FLOOR_LABEL)} | {med(FLOOR_LABEL + ' CPU')} | "
            f"{load:.1f} |",
        )
    return 0 if ok or not args.strict else 1


TICKS_PREAMBLE = """## The fleet's schedule, catch-up sensor and `vitals status` with ~115,000 partitions

Measured by bench/ticks.py (VITALS_PARTITIONS_START 400 days back, a day of history with a gap
and a failed run for every site). One schedule (`fleet_timeseries_schedule`) and one catch-up
sensor (`fleet_catchup`) for the whole fleet. Medians of 5 rounds, seconds: the schedule's and
the sensor's evaluations in-process (the sensor's first one, which builds Dagster's
partition-status cache, apart); `vitals status` as a new process, wall and CPU; floor = a new
Python process that imports dagster and opens the instance (what any instance reader pays), wall
and CPU. Targets: schedule tick < 0.5, sensor tick < 1, status < 3. load = 1-min load average
at the end (2 cores, shared).

"""
TICKS_HEADER = (
    "| date | commit | sites | partitions | schedule tick | catch-up sensor tick | first sensor "
    "tick | vitals status | vitals status CPU | floor | floor CPU | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


@contextmanager
def timed_child(results: dict[str, list[float]], label: str):
    """Wall time of a child process, and its CPU time (user + system) under `<label> CPU`: on a
    shared machine the CPU time is what the command costs, the wall time what the load adds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    yield
    results.setdefault(label, []).append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results.setdefault(f"{label} CPU", []).append(cpu)


if __name__ == "__main__":
    sys.exit(main())
