"""`<site>/timeseries_hourly`: the SQL on hand-made samples, then real runs on simulator data and
the roll-up sensor that re-runs an hour when its 5-minute partitions change."""

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.simulator import Simulator, SiteSpec
from vitals_pipeline.assets.hourly import (
    HOURLY_SCHEMA,
    complete_hours,
    hourly_key,
    hourly_rollup,
)
from vitals_pipeline.assets.keys import points_key, range_tags, timeseries_key
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.rollups import DAILY_JOB, HOURLY_JOB, ROLLUP_SENSOR
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline_tests.conftest import SITE, simulator
from vitals_pipeline_tests.helpers import QUIET, run_assets, step_failures

T0 = datetime(2026, 3, 9, 10, 0)  # naive UTC, as stored


@pytest.fixture
def sim() -> Simulator:
    return simulator(SiteSpec(SITE, points=40, seed=3))


pytestmark = pytest.mark.usefixtures("derived_env")


def run(selection, *, instance, **kwargs):
    return run_assets(selection, instance=instance, **kwargs)


def failure_messages(result) -> str:
    return " ".join(step_failures(result))


# -- the SQL ------------------------------------------------------------------------------------


def handmade(conn):
    conn.execute("CREATE SCHEMA s")
    conn.execute("CREATE TABLE s.timeseries (point VARCHAR, ts TIMESTAMP, value DOUBLE, raw_value VARCHAR)")
    conn.execute(
        "CREATE TABLE s.points (name VARCHAR, unit VARCHAR, marker_tags VARCHAR[], kv_tags VARCHAR)"
    )
    conn.executemany(
        "INSERT INTO s.points VALUES (?, ?, ?, ?)",
        [
            ("temp", "degrees-fahrenheit", ["sensor", "temp"], '{"role": "zone_temp"}'),
            ("kwh", "kilowatt-hours", ["sensor", "elec"], "{}"),
            ("tagged", "property: unknown-property", ["sensor", "totalizer"], "{}"),
            ("by_role", None, [], '{"role": "electric_energy"}'),
            ("kw", "kilowatts", ["sensor", "elec", "power"], '{"role": "electric_power"}'),
        ],
    )
    m = lambda minutes: T0 + timedelta(minutes=minutes)  # noqa: E731
    rows = [
        # temp: 0.0 is a reading; NaN/text are not numbers but are samples; last by ts.
        ("temp", m(0), 70.0, None), ("temp", m(10), 0.0, None), ("temp", m(20), None, "NaN"),
        ("temp", m(50), 74.0, None), ("temp", m(59.99), None, "fault"),
        # kwh: a reset at 10:30 (1000 -> 2); consumption = (1000-990) + (9-2) = 17
        ("kwh", m(0), 990.0, None), ("kwh", m(15), 995.0, None), ("kwh", m(25), 1000.0, None),
        ("kwh", m(30), 2.0, None), ("kwh", m(45), 9.0, None),
        # next hour, no reset: delta = last - first
        ("kwh", m(60), 12.0, None), ("kwh", m(119), 20.5, None),
        ("tagged", m(5), 100.0, None), ("tagged", m(35), 130.0, None),
        ("by_role", m(5), 7.0, None),
        ("kw", m(1), 5.0, None), ("kw", m(2), 3.0, None),
        ("text_only", m(3), None, "offline"),
        # outside the window: ignored
        ("temp", m(-1), 1000.0, None), ("temp", m(120), 1000.0, None),
    ]
    conn.executemany("INSERT INTO s.timeseries VALUES (?, ?, ?, ?)", rows)


def test_rollup_sql_on_handmade_samples():
    conn = duckdb.connect()
    handmade(conn)
    table, has_points = hourly_rollup(
        conn, "s", T0.replace(tzinfo=UTC), (T0 + timedelta(hours=2)).replace(tzinfo=UTC)
    )
    assert has_points and table.schema == HOURLY_SCHEMA
    got = {(r["point"], r["hour"].hour): r for r in table.to_pylist()}
    assert sorted(got) == [
        ("by_role", 10), ("kw", 10), ("kwh", 10), ("kwh", 11), ("tagged", 10), ("temp", 10), ("text_only", 10)
    ]
    temp = got["temp", 10]
    assert (temp["samples"], temp["count"], temp["min"], temp["max"], temp["first"], temp["last"]) == (
        5, 3, 0.0, 74.0, 70.0, 74.0
    )
    assert temp["avg"] == pytest.approx(48.0) and temp["delta"] is None and temp["resets"] is None
    kwh = got["kwh", 10]
    assert (kwh["delta"], kwh["resets"], kwh["first"], kwh["last"]) == (17.0, 1, 990.0, 9.0)
    assert (got["kwh", 11]["delta"], got["kwh", 11]["resets"]) == (8.5, 0)
    assert got["tagged", 10]["delta"] == 30.0, "a totalizer marker tag is enough"
    assert got["by_role", 10]["delta"] == 0.0, "an energy role is enough; one reading consumes 0"
    assert got["kw", 10]["delta"] is None, "a power (rate) point is no totalizer"
    text = got["text_only", 10]
    assert (text["samples"], text["count"], text["avg"], text["last"], text["delta"]) == (1, 0, None, None, None)
    # Keyword-ish column names read back without quoting.
    conn.register("h", table)
    assert conn.execute("SELECT max(max), min(min), sum(count) FROM h").fetchall()[0] == (1000.0, 0.0, 15)


