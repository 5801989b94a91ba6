"""Names in DuckDB: a site's schema, quoted identifiers. Pure string functions (no pyarrow), used
by config, the asset keys and `vitals status` as well as the storage."""

from __future__ import annotations

import re

_NOT_SCHEMA_CHAR = re.compile(r"[^a-z0-9_]")


def schema_name(site: str) -> str:
    """The DuckDB schema (and asset key prefix) of a site.

    Lower-cased, every character outside [a-z0-9_] replaced by "_": "Demo-Office" -> "demo_office".
    """
    return _NOT_SCHEMA_CHAR.sub("_", site.lower())


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def qualified_name(catalog: str, schema: str, table: str) -> str:
    """`"catalog"."schema"."table"`.

    Always three parts: with two, a database file whose stem equals a schema name
    (demo_office.duckdb holding schema demo_office) makes DuckDB fail with "Ambiguous reference to
    catalog or schema".
    """
    return ".".join(quote_identifier(part) for part in (catalog, schema, table))
