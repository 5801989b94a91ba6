"""The shared warehouse: the pipeline's tables in PostgreSQL (VITALS_WAREHOUSE_URL).

Several writer processes (machines, Celery workers running the shard steps of one tick) store
different sites at the same time, and analysts query while they do: PostgreSQL's row versions
let a reader's connection stay open for hours without holding up a writer, and each query sees
what was committed when it started. See docs/warehouse.md for why PostgreSQL, and what it costs.

`PostgresWarehouse` is the same kind of resource as the DuckDB file's (`Warehouse`): `connect()`
and `session()` give a DuckDB connection, here an in-memory *lens* (storage/lens.py). The merge
of a lens goes to PostgreSQL natively (postgres_io.store_slice: COPY into a temporary table, then
INSERT ... ON CONFLICT, one transaction per site's window with its quality rows); a reader's
`need(...)` copies the slice it reads from PostgreSQL into the lens, where the pipeline's DuckDB
SQL runs unchanged.

Connections are pooled per process (opening one costs a few milliseconds of authentication, and
a fleet step asks for one per site); a connection never crosses a fork. The URL holds a password:
it is configured as `dg.EnvVar("VITALS_WAREHOUSE_URL")`, so Dagster shows the variable's name,
never its value, and no message here quotes it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa
from pydantic import Field

from vitals_pipeline.storage import postgres_io
from vitals_pipeline.storage.lens import register, unregister
from vitals_pipeline.storage.names import quote_identifier as _q
from vitals_pipeline.storage.warehouse import Warehouse

URL_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg2://")
DEFAULT_LOCK_TIMEOUT_SECONDS = 60.0
_MAX_IDLE = 16

# url -> idle connections of this process: (pid that opened it, connection)
_idle: dict[str, list[tuple[int, Any]]] = {}
_idle_lock = threading.Lock()
# (url, thread id) -> [the session's lens, depth]
_sessions: dict[tuple[str, int], list] = {}


class WarehouseUrlError(ValueError):
    """VITALS_WAREHOUSE_URL is not a PostgreSQL URL (the message never quotes it: it holds a password)."""


def psycopg2_dsn(url: str) -> str:
    """The URL as psycopg2 takes it (SQLAlchemy's `postgresql+psycopg2://` accepted too)."""
    url = url.strip()
    if not url.startswith(URL_SCHEMES):
        scheme = url.split("://", 1)[0] if "://" in url else "(none)"
        raise WarehouseUrlError(
            f"VITALS_WAREHOUSE_URL must be a PostgreSQL URL, postgresql://USER:PASSWORD@HOST:5432/"
            f"DATABASE; its scheme is {scheme!r}"
        )
    return "postgresql://" + url.split("://", 1)[1]


def describe_url(url: str) -> str:
    """`user@host:port/database`: where the warehouse is, without the password."""
    from psycopg2.extensions import parse_dsn

    try:
        parts = parse_dsn(psycopg2_dsn(url))
    except Exception:  # noqa: BLE001 - never echo a malformed URL
        return "PostgreSQL (unparsable VITALS_WAREHOUSE_URL)"
    host = parts.get("host", "localhost")
    return f"PostgreSQL {parts.get('user', '')}@{host}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _open(url: str, lock_timeout_seconds: float):
    import psycopg2

    options = (
        # UTC and ISO dates whatever the server's defaults; shortest exact float text (COPY);
        # a lock wait (a reader's open transaction against a column change, another writer of
        # the same site) fails after the timeout instead of hanging the step.
        f"-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=1 "
        f"-c lock_timeout={int(lock_timeout_seconds * 1000)}"
    )
    try:
        conn = psycopg2.connect(
            psycopg2_dsn(url), application_name="vitals-pipeline", connect_timeout=10, options=options
        )
    except psycopg2.OperationalError as exc:
        # psycopg2's message names host, port and user, never the password.
        raise ConnectionError(
            f"cannot connect to the shared warehouse ({describe_url(url)}): {str(exc).strip()}. "
            f"Check VITALS_WAREHOUSE_URL and that the server is up and reachable."
        ) from None
    conn.autocommit = True  # transactions are explicit (postgres_io.transaction)
    return conn


def _checkout(url: str, lock_timeout_seconds: float):
    pid = os.getpid()
    with _idle_lock:
        pool = _idle.get(url, [])
        while pool:
            owner, conn = pool.pop()
            if owner == pid and not conn.closed:
                return conn
    return _open(url, lock_timeout_seconds)


def _checkin(url: str, conn) -> None:
    from psycopg2.extensions import TRANSACTION_STATUS_IDLE

    if conn.closed:
        return
    if conn.info.transaction_status != TRANSACTION_STATUS_IDLE:
        conn.close()  # broken or left inside a transaction: never handed out again
        return
    with _idle_lock:
        pool = _idle.setdefault(url, [])
        if len(pool) < _MAX_IDLE:
            pool.append((os.getpid(), conn))
            return
    conn.close()


class PostgresLens:
    """An in-memory DuckDB connection that reads its slices from, and merges into, PostgreSQL."""

    def __init__(self, pg, where: str) -> None:
        self.pg = pg
        self.where = where
        self.duck = duckdb.connect(":memory:")
        self.duck.execute("SET TimeZone = 'UTC'")
        self.loaded: set[tuple[str, str]] = set()
        register(self.duck, self)

    def close(self) -> None:
        unregister(self.duck)
        self.duck.close()

    # Lens protocol ----------------------------------------------------------------------------

    def columns(self, schema: str, table: str) -> dict[str, str]:
        with self.pg.cursor() as cur:
            return postgres_io.table_columns(cur, schema, table)

    def load(self, conn, schema: str, table: str, time_column, window) -> None:
        # A session stores site after site: only the current site's slices are kept in memory.
        for loaded_schema, loaded_table in sorted(self.loaded):
            if loaded_schema != schema:
                conn.execute(f"DROP TABLE IF EXISTS {_q(loaded_schema)}.{_q(loaded_table)}")
                self.loaded.discard((loaded_schema, loaded_table))
        target = f"{_q(schema)}.{_q(table)}"
        try:
            rows = postgres_io.load_slice(
                self.pg, schema=schema, table=table, time_column=time_column, window=window
            )
        except postgres_io.NoSuchTable:
            conn.execute(f"DROP TABLE IF EXISTS {target}")
            self.loaded.discard((schema, table))
            return
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
        view = "_vitals_lens_rows"
        conn.register(view, rows)
        try:
            conn.execute(f"CREATE OR REPLACE TABLE {target} AS SELECT * FROM {view}")
        finally:
            conn.unregister(view)
        self.loaded.add((schema, table))

    def store(self, *, schema, table, rows, merge_keys, time_column, window, companions):
        import psycopg2

        try:
            return postgres_io.store_slice(
                self.pg, scratch=self.duck, schema=schema, table=table, rows=rows,
                merge_keys=merge_keys, time_column=time_column, window=window, companions=companions,
            )
        except psycopg2.errors.LockNotAvailable as exc:
            raise postgres_io.WarehouseBusyError(
                f"{schema}.{table}: gave up waiting for a lock in the shared warehouse "
                f"({self.where}): another session holds it, most likely a reader left inside an "
                f"open transaction while a column is being added, or another writer storing the "
                f"same site's window. Nothing was stored. Find it with `SELECT pid, state, query "
                f"FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'`, end it, and "
                f"re-run. PostgreSQL said: {str(exc).strip()}"
            ) from None

    def load_slice(self, *, schema, table, columns, time_column, window) -> pa.Table:
        return postgres_io.load_slice(
            self.pg, schema=schema, table=table, columns=columns, time_column=time_column,
            window=window,
        )


class PostgresWarehouse(Warehouse):
    """The shared warehouse in PostgreSQL (VITALS_WAREHOUSE_URL): what every asset reads and
    writes when several machines write at once."""

    url: str = Field(
        description=(
            "postgresql://USER:PASSWORD@HOST:5432/DATABASE (VITALS_WAREHOUSE_URL). Configure it as "
            "dg.EnvVar: it holds a password."
        )
    )
    lock_timeout_seconds: float = Field(
        default=DEFAULT_LOCK_TIMEOUT_SECONDS,
        description="How long a write waits for a lock held by another session before failing.",
    )

    def describe(self) -> str:
        return describe_url(self.url)

    @contextmanager
    def _lens(self) -> Iterator[PostgresLens]:
        pg = _checkout(self.url, self.lock_timeout_seconds)
        lens = PostgresLens(pg, self.describe())
        try:
            yield lens
        finally:
            lens.close()
            _checkin(self.url, pg)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A lens: the session's when this thread holds one, else a new one (its PostgreSQL
        connection from the pool) closed on exit."""
        held = _sessions.get((self.url, threading.get_ident()))
        if held is not None:
            yield held[0].duck
            return
        with self._lens() as lens:
            yield lens.duck

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold one lens (and its PostgreSQL connection) for this thread until the block ends
        (re-entrant). Other threads get lenses of their own: PostgreSQL takes them side by side."""
        key = (self.url, threading.get_ident())
        held = _sessions.get(key)
        if held is not None:
            held[1] += 1
            try:
                yield held[0].duck
            finally:
                held[1] -= 1
            return
        with self._lens() as lens:
            _sessions[key] = [lens, 1]
            try:
                yield lens.duck
            finally:
                _sessions.pop(key, None)


def warehouse_from_env(environ=os.environ) -> PostgresWarehouse:
    """The resource for VITALS_WAREHOUSE_URL, as definitions.py configures it (by reference)."""
    psycopg2_dsn(environ["VITALS_WAREHOUSE_URL"])  # a wrong scheme stops the load
    return PostgresWarehouse(url=dg.EnvVar("VITALS_WAREHOUSE_URL"))
