"""`<site>/timeseries` for every site: one multi_asset, one step per run, however many sites.

The step fetches the selected sites' windows concurrently (assets/fleet.py), then for each site
in turn: judges the window's quality while the IO manager merges its samples (and the quality
rows, in the same transaction) into the site's schema, verifies what was stored, and reports the
checks. A site that fails (ACE refuses it, it overruns its time budget, its store fails) fails its
own partitions; the others are stored. Thin Dagster code: fetching is `ace.client`, parsing
`ace.parse`, window rules `samples`, quality `checks`, storing the IO manager.
"""

import enum
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa

from vitals_pipeline.ace.client import AceError, FetchStats
from vitals_pipeline.ace.parse import combine_samples, points_table, to_sample_batch
from vitals_pipeline.ace.session import AceSession
from vitals_pipeline.assets.fleet import (
    SiteFailures,
    fetch_sites,
    output_name,
    selected_sites,
    spread_slot,
)
from vitals_pipeline.assets.keys import (
    BACKFILL_TAG,
    REFRESH_POINTS_TAG,
    five_minute_partitions,
    points_key,
    timeseries_key,
)
from vitals_pipeline.automation.runs import SITE_TAG
from vitals_pipeline.checks import recording
from vitals_pipeline.checks import specs as quality_checks
from vitals_pipeline.checks.thresholds import QualityThresholds
from vitals_pipeline.config import Settings
from vitals_pipeline.resources import AceResource
from vitals_pipeline.runtime import after_big_fetch, prepare_step_process
from vitals_pipeline.samples import CleanResult, clean_window, merge_clean_results
from vitals_pipeline.storage.duckdb_io import WindowBundle, store_slice, table_exists
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.storage.schema import (
    POINTS_MERGE_KEYS,
    POINTS_TABLE,
    TIMESERIES_MERGE_KEYS,
    TIMESERIES_TIME_COLUMN,
)
from vitals_pipeline.storage.warehouse import Warehouse
from vitals_pipeline.windows import Window

# How often the step says how far it got while storing a big fleet.
PROGRESS_EVERY_SECONDS = 15.0


@dataclass
class SiteSamples:
    """One site's fetched window, cleaned: what the store and the checks need."""

    result: CleanResult
    future_rows: int
    stats: FetchStats
    points: pa.Table | None = None  # fetched first (see PointsNeed)
    points_reason: str = "none"
    points_error: str | None = None  # the hourly refresh failed: the stored points stay
    inputs: quality_checks.QualityInputs | None = None  # what judging the window reads


