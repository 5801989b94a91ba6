"""Retention (`vitals prune`, the daily `vitals_prune` run) on a real instance, SQLite (the shipped
dagster.yaml) and PostgreSQL (deploy/postgres/dagster.yaml on a real server): partition status
stays exactly what it was, also when Dagster rebuilds it from the events; what goes is what it does
not need."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from vitals_pipeline.ace.simulator import SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import five_minute_partitions, range_tags, timeseries_key
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.storage.retention import prune_instance
from vitals_pipeline.windows import window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, simulator
from vitals_pipeline_tests.helpers import QUIET
from vitals_pipeline_tests.postgres import pg_url, postgres_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
SITES = ["alpha", "beta"]
# Four ticks with a 10-minute lookback: 11:05..11:15 is materialized three times.
TICKS = [("2026-03-10-10:55", "2026-03-10-11:05"), ("2026-03-10-11:00", "2026-03-10-11:10"),
         ("2026-03-10-11:05", "2026-03-10-11:15"), ("2026-03-10-11:10", "2026-03-10-11:20")]
ALL = window_for_keys("2026-03-10-10:55", "2026-03-10-11:20").partition_keys()
LATER = datetime(2030, 1, 1, tzinfo=UTC)  # "now" for the prune: everything is older than keep


@pytest.fixture(params=["sqlite", "postgres"])
def instance(request, monkeypatch, tmp_path):
    sim = simulator(*(SiteSpec(name, points=30, seed=i) for i, name in enumerate(SITES)))
    with SimulatorServer(sim) as server:
        env = {
            "ACE_API_URL": server.url, "ACE_API_KEY": SIM_KEY, "ACE_SITES": ",".join(SITES),
            "VITALS_DUCKDB_PATH": str(tmp_path / "vitals.duckdb"),
            "VITALS_PARTITIONS_START": "2026-03-01-00:00",
            "DAGSTER_HOME": str(tmp_path / "home"),
            "VITALS_CHECK_REPEAT_MINUTES": "0",  # every run records its checks: history to prune
            "VITALS_SITE_BUDGET_SECONDS": "5",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        home = tmp_path / "home"
        home.mkdir()
        if request.param == "postgres":
            monkeypatch.setenv("DAGSTER_PG_URL", request.getfixturevalue("pg_url"))
            shutil.copy(REPO / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
        else:
            shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        with dg.DagsterInstance.get() as made:
            made.upgrade()
            made.sim = sim
            yield made


def load(instance) -> list[str]:
    settings = Settings.from_env()
    job = build_definitions(settings).resolve_job_def(FLEET_JOB)
    run_ids = []
    for i, (first, last) in enumerate(TICKS):
        instance.sim.faults.site_status = {"beta": 503} if i == len(TICKS) - 1 else {}
        result = job.execute_in_process(
            instance=instance, tags=range_tags(first, last), run_config=QUIET, raise_on_error=False,
            asset_selection=[timeseries_key(site) for site in SITES],
        )
        run_ids.append(result.run_id)
    return run_ids


def statuses(instance) -> dict:
    partitions = five_minute_partitions(Settings.from_env())
    return {
        site: instance.get_status_by_partition(timeseries_key(site), ALL, partitions)
        for site in SITES
    }


def materializations(instance, site: str) -> int:
    return len(instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=timeseries_key(site)), limit=1000).records)


def test_prune_keeps_partition_status_and_drops_the_rest(instance):
    run_ids = load(instance)
    before = statuses(instance)
    F, M = dg.AssetPartitionStatus.FAILED, dg.AssetPartitionStatus.MATERIALIZED
    assert set(before["alpha"].values()) == {M}
    # The last tick failed for beta: its three partitions' latest attempt failed.
    assert [before["beta"][k] for k in ALL] == [M, M, M, F, F, F]
    count = materializations(instance, "alpha")
    assert count == 12  # 3 partitions x 4 ticks

    dry = prune_instance(instance, timedelta(days=1), now=LATER, dry_run=True)
    assert dry.superseded_events > 0 and materializations(instance, "alpha") == count

    report = prune_instance(instance, timedelta(days=1), now=LATER)
    # One materialization per partition is left, the newest.
    assert materializations(instance, "alpha") == len(ALL)
    assert report.superseded_events >= (count - len(ALL)) * 2  # materializations and planned
    assert report.check_rows > 0
    assert statuses(instance) == before
    # Dagster rebuilds the partition status from the events that are left: the same.
    instance.wipe_asset_cached_status([timeseries_key(site) for site in SITES])
    assert statuses(instance) == before
    # The run records stay; their logs are gone (SQLite: the run shard files).
    assert all(instance.get_run_record_by_id(run_id) is not None for run_id in run_ids)
    assert report.run_logs == len(run_ids)
    if instance.event_log_storage.__class__.__name__.startswith("Vitals"):
        assert report.run_log_bytes > 0
        assert not any(os.path.exists(instance.event_log_storage.path_for_shard(r)) for r in run_ids)
    # Each check keeps its newest result.
    key = dg.AssetCheckKey(timeseries_key("alpha"), "no_duplicate_samples")
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
    assert len(history) == 1

    # Runs younger than the cutoff are not touched.
    again = prune_instance(instance, timedelta(days=10_000), now=LATER)
    assert (again.superseded_events, again.check_rows, again.run_logs) == (0, 0, 0)
