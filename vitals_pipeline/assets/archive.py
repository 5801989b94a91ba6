"""`<site>/archive`: each UTC day's samples as one zstd Parquet file under VITALS_ARCHIVE_URI.

Layout (Hive, so DuckDB, pyarrow, Spark and Athena read `site` and `date` from the path):

    <VITALS_ARCHIVE_URI>/site=<site schema>/date=<YYYY-MM-DD>/part-0.parquet

with the columns of `<site>.timeseries` (point, ts, value, raw_value), ordered by (ts, point).

DuckDB writes the file itself (`COPY (SELECT ...) TO ... (FORMAT parquet, COMPRESSION zstd)`):
the day's rows never enter Python. Re-exporting a day replaces its file: locally through a
temporary file in the same folder and an atomic rename, so a reader sees the old file or the new
one, never half of one; on S3 an object appears only once its upload completes. A re-export that
would hold fewer rows than the file it replaces is refused (stored samples are never deleted, so
fewer rows means the DuckDB file is not the one the archive was made from); run config
`allow_fewer_rows: true` overrides that.
"""

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb

from vitals_pipeline.assets.hourly import rollup_automation
from vitals_pipeline.assets.keys import timeseries_dep, timeseries_key
from vitals_pipeline.config import Settings
from vitals_pipeline.storage import qualified_name, schema_name
from vitals_pipeline.storage.warehouse import DuckDBWarehouse
from vitals_pipeline.storage.duckdb_io import naive_utc

DAY = timedelta(days=1)
DAY_FMT = "%Y-%m-%d"
ARCHIVE_CHECK = "archive_row_count_matches"
ARCHIVE_FILE = "part-0.parquet"


def daily_partitions(settings: Settings) -> dg.TimeWindowPartitionsDefinition:
    """UTC days from VITALS_PARTITIONS_START floored to midnight."""
    start = settings.partitions_start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule="0 0 * * *", start=start.strftime(DAY_FMT), fmt=DAY_FMT, timezone="UTC"
    )


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def archive_path(root: str, schema: str, day: datetime) -> str:
    """Where one site-day goes: `<root>/site=<schema>/date=<YYYY-MM-DD>/part-0.parquet`."""
    return f"{root.rstrip('/')}/site={schema}/date={day:%Y-%m-%d}/{ARCHIVE_FILE}"


