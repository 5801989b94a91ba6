"""Long backfills as a sequence of bounded runs.

One run holds its whole window in memory (a day of a 4,500-point site is ~6.5M samples), so a
week or a month is loaded as consecutive runs of at most a day each, on the persistent instance,
with a progress line per run. Each run is an ordinary single-run range materialization: it shows
in the UI, and a failed chunk can be re-run from there or by running the command again.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from vitals_pipeline.windows import Window, split_window


@dataclass
class ChunkResult:
    site: str
    window: Window
    run_id: str
    success: bool
    samples: int
    seconds: float
    error: str | None = None


def backfill(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sites: list[str],
    window: Window,
    chunk_hours: float = 24,
    progress: Callable[[str], None] = print,
) -> list[ChunkResult]:
    """Materialize `<site>/timeseries` of `sites` over `window`, one run per chunk for all of
    them (fetched concurrently, as the fleet's ticks are). A site that fails a chunk is left out
    of the later chunks (its error is in the result); the other sites go on."""
    from vitals_pipeline.assets.keys import BACKFILL_TAG, range_tags, timeseries_key, window_keys

    job = defs.resolve_implicit_global_asset_job_def()
    chunks = split_window(window, chunk_hours)
    results: list[ChunkResult] = []
    active = list(sites)
    for i, chunk in enumerate(chunks, 1):
        if not active:
            break
        first, last = window_keys(chunk)
        began = time.perf_counter()
        result = job.execute_in_process(
            instance=instance,
            asset_selection=[timeseries_key(site) for site in active],
            tags={**range_tags(first, last), BACKFILL_TAG: "true"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
        seconds = time.perf_counter() - began
        samples = _samples_by_site(result)
        errors = _site_errors(result, active)
        run_id = result.run_id
        _free_run_outputs(result)
        del result
        for site in active:
            error = errors.get(site)
            results.append(
                ChunkResult(site, chunk, run_id, error is None, samples.get(site, 0), seconds, error)
            )
        stored = sum(samples.values())
        failed = [site for site in active if site in errors]
        status = f"{stored:,} samples of {len(active) - len(failed)} sites in {seconds:.1f}s"
        if failed:
            status += "; FAILED: " + "; ".join(f"{site}: {errors[site]}" for site in failed)
        progress(f"[{i}/{len(chunks)}] {chunk}: {status} (run {run_id[:8]})")
        active = [site for site in active if site not in errors]
    return results


def _free_run_outputs(result: dg.ExecuteInProcessResult) -> None:
    """Release what an in-process run keeps after it ended: the run's whole frame.

    `execute_in_process` keeps every step output in the result (for `output_for_node`), and
    Dagster keeps the step's context, which holds that same dict, for the life of the process:
    dagster_shared.record compiles a record's `__new__` on first use and keeps the caller's
    local variables, and the first check evaluation is built inside a step. Measured with
    bench/week.py: without this, the first day's frame (~190 MB) stayed and every later run of a
    week peaked that much higher; before the garbage collector ran, each run added ~300 MB.
    """
    result._output_capture.clear()  # no public way to drop captured outputs
    gc.collect()  # the rest of the run's objects sit in reference cycles


def _samples_by_site(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    """Samples stored per site (schema name): the per-partition `samples` figures added up."""
    totals: dict[str, int] = {}
    for event in result.get_asset_materialization_events():
        key = event.asset_key
        value = event.materialization.metadata.get("samples")
        if key is not None and value is not None and key.path[-1] == "timeseries":
            totals[key.path[0]] = totals.get(key.path[0], 0) + int(value.value)
    return totals


def _site_errors(result: dg.ExecuteInProcessResult, sites: list[str]) -> dict[str, str]:
    """The sites (as given) the run failed, with their errors: from the fleet step's
    `failed_sites`, or the step's error for every site when the step failed as a whole."""
    from vitals_pipeline.storage.names import schema_name

    by_slug = {schema_name(site): site for site in sites}
    errors: dict[str, str] = {}
    for event in result.all_events:
        if not event.is_step_failure or not event.event_specific_data:
            continue
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        listed = user.metadata.get("failed_sites") if user is not None else None
        if listed is not None:
            for entry in listed.value:
                site = by_slug.get(entry["site"], entry["site"])
                errors[site] = entry["error"]
        elif data.error is not None:
            message = data.error.message.strip().splitlines()[0]
            for site in sites:
                errors.setdefault(site, message)
    return errors