def test_rollup_without_points_table_has_no_deltas():
    conn = duckdb.connect()
    handmade(conn)
    conn.execute("DROP TABLE s.points")
    table, has_points = hourly_rollup(
        conn, "s", T0.replace(tzinfo=UTC), (T0 + timedelta(hours=1)).replace(tzinfo=UTC)
    )
    assert not has_points and table.column("delta").null_count == table.num_rows > 0


# -- real runs ----------------------------------------------------------------------------------


def reference(path):
    """The roll-up recomputed in Python from the stored samples."""
    with duckdb.connect(path, read_only=True) as con:
        samples = con.execute(f"SELECT point, ts, value FROM {SITE}.timeseries ORDER BY point, ts").fetchall()
    groups = defaultdict(list)
    for point, ts, value in samples:
        groups[point, ts.replace(minute=0, second=0, microsecond=0)].append(value)
    out = {}
    for key, values in groups.items():
        numbers = [v for v in values if v is not None]
        out[key] = {
            "samples": len(values),
            "count": len(numbers),
            "min": min(numbers, default=None),
            "max": max(numbers, default=None),
            "avg": sum(numbers) / len(numbers) if numbers else None,
            "first": numbers[0] if numbers else None,
            "last": numbers[-1] if numbers else None,
        }
    return out


def stored_hourly(path):
    with duckdb.connect(path, read_only=True) as con:
        table = con.sql(f"SELECT * FROM {SITE}.timeseries_hourly ORDER BY hour, point").to_arrow_table()
    return {(r["point"], r["hour"]): r for r in table.to_pylist()}


def test_two_hours_in_one_run_match_the_stored_samples(sim, pipeline_env):
    instance = dg.DagsterInstance.ephemeral()
    path = pipeline_env["VITALS_DUCKDB_PATH"]
    assert run([points_key(SITE)], instance=instance).success
    assert run(
        [timeseries_key(SITE)], instance=instance, tags=range_tags("2026-03-09-10:00", "2026-03-09-11:55")
    ).success
    result = run(
        [hourly_key(SITE)], instance=instance, tags=range_tags("2026-03-09-10:00", "2026-03-09-11:00")
    )
    assert result.success, failure_messages(result)

    hourly, expected = stored_hourly(path), reference(path)
    assert set(hourly) == set(expected) and len(hourly) == 2 * 40
    for key, row in hourly.items():
        want = expected[key]
        for column in ("samples", "count", "min", "max", "first", "last"):
            assert row[column] == want[column], (key, column)
        assert row["avg"] == pytest.approx(want["avg"], rel=1e-12, abs=1e-12)

    energy = {p["name"] for p in sim.points(SITE) if p["kv_tags"].get("role") == "electric_energy"}
    assert energy, "the simulated site has kWh meters"
    for (point, _hour), row in hourly.items():
        if point in energy:
            assert row["resets"] == 0 and row["delta"] == pytest.approx(row["last"] - row["first"])
            assert row["delta"] > 0
        else:
            assert row["delta"] is None and row["resets"] is None

    # One step for the range, one materialization per hour carrying that hour's own row count
    # (one row per point) and nothing run-wide.
    rows_per_hour = {}
    for _point, hour in hourly:
        rows_per_hour[hour] = rows_per_hour.get(hour, 0) + 1
    for key in ("2026-03-09-10:00", "2026-03-09-11:00"):
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=hourly_key(SITE), asset_partitions=[key]), limit=5
        ).records
        meta = dict(record.asset_materialization.metadata)
        assert {name: value.value for name, value in meta.items()} == {
            "rows": rows_per_hour[datetime.strptime(key, "%Y-%m-%d-%H:%M")]
        } == {"rows": 40}


