"""A fleet: one run for many sites, one of them broken, on a real instance (the shipped
dagster.yaml) against the simulator over HTTP.

Per-site partition status, the stored data against the simulator's ground truth, the alert that
follows the broken site's state (one when it starts failing, one when it recovers), the catch-up
sensor retrying only the failed site, pausing a site, and batching after an outage.
"""

from __future__ import annotations

import json
from datetime import timedelta

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.simulator import SiteSpec
from vitals_pipeline.assets.keys import five_minute_partitions, range_tags, timeseries_key
from vitals_pipeline.automation.alerts import ALERT_SENSOR_NAME, alert_message, evaluate_alerts
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.pause import pause_sites, paused_sites, resume_sites
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.automation.schedules import plan_tick
from vitals_pipeline.automation.sensors import plan_catchup
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import partition_start, window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, SIM_NOW, simulator
from vitals_pipeline_tests.helpers import QUIET, Receiver, diff, expected_rows, stored_rows

HEALTHY = ["north_office", "south_lab", "east_depot"]
BROKEN = "west_annex"
SITES = [*HEALTHY, BROKEN]
FIRST, LAST = "2026-03-10-11:00", "2026-03-10-11:10"  # a tick: newest closed partition + lookback


@pytest.fixture
def fleet_sim():
    made = simulator(*(SiteSpec(name, points=40, seed=i) for i, name in enumerate(SITES)))
    made.faults.site_status = {BROKEN: 503}
    return made


