"""Per-point, per-partition quality of a run's window: the rows of `<site>.quality`, and the
per-point and per-device facts the checks report.

`assess_window` (in a run: specs.read_quality_inputs, then `judge` while the samples are being
inserted) reads the store as it was before the run, so that its rows can be merged in the same
transaction. It judges what the table WILL hold for the window once the run's rows are merged:
the run's rows plus the stored rows of the window the run did not re-fetch (the merge keeps
those). A bounded stretch of stored history before the window (`history_span`: the flatline and
staleness windows, or longer for points whose outage rule needs it) gives the rolling rules their
context. Rows are counted into a dense points x partitions grid with numpy (a day of a
4,500-point site: 6.48M samples into 1.4M cells), rolling windows run along the grid's time axis,
and every cell is judged at once.

Rules per point and partition (window [P, P + 5 min)):
- expected: 300 / collect_interval samples (fractional when the interval is longer than the
  partition); NULL for cov, disabled or interval-less points.
- actual: samples stored in the partition (null/NaN/text ones included: they arrived).
- missing: interval <= 5 min: max(expected - actual, 0). Longer intervals: the partition's share
  (expected) when no sample arrived in the interval before the partition's end, else 0; so a
  day's sum is right for every interval.
- flatline: a sensor with a flat tolerance (temperature, humidity, pressure; not setpoints or
  commands) whose readings over the trailing `flatline_minutes` stayed within the tolerance, with
  readings from the start of that window on.
- down: a sampled point with no sample for `down_after_missed` intervals at the partition's end.
- fault: null/NaN/text values, sentinels, values outside the physical range, a flat sensor, or
  completeness (1 - missing / expected) below the ERROR threshold.
- unknown: a point the points table does not know, or a cov point with no sample in the history.
- ok: otherwise.
A device is stale in a partition when it is silent (no sample from any of its points for
`device_silent_minutes`, or `down_after_missed` of its shortest interval if longer) or frozen
(at least two live sensors, all exactly unchanged for `stale_device_minutes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vitals_pipeline.checks.rules import DOWN, FAULT, OK, POINT_RULES_SCHEMA, UNKNOWN
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.storage.duckdb_io import table_exists
from vitals_pipeline.storage.lens import need
from vitals_pipeline.storage.schema import quote_identifier as _q
from vitals_pipeline.windows import PARTITION, Window, partition_key

QUALITY_TABLE = "quality"
QUALITY_MERGE_KEYS: tuple[str, ...] = ("point", "window_start")
QUALITY_TIME_COLUMN = "window_start"
QUALITY_SCHEMA = pa.schema(
    [
        ("window_start", pa.timestamp("us")),  # the partition's start, naive UTC
        ("point", pa.string()),
        ("device", pa.string()),
        ("expected", pa.float64()),
        ("actual", pa.int64()),
        ("missing", pa.float64()),
        ("nulls", pa.int64()),  # value NULL: JSON null, NaN, +-inf, text
        ("non_numeric", pa.int64()),  # of which text
        ("sentinels", pa.int64()),
        ("out_of_range", pa.int64()),
        ("flatline", pa.bool_()),
        ("last_seen", pa.timestamp("us")),  # newest sample at or before the partition's end
        ("status", pa.string()),  # ok | fault | down | unknown
        ("reason", pa.string()),  # why, for a person; NULL when there is nothing to say
    ]
)
# Per point, over the run's window: what the checks report (the point's rules, then figures).
POINT_SUMMARY_SCHEMA = pa.schema(
    [
        *(POINT_RULES_SCHEMA.field(name) for name in (
            "point", "device", "unit", "role", "interval_s", "range_lo", "range_hi", "flat_tolerance",
        )),
        ("configured", pa.bool_()),
        ("expected", pa.float64()),
        ("missing", pa.float64()),
        ("actual", pa.int64()),
        ("nulls", pa.int64()),
        ("non_numeric", pa.int64()),
        ("sentinels", pa.int64()),
        ("out_of_range", pa.int64()),
        ("flat_partitions", pa.int64()),
        ("flat_value", pa.float64()),  # the flat reading, at the last flagged partition
        ("flat_since", pa.timestamp("us")),  # first reading of the first flagged flat hour
        ("last_seen", pa.timestamp("us")),  # at the window's end
        ("bad_ts", pa.timestamp("us")),  # the first null/NaN/text/sentinel reading
        ("bad_raw", pa.string()),  # its wire value
        ("oor_ts", pa.timestamp("us")),  # the first out-of-range reading
        ("oor_min", pa.float64()),
        ("oor_max", pa.float64()),
    ]
)
DEVICE_SUMMARY_SCHEMA = pa.schema(
    [
        ("device", pa.string()),
        ("points", pa.int64()),
        ("stale_partitions", pa.int64()),
        ("silent_partitions", pa.int64()),
        ("frozen_partitions", pa.int64()),
        ("first_stale", pa.timestamp("us")),  # the first stale partition's start
        ("last_seen", pa.timestamp("us")),  # the device's newest sample at the window's end
    ]
)
# History is never read further back than this, whatever a point's interval.
MAX_HISTORY = timedelta(days=1)
_NAN_OR_INF = r"(?i)^\s*[+-]?(nan|inf|infinity)\s*$"
_US = 1_000_000
_PARTITION_S = int(PARTITION.total_seconds())
_PARTITION_US = _PARTITION_S * _US
_EPOCH = datetime(1970, 1, 1)
_TS_MIN = np.iinfo(np.int64).min
_TS_MAX = np.iinfo(np.int64).max
_STATUS_NAMES = np.array([OK, FAULT, DOWN, UNKNOWN], dtype=object)
_S_OK, _S_FAULT, _S_DOWN, _S_UNKNOWN = range(4)


@dataclass(frozen=True)
class QualityAssessment:
    """The quality of a run's window.

    rows: the `<site>.quality` rows (QUALITY_SCHEMA, strings dictionary-encoded), by point then
      window_start.
    points: one row per point over the window (POINT_SUMMARY_SCHEMA).
    devices: one row per configured device (DEVICE_SUMMARY_SCHEMA).
    partition_figures: per partition key, the site's figures for the materialization metadata.
    kept_keys: distinct (point, ts) stored in the window before the run that the run did not
      re-fetch (the merge keeps them): the stored window must then hold run rows + kept_keys.
    """

    rows: pa.Table
    points: pa.Table
    devices: pa.Table
    points_known: bool
    history_start: datetime  # naive UTC
    partition_figures: dict[str, dict] = field(default_factory=dict)
    kept_keys: int = 0


def history_span(rules: pa.Table, thresholds: QualityThresholds) -> timedelta:
    """How much stored history before the window the rolling rules need, in whole partitions."""
    need = max(
        thresholds.flatline_minutes, thresholds.stale_device_minutes, thresholds.device_silent_minutes
    ) * 60
    intervals = [i for i in rules.column("interval_s").to_pylist() if i]
    if intervals:
        need = max(need, thresholds.down_after_missed * max(intervals))
    need = min(need, int(MAX_HISTORY.total_seconds()))
    return timedelta(seconds=-(-need // _PARTITION_S) * _PARTITION_S)


def naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def _us(t: datetime) -> int:
    delta = naive(t) - _EPOCH
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def stored_rows(
    conn: duckdb.DuckDBPyConnection, schema: str, samples: pa.Table, window: Window, span: timedelta
) -> tuple[pa.Table | None, pa.Table | None, int]:
    """(stored rows of the window the run lacks, the stored history [start - span, start) as
    per-(point, partition) aggregates (point, slot, n_values, vmin, vmax, first_us, last_us;
    slot counted from start - span), distinct keys among the former), read with bounded
    predicates; (None, None, 0) without a table.

    Only the rolling rules look at the history, and they need per-partition readings, extremes
    and first/last times, so DuckDB aggregates it (a big site's 2 h are 540,000 rows)."""
    if not table_exists(conn, schema, "timeseries"):
        return None, None, 0
    table = f"{_q(schema)}.{_q('timeseries')}"
    start, end = naive(window.start), naive(window.end)
    need(conn, schema, "timeseries", "ts", start - span, end)
    history = conn.sql(
        f"SELECT point, CAST((epoch_us(ts) - epoch_us($hstart)) // {_PARTITION_US} AS BIGINT) AS slot, "
        f"count(value) AS n_values, min(value) AS vmin, max(value) AS vmax, "
        f"epoch_us(min(ts)) AS first_us, epoch_us(max(ts)) AS last_us "
        f"FROM {table} WHERE ts >= $hstart AND ts < $start GROUP BY ALL",
        params={"start": start, "hstart": start - span},
    ).to_arrow_table()
    has_window_rows = conn.sql(
        f"SELECT 1 FROM {table} WHERE ts >= $start AND ts < $end LIMIT 1",
        params={"start": start, "end": end},
    ).fetchall()
    if not has_window_rows:
        return None, history, 0
    view, kept_view = "_quality_run_keys", "_quality_kept_rows"
    conn.register(view, samples.select(["point", "ts"]))
    try:
        kept = conn.sql(
            f"SELECT t.point, t.ts, t.value, t.raw_value FROM {table} AS t "
            f"ANTI JOIN {view} AS r ON r.point = t.point AND r.ts = t.ts "
            f"WHERE t.ts >= $start AND t.ts < $end",
            params={"start": start, "end": end},
        ).to_arrow_table()
    finally:
        conn.unregister(view)
    conn.register(kept_view, kept)
    try:
        keys = conn.sql(f"SELECT count(DISTINCT (point, ts)) FROM {kept_view}").fetchall()[0][0]
    finally:
        conn.unregister(kept_view)
    return kept, history, int(keys)


def assess_window(
    conn: duckdb.DuckDBPyConnection,
    *,
    schema: str,
    samples: pa.Table,
    window: Window,
    rules: pa.Table,
    thresholds: QualityThresholds,
) -> QualityAssessment:
    """The quality of every partition of `window` (see the module docstring).

    `conn` sees the site's stored `<schema>.timeseries` (if any); `samples` are the run's cleaned
    rows for the window; `rules` are rules.point_rules() of the configured points (empty when the
    points table is missing: then every point is judged on its values only).
    """
    span = history_span(rules, thresholds)
    kept, history, kept_keys = stored_rows(conn, schema, samples, window, span)
    window_parts = [samples] + ([kept] if kept is not None and kept.num_rows else [])
    return judge(
        window_parts=window_parts, history=history, window=window, span=span, rules=rules,
        thresholds=thresholds, kept_keys=kept_keys,
    )


# ---------------------------------------------------------------------------------------------
# The grid


@dataclass
class _Rows:
    """The window's samples as flat numpy arrays."""

    cell: np.ndarray  # point code * slots + partition slot
    code: np.ndarray
    ts: np.ndarray  # epoch microseconds
    value: np.ndarray  # NaN when NULL
    raw: pa.ChunkedArray  # the wire string when value is NULL, else NULL


def _point_codes(column: pa.ChunkedArray | pa.Array, names: pa.Array) -> np.ndarray:
    """Index of each row's point in `names` (-1 when absent); dictionary columns stay cheap."""
    flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(flat.type):
        per_entry = pc.fill_null(pc.index_in(flat.dictionary, value_set=names), -1).to_numpy()
        indices = flat.indices.to_numpy(zero_copy_only=False)
        return per_entry.astype(np.int64)[indices] if len(indices) else np.empty(0, np.int64)
    return pc.fill_null(pc.index_in(flat, value_set=names), -1).to_numpy().astype(np.int64)


def _distinct_points(parts: list[pa.Table]) -> set[str]:
    seen: set[str] = set()
    for part in parts:
        if part.num_rows:
            col = part.column("point").combine_chunks()
            if pa.types.is_dictionary(col.type):
                col = col.dictionary.take(pc.unique(col.indices))
            seen.update(pc.unique(col).to_pylist())
    seen.discard(None)
    return seen


def _flatten(parts: list[pa.Table], names: pa.Array, hstart_us: int, slots: int) -> _Rows:
    codes, ts, values, raws = [], [], [], []
    for part in parts:
        if part is None or not part.num_rows:
            continue
        codes.append(_point_codes(part.column("point"), names))
        ts.append(pc.cast(part.column("ts"), pa.int64()).to_numpy())
        values.append(part.column("value").to_numpy().astype(np.float64, copy=False))
        raws.extend(pc.cast(part.column("raw_value"), pa.string()).chunks)
    if not codes:
        empty = np.empty(0, np.int64)
        return _Rows(empty, empty, empty, np.empty(0), pa.chunked_array([], pa.string()))
    code = np.concatenate(codes) if len(codes) > 1 else codes[0]
    t = np.concatenate(ts) if len(ts) > 1 else ts[0]
    value = np.concatenate(values) if len(values) > 1 else values[0]
    raw = pa.chunked_array(raws, pa.string())
    if (code < 0).any():  # cannot happen (names come from the window and the config): be safe
        keep = code >= 0
        code, t, value = code[keep], t[keep], value[keep]
        raw = raw.filter(pa.array(keep))
    cell = code * slots + (t - hstart_us) // _PARTITION_US
    return _Rows(cell, code, t, value, raw)


def _shift(matrix: np.ndarray, d: int, fill) -> np.ndarray:
    """The matrix moved d cells later along time (the first d cells filled)."""
    out = np.empty_like(matrix)
    out[:, :d] = fill
    out[:, d:] = matrix[:, :-d] if d else matrix
    return out


def _rolling(matrix: np.ndarray, k: int, op, fill) -> np.ndarray:
    """op (np.minimum / np.maximum) over the trailing k cells along time, by doubling spans."""
    result, span, power = None, 0, matrix
    width = 1
    remaining = k
    while remaining:
        if remaining & 1:
            part = _shift(power, span, fill) if span else power
            result = part if result is None else op(result, part)
            span += width
        remaining >>= 1
        if remaining:
            power = op(power, _shift(power, width, fill))
            width *= 2
    return result


def _rolling_sum(matrix: np.ndarray, k: int) -> np.ndarray:
    total = np.cumsum(matrix, axis=1)
    return total - _shift(total, k, 0) if k < matrix.shape[1] else total


def judge(
    *,
    window_parts: list[pa.Table],
    history: pa.Table | None,
    window: Window,
    span: timedelta,
    rules: pa.Table,
    thresholds: QualityThresholds,
    kept_keys: int = 0,
) -> QualityAssessment:
    """Judge every (point, partition) of `window`.

    window_parts: the window's rows (the run's and the stored ones it did not re-fetch);
    history: the stored history before the window, aggregated per point and slot (see
    stored_rows), or None.
    """
    t = thresholds
    start_us, end_us = _us(window.start), _us(window.end)
    hstart_us = start_us - int(span.total_seconds()) * _US
    slots = (end_us - hstart_us) // _PARTITION_US
    h = slots - (end_us - start_us) // _PARTITION_US  # history slots before the window
    w = slots - h

    # Points: the configured ones, then any other point the window holds, by name.
    configured = rules.column("point").to_pylist()
    extra = sorted(_distinct_points(window_parts) - set(configured))
    order = np.array(sorted(range(len(configured)), key=configured.__getitem__), dtype=np.int64)
    names = pa.array([configured[i] for i in order] + extra, pa.string())
    n = len(names)
    n_conf = len(configured)

    def per_point(column: str, fill, dtype) -> np.ndarray:
        out = np.full(n, fill, dtype=dtype)
        if n_conf:
            known = rules.column(column).take(pa.array(order))
            if dtype is np.float64:
                known = known.cast(pa.float64())
            if fill is not None:
                known = pc.fill_null(known, fill)
            out[:n_conf] = known.to_numpy(zero_copy_only=False)
        return out

    interval = per_point("interval_s", np.nan, np.float64)
    lo = per_point("range_lo", np.nan, np.float64)
    hi = per_point("range_hi", np.nan, np.float64)
    tol = per_point("flat_tolerance", np.nan, np.float64)
    sensor = per_point("sensor", False, bool)
    device = per_point("device", None, object)
    unit = per_point("unit", None, object)
    role = per_point("role", None, object)
    configured_mask = np.arange(n) < n_conf

    rf = _row_figures(
        window_parts, names=names, hstart_us=hstart_us, slots=slots, start_us=start_us, lo=lo,
        hi=hi, sentinels=np.asarray(t.sentinels, np.float64),
    )
    actual_all = rf.actual.reshape(n, slots)
    nulls_all = rf.nulls.reshape(n, slots)
    n_values = actual_all - nulls_all  # readings (sentinels included: a fault of their own)
    actual, nulls = actual_all[:, h:], nulls_all[:, h:]
    non_numeric = rf.non_numeric.reshape(n, slots)[:, h:]
    sentinels = rf.sentinels.reshape(n, slots)[:, h:]
    out_of_range = rf.out_of_range.reshape(n, slots)[:, h:]
    vmin, vmax, first, last = rf.vmin, rf.vmax, rf.first, rf.last
    if history is not None and history.num_rows:
        # History cells come aggregated (one row per point and slot, before the window's slots).
        code = _point_codes(history.column("point"), names)
        known = code >= 0
        cells = code[known] * slots + history.column("slot").to_numpy()[known]
        hist_values = history.column("n_values").to_numpy()[known]
        n_values = n_values.ravel()
        n_values[cells] = hist_values
        n_values = n_values.reshape(n, slots)
        seen_values = hist_values > 0
        vmin[cells[seen_values]] = history.column("vmin").to_numpy(zero_copy_only=False)[known][seen_values]
        vmax[cells[seen_values]] = history.column("vmax").to_numpy(zero_copy_only=False)[known][seen_values]
        first[cells] = history.column("first_us").to_numpy()[known]
        last[cells] = history.column("last_us").to_numpy()[known]
    vmin, vmax = vmin.reshape(n, slots), vmax.reshape(n, slots)
    first, last = first.reshape(n, slots), last.reshape(n, slots)

    # Rolling context along time (history columns included), then the window's columns.
    k_flat = t.flatline_minutes * 60 // _PARTITION_S
    last_seen = np.maximum.accumulate(last, axis=1)[:, h:]
    flat_min = _rolling(vmin, k_flat, np.minimum, np.inf)[:, h:]
    flat_max = _rolling(vmax, k_flat, np.maximum, -np.inf)[:, h:]
    flat_n = _rolling_sum(n_values, k_flat)[:, h:]
    flat_first = _rolling(first, k_flat, np.minimum, _TS_MAX)[:, h:]
    window_start = start_us + np.arange(w, dtype=np.int64) * _PARTITION_US
    window_end = window_start + _PARTITION_US
    seen = last_seen != _TS_MIN

    iv = interval[:, None]
    sampled = ~np.isnan(iv)
    iv_us = np.where(sampled, np.nan_to_num(iv), 0).astype(np.int64) * _US
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.broadcast_to(_PARTITION_S / iv, (n, w))
        recent = last_seen >= window_end - iv_us
        missing = np.where(
            ~sampled,
            np.nan,
            np.where(iv <= _PARTITION_S, np.maximum(expected - actual, 0.0), np.where(recent, 0.0, expected)),
        )
        cover_us = np.maximum(iv_us, _PARTITION_US)
        flatline = (
            (flat_max - flat_min <= tol[:, None])
            & sampled
            & (flat_n >= 3)
            & (flat_first <= window_end - t.flatline_minutes * 60 * _US + cover_us)
        )
        outage_us = t.down_after_missed * iv_us
        down = sampled & np.where(seen, last_seen < window_end - outage_us, outage_us <= start_us - hstart_us)
        incomplete = missing > expected * (1 - t.completeness_error_pct / 100) + 1e-9
    fault = (nulls > 0) | (sentinels > 0) | (out_of_range > 0) | flatline | incomplete
    status = np.zeros((n, w), np.int8)
    status[~configured_mask[:, None] | (~sampled & ~seen)] = _S_UNKNOWN
    status[fault] = _S_FAULT
    status[down] = _S_DOWN

    # Rows by point, then window_start: the grid in its own (C) order. Strings are dictionary
    # encoded (one entry per point, status or sentence): DuckDB stores them as VARCHAR.
    point_idx = pa.array(np.repeat(np.arange(n, dtype=np.int32), w))
    ts_type = pa.timestamp("us")
    device_names, device_idx = np.unique(np.where(device == None, "", device).astype(str), return_inverse=True)  # noqa: E711
    device_dict = pa.DictionaryArray.from_arrays(
        pa.array(np.repeat(device_idx.astype(np.int32), w), mask=np.repeat(device == None, w)),  # noqa: E711
        pa.array(device_names.tolist(), pa.string()),
    )

    def timestamps(us: np.ndarray, valid: np.ndarray) -> pa.Array:
        return pa.array(us.ravel(), pa.int64(), mask=~valid.ravel()).cast(ts_type)

    missing_flat = missing.ravel()
    rows = pa.table(
        {
            "window_start": pa.array(np.tile(window_start, n), pa.int64()).cast(ts_type),
            "point": pa.DictionaryArray.from_arrays(point_idx, names),
            "device": device_dict,
            "expected": pa.array(np.repeat(_PARTITION_S / interval, w), pa.float64(), from_pandas=True),
            "actual": pa.array(actual.ravel(), pa.int64()),
            "missing": pa.array(missing_flat, pa.float64(), from_pandas=True),
            "nulls": pa.array(nulls.ravel(), pa.int64()),
            "non_numeric": pa.array(non_numeric.ravel(), pa.int64()),
            "sentinels": pa.array(sentinels.ravel(), pa.int64()),
            "out_of_range": pa.array(out_of_range.ravel(), pa.int64()),
            "flatline": pa.array(flatline.ravel(), pa.bool_()),
            "last_seen": timestamps(last_seen, seen),
            "status": pa.DictionaryArray.from_arrays(
                pa.array(status.ravel().astype(np.int32)), pa.array(_STATUS_NAMES.tolist(), pa.string())
            ),
            "reason": _reasons(
                    down=down, seen=seen, last_seen=last_seen, expected=expected, missing=missing,
                    nulls=nulls, non_numeric=non_numeric, sentinels=sentinels,
                    out_of_range=out_of_range, flatline=flatline, flat_min=flat_min, lo=lo, hi=hi,
                    unit=unit, configured=configured_mask, history_start=_dt(hstart_us), t=t,
            ),
        },
    )

    # Per point, over the window.
    flagged = flatline.any(axis=1)
    first_flag = np.argmax(flatline, axis=1)
    last_flag = w - 1 - np.argmax(flatline[:, ::-1], axis=1)
    rows_idx = np.arange(n)
    examples = rf.examples()
    points = pa.table(
        {
            "point": names,
            "device": pa.array(device, pa.string()),
            "unit": pa.array(unit, pa.string()),
            "role": pa.array(role, pa.string()),
            "interval_s": pa.array(interval, pa.float64(), from_pandas=True).cast(pa.int64()),
            "range_lo": pa.array(lo, pa.float64(), from_pandas=True),
            "range_hi": pa.array(hi, pa.float64(), from_pandas=True),
            "flat_tolerance": pa.array(tol, pa.float64(), from_pandas=True),
            "configured": pa.array(configured_mask),
            "expected": pa.array(np.where(sampled[:, 0], expected.sum(axis=1), np.nan), pa.float64(), from_pandas=True),
            "missing": pa.array(
                np.where(sampled[:, 0], np.nansum(missing, axis=1), np.nan), pa.float64(), from_pandas=True
            ),
            "actual": pa.array(actual.sum(axis=1), pa.int64()),
            "nulls": pa.array(nulls.sum(axis=1), pa.int64()),
            "non_numeric": pa.array(non_numeric.sum(axis=1), pa.int64()),
            "sentinels": pa.array(sentinels.sum(axis=1), pa.int64()),
            "out_of_range": pa.array(out_of_range.sum(axis=1), pa.int64()),
            "flat_partitions": pa.array(flatline.sum(axis=1), pa.int64()),
            "flat_value": pa.array(flat_min[rows_idx, last_flag], pa.float64(), mask=~flagged),
            "flat_since": timestamps(flat_first[rows_idx, first_flag], flagged),
            "last_seen": timestamps(last_seen[:, -1], seen[:, -1]),
            **examples,
        },
        schema=POINT_SUMMARY_SCHEMA,
    )

    devices = _devices(
        device=device, configured=configured_mask, sampled=sampled[:, 0], interval=interval,
        sensor=sensor, down=down, last_seen=last_seen, seen=seen, vmin=vmin, vmax=vmax,
        n_values=n_values, first=first, h=h, window_start=window_start, history_us=start_us - hstart_us,
        t=t,
    )
    figures = _partition_figures(window_start, expected, missing, actual, nulls, sampled)
    return QualityAssessment(
        rows=rows,
        points=points,
        devices=devices,
        points_known=rules.num_rows > 0,
        history_start=_dt(hstart_us),
        partition_figures=figures,
        kept_keys=kept_keys,
    )


def _devices(*, device, configured, sampled, interval, sensor, down, last_seen, seen, vmin, vmax,
             n_values, first, h, window_start, history_us, t) -> pa.Table:
    """Per configured device: partitions in which it was silent or frozen (module docstring)."""
    known = configured & (device != None)  # noqa: E711 - elementwise on an object array
    if not known.any():
        return DEVICE_SUMMARY_SCHEMA.empty_table()
    labels, dev = np.unique(device[known].astype(str), return_inverse=True)
    # Points grouped by device (sorted), so per-device reductions are reduceat over row blocks.
    by_device = np.argsort(dev, kind="stable")
    idx = np.flatnonzero(known)[by_device]
    dev = dev[by_device]
    starts = np.flatnonzero(np.r_[True, dev[1:] != dev[:-1]])
    window_end = window_start + _PARTITION_US

    dev_last = np.maximum.reduceat(np.where(seen[idx], last_seen[idx], _TS_MIN), starts, axis=0)
    min_interval = np.fmin.reduceat(np.where(sampled[idx], interval[idx], np.inf), starts)
    has_sampled = np.isfinite(min_interval)
    silent_us = np.where(
        has_sampled,
        np.maximum(t.device_silent_minutes * 60, t.down_after_missed * np.where(has_sampled, min_interval, 0)),
        0,
    ).astype(np.int64) * _US
    dev_seen = dev_last != _TS_MIN
    silent = has_sampled[:, None] & np.where(
        dev_seen,
        dev_last < window_end - silent_us[:, None],
        silent_us[:, None] <= history_us + (window_end - window_start[0]),
    )

    # Frozen: every live sensor exactly unchanged over the stale window, at least two of them.
    live = (sensor[idx] & sampled[idx])[:, None] & ~down[idx]
    unchanged = np.zeros_like(live)
    rows = np.flatnonzero(live.any(axis=1))  # the rolling windows only for live sensors
    if len(rows):
        k = t.stale_device_minutes * 60 // _PARTITION_S
        src = idx[rows]
        stale_min = _rolling(vmin[src], k, np.minimum, np.inf)[:, h:]
        stale_max = _rolling(vmax[src], k, np.maximum, -np.inf)[:, h:]
        stale_n = _rolling_sum(n_values[src], k)[:, h:]
        stale_first = _rolling(first[src], k, np.minimum, _TS_MAX)[:, h:]
        cover = np.maximum(np.nan_to_num(interval[src], nan=0) * _US, _PARTITION_US).astype(np.int64)[:, None]
        unchanged[rows] = (
            live[rows] & (stale_n >= 2) & (stale_max == stale_min)
            & (stale_first <= window_end - t.stale_device_minutes * 60 * _US + cover)
        )
    live_count = np.add.reduceat(live.astype(np.int64), starts, axis=0)
    unchanged_count = np.add.reduceat(unchanged.astype(np.int64), starts, axis=0)
    frozen = (live_count >= 2) & (unchanged_count == live_count)
    stale = silent | frozen
    any_stale = stale.any(axis=1)
    first_stale = window_start[np.argmax(stale, axis=1)]
    return pa.table(
        {
            "device": pa.array(labels.tolist(), pa.string()),
            "points": pa.array(np.diff(np.r_[starts, len(dev)]), pa.int64()),
            "stale_partitions": pa.array(stale.sum(axis=1), pa.int64()),
            "silent_partitions": pa.array(silent.sum(axis=1), pa.int64()),
            "frozen_partitions": pa.array(frozen.sum(axis=1), pa.int64()),
            "first_stale": pa.array(first_stale, pa.int64(), mask=~any_stale).cast(pa.timestamp("us")),
            "last_seen": pa.array(dev_last[:, -1], pa.int64(), mask=~dev_seen[:, -1]).cast(pa.timestamp("us")),
        },
        schema=DEVICE_SUMMARY_SCHEMA,
    )


def _reasons(*, down, seen, last_seen, expected, missing, nulls, non_numeric, sentinels,
             out_of_range, flatline, flat_min, lo, hi, unit, configured, history_start, t) -> pa.Array:
    """A short sentence per row with something to say (NULL otherwise), grid order."""
    with np.errstate(invalid="ignore"):
        figures = (
            down | (np.nan_to_num(missing) > 0) | (nulls > 0) | (sentinels > 0)
            | (out_of_range > 0) | flatline
        )
    n, w = down.shape
    unconfigured = np.broadcast_to(~configured[:, None], (n, w))
    texts: dict[str, int] = {}
    indices = np.zeros(n * w, np.int32)
    # Cells whose only remark is the missing points-table entry share one text, set at once
    # (a day of a site whose points were never loaded: 1.3M cells, 4 s in the loop below).
    bare = np.flatnonzero(unconfigured & ~figures)
    if bare.size:
        indices[bare] = texts.setdefault("not in the points table", len(texts))
    cells = np.flatnonzero(figures)
    for cell in cells.tolist():
        p, s = divmod(cell, w)
        parts = []
        if down[p, s]:
            since = _dt(last_seen[p, s]) if seen[p, s] else history_start
            parts.append(f"no sample since {since:%Y-%m-%d %H:%M:%S} UTC")
        elif missing[p, s] > 0:
            parts.append(f"{missing[p, s]:.3g} of {expected[p, s]:.3g} expected samples missing")
        if nulls[p, s] > non_numeric[p, s]:
            parts.append(f"{nulls[p, s] - non_numeric[p, s]} null/NaN/inf values")
        if non_numeric[p, s]:
            parts.append(f"{non_numeric[p, s]} non-numeric values")
        if sentinels[p, s]:
            parts.append(f"{sentinels[p, s]} sentinel values")
        if out_of_range[p, s]:
            parts.append(
                f"{out_of_range[p, s]} values outside {lo[p]:.4g}..{hi[p]:.4g} {unit[p] or ''}".rstrip()
            )
        if flatline[p, s]:
            parts.append(f"flat at {flat_min[p, s]:.4g} for {t.flatline_minutes} min")
        if not configured[p]:
            parts.append("not in the points table")
        indices[cell] = texts.setdefault("; ".join(parts), len(texts))
    valid = np.zeros(n * w, bool)
    valid[cells] = True
    valid[bare] = True
    return pa.DictionaryArray.from_arrays(
        pa.array(indices, mask=~valid), pa.array(list(texts), pa.string())
    )


def _partition_figures(window_start, expected, missing, actual, nulls, sampled) -> dict:
    """Site figures per partition key: completeness_pct (sampled points), points_reporting,
    null_pct (numbers Dagster plots over time; every key costs a little on each of a range
    run's materialization events, so only these)."""
    exp = np.where(sampled, expected, 0.0).sum(axis=0)
    miss = np.where(sampled, np.nan_to_num(missing), 0.0).sum(axis=0)
    samples = actual.sum(axis=0)
    null_count = nulls.sum(axis=0)
    reporting = (actual > 0).sum(axis=0)
    figures = {}
    for i, start in enumerate(window_start.tolist()):
        entry: dict[str, float | int] = {
            "points_reporting": int(reporting[i]),
            "null_pct": round(100.0 * float(null_count[i]) / float(samples[i]), 3) if samples[i] else 0.0,
        }
        if exp[i] > 0:
            entry["completeness_pct"] = round(100.0 * (1 - float(miss[i]) / float(exp[i])), 3)
        figures[partition_key(_dt(start).replace(tzinfo=UTC))] = entry
    return figures


# Rows are counted in chunks: a day of a 4,500-point site is 6.48M rows, and a dozen per-row
# temporaries over all of them at once cost ~400 MB of peak memory (chunks of 262,144 rows:
# ~25 MB, which matters now that the grid is computed while the samples are being stored).
ROW_CHUNK = 1 << 18


@dataclass
class _RowFigures:
    """What the window's rows add up to: per-cell counts and extremes (flat grids), and per point
    the first bad reading and the out-of-range readings (the columns of POINT_SUMMARY_SCHEMA)."""

    actual: np.ndarray
    nulls: np.ndarray
    non_numeric: np.ndarray
    sentinels: np.ndarray
    out_of_range: np.ndarray
    vmin: np.ndarray  # fmin/fmax skip NaN (the nulls)
    vmax: np.ndarray
    first: np.ndarray
    last: np.ndarray
    bad_ts: np.ndarray
    bad_raw: list
    oor_ts: np.ndarray
    oor_min: np.ndarray
    oor_max: np.ndarray

    @classmethod
    def empty(cls, n: int, size: int) -> _RowFigures:
        def zeros():
            return np.zeros(size, np.int64)

        return cls(
            actual=zeros(), nulls=zeros(), non_numeric=zeros(), sentinels=zeros(),
            out_of_range=zeros(), vmin=np.full(size, np.inf), vmax=np.full(size, -np.inf),
            first=np.full(size, _TS_MAX), last=np.full(size, _TS_MIN), bad_ts=np.full(n, _TS_MAX),
            bad_raw=[None] * n, oor_ts=np.full(n, _TS_MAX), oor_min=np.full(n, np.inf),
            oor_max=np.full(n, -np.inf),
        )

    def add(self, r: _Rows, *, start_us: int, lo: np.ndarray, hi: np.ndarray, sentinels: np.ndarray) -> None:
        def count(into: np.ndarray, cells: np.ndarray) -> None:
            # ufunc.at costs per row counted; bincount(minlength=...) per cell of the whole grid
            # (~1.4M for a day), which a chunk's few nulls would pay for in full.
            np.add.at(into, cells, 1)

        isnull = np.isnan(r.value)
        sentinel = np.isin(r.value, sentinels)
        with np.errstate(invalid="ignore"):
            outside = ((r.value < lo[r.code]) | (r.value > hi[r.code])) & ~sentinel
        has_raw = pc.is_valid(r.raw).to_numpy(zero_copy_only=False)
        text = has_raw
        if has_raw.any():
            spelled = pc.match_substring_regex(r.raw.filter(pa.array(has_raw)), _NAN_OR_INF)
            text = has_raw.copy()
            text[np.flatnonzero(has_raw)] = ~spelled.to_numpy(zero_copy_only=False)
        count(self.actual, r.cell)
        count(self.nulls, r.cell[isnull])
        count(self.non_numeric, r.cell[text])
        count(self.sentinels, r.cell[sentinel])
        count(self.out_of_range, r.cell[outside])
        np.fmin.at(self.vmin, r.cell, r.value)
        np.fmax.at(self.vmax, r.cell, r.value)
        np.minimum.at(self.first, r.cell, r.ts)
        np.maximum.at(self.last, r.cell, r.ts)

        in_window = r.ts >= start_us
        idx = np.flatnonzero((isnull | sentinel) & in_window)
        if len(idx):
            # The first bad reading of each point in this chunk; an earlier chunk keeps a tie.
            order = idx[np.lexsort((r.ts[idx], r.code[idx]))]
            codes = r.code[order]
            for i in order[np.r_[True, codes[1:] != codes[:-1]]].tolist():
                code = r.code[i]
                if r.ts[i] < self.bad_ts[code]:
                    self.bad_ts[code] = r.ts[i]
                    raw = r.raw[i].as_py()
                    self.bad_raw[code] = raw if raw is not None else (
                        "null" if np.isnan(r.value[i]) else repr(float(r.value[i]))
                    )
        sel = outside & in_window
        np.minimum.at(self.oor_ts, r.code[sel], r.ts[sel])
        np.minimum.at(self.oor_min, r.code[sel], r.value[sel])
        np.maximum.at(self.oor_max, r.code[sel], r.value[sel])

    def examples(self) -> dict:
        has_oor = self.oor_ts != _TS_MAX
        ts_type = pa.timestamp("us")
        return {
            "bad_ts": pa.array(self.bad_ts, pa.int64(), mask=self.bad_ts == _TS_MAX).cast(ts_type),
            "bad_raw": pa.array(self.bad_raw, pa.string()),
            "oor_ts": pa.array(self.oor_ts, pa.int64(), mask=~has_oor).cast(ts_type),
            "oor_min": pa.array(self.oor_min, pa.float64(), mask=~has_oor),
            "oor_max": pa.array(self.oor_max, pa.float64(), mask=~has_oor),
        }


def _row_figures(
    parts: list[pa.Table], *, names: pa.Array, hstart_us: int, slots: int, start_us: int,
    lo: np.ndarray, hi: np.ndarray, sentinels: np.ndarray,
) -> _RowFigures:
    chunk = ROW_CHUNK
    figures = _RowFigures.empty(len(names), len(names) * slots)
    for part in parts:
        if part is None:
            continue
        for offset in range(0, part.num_rows, chunk):
            rows = _flatten([part.slice(offset, chunk)], names, hstart_us, slots)
            figures.add(rows, start_us=start_us, lo=lo, hi=hi, sentinels=sentinels)
    return figures
