"""Schedule, catch-up sensor, failure alert, freshness and the shipped dagster.yaml.

Schedules and sensors are evaluated directly (`build_schedule_context`, `build_sensor_context`,
`build_run_status_sensor_context`) against real instances and real runs on the simulator; the
daemon itself is exercised in test_daemon.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.scheduler.instigation import TickStatus

from vitals_pipeline.assets.keys import REFRESH_POINTS_TAG, five_minute_partitions, range_tags, timeseries_key
from vitals_pipeline.automation import sensors
from vitals_pipeline.automation.alerts import (
    ALERT_SENSOR_NAME,
    AlertDeliveryError,
    Change,
    alert_message,
    post_alert,
)
from vitals_pipeline.automation.freshness import TIMESERIES_FRESHNESS
from vitals_pipeline.automation.gaps import (
    Gap,
    batch_gaps,
    catchup_window,
    find_gaps,
    scheduled_window,
)
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.runs import TRIGGER_TAG
from vitals_pipeline.automation.schedules import SCHEDULE_NAME
from vitals_pipeline.automation.sensors import CATCHUP_SENSOR_NAME, plan_catchup
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import ConfigError, Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import (
    PARTITION,
    Window,
    floor_to_partition,
    partition_key,
    partition_start,
    window_for_keys,
)
from vitals_pipeline_tests.conftest import SIM_KEY, SITE
from vitals_pipeline_tests.helpers import Receiver

REPO = Path(__file__).resolve().parent.parent


def at(hh_mm: str, day: str = "2026-03-09") -> datetime:
    return datetime.strptime(f"{day} {hh_mm}", "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def key(t: datetime) -> str:
    return partition_key(t)


@dataclass(frozen=True)
class Live:
    """Partitions just before the real clock (the simulator follows it), with the sensor's clock
    pinned a minute after `end` so a 5-minute boundary passing mid-test changes nothing."""

    start: datetime  # the first partition (VITALS_PARTITIONS_START)
    end: datetime  # the boundary the pinned clock has just passed
    now: datetime

    @property
    def newest_closed(self) -> str:
        return key(self.end - PARTITION)


@pytest.fixture
def live(sim, pipeline_env, monkeypatch) -> Live:
    sim.set_now(None)
    end = floor_to_partition(datetime.now(UTC))
    # Catch-up cuts a site's runs on midnights (UTC): three hours across one would split the runs
    # these tests expect whole, so in the first three hours of a day take the last day's end.
    midnight = end.replace(hour=0, minute=0)
    if end - timedelta(hours=3) < midnight:
        end = midnight
    state = Live(start=end - timedelta(hours=3), end=end, now=end + timedelta(minutes=1))
    monkeypatch.setenv("VITALS_PARTITIONS_START", key(state.start))
    monkeypatch.setattr(sensors, "_utcnow", lambda: state.now)
    return state


def defs_from_env() -> dg.Definitions:
    return build_definitions(Settings.from_env())


def run_range(instance, defs, first: str, last: str, **tags):
    job = defs.resolve_job_def(FLEET_JOB)
    return job.execute_in_process(
        instance=instance,
        asset_selection=[timeseries_key(SITE)],  # as the schedule's ticks and catch-up ask
        tags={**range_tags(first, last), **tags},
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )


def fail_range(instance, defs, first: str, last: str, monkeypatch):
    """A run that fails at once: ACE refuses the key (a Failure without step retries)."""
    with monkeypatch.context() as m:
        m.setenv("ACE_API_KEY", "not-the-key")
        result = run_range(instance, defs, first, last)
    assert not result.success
    return result


# --------------------------------------------------------------------------------------------
# Windows and gaps (pure)


@pytest.mark.parametrize(
    ("tick", "lookback", "expected"),
    [
        ("10:01", 10, ("2026-03-09-09:45", "2026-03-09-09:55")),
        ("10:06", 10, ("2026-03-09-09:50", "2026-03-09-10:00")),
        ("10:04:59", 10, ("2026-03-09-09:45", "2026-03-09-09:55")),  # a late tick: same window
        ("10:01", 0, ("2026-03-09-09:55", "2026-03-09-09:55")),
        ("00:01", 30, ("2026-03-08-23:25", "2026-03-08-23:55")),  # across midnight
    ],
)
def test_scheduled_window(tick, lookback, expected):
    moment = datetime.fromisoformat(f"2026-03-09T{tick}").replace(tzinfo=UTC)
    window = scheduled_window(moment, timedelta(minutes=lookback), at("00:00", "2026-03-01"))
    keys = window.partition_keys()
    assert (keys[0], keys[-1]) == expected
    assert len(keys) == lookback // 5 + 1


def test_scheduled_window_is_clamped_at_the_first_partition():
    start = at("09:50")
    window = scheduled_window(at("10:01"), timedelta(minutes=30), start)
    assert window.partition_keys() == ["2026-03-09-09:50", "2026-03-09-09:55"]
    assert scheduled_window(at("09:52"), timedelta(minutes=30), start) is None  # none closed yet


def test_catchup_window_leaves_the_newest_closed_partition_to_the_schedule():
    window = catchup_window(at("10:02"), 24, at("00:00", "2026-01-01"))
    assert window == Window(at("09:55") - timedelta(hours=24), at("09:55"))
    assert window.partitions == 288
    clamped = catchup_window(at("10:02"), 24, at("09:00"))
    assert clamped == Window(at("09:00"), at("09:55"))
    assert catchup_window(at("10:02"), 24, at("09:55")) is None


def test_find_gaps_splits_contiguous_runs_on_boundaries_shared_by_every_site():
    keys = [key(at("10:00") + i * PARTITION) for i in range(12)]
    holes = set(keys[1:3] + keys[4:11])
    gaps = find_gaps(keys, holes.__contains__, max_partitions=4)
    # Cut where the partition number since the epoch is a multiple of 4 (10:00, 10:20, 10:40).
    assert [g.keys for g in gaps] == [tuple(keys[1:3]), tuple(keys[4:8]), tuple(keys[8:11])]
    assert find_gaps(keys, lambda k: False) == []
    # By 5: every cut falls on a multiple of 5 partitions since the epoch, pieces of at most 5.
    pieces = find_gaps(keys, lambda k: True, max_partitions=5)
    assert sum(len(g) for g in pieces) == 12 and all(len(g) <= 5 for g in pieces)
    assert all(int(partition_start(g.first).timestamp() // 300) % 5 == 0 for g in pieces[1:])
    # Two sites missing different stretches share the pieces where they overlap.
    a = find_gaps(keys, lambda k: k >= keys[2], max_partitions=4)
    b = find_gaps(keys, lambda k: True, max_partitions=4)
    assert [(g.first, g.last) for g in a][1:] == [(g.first, g.last) for g in b][1:]


def test_batch_gaps_puts_sites_missing_the_same_stretch_in_one_run_newest_first():
    old, new = Gap(("2026-03-09-09:00", "2026-03-09-09:05")), Gap(("2026-03-09-10:00",))
    batches = batch_gaps({"a": [old, new], "b": [new], "c": [new], "d": [old]})
    assert [(b.first, b.last, b.sites) for b in batches] == [
        ("2026-03-09-10:00", "2026-03-09-10:00", ("a", "b", "c")),
        ("2026-03-09-09:00", "2026-03-09-09:05", ("a", "d")),
    ]


# --------------------------------------------------------------------------------------------
# Settings


def test_automation_settings_defaults_and_errors():
    s = AutomationSettings.from_env({})
    assert (s.schedule_cron, s.catchup_hours, s.alert_webhook_url, s.ui_url) == (
        "1-59/5 * * * *",
        192,  # back to the first partition of a default deployment (7 days before midnight)
        None,
        "http://127.0.0.1:3000",
    )
    assert (s.status_degraded_minutes, s.status_down_minutes) == (15, 60)
    for env, needle in [
        ({"VITALS_CATCHUP_HOURS": "a day"}, "VITALS_CATCHUP_HOURS"),
        ({"VITALS_CATCHUP_HOURS": "0"}, "positive"),
        ({"VITALS_CATCHUP_HOURS": "1000"}, "backfill"),
        ({"VITALS_SCHEDULE_CRON": "every 5 minutes"}, "VITALS_SCHEDULE_CRON"),
        ({"VITALS_UI_URL": "localhost:3000"}, "VITALS_UI_URL"),
        ({"VITALS_STATUS_DEGRADED_MINUTES": "60", "VITALS_STATUS_DOWN_MINUTES": "30"}, "greater"),
        ({"VITALS_CATCHUP_INTERVAL_SECONDS": "1"}, "5 seconds"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            AutomationSettings.from_env(env)


def test_a_malformed_webhook_url_is_not_echoed():
    with pytest.raises(ConfigError) as exc:
        AutomationSettings.from_env({"VITALS_ALERT_WEBHOOK_URL": "hooks.example/T000/SECRET"})
    assert "SECRET" not in str(exc.value)


# --------------------------------------------------------------------------------------------
# Definitions: what is registered, freshness, pools


def test_definitions_register_fleet_automation(pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", f"{SITE},Other-Site")
    defs = defs_from_env()
    dg.Definitions.validate_loadable(defs)
    # One schedule and one catch-up sensor for the whole fleet, not one per site.
    assert sorted(s.name for s in defs.schedules) == [SCHEDULE_NAME, "vitals_prune_schedule"]
    assert {s.name for s in defs.sensors} >= {CATCHUP_SENSOR_NAME, ALERT_SENSOR_NAME}
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.cron_schedule == "1-59/5 * * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    fleet = defs.resolve_job_def(FLEET_JOB)
    assert fleet.asset_layer.executable_asset_keys >= {timeseries_key(SITE), timeseries_key("Other-Site")}
    graph = defs.resolve_asset_graph()
    for asset_key in graph.get_all_asset_keys():
        node = graph.get(asset_key)
        expected = TIMESERIES_FRESHNESS if asset_key.path[-1] == "timeseries" else None
        assert node.freshness_policy == expected
    # Every asset that writes DuckDB (all of them do) is in the one pool.
    outside = [
        spec.key.to_user_string()
        for assets_def in defs.assets
        if isinstance(assets_def, dg.AssetsDefinition)  # not the observed fleet/status spec
        for spec in assets_def.specs
        if assets_def.get_op_def_for_asset_key(spec.key).pool != "duckdb"
    ]
    assert not outside, f"assets outside the duckdb pool: {outside}"


@dg.op(pool="duckdb")
def _write() -> None:
    pass


@dg.job(name="write")
def _pool_job():
    _write()


def test_shipped_dagster_yaml_limits_the_duckdb_pool_to_one(tmp_path, monkeypatch):
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    # The shipped event log storage lives under DAGSTER_HOME, as every process of a deployment has it.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        # Step retries handle API errors; the run is re-launched only when its worker died.
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.run_monitoring_enabled
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        # Two runs' steps in the duckdb pool, through the claim path a step really takes.
        run_a, run_b, run_c = (instance.create_run_for_job(_pool_job) for _ in range(3))
        with InstanceConcurrencyContext(instance, run_a) as a, InstanceConcurrencyContext(instance, run_b) as b:
            assert a.claim("duckdb", "write")
            assert not b.claim("duckdb", "write"), "a second writer must wait"
        instance.event_log_storage.free_concurrency_slots_for_run(run_a.run_id)
        instance.event_log_storage.free_concurrency_slots_for_run(run_b.run_id)
        with InstanceConcurrencyContext(instance, run_c) as c:
            assert c.claim("duckdb", "write"), "the slot is free again once the writer is done"
        # 288 ticks a day per schedule: skipped and successful ticks are purged.
        for instigator in (InstigatorType.SCHEDULE, InstigatorType.SENSOR, InstigatorType.AUTO_MATERIALIZE):
            retention = instance.get_tick_retention_settings(instigator)
            assert retention[TickStatus.SKIPPED] == 1 and retention[TickStatus.SUCCESS] == 7


# --------------------------------------------------------------------------------------------
# Schedule


def evaluate_schedule(defs, moment: datetime):
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    with dg.instance_for_test() as instance, dg.build_schedule_context(
        instance=instance, scheduled_execution_time=moment
    ) as context:
        return schedule.evaluate_tick(context)


@pytest.mark.parametrize(
    ("tick", "first", "last", "also", "refresh_points"),
    [
        # The window closing on the quarter hour also refreshes the weather (every 15 minutes),
        # the one closing at :05 the points (hourly, in the timeseries step: the run's tag);
        # the others fetch the samples only.
        ("10:01", "2026-03-09-09:45", "2026-03-09-09:55", ["weather"], False),
        ("10:06", "2026-03-09-09:50", "2026-03-09-10:00", [], True),
        ("23:56", "2026-03-09-23:40", "2026-03-09-23:50", [], False),
    ],
)
def test_schedule_tick_requests_one_range_run(pipeline_env, tick, first, last, also, refresh_points):
    defs = defs_from_env()
    data = evaluate_schedule(defs, at(tick))
    [request] = data.run_requests
    assert request.asset_selection == [timeseries_key(SITE)] + [
        dg.AssetKey([SITE, name]) for name in also
    ]
    assert (request.tags.get(REFRESH_POINTS_TAG) == "true") is refresh_points
    assert request.asset_check_keys == []  # checks recorded by the run when they change
    assert request.tags[TRIGGER_TAG] == "schedule"
    assert request.tags["dagster/asset_partition_range_start"] == first
    assert request.tags["dagster/asset_partition_range_end"] == last
    assert request.run_key == f"schedule:{first}...{last}"
    assert request.partition_key is None  # a range, not one partition
    # The same tick evaluated again asks for the same run.
    assert evaluate_schedule(defs, at(tick)).run_requests[0].run_key == request.run_key


def test_schedule_lookback_setting(pipeline_env, monkeypatch):
    monkeypatch.setenv("VITALS_LOOKBACK_MINUTES", "30")
    [request] = evaluate_schedule(defs_from_env(), at("10:01")).run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2026-03-09-09:25"
    monkeypatch.setenv("VITALS_LOOKBACK_MINUTES", "0")
    [request] = evaluate_schedule(defs_from_env(), at("10:01")).run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2026-03-09-09:55"
    assert request.tags["dagster/asset_partition_range_end"] == "2026-03-09-09:55"


def test_schedule_clamps_at_partitions_start_and_skips_before(pipeline_env, monkeypatch):
    monkeypatch.setenv("VITALS_PARTITIONS_START", "2026-03-09-09:55")
    [request] = evaluate_schedule(defs_from_env(), at("10:01")).run_requests
    assert request.tags["dagster/asset_partition_range_start"] == "2026-03-09-09:55"
    data = evaluate_schedule(defs_from_env(), at("09:58"))
    assert not data.run_requests and "VITALS_PARTITIONS_START" in data.skip_message


def test_schedule_cron_override(pipeline_env, monkeypatch):
    monkeypatch.setenv("VITALS_SCHEDULE_CRON", "* * * * *")
    assert defs_from_env().resolve_schedule_def(SCHEDULE_NAME).cron_schedule == "* * * * *"


def test_schedule_run_executes_its_range(live):
    """The schedule's request, launched as-is, materializes exactly its partitions."""
    defs = defs_from_env()
    [request] = evaluate_schedule(defs, live.now).run_requests
    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def(FLEET_JOB)
        assert job.execute_in_process(
            instance=instance, tags=request.tags, asset_selection=request.asset_selection
        ).success
        done = instance.get_materialized_partitions(timeseries_key(SITE))
    assert done == {key(live.end - i * PARTITION) for i in (3, 2, 1)}


