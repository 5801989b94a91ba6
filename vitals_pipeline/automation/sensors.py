"""The fleet catch-up sensor: partitions of the last VITALS_CATCHUP_HOURS that are missing or whose
latest run failed get range runs, batched across sites, newest first.

One sensor for the fleet. A tick reads each active site's partition status (the incrementally
kept status Dagster maintains for the UI, `get_status_by_partition`) for the window's keys only,
which it formats itself: it never lists the partitions definition (over 100,000 keys a year).
Sites missing the same stretch share a run (`gaps.batch_gaps`): after a daemon or API outage that
hit every site, a handful of runs fills the hole, not one per site.

A stretch whose latest run failed is retried at once when the site has materialized anything since
(the API is back for it), otherwise RETRY_AFTER_FAILURE after that failure: a broken site costs
one retry a quarter hour, not one a tick. While a catch-up run is queued or running, nothing new is
launched (a new batch would only queue behind it). Paused sites are left alone.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.automation.gaps import (
    MAX_RUN_PARTITIONS,
    Batch,
    Gap,
    batch_gaps,
    catchup_window,
    find_gaps,
    marker_for,
    run_partitions_for,
)
from vitals_pipeline.automation.pause import paused_sites
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.windows import Window

CATCHUP_SENSOR_NAME = "fleet_catchup"
RETRY_AFTER_FAILURE = timedelta(minutes=15)
# One run at a time: the runs queue for the DuckDB pool anyway, and a short run between two ticks
# holds no tick up; the next one is launched once it is done (the sensor waits for its own runs).
MAX_RUNS_PER_TICK = 1
# Site-partitions one catch-up run fetches: about 3 hours of 300 sites, a day of 40 sites.
SITE_PARTITIONS_PER_RUN = 12_000
MIN_RUN_PARTITIONS = 12  # an hour, however large the fleet

UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_NEEDS_RUN = (None, dg.AssetPartitionStatus.FAILED)


HOLD_BEFORE_TICK = timedelta(seconds=60)


def tick_due_within(now: datetime, cron: str | None, within: timedelta) -> bool:
    """Whether a tick of `cron` falls in (now, now + within]. Understands the 5-minute crons this
    project uses (`*/5`, `1-59/5`, `1/5` in the minute field, `*` elsewhere); for any other cron
    it answers False (no hold)."""
    if not cron:
        return False
    fields = cron.split()
    if len(fields) != 5 or any(f != "*" for f in fields[1:]):
        return False
    minute = fields[0]
    if "/" not in minute:
        return False
    base, step = minute.split("/", 1)
    try:
        step_n = int(step)
        offset = 0 if base == "*" else int(base.split("-")[0])
    except ValueError:
        return False
    if step_n <= 0 or 60 % step_n:
        return False
    moment = now.astimezone(UTC)
    minutes_into = (moment.minute - offset) % step_n  # minutes since the last tick's minute
    seconds_to_next = (step_n - minutes_into) * 60 - moment.second - moment.microsecond / 1e6
    return 0 < seconds_to_next <= within.total_seconds()


def _utcnow() -> datetime:
    """The sensor's clock (a seam for tests; the daemon evaluates on the wall clock)."""
    return datetime.now(UTC)


@dataclass
class CatchupPlan:
    """What one catch-up tick decided for the fleet."""

    window: Window | None
    gaps: dict[str, list[Gap]] = field(default_factory=dict)  # site -> its gaps to run now
    batches: list[Batch] = field(default_factory=list)
    requests: list[dg.RunRequest] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # why some stretches wait
    skip_reason: str | None = None

    def sensor_result(self) -> dg.SensorResult | dg.SkipReason:
        if not self.requests:
            return dg.SkipReason(self.skip_reason or "; ".join(self.held[:5]) or "nothing to catch up")
        return dg.SensorResult(run_requests=self.requests)


