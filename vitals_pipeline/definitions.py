"""Dagster definitions: `dagster ... -m vitals_pipeline.definitions` loads `defs`.

Settings come from the environment (see config.py); the ACE key is not needed to load.
Cross-cutting choices (executor, IO manager, resources) are made once, here.
"""

from __future__ import annotations

import dagster as dg

from vitals_pipeline.assets.site import build_site_assets
from vitals_pipeline.config import Settings
from vitals_pipeline.resources import AceResource
from vitals_pipeline.storage import VitalsDuckDBIOManager


def build_definitions(settings: Settings) -> dg.Definitions:
    assets = [asset for site in settings.sites for asset in build_site_assets(site, settings)]
    return dg.Definitions(
        assets=assets,
        resources={
            "ace": AceResource(api_url=settings.api_url, page_size=settings.page_size),
            "io_manager": VitalsDuckDBIOManager(database=settings.duckdb_path),
        },
        # One step per run in this process: a separate step process costs ~2.8 s per run.
        executor=dg.in_process_executor,
    )


defs = build_definitions(Settings.from_env())
