"""The shipped event log storage (storage/event_log.py) against Dagster's stock SQLite storage:
the same runs through both must leave the same records, and the stock class must read what ours
wrote.

Two differences are deliberate. Ours writes planned events (materializations, check
evaluations) to the index shard only, where every asset query reads them, not also to the run's
own log. And ours plans each check of a run with ONE row and no partition, which
the run's evaluation (recorded with no partition) completes. The stock class plans one row per
partition of the run; no evaluation ever completes those, so they stay PLANNED for good (the UI
lists them as skipped) beside the evaluation's own row: one per partition of a range run, and one
for a single-partition run too."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from vitals_pipeline.assets.keys import five_minute_partitions, range_tags, timeseries_key
from vitals_pipeline.checks.specs import CHECK_NAMES
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.event_log import RUN_SHARD_ENGINES, VitalsSqliteEventLogStorage
from vitals_pipeline.windows import window_for_keys
from vitals_pipeline_tests.conftest import SITE
from vitals_pipeline_tests.helpers import run_assets

REPO = Path(__file__).resolve().parent.parent
FIRST, LAST = "2026-03-09-10:00", "2026-03-09-10:55"  # 12 partitions


def home_with(path: Path, *, stock: bool) -> Path:
    """A DAGSTER_HOME with the shipped dagster.yaml, or the same without its event log storage."""
    path.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["event_log_storage"]["class"] == "VitalsSqliteEventLogStorage"
    if stock:
        del config["event_log_storage"]
    (path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return path


def summary(instance: dg.DagsterInstance, run_id: str) -> dict:
    """Everything the UI, the sensors and `vitals status` read about a range run."""
    key = timeseries_key(SITE)
    events = instance.all_logs(run_id)
    [record] = instance.get_asset_records([key])
    latest = instance.get_latest_materialization_event(key)
    checks = {}
    for name in CHECK_NAMES:
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(key, name), limit=1000
        )
        checks[name] = sorted(
            (r.status.value, r.partition or "") for r in history if r.run_id == run_id
        )
    return {
        "event_types": Counter(e.dagster_event_type for e in events if e.is_dagster_event),
        "partitions": sorted(instance.get_materialized_partitions(key)),
        "indexed_materializations": sorted(
            r.partition_key
            for r in instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1000).records
        ),
        # What partition status and the catch-up sensor read: the index (asset queries).
        "planned_partitions": sorted(
            partition
            for partition in window_for_keys(FIRST, LAST).partition_keys()
            if (planned := instance.get_latest_planned_materialization_info(key, partition))
            and planned.run_id == run_id
        ),
        "last_run_id": record.asset_entry.last_run_id,
        "latest_partition": latest.dagster_event.partition,
        "latest_samples": latest.asset_materialization.metadata["samples"].value,
        "checks": checks,
        "partition_status": sorted(
            Counter(
                str(status)
                for status in instance.get_status_by_partition(
                    key, window_for_keys(FIRST, LAST).partition_keys(),
                    five_minute_partitions(Settings.from_env()),
                ).values()
            ).items()
        ),
    }


def range_run(home: Path, monkeypatch) -> tuple[dict, str]:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        result = run_assets([timeseries_key(SITE)], tags=range_tags(FIRST, LAST), instance=instance)
        assert result.success
        storage = instance.event_log_storage
        if isinstance(storage, VitalsSqliteEventLogStorage):
            # The run's shard was closed when the run ended, while this instance is still open:
            # its write-ahead log folded into the shard (not left as large as the run's events).
            wal = Path(storage._base_dir) / f"{result.run_id}.db-wal"
            assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
            assert result.run_id not in storage._engines
        return summary(instance, result.run_id), result.run_id


def partition_run(home: Path, monkeypatch) -> dict:
    """A single-partition run (a tick of one partition, a re-run from the asset page)."""
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        result = run_assets([timeseries_key(SITE)], partition_key=LAST, instance=instance)
        assert result.success
        return summary(instance, result.run_id)["checks"]


@pytest.mark.parametrize("index_fails", [False, True], ids=["batched", "index-write-fails-once"])
def test_range_run_leaves_the_records_the_stock_storage_leaves(
    tmp_path, monkeypatch, pipeline_env, index_fails
):
    if index_fails:
        # The index transaction of a batch fails once (a lock held past the busy timeout): the
        # events are indexed one by one, and the run's shard holds each event once.
        original = VitalsSqliteEventLogStorage._index_events
        failed = []

        def flaky(self, events, rows):
            if len(events) > 1 and not failed:
                failed.append(len(events))
                raise RuntimeError("database is locked")
            return original(self, events, rows)

        monkeypatch.setattr(VitalsSqliteEventLogStorage, "_index_events", flaky)
    ours = home_with(tmp_path / "ours", stock=False)
    stock = home_with(tmp_path / "stock", stock=True)
    monkeypatch.setenv("DAGSTER_HOME", str(ours))
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, VitalsSqliteEventLogStorage)
    ours_summary, ours_run = range_run(ours, monkeypatch)
    if index_fails:
        assert failed, "the failure was injected"
    monkeypatch.setenv("VITALS_DUCKDB_PATH", str(tmp_path / "stock.duckdb"))
    stock_summary, _ = range_run(stock, monkeypatch)

    partitions = window_for_keys(FIRST, LAST).partition_keys()
    assert ours_summary["partitions"] == sorted(partitions)
    assert ours_summary["planned_partitions"] == sorted(partitions)
    # One per partition, and the site's points, which the run loaded first (none were stored).
    assert ours_summary["event_types"]["ASSET_MATERIALIZATION"] == len(partitions) + 1
    assert ours_summary["last_run_id"] == ours_run
    assert ours_summary["latest_partition"] == LAST
    # Deliberate difference 1: planned events are in the index (above) but not in the run's own
    # log in ours; the stock class writes them to both.
    planned_types = {"ASSET_MATERIALIZATION_PLANNED", "ASSET_CHECK_EVALUATION_PLANNED"}
    ours_types = {str(t.value): n for t, n in ours_summary["event_types"].items()}
    stock_types = {str(t.value): n for t, n in stock_summary["event_types"].items()}
    assert not planned_types & set(ours_types)
    assert stock_types["ASSET_MATERIALIZATION_PLANNED"] == len(partitions)
    assert ours_types == {t: n for t, n in stock_types.items() if t not in planned_types}
    skip = ("last_run_id", "checks", "event_types")
    compared = {k: v for k, v in ours_summary.items() if k not in skip}
    assert compared == {k: v for k, v in stock_summary.items() if k not in skip}
    # Deliberate difference 2 (module docstring): each check's one row, completed, in ours; the
    # same row in the stock storage, plus a PLANNED row per partition that nothing completes.
    assert set(ours_summary["checks"]) == set(stock_summary["checks"]) == set(CHECK_NAMES)
    for name, rows in ours_summary["checks"].items():
        assert rows == [("SUCCEEDED", "")], (name, rows)
        assert stock_summary["checks"][name] == sorted(rows + [("PLANNED", key) for key in partitions]), name

    # Dagster's own class reads what ours wrote (same files, tables and migrations).
    monkeypatch.setenv("DAGSTER_HOME", str(ours))
    ours_yaml = (ours / "dagster.yaml").read_text()
    (ours / "dagster.yaml").write_text((stock / "dagster.yaml").read_text())
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage) is SqliteEventLogStorage
        assert summary(instance, ours_run) == ours_summary

    # A single-partition run: Dagster records the evaluation without a partition here too, so the
    # stock class's planned row for the partition stays PLANNED; ours is completed.
    (ours / "dagster.yaml").write_text(ours_yaml)
    ours_single = partition_run(ours, monkeypatch)
    monkeypatch.setenv("VITALS_DUCKDB_PATH", str(tmp_path / "stock.duckdb"))
    stock_single = partition_run(stock, monkeypatch)
    assert ours_single == {name: [("SUCCEEDED", "")] for name in CHECK_NAMES}
    assert stock_single == {name: [("PLANNED", LAST), ("SUCCEEDED", "")] for name in CHECK_NAMES}


def test_connections_are_wal_with_normal_sync_and_engines_are_bounded(tmp_path):
    storage = VitalsSqliteEventLogStorage(str(tmp_path / "runs"))
    try:
        with storage.index_connection() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            # 1 = NORMAL (the stock storage leaves SQLite's default, 2 = FULL: an fsync a commit)
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        for i in range(RUN_SHARD_ENGINES + 10):
            with storage.run_connection(f"run-{i}") as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert len(storage._engines) == RUN_SHARD_ENGINES + 1  # the index's engine is kept
        # Each engine keeps one idle connection (closing the last one checkpoints the log)...
        index_engine = storage._engines["index"]
        assert index_engine.pool.checkedin() == 1
        # ...which holds no lock: another process's connection can take the write lock.
        other = sqlite3.connect(tmp_path / "runs" / "index.db", timeout=0)
        other.execute("BEGIN EXCLUSIVE")
        other.execute("CREATE TABLE written_elsewhere (x INTEGER)")
        other.commit()
        other.close()
        with storage.index_connection() as conn:  # and the kept connection sees its writes
            assert conn.exec_driver_sql("SELECT count(*) FROM written_elsewhere").scalar() == 0
    finally:
        storage.dispose()


def _shape(path: Path) -> tuple:
    """What makes two shards the same to Dagster: schema, migration stamp, journal mode."""
    conn = sqlite3.connect(path)
    try:
        return (
            sorted(conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()),
            conn.execute("SELECT version_num FROM alembic_version").fetchall(),
            conn.execute("PRAGMA journal_mode").fetchone(),
        )
    finally:
        conn.close()


def test_new_run_shards_are_copies_of_a_stock_initialized_shard(tmp_path):
    runs = tmp_path / "runs"
    ours, stock = VitalsSqliteEventLogStorage(str(runs)), SqliteEventLogStorage(str(tmp_path / "stock"))
    try:
        with stock.run_connection("stock-run"):
            pass
        for run in ("run-1", "run-2"):
            with ours.run_connection(run):
                pass
        templates = list(runs.glob(".run-shard-template-*.sqlite"))
        assert len(templates) == 1, "made once, beside the shards"
        expected = _shape(tmp_path / "stock" / "stock-run.db")
        assert _shape(runs / "run-1.db") == _shape(runs / "run-2.db") == expected
        # Not a run to Dagster, and nothing half-written left behind.
        assert sorted(ours.get_all_run_ids()) == ["run-1", "run-2"]
        assert not list(runs.glob("*.partial*"))
        # A shard that exists already is opened, never replaced by a copy.
        ours._initialized_dbs.discard("run-1")
        with ours.run_connection("run-1") as conn:
            conn.exec_driver_sql("CREATE TABLE marker (x INTEGER)")
        again = VitalsSqliteEventLogStorage(str(runs))
        try:
            with again.run_connection("run-1") as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM marker").scalar() == 0
        finally:
            again.dispose()
    finally:
        ours.dispose()
        stock.dispose()


def test_base_dir_defaults_to_dagster_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    storage = VitalsSqliteEventLogStorage()
    try:
        assert Path(storage._base_dir) == tmp_path / "history" / "runs"
    finally:
        storage.dispose()
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(ValueError, match="DAGSTER_HOME"):
        VitalsSqliteEventLogStorage()
