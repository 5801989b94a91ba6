"""`<site>/timeseries_hourly`: per point and UTC hour, the roll-up charts read instead of raw samples.

The aggregate is computed by DuckDB over the stored samples (a big site has 270,000 samples an
hour; they never enter Python) and only the small result, one row per (point, hour), goes back
through the IO manager like every other table. One multi_asset rolls up every site of the fleet,
on one DuckDB connection for the whole run (the warehouse's session).

Columns, per point and hour (`hour` = the hour's start, naive UTC):
  samples   rows stored in the hour, readings that are not numbers included
  count     numeric readings (NULL, NaN and text are not)
  avg, min, max, first, last   over the numeric readings (first/last: oldest/newest by ts)
  delta     totalizers only (kWh meters and the like, see `TOTALIZER_UNITS`): the consumption seen
            within the hour. `last - first` when the meter never went down; otherwise a drop is a
            meter reset, not negative consumption (docs/data-quality.md), and delta is the sum of
            the rising steps between consecutive readings. NULL for other points.
  resets    totalizers only: how many drops (resets) the hour had.

The step from the last reading of one hour to the first of the next belongs to neither hour's
delta: each hour is computed from its own twelve 5-minute partitions only, so that re-fetching a
partition changes exactly one hour. Consumption over a longer span is
`sum(delta) + sum(greatest(first - lag(last), 0))` over consecutive hours.
"""

from collections import Counter
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pyarrow as pa

from vitals_pipeline.assets.fleet import SiteFailures, output_name, selected_sites
from vitals_pipeline.assets.keys import hourly_key, hourly_partitions, points_key, timeseries_dep, timeseries_key
from vitals_pipeline.config import Settings
from vitals_pipeline.storage import qualified_name, schema_name
from vitals_pipeline.storage.duckdb_io import catalog_name, naive_utc, table_exists
from vitals_pipeline.storage.lens import need
from vitals_pipeline.storage.warehouse import Warehouse

HOUR = timedelta(hours=1)
HOURLY_FMT = "%Y-%m-%d-%H:%M"  # Dagster's own hourly format, and the 5-minute one

# BACnet engineering units (and the abbreviations some sites put in kv_tags["unit"]) of
# accumulating meters: energy and volume totals. A rate (kilowatts, gallons per minute) is not one.
TOTALIZER_UNITS = frozenset(
    {
        "kilowatt-hours", "watt-hours", "megawatt-hours", "kilovolt-ampere-hours",
        "megavolt-ampere-hours", "kilovolt-ampere-hours-reactive", "kilowatt-hours-reactive",
        "btus", "kilo-btus", "mega-btus", "therms", "ton-hours", "joules", "kilojoules",
        "megajoules", "gigajoules", "cubic-feet", "cubic-meters", "us-gallons",
        "imperial-gallons", "liters",
        "kwh", "wh", "mwh", "kvah", "kvarh", "btu", "kbtu", "mbtu", "therm", "ton-h", "mj", "gj",
        "ft³", "m³", "gal", "l",
    }
)
# A point tagged this way is a totalizer whatever its unit says (units are often missing).
TOTALIZER_MARKERS = ("totalizer",)
TOTALIZER_ROLE_PATTERN = r"(energy|totali[sz]er|consumption)"

