"""The data-quality checks, the quality table and the daily roll-up through real runs:
simulator over HTTP -> timeseries asset -> DuckDB file, each check made to pass and to fail by
the simulator's data faults (or, for the storage checks, by a store that misbehaves)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from vitals_pipeline.assets.quality_daily import AUTOMATION_SENSOR, quality_daily_key
from vitals_pipeline.assets.site import build_site_assets, points_key, range_tags, timeseries_key
from vitals_pipeline.checks import specs
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.resources import AceResource
from vitals_pipeline.storage import VitalsDuckDBIOManager
from vitals_pipeline.storage.duckdb_io import VitalsArrowTypeHandler, WindowBundle, store_slice
from vitals_pipeline.windows import PARTITION, partition_start, window_for_keys
from vitals_pipeline_tests.conftest import SITE

HOUR_FIRST, HOUR_LAST = "2026-03-09-10:00", "2026-03-09-10:55"  # an hour: enough for flatlines
KEY = "2026-03-09-10:00"


def run(selection, instance, *, partition_key=None, tags=None):
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        asset_selection=selection,
        partition_key=partition_key,
        tags=tags,
        raise_on_error=False,
    )


def hour_run(instance):
    return run([timeseries_key(SITE)], instance, tags=range_tags(HOUR_FIRST, HOUR_LAST))


def checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def query(path: str, sql: str, params=()):
    with duckdb.connect(path, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def meta(evaluation: dg.AssetCheckEvaluation, name: str):
    return evaluation.metadata[name].value


@pytest.fixture
def instance():
    """One instance per test, held for the whole test (a run result refers to it weakly)."""
    test_instance = dg.DagsterInstance.ephemeral()
    yield test_instance
    test_instance.dispose()


@pytest.fixture
def with_points(pipeline_env, instance):
    assert run([points_key(SITE)], instance).success
    return pipeline_env


# ---------------------------------------------------------------------------------------------
# Every check passes on clean data


def test_clean_data_passes_every_check_and_writes_the_quality_table(sim, with_points, instance):
    result = hour_run(instance)
    assert result.success
    got = checks(result)
    assert set(got) == set(specs.CHECK_NAMES)
    failed = {name: e.description for name, e in got.items() if not e.passed}
    assert not failed
    assert meta(got["completeness"], "completeness_pct") == 100.0
    assert meta(got["no_duplicate_samples"], "verified_by") == "row count"
    assert meta(got["no_stale_devices"], "devices_checked") > 5
    assert meta(got["numeric_values"], "nan_or_null_values") >= 0  # the odd NaN is allowed

    path = with_points["VITALS_DUCKDB_PATH"]
    points = len(sim.points(SITE))
    [(rows, partitions, point_count)] = query(
        path, f"SELECT count(*), count(DISTINCT window_start), count(DISTINCT point) FROM {SITE}.quality"
    )
    assert (rows, partitions, point_count) == (12 * points, 12, points)
    # Numbers Dagster plots over time, per partition.
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=timeseries_key(SITE), asset_partitions=["2026-03-09-10:30"]),
        limit=1,
    ).records[0]
    figures = record.asset_materialization.metadata
    assert figures["completeness_pct"].value == 100.0
    assert figures["points_reporting"].value > 40
    assert 0 <= figures["null_pct"].value < 5
    assert figures["samples"].value > 0


# ---------------------------------------------------------------------------------------------
# The blocking storage checks


def test_duplicates_in_the_stored_window_fail_the_run(with_points, instance):
    assert run([timeseries_key(SITE)], instance, partition_key=KEY).success
    path = with_points["VITALS_DUCKDB_PATH"]
    start = partition_start(KEY).replace(tzinfo=None)
    # Another writer (an old IO manager, a manual load) appended copies of three samples.
    with duckdb.connect(path) as con:
        con.execute(
            f"INSERT INTO {SITE}.timeseries SELECT * FROM {SITE}.timeseries "
            "WHERE ts >= ? AND ts < ? ORDER BY ts, point LIMIT 3",
            [start, start + PARTITION],
        )
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    assert not result.success  # blocking, ERROR
    dup = checks(result)["no_duplicate_samples"]
    assert not dup.passed and dup.severity == dg.AssetCheckSeverity.ERROR
    assert meta(dup, "duplicate_keys") == 3 and meta(dup, "verified_by") == "key queries"
    assert "copies" in meta(dup, "examples")
    assert checks(result)["samples_inside_window"].passed


def test_samples_stamped_in_the_future_fail_the_run(with_points, monkeypatch, instance):
    # The host's clock says 10 minutes before the window: every stored sample is in its future.
    monkeypatch.setattr(specs, "utc_now", lambda: partition_start(KEY) - timedelta(minutes=10))
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    assert not result.success
    future = checks(result)["no_future_samples"]
    assert not future.passed and future.severity == dg.AssetCheckSeverity.ERROR
    stored = query(with_points["VITALS_DUCKDB_PATH"], f"SELECT count(*) FROM {SITE}.timeseries")[0][0]
    assert meta(future, "future_samples") == stored > 0
    assert meta(future, "source_future_rows_dropped") == stored
    assert "examples" in future.metadata


class _ShiftingHandler(VitalsArrowTypeHandler):
    """A broken store (the stock IO manager's time-zone bug): samples land an hour late."""

    def handle_output(self, context, table_slice, obj, connection):
        rows = obj.rows if isinstance(obj, WindowBundle) else obj
        shifted = rows.set_column(
            rows.schema.get_field_index("ts"), "ts",
            pc.add(rows.column("ts"), pa.scalar(timedelta(hours=1), pa.duration("us"))),
        )
        store_slice(connection, schema=table_slice.schema, table=table_slice.table, rows=shifted,
                    merge_keys=["point", "ts"])
        return {}


class _ShiftingIOManager(VitalsDuckDBIOManager):
    @staticmethod
    def type_handlers():
        return [_ShiftingHandler()]


def test_samples_stored_outside_their_window_fail_the_run(with_points, instance):
    settings = Settings.from_env()
    assets = build_site_assets(SITE, settings)
    result = dg.materialize(
        assets,
        selection=[timeseries_key(SITE)],
        partition_key=KEY,
        resources={
            "ace": AceResource(api_url=settings.api_url),
            "io_manager": _ShiftingIOManager(database=settings.duckdb_path),
        },
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    inside = checks(result)["samples_inside_window"]
    assert not inside.passed and inside.severity == dg.AssetCheckSeverity.ERROR
    assert meta(inside, "run_samples_not_in_window") == meta(inside, "expected_stored_samples") > 0
    assert meta(inside, "stored_samples") == 0
    assert "not stored inside it" in inside.description


# ---------------------------------------------------------------------------------------------
# Completeness


def test_an_outage_fails_completeness_with_warn_then_error(sim, with_points, instance):
    sim.faults.outages = [["2026-03-09T10:00:00", "2026-03-09T10:10:00"], ["2026-03-09T12:00:00", "2026-03-09T12:30:00"]]
    partial = hour_run(instance)
    assert partial.success  # completeness never blocks
    got = checks(partial)["completeness"]
    assert not got.passed and got.severity == dg.AssetCheckSeverity.WARN
    assert 80 <= meta(got, "completeness_pct") < 95
    total = run([timeseries_key(SITE)], instance, tags=range_tags("2026-03-09-12:00", "2026-03-09-12:25"))
    assert total.success
    got = checks(total)["completeness"]
    assert not got.passed and got.severity == dg.AssetCheckSeverity.ERROR
    assert meta(got, "completeness_pct") == 0.0 and meta(got, "points_below_error") == meta(got, "points_evaluated")
    statuses = query(
        with_points["VITALS_DUCKDB_PATH"],
        f"SELECT DISTINCT status FROM {SITE}.quality WHERE window_start >= ? AND expected IS NOT NULL",
        [datetime(2026, 3, 9, 12, 20)],
    )
    assert statuses == [("down",)]


# ---------------------------------------------------------------------------------------------
# The simulator's data faults, one check each


def test_an_out_of_range_sensor_fails_the_range_check(sim, with_points, instance):
    sim.faults.out_of_range_points = 2
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    got = checks(result)
    assert result.success
    rng = got["values_in_physical_range"]
    assert not rng.passed and rng.severity == dg.AssetCheckSeverity.WARN
    assert meta(rng, "points_out_of_range") == 2
    for name in sim.fault_points(SITE)["out_of_range"]:
        assert name in meta(rng, "worst_points")
    assert "zone_temp" in meta(rng, "worst_points") and "40..100" in meta(rng, "worst_points")
    assert all(got[n].passed for n in ("no_flatlined_sensors", "numeric_values", "completeness"))


def test_a_stuck_sensor_fails_the_flatline_check(sim, with_points, instance):
    sim.faults.stuck_points = 2
    result = hour_run(instance)
    got = checks(result)
    flat = got["no_flatlined_sensors"]
    assert not flat.passed and flat.severity == dg.AssetCheckSeverity.WARN
    assert meta(flat, "flat_sensors") == 2
    for name in sim.fault_points(SITE)["stuck"]:
        assert name in meta(flat, "flat_points")
    # A stuck sensor is not a stale device, nor out of range.
    assert got["no_stale_devices"].passed and got["values_in_physical_range"].passed


def test_a_device_that_stops_reporting_fails_the_stale_device_check(sim, with_points, instance):
    sim.faults.dead_devices = 1
    sim.faults.dead_after = "2026-03-09T10:10:00"
    result = hour_run(instance)
    got = checks(result)
    stale = got["no_stale_devices"]
    assert not stale.passed and meta(stale, "stale_devices") == 1
    dead = set(sim.fault_points(SITE)["dead"])
    [device] = {p["bacnet_data"]["device_name"] for p in sim.points(SITE) if p["name"] in dead}
    assert f"| {device} | silent |" in meta(stale, "stale")
    assert got["no_flatlined_sensors"].passed
    down = query(
        with_points["VITALS_DUCKDB_PATH"],
        f"SELECT DISTINCT point FROM {SITE}.quality WHERE status = 'down'",
    )
    assert {p for (p,) in down} <= dead and down


def test_a_point_sending_text_fails_the_numeric_check(sim, with_points, instance):
    sim.faults.text_points = 2
    result = hour_run(instance)
    got = checks(result)
    numeric = got["numeric_values"]
    assert result.success
    assert not numeric.passed and numeric.severity == dg.AssetCheckSeverity.WARN
    assert meta(numeric, "non_numeric_values") > 0
    for name in sim.fault_points(SITE)["text"]:
        assert name in meta(numeric, "worst_points")
    assert "fault" in meta(numeric, "worst_points") or "offline" in meta(numeric, "worst_points")


def test_without_the_points_table_the_unit_checks_say_what_to_do(pipeline_env, instance):
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    assert result.success
    got = checks(result)
    for name in ("completeness", "values_in_physical_range", "no_flatlined_sensors", "no_stale_devices"):
        assert got[name].passed and got[name].severity == dg.AssetCheckSeverity.WARN
        assert f"materialize {SITE}/points first" in got[name].description
    assert got["no_duplicate_samples"].passed and got["numeric_values"].passed


def test_checks_off_builds_no_checks_and_no_quality_table(pipeline_env, monkeypatch, instance):
    monkeypatch.setenv("VITALS_CHECKS", "off")
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    assert result.success and not result.get_asset_check_evaluations()
    tables = query(pipeline_env["VITALS_DUCKDB_PATH"], "SELECT table_name FROM information_schema.tables")
    assert ("quality",) not in tables and ("timeseries",) in tables


# ---------------------------------------------------------------------------------------------
# The quality table in a range run, against hand-computed figures


def test_a_range_run_of_24_partitions_writes_24_correct_rows_per_point(sim, with_points, instance):
    first, last = "2026-03-09-14:00", "2026-03-09-15:55"
    assert run([timeseries_key(SITE)], instance, tags=range_tags(first, last)).success
    window = window_for_keys(first, last)
    rows = query(
        with_points["VITALS_DUCKDB_PATH"],
        f"SELECT point, window_start, expected, actual, missing, nulls, status FROM {SITE}.quality",
    )
    per_point = Counter(r[0] for r in rows)
    assert set(per_point.values()) == {24} and len(per_point) == len(sim.points(SITE))
    got = {(r[0], r[1]): r[2:] for r in rows}

    # Hand-computed from the ground truth: samples and nulls per point and partition.
    truth = sim.ground_truth(SITE, window.start, window.end)
    actual, nulls = Counter(), Counter()
    for name, t, v in truth:
        ts = datetime.fromisoformat(t)
        slot = ts.replace(minute=ts.minute - ts.minute % 5, second=0, microsecond=0)
        actual[(name, slot)] += 1
        try:
            number = float(v)
            bad = number != number or number in (float("inf"), float("-inf"))
        except (TypeError, ValueError):
            bad = True
        nulls[(name, slot)] += bad
    intervals = {p["name"]: p["collect_interval"] for p in sim.points(SITE)}
    slots = [window.start.replace(tzinfo=None) + i * PARTITION for i in range(24)]
    checked = Counter()
    for name, interval in intervals.items():
        for slot in slots:
            expected, got_actual, missing, got_nulls, status = got[(name, slot)]
            assert got_actual == actual[(name, slot)], (name, slot)
            assert got_nulls == nulls[(name, slot)], (name, slot)
            if interval is None:  # cov: nothing promised
                assert expected is None and missing is None
                checked["cov"] += 1
            elif interval <= 300:
                assert expected == 300 / interval and missing == max(300 / interval - got_actual, 0)
                checked[interval] += 1
            else:  # 900 s: one sample per 15 min, the clean site never misses one
                assert expected == pytest.approx(1 / 3) and missing == 0.0
                checked[interval] += 1
            if got_nulls == 0 and interval is not None:
                assert status == "ok", (name, slot, status)
    assert {60, 300, 900, "cov"} <= set(checked)


# ---------------------------------------------------------------------------------------------
# The daily roll-up and its automation


def test_a_day_depends_on_its_288_five_minute_partitions(pipeline_env):
    defs = build_definitions(Settings.from_env())
    graph = defs.resolve_asset_graph()
    daily, timeseries = graph.get(quality_daily_key(SITE)), graph.get(timeseries_key(SITE))
    mapping = daily.partition_mappings[timeseries_key(SITE)]
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        daily.partitions_def.subset_with_partition_keys(["2026-03-05"]), daily.partitions_def,
        timeseries.partitions_def, current_time=datetime(2026, 3, 12, tzinfo=UTC),
    ).partitions_subset.get_partition_keys()
    assert (len(upstream), upstream[0], upstream[-1]) == (288, "2026-03-05-00:00", "2026-03-05-23:55")
    assert daily.partitions_def.get_first_partition_key() == "2026-03-01"


def test_quality_daily_materializes_once_its_day_is_complete(sim, with_points, monkeypatch, instance):
    # The first day starts at 20:00 (VITALS_PARTITIONS_START): it is complete with 48 partitions,
    # which keeps this test short; a full day's mapping is checked above.
    monkeypatch.setenv("VITALS_PARTITIONS_START", "2026-03-09-20:00")
    defs = build_definitions(Settings.from_env())
    sensor = defs.resolve_sensor_def(AUTOMATION_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    daily = quality_daily_key(SITE)
    evaluated_at = datetime(2026, 3, 10, 0, 5, tzinfo=UTC)

    def requested(cursor):
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=dg.AssetSelection.assets(daily),
            evaluation_time=evaluated_at, cursor=cursor,
        )
        return result, set(result.get_requested_partitions(daily))

    result, asked = requested(None)
    assert asked == set()
    assert run([timeseries_key(SITE)], instance, tags=range_tags("2026-03-09-20:00", "2026-03-09-21:55")).success
    result, asked = requested(result.cursor)
    assert asked == set()  # half of it: the day waits
    assert run([timeseries_key(SITE)], instance, tags=range_tags("2026-03-09-22:00", "2026-03-09-23:55")).success
    result, asked = requested(result.cursor)
    assert asked == {"2026-03-09"}

    assert run([daily], instance, partition_key="2026-03-09").success
    rows = query(
        with_points["VITALS_DUCKDB_PATH"],
        f"SELECT point, partitions, expected, actual, completeness_pct, status FROM {SITE}.quality_daily",
    )
    assert len(rows) == len(sim.points(SITE))
    intervals = {p["name"]: p["collect_interval"] for p in sim.points(SITE)}
    for point, partitions, expected, actual, completeness, status in rows:
        assert partitions == 48
        if intervals[point]:
            assert expected == pytest.approx(4 * 3600 / intervals[point])
            assert completeness == 100.0 and status in ("ok", "fault")  # fault: the odd NaN
        else:
            assert expected is None and completeness is None
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=daily, asset_partitions=["2026-03-09"]), limit=1
    ).records[0]
    assert record.asset_materialization.metadata["completeness_pct"].value == 100.0
    assert record.asset_materialization.metadata["points"].value == len(sim.points(SITE))
    result, asked = requested(result.cursor)
    assert asked == set()  # rolled up: nothing to do
    # Re-fetching one of its partitions (late samples) makes the day due again.
    assert run([timeseries_key(SITE)], instance, partition_key="2026-03-09-23:55").success
    result, asked = requested(result.cursor)
    assert asked == {"2026-03-09"}
