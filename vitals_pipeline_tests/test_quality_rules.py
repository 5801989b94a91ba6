"""The data-quality rules as plain functions: thresholds, units, roles, the per-partition grid,
the stored-window verification and the daily roll-up, on small hand-made tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import orjson
import pyarrow as pa
import pytest

from vitals_pipeline.ace.parse import POINT_SCHEMA, SAMPLE_SCHEMA
from vitals_pipeline.assets.quality_daily import daily_rollup
from vitals_pipeline.checks import specs
from vitals_pipeline.checks.quality import QUALITY_SCHEMA, assess_window, history_span
from vitals_pipeline.checks.rules import (
    completeness_verdict,
    flat_tolerance,
    is_setpoint_or_command,
    point_role,
    point_rules,
    point_words,
    unit_info,
)
from vitals_pipeline.checks.thresholds import DEFAULT_RANGES, QualityThresholds
from vitals_pipeline.config import ConfigError
from vitals_pipeline.samples import clean_window
from vitals_pipeline.windows import PARTITION, Window

T = QualityThresholds()
START = datetime(2026, 3, 9, 10, 0, tzinfo=UTC)
NAIVE = START.replace(tzinfo=None)


# ---------------------------------------------------------------------------------------------
# Thresholds


def test_defaults_follow_the_conventions():
    assert (T.completeness_warn_pct, T.completeness_error_pct) == (95.0, 80.0)
    assert (T.flatline_minutes, T.stale_device_minutes, T.future_tolerance_minutes) == (60, 120, 5.0)
    assert (T.flatline_degf, T.flatline_pct_rh, T.flatline_in_wc) == (0.1, 0.5, 0.01)
    assert T.sentinels == (-999.0, 99999.0, 32767.0, 65535.0, -273.15)
    assert T.ranges["zone_temp"] == (40.0, 100.0) and T.ranges["duct_static"] == (-1.0, 8.0)
    assert T.enabled


def test_environment_overrides_every_kind_of_threshold():
    t = QualityThresholds.from_env(
        {
            "VITALS_QUALITY_COMPLETENESS_WARN_PCT": "90",
            "VITALS_QUALITY_FLATLINE_MINUTES": "30",
            "VITALS_QUALITY_SENTINELS": "-999, 9999",
            "VITALS_QUALITY_RANGE_ZONE_TEMP": "45..95",
            "VITALS_CHECKS": "off",
        }
    )
    assert t.completeness_warn_pct == 90.0 and t.flatline_minutes == 30
    assert t.sentinels == (-999.0, 9999.0)
    assert t.ranges["zone_temp"] == (45.0, 95.0) and t.ranges["supply_temp"] == DEFAULT_RANGES["supply_temp"]
    assert not t.enabled


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"VITALS_QUALITY_COMPLETENESS_WARN_PCT": "lots"}, "VITALS_QUALITY_COMPLETENESS_WARN_PCT"),
        ({"VITALS_QUALITY_RANGE_ZONE_TEMP": "40-100"}, "VITALS_QUALITY_RANGE_ZONE_TEMP"),
        ({"VITALS_QUALITY_RANGE_KITCHEN": "1..2"}, "unknown role"),
        ({"VITALS_CHECKS": "maybe"}, "VITALS_CHECKS"),
        ({"VITALS_QUALITY_COMPLETENESS_ERROR_PCT": "99"}, "error (99.0) <= warn (95.0)"),
        ({"VITALS_QUALITY_FLATLINE_MINUTES": "7"}, "multiple of 5"),
    ],
)
def test_bad_threshold_names_the_variable(env, names):
    with pytest.raises(ConfigError, match=names.replace("(", r"\(").replace(")", r"\)")):
        QualityThresholds.from_env(env)


# ---------------------------------------------------------------------------------------------
# Units, roles, setpoints


def test_units_are_bacnet_names_or_common_abbreviations():
    assert unit_info("degrees-fahrenheit").family == "temperature"
    assert unit_info("°F") == unit_info("degrees-fahrenheit")
    assert unit_info("degrees-celsius").from_canonical(212.0) == pytest.approx(100.0)
    assert unit_info("kelvins").from_canonical(32.0) == pytest.approx(273.15)
    assert unit_info("pascals").from_canonical(1.0) == pytest.approx(249.08891)
    assert unit_info("inH2O").family == unit_info("%RH").family.replace("humidity", "pressure")
    for unknown in ("cubic-feet-per-minute", "kilowatts", "no-units", "property: unknown-property", None, ""):
        assert unit_info(unknown) is None


@pytest.mark.parametrize(
    ("markers", "role_tag", "unit", "role"),
    [
        ("sensor outside air temp", "outside_air_temp", "degrees-fahrenheit", "outside_air_temp"),
        ("sensor zone air temp", "zone_temp", "degrees-fahrenheit", "zone_temp"),
        ("sensor return air temp", "return_air_temp", "degrees-fahrenheit", "zone_temp"),
        ("sensor discharge air temp", "supply_air_temp", "degrees-celsius", "supply_temp"),
        ("sensor mixed air temp", "mixed_air_temp", "degrees-fahrenheit", "supply_temp"),
        ("sensor chilled water leaving temp", "chws_temp", "degrees-fahrenheit", "chilled_water_temp"),
        ("sensor hot water leaving temp", "hws_temp", "degrees-fahrenheit", "hot_water_temp"),
        ("sensor condenser water leaving temp", "cw_supply_temp", "degrees-fahrenheit", "temp"),
        ("sensor discharge duct pressure", "duct_static", "inches-of-water", "duct_static"),
        ("sensor filter pressure", "filter_dp", "inches-of-water", "pressure"),
        ("sensor return air humidity", "return_air_rh", "percent", "humidity"),
        ("sensor return air co2", "return_air_co2", "parts-per-million", "co2"),
        ("sensor elec power", "electric_power", "kilowatts", None),
    ],
)
def test_roles_come_from_tags(markers, role_tag, unit, role):
    words = point_words("site/gw1/10.0.0.10-1001/analogInput/1", markers.split(), {"role": role_tag})
    assert point_role(words, unit_info(unit)) == role


def test_setpoints_and_commands_are_recognised_by_tags_names_and_object_type():
    assert is_setpoint_or_command(point_words("s/AHU-1/ZN-T-SP", [], {}))
    assert is_setpoint_or_command(point_words("s/x/analogValue/3", ["sp", "zone"], {}))
    assert is_setpoint_or_command(point_words("s/x/y", [], {"role": "fan_cmd"}))
    assert is_setpoint_or_command(point_words("s/x/analogOutput/2", [], {}))
    assert is_setpoint_or_command(frozenset({"damper"}), object_type="analog-output")
    assert not is_setpoint_or_command(point_words("s/AHU-1/DSP", ["sensor"], {"role": "duct_static"}))


def test_flat_tolerance_is_converted_to_the_points_unit():
    assert flat_tolerance(unit_info("degrees-fahrenheit"), T) == pytest.approx(0.1)
    assert flat_tolerance(unit_info("degrees-celsius"), T) == pytest.approx(0.1 / 1.8)
    assert flat_tolerance(unit_info("pascals"), T) == pytest.approx(0.01 * 249.08891)
    assert flat_tolerance(unit_info("percent-relative-humidity"), T) == 0.5
    assert flat_tolerance(unit_info("percent"), T) is None  # dampers sit still by design


def test_completeness_verdict_thresholds():
    assert completeness_verdict(95.0, T) is None
    assert completeness_verdict(94.9, T) == "WARN"
    assert completeness_verdict(80.0, T) == "WARN"
    assert completeness_verdict(79.9, T) == "ERROR"
    assert completeness_verdict(None, T) is None


# ---------------------------------------------------------------------------------------------
# Helpers: a points table and samples


def points(*specs_: tuple) -> pa.Table:
    """(name, device, unit, interval, his_mode, markers, role[, object_type])"""
    rows = {f.name: [] for f in POINT_SCHEMA}
    for spec in specs_:
        name, device, unit, interval, mode, markers, role, *rest = spec
        rows["name"].append(name)
        rows["site"].append("s")
        rows["device"].append(device)
        rows["object_type"].append(rest[0] if rest else "analogInput")
        rows["unit"].append(unit)
        rows["point_type"].append("analog")
        rows["collect_enabled"].append(True)
        rows["collect_interval"].append(interval)
        rows["his_mode"].append(mode)
        rows["marker_tags"].append(markers.split())
        rows["kv_tags"].append(orjson.dumps({"role": role}).decode())
        rows["fetched_at"].append(datetime(2026, 3, 1))
    return pa.table(rows, schema=POINT_SCHEMA)


ZONE = ("s/VAV-1/ZN-T", "VAV-1", "degrees-fahrenheit", 60, "sampled", "sensor zone air temp", "zone_temp")
FLOW = ("s/VAV-1/SA-F", "VAV-1", "cubic-feet-per-minute", 60, "sampled", "sensor discharge air flow", "vav_airflow")
SP = ("s/VAV-1/ZN-T-SP", "VAV-1", "degrees-fahrenheit", 300, "sampled", "sp zone air temp", "zone_sp", "analogValue")
OAT = ("s/AHU-1/OA-T", "AHU-1", "degrees-fahrenheit", 900, "sampled", "sensor outside air temp", "outside_air_temp")
STATUS = ("s/AHU-1/SF-S", "AHU-1", "no-units", None, "cov", "sensor fan run", "fan_status", "binaryInput")


def samples(rows: list[tuple]) -> pa.Table:
    """(point, ts naive, value, raw) -> SAMPLE_SCHEMA, sorted by (ts, point) like the run's frame."""
    rows = sorted(rows, key=lambda r: (r[1], r[0]))
    return pa.table(
        {
            "point": [r[0] for r in rows],
            "ts": [r[1] for r in rows],
            "value": [r[2] for r in rows],
            "raw_value": [r[3] if len(r) > 3 else None for r in rows],
        },
        schema=SAMPLE_SCHEMA,
    )


