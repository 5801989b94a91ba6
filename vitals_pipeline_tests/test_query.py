"""Reading the DuckDB file while the pipeline writes it (`vitals query`, storage/reading.py).

A writer process stores into the file again and again, opening it each time as a run does
(connect_duckdb: it retries a held file up to its lock timeout). Meanwhile queries run through
query_duckdb in a loop, and `vitals query` as a process: every query answers, every write
succeeds, and the queries see the rows the writer adds. A query that would run for ever is
stopped at its bound, and the file is free for a writer right after.

The counter-example is measured too: a notebook keeping the file open read-only makes a writer
with a short lock timeout fail, which is what `vitals query` avoids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from vitals_pipeline.storage.duckdb_io import DuckDBFileLockedError, connect_duckdb
from vitals_pipeline.storage.reading import QueryError, query_duckdb

BIN = Path(sys.executable).parent

WRITER = r"""
import sys, time
from datetime import datetime, timedelta
import pyarrow as pa
from vitals_pipeline.storage.duckdb_io import connect_duckdb, store_slice

path, seconds = sys.argv[1], float(sys.argv[2])
start = datetime(2026, 3, 9)
end = time.monotonic() + seconds
n = 0
while time.monotonic() < end:
    rows = pa.table({"point": [f"p{i}" for i in range(200)],
                     "ts": pa.array([start + timedelta(seconds=n)] * 200, pa.timestamp("us")),
                     "value": [float(i) for i in range(200)]})
    conn = connect_duckdb(path, lock_timeout_seconds=60)  # as a run opens it
    try:
        store_slice(conn, schema="site", table="timeseries", rows=rows, merge_keys=["point", "ts"],
                    time_column="ts", window=(start, start + timedelta(days=1)))
        time.sleep(0.15)  # a run holds the file a little while it stores
    finally:
        conn.close()
    n += 1
    print("stored", n, flush=True)
    time.sleep(0.05)
print("writer-end", n, flush=True)
"""


@pytest.mark.slow
def test_queries_while_a_writer_writes_never_fail_it(tmp_path):
    path = str(tmp_path / "vitals.duckdb")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "8"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().startswith("stored")
        counts = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            table = query_duckdb(path, "SELECT count(*) AS n FROM site.timeseries", wait_seconds=30)
            counts.append(table.column("n")[0].as_py())
            time.sleep(0.1)
        cli = subprocess.run(
            [str(BIN / "vitals"), "query", "--json", "SELECT count(*) AS n, max(ts) AS newest FROM site.timeseries"],
            env={**os.environ, "VITALS_DUCKDB_PATH": path}, capture_output=True, text=True, timeout=120,
        )
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 0 and "writer-end" in out, err[-3000:]
    writes = int(out.split("writer-end")[1])
    assert cli.returncode == 0, cli.stderr
    row = json.loads(cli.stdout.splitlines()[0])
    assert row["n"] >= counts[-1] and row["n"] % 200 == 0
    assert len(counts) >= 2 and counts == sorted(counts) and counts[-1] > counts[0], counts
    final = query_duckdb(path, "SELECT count(*) FROM site.timeseries").column(0)[0].as_py()
    assert final == writes * 200


def test_a_query_is_stopped_at_its_bound_and_frees_the_file(tmp_path):
    path = str(tmp_path / "vitals.duckdb")
    connect_duckdb(path).close()
    began = time.monotonic()
    with pytest.raises(QueryError, match="longer than 1 s and was stopped"):
        query_duckdb(path, "SELECT count(*) FROM range(1000000000000) a, range(1000) b", max_seconds=1)
    assert time.monotonic() - began < 30  # 1 s, plus start-up on a loaded machine
    connect_duckdb(path, lock_timeout_seconds=1).close()  # free at once

    # What it avoids: a connection kept open read-only (a notebook) fails a writer.
    notebook = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('open', flush=True); time.sleep(30)", path],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert notebook.stdout.readline().strip() == "open"
        with pytest.raises(DuckDBFileLockedError, match="not even read-only"):
            connect_duckdb(path, lock_timeout_seconds=1)
    finally:
        notebook.kill()
        notebook.communicate()


def test_vitals_query_says_what_is_wrong(tmp_path):
    missing = subprocess.run(
        [str(BIN / "vitals"), "query", "SELECT 1"],
        env={**os.environ, "VITALS_DUCKDB_PATH": str(tmp_path / "none.duckdb")},
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 1 and "no DuckDB file" in missing.stderr
    path = str(tmp_path / "v.duckdb")
    duckdb.connect(path).close()
    bad = subprocess.run(
        [str(BIN / "vitals"), "query", "SELECT * FROM nowhere.timeseries"],
        env={**os.environ, "VITALS_DUCKDB_PATH": path}, capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 1 and "nowhere" in bad.stderr
