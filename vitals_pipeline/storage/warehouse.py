"""The warehouse, configured once: the one object every asset and the IO manager open it with.

`Warehouse` is what the assets and the IO manager rely on: `connect()` and `session()` give a
DuckDB connection on which the pipeline's SQL runs. Two kinds exist, chosen in definitions.py:
the DuckDB file (`DuckDBWarehouse`, the default, below) and the shared PostgreSQL warehouse
(`PostgresWarehouse`, storage/postgres_warehouse.py), whose connections are DuckDB *lenses*
(storage/lens.py).

`DuckDBWarehouse(database=...)` is a Dagster resource. Assets that read take it as a resource
(`warehouse: DuckDBWarehouse`); the IO manager holds the same object for its writes. Nothing else
keeps a path to the file.

A fleet run stores hundreds of sites one after another. Opening the file for each of them would
replay its write-ahead log and re-read the catalog every time, so a run holds a *session*: one
connection, opened once, that every `connect()` of this process returns while the session lasts.
DuckDB lets one process hold a file at a time (any other process waits, see connect_duckdb), so a
session is kept only for as long as the run's storing lasts.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from pydantic import Field

from vitals_pipeline.storage.duckdb_io import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    cached_catalog,
    connect_duckdb,
)

# database path -> (the session's connection, the thread that opened it, depth)
_sessions: dict[str, list] = {}
_sessions_lock = threading.Lock()


class Warehouse(dg.ConfigurableResource):
    """Where every asset reads and writes (resource key `warehouse`): the DuckDB file or the shared
    PostgreSQL warehouse. Subclasses give `connect()` and `session()`."""

    def connect(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        raise NotImplementedError

    def session(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data is, for people (no secret)."""
        raise NotImplementedError


class DuckDBWarehouse(Warehouse):
    """The DuckDB file of the pipeline (VITALS_DUCKDB_PATH): where every asset reads and writes."""

    database: str = Field(description="Path of the DuckDB file (VITALS_DUCKDB_PATH).")
    lock_timeout_seconds: float = Field(
        default=DEFAULT_LOCK_TIMEOUT_SECONDS,
        description=(
            "How long to keep retrying when another process holds the DuckDB file, before failing."
        ),
    )

    def describe(self) -> str:
        return f"DuckDB file {self.database}"

    def _open(self) -> duckdb.DuckDBPyConnection:
        return connect_duckdb(self.database, lock_timeout_seconds=self.lock_timeout_seconds)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection: the session's (left open) when this thread holds one, else a
        new one closed on exit. Other threads of a session get their own cursor of it (DuckDB
        serialises writers of one database object and gives readers a snapshot)."""
        with _sessions_lock:
            held = _sessions.get(self.database)
        if held is not None:
            conn, owner, _ = held
            if owner == threading.get_ident():
                yield conn
                return
            cursor = conn.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
            return
        conn = self._open()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def session(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Hold one connection for this process until the block ends (re-entrant)."""
        with _sessions_lock:
            held = _sessions.get(self.database)
            if held is not None:
                held[2] += 1
        if held is not None:
            try:
                yield held[0]
            finally:
                with _sessions_lock:
                    held[2] -= 1
            return
        conn = self._open()
        with _sessions_lock:
            _sessions[self.database] = [conn, threading.get_ident(), 1]
        try:
            # While the session holds the file no other process can change it: its catalog
            # (which tables and columns exist) is read once, not before every store.
            with cached_catalog(conn):
                yield conn
        finally:
            with _sessions_lock:
                _sessions.pop(self.database, None)
            conn.close()
