"""Window maths and the window rules (inside the window, one row per key), pure."""

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from vitals_pipeline.ace.parse import SAMPLE_SCHEMA
from vitals_pipeline.samples import clean_window
from vitals_pipeline.windows import Window, closed_window, floor_to_partition, partition_start, window_for_keys


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def test_window_keys_and_bounds():
    w = window_for_keys("2025-12-31-23:50", "2026-01-01-00:05")
    assert w == Window(utc(2025, 12, 31, 23, 50), utc(2026, 1, 1, 0, 10))
    assert w.partition_keys() == ["2025-12-31-23:50", "2025-12-31-23:55", "2026-01-01-00:00", "2026-01-01-00:05"]
    assert str(w) == "[2025-12-31-23:50, 2026-01-01-00:10)"


def test_bad_partition_keys_are_explained():
    with pytest.raises(ValueError, match="YYYY-MM-DD-HH:MM"):
        partition_start("2026-01-01T00:00")
    with pytest.raises(ValueError, match="5-minute"):
        partition_start("2026-01-01-00:03")


def test_closed_window_is_newest_closed_partition_plus_lookback():
    now = utc(2026, 3, 8, 7, 1, 30)
    assert floor_to_partition(now) == utc(2026, 3, 8, 7, 0)
    assert closed_window(now, timedelta(minutes=10)) == Window(utc(2026, 3, 8, 6, 45), utc(2026, 3, 8, 7, 0))


def _table(rows):
    return pa.table(
        {
            "point": [r[0] for r in rows],
            "ts": [r[1].replace(tzinfo=None) for r in rows],
            "value": [r[2] for r in rows],
            "raw_value": [r[3] if len(r) > 3 else None for r in rows],
        },
        schema=SAMPLE_SCHEMA,
    )


def test_clean_window_drops_outside_rows_and_duplicates_and_counts_per_partition():
    w = Window(utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 10))
    t0 = utc(2026, 1, 1, 0, 1, 0, 5)
    t1 = utc(2026, 1, 1, 0, 6, 0, 7)
    rows = [
        ("a", utc(2025, 12, 31, 23, 59, 59), 1.0),  # before the window
        ("a", t0, 0.0),
        ("b", t0, None, "NaN"),
        ("b", t0, None, "NaN"),  # duplicate across pages
        ("a", t1, 2.0),
        ("b", t1, None),
        ("a", utc(2026, 1, 1, 0, 10), 3.0),  # at the (exclusive) end
    ]
    result = clean_window(_table(rows), w)
    assert result.samples.num_rows == 4
    first, second = result.partitions["2026-01-01-00:00"], result.partitions["2026-01-01-00:05"]
    assert (first.samples, first.points, first.duplicates_dropped, first.out_of_window_dropped) == (2, 2, 1, 1)
    assert (first.null_values, first.non_numeric_values) == (1, 1)
    assert (second.samples, second.points, second.out_of_window_dropped, second.null_values) == (2, 2, 1, 1)
    assert result.samples.column("value").to_pylist() == [0.0, None, 2.0, None]


def test_clean_window_sorts_unordered_input_before_deduplicating():
    w = Window(utc(2026, 1, 1), utc(2026, 1, 1, 0, 5))
    t = utc(2026, 1, 1, 0, 1)
    rows = [("b", t, 1.0), ("a", t, 2.0), ("b", t, 9.0)]
    result = clean_window(_table(rows), w)
    assert result.samples.column("point").to_pylist() == ["a", "b"]
    assert result.samples.column("value").to_pylist() == [2.0, 9.0]  # the later copy wins
    assert result.duplicates_dropped == 1


def test_clean_window_of_nothing():
    w = Window(utc(2026, 1, 1), utc(2026, 1, 1, 0, 5))
    result = clean_window(SAMPLE_SCHEMA.empty_table(), w)
    assert result.samples.num_rows == 0 and result.partitions["2026-01-01-00:00"].samples == 0
