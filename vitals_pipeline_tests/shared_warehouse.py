"""The shared warehouse (PostgreSQL) for the tests: a fresh database on the test server, its URL
as processes take it (VITALS_WAREHOUSE_URL), and how a test reads it back (plain psycopg2, not
the pipeline's code), plus the writer and reader processes of the concurrency and crash tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from vitals_pipeline_tests.helpers import Row
from vitals_pipeline_tests.postgres import PostgresServer

REPO = Path(__file__).resolve().parent.parent


@dataclass
class PostgresWarehouseForTests:
    """A database of the test server, used as the shared warehouse by every process."""

    url: str  # with the password, as VITALS_WAREHOUSE_URL takes it
    server: PostgresServer
    database: str

    def env(self) -> dict[str, str]:
        return {"VITALS_WAREHOUSE_URL": self.url}

    def connect(self):
        con = self.server.connect(self.database)
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SET TimeZone = 'UTC'")
        return con

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        con = self.connect()
        try:
            with con.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            con.close()

    def stored(self, site: str, start: datetime | None = None, end: datetime | None = None) -> list[Row]:
        """`<site>.timeseries` (in [start, end) when given), ordered by (ts, point)."""
        from vitals_pipeline.storage.names import schema_name

        exists = self.query(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'timeseries'", (schema_name(site),)
        )
        if not exists:
            return []
        where, params = "", ()
        if start is not None:
            where, params = "WHERE ts >= %s AND ts < %s", (_naive(start), _naive(end))
        return [
            tuple(row)
            for row in self.query(
                f'SELECT point, ts, value, raw_value FROM "{schema_name(site)}".timeseries {where} ORDER BY ts, point',
                params,
            )
        ]


def _naive(t: datetime) -> datetime:
    from vitals_pipeline.storage.duckdb_io import naive_utc

    return naive_utc(t)


@pytest.fixture
def shared_warehouse(postgres_server: PostgresServer) -> Iterator[PostgresWarehouseForTests]:
    name = f"warehouse_{uuid.uuid4().hex[:12]}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    # The server's URL form carries SQLAlchemy's `+psycopg2` (as DAGSTER_PG_URL does): the
    # warehouse accepts it as well as plain postgresql://.
    yield PostgresWarehouseForTests(postgres_server.url(name), postgres_server, name)
    postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ---------------------------------------------------------------------------------------------
# Processes

# A writer: the real fleet job for one site's window, in a process of its own, with markers
# around the warehouse's merge steps (postgres_io) and the IO manager's store. WH_HOLD keeps the
# transaction open that long after the samples are merged (so that writers surely overlap if
# nothing serialises them); WH_PAUSE pauses around each step (where the crash test kills).
WRITER = r"""
import os, sys, time
from vitals_pipeline.storage import postgres_io

PAUSE = float(os.environ.get("WH_PAUSE") or 0)
HOLD = float(os.environ.get("WH_HOLD") or 0)

def announce(name, step):
    def wrapper(*args, **kwargs):
        print("begin", name, flush=True)
        time.sleep(PAUSE)
        out = step(*args, **kwargs)
        print("end", name, flush=True)
        time.sleep(PAUSE)
        return out
    return wrapper

for name in ("_stage", "_upsert"):
    setattr(postgres_io, name, announce(name, getattr(postgres_io, name)))
real_merge_part = postgres_io.merge_part

def merge_part(cur, part):
    out = real_merge_part(cur, part)
    if HOLD and part.table == "timeseries":
        time.sleep(HOLD)  # inside the site's transaction
    return out

postgres_io.merge_part = merge_part

from vitals_pipeline.storage.io_manager import VitalsDuckDBIOManager
real_store = VitalsDuckDBIOManager.store

def store(self, conn, **kwargs):
    print("write-start", time.time(), flush=True)
    out = real_store(self, conn, **kwargs)
    print("write-end", time.time(), flush=True)
    return out

VitalsDuckDBIOManager.store = store

import dagster as dg
from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline_tests.helpers import QUIET, build_job

first, last = sys.argv[1], sys.argv[2]
job = build_job()
print("ready", flush=True)
go = os.environ.get("WH_GO_FILE")
while go and not os.path.exists(go):
    time.sleep(0.02)
result = job.execute_in_process(
    instance=dg.DagsterInstance.ephemeral(), asset_selection=[timeseries_key(os.environ["ACE_SITES"])],
    tags=range_tags(first, last), run_config=QUIET, raise_on_error=False,
)
for event in result.all_events:
    if event.is_step_failure:
        print("step-failure", event.event_specific_data.error.message.strip()[:500], flush=True)
print("run-end", result.success, flush=True)
"""

# A reader as an analyst's notebook keeps one: a connection held open for the whole test,
# querying every quarter second (autocommit: each query sees what is committed when it starts),
# and a second connection left idle inside a transaction that has read every table.
READER = r"""
import json, os, sys, time
import psycopg2

dsn = "postgresql://" + os.environ["VITALS_WAREHOUSE_URL"].split("://", 1)[1]
schemas = sys.argv[1].split(",")
stop = sys.argv[2]
con = psycopg2.connect(dsn, application_name="analyst")
con.autocommit = True
idle = psycopg2.connect(dsn, application_name="analyst-idle")
with idle.cursor() as cur:
    for schema in schemas:
        cur.execute(f'SELECT count(*) FROM "{schema}".timeseries')
        cur.fetchall()
count = " UNION ALL ".join(f"SELECT '{s}', count(*) FROM \"{s}\".timeseries" for s in schemas)
print("ready", flush=True)
while not os.path.exists(stop):
    began = time.time()
    with con.cursor() as cur:
        cur.execute(count)
        counts = dict(cur.fetchall())
    print("count", began, time.time() - began, json.dumps(counts), flush=True)
    time.sleep(0.25)
with con.cursor() as cur:  # the same connection, after the writers: their rows are there
    began = time.time()
    cur.execute(count)
    print("count", began, time.time() - began, json.dumps(dict(cur.fetchall())), flush=True)
print("idle-transaction-status", idle.info.transaction_status, flush=True)
idle.rollback()
print("reader-end", flush=True)
"""


def start_python(code: str, *args: str, env: Mapping[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """Lines of `proc` up to and including the one that starts with `marker`."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(marker):
            return lines
    raise AssertionError(f"child never printed {marker!r}: {lines} {proc.stderr.read()[-3000:]}")


def environment(**overrides: str) -> dict[str, str]:
    return {**os.environ, **overrides}
