"""Asset keys, partitions and range tags of the site assets: what the assets, the automation, the
CLI and `vitals status` share. Imports only dagster, so that `vitals status` and the sensors load
none of the fetching and storing machinery."""

from __future__ import annotations

import warnings
from datetime import UTC

import dagster as dg

from vitals_pipeline.config import Settings
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.windows import PARTITION_CRON, PARTITION_FMT, Window

DAY_FMT = "%Y-%m-%d"


def five_minute_partitions(settings: Settings) -> dg.TimeWindowPartitionsDefinition:
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=PARTITION_CRON,
        start=settings.partitions_start.strftime(PARTITION_FMT),
        fmt=PARTITION_FMT,
        timezone="UTC",
    )


def hourly_partitions(settings: Settings) -> dg.TimeWindowPartitionsDefinition:
    """UTC hours from VITALS_PARTITIONS_START floored to the hour (the roll-ups)."""
    start = settings.partitions_start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 * * * *", start=start.strftime(PARTITION_FMT), fmt=PARTITION_FMT, timezone="UTC"
    )


def daily_partitions(settings: Settings) -> dg.TimeWindowPartitionsDefinition:
    """UTC days from VITALS_PARTITIONS_START floored to midnight (archive, daily quality)."""
    start = settings.partitions_start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 0 * * *", start=start.strftime(DAY_FMT), fmt=DAY_FMT, timezone="UTC"
    )


# The daily assets (archive, daily quality) backfill one day per run. One policy for both: the
# fleet_daily job runs them together, and mixed policies make Dagster warn on every load.
DAILY_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)


def timeseries_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), "timeseries"])


def hourly_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), "timeseries_hourly"])


def archive_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), "archive"])


def quality_daily_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), "quality_daily"])


def weather_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), "weather"])


def points_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), "points"])


with warnings.catch_warnings():
    # Read and decided: `allow_nonexistent_upstream_partitions` is beta in Dagster 1.13; it is what
    # lets the first hour and day (floored to before VITALS_PARTITIONS_START) be complete. One
    # mapping object for every site, so the warning would come once, not once per site.
    warnings.filterwarnings(
        "ignore", message=".*allow_nonexistent_upstream_partitions.*", category=dg.BetaWarning
    )
    _SPAN_MAPPING = dg.TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=True)


def timeseries_dep(site: str) -> dg.AssetDep:
    """A dependency on the site's 5-minute partitions from a coarser time-partitioned asset (an
    hour or a day depends on the partitions it spans). The first hour or day may start before
    VITALS_PARTITIONS_START: those partitions do not exist and are not waited for."""
    return dg.AssetDep(timeseries_key(site), partition_mapping=_SPAN_MAPPING)


# Set on the runs of `vitals backfill` (one long-lived process, one run after another).
BACKFILL_TAG = "vitals/backfill"
# Set on the hourly tick's run: its timeseries step refreshes every site's points first, in the
# site's own fetch (a points step in the same run would hold every site's samples back when
# one site's points fail: Dagster skips a step whose upstream output is missing).
REFRESH_POINTS_TAG = "vitals/refresh_points"


def range_tags(first_key: str, last_key: str) -> dict[str, str]:
    """Run tags that make one run cover partitions first..last (single_run backfill shape)."""
    return {
        "dagster/asset_partition_range_start": first_key,
        "dagster/asset_partition_range_end": last_key,
    }


def window_keys(window: Window) -> tuple[str, str]:
    keys = window.partition_keys()
    return keys[0], keys[-1]
