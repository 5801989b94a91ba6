"""`build_automation(settings)`: everything `definitions.py` registers for automation."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from vitals_pipeline.assets.keys import five_minute_partitions
from vitals_pipeline.automation.alerts import build_failure_alert_sensor
from vitals_pipeline.automation.jobs import build_timeseries_job
from vitals_pipeline.automation.schedules import build_site_schedule
from vitals_pipeline.automation.sensors import build_catchup_sensor
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings


@dataclass(frozen=True)
class Automation:
    jobs: list[dg.UnresolvedAssetJobDefinition]
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]


def build_automation(settings: Settings, automation: AutomationSettings | None = None) -> Automation:
    """Per site: `<site>_timeseries` job, `<site>_timeseries_schedule`, `<site>_catchup`; plus
    one failure alert for the code location. All start RUNNING when a daemon first sees them."""
    automation = automation or AutomationSettings.from_env()
    partitions = five_minute_partitions(settings)
    jobs, schedules, sensors = [], [], []
    for site in settings.sites:
        job = build_timeseries_job(site)
        jobs.append(job)
        schedules.append(build_site_schedule(site, settings, automation, job))
        sensors.append(build_catchup_sensor(site, settings, automation, job, partitions))
    sensors.append(build_failure_alert_sensor(automation))
    return Automation(jobs=jobs, schedules=schedules, sensors=sensors)
