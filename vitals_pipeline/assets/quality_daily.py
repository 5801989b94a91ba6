"""`<site>/quality_daily`: per point and UTC day, completeness and a status: the table a quality
dashboard reads.

Rolled up in DuckDB from `<site>.quality` (one row per point per 5-minute partition, written by
`<site>/timeseries` in the same transaction as the samples); only the small result, one row per
(point, day), goes back through the IO manager.

Per point and day (`day` = the day's start, naive UTC):
  partitions        quality rows of the day (288 when every 5-minute partition was stored)
  expected, actual, missing, completeness_pct   samples promised / arrived / missing (sampled
                    points; NULL for cov and interval-less points)
  nulls, non_numeric, sentinels, out_of_range   readings of each kind
  flatline_partitions, partitions_ok / _fault / _down / _unknown   partitions per status
  last_seen         the newest sample at the day's end
  status            down: completeness below the ERROR threshold (80 %);
                    fault: below the WARN threshold (95 %), an outage (a `down` partition), any
                      out-of-range, sentinel, text or flat reading, or more than
                      VITALS_QUALITY_NUMERIC_MAX_NULL_PCT null/NaN readings;
                    unknown: no expectation and nothing received (cov, not configured);
                    ok: otherwise.
  reason            why, for a person

Automation: once the day's 5-minute partitions are final, and again when a catch-up or backfill
re-fetches one of them: the `fleet_rollups` sensor (automation/rollups.py), which needs
`dagster-daemon` (which `dagster dev` starts).
"""

from datetime import UTC, timedelta

import dagster as dg
import duckdb
import pyarrow as pa

from vitals_pipeline.assets.fleet import SiteFailures, output_name, selected_sites
from vitals_pipeline.assets.keys import (
    DAILY_BACKFILL,
    daily_partitions,
    quality_daily_key,
    timeseries_dep,
    timeseries_key,
)
from vitals_pipeline.checks.quality import QUALITY_TABLE, table_exists
from vitals_pipeline.checks.rules import DOWN, FAULT, OK, UNKNOWN
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.duckdb_io import naive_utc
from vitals_pipeline.storage.lens import need
from vitals_pipeline.storage.schema import quote_identifier as _q
from vitals_pipeline.storage.schema import schema_name
from vitals_pipeline.storage.warehouse import Warehouse

DAILY_TABLE = "quality_daily"
DAILY_MERGE_KEYS = ("point", "day")
DAILY_FMT = "%Y-%m-%d"  # the daily partitions' keys

