"""The fleet job: what the schedule and the catch-up sensor launch."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from vitals_pipeline.assets.keys import points_key, timeseries_key, weather_key

FLEET_JOB = "fleet_timeseries"


def build_fleet_job(sites: Iterable[str]) -> dg.UnresolvedAssetJobDefinition:
    """`fleet_timeseries`: every site's timeseries (a partition range per run), and the weather
    and points the tick refreshes (unpartitioned, in the same run); each RunRequest narrows it.
    Without the checks in the selection: the run records check results itself, only those that
    changed (see checks/recording.py), so that a tick does not plan 8 check executions per site
    it will mostly not record."""
    sites = list(sites)
    keys = [key(site) for key in (timeseries_key, weather_key, points_key) for site in sites]
    return dg.define_asset_job(
        name=FLEET_JOB,
        selection=dg.AssetSelection.assets(*keys).without_checks(),
        description=(
            "Fetch the ACE timeseries of many sites for a partition range, in one run (the "
            "schedule's ticks and the catch-up sensor's batches)."
        ),
    )
