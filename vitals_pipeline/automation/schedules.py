"""The fleet schedule: every 5 minutes, one run for every active site over the newest closed
partition and the lookback before it (one step per shard of VITALS_SHARD_SIZE sites)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from vitals_pipeline.assets.keys import REFRESH_POINTS_TAG, range_tags, timeseries_key, weather_key, window_keys
from vitals_pipeline.automation.gaps import scheduled_window
from vitals_pipeline.automation.pause import paused_sites
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.names import schema_name

SCHEDULE_NAME = "fleet_timeseries_schedule"
# The tick whose window closes at this minute of the hour refreshes every site's points.
POINTS_MINUTE = 5


def plan_tick(
    tick: datetime, sites: Sequence[str], paused: set[str], settings: Settings
) -> list[dg.RunRequest] | dg.SkipReason:
    """The run of one tick: the window of the newest closed partition + lookback, every site
    that is not paused."""
    window = scheduled_window(tick, timedelta(minutes=settings.lookback_minutes), settings.partitions_start)
    if window is None:
        return dg.SkipReason(
            f"no partition has closed yet: the first starts at "
            f"{settings.partitions_start:%Y-%m-%d %H:%M} UTC (VITALS_PARTITIONS_START)"
        )
    active = [site for site in sites if schema_name(site) not in paused]
    if not active:
        return dg.SkipReason(f"every site is paused ({len(sites)}); `vitals resume SITE` resumes one")
    first, last = window_keys(window)
    keys = [timeseries_key(site) for site in active]
    # The same run refreshes the weather every VITALS_WEATHER_MINUTES (its own step) and the
    # points once an hour (each site's fetch loads them first): no run of their own.
    closes = window.end.minute
    tags = {**range_tags(first, last), TRIGGER_TAG: "schedule"}
    if settings.weather_minutes and closes % settings.weather_minutes == 0:
        keys += [weather_key(site) for site in active]
    if closes == POINTS_MINUTE:
        tags[REFRESH_POINTS_TAG] = "true"
    return [
        dg.RunRequest(
            run_key=f"schedule:{first}...{last}",
            asset_selection=keys,
            # Empty, not None: None makes Dagster add every check of the selected assets back
            # to the run, which would then plan and record all of them (see checks/recording.py).
            asset_check_keys=[],
            tags=tags,
        )
    ]


def build_fleet_schedule(
    settings: Settings, automation: AutomationSettings, job: dg.UnresolvedAssetJobDefinition
) -> dg.ScheduleDefinition:
    sites = list(settings.sites)

    @dg.schedule(
        name=SCHEDULE_NAME,
        cron_schedule=automation.schedule_cron,
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Every site ({len(sites)}): one run over the newest closed 5-minute partition and the "
            f"{settings.lookback_minutes} minutes before it (late "
            "samples land on the next ticks). Ticks a minute after each 5-minute boundary, UTC. "
            "Paused sites are left out."
        ),
    )
    def fleet_timeseries_schedule(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time or datetime.now(UTC)
        return plan_tick(tick, sites, paused_sites(context.instance), settings)

    return fleet_timeseries_schedule