def test_rerun_after_late_samples_updates_rows_in_place(sim, pipeline_env):
    instance = dg.DagsterInstance.ephemeral()
    path = pipeline_env["VITALS_DUCKDB_PATH"]
    hour = datetime(2026, 3, 9, 10, tzinfo=UTC)
    sim.faults.late_devices = 3
    sim.faults.late_seconds = 1800
    sim.set_now(hour + timedelta(hours=1, minutes=1))
    first, last = "2026-03-09-10:00", "2026-03-09-10:55"
    assert run([timeseries_key(SITE)], instance=instance, tags=range_tags(first, last)).success
    assert run([hourly_key(SITE)], instance=instance, partition_key=first).success
    before = stored_hourly(path)

    sim.set_now(hour + timedelta(hours=3))  # the late devices' samples have arrived
    assert run([timeseries_key(SITE)], instance=instance, tags=range_tags(first, last)).success
    assert run([hourly_key(SITE)], instance=instance, partition_key=first).success
    after = stored_hourly(path)
    assert sum(r["samples"] for r in after.values()) > sum(r["samples"] for r in before.values())
    expected = reference(path)
    assert set(after) == set(expected)
    for key, want in expected.items():
        assert after[key]["samples"] == want["samples"] and after[key]["last"] == want["last"]
        assert after[key]["avg"] == pytest.approx(want["avg"], rel=1e-12, abs=1e-12)
    with duckdb.connect(path, read_only=True) as con:
        assert con.execute(
            f"SELECT count(*), count(DISTINCT (point, hour)) FROM {SITE}.timeseries_hourly"
        ).fetchall()[0] == (40, 40)


def test_without_stored_samples_it_fails_saying_what_to_do(pipeline_env):
    result = run([hourly_key(SITE)], instance=dg.DagsterInstance.ephemeral(), partition_key="2026-03-09-10:00")
    assert not result.success
    message = failure_messages(result)
    assert f"materialize {SITE}/timeseries" in message and "2026-03-09 10:00" in message


# -- automation ---------------------------------------------------------------------------------


def test_a_late_refetch_of_a_past_hour_rolls_that_hour_up_again(sim, pipeline_env):
    """The roll-up sensor, against real runs of the fleet job: a manual run of one 5-minute
    partition of an hour that is long over asks for that hour's roll-up (once), and the roll-up
    then counts the re-fetched samples."""
    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(Settings.from_env())
    fleet_job = defs.resolve_job_def(FLEET_JOB)
    sensor = defs.resolve_sensor_def(ROLLUP_SENSOR)
    cursor = json.dumps({"updated_after": 0, "seen": []})

    def tick() -> list[dg.RunRequest]:
        nonlocal cursor
        with dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor) as context:
            result = sensor.evaluate_tick(context)
        cursor = result.cursor
        return [r for r in result.run_requests if r.job_name == HOURLY_JOB]

    assert run([points_key(SITE)], instance=instance).success
    refetch = fleet_job.execute_in_process(
        instance=instance, asset_selection=[timeseries_key(SITE)],
        tags={**range_tags("2026-03-09-10:20", "2026-03-09-10:20"), TRIGGER_TAG: "manual"}, run_config=QUIET,
    )
    assert refetch.success
    [request] = tick()
    assert request.asset_selection == [hourly_key(SITE)]
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == ("2026-03-09-10:00", "2026-03-09-10:00")
    assert tick() == [], "asked once"
    assert defs.resolve_job_def(HOURLY_JOB).execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags, run_config=QUIET,
    ).success
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        [(samples,)] = con.execute(f"SELECT sum(samples) FROM {SITE}.timeseries_hourly").fetchall()
    assert samples == len(sim.ground_truth(SITE, datetime(2026, 3, 9, 10, 20, tzinfo=UTC),
                                            datetime(2026, 3, 9, 10, 25, tzinfo=UTC))) > 0


def test_the_rollup_sensor_runs_by_default_and_targets_every_site(pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", f"{SITE},other_site")
    monkeypatch.delenv("VITALS_CHECKS")  # the default: quality on, so quality_daily exists too
    defs = build_definitions(Settings.from_env())
    sensor = defs.resolve_sensor_def(ROLLUP_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    targeted = {
        name: set(defs.resolve_job_def(name).asset_layer.selected_asset_keys) for name in (HOURLY_JOB, DAILY_JOB)
    }
    assert targeted == {
        HOURLY_JOB: {hourly_key(site) for site in (SITE, "other_site")},
        DAILY_JOB: {
            dg.AssetKey([site, name]) for site in (SITE, "other_site") for name in ("archive", "quality_daily")
        },
    }
    # No asset is driven by declarative automation: the schedule, the catch-up and this sensor
    # decide every run (its evaluations cost the daemon too much at hundreds of sites).
    for key in graph.get_all_asset_keys():
        assert graph.get(key).automation_condition is None, key.to_user_string()


def test_complete_hours_of_a_loaded_window():
    """What `vitals demo` rolls up after loading a window: only hours it loaded whole."""
    at = lambda h, m=0: datetime(2026, 3, 9, h, m, tzinfo=UTC)  # noqa: E731
    assert complete_hours(at(7, 5), at(9, 5)) == ("2026-03-09-08:00", "2026-03-09-08:00")
    assert complete_hours(at(7), at(9)) == ("2026-03-09-07:00", "2026-03-09-08:00")
    assert complete_hours(at(7, 5), at(7, 55)) is None
