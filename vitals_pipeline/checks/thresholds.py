"""Every data-quality threshold, in one place, with the defaults docs/data-quality.md explains.

`QualityThresholds.from_env()` reads them once when the definitions load. Each field can be
overridden by an environment variable named `VITALS_QUALITY_<FIELD>` (upper case), e.g.
`VITALS_QUALITY_COMPLETENESS_WARN_PCT=90`; physical ranges by `VITALS_QUALITY_RANGE_<ROLE>=lo..hi`
(e.g. `VITALS_QUALITY_RANGE_ZONE_TEMP=45..95`, in the role's canonical unit: degF, %, in.w.c.,
ppm); sentinels by a comma-separated list. `VITALS_CHECKS=off` builds the timeseries assets
without checks and without the quality table (for benchmarks, or to shed the cost in an emergency).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vitals_pipeline.config import ConfigError

ENV_PREFIX = "VITALS_QUALITY_"
RANGE_PREFIX = ENV_PREFIX + "RANGE_"
CHECKS_SWITCH = "VITALS_CHECKS"

# Physical ranges per role, in the role's canonical unit (temperatures degF, humidity and percent
# %, pressures in.w.c., CO2 ppm). Other units of the same quantity are converted (rules.py).
DEFAULT_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "outside_air_temp": (-60.0, 130.0),
        "zone_temp": (40.0, 100.0),  # zone, space, room and return air
        "supply_temp": (30.0, 150.0),  # supply, discharge and mixed air
        "chilled_water_temp": (30.0, 90.0),
        "hot_water_temp": (40.0, 220.0),
        "temp": (-60.0, 250.0),  # a temperature whose role the name and tags do not tell
        "humidity": (0.0, 100.0),
        "percent": (0.0, 100.0),
        "duct_static": (-1.0, 8.0),
        "pressure": (-10.0, 10.0),  # air pressure whose role is not told
        "co2": (0.0, 5000.0),
    }
)

DEFAULT_SENTINELS: tuple[float, ...] = (-999.0, 99999.0, 32767.0, 65535.0, -273.15)


@dataclass(frozen=True)
class QualityThresholds:
    """The data-quality rules' numbers. Defaults follow building-analytics practice."""

    # The whole layer: checks on <site>/timeseries plus the <site>.quality table.
    enabled: bool = True
    # A sample stamped later than now + this is a future sample.
    future_tolerance_minutes: float = 5.0
    # Received / expected samples of sampled points: below warn is a WARN, below error an ERROR
    # (and a point-partition below error is a `fault` in the quality table).
    completeness_warn_pct: float = 95.0
    completeness_error_pct: float = 80.0
    # A sampled point is `down` after this many consecutive missed samples (3 = an outage).
    down_after_missed: int = 3
    # A device is silent when none of its points sent anything for this long (or for
    # down_after_missed of its shortest interval, if longer).
    device_silent_minutes: int = 15
    # A sensor is flat when its range over this trailing window is within the tolerance below.
    flatline_minutes: int = 60
    flatline_degf: float = 0.1
    flatline_pct_rh: float = 0.5
    flatline_in_wc: float = 0.01
    # A device is stale when every sensor of it has been exactly unchanged this long.
    stale_device_minutes: int = 120
    # numeric_values fails on any text or sentinel, and when more than this share of the run's
    # samples are null/NaN/inf (controllers drop the odd reading).
    numeric_max_null_pct: float = 1.0
    # Readings that mean "no reading" on many controllers.
    sentinels: tuple[float, ...] = DEFAULT_SENTINELS
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))
    # How many points a check's metadata lists (the worst ones).
    worst_points: int = 10

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.completeness_error_pct <= self.completeness_warn_pct <= 100:
            problems.append(
                f"completeness thresholds must satisfy 0 <= error ({self.completeness_error_pct}) "
                f"<= warn ({self.completeness_warn_pct}) <= 100"
            )
        for name in ("flatline_minutes", "stale_device_minutes", "device_silent_minutes"):
            minutes = getattr(self, name)
            if minutes <= 0 or minutes % 5:
                problems.append(f"{name}={minutes} must be a positive multiple of 5 (partitions)")
        if self.down_after_missed < 1:
            problems.append(f"down_after_missed={self.down_after_missed} must be at least 1")
        for role, (lo, hi) in self.ranges.items():
            if not lo < hi:
                problems.append(f"range {role}: {lo}..{hi} is empty")
        if problems:
            raise ConfigError("data-quality thresholds: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> QualityThresholds:
        """Defaults overridden by `VITALS_QUALITY_*` and `VITALS_CHECKS` (ConfigError names the
        variable when a value does not parse)."""
        env = os.environ if environ is None else environ
        values: dict = {}
        switch = env.get(CHECKS_SWITCH)
        if switch is not None and switch.strip():
            values["enabled"] = _parse_switch(CHECKS_SWITCH, switch)
        for f in dataclasses.fields(cls):
            if f.name in ("enabled", "ranges"):
                continue
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is None or not raw.strip():
                continue
            if f.name == "sentinels":
                values[f.name] = _parse_sentinels(name, raw)
            elif f.type in ("int", int):
                values[f.name] = _parse_number(name, raw, int)
            else:
                values[f.name] = _parse_number(name, raw, float)
        ranges = dict(DEFAULT_RANGES)
        for name, raw in env.items():
            if name.startswith(RANGE_PREFIX) and raw.strip():
                role = name[len(RANGE_PREFIX):].lower()
                if role not in DEFAULT_RANGES:
                    raise ConfigError(
                        f"{name}: unknown role {role!r}; known roles: "
                        f"{', '.join(r.upper() for r in DEFAULT_RANGES)}"
                    )
                ranges[role] = _parse_range(name, raw)
        values["ranges"] = ranges
        return cls(**values)


def _parse_switch(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected on or off")


def _parse_number(name: str, raw: str, kind: type) -> float | int:
    try:
        return kind(raw.strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {what}") from None


def _parse_sentinels(name: str, raw: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected comma-separated numbers, e.g. -999,65535") from None


def _parse_range(name: str, raw: str) -> tuple[float, float]:
    lo, sep, hi = raw.strip().partition("..")
    try:
        if not sep:
            raise ValueError
        return float(lo), float(hi)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected lo..hi, e.g. 40..100") from None
