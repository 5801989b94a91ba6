"""Time: DST changes, non-UTC process time zones, midnight and the year boundary; and property
tests of the window maths (windows.py, samples.clean_window) against plain-Python models.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitals_pipeline.ace.parse import SAMPLE_SCHEMA
from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import five_minute_partitions, range_tags, timeseries_key
from vitals_pipeline.config import Settings
from vitals_pipeline.samples import clean_window, merge_clean_results
from vitals_pipeline.windows import (
    PARTITION,
    Window,
    closed_window,
    floor_to_partition,
    partition_key,
    partition_start,
    window_for_keys,
)
from vitals_pipeline_tests.conftest import SIM_KEY, SITE
from vitals_pipeline_tests.helpers import (
    assert_exact,
    materialized_partitions,
    run_assets,
    step_failures,
)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def process_tz():
    """Set the process time zone (TZ + tzset) for a test; always restored."""
    old = os.environ.get("TZ")

    def set_tz(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()
        assert name == "UTC" or time.tzname[0] != "UTC", time.tzname

    yield set_tz
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


# America/New_York: spring forward 2026-03-08 02:00 EST = 07:00 UTC (02:00-03:00 local does not
# exist); fall back 2025-11-02 02:00 EDT = 06:00 UTC (01:00-02:00 local happens twice).
# Lord Howe moves by 30 minutes; Kathmandu is UTC+05:45.
DST_WINDOWS = {
    "spring forward": ("2026-03-08-06:50", "2026-03-08-07:05"),
    "fall back": ("2025-11-02-05:50", "2025-11-02-06:05"),
    "midnight and year boundary": ("2025-12-31-23:50", "2026-01-01-00:05"),
}
ZONES = ("UTC", "America/New_York", "Asia/Kathmandu", "Australia/Lord_Howe")


@pytest.mark.parametrize("zone", ZONES)
def test_partitions_are_the_same_in_any_process_time_zone(zone, process_tz):
    """Dagster's partition keys and windows, and windows.py's, equal the UTC ones across DST
    changes and the year boundary whatever TZ the process runs in."""
    process_tz(zone)
    env = {"ACE_SITES": SITE, "VITALS_PARTITIONS_START": "2025-10-01-00:00"}
    partitions = five_minute_partitions(Settings.from_env(env, now=utc(2026, 3, 10)))
    for first, last in DST_WINDOWS.values():
        window = window_for_keys(first, last)
        keys = window.partition_keys()
        # Consecutive, 5 minutes apart, as UTC strings: no "-0500" suffix, no gap, no repeat.
        starts = [window.start + i * PARTITION for i in range(len(keys))]
        assert keys == [s.strftime("%Y-%m-%d-%H:%M") for s in starts]
        dagster_keys = partitions.get_partition_keys_in_time_window(
            dg.TimeWindow(window.start, window.end)
        )
        assert list(dagster_keys) == keys
        for key, key_start in zip(keys, starts, strict=True):
            tw = partitions.time_window_for_partition_key(key)
            assert (tw.start.astimezone(UTC), tw.end.astimezone(UTC)) == (key_start, key_start + PARTITION)
            assert partition_start(key) == key_start
        # The partition holding a moment, asked with that moment in the local zone.
        local = ZoneInfo(zone)
        for s in starts:
            moment = (s + timedelta(minutes=2, seconds=30)).astimezone(local)
            assert floor_to_partition(moment) == s
            assert partitions.get_partition_key_for_timestamp(moment.timestamp()) == partition_key(s)


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("spring forward", "America/New_York"),
        ("fall back", "America/New_York"),
        ("midnight and year boundary", "Asia/Kathmandu"),
    ],
)
def test_runs_across_dst_and_the_year_boundary_store_exact_utc(name, zone, process_tz, monkeypatch, tmp_path):
    """End to end in a non-UTC process: a range over the DST change (or midnight of 31 Dec)
    stores exactly the ground truth, in UTC, and a re-run over the fall-back hour duplicates
    nothing (the stock IO manager's naive literals duplicated every row in a non-UTC zone)."""
    first, last = DST_WINDOWS[name]
    window = window_for_keys(first, last)
    sim = Simulator(SimulatorConfig(sites=[SiteSpec(SITE, points=40, seed=9)], api_key=SIM_KEY))
    sim.set_now(window.end + timedelta(hours=1))  # after the window
    db = tmp_path / "vitals.duckdb"
    process_tz(zone)
    with SimulatorServer(sim) as server:
        for var, value in {
            "ACE_API_URL": server.url,
            "ACE_API_KEY": SIM_KEY,
            "ACE_SITES": SITE,
            "VITALS_DUCKDB_PATH": str(db),
            # Just before the window (the day before, 00:00 UTC).
            "VITALS_PARTITIONS_START": (window.start - timedelta(days=1)).strftime("%Y-%m-%d-00:00"),
        }.items():
            monkeypatch.setenv(var, value)
        # Fall back: run twice (the repeated local hour is where naive times would collide).
        for _ in range(2 if name == "fall back" else 1):
            result = run_assets([timeseries_key(SITE)], tags=range_tags(first, last))
            assert result.success, step_failures(result)
            assert materialized_partitions(result, timeseries_key(SITE)) == window.partition_keys()
            rows = assert_exact(db, sim, window.start, window.end)
    if "year" in name:
        assert {r[1].year for r in rows} == {2025, 2026}


# ---------------------------------------------------------------------------------------------
# Property tests: window maths against plain-Python models.

MOMENTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)
ANY_ZONE = st.sampled_from([UTC, *(ZoneInfo(z) for z in ZONES[1:]), ZoneInfo("Pacific/Chatham")])


