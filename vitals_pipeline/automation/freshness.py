"""The freshness policy of the timeseries assets, applied once at the definitions root."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

# The schedule materializes a new partition every 5 minutes (a minute after each boundary): no new
# materialization for 15 minutes is three missed ticks. Freshness is asset-level in Dagster, not
# per partition: a catch-up run of old partitions also counts as "fresh".
TIMESERIES_FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(minutes=15), warn_window=timedelta(minutes=10)
)


def with_timeseries_freshness(spec: dg.AssetSpec) -> dg.AssetSpec:
    """For `dg.map_asset_specs`: the freshness policy on every `<site>/timeseries` asset."""
    if spec.key.path[-1] != "timeseries":
        return spec
    return spec.replace_attributes(freshness_policy=TIMESERIES_FRESHNESS)
