"""Many sites: definitions for 20 sites load fast and group per site; a failing site does not stop
the others sharing its run (timeseries, points); a schedule tick asks for one run for every site,
cut into one step per shard of sites, each site in exactly one."""

import itertools
import time
from datetime import UTC, datetime

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.simulator import Simulator, SiteSpec
from vitals_pipeline.assets.keys import (
    REFRESH_POINTS_TAG,
    five_minute_partitions,
    points_key,
    timeseries_key,
    weather_key,
)
from vitals_pipeline.automation.fleet_status import FLEET_STATUS_KEY
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.schedules import SCHEDULE_NAME, plan_tick
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import window_for_keys
from vitals_pipeline_tests.conftest import SITE, simulator
from vitals_pipeline_tests.helpers import QUIET

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
    for key in graph.get_all_asset_keys() - {FLEET_STATUS_KEY}:
        site, name = key.path
        by_site.setdefault(site, set()).add(name)
        assert graph.get(key).group_name == site, f"{key.to_user_string()} is not in group {site}"
    assert set(by_site) == set(SITES)
    assert all(names >= PER_SITE for names in by_site.values())
    assert graph.get(FLEET_STATUS_KEY).group_name == "fleet", "the fleet's own view is not one site's"


def test_a_failing_site_fails_only_its_own_partitions_in_a_shared_run(sim, pipeline_env, monkeypatch):
    """One fleet run for both sites, the failing one first: the other is fetched, stored and
    materialized all the same; only the failing site's partition is FAILED."""
    monkeypatch.setenv("ACE_SITES", f"{GHOST},{SITE}")
    settings = Settings.from_env()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    key = "2026-03-09-10:00"
    result = defs.resolve_job_def(FLEET_JOB).execute_in_process(
        instance=instance, asset_selection=[timeseries_key(GHOST), timeseries_key(SITE)],
        partition_key=key, run_config=QUIET, raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    user = failure.event_specific_data.user_failure_data
    assert "HTTP 403" in user.description and SITE not in user.description.replace(GHOST, "")
    assert [entry["site"] for entry in user.metadata["failed_sites"].value] == [GHOST]
    partitions = five_minute_partitions(settings)
    status = {
        site: instance.get_status_by_partition(timeseries_key(site), [key], partitions)[key]
        for site in (GHOST, SITE)
    }
    assert status == {GHOST: dg.AssetPartitionStatus.FAILED, SITE: dg.AssetPartitionStatus.MATERIALIZED}
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchall()[0][0] > 0
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata").fetchall()}
    assert GHOST not in schemas


def test_a_failing_site_does_not_stop_another_sites_points_in_one_run(sim, pipeline_env, monkeypatch):
    """The points of every site are one step too: a site ACE refuses is named in the step's
    failure, the other's points are stored and materialized."""
    monkeypatch.setenv("ACE_SITES", f"{GHOST},{SITE}")
    job = build_definitions(Settings.from_env()).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        asset_selection=[points_key(GHOST), points_key(SITE)],
        run_config=QUIET,
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "points"
    listed = failure.event_specific_data.user_failure_data.metadata["failed_sites"].value
    assert [entry["site"] for entry in listed] == [GHOST] and "HTTP 403" in listed[0]["error"]
    assert [m.asset_key for m in result.asset_materializations_for_node("points")] == [points_key(SITE)]
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        names = {r[0] for r in con.execute(f"SELECT name FROM {SITE}.points").fetchall()}
    assert names == {p["name"] for p in sim.points(SITE)}


def test_the_hourly_tick_refreshes_the_points_in_each_sites_fetch(sim, pipeline_env, monkeypatch):
    """The tick whose window closes at :05 refreshes the points, in the timeseries step itself
    (the run's tag; no points step that could hold every site back): the site ACE refuses fails
    alone, named in the step's failure; the other's points are stored and materialized, its
    samples stored and its partitions MATERIALIZED."""
    monkeypatch.setenv("ACE_SITES", f"{GHOST},{SITE}")
    settings = Settings.from_env()
    defs = build_definitions(settings)
    [request] = plan_tick(datetime(2026, 3, 10, 11, 6, tzinfo=UTC), settings.sites, set(), settings)
    assert sorted(request.asset_selection) == sorted(timeseries_key(site) for site in (GHOST, SITE))
    assert request.tags[REFRESH_POINTS_TAG] == "true"
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(FLEET_JOB).execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags,
        run_config=QUIET, raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    listed = failure.event_specific_data.user_failure_data.metadata["failed_sites"].value
    assert [entry["site"] for entry in listed] == [GHOST]
    refreshed = [
        e.event_specific_data.materialization for e in result.all_events
        if e.is_step_materialization and e.asset_key == points_key(SITE)
    ]
    assert len(refreshed) == 1 and refreshed[0].metadata["points"].value == len(sim.points(SITE))
    assert refreshed[0].metadata["loaded_by"].value == "hourly refresh of the scheduled run"
    first = request.tags["dagster/asset_partition_range_start"]
    last = request.tags["dagster/asset_partition_range_end"]
    window = window_for_keys(first, last)
    partitions = five_minute_partitions(settings)
    status = instance.get_status_by_partition(timeseries_key(SITE), window.partition_keys(), partitions)
    assert set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}, status
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        stored = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchall()[0][0]
        points = con.execute(f"SELECT count(*) FROM {SITE}.points").fetchall()[0][0]
    assert stored == len(sim.ground_truth(SITE, window.start, window.end)) > 0
    assert points == len(sim.points(SITE))