# --------------------------------------------------------------------------------------------
# Catch-up sensor


def evaluate_catchup(instance, defs):
    sensor = defs.resolve_sensor_def(CATCHUP_SENSOR_NAME)
    with dg.build_sensor_context(instance=instance, definitions=defs) as context:
        return sensor.evaluate_tick(context)


def request_range(request) -> tuple[str, str]:
    return (
        request.tags["dagster/asset_partition_range_start"],
        request.tags["dagster/asset_partition_range_end"],
    )


def plan(instance, live: Live, **kwargs):
    return plan_catchup(
        instance,
        [SITE],
        five_minute_partitions(Settings.from_env()),
        now=live.now,
        hours=24,
        partitions_start=live.start,
        **kwargs,
    )


def test_catchup_fills_a_gap_with_one_range_run(live):
    """The daemon (or the API) was down for an hour: one run for the hole, then nothing to do."""
    defs = defs_from_env()
    gap_start, gap_end = live.start + timedelta(hours=1), live.start + timedelta(hours=2)
    with dg.instance_for_test() as instance:
        assert run_range(instance, defs, key(live.start), key(gap_start - PARTITION)).success
        assert run_range(instance, defs, key(gap_end), live.newest_closed).success

        data = evaluate_catchup(instance, defs)
        [request] = data.run_requests
        assert request_range(request) == (key(gap_start), key(gap_end - PARTITION))
        assert request.tags[TRIGGER_TAG] == "catchup"
        assert request.asset_selection == [timeseries_key(SITE)]
        assert request.run_key.startswith(f"catchup:{key(gap_start)}...{key(gap_end - PARTITION)}:1:")
        assert request.run_key.endswith(":0")  # never planned before
        # Evaluated again before anything changed: the same run (sensor run keys dedupe).
        assert evaluate_catchup(instance, defs).run_requests[0].run_key == request.run_key

        assert run_range(instance, defs, *request_range(request), **request.tags).success
        data = evaluate_catchup(instance, defs)
        assert not data.run_requests and "no missing or failed partition" in data.skip_message


