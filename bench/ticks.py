"""What automation and `vitals status` cost with VITALS_PARTITIONS_START 400 days back (~115,000
five-minute partitions), the issue-4 targets: a schedule tick < 0.5 s, a catch-up sensor tick
< 1 s, `vitals status` < 3 s (as a subprocess, imports included).

Setup (not timed): a temporary DAGSTER_HOME with the shipped dagster.yaml, the simulator on the
real clock, a fresh DuckDB file, and a day of history made by real runs: the last 24 h loaded in
two range runs around a one-hour hole, plus one failed run, so that the sensor and the status
command have gaps, failures and run figures to find.

Then: the schedule's evaluation (as the daemon's code server does it, definitions loaded), the
catch-up sensor's evaluation (first tick: Dagster's partition-status cache built from the event
log; then warm ticks), `vitals status` in-process (queries only) and as a subprocess, next to the
floor any instance reader pays (a Python process that imports dagster and opens the instance).

    .venv/bin/python bench/ticks.py [--rounds 5] [--history-hours 24]
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
SITE = "bench_site"
KEY = "bench-key"
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
FLOOR_LABEL = "floor: python -c 'import dagster; open instance'"
TARGETS = {"schedule tick": 0.5, "catch-up sensor tick": 1.0, "vitals status (subprocess)": 3.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--history-hours", type=int, default=24)
    parser.add_argument("--no-record", action="store_true", help="do not add a row to RESULTS.md")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vitals-ticks-"))
    home = workdir / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=400)
    os.environ.update(
        {
            "DAGSTER_HOME": str(home),
            "ACE_SITES": SITE,
            "ACE_API_KEY": KEY,
            "VITALS_DUCKDB_PATH": str(workdir / "vitals.duckdb"),
            "VITALS_PARTITIONS_START": start.strftime("%Y-%m-%d-%H:%M"),
        }
    )

    import logging

    import dagster as dg

    logging.getLogger("dagster").setLevel(logging.WARNING)  # the sensor explains held gaps at INFO

    from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
    from vitals_pipeline.assets.site import range_tags
    from vitals_pipeline.automation.schedules import schedule_name
    from vitals_pipeline.automation.sensors import catchup_sensor_name
    from vitals_pipeline.automation.settings import AutomationSettings
    from vitals_pipeline.config import Settings
    from vitals_pipeline.status import Thresholds, collect_status
    from vitals_pipeline.windows import PARTITION, floor_to_partition, partition_key

    sim = Simulator(SimulatorConfig(sites=[SiteSpec(SITE, points=60, seed=5)], api_key=KEY))
    try:
        with SimulatorServer(sim) as server:
            os.environ["ACE_API_URL"] = server.url
            settings = Settings.from_env()
            from vitals_pipeline.definitions import build_definitions

            defs = build_definitions(settings)
            partitions = int((floor_to_partition(now) - settings.partitions_start) / PARTITION)
            print(f"partitions in the definition: {partitions:,} (from {settings.partitions_start:%Y-%m-%d})")

            with dg.DagsterInstance.get() as instance:
                instance.upgrade()
                end = floor_to_partition(now)
                history_start = end - timedelta(hours=args.history_hours)
                hole = (end - timedelta(hours=13), end - timedelta(hours=12))
                job = defs.resolve_job_def(f"{schema(SITE)}_timeseries")
                setup = time.perf_counter()
                for first, last in ((history_start, hole[0] - PARTITION), (hole[1], end - PARTITION)):
                    result = job.execute_in_process(
                        instance=instance,
                        tags=range_tags(partition_key(first), partition_key(last)),
                        run_config=QUIET,
                        raise_on_error=False,
                    )
                    assert result.success, "a history run failed"
                os.environ["ACE_API_KEY"] = "revoked"
                failed_key = partition_key(end - timedelta(hours=2))
                job.execute_in_process(
                    instance=instance, tags=range_tags(failed_key, failed_key), run_config=QUIET, raise_on_error=False
                )
                os.environ["ACE_API_KEY"] = KEY
                print(
                    f"history: {args.history_hours} h in 2 range runs around a 1 h hole, 1 failed run "
                    f"(setup {time.perf_counter() - setup:.0f} s, not timed)"
                )

                results: dict[str, list[float]] = {}

                schedule = defs.get_schedule_def(schedule_name(SITE))
                for _ in range(args.rounds):
                    with dg.build_schedule_context(instance=instance, scheduled_execution_time=now) as ctx:
                        t = time.perf_counter()
                        data = schedule.evaluate_tick(ctx)
                        results.setdefault("schedule tick", []).append(time.perf_counter() - t)
                assert len(data.run_requests) == 1

                sensor = defs.get_sensor_def(catchup_sensor_name(SITE))
                for i in range(args.rounds + 1):
                    with dg.build_sensor_context(instance=instance, definitions=defs) as ctx:
                        t = time.perf_counter()
                        data = sensor.evaluate_tick(ctx)
                        label = "catch-up sensor tick (first, cold cache)" if i == 0 else "catch-up sensor tick"
                        results.setdefault(label, []).append(time.perf_counter() - t)
                requested = [
                    (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
                    for r in data.run_requests
                ]

                thresholds = Thresholds.from_settings(AutomationSettings.from_env())
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    report = collect_status(instance, settings, thresholds)
                    results.setdefault("vitals status (in-process queries)", []).append(time.perf_counter() - t)

            vitals = Path(sys.executable).parent / "vitals"
            # What any process that reads the instance pays before asking anything: Python,
            # `import dagster` and opening the SQLite storages (alembic revision checks).
            floor = "import dagster; dagster.DagsterInstance.get()"
            floor_label = FLOOR_LABEL
            for _ in range(args.rounds):
                with timed_child(results, floor_label):
                    subprocess.run([sys.executable, "-W", "ignore", "-c", floor], capture_output=True, check=True)
            for _ in range(args.rounds):
                with timed_child(results, "vitals status (subprocess)"):
                    done = subprocess.run([str(vitals), "status"], capture_output=True, text=True, timeout=120)
                if "Traceback" in done.stderr:
                    print(done.stderr)
                    return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"catch-up requests: {requested}")
    print(f"status: {report['health']}, {report['sites'][0]['missing_partitions']} missing, "
          f"{report['sites'][0]['failed_partitions']} failed in 24 h; DuckDB {report['duckdb']['state']}")
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
        from bench.run import commit, record

        def med(label: str) -> str:
            return f"{statistics.median(results[label]):.3f}" if label in results else "-"

        record(
            TICKS_HEADER,
            TICKS_PREAMBLE,
            f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {partitions:,} | {med('schedule tick')} | "
            f"{med('catch-up sensor tick')} | {med('vitals status (subprocess)')} | "
            f"{med(FLOOR_LABEL)} | {load:.1f} |",
        )
    return 0 if ok else 1


TICKS_PREAMBLE = """## Automation and `vitals status` with ~115,000 partitions

Measured by bench/ticks.py (VITALS_PARTITIONS_START 400 days back, a day of history with a gap
and a failed run). Medians of 5 rounds, seconds. Floor = a Python process that imports dagster
and opens the instance, which any instance reader pays. Targets: tick < 0.5, sensor < 1,
status < 3.

"""
TICKS_HEADER = (
    "| date | commit | partitions | schedule tick | catch-up sensor tick | vitals status (subprocess) | floor | load |\n"
    "|---|---|---|---|---|---|---|---|"
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


def schema(site: str) -> str:
    from vitals_pipeline.storage.schema import schema_name

    return schema_name(site)


if __name__ == "__main__":
    sys.exit(main())
