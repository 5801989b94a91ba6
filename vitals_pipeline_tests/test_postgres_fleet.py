"""The fleet scenario of test_fleet.py on the Dagster instance on PostgreSQL: a real server
(vitals_pipeline_tests/postgres.py), the shipped deploy/postgres/dagster.yaml in a temporary
DAGSTER_HOME, a fresh database per test, asset events stored in batches as the settings recommend.

Four sites, one always answering 503, one in-process run of `fleet_timeseries` per schedule tick,
on the simulator's real clock (so that `vitals status` judges fresh data):

1. the broken site fails alone: per-site partition status, every other site stored exactly, the
   failure named in the step's error; the run and its materializations are rows of PostgreSQL;
2. the alert starts for the broken site only, and `vitals status --json` (a subprocess on the
   same instance) shows each site's own state and the fleet's exit code;
3. the catch-up plan retries only the failed site (held for a quarter hour first), and its run
   stores it exactly without fetching the others again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import timeseries_key
from vitals_pipeline.automation.alerts import evaluate_alerts
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.schedules import plan_tick
from vitals_pipeline.automation.sensors import plan_catchup
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import PARTITION, floor_to_partition, partition_key, window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY
from vitals_pipeline_tests.helpers import QUIET, diff
from vitals_pipeline_tests.postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from vitals_pipeline_tests.test_fleet import BROKEN, HEALTHY, SITES, F, Fleet, M
from vitals_pipeline_tests.test_postgres import (
    assert_no_password,
    assert_no_sqlite_storage,
    pg_home,  # noqa: F401  (fixture)
    pg_query,
)

pytestmark = pytest.mark.slow

VITALS = Path(sys.executable).parent / "vitals"


@pytest.fixture
def pg_fleet(pg_home, pg_url, monkeypatch, tmp_path):  # noqa: F811
    """A 4-site fleet (one always 503) on the PostgreSQL instance, its partitions starting at the
    window of the tick that the test runs first (so the catch-up sees that tick only)."""
    sim = Simulator(
        SimulatorConfig(
            sites=[SiteSpec(name, points=40, seed=i) for i, name in enumerate(SITES)],
            api_key=SIM_KEY,
        )
    )
    sim.faults.site_status = {BROKEN: 503}
    now = datetime.now(UTC)
    first = floor_to_partition(now) - PARTITION - timedelta(minutes=10)  # the tick's lookback
    with SimulatorServer(sim) as server:
        env = {
            "ACE_API_URL": server.url,
            "ACE_API_KEY": SIM_KEY,
            "ACE_SITES": ",".join(SITES),
            "VITALS_DUCKDB_PATH": str(tmp_path / "vitals.duckdb"),
            "VITALS_PARTITIONS_START": partition_key(first),
            "VITALS_SITE_BUDGET_SECONDS": "5",  # the broken site gives up in seconds
            # The tick of now: without this, one on the quarter hour would add the weather step
            # (test_fleet.py tests that one on a fixed clock).
            "VITALS_WEATHER_MINUTES": "0",
            "DAGSTER_EVENT_BATCH_SIZE": "1000",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings.from_env()
        with dg.DagsterInstance.get() as instance:
            fleet = Fleet(sim, settings, build_definitions(settings), instance, env)
            fleet.env = {**env, "DAGSTER_HOME": str(pg_home), "DAGSTER_PG_URL": pg_url}
            yield fleet


def run_tick(fleet: Fleet):
    """The schedule's run for the tick of now: every site, newest closed partition + lookback."""
    [request] = plan_tick(datetime.now(UTC), SITES, set(), fleet.settings)
    first = request.tags["dagster/asset_partition_range_start"]
    last = request.tags["dagster/asset_partition_range_end"]
    result = fleet.defs.resolve_job_def(FLEET_JOB).execute_in_process(
        instance=fleet.instance,
        asset_selection=request.asset_selection,
        tags=request.tags,
        run_config=QUIET,
        raise_on_error=False,
    )
    return result, first, last


