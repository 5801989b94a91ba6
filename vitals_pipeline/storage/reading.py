"""Reading the warehouse while the pipeline writes it (`vitals query`, or from Python).

The DuckDB file takes one process at a time, readers included: a notebook that keeps the file
open read-only makes every later write wait out its lock timeout (60 s) and fail. So a reader of
the file must hold it briefly and for a bounded time. `query_duckdb`:

1. waits for the file, retrying a read-only open for at most `wait_seconds` (a run holds it
   while it stores: seconds per tick);
2. runs the query with a bound: after `max_seconds` DuckDB is interrupted;
3. fetches the whole result into Arrow and closes the file at once.

So a writer that arrives meanwhile waits at most `max_seconds` plus the fetch, well inside its
lock timeout: a reader this way never makes a write fail. Keep `max_seconds` below the writers'
lock timeout (DuckDBWarehouse.lock_timeout_seconds, 60 s). For long analyses, query the result
of a short query (save it), or the Parquet archive, which no writer locks.

On the shared warehouse (VITALS_WAREHOUSE_URL) readers never hold up writers: `query_postgres`
is an ordinary connection with a statement timeout (any PostgreSQL client works as well).
"""

from __future__ import annotations

import random
import threading
import time

import duckdb
import pyarrow as pa

DEFAULT_WAIT_SECONDS = 30.0
DEFAULT_MAX_SECONDS = 20.0


class QueryError(RuntimeError):
    """A query could not be answered (file busy too long, interrupted, or SQL error)."""


def query_duckdb(
    path: str,
    sql: str,
    params: list | None = None,
    *,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> pa.Table:
    """`sql` on the DuckDB file at `path`, read-only, holding the file at most ~`max_seconds`."""
    started = time.monotonic()
    delay = 0.02
    while True:
        try:
            conn = duckdb.connect(path, read_only=True)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise QueryError(f"cannot open {path} read-only: {exc}") from exc
            waited = time.monotonic() - started
            if waited >= wait_seconds:
                raise QueryError(
                    f"{path} stayed busy for {waited:.0f} s (a run is writing it, or another "
                    f"process keeps it open); try again, or raise the wait"
                ) from exc
            time.sleep(min(delay * random.uniform(0.5, 1.0), wait_seconds - waited))
            delay = min(delay * 2, 0.5)
    # The bound: DuckDB's interrupt stops the running query from another thread.
    timer = threading.Timer(max_seconds, conn.interrupt)
    timer.start()
    try:
        conn.execute("SET TimeZone = 'UTC'")
        return conn.sql(sql, params=params or None).to_arrow_table()
    except duckdb.InterruptException as exc:
        raise QueryError(
            f"the query ran longer than {max_seconds:g} s and was stopped, so that the file is "
            f"free for the pipeline's writes; narrow it (a time range), or query the Parquet archive"
        ) from exc
    except duckdb.Error as exc:
        raise QueryError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        timer.cancel()
        conn.close()


def query_postgres(url: str, sql: str, params: list | None = None, *,
                   max_seconds: float = DEFAULT_MAX_SECONDS) -> pa.Table:
    """`sql` on the shared warehouse, as Arrow (a plain read: it never holds up a writer)."""
    import psycopg2

    from vitals_pipeline.storage.postgres_warehouse import _open

    conn = _open(url, lock_timeout_seconds=max_seconds)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {int(max_seconds * 1000)}")
            try:
                cur.execute(sql, params or None)
            except psycopg2.Error as exc:
                raise QueryError(f"{type(exc).__name__}: {str(exc).strip()}") from None
            names = [d.name for d in cur.description or []]
            rows = cur.fetchall() if cur.description else []
    finally:
        conn.close()
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