def every(point: str, start: datetime, end: datetime, step_s: int, value=72.0, offset_s: float = 36.5):
    """A reading every step_s seconds, offset_s into each step, in [start, end) (naive)."""
    out, t = [], start + timedelta(seconds=offset_s)
    i = 0
    while t < end:
        v = value(i) if callable(value) else value
        out.append((point, t, v))
        t += timedelta(seconds=step_s)
        i += 1
    return out


def wiggle(i: int) -> float:
    return 72.0 + (0.4 if i % 2 else -0.4)


def assess(rows, pts, *, minutes=15, thresholds=T, conn=None, start=START):
    window = Window(start, start + timedelta(minutes=minutes))
    conn = conn or duckdb.connect()
    return assess_window(
        conn, schema="s", samples=samples(rows), window=window,
        rules=point_rules(pts, thresholds), thresholds=thresholds,
    )


def cells(assessment) -> dict[tuple[str, datetime], dict]:
    return {(r["point"], r["window_start"]): r for r in assessment.rows.to_pylist()}


def at(minutes: int) -> datetime:
    return NAIVE + timedelta(minutes=minutes)


# ---------------------------------------------------------------------------------------------
# The grid


def test_complete_points_are_ok_and_counts_are_per_partition():
    rows = every(ZONE[0], at(0), at(15), 60, wiggle) + every(SP[0], at(0), at(15), 300, 74.0)
    a = assess(rows, points(ZONE, SP))
    got = cells(a)
    assert a.rows.num_rows == 2 * 3
    assert set(a.rows.schema.names) == set(QUALITY_SCHEMA.names)
    zone = got[(ZONE[0], at(5))]
    assert (zone["expected"], zone["actual"], zone["missing"], zone["status"]) == (5.0, 5, 0.0, "ok")
    assert zone["reason"] is None and zone["last_seen"] == at(9) + timedelta(seconds=36.5)
    sp = got[(SP[0], at(10))]
    assert (sp["expected"], sp["actual"], sp["missing"], sp["status"]) == (1.0, 1, 0.0, "ok")
    assert a.partition_figures["2026-03-09-10:05"] == {
        "points_reporting": 2, "null_pct": 0.0,
        "completeness_pct": 100.0,
    }


