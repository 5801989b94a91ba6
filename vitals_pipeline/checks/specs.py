"""The asset checks of `<site>/timeseries`, and the two steps that feed them in the asset's run.

1. Before the store (`read_quality_inputs`, then `assess`): the points table and the bounded
   stored history are read, every point's rules derived, and the window's quality rows computed
   (quality.py) so the IO manager merges them into `<site>.quality` in the same transaction as
   the samples (`RunQuality.companions`). Only the reading needs DuckDB: the asset computes
   while the IO manager inserts the samples.
2. After the store (`RunQuality.check_results`): the stored window is verified in DuckDB
   (duplicates, future samples, every fetched sample stored inside the window), and one
   AssetCheckResult per check is built from those figures and the quality rows.

Every query is bounded by the run's window (plus the stored history quality.py reads); none
scans the whole table. What each check means is in CHECKS and in the README ("Data quality").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from vitals_pipeline.checks.catalog import CHECK_NAMES, CHECKS, CheckInfo  # noqa: F401 - re-exported
from vitals_pipeline.checks.quality import (
    QUALITY_MERGE_KEYS,
    QUALITY_TABLE,
    QUALITY_TIME_COLUMN,
    QualityAssessment,
    history_span,
    judge,
    naive,
    stored_rows,
    table_exists,
)
from vitals_pipeline.checks.rules import completeness_verdict, point_rules
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.storage.duckdb_io import CompanionTable
from vitals_pipeline.storage.lens import need
from vitals_pipeline.storage.schema import quote_identifier as _q
from vitals_pipeline.windows import Window

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
# The checks that verify the store itself: one failing means the site's window is not stored right.
BLOCKING_CHECKS = frozenset(c.name for c in CHECKS if c.blocking)


def utc_now() -> datetime:
    """The clock the future-sample rule reads (one place, so a test can move it)."""
    return datetime.now(UTC)


def timeseries_check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    """The checks of one site's timeseries asset; they run in the asset's own step."""
    return [
        dg.AssetCheckSpec(c.name, asset=asset_key, blocking=c.blocking, description=c.description)
        for c in CHECKS
    ]


# ---------------------------------------------------------------------------------------------
# Before the store


def count_future(samples: pa.Table, now: datetime, thresholds: QualityThresholds) -> int:
    """Rows stamped later than now + tolerance (run on the source's rows, before cleaning)."""
    if samples.num_rows == 0:
        return 0
    limit = (now + timedelta(minutes=thresholds.future_tolerance_minutes)).astimezone(UTC)
    limit = pa.scalar(limit.replace(tzinfo=None), samples.schema.field("ts").type)
    return int(pc.sum(pc.greater(samples.column("ts"), limit)).as_py() or 0)


def load_points(conn: duckdb.DuckDBPyConnection, schema: str) -> pa.Table | None:
    """The site's configured points as stored by `<site>/points`, or None if never materialized."""
    if not table_exists(conn, schema, "points"):
        return None
    need(conn, schema, "points")
    return conn.sql(f"SELECT * FROM {_q(schema)}.{_q('points')}").to_arrow_table()


@dataclass
class SourceFigures:
    """What the source sent, counted while cleaning: the duplicates and the rows outside the
    window, which never reach the store, and the rows stamped after now + tolerance, which are
    not dropped for that (counted before cleaning: those inside the window are stored, and judged
    by no_future_samples; those outside it are dropped, and counted, as out of the window)."""

    duplicates_dropped: int = 0
    out_of_window_dropped: int = 0
    future_rows: int = 0


@dataclass
class RunQuality:
    """One run's quality: the rows for `<site>.quality` and what the checks need afterwards."""

    site: str
    schema: str
    window: Window
    thresholds: QualityThresholds
    assessment: QualityAssessment
    partition_figures: dict[str, dict] = field(default_factory=dict)

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey([self.schema, "timeseries"])

    def companions(self) -> dict[str, CompanionTable]:
        """The quality rows, as the IO manager stores them with the samples (one transaction)."""
        return {
            QUALITY_TABLE: CompanionTable(
                rows=self.assessment.rows,
                merge_keys=QUALITY_MERGE_KEYS,
                time_column=QUALITY_TIME_COLUMN,
            )
        }

    def check_results(
        self, conn: duckdb.DuckDBPyConnection, samples: pa.Table, source: SourceFigures
    ) -> list[dg.AssetCheckResult]:
        """Verify the stored window (after the store, on `conn`), then one result per check."""
        now = utc_now()
        future_after = now + timedelta(minutes=self.thresholds.future_tolerance_minutes)
        try:
            stored = verify_stored(
                conn, schema=self.schema, samples=samples, window=self.window,
                future_after=future_after,
                expected_rows=samples.num_rows + self.assessment.kept_keys,
            )
        except Exception as exc:  # noqa: BLE001 - reported as failed checks, see build_results
            stored = exc
        return build_results(self, stored, source, now)


@dataclass(frozen=True)
class QualityInputs:
    """What the store holds that the window's judgement needs, read before the store."""

    rules: pa.Table
    span: timedelta
    kept: pa.Table | None  # stored rows of the window the run did not re-fetch
    history: pa.Table | None
    kept_keys: int


def read_quality_inputs(
    conn: duckdb.DuckDBPyConnection, schema: str, samples: pa.Table, window: Window,
    thresholds: QualityThresholds, points: pa.Table | None = None,
) -> QualityInputs:
    """The points' rules and the bounded stored history (the only DuckDB reads of `assess`).
    `points`: the site's points table when the run has just fetched it (not stored yet)."""
    rules = point_rules(points if points is not None else load_points(conn, schema), thresholds)
    span = history_span(rules, thresholds)
    kept, history, kept_keys = stored_rows(conn, schema, samples, window, span)
    return QualityInputs(rules=rules, span=span, kept=kept, history=history, kept_keys=kept_keys)


def assess(
    site: str, schema: str, samples: pa.Table, window: Window, thresholds: QualityThresholds,
    inputs: QualityInputs,
) -> RunQuality:
    """Judge the window (pure: no I/O, so it can run while the samples are being stored)."""
    parts = [samples] + ([inputs.kept] if inputs.kept is not None and inputs.kept.num_rows else [])
    assessment = judge(
        window_parts=parts, history=inputs.history, window=window, span=inputs.span,
        rules=inputs.rules, thresholds=thresholds, kept_keys=inputs.kept_keys,
    )
    return RunQuality(
        site=site, schema=schema, window=window, thresholds=thresholds, assessment=assessment,
        partition_figures=assessment.partition_figures,
    )


# ---------------------------------------------------------------------------------------------
# After the store


@dataclass
class StoredFigures:
    """What the stored window holds, after the store."""

    stored_rows: int = 0
    expected_rows: int = 0  # the run's rows + the stored rows it did not re-fetch
    reconciled: bool = True  # stored_rows == expected_rows: no exact key queries were needed
    duplicate_keys: int = 0
    duplicate_extra_rows: int = 0
    duplicate_examples: list[tuple] = field(default_factory=list)
    future_rows: int = 0
    newest_ts: datetime | None = None
    future_examples: list[tuple] = field(default_factory=list)
    not_stored: int = 0
    not_stored_examples: list[tuple] = field(default_factory=list)


def verify_stored(
    conn: duckdb.DuckDBPyConnection, *, schema: str, samples: pa.Table, window: Window,
    future_after: datetime, expected_rows: int,
) -> StoredFigures:
    """Future samples, duplicates and run samples missing from the stored window.

    One bounded scan counts the window's rows. After a correct merge the window holds exactly
    `expected_rows` (the run's rows plus the distinct stored keys it did not re-fetch), so when
    the counts agree there is nothing to look for; only when they differ are the exact (and, on
    a day of a big site, seconds-long) key queries run: a GROUP BY for duplicates and an anti
    join for the run's samples the window lacks.
    """
    figures = StoredFigures(expected_rows=expected_rows)
    if not table_exists(conn, schema, "timeseries"):
        figures.reconciled = False
        figures.not_stored = samples.num_rows
        figures.not_stored_examples = _head(samples)
        return figures
    table = f"{_q(schema)}.{_q('timeseries')}"
    bounds = {"start": naive(window.start), "end": naive(window.end)}
    need(conn, schema, "timeseries", "ts", bounds["start"], bounds["end"])
    future = naive(future_after)
    in_window = f"SELECT point, ts FROM {table} WHERE ts >= $start AND ts < $end"

    stored_rows, figures.newest_ts, future_rows = conn.sql(
        f"SELECT count(*), max(ts), count(*) FILTER (ts > $future) FROM {table} "
        f"WHERE ts >= $start AND ts < $end",
        params={**bounds, "future": future},
    ).fetchall()[0]
    figures.stored_rows, figures.future_rows = int(stored_rows), int(future_rows)
    if figures.future_rows:
        figures.future_examples = conn.sql(
            f"SELECT point, ts FROM {table} WHERE ts >= $start AND ts < $end AND ts > $future "
            f"ORDER BY ts DESC, point LIMIT 5",
            params={**bounds, "future": future},
        ).fetchall()
    figures.reconciled = figures.stored_rows == expected_rows
    if figures.reconciled:
        return figures

    duplicates = f"SELECT point, ts, count(*) AS n FROM ({in_window}) GROUP BY ALL HAVING count(*) > 1"
    keys, extra = conn.sql(
        f"SELECT count(*), coalesce(sum(n - 1), 0) FROM ({duplicates})", params=bounds
    ).fetchall()[0]
    figures.duplicate_keys, figures.duplicate_extra_rows = int(keys), int(extra)
    if keys:
        figures.duplicate_examples = conn.sql(
            f"SELECT * FROM ({duplicates}) ORDER BY ts, point LIMIT 5", params=bounds
        ).fetchall()
    view = "_quality_check_run_keys"
    conn.register(view, samples.select(["point", "ts"]))
    try:
        missing = f"SELECT r.point, r.ts FROM {view} AS r ANTI JOIN ({in_window}) AS s USING (point, ts)"
        figures.not_stored = int(
            conn.sql(f"SELECT count(*) FROM ({missing})", params=bounds).fetchall()[0][0]
        )
        if figures.not_stored:
            figures.not_stored_examples = conn.sql(
                f"SELECT * FROM ({missing}) ORDER BY ts, point LIMIT 5", params=bounds
            ).fetchall()
    finally:
        conn.unregister(view)
    return figures


def _head(samples: pa.Table, n: int = 5) -> list[tuple]:
    return [(r["point"], r["ts"]) for r in samples.select(["point", "ts"]).slice(0, n).to_pylist()]


# ---------------------------------------------------------------------------------------------
# Results


def _fmt(value) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def md_table(headers: list[str], rows: list[tuple]) -> dg.MetadataValue:
    """A small Markdown table for the UI (times are UTC)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def points_not_loaded(schema: str) -> str:
    return (
        f"points not loaded: materialize {schema}/points (units, collect intervals and devices "
        f"come from it; until then expectations are unknown and this check cannot pass)"
    )


def _needs_points(name: str, rq: RunQuality) -> dg.AssetCheckResult | None:
    if rq.assessment.points_known:
        return None
    message = points_not_loaded(rq.schema)
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name=name, passed=False, severity=WARN,
        description=message, metadata={**_window_meta(rq), "points_loaded": False},
    )


def build_results(
    rq: RunQuality, stored: StoredFigures | Exception, source: SourceFigures, now: datetime
) -> list[dg.AssetCheckResult]:
    """One AssetCheckResult per check of CHECKS, in that order.

    A check that cannot be evaluated (the stored window could not be read, a bug) is reported as
    failed with the error, rather than failing the step: the samples are already stored, and a
    step retry would fetch them all again for nothing.
    """
    # One row per point / device: small enough for plain Python, even on a 4,500-point site.
    points = rq.assessment.points.to_pylist()
    devices = rq.assessment.devices.to_pylist()
    builders = {
        "no_duplicate_samples": lambda: _duplicates(rq, stored, source),
        "no_future_samples": lambda: _future(rq, stored, source, now),
        "samples_inside_window": lambda: _inside_window(rq, stored, source),
        "completeness": lambda: _completeness(rq, points),
        "values_in_physical_range": lambda: _physical_range(rq, points),
        "no_flatlined_sensors": lambda: _flatlined(rq, points),
        "no_stale_devices": lambda: _stale_devices(rq, devices),
        "numeric_values": lambda: _numeric(rq, points),
    }
    results = []
    for info in CHECKS:
        try:
            if isinstance(stored, Exception) and info.blocking:
                raise stored
            results.append(builders[info.name]())
        except Exception as exc:  # noqa: BLE001
            results.append(_not_evaluated(info, rq, exc))
    return results


def _not_evaluated(info: CheckInfo, rq: RunQuality, exc: Exception) -> dg.AssetCheckResult:
    message = f"could not be evaluated for {rq.window}: {type(exc).__name__}: {exc}"[:2000]
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name=info.name, passed=False, severity=ERROR if info.blocking else WARN,
        description=message, metadata={**_window_meta(rq), "error": message},
    )


def _window_meta(rq: RunQuality) -> dict:
    return {"window": str(rq.window), "partitions": rq.window.partitions}


def _stored_meta(stored: StoredFigures) -> dict:
    return {
        "stored_samples": stored.stored_rows,
        "expected_stored_samples": stored.expected_rows,
        "verified_by": "row count" if stored.reconciled else "key queries",
    }


def _duplicates(rq: RunQuality, stored: StoredFigures, source: SourceFigures) -> dg.AssetCheckResult:
    passed = stored.duplicate_keys == 0
    meta = {
        **_window_meta(rq),
        **_stored_meta(stored),
        "duplicate_keys": stored.duplicate_keys,
        "duplicate_extra_rows": stored.duplicate_extra_rows,
        "source_duplicates_dropped": source.duplicates_dropped,
    }
    if stored.duplicate_examples:
        meta["examples"] = md_table(["point", "ts (UTC)", "copies"], stored.duplicate_examples)
    description = (
        f"no (point, ts) stored twice in {rq.window}"
        if passed
        else f"{stored.duplicate_keys} (point, ts) keys are stored more than once in {rq.window} "
        f"({stored.duplicate_extra_rows} extra rows): rows written by another tool or an older "
        f"IO manager. Delete the extra copies (keep one per key) and re-run the window."
    )
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="no_duplicate_samples", passed=passed, severity=ERROR, metadata=meta,
        description=description,
    )


def _future(rq: RunQuality, stored: StoredFigures, source: SourceFigures, now: datetime) -> dg.AssetCheckResult:
    passed = stored.future_rows == 0
    meta = {
        **_window_meta(rq),
        "future_samples": stored.future_rows,
        "now": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "tolerance_minutes": rq.thresholds.future_tolerance_minutes,
        "source_future_rows": source.future_rows,
    }
    if stored.newest_ts is not None:
        meta["newest_sample"] = stored.newest_ts.strftime("%Y-%m-%d %H:%M:%S UTC")
    if stored.future_examples:
        meta["examples"] = md_table(["point", "ts (UTC)"], stored.future_examples)
    description = (
        "no stored sample of the window is in the future"
        if passed
        else f"{stored.future_rows} stored samples of {rq.window} are stamped after now + "
        f"{rq.thresholds.future_tolerance_minutes:g} min ({now:%Y-%m-%d %H:%M} UTC): a device "
        f"or gateway clock is ahead, or this host's clock is behind. Fix the clock, then delete "
        f"those rows."
    )
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="no_future_samples", passed=passed, severity=ERROR, metadata=meta,
        description=description,
    )


def _inside_window(rq: RunQuality, stored: StoredFigures, source: SourceFigures) -> dg.AssetCheckResult:
    passed = stored.not_stored == 0
    meta = {
        **_window_meta(rq),
        **_stored_meta(stored),
        "run_samples_not_in_window": stored.not_stored,
        "out_of_window_dropped": source.out_of_window_dropped,
    }
    if stored.not_stored_examples:
        meta["examples"] = md_table(["point", "ts (UTC)"], stored.not_stored_examples)
    description = (
        f"every sample fetched for {rq.window} is stored inside it"
        if passed
        else f"{stored.not_stored} samples fetched for {rq.window} are not stored inside it: the "
        f"store shifted or lost them (a time-zone or IO-manager problem). Check the IO manager "
        f"and re-run the window."
    )
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="samples_inside_window", passed=passed, severity=ERROR, metadata=meta,
        description=description,
    )


def _completeness(rq: RunQuality, points: list[dict]) -> dg.AssetCheckResult:
    skipped = _needs_points("completeness", rq)
    if skipped:
        return skipped
    t = rq.thresholds
    sampled = [p for p in points if p["expected"]]
    for p in sampled:
        p["pct"] = 100.0 * (1 - p["missing"] / p["expected"])
    expected = sum(p["expected"] for p in sampled)
    missing = sum(p["missing"] for p in sampled)
    worst = sorted((p for p in sampled if p["pct"] < 100), key=lambda p: (p["pct"], p["point"]))
    pct = 100.0 * (1 - missing / expected) if expected else None
    verdict = completeness_verdict(pct, t)
    below_warn = sum(p["pct"] < t.completeness_warn_pct for p in sampled)
    meta = {
        **_window_meta(rq),
        "expected_samples": round(expected, 1),
        "received_samples": round(expected - missing, 1),
        "missing_samples": round(missing, 1),
        "points_evaluated": len(sampled),
        "points_below_warn": below_warn,
        "points_below_error": sum(p["pct"] < t.completeness_error_pct for p in sampled),
        "points_excluded_cov_or_no_interval": sum(p["expected"] is None for p in points),
        "warn_below_pct": t.completeness_warn_pct,
        "error_below_pct": t.completeness_error_pct,
    }
    if pct is not None:
        meta["completeness_pct"] = round(pct, 3)
    if worst:
        meta["worst_points"] = md_table(
            ["point", "device", "interval s", "completeness %", "missing", "last seen (UTC)"],
            [(p["point"], p["device"], p["interval_s"], round(p["pct"], 1), round(p["missing"], 1),
              p["last_seen"]) for p in worst[: t.worst_points]],
        )
    if pct is None:
        description = "no sampled points with a collect_interval: nothing to measure"
    else:
        description = (
            f"{pct:.1f} % of the samples promised by {len(sampled)} sampled points arrived in "
            f"{rq.window}; {below_warn} points below {t.completeness_warn_pct:g} %"
        )
        if worst:
            description += f" (worst: {worst[0]['point']} at {worst[0]['pct']:.1f} %)"
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="completeness", passed=verdict is None,
        severity=ERROR if verdict == "ERROR" else WARN, metadata=meta, description=description,
    )


def _physical_range(rq: RunQuality, points: list[dict]) -> dg.AssetCheckResult:
    skipped = _needs_points("values_in_physical_range", rq)
    if skipped:
        return skipped
    checked = sum(p["range_lo"] is not None for p in points)
    offenders = sorted(
        (p for p in points if p["out_of_range"]), key=lambda p: (-p["out_of_range"], p["point"])
    )
    total = sum(p["out_of_range"] for p in offenders)
    meta = {
        **_window_meta(rq),
        "out_of_range_values": total,
        "points_out_of_range": len(offenders),
        "points_checked": checked,
        "points_not_checked_unknown_unit": len(points) - checked,
    }
    if offenders:
        meta["worst_points"] = md_table(
            ["point", "unit", "role", "range", "values", "min", "max", "first (UTC)"],
            [(p["point"], p["unit"], p["role"], _range(p), p["out_of_range"], p["oor_min"],
              p["oor_max"], p["oor_ts"]) for p in offenders[: rq.thresholds.worst_points]],
        )
        first = offenders[0]
        description = (
            f"{total} readings of {len(offenders)} points outside their physical range in "
            f"{rq.window}, e.g. {first['point']} ({first['role']}) read {first['oor_min']:g}.."
            f"{first['oor_max']:g} {first['unit']} (range {_range(first)}): check the sensor, its "
            f"wiring or its unit"
        )
    else:
        description = f"all readings of {checked} unit-known points inside their physical range"
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="values_in_physical_range", passed=not offenders, severity=WARN,
        metadata=meta, description=description,
    )


def _range(point: dict) -> str:
    return f"{point['range_lo']:.4g}..{point['range_hi']:.4g}"


def _flatlined(rq: RunQuality, points: list[dict]) -> dg.AssetCheckResult:
    skipped = _needs_points("no_flatlined_sensors", rq)
    if skipped:
        return skipped
    t = rq.thresholds
    checked = sum(p["flat_tolerance"] is not None and p["interval_s"] is not None for p in points)
    flat = sorted(
        (p for p in points if p["flat_partitions"]), key=lambda p: (-p["flat_partitions"], p["point"])
    )
    meta = {
        **_window_meta(rq),
        "flat_sensors": len(flat),
        "sensors_checked": checked,
        "flatline_minutes": t.flatline_minutes,
    }
    if flat:
        meta["flat_points"] = md_table(
            ["point", "device", "unit", "value", "flat since (UTC)", "partitions flagged"],
            [(p["point"], p["device"], p["unit"], p["flat_value"], p["flat_since"],
              p["flat_partitions"]) for p in flat[: t.worst_points]],
        )
        first = flat[0]
        description = (
            f"{len(flat)} sensors flat for {t.flatline_minutes} min or more in {rq.window}, "
            f"e.g. {first['point']} stuck at {first['flat_value']:g} {first['unit']} since "
            f"{_fmt(first['flat_since'])} UTC: a stuck or disconnected sensor, or a value frozen "
            f"by the controller"
        )
    else:
        description = f"none of {checked} sensors flat for {t.flatline_minutes} min"
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="no_flatlined_sensors", passed=not flat, severity=WARN, metadata=meta,
        description=description,
    )


def _stale_devices(rq: RunQuality, devices: list[dict]) -> dg.AssetCheckResult:
    skipped = _needs_points("no_stale_devices", rq)
    if skipped:
        return skipped
    t = rq.thresholds
    stale = sorted(
        (d for d in devices if d["stale_partitions"]),
        key=lambda d: (-d["stale_partitions"], d["device"]),
    )
    meta = {
        **_window_meta(rq),
        "stale_devices": len(stale),
        "devices_checked": len(devices),
        "silent_after_minutes": t.device_silent_minutes,
        "unchanged_for_minutes": t.stale_device_minutes,
    }

    def why(d: dict) -> str:
        return "silent" if d["silent_partitions"] else "all sensors unchanged"

    if stale:
        meta["stale"] = md_table(
            ["device", "why", "first stale partition (UTC)", "partitions", "last sample (UTC)"],
            [(d["device"], why(d), d["first_stale"], d["stale_partitions"], d["last_seen"])
             for d in stale[: t.worst_points]],
        )
        d = stale[0]
        seen = f"last sample {_fmt(d['last_seen'])} UTC" if d["last_seen"] else "no sample in the history read"
        description = (
            f"{len(stale)} of {len(devices)} devices stale in {rq.window}, e.g. {d['device']} "
            f"({why(d)}, {seen}): check the device, its network and the gateway"
        )
    else:
        description = f"all {len(devices)} devices reporting and changing"
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="no_stale_devices", passed=not stale, severity=WARN, metadata=meta,
        description=description,
    )


def _numeric(rq: RunQuality, points: list[dict]) -> dg.AssetCheckResult:
    t = rq.thresholds
    samples = sum(p["actual"] for p in points)
    text = sum(p["non_numeric"] for p in points)
    sentinels = sum(p["sentinels"] for p in points)
    nan_or_null = sum(p["nulls"] for p in points) - text
    null_pct = 100.0 * nan_or_null / samples if samples else 0.0
    offenders = sorted(
        (p for p in points if p["nulls"] or p["sentinels"]),
        key=lambda p: (-(p["non_numeric"] + p["sentinels"]), -(p["nulls"] - p["non_numeric"]), p["point"]),
    )
    passed = text == 0 and sentinels == 0 and null_pct <= t.numeric_max_null_pct
    meta = {
        **_window_meta(rq),
        "samples": samples,
        "nan_or_null_values": nan_or_null,
        "null_pct": round(null_pct, 3),
        "non_numeric_values": text,
        "sentinel_values": sentinels,
        "points_affected": len(offenders),
        "max_null_pct": t.numeric_max_null_pct,
    }
    if offenders:
        meta["worst_points"] = md_table(
            ["point", "NaN/null", "text", "sentinels", "first (UTC)", "first wire value"],
            [(p["point"], p["nulls"] - p["non_numeric"], p["non_numeric"], p["sentinels"],
              p["bad_ts"], p["bad_raw"]) for p in offenders[: t.worst_points]],
        )
    if passed:
        description = (
            f"no text or sentinel readings; {null_pct:.2f} % null/NaN "
            f"(limit {t.numeric_max_null_pct:g} %)"
        )
    else:
        parts = []
        if text:
            parts.append(f"{text} non-numeric text readings")
        if sentinels:
            parts.append(f"{sentinels} sentinel readings")
        if null_pct > t.numeric_max_null_pct:
            parts.append(f"{null_pct:.2f} % null/NaN readings (limit {t.numeric_max_null_pct:g} %)")
        description = (
            f"{', '.join(parts)} in {rq.window}, worst {offenders[0]['point']}: check the point's "
            f"configuration (a status or text object collected as a number?) and the device"
        )
    return dg.AssetCheckResult(
        asset_key=rq.asset_key, check_name="numeric_values", passed=passed, severity=WARN, metadata=meta,
        description=description,
    )
