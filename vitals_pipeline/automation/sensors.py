"""The per-site catch-up sensor: partitions of the last VITALS_CATCHUP_HOURS that are missing or
whose latest run failed get one range run per contiguous gap.

One sensor per site, not one for all: a site whose API is failing backs off without holding the
others up, an operator can pause one site (a building offline for works) from the UI, and each
tick stays a handful of queries for one asset.

A tick reads the partition status Dagster keeps incrementally for the UI (`get_status_by_partition`)
for the window's keys only, which it formats itself (`Window.partition_keys`): it never lists the
partitions definition, which may hold over 100,000 keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster import DagsterEventType
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from dagster._core.storage.partition_status_cache import AssetPartitionStatus

from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.automation.gaps import (
    MAX_RUN_PARTITIONS,
    Gap,
    catchup_run_key,
    catchup_window,
    find_gaps,
    marker_for,
    newest_first,
)
from vitals_pipeline.automation.runs import SITE_TAG, TRIGGER_TAG
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.windows import Window

# A gap whose latest run failed is retried at once when the site has materialized anything since
# that run was planned (the API is back); otherwise after this long, so that a failure a retry
# cannot fix (a revoked key) costs one run per site every quarter hour, not one per tick.
RETRY_AFTER_FAILURE = timedelta(minutes=15)
# The runs one tick may launch (a site with partitions failing on and off has many small gaps).
MAX_RUNS_PER_TICK = 12

_NEEDS_RUN = (None, AssetPartitionStatus.FAILED)


def _utcnow() -> datetime:
    """The sensor's clock (a seam for tests; the daemon evaluates on the wall clock)."""
    return datetime.now(UTC)


def catchup_sensor_name(site: str) -> str:
    return f"{schema_name(site)}_catchup"


@dataclass
class CatchupPlan:
    """What one catch-up tick decided for one site."""

    window: Window | None
    gaps: list[Gap] = field(default_factory=list)
    requests: list[dg.RunRequest] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # why some gaps wait
    skip_reason: str | None = None

    def sensor_result(self) -> dg.SensorResult | dg.SkipReason:
        if not self.requests:
            return dg.SkipReason(self.skip_reason or "; ".join(self.held) or "nothing to catch up")
        return dg.SensorResult(run_requests=self.requests)


def plan_catchup(
    instance: dg.DagsterInstance,
    site: str,
    partitions_def: dg.PartitionsDefinition,
    *,
    now: datetime,
    hours: int,
    partitions_start: datetime,
    retry_after: timedelta = RETRY_AFTER_FAILURE,
    max_partitions: int = MAX_RUN_PARTITIONS,
    max_runs: int = MAX_RUNS_PER_TICK,
) -> CatchupPlan:
    """The catch-up runs for `site` at `now`. Reads the instance; launches nothing."""
    slug = schema_name(site)
    asset_key = timeseries_key(site)
    window = catchup_window(now, hours, partitions_start)
    if window is None:
        return CatchupPlan(None, skip_reason="no closed partition older than the newest yet")

    # One batch at a time: while the API is down a new batch would only queue behind the last.
    active = instance.get_run_ids(
        dg.RunsFilter(tags={SITE_TAG: slug, TRIGGER_TAG: "catchup"}, statuses=list(NOT_FINISHED_STATUSES)),
        limit=1,
    )
    if active:
        return CatchupPlan(window, skip_reason=f"catch-up run {active[0]} is still queued or running")

    keys = window.partition_keys()
    status = instance.get_status_by_partition(asset_key, keys, partitions_def) or {}
    gaps = find_gaps(keys, lambda key: status.get(key) in _NEEDS_RUN, max_partitions)
    plan = CatchupPlan(window, gaps=gaps)
    if not gaps:
        plan.skip_reason = f"no missing or failed partition in {window}"
        return plan

    planned = instance.get_latest_storage_id_by_partition(
        asset_key,
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        {key for gap in gaps for key in gap.keys},
    )
    [record] = instance.get_asset_records([asset_key]) or [None]
    last_materialized = (record.asset_entry.last_materialization_storage_id or 0) if record else 0

    for gap in newest_first(gaps):
        marker = marker_for(gap, planned)
        failed = any(status.get(key) == AssetPartitionStatus.FAILED for key in gap.keys)
        if failed and marker > last_materialized:
            age = _seconds_since_attempt_ended(instance, asset_key, marker)
            if age is not None and age < retry_after.total_seconds():
                plan.held.append(
                    f"{gap.first}...{gap.last} failed {age / 60:.0f} min ago and nothing has "
                    f"materialized since: retrying {retry_after.total_seconds() / 60:.0f} min "
                    "after the failure"
                )
                continue
        if len(plan.requests) >= max_runs:
            plan.held.append(f"{gap.first}...{gap.last} waits for the next tick ({max_runs} runs per tick)")
            continue
        plan.requests.append(
            dg.RunRequest(
                run_key=catchup_run_key(slug, gap, marker),
                tags={**range_tags(gap.first, gap.last), SITE_TAG: slug, TRIGGER_TAG: "catchup"},
            )
        )
    return plan


def _seconds_since_attempt_ended(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, planned_storage_id: int
) -> float | None:
    """Seconds since the run that planned event `planned_storage_id` ended (None: unknown/unended)."""
    records = instance.fetch_planned_materializations(
        dg.AssetRecordsFilter(
            asset_key=asset_key,
            after_storage_id=planned_storage_id - 1,
            before_storage_id=planned_storage_id + 1,
        ),
        limit=1,
    ).records
    if not records:
        return None
    run = instance.get_run_record_by_id(records[0].run_id)
    if run is None or run.end_time is None:
        return None
    return time.time() - run.end_time


def build_catchup_sensor(
    site: str,
    settings: Settings,
    automation: AutomationSettings,
    job: dg.UnresolvedAssetJobDefinition,
    partitions_def: dg.PartitionsDefinition,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=catchup_sensor_name(site),
        job=job,
        minimum_interval_seconds=automation.catchup_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Site {site!r}: launches one range run per contiguous gap of missing or failed "
            f"partitions in the last {automation.catchup_hours} h (at most {MAX_RUN_PARTITIONS} "
            "partitions per run), so an outage of the daemon or of the API heals by itself. "
            "Older gaps are a backfill."
        ),
    )
    def catchup(context: dg.SensorEvaluationContext):
        plan = plan_catchup(
            context.instance,
            site,
            partitions_def,
            now=_utcnow(),
            hours=automation.catchup_hours,
            partitions_start=settings.partitions_start,
        )
        for reason in plan.held:
            context.log.info(f"site {site}: {reason}")
        return plan.sensor_result()

    return catchup
