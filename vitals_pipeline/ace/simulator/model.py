"""The simulated buildings: sites, devices, points, their samples, and the pages ACE serves.

Pure and deterministic: every value is a function of (site seed, point, time); there is no global
random state and no I/O (the clock is the only outside input, and it can be pinned).

How the samples are laid out (this is what makes the simulator fast and the cursor defect bite):
- Each device scrapes all its due points at once, once per minute, at `minute start + a fixed
  device offset + a small per-minute jitter` (microseconds; offsets spread over the first ~49 s and
  the jitter smaller than their spacing, so scrape times are unique within a site and the device
  order within a minute never changes). Many rows therefore share one timestamp.
- A point with collect interval I is read at minute m when (m * 60) % I == 0; change-of-value
  points are read when their value changed, plus a sparse heartbeat.
- Rows are ordered by (time, name), so one minute of a site is one "block": every device in
  offset order, each device's points in name order. A block is generated with numpy and rendered
  straight to wire bytes once, then cached; a page is a join of block slices.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson

from vitals_pipeline.ace.simulator.faults import Faults, dt_to_us
from vitals_pipeline.ace.wire import Cursor, format_wire_time, next_cursor, server_cursor

US = 1_000_000
MINUTE_US = 60 * US
BUCKET_US = 5 * MINUTE_US
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Local time of every simulated building (US Eastern standard time, no DST: simple and stable).
UTC_OFFSET_HOURS = -5.0
# How far back `outside_window_rows` and duplicate rows are looked for.
LOOKBACK_US = 60 * MINUTE_US

EMPTY_PAGE = b'{"point_samples":[],"next_cursor":null,"has_more":false}'


@dataclass(frozen=True)
class SiteSpec:
    """One simulated site.

    interval: None gives a realistic mix of 60/300/900 s collect intervals plus a few
    change-of-value points; a number gives every point that interval (no change-of-value points),
    e.g. SiteSpec("big", points=4500, interval=60) is 6.48M samples a day.
    weather: False makes /sites/{site}/weather answer 404.
    """

    name: str
    points: int = 150
    seed: int = 0
    interval: int | None = None
    weather: bool = True


@dataclass
class SimulatorConfig:
    """The simulated ACE deployment.

    end_inclusive: also return rows at exactly end_time (ACE does not document which it does).
    cursor_defect: send ACE's real (defective) next_cursor; False sends a correct one.
    cache_mb: memory for rendered minutes (an LRU); more makes re-reads of a window cheap. 0 keeps
        nothing: every request renders the minutes it reads, as ACE renders every page it is
        asked for (benchmarks compare a client with the download floor on that footing).
    """

    sites: list[SiteSpec]
    api_key: str = "sim-key"
    end_inclusive: bool = False
    cursor_defect: bool = True
    cache_mb: int = 256  # rendered minutes kept; a day of a 4,500-point/60 s site needs ~720 MB


class UnknownSite(KeyError):
    """A site the simulator does not have (ACE answers 403)."""


# ---------------------------------------------------------------------------------------------
# Deterministic hashing (splitmix64), vectorised: the only source of "randomness".

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _key(*parts: Any) -> np.ndarray:
    """A uint64 hash of integers / integer arrays (broadcast), always at least 1-d."""
    h = np.zeros(1, dtype=np.uint64)
    for part in parts:
        arr = np.atleast_1d(np.asarray(part)).astype(np.int64).view(np.uint64)
        h = _mix(h ^ (arr + _G))
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from uint64 hashes."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


_MASK = (1 << 64) - 1


def _mix_int(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _key_int(*parts: int) -> int:
    """`_key` for plain integers, in Python (no array overhead), bit for bit the same."""
    h = 0
    for part in parts:
        h = _mix_int(h ^ (((part & _MASK) + 0x9E3779B97F4A7C15) & _MASK))
    return h


def _u(*parts: int) -> float:
    """A uniform float in [0, 1) from integers."""
    return (_key_int(*parts) >> 11) * (1.0 / (1 << 53))


# ---------------------------------------------------------------------------------------------
# The building's physics, such as it is.

TAU = 2.0 * math.pi


def outside_air_temp_f(seed: int, t_s: float) -> float:
    """The site's outside air temperature (degF) at epoch second `t_s`: season + a smooth
    day-to-day swing + the daily curve."""
    day = t_s / 86400.0
    d0 = math.floor(day)
    frac = day - d0
    a = _u(seed, 7001, d0)
    b = _u(seed, 7001, d0 + 1)
    smooth = frac * frac * (3.0 - 2.0 * frac)
    swing = (a + (b - a) * smooth) * 14.0 - 7.0
    seasonal = 56.0 + 20.0 * math.sin(TAU * (math.fmod(day, 365.2425) - 110.0) / 365.2425)
    hours = math.fmod(t_s / 3600.0 + UTC_OFFSET_HOURS, 24.0)
    return seasonal + swing + 9.0 * math.sin(TAU * (hours - 9.0) / 24.0)


def _daily_at(t_s: float) -> float:
    """-1..1, peaking at 15:00 local."""
    return math.sin(TAU * (math.fmod(t_s / 3600.0 + UTC_OFFSET_HOURS, 24.0) - 9.0) / 24.0)


# Value shapes: how a point's reading depends on time, occupancy and the weather.
CONST, DAILY, BIN, LEVEL, SENSOR, OAT, MAT, SAT, TOTAL, ZERO, CO2, CHW, COND = range(13)

# Point templates per device kind:
# (object type, label, role, unit, marker tags, kind, shape, base, amp, noise, lo, hi, interval, cov)
# kind: sensor | sp | cmd | status | totalizer. `lo` doubles as the "off" level of SENSOR shapes.
_AHU = [
    ("analogInput", "SA-T", "supply_air_temp", "degrees-fahrenheit", "sensor discharge air temp", "sensor", SAT, 55.0, 0.0, 0.25, -1e9, 1e9, 60, False),
    ("analogInput", "RA-T", "return_air_temp", "degrees-fahrenheit", "sensor return air temp", "sensor", DAILY, 72.0, 1.2, 0.15, -1e9, 1e9, 60, False),
    ("analogInput", "MA-T", "mixed_air_temp", "degrees-fahrenheit", "sensor mixed air temp", "sensor", MAT, 0.0, 0.0, 0.2, -1e9, 1e9, 60, False),
    ("analogInput", "OA-T", "outside_air_temp", "degrees-fahrenheit", "sensor outside air temp", "sensor", OAT, 0.0, 0.0, 0.2, -1e9, 1e9, 60, False),
    ("analogValue", "SA-T-SP", "supply_air_temp_sp", "degrees-fahrenheit", "sp discharge air temp", "sp", CONST, 55.0, 0.0, 0.0, -1e9, 1e9, 900, False),
    ("binaryInput", "SF-S", "fan_status", "no-units", "sensor discharge fan run", "status", BIN, 0.0, 0.0, 0.0, 0.0, 1.0, 60, True),
    ("binaryOutput", "SF-C", "fan_cmd", "no-units", "cmd discharge fan run", "cmd", BIN, 0.0, 0.0, 0.0, 0.0, 1.0, 300, False),
    ("analogOutput", "SF-VFD", "fan_speed", "percent", "cmd discharge fan speed", "cmd", LEVEL, 65.0, 10.0, 2.0, 0.0, 100.0, 60, False),
    ("analogOutput", "OAD-O", "oa_damper", "percent", "cmd outside air damper", "cmd", LEVEL, 30.0, 10.0, 1.0, 0.0, 100.0, 300, False),
    ("analogInput", "DSP", "duct_static", "inches-of-water", "sensor discharge duct pressure", "sensor", SENSOR, 1.5, 0.05, 0.02, 0.0, 8.0, 60, False),
    ("analogValue", "DSP-SP", "duct_static_sp", "inches-of-water", "sp discharge duct pressure", "sp", CONST, 1.5, 0.0, 0.0, -1e9, 1e9, 900, False),
    ("analogInput", "SA-F", "supply_airflow", "cubic-feet-per-minute", "sensor discharge air flow", "sensor", SENSOR, 12000.0, 2000.0, 80.0, 0.0, 1e9, 60, False),
    ("analogInput", "FLT-DP", "filter_dp", "inches-of-water", "sensor filter pressure", "sensor", SENSOR, 0.55, 0.03, 0.01, 0.02, 8.0, 300, False),
    ("analogInput", "RA-H", "return_air_rh", "percent-relative-humidity", "sensor return air humidity", "sensor", DAILY, 45.0, -6.0, 0.5, 0.0, 100.0, 300, False),
    ("analogInput", "RA-CO2", "return_air_co2", "parts-per-million", "sensor return air co2", "sensor", CO2, 420.0, 380.0, 8.0, 0.0, 1e9, 300, False),
    ("analogOutput", "CHW-V", "chw_valve", "percent", "cmd cool valve", "cmd", LEVEL, 40.0, 25.0, 2.0, 0.0, 100.0, 300, False),
    ("analogOutput", "HW-V", "hw_valve", "percent", "cmd heat valve", "cmd", LEVEL, 8.0, -10.0, 1.0, 0.0, 100.0, 300, False),
    ("binaryValue", "OCC", "occupied_mode", "no-units", "sp occupied", "sp", BIN, 0.0, 0.0, 0.0, 0.0, 1.0, 900, False),
    ("analogOutput", "RAD-O", "ra_damper", "percent", "cmd return air damper", "cmd", LEVEL, 70.0, -10.0, 1.0, 0.0, 100.0, 300, False),
    ("binaryInput", "EF-S", "exhaust_fan_status", "no-units", "sensor exhaust fan run", "status", BIN, 0.0, 0.0, 0.0, 0.0, 1.0, 300, False),
    ("analogInput", "OA-F", "outside_airflow", "cubic-feet-per-minute", "sensor outside air flow", "sensor", SENSOR, 3000.0, 400.0, 40.0, 0.0, 1e9, 60, False),
    ("binaryValue", "SA-T-ALM", "supply_air_temp_alarm", "no-units", "alarm discharge air temp", "status", ZERO, 0.0, 0.0, 0.0, 0.0, 1.0, 900, False),
]
_VAV = [
    ("analogInput", "ZN-T", "zone_temp", "degrees-fahrenheit", "sensor zone air temp", "sensor", DAILY, 72.0, 1.5, 0.15, -1e9, 1e9, 300, False),
    ("analogValue", "ZN-T-CLG-SP", "zone_cooling_sp", "degrees-fahrenheit", "sp zone air temp cooling", "sp", CONST, 74.0, 0.0, 0.0, -1e9, 1e9, 900, False),
    ("analogValue", "ZN-T-HTG-SP", "zone_heating_sp", "degrees-fahrenheit", "sp zone air temp heating", "sp", CONST, 70.0, 0.0, 0.0, -1e9, 1e9, 900, False),
    ("analogOutput", "DMPR-O", "vav_damper", "percent", "cmd discharge air damper", "cmd", LEVEL, 45.0, 20.0, 3.0, 0.0, 100.0, 300, False),
    ("analogInput", "SA-F", "vav_airflow", "cubic-feet-per-minute", "sensor discharge air flow", "sensor", SENSOR, 450.0, 150.0, 10.0, 0.0, 1e9, 300, False),
    ("analogValue", "SA-F-SP", "vav_airflow_sp", "cubic-feet-per-minute", "sp discharge air flow", "sp", CONST, 500.0, 0.0, 0.0, -1e9, 1e9, 900, False),
    ("analogOutput", "RHT-V", "reheat_valve", "percent", "cmd heat valve", "cmd", LEVEL, 6.0, -12.0, 1.0, 0.0, 100.0, 300, False),
    ("analogInput", "DA-T", "discharge_air_temp", "degrees-fahrenheit", "sensor discharge air temp", "sensor", SAT, 58.0, 0.0, 0.3, -1e9, 1e9, 300, False),
]
_PLANT = [
    ("analogInput", "CHWS-T", "chws_temp", "degrees-fahrenheit", "sensor chilled water leaving temp", "sensor", CHW, 44.0, 0.0, 0.15, -1e9, 1e9, 300, False),
    ("analogInput", "CHWR-T", "chwr_temp", "degrees-fahrenheit", "sensor chilled water entering temp", "sensor", CHW, 54.0, 0.0, 0.2, -1e9, 1e9, 300, False),
    ("analogValue", "CHWS-T-SP", "chws_sp", "degrees-fahrenheit", "sp chilled water leaving temp", "sp", CONST, 44.0, 0.0, 0.0, -1e9, 1e9, 900, False),
    ("analogInput", "CWS-T", "cw_supply_temp", "degrees-fahrenheit", "sensor condenser water leaving temp", "sensor", COND, 85.0, 0.0, 0.2, -1e9, 1e9, 300, False),
    ("analogInput", "CWR-T", "cw_return_temp", "degrees-fahrenheit", "sensor condenser water entering temp", "sensor", COND, 95.0, 0.0, 0.2, -1e9, 1e9, 300, False),
    ("analogInput", "CH-KW", "chiller_power", "kilowatts", "sensor elec power chiller", "sensor", SENSOR, 180.0, 60.0, 3.0, 0.0, 1e9, 60, False),
    ("binaryInput", "CH-S", "chiller_status", "no-units", "sensor chiller run", "status", BIN, 0.0, 0.0, 0.0, 0.0, 1.0, 60, True),
    ("analogInput", "CH-LOAD", "chiller_load", "percent", "sensor chiller load", "sensor", SENSOR, 60.0, 20.0, 1.5, 0.0, 100.0, 300, False),
    ("binaryInput", "CHWP-S", "chw_pump_status", "no-units", "sensor chilled water pump run", "status", BIN, 0.0, 0.0, 0.0, 0.0, 1.0, 300, False),
    ("analogInput", "CHW-FLOW", "chw_flow", "us-gallons-per-minute", "sensor chilled water flow", "sensor", SENSOR, 900.0, 150.0, 10.0, 0.0, 1e9, 300, False),
]
_METER = [
    ("analogInput", "KW", "electric_power", "kilowatts", "sensor elec power", "sensor", SENSOR, 420.0, 120.0, 6.0, 140.0, 1e9, 60, False),
    ("analogInput", "KWH", "electric_energy", "kilowatt-hours", "sensor elec energy totalizer", "totalizer", TOTAL, 2.0e6, 120.0, 0.0, -1e9, 1e9, 60, False),
    ("analogInput", "V", "voltage", "volts", "sensor elec volt", "sensor", DAILY, 480.0, -3.0, 1.2, -1e9, 1e9, 300, False),
]
_NIAGARA = [
    ("analogInput", "Supply Air Temp", "supply_air_temp", "degrees-fahrenheit", "sensor discharge air temp", "sensor", SAT, 55.0, 0.0, 0.25, -1e9, 1e9, 60, False),
    ("analogOutput", "Fan Speed %", "fan_speed", "percent", "cmd discharge fan speed", "cmd", LEVEL, 65.0, 10.0, 2.0, 0.0, 100.0, 60, False),
    ("analogInput", "Zone Temp °F", "zone_temp", "degrees-fahrenheit", "sensor zone air temp", "sensor", DAILY, 72.0, 1.5, 0.15, -1e9, 1e9, 300, False),
]
_TEMPLATES = {"ahu": _AHU, "vav": _VAV, "plant": _PLANT, "meter": _METER, "niagara": _NIAGARA}
_UNIT_ABBREV = {
    "degrees-fahrenheit": "°F", "degrees-celsius": "°C", "percent": "%",
    "percent-relative-humidity": "%RH", "inches-of-water": "inH2O", "pascals": "Pa",
    "cubic-feet-per-minute": "cfm", "kilowatts": "kW", "kilowatt-hours": "kWh",
    "parts-per-million": "ppm", "volts": "V", "us-gallons-per-minute": "gpm", "no-units": "",
}
UNKNOWN_UNIT = "property: unknown-property"
DEVICES_PER_GATEWAY = 64


@dataclass
class Device:
    """One BACnet device: all its points are scraped together, at one timestamp per minute."""

    index: int
    kind: str  # ahu | vav | plant | meter | niagara
    label: str  # AHU-1, VAV-2-7, ...
    gateway: str
    address: str
    instance: int
    metric: bool = False  # reports degC and pascals


@dataclass
class PointDef:
    """One point: its API object fields and how its values are generated."""

    index: int
    name: str
    device: Device
    object_type: str
    object_index: int
    object_name: str
    role: str
    unit: str  # the BACnet unit the values are in (the API may still say unknown-property)
    api_unit: str  # what bacnet_data.object_units says
    kv_unit: str | None
    markers: list[str]
    kind: str
    shape: int
    base: float
    amp: float
    noise: float
    lo: float
    hi: float
    interval: int | None  # None = change-of-value
    float32: bool
    scale: float = 1.0  # unit conversion from the imperial model values
    offset: float = 0.0


def _build_devices(spec: SiteSpec) -> list[tuple[Device, list[tuple]]]:
    n_target = spec.points
    n_ahu = 1 + n_target // 100
    plan: list[tuple[str, str]] = [("meter", "MTR-1"), ("ahu", "AHU-1")]
    if n_target >= 50:
        plan.append(("niagara", "AHU 1"))
    plan += [("plant", "CHLR-1"), ("meter", "MTR-2")]
    plan += [("ahu", f"AHU-{i}") for i in range(2, n_ahu + 1)]
    total = 0
    out: list[tuple[Device, list[tuple]]] = []
    vav_no = 0
    while total < n_target:
        if len(out) < len(plan):
            kind, label = plan[len(out)]
        else:
            vav_no += 1
            kind, label = "vav", f"VAV-{(vav_no - 1) % n_ahu + 1}-{(vav_no - 1) // n_ahu + 1}"
        templates = _TEMPLATES[kind][: n_target - total]
        d = len(out)
        g = d // DEVICES_PER_GATEWAY + 1
        k = d % DEVICES_PER_GATEWAY
        device = Device(
            index=d, kind=kind, label=label, gateway=f"gw{g}",
            address=f"10.0.{g - 1}.{10 + k // 16}", instance=1000 * g + k + 1,
            metric=(label == "AHU-2"),
        )
        out.append((device, templates))
        total += len(templates)
    return out


class SiteModel:
    """One site's devices and points, and the per-row parameter arrays its blocks are made from."""

    def __init__(self, spec: SiteSpec, site_index: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.seed = int(spec.seed)
        self.site_id = site_index + 1
        self.devices: list[Device] = []
        self.points: list[PointDef] = []
        for device, templates in _build_devices(spec):
            self.devices.append(device)
            counters: dict[str, int] = {}
            for tpl in templates:
                self.points.append(self._make_point(device, tpl, counters))
        self._by_name = {p.name: p for p in self.points}
        self._build_rows()
        self._plans: dict[tuple, _FaultPlan] = {}
        self._lock = threading.Lock()

    # -- points --------------------------------------------------------------------------------

    def _make_point(self, device: Device, tpl: tuple, counters: dict[str, int]) -> PointDef:
        (otype, label, role, unit, markers, kind, shape, base, amp, noise, lo, hi, interval,
         cov) = tpl
        counters[otype] = counters.get(otype, 0) + 1
        idx = len(self.points)
        if device.kind == "niagara":
            name = f"{self.name}/Drivers/BacnetNetwork/{device.label}/points/{label}"
        else:
            name = (f"{self.name}/{device.gateway}/{device.address}-{device.instance}"
                    f"/{otype}/{counters[otype]}")
        seed = self.seed
        # Setpoints differ a little from box to box (in half degrees), as they do in buildings.
        if kind == "sp" and shape == CONST and unit == "degrees-fahrenheit" and device.kind == "vav":
            base = base + 0.5 * math.floor(_u(seed, 11, idx) * 5 - 2)
        if self.spec.interval is not None:
            interval, cov = int(self.spec.interval), False
        elif not cov and _u(seed, 12, idx) < 0.1:
            interval = (60, 300, 900)[int(_u(seed, 13, idx) * 3)]
        scale, offset = 1.0, 0.0
        if device.metric and unit == "degrees-fahrenheit":
            unit, scale, offset = "degrees-celsius", 1 / 1.8, -32 / 1.8
        elif device.metric and unit == "inches-of-water":
            unit, scale = "pascals", 249.089
        analog = not otype.startswith("binary")
        float32 = analog and (device.kind == "niagara" or _u(seed, 14, idx) < 0.04)
        r = _u(seed, 15, idx)
        api_unit = UNKNOWN_UNIT if (analog and r < 0.03) else unit
        kv_unit = _UNIT_ABBREV.get(unit, unit) if (r < 0.015 or 0.9 < r < 0.94) else None
        return PointDef(
            index=idx, name=name, device=device, object_type=otype,
            object_index=counters[otype], object_name=f"{device.label} {label}", role=role,
            unit=unit, api_unit=api_unit, kv_unit=kv_unit, markers=markers.split(), kind=kind,
            shape=shape, base=base, amp=amp, noise=noise, lo=lo, hi=hi,
            interval=None if cov else int(interval), float32=float32, scale=scale, offset=offset,
        )

    def _api_point(self, p: PointDef) -> dict[str, Any]:
        d = p.device
        kv = {
            "role": p.role,
            "his_mode": "cov" if p.interval is None else "sampled",
            "device": d.label,
            "equip": d.kind,
        }
        if p.kv_unit is not None:
            kv["unit"] = p.kv_unit
        created = format_wire_time(datetime(2024, 3, 1, 12, tzinfo=UTC) + timedelta(seconds=p.index))
        return {
            "id": self.site_id * 100000 + p.index + 1,
            "name": p.name,
            "client": "sim_client",
            "site": self.name,
            "kv_tags": kv,
            "marker_tags": list(p.markers) + ["point", "his"],
            "bacnet_data": {
                "device_name": d.label,
                "device_address": d.address,
                "device_id": d.instance,
                "device_description": f"{d.kind.upper()} {d.label}",
                "object_type": p.object_type,
                "object_index": p.object_index,
                "object_name": p.object_name,
                "object_description": p.role.replace("_", " "),
                "object_units": p.api_unit,
                "scrape_enabled": True,
                "scrape_interval": p.interval if p.interval is not None else 0,
            },
            "collect_config": {},
            "point_type": None if d.kind == "niagara" else (
                "binary" if p.object_type.startswith("binary") else "analog"),
            "collect_enabled": True,
            "collect_interval": p.interval,
            "created": created,
            "updated": created,
        }

    def api_points(self) -> list[dict[str, Any]]:
        """The API's point objects, made on each call (~1 ms for 120 points): kept, they were
        half of a site model's memory, and a fleet simulator holds a thousand models."""
        return [self._api_point(p) for p in self.points]

    def point(self, name: str) -> PointDef | None:
        return self._by_name.get(name)

    # -- per-row arrays --------------------------------------------------------------------------

    def _build_rows(self) -> None:
        """Row order within a minute: devices by scrape offset, then each device's points by name."""
        order = sorted(range(len(self.points)),
                       key=lambda i: (self.points[i].device.index, self.points[i].name))
        pts = [self.points[i] for i in order]
        self.row_pid = np.array(order, dtype=np.int64)
        self.row_dev = np.array([p.device.index for p in pts], dtype=np.int64)
        self.row_interval = np.array([p.interval or 1 for p in pts], dtype=np.int64)
        self.row_cov = np.array([p.interval is None for p in pts], dtype=bool)
        self.has_cov = bool(self.row_cov.any())
        self.intervals = sorted({p.interval for p in pts if p.interval is not None})
        self._due_cache: dict[tuple, np.ndarray] = {}
        self._rowsets: dict[bytes, _RowSet] = {}
        self.row_shape = np.array([p.shape for p in pts], dtype=np.int64)
        for attr in ("base", "amp", "noise", "lo", "hi", "scale", "offset"):
            setattr(self, f"row_{attr}", np.array([getattr(p, attr) for p in pts], dtype=np.float64))
        self.row_float32 = np.array([p.float32 for p in pts], dtype=bool)
        self.row_pkey = _key(self.seed, 21, self.row_pid)
        prefixes = [b'{"name":' + orjson.dumps(p.name) + b',"value":"' for p in pts]
        self.row_prefix = np.empty(len(pts), dtype=object)
        self.row_prefix[:] = prefixes
        self.row_prefix_len = np.array([len(b) for b in prefixes], dtype=np.int64)
        self.names = [p.name for p in self.points]
        # Name rank of each point, for (time, name) ordering of aggregated rows.
        by_name = sorted(range(len(self.points)), key=lambda i: self.points[i].name)
        self.name_rank = np.empty(len(self.points), dtype=np.int64)
        self.name_rank[by_name] = np.arange(len(self.points))
        self.rank_pid = np.array(by_name, dtype=np.int64)
        n_dev = len(self.devices)
        spacing = 48 * US // max(n_dev, 1)
        self.dev_offset = US + np.arange(n_dev, dtype=np.int64) * spacing
        self.dev_jitter_span = max(int(spacing * 0.9), 1)
        self.dev_shift_h = np.array([_u(self.seed, 31, d) - 0.5 for d in range(n_dev)])
        self.dev_key = _key(self.seed, 32, np.arange(n_dev))

    def candidate_rows(self, minute: int) -> np.ndarray:
        """Row positions that may be read in `minute`: the sampled points with
        (minute * 60) % interval == 0, and every change-of-value point. Only a few distinct sets
        exist, so their parameters are gathered once (`rowset`)."""
        key = tuple((minute * 60) % i == 0 for i in self.intervals)
        rows = self._due_cache.get(key)
        if rows is None:
            due = ((minute * 60) % self.row_interval == 0) | self.row_cov
            rows = self._due_cache[key] = np.flatnonzero(due)
        return rows

    def cov_due(self, minute: int, rows: np.ndarray) -> np.ndarray:
        """Which of `rows` are read: change-of-value points only when their value changed (or on
        a sparse heartbeat), the others always."""
        due = np.ones(len(rows), dtype=bool)
        cov = np.flatnonzero(self.row_cov[rows])
        if len(cov):
            devs = self.row_dev[rows[cov]]
            changed = self.occupancy(minute, devs) != self.occupancy(minute - 1, devs)
            h = _mix(self.row_pkey[rows[cov]] ^ np.uint64(_key_int(minute, 51)))
            due[cov] = changed | (_unit(h) < 1 / 15)
        return due

    def rowset(self, rows: np.ndarray) -> _RowSet:
        """Per-row parameters gathered for one set of due rows (cached: the sets repeat)."""
        key = rows.tobytes()
        rs = self._rowsets.get(key)
        if rs is None:
            rs = _RowSet(self, rows)
            if len(self._rowsets) > 64:
                self._rowsets.clear()
            self._rowsets[key] = rs
        return rs

    def occupancy_dev(self, minute: int) -> np.ndarray:
        return self.occupancy(minute, np.arange(len(self.devices)))

    def device_times(self, minute: int) -> np.ndarray:
        """Each device's scrape time (epoch microseconds) in `minute`."""
        h = _mix(self.dev_key ^ np.uint64(_key_int(minute)))
        jitter = (_unit(h) * self.dev_jitter_span).astype(np.int64)
        return minute * MINUTE_US + self.dev_offset + jitter

    def occupancy(self, minute: int, devs: np.ndarray) -> np.ndarray:
        """1.0 when the device's schedule is occupied (06:00-20:00 local, shifted per device)."""
        h = np.mod(minute / 60.0 + UTC_OFFSET_HOURS - self.dev_shift_h[devs], 24.0)
        return ((h >= 6.0) & (h < 20.0)).astype(np.float64)

    # -- data faults -----------------------------------------------------------------------------

    def fault_plan(self, sig: tuple) -> _FaultPlan:
        with self._lock:
            plan = self._plans.get(sig)
            if plan is None:
                plan = _FaultPlan(self, sig)
                self._plans[sig] = plan
            return plan


class _RowSet:
    """The parameters of one set of due rows, gathered once: a minute's generation is then a
    handful of vector operations per value shape."""

    def __init__(self, site: SiteModel, rows: np.ndarray) -> None:
        self.devs = site.row_dev[rows]
        self.pkey = site.row_pkey[rows]
        self.noise = site.row_noise[rows]
        self.scale = site.row_scale[rows]
        self.offset = site.row_offset[rows]
        self.converted = bool((self.scale != 1.0).any() or (self.offset != 0.0).any())
        shape = site.row_shape[rows]
        self.groups = []
        for code in np.unique(shape).tolist():
            sel = np.flatnonzero(shape == code)
            self.groups.append((code, sel, site.row_base[rows][sel], site.row_amp[rows][sel],
                                site.row_lo[rows][sel], site.row_hi[rows][sel]))
        self.f32_rows = np.flatnonzero(site.row_float32[rows])
        first = np.ones(len(rows), dtype=bool)
        first[1:] = self.devs[1:] != self.devs[:-1]
        self.active = self.devs[first]
        self.template: list[bytes | None] = [None] * (4 * len(rows))
        self.template[0::4] = site.row_prefix[rows].tolist()


class _FaultPlan:
    """Which points/devices the data faults hit for one fault signature, as row arrays."""

    def __init__(self, site: SiteModel, sig: tuple) -> None:
        n_stuck, n_oor, n_text, n_dead, dead_after_us, outages = sig
        pts = site.points
        taken: set[int] = set()

        def pick(n: int, ok) -> list[int]:
            chosen = [p.index for p in pts if p.index not in taken and ok(p)][: max(n, 0)]
            taken.update(chosen)
            return chosen

        self.out_of_range = pick(n_oor, lambda p: p.role == "zone_temp" and p.kind == "sensor")
        self.stuck = pick(n_stuck, lambda p: p.kind == "sensor"
                          and p.unit in ("degrees-fahrenheit", "degrees-celsius"))
        self.text = pick(n_text, lambda p: p.kind == "sensor")
        n_dev = len(site.devices)
        self.dead_devices = list(range(max(n_dev - max(n_dead, 0), 0), n_dev))
        self.dead_after_us = dead_after_us
        self.outages = outages
        # 0 normal, 1 stuck, 2 out of range, 3 text; in row order.
        row_of = np.empty(len(pts), dtype=np.int64)
        row_of[site.row_pid] = np.arange(len(pts))
        self.row_override = np.zeros(len(pts), dtype=np.int64)
        self.row_override_value = np.zeros(len(pts), dtype=np.float64)
        for pid in self.stuck:
            r = row_of[pid]
            self.row_override[r] = 1
            self.row_override_value[r] = round(70.0 + 4.0 * _u(site.seed, 41, pid), 1)
        for i, pid in enumerate(self.out_of_range):
            r = row_of[pid]
            self.row_override[r] = 2
            self.row_override_value[r] = 180.0 if i % 2 == 0 else -40.0
        for pid in self.text:
            self.row_override[row_of[pid]] = 3
        self.any_override = bool(self.row_override.any())
        self.dead_from = n_dev - len(self.dead_devices)

    def names(self, site: SiteModel) -> dict[str, list[str]]:
        dead = set(self.dead_devices)
        return {
            "stuck": [site.names[i] for i in self.stuck],
            "out_of_range": [site.names[i] for i in self.out_of_range],
            "text": [site.names[i] for i in self.text],
            "dead": [p.name for p in site.points if p.device.index in dead],
        }


# ---------------------------------------------------------------------------------------------
# Blocks: one minute of one site, generated and rendered once.


_VALUE_RE = re.compile(rb'"value":(?:"([^"]*)"|(null))')


class Block:
    """The rows of one site-minute, in wire order, rendered as `{...},{...},` bytes.

    Kept small, since a warm cache may hold a whole day of them: the rendered text, each device's
    scrape time, and each value's length; everything else is derived when asked for (the numbers
    by generating the minute again, which is deterministic).
    """

    __slots__ = ("minute", "rows", "text", "specials", "t_dev", "nbytes", "_vlen", "_offsets",
                 "_plan", "_site")

    def __init__(self, site: SiteModel, minute: int, rows: np.ndarray, t_dev: np.ndarray,
                 specials: dict[int, str | None], text: bytes, vlen: np.ndarray,
                 plan: _FaultPlan) -> None:
        self._site = site
        self._plan = plan
        self.minute = minute
        self.rows = rows  # positions in the site's row order (often shared with the row set)
        self.t_dev = t_dev  # each device's scrape time this minute
        self.specials = specials  # rows whose value is text, "NaN"/"nan" or None (JSON null)
        self.text = text
        self._vlen = vlen.astype(np.uint8)
        self._offsets: np.ndarray | None = None
        # What the cache counts: the text, the arrays, and the offsets a partial read adds.
        self.nbytes = len(text) + self._vlen.nbytes + t_dev.nbytes + 8 * (len(rows) + 1) + 300

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def devs(self) -> np.ndarray:
        return self._site.row_dev[self.rows]

    @property
    def pids(self) -> np.ndarray:
        return self._site.row_pid[self.rows]

    @property
    def times(self) -> np.ndarray:
        """Each row's time, epoch microseconds (ascending)."""
        return self.t_dev[self._site.row_dev[self.rows]]

    def dev_time(self) -> dict[int, str]:
        """Each scraping device's wire time string in this minute."""
        devs = np.unique(self.devs)
        return {d: format_wire_time(_us_to_dt(t)) for d, t in
                zip(devs.tolist(), self.t_dev[devs].tolist())}

    def _regenerate(self) -> tuple[np.ndarray, list[str | None]]:
        """(numbers, value strings) of every row, by generating the minute again (not kept:
        only ground truth and 5-minute averages need them)."""
        site = self._site
        # Generate the minute's candidate rows as build_block did, then keep this block's rows.
        cand = site.candidate_rows(self.minute)
        rs = site.rowset(cand)
        values, _ = _values(site, self.minute, cand, self.t_dev[rs.devs], self._plan)
        _, _, _, k, f32_numbers = _value_parts(values, rs.f32_rows)
        numeric = k / 1e4
        numeric[rs.f32_rows] = f32_numbers
        if len(cand) != len(self.rows):
            numeric = numeric[np.searchsorted(cand, self.rows)]
        tokens: list[str | None] = list(map(float.__repr__, numeric.tolist()))
        for i, token in self.specials.items():
            tokens[i] = token
            numeric[i] = np.nan
        return numeric, tokens

    @property
    def numeric(self) -> np.ndarray:
        """The numbers the value strings spell (NaN for text, "NaN" and null)."""
        return self._regenerate()[0]

    @property
    def tokens(self) -> list[str | None]:
        """Each row's value as the wire spells it (None for JSON null), read off the text."""
        # `"value":` appears only as the key: a name containing it would be JSON-escaped.
        return [q.decode() if not null else None for q, null in _VALUE_RE.findall(self.text)]

    @property
    def offsets(self) -> np.ndarray:
        """Byte offset of each row in `text` (n + 1 entries); computed only when a page needs it."""
        if self._offsets is None:
            site = self._site
            # `","time":"<time>"},` after the value: 39 bytes, 32 when the time has no fraction.
            rel = self.t_dev - self.minute * MINUTE_US
            suffix_len = np.where(rel % US != 0, 39, 32)
            devs = self.devs
            lengths = site.row_prefix_len[self.rows] + self._vlen + suffix_len[devs]
            off = np.zeros(self.n + 1, dtype=np.int64)
            np.cumsum(lengths, out=off[1:])
            self._offsets = off
        return self._offsets

    def slices(self, idx: np.ndarray) -> list[bytes]:
        """The rendered rows at positions `idx` (sorted), as few byte slices as possible."""
        if len(idx) == 0:
            return []
        if len(idx) == self.n:
            return [self.text]
        off = self.offsets
        breaks = np.nonzero(np.diff(idx) != 1)[0]
        starts = np.concatenate(([0], breaks + 1))
        ends = np.concatenate((breaks, [len(idx) - 1]))
        text = self.text
        return [text[off[idx[a]]:off[idx[b] + 1]] for a, b in zip(starts.tolist(), ends.tolist())]

    def samples(self, idx: np.ndarray) -> list[tuple[str, str, str | None]]:
        """(name, wire time, wire value) of the rows at positions `idx`."""
        names = self._site.names
        pids = self.pids[idx].tolist()
        devs = self.devs[idx].tolist()
        tokens = self.tokens
        dev_time = self.dev_time()
        return [(names[p], dev_time[d], tokens[i]) for p, d, i in zip(pids, devs, idx.tolist())]


# Value strings are assembled from tables (integer part, fractional part) so that a block of
# thousands of rows is rendered without one Python call per value: `repr` of a float rounded to
# 4 decimals is exactly "<int>.<frac with trailing zeros stripped>" below 10**5.
_INT_LIMIT = 100_000
_tables_lock = threading.Lock()
_tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
_float32_repr: dict[float, bytes] = {}


def _value_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    global _tables
    with _tables_lock:
        if _tables is None:
            ints = [b"%d" % i for i in range(_INT_LIMIT)] + [b"-%d" % i for i in range(_INT_LIMIT)]
            fracs = [(b".%04d" % f).rstrip(b"0") if f else b".0" for f in range(10_000)]
            int_tab = np.empty(len(ints), dtype=object)
            int_tab[:] = ints
            frac_tab = np.empty(len(fracs), dtype=object)
            frac_tab[:] = fracs
            _tables = (int_tab, np.array([len(x) for x in ints]), frac_tab,
                       np.array([len(x) for x in fracs]))
        return _tables


def _value_parts(values: np.ndarray, f32_rows: np.ndarray
                 ) -> tuple[list, list, np.ndarray, np.ndarray, np.ndarray]:
    """Render values as ACE sends them, two byte strings per value (joined they spell the value).

    Most points send the value rounded to 4 decimals (`repr` of it: "-24.8571", "72.5", "0.0");
    the points at `f32_rows` send it rounded to 2 decimals and stored as a float32, widened to
    double on the way out ("1.6100000143051147"). Returns (integer parts, fraction parts, lengths,
    k = the 4-decimal values times 10**4, the float32 points' numbers).
    """
    int_tab, int_len, frac_tab, frac_len = _value_tables()
    k = np.rint(values * 1e4).astype(np.int64)
    a = np.abs(k)
    ip = a // 10_000
    fp = a - ip * 10_000
    big = np.flatnonzero(ip >= _INT_LIMIT)
    if len(big):
        ip[big] = 0
    idx = ip + _INT_LIMIT * (k < 0)
    int_parts = int_tab[idx]
    frac_parts = frac_tab[fp]
    vlen = int_len[idx] + frac_len[fp]
    f32_numbers = np.empty(0)
    strs: list[bytes] = []
    if len(f32_rows):
        cache = _float32_repr
        if len(cache) > 1_000_000:
            cache.clear()
        # A float32 reading is fixed by its value in hundredths: cache its repr by that.
        q = np.rint(values[f32_rows] * 100.0)
        f32_numbers = (q / 100.0).astype(np.float32).astype(np.float64) + 0.0
        keys = q.astype(np.int64).tolist()
        strs = list(map(cache.get, keys))
        if None in strs:
            for j, (key, s) in enumerate(zip(keys, strs)):
                if s is None:
                    s = strs[j] = cache[key] = float.__repr__(float(f32_numbers[j])).encode()
    if len(big):
        strs += [float.__repr__(x / 1e4).encode() for x in k[big].tolist()]
    if strs:
        rows = np.concatenate((f32_rows, big)) if len(big) else f32_rows
        int_parts[rows] = strs
        frac_parts[rows] = b""
        vlen[rows] = [len(x) for x in strs]
    return int_parts.tolist(), frac_parts.tolist(), vlen, k, f32_numbers


_SEC_TAB = np.array([b"%02d" % i for i in range(60)] + [b"%02d." % i for i in range(60)],
                    dtype=object)
_MICRO_TAB = np.array([b"%03d" % i for i in range(1000)] + [b""], dtype=object)


def _device_suffixes(minute: int, times: np.ndarray) -> list[bytes]:
    """`","time":"<wire time>"},` for each scrape time in `minute`, without a Python call per
    device (times format as format_wire_time does: no fraction when it is zero)."""
    rel = times - minute * MINUTE_US
    sec, frac = np.divmod(rel, US)
    has_frac = frac != 0
    sec_parts = _SEC_TAB[sec + 60 * has_frac]
    hi = np.where(has_frac, frac // 1000, 1000)
    lo = np.where(has_frac, frac % 1000, 1000)
    nd = len(times)
    head = b'"},\x00","time":"' + (EPOCH + timedelta(minutes=minute)).strftime(
        "%Y-%m-%dT%H:%M:").encode()
    pieces: list[bytes | None] = [None] * (4 * nd)
    pieces[0::4] = [head] * nd
    pieces[1::4] = sec_parts.tolist()
    pieces[2::4] = _MICRO_TAB[hi].tolist()
    pieces[3::4] = _MICRO_TAB[lo].tolist()
    return (b"".join(pieces)[4:] + b'"},').split(b"\x00")


def build_block(site: SiteModel, minute: int, plan: _FaultPlan) -> Block:
    """Generate and render one minute of one site (rows with time in [minute, minute + 60 s))."""
    m = minute
    cand = site.candidate_rows(m)
    rs = site.rowset(cand)
    t_dev = site.device_times(m)
    times = t_dev[rs.devs]
    keep = _keep(site, m, cand, times, plan)
    if keep is not None and not keep.any():
        return Block(site, m, cand[keep], t_dev, {}, b"", np.empty(0, np.int64), plan)

    values, specials = _values(site, m, cand, times, plan)
    int_parts, frac_parts, vlen, _, _ = _value_parts(values, rs.f32_rows)
    devs = rs.devs
    suffixes = _device_suffixes(m, t_dev[rs.active])
    suffix = np.empty(len(site.devices), dtype=object)
    suffix[rs.active] = suffixes
    parts = rs.template.copy()
    parts[1::4] = int_parts
    parts[2::4] = frac_parts
    parts[3::4] = suffix[devs].tolist()
    for i, token in specials.items():
        parts[4 * i + 2] = b""
        if token is None:  # JSON null: no quotes around it
            parts[4 * i] = parts[4 * i][:-1]
            parts[4 * i + 1] = b"null"
            parts[4 * i + 3] = parts[4 * i + 3][1:]
            vlen[i] = 2  # "null" minus the two quotes the row no longer has
        else:
            parts[4 * i + 1] = token.encode()
            vlen[i] = len(parts[4 * i + 1])
    rows = cand
    if keep is not None:
        # Rows not read this minute (COV points without a change, dead devices, outages):
        # rendered with the rest, then blanked out, so that the row set stays a cached one.
        empty = [b""] * 4
        for i in np.flatnonzero(~keep).tolist():
            parts[4 * i: 4 * i + 4] = empty
        new_index = np.cumsum(keep) - 1
        specials = {int(new_index[i]): t for i, t in specials.items() if keep[i]}
        rows, vlen = cand[keep], vlen[keep]
    return Block(site, m, rows, t_dev, specials, b"".join(parts), vlen, plan)


def _keep(site: SiteModel, m: int, rows: np.ndarray, times: np.ndarray,
          plan: _FaultPlan) -> np.ndarray | None:
    """Which candidate rows are really recorded this minute (None: all of them)."""
    keep = site.cov_due(m, rows) if site.has_cov else None
    if plan.dead_devices or plan.outages:
        if keep is None:
            keep = np.ones(len(rows), dtype=bool)
        if plan.dead_devices:
            dead = site.row_dev[rows] >= plan.dead_from
            if plan.dead_after_us is not None:
                dead &= times >= plan.dead_after_us
            keep &= ~dead
        for start, end in plan.outages:
            keep &= ~((times >= start) & (times < end))
    if keep is not None and keep.all():
        return None
    return keep


def _values(site: SiteModel, m: int, rows: np.ndarray, times: np.ndarray,
            plan: _FaultPlan) -> tuple[np.ndarray, dict[int, str | None]]:
    """Model values (in the point's unit) for due rows, plus {row: token} for non-numbers."""
    rs = site.rowset(rows)
    # One 64-bit hash per reading: two 21-bit uniforms for the noise, 22 bits for the odd values.
    h = _mix(rs.pkey ^ np.uint64(_key_int(m)))
    u1 = (h >> np.uint64(43)).astype(np.float64)
    u2 = ((h >> np.uint64(22)) & np.uint64(0x1FFFFF)).astype(np.float64)
    u3 = (h & np.uint64(0x3FFFFF)).astype(np.float64) * (1.0 / (1 << 22))
    # Roughly normal noise (sum of two uniforms, scaled to unit variance).
    noise = ((u1 + u2) * (1.0 / (1 << 21)) - 1.0) * 2.449 * rs.noise
    occ = site.occupancy_dev(m)[rs.devs]
    # Weather and the daily curve move slowly: one value per minute is plenty.
    daily = _daily_at(m * 60.0 + 30.0)
    oat = outside_air_temp_f(site.seed, m * 60.0 + 30.0)
    values = np.empty(len(rows))
    for code, sel, b, a, lo, hi in rs.groups:
        nz = noise[sel]
        if code == CONST:
            v = b
        elif code == DAILY:
            v = b + a * daily + nz
        elif code == BIN:
            v = occ[sel]
        elif code == LEVEL:  # a command: exactly 0.0 while the equipment is off
            v = occ[sel] * np.clip(b + a * daily + nz, lo, hi)
        elif code == SENSOR:  # reads `lo` (plus noise) while off
            o = occ[sel]
            v = np.clip(o * (b + a * daily) + (1.0 - o) * lo + nz, lo, hi)
        elif code == OAT:
            v = oat + nz
        elif code == MAT:
            v = 72.0 + (0.5 - 0.25 * occ[sel]) * (oat - 72.0) + nz
        elif code == SAT:
            o = occ[sel]
            v = o * (b + nz) + (1.0 - o) * (72.0 + (0.5 - 0.25 * o) * (oat - 72.0) + nz)
        elif code == TOTAL:
            # A meter's register only ever increases: base + the integral of a positive load.
            t_h = (times[sel].astype(np.float64) / US - 1577836800.0) / 3600.0
            w = TAU / 24.0
            v = b + 300.0 * t_h + a * (t_h - np.sin(w * t_h) / w)
        elif code == ZERO:
            v = 0.0
        elif code == CO2:
            v = b + occ[sel] * a * (0.6 + 0.4 * daily) + nz
        elif code == CHW:
            v = b + (1.0 - occ[sel]) * 0.3 * max(oat - 44.0, 0.0) + nz
        else:  # COND
            v = b + 0.25 * (oat - 75.0) + nz
        values[sel] = v
    specials: dict[int, str | None] = {}
    if plan.any_override:
        override = plan.row_override[rows]
        values = np.where(override == 1, plan.row_override_value[rows], values)
        values = np.where(override == 2, plan.row_override_value[rows] + noise, values)
        text_rows = np.nonzero(override == 3)[0]
        if len(text_rows) and (m // 10) % 3 == 0:
            token = "fault" if (m // 60) % 2 == 0 else "offline"
            specials.update((int(i), token) for i in text_rows)
        clean = override != 0
    else:
        clean = None
    if rs.converted:
        values = values * rs.scale + rs.offset
    # About 1 reading in 1000 is NaN ("NaN" or "nan"), 1 in 2000 a JSON null.
    odd = u3 < 0.0015
    if clean is not None:
        odd &= ~clean
    for i in np.nonzero(odd)[0].tolist():
        u = u3[i]
        specials[i] = ("NaN" if u < 0.0005 else "nan") if u < 0.001 else None
    return values, specials


# ---------------------------------------------------------------------------------------------
# The cache of rendered blocks.


class _BlockCache:
    """A bounded LRU of rendered blocks, keyed by (site, minute, data-fault signature)."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[tuple, Block] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: dict[tuple, threading.Event] = {}

    def get(self, site: SiteModel, minute: int, sig: tuple, plan: _FaultPlan) -> Block:
        if self.max_bytes == 0:  # no cache: the request that reads a minute renders it
            return build_block(site, minute, plan)
        key = (site.name, minute, sig)
        while True:
            with self._lock:
                block = self._blocks.get(key)
                if block is not None:
                    self._blocks.move_to_end(key)
                    return block
                building = self._building.get(key)
                if building is None:
                    building = self._building[key] = threading.Event()
                    break
            # Another thread (a request, or the prefetcher) is building it: wait, don't redo it.
            building.wait()
        try:
            block = build_block(site, minute, plan)
            with self._lock:
                self._blocks[key] = block
                self._bytes += block.nbytes
                while self._bytes > self.max_bytes and len(self._blocks) > 1:
                    _, old = self._blocks.popitem(last=False)
                    self._bytes -= old.nbytes
        finally:
            with self._lock:
                self._building.pop(key, None)
            building.set()
        return block

    def has(self, site: SiteModel, minute: int, sig: tuple) -> bool:
        with self._lock:
            return (site.name, minute, sig) in self._blocks

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0


# ---------------------------------------------------------------------------------------------
# The simulator: sites + clock + faults, answering the questions the HTTP routes ask.


Segment = tuple[Block, np.ndarray]


@dataclass
class _View:
    """What one request may see: the site, its data faults, the clock and late devices."""

    site: SiteModel
    sig: tuple
    plan: _FaultPlan
    now_us: int
    late_devices: int
    late_us: int
    cache: _BlockCache = field(repr=False)

    def block(self, minute: int) -> Block:
        return self.cache.get(self.site, minute, self.sig, self.plan)

    def visible(self, block: Block, i0: int, i1: int, times: np.ndarray | None = None
                ) -> np.ndarray:
        """Positions in [i0, i1) of `block` visible now (late devices' rows may not be yet)."""
        idx = np.arange(i0, i1)
        if self.late_devices > 0 and i1 > i0:
            t = (block.times if times is None else times)[i0:i1]
            if t[-1] + self.late_us > self.now_us:
                hidden = (block.devs[i0:i1] < self.late_devices) & (t + self.late_us > self.now_us)
                idx = idx[~hidden]
        return idx

    def forward(self, lo: int, hi: int, limit: int, skip: tuple[int, int] | None = None,
                late: bool = True) -> list[Segment]:
        """Up to `limit` rows with lo <= time < hi (and time <= now), in order; `skip` = (time, k)
        drops the first k rows at that time."""
        hi = min(hi, self.now_us + 1)
        out: list[Segment] = []
        got = 0
        m = lo // MINUTE_US
        while lo < hi and m <= (hi - 1) // MINUTE_US and got < limit:
            b = self.block(m)
            m += 1
            if b.n == 0:
                continue
            times = b.times
            i0 = int(np.searchsorted(times, lo, "left"))
            i1 = int(np.searchsorted(times, hi, "left"))
            if i0 >= i1:
                continue
            idx = self.visible(b, i0, i1, times) if late else np.arange(i0, i1)
            if skip is not None and skip[1] > 0:
                t = times[idx]
                p0 = int(np.searchsorted(t, skip[0], "left"))
                p1 = int(np.searchsorted(t, skip[0], "right"))
                if p1 > p0:
                    idx = np.concatenate((idx[:p0], idx[p0 + min(skip[1], p1 - p0):]))
            idx = idx[: limit - got]
            if len(idx):
                out.append((b, idx))
                got += len(idx)
        return out

    def backward(self, lo: int, hi: int, limit: int) -> list[Segment]:
        """The last `limit` visible rows with lo <= time < hi, in order."""
        hi = min(hi, self.now_us + 1)
        out: list[Segment] = []
        got = 0
        m = (hi - 1) // MINUTE_US
        while lo < hi and m >= lo // MINUTE_US and got < limit:
            b = self.block(m)
            m -= 1
            if b.n == 0:
                continue
            times = b.times
            i0 = int(np.searchsorted(times, lo, "left"))
            i1 = int(np.searchsorted(times, hi, "left"))
            idx = self.visible(b, i0, i1, times)[-(limit - got):] if i1 > i0 else idx_empty()
            if len(idx):
                out.append((b, idx))
                got += len(idx)
        out.reverse()
        return out


def idx_empty() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


def _count(segments: list[Segment]) -> int:
    return sum(len(idx) for _, idx in segments)


def _us_to_dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=int(us))


def to_us(dt: datetime | str | int) -> int:
    """Epoch microseconds of a datetime (naive = UTC), an ISO string, or microseconds already."""
    if isinstance(dt, int):
        return dt
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt.replace("Z", "+00:00"))
    return dt_to_us(dt)


@dataclass
class Page:
    """A rendered page of /timeseries/paginated and what the server needs to know about it."""

    body: bytes
    rows: int = 0
    last_us: int | None = None
    more: bool = False


def _render_page(segments: list[Segment], tail: bytes) -> bytes:
    pieces: list[bytes] = [b'{"point_samples":[']
    for b, idx in segments:
        pieces.extend(b.slices(idx))
    # Every rendered row ends with a comma; the last one must not.
    for i in range(len(pieces) - 1, 0, -1):
        if pieces[i]:
            pieces[i] = pieces[i][:-1]
            break
    pieces.append(tail)
    return b"".join(pieces)


class Simulator:
    """A deterministic ACE deployment: sites, a clock, and faults. See the package docstring."""

    def __init__(self, config: SimulatorConfig) -> None:
        names = [s.name for s in config.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        self.config = config
        self.faults = Faults()
        self._now: datetime | None = None
        # Site models are built on first use (~16 ms and ~150 KB for 120 points): a simulator
        # of 1,000 sites starts at once and holds only the sites that were asked for.
        self._specs = {spec.name: (i, spec) for i, spec in enumerate(config.sites)}
        self._models: dict[str, SiteModel] = {}
        self._models_lock = threading.Lock()
        self._cache = _BlockCache(max(int(config.cache_mb), 0) << 20)

    # -- clock -------------------------------------------------------------------------------------

    def set_now(self, dt: datetime | str | None) -> None:
        """Pin the clock (aware, or naive meaning UTC); None follows real time again."""
        if isinstance(dt, str):
            dt = datetime.fromisoformat(dt.replace("Z", "+00:00"))
        if dt is not None and dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        self._now = None if dt is None else dt.astimezone(UTC)

    def now(self) -> datetime:
        """The simulator's clock, aware UTC. Samples later than this do not exist yet."""
        return self._now if self._now is not None else datetime.now(UTC)

    def now_us(self) -> int:
        return dt_to_us(self.now())

    # -- sites and points ------------------------------------------------------------------------

    @property
    def site_names(self) -> list[str]:
        return list(self._specs)

    @property
    def sites_built(self) -> int:
        """How many site models have been built (on first use) so far."""
        return len(self._models)

    def has_site(self, site: str) -> bool:
        return site in self._specs

    def spec(self, site: str) -> SiteSpec:
        try:
            return self._specs[site][1]
        except KeyError:
            raise UnknownSite(site) from None

    def site_model(self, site: str) -> SiteModel:
        model = self._models.get(site)
        if model is not None:
            return model
        try:
            index, spec = self._specs[site]
        except KeyError:
            raise UnknownSite(site) from None
        with self._models_lock:
            model = self._models.get(site)
            if model is None:
                model = self._models[site] = SiteModel(spec, index)
        return model

    def site(self, site: str) -> dict[str, Any]:
        """The API's site object (made from the site's spec: listing sites builds no model)."""
        try:
            index, _ = self._specs[site]
        except KeyError:
            raise UnknownSite(site) from None
        site_id = index + 1
        created = format_wire_time(datetime(2023, 6, 1, tzinfo=UTC) + timedelta(days=site_id))
        return {
            "id": site_id,
            "name": site,
            "nice_name": site.replace("_", " ").title(),
            "client": "sim_client",
            "address": f"{100 + site_id} Simulated Way, Springfield",
            "latitude": round(39.78 + 0.01 * site_id, 4),
            "longitude": round(-89.65 - 0.01 * site_id, 4),
            "vtron_ip": f"10.{site_id}.0.2",
            "vtron_user": "ace",
            "archived": False,
            "created": created,
            "updated": created,
        }

    def sites(self) -> list[dict[str, Any]]:
        return [self.site(name) for name in self._specs]

    def points(self, site: str) -> list[dict[str, Any]]:
        """The API's point objects for `site`, in id order (a copy: change it freely)."""
        return orjson.loads(orjson.dumps(self.site_model(site).api_points()))

    def point_site(self, point: str) -> str | None:
        """The site of a point name, or None. A point's name starts with its site's name and a
        "/" (site names may hold "/" too): only the sites named by such prefixes are built."""
        cut = point.find("/")
        while cut > 0:
            site = point[:cut]
            if site in self._specs and self.site_model(site).point(point) is not None:
                return site
            cut = point.find("/", cut + 1)
        return None

    def fault_points(self, site: str) -> dict[str, list[str]]:
        """Point names hit by each data fault (stuck, out_of_range, text, dead) and late devices."""
        view = self._view(site)
        out = view.plan.names(view.site)
        late = set(range(view.late_devices))
        out["late"] = [p.name for p in view.site.points if p.device.index in late]
        return out

    def _view(self, site: str) -> _View:
        s = self.site_model(site)
        faults = self.faults
        sig = faults.data_signature(site)
        return _View(
            site=s, sig=sig, plan=s.fault_plan(sig), now_us=self.now_us(),
            late_devices=int(faults.for_site("late_devices", site) or 0),
            late_us=int(float(faults.for_site("late_seconds", site) or 0) * US),
            cache=self._cache,
        )

    # -- samples ---------------------------------------------------------------------------------

    def ground_truth(self, site: str, start: datetime | str,
                     end: datetime | str) -> list[tuple[str, str, str | None]]:
        """Every sample ACE will eventually hold for [start, end) that exists by now():
        (name, wire time, wire value or None), ordered by (time, name). Late devices' samples are
        in (they exist, they show up late); dead devices and outages are not; transport faults do
        not matter."""
        view = self._view(site)
        out: list[tuple[str, str, str | None]] = []
        for b, idx in view.forward(to_us(start), to_us(end), 1 << 62, late=False):
            out.extend(b.samples(idx))
        return out

    def timeseries_page(self, site: str, start: datetime | str, end: datetime | str,
                        page_size: int, cursor: Cursor | None, raw: bool = True) -> Page:
        """One /timeseries/paginated response (raw readings or 5-minute buckets)."""
        view = self._view(site)
        if self.faults.empty_responses:
            return Page(EMPTY_PAGE)
        lo, hi = to_us(start), to_us(end) + (1 if self.config.end_inclusive else 0)
        if not raw:
            return Page(self._bucket_page(view, lo, hi, page_size, cursor))
        skip = None
        if cursor is not None:
            t = dt_to_us(cursor.timestamp)
            if t >= lo:
                lo, skip = t, (t, cursor.offset)
        segments = view.forward(lo, hi, page_size + 1, skip)
        total = _count(segments)
        if total == 0:
            return Page(EMPTY_PAGE)
        more = total > page_size
        if more:  # drop the one row read to learn whether more remain
            b, idx = segments[-1]
            segments[-1] = (b, idx[:-1])
            if not len(segments[-1][1]):
                segments.pop()
        b, idx = segments[-1]
        last_us = int(b.times[idx[-1]])
        at_last = int(np.count_nonzero(b.times[idx] == last_us))
        make = server_cursor if self.config.cursor_defect else next_cursor
        token = make(cursor, _us_to_dt(last_us), at_last).encode()
        faults = self.faults
        extra = int(faults.outside_window_rows or 0)
        page = segments
        if cursor is not None and faults.duplicate_across_pages:
            first_b, first_idx = segments[0]
            first_t = int(first_b.times[first_idx[0]])
            # The previous page's last row: the visible row just before this page's first one.
            prev = [(first_b, view.visible(first_b, 0, int(first_idx[0]))[-1:])]
            if not len(prev[0][1]):
                prev = view.backward(to_us(start), first_t, 1)
            page = prev + page
        if extra and cursor is None:
            page = view.backward(to_us(start) - LOOKBACK_US, to_us(start), extra) + page
        if extra and not more:
            after_lo = hi if self.config.end_inclusive else to_us(end)
            page = page + view.forward(after_lo, after_lo + LOOKBACK_US, extra)
        tail = b'],"next_cursor":"' + token.encode() + b'","has_more":true}'
        return Page(_render_page(page, tail), rows=min(total, page_size), last_us=last_us,
                    more=more)

    def warm(self, site: str, from_us: int, rows: int, max_minutes: int = 60) -> None:
        """Build (and cache) the blocks a next page of about `rows` rows from `from_us` will read,
        so that they are ready when it is asked for. Safe to call from a background thread."""
        view = self._view(site)
        first = from_us // MINUTE_US
        got = 0
        for minute in range(first, min(first + max_minutes, view.now_us // MINUTE_US) + 1):
            if got > rows:
                return
            got += view.block(minute).n

    def _bucket_rows(self, view: _View, lo: int, hi: int,
                     names: set[str] | None = None) -> list[tuple[int, int, float]]:
        """5-minute averages: (bucket start us, point id, mean) for buckets starting in [lo, hi),
        ordered by (time, name)."""
        b0 = -(-lo // BUCKET_US) * BUCKET_US
        if b0 >= hi:
            return []
        b_end = (-(-hi // BUCKET_US)) * BUCKET_US
        segments = view.forward(b0, b_end, 1 << 62)
        if not segments:
            return []
        site = view.site
        pids = np.concatenate([b.pids[idx] for b, idx in segments])
        times = np.concatenate([b.times[idx] for b, idx in segments])
        vals = np.concatenate([b.numeric[idx] for b, idx in segments])
        ok = np.isfinite(vals)
        if names is not None:
            wanted = np.zeros(len(site.points), dtype=bool)
            for name in names:
                p = site.point(name)
                if p is not None:
                    wanted[p.index] = True
            ok &= wanted[pids]
        n_pts = len(site.points)
        key = ((times[ok] - b0) // BUCKET_US) * n_pts + site.name_rank[pids[ok]]
        size = int(key.max()) + 1 if len(key) else 0
        sums = np.bincount(key, weights=vals[ok], minlength=size)
        counts = np.bincount(key, minlength=size)
        keys = np.nonzero(counts)[0]
        means = np.round(sums[keys] / counts[keys], 4)
        buckets = b0 + (keys // n_pts) * BUCKET_US
        pid = site.rank_pid[keys % n_pts]
        return list(zip(buckets.tolist(), pid.tolist(), means.tolist()))

    def _bucket_page(self, view: _View, lo: int, hi: int, page_size: int,
                     cursor: Cursor | None) -> bytes:
        rows = self._bucket_rows(view, lo, hi)
        times = [r[0] for r in rows]
        pos = 0
        if cursor is not None:
            t = dt_to_us(cursor.timestamp)
            pos = bisect.bisect_left(times, t)
            at_t = bisect.bisect_right(times, t) - pos
            pos += min(cursor.offset, at_t)
        page = rows[pos:pos + page_size]
        if not page:
            return EMPTY_PAGE
        last = page[-1][0]
        at_last = sum(1 for r in page if r[0] == last)
        make = server_cursor if self.config.cursor_defect else next_cursor
        token = make(cursor, _us_to_dt(last), at_last).encode()
        return orjson.dumps({
            "point_samples": self._bucket_samples(view.site, page),
            "next_cursor": token,
            "has_more": True,
        })

    @staticmethod
    def _bucket_samples(site: SiteModel, rows: list[tuple[int, int, float]]) -> list[dict]:
        return [{"name": site.names[p], "value": repr(v), "time": format_wire_time(_us_to_dt(t))}
                for t, p, v in rows]

    def samples(self, site: str, start: datetime | str, end: datetime | str, raw: bool = False,
                names: list[str] | None = None) -> list[dict[str, Any]]:
        """The non-paginated timeseries routes: every visible sample of the window (5-minute
        averages unless raw), optionally only for some points."""
        view = self._view(site)
        if self.faults.empty_responses:
            return []
        lo, hi = to_us(start), to_us(end) + (1 if self.config.end_inclusive else 0)
        wanted = set(names) if names is not None else None
        if not raw:
            return self._bucket_samples(view.site, self._bucket_rows(view, lo, hi, wanted))
        out = []
        for b, idx in view.forward(lo, hi, 1 << 62):
            for name, time, value in b.samples(idx):
                if wanted is None or name in wanted:
                    out.append({"name": name, "value": value, "time": time})
        return out

    # -- weather ---------------------------------------------------------------------------------

    def weather(self, site: str) -> dict[str, Any] | None:
        """Current conditions at now() (time floored to the minute); None if the site has no feed."""
        s = self.spec(site)
        if not s.weather:
            return None
        now = self.now().replace(second=0, microsecond=0)
        t = float(dt_to_us(now) // US)
        minute = int(t // 60)
        temp = outside_air_temp_f(s.seed, t)
        day = t / 86400.0
        humidity = 55.0 - 18.0 * _daily_at(t) + 10.0 * (_u(s.seed, 61, int(day)) - 0.5)
        humidity = min(max(humidity, 8.0), 100.0)
        wind = 3.0 + 9.0 * _u(s.seed, 62, minute // 30)
        temp_c = (temp - 32.0) / 1.8
        gamma = math.log(humidity / 100.0) + 17.62 * temp_c / (243.12 + temp_c)
        dew_c = 243.12 * gamma / (17.62 - gamma)
        wet_c = (temp_c * math.atan(0.151977 * math.sqrt(humidity + 8.313659))
                 + math.atan(temp_c + humidity) - math.atan(humidity - 1.676331)
                 + 0.00391838 * humidity ** 1.5 * math.atan(0.023101 * humidity) - 4.686035)
        feels = temp - 0.4 * wind if temp < 50.0 else temp + 0.05 * max(humidity - 40.0, 0.0)
        values = {
            "temp": temp,
            "feels_like": feels,
            "pressure": 1013.0 + 12.0 * (_u(s.seed, 63, int(day)) - 0.5),
            "humidity": humidity,
            "dew_point": dew_c * 1.8 + 32.0,
            "clouds": round(100.0 * _u(s.seed, 64, minute // 60)),
            "wind_speed": wind,
            "wind_deg": round(360.0 * _u(s.seed, 65, minute // 60)),
            "wet_bulb": wet_c * 1.8 + 32.0,
        }
        time = format_wire_time(now)
        return {
            key: {"name": f"{s.name}/weather/{key}",
                  "value": round(float(v), 2) if isinstance(v, float) else v, "time": time}
            for key, v in values.items()
        }

    def reset(self) -> None:
        """Faults back to their defaults (the clock is left alone)."""
        self.faults.reset()
