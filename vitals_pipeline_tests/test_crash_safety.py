"""Crash safety: SIGKILL the run process while it writes DuckDB.

A child process runs the real `test_site/timeseries` job for a 15-minute range against a real
DAGSTER_HOME and DuckDB file. To land kills inside the write phase, the child wraps the merge steps
the IO manager's store runs (`_ensure_table`, `_update_changed_rows`, `_insert_new_rows`, ... in
duckdb_io) so that each prints a marker and pauses briefly before and after it, and the IO
manager's `store` so that it prints where the write starts and ends; nothing else changes. Per seed the
test picks a marker (one stratum of the write per seed: early, middle, late), waits for it,
sleeps a seeded random part of the pause, and kills the child with SIGKILL.

Afterwards: the DuckDB file opens; every partition holds exactly its previous content or exactly
its new content (compared with snapshots taken before); all partitions of the run agree (one
transaction); a kill after the child reported the write finished leaves the new content; and a
re-run completes the window exactly (== ground truth). The Dagster instance also survives the
killed run.

The previous content differs from the new one both by missing rows (late samples not yet
visible) and by altered values, so a kill mid-merge that left an update without its insert (or
the reverse) would show.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.storage.duckdb_io import connect_duckdb
from vitals_pipeline.windows import floor_to_partition, partition_key, window_for_keys
from vitals_pipeline_tests.conftest import SIM_NOW, SITE
from vitals_pipeline_tests.helpers import (
    assert_exact,
    expected_rows,
    run_assets,
    step_failures,
    stored_rows,
)

REPO = Path(__file__).resolve().parent.parent
FIRST, LAST = "2026-03-09-10:00", "2026-03-09-10:10"
WINDOW = window_for_keys(FIRST, LAST)
# (seed, stratum of STRATA). Seed 30 picks write-end (a kill after the commit); the last kill is
# mid-transaction, so the final re-run starts from the old content.
KILLS = ((30, 2), (11, 0), (23, 1))
PAUSE = 0.05  # seconds before and after each merge step in the child
# Where in the write phase each seed kills: after one of these markers (picked by the seed) plus
# a random part of the pause that follows it. Markers name the first table merged (timeseries);
# the quality rows follow in the same transaction. Marker-driven, so a loaded machine does not
# shift the kills out of the write phase.
STRATA = (
    ("write-start", "begin _ensure_table", "end _ensure_table", "end _slice_has_rows"),
    ("begin _update_changed_rows", "end _update_changed_rows", "begin _insert_new_rows"),
    ("end _insert_new_rows", "write-end"),
)

CHILD = r"""
import os, sys, time
from vitals_pipeline.storage import duckdb_io

PAUSE = float(os.environ["CRASH_TEST_PAUSE"])

def announce(name, step):
    def wrapper(*args, **kwargs):
        print("begin", name, flush=True)
        time.sleep(PAUSE)
        out = step(*args, **kwargs)
        print("end", name, flush=True)
        time.sleep(PAUSE)
        return out
    return wrapper

for name in ("_ensure_table", "_slice_has_rows", "_update_changed_rows", "_insert_new_rows", "_insert_all"):
    setattr(duckdb_io, name, announce(name, getattr(duckdb_io, name)))

# The IO manager's store: the whole write of the site's window (samples and quality rows, one
# transaction). Its seam for tests, `store`, calls the real merge.
from vitals_pipeline.storage.io_manager import VitalsDuckDBIOManager

real_store = VitalsDuckDBIOManager.store

def store(self, conn, **kwargs):
    print("write-start", flush=True)
    out = real_store(self, conn, **kwargs)
    print("write-end", flush=True)
    return out

VitalsDuckDBIOManager.store = store

import dagster as dg
from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline_tests.helpers import QUIET, build_job

first, last = sys.argv[1], sys.argv[2]
with dg.DagsterInstance.get() as instance:
    result = build_job().execute_in_process(
        instance=instance, asset_selection=[timeseries_key(os.environ["ACE_SITES"])],
        tags=range_tags(first, last), run_config=QUIET, raise_on_error=False,
    )
