"""DuckDB lenses: how the pipeline's DuckDB SQL runs against a warehouse that is not a DuckDB file.

The readers of the store (the quality inputs and the stored-window verification in checks/, the
hourly and daily roll-ups, the archive export) are written in DuckDB SQL against
`<schema>.<table>`. On the DuckDB file they run on the file itself. On the shared warehouse
(PostgreSQL, storage/postgres_warehouse.py) the warehouse's `connect()`/`session()` give an
in-memory DuckDB connection registered here as a *lens*: before a reader queries a table it calls
`need(conn, schema, table, time_column, start, end)`, and the lens copies exactly that slice from
the shared warehouse into a DuckDB table of the same name. The reader's SQL then runs unchanged.

The storage functions of duckdb_io (`store_slice`, `load_slice`, `table_columns`) hand a lens's
calls to the lens: a merge goes to the shared warehouse, natively, in one transaction there.

On a plain DuckDB connection `need` does nothing (one dict lookup): the DuckDB file path is
unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

Window = tuple[datetime, datetime]


class Lens(Protocol):
    """What a shared warehouse does for a DuckDB connection registered as its lens."""

    def load(self, conn: Any, schema: str, table: str, time_column: str | None,
             window: Window | None) -> None:
        """Make `schema.table` on `conn` hold the warehouse's rows of the slice (the whole table
        without a window); drop it there when the warehouse has no such table."""

    def columns(self, schema: str, table: str) -> dict[str, str]:
        """Column -> type of the warehouse's table; empty when it does not exist."""

    def store(self, *, schema: str, table: str, rows: Any, merge_keys: Sequence[str],
              time_column: str | None, window: Window | None,
              companions: Any) -> Mapping[str, Any]:
        """store_slice's merge, in the warehouse, in one transaction."""

    def load_slice(self, *, schema: str, table: str, columns: Sequence[str] | None,
                   time_column: str | None, window: Window | None) -> pa.Table:
        """load_slice's rows, read from the warehouse."""


# id(DuckDB connection) -> its lens. Entries live exactly as long as the connection is open.
_lenses: dict[int, Lens] = {}


def register(conn: Any, lens: Lens) -> None:
    _lenses[id(conn)] = lens


def unregister(conn: Any) -> None:
    _lenses.pop(id(conn), None)


def lens_of(conn: Any) -> Lens | None:
    """The lens `conn` belongs to, or None for a connection to the DuckDB file."""
    return _lenses.get(id(conn)) if _lenses else None


def need(
    conn: Any,
    schema: str,
    table: str,
    time_column: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> None:
    """Declare that the next queries on `conn` read `schema.table` (in [start, end) of
    `time_column` when given). Loads the slice on a lens; nothing on the DuckDB file."""
    lens = lens_of(conn)
    if lens is None:
        return
    window = (start, end) if time_column is not None and start is not None else None
    lens.load(conn, schema, table, time_column if window else None, window)
