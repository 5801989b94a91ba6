"""One job per site for its timeseries asset: what the schedule and the catch-up sensor launch."""

from __future__ import annotations

import dagster as dg

from vitals_pipeline.assets.keys import timeseries_key
from vitals_pipeline.automation.runs import SITE_TAG
from vitals_pipeline.storage.names import schema_name


def timeseries_job_name(site: str) -> str:
    return f"{schema_name(site)}_timeseries"


def build_timeseries_job(site: str) -> dg.UnresolvedAssetJobDefinition:
    """`<site>_timeseries`: the site's timeseries asset (and its checks), one range per run.

    The `vitals/site` run tag lets the catch-up sensor, the failure alert and `vitals status`
    find the site's runs without reading their plans.
    """
    return dg.define_asset_job(
        name=timeseries_job_name(site),
        selection=dg.AssetSelection.assets(timeseries_key(site)),
        tags={SITE_TAG: schema_name(site)},
        description=f"Fetch the ACE timeseries of site {site!r} for a partition range, in one run.",
    )