print("run-end", result.success, flush=True)
"""


def by_partition(rows) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for row in rows:
        out[partition_key(floor_to_partition(row[1].replace(tzinfo=UTC)))].append(row)
    return {k: out.get(k, []) for k in WINDOW.partition_keys()}


def release_pool_slot_of_killed_run(instance: dg.DagsterInstance) -> None:
    """A killed run stays STARTED and keeps its `duckdb` pool slot (limit 1): every later run
    would wait for it forever. Shown here, then released the way the daemon does it (run
    monitoring marks the run failed; `free_slots_after_run_end_seconds` frees an ended run's
    slots). README "Reliability" gives the procedure."""
    [dead] = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    run_id = dead.dagster_run.run_id
    claimed = instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots
    assert [slot.run_id for slot in claimed] == [run_id], claimed
    instance.report_run_failed(dead.dagster_run, "run process killed (crash-safety test)")
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    assert not instance.event_log_storage.get_concurrency_info("duckdb").claimed_slots


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.strip() == marker:
            return lines
    raise AssertionError(f"child never printed {marker!r}: {lines} {proc.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_sigkill_while_writing_leaves_old_or_new_content(sim, server, pipeline_env, monkeypatch, tmp_path):
    from vitals_pipeline.cli import ensure_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    ensure_dagster_home()
    db = Path(pipeline_env["VITALS_DUCKDB_PATH"])

    # Previous content: fetched when three devices' samples had not arrived yet, and then some
    # values differ from what ACE now says (so the re-run has rows to insert AND to update).
    sim.faults.late_devices = 3
    sim.faults.late_seconds = 600
    sim.set_now(WINDOW.end + timedelta(minutes=1))
    with dg.DagsterInstance.get() as instance:
        first = run_assets([timeseries_key(SITE)], tags=range_tags(FIRST, LAST), instance=instance)
    assert first.success, step_failures(first)
    with duckdb.connect(str(db)) as con:
        con.execute(
            f"UPDATE {SITE}.timeseries SET value = value + 1 WHERE value IS NOT NULL "
            f"AND point IN (SELECT DISTINCT point FROM {SITE}.timeseries ORDER BY point LIMIT 5)"
        )
        con.execute("CHECKPOINT")
    snapshot = tmp_path / "snapshot.duckdb"
    shutil.copy(db, snapshot)
    old = by_partition(stored_rows(db))
    sim.set_now(SIM_NOW)
    new = by_partition(expected_rows(sim, WINDOW.start, WINDOW.end))
    for key in WINDOW.partition_keys():
        assert old[key] != new[key], f"partition {key} must change in the re-run"

    env = {**os.environ, "CRASH_TEST_PAUSE": str(PAUSE), "PYTHONUNBUFFERED": "1"}
    outcomes = []
    for seed, stratum in KILLS:
        for leftover in (db, Path(f"{db}.wal")):
            leftover.unlink(missing_ok=True)
        shutil.copy(snapshot, db)
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, FIRST, LAST],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        rng = random.Random(seed)
        target = rng.choice(STRATA[stratum])
        try:
            seen = read_until(proc, target, timeout=120)
            # Inside the pause that follows the marker, or just into the next step.
            delay = rng.uniform(0, 1.5 * PAUSE)
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        seen += [line.strip() for line in out.splitlines()]
        assert "run-end" not in " ".join(seen), "killed too late: the run had finished"

        # The file opens read-write (the next run's way: WAL replayed), then the content.
        connect_duckdb(str(db), lock_timeout_seconds=5).close()
        now = by_partition(stored_rows(db))
        states = set()
        for key in WINDOW.partition_keys():
            assert now[key] in (old[key], new[key]), f"seed {seed}: partition {key} is neither old nor new"
            states.add("new" if now[key] == new[key] else "old")
        assert len(states) == 1, f"seed {seed}: one transaction, yet partitions differ: {states}"
        if "write-end" in seen:
            assert states == {"new"}, f"seed {seed}: write reported done, content old"
        outcomes.append((seed, target, round(delay, 3), seen[-1], states.pop()))

        # The instance survived the killed run (and its pool slot is released for the next one).
        with dg.DagsterInstance.get() as instance:
            release_pool_slot_of_killed_run(instance)

    # A re-run after the last kill completes the window exactly.
    with dg.DagsterInstance.get() as instance:
        rerun = run_assets([timeseries_key(SITE)], tags=range_tags(FIRST, LAST), instance=instance)
    assert rerun.success, step_failures(rerun)
    assert outcomes[-1][-1] == "old"
    assert_exact(db, sim, WINDOW.start, WINDOW.end)
    print("kill points:", outcomes)
    # Kills landed both inside the transaction (old content) and after the commit (new).
    assert {state for *_, state in outcomes} == {"old", "new"}, outcomes