def test_a_failed_points_refresh_keeps_the_stored_points_and_stores_the_samples(sim, pipeline_env, monkeypatch):
    """ACE fails the hourly points request of a site whose points are stored: the site's samples
    are stored and judged with the points it has, the run succeeds, and the log says so."""
    monkeypatch.setenv("VITALS_CHECKS", "on")
    settings = Settings.from_env()
    defs = build_definitions(settings)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def(FLEET_JOB)
    assert job.execute_in_process(instance=instance, asset_selection=[points_key(SITE)], run_config=QUIET).success
    [request] = plan_tick(datetime(2026, 3, 10, 11, 6, tzinfo=UTC), settings.sites, set(), settings)
    sim.faults.script = ["badkey", "badkey"]  # the first requests of the run: the points', twice
    result = job.execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags, run_config=QUIET,
    )
    assert result.success
    assert not sim.faults.script, "the points request was refused"
    warnings = [e.message for e in instance.all_logs(result.run_id) if e.level >= 30]
    assert any("points refresh failed" in w and SITE in w for w in warnings), warnings
    assert not [e for e in result.all_events if e.is_step_materialization and e.asset_key == points_key(SITE)]
    window = window_for_keys(request.tags["dagster/asset_partition_range_start"],
                             request.tags["dagster/asset_partition_range_end"])
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        stored = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchall()[0][0]
        points = con.execute(f"SELECT count(*) FROM {SITE}.points").fetchall()[0][0]
        unknown = con.execute(
            f"SELECT count(DISTINCT point) FROM {SITE}.quality WHERE expected IS NULL"
        ).fetchall()[0][0]
    assert stored == len(sim.ground_truth(SITE, window.start, window.end)) > 0
    assert points == len(sim.points(SITE))
    # Judged with the stored points: only the points ACE gives no interval have no expectation.
    assert unknown == sum(1 for p in sim.points(SITE) if not p["collect_interval"])


@pytest.mark.parametrize(
    ("shard_size", "steps"),
    [(None, [("timeseries", 20)]),
     ("8", [("timeseries_shard_1", 8), ("timeseries_shard_2", 8), ("timeseries_shard_3", 4)])],
)
def test_a_schedule_tick_asks_for_one_run_for_every_site_with_one_step_per_shard(
    pipeline_env, monkeypatch, shard_size, steps
):
    """Shards are steps, not runs: a tick asks for ONE run over every site, whatever
    VITALS_SHARD_SIZE; the shard size only decides how the fleet's timeseries are cut into steps
    (consecutive sites in configured order, each in exactly one)."""
    monkeypatch.setenv("ACE_SITES", ",".join(SITES))
    if shard_size:
        monkeypatch.setenv("VITALS_SHARD_SIZE", shard_size)
    defs = build_definitions(Settings.from_env())
    names = sorted(s.name for s in defs.schedules or [])
    assert names == [SCHEDULE_NAME, "vitals_prune_schedule"], "one schedule for the fleet (+ pruning)"
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    tick = datetime(2026, 3, 10, 11, 1, tzinfo=UTC)
    with dg.instance_for_test() as instance:
        # A context opened with `with` closes the instance it resolves (unclosed, it leaves
        # Dagster pointing at a dead instance for later tests in the same worker).
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
            requests = schedule.evaluate_tick(context).run_requests or []
    [request] = requests
    asked = [key for key in request.asset_selection if key.path[-1] == "timeseries"]
    assert sorted(asked) == sorted(timeseries_key(site) for site in SITES), "each site once"
    # The window closes at 11:00, a quarter hour: the same run refreshes every site's weather.
    others = [key for key in request.asset_selection if key.path[-1] != "timeseries"]
    assert sorted(others) == sorted(weather_key(site) for site in SITES)
    # The newest closed partition and the 10-minute lookback.
    first, last = "2026-03-10-10:45", "2026-03-10-10:55"
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == (first, last)
    assert request.run_key == f"schedule:{first}...{last}"
    assert not [tag for tag in request.tags if tag.startswith("vitals/shard")], "no shard runs"
    assert request.asset_check_keys == [], "a scheduled run records only changed check results"
    job = defs.resolve_job_def(schedule.job_name)
    assert set(job.asset_layer.selected_asset_keys) == {
        key(site) for site in SITES for key in (timeseries_key, weather_key, points_key)
    }

    # The steps of that run: one per shard of consecutive sites.
    op_of = {site: defs.resolve_assets_def(timeseries_key(site)).node_def.name for site in SITES}
    assert [(op, len(list(group))) for op, group in itertools.groupby(SITES, key=op_of.get)] == steps