def test_missing_samples_below_the_error_threshold_are_a_fault():
    zone = every(ZONE[0], at(0), at(5), 60, wiggle)
    one_missing = [r for r in zone if r[1].minute != 2]
    two_missing = [r for r in zone if r[1].minute not in (2, 3)]
    got = cells(assess(one_missing, points(ZONE), minutes=5))[(ZONE[0], at(0))]
    assert (got["missing"], got["status"]) == (1.0, "ok")  # 80 %: not below the ERROR threshold
    assert got["reason"] == "1 of 5 expected samples missing"
    got = cells(assess(two_missing, points(ZONE), minutes=5))[(ZONE[0], at(0))]
    assert (got["missing"], got["status"]) == (2.0, "fault")


def test_a_point_that_stops_is_down_after_three_missed_intervals():
    rows = every(ZONE[0], at(0), at(6), 60, wiggle)  # last sample 10:05:36
    got = cells(assess(rows, points(ZONE), minutes=15))
    assert got[(ZONE[0], at(5))]["status"] == "down"  # 10:10 - 10:05:36 > 3 min
    assert got[(ZONE[0], at(5))]["actual"] == 1
    assert got[(ZONE[0], at(10))]["reason"] == "no sample since 2026-03-09 10:05:36 UTC"
    assert got[(ZONE[0], at(0))]["status"] == "ok"


