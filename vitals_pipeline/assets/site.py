"""The assets of one ACE site: its 5-minute timeseries partitions and its configured points.

Thin Dagster wrappers: fetching is `ace.client`, parsing `ace.parse`, window rules `samples`,
storing the IO manager. The asset key prefix is the site's schema name (lower-case, [a-z0-9_]),
which Dagster requires of key components and which equals the site name for plain names.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa

from vitals_pipeline.ace.client import FetchStats, PERMANENT_ERRORS
from vitals_pipeline.assets.keys import (  # noqa: F401 - the keys are also imported from here
    BACKFILL_TAG,
    five_minute_partitions,
    points_key,
    range_tags,
    timeseries_key,
    window_keys,
)
from vitals_pipeline.ace.parse import combine_samples, points_table, to_sample_batch
from vitals_pipeline.checks import specs as quality_checks
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.config import Settings
from vitals_pipeline.lazy import defer_pandas_in_pyarrow
from vitals_pipeline.memory import release_freed_memory, use_system_allocator
from vitals_pipeline.resources import AceResource
from vitals_pipeline.samples import CleanResult, clean_window, merge_clean_results
from vitals_pipeline.storage.duckdb_io import WindowBundle
from vitals_pipeline.storage.schema import schema_name
from vitals_pipeline.windows import Window

# PERMANENT_ERRORS (ace/client.py) fail the step at once, without the retry policy. No connection
# at all (AceUnreachableError) is a wrong ACE_API_URL or no network: the next scheduled run and
# the catch-up sensor re-fetch the window, step retries would only add minutes. PageSizeError: a
# page size ACE refuses, from run config.

# Transient API trouble that outlived the client's own retries gets two more tries a minute apart.
STEP_RETRY = dg.RetryPolicy(
    max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_site_assets(
    site: str, settings: Settings, quality: QualityThresholds | None = None
) -> list[dg.AssetsDefinition]:
    """`<site>/timeseries` (with its data-quality checks) and `<site>/points` for one ACE site."""
    slug = schema_name(site)
    partitions = five_minute_partitions(settings)
    quality = quality or QualityThresholds.from_env()
    check_specs = (
        quality_checks.timeseries_check_specs(dg.AssetKey([slug, "timeseries"]))
        if quality.enabled
        else None
    )

    @dg.asset(
        key=[slug, "timeseries"],
        group_name=slug,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        retry_policy=STEP_RETRY,
        pool="duckdb",
        kinds={"duckdb"},
        metadata={
            "site": site,
            "schema": slug,
            "partition_expr": "ts",
            "merge_keys": ["point", "ts"],
        },
        tags={"site": slug},
        check_specs=check_specs,
    )
    def timeseries(context: dg.AssetExecutionContext, ace: AceResource):
        """Raw readings of every point of the site, one row per (point, ts), for the run's window.

        One partition or a whole range in one run (single_run backfills): the window is the
        run's whole time window. Zero readings are readings; NaN/null/text keep their wire string
        in raw_value. Stored samples that a re-fetch lacks are kept.

        With the data-quality layer on (VITALS_CHECKS), `<site>.quality` gets one row per point
        and partition in the same transaction, and the checks run on the stored window.
        """
        tw = context.partition_time_window
        window = Window(tw.start.astimezone(UTC), tw.end.astimezone(UTC))
        use_system_allocator()
        defer_pandas_in_pyarrow()
        stats = FetchStats()

        def clean_piece(batches: list, lo: datetime, hi: datetime) -> tuple[CleanResult, int]:
            # A sub-window's pages, combined and cleaned by the thread that fetched them while
            # the next pages download (~0.3 s less of a day's run than cleaning the whole window
            # after the last page).
            fetched = combine_samples(batches)
            del batches[:]
            future = (
                quality_checks.count_future(fetched, quality_checks.utc_now(), quality)
                if quality.enabled
                else 0
            )
            return clean_window(fetched, Window(lo, hi), run_window=window), future

        try:
            with ace.client() as client:
                # Each page is typed as it arrives, so its wire strings are freed at once.
                pieces = client.fetch_pieces(
                    site, window.start, window.end, to_sample_batch, clean_piece, stats
                )
        except PERMANENT_ERRORS as exc:
            raise dg.Failure(
                description=f"site {site!r}, window {window}: {exc}", allow_retries=False
            ) from None
        future_rows = sum(future for _, future in pieces)
        result = merge_clean_results([piece for piece, _ in pieces])
        del pieces
        release_freed_memory()  # the sub-windows' tables: the store and the quality grid come next

        def add_partition_metadata(run_quality: quality_checks.RunQuality | None) -> None:
            # completeness_pct, points_reporting, null_pct... of each stored partition, plotted.
            for key, figures in result.partitions.items():
                extra = run_quality.partition_figures.get(key, {}) if run_quality else {}
                context.add_asset_metadata({**figures.as_metadata(), **extra}, partition_key=key)

        # Figures of the run as a whole (shared by the partitions it covered).
        context.add_asset_metadata(
            {
                "run_partitions": window.partitions,
                "run_samples": result.samples.num_rows,
                "run_pages": stats.pages,
                "run_requests": stats.requests,
                "run_retries": stats.retries,
                "run_api_seconds": round(stats.api_seconds, 3),
                "run_bytes": stats.bytes,
                "run_page_size": stats.page_size,
            }
        )
        context.log.info(
            f"site {site}: {result.samples.num_rows} samples for {window} in {stats.pages} pages "
            f"({stats.retries} retries, {stats.api_seconds:.1f}s API, "
            f"{result.duplicates_dropped} duplicates and {result.out_of_window_dropped} "
            "out-of-window rows dropped)"
        )
        if not quality.enabled:
            add_partition_metadata(None)
            yield dg.Output(result.samples)
            return
        # The stored history is read now, before the IO manager opens the file; the quality grid
        # is then computed in a thread while the IO manager inserts the samples (DuckDB works
        # without the GIL), and its rows join the same transaction when it asks for them.
        # Measured on a day of a 4,500-point site: assess 1.3 s + store 2.4 s -> 2.7 s, peak RSS
        # ~100 MB higher. `vitals backfill` judges first and stores after: its one process runs
        # day after day and holds more between runs (week peak 919 MiB this way, 956-1075 MiB
        # overlapped, against a 1 GB target).
        inputs = quality_checks.read_quality_inputs(
            settings.duckdb_path, slug, result.samples, window, quality
        )
        args = (site, slug, result.samples, window, quality, inputs)
        if context.run.tags.get(BACKFILL_TAG) == "true":
            run_quality = quality_checks.assess(*args)
            add_partition_metadata(run_quality)
            yield dg.Output(WindowBundle(rows=result.samples, companions=run_quality.companions()))
        else:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quality") as pool:
                assessing = pool.submit(quality_checks.assess, *args)

                def quality_rows() -> dict:
                    run_quality = assessing.result()
                    add_partition_metadata(run_quality)  # before Dagster records the partitions
                    return run_quality.companions()

                yield dg.Output(WindowBundle(rows=result.samples, companions=quality_rows))
                run_quality = assessing.result()
        # The checks verify what was stored.
        yield from run_quality.check_results(
            settings.duckdb_path,
            result.samples,
            quality_checks.SourceFigures(
                duplicates_dropped=result.duplicates_dropped,
                out_of_window_dropped=result.out_of_window_dropped,
                future_rows_dropped=future_rows,
            ),
        )

    @dg.asset(
        key=[slug, "points"],
        group_name=slug,
        retry_policy=STEP_RETRY,
        pool="duckdb",
        kinds={"duckdb"},
        metadata={"site": site, "schema": slug, "merge_keys": ["name"]},
        # Units and intervals drive the quality checks: load them once, then refresh hourly.
        automation_condition=dg.AutomationCondition.on_missing()
        | dg.AutomationCondition.on_cron("7 * * * *"),
        tags={"site": slug},
    )
    def points(context: dg.AssetExecutionContext, ace: AceResource) -> pa.Table:
        """The site's configured points: unit (BACnet engineering unit), collect interval,
        hisMode (sampled / cov), device, tags. Points no longer listed are kept."""
        try:
            with ace.client() as client:
                configured = client.configured_points(site)
        except PERMANENT_ERRORS as exc:
            raise dg.Failure(description=f"site {site!r}: {exc}", allow_retries=False) from None
        table = points_table(configured, datetime.now(UTC))
        units = table.column("unit")
        context.add_output_metadata(
            {
                "points": table.num_rows,
                "points_without_unit": units.null_count,
                "points_without_interval": table.column("collect_interval").null_count,
            }
        )
        return table

    return [timeseries, points]
