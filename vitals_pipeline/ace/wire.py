"""The ACE API's wire format: allowed page sizes, times, and cursor arithmetic.

Pure functions shared by the client (which reads the format) and the simulator (which writes it).
Nothing here does I/O.
"""

from __future__ import annotations

import base64
import bisect
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

# `page_size` of /sites/{site}/timeseries/paginated: a closed set, anything else is a 400.
PAGE_SIZE_CHOICES: tuple[int, ...] = (
    3, 10, 50, 100, 500, 1000, 5000, 10000, 50000, 100000, 300000, 500000,
)
# Pages of 100,000 rows and more were seen cut off mid-stream: never ask for more than this.
MAX_SAFE_PAGE_SIZE = 50000
DEFAULT_PAGE_SIZE = 50000
# `per_page` of the page-number lists (/sites/, /configured_points): a different closed set.
PER_PAGE_CHOICES: tuple[int, ...] = (2, 10, 20, 30, 40, 50, 100, 500, 1000, 5000, 10000, 100000)


class PageSizeError(ValueError):
    """A page size that ACE would refuse with a 400."""


def check_page_size(page_size: int) -> int:
    """Return `page_size` if ACE accepts it for the timeseries endpoint, else raise PageSizeError."""
    if page_size not in PAGE_SIZE_CHOICES:
        allowed = ", ".join(str(c) for c in PAGE_SIZE_CHOICES if c <= MAX_SAFE_PAGE_SIZE)
        raise PageSizeError(
            f"page size {page_size} is not one ACE accepts; use one of {allowed} "
            f"(set ACE_PAGE_SIZE; {DEFAULT_PAGE_SIZE} is the default)"
        )
    if page_size > MAX_SAFE_PAGE_SIZE:
        raise PageSizeError(
            f"page size {page_size} is allowed by ACE but its pages get cut off mid-stream; "
            f"use {MAX_SAFE_PAGE_SIZE} or less (set ACE_PAGE_SIZE)"
        )
    return page_size


def smaller_page_size(page_size: int) -> int | None:
    """The next smaller allowed page size, or None at the smallest."""
    i = bisect.bisect_left(PAGE_SIZE_CHOICES, page_size)
    return PAGE_SIZE_CHOICES[i - 1] if i > 0 else None


def check_per_page(per_page: int) -> int:
    if per_page not in PER_PAGE_CHOICES:
        raise PageSizeError(
            f"per_page {per_page} is not one ACE accepts; use one of "
            + ", ".join(str(c) for c in PER_PAGE_CHOICES)
        )
    return per_page


# ---------------------------------------------------------------------------------------------
# Times: ISO 8601 without a zone designator, meaning UTC, microseconds on raw readings.


def to_utc(dt: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already (as on the wire)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def format_wire_time(dt: datetime) -> str:
    """Format as ACE does: naive UTC ISO 8601, microseconds when there are any."""
    return to_utc(dt).replace(tzinfo=None).isoformat()


def parse_wire_time(text: str) -> datetime:
    """Parse an ACE time into an aware UTC datetime (the wire's naive times mean UTC)."""
    return to_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))


# ---------------------------------------------------------------------------------------------
# Cursors: padded base64 of JSON {"offset": N, "timestamp": "<naive ISO>"}. The next page starts
# at rows whose time equals `timestamp`, skipping `offset` of them.


@dataclass(frozen=True)
class Cursor:
    timestamp: datetime  # aware UTC
    offset: int

    def encode(self) -> str:
        body = orjson.dumps({"offset": self.offset, "timestamp": format_wire_time(self.timestamp)})
        return base64.b64encode(body).decode("ascii")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            body = orjson.loads(base64.b64decode(token, validate=False))
            return cls(parse_wire_time(body["timestamp"]), int(body["offset"]))
        except Exception as exc:  # any malformed token is the same problem
            raise ValueError(f"not an ACE cursor: {token[:60]!r}") from exc


def next_cursor(incoming: Cursor | None, last_time: datetime, rows_at_last_time: int) -> Cursor:
    """The cursor for the page after one whose last row is at `last_time`.

    ACE's own cursor forgets the incoming offset when a page starts and ends inside one timestamp
    (it sends back the cursor it got, and a naive loop repeats that page forever). Computed here:
    rows already consumed at `last_time` = those skipped before this page (when this page started
    at the same timestamp) + those this page took. Equals ACE's cursor whenever the page crossed
    into a new timestamp.
    """
    carried = incoming.offset if incoming is not None and incoming.timestamp == last_time else 0
    return Cursor(last_time, carried + rows_at_last_time)


def server_cursor(incoming: Cursor | None, last_time: datetime, rows_at_last_time: int) -> Cursor:
    """The cursor ACE really sends (defect included): the incoming offset is not carried."""
    del incoming
    return Cursor(last_time, rows_at_last_time)