def test_long_interval_points_are_judged_on_the_interval_before_each_partition_end():
    # A 15-minute point: one sample at 10:00:36, none at 10:15:36 or later.
    rows = [(OAT[0], at(0) + timedelta(seconds=36.5), 50.0)]
    got = cells(assess(rows, points(OAT), minutes=60))
    expected = [got[(OAT[0], at(m))] for m in range(0, 60, 5)]
    assert [round(c["expected"], 4) for c in expected] == [0.3333] * 12
    # 10:00, 10:05, 10:10 end within 15 min of the sample; from 10:15 the sample is overdue.
    assert [c["missing"] > 0 for c in expected] == [False] * 3 + [True] * 9
    # Down after 3 x 15 min without a sample: partitions ending after 10:45:36.
    assert [c["status"] for c in expected] == ["ok"] * 3 + ["fault"] * 6 + ["down"] * 3
    # Over the hour: 4 samples promised, 1 arrived.
    [summary] = a_points(assess(rows, points(OAT), minutes=60))
    assert summary["expected"] == pytest.approx(4.0) and summary["missing"] == pytest.approx(3.0)


def a_points(assessment) -> list[dict]:
    return assessment.points.to_pylist()


def test_cov_points_expect_nothing_and_unknown_points_are_flagged():
    rows = [(STATUS[0], at(1), 1.0), ("s/new/point", at(2), 5.0)]
    got = cells(assess(rows, points(STATUS), minutes=5))
    cov = got[(STATUS[0], at(0))]
    assert (cov["expected"], cov["missing"], cov["status"]) == (None, None, "ok")
    other = got[("s/new/point", at(0))]
    assert (other["status"], other["reason"], other["device"]) == ("unknown", "not in the points table", None)
    got = cells(assess([], points(STATUS), minutes=5))
    assert got[(STATUS[0], at(0))]["status"] == "unknown"  # cov, nothing in the history either


def test_bad_values_are_counted_by_kind():
    zone = every(ZONE[0], at(0), at(5), 60, 72.0)
    rows = [
        (ZONE[0], zone[0][1], 180.0),  # out of range (zone 40..100 degF)
        (ZONE[0], zone[1][1], -999.0),  # a sentinel, not counted as out of range
        (ZONE[0], zone[2][1], None, "NaN"),  # a null, not text
        (ZONE[0], zone[3][1], None, "offline"),  # text
        (ZONE[0], zone[4][1], None),  # JSON null
    ]
    a = assess(rows, points(ZONE), minutes=5)
    got = cells(a)[(ZONE[0], at(0))]
    assert (got["actual"], got["nulls"], got["non_numeric"], got["sentinels"], got["out_of_range"]) == (5, 3, 1, 1, 1)
    assert got["status"] == "fault"
    assert got["reason"] == (
        "2 null/NaN/inf values; 1 non-numeric values; 1 sentinel values; "
        "1 values outside 40..100 degrees-fahrenheit"
    )
    [summary] = a_points(a)
    assert summary["bad_ts"] == zone[1][1] and summary["bad_raw"] == "-999.0"
    assert (summary["oor_min"], summary["oor_max"], summary["oor_ts"]) == (180.0, 180.0, zone[0][1])