DAILY_SCHEMA = pa.schema(
    [
        ("day", pa.timestamp("us")),
        ("point", pa.string()),
        ("device", pa.string()),
        ("partitions", pa.int64()),
        ("expected", pa.float64()),
        ("actual", pa.int64()),
        ("missing", pa.float64()),
        ("completeness_pct", pa.float64()),
        ("nulls", pa.int64()),
        ("non_numeric", pa.int64()),
        ("sentinels", pa.int64()),
        ("out_of_range", pa.int64()),
        ("flatline_partitions", pa.int64()),
        ("partitions_ok", pa.int64()),
        ("partitions_fault", pa.int64()),
        ("partitions_down", pa.int64()),
        ("partitions_unknown", pa.int64()),
        ("last_seen", pa.timestamp("us")),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)


def daily_rollup(
    conn: duckdb.DuckDBPyConnection, schema: str, start, end, thresholds: QualityThresholds
) -> pa.Table:
    """Per point and UTC day of [start, end): the roll-up of `<schema>.quality` (DAILY_SCHEMA).

    Raises LookupError when the quality table does not exist.
    """
    if not table_exists(conn, schema, QUALITY_TABLE):
        raise LookupError(f"no table {schema}.{QUALITY_TABLE}")
    t = thresholds
    need(conn, schema, QUALITY_TABLE, "window_start", naive_utc(start), naive_utc(end))
    quality = f"{_q(schema)}.{_q(QUALITY_TABLE)}"
    sql = f"""
        WITH day_rows AS (
            SELECT date_trunc('day', window_start) AS day, point,
                   arg_max(device, window_start) AS device,
                   count(*) AS partitions,
                   sum(expected) AS expected, sum(actual) AS actual, sum(missing) AS missing,
                   sum(nulls) AS nulls, sum(non_numeric) AS non_numeric,
                   sum(sentinels) AS sentinels, sum(out_of_range) AS out_of_range,
                   count(*) FILTER (flatline) AS flatline_partitions,
                   count(*) FILTER (status = '{OK}') AS partitions_ok,
                   count(*) FILTER (status = '{FAULT}') AS partitions_fault,
                   count(*) FILTER (status = '{DOWN}') AS partitions_down,
                   count(*) FILTER (status = '{UNKNOWN}') AS partitions_unknown,
                   arg_max(last_seen, window_start) AS last_seen
            FROM {quality}
            WHERE window_start >= $start AND window_start < $end
            GROUP BY ALL
        ),
        figured AS (
            SELECT *,
                   100 * (1 - missing / nullif(expected, 0)) AS completeness_pct,
                   100.0 * (nulls - non_numeric) / nullif(actual, 0) AS null_pct
            FROM day_rows
        )
        SELECT day, point, device, partitions, expected, actual, missing, completeness_pct,
               nulls, non_numeric, sentinels, out_of_range, flatline_partitions,
               partitions_ok, partitions_fault, partitions_down, partitions_unknown, last_seen,
               CASE
                   WHEN completeness_pct < {t.completeness_error_pct} THEN '{DOWN}'
                   WHEN completeness_pct < {t.completeness_warn_pct} OR partitions_down > 0
                        OR out_of_range > 0 OR flatline_partitions > 0 OR sentinels > 0
                        OR non_numeric > 0 OR null_pct > {t.numeric_max_null_pct} THEN '{FAULT}'
                   WHEN partitions_unknown = partitions THEN '{UNKNOWN}'
                   ELSE '{OK}'
               END AS status,
               nullif(concat_ws('; ',
                   CASE WHEN completeness_pct < 100
                        THEN printf('%.1f %% complete (%g of %g samples missing)',
                                    completeness_pct, round(missing, 1), round(expected, 1)) END,
                   CASE WHEN partitions_down > 0
                        THEN printf('down in %d partitions', partitions_down) END,
                   CASE WHEN out_of_range > 0 THEN printf('%d out-of-range values', out_of_range) END,
                   CASE WHEN flatline_partitions > 0
                        THEN printf('flat in %d partitions', flatline_partitions) END,
                   CASE WHEN sentinels > 0 THEN printf('%d sentinel values', sentinels) END,
                   CASE WHEN non_numeric > 0 THEN printf('%d non-numeric values', non_numeric) END,
                   CASE WHEN null_pct > 0 THEN printf('%.2f %% null/NaN', null_pct) END
               ), '') AS reason
        FROM figured
        ORDER BY day, point
    """
    table = conn.sql(sql, params={"start": naive_utc(start), "end": naive_utc(end)}).to_arrow_table()
    return table.cast(DAILY_SCHEMA)


def build_quality_daily_asset(settings: Settings, thresholds: QualityThresholds) -> dg.AssetsDefinition:
    """`<site>/quality_daily` of every site, one multi_asset."""
    sites = list(settings.sites)
    outs = {
        output_name(site, DAILY_TABLE): dg.AssetOut(
            key=quality_daily_key(site),
            group_name=schema_name(site),
            is_required=False,
            kinds={"duckdb"},
            tags={"site": schema_name(site)},
            metadata={
                "site": site,
                "schema": schema_name(site),
                "partition_expr": "day",
                "merge_keys": list(DAILY_MERGE_KEYS),
            },
            description=(
                f"Site {site!r} per point and UTC day (table {schema_name(site)}.{DAILY_TABLE}): "
                "completeness, counts of null / text / sentinel / out-of-range readings, partitions "
                "per status, and the day's status (ok / fault / down / unknown) with the reason. "
                "Rolled up from the quality table once the day's 5-minute partitions are final, and "
                "again when a catch-up or backfill re-fetches any of them (the fleet_rollups sensor)."
            ),
        )
        for site in sites
    }

    @dg.multi_asset(
        name=DAILY_TABLE,
        outs=outs,
        partitions_def=daily_partitions(settings),
        # One day per run (see keys.DAILY_BACKFILL); the body still takes a range of days, for
        # a run launched with range tags.
        backfill_policy=DAILY_BACKFILL,
        can_subset=True,
        pool="duckdb",
        deps=[timeseries_dep(site) for site in sites],  # a day depends on its 288 partitions
        internal_asset_deps={output_name(site, DAILY_TABLE): {timeseries_key(site)} for site in sites},
    )
    def quality_daily(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """The selected sites' daily quality for the run's days, rolled up in DuckDB from each
        site's quality table, one connection for all sites."""
        tw = context.partition_time_window
        start, end = tw.start.astimezone(UTC), tw.end.astimezone(UTC)
        chosen = selected_sites(context, sites, quality_daily_key)
        failures = SiteFailures(f"daily quality of [{start:%Y-%m-%d}, {end:%Y-%m-%d}) UTC")
        with warehouse.session() as conn:
            for site in chosen:
                slug = schema_name(site)
                try:
                    rows = daily_rollup(conn, slug, start, end, thresholds)
                except LookupError:
                    failures.add(site, f"site {site!r}: no {slug}.{QUALITY_TABLE} table: materialize "
                                       f"{timeseries_key(site).to_user_string()} (with VITALS_CHECKS on) "
                                       "for these days first")
                    continue
                _add_day_metadata(context, quality_daily_key(site), rows)
                yield dg.Output(rows, output_name=output_name(site, DAILY_TABLE))
        failures.raise_if_any(len(chosen))

    return quality_daily


def _add_day_metadata(context: dg.AssetExecutionContext, key: dg.AssetKey, rows: pa.Table) -> None:
    """Per day: points per status and the site's completeness, plotted on the asset page."""
    con = duckdb.connect()
    try:
        con.register("days", rows)
        figures = {
            day.strftime(DAILY_FMT): (points, ok, fault, down, unknown, pct)
            for day, points, ok, fault, down, unknown, pct in con.sql(
                f"""SELECT day, count(*), count(*) FILTER (status = '{OK}'),
                           count(*) FILTER (status = '{FAULT}'), count(*) FILTER (status = '{DOWN}'),
                           count(*) FILTER (status = '{UNKNOWN}'),
                           100 * (1 - sum(missing) / nullif(sum(expected), 0))
                    FROM days GROUP BY day"""
            ).fetchall()
        }
    finally:
        con.close()
    asset_key = key
    for partition in context.partition_keys:
        points, ok, fault, down, unknown, pct = figures.get(partition, (0, 0, 0, 0, 0, None))
        meta = {
            "points": points,
            "points_ok": ok,
            "points_fault": fault,
            "points_down": down,
            "points_unknown": unknown,
        }
        if pct is not None:
            meta["completeness_pct"] = round(float(pct), 3)
        context.add_asset_metadata(meta, asset_key=asset_key, partition_key=partition)


def build_quality_daily(
    settings: Settings, thresholds: QualityThresholds | None = None
) -> list[dg.AssetsDefinition]:
    """Every site's `quality_daily` asset; nothing when the data-quality layer is off
    (VITALS_CHECKS=off: no quality table to roll up)."""
    thresholds = thresholds or QualityThresholds.from_env()
    if not thresholds.enabled:
        return []
    return [build_quality_daily_asset(settings, thresholds)]




# A day is this many 5-minute partitions.
PARTITIONS_PER_DAY = int(timedelta(days=1) / timedelta(minutes=5))