HOURLY_SCHEMA = pa.schema(
    [
        ("point", pa.string()),
        ("hour", pa.timestamp("us")),
        ("samples", pa.int64()),
        ("count", pa.int64()),
        ("avg", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("first", pa.float64()),
        ("last", pa.float64()),
        ("delta", pa.float64()),
        ("resets", pa.int64()),
    ]
)
HOURLY_TABLE = "timeseries_hourly"
HOURLY_MERGE_KEYS = ("point", "hour")


def _totalizers_sql(catalog: str, schema: str, has_points: bool) -> tuple[str, list]:
    """A query for the names of the site's totalizer points (from `<site>.points`)."""
    if not has_points:
        return "SELECT NULL::VARCHAR AS point WHERE false", []
    points = qualified_name(catalog, schema, "points")
    units = sorted(TOTALIZER_UNITS)
    return (
        f"SELECT name AS point FROM {points} "
        f"WHERE lower(unit) IN ({', '.join('?' for _ in units)}) "
        f"OR len(list_intersect(marker_tags, ?::VARCHAR[])) > 0 "
        f"OR regexp_matches(lower(coalesce(json_extract_string(kv_tags, '$.role'), '')), ?)",
        [*units, list(TOTALIZER_MARKERS), TOTALIZER_ROLE_PATTERN],
    )


def hourly_rollup(
    conn: duckdb.DuckDBPyConnection, schema: str, start: datetime, end: datetime
) -> tuple[pa.Table, bool]:
    """The roll-up of `schema`'s samples in [start, end) (whole UTC hours), computed in DuckDB.

    Returns (rows in HOURLY_SCHEMA ordered by hour and point, whether `<schema>.points` was there
    to tell totalizers apart). Raises LookupError when the site has no timeseries table yet.
    """
    catalog = conn.execute("SELECT current_database()").fetchall()[0][0]
    if not table_exists(conn, schema, "timeseries"):
        raise LookupError(f"no table {schema}.timeseries")
    has_points = table_exists(conn, schema, "points")
    need(conn, schema, "timeseries", "ts", naive_utc(start), naive_utc(end))
    if has_points:
        need(conn, schema, "points")
    totalizers, totalizer_params = _totalizers_sql(catalog, schema, has_points)
    timeseries = qualified_name(catalog, schema, "timeseries")
    # One aggregation pass over the hour's rows; the ordered step scan (a window function, the
    # expensive part) only over the totalizers' readings.
    sql = f"""
        WITH s AS (
            SELECT point, ts, value, date_trunc('hour', ts) AS hour
            FROM {timeseries} WHERE ts >= ? AND ts < ?
        ),
        totalizers AS (SELECT DISTINCT point FROM ({totalizers})),
        hours AS (
            SELECT point, hour, count(*) AS samples, count(value) AS n,
                   avg(value) AS avg, min(value) AS min, max(value) AS max,
                   arg_min(value, ts) FILTER (WHERE value IS NOT NULL) AS first,
                   arg_max(value, ts) FILTER (WHERE value IS NOT NULL) AS last
            FROM s GROUP BY point, hour
        ),
        steps AS (
            SELECT point, hour,
                   value - lag(value) OVER (PARTITION BY point, hour ORDER BY ts) AS step
            FROM s SEMI JOIN totalizers USING (point) WHERE value IS NOT NULL
        ),
        meters AS (
            SELECT point, hour, coalesce(sum(step) FILTER (WHERE step > 0), 0) AS rise,
                   count(*) FILTER (WHERE step < 0) AS drops
            FROM steps GROUP BY point, hour
        )
        SELECT h.point, h.hour, h.samples, h.n AS count, h.avg, h.min, h.max, h.first, h.last,
               CASE WHEN m.point IS NULL OR h.n = 0 THEN NULL
                    WHEN m.drops = 0 THEN h.last - h.first ELSE m.rise END AS delta,
               CASE WHEN m.point IS NULL OR h.n = 0 THEN NULL ELSE m.drops END AS resets
        FROM hours h LEFT JOIN meters m ON m.point = h.point AND m.hour = h.hour
        ORDER BY h.hour, h.point
    """
    params = [naive_utc(start), naive_utc(end), *totalizer_params]
    table = conn.sql(sql, params=params).to_arrow_table()
    return table.cast(HOURLY_SCHEMA), has_points


def build_hourly_asset(settings: Settings) -> dg.AssetsDefinition:
    """`<site>/timeseries_hourly` of every site, one multi_asset (a run rolls up any subset)."""
    sites = list(settings.sites)
    outs = {
        output_name(site, HOURLY_TABLE): dg.AssetOut(
            key=hourly_key(site),
            group_name=schema_name(site),
            is_required=False,
            kinds={"duckdb"},
            tags={"site": schema_name(site)},
            metadata={
                "site": site,
                "schema": schema_name(site),
                "partition_expr": "hour",
                "merge_keys": list(HOURLY_MERGE_KEYS),
            },
            description=(
                f"Site {site!r} per point and UTC hour (table {schema_name(site)}.{HOURLY_TABLE}): "
                "samples, count, avg, min, max, first, last, and for totalizers (kWh and other meter "
                "totals) the hour's consumption `delta` with meter resets handled. Rolled up once "
                "the hour's 5-minute partitions are final, and again when a catch-up or backfill "
                "re-fetches any of them (the fleet_rollups sensor)."
            ),
        )
        for site in sites
    }

    @dg.multi_asset(
        name=HOURLY_TABLE,
        outs=outs,
        partitions_def=hourly_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
        pool="duckdb",
        # Each hour reads its own twelve 5-minute partitions; units and tags tell totalizers apart
        # (read if present, never waited for).
        deps=[timeseries_dep(site) for site in sites] + [points_key(site) for site in sites],
        internal_asset_deps={
            output_name(site, HOURLY_TABLE): {timeseries_key(site), points_key(site)} for site in sites
        },
    )
    def timeseries_hourly(context: dg.AssetExecutionContext, warehouse: Warehouse):
        """The selected sites' hourly roll-ups for the run's hours, computed in DuckDB from
        `<site>.timeseries` and merged through the IO manager, one connection for all sites."""
        tw = context.partition_time_window
        start, end = tw.start.astimezone(UTC), tw.end.astimezone(UTC)
        chosen = selected_sites(context, sites, hourly_key)
        failures = SiteFailures(f"hourly roll-up of [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) UTC")
        without_points = []
        with warehouse.session() as conn:
            for site in chosen:
                slug = schema_name(site)
                try:
                    rows, has_points = hourly_rollup(conn, slug, start, end)
                except LookupError:
                    failures.add(site, f"site {site!r}: no {slug}.timeseries table: materialize "
                                       f"{timeseries_key(site).to_user_string()} for these hours first")
                    continue
                if not has_points:
                    without_points.append(slug)
                rows_per_hour = Counter(rows.column("hour").to_pylist())
                for key in context.partition_keys:
                    hour = datetime.strptime(key, HOURLY_FMT)
                    context.add_asset_metadata(
                        {"rows": rows_per_hour.get(hour, 0)}, asset_key=hourly_key(site), partition_key=key
                    )
                yield dg.Output(rows, output_name=output_name(site, HOURLY_TABLE))
        if without_points:
            context.log.warning(
                f"no points table for {len(without_points)} site(s) ({', '.join(without_points[:10])}), "
                "so totalizers cannot be told apart and `delta` stays NULL; materialize their "
                "<site>/points and re-run these hours"
            )
        failures.raise_if_any(len(chosen))

    return timeseries_hourly


def complete_hours(start: datetime, end: datetime) -> tuple[str, str] | None:
    """First and last hourly partition keys of the whole UTC hours inside [start, end), or None."""
    first = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += HOUR
    last = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - HOUR
    if last < first:
        return None
    return first.strftime(HOURLY_FMT), last.strftime(HOURLY_FMT)


def hourly_summary(database: str, sites: list[str]) -> list[str]:
    """Human lines about each site's stored roll-up (for `vitals demo`); opens the file read-only."""
    lines = []
    with duckdb.connect(database, read_only=True) as conn:
        for site in sites:
            slug = schema_name(site)
            if not table_exists(conn, slug, HOURLY_TABLE):
                lines.append(f"{site}: no hourly roll-up yet")
                continue
            rows, hours, points, first, last, meters, used = conn.execute(
                "SELECT count(*), count(DISTINCT hour), count(DISTINCT point), min(hour), max(hour), "
                "count(DISTINCT point) FILTER (WHERE delta IS NOT NULL), sum(delta) "
                f"FROM {qualified_name(catalog_name(database), slug, HOURLY_TABLE)}"
            ).fetchall()[0]
            span = f"{first:%Y-%m-%d %H:%M} .. {last + HOUR:%H:%M} UTC" if rows else "no hours"
            lines.append(
                f"{site}: {rows:,} hourly rows ({hours} h x {points} points, {span}; "
                f"{meters} totalizers, {used or 0:,.1f} units consumed)  (table {slug}.{HOURLY_TABLE})"
            )
    return lines
