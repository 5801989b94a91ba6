"""The roll-ups follow the timeseries runs: `fleet_rollups` turns finished runs into roll-up runs.

An hour is rolled up (`<site>/timeseries_hourly`) and a day exported and judged (`<site>/archive`,
`<site>/quality_daily`) when their 5-minute partitions will not change any more, and again when a
run other than the schedule's re-fetched some of them (catch-up, backfill, a manual run):

- a scheduled run re-fetches each partition for the last time when its window STARTS with that
  partition (the lookback re-fetches the newer ones): the run whose window starts with an hour's
  last partition (hh:55) completes that hour, the one starting with a day's last partition
  (23:55) completes that day;
- any other run completes every hour and day its window overlaps that was over when it ended
  (a late re-fetch of one partition of a past hour rolls that hour up again);
- the sites rolled up are the run's sites that it stored (a site the run failed is not; its
  catch-up run brings it).

The sensor reads the runs of `fleet_timeseries` that ended since its last tick (its cursor, like
the alerts' one), and asks for one run per stretch of hours (or per day) for the sites that share
it: a tick of the whole fleet leads to one roll-up run an hour and one daily run a day. Dagster's
declarative automation did the same by re-judging every site's conditions every 30 s: at 300 sites
that cost the daemon ~10 s of CPU a minute and ~80 MB of evaluation records in an hour.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from vitals_pipeline.assets.keys import DAY_FMT, archive_key, hourly_key, quality_daily_key, range_tags
from vitals_pipeline.automation.alerts import FINISHED, run_outcomes
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.runs import TRIGGER_TAG, run_partition_range
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.windows import PARTITION, PARTITION_FMT, Window, window_for_keys

ROLLUP_SENSOR = "fleet_rollups"
HOURLY_JOB = "fleet_hourly"
DAILY_JOB = "fleet_daily"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
RUNS_PER_TICK = 50
FIRST_LOOK_BACK = timedelta(minutes=15)


def completed_periods(
    window: Window, scheduled: bool, period: timedelta, ended_at: datetime | None = None
) -> list[datetime]:
    """The starts of the periods (hours, days; UTC) a run over `window` that ended at `ended_at`
    completes (see module)."""
    seconds = period.total_seconds()
    if scheduled:
        end = window.start + PARTITION
        return [end - period] if end.timestamp() % seconds == 0 else []
    # Every period the window overlaps that was over when the run ended: a late re-fetch of one
    # partition of a past hour rolls that hour up again; the hour still under way is left to
    # the tick that re-fetches its end.
    over_by = max(window.end, ended_at or window.end)
    start = datetime.fromtimestamp(window.start.timestamp() // seconds * seconds, UTC)
    periods = []
    while start < window.end and start + period <= over_by:
        periods.append(start)
        start += period
    return periods


@dataclass
class RollupPlan:
    hours: dict[datetime, set[str]] = field(default_factory=lambda: defaultdict(set))  # hour -> sites
    days: dict[datetime, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add_run(
        self, window: Window, scheduled: bool, sites: Iterable[str], ended_at: datetime | None = None
    ) -> None:
        sites = set(sites)
        if not sites:
            return
        for hour in completed_periods(window, scheduled, HOUR, ended_at):
            self.hours[hour] |= sites
        for day in completed_periods(window, scheduled, DAY, ended_at):
            self.days[day] |= sites

    def requests(self, site_names: Mapping[str, str], daily: tuple, marker: str) -> list[dg.RunRequest]:
        """One run per stretch of consecutive hours with the same sites; one per day (`daily`: the
        key functions of the daily assets). `marker` makes the run keys of one tick unique."""
        requests = []
        for first, last, sites in _stretches(self.hours, HOUR):
            names = [site_names[slug] for slug in sorted(sites) if slug in site_names]
            if names:
                requests.append(_request(HOURLY_JOB, [hourly_key(n) for n in names],
                                         first.strftime(PARTITION_FMT), last.strftime(PARTITION_FMT), marker))
        for day, sites in sorted(self.days.items(), reverse=True):
            names = [site_names[slug] for slug in sorted(sites) if slug in site_names]
            if names:
                keys = [key(n) for n in names for key in daily]
                requests.append(_request(DAILY_JOB, keys, day.strftime(DAY_FMT), day.strftime(DAY_FMT), marker))
        return requests


def _stretches(periods: Mapping[datetime, set[str]], step: timedelta):
    """(first, last, sites) of consecutive periods with the same sites, newest first."""
    stretches: list[tuple[datetime, datetime, frozenset]] = []
    for start in sorted(periods):
        sites = frozenset(periods[start])
        if stretches and stretches[-1][2] == sites and stretches[-1][1] + step == start:
            stretches[-1] = (stretches[-1][0], start, sites)
        else:
            stretches.append((start, start, sites))
    return sorted(stretches, key=lambda s: s[1], reverse=True)


def _request(job: str, keys: list[dg.AssetKey], first_key: str, last_key: str, marker: str) -> dg.RunRequest:
    sites_id = zlib.crc32(",".join(k.to_user_string() for k in keys).encode())
    return dg.RunRequest(
        job_name=job,
        # Sensor run keys dedupe forever: the period, the sites and the runs that asked for it
        # (the cursor's position) name one roll-up; a later re-fetch asks again under its own.
        run_key=f"{job}:{first_key}...{last_key}:{sites_id:08x}:{marker}",
        asset_selection=keys,
        asset_check_keys=None,  # the archive's row-count check runs with it
        tags={**range_tags(first_key, last_key), TRIGGER_TAG: "rollup"},
    )


def plan_rollups(instance: dg.DagsterInstance, cursor: str | None, now: float) -> tuple[RollupPlan, str]:
    """Fold the fleet runs that ended since `cursor` into a plan; the new cursor."""
    state = json.loads(cursor) if cursor else {"updated_after": now - FIRST_LOOK_BACK.total_seconds(), "seen": []}
    records = instance.get_run_records(
        dg.RunsFilter(
            job_name=FLEET_JOB,
            statuses=FINISHED,
            updated_after=datetime.fromtimestamp(state["updated_after"], UTC) - timedelta(seconds=1),
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=RUNS_PER_TICK + len(state["seen"]),
    )
    plan = RollupPlan()
    processed = 0
    for record in records:
        run = record.dagster_run
        updated = record.update_timestamp.timestamp()
        if updated < state["updated_after"] or (updated == state["updated_after"] and run.run_id in state["seen"]):
            continue
        if processed >= RUNS_PER_TICK:
            break
        processed += 1
        keys = run_partition_range(run)
        if keys is not None:
            try:
                window = window_for_keys(*keys)
            except ValueError:
                window = None
            if window is not None:
                outcomes = run_outcomes(instance, run)
                stored = [
                    name.split("/")[0] for name, error in outcomes.items()
                    if error is None and name.endswith("/timeseries")
                ]
                ended_at = datetime.fromtimestamp(record.end_time or updated, UTC)
                plan.add_run(window, run.tags.get(TRIGGER_TAG) == "schedule", stored, ended_at)
        if updated > state["updated_after"]:
            state["updated_after"], state["seen"] = updated, []
        state["seen"].append(run.run_id)
    return plan, json.dumps(state)


def build_rollup_automation(sites: Iterable[str], with_daily: bool = True):
    """The roll-up jobs and the sensor that launches them."""
    sites = list(sites)
    hourly_job = dg.define_asset_job(
        HOURLY_JOB,
        selection=dg.AssetSelection.assets(*(hourly_key(s) for s in sites)),
        description="Hourly roll-ups of the sites and hours a timeseries run completed.",
    )
    daily = (archive_key, quality_daily_key) if with_daily else (archive_key,)
    daily_keys = [key(s) for s in sites for key in daily]
    daily_job = dg.define_asset_job(
        DAILY_JOB,
        selection=dg.AssetSelection.assets(*daily_keys),
        description="The daily archive and quality of the sites and days a timeseries run completed.",
    )
    site_names = {schema_name(site): site for site in sites}

    @dg.sensor(
        name=ROLLUP_SENSOR,
        jobs=[hourly_job, daily_job],
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "After each timeseries run: rolls up the hours and days it completed (the scheduled "
            "run whose window starts with an hour's last partition, or any catch-up, backfill or "
            "manual run), for the sites it stored, one run per stretch of hours and per day."
        ),
    )
    def fleet_rollups(context: dg.SensorEvaluationContext):
        plan, cursor = plan_rollups(context.instance, context.cursor, time.time())
        requests = plan.requests(site_names, daily, marker=f"{json.loads(cursor)['updated_after']:.3f}")
        context.update_cursor(cursor)
        if not requests:
            return dg.SkipReason("no timeseries run completed an hour or a day since the last tick")
        return dg.SensorResult(run_requests=requests)

    return [hourly_job, daily_job], fleet_rollups