def plan_catchup(
    instance: dg.DagsterInstance,
    sites: Sequence[str],
    partitions_def: dg.PartitionsDefinition,
    *,
    now: datetime,
    hours: int,
    partitions_start: datetime,
    retry_after: timedelta = RETRY_AFTER_FAILURE,
    schedule_cron: str | None = None,
    max_partitions: int = MAX_RUN_PARTITIONS,
    max_runs: int = MAX_RUNS_PER_TICK,
) -> CatchupPlan:
    """The catch-up runs for the fleet at `now`. Reads the instance; launches nothing."""
    window = catchup_window(now, hours, partitions_start)
    if window is None:
        return CatchupPlan(None, skip_reason="no closed partition older than the newest yet")
    if tick_due_within(now, schedule_cron, HOLD_BEFORE_TICK):
        # A catch-up run launched now would hold the DuckDB pool when the tick's run starts.
        return CatchupPlan(window, skip_reason="a schedule tick is due within a minute: after it")
    active = instance.get_run_ids(
        dg.RunsFilter(tags={TRIGGER_TAG: "catchup"}, statuses=UNFINISHED), limit=1
    )
    if active:
        return CatchupPlan(window, skip_reason=f"catch-up run {active[0]} is still queued or running")

    paused = paused_sites(instance)
    sites = [site for site in sites if schema_name(site) not in paused]
    keys = window.partition_keys()
    plan = CatchupPlan(window)
    statuses = {
        site: instance.get_status_by_partition(timeseries_key(site), keys, partitions_def) or {}
        for site in sites
    }
    behind = [site for site, status in statuses.items() if any(status.get(k) in _NEEDS_RUN for k in keys)]
    # The more sites need a run, the shorter each run's stretch (cut on the same boundaries).
    size = min(max_partitions, run_partitions_for(len(behind), SITE_PARTITIONS_PER_RUN, MIN_RUN_PARTITIONS))
    found: dict[str, tuple[list[Gap], dict]] = {}
    for site in behind:
        status = statuses[site]
        gaps = find_gaps(keys, lambda key, s=status: s.get(key) in _NEEDS_RUN, size)
        if gaps:
            found[site] = (gaps, status)
    if not found:
        plan.skip_reason = f"no missing or failed partition in {window} ({len(sites)} sites)"
        return plan

    records = {
        record.asset_entry.asset_key: record
        for record in instance.get_asset_records([timeseries_key(site) for site in found])
    }
    markers: dict[tuple[str, str, str], int] = {}
    for site, (gaps, status) in found.items():
        key = timeseries_key(site)
        record = records.get(key)
        last_materialized = (record.asset_entry.last_materialization_storage_id or 0) if record else 0
        planned = instance.get_latest_storage_id_by_partition(
            key, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, {k for gap in gaps for k in gap.keys}
        )
        due = []
        for gap in gaps:
            marker = marker_for(gap, planned)
            failed = any(status.get(k) == dg.AssetPartitionStatus.FAILED for k in gap.keys)
            if failed and marker > last_materialized:
                newest = next(k for k in gap.keys if planned.get(k) == marker)
                age = _seconds_since_attempt_ended(instance, key, newest)
                if age is not None and age < retry_after.total_seconds():
                    plan.held.append(
                        f"{schema_name(site)} {gap.first}...{gap.last} failed {age / 60:.0f} min ago "
                        f"and nothing has materialized since: retried "
                        f"{retry_after.total_seconds() / 60:.0f} min after the failure"
                    )
                    continue
            due.append(gap)
            markers[(site, gap.first, gap.last)] = marker
        if due:
            plan.gaps[site] = due

    for batch in batch_gaps(plan.gaps):
        if len(plan.requests) >= max_runs:
            plan.held.append(
                f"{batch.first}...{batch.last} of {len(batch.sites)} sites waits for the next "
                f"tick ({max_runs} runs per tick)"
            )
            continue
        plan.batches.append(batch)
        marker = max(markers[(site, batch.first, batch.last)] for site in batch.sites)
        sites_id = zlib.crc32(",".join(sorted(batch.sites)).encode())
        plan.requests.append(
            dg.RunRequest(
                # Sensor run_keys dedupe forever: the marker (newest planned event of these
                # partitions) changes after every attempt, so a failed stretch can run again.
                run_key=f"catchup:{batch.first}...{batch.last}:{len(batch.sites)}:{sites_id:08x}:{marker}",
                asset_selection=[timeseries_key(site) for site in batch.sites],
                asset_check_keys=[],  # not None: None selects every check again (schedules.py)
                tags={**range_tags(batch.first, batch.last), TRIGGER_TAG: "catchup"},
            )
        )
    if not plan.requests and not plan.skip_reason:
        plan.skip_reason = "; ".join(plan.held[:5])
    return plan


def _seconds_since_attempt_ended(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str) -> float | None:
    """Seconds since the run that last planned `partition` of `asset_key` ended (None: unknown or
    not ended)."""
    planned = instance.get_latest_planned_materialization_info(asset_key, partition)
    if planned is None:
        return None
    run = instance.get_run_record_by_id(planned.run_id)
    if run is None or run.end_time is None:
        return None
    return time.time() - run.end_time


def build_catchup_sensor(
    settings: Settings,
    automation: AutomationSettings,
    job: dg.UnresolvedAssetJobDefinition,
    partitions_def: dg.PartitionsDefinition,
) -> dg.SensorDefinition:
    sites = list(settings.sites)

    @dg.sensor(
        name=CATCHUP_SENSOR_NAME,
        job=job,
        minimum_interval_seconds=automation.catchup_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every site ({len(sites)}): missing or failed partitions of the last "
            f"{automation.catchup_hours} h get range runs, sites missing the same stretch in one "
            f"run (at most {MAX_RUN_PARTITIONS} partitions a run, "
            f"{MAX_RUNS_PER_TICK} runs a tick, newest first), so an outage of the daemon or of the "
            "API heals by itself. Paused sites are left alone; older gaps are a backfill."
        ),
    )
    def fleet_catchup(context: dg.SensorEvaluationContext):
        plan = plan_catchup(
            context.instance,
            sites,
            partitions_def,
            now=_utcnow(),
            hours=automation.catchup_hours,
            partitions_start=settings.partitions_start,
            schedule_cron=automation.schedule_cron,
        )
        for reason in plan.held[:20]:
            context.log.info(reason)
        return plan.sensor_result()

    return fleet_catchup
