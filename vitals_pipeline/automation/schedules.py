"""The per-site schedule: every 5 minutes, one run over the newest closed partition + lookback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from vitals_pipeline.assets.keys import range_tags, window_keys
from vitals_pipeline.automation.gaps import schedule_run_key, scheduled_window
from vitals_pipeline.automation.runs import SITE_TAG, TRIGGER_TAG
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.names import schema_name


def schedule_name(site: str) -> str:
    return f"{schema_name(site)}_timeseries_schedule"


def build_site_schedule(
    site: str,
    settings: Settings,
    automation: AutomationSettings,
    job: dg.UnresolvedAssetJobDefinition,
) -> dg.ScheduleDefinition:
    slug = schema_name(site)
    lookback = timedelta(minutes=settings.lookback_minutes)

    @dg.schedule(
        name=schedule_name(site),
        cron_schedule=automation.schedule_cron,
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Site {site!r}: one run over the newest closed 5-minute partition and the "
            f"{settings.lookback_minutes} minutes before it (late samples land on the next tick). "
            "Ticks a minute after each 5-minute boundary, UTC."
        ),
    )
    def timeseries_schedule(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time or datetime.now(UTC)
        window = scheduled_window(tick, lookback, settings.partitions_start)
        if window is None:
            return dg.SkipReason(
                f"no partition has closed yet: the first starts at "
                f"{settings.partitions_start:%Y-%m-%d %H:%M} UTC (VITALS_PARTITIONS_START)"
            )
        first, last = window_keys(window)
        return dg.RunRequest(
            run_key=schedule_run_key(slug, first, last),
            tags={**range_tags(first, last), SITE_TAG: slug, TRIGGER_TAG: "schedule"},
        )

    return timeseries_schedule
