"""`vitals status`: how the pipeline is doing, from the Dagster instance and the DuckDB file.

The replacement for the old Worker's `/health`, `/status` and `/stats`. For the fleet: how many
sites are healthy, degraded, down or paused. Per site: the newest materialized partition and its
lag, missing and failed partitions of the last 24 h, its last run and, when that run failed for
this site, the site's own error (a fleet run fails when any site does), check results; then the
DuckDB figures. Exit code 0 healthy, 1 degraded, 2 down (paused sites do not count).

Every instance query is bounded: partition keys are formatted for the 24 h window (288 keys), never
listed from the partitions definition, and runs are read a few at a time. DuckDB is opened
read-only, briefly, after the instance work; a writer holding the file is waited for a bounded time
and then reported as "busy".
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import DagsterEventType

from vitals_pipeline.assets.keys import five_minute_partitions, timeseries_key
from vitals_pipeline.automation.alerts import run_outcomes
from vitals_pipeline.automation.gaps import catchup_window, find_gaps
from vitals_pipeline.automation.pause import paused_sites
from vitals_pipeline.automation.runs import (
    TRIGGER_TAG,
    run_partition_range,
    run_sites,
    run_window_text,
)
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.windows import PARTITION, Window, floor_to_partition, partition_key, partition_start

HEALTHY, DEGRADED, DOWN, PAUSED = "healthy", "degraded", "down", "paused"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}
_RANK = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}
STATUS_HOURS = 24
DEFAULT_DUCKDB_WAIT_SECONDS = 5.0
GAPS_SHOWN = 10


@dataclass(frozen=True)
class Thresholds:
    degraded_minutes: int
    down_minutes: int

    @classmethod
    def from_settings(cls, automation: AutomationSettings) -> Thresholds:
        return cls(automation.status_degraded_minutes, automation.status_down_minutes)


# --------------------------------------------------------------------------------------------
# Collecting


def collect_status(
    instance: dg.DagsterInstance,
    settings: Settings,
    thresholds: Thresholds,
    *,
    now: datetime | None = None,
    duckdb_wait_seconds: float = DEFAULT_DUCKDB_WAIT_SECONDS,
    check_keys: dict[str, list[dg.AssetCheckKey]] | None = None,
    read_duckdb: bool = True,
) -> dict[str, Any]:
    """The whole report as plain data (what `--json` prints)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    partitions_def = five_minute_partitions(settings)
    paused = paused_sites(instance)
    keys = [timeseries_key(site) for site in settings.sites]
    records = {r.asset_entry.asset_key: r for r in instance.get_asset_records(keys)}
    all_checks = [key for site in settings.sites for key in (check_keys or {}).get(site, [])]
    latest_checks = (
        instance.event_log_storage.get_latest_asset_check_execution_by_key(all_checks)
        if all_checks
        else {}
    )
    runs = _RunCache(instance)
    sites = []
    for site in settings.sites:
        try:
            report = _site_status(
                instance,
                site,
                settings,
                partitions_def,
                thresholds,
                now=now,
                record=records.get(timeseries_key(site)),
                paused=schema_name(site) in paused,
                runs=runs,
                checks=_check_results((check_keys or {}).get(site, []), latest_checks),
            )
        except Exception as exc:  # noqa: BLE001 - one unreadable site must not hide the others
            report = {
                "site": site,
                "health": DOWN,
                "reasons": [f"could not read the instance: {type(exc).__name__}: {exc}"],
            }
        sites.append(report)
    duckdb_report = (
        duckdb_figures(settings.duckdb_path, settings.sites, duckdb_wait_seconds)
        if read_duckdb
        else {"path": str(Path(settings.duckdb_path).resolve()), "state": "not read"}
    )
    counted = [s["health"] for s in sites if s["health"] != PAUSED]
    overall = max(counted, key=_RANK.__getitem__, default=HEALTHY if sites else DOWN)
    return {
        "now": now.isoformat(),
        "health": overall,
        "exit_code": EXIT_CODES[overall],
        "thresholds": {
            "degraded_lag_minutes": thresholds.degraded_minutes,
            "down_lag_minutes": thresholds.down_minutes,
        },
        "fleet": {
            "sites": len(sites),
            **{state: sum(1 for s in sites if s["health"] == state) for state in (HEALTHY, DEGRADED, DOWN, PAUSED)},
        },
        "sites": sites,
        "duckdb": duckdb_report,
    }