def test_catchup_leaves_the_newest_partition_to_the_schedule(live):
    defs = defs_from_env()
    with dg.instance_for_test() as instance:
        assert run_range(instance, defs, key(live.start), key(live.end - 2 * PARTITION)).success
        data = evaluate_catchup(instance, defs)
        assert not data.run_requests, "the newest closed partition is the schedule's"


def test_catchup_splits_a_long_outage_into_bounded_runs_newest_first(live):
    with dg.instance_for_test() as instance:
        result = plan(instance, live, max_partitions=12, max_runs=5)
    # Nothing materialized at all: 3 hours minus the newest partition, cut on the hours into
    # pieces of at most 12, newest first, together exactly the window.
    ranges = [request_range(r) for r in result.requests]
    assert ranges[0][1] == key(live.end - 2 * PARTITION) and ranges[-1][0] == key(live.start)
    for newer, older in zip(ranges, ranges[1:]):
        assert partition_start(older[1]) + PARTITION == partition_start(newer[0])
        assert newer[0].endswith(":00")  # an hour boundary
    assert all(window_for_keys(*r).partitions <= 12 for r in ranges)
    assert sum(window_for_keys(*r).partitions for r in ranges) == 35
    with dg.instance_for_test() as instance:
        # By default one run at a time: the next one when this one is done.
        [only] = plan(instance, live, max_partitions=12).requests
    assert request_range(only) == ranges[0]


