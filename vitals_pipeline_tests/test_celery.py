"""A fleet run's shard steps on two Celery workers (dagster-celery, Redis broker), each a process
group of its own with its own folder and environment, sharing only what machines would share:
the Dagster instance on a real PostgreSQL server, a real Redis, the warehouse and the simulator
over loopback HTTP. Started once for the module (a worker takes seconds to start).

The warehouse is the shared warehouse in PostgreSQL (VITALS_WAREHOUSE_URL), a database on the
test server: both workers write it (the instance's `duckdb` pool still sends one step at a time
here; raise its limit to let steps store side by side, see docs/several-machines.md). The
`warehouse` fixture is the one place that says which warehouse.

1. A schedule tick (job `fleet_timeseries`, 3 partitions, VITALS_SHARD_SIZE=1: one step per site)
   runs its steps on both workers, each step once, in a worker process (never in the process that
   orchestrates the run), and every site's partitions are stored exactly.
2. A worker killed with SIGKILL while it runs a step (a slow site holds it there): the other
   worker takes that step over (deploy/celery/dagster_celery_config.py: late acknowledgement and
   a visibility timeout), the run completes, the catch-up plan finds nothing of that tick to
   redo and its runs fill the rest; every site exact, nothing duplicated.
3. VITALS_EXECUTOR picks the definitions' executor (in_process by default), and says what is
   wrong with a bad value or a missing broker.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg
import pytest

from vitals_pipeline.ace.simulator import Simulator, SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import five_minute_partitions, timeseries_key
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.schedules import plan_tick
from vitals_pipeline.automation.sensors import plan_catchup
from vitals_pipeline.config import ConfigError, Settings
from vitals_pipeline.definitions import build_definitions, choose_executor
from vitals_pipeline.windows import partition_start, window_for_keys
from vitals_pipeline_tests.celery_stack import (
    SHIPPED_PG_SETTINGS,
    Worker,
    attributed,
    new_worker,
    owner,
    run_on_celery,
    start_workers,
    step_executions,
    stop_workers,
)
from vitals_pipeline_tests.conftest import SIM_KEY, simulator
from vitals_pipeline_tests.helpers import diff, expected_rows
from vitals_pipeline_tests.postgres import PostgresServer, postgres_server  # noqa: F401  (fixture)
from vitals_pipeline_tests.redis_server import RedisServer, redis_server  # noqa: F401  (fixture)
from vitals_pipeline_tests.shared_warehouse import PostgresWarehouseForTests
from vitals_pipeline_tests.test_postgres import pg_query

pytestmark = pytest.mark.slow

SITES = ["north_office", "south_lab", "east_depot", "west_annex"]
SLOW = SITES[0]  # the site whose step a worker is killed in
PARTITIONS_START = "2026-03-10-10:50"
# Schedule ticks (a minute after a 5-minute boundary): newest closed partition + 10 min lookback.
FIRST_TICK = partition_start("2026-03-10-11:15") + timedelta(minutes=1)  # 11:00..11:10
KILL_TICK = partition_start("2026-03-10-11:20") + timedelta(minutes=1)  # 11:05..11:15
CATCHUP_AT = partition_start("2026-03-10-11:25") + timedelta(minutes=2)  # watches 10:50..11:15
# A step taken by a worker that died is handed to another after this long. Longer than any step
# here (a few seconds), short enough for the test; deployments keep the default hour.
VISIBILITY_TIMEOUT_SECONDS = 20
# Runs of the first tick at most, until both workers have taken a step (each run: ~1/8 chance
# that one worker takes all four).
MAX_TICK_RUNS = 5
M = dg.AssetPartitionStatus.MATERIALIZED


@pytest.fixture(scope="module")
def warehouse(postgres_server: PostgresServer) -> PostgresWarehouseForTests:  # noqa: F811
    """The warehouse the workers share: the shared warehouse in PostgreSQL (VITALS_WAREHOUSE_URL),
    a database of its own on the test server, which every worker writes at the same time.
    (`DuckDBFileWarehouse` is the DuckDB file on this host, which workers would take in turn.)"""
    name = f"warehouse_{uuid.uuid4().hex[:12]}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    yield PostgresWarehouseForTests(postgres_server.url(name), postgres_server, name)
    postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass
class Stack:
    sim: Simulator
    settings: Settings
    instance: dg.DagsterInstance
    workers: list[Worker]
    warehouse: PostgresWarehouseForTests
    redis: RedisServer
    secrets: list[str]
    pg_url: str

    def ensure_workers(self) -> None:
        dead = [w for w in self.workers if not w.alive()]
        for worker in dead:
            worker.pids_seen.clear()
        start_workers(dead)

    def status(self, site: str, first: str, last: str) -> dict:
        keys = window_for_keys(first, last).partition_keys()
        found = (
            self.instance.get_status_by_partition(
                timeseries_key(site), keys, five_minute_partitions(self.settings)
            )
            or {}
        )
        return {key: found.get(key) for key in keys}

    def exact(self, site: str, first: str, last: str):
        window = window_for_keys(first, last)
        truth = expected_rows(self.sim, window.start, window.end, site)
        assert truth, f"the simulator has samples for {site}"
        return diff(self.warehouse.stored(site, window.start, window.end), truth)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres_server: PostgresServer, redis_server: RedisServer, warehouse):  # noqa: F811
    from vitals_pipeline.cli import ensure_dagster_home

    base = tmp_path_factory.mktemp("celery")
    database = f"dagster_{uuid.uuid4().hex[:12]}"
    postgres_server.admin(f"CREATE DATABASE {database}")
    sim = simulator(*(SiteSpec(site, points=20, seed=i) for i, site in enumerate(SITES)))
    workers: list[Worker] = []
    try:
        with SimulatorServer(sim) as server, pytest.MonkeyPatch.context() as mp:
            shared = {
                "ACE_API_URL": server.url,
                "ACE_API_KEY": SIM_KEY,
                "ACE_SITES": ",".join(SITES),
                "VITALS_SHARD_SIZE": "1",
                "VITALS_PARTITIONS_START": PARTITIONS_START,
                "VITALS_EXECUTOR": "celery",
                "VITALS_CELERY_BROKER_URL": redis_server.url(),
                "VITALS_CELERY_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT_SECONDS),
                "DAGSTER_PG_URL": postgres_server.url(database),
                "DAGSTER_EVENT_BATCH_SIZE": "1000",
                **warehouse.env(),
            }
            # The process that orchestrates the runs: its own DAGSTER_HOME on the same database.
            home = base / "orchestrator_home"
            home.mkdir()
            shutil.copy(SHIPPED_PG_SETTINGS, home / "dagster.yaml")
            for name, value in {**shared, "DAGSTER_HOME": str(home)}.items():
                mp.setenv(name, value)
            ensure_dagster_home()  # creates Dagster's tables once, before any worker opens them
            workers = [new_worker(name, base, shared) for name in ("worker_a", "worker_b")]
            start_workers(workers)
            with dg.DagsterInstance.get() as instance:
                yield Stack(
                    sim,
                    Settings.from_env(),
                    instance,
                    workers,
                    warehouse,
                    redis_server,
                    secrets=[SIM_KEY, postgres_server.password, redis_server.password],
                    pg_url=shared["DAGSTER_PG_URL"],
                )
    finally:
        stop_workers(workers)
        postgres_server.admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def tick_request(stack: Stack, tick) -> dg.RunRequest:
    [request] = plan_tick(tick, SITES, set(), stack.settings)
    return request


def window_of(request: dg.RunRequest) -> tuple[str, str]:
    return (
        request.tags["dagster/asset_partition_range_start"],
        request.tags["dagster/asset_partition_range_end"],
    )


def test_a_tick_runs_its_shard_steps_on_the_workers_and_lands_exactly(stack):
    stack.ensure_workers()
    request = tick_request(stack, FIRST_TICK)
    first, last = window_of(request)
    assert (first, last) == ("2026-03-10-11:00", "2026-03-10-11:10")
    shards = [f"timeseries_shard_{i}" for i in range(1, len(SITES) + 1)]
    # This tick's window closes at 11:15, a quarter hour: the weather is a step of it too.
    steps_of_tick = sorted([*shards, "weather"])

    # The `duckdb` pool sends one step at a time, and Redis hands it to either idle worker: over
    # a few runs of the tick (each a re-fetch of the same window) both workers take steps.
    ran_by: dict[str, set[str]] = {}
    for attempt in range(MAX_TICK_RUNS):  # noqa: B007 - the count is reported after the loop
        result = run_on_celery(stack.instance, request)
        assert result.success, [w.log_tail() for w in stack.workers]
        for worker in stack.workers:
            worker.note_pids()
        steps = step_executions(stack.instance, result.run_id)
        assert sorted(steps) == steps_of_tick
        for step, events in steps.items():
            # Taken by one worker, started and finished in that worker's process: once each.
            [(taken, name), (start, started_in), (success, finished_in)] = attributed(
                events, stack.workers
            )
            assert (taken, start, success) == ("taken", "start", "success"), (step, events)
            assert name is not None and name == started_in == finished_in, (step, events)
            ran_by.setdefault(name, set()).add(step)
        # The process that orchestrates the run (this one) executed none of them.
        assert os.getpid() not in {e.pid for events in steps.values() for e in events}
        if len(ran_by) == len(stack.workers):
            break
    assert sorted(ran_by) == ["worker_a", "worker_b"], f"in {attempt + 1} runs: {ran_by}"

    for site in SITES:
        assert set(stack.status(site, first, last).values()) == {M}, site
        found = stack.exact(site, first, last)
        assert found.clean, f"{site}: {found}"  # re-runs of the window duplicated nothing
    assert_no_secrets(stack)


def test_a_worker_killed_mid_step_loses_and_duplicates_nothing(stack):
    stack.ensure_workers()
    request = tick_request(stack, KILL_TICK)
    first, last = window_of(request)
    slow_step = "timeseries_shard_1"
    tag = uuid.uuid4().hex
    outcome: dict = {}

    def orchestrate():
        try:
            outcome["result"] = run_on_celery(stack.instance, request, **{"vitals-test/tick": tag})
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread below
            outcome["error"] = exc

    stack.sim.faults.site_slow_seconds = {SLOW: 8.0}
    orchestrator = threading.Thread(target=orchestrate, daemon=True)
    orchestrator.start()
    try:
        started = wait_for_step_start(stack, tag, slow_step, timeout=90)
        victim = owner(started, stack.workers)
        assert victim is not None, f"{slow_step} started in pid {started.pid}, no worker's process"
        victim.kill()
        stack.sim.faults.site_slow_seconds = {}
        orchestrator.join(timeout=VISIBILITY_TIMEOUT_SECONDS + 90)
    finally:
        stack.sim.faults.site_slow_seconds = {}
    assert not orchestrator.is_alive(), "the run never finished after a worker died"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    survivor = next(w for w in stack.workers if w is not victim)
    survivor.note_pids()
    assert result.success, survivor.log_tail()

    steps = step_executions(stack.instance, result.run_id)
    # Started in the killed worker, never finished there; taken over and finished by the other.
    assert attributed(steps[slow_step], stack.workers) == [
        ("taken", victim.name),
        ("start", victim.name),
        ("taken", survivor.name),
        ("start", survivor.name),
        ("success", survivor.name),
    ], steps[slow_step]
    for step, events in steps.items():
        assert [e.kind for e in events].count("success") == 1, (step, events)

    # Nothing of the killed tick is left for the catch-up; what it finds (partitions that no tick
    # covered) its runs fill, on the surviving worker.
    plan = plan_catchup(
        stack.instance,
        SITES,
        five_minute_partitions(stack.settings),
        now=CATCHUP_AT,
        hours=1,
        partitions_start=stack.settings.partitions_start,
        retry_after=timedelta(0),
    )
    tick_keys = set(window_for_keys(first, last).partition_keys())
    for catchup in plan.requests:
        keys = set(window_for_keys(*window_of(catchup)).partition_keys())
        assert not keys & tick_keys, (
            f"the catch-up redoes the killed tick's {sorted(keys & tick_keys)}"
        )
        assert run_on_celery(stack.instance, catchup).success, survivor.log_tail()

    everything = (PARTITIONS_START, last)
    for site in SITES:
        assert set(stack.status(site, *everything).values()) == {M}, site
        found = stack.exact(site, *everything)
        assert found.clean, f"{site}: {found}"  # nothing missing, duplicated or altered
    assert_no_secrets(stack)


def wait_for_step_start(stack: Stack, tag: str, step_key: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = stack.instance.get_run_ids(dg.RunsFilter(tags={"vitals-test/tick": tag}), limit=1)
        if runs:
            for event in step_executions(stack.instance, runs[0]).get(step_key, []):
                if event.kind == "start":
                    return event
        time.sleep(0.2)
    raise AssertionError(
        f"{step_key} did not start in {timeout:.0f} s: {[w.log_tail(1500) for w in stack.workers]}"
    )


def assert_no_secrets(stack: Stack) -> None:
    """Neither the ACE key nor a password in the workers' logs, anywhere in the broker, or in the
    instance's runs and events."""
    logs = [w.log_path.read_text(errors="replace") for w in stack.workers]
    instance = [row for (row,) in pg_query(stack.pg_url, "SELECT run_body FROM runs")]
    instance += [row for (row,) in pg_query(stack.pg_url, "SELECT event FROM event_logs")]
    broker = []
    client = stack.redis.client()
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"string":
                broker.append(repr(client.get(key)))
            elif kind == b"list":
                broker.append(repr(client.lrange(key, 0, -1)))
            elif kind == b"hash":
                broker.append(repr(client.hgetall(key)))
    finally:
        client.close()
    assert broker and instance, "the broker holds the steps' results, the instance their events"
    for secret in stack.secrets:
        assert not any(secret in text for text in [*logs, *broker, *instance])


