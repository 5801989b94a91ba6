"""The real thing: `dagster-daemon run` as a subprocess on a temporary DAGSTER_HOME (the shipped
dagster.yaml: queued runs, the duckdb pool, run monitoring), against the simulator over HTTP.

1. The schedule (default RUNNING, here ticking every minute via VITALS_SCHEDULE_CRON) produces a
   successful run and materializations.
2. After the API refused the key for a while (failed partitions) and the daemon was not running
   (missing partitions), the catch-up sensor fills the gap by itself.

Each test starts its own daemon (its own process group, ended by id); the schedule test waits
for the next minute boundary, so it takes 30-90 s, the catch-up test about 25 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.assets.keys import five_minute_partitions, range_tags, timeseries_key
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.automation.schedules import SCHEDULE_NAME
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import PARTITION, Window, floor_to_partition, partition_key
from vitals_pipeline_tests.conftest import SITE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DAEMON = Path(sys.executable).parent / "dagster-daemon"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def key(t: datetime) -> str:
    return partition_key(t)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """DAGSTER_HOME with the shipped dagster.yaml, its storage created here, once, before any
    other process opens it (several processes meeting a fresh SQLite instance race to migrate)."""
    from vitals_pipeline.cli import ensure_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return ensure_dagster_home()


@contextmanager
def running_daemon(log_path: Path) -> Iterator[subprocess.Popen]:
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [str(DAEMON), "run", "-m", "vitals_pipeline.definitions"],
            cwd=REPO,
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server and run workers share its process group
        )
        try:
            yield daemon
        finally:
            _end_group(daemon)


def _end_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def wait_for(condition: Callable[[], object], timeout: float, log_path: Path, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    log = log_path.read_text()[-4000:] if log_path.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; daemon log tail:\n{log}")


def runs_with(instance, **tags) -> list[dg.RunRecord]:
    return list(instance.get_run_records(dg.RunsFilter(tags=tags)))


def test_schedule_tick_runs_and_materializes(sim, pipeline_env, home, monkeypatch, tmp_path):
    sim.set_now(None)  # the simulator on the real clock, as the daemon's ticks are
    end = floor_to_partition(datetime.now(UTC))
    # Partitions begin at the newest closed one: the catch-up sensor has nothing to do, so the
    # run this test sees is the schedule's.
    monkeypatch.setenv("VITALS_PARTITIONS_START", key(end - PARTITION))
    monkeypatch.setenv("VITALS_SCHEDULE_CRON", "* * * * *")
    log_path = tmp_path / "daemon.log"
    name = SCHEDULE_NAME

    with running_daemon(log_path), dg.DagsterInstance.get() as instance:

        def scheduled_success():
            for record in runs_with(instance, **{"dagster/schedule_name": name}):
                if record.dagster_run.status == dg.DagsterRunStatus.SUCCESS:
                    return record.dagster_run
                if record.dagster_run.status == dg.DagsterRunStatus.FAILURE:
                    raise AssertionError(f"the scheduled run {record.dagster_run.run_id} failed")
            return None

        run = wait_for(scheduled_success, 150, log_path, "a successful run from a schedule tick")

        # The schedule was on from the start (default RUNNING) and its tick launched the run.
        [state] = [
            s for s in instance.all_instigator_state() if s.instigator_name == name
        ]
        # Default RUNNING: Dagster records it as declared in code (running), no start needed.
        assert state.status.value in ("RUNNING", "DECLARED_IN_CODE")
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        assert any(run.run_id in tick.run_ids for tick in ticks)

        first = run.tags["dagster/asset_partition_range_start"]
        last = run.tags["dagster/asset_partition_range_end"]
        assert first == key(end - PARTITION) and run.tags[TRIGGER_TAG] == "schedule"
        materialized = instance.get_materialized_partitions(timeseries_key(SITE))
        assert {first, last} <= materialized

    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        [(rows,)] = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchall()
    assert rows > 0


def test_catchup_sensor_fills_the_gap_after_an_outage(sim, pipeline_env, home, monkeypatch, tmp_path):
    sim.set_now(None)
    end = floor_to_partition(datetime.now(UTC))
    start = end - timedelta(hours=1)
    monkeypatch.setenv("VITALS_PARTITIONS_START", key(start))
    monkeypatch.setenv("VITALS_SCHEDULE_CRON", "0 0 1 1 *")  # no schedule run during the test
    monkeypatch.setenv("VITALS_CATCHUP_INTERVAL_SECONDS", "5")
    log_path = tmp_path / "daemon.log"
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def(FLEET_JOB)
    failed = (start + timedelta(minutes=15), start + timedelta(minutes=25))

    with dg.DagsterInstance.get() as instance:
        # The API refused the key for a while: those partitions failed ...
        monkeypatch.setenv("ACE_API_KEY", "revoked-key")
        result = job.execute_in_process(
            instance=instance, tags=range_tags(*map(key, failed)), raise_on_error=False, run_config=QUIET
        )
        assert not result.success
        monkeypatch.setenv("ACE_API_KEY", pipeline_env["ACE_API_KEY"])
        # ... then it was back (an earlier window loaded fine) and the daemon went down: nothing
        # ran for the rest of the hour.
        assert job.execute_in_process(
            instance=instance, tags=range_tags(key(start), key(start + 2 * PARTITION)), run_config=QUIET
        ).success

    expected = Window(start, end - PARTITION).partition_keys()  # all but the newest closed one
    partitions_def = five_minute_partitions(Settings.from_env())
    asset_key = timeseries_key(SITE)

    with running_daemon(log_path), dg.DagsterInstance.get() as instance:

        def filled():
            status = instance.get_status_by_partition(asset_key, expected, partitions_def) or {}
            return all(status.get(k) == dg.AssetPartitionStatus.MATERIALIZED for k in expected)

        def catchup_ranges():
            return {
                (
                    r.dagster_run.tags["dagster/asset_partition_range_start"],
                    r.dagster_run.tags["dagster/asset_partition_range_end"],
                )
                for r in runs_with(instance, **{TRIGGER_TAG: "catchup"})
                if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
                and r.dagster_run.tags.get("dagster/sensor_name")
            }

        wait_for(
            lambda: filled() and catchup_ranges(),
            150,
            log_path,
            f"the catch-up sensor to fill {expected[0]}...{expected[-1]}",
        )
        # One run for the contiguous failed + missing stretch, not one per partition (its end
        # may reach one partition further if a 5-minute boundary passed meanwhile).
        assert any(
            first == key(failed[0]) and last >= expected[-1] for first, last in catchup_ranges()
        ), catchup_ranges()
