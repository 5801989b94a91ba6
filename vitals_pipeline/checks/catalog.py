"""The asset checks of `<site>/timeseries`: names, blocking, what each means. Plain data, so that
`vitals status` knows the check keys without loading the definitions; specs.py builds the checks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckInfo:
    name: str
    blocking: bool
    description: str


CHECKS: tuple[CheckInfo, ...] = (
    CheckInfo(
        "no_duplicate_samples", True,
        "ERROR if the stored window holds a (point, ts) more than once. The source's duplicates "
        "are dropped before the store and reported as source_duplicates_dropped.",
    ),
    CheckInfo(
        "no_future_samples", True,
        "ERROR if a stored sample of the window is stamped later than now + "
        "VITALS_QUALITY_FUTURE_TOLERANCE_MINUTES (5). source_future_rows counts the rows ACE "
        "sent stamped after now + tolerance; they are not dropped for that: those inside the "
        "window are stored, and judged by this check; those outside it are dropped as "
        "out_of_window_dropped.",
    ),
    CheckInfo(
        "samples_inside_window", True,
        "ERROR if a sample this run fetched for the window is not stored inside the window "
        "(a store that shifted or lost rows). Rows the source sent outside the window are "
        "dropped and reported as out_of_window_dropped.",
    ),
    CheckInfo(
        "completeness", False,
        "Samples received / samples promised by each sampled point's collect_interval over the "
        "run's window: WARN below 95 %, ERROR below 80 % (VITALS_QUALITY_COMPLETENESS_*). "
        "cov and interval-less points are excluded. Needs <site>/points.",
    ),
    CheckInfo(
        "values_in_physical_range", False,
        "WARN if readings fall outside the physical range of the point's unit and role "
        "(zone 40..100 degF, outside air -60..130 degF, %RH 0..100, duct static -1..8 in.w.c. "
        "...; degC and Pa converted). Points with other units are not checked. Needs <site>/points.",
    ),
    CheckInfo(
        "no_flatlined_sensors", False,
        "WARN if a sensor's readings stayed within 0.1 degF (0.5 %RH, 0.01 in.w.c.) for the "
        "trailing hour at any partition of the run. Setpoints and commands are flat by design "
        "and skipped. Needs <site>/points.",
    ),
    CheckInfo(
        "no_stale_devices", False,
        "WARN if a device sent nothing for 15 min (or 3 of its shortest intervals), or all of "
        "its sensors kept exactly the same values for 2 h, at any partition of the run. "
        "Needs <site>/points.",
    ),
    CheckInfo(
        "numeric_values", False,
        "WARN on non-numeric text or sentinel readings (-999, 99999, 32767, 65535, -273.15), or "
        "when more than 1 % of the window's samples are null/NaN/inf.",
    ),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)