def test_catchup_retries_a_failed_partition(live, monkeypatch):
    defs = defs_from_env()
    failed_first = live.start + timedelta(minutes=30)
    failed_last = failed_first + 2 * PARTITION
    with dg.instance_for_test() as instance:
        assert run_range(instance, defs, key(live.start), live.newest_closed).success
        failure = fail_range(instance, defs, key(failed_first), key(failed_last), monkeypatch)

        # Nothing has succeeded since the failure: the gap waits (a revoked key would fail again).
        result = plan(instance, live)
        assert not result.requests and "failed 0 min ago" in result.held[0]
        assert "nothing has materialized since" in evaluate_catchup(instance, defs).skip_message
        # Once the wait is over it is retried, under a key no earlier attempt had.
        [request] = plan(instance, live, retry_after=timedelta(0)).requests
        assert request_range(request) == (key(failed_first), key(failed_last))
        assert not request.run_key.endswith(":0")

        # A later success (the API is back) releases the wait at once.
        assert run_range(instance, defs, live.newest_closed, live.newest_closed).success
        [request] = evaluate_catchup(instance, defs).run_requests
        assert request_range(request) == (key(failed_first), key(failed_last))
        retry = run_range(instance, defs, *request_range(request), **request.tags)
        assert retry.success and retry.run_id != failure.run_id
        assert not evaluate_catchup(instance, defs).run_requests