@given(MOMENTS, ANY_ZONE)
def test_floor_to_partition(t, zone):
    floor = floor_to_partition(t.astimezone(zone))  # the same instant, written in another zone
    assert floor.tzinfo is not None and floor.utcoffset() == timedelta(0)
    assert floor <= t < floor + PARTITION
    assert floor.minute % 5 == 0 and floor.second == 0 and floor.microsecond == 0
    assert floor_to_partition(floor) == floor
    epoch_us = (t - utc(1970, 1, 1)) // timedelta(microseconds=1)
    assert floor == utc(1970, 1, 1) + timedelta(microseconds=epoch_us - epoch_us % 300_000_000)


@given(MOMENTS)
def test_partition_keys_round_trip(t):
    start = floor_to_partition(t)
    key = partition_key(start)
    assert partition_start(key) == start and partition_key(partition_start(key)) == key
    assert len(key) == 16 and key[10] == "-" and key[13] == ":"


@given(MOMENTS, st.integers(min_value=0, max_value=300))
def test_window_for_keys(t, extra):
    first = floor_to_partition(t)
    last = first + extra * PARTITION
    window = window_for_keys(partition_key(first), partition_key(last))
    assert window == Window(first, last + PARTITION)
    assert window.partitions == extra + 1
    keys = window.partition_keys()
    assert len(keys) == len(set(keys)) == extra + 1
    assert keys[0] == partition_key(first) and keys[-1] == partition_key(last)
    assert all(partition_start(b) - partition_start(a) == PARTITION for a, b in zip(keys, keys[1:]))


@given(MOMENTS, st.integers(min_value=0, max_value=48).map(lambda n: n * PARTITION), ANY_ZONE)
def test_closed_window(now, lookback, zone):
    window = closed_window(now.astimezone(zone), lookback)
    assert window.end == floor_to_partition(now) and window.end <= now < window.end + PARTITION
    assert window.start == window.end - PARTITION - lookback
    assert window.partitions == 1 + lookback // PARTITION
    # The newest closed partition is the last key; nothing newer, nothing still open.
    assert partition_start(window.partition_keys()[-1]) + PARTITION <= now


