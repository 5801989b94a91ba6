"""`<site>/weather` for every site: current conditions, refreshed every 5 minutes.

ACE serves only *current* conditions (`GET /sites/{site}/weather`:
`{"weather": {"temp": {"name", "value", "time"}, "feels_like": ..., ...}}`), so the asset is not
partitioned (a 5-minute partition of weather could never be filled for the past):

- Rows are keyed by the reading's own time (`<site>.weather`: metric, ts, value, name; merge keys
  (metric, ts)). ACE refreshes its reading every few minutes, so one reading is often fetched by
  two ticks: the IO manager's merge over the table stores it once.
- A step of the fleet's tick run materializes it every VITALS_WEATHER_MINUTES (15 by default: one
  request per site, and a materialization per site that the instance keeps; ACE's readings change
  every few minutes): every site at once, fetched concurrently. Its history of readings is the
  table, not partitions.
- A site without a weather feed (ACE answers 404 with every member null) is skipped: its
  materialization says `skipped: no weather feed` and stores nothing; the run succeeds.
"""

import math
from collections.abc import Iterator
from datetime import UTC

import dagster as dg
import pyarrow as pa

from vitals_pipeline.ace.client import AceError, FetchStats
from vitals_pipeline.ace.wire import parse_wire_time
from vitals_pipeline.assets.fleet import SiteFailures, fetch_sites, output_name, selected_sites
from vitals_pipeline.assets.keys import weather_key
from vitals_pipeline.config import Settings
from vitals_pipeline.resources import AceResource
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.storage.warehouse import Warehouse

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


def build_weather_asset(settings: Settings) -> dg.AssetsDefinition:
    """`<site>/weather` of every site, one multi_asset."""
    sites = list(settings.sites)
    outs = {
        output_name(site, WEATHER_TABLE): dg.AssetOut(
            key=weather_key(site),
            group_name=schema_name(site),
            is_required=False,
            kinds={"duckdb"},
            tags={"site": schema_name(site)},
            metadata={"site": site, "schema": schema_name(site), "merge_keys": list(WEATHER_MERGE_KEYS)},
            description=(
                f"Current weather of site {site!r} (temp, feels_like, pressure, humidity, dew_point, "
                "clouds, wind_speed, wind_deg, wet_bulb), one row per metric keyed by the reading's "
                f"own time, table {schema_name(site)}.weather."
            ),
        )
        for site in sites
    }

    @dg.multi_asset(name="weather", outs=outs, can_subset=True, pool="duckdb")
    def weather(
        context: dg.AssetExecutionContext, ace: AceResource, warehouse: Warehouse
    ) -> Iterator[dg.Output]:
        """The selected sites' current weather, fetched concurrently; sites without a feed are
        skipped, sites ACE refuses fail alone."""
        chosen = selected_sites(context, settings.sites, weather_key)
        failures = SiteFailures("weather")

        def fetch(site: str, deadline: float) -> dict | None:
            with session.client(deadline=deadline) as client:
                return client.weather(site, FetchStats())

        def describe(site: str, exc: BaseException) -> str:
            if isinstance(exc, AceError | TimeoutError):
                return f"site {site!r}: {exc}"
            return f"site {site!r}: {type(exc).__name__}: {exc}"

        with ace.session(max_in_flight=settings.fetch_concurrency) as session:
            fetched = list(fetch_sites(
                chosen, fetch, concurrency=settings.fetch_concurrency,
                budget_seconds=settings.site_budget_seconds, describe_error=describe,
            ))
        # One DuckDB connection for every site's store (the IO manager's `connect()` returns the
        # session's): opening the file per site cost ~0.1 s each with hundreds of site schemas.
        with warehouse.session():
            yield from _weather_outputs(fetched, failures)
        failures.raise_if_any(len(chosen))

    return weather


def _weather_outputs(fetched, failures: SiteFailures) -> Iterator[dg.Output]:
    """Each fetched site's output (its readings, or a skip), failed sites kept apart."""
    for outcome in fetched:
        if outcome.error is not None:
            failures.add(outcome.site, outcome.error)
            continue
        rows = weather_rows(outcome.value) if outcome.value is not None else weather_rows({})
        if outcome.value is None:
            metadata = {"skipped": NO_FEED}
        elif rows.num_rows == 0:
            metadata = {"skipped": "no timed reading in the response"}
        else:
            metadata = {
                "readings": rows.num_rows,
                "reading_time": max(rows.column("ts").to_pylist()).isoformat(),
            }
        yield dg.Output(rows, output_name=output_name(outcome.site, WEATHER_TABLE), metadata=metadata)