class _RunCache:
    """Run records and per-site outcomes, read once per run (a fleet run is every site's)."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.records: dict[str, dg.RunRecord | None] = {}
        self.outcomes: dict[str, dict[str, str | None]] = {}

    def record(self, run_id: str) -> dg.RunRecord | None:
        if run_id not in self.records:
            self.records[run_id] = self.instance.get_run_record_by_id(run_id)
        return self.records[run_id]

    def site_error(self, run: dg.DagsterRun, asset: str) -> str | None:
        if run.status != dg.DagsterRunStatus.FAILURE:
            return None
        if run.run_id not in self.outcomes:
            self.outcomes[run.run_id] = run_outcomes(self.instance, run)
        return self.outcomes[run.run_id].get(asset)


def newest_partition(
    instance: dg.DagsterInstance, site: str, settings: Settings, now: datetime, record=None
) -> str | None:
    """The newest materialized 5-minute partition of the site among the last 24 h of closed
    partitions (a re-fetch that failed does not unmake the data already stored)."""
    asset_key = timeseries_key(site)
    closed_end = floor_to_partition(now)
    recent_start = max(closed_end - timedelta(hours=STATUS_HOURS), settings.partitions_start)
    newest: str | None = None
    if recent_start < closed_end:
        recent_keys = Window(recent_start, closed_end).partition_keys()
        materialized = instance.get_latest_storage_id_by_partition(
            asset_key, DagsterEventType.ASSET_MATERIALIZATION, set(recent_keys)
        )
        newest = max(materialized, default=None)
    entry = record.asset_entry if record else None
    if newest is None and entry is not None and entry.last_materialization is not None:
        event = entry.last_materialization.dagster_event
        newest = event.partition if event else None
    return newest


def lag_minutes(newest: str | None, now: datetime) -> float | None:
    """Minutes since the end of the newest materialized partition."""
    return (now - (partition_start(newest) + PARTITION)).total_seconds() / 60 if newest else None


def _site_status(
    instance: dg.DagsterInstance,
    site: str,
    settings: Settings,
    partitions_def: dg.PartitionsDefinition,
    thresholds: Thresholds,
    *,
    now: datetime,
    record,
    paused: bool,
    runs: _RunCache,
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    asset_key = timeseries_key(site)
    entry = record.asset_entry if record else None
    newest = newest_partition(instance, site, settings, now, record)
    lag = lag_minutes(newest, now)

    # Missing and failed: the catch-up sensor's window for 24 h (all but the newest closed
    # partition, which the schedule is on).
    window = catchup_window(now, STATUS_HOURS, settings.partitions_start)
    missing = failed = in_progress = 0
    gaps: list[str] = []
    if window is not None:
        keys = window.partition_keys()
        status = instance.get_status_by_partition(asset_key, keys, partitions_def) or {}
        for key in keys:
            state = status.get(key)
            if state is None:
                missing += 1
            elif state == dg.AssetPartitionStatus.FAILED:
                failed += 1
            elif state == dg.AssetPartitionStatus.IN_PROGRESS:
                in_progress += 1
        gaps = [
            f"{gap.first}...{gap.last}"
            for gap in find_gaps(
                keys, lambda k: status.get(k) in (None, dg.AssetPartitionStatus.FAILED), len(keys)
            )
        ]

    last_run = None
    last_run_id = (entry.last_planned_materialization_run_id or entry.last_run_id) if entry else None
    if last_run_id:
        run_record = runs.record(last_run_id)
        if run_record is not None:
            last_run = _run_summary(run_record)
            # A fleet run fails when any of its sites fails: what matters here is this site.
            error = runs.site_error(run_record.dagster_run, asset_key.to_user_string())
            last_run["site_status"] = "FAILURE" if error else (
                "SUCCESS" if run_record.dagster_run.status == dg.DagsterRunStatus.FAILURE
                else run_record.dagster_run.status.value
            )
            last_run["error"] = error

    report: dict[str, Any] = {
        "site": site,
        "asset": asset_key.to_user_string(),
        "paused": paused,
        "newest_partition": newest,
        "lag_minutes": round(lag, 1) if lag is not None else None,
        "window": (
            {"first": partition_key(window.start), "end": partition_key(window.end)} if window else None
        ),
        "missing_partitions": missing,
        "failed_partitions": failed,
        "in_progress_partitions": in_progress,
        "gaps": gaps[:GAPS_SHOWN],
        "gaps_total": len(gaps),
        "last_run": last_run,
        "checks": checks,
    }
    report["health"], report["reasons"] = _health(report, thresholds)
    return report


def _health(report: dict[str, Any], thresholds: Thresholds) -> tuple[str, list[str]]:
    if report.get("paused"):
        return PAUSED, ["paused (`vitals resume SITE` resumes it)"]
    lag = report["lag_minutes"]
    if lag is None:
        return DOWN, ["no partition has been materialized yet"]
    if lag > thresholds.down_minutes:
        return DOWN, [f"newest partition is {lag:.0f} min old (down above {thresholds.down_minutes} min)"]
    reasons = []
    if lag > thresholds.degraded_minutes:
        reasons.append(
            f"newest partition is {lag:.0f} min old (degraded above {thresholds.degraded_minutes} min)"
        )
    last = report["last_run"]
    if last and last.get("site_status") == "FAILURE":
        reasons.append(f"its last run ({last['run_id'][:8]}) failed for it: {last.get('error')}")
    if report["missing_partitions"] or report["failed_partitions"]:
        reasons.append(
            f"{report['missing_partitions']} missing and {report['failed_partitions']} failed "
            f"partitions in the last {STATUS_HOURS} h"
        )
    return (DEGRADED, reasons) if reasons else (HEALTHY, [])


def _run_summary(record: dg.RunRecord) -> dict[str, Any]:
    run = record.dagster_run
    start, end = record.start_time, record.end_time
    keys = run_partition_range(run)
    window = run_window_text(run)
    return {
        "run_id": run.run_id,
        "status": run.status.value,
        "trigger": run.tags.get(TRIGGER_TAG)
        or ("schedule" if run.tags.get("dagster/schedule_name") else "manual"),
        "sites": len(run_sites(run)),
        "window": window,
        # 5-minute partitions; None for runs of hourly or daily assets
        "partitions": _partition_count(keys) if window.startswith("[") else None,
        "started": _iso(start),
        "ended": _iso(end),
        "duration_seconds": round(end - start, 1) if start and end else None,
    }


def _partition_count(keys: tuple[str, str] | None) -> int | None:
    if keys is None:
        return None
    try:
        return int((partition_start(keys[1]) - partition_start(keys[0])) / PARTITION) + 1
    except ValueError:
        return None


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds") if timestamp else None


def _check_results(check_keys: Sequence[dg.AssetCheckKey], latest: dict) -> list[dict[str, Any]]:
    results = []
    for key in sorted(check_keys, key=lambda k: k.name):
        record = latest.get(key)
        if record is None:
            results.append({"check": key.name, "status": "never run"})
            continue
        evaluation = None
        if record.event is not None and record.event.dagster_event is not None:
            data = record.event.dagster_event.event_specific_data
            evaluation = data if hasattr(data, "passed") else None
        results.append(
            {
                "check": key.name,
                "status": record.status.value,
                "passed": evaluation.passed if evaluation else None,
                "severity": evaluation.severity.value if evaluation else None,
                "description": evaluation.description if evaluation else None,
                "partition": record.partition,
                "run_id": record.run_id,
                "time": _iso(record.create_timestamp),
            }
        )
    return results


# --------------------------------------------------------------------------------------------
# DuckDB


def duckdb_figures(path: str, sites: Sequence[str], wait_seconds: float) -> dict[str, Any]:
    """Rows, points and time range per site, and the file size, from a brief read-only connection.

    A run writing the file holds DuckDB's lock; this waits up to `wait_seconds` for it, then
    reports "busy" rather than failing.
    """
    import duckdb

    from vitals_pipeline.storage.summary import site_figures

    file = Path(path).resolve()
    report: dict[str, Any] = {"path": str(file)}
    if not file.exists():
        return {**report, "state": "absent"}
    report["size_bytes"] = file.stat().st_size
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(file), read_only=True)
            break
        except duckdb.Error as exc:
            if "lock" not in str(exc).lower():
                return {**report, "state": "error", "error": f"{type(exc).__name__}: {exc}"}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {
                    **report,
                    "state": "busy",
                    "detail": f"another process (a run writing?) holds the file; waited {wait_seconds:g} s",
                }
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)
    try:
        figures = {}
        for site in sites:
            f = site_figures(con, site)
            figures[site] = {
                "samples": f["samples"],
                "points": f["points"],
                "first_ts": f["first_ts"].isoformat() if f["first_ts"] else None,
                "last_ts": f["last_ts"].isoformat() if f["last_ts"] else None,
            }
    except duckdb.Error as exc:
        return {**report, "state": "error", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        con.close()
    return {**report, "state": "ok", "sites": figures}


# --------------------------------------------------------------------------------------------
# Rendering


def render_text(report: dict[str, Any]) -> str:
    lines = [
        f"vitals status: {report['health'].upper()} (exit {report['exit_code']}) at "
        f"{report['now'][:16].replace('T', ' ')} UTC  (degraded: lag > "
        f"{report['thresholds']['degraded_lag_minutes']} min or missing/failed partitions or last "
        f"run failed; down: lag > {report['thresholds']['down_lag_minutes']} min)",
        f"sites: {report['fleet']['sites']} ({report['fleet'][HEALTHY]} healthy, "
        f"{report['fleet'][DEGRADED]} degraded, {report['fleet'][DOWN]} down, "
        f"{report['fleet'][PAUSED]} paused)",
        "",
    ]
    header = (
        f"{'site':<16} {'health':<9} {'newest (UTC)':<17} {'lag':>7} {'missing':>8} "
        f"{'failed':>7} {'running':>8}  last run"
    )
    lines.append(header)
    for s in report["sites"]:
        if "asset" not in s:
            lines.append(f"{s['site']:<16} {s['health']:<9} {'; '.join(s['reasons'])}")
            continue
        newest = s["newest_partition"] or "-"
        lag = f"{s['lag_minutes']:.0f} min" if s["lag_minutes"] is not None else "-"
        last = s["last_run"]
        last_text = (
            f"{last['site_status']} {last['trigger']} {(last['ended'] or last['started'] or '')[11:16]}"
            f"{_duration(last['duration_seconds'])}"
            if last
            else "-"
        )
        lines.append(
            f"{s['site']:<16} {s['health']:<9} {newest:<17} {lag:>7} {s['missing_partitions']:>8} "
            f"{s['failed_partitions']:>7} {s['in_progress_partitions']:>8}  {last_text}"
        )
    for s in report["sites"]:
        if "asset" not in s or s["health"] == HEALTHY:
            continue
        lines.append("")
        lines.append(f"{s['site']}:")
        for reason in s["reasons"]:
            lines.append(f"  ! {reason}")
        if s["gaps"]:
            more = f" (+{s['gaps_total'] - len(s['gaps'])} more)" if s["gaps_total"] > len(s["gaps"]) else ""
            lines.append(f"  gaps (24 h): {', '.join(s['gaps'])}{more}")
        failing = [c for c in s["checks"] if c.get("passed") is False]
        if failing:
            lines.append("  checks: " + ", ".join(f"{c['check']} ({c['severity']})" for c in failing))
    db = report["duckdb"]
    lines.append("")
    size = f" ({db['size_bytes'] / 1e6:.1f} MB)" if "size_bytes" in db else ""
    problem = f" ({db.get('detail') or db.get('error')})" if db["state"] in ("busy", "error") else ""
    lines.append(f"DuckDB {db['path']}{size}: {db['state']}{problem}")
    for site, f in (db.get("sites") or {}).items():
        span = (
            f"{f['first_ts'][:16].replace('T', ' ')} .. {f['last_ts'][:16].replace('T', ' ')} UTC"
            if f["first_ts"]
            else "no samples"
        )
        lines.append(f"  {site}: {f['samples']:,} samples from {f['points']:,} points, {span}")
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    return f" ({seconds:.1f} s)" if seconds is not None else ""


# --------------------------------------------------------------------------------------------
# Entry point (the `vitals status` command)


def site_check_keys(settings: Settings) -> dict[str, list[dg.AssetCheckKey]]:
    """The asset checks of each site's timeseries asset, as definitions.py defines them (all of
    checks/catalog.py, unless VITALS_CHECKS turns the quality layer off), without building the
    definitions: that would load the whole pipeline for a few names."""
    from vitals_pipeline.checks.catalog import CHECK_NAMES
    from vitals_pipeline.checks.thresholds import QualityThresholds

    names = CHECK_NAMES if QualityThresholds.from_env().enabled else ()
    return {
        site: [dg.AssetCheckKey(timeseries_key(site), name) for name in names]
        for site in settings.sites
    }


def run_status(*, as_json: bool, duckdb_wait_seconds: float, echo=print) -> int:
    """Collect, print, return the exit code. Errors become a message and exit code 2, never a
    traceback."""
    from vitals_pipeline.config import ConfigError

    try:
        settings = Settings.from_env()
        thresholds = Thresholds.from_settings(AutomationSettings.from_env())
    except ConfigError as exc:
        echo(_error_output(as_json, f"configuration: {exc}"))
        return EXIT_CODES[DOWN]
    try:
        check_keys = site_check_keys(settings)
    except Exception:  # noqa: BLE001 - a broken definition must not hide the rest of the status
        check_keys = {}
    try:
        with dg.DagsterInstance.get() as instance:
            report = collect_status(
                instance,
                settings,
                thresholds,
                duckdb_wait_seconds=duckdb_wait_seconds,
                check_keys=check_keys,
            )
    except Exception as exc:  # noqa: BLE001 - a message and exit code 2, never a traceback
        echo(_error_output(as_json, f"could not read the Dagster instance: {type(exc).__name__}: {exc}"))
        return EXIT_CODES[DOWN]
    echo(json.dumps(report, indent=2, default=str) if as_json else render_text(report))
    return report["exit_code"]


def _error_output(as_json: bool, message: str) -> str:
    if as_json:
        return json.dumps({"health": DOWN, "exit_code": EXIT_CODES[DOWN], "error": message})
    return f"vitals status: DOWN (exit 2): {message}"
