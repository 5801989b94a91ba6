"""Many sites: definitions for 20 sites load fast and group per site; a failing site does not stop
the others (separate runs, and separate steps in one run); a schedule tick asks for at most one run
per site."""

import time
from datetime import UTC, datetime

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.simulator import Simulator, SiteSpec
from vitals_pipeline.assets.site import timeseries_key
from vitals_pipeline.assets.weather import weather_key
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline_tests.conftest import SITE, simulator

SITES = [f"site_{i:02d}" for i in range(20)]
GHOST = "ghost_site"  # unknown to ACE: every route answers 403
PER_SITE = {"timeseries", "points", "timeseries_hourly", "archive", "weather"}


@pytest.fixture
def sim() -> Simulator:
    return simulator(SiteSpec(SITE, points=40, seed=3))


pytestmark = pytest.mark.usefixtures("derived_env")


def test_twenty_sites_load_fast_and_are_grouped_per_site(pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", ",".join(SITES))
    started = time.perf_counter()
    defs = build_definitions(Settings.from_env())
    dg.Definitions.validate_loadable(defs)
    elapsed = time.perf_counter() - started
    assert elapsed < 5, f"definitions for 20 sites took {elapsed:.1f} s"

    graph = defs.resolve_asset_graph()
    by_site: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        site, name = key.path
        by_site.setdefault(site, set()).add(name)
        assert graph.get(key).group_name == site, f"{key.to_user_string()} is not in group {site}"
    assert set(by_site) == set(SITES)
    assert all(names >= PER_SITE for names in by_site.values())


def test_a_failing_site_fails_only_its_own_run(sim, pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", f"{SITE},{GHOST}")
    defs = build_definitions(Settings.from_env())
    instance = dg.DagsterInstance.ephemeral()
    results = {}
    for site in (GHOST, SITE):  # the failing site first: the other's run must not care
        job = defs.resolve_job_def(f"{site}_timeseries")
        results[site] = job.execute_in_process(
            instance=instance, partition_key="2026-03-09-10:00", raise_on_error=False
        )
    assert not results[GHOST].success and results[SITE].success
    assert results[GHOST].run_id != results[SITE].run_id
    [failure] = [e for e in results[GHOST].all_events if e.is_step_failure]
    assert "HTTP 403" in failure.event_specific_data.error.message
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchall()[0][0] > 0
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    assert GHOST not in schemas


def test_a_failing_site_step_does_not_stop_another_sites_step_in_one_run(sim, pipeline_env, monkeypatch):
    """The automation sensor puts the same partition of several sites' assets in one run."""
    monkeypatch.setenv("ACE_SITES", f"{GHOST},{SITE}")
    job = build_definitions(Settings.from_env()).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        asset_selection=[weather_key(GHOST), weather_key(SITE)],
        partition_key="2026-03-10-11:55",
        raise_on_error=False,
    )
    assert not result.success
    assert [e.step_key for e in result.all_events if e.is_step_failure] == [f"{GHOST}__weather"]
    assert result.asset_materializations_for_node(f"{SITE}__weather")


def test_a_schedule_tick_asks_for_at_most_one_run_per_site(pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", ",".join(SITES))
    defs = build_definitions(Settings.from_env())
    schedules = list(defs.schedules or [])
    assert len(schedules) == len(SITES), "one schedule per site"
    tick = datetime(2026, 3, 10, 11, 1, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        # A context opened with `with` closes the instance it resolves (unclosed, it leaves
        # Dagster pointing at a dead instance for later tests in the same worker).
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
            sites_asked = []
            for schedule in schedules:
                requests = schedule.evaluate_tick(context).run_requests or []
                assert len(requests) <= 1, schedule.name
                job = defs.resolve_job_def(schedule.job_name)
                selected = job.asset_layer.selected_asset_keys
                assert len({key.path[0] for key in selected}) == 1, f"{schedule.job_name} spans sites"
                sites_asked += [key.path[0] for key in selected for _ in requests]
    assert sorted(sites_asked) == SITES
    assert timeseries_key(SITES[0]) in defs.resolve_job_def(f"{SITES[0]}_timeseries").asset_layer.selected_asset_keys