def test_vitals_executor_chooses_where_the_steps_run(monkeypatch):
    assert choose_executor({}) is dg.in_process_executor
    assert choose_executor({"VITALS_EXECUTOR": "in_process"}) is dg.in_process_executor
    broker = {"VITALS_CELERY_BROKER_URL": "redis://:secret@redis-host:6379/0"}
    assert choose_executor({"VITALS_EXECUTOR": "celery", **broker}).name == "celery"
    with pytest.raises(ConfigError, match="VITALS_CELERY_BROKER_URL"):
        choose_executor({"VITALS_EXECUTOR": "celery"})
    with pytest.raises(ConfigError, match="VITALS_EXECUTOR='dask'"):
        choose_executor({"VITALS_EXECUTOR": "dask"})

    # The definitions' jobs (the fleet job the schedule launches) run on the chosen executor.
    for name, value in {
        "ACE_SITES": ",".join(SITES),
        "VITALS_EXECUTOR": "celery",
        **broker,
    }.items():
        monkeypatch.setenv(name, value)
    job = build_definitions(Settings.from_env()).resolve_job_def(FLEET_JOB)
    assert job.executor_def.name == "celery"
    monkeypatch.delenv("VITALS_EXECUTOR")
    job = build_definitions(Settings.from_env()).resolve_job_def(FLEET_JOB)
    assert job.executor_def is dg.in_process_executor
