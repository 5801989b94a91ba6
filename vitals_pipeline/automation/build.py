"""`build_automation(settings)`: everything `definitions.py` registers for automation."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from vitals_pipeline.assets.keys import five_minute_partitions
from vitals_pipeline.automation.alerts import build_site_alert_sensor
from vitals_pipeline.automation.fleet_status import build_fleet_status_sensor, fleet_status_spec
from vitals_pipeline.automation.jobs import build_fleet_job
from vitals_pipeline.automation.pause import build_pause_jobs
from vitals_pipeline.automation.prune import build_prune
from vitals_pipeline.automation.rollups import build_rollup_automation
from vitals_pipeline.automation.schedules import build_fleet_schedule
from vitals_pipeline.automation.sensors import build_catchup_sensor
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings


@dataclass(frozen=True)
class Automation:
    assets: list
    jobs: list
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]


def build_automation(
    settings: Settings, automation: AutomationSettings | None = None, *, with_daily_quality: bool = True
) -> Automation:
    """The fleet job, its schedule and catch-up sensor, the roll-ups that follow its runs, the
    per-site alerts, the pause switch and the daily retention run.
    Schedule and sensors start RUNNING when a daemon first sees them."""
    automation = automation or AutomationSettings.from_env()
    job = build_fleet_job(settings.sites)
    prune_job, prune_schedule = build_prune(automation)
    rollup_jobs, rollup_sensor = build_rollup_automation(settings.sites, with_daily_quality)
    return Automation(
        assets=[fleet_status_spec()],
        jobs=[job, *rollup_jobs, *build_pause_jobs(settings.sites), prune_job],
        schedules=[build_fleet_schedule(settings, automation, job), prune_schedule],
        sensors=[
            build_catchup_sensor(settings, automation, job, five_minute_partitions(settings)),
            build_site_alert_sensor(automation),
            rollup_sensor,
            build_fleet_status_sensor(settings, automation),
        ],
    )
