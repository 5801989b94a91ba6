"""Storage: the DuckDB file (`DuckDBWarehouse`, warehouse.py), the IO manager (a transactional
merge per run's window, io_manager.py and duckdb_io.py), the table shapes, and Dagster's event log
storage for the shipped dagster.yaml (event_log.py).

Names are imported on first use: every process that opens the Dagster instance imports
`vitals_pipeline.storage.event_log`, and the daemon, the webserver and `vitals status` need none
of the DuckDB machinery.
"""

from __future__ import annotations

from vitals_pipeline.lazy import lazy_names

_SOURCES = {
    "DEFAULT_LOCK_TIMEOUT_SECONDS": "duckdb_io",
    "CompanionTable": "duckdb_io",
    "DuckDBFileLockedError": "duckdb_io",
    "StoreCounts": "duckdb_io",
    "DuckDBWarehouse": "warehouse",
    "VitalsDuckDBIOManager": "io_manager",
    "Window": "duckdb_io",
    "WindowBundle": "duckdb_io",
    "as_arrow": "duckdb_io",
    "connect_duckdb": "duckdb_io",
    "load_slice": "duckdb_io",
    "store_slice": "duckdb_io",
    "POINTS_MERGE_KEYS": "schema",
    "POINTS_TABLE": "schema",
    "TIMESERIES_MERGE_KEYS": "schema",
    "TIMESERIES_SCHEMA": "schema",
    "TIMESERIES_TABLE": "schema",
    "TIMESERIES_TIME_COLUMN": "schema",
    "duckdb_type": "schema",
    "qualified_name": "schema",
    "quote_identifier": "schema",
    "schema_name": "schema",
}

__all__ = sorted(_SOURCES)
__getattr__ = lazy_names(__name__, _SOURCES)
