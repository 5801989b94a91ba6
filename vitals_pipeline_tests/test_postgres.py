"""The Dagster instance on a real PostgreSQL server (vitals_pipeline_tests/postgres.py starts
one per xdist worker), with the shipped deploy/postgres/dagster.yaml in a temporary DAGSTER_HOME
and a fresh database per test:

1. `dagster asset materialize --partition-range` over a day (288 partitions of a small site), a
   subprocess against the simulator over HTTP, asset events stored in batches as the settings
   recommend: the site is stored exactly, the run and its events are rows of PostgreSQL's
   tables, and DAGSTER_HOME holds no SQLite storage nor the database's password.
2. A real `dagster-daemon run` on that instance fills the missing partitions of the last half
   hour by itself (the catch-up sensor), events stored one by one (Dagster's default): the same
   outcomes, the sensor's ticks in PostgreSQL too.

Both assert outcomes (partitions, rows, runs), not the names of jobs, schedules or sensors; the
few automation settings the daemon test turns are in AUTOMATION_ENV.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from vitals_pipeline.ace.simulator import SiteSpec
from vitals_pipeline.assets.keys import points_key, timeseries_key
from vitals_pipeline.windows import PARTITION, Window, floor_to_partition, partition_key, window_for_keys
from vitals_pipeline_tests.conftest import SITE, simulator
from vitals_pipeline_tests.helpers import BIN, assert_exact, dagster_cli
from vitals_pipeline_tests.postgres import find_bindir, pg_url, postgres_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SHIPPED_PG_SETTINGS = REPO / "deploy" / "postgres" / "dagster.yaml"
# A small site: the day's range run stays a few seconds of fetching; what is tested is the instance.
SMALL_SITE_POINTS = 10
# The daemon test's automation: no schedule tick while it runs (the catch-up sensor fills the
# gap), and the sensor evaluated every 5 s instead of every 2 minutes. Kept here, in one place,
# for when the automation's settings change.
AUTOMATION_ENV = {
    "VITALS_SCHEDULE_CRON": "0 0 1 1 *",
    "VITALS_CATCHUP_INTERVAL_SECONDS": "5",
}
# Tags Dagster itself puts on a run that a sensor or a schedule launched.
DAEMON_LAUNCH_TAGS = ("dagster/sensor_name", "dagster/schedule_name")
# SQLite's files start with this; none may be under DAGSTER_HOME on PostgreSQL.
SQLITE_MAGIC = b"SQLite format 3\x00"


@pytest.fixture
def sim():
    return simulator(SiteSpec(SITE, points=SMALL_SITE_POINTS, seed=3))


@pytest.fixture
def pg_home(tmp_path, monkeypatch, pg_url) -> Path:  # noqa: F811  (the imported fixture)
    """A DAGSTER_HOME holding deploy/postgres/dagster.yaml, its tables created in the test's
    database by one process before any other opens it (as `vitals init --postgres` does)."""
    from vitals_pipeline.cli import ensure_dagster_home

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(SHIPPED_PG_SETTINGS, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", pg_url)
    assert ensure_dagster_home() == home.resolve()
    assert (home / "dagster.yaml").read_bytes() == SHIPPED_PG_SETTINGS.read_bytes()
    return home


def pg_query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows straight from PostgreSQL, not through Dagster: proof of where the instance writes."""
    libpq_url = url.replace("postgresql+psycopg2://", "postgresql://", 1)  # SQLAlchemy's -> libpq's
    with psycopg2.connect(libpq_url) as con, con.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    con.close()
    return rows


def assert_no_sqlite_storage(home: Path) -> None:
    """No SQLite run, event or schedule storage anywhere under DAGSTER_HOME."""
    found = []
    for path in home.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC:
                    found.append(path)
        elif path.suffix == ".db":
            found.append(path)
    assert not found, f"SQLite storage under DAGSTER_HOME: {found}"
    assert not (home / "history").exists() and not (home / "schedules").exists()


def assert_no_password(password: str, home: Path, *outputs: str) -> None:
    for text in outputs:
        assert password not in text
    for path in home.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), f"the database password is in {path}"


def test_the_newest_complete_postgresql_install_is_chosen(tmp_path):
    for version, files in {"9.6": ("initdb", "postgres"), "15": ("initdb", "postgres"), "16": ("initdb",)}.items():
        folder = tmp_path / version / "bin"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).touch()
    assert find_bindir(f"{tmp_path}/*/bin") == tmp_path / "15" / "bin"  # 16 has no server binary
    assert find_bindir(f"{tmp_path}/none/*/bin") is None


