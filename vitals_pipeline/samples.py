"""Rules that make a run's samples storable: inside the window, one row per (point, ts).

Pure functions over Arrow tables (SAMPLE_SCHEMA), vectorised: a day of a big site is 6.48M rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vitals_pipeline.windows import PARTITION, Window

_US_PER_PARTITION = int(PARTITION.total_seconds() * 1_000_000)


@dataclass
class PartitionFigures:
    """What one 5-minute partition received in a run (Dagster shows these per partition)."""

    samples: int = 0
    points: int = 0
    null_values: int = 0
    non_numeric_values: int = 0
    duplicates_dropped: int = 0
    out_of_window_dropped: int = 0

    def as_metadata(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class CleanResult:
    samples: pa.Table
    partitions: dict[str, PartitionFigures] = field(default_factory=dict)

    @property
    def duplicates_dropped(self) -> int:
        return sum(p.duplicates_dropped for p in self.partitions.values())

    @property
    def out_of_window_dropped(self) -> int:
        return sum(p.out_of_window_dropped for p in self.partitions.values())


def _epoch_us(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False)


def _to_naive_us(t) -> int:
    return int(t.timestamp() * 1_000_000)


def clean_window(samples: pa.Table, window: Window, *, run_window: Window | None = None) -> CleanResult:
    """Keep rows inside `window`, one per (point, ts), ordered by (ts, point); count what went.

    - Rows outside [start, end) are dropped (ACE's end_time may be inclusive, a page may leak).
      They are counted on the window's first partition (before start) or last one (at/after end).
    - Duplicate (point, ts) rows are dropped keeping the last seen (the later page).

    With `run_window` (a run fetched in sub-windows, `window` being one of them, cleaned as it
    arrives), rows of another sub-window are dropped uncounted: that sub-window fetched them
    itself (ACE's inclusive end_time sends the row at a boundary to both). Rows outside the run's
    window are counted on the run's first or last partition, as for a window fetched whole;
    merge_clean_results puts the sub-windows back together.
    """
    keys = window.partition_keys()
    figures = {k: PartitionFigures() for k in keys}
    ts_us = _epoch_us(samples.column("ts")) if samples.num_rows else np.empty(0, np.int64)
    lo, hi = _to_naive_us(window.start), _to_naive_us(window.end)

    before, after = ts_us < lo, ts_us >= hi
    run = run_window or window
    run_keys = keys if run is window else run.partition_keys()
    run_lo, run_hi = _to_naive_us(run.start), _to_naive_us(run.end)
    for key, outside in ((run_keys[0], ts_us < run_lo), (run_keys[-1], ts_us >= run_hi)):
        if outside.any():
            figures.setdefault(key, PartitionFigures()).out_of_window_dropped += int(outside.sum())
    inside = ~(before | after)
    if not inside.all():
        samples = samples.filter(pa.array(inside))
        ts_us = ts_us[inside]

    codes, ranks = _point_codes(samples.column("point"))
    # ACE sends rows ordered by (time, name); sort only if a page broke that order.
    if samples.num_rows > 1 and not _sorted(ts_us, ranks):
        order = np.lexsort((ranks, ts_us))
        samples = samples.take(pa.array(order))
        ts_us, codes, ranks = ts_us[order], codes[order], ranks[order]

    # Sorted, so duplicates are neighbours: drop a row when the next one has the same key.
    if samples.num_rows > 1:
        same_next = (ts_us[:-1] == ts_us[1:]) & (codes[:-1] == codes[1:])
        if same_next.any():
            keep = np.append(~same_next, True)
            dup_part = (ts_us[:-1][same_next] - lo) // _US_PER_PARTITION
            for idx, n in zip(*np.unique(dup_part, return_counts=True), strict=True):
                figures[keys[int(idx)]].duplicates_dropped += int(n)
            samples = samples.filter(pa.array(keep))
            ts_us, codes = ts_us[keep], codes[keep]

    _count_per_partition(samples, ts_us, codes, lo, keys, figures)
    return CleanResult(samples=samples, partitions=figures)


def merge_clean_results(parts: list[CleanResult]) -> CleanResult:
    """The results of consecutive sub-windows (clean_window with run_window) as one: samples in
    (ts, point) order with one shared point dictionary, figures per partition added up."""
    if len(parts) == 1:
        return parts[0]
    figures: dict[str, PartitionFigures] = {}
    for part in parts:
        for key, f in part.partitions.items():
            total = figures.setdefault(key, PartitionFigures())
            for name, value in f.__dict__.items():
                setattr(total, name, getattr(total, name) + value)
    samples = pa.concat_tables([part.samples for part in parts])
    if pa.types.is_dictionary(samples.schema.field("point").type):
        samples = samples.unify_dictionaries()
    return CleanResult(samples=samples.combine_chunks(), partitions=dict(sorted(figures.items())))


def _point_codes(points: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(code, sort rank) of each row's point name, from a dictionary or a string column."""
    flat = points.combine_chunks() if isinstance(points, pa.ChunkedArray) else points
    if not pa.types.is_dictionary(flat.type):
        flat = pc.dictionary_encode(flat)
    # int32 (Arrow's dictionary indices): a day of a big site is 6.48M rows, 26 MB an array.
    codes = flat.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    rank_of_code = np.empty(len(flat.dictionary), np.int32)
    rank_of_code[pc.sort_indices(flat.dictionary).to_numpy()] = np.arange(len(flat.dictionary), dtype=np.int32)
    return codes, rank_of_code[codes] if len(codes) else codes


def _sorted(ts_us: np.ndarray, ranks: np.ndarray) -> bool:
    step = np.diff(ts_us)
    if (step < 0).any():
        return False
    ties = step == 0
    return bool((np.diff(ranks)[ties] >= 0).all())


def _count_per_partition(
    samples: pa.Table, ts_us: np.ndarray, codes: np.ndarray, lo: int, keys: list[str], figures: dict
) -> None:
    if not samples.num_rows:
        return
    n = len(keys)
    part = ((ts_us - lo) // _US_PER_PARTITION).astype(np.int32 if n < 2**31 else np.int64)
    samples_per = np.bincount(part, minlength=n)
    null_mask = pc.is_null(samples.column("value")).to_numpy(zero_copy_only=False)
    null_per = np.bincount(part[null_mask], minlength=n)
    text_mask = pc.is_valid(samples.column("raw_value")).to_numpy(zero_copy_only=False)
    text_per = np.bincount(part[text_mask], minlength=n)
    # A partitions x points presence grid (288 x 4,500 for a day): O(rows), no sort.
    distinct = int(codes.max()) + 1
    cell_type = np.int32 if n * distinct < 2**31 else np.int64
    present = np.bincount(
        part.astype(cell_type) * distinct + codes, minlength=n * distinct
    ).reshape(n, distinct)
    points_per = (present > 0).sum(axis=1)
    for i, key in enumerate(keys):
        f = figures[key]
        f.samples = int(samples_per[i])
        f.points = int(points_per[i])
        f.null_values = int(null_per[i])
        f.non_numeric_values = int(text_per[i])
