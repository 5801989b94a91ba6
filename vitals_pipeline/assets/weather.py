"""`<site>/weather`: the site's current weather conditions, stored every 5-minute tick.

ACE serves only *current* conditions (`GET /sites/{site}/weather`:
`{"weather": {"temp": {"name", "value", "time"}, "feels_like": ..., ...}}`), so:

- Rows are keyed by the reading's own time (`<site>.weather`: metric, ts, value, name; merge keys
  (metric, ts)), not by the partition. ACE refreshes its reading every few minutes, so one reading
  is often fetched by two ticks: it is stored once. The reading's time is usually not inside the
  partition's window (a tick runs after its window closed), so the IO manager's window merge,
  which refuses rows outside the run's window and would store a reading fetched twice by two
  windows twice, does not fit. The asset merges with the same transactional `store_slice` over
  the whole table instead, and returns a MaterializeResult.
- Materializing an old partition (a backfill) stores today's conditions, under today's time: old
  weather cannot be fetched from ACE. The partitions only record when the feed was read.
- A site without a weather feed (ACE answers 404 with every member null) is skipped: the
  materialization says `skipped: no weather feed`, nothing is written, the run succeeds.
"""

import math
from datetime import UTC

import dagster as dg
import pyarrow as pa

from vitals_pipeline.ace.client import FetchStats, PERMANENT_ERRORS
from vitals_pipeline.ace.wire import parse_wire_time
from vitals_pipeline.assets.site import STEP_RETRY, five_minute_partitions
from vitals_pipeline.config import Settings
from vitals_pipeline.resources import AceResource
from vitals_pipeline.storage import connect_duckdb, schema_name, store_slice

WEATHER_TABLE = "weather"
WEATHER_MERGE_KEYS = ("metric", "ts")
WEATHER_SCHEMA = pa.schema(
    [
        ("metric", pa.string()),
        ("ts", pa.timestamp("us")),  # the reading's own time, naive UTC
        ("value", pa.float64()),
        ("name", pa.string()),
    ]
)
NO_FEED = "no weather feed"


def _number(value) -> float | None:
    """A reading as a finite float: ACE sends numbers (or, like timeseries, numeric strings)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def weather_rows(doc: dict) -> pa.Table:
    """A weather response -> one row per metric that carries a time (WEATHER_SCHEMA)."""
    members = doc.get("weather") if isinstance(doc, dict) else None
    rows: dict[str, list] = {"metric": [], "ts": [], "value": [], "name": []}
    for metric, reading in sorted((members or {}).items()):
        if not isinstance(reading, dict) or not reading.get("time"):
            continue
        rows["metric"].append(metric)
        rows["ts"].append(parse_wire_time(reading["time"]).astimezone(UTC).replace(tzinfo=None))
        rows["value"].append(_number(reading.get("value")))
        rows["name"].append(reading.get("name"))
    return pa.table(rows, schema=WEATHER_SCHEMA)


def build_weather_asset(site: str, settings: Settings) -> dg.AssetsDefinition:
    """`<site>/weather` for one ACE site."""
    slug = schema_name(site)
    database = settings.duckdb_path
    condition = dg.AutomationCondition

    @dg.asset(
        key=[slug, WEATHER_TABLE],
        group_name=slug,
        partitions_def=five_minute_partitions(settings),
        # A range run reads the current conditions once, whatever the range.
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=STEP_RETRY,
        # Each new 5-minute partition, once, as it appears.
        automation_condition=(
            condition.in_latest_time_window()
            & condition.newly_missing().since_last_handled()
            & ~condition.in_progress()
        ).with_label("every 5-minute tick"),
        pool="duckdb",
        kinds={"duckdb"},
        metadata={"site": site, "schema": slug, "merge_keys": list(WEATHER_MERGE_KEYS)},
        tags={"site": slug},
    )
    def weather(context: dg.AssetExecutionContext, ace: AceResource) -> dg.MaterializeResult:
        """The site's current weather (temp, feels_like, pressure, humidity, dew_point, clouds,
        wind_speed, wind_deg, wet_bulb), one row per metric keyed by the reading's own time.

        ACE has current conditions only: materializing an old partition stores today's reading.
        A site without a weather feed is skipped (`skipped: no weather feed`), not failed.
        """
        stats = FetchStats()
        try:
            with ace.client() as client:
                doc = client.weather(site, stats)
        except PERMANENT_ERRORS as exc:
            raise dg.Failure(description=f"site {site!r}: {exc}", allow_retries=False) from None
        if doc is None:
            context.log.info(f"site {site}: ACE has no weather feed for it; nothing stored")
            return dg.MaterializeResult(metadata={"skipped": NO_FEED})
        rows = weather_rows(doc)
        if rows.num_rows == 0:
            context.log.warning(f"site {site}: the weather response carried no timed reading")
            return dg.MaterializeResult(metadata={"skipped": "no timed reading in the response"})
        conn = connect_duckdb(database)
        try:
            counts = store_slice(
                conn, schema=slug, table=WEATHER_TABLE, rows=rows, merge_keys=WEATHER_MERGE_KEYS
            )[WEATHER_TABLE]
        finally:
            conn.close()
        times = rows.column("ts").to_pylist()
        context.log.info(
            f"site {site}: {rows.num_rows} weather readings of {max(times):%Y-%m-%d %H:%M:%S} UTC: "
            f"{counts.inserted} new, {counts.updated} changed, {counts.unchanged} already stored"
        )
        return dg.MaterializeResult(
            metadata={
                "readings": rows.num_rows,
                "reading_time": max(times).isoformat(),
                "store_rows_inserted": counts.inserted,
                "store_rows_updated": counts.updated,
                "store_rows_unchanged": counts.unchanged,
                "run_partitions": len(context.partition_keys),
                "api_requests": stats.requests,
            }
        )

    return weather


def weather_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), WEATHER_TABLE])
