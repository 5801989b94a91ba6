"""The shape of the stored tables: schema names, the timeseries frame, Arrow -> DuckDB types.

Pure functions; nothing here opens a connection.
"""

from __future__ import annotations

import pyarrow as pa

from vitals_pipeline.storage.names import (  # noqa: F401 - imported from here too
    qualified_name,
    quote_identifier,
    schema_name,
)

# The frame the timeseries asset returns and the table it lands in (one per site schema).
TIMESERIES_TABLE = "timeseries"
TIMESERIES_SCHEMA = pa.schema(
    [
        ("point", pa.string()),
        ("ts", pa.timestamp("us")),  # naive UTC, microseconds kept
        ("value", pa.float64()),
        ("raw_value", pa.string()),
    ]
)
TIMESERIES_MERGE_KEYS: tuple[str, ...] = ("point", "ts")
TIMESERIES_TIME_COLUMN = "ts"

POINTS_TABLE = "points"
POINTS_MERGE_KEYS: tuple[str, ...] = ("name",)

_SIMPLE_TYPES: dict[pa.DataType, str] = {
    pa.null(): "VARCHAR",  # an all-null column (e.g. from pandas `object`): text is the safe guess
    pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.uint8(): "UTINYINT",
    pa.uint16(): "USMALLINT",
    pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
    pa.float16(): "FLOAT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.string_view(): "VARCHAR",
    pa.binary(): "BLOB",
    pa.large_binary(): "BLOB",
    pa.date32(): "DATE",
    pa.date64(): "DATE",
}

_TIMESTAMP_TYPES = {
    "s": "TIMESTAMP_S",
    "ms": "TIMESTAMP_MS",
    "us": "TIMESTAMP",
    "ns": "TIMESTAMP_NS",
}


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB column type of an Arrow type (dictionary<string> -> VARCHAR, list<x> -> X[]...).

    Raises TypeError for a type with no sensible DuckDB column type.
    """
    if arrow_type in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[arrow_type]
    if pa.types.is_dictionary(arrow_type):
        # Dictionary encoding is an in-memory detail of the frame; DuckDB compresses on its own.
        return duckdb_type(arrow_type.value_type)
    if pa.types.is_timestamp(arrow_type):
        if arrow_type.tz is not None:
            return "TIMESTAMPTZ"
        return _TIMESTAMP_TYPES[arrow_type.unit]
    if pa.types.is_time(arrow_type):
        return "TIME"
    if pa.types.is_duration(arrow_type):
        return "INTERVAL"
    if pa.types.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision}, {arrow_type.scale})"
    if pa.types.is_fixed_size_binary(arrow_type):
        return "BLOB"
    if (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_list_view(arrow_type)
        or pa.types.is_large_list_view(arrow_type)
    ):
        return f"{duckdb_type(arrow_type.value_type)}[]"
    if pa.types.is_fixed_size_list(arrow_type):
        return f"{duckdb_type(arrow_type.value_type)}[{arrow_type.list_size}]"
    if pa.types.is_struct(arrow_type):
        members = ", ".join(
            f"{quote_identifier(field.name)} {duckdb_type(field.type)}" for field in arrow_type
        )
        return f"STRUCT({members})"
    if pa.types.is_map(arrow_type):
        return f"MAP({duckdb_type(arrow_type.key_type)}, {duckdb_type(arrow_type.item_type)})"
    raise TypeError(f"no DuckDB column type for Arrow type {arrow_type}")


def column_definitions(schema: pa.Schema) -> str:
    """`"a" VARCHAR, "b" TIMESTAMP, ...` for CREATE TABLE, typed from the Arrow schema."""
    definitions = []
    for field in schema:
        try:
            definitions.append(f"{quote_identifier(field.name)} {duckdb_type(field.type)}")
        except TypeError as exc:
            raise TypeError(f"column {field.name!r}: {exc}") from exc
    return ", ".join(definitions)