@pytest.mark.parametrize(
    ("spec", "sentinel"),
    [(ZONE, -999.0), (FLOW, 65535.0)],  # a point with a physical range, and one without (cfm)
)
def test_a_sentinel_alone_makes_the_partition_a_fault(spec, sentinel):
    """Complete, in range, not flat, no null, no text: the one sentinel is the partition's only
    problem (it is not counted out of range either), and it alone must make it a fault."""
    clean = every(spec[0], at(0), at(5), 60, wiggle)
    got = cells(assess(clean, points(spec), minutes=5))[(spec[0], at(0))]
    assert (got["actual"], got["missing"], got["sentinels"], got["status"]) == (5, 0.0, 0, "ok")

    one_sentinel = clean[:2] + [(spec[0], clean[2][1], sentinel)] + clean[3:]
    got = cells(assess(one_sentinel, points(spec), minutes=5))[(spec[0], at(0))]
    assert (got["actual"], got["missing"], got["nulls"], got["non_numeric"]) == (5, 0.0, 0, 0)
    assert (got["sentinels"], got["out_of_range"], got["flatline"]) == (1, 0, False)
    assert got["status"] == "fault"
    assert got["reason"] == "1 sentinel values"


def test_celsius_points_get_the_converted_range():
    metric = ("s/AHU-2/ZN-T", "AHU-2", "degrees-celsius", 60, "sampled", "sensor zone air temp", "zone_temp")
    rows = every(metric[0], at(0), at(5), 60, lambda i: 22.0 if i else 40.0)  # 40 degC = 104 degF
    got = cells(assess(rows, points(metric), minutes=5))[(metric[0], at(0))]
    assert got["out_of_range"] == 1 and "outside 4.444..37.78 degrees-celsius" in got["reason"]


def test_a_flat_sensor_is_flagged_once_it_has_been_flat_for_the_window():
    rows = every(ZONE[0], at(0), at(70), 60, 71.5) + every(SP[0], at(0), at(70), 300, 74.0)
    rows += every(FLOW[0], at(0), at(70), 60, 450.0)
    a = assess(rows, points(ZONE, SP, FLOW), minutes=70)
    got = cells(a)
    flags = [got[(ZONE[0], at(m))]["flatline"] for m in range(0, 70, 5)]
    assert flags == [False] * 11 + [True] * 3  # from the partition ending at 11:00
    assert got[(ZONE[0], at(65))]["reason"] == "flat at 71.5 for 60 min"
    assert not any(got[(SP[0], at(m))]["flatline"] for m in range(0, 70, 5))  # a setpoint
    assert not any(got[(FLOW[0], at(m))]["flatline"] for m in range(0, 70, 5))  # cfm: no tolerance
    [zone] = [p for p in a_points(a) if p["point"] == ZONE[0]]
    assert zone["flat_partitions"] == 3 and zone["flat_value"] == 71.5
    assert zone["flat_since"] == at(0) + timedelta(seconds=36.5)


def test_noise_within_tolerance_is_flat_and_beyond_it_is_not():
    flat = every(ZONE[0], at(0), at(60), 60, lambda i: 71.5 + 0.05 * (i % 2))
    noisy = every(ZONE[0], at(0), at(60), 60, lambda i: 71.5 + 0.15 * (i % 2))
    assert cells(assess(flat, points(ZONE), minutes=60))[(ZONE[0], at(55))]["flatline"]
    assert not cells(assess(noisy, points(ZONE), minutes=60))[(ZONE[0], at(55))]["flatline"]


