"""The IO manager: asset outputs merged into DuckDB over the run's window, inputs read back.

A plain `dg.ConfigurableIOManager` around `store_slice` / `load_slice` (duckdb_io.py), holding the
project's one `Warehouse` (the DuckDB file, or the shared PostgreSQL warehouse, whose connections
are DuckDB lenses that send the merge to PostgreSQL: storage/lens.py). Where a frame lands comes from the asset:

- schema: definition metadata `schema` (the site's schema), else the asset key's first part;
- table: the asset key's last part;
- merge keys: definition metadata `merge_keys` (e.g. ["point", "ts"]);
- window: for a time-partitioned asset, the run's whole partition time window (one partition or a
  single-run range), over the column named by metadata `partition_expr`.

It adds no metadata of its own: a range run turns one output into a materialization per
partition, and whatever the IO manager attached would be copied onto every one of them. The
assets report the figures that matter per partition themselves.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import duckdb
import pyarrow as pa

from vitals_pipeline.storage.duckdb_io import (
    Companions,
    StoreCounts,
    Window,
    WindowBundle,
    load_slice,
    naive_utc,
    store_slice,
)
from vitals_pipeline.storage.warehouse import Warehouse


def _metadata_value(metadata: Mapping[str, Any] | None, name: str) -> Any:
    value = (metadata or {}).get(name)
    return getattr(value, "value", value)  # a MetadataValue wrapper, if Dagster made one


def _schema(key: dg.AssetKey, metadata: Mapping[str, Any] | None) -> str:
    schema = _metadata_value(metadata, "schema")
    if schema:
        return str(schema)
    return key.path[0] if len(key.path) > 1 else "main"


def _window(context: dg.OutputContext | dg.InputContext) -> Window | None:
    if not context.has_asset_partitions:
        return None
    try:
        time_window = context.asset_partitions_time_window
    except Exception as exc:  # any partitioning without a time window
        raise NotImplementedError(
            f"{context.asset_key.to_user_string()}: only time-window partitions are supported by "
            f"the vitals DuckDB IO manager ({exc})"
        ) from exc
    return naive_utc(time_window.start), naive_utc(time_window.end)


class VitalsDuckDBIOManager(dg.ConfigurableIOManager):
    """Stores asset outputs in DuckDB by merging each run's window in one transaction.

    Outputs: pyarrow.Table, WindowBundle (companion tables in the same transaction) or
    pandas.DataFrame. Stored rows a new frame lacks are kept; rows whose key is new are inserted,
    changed ones updated. Inputs load as pyarrow.Table (pandas.DataFrame when annotated so).
    """

    warehouse: Warehouse

    def store(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        schema: str,
        table: str,
        rows: Any,
        companions: Companions,
        merge_keys: Sequence[str],
        time_column: str | None,
        window: Window | None,
    ) -> dict[str, StoreCounts]:
        """The merge itself (a seam: a test replaces it with a store that misbehaves)."""
        return store_slice(
            conn, schema=schema, table=table, rows=rows, merge_keys=merge_keys,
            time_column=time_column, window=window, companions=companions,
        )

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        key = context.asset_key
        metadata = context.definition_metadata
        merge_keys = _metadata_value(metadata, "merge_keys")
        if not merge_keys or isinstance(merge_keys, str):
            raise ValueError(
                f"asset {key.to_user_string()} has no 'merge_keys' metadata (a list of key "
                "columns, e.g. ['point', 'ts']); the vitals DuckDB IO manager merges on it"
            )
        if obj is None:
            raise ValueError(
                f"asset {key.to_user_string()} returned None; return a pyarrow.Table (possibly "
                "empty) or annotate the asset '-> None' if it stores nothing"
            )
        window = _window(context)
        rows, companions = (obj.rows, obj.companions) if isinstance(obj, WindowBundle) else (obj, {})
        with self.warehouse.connect() as conn:
            self.store(
                conn,
                schema=_schema(key, metadata),
                table=key.path[-1],
                rows=rows,
                companions=companions,
                merge_keys=list(merge_keys),
                time_column=_metadata_value(metadata, "partition_expr") if window else None,
                window=window,
            )

    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        key = context.asset_key
        metadata = upstream.definition_metadata if upstream is not None else {}
        window = _window(context)
        columns = _metadata_value(context.definition_metadata, "columns")
        with self.warehouse.connect() as conn:
            table: pa.Table = load_slice(
                conn,
                schema=_schema(key, metadata),
                table=key.path[-1],
                columns=columns,
                time_column=_metadata_value(metadata, "partition_expr") if window else None,
                window=window,
            )
        typing_type = context.dagster_type.typing_type
        if "pandas" in sys.modules and typing_type is sys.modules["pandas"].DataFrame:
            return table.to_pandas()
        return table
