"""The roll-ups follow the timeseries runs (automation/rollups.py): which hours and days a run
completes, and the runs the `fleet_rollups` sensor asks for, on a real instance against the
simulator, a broken site among healthy ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.simulator import SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import hourly_key, range_tags, timeseries_key
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.rollups import (
    DAILY_JOB,
    HOURLY_JOB,
    ROLLUP_SENSOR,
    completed_periods,
    plan_rollups,
)
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, simulator
from vitals_pipeline_tests.helpers import QUIET

HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("first", "last", "scheduled", "ended", "hours"),
    [
        # A tick's window starting with the hour's last partition completes that hour ...
        ("2026-03-10-10:55", "2026-03-10-11:05", True, "2026-03-10-11:06", ["2026-03-10-10:00"]),
        # ... the ticks before it (still re-fetching the hour's end) complete nothing.
        ("2026-03-10-10:50", "2026-03-10-11:00", True, "2026-03-10-11:06", []),
        ("2026-03-10-10:45", "2026-03-10-10:55", True, "2026-03-10-11:01", []),
        # Any other run: every hour its window overlaps that was over when the run ended ...
        ("2026-03-10-09:00", "2026-03-10-10:55", False, "2026-03-10-11:01", ["2026-03-10-09:00", "2026-03-10-10:00"]),
        ("2026-03-10-09:30", "2026-03-10-10:20", False, "2026-03-10-10:26", ["2026-03-10-09:00"]),
        ("2026-03-10-09:30", "2026-03-10-09:40", False, "2026-03-10-09:46", []),
        # ... a late re-fetch of one partition of a past hour rolls that hour up again ...
        ("2026-03-10-10:20", "2026-03-10-10:20", False, "2026-03-10-12:30", ["2026-03-10-10:00"]),
        # ... and a catch-up up to now leaves the hour under way to the tick that completes it.
        ("2026-03-10-10:00", "2026-03-10-10:50", False, "2026-03-10-10:57", []),
    ],
)
def test_the_hours_a_run_completes(first, last, scheduled, ended, hours):
    found = completed_periods(window_for_keys(first, last), scheduled, HOUR, at(ended))
    assert [h.strftime("%Y-%m-%d-%H:%M") for h in found] == hours


def test_the_day_a_tick_completes():
    assert completed_periods(window_for_keys("2026-03-09-23:55", "2026-03-10-00:05"), True, DAY) == [
        at("2026-03-09-00:00")
    ]
    assert completed_periods(window_for_keys("2026-03-10-23:50", "2026-03-11-00:00"), True, DAY) == []


SITES = ["north", "south", "broken"]


@pytest.fixture
def fleet(monkeypatch, tmp_path):
    from vitals_pipeline.cli import ensure_dagster_home

    sim = simulator(*(SiteSpec(name, points=30, seed=i) for i, name in enumerate(SITES)))
    sim.faults.site_status = {"broken": 503}
    with SimulatorServer(sim) as server:
        for name, value in {
            "ACE_API_URL": server.url, "ACE_API_KEY": SIM_KEY, "ACE_SITES": ",".join(SITES),
            "VITALS_DUCKDB_PATH": str(tmp_path / "vitals.duckdb"),
            "VITALS_PARTITIONS_START": "2026-03-01-00:00",
            "DAGSTER_HOME": str(tmp_path / "home"), "VITALS_SITE_BUDGET_SECONDS": "5",
        }.items():
            monkeypatch.setenv(name, value)
        ensure_dagster_home()
        defs = build_definitions(Settings.from_env())
        with dg.DagsterInstance.get() as instance:
            yield defs, instance, tmp_path / "vitals.duckdb"


def run(defs, instance, job, request=None, *, first=None, last=None, trigger="schedule"):
    if request is None:
        selection = [timeseries_key(site) for site in SITES]
        tags = {**range_tags(first, last), TRIGGER_TAG: trigger}
    else:
        selection, tags = request.asset_selection, request.tags
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, asset_selection=selection, tags=tags, run_config=QUIET, raise_on_error=False
    )


def test_a_tick_that_completes_an_hour_rolls_it_up_for_the_sites_it_stored(fleet):
    defs, instance, database = fleet
    run(defs, instance, FLEET_JOB, first="2026-03-10-10:00", last="2026-03-10-10:50", trigger="catchup")
    plan, cursor = plan_rollups(instance, None, datetime.now(UTC).timestamp())
    # The catch-up over [10:00, 10:55) of a past hour rolls it up for what it has (the hour was
    # over when the run ended); the tick that re-fetches 10:55 rolls it up again, complete.
    assert {h: sorted(s) for h, s in plan.hours.items()} == {at("2026-03-10-10:00"): ["north", "south"]}
    assert {d: sorted(s) for d, s in plan.days.items()} == {at("2026-03-10-00:00"): ["north", "south"]}
    tick = run(defs, instance, FLEET_JOB, first="2026-03-10-10:55", last="2026-03-10-11:05")
    assert not tick.success  # the broken site fails; the others are stored

    sensor = defs.resolve_sensor_def(ROLLUP_SENSOR)
    with dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor) as context:
        result = sensor.evaluate_tick(context)
    [request] = result.run_requests
    assert request.job_name == HOURLY_JOB
    assert sorted(request.asset_selection) == sorted(hourly_key(s) for s in ("north", "south"))
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("2026-03-10-10:00", "2026-03-10-10:00")
    # Evaluated again: the tick's run was read already, nothing new.
    with dg.build_sensor_context(instance=instance, definitions=defs, cursor=result.cursor) as context:
        assert not sensor.evaluate_tick(context).run_requests

    assert run(defs, instance, HOURLY_JOB, request).success
    with duckdb.connect(str(database), read_only=True) as con:
        for site in ("north", "south"):
            stored = con.execute(
                f"SELECT count(*) FROM {site}.timeseries WHERE ts >= '2026-03-10 10:00' AND ts < '2026-03-10 11:00'"
            ).fetchone()[0]
            rolled = con.execute(f"SELECT sum(samples) FROM {site}.timeseries_hourly").fetchone()[0]
            assert stored == rolled > 0


def test_a_catchup_run_rolls_up_every_hour_it_completed(fleet):
    defs, instance, _ = fleet
    run(defs, instance, FLEET_JOB, first="2026-03-10-09:00", last="2026-03-10-10:55", trigger="catchup")
    plan, _ = plan_rollups(instance, None, datetime.now(UTC).timestamp())
    requests = plan.requests({"north": "north", "south": "south"}, (), marker="0")
    [request] = [r for r in requests if r.job_name == HOURLY_JOB]  # consecutive hours, same sites: one run
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("2026-03-10-09:00", "2026-03-10-10:00")


def test_the_tick_that_completes_a_day_asks_for_its_archive_and_daily_quality(fleet):
    defs, instance, _ = fleet
    run(defs, instance, FLEET_JOB, first="2026-03-09-23:55", last="2026-03-10-00:05")
    plan, cursor = plan_rollups(instance, None, datetime.now(UTC).timestamp())
    sensor = defs.resolve_sensor_def(ROLLUP_SENSOR)
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        result = sensor.evaluate_tick(context)
    daily = [r for r in result.run_requests if r.job_name == DAILY_JOB]
    [request] = daily
    assert {k.path[-1] for k in request.asset_selection} == {"archive", "quality_daily"}
    assert {k.path[0] for k in request.asset_selection} == {"north", "south"}
    assert request.tags["dagster/asset_partition_range_start"] == "2026-03-09"
