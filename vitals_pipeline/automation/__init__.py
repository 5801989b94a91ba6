"""Automation: the per-site schedule and catch-up sensor, the failure alert, freshness.

`build_automation(settings)` returns everything `definitions.py` registers; the freshness policy
is applied there with `dg.map_asset_specs(with_timeseries_freshness, assets)`.

Names are imported on first use, so that `vitals status` can read the gap and run helpers
(gaps.py, runs.py) without building schedules and sensors.
"""

from __future__ import annotations

from vitals_pipeline.lazy import lazy_names

_SOURCES = {
    "TIMESERIES_FRESHNESS": "freshness",
    "Automation": "build",
    "AutomationSettings": "settings",
    "build_automation": "build",
    "with_timeseries_freshness": "freshness",
}

__all__ = sorted(_SOURCES)
__getattr__ = lazy_names(__name__, _SOURCES)
