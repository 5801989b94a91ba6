"""Dagster definitions: `dagster ... -m vitals_pipeline.definitions` loads `defs`.

Settings come from the environment (see config.py); the ACE key is not needed to load.
Cross-cutting choices (executor, IO manager, the warehouse, resources, freshness) are made once,
here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from vitals_pipeline.assets.archive import build_archive_asset
from vitals_pipeline.assets.hourly import build_hourly_asset
from vitals_pipeline.assets.points import build_points_asset
from vitals_pipeline.assets.quality_daily import build_quality_daily
from vitals_pipeline.assets.timeseries import build_timeseries_assets
from vitals_pipeline.assets.weather import build_weather_asset
from vitals_pipeline.automation import build_automation, with_timeseries_freshness
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.config import ConfigError, Settings
from vitals_pipeline.resources import AceResource
from vitals_pipeline.storage.io_manager import VitalsDuckDBIOManager
from vitals_pipeline.storage.warehouse import DuckDBWarehouse, Warehouse


def build_definitions(settings: Settings) -> dg.Definitions:
    # Data-quality thresholds and the VITALS_CHECKS switch, read once (checks/thresholds.py).
    quality = QualityThresholds.from_env()
    # Multi_assets for the whole fleet (the timeseries one per shard of sites): a run covers any
    # subset of the sites.
    fleet = [
        *build_timeseries_assets(settings, quality),
        build_points_asset(settings),
        build_weather_asset(settings),
    ]
    # Freshness is policy, set once here for every site's timeseries asset.
    fleet = dg.map_asset_specs(with_timeseries_freshness, fleet)
    automation = build_automation(settings, with_daily_quality=quality.enabled)
    # Derived from the stored samples (hourly roll-up, daily archive and quality), one
    # multi_asset each for the fleet, launched after the timeseries runs that complete their hours
    # and days (automation/rollups.py). Weather and points are refreshed by the fleet's tick run.
    derived = [
        build_hourly_asset(settings),
        build_archive_asset(settings),
        *build_quality_daily(settings, quality),
    ]
    warehouse = choose_warehouse(settings)
    return dg.Definitions(
        assets=[*fleet, *derived, *automation.assets],
        jobs=automation.jobs,
        schedules=automation.schedules,
        sensors=automation.sensors,
        resources={
            "ace": AceResource(api_url=settings.api_url, page_size=settings.page_size),
            "warehouse": warehouse,
            "io_manager": VitalsDuckDBIOManager(warehouse=warehouse),
        },
        executor=choose_executor(),
    )


def choose_warehouse(settings: Settings, environ: Mapping[str, str] = os.environ) -> Warehouse:
    """VITALS_WAREHOUSE_URL: where the samples live. Unset (default): the DuckDB file
    VITALS_DUCKDB_PATH, one writer process at a time. A postgresql:// URL: the shared warehouse
    in PostgreSQL, written by several processes and machines at once (docs/warehouse.md)."""
    if not (environ.get("VITALS_WAREHOUSE_URL") or "").strip():
        return DuckDBWarehouse(database=settings.duckdb_path)
    from vitals_pipeline.storage.postgres_warehouse import WarehouseUrlError, warehouse_from_env

    try:
        return warehouse_from_env(environ)
    except WarehouseUrlError as exc:
        raise ConfigError(str(exc)) from None


def choose_executor(environ: Mapping[str, str] = os.environ) -> dg.ExecutorDefinition:
    """VITALS_EXECUTOR: where a run's steps execute. `in_process` (default): the run's own process,
    steps one after another (a separate step process costs ~2.8 s per run). `celery`: each step
    a task for the Celery workers listening on VITALS_CELERY_BROKER_URL (deploy/celery/), so a
    fleet run's shards run on several machines."""
    choice = (environ.get("VITALS_EXECUTOR") or "in_process").strip()
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "celery":
        if not environ.get("VITALS_CELERY_BROKER_URL"):
            raise ConfigError(
                "VITALS_EXECUTOR=celery needs VITALS_CELERY_BROKER_URL, the Redis the Celery "
                "workers listen on (e.g. redis://:PASSWORD@redis-host:6379/0)"
            )
        from dagster_celery import celery_executor  # only a deployment that uses it imports it

        # Broker and result backend in one Redis. An env reference, not the value: the URL may
        # hold a password, which then appears in no config, run or event.
        url = {"env": "VITALS_CELERY_BROKER_URL"}
        return celery_executor.configured({"broker": url, "backend": url}, name="celery")
    raise ConfigError(f"VITALS_EXECUTOR={choice!r}: expected `in_process` (the default) or `celery`")


defs = build_definitions(Settings.from_env())