def test_catchup_waits_for_its_own_run_and_skips_partitions_in_progress(live):
    defs = defs_from_env()
    job = defs.resolve_job_def(FLEET_JOB)
    first_hour = range_tags(key(live.start), key(live.start + timedelta(minutes=55)))
    with dg.instance_for_test() as instance:
        # A running catch-up run of this site: nothing new until it is done.
        queued = instance.create_run_for_job(
            job_def=job,
            tags={**first_hour, TRIGGER_TAG: "catchup"},
            status=dg.DagsterRunStatus.STARTED,
        )
        data = evaluate_catchup(instance, defs)
        assert not data.run_requests and queued.run_id in data.skip_message
        instance.report_run_canceled(queued)

        # A run from elsewhere (a manual backfill) over the first hour: not asked again.
        instance.create_run_for_job(job_def=job, tags=first_hour, status=dg.DagsterRunStatus.STARTED)
        [request] = evaluate_catchup(instance, defs).run_requests
        assert request_range(request) == (key(live.start + timedelta(hours=1)), key(live.end - 2 * PARTITION))


def test_catchup_never_lists_all_partition_keys(live, monkeypatch):
    """400 days of partitions (~115,000 keys): the tick formats its own 288."""
    monkeypatch.setenv("VITALS_PARTITIONS_START", key(live.end - timedelta(days=400)))
    defs = defs_from_env()

    def refuse(*args, **kwargs):
        raise AssertionError("listed every partition key")

    with dg.instance_for_test() as instance:
        assert run_range(instance, defs, key(live.start), live.newest_closed).success
        monkeypatch.setattr(dg.TimeWindowPartitionsDefinition, "get_partition_keys", refuse)
        [request] = evaluate_catchup(instance, defs).run_requests
        # Everything before the three loaded hours, back to 8 days, a day per run for one site
        # (cut on midnights), newest first: the stretch from the last midnight to the hours.
        midnight = live.start.replace(hour=0, minute=0)
        assert request_range(request) == (
            key(max(midnight, live.end - PARTITION - timedelta(days=8))),
            key(live.start - PARTITION),
        )
        assert evaluate_schedule(defs, live.now).run_requests[0].run_key


