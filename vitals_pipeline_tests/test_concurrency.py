"""Concurrency through real processes: a backfill, two scheduled-style runs (newest partition +
lookback) and a manual run of overlapping windows, started at once as `dagster asset materialize`
processes against one fresh DAGSTER_HOME and one DuckDB file, with a read-only DuckDB reader and
`vitals status` running meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.windows import window_for_keys
from vitals_pipeline_tests.conftest import SITE
from vitals_pipeline_tests.helpers import BIN, assert_exact, dagster_cli

LOCK_WORDS = ("could not set lock", "DuckDBFileLockedError", "database is locked", "alembic")


class Reader(threading.Thread):
    """Opens the DuckDB file read-only again and again while the writers run, holding it briefly
    each time (as a notebook or the DuckDB CLI would). A reader may see the file busy; the
    writers must not fail because of it."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stop, self.errors = path, threading.Event(), []
        self.reads = self.busy = self.missing = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with duckdb.connect(str(self.path), read_only=True) as con:
                    con.execute("SELECT count(*) FROM information_schema.tables").fetchall()
                    time.sleep(0.1)
                self.reads += 1
            except duckdb.IOException as exc:
                if "lock" in str(exc).lower():
                    self.busy += 1  # a writer has the file
                elif "does not exist" in str(exc).lower():
                    self.missing += 1  # before the first write
                else:
                    self.errors.append(str(exc))
            except duckdb.Error as exc:  # the file half-created by the first writer
                self.errors.append(str(exc))
            time.sleep(0.15)


@pytest.mark.slow
def test_overlapping_runs_from_real_processes_all_succeed_exactly(
    sim, server, pipeline_env, monkeypatch, tmp_path
):
    from vitals_pipeline.cli import ensure_dagster_home

    # A fresh DAGSTER_HOME, initialised by one process first, as `vitals demo/dev/status` do:
    # processes that meet a fresh SQLite instance together race in Dagster's schema migration
    # ("Version table 'alembic_version' has more than one head present"; reproduced with four
    # plain `DagsterInstance.get()` processes: 5 of 12 failed). Then all start at once.
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    ensure_dagster_home()
    assert (home / "dagster.yaml").exists() and (home / "history" / "runs.db").exists()
    db = Path(pipeline_env["VITALS_DUCKDB_PATH"])
    sim.faults.slow_seconds = 0.1  # every page takes a little while: the runs overlap
    env = {**os.environ, "ACE_PAGE_SIZE": "100"}
    module = ["-m", "vitals_pipeline.definitions", "--select", f"{SITE}/timeseries"]
    runs = {
        "backfill 10:00-10:55": ["--partition-range", "2026-03-09-10:00...2026-03-09-10:55"],
        "tick 11:01 (lookback)": ["--partition-range", "2026-03-09-10:45...2026-03-09-10:55"],
        "tick 11:06 (lookback)": ["--partition-range", "2026-03-09-10:50...2026-03-09-11:00"],
        "manual 10:30": ["--partition", "2026-03-09-10:30"],
    }
    reader = Reader(db)
    reader.start()
    procs = {name: dagster_cli("asset", "materialize", *module, *args, env=env) for name, args in runs.items()}
    status = None
    try:
        # `vitals status` while the runs are in progress.
        time.sleep(4)
        status = subprocess.run(
            [str(BIN / "vitals"), "status", "--json", "--duckdb-wait", "1"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        outputs = {name: p.communicate(timeout=240) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
        reader.stop.set()
        reader.join(timeout=10)

    for name, p in procs.items():
        out, err = outputs[name]
        assert p.returncode == 0, f"{name}: {err[-3000:]}"
        for word in LOCK_WORDS:
            assert word.lower() not in (out + err).lower(), f"{name}: {word}"
    assert status is not None and status.returncode in (0, 1, 2), status.stderr[-2000:]
    assert status.stdout.lstrip().startswith("{"), status.stdout[:500]
    assert not reader.errors, reader.errors
    # The reader read between the writes and found the file busy during them.
    assert reader.reads > 0 and reader.busy > 0, (reader.reads, reader.busy, reader.missing)

    window = window_for_keys("2026-03-09-10:00", "2026-03-09-11:00")
    assert_exact(db, sim, window.start, window.end)
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
        assert len(records) == 4
        assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
        spans = sorted((r.start_time, r.end_time) for r in records)
        # The runs really were in progress together (not one after the other).
        assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
        # Nothing left holding the duckdb pool.
        assert not instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots
        # Usually the `duckdb` pool (dagster.yaml, limit 1), claimed per step from the instance,
        # makes the CLI runs take turns too, but not always: once, two runs that started within
        # 4 ms ran their timeseries steps at the same time. What keeps writers apart is the IO
        # manager's DuckDB lock retry (and its one-transaction merge), so nothing here relies on
        # the pool.
