"""The per-point data-quality rules, as pure functions: units, roles, ranges, what is flat.

A point's rules are decided once per run from its configuration (the `<site>.points` table:
BACnet unit, collect interval, hisMode, tags) and then applied to samples in bulk (quality.py).
Nothing here touches Dagster or a database.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson
import pyarrow as pa

from vitals_pipeline.checks.thresholds import QualityThresholds

# Haystack hisStatus values this pipeline publishes per point and partition.
OK, FAULT, DOWN, UNKNOWN = "ok", "fault", "down", "unknown"

# ---------------------------------------------------------------------------------------------
# Units


@dataclass(frozen=True)
class UnitInfo:
    """A unit as a quantity (`family`) and the affine map to the family's canonical unit:
    canonical = value * scale + offset (canonical: degF, %, in.w.c., ppm)."""

    family: str  # temperature | humidity | percent | pressure | co2
    scale: float = 1.0
    offset: float = 0.0

    def from_canonical(self, canonical: float) -> float:
        return (canonical - self.offset) / self.scale


_IN_WC_PER_PA = 1 / 249.08891
_UNITS: dict[str, UnitInfo] = {}
for _names, _info in (
    (("degrees-fahrenheit", "degf", "deg f", "°f", "f", "fahrenheit"), UnitInfo("temperature")),
    (("degrees-celsius", "degc", "deg c", "°c", "c", "celsius"), UnitInfo("temperature", 1.8, 32.0)),
    (("degrees-kelvin", "kelvins", "kelvin", "k"), UnitInfo("temperature", 1.8, -459.67)),
    (("percent-relative-humidity", "%rh", "% rh", "rh", "percent-rh"), UnitInfo("humidity")),
    (("percent", "%", "pct"), UnitInfo("percent")),
    (("inches-of-water", "in.w.c.", "inwc", "in wc", "iwc", "inh2o", "in h2o", "in.h2o"),
     UnitInfo("pressure")),
    (("pascals", "pa"), UnitInfo("pressure", _IN_WC_PER_PA)),
    (("parts-per-million", "ppm"), UnitInfo("co2")),
):
    for _name in _names:
        _UNITS[_name] = _info


def unit_info(unit: str | None) -> UnitInfo | None:
    """The quantity and conversion of a BACnet unit name (or a common abbreviation); None for a
    unit the rules do not know (cfm, kW, no-units...): such points get no range or flat check."""
    if not unit:
        return None
    return _UNITS.get(unit.strip().lower())


# ---------------------------------------------------------------------------------------------
# Roles, from tags and names

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")

_SETPOINT_OR_COMMAND = frozenset(
    {"sp", "stpt", "setpt", "setpoint", "spt", "cmd", "command", "cmnd", "writable", "output"}
)
_COMMAND_OBJECT_TYPES = frozenset({"analogoutput", "binaryoutput", "multistateoutput", "ao", "bo", "mo"})
_TAG_KEYS = ("role", "kind", "type", "equip", "point_role", "description", "desc")

# Temperature roles, first match wins (water before air: "chws" also reads as supply).
_TEMPERATURE_ROLES: tuple[tuple[str, frozenset[str]], ...] = (
    ("outside_air_temp", frozenset({"oat", "oa", "outside", "outdoor", "oadb", "osa"})),
    ("chilled_water_temp", frozenset({"chw", "chws", "chwr", "chwst", "chwrt", "chilled"})),
    ("hot_water_temp", frozenset({"hw", "hws", "hwr", "hwst", "hwrt", "hhw", "hhws", "hhwr", "boiler"})),
    # Condenser water has no range of its own in the conventions: the generic temperature one.
    ("temp", frozenset({"condenser", "cw", "cws", "cwr", "cwst", "cwrt"})),
    ("supply_temp", frozenset({"sat", "sa", "supply", "discharge", "da", "dat", "mat", "ma", "mixed"})),
    ("zone_temp", frozenset({"zn", "znt", "zat", "zone", "space", "spc", "room", "rm", "rat", "ra", "return"})),
)
_DUCT_STATIC = frozenset({"static", "dsp", "duct", "sap"})
_HUMIDITY = frozenset({"rh", "humidity", "hum"})


def tokens(*texts: str | None) -> frozenset[str]:
    """Lower-case word tokens of names and tags: `ZN-T` / `ZoneTemp` / `zone_temp` -> zn, t, zone, temp."""
    out: set[str] = set()
    for text in texts:
        if text:
            out.update(_tokens_of(text))
    return frozenset(out)


@functools.lru_cache(maxsize=65536)
def _tokens_of(text: str) -> frozenset[str]:
    # Tags, roles and name tails repeat across thousands of points: tokenise each text once.
    return frozenset(t for t in _SPLIT.split(_CAMEL.sub(" ", text).lower()) if t)


def point_words(name: str, marker_tags: Iterable[str] | None, kv_tags: Mapping[str, object] | None) -> frozenset[str]:
    """The words that describe a point: the last two segments of its name (the rest is the site,
    the gateway and the device), its marker tags and the role-like kv tags."""
    tail = "/".join(name.split("/")[-2:])
    tag_text = [str(kv_tags[k]) for k in _TAG_KEYS if kv_tags and kv_tags.get(k)]
    return tokens(tail, *(marker_tags or ()), *tag_text)


def is_setpoint_or_command(
    words: frozenset[str], object_type: str | None = None
) -> bool:
    """Setpoints and commands are flat by design: no flatline or staleness judgement for them."""
    if words & _SETPOINT_OR_COMMAND:
        return True
    return bool(object_type) and object_type.replace("-", "").replace("_", "").lower() in _COMMAND_OBJECT_TYPES


def point_role(words: frozenset[str], unit: UnitInfo | None) -> str | None:
    """The role that picks a physical range (a key of QualityThresholds.ranges), or None."""
    if unit is None:
        return None
    if unit.family == "temperature":
        for role, markers in _TEMPERATURE_ROLES:
            if words & markers:
                return role
        return "temp"
    if unit.family == "pressure":
        return "duct_static" if words & _DUCT_STATIC else "pressure"
    if unit.family == "percent" and words & _HUMIDITY:
        return "humidity"
    return unit.family  # humidity, percent, co2


def flat_tolerance(unit: UnitInfo | None, thresholds: QualityThresholds) -> float | None:
    """The range within which an hour of readings counts as flat, in the point's own unit;
    None for quantities that may legitimately sit still (dampers at 0 %, CO2 at night...)."""
    if unit is None:
        return None
    canonical = {
        "temperature": thresholds.flatline_degf,
        "humidity": thresholds.flatline_pct_rh,
        "pressure": thresholds.flatline_in_wc,
    }.get(unit.family)
    return None if canonical is None else canonical / unit.scale


# ---------------------------------------------------------------------------------------------
# Point rules table

POINT_RULES_SCHEMA = pa.schema(
    [
        ("point", pa.string()),
        ("device", pa.string()),
        ("unit", pa.string()),
        ("role", pa.string()),
        # Seconds between samples for sampled points; NULL for cov, disabled or interval-less ones.
        ("interval_s", pa.int64()),
        # The physical range in the point's own unit (NULL: no range check).
        ("range_lo", pa.float64()),
        ("range_hi", pa.float64()),
        # Flat when max - min <= this over the flatline window (NULL: never judged flat).
        ("flat_tolerance", pa.float64()),
        # A sensor (not a setpoint or command): counts for device staleness.
        ("sensor", pa.bool_()),
    ]
)


def sampled_interval(his_mode: str | None, interval: int | None, enabled: bool | None) -> int | None:
    """The interval a point promises, or None when it promises none (cov, disabled, no interval)."""
    if enabled is False or not interval or interval <= 0 or his_mode == "cov":
        return None
    return int(interval)


def point_rules(points: pa.Table | None, thresholds: QualityThresholds) -> pa.Table:
    """One row per configured point (POINT_RULES_SCHEMA) from the `points` table's rows."""
    if points is None or points.num_rows == 0:
        return POINT_RULES_SCHEMA.empty_table()
    cols = {name: points.column(name).to_pylist() for name in points.column_names}
    n = points.num_rows
    get = lambda name: cols.get(name) or [None] * n  # noqa: E731 (older tables may lack a column)
    rows: dict[str, list] = {f.name: [] for f in POINT_RULES_SCHEMA}
    for name, device, unit, interval, mode, enabled, markers, kv, object_type in zip(
        get("name"), get("device"), get("unit"), get("collect_interval"), get("his_mode"),
        get("collect_enabled"), get("marker_tags"), get("kv_tags"), get("object_type"),
        strict=True,
    ):
        kv_tags = _kv(kv)
        words = point_words(name, markers, kv_tags)
        info = unit_info(unit)
        role = point_role(words, info)
        sensor = not is_setpoint_or_command(words, object_type)
        bounds = thresholds.ranges.get(role) if role else None
        lo = hi = None
        if bounds and info:
            lo, hi = sorted((info.from_canonical(bounds[0]), info.from_canonical(bounds[1])))
        rows["point"].append(name)
        rows["device"].append(device)
        rows["unit"].append(unit)
        rows["role"].append(role)
        rows["interval_s"].append(sampled_interval(mode, interval, enabled))
        rows["range_lo"].append(lo)
        rows["range_hi"].append(hi)
        rows["flat_tolerance"].append(flat_tolerance(info, thresholds) if sensor else None)
        rows["sensor"].append(sensor)
    return pa.table(rows, schema=POINT_RULES_SCHEMA)


def _kv(value) -> dict:
    if isinstance(value, dict):
        return value
    if not value:
        return {}
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


# ---------------------------------------------------------------------------------------------
# Verdicts


def completeness_verdict(pct: float | None, thresholds: QualityThresholds) -> str | None:
    """None when complete enough, else "WARN" (< warn %) or "ERROR" (< error %)."""
    if pct is None or pct >= thresholds.completeness_warn_pct:
        return None
    return "ERROR" if pct < thresholds.completeness_error_pct else "WARN"