@pytest.fixture
def fleet(fleet_sim, monkeypatch, tmp_path):
    """The environment of a 4-site fleet, a DAGSTER_HOME with the shipped settings, the defs."""
    from vitals_pipeline.ace.simulator import SimulatorServer
    from vitals_pipeline.cli import ensure_dagster_home

    with SimulatorServer(fleet_sim) as server:
        env = {
            "ACE_API_URL": server.url,
            "ACE_API_KEY": SIM_KEY,
            "ACE_SITES": ",".join(SITES),
            "VITALS_DUCKDB_PATH": str(tmp_path / "vitals.duckdb"),
            "VITALS_PARTITIONS_START": "2026-03-01-00:00",
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            # The broken site's budget runs out in seconds, not the default half minute.
            "VITALS_SITE_BUDGET_SECONDS": "5",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        ensure_dagster_home()
        settings = Settings.from_env()
        with dg.DagsterInstance.get() as instance:
            yield Fleet(fleet_sim, settings, build_definitions(settings), instance, env)


class Fleet:
    def __init__(self, sim, settings, defs, instance, env):
        self.sim, self.settings, self.defs, self.instance, self.env = sim, settings, defs, instance, env
        self.partitions = five_minute_partitions(settings)

    def run(self, first: str, last: str, sites=SITES, **tags):
        job = self.defs.resolve_job_def(FLEET_JOB)
        return job.execute_in_process(
            instance=self.instance,
            asset_selection=[timeseries_key(site) for site in sites],
            tags={**range_tags(first, last), **tags},
            run_config=QUIET,
            raise_on_error=False,
        )

    def status(self, site: str, first: str, last: str) -> dict:
        keys = window_for_keys(first, last).partition_keys()
        found = self.instance.get_status_by_partition(timeseries_key(site), keys, self.partitions) or {}
        return {key: found.get(key) for key in keys}

    def stored(self, site: str, first: str, last: str):
        window = window_for_keys(first, last)
        return stored_rows(self.env["VITALS_DUCKDB_PATH"], site, window.start, window.end)

    def truth(self, site: str, first: str, last: str):
        window = window_for_keys(first, last)
        return expected_rows(self.sim, window.start, window.end, site)


M, F = dg.AssetPartitionStatus.MATERIALIZED, dg.AssetPartitionStatus.FAILED


def test_a_broken_site_fails_alone_and_every_other_site_is_stored_exactly(fleet):
    result = fleet.run(FIRST, LAST)
    assert not result.success  # the run records the broken site's failure

    for site in HEALTHY:
        assert set(fleet.status(site, FIRST, LAST).values()) == {M}, site
        found = diff(fleet.stored(site, FIRST, LAST), fleet.truth(site, FIRST, LAST))
        assert found.clean, f"{site}: {found}"
        assert fleet.truth(site, FIRST, LAST), "the simulator has data for the window"
    assert set(fleet.status(BROKEN, FIRST, LAST).values()) == {F}
    with duckdb.connect(fleet.env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        tables = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ?", [BROKEN]
        ).fetchone()[0]
    assert tables == 0, "the broken site stores nothing"

    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.event_specific_data
    assert BROKEN in data.user_failure_data.description
    assert "503" in data.user_failure_data.description
    assert not any(site in data.user_failure_data.description for site in HEALTHY)
    listed = data.user_failure_data.metadata["failed_sites"].value
    assert [entry["site"] for entry in listed] == [BROKEN]
    assert SIM_KEY not in json.dumps(listed)


def test_the_alert_follows_the_sites_state_not_the_runs(fleet, monkeypatch):
    now = 0.0
    first = fleet.run(FIRST, LAST)
    changes, state = evaluate_alerts(fleet.instance, None, now)
    assert [(c.key, c.started) for c in changes] == [(f"{BROKEN}/timeseries", True)]
    [change] = changes
    assert "503" in change.error and change.run_id == first.run_id
    assert change.window == "[2026-03-10-11:00, 2026-03-10-11:15)"

    with Receiver() as receiver:
        from vitals_pipeline.automation.alerts import post_alert

        payload = alert_message(changes, "http://dagster.example:3000")
        post_alert(receiver.url, payload)
    [body] = receiver.bodies
    assert BROKEN in body["text"] and "503" in body["text"]
    assert f"http://dagster.example:3000/runs/{first.run_id}" in body["text"]
    assert body["started_failing"][0]["site"] == BROKEN and body["recovered"] == []
    assert SIM_KEY not in json.dumps(body)

    # Still broken on the next ticks: no new alert.
    fleet.run("2026-03-10-11:05", "2026-03-10-11:15")
    fleet.run("2026-03-10-11:10", "2026-03-10-11:20")
    changes, state = evaluate_alerts(fleet.instance, state.to_cursor(), now)
    assert changes == []
    assert state.failing[f"{BROKEN}/timeseries"].runs == 3

    # The site answers again: one recovery alert, naming how long it failed.
    fleet.sim.faults.site_status = {}
    assert fleet.run("2026-03-10-11:15", "2026-03-10-11:25").success
    changes, state = evaluate_alerts(fleet.instance, state.to_cursor(), now)
    assert [(c.key, c.started) for c in changes] == [(f"{BROKEN}/timeseries", False)]
    message = alert_message(changes, "http://ui")
    assert message["recovered"][0]["failed_runs"] == 3 and "recovered" in message["text"]
    assert not state.failing


def test_catchup_retries_only_the_failed_site_and_fills_it(fleet):
    fleet.sim.faults.site_status = {}
    assert fleet.run("2026-03-10-10:00", "2026-03-10-10:55").success  # an hour while it worked
    fleet.sim.faults.site_status = {BROKEN: 503}
    fleet.run(FIRST, LAST)
    now = partition_start(LAST) + timedelta(minutes=12)  # 11:22: the catch-up window ends at 11:15
    plan = plan_catchup(
        fleet.instance, SITES, fleet.partitions, now=now, hours=1,
        partitions_start=fleet.settings.partitions_start,
    )
    # Just failed, nothing materialized since for that site: held for a quarter hour.
    assert plan.requests == [] and any(BROKEN in reason for reason in plan.held)
    plan = plan_catchup(
        fleet.instance, SITES, fleet.partitions, now=now, hours=1,
        partitions_start=fleet.settings.partitions_start,
        retry_after=timedelta(0),
    )
    # The window is 10:15..11:10: only the broken site's three partitions need a run.
    [broken_only] = plan.requests
    assert [k.path[0] for k in broken_only.asset_selection] == [BROKEN]
    assert (broken_only.tags["dagster/asset_partition_range_start"],
            broken_only.tags["dagster/asset_partition_range_end"]) == (FIRST, LAST)
    assert broken_only.tags[TRIGGER_TAG] == "catchup"

    fleet.sim.faults.site_status = {}
    result = fleet.defs.resolve_job_def(FLEET_JOB).execute_in_process(
        instance=fleet.instance,
        asset_selection=list(broken_only.asset_selection),
        tags=broken_only.tags,
        run_config=QUIET,
    )
    assert result.success
    assert set(fleet.status(BROKEN, FIRST, LAST).values()) == {M}
    assert diff(fleet.stored(BROKEN, FIRST, LAST), fleet.truth(BROKEN, FIRST, LAST)).clean
    materialized = {e.asset_key.path[0] for e in result.get_asset_materialization_events()}
    assert materialized == {BROKEN}, "the healthy sites were not fetched again"
    # A run of one site carries its tag (so the runs list can be filtered by site).
    assert fleet.instance.get_run_by_id(result.run_id).tags["vitals/site"] == BROKEN


def test_a_paused_site_is_left_out_of_ticks_and_catchup(fleet):
    pause_sites(fleet.instance, [BROKEN])
    assert paused_sites(fleet.instance) == {BROKEN}
    requests = plan_tick(SIM_NOW, SITES, paused_sites(fleet.instance), fleet.settings)
    [request] = requests
    assert sorted({k.path[0] for k in request.asset_selection}) == sorted(HEALTHY)
    plan = plan_catchup(
        fleet.instance, SITES, fleet.partitions, now=SIM_NOW, hours=1,
        partitions_start=fleet.settings.partitions_start,
    )
    assert all(BROKEN not in {k.path[0] for k in r.asset_selection} for r in plan.requests)
    assert plan.requests, "the other sites' hour is missing and requested"
    resume_sites(fleet.instance, [BROKEN])
    [request] = plan_tick(SIM_NOW, SITES, paused_sites(fleet.instance), fleet.settings)
    assert {k.path[0] for k in request.asset_selection} == set(SITES)


def test_the_pause_job_switches_a_site_from_the_launchpad(fleet):
    job = fleet.defs.resolve_job_def("vitals_pause_site")
    config = {"ops": {"pause_site": {"config": {"site": BROKEN, "reason": "roof works"}}}}
    assert job.execute_in_process(instance=fleet.instance, run_config=config).success
    assert paused_sites(fleet.instance) == {BROKEN}
    unknown = {"ops": {"pause_site": {"config": {"site": "nowhere", "reason": ""}}}}
    result = job.execute_in_process(instance=fleet.instance, run_config=unknown, raise_on_error=False)
    assert not result.success
    resume = fleet.defs.resolve_job_def("vitals_resume_site")
    config = {"ops": {"resume_site": {"config": {"site": BROKEN, "reason": ""}}}}
    assert resume.execute_in_process(instance=fleet.instance, run_config=config).success
    assert paused_sites(fleet.instance) == set()


def test_after_an_outage_every_site_is_caught_up_by_one_batched_run(fleet):
    fleet.sim.faults.site_status = {}
    plan = plan_catchup(
        fleet.instance, SITES, fleet.partitions, now=SIM_NOW, hours=2,
        partitions_start=fleet.settings.partitions_start,
    )
    # 2 h missing for 4 sites: one stretch, one run for all of them (not one per site).
    [request] = plan.requests
    assert sorted(k.path[0] for k in request.asset_selection) == sorted(SITES)
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("2026-03-10-09:55", "2026-03-10-11:50")


def test_shards_are_steps_of_one_run_and_a_failing_shard_stops_no_other(monkeypatch, fleet):
    monkeypatch.setenv("VITALS_SHARD_SIZE", "3")
    settings = Settings.from_env()
    defs = build_definitions(settings)
    # 12:01: the window closes on the quarter hour, so the tick also refreshes the weather.
    [request] = plan_tick(SIM_NOW + timedelta(minutes=1), SITES, set(), settings)
    assert sorted(request.asset_selection) == sorted(  # one run for the tick
        [timeseries_key(site) for site in SITES] + [dg.AssetKey([site, "weather"]) for site in SITES]
    )
    result = defs.resolve_job_def(FLEET_JOB).execute_in_process(
        instance=fleet.instance, asset_selection=request.asset_selection, tags=request.tags,
        run_config=QUIET, raise_on_error=False,
    )
    steps = {e.step_key for e in result.all_events if e.is_step_start}
    assert steps == {"timeseries_shard_1", "timeseries_shard_2", "weather"}
    # The broken site is in the second shard (the sites' order): only that step fails, and the
    # weather step, which fails for the broken site alone.
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert failed == {"timeseries_shard_2", "weather"}
    weather = {m.asset_key.path[0] for m in result.get_asset_materialization_events()
               if m.asset_key.path[-1] == "weather"}
    assert weather == set(HEALTHY)
    first = request.tags["dagster/asset_partition_range_start"]
    last = request.tags["dagster/asset_partition_range_end"]
    for site in HEALTHY:
        assert set(fleet.status(site, first, last).values()) == {M}, site


def test_definitions_register_one_schedule_and_one_catchup_sensor_for_the_fleet(fleet):
    assert sorted(s.name for s in fleet.defs.schedules) == ["fleet_timeseries_schedule", "vitals_prune_schedule"]
    names = {s.name for s in fleet.defs.sensors}
    assert {"fleet_catchup", ALERT_SENSOR_NAME} <= names
    assert not any(name.endswith("_catchup") and name != "fleet_catchup" for name in names)


def test_fleet_status_in_the_ui_names_the_site_that_is_behind(fleet, monkeypatch):
    from vitals_pipeline.automation.fleet_status import FLEET_STATUS_KEY, FLEET_STATUS_SENSOR

    fleet.run(FIRST, LAST)
    # Partitions from the tick's window on (no older holes), the clock a minute after the window:
    # the healthy sites are current.
    monkeypatch.setenv("VITALS_PARTITIONS_START", FIRST)
    defs = build_definitions(Settings.from_env(now=partition_start(LAST)))
    monkeypatch.setattr(
        "vitals_pipeline.automation.fleet_status.datetime",
        type("frozen", (), {"now": staticmethod(lambda tz=None: partition_start(LAST) + timedelta(minutes=6))}),
    )
    sensor = defs.resolve_sensor_def(FLEET_STATUS_SENSOR)
    with dg.build_sensor_context(instance=fleet.instance, definitions=defs) as context:
        result = sensor.evaluate_tick(context)
    [observation] = result.asset_events
    assert observation.asset_key == FLEET_STATUS_KEY
    meta = {k: getattr(v, "value", v) for k, v in observation.metadata.items()}
    assert (meta["sites"], meta["healthy"], meta["down"]) == (4, 3, 1)
    table = meta["sites_behind"]
    assert BROKEN in table and not any(site in table for site in HEALTHY)
    assert meta["max_lag_minutes"] == 1.0