def _literal(text: str) -> str:
    """A SQL string literal (COPY takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _timestamp(moment: datetime) -> str:
    return f"TIMESTAMP '{naive_utc(moment).isoformat(sep=' ')}'"


def parquet_rows(conn: duckdb.DuckDBPyConnection, path: str) -> int | None:
    """Rows in the Parquet file at `path` (from its footer), or None when there is no readable one
    (a damaged file is then simply replaced)."""
    if not is_remote(path) and not os.path.exists(path):
        return None
    try:
        return conn.execute(
            "SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata(?)", [path]
        ).fetchall()[0][0]
    except duckdb.Error:
        return None


@dataclass(frozen=True)
class Export:
    path: str
    rows: int  # rows of the day in DuckDB, in the snapshot the file was written from
    file_rows: int  # rows in the file as read back
    bytes: int | None  # None on object storage
    replaced_rows: int | None  # rows of the file it replaced, None if there was none


class ShrinkingArchiveError(RuntimeError):
    """A re-export would replace an archive file with one holding fewer rows."""


def export_day(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    start: datetime,
    end: datetime,
    target: str,
    *,
    allow_fewer_rows: bool = False,
) -> Export:
    """Write `schema`'s samples in [start, end) to the Parquet file `target`, replacing it.

    Raises LookupError when the site has no timeseries table, ShrinkingArchiveError (nothing
    written) when the file would lose rows, unless `allow_fewer_rows`.
    """
    table = qualified_name(conn.execute("SELECT current_database()").fetchall()[0][0], schema, "timeseries")
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = 'timeseries'",
        [schema],
    ).fetchall()[0][0]
    if not exists:
        raise LookupError(f"no table {schema}.timeseries")
    previous = parquet_rows(conn, target)
    remote = is_remote(target)
    written = target
    if not remote:
        folder = os.path.dirname(target) or "."
        os.makedirs(folder, exist_ok=True)
        # Same folder, so the rename is atomic; the leading dot and suffix keep it out of globs.
        written = os.path.join(folder, f".{ARCHIVE_FILE}.{uuid.uuid4().hex}.tmp")
    where = f"ts >= {_timestamp(start)} AND ts < {_timestamp(end)}"
    try:
        # One snapshot for the count and the file, whatever another connection commits meanwhile.
        conn.execute("BEGIN TRANSACTION")
        try:
            rows = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchall()[0][0]
            if previous is not None and rows < previous and not allow_fewer_rows:
                raise ShrinkingArchiveError(
                    f"{target} holds {previous} rows but {schema}.timeseries has only {rows} for "
                    f"that day: refusing to replace it with fewer. Is VITALS_DUCKDB_PATH the file "
                    f"the archive was made from? To replace it anyway, re-run with run config "
                    f"allow_fewer_rows: true"
                )
            conn.execute(
                f"COPY (SELECT point, ts, value, raw_value FROM {table} WHERE {where} "
                f"ORDER BY ts, point) TO {_literal(written)} "
                f"(FORMAT parquet, COMPRESSION zstd)"
            )
        finally:
            # Nothing was written to the database: the transaction only pinned a snapshot.
            conn.execute("ROLLBACK")
        if not remote:
            os.replace(written, target)
    finally:
        if not remote and os.path.exists(written):
            os.remove(written)
    return Export(
        path=target,
        rows=rows,
        file_rows=parquet_rows(conn, target) or 0,
        bytes=None if remote else os.path.getsize(target),
        replaced_rows=previous,
    )


class ArchiveConfig(dg.Config):
    allow_fewer_rows: bool = False


def build_archive_asset(site: str, settings: Settings) -> dg.AssetsDefinition:
    """`<site>/archive` for one ACE site."""
    slug = schema_name(site)
    timeseries = timeseries_key(site)
    key = dg.AssetKey([slug, "archive"])
    root = settings.archive_uri

    @dg.asset(
        key=key,
        group_name=slug,
        partitions_def=daily_partitions(settings),
        deps=[timeseries_dep(site)],
        check_specs=[
            dg.AssetCheckSpec(
                ARCHIVE_CHECK,
                asset=key,
                description="The day's Parquet file, read back, has as many rows as DuckDB has "
                "for that day.",
            )
        ],
        automation_condition=rollup_automation(timeseries),
        # Holds the DuckDB file open while it writes the day.
        pool="duckdb",
        kinds={"duckdb", "parquet"},
        metadata={"site": site, "schema": slug, "archive_uri": root},
        tags={"site": slug},
    )
    def archive(context: dg.AssetExecutionContext, warehouse: DuckDBWarehouse, config: ArchiveConfig) -> dg.MaterializeResult:
        """The UTC day's samples of the site as one zstd Parquet file:
        `<VITALS_ARCHIVE_URI>/site=<site>/date=<YYYY-MM-DD>/part-0.parquet` (Hive layout).

        Re-exporting replaces the file atomically. Materializes automatically once all 288
        5-minute partitions of the day are stored, and again when any is re-fetched.
        """
        tw = context.partition_time_window
        start, end = tw.start.astimezone(UTC), tw.end.astimezone(UTC)
        if end - start != DAY:
            # Each day is its own file and its own check result: one day per run.
            raise dg.Failure(
                description=f"{key.to_user_string()} exports one day per run; got "
                f"[{start:%Y-%m-%d}, {end:%Y-%m-%d}). Launch a backfill (one run per day) instead.",
                allow_retries=False,
            )
        target = archive_path(root, slug, start)
        with warehouse.connect() as conn:
            try:
                export = export_day(
                    conn, slug, start, end, target, allow_fewer_rows=config.allow_fewer_rows
                )
            except LookupError:
                raise dg.Failure(
                    description=f"site {site!r}: no {slug}.timeseries table in {warehouse.database}: "
                    f"materialize {timeseries.to_user_string()} for {start:%Y-%m-%d} first",
                    allow_retries=False,
                ) from None
            except ShrinkingArchiveError as exc:
                raise dg.Failure(description=str(exc), allow_retries=False) from None
        context.log.info(
            f"site {site}: {export.rows} samples of {start:%Y-%m-%d} -> {export.path}"
            + (f" ({export.bytes:,} bytes)" if export.bytes is not None else "")
        )
        metadata = {"rows": export.rows, "path": dg.MetadataValue.path(export.path)}
        if export.replaced_rows is not None:
            metadata["replaced_rows"] = export.replaced_rows
        if export.bytes is not None:
            metadata["bytes"] = export.bytes
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=ARCHIVE_CHECK,
                    passed=export.file_rows == export.rows,
                    severity=dg.AssetCheckSeverity.ERROR,
                    metadata={
                        "duckdb_rows": export.rows,
                        "parquet_rows": export.file_rows,
                        "date": f"{start:%Y-%m-%d}",
                    },
                    description=None
                    if export.file_rows == export.rows
                    else f"{export.path} holds {export.file_rows} rows but DuckDB has "
                    f"{export.rows} for {start:%Y-%m-%d}: re-materialize this partition",
                )
            ],
        )

    return archive


def archive_key(site: str) -> dg.AssetKey:
    return dg.AssetKey([schema_name(site), "archive"])