def stored_db(rows: list[tuple]) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA s")
    conn.execute("CREATE TABLE s.timeseries (point VARCHAR, ts TIMESTAMP, value DOUBLE, raw_value VARCHAR)")
    if rows:
        conn.register("incoming", samples(rows))
        conn.execute("INSERT INTO s.timeseries SELECT * FROM incoming")
        conn.unregister("incoming")
    return conn


def test_history_before_the_window_feeds_the_rolling_rules():
    # 55 minutes of a stuck sensor already stored, then a 5-minute run: flat at once.
    conn = stored_db(every(ZONE[0], at(-55), at(0), 60, 71.5))
    a = assess(every(ZONE[0], at(0), at(5), 60, 71.5), points(ZONE), minutes=5, conn=conn)
    assert cells(a)[(ZONE[0], at(0))]["flatline"]
    assert a.history_start == at(0) - history_span(point_rules(points(ZONE), T), T)
    # Without the history there is not an hour of evidence.
    assert not cells(assess(every(ZONE[0], at(0), at(5), 60, 71.5), points(ZONE), minutes=5))[
        (ZONE[0], at(0))
    ]["flatline"]


def test_stored_rows_the_run_lacks_count_like_the_merge_keeps_them():
    full = every(ZONE[0], at(0), at(5), 60, wiggle)
    conn = stored_db(full + [full[0]])  # one key stored twice (an old writer's duplicate)
    a = assess(full[:2], points(ZONE), minutes=5, conn=conn)  # a partial re-fetch
    got = cells(a)[(ZONE[0], at(0))]
    assert got["actual"] == 5 + 0 and got["status"] == "ok"
    assert a.kept_keys == 3  # the three keys the run did not re-fetch


def test_a_silent_device_and_a_frozen_device_are_stale():
    frozen_a = ("s/AHU-9/RA-T", "AHU-9", "degrees-fahrenheit", 60, "sampled", "sensor return air temp",
                "return_air_temp")
    frozen_b = ("s/AHU-9/SA-T", "AHU-9", "degrees-fahrenheit", 60, "sampled", "sensor discharge air temp",
                "supply_air_temp")
    rows = every(ZONE[0], at(0), at(100), 60, wiggle) + every(FLOW[0], at(0), at(10), 60, wiggle)
    rows += every(frozen_a[0], at(0), at(125), 60, 70.0) + every(frozen_b[0], at(0), at(125), 60, 55.0)
    rows += every(OAT[0], at(0), at(125), 900, wiggle)
    a = assess(rows, points(ZONE, FLOW, OAT, frozen_a, frozen_b), minutes=125)
    devices = {d["device"]: d for d in a.devices.to_pylist()}
    # VAV-1 last reported at 10:99:36 = 11:39:36: silent from the partition ending 15 min later.
    assert devices["VAV-1"]["silent_partitions"] > 0 and devices["VAV-1"]["frozen_partitions"] == 0
    assert devices["VAV-1"]["first_stale"] == at(110)
    # AHU-9 read exactly the same since 10:00:36: frozen from the partition ending at 12:00.
    assert devices["AHU-9"]["frozen_partitions"] == 2 and devices["AHU-9"]["first_stale"] == at(115)
    assert devices["AHU-1"]["stale_partitions"] == 0


def test_without_a_points_table_values_are_still_judged():
    rows = every(ZONE[0], at(0), at(5), 60, 180.0) + [(FLOW[0], at(1), None, "offline")]
    a = assess(rows, pa.table({f.name: [] for f in POINT_SCHEMA}, schema=POINT_SCHEMA), minutes=5)
    assert not a.points_known
    got = cells(a)
    assert got[(ZONE[0], at(0))]["status"] == "unknown"  # no unit: no range to be outside of
    assert got[(FLOW[0], at(0))]["status"] == "fault"
    assert "completeness_pct" not in a.partition_figures["2026-03-09-10:00"]


# ---------------------------------------------------------------------------------------------
# Checks helpers


