"""The site assets (the fleet multi_assets, one site selected) through real Dagster runs:
simulator over HTTP -> DuckDB file."""

from __future__ import annotations

import os
import time
import warnings
from datetime import timedelta

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.assets.keys import points_key, range_tags, timeseries_key
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import PARTITION, partition_start, window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, SITE
from vitals_pipeline_tests.helpers import ace_run_config, expected_rows, run_assets, step_failures, stored_rows

KEY = "2026-03-09-10:00"


# One in-process run of the real definitions; ground truth and DuckDB rows, typed alike.
run = run_assets
stored = stored_rows
expected = expected_rows


def materializations(instance, key, partition):
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=5
    ).records


def test_single_partition_matches_ground_truth(sim, pipeline_env):
    sim.faults.text_points = 1  # a point that sends text: stored with value NULL, raw_value kept
    result = run([timeseries_key(SITE)], partition_key=KEY)
    assert result.success
    start = partition_start(KEY)
    rows = stored(pipeline_env["VITALS_DUCKDB_PATH"])
    assert rows == expected(sim, start, start + PARTITION)
    assert any(r[2] == 0.0 for r in rows), "zero readings must be stored"
    assert any(r[2] is None and r[3] is not None for r in rows), "text keeps its wire string"


def test_range_run_writes_each_partitions_own_lean_metadata(sim, pipeline_env):
    """A range run records one materialization per partition, each with exactly that partition's
    own few figures (samples, points, completeness_pct) and nothing run-wide (a fleet writes
    sites x partitions of them every tick). Null values are no longer materialization metadata:
    they are counted per point and partition in the site's quality table."""
    sim.faults.text_points = 1  # some values stored as NULL: the null count is not always 0
    instance = dg.DagsterInstance.ephemeral()
    first, last = "2026-03-09-10:00", "2026-03-09-11:55"
    result = run([timeseries_key(SITE)], tags=range_tags(first, last), instance=instance)
    assert result.success, step_failures(result)
    path = pipeline_env["VITALS_DUCKDB_PATH"]
    window = window_for_keys(first, last)
    assert stored(path) == expected(sim, window.start, window.end)
    with duckdb.connect(path, read_only=True) as con:
        nulls_stored = dict(con.execute(
            f"SELECT window_start, sum(nulls) FROM {SITE}.quality GROUP BY window_start"
        ).fetchall())
    counts, nulls = [], []
    for key in window.partition_keys():
        start = partition_start(key)
        truth = expected(sim, start, start + PARTITION)
        [record] = materializations(instance, timeseries_key(SITE), key)
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert meta == {
            "samples": len(truth),
            "points": len({r[0] for r in truth}),
            "completeness_pct": meta["completeness_pct"],
        }, key
        assert 0 < meta["completeness_pct"] <= 100.0
        counts.append(meta["samples"])
        null_values = sum(r[2] is None for r in truth)
        assert nulls_stored[start.replace(tzinfo=None)] == null_values, key
        nulls.append(null_values)
    assert len(set(counts)) > 1, "partitions of a mixed-interval site differ in size"
    assert any(nulls), "the text point's samples are counted as null values"


def test_late_samples_land_on_rematerialization(sim, pipeline_env):
    start = partition_start(KEY)
    sim.faults.late_devices = 3
    sim.faults.late_seconds = 600
    sim.set_now(start + PARTITION + timedelta(minutes=1))
    assert run([timeseries_key(SITE)], partition_key=KEY).success
    first = stored(pipeline_env["VITALS_DUCKDB_PATH"])
    sim.set_now(start + timedelta(hours=1))
    assert run([timeseries_key(SITE)], partition_key=KEY).success
    second = stored(pipeline_env["VITALS_DUCKDB_PATH"])
    assert len(first) < len(second)
    assert second == expected(sim, start, start + PARTITION)


def test_empty_refetch_keeps_stored_samples(sim, pipeline_env):
    assert run([timeseries_key(SITE)], partition_key=KEY).success
    before = stored(pipeline_env["VITALS_DUCKDB_PATH"])
    sim.faults.empty_responses = True
    assert run([timeseries_key(SITE)], partition_key=KEY).success
    assert stored(pipeline_env["VITALS_DUCKDB_PATH"]) == before and before


def test_leaky_pages_and_duplicates_are_cleaned(sim, pipeline_env):
    sim.faults.duplicate_across_pages = True
    sim.faults.outside_window_rows = 5
    os.environ["ACE_PAGE_SIZE"] = "50"
    try:
        instance = dg.DagsterInstance.ephemeral()
        result = run([timeseries_key(SITE)], partition_key=KEY, instance=instance)
        assert result.success, step_failures(result)
    finally:
        del os.environ["ACE_PAGE_SIZE"]
    start = partition_start(KEY)
    assert stored(pipeline_env["VITALS_DUCKDB_PATH"]) == expected(sim, start, start + PARTITION)
    # What the cleaning dropped is reported by the storage checks (the per-partition metadata is
    # kept lean): 5 rows before the window on the first page, 5 after it on the last.
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["no_duplicate_samples"].metadata["source_duplicates_dropped"].value > 0
    assert evaluations["samples_inside_window"].metadata["out_of_window_dropped"].value == 10
    assert evaluations["no_duplicate_samples"].passed and evaluations["samples_inside_window"].passed


