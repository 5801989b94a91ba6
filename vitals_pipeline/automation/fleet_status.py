"""`fleet/status` in the UI: which buildings are behind, at a glance, the same answer as
`vitals status`.

An observable asset of the `fleet` group: the `vitals_fleet_status` sensor runs `vitals status`'s
own collection (status.collect_status, the instance only) every few minutes and records an
observation of `fleet/status` whose metadata the asset page shows and plots: how many sites are
healthy, degraded, down and paused, the largest lag, and a table of the sites that are not
healthy, the furthest behind first, with why. Per site, each `<site>/timeseries` also carries a
freshness policy (the catalog's freshness column), failing when no partition was stored for 15
minutes: the threshold at which `vitals status` calls a site degraded.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings

FLEET_STATUS_KEY = dg.AssetKey(["fleet", "status"])
FLEET_STATUS_SENSOR = "vitals_fleet_status"
STATUS_INTERVAL_SECONDS = 300  # a tick period: the idle daemon at 300 sites stays under 10 % of a core
SITES_SHOWN = 25


def fleet_status_spec() -> dg.AssetSpec:
    return dg.AssetSpec(
        FLEET_STATUS_KEY,
        group_name="fleet",
        description=(
            "Which sites are behind: healthy / degraded / down / paused counts and the sites that "
            "are not healthy, furthest behind first (the same as `vitals status`), observed every "
            f"{STATUS_INTERVAL_SECONDS // 60} minutes."
        ),
    )


def status_metadata(report: dict) -> dict:
    """The observation's metadata from a `collect_status` report."""
    from vitals_pipeline.status import DEGRADED, DOWN, HEALTHY, PAUSED

    fleet = report["fleet"]
    behind = sorted(
        (s for s in report["sites"] if s["health"] in (DEGRADED, DOWN)),
        key=lambda s: (-(s.get("lag_minutes") if s.get("lag_minutes") is not None else 1e9), s["site"]),
    )
    lags = [s["lag_minutes"] for s in report["sites"] if s.get("lag_minutes") is not None and s["health"] != PAUSED]
    lines = ["| site | health | newest partition (UTC) | lag min | why |", "|---|---|---|---|---|"]
    for site in behind[:SITES_SHOWN]:
        lag = "-" if site.get("lag_minutes") is None else f"{site['lag_minutes']:.0f}"
        why = "; ".join(site.get("reasons", []))[:200].replace("|", "\\|")
        lines.append(f"| {site['site']} | {site['health']} | {site.get('newest_partition') or '-'} | {lag} | {why} |")
    if len(behind) > SITES_SHOWN:
        lines.append(f"| ... {len(behind) - SITES_SHOWN} more | | | | |")
    paused = [s["site"] for s in report["sites"] if s["health"] == PAUSED]
    metadata = {
        "health": report["health"],
        "sites": fleet["sites"],
        "healthy": fleet[HEALTHY],
        "degraded": fleet[DEGRADED],
        "down": fleet[DOWN],
        "paused": fleet[PAUSED],
        "max_lag_minutes": round(max(lags), 1) if lags else None,
        "sites_behind": dg.MetadataValue.md("\n".join(lines) if behind else "every site is current"),
    }
    if paused:
        metadata["paused_sites"] = ", ".join(paused[:50])
    return {k: v for k, v in metadata.items() if v is not None}


def build_fleet_status_sensor(settings: Settings, automation: AutomationSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name=FLEET_STATUS_SENSOR,
        minimum_interval_seconds=STATUS_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Observes fleet/status: which sites are behind (the same as `vitals status`).",
    )
    def vitals_fleet_status(context: dg.SensorEvaluationContext):
        from vitals_pipeline.status import Thresholds, collect_status

        report = collect_status(
            context.instance, settings, Thresholds.from_settings(automation),
            now=datetime.now(UTC), read_duckdb=False,
        )
        return dg.SensorResult(
            asset_events=[dg.AssetObservation(asset_key=FLEET_STATUS_KEY, metadata=status_metadata(report))]
        )

    return vitals_fleet_status

