"""What the fleet assets share: one step fetches many sites at once and keeps their failures apart.

A fleet asset is one `multi_asset` with an output per site (`<site>/timeseries`, `<site>/points`):
one run, one process and one DuckDB connection for every site of a tick, instead of a run per site.
Its step

1. fetches the selected sites in a pool of threads (`fetch_sites`): at most `concurrency` sites at
   a time, each within its own time budget, finished fetches handed over as they complete;
2. stores them one after another in the step's own thread (the only writer of the DuckDB file), by
   yielding each site's output to the IO manager;
3. fails at the end if any site failed (`SiteFailures.raise_if_any`): Dagster then records the
   failed sites' planned partitions as failed and every other site's as materialized, so the UI,
   the catch-up sensor and the alerts see each site on its own.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import dagster as dg

from vitals_pipeline.storage.names import schema_name

T = TypeVar("T")

# After its budget a site's fetch has this long to notice (its client stops at the deadline); then
# the step stops waiting for it and counts it failed.
BUDGET_GRACE_SECONDS = 5.0
# How many failed sites a step failure's message names (all of them are in its metadata).
NAMED_FAILURES = 10


def output_name(site: str, table: str) -> str:
    """The multi_asset output of one site's asset: `<schema>__<table>` (a valid identifier)."""
    return f"{schema_name(site)}__{table}"


def selected_sites(
    context: dg.AssetExecutionContext, sites: Iterable[str], key_of: Callable[[str], dg.AssetKey]
) -> list[str]:
    """The sites whose asset (or one of its checks) this run selected, in configured order."""
    assets = set(context.selected_asset_keys)
    checked = {key.asset_key for key in context.selected_asset_check_keys}
    return [site for site in sites if key_of(site) in assets or key_of(site) in checked]


def spread_slot(site: str, slots: int) -> int:
    """A stable slot in [0, slots) for `site`, to spread once-an-hour work over the hour's ticks."""
    return zlib.crc32(schema_name(site).encode()) % max(slots, 1)


@dataclass
class Fetched(Generic[T]):
    """One site's fetch: its value, or the error that failed it (a one-line, actionable text)."""

    site: str
    value: T | None = None
    error: str | None = None
    seconds: float = 0.0


def fetch_sites(
    sites: list[str],
    fetch: Callable[[str, float], T],
    *,
    concurrency: int,
    budget_seconds: float,
    describe_error: Callable[[str, BaseException], str],
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Fetched[T]]:
    """`fetch(site, deadline)` for every site in a pool of `concurrency` threads, yielded as each
    finishes.

    `deadline` is a `clock()` value `budget_seconds` after the site's fetch started; `fetch` should
    give up by then (the ACE client does). Should it not, the site is reported failed
    BUDGET_GRACE_SECONDS later and its thread's late result is dropped. An exception from `fetch`
    fails that site only (`describe_error` words it). At most `concurrency` finished fetches wait for
    the consumer at a time, so a slow writer holds back the fetching instead of piling up samples.
    """
    if not sites:
        return
    started: dict[str, float] = {}

    def run(site: str) -> T:
        begin = clock()
        started[site] = begin
        return fetch(site, begin + budget_seconds)

    pending = iter(sites)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="fleet-fetch")
    running: dict[Future, str] = {}

    def submit_next() -> None:
        site = next(pending, None)
        if site is not None:
            running[pool.submit(run, site)] = site

    try:
        for _ in range(max(1, concurrency) * 2):
            submit_next()
        while running:
            overdue_at = [
                started[site] + budget_seconds + BUDGET_GRACE_SECONDS
                for site in running.values()
                if site in started
            ]
            timeout = max(0.0, min(overdue_at) - clock()) if overdue_at else None
            done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
            now = clock()
            if not done:
                late = [
                    future for future, site in running.items()
                    if site in started and now >= started[site] + budget_seconds + BUDGET_GRACE_SECONDS
                ]
                for future in late:
                    site = running.pop(future)
                    future.cancel()
                    yield Fetched(
                        site,
                        error=describe_error(site, TimeoutError(
                            f"no answer within the site's {budget_seconds:.0f} s budget"
                        )),
                        seconds=now - started[site],
                    )
                    submit_next()
                continue
            for future in done:
                site = running.pop(future)
                seconds = now - started.get(site, now)
                try:
                    yield Fetched(site, value=future.result(), seconds=seconds)
                except Exception as exc:  # noqa: BLE001 - one site's failure stays that site's
                    yield Fetched(site, error=describe_error(site, exc), seconds=seconds)
                submit_next()
    finally:
        # Threads still running are past their budget: do not wait for them.
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class SiteFailures:
    """The sites a step could not finish, with why; the step fails with all of them at its end."""

    what: str  # e.g. "timeseries for [2026-03-09-10:00, 2026-03-09-10:15)"
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, site: str, error: str) -> None:
        self.errors[site] = error

    def __bool__(self) -> bool:
        return bool(self.errors)

    def summary(self, total: int) -> str:
        named = list(self.errors.items())[:NAMED_FAILURES]
        lines = [f"{len(self.errors)} of {total} sites failed ({self.what}):"]
        lines += [f"- {site}: {error}" for site, error in named]
        if len(self.errors) > NAMED_FAILURES:
            lines.append(f"- ... and {len(self.errors) - NAMED_FAILURES} more (see the metadata)")
        lines.append(
            "The other sites are stored. The failed sites' partitions show as failed; the "
            "catch-up sensor retries them, or re-run them from the asset page."
        )
        return "\n".join(lines)

    def raise_if_any(self, total: int) -> None:
        if not self.errors:
            return
        raise dg.Failure(
            description=self.summary(total),
            metadata={
                "failed_sites": dg.MetadataValue.json(
                    [{"site": site, "error": error} for site, error in self.errors.items()]
                ),
            },
            # A step retry would fetch every site again; the failed ones are retried by catch-up.
            allow_retries=False,
        )