WINDOW = Window(utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 15))
LO_US = 0  # microseconds relative to WINDOW.start
SPAN_US = 15 * 60 * 1_000_000
VALUES = st.one_of(
    st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.none()),
    st.just((None, None)),
    st.tuples(st.none(), st.sampled_from(["NaN", "nan", "fault", "offline", "inf"])),
)
ROWS = st.lists(
    st.tuples(
        st.sampled_from(["a/1", "a/2", "b/ü 1", "b/10 %", "Z"]),
        # Inside, at the edges, and up to 2 minutes outside the window.
        st.one_of(
            st.integers(min_value=-120_000_000, max_value=SPAN_US + 120_000_000),
            st.sampled_from([-1, 0, 1, SPAN_US - 1, SPAN_US, SPAN_US + 1, 300_000_000]),
        ),
        VALUES,
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS, st.randoms(use_true_random=False), st.booleans())
def test_clean_window_matches_a_python_model(rows, rng, with_duplicates):
    if with_duplicates and rows:  # the same (point, ts) again, maybe with another value
        again = [rng.choice(rows) for _ in range(1 + len(rows) // 3)]
        rows = rows + [(p, o, (rng.random(), None) if rng.random() < 0.5 else v) for p, o, v in again]
    rng.shuffle(rows)
    naive_start = WINDOW.start.replace(tzinfo=None)
    table = pa.table(
        {
            "point": [r[0] for r in rows],
            "ts": [naive_start + timedelta(microseconds=r[1]) for r in rows],
            "value": [r[2][0] for r in rows],
            "raw_value": [r[2][1] for r in rows],
        },
        schema=SAMPLE_SCHEMA,
    )
    result = clean_window(table, WINDOW)

    # The model: keep rows with start <= ts < end; per (point, ts) the last one seen wins;
    # ordered by (ts, point); figures per partition.
    keys = WINDOW.partition_keys()
    kept: dict[tuple, tuple] = {}
    figures = {k: dict.fromkeys(
        ("samples", "points", "null_values", "non_numeric_values", "duplicates_dropped",
         "out_of_window_dropped"), 0) for k in keys}
    for point, offset, (value, raw) in rows:
        if offset < LO_US:
            figures[keys[0]]["out_of_window_dropped"] += 1
        elif offset >= SPAN_US:
            figures[keys[-1]]["out_of_window_dropped"] += 1
        else:
            if (point, offset) in kept:
                figures[keys[offset // 300_000_000]]["duplicates_dropped"] += 1
            kept[(point, offset)] = (value, raw)
    expected = sorted(
        ((p, naive_start + timedelta(microseconds=o), v, r) for (p, o), (v, r) in kept.items()),
        key=lambda row: (row[1], row[0]),
    )
    for (_point, offset), (value, raw) in kept.items():
        f = figures[keys[offset // 300_000_000]]
        f["samples"] += 1
        f["null_values"] += value is None
        f["non_numeric_values"] += raw is not None
    for key in keys:
        start = (partition_start(key) - WINDOW.start) // timedelta(microseconds=1)
        figures[key]["points"] = len({p for p, o in kept if start <= o < start + 300_000_000})

    got = list(
        zip(*(result.samples.column(c).to_pylist() for c in SAMPLE_SCHEMA.names), strict=True)
    )
    assert got == expected
    assert {k: f.as_metadata() for k, f in result.partitions.items()} == figures
    assert result.samples.schema == SAMPLE_SCHEMA
    assert all(not (isinstance(v, float) and math.isnan(v)) for _, _, v, _ in got)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROWS, st.randoms(use_true_random=False), st.sampled_from([[5], [10], [5, 10]]))
def test_a_window_cleaned_in_sub_windows_is_the_window_cleaned_whole(rows, rng, cuts):
    # A run fetches its window in sub-windows and cleans each as it arrives: each sub-window's
    # fetch returns its rows with ACE's inclusive end (the row at a boundary comes twice), the
    # first and last also rows that leak outside the run's window. Put back together, the
    # samples and every partition's figures are those of the window cleaned whole.
    if rows:
        again = [rng.choice(rows) for _ in range(1 + len(rows) // 3)]
        rows = rows + [(p, o, (rng.random(), None)) for p, o, _ in again]
    rng.shuffle(rows)
    naive_start = WINDOW.start.replace(tzinfo=None)

    def table(part):
        points = pa.array([r[0] for r in part], pa.string()).dictionary_encode()
        return pa.table(
            {
                "point": points,
                "ts": pa.array([naive_start + timedelta(microseconds=r[1]) for r in part], pa.timestamp("us")),
                "value": pa.array([r[2][0] for r in part], pa.float64()),
                "raw_value": pa.array([r[2][1] for r in part], pa.string()),
            }
        )

    bounds = [0, *(c * 60_000_000 for c in cuts), SPAN_US]
    results = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        first, last = i == 0, i == len(bounds) - 2
        part = [r for r in rows if (first or r[1] >= lo) and (last or r[1] <= hi)]
        sub = Window(WINDOW.start + timedelta(microseconds=lo), WINDOW.start + timedelta(microseconds=hi))
        results.append(clean_window(table(part), sub, run_window=WINDOW))
    merged = merge_clean_results(results)
    whole = clean_window(table(rows), WINDOW)
    assert merged.samples.to_pylist() == whole.samples.to_pylist()
    assert {k: f.as_metadata() for k, f in merged.partitions.items()} == {
        k: f.as_metadata() for k, f in whole.partitions.items()
    }
