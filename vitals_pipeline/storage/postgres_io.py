"""The merge and the reads of the shared warehouse, in PostgreSQL (psycopg2).

The same contract as duckdb_io.store_slice, natively in PostgreSQL, per stored slice in ONE
transaction (the asset's table and its companion tables, e.g. the quality rows):

  create schema/table if missing (types from the Arrow schema, PRIMARY KEY on the merge keys,
  the time column first) -> add new columns -> bulk load the frame into a temporary table (COPY)
  -> INSERT ... ON CONFLICT (keys) DO UPDATE only where a value differs.

Stored rows the frame lacks are kept (nothing is ever deleted); frames with duplicate keys, null
keys or rows outside the window are refused before anything is written (duckdb_io.check_frame).

Unlike the DuckDB file, the tables carry a primary key: several writers store at once here, and
the key is what keeps two writers of the same site's window (a tick and a catch-up run) from
inserting one sample twice. Writers of different sites touch different tables and never wait for
each other; writers of one site wait only for the rows they both write. The key, led by the time
column, is also the index every window read uses.

Times are `timestamp` (without time zone) meaning UTC, microseconds kept; each connection's
session time zone is UTC. Values travel as CSV written and read by Arrow (shortest round-trip
floats: exact), lists and other nested values as Python objects.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from vitals_pipeline.storage.duckdb_io import (
    Companions,
    StoreCounts,
    Window,
    as_arrow,
    check_frame,
    naive_utc,
)
from vitals_pipeline.storage.names import quote_identifier as _q

# PostgreSQL truncates longer identifiers silently (two long site names could then share a schema).
MAX_IDENTIFIER_BYTES = 63
# Rows per COPY chunk: bounds the CSV text held at once (~60 MB for samples).
COPY_CHUNK_ROWS = 500_000

_SCALAR_TYPES: dict[pa.DataType, str] = {
    pa.null(): "text",  # an all-null column: text is the safe guess (as in DuckDB)
    pa.bool_(): "boolean",
    pa.int8(): "smallint",
    pa.int16(): "smallint",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.uint8(): "smallint",
    pa.uint16(): "integer",
    pa.uint32(): "bigint",
    pa.uint64(): "numeric(20)",
    pa.float16(): "real",
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.string(): "text",
    pa.large_string(): "text",
    pa.string_view(): "text",
    pa.binary(): "bytea",
    pa.large_binary(): "bytea",
    pa.date32(): "date",
    pa.date64(): "date",
}
# PostgreSQL's names of the types (format_type) -> Arrow, for reading back.
_ARROW_OF: dict[str, pa.DataType] = {
    "text": pa.string(),
    "character varying": pa.string(),
    "boolean": pa.bool_(),
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "date": pa.date32(),
    "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "bytea": pa.binary(),
    "numeric(20,0)": pa.uint64(),
}


class WarehouseSchemaError(ValueError):
    """A table of the shared warehouse cannot take the frame as it is (names, keys, types)."""


class WarehouseBusyError(RuntimeError):
    """A write gave up waiting for a lock held by another session of the shared warehouse."""


class NoSuchTable(ValueError):
    """The shared warehouse has no such table (yet)."""


def pg_type(arrow_type: pa.DataType) -> str:
    """The PostgreSQL column type of an Arrow type; TypeError for one with no faithful type."""
    if arrow_type in _SCALAR_TYPES:
        return _SCALAR_TYPES[arrow_type]
    if pa.types.is_dictionary(arrow_type):
        return pg_type(arrow_type.value_type)
    if pa.types.is_timestamp(arrow_type):
        # PostgreSQL keeps microseconds: as_arrow() already made every timestamp microseconds.
        return "timestamp with time zone" if arrow_type.tz is not None else "timestamp without time zone"
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision},{arrow_type.scale})"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = arrow_type.value_type
        if pa.types.is_nested(inner):
            raise TypeError(f"no PostgreSQL column type for nested lists ({arrow_type})")
        return f"{pg_type(inner)}[]"
    raise TypeError(f"no PostgreSQL column type for Arrow type {arrow_type}")


def arrow_type(pg: str) -> pa.DataType:
    """The Arrow type a stored PostgreSQL column is read back as."""
    if pg.endswith("[]"):
        return pa.list_(arrow_type(pg[:-2]))
    if pg in _ARROW_OF:
        return _ARROW_OF[pg]
    if pg.startswith("numeric(") or pg.startswith("character varying("):
        return pa.string() if pg.startswith("character") else pa.float64()
    raise TypeError(f"no Arrow type for the PostgreSQL column type {pg!r}")


def _is_scalar(column_type: pa.DataType) -> bool:
    return not pa.types.is_nested(column_type)


def _identifier(name: str, what: str) -> str:
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise WarehouseSchemaError(
            f"{what} {name!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte limit on "
            f"names (it would be cut short silently); use a shorter site name or table name"
        )
    return _q(name)


def _target(schema: str, table: str) -> str:
    return f"{_identifier(schema, 'schema')}.{_identifier(table, 'table')}"


# ---------------------------------------------------------------------------------------------
# The catalog


def table_columns(cur, schema: str, table: str) -> dict[str, str]:
    """Column -> PostgreSQL type (format_type) of `schema.table`, in column order; empty if missing.
    (pg_catalog, not information_schema: that view costs milliseconds with thousands of tables.)"""
    cur.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm') "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, table),
    )
    return {name: kind for name, kind in cur.fetchall()}


def _primary_key(cur, schema: str, table: str) -> list[str]:
    cur.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary",
        (schema, table),
    )
    return [name for (name,) in cur.fetchall()]


def key_order(merge_keys: Sequence[str], time_column: str | None) -> list[str]:
    """The primary key's columns: the time column first (window reads use the key's index)."""
    keys = list(merge_keys)
    if time_column in keys:
        keys.remove(time_column)
        keys.insert(0, time_column)
    return keys


def _lock_schema(cur, schema: str) -> None:
    # Two writers creating the same schema or table at once can collide in PostgreSQL's catalog
    # (a unique violation on pg_namespace or pg_type); DDL of one schema is taken in turn. Released
    # at the end of the transaction; writers of other sites never wait for it.
    cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"vitals-ddl:{schema}",))


def _ensure_table(cur, schema: str, table: str, frame: pa.Table, merge_keys, time_column) -> dict[str, str]:
    """Create the table from the frame's schema if missing; add the frame's new columns. Returns
    the table's columns afterwards."""
    columns = table_columns(cur, schema, table)
    new_fields = [f for f in frame.schema if f.name not in columns]
    if columns and not new_fields:
        return columns
    _lock_schema(cur, schema)
    columns = table_columns(cur, schema, table)  # another writer may have just done it
    target = _target(schema, table)
    if not columns:
        definitions = []
        for column_field in frame.schema:
            try:
                definitions.append(f"{_q(column_field.name)} {pg_type(column_field.type)}")
            except TypeError as exc:
                raise WarehouseSchemaError(f"{schema}.{table}: column {column_field.name!r}: {exc}") from exc
        key = ", ".join(_q(k) for k in key_order(merge_keys, time_column))
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_identifier(schema, 'schema')}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {target} ({', '.join(definitions)}, PRIMARY KEY ({key}))")
        return table_columns(cur, schema, table)
    for new_field in (f for f in frame.schema if f.name not in columns):
        cur.execute(f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {_q(new_field.name)} {pg_type(new_field.type)}")
    return table_columns(cur, schema, table)


# ---------------------------------------------------------------------------------------------
# Bulk load and merge


def _plain(frame: pa.Table) -> pa.Table:
    """Dictionary columns decoded (CSV and PostgreSQL take the values)."""
    for i, column_field in enumerate(frame.schema):
        if pa.types.is_dictionary(column_field.type):
            frame = frame.set_column(
                i, pa.field(column_field.name, column_field.type.value_type),
                pc.cast(frame.column(i), column_field.type.value_type),
            )
    return frame


def copy_rows(cur, target: str, frame: pa.Table) -> None:
    """Bulk-load `frame` into `target` (columns by name): COPY of Arrow-written CSV for scalar
    columns, in chunks; row inserts where a column is nested (small tables: the points)."""
    columns = ", ".join(_q(name) for name in frame.column_names)
    if not all(_is_scalar(f.type) for f in frame.schema):
        from psycopg2.extras import execute_values

        names = frame.column_names
        rows = [tuple(row[name] for name in names) for row in frame.to_pylist()]
        execute_values(cur, f"INSERT INTO {target} ({columns}) VALUES %s", rows, page_size=1000)
        return
    # Arrow quotes every string (an empty string is "" and NULL is nothing: what COPY's CSV means
    # by them), writes floats in their shortest round-trip form and times as ISO text.
    options = pacsv.WriteOptions(include_header=False, batch_size=COPY_CHUNK_ROWS)
    for offset in range(0, frame.num_rows, COPY_CHUNK_ROWS):
        buffer = io.BytesIO()
        pacsv.write_csv(frame.slice(offset, COPY_CHUNK_ROWS), buffer, options)
        buffer.seek(0)
        cur.copy_expert(f"COPY {target} ({columns}) FROM STDIN WITH (FORMAT csv)", buffer)


def _stage(cur, part: _Part, columns: Mapping[str, str]) -> str:
    """A temporary table holding the frame, typed as the stored columns; returns its name."""
    name = _q(f"_vitals_stage_{part.table}")
    definitions = ", ".join(f"{_q(n)} {columns[n]}" for n in part.frame.column_names)
    cur.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
    cur.execute(f"CREATE TEMPORARY TABLE {name} ({definitions}) ON COMMIT DROP")
    copy_rows(cur, f"pg_temp.{name}", part.frame)
    return f"pg_temp.{name}"


def _upsert(cur, part: _Part, stage: str) -> StoreCounts:
    """Insert new keys, update rows whose values differ; counts from what the statement did."""
    target = _target(part.schema, part.table)
    names = part.frame.column_names
    keys = key_order(part.merge_keys, part.time_column)
    values = [n for n in names if n not in keys]
    columns = ", ".join(_q(n) for n in names)
    conflict = ", ".join(_q(k) for k in keys)
    if values:
        assignments = ", ".join(f"{_q(v)} = EXCLUDED.{_q(v)}" for v in values)
        stored = ", ".join(f"t.{_q(v)}" for v in values)
        incoming = ", ".join(f"EXCLUDED.{_q(v)}" for v in values)
        action = (
            f"DO UPDATE SET {assignments} "
            f"WHERE ROW({stored}) IS DISTINCT FROM ROW({incoming})"
        )
    else:
        action = "DO NOTHING"
    # xmax = 0 marks a row this statement inserted (an updated row carries our transaction id);
    # rows left as they were are not returned.
    cur.execute(
        f"WITH merged AS (INSERT INTO {target} AS t ({columns}) SELECT {columns} FROM {stage} "
        f"ON CONFLICT ({conflict}) {action} RETURNING (t.xmax = 0) AS inserted) "
        f"SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged"
    )
    inserted, updated = cur.fetchone()
    cur.execute(f"DROP TABLE {stage}")
    return StoreCounts(inserted=inserted, updated=updated, unchanged=part.frame.num_rows - inserted - updated)


@dataclass(frozen=True)
class _Part:
    """One table's share of a store."""

    schema: str
    table: str
    frame: pa.Table
    merge_keys: tuple[str, ...]
    time_column: str | None

    def check(self, scratch: duckdb.DuckDBPyConnection, window: Window | None) -> None:
        check_frame(
            self.frame, table=f"{self.schema}.{self.table}", merge_keys=self.merge_keys,
            time_column=self.time_column, window=window, conn=scratch,
        )


def merge_part(cur, part: _Part) -> StoreCounts:
    """The merge of one table inside the caller's transaction (frame already checked)."""
    frame = part.frame
    if frame.num_rows == 0:
        # As in DuckDB: create a missing table when every type is known, so readers find it.
        if not table_columns(cur, part.schema, part.table) and not any(pa.types.is_null(f.type) for f in frame.schema):
            _ensure_table(cur, part.schema, part.table, frame, part.merge_keys, part.time_column)
        return StoreCounts()
    columns = _ensure_table(cur, part.schema, part.table, frame, part.merge_keys, part.time_column)
    key = key_order(part.merge_keys, part.time_column)
    stored_key = _primary_key(cur, part.schema, part.table)
    if sorted(stored_key) != sorted(key):
        raise WarehouseSchemaError(
            f"{part.schema}.{part.table} has primary key ({', '.join(stored_key) or 'none'}) but the "
            f"asset merges on ({', '.join(key)}): the table was created by another tool or for "
            f"other merge keys. Rename it away (or give it that primary key) and re-run."
        )
    return _upsert(cur, part, _stage(cur, part, columns))


@contextmanager
def transaction(pg) -> Iterator[Any]:
    """One transaction on `pg` (an autocommit psycopg2 connection): committed at the end of the
    block, rolled back on any error, a KeyboardInterrupt included."""
    with pg.cursor() as cur:
        cur.execute("BEGIN")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            try:
                cur.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection is gone: the server rolls back
                pass
            raise


def store_slice(
    pg,
    *,
    scratch: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    rows: Any,
    merge_keys: Sequence[str],
    time_column: str | None = None,
    window: Window | None = None,
    companions: Companions | None = None,
) -> dict[str, StoreCounts]:
    """duckdb_io.store_slice's contract in PostgreSQL: merge `rows` (and each companion) into
    `schema` in one transaction; table name -> counts. `scratch` is a DuckDB connection for the
    frame checks (duplicate keys)."""
    if window is not None:
        window = (naive_utc(window[0]), naive_utc(window[1]))
    main = _Part(schema, table, _plain(as_arrow(rows)), tuple(merge_keys), time_column)
    main.check(scratch, window)
    counts: dict[str, StoreCounts] = {}
    with transaction(pg) as cur:
        counts[table] = merge_part(cur, main)
        resolved = companions() if callable(companions) else companions or {}
        if table in resolved:
            raise ValueError(f"companion table {table!r} has the name of the asset's own table")
        parts = [
            _Part(schema, name, _plain(as_arrow(c.rows)), tuple(c.merge_keys), c.time_column)
            for name, c in resolved.items()
        ]
        for part in parts:
            part.check(scratch, window if part.time_column is not None else None)
        for part in parts:
            counts[part.table] = merge_part(cur, part)
    return counts


# ---------------------------------------------------------------------------------------------
# Reading


def load_slice(
    pg,
    *,
    schema: str,
    table: str,
    columns: Sequence[str] | None = None,
    time_column: str | None = None,
    window: Window | None = None,
) -> pa.Table:
    """The stored rows of `schema.table` (in the window, when given) as Arrow, in no particular
    order; ValueError when there is no such table."""
    with pg.cursor() as cur:
        stored = table_columns(cur, schema, table)
        if not stored:
            raise NoSuchTable(
                f"no table {schema}.{table} in the shared warehouse: materialize the asset that "
                f"writes it first"
            )
        selected = list(columns) if columns else list(stored)
        missing = [c for c in selected if c not in stored]
        if missing:
            raise ValueError(f"{schema}.{table} has no column {', '.join(map(repr, missing))}")
        schema_out = pa.schema([(c, arrow_type(stored[c])) for c in selected])
        where, params = "TRUE", ()
        if time_column is not None and window is not None:
            where = f"{_q(time_column)} >= %s AND {_q(time_column)} < %s"
            params = (naive_utc(window[0]), naive_utc(window[1]))
        select = cur.mogrify(
            f"SELECT {', '.join(_q(c) for c in selected)} FROM {_target(schema, table)} WHERE {where}",
            params,
        ).decode()
        if all(_is_scalar(f.type) for f in schema_out):
            return _copy_out(cur, select, schema_out)
        cur.execute(select)
        rows = cur.fetchall()
    return pa.table(
        {f.name: pa.array([row[i] for row in rows], f.type) for i, f in enumerate(schema_out)},
        schema=schema_out,
    )


def _copy_out(cur, select: str, schema: pa.Schema) -> pa.Table:
    buffer = io.BytesIO()
    cur.copy_expert(f"COPY ({select}) TO STDOUT WITH (FORMAT csv)", buffer)
    if not buffer.tell():
        return schema.empty_table()
    buffer.seek(0)
    return pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(column_names=schema.names, block_size=1 << 24),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=schema,
            # COPY writes NULL as nothing and an empty string as "": keep them apart.
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            null_values=[""],
            true_values=["t"],
            false_values=["f"],
        ),
    )
