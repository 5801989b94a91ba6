"""vitals-pipeline: ACE IoT building timeseries into DuckDB every five minutes, with Dagster."""

__version__ = "0.1.0"