def test_future_rows_are_counted_against_now_plus_tolerance():
    rows = samples([(ZONE[0], at(0), 1.0), (ZONE[0], at(6), 1.0), (ZONE[0], at(30), 1.0)])
    assert specs.count_future(rows, START, T) == 2
    assert specs.count_future(rows, START + timedelta(minutes=30), T) == 0
    # Counting drops nothing: cleaning keeps the future row inside the window (10:06) and drops
    # the one outside it (10:30) as out of the window, whatever the clock says.
    cleaned = clean_window(rows, Window(START, START + timedelta(minutes=10)))
    assert cleaned.samples.column("ts").to_pylist() == [at(0), at(6)]
    assert cleaned.out_of_window_dropped == 1


def test_stored_window_is_reconciled_by_count_and_explained_by_keys_when_it_is_not():
    run = every(ZONE[0], at(0), at(5), 60, 72.0)
    window = Window(START, START + PARTITION)
    later = START + timedelta(hours=1)
    conn = stored_db(run)
    ok = specs.verify_stored(conn, schema="s", samples=samples(run), window=window,
                             future_after=later, expected_rows=5)
    assert ok.reconciled and (ok.duplicate_keys, ok.not_stored, ok.future_rows) == (0, 0, 0)

    conn = stored_db(run[1:] + [run[1], run[1]])  # first row lost, second stored three times
    bad = specs.verify_stored(conn, schema="s", samples=samples(run), window=window,
                              future_after=START, expected_rows=5)
    assert not bad.reconciled
    assert (bad.duplicate_keys, bad.duplicate_extra_rows, bad.not_stored) == (1, 2, 1)
    assert bad.not_stored_examples == [(ZONE[0], run[0][1])]
    assert bad.future_rows == 6 and bad.future_examples[0][1] == run[-1][1]


def test_checks_needing_the_points_table_fail_with_a_warning_when_it_is_missing():
    """Without points no expectation is known: the 4 points-dependent checks cannot pass. They fail
    at WARN (never blocking the store) and say what to materialize; the others are judged."""
    a = assess(every(ZONE[0], at(0), at(5), 60, 72.0),
               pa.table({f.name: [] for f in POINT_SCHEMA}, schema=POINT_SCHEMA), minutes=5)
    rq = specs.RunQuality("s", "s", Window(START, START + PARTITION), T, a, a.partition_figures)
    stored = specs.StoredFigures(stored_rows=5, expected_rows=5)
    results = {r.check_name: r for r in specs.build_results(rq, stored, specs.SourceFigures(), START)}
    assert list(results) == list(specs.CHECK_NAMES)
    # Each result names its asset: one fleet step reports the checks of many sites.
    assert {r.asset_key for r in results.values()} == {dg.AssetKey(["s", "timeseries"])}
    needs_points = ("completeness", "values_in_physical_range", "no_flatlined_sensors", "no_stale_devices")
    for name in needs_points:
        assert not results[name].passed and results[name].severity == dg.AssetCheckSeverity.WARN
        assert results[name].description.startswith("points not loaded: materialize s/points ")
        assert results[name].metadata["points_loaded"].value is False
    assert not set(needs_points) & specs.BLOCKING_CHECKS
    assert results["numeric_values"].passed and results["no_duplicate_samples"].passed
    assert results["samples_inside_window"].passed and results["no_future_samples"].passed

    # With the points known, the same window passes those checks.
    known = assess(every(ZONE[0], at(0), at(5), 60, 72.0), points(ZONE), minutes=5)
    rq = specs.RunQuality("s", "s", Window(START, START + PARTITION), T, known, known.partition_figures)
    judged = {r.check_name: r for r in specs.build_results(rq, stored, specs.SourceFigures(), START)}
    assert all(judged[name].passed for name in needs_points), {n: judged[n].description for n in needs_points}


