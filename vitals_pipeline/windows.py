"""Window maths for 5-minute partitions, in UTC. Pure functions, no Dagster.

A *window* is a half-open UTC interval [start, end). One partition is one 5-minute window; a range
run covers several consecutive partitions as one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

PARTITION_MINUTES = 5
PARTITION = timedelta(minutes=PARTITION_MINUTES)
PARTITION_FMT = "%Y-%m-%d-%H:%M"
PARTITION_CRON = "*/5 * * * *"


@dataclass(frozen=True)
class Window:
    start: datetime  # aware UTC, inclusive
    end: datetime  # aware UTC, exclusive

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError(f"empty window: {self.start.isoformat()} .. {self.end.isoformat()}")

    @property
    def partitions(self) -> int:
        return int((self.end - self.start) / PARTITION)

    def partition_keys(self) -> list[str]:
        """The partition keys this window covers (window aligned to 5 minutes)."""
        return [
            partition_key(self.start + i * PARTITION) for i in range(max(self.partitions, 1))
        ]

    def __str__(self) -> str:
        return f"[{partition_key(self.start)}, {partition_key(self.end)})"


def floor_to_partition(t: datetime) -> datetime:
    """The start of the 5-minute partition holding `t` (UTC)."""
    t = t.astimezone(UTC)
    return t.replace(minute=t.minute - t.minute % PARTITION_MINUTES, second=0, microsecond=0)


def partition_key(start: datetime) -> str:
    return start.astimezone(UTC).strftime(PARTITION_FMT)


def partition_start(key: str) -> datetime:
    """Parse a partition key (`%Y-%m-%d-%H:%M`, UTC)."""
    try:
        start = datetime.strptime(key, PARTITION_FMT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(
            f"{key!r} is not a partition key: expected YYYY-MM-DD-HH:MM in UTC, e.g. 2026-01-31-23:55"
        ) from exc
    if start.minute % PARTITION_MINUTES:
        raise ValueError(f"{key!r} is not on a 5-minute boundary")
    return start


def window_for_keys(first_key: str, last_key: str) -> Window:
    """The window from the start of `first_key` to the end of `last_key` (both included)."""
    return Window(partition_start(first_key), partition_start(last_key) + PARTITION)


def closed_window(now: datetime, lookback: timedelta = timedelta(0)) -> Window:
    """The newest closed partition plus `lookback` before it, as one window."""
    end = floor_to_partition(now)
    return Window(end - PARTITION - lookback, end)


def split_window(window: Window, hours: float) -> list[Window]:
    """Consecutive sub-windows of at most `hours` (whole partitions), covering `window` exactly."""
    step = max(1, int(timedelta(hours=hours) / PARTITION)) * PARTITION
    pieces, start = [], window.start
    while start < window.end:
        pieces.append(Window(start, min(start + step, window.end)))
        start += step
    return pieces