def test_a_broken_site_fails_alone_on_postgres(pg_fleet, pg_url, pg_home):  # noqa: F811
    result, first, last = run_tick(pg_fleet)
    assert not result.success  # the run records the broken site's failure
    assert len(window_for_keys(first, last).partition_keys()) == 3

    for site in HEALTHY:
        assert set(pg_fleet.status(site, first, last).values()) == {M}, site
        truth = pg_fleet.truth(site, first, last)
        assert truth, "the simulator has data for the window"
        found = diff(pg_fleet.stored(site, first, last), truth)
        assert found.clean, f"{site}: {found}"
    assert set(pg_fleet.status(BROKEN, first, last).values()) == {F}
    with duckdb.connect(pg_fleet.env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        tables = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ?", [BROKEN]
        ).fetchone()[0]
    assert tables == 0, "the broken site stores nothing"

    [failure] = [e for e in result.all_events if e.is_step_failure]
    description = failure.event_specific_data.user_failure_data.description
    assert BROKEN in description and "503" in description
    assert not any(site in description for site in HEALTHY)

    # The same, from PostgreSQL's own tables: the run, 3 partitions of each healthy site's
    # timeseries (the run also records the points it fetched for sites new to it).
    assert pg_query(pg_url, "SELECT run_id, status FROM runs") == [(result.run_id, "FAILURE")]
    rows = pg_query(
        pg_url,
        "SELECT asset_key, count(DISTINCT partition) FROM event_logs "
        "WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key",
        (result.run_id,),
    )
    per_asset = {dg.AssetKey.from_db_string(key): n for key, n in rows}
    timeseries = {key: n for key, n in per_asset.items() if key.path[-1] == "timeseries"}
    assert timeseries == {timeseries_key(site): 3 for site in HEALTHY}
    assert_no_sqlite_storage(pg_home)
    assert_no_password(urlsplit(pg_url).password, pg_home)


def test_the_alert_and_vitals_status_follow_the_sites_on_postgres(pg_fleet):
    result, first, last = run_tick(pg_fleet)
    changes, state = evaluate_alerts(pg_fleet.instance, None, 0.0)
    assert [(c.key, c.started) for c in changes] == [(f"{BROKEN}/timeseries", True)]
    [change] = changes
    assert "503" in change.error and change.run_id == result.run_id

    status = subprocess.run(
        [str(VITALS), "status", "--json", "--duckdb-wait", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **pg_fleet.env},
    )
    assert "Traceback" not in status.stderr, status.stderr
    report = json.loads(status.stdout)
    sites = {s["site"]: s for s in report["sites"]}
    for site in HEALTHY:
        assert sites[site]["health"] == "healthy", sites[site]
        assert sites[site]["last_run"]["run_id"] == result.run_id
        assert (
            sites[site]["last_run"]["site_status"] == "SUCCESS"
        )  # the fleet run failed, not for it
        assert sites[site]["missing_partitions"] == sites[site]["failed_partitions"] == 0
    broken = sites[BROKEN]
    assert broken["health"] == "down" and broken["newest_partition"] is None
    assert broken["last_run"]["site_status"] == "FAILURE" and "503" in broken["last_run"]["error"]
    assert broken["failed_partitions"] >= 2  # the tick's, but the newest (the schedule's)
    assert report["fleet"] == {"sites": 4, "healthy": 3, "degraded": 0, "down": 1, "paused": 0}
    assert status.returncode == 2 == report["exit_code"]
    assert SIM_KEY not in status.stdout + status.stderr


def test_catchup_retries_only_the_failed_site_on_postgres(pg_fleet):
    result, first, last = run_tick(pg_fleet)
    assert not result.success
    now = datetime.now(UTC)
    plan = plan_catchup(
        pg_fleet.instance,
        SITES,
        pg_fleet.partitions,
        now=now,
        hours=1,
        partitions_start=pg_fleet.settings.partitions_start,
    )
    # Just failed, nothing materialized since for that site: held for a quarter hour.
    assert plan.requests == [] and any(BROKEN in reason for reason in plan.held)
    plan = plan_catchup(
        pg_fleet.instance,
        SITES,
        pg_fleet.partitions,
        now=now,
        hours=1,
        partitions_start=pg_fleet.settings.partitions_start,
        retry_after=timedelta(0),
    )
    [broken_only] = plan.requests
    assert [k.path[0] for k in broken_only.asset_selection] == [BROKEN]
    catchup_first = broken_only.tags["dagster/asset_partition_range_start"]
    catchup_last = broken_only.tags["dagster/asset_partition_range_end"]
    tick_keys = window_for_keys(first, last).partition_keys()
    assert catchup_first == first and catchup_last in tick_keys

    pg_fleet.sim.faults.site_status = {}
    caught_up = pg_fleet.defs.resolve_job_def(FLEET_JOB).execute_in_process(
        instance=pg_fleet.instance,
        asset_selection=list(broken_only.asset_selection),
        tags=broken_only.tags,
        run_config=QUIET,
    )
    assert caught_up.success
    assert set(pg_fleet.status(BROKEN, catchup_first, catchup_last).values()) == {M}
    found = diff(
        pg_fleet.stored(BROKEN, catchup_first, catchup_last),
        pg_fleet.truth(BROKEN, catchup_first, catchup_last),
    )
    assert found.clean, str(found)
    materialized = {e.asset_key.path[0] for e in caught_up.get_asset_materialization_events()}
    assert materialized == {BROKEN}, "the healthy sites were not fetched again"
