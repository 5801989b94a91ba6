"""The data-quality checks, the quality table and the daily roll-up through real runs:
simulator over HTTP -> timeseries asset -> DuckDB file, each check made to pass and to fail by
the simulator's data faults (or, for the storage checks, by a store that misbehaves)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from vitals_pipeline.ace.parse import points_table
from vitals_pipeline.assets.fleet import spread_slot
from vitals_pipeline.assets.keys import archive_key, points_key, range_tags, timeseries_key
from vitals_pipeline.assets.quality_daily import quality_daily_key
from vitals_pipeline.assets.timeseries import build_timeseries_asset
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.rollups import DAILY_JOB, ROLLUP_SENSOR
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.checks import recording, specs
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.resources import AceResource
from vitals_pipeline.storage import DuckDBWarehouse, VitalsDuckDBIOManager
from vitals_pipeline.storage.duckdb_io import connect_duckdb, store_slice
from vitals_pipeline.storage.schema import POINTS_MERGE_KEYS, POINTS_TABLE
from vitals_pipeline.windows import PARTITION, partition_start, window_for_keys
from vitals_pipeline_tests.conftest import SITE
from vitals_pipeline_tests.helpers import QUIET, step_failures

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
        run_config=QUIET,
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
    # Numbers Dagster plots over time, per partition: the lean set, completeness from the checks.
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=timeseries_key(SITE), asset_partitions=["2026-03-09-10:30"]),
        limit=1,
    ).records[0]
    figures = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert set(figures) == {"samples", "points", "completeness_pct"}
    assert figures["completeness_pct"] == 100.0
    assert figures["points"] > 40
    # Null values are counted per point in the quality table (no longer metadata): the odd NaN.
    [(samples, nulls)] = query(
        path, f"SELECT sum(actual), sum(nulls) FROM {SITE}.quality WHERE window_start = ?",
        [datetime(2026, 3, 9, 10, 30)],
    )
    assert samples == figures["samples"] > 0
    assert 0 <= nulls < 0.05 * samples


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
    assert not result.success  # blocking, ERROR: the site is stored, but named in the step's failure
    [failure] = [e.event_specific_data.user_failure_data for e in result.all_events if e.is_step_failure]
    assert [entry["site"] for entry in failure.metadata["failed_sites"].value] == [SITE]
    assert "no_duplicate_samples failed" in failure.description and KEY in failure.description
    dup = checks(result)["no_duplicate_samples"]
    assert not dup.passed and dup.severity == dg.AssetCheckSeverity.ERROR
    assert meta(dup, "duplicate_keys") == 3 and meta(dup, "verified_by") == "key queries"
    assert "copies" in meta(dup, "examples")
    assert checks(result)["samples_inside_window"].passed


def test_samples_stamped_in_the_future_fail_the_run(with_points, monkeypatch, instance):
    # The host's clock says 10 minutes before the window: every sample ACE sends is in its future.
    fake_now = partition_start(KEY) - timedelta(minutes=10)
    monkeypatch.setattr(specs, "utc_now", lambda: fake_now)
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    assert not result.success
    assert "no_future_samples failed" in " ".join(step_failures(result))
    future = checks(result)["no_future_samples"]
    assert not future.passed and future.severity == dg.AssetCheckSeverity.ERROR
    path = with_points["VITALS_DUCKDB_PATH"]
    stored = query(path, f"SELECT count(*) FROM {SITE}.timeseries")[0][0]
    stored_future = query(
        path, f"SELECT count(*) FROM {SITE}.timeseries WHERE ts > ?",
        [(fake_now + timedelta(minutes=5)).replace(tzinfo=None)],
    )[0][0]
    # Nothing drops a row for being in the future: the rows ACE sent from the future are counted
    # (source_future_rows) AND stored, so the blocking check finds every one of them in the store.
    assert stored_future == stored > 0
    assert meta(future, "source_future_rows") == meta(future, "future_samples") == stored
    assert "examples" in future.metadata


class _ShiftingIOManager(VitalsDuckDBIOManager):
    """A broken store (the stock IO manager's time-zone bug): samples land an hour late, and the
    quality rows are lost. Overrides the IO manager's `store` seam; the merge is the real one."""

    def store(self, conn, *, schema, table, rows, companions, merge_keys, time_column, window):
        shifted = rows.set_column(
            rows.schema.get_field_index("ts"), "ts",
            pc.add(rows.column("ts"), pa.scalar(timedelta(hours=1), pa.duration("us"))),
        )
        return store_slice(conn, schema=schema, table=table, rows=shifted, merge_keys=merge_keys)


def test_samples_stored_outside_their_window_fail_the_run(with_points, instance):
    settings = Settings.from_env()
    warehouse = DuckDBWarehouse(database=settings.duckdb_path)
    result = dg.materialize(
        [build_timeseries_asset(settings, QualityThresholds.from_env())],
        selection=[timeseries_key(SITE)],
        partition_key=KEY,
        resources={
            "ace": AceResource(api_url=settings.api_url),
            "warehouse": warehouse,
            "io_manager": _ShiftingIOManager(warehouse=warehouse),
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
    sim.faults.outages = [
        ["2026-03-09T10:00:00", "2026-03-09T10:10:00"], ["2026-03-09T12:00:00", "2026-03-09T12:30:00"]
    ]
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


def test_without_points_the_unit_checks_fail_with_a_warning_saying_what_to_do(pipeline_env, instance):
    """A points table with no rows (ACE listed none when `<site>/points` last ran): no unit or
    interval is known, so the 4 checks that need them cannot pass. They fail at WARN (the run
    still succeeds and the samples are stored) and name the asset to materialize."""
    with connect_duckdb(pipeline_env["VITALS_DUCKDB_PATH"]) as conn:
        store_slice(conn, schema=SITE, table=POINTS_TABLE, rows=points_table([], datetime.now(UTC)),
                    merge_keys=POINTS_MERGE_KEYS)
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    assert result.success, step_failures(result)
    got = checks(result)
    for name in ("completeness", "values_in_physical_range", "no_flatlined_sensors", "no_stale_devices"):
        assert not got[name].passed and got[name].severity == dg.AssetCheckSeverity.WARN, name
        assert got[name].description.startswith(f"points not loaded: materialize {SITE}/points"), name
    assert got["no_duplicate_samples"].passed and got["numeric_values"].passed
    assert query(pipeline_env["VITALS_DUCKDB_PATH"], f"SELECT count(*) FROM {SITE}.timeseries")[0][0] > 0
    # The table was there (empty): the run did not load the points itself.
    assert not instance.fetch_materializations(points_key(SITE), limit=1).records

    # Once the points are materialized, the same window passes those checks.
    assert run([points_key(SITE)], instance).success
    again = checks(run([timeseries_key(SITE)], instance, partition_key=KEY))
    assert all(again[name].passed for name in ("completeness", "values_in_physical_range"))


def test_checks_off_builds_no_checks_and_no_quality_table(pipeline_env, monkeypatch, instance):
    monkeypatch.setenv("VITALS_CHECKS", "off")
    result = run([timeseries_key(SITE)], instance, partition_key=KEY)
    assert result.success and not result.get_asset_check_evaluations()
    tables = query(pipeline_env["VITALS_DUCKDB_PATH"], "SELECT table_name FROM information_schema.tables")
    assert ("quality",) not in tables and ("timeseries",) in tables


# ---------------------------------------------------------------------------------------------
# What the fleet's runs record (they do not select the checks; see checks/recording.py)


@pytest.fixture
def persistent_instance():
    """A schedule context reads the instance from its ref: a persistent test instance."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_a_scheduled_run_records_a_check_result_only_when_its_outcome_changes(
    sim, pipeline_env, monkeypatch, persistent_instance
):
    """The schedule's runs select the timeseries without the checks: they plan no check
    executions and record a result when it differs from the last one recorded (or in the site's
    slot of the hour). A run that selects the checks records all of them (tests above).

    Each tick's RunRequest comes from the real schedule and is run as the daemon runs it: the job
    subset by the request's asset and check selections."""
    monkeypatch.setenv("VITALS_LOOKBACK_MINUTES", "0")  # one partition per tick: shorter runs
    instance = persistent_instance
    slots = recording.slots_in(timedelta(minutes=60))
    site_slot = spread_slot(SITE, slots)
    # Ticks outside the site's slot of the hour, so that only a change is recorded.
    closing = [partition_start(k) + PARTITION
               for k in window_for_keys("2026-03-09-10:00", "2026-03-09-11:55").partition_keys()]
    ticks = [end + timedelta(minutes=1) for end in closing if recording.tick_slot(end, slots) != site_slot][:5]

    def tick(at: datetime):
        settings = Settings.from_env()
        defs = build_definitions(settings)
        schedule = defs.resolve_schedule_def("fleet_timeseries_schedule")
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=at) as context:
            [request] = schedule.evaluate_tick(context).run_requests
        job = defs.resolve_job_def(schedule.job_name).get_subset(
            asset_selection=set(request.asset_selection),
            asset_check_selection=None if request.asset_check_keys is None else set(request.asset_check_keys),
        )
        result = job.execute_in_process(instance=instance, tags=request.tags, run_config=QUIET, raise_on_error=False)
        assert result.success, step_failures(result)
        planned = instance.get_records_for_run(
            result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
        ).records
        assert planned == [], "a scheduled run plans no check executions"
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

    assert run([points_key(SITE)], instance).success

    first = tick(ticks[0])  # never recorded: every result is
    assert set(first) == set(specs.CHECK_NAMES) and all(e.passed for e in first.values()), {
        n: e.description for n, e in first.items() if not e.passed
    }
    assert tick(ticks[1]) == {}, "nothing changed: nothing recorded"

    sim.faults.out_of_range_points = 2
    changed = tick(ticks[2])
    assert list(changed) == ["values_in_physical_range"]
    assert not changed["values_in_physical_range"].passed
    assert changed["values_in_physical_range"].severity == dg.AssetCheckSeverity.WARN
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(timeseries_key(SITE), "values_in_physical_range")]
    )
    [record] = latest.values()
    assert record.status.value == "FAILED"  # the latest execution is this failure

    sim.faults.out_of_range_points = 0
    recovered = tick(ticks[3])
    assert list(recovered) == ["values_in_physical_range"] and recovered["values_in_physical_range"].passed

    # VITALS_CHECK_REPEAT_MINUTES=0: every run records every result, as before the fleet.
    monkeypatch.setenv("VITALS_CHECK_REPEAT_MINUTES", "0")
    assert set(tick(ticks[4])) == set(specs.CHECK_NAMES)


