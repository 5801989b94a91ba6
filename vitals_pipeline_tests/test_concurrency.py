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
        self.path, self.stop, self.reads, self.busy, self.errors = path, threading.Event(), 0, 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with duckdb.connect(str(self.path), read_only=True) as con:
                    con.execute("SELECT count(*) FROM information_schema.tables").fetchall()
                    time.sleep(0.1)
                self.reads += 1
            except duckdb.IOException as exc:
                if not any(w in str(exc).lower() for w in ("lock", "does not exist")):
                    self.errors.append(str(exc))
                self.busy += 1
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
    assert reader.reads + reader.busy > 0

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
        # The writers took turns: the timeseries steps' [start, success] never overlap. In the
        # CLI too, Dagster claims the `duckdb` pool slot (dagster.yaml: limit 1) per step from
        # the instance; the DuckDB lock retry covers the reader and `vitals status`.
        steps = sorted(step_span(instance, r.dagster_run.run_id) for r in records)
        for (_, done), (start, _) in zip(steps, steps[1:]):
            assert start >= done, steps


def step_span(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    times = {
        e.dagster_event.event_type_value: e.timestamp
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None and e.step_key == f"{SITE}__timeseries"
        and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")
    }
    return times["STEP_START"], times["STEP_SUCCESS"]