def test_day_range_run_from_the_cli_is_stored_in_postgres(sim, pipeline_env, pg_home, pg_url, monkeypatch):  # noqa: F811
    # As deploy/postgres/dagster.yaml recommends: the run's asset events stored in batches (the
    # daemon test below leaves it unset: events one by one, Dagster's default).
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    window = window_for_keys("2026-03-09-00:00", "2026-03-09-23:55")
    keys = window.partition_keys()
    assert len(keys) == 288
    started = time.monotonic()
    proc = dagster_cli(
        "asset", "materialize", "-m", "vitals_pipeline.definitions", "--select", f"{SITE}/timeseries",
        "--partition-range", f"{keys[0]}...{keys[-1]}",
        env=os.environ.copy(), cwd=REPO,
    )
    out, err = proc.communicate(timeout=240)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err[-4000:]

    assert_exact(pipeline_env["VITALS_DUCKDB_PATH"], sim, window.start, window.end)
    with dg.DagsterInstance.get() as instance:
        [record] = instance.get_run_records()
        run = record.dagster_run
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert instance.get_materialized_partitions(timeseries_key(SITE)) == set(keys)
    # The same, read from PostgreSQL's own tables.
    assert pg_query(pg_url, "SELECT run_id, status FROM runs") == [(run.run_id, "SUCCESS")]
    by_asset = pg_query(
        pg_url,
        "SELECT asset_key, count(*), count(DISTINCT partition), count(partition) FROM event_logs "
        "WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key",
        (run.run_id,),
    )
    # One per partition of the day, and the site's points, which the run loads first on a fresh
    # instance (the checks need its units), unpartitioned.
    assert {dg.AssetKey.from_db_string(key): counts for key, *counts in by_asset} == {
        timeseries_key(SITE): [288, 288, 288],
        points_key(SITE): [1, 0, 0],
    }
    [(step_events,)] = pg_query(
        pg_url,
        "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'STEP_SUCCESS'",
        (run.run_id,),
    )
    assert step_events >= 1
    assert_no_sqlite_storage(pg_home)
    assert_no_password(_password(pg_url), pg_home, out, err)
    print(f"day range run on PostgreSQL: {elapsed:.1f} s wall (CLI process included)")


def test_daemon_fills_missing_partitions_on_postgres(sim, pipeline_env, pg_home, pg_url, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)  # Dagster's default: one by one
    sim.set_now(None)  # the simulator on the real clock, as the daemon's sensor is
    now = datetime.now(UTC)
    start = floor_to_partition(now) - timedelta(minutes=30)
    # What the catch-up sensor must fill: every partition of the last half hour but the newest
    # closed one (the schedule's); one more if a 5-minute boundary passes during the test.
    expected = Window(start, floor_to_partition(now) - PARTITION).partition_keys()
    monkeypatch.setenv("VITALS_PARTITIONS_START", partition_key(start))
    for name, value in AUTOMATION_ENV.items():
        monkeypatch.setenv(name, value)
    log_path = tmp_path / "daemon.log"
    asset_key = timeseries_key(SITE)

    with running_daemon(log_path), dg.DagsterInstance.get() as instance:

        def filled_and_idle() -> bool:
            active = instance.get_run_ids(dg.RunsFilter(statuses=list(NOT_FINISHED)), limit=1)
            return not active and set(expected) <= instance.get_materialized_partitions(asset_key)

        wait_for(filled_and_idle, 150, log_path, f"the daemon to fill {expected[0]}...{expected[-1]}")

    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        materialized = sorted(instance.get_materialized_partitions(asset_key))
    assert records
    assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}, [
        (r.dagster_run.run_id, r.dagster_run.status) for r in records
    ]
    assert all(any(tag in r.dagster_run.tags for tag in DAEMON_LAUNCH_TAGS) for r in records)
    # Contiguous from the first partition; exact over all of them.
    assert materialized[: len(expected)] == expected, materialized
    window = window_for_keys(materialized[0], materialized[-1])
    assert window.partition_keys() == materialized
    assert_exact(pipeline_env["VITALS_DUCKDB_PATH"], sim, window.start, window.end)
    # The runs and their materializations are rows of PostgreSQL.
    run_ids = {r.dagster_run.run_id for r in records}
    assert {run_id for run_id, in pg_query(pg_url, "SELECT run_id FROM runs")} == run_ids
    stored = pg_query(
        pg_url,
        "SELECT DISTINCT partition FROM event_logs "
        "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
        (asset_key.to_string(),),
    )
    assert sorted(p for p, in stored) == materialized
    # The first run loaded the site's points (the checks need their units), once: later runs
    # find the table.
    [(points_loaded,)] = pg_query(
        pg_url,
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
        "AND asset_key = %s AND partition IS NULL",
        (points_key(SITE).to_string(),),
    )
    assert points_loaded == 1
    # The sensor's ticks (schedule storage) are in PostgreSQL too.
    [(ticks,)] = pg_query(pg_url, "SELECT count(*) FROM job_ticks")
    assert ticks >= 1
    assert_no_sqlite_storage(pg_home)
    assert_no_password(_password(pg_url), pg_home, log_path.read_text())


NOT_FINISHED = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


def _password(url: str) -> str:
    from urllib.parse import urlsplit

    password = urlsplit(url).password
    assert password, "the test server's URL carries a password"
    return password


@contextmanager
def running_daemon(log_path: Path) -> Iterator[subprocess.Popen]:
    """`dagster-daemon run` in its own process group (its code server and run workers with it),
    ended by its id."""
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "vitals_pipeline.definitions"],
            cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield daemon
        finally:
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=10)
            except ProcessLookupError:
                pass


def wait_for(condition: Callable[[], object], timeout: float, log_path: Path, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    tail = log_path.read_text()[-4000:] if log_path.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; daemon log tail:\n{tail}")