def test_which_results_are_recorded_over_an_hour():
    """The rules of checks/recording.py, on a fake clock: change -> recorded; unchanged -> once an
    hour in the site's slot, not twice in one slot; a big fleet's first passing records spread."""
    now = datetime(2026, 3, 9, 10, 0, tzinfo=UTC)
    hour = timedelta(minutes=60)
    slots = recording.slots_in(hour)
    assert slots == 12 and recording.slots_in(timedelta(0)) == 1

    def record(current, previous, previous_at=None, site_slot=3, tick_slot=5, **kwargs):
        return recording.should_record(
            current=current, previous=previous, previous_at=previous_at, now=now,
            repeat_every=kwargs.pop("repeat_every", hour), site_slot=site_slot, tick_slot=tick_slot, **kwargs,
        )

    assert record("passed", None) and record("WARN", None)
    assert not record("passed", None, spread_first=True)  # a big fleet's first passes wait
    assert record("passed", None, spread_first=True, site_slot=5)  # ... for the site's slot
    assert record("WARN", None, spread_first=True)  # a failure never waits
    assert record("ERROR", "WARN", now) and record("passed", "ERROR", now)
    assert not record("passed", "passed", now - timedelta(minutes=55))  # not the site's slot
    assert record("passed", "passed", now - timedelta(minutes=55), site_slot=5)
    assert not record("passed", "passed", now - timedelta(minutes=10), site_slot=5)  # same slot, re-run
    assert record("passed", "passed", now, repeat_every=timedelta(0))
    # The 12 ticks of an hour give every slot once.
    ticks = [recording.tick_slot(now + i * PARTITION, slots) for i in range(12)]
    assert sorted(ticks) == list(range(12))


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
    sensor = defs.resolve_sensor_def(ROLLUP_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    daily = quality_daily_key(SITE)
    cursor = json.dumps({"updated_after": 0, "seen": []})

    def tick(first: str, last: str, trigger: str) -> set[str]:
        """A fleet run over first...last, then the roll-up sensor: the days it asks for."""
        nonlocal cursor
        assert defs.resolve_job_def(FLEET_JOB).execute_in_process(
            instance=instance, asset_selection=[timeseries_key(SITE)],
            tags={**range_tags(first, last), TRIGGER_TAG: trigger}, run_config=QUIET,
        ).success
        with dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor) as context:
            result = sensor.evaluate_tick(context)
        cursor = result.cursor
        requests = [r for r in result.run_requests if r.job_name == DAILY_JOB]
        # The day's archive and quality together (the archive's tests export it).
        assert all({daily, archive_key(SITE)} <= set(r.asset_selection) for r in requests)
        return {r.tags["dagster/asset_partition_range_start"] for r in requests}

    # Scheduled ticks: the day is complete when a tick's window starts with its last partition.
    assert tick("2026-03-09-23:45", "2026-03-09-23:55", "schedule") == set()
    assert tick("2026-03-09-23:50", "2026-03-10-00:00", "schedule") == set()
    assert tick("2026-03-09-23:55", "2026-03-10-00:05", "schedule") == {"2026-03-09"}
    # A catch-up that fills the rest of a day that is over asks for the day again.
    assert tick("2026-03-09-20:00", "2026-03-09-23:40", "catchup") == {"2026-03-09"}

    assert run([daily], instance, partition_key="2026-03-09").success
    rows = query(
        with_points["VITALS_DUCKDB_PATH"],
        f"SELECT point, partitions, expected, actual, completeness_pct, status FROM {SITE}.quality_daily",
    )
    assert len(rows) == len(sim.points(SITE))
    intervals = {p["name"]: p["collect_interval"] for p in sim.points(SITE)}
    for point, partitions, expected, _actual, completeness, status in rows:
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
    # Re-fetching one of its partitions later (late samples) makes the day due again.
    assert tick("2026-03-09-21:10", "2026-03-09-21:10", "manual") == {"2026-03-09"}
