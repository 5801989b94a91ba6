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

from vitals_pipeline.assets.fleet import SiteFailures, selected_sites
from vitals_pipeline.assets.keys import DAILY_BACKFILL, archive_key, daily_partitions, timeseries_dep, timeseries_key
from vitals_pipeline.config import Settings
from vitals_pipeline.storage import qualified_name, schema_name
from vitals_pipeline.storage.duckdb_io import naive_utc, table_exists
from vitals_pipeline.storage.lens import need
from vitals_pipeline.storage.warehouse import Warehouse

DAY = timedelta(days=1)
ARCHIVE_CHECK = "archive_row_count_matches"
ARCHIVE_FILE = "part-0.parquet"


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
    if not table_exists(conn, schema, "timeseries"):
        raise LookupError(f"no table {schema}.timeseries")
    need(conn, schema, "timeseries", "ts", naive_utc(start), naive_utc(end))
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


def build_archive_asset(settings: Settings) -> dg.AssetsDefinition:
    """`<site>/archive` of every site, one multi_asset: a run exports one day of any subset."""
    sites = list(settings.sites)
    root = settings.archive_uri
    specs = [
        dg.AssetSpec(
            archive_key(site),
            deps=[timeseries_dep(site)],
            group_name=schema_name(site),
            skippable=True,
            kinds={"duckdb", "parquet"},
            metadata={"site": site, "schema": schema_name(site), "archive_uri": root},
            tags={"site": schema_name(site)},
            description=(
                f"Site {site!r}: each UTC day's samples as one zstd Parquet file, "
                f"{root}/site={schema_name(site)}/date=<YYYY-MM-DD>/{ARCHIVE_FILE} (Hive layout). "
                "Re-exporting replaces the file atomically. Exported once the day's 5-minute "
                "partitions are final, and again when a catch-up or backfill re-fetches any of "
                "them (the fleet_rollups sensor)."
            ),
        )
        for site in sites
    ]
    checks = [
        dg.AssetCheckSpec(
            ARCHIVE_CHECK,
            asset=archive_key(site),
            description="The day's Parquet file, read back, has as many rows as DuckDB has for "
            "that day.",
        )
        for site in sites
    ]

    @dg.multi_asset(
        name="archive",
        specs=specs,
        check_specs=checks,
        partitions_def=daily_partitions(settings),
        backfill_policy=DAILY_BACKFILL,  # each day is its own file and check result
        can_subset=True,
        # Holds the DuckDB file open while it writes the day.
        pool="duckdb",
    )
    def archive(context: dg.AssetExecutionContext, warehouse: Warehouse, config: ArchiveConfig):
        """The UTC day's samples of the selected sites, one zstd Parquet file each."""
        tw = context.partition_time_window
        start, end = tw.start.astimezone(UTC), tw.end.astimezone(UTC)
        if end - start != DAY:
            # Each day is its own file and its own check result: one day per run.
            raise dg.Failure(
                description=f"the archive exports one day per run; got "
                f"[{start:%Y-%m-%d}, {end:%Y-%m-%d}). Launch a backfill (one run per day) instead.",
                allow_retries=False,
            )
        chosen = selected_sites(context, sites, archive_key)
        failures = SiteFailures(f"archive of {start:%Y-%m-%d}")
        with warehouse.session() as conn:
            for site in chosen:
                slug = schema_name(site)
                target = archive_path(root, slug, start)
                try:
                    export = export_day(
                        conn, slug, start, end, target, allow_fewer_rows=config.allow_fewer_rows
                    )
                except LookupError:
                    failures.add(site, f"site {site!r}: no {slug}.timeseries table: materialize "
                                       f"{timeseries_key(site).to_user_string()} for {start:%Y-%m-%d} first")
                    continue
                except ShrinkingArchiveError as exc:
                    failures.add(site, str(exc))
                    continue
                yield _export_result(archive_key(site), export, start)
        failures.raise_if_any(len(chosen))

    return archive


def _export_result(key: dg.AssetKey, export: Export, start: datetime) -> dg.MaterializeResult:
    metadata = {"rows": export.rows, "path": dg.MetadataValue.path(export.path)}
    if export.replaced_rows is not None:
        metadata["replaced_rows"] = export.replaced_rows
    if export.bytes is not None:
        metadata["bytes"] = export.bytes
    passed = export.file_rows == export.rows
    return dg.MaterializeResult(
        asset_key=key,
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                asset_key=key,
                check_name=ARCHIVE_CHECK,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"duckdb_rows": export.rows, "parquet_rows": export.file_rows,
                          "date": f"{start:%Y-%m-%d}"},
                description=None if passed else f"{export.path} holds {export.file_rows} rows but "
                f"DuckDB has {export.rows} for {start:%Y-%m-%d}: re-materialize this partition",
            )
        ],
    )


