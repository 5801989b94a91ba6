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

Automation: once every 5-minute partition of the day is stored, and again when one of them is
re-fetched (see `daily_automation`), evaluated by the `quality_daily_automation` sensor, which is
declared running (Dagster's implicit default automation sensor starts stopped) and needs
`dagster-daemon` (which `dagster dev` starts).
"""

from datetime import UTC, timedelta

import dagster as dg
import duckdb
import pyarrow as pa

from vitals_pipeline.assets.keys import timeseries_dep, timeseries_key
from vitals_pipeline.checks.quality import QUALITY_TABLE, table_exists
from vitals_pipeline.checks.rules import DOWN, FAULT, OK, UNKNOWN
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.duckdb_io import naive_utc
from vitals_pipeline.storage.warehouse import DuckDBWarehouse
from vitals_pipeline.storage.schema import quote_identifier as _q
from vitals_pipeline.storage.schema import schema_name

DAILY_TABLE = "quality_daily"
DAILY_MERGE_KEYS = ("point", "day")
DAILY_FMT = "%Y-%m-%d"
AUTOMATION_SENSOR = "quality_daily_automation"

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


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """UTC days from the day of VITALS_PARTITIONS_START."""
    start = settings.partitions_start.astimezone(UTC)
    return dg.DailyPartitionsDefinition(
        start_date=start.strftime(DAILY_FMT), fmt=DAILY_FMT, timezone="UTC"
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


def daily_automation(upstream: dg.AssetKey) -> dg.AutomationCondition:
    """When a day is rolled up: eager() without its latest-window limit on updates.

    - the newest complete day, once, when it appears (newly missing), or any day whose 5-minute
      partitions were re-materialized since it last ran (late samples, repairs);
    - but only when none of its 288 upstream partitions is missing or in progress (an incomplete
      day waits), and it is not already running.
    """
    condition = dg.AutomationCondition
    return (
        (
            (condition.in_latest_time_window() & condition.newly_missing())
            | condition.any_deps_updated()
        ).since_last_handled()
        & ~condition.any_deps_missing()
        & ~condition.any_deps_in_progress()
        & ~condition.in_progress()
    ).with_label(f"day of {upstream.to_user_string()} complete or updated")


def build_quality_daily_asset(
    site: str, settings: Settings, thresholds: QualityThresholds
) -> dg.AssetsDefinition:
    """`<site>/quality_daily` for one ACE site."""
    slug = schema_name(site)
    timeseries = timeseries_key(site)

    @dg.asset(
        key=[slug, DAILY_TABLE],
        group_name=slug,
        partitions_def=daily_partitions(settings),
        deps=[timeseries_dep(site)],  # a day depends on its 288 five-minute partitions
        backfill_policy=dg.BackfillPolicy.single_run(),
        automation_condition=daily_automation(timeseries),
        pool="duckdb",
        kinds={"duckdb"},
        metadata={
            "site": site,
            "schema": slug,
            "partition_expr": "day",
            "merge_keys": list(DAILY_MERGE_KEYS),
        },
        tags={"site": slug},
    )
    def quality_daily(context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse) -> pa.Table:
        """Per point and UTC day: completeness, counts of null / text / sentinel / out-of-range
        readings, partitions per status, and the day's status (ok / fault / down / unknown) with
        the reason. Rolled up from `<site>.quality`; materializes automatically once the day's
        288 five-minute partitions are stored, and again when one of them is re-fetched.
        """
        tw = context.partition_time_window
        start, end = tw.start.astimezone(UTC), tw.end.astimezone(UTC)
        with warehouse.connect() as conn:
            try:
                rows = daily_rollup(conn, slug, start, end, thresholds)
            except LookupError:
                raise dg.Failure(
                    description=(
                        f"site {site!r}: no {slug}.{QUALITY_TABLE} table in {warehouse.database}: materialize "
                        f"{timeseries.to_user_string()} (with VITALS_CHECKS on) for "
                        f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC first"
                    ),
                    allow_retries=False,
                ) from None
        _add_day_metadata(context, rows)
        if rows.num_rows == 0:
            context.log.warning(
                f"site {site}: no quality rows in [{start:%Y-%m-%d}, {end:%Y-%m-%d}) UTC; "
                "nothing to roll up"
            )
        return rows

    return quality_daily


def _add_day_metadata(context: dg.AssetExecutionContext, rows: pa.Table) -> None:
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
    for key in context.partition_keys:
        points, ok, fault, down, unknown, pct = figures.get(key, (0, 0, 0, 0, 0, None))
        meta = {
            "points": points,
            "points_ok": ok,
            "points_fault": fault,
            "points_down": down,
            "points_unknown": unknown,
        }
        if pct is not None:
            meta["completeness_pct"] = round(float(pct), 3)
        context.add_asset_metadata(meta, partition_key=key)


def build_quality_automation_sensor(
    keys: list[dg.AssetKey],
) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the quality_daily assets' automation conditions (running by default: Dagster's
    implicit default automation sensor starts stopped)."""
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.assets(*keys),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description="Daily quality roll-ups once their day's 5-minute partitions are all stored, "
        "and again when one is re-fetched.",
    )


def build_quality_daily(
    settings: Settings, thresholds: QualityThresholds | None = None
) -> tuple[list[dg.AssetsDefinition], list[dg.SensorDefinition]]:
    """Every site's `quality_daily` asset and the sensor that automates them; nothing when the
    data-quality layer is off (VITALS_CHECKS=off: no quality table to roll up)."""
    thresholds = thresholds or QualityThresholds.from_env()
    if not thresholds.enabled:
        return [], []
    assets = [build_quality_daily_asset(site, settings, thresholds) for site in settings.sites]
    return assets, [build_quality_automation_sensor([a.key for a in assets])]


def quality_daily_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), DAILY_TABLE])


# A day is this many 5-minute partitions.
PARTITIONS_PER_DAY = int(timedelta(days=1) / timedelta(minutes=5))
