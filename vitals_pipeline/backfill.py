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

from vitals_pipeline.memory import release_freed_memory
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
    """Materialize `<site>/timeseries` over `window` in chunks; a failed chunk stops that site."""
    from vitals_pipeline.assets.keys import BACKFILL_TAG, range_tags, timeseries_key, window_keys

    job = defs.resolve_implicit_global_asset_job_def()
    chunks = split_window(window, chunk_hours)
    results: list[ChunkResult] = []
    for site in sites:
        for i, chunk in enumerate(chunks, 1):
            first, last = window_keys(chunk)
            began = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[timeseries_key(site)],
                tags={**range_tags(first, last), BACKFILL_TAG: "true"},
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                raise_on_error=False,
            )
            seconds = time.perf_counter() - began
            samples = _run_samples(result)
            error = None if result.success else _failure_text(result)
            results.append(ChunkResult(site, chunk, result.run_id, result.success, samples, seconds, error))
            run_id = result.run_id
            _free_run_outputs(result)
            del result
            status = f"{samples:,} samples in {seconds:.1f}s" if error is None else f"FAILED: {error}"
            progress(f"[{i}/{len(chunks)}] {site} {chunk}: {status} (run {run_id[:8]})")
            if error is not None:
                break
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
    result._output_capture.clear()  # noqa: SLF001 - no public way to drop captured outputs
    gc.collect()  # the rest of the run's objects sit in reference cycles
    release_freed_memory()


def _run_samples(result: dg.ExecuteInProcessResult) -> int:
    for event in result.get_asset_materialization_events():
        value = event.materialization.metadata.get("run_samples")
        if value is not None:
            return int(value.value)
    return 0


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    messages = [
        e.event_specific_data.error.message.strip()
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
    ]
    return " | ".join(messages) or "see the run in the UI"