def test_a_check_that_cannot_be_evaluated_fails_instead_of_failing_the_step():
    a = assess(every(ZONE[0], at(0), at(5), 60, 72.0), points(ZONE), minutes=5)
    rq = specs.RunQuality("s", "s", Window(START, START + PARTITION), T, a, a.partition_figures)
    results = specs.build_results(rq, RuntimeError("disk gone"), specs.SourceFigures(), START)
    blocking = [r for r in results if r.check_name in ("no_duplicate_samples", "samples_inside_window")]
    assert all(not r.passed and r.severity == dg.AssetCheckSeverity.ERROR for r in blocking)
    assert "disk gone" in blocking[0].description
    assert {r.check_name: r.passed for r in results}["completeness"]


def test_check_specs_block_only_on_the_storage_checks():
    checks = specs.timeseries_check_specs(dg.AssetKey(["s", "timeseries"]))
    assert [c.name for c in checks] == list(specs.CHECK_NAMES)
    assert {c.name for c in checks if c.blocking} == {
        "no_duplicate_samples", "no_future_samples", "samples_inside_window"
    }


# ---------------------------------------------------------------------------------------------
# Daily roll-up


def test_daily_rollup_sums_partitions_and_picks_a_status():
    day = datetime(2026, 3, 9)
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA s")
    rows = []
    for i in range(288):
        ws = day + timedelta(minutes=5 * i)
        # a: complete; b: down for the last 100 partitions; c: one flat partition
        rows.append((ws, "a", "D", 5.0, 5, 0.0, 0, 0, 0, 0, False, ws, "ok", None))
        down = i >= 188
        rows.append((ws, "b", "D", 5.0, 0 if down else 5, 5.0 if down else 0.0, 0, 0, 0, 0, False, ws,
                     "down" if down else "ok", None))
        rows.append((ws, "c", "D", 1.0, 1, 0.0, 0, 0, 0, 0, i == 5, ws, "fault" if i == 5 else "ok", None))
    conn.register("q", pa.table(list(zip(*rows, strict=True)), schema=QUALITY_SCHEMA))
    conn.execute("CREATE TABLE s.quality AS SELECT * FROM q")
    got = {r["point"]: r for r in daily_rollup(conn, "s", day, day + timedelta(days=1), T).to_pylist()}
    assert got["a"]["status"] == "ok" and got["a"]["completeness_pct"] == 100.0 and got["a"]["partitions"] == 288
    assert got["b"]["status"] == "down" and got["b"]["missing"] == 500.0
    assert got["b"]["completeness_pct"] == pytest.approx(100 * (1 - 500 / 1440))
    assert got["b"]["partitions_down"] == 100 and got["b"]["reason"].startswith("65.3 % complete")
    assert got["c"]["status"] == "fault" and got["c"]["flatline_partitions"] == 1
    assert got["c"]["reason"] == "flat in 1 partitions"


def test_rows_counted_in_small_chunks_give_the_same_assessment(monkeypatch):
    """judge() counts rows chunk by chunk (bounded memory); chunk borders must change nothing."""
    import vitals_pipeline.checks.quality as quality

    zone = every(ZONE[0], at(0), at(15), 60, wiggle)
    flow = every(FLOW[0], at(0), at(15), 60, 400.0, offset_s=5)
    rows = zone + flow + every(SP[0], at(0), at(15), 300, 72.0)
    rows += [
        (ZONE[0], at(1) + timedelta(seconds=1), 180.0),  # out of range
        (FLOW[0], at(2) + timedelta(seconds=1), -999.0),  # sentinel
        (ZONE[0], at(7) + timedelta(seconds=2), None, "offline"),  # text
        (FLOW[0], at(8) + timedelta(seconds=3), None, "NaN"),
        (ZONE[0], at(9) + timedelta(seconds=4), 181.0),
        ("s/unknown/X", at(3), 1.0),  # not in the points table
    ]
    pts = points(ZONE, FLOW, SP)
    whole = assess(rows, pts)
    monkeypatch.setattr(quality, "ROW_CHUNK", 4)
    chunked = assess(rows, pts)
    assert chunked.rows.equals(whole.rows)
    assert chunked.points.equals(whole.points)
    assert chunked.devices.equals(whole.devices)
    [zone_summary] = [p for p in a_points(whole) if p["point"] == ZONE[0]]
    assert zone_summary["oor_min"] == 180.0 and zone_summary["oor_max"] == 181.0