def test_new_york_time_zone_stores_the_same_utc_and_no_duplicates(sim, pipeline_env):
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        assert run([timeseries_key(SITE)], partition_key=KEY).success
        assert run([timeseries_key(SITE)], partition_key=KEY).success
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()
    start = partition_start(KEY)
    assert stored(pipeline_env["VITALS_DUCKDB_PATH"]) == expected(sim, start, start + PARTITION)


def test_points_asset_stores_units_and_intervals(sim, pipeline_env):
    assert run([points_key(SITE)]).success
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        rows = con.execute(f"SELECT name, unit, collect_interval FROM {SITE}.points ORDER BY name").fetchall()
    assert [r[0] for r in rows] == sorted(p["name"] for p in sim.points(SITE))
    assert {r[2] for r in rows} >= {60, 300, 900}
    assert any(r[1] == "degrees-fahrenheit" for r in rows)


def test_a_timeseries_run_on_a_fresh_instance_loads_the_points_first(sim, pipeline_env):
    """The checks need units and intervals: a site with no points stored gets them in the same
    run, before its samples are judged, recorded as a materialization of `<site>/points`."""
    instance = dg.DagsterInstance.ephemeral()
    result = run([timeseries_key(SITE)], partition_key=KEY, instance=instance)
    assert result.success, step_failures(result)
    [loaded] = instance.fetch_materializations(points_key(SITE), limit=5).records
    assert loaded.asset_materialization.metadata["points"].value == len(sim.points(SITE))
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        names = [r[0] for r in con.execute(f"SELECT name FROM {SITE}.points ORDER BY name").fetchall()]
    assert names == sorted(p["name"] for p in sim.points(SITE))
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["completeness"].passed, evaluations["completeness"].description
    assert not any("points not loaded" in (e.description or "") for e in evaluations.values())

    # Points stored: the next run does not load them again.
    assert run([timeseries_key(SITE)], partition_key=KEY, instance=instance).success
    assert len(instance.fetch_materializations(points_key(SITE), limit=5).records) == 1


def test_missing_key_fails_at_once_and_writes_nothing(pipeline_env, monkeypatch, server):
    monkeypatch.delenv("ACE_API_KEY")
    result = run([timeseries_key(SITE)], partition_key=KEY)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "ACE_API_KEY is not set" in failure.event_specific_data.error.message
    assert server.stats["statuses"] == {}
    assert not os.path.exists(pipeline_env["VITALS_DUCKDB_PATH"])


def test_wrong_key_fails_with_a_key_message_and_no_step_retries(pipeline_env, monkeypatch, server):
    monkeypatch.setenv("ACE_API_KEY", "wrong-key-123")
    result = run([timeseries_key(SITE)], partition_key=KEY)
    assert not result.success
    messages = " ".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)
    assert "invalid or expired API key" in messages and "wrong-key-123" not in messages
    assert server.stats["statuses"].get(500) == 2  # one retry of the 500, no step retries


def test_a_site_still_failing_after_the_clients_retries_is_not_retried_by_the_step(sim, pipeline_env, server):
    """No step retry policy: a retry would fetch every site of the fleet again. The client
    retries (here 2 attempts), then the site fails, named, and catch-up re-fetches it later."""
    sim.faults.site_status = {SITE: 503}
    server.reset_stats()
    result = run([timeseries_key(SITE)], partition_key=KEY, run_config=ace_run_config(max_attempts=2))
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    [failure] = [e for e in result.all_events if e.is_step_failure]
    [entry] = failure.event_specific_data.user_failure_data.metadata["failed_sites"].value
    assert entry["site"] == SITE and "503" in entry["error"]
    assert server.stats["statuses"] == {503: 2}, server.stats
    fleet = build_definitions(Settings.from_env()).resolve_assets_def(timeseries_key(SITE))
    assert fleet.op.retry_policy is None


def test_every_job_resolves_without_a_dagster_warning(pipeline_env, monkeypatch):
    """A job whose assets have different backfill policies (fleet_daily: the archive and the
    daily quality) makes Dagster warn on every definitions load, in every CLI command."""
    monkeypatch.delenv("VITALS_CHECKS", raising=False)  # the default: quality_daily exists too
    defs = build_definitions(Settings.from_env())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jobs = defs.get_repository_def().get_all_jobs()
    assert "fleet_daily" in {job.name for job in jobs}
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []


def test_definitions_load_without_a_key(pipeline_env, monkeypatch):
    monkeypatch.delenv("ACE_API_KEY")
    defs = build_definitions(Settings.from_env())
    dg.Definitions.validate_loadable(defs)
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} >= {
        f"{SITE}/timeseries",
        f"{SITE}/points",
    }


@pytest.mark.slow
def test_cli_materializes_a_partition_range(sim, pipeline_env, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home")}
    Path(env["DAGSTER_HOME"]).mkdir()
    dagster = str(Path(sys.executable).parent / "dagster")
    proc = subprocess.run(
        [dagster, "asset", "materialize", "-m", "vitals_pipeline.definitions", "--select", f"{SITE}/timeseries",
         "--partition-range", "2026-03-09-10:00...2026-03-09-10:25"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    window = window_for_keys("2026-03-09-10:00", "2026-03-09-10:25")
    assert stored(pipeline_env["VITALS_DUCKDB_PATH"]) == expected(sim, window.start, window.end)
    assert SIM_KEY not in proc.stdout + proc.stderr