# --------------------------------------------------------------------------------------------
# Alerts by site state


def evaluate_alerts(instance, defs, cursor=None):
    sensor = defs.resolve_sensor_def(ALERT_SENSOR_NAME)
    with dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor) as context:
        data = sensor.evaluate_tick(context)
    return data


def test_alert_sensor_posts_once_when_a_site_starts_failing_and_once_when_it_recovers(
    sim, pipeline_env, monkeypatch
):
    with Receiver() as receiver:
        monkeypatch.setenv("VITALS_ALERT_WEBHOOK_URL", receiver.url)
        monkeypatch.setenv("VITALS_UI_URL", "http://dagster.example:3000/")
        defs = defs_from_env()
        with dg.instance_for_test() as instance:
            first = fail_range(instance, defs, "2026-03-09-10:00", "2026-03-09-10:10", monkeypatch)
            data = evaluate_alerts(instance, defs)
            fail_range(instance, defs, "2026-03-09-10:05", "2026-03-09-10:15", monkeypatch)
            again = evaluate_alerts(instance, defs, data.cursor)
            assert again.skip_message and "1 site asset(s) failing" in again.skip_message
            assert run_range(instance, defs, "2026-03-09-10:10", "2026-03-09-10:20").success
            healed = evaluate_alerts(instance, defs, again.cursor)
    started, recovered = receiver.bodies  # two messages for three runs
    text = started["text"]
    assert f"{SITE}/timeseries" in text and "[2026-03-09-10:00, 2026-03-09-10:15)" in text
    assert f"http://dagster.example:3000/runs/{first.run_id}" in text
    assert "key" in started["started_failing"][0]["error"].lower()  # ACE refused the key
    assert started["started_failing"][0]["site"] == SITE
    assert "not-the-key" not in json.dumps(started) and SIM_KEY not in json.dumps(started)
    assert recovered["recovered"][0]["failed_runs"] == 2 and recovered["started_failing"] == []
    assert healed.cursor and json.loads(healed.cursor)["failing"] == {}


def test_an_undeliverable_alert_fails_the_tick_and_is_sent_again(sim, pipeline_env, monkeypatch):
    with Receiver(status=503) as receiver:
        monkeypatch.setenv("VITALS_ALERT_WEBHOOK_URL", receiver.url)
        monkeypatch.setattr("vitals_pipeline.automation.alerts.time.sleep", lambda s: None)
        defs = defs_from_env()
        with dg.instance_for_test() as instance:
            fail_range(instance, defs, "2026-03-09-10:00", "2026-03-09-10:00", monkeypatch)
            with pytest.raises(Exception, match="did not accept the alert"):
                evaluate_alerts(instance, defs)
            receiver.status = 200
            evaluate_alerts(instance, defs)  # no cursor was stored: the change is sent again
    assert len(receiver.bodies) == 3 + 1
    assert receiver.bodies[-1]["started_failing"][0]["site"] == SITE


def test_alert_error_text_never_carries_the_key(monkeypatch):
    monkeypatch.setenv("ACE_API_KEY", "eyJhbGciOiJIUzI1NiJ9.secret")
    change = Change("s/timeseries", True, "r1", "[a, b)", error="401 for Bearer eyJhbGciOiJIUzI1NiJ9.secret")
    assert "eyJhbGciOiJIUzI1NiJ9.secret" not in json.dumps(alert_message([change], "http://ui"))


def test_a_refusing_webhook_is_reported_without_its_secret():
    with Receiver(status=400) as receiver:
        with pytest.raises(AlertDeliveryError) as exc:
            post_alert(receiver.url, {"text": "x"})
    assert "HTTP 400" in str(exc.value) and "SECRET" not in str(exc.value)
    assert len(receiver.bodies) == 1  # a 4xx is not retried
