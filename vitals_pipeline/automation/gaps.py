"""Which partitions the schedule and the catch-up sensor ask for. Pure functions, no Dagster.

Nothing here lists the partitions definition's keys: with VITALS_PARTITIONS_START a year back
there are over 100,000 of them. Keys are formatted from the few window starts that matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from vitals_pipeline.windows import PARTITION, Window, closed_window, floor_to_partition, partition_start

# One day of 5-minute partitions: the most one catch-up run fetches (a bounded API window, a
# bounded DuckDB merge, a run that finishes within the run monitor's time limit).
MAX_RUN_PARTITIONS = 288


def scheduled_window(
    tick: datetime, lookback: timedelta, partitions_start: datetime
) -> Window | None:
    """The window a schedule tick at `tick` fetches: the newest closed partition plus `lookback`
    before it, clamped at the first partition. None when no partition has closed yet."""
    window = closed_window(tick, lookback)
    start = max(window.start, partitions_start)
    if start >= window.end:
        return None
    return Window(start, window.end)


def catchup_window(now: datetime, hours: int, partitions_start: datetime) -> Window | None:
    """The partitions the catch-up sensor watches: those of the last `hours` that closed at least
    one partition ago (the newest closed partition is the schedule's; catching up on it would race
    the next tick), clamped at the first partition. None when that is empty."""
    end = floor_to_partition(now) - PARTITION
    start = max(end - timedelta(hours=hours), partitions_start)
    if start >= end:
        return None
    return Window(start, end)


@dataclass(frozen=True)
class Gap:
    """Consecutive partitions that need a run: `keys` in time order."""

    keys: tuple[str, ...]

    @property
    def first(self) -> str:
        return self.keys[0]

    @property
    def last(self) -> str:
        return self.keys[-1]

    def __len__(self) -> int:
        return len(self.keys)


def find_gaps(
    keys: Sequence[str],
    needs_run: Callable[[str], bool],
    max_partitions: int = MAX_RUN_PARTITIONS,
) -> list[Gap]:
    """Contiguous runs of `keys` (consecutive, in time order) for which `needs_run` holds, each
    cut into pieces of at most `max_partitions`, oldest first. The cuts fall on the same
    boundaries for every site (multiples of `max_partitions` partitions since the epoch), so that
    sites missing the same time share the same pieces and their runs."""
    if max_partitions < 1:
        raise ValueError("max_partitions must be at least 1")
    gaps: list[Gap] = []
    current: list[str] = []
    for key in keys:
        if current and _partition_index(key) % max_partitions == 0:
            gaps.append(Gap(tuple(current)))
            current = []
        if needs_run(key):
            current.append(key)
        elif current:
            gaps.append(Gap(tuple(current)))
            current = []
    if current:
        gaps.append(Gap(tuple(current)))
    return gaps


def _partition_index(key: str) -> int:
    """The partition's number since the epoch (UTC): where the aligned cuts of find_gaps fall."""
    return int(partition_start(key).timestamp() // PARTITION.total_seconds())


def run_partitions_for(sites: int, budget: int, floor: int, cap: int = MAX_RUN_PARTITIONS) -> int:
    """How many partitions one catch-up run covers for `sites` sites: `budget` site-partitions a
    run (a run of the whole fleet stays a minute or two, so ticks are not held up), between
    `floor` and `cap`."""
    return max(floor, min(cap, budget // max(sites, 1)))


def schedule_run_key(slug: str, first: str, last: str) -> str:
    """The schedule's run_key: the same window of the same site is one run, whatever ticks it."""
    return f"{slug}:{first}...{last}"


def catchup_run_key(slug: str, gap: Gap, attempt_marker: int) -> str:
    """The catch-up sensor's run_key.

    A sensor's run_keys dedupe forever, so the key carries `attempt_marker`: the newest
    event id of the planned materializations of the gap's partitions (0 if none was ever
    planned). Every run that targets those partitions moves it, so a gap whose run failed gets a
    new key and can be retried, while re-evaluating an unchanged gap yields the same key.
    """
    return f"catchup:{slug}:{gap.first}...{gap.last}:{attempt_marker}"


def newest_first(gaps: Iterable[Gap]) -> list[Gap]:
    """Recent data matters most to whoever looks at the dashboards: newest gaps first."""
    return sorted(gaps, key=lambda gap: gap.last, reverse=True)


def marker_for(gap: Gap, planned_ids: Mapping[str, int]) -> int:
    return max((planned_ids.get(key, 0) for key in gap.keys), default=0)


@dataclass(frozen=True)
class Batch:
    """One catch-up run: the same partitions `first`..`last` of several sites."""

    first: str
    last: str
    sites: tuple[str, ...]


def batch_gaps(gaps_by_site: Mapping[str, Sequence[Gap]]) -> list[Batch]:
    """The sites' gaps as runs, newest first: sites missing the same stretch share a run, so an
    outage that hit every site is filled by a few runs, not one per site and gap."""
    sites_by_stretch: dict[tuple[str, str], list[str]] = {}
    for site, gaps in gaps_by_site.items():
        for gap in gaps:
            sites_by_stretch.setdefault((gap.first, gap.last), []).append(site)
    batches = [Batch(first, last, tuple(sites)) for (first, last), sites in sites_by_stretch.items()]
    # Newest first; of stretches ending together, the bigger batch first.
    return sorted(batches, key=lambda b: (b.last, len(b.sites)), reverse=True)