def site_budget_seconds(settings: Settings, window: Window) -> float:
    """A site's time budget for `window`: VITALS_SITE_BUDGET_SECONDS per started hour of window
    (a tick's 15 minutes get the base budget, a day 24 times it)."""
    hours = -(-window.partitions // 12)
    return settings.site_budget_seconds * max(1, hours)


def fetch_concurrency(settings: Settings, window: Window) -> int:
    """Sites fetched at once for `window`: VITALS_FETCH_CONCURRENCY for windows up to 3 hours,
    fewer for longer ones (catch-up, backfills), so that the windows held at once stay about
    as large as 3 hours x VITALS_FETCH_CONCURRENCY sites (a day of a 4,500-point site is
    6.5M samples)."""
    return max(1, min(settings.fetch_concurrency, settings.fetch_concurrency * 36 // window.partitions))


def shard_op_name(index: int, count: int) -> str:
    """The step of shard `index` (0-based) of `count`: `timeseries` when there is one."""
    return "timeseries" if count == 1 else f"timeseries_shard_{index + 1}"


def build_timeseries_assets(settings: Settings, quality: QualityThresholds) -> list[dg.AssetsDefinition]:
    """One multi_asset per shard of VITALS_SHARD_SIZE sites: the steps of a fleet run. One process
    runs them one after another (in-process executor); an executor that spreads steps over
    machines runs them side by side."""
    shards = settings.site_shards
    return [
        build_timeseries_asset(settings, quality, shard, shard_op_name(i, len(shards)))
        for i, shard in enumerate(shards)
    ]


def build_timeseries_asset(
    settings: Settings, quality: QualityThresholds, sites=None, name: str = "timeseries"
) -> dg.AssetsDefinition:
    """The multi_asset of `sites`' `<site>/timeseries` (and their checks); all sites by default."""
    sites = list(settings.sites if sites is None else sites)
    outs = {
        output_name(site, "timeseries"): dg.AssetOut(
            key=timeseries_key(site),
            group_name=schema_name(site),
            is_required=False,  # a failed site's output is not produced
            kinds={"duckdb"},
            tags={"site": schema_name(site)},
            metadata={
                "site": site,
                "schema": schema_name(site),
                "partition_expr": TIMESERIES_TIME_COLUMN,
                "merge_keys": list(TIMESERIES_MERGE_KEYS),
            },
            description=(
                f"Raw readings of every point of site {site!r}, one row per (point, ts), table "
                f"{schema_name(site)}.timeseries. Zero readings are readings; NaN/null/text keep "
                "their wire string in raw_value. A re-fetch never deletes stored samples."
            ),
        )
        for site in sites
    }
    check_specs = (
        [spec for site in sites for spec in quality_checks.timeseries_check_specs(timeseries_key(site))]
        if quality.enabled
        else None
    )

    @dg.multi_asset(
        name=name,
        outs=outs,
        partitions_def=five_minute_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
        check_specs=check_specs,
        # The checks read each site's points (units, intervals). The hourly tick refreshes them
        # in this step (REFRESH_POINTS_TAG), not in a points step of the same run: Dagster would
        # skip this whole step when one site's points failed.
        deps=[points_key(site) for site in sites],
        internal_asset_deps={output_name(site, "timeseries"): {points_key(site)} for site in sites},
        pool="duckdb",
    )
    def timeseries(
        context: dg.AssetExecutionContext, ace: AceResource, warehouse: Warehouse
    ) -> Iterator:
        """The selected sites' samples for the run's window (one partition, or a whole range in
        one run), fetched concurrently, stored site by site; failed sites fail their own
        partitions and are named in the step's error."""
        yield from sync_timeseries(context, ace, warehouse, settings, quality, sites)

    return timeseries


def sync_timeseries(
    context: dg.AssetExecutionContext,
    ace: AceResource,
    warehouse: Warehouse,
    settings: Settings,
    quality: QualityThresholds,
    shard: list[str],
) -> Iterator:
    tw = context.partition_time_window
    window = Window(tw.start.astimezone(UTC), tw.end.astimezone(UTC))
    sites = selected_sites(context, shard, timeseries_key)
    if len(sites) == 1 and SITE_TAG not in context.run.tags:
        # A run of one site (from the asset page, the CLI) is found by filtering the runs list
        # by this tag, as the old per-site runs were; a fleet run covers many sites.
        context.instance.add_run_tags(context.run.run_id, {SITE_TAG: schema_name(sites[0])})
    prepare_step_process()  # this process runs steps: the process tweaks (runtime.py)
    budget = site_budget_seconds(settings, window)
    concurrency = fetch_concurrency(settings, window)
    failures = SiteFailures(f"timeseries for {window}")
    checks = CheckReporter(context, sites, window, quality, settings) if quality.enabled else None
    judge_first = context.run.tags.get(BACKFILL_TAG) == "true"
    totals = _Totals(started=time.monotonic())

    def fetch(site: str, deadline: float) -> SiteSamples:
        fetched = fetch_site_window(
            ace_session, site, window, quality, deadline,
            points=PointsNeed.MISSING if site in without_points else refresh_points,
        )
        after_big_fetch(fetched.result.samples.num_rows)  # before the store allocates more
        if quality.enabled:
            # Read in this fetch thread, on a cursor of the run's DuckDB session (DuckDB reads a
            # committed snapshot while the step's thread writes other sites).
            with warehouse.connect() as cursor:
                fetched.inputs = quality_checks.read_quality_inputs(
                    cursor, schema_name(site), fetched.result.samples, window, quality,
                    points=fetched.points,
                )
        return fetched

    def describe(site: str, exc: BaseException) -> str:
        if isinstance(exc, AceError | TimeoutError):
            return str(exc)
        return f"site {site!r}, window {window}: {type(exc).__name__}: {exc}"

    with ace.session(max_in_flight=concurrency) as ace_session, warehouse.session() as conn, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="quality") as judging:
        # A site whose points were never loaded gets them in this run, first: the checks need
        # their units and intervals (else every expectation is unknown). The hourly tick
        # refreshes every site's.
        without_points = {
            site for site in sites if quality.enabled and not table_exists(conn, schema_name(site), "points")
        }
        refresh_points = (
            PointsNeed.REFRESH if context.run.tags.get(REFRESH_POINTS_TAG) == "true" else PointsNeed.NONE
        )
        fetched = fetch_sites(
            sites, fetch, concurrency=concurrency, budget_seconds=budget,
            describe_error=describe,
        )
        for outcome in fetched:
            site = outcome.site
            if outcome.error is not None:
                failures.add(site, outcome.error)
                continue
            try:
                yield from _store_site(
                    context, site, outcome.value, window, conn, quality, checks, judging,
                    judge_first, failures,
                )
            except Exception as exc:  # noqa: BLE001 - judging one site failed, not the fleet
                # (An error of the store itself is raised by Dagster around this generator and
                # fails the step: a full disk or a held file fails every site alike.)
                failures.add(site, f"site {site!r}, window {window}: {type(exc).__name__}: {exc}")
                continue
            totals.add(outcome.value)
            totals.report_progress(context, len(sites))
    context.log.info(totals.summary(sites, failures, window))
    failures.raise_if_any(len(sites))


class PointsNeed(enum.Enum):
    """Whether a site's fetch loads its configured points first."""

    NONE = "none"
    MISSING = "missing"  # none stored: the checks cannot judge without them, the site fails
    REFRESH = "refresh"  # the hourly refresh: on failure the stored ones stay, the samples go on


LOADED_BY = {
    PointsNeed.MISSING.value: "timeseries run (no points stored yet)",
    PointsNeed.REFRESH.value: "hourly refresh of the scheduled run",
}


def fetch_site_window(
    session: AceSession, site: str, window: Window, quality: QualityThresholds, deadline: float,
    *, points: PointsNeed = PointsNeed.NONE,
) -> SiteSamples:
    """One site's samples for `window`, cleaned (runs in a fetch thread); its configured points
    first when `points` says so."""
    stats = FetchStats()

    def clean_piece(batches: list, lo: datetime, hi: datetime) -> tuple[CleanResult, int]:
        # A sub-window's pages, combined and cleaned by the thread that fetched them while the
        # next pages download.
        fetched = combine_samples(batches)
        del batches[:]
        future = (
            quality_checks.count_future(fetched, quality_checks.utc_now(), quality)
            if quality.enabled
            else 0
        )
        return clean_window(fetched, Window(lo, hi), run_window=window), future

    with session.client(deadline=deadline) as client:
        loaded, points_error = None, None
        if points is not PointsNeed.NONE:
            try:
                loaded = points_table(client.configured_points(site), datetime.now(UTC))
            except AceError as exc:
                if points is PointsNeed.MISSING:
                    raise
                points_error = str(exc)
        pieces = client.fetch_pieces(
            site, window.start, window.end, to_sample_batch, clean_piece, stats
        )
    result = merge_clean_results([piece for piece, _ in pieces])
    return SiteSamples(
        result=result, future_rows=sum(f for _, f in pieces), stats=stats,
        points=loaded, points_reason=points.value, points_error=points_error,
    )


def _store_site(
    context: dg.AssetExecutionContext,
    site: str,
    fetched: SiteSamples,
    window: Window,
    conn,
    quality: QualityThresholds,
    checks: "CheckReporter | None",
    judging: ThreadPoolExecutor,
    judge_first: bool,
    failures: SiteFailures,
) -> Iterator:
    """Store one site's window (yielding its output) and report its checks."""
    key = timeseries_key(site)
    slug = schema_name(site)
    result = fetched.result
    name = output_name(site, "timeseries")

    def add_partition_metadata(run_quality: quality_checks.RunQuality | None) -> None:
        # Few numbers per partition: a range run writes one materialization per partition, and
        # a fleet 300 sites x 3 partitions every 5 minutes.
        for pkey, figures in result.partitions.items():
            entry = {"samples": figures.samples, "points": figures.points}
            if run_quality is not None:
                completeness = run_quality.partition_figures.get(pkey, {}).get("completeness_pct")
                if completeness is not None:
                    entry["completeness_pct"] = completeness
            context.add_asset_metadata(entry, asset_key=key, partition_key=pkey)

    if fetched.points_error is not None:
        context.log.warning(
            f"site {site!r}: the hourly points refresh failed, its stored points stay: {fetched.points_error}"
        )
    if fetched.points is not None:
        # The points this run loaded first (none stored yet, or the hourly refresh): stored as
        # the points asset stores them, and recorded as a materialization of `<site>/points`.
        # Written here, not by the IO manager, because this step's outputs are the timeseries.
        store_slice(conn, schema=slug, table=POINTS_TABLE, rows=fetched.points,
                    merge_keys=POINTS_MERGE_KEYS)
        context.log_event(dg.AssetMaterialization(
            asset_key=points_key(site),
            metadata={
                "points": fetched.points.num_rows,
                "loaded_by": LOADED_BY[fetched.points_reason],
            },
        ))
    if checks is None:
        add_partition_metadata(None)
        yield dg.Output(result.samples, output_name=name)
        return

    # The window is judged while the IO manager inserts the samples (DuckDB works without the
    # GIL), and the quality rows join the same transaction when the store asks for them.
    # `vitals backfill` judges first and stores after: its one process runs day after day and
    # holds less between runs that way.
    args = (site, slug, result.samples, window, quality, fetched.inputs)
    if judge_first:
        run_quality = quality_checks.assess(*args)
        add_partition_metadata(run_quality)
        yield dg.Output(
            WindowBundle(rows=result.samples, companions=run_quality.companions()), output_name=name
        )
    else:
        assessing = judging.submit(quality_checks.assess, *args)

        def quality_rows() -> dict:
            run_quality = assessing.result()
            add_partition_metadata(run_quality)  # before Dagster records the partitions
            return run_quality.companions()

        yield dg.Output(WindowBundle(rows=result.samples, companions=quality_rows), output_name=name)
        run_quality = assessing.result()
    results = run_quality.check_results(
        conn,
        result.samples,
        quality_checks.SourceFigures(
            duplicates_dropped=result.duplicates_dropped,
            out_of_window_dropped=result.out_of_window_dropped,
            future_rows=fetched.future_rows,
        ),
    )
    yield from checks.report(site, results)
    broken = [r.check_name for r in results if not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
              and r.check_name in quality_checks.BLOCKING_CHECKS]
    if broken:
        failures.add(site, f"site {site!r}, window {window}: the store is not what was fetched "
                           f"({', '.join(broken)} failed); see the check results")


class CheckReporter:
    """Reports each site's check results: all of them when the run selected the checks, else
    (the automation's runs) only those `recording.should_record` keeps."""

    def __init__(self, context, sites: list[str], window: Window, quality: QualityThresholds,
                 settings: Settings) -> None:
        self.context = context
        self.selected = set(context.selected_asset_check_keys)
        self.repeat_every = timedelta(minutes=settings.check_repeat_minutes)
        self.slots = recording.slots_in(self.repeat_every)
        self.tick_slot = recording.tick_slot(window.end, self.slots)
        self.now = datetime.now(UTC)
        self.spread_first = len(sites) > recording.SPREAD_FIRST_ABOVE_SITES
        unselected = [
            dg.AssetCheckKey(timeseries_key(site), name)
            for site in sites
            for name in quality_checks.CHECK_NAMES
            if dg.AssetCheckKey(timeseries_key(site), name) not in self.selected
        ]
        self.previous = self._previous_outcomes(unselected) if unselected else {}

    def _previous_outcomes(self, keys: list[dg.AssetCheckKey]) -> dict:
        records = self.context.instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
        previous = {}
        for check_key, record in records.items():
            event = record.event.dagster_event if record.event else None
            evaluation = event.event_specific_data if event else None
            if evaluation is None or not hasattr(evaluation, "passed"):
                continue
            previous[check_key] = (
                recording.outcome(evaluation.passed, evaluation.severity.value),
                datetime.fromtimestamp(record.create_timestamp, UTC),
            )
        return previous

    def report(self, site: str, results: list[dg.AssetCheckResult]) -> Iterator:
        site_slot = spread_slot(site, self.slots)
        for result in results:
            check_key = dg.AssetCheckKey(result.asset_key, result.check_name)
            if check_key in self.selected:
                yield result
                continue
            current = recording.outcome(result.passed, result.severity.value)
            previous, previous_at = self.previous.get(check_key, (None, None))
            if recording.should_record(
                current=current, previous=previous, previous_at=previous_at, now=self.now,
                repeat_every=self.repeat_every, site_slot=site_slot, tick_slot=self.tick_slot,
                spread_first=self.spread_first,
            ):
                self.context.log_event(
                    dg.AssetCheckEvaluation(
                        asset_key=result.asset_key, check_name=result.check_name,
                        passed=result.passed, severity=result.severity,
                        description=result.description, metadata=result.metadata,
                    )
                )


@dataclass
class _Totals:
    started: float
    sites: int = 0
    samples: int = 0
    pages: int = 0
    requests: int = 0
    retries: int = 0
    last_progress: float = 0.0

    def add(self, fetched: SiteSamples) -> None:
        self.sites += 1
        self.samples += fetched.result.samples.num_rows
        self.pages += fetched.stats.pages
        self.requests += fetched.stats.requests
        self.retries += fetched.stats.retries

    def report_progress(self, context, total: int) -> None:
        now = time.monotonic()
        if total > 1 and now - max(self.last_progress, self.started) >= PROGRESS_EVERY_SECONDS:
            self.last_progress = now
            context.log.info(f"stored {self.sites} of {total} sites ({self.samples} samples) so far")

    def summary(self, sites: list[str], failures: SiteFailures, window: Window) -> str:
        seconds = time.monotonic() - self.started
        where = f"site {sites[0]}" if len(sites) == 1 else f"{len(sites)} sites"
        failed = f", {len(failures.errors)} failed" if failures else ""
        return (
            f"{where}, window {window}: {self.sites} stored{failed}; {self.samples} samples in "
            f"{self.pages} pages ({self.requests} requests, {self.retries} retries) in {seconds:.1f} s"
        )

