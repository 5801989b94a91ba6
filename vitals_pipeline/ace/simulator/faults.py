"""Faults the simulator can inject: transport faults (the wire misbehaves, ground truth unchanged)
and data faults (the building misbehaves, ground truth changes).

One mutable `Faults` instance lives on each `Simulator`; tests set its fields directly, the demo
and the CLI set them over HTTP (`POST /_sim/faults`). Nothing is on by default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vitals_pipeline.ace.wire import parse_wire_time

# One scripted fault per data request, in order.
SCRIPT_FAULTS: frozenset[str] = frozenset(
    {"429", "429-date", "500", "502", "503", "504", "reset", "timeout", "truncate",
     "invalid_json", "badkey"}
)

# Fields that take either one value for every site or a {site name: value} mapping.
PER_SITE_FIELDS: frozenset[str] = frozenset(
    {"stuck_points", "out_of_range_points", "dead_devices", "dead_after", "text_points",
     "outages", "late_devices", "late_seconds"}
)

PerSiteInt = int | dict[str, int]


@dataclass
class Faults:
    """Everything that can go wrong, all off by default.

    Transport faults (never change `Simulator.ground_truth`):
      script: the next data requests (timeseries and point routes) get these, one each, in order:
        "429" (Retry-After in seconds), "429-date" (Retry-After as an HTTP date), "500", "502",
        "503", "504", "reset" (TCP reset, no response), "timeout" (hang `hang_seconds`, then answer),
        "truncate" (full Content-Length, half the body, close), "invalid_json" (200, HTML body),
        "badkey" (the 500 ACE gives for an invalid key).
      rate_limit_every / server_error_every: every Nth data request gets a 429 / 503.
      truncate_min_page_size: every paginated response with page_size >= this is cut in half.
      slow_seconds: delay before every API response (any route: timeseries, points, site,
        weather, lists). Requests on different connections are delayed concurrently.
      site_status: {site: HTTP status}: every API request for that site (its timeseries, points,
        site object and weather, and its points' timeseries) answers that status the way ACE
        does: 502/503/504 the gateway's HTML page, 500 a JSON message, 403 the all-null site
        object of an unknown site, 429 with Retry-After `retry_after`. "One site always 503s."
      site_slow_seconds: {site: seconds}: extra delay for that site's requests (a slow site),
        on top of slow_seconds.
      late_devices / late_seconds: the first N devices' samples show up on the API only once
        now >= sample time + late_seconds (they are in the ground truth all along).
      empty_responses: every timeseries request gets the empty last page (200, nothing).
      duplicate_across_pages: every page after the first repeats the previous page's last row.
      outside_window_rows: the first page carries that many rows from before start_time, the last
        non-empty page that many from at/after end_time.

    Data faults (change the ground truth; an int for every site or a {site: n} mapping):
      stuck_points: that many temperature sensors report one exactly constant value.
      out_of_range_points: that many zone temperatures read 180 degF (odd ones -40 degF).
      text_points: that many analog sensors send "fault"/"offline" one third of the time.
      dead_devices: the last N devices report nothing at or after `dead_after` (None: never did).
      outages: gateway outages [[start_iso, end_iso], ...]: no samples at all in [start, end).
    `Simulator.fault_points(site)` names the points each data fault picked.
    """

    script: list[str] = field(default_factory=list)
    retry_after: float = 1.0
    hang_seconds: float = 30.0
    slow_seconds: float = 0.0
    site_status: dict[str, int] = field(default_factory=dict)
    site_slow_seconds: dict[str, float] = field(default_factory=dict)
    rate_limit_every: int = 0
    server_error_every: int = 0
    truncate_min_page_size: int = 0
    late_devices: PerSiteInt = 0
    late_seconds: float | dict[str, float] = 0.0
    empty_responses: bool = False
    duplicate_across_pages: bool = False
    outside_window_rows: int = 0
    stuck_points: PerSiteInt = 0
    out_of_range_points: PerSiteInt = 0
    text_points: PerSiteInt = 0
    dead_devices: PerSiteInt = 0
    dead_after: str | datetime | None | dict[str, str | None] = None
    outages: list[list[str]] | dict[str, list[list[str]]] = field(default_factory=list)

    def for_site(self, name: str, site: str) -> Any:
        """The value of field `name` for `site` (a per-site mapping falls back to the default)."""
        value = getattr(self, name)
        if isinstance(value, dict) and name in PER_SITE_FIELDS:
            if site in value:
                return value[site]
            default = getattr(Faults(), name)
            return default
        return value

    def data_signature(self, site: str) -> tuple:
        """A hashable summary of the data faults for `site`: cached samples are keyed by it."""
        dead_after = self.for_site("dead_after", site)
        dead_after_us = None if dead_after is None else _to_us(dead_after)
        outages = tuple(
            (_to_us(start), _to_us(end)) for start, end in (self.for_site("outages", site) or [])
        )
        return (
            int(self.for_site("stuck_points", site)),
            int(self.for_site("out_of_range_points", site)),
            int(self.for_site("text_points", site)),
            int(self.for_site("dead_devices", site)),
            dead_after_us,
            outages,
        )

    def update(self, changes: dict[str, Any]) -> None:
        """Set fields from a JSON-like mapping; unknown names or bad values raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}; known: {sorted(names)}")
        for key, value in changes.items():
            if key == "script":
                if isinstance(value, str):
                    value = [value]
                bad = [s for s in value if s not in SCRIPT_FAULTS]
                if bad:
                    raise ValueError(f"unknown scripted fault(s) {bad}; known: {sorted(SCRIPT_FAULTS)}")
                value = list(value)
            elif key == "site_status":
                value = _site_mapping(key, value, int, lambda v: 400 <= v <= 599, "an HTTP status 400-599")
            elif key == "site_slow_seconds":
                value = _site_mapping(key, value, float, lambda v: v >= 0, "seconds >= 0")
            setattr(self, key, value)
        self.data_signature("")  # validates the times now rather than on the next request

    def reset(self) -> None:
        """Every fault back to its default (off)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(Faults(), f.name))

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


def _site_mapping(name: str, value: Any, kind: type, ok: Any, expected: str) -> dict[str, Any]:
    """A {site name: value} mapping checked for `update`, its values converted to `kind`."""
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a {{site: value}} mapping, got {value!r}")
    out = {}
    for site, item in value.items():
        if (isinstance(item, bool) or not isinstance(item, (int, float)) or kind(item) != item
                or not ok(kind(item))):
            raise ValueError(f"{name}[{site!r}] must be {expected}, got {item!r}")
        out[str(site)] = kind(item)
    return out


def _to_us(value: str | datetime) -> int:
    """Microseconds since the epoch of an ISO string or datetime (naive means UTC)."""
    dt = parse_wire_time(value) if isinstance(value, str) else value
    return dt_to_us(dt)


def dt_to_us(dt: datetime) -> int:
    """Microseconds since the epoch (naive means UTC), exact (no float rounding)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
