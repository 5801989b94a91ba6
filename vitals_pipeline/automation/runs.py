"""What a run was about and why it failed, read from the Dagster instance.

Shared by the failure alert and `vitals status`. A run's site and window come from its tags
(schedule and catch-up runs carry them) or, for runs launched by hand, from its asset selection
and partition tags.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import dagster as dg
from dagster import DagsterEventType

from vitals_pipeline.windows import window_for_keys

SITE_TAG = "vitals/site"  # the site's schema name (the asset key prefix)
TRIGGER_TAG = "vitals/trigger"  # "schedule" | "catchup"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"

MAX_ERROR_CHARS = 1500


def run_sites(run: dg.DagsterRun) -> list[str]:
    """The sites (schema names) a run worked on."""
    if run.tags.get(SITE_TAG):
        return [run.tags[SITE_TAG]]
    keys: Iterable[dg.AssetKey] = run.asset_selection or ()
    return sorted({key.path[0] for key in keys if len(key.path) > 1})


def run_partition_range(run: dg.DagsterRun) -> tuple[str, str] | None:
    """(first, last) partition key of a run, or None for an unpartitioned run."""
    first, last = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    if first and last:
        return first, last
    key = run.tags.get(PARTITION_TAG)
    return (key, key) if key else None


def run_window_text(run: dg.DagsterRun) -> str:
    """`[2026-03-09-10:00, 2026-03-09-10:15)` (UTC, end excluded) for a run of 5-minute
    timeseries partitions, `partitions <first>...<last>` for other partitioned assets (hours,
    days), or 'no partition'."""
    keys = run_partition_range(run)
    if keys is None:
        return "no partition"
    selection = run.asset_selection or ()
    five_minute = run.job_name.endswith("_timeseries") if not selection else all(
        key.path[-1] == "timeseries" for key in selection
    )
    if five_minute:
        try:
            return str(window_for_keys(*keys))
        except ValueError:
            pass
    return f"partitions {keys[0]}...{keys[1]}"


def redact(text: str) -> str:
    """Replace the ACE key (and a webhook URL) with *** should an error message carry them."""
    for name in ("ACE_API_KEY", "VITALS_ALERT_WEBHOOK_URL"):
        secret = os.environ.get(name, "").strip()
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _error_chain(error) -> str:
    """`Top message <- cause <- cause`, each on its first line, without the framework wrapper."""
    parts = []
    depth = 0
    while error is not None and depth < 4:
        message = (error.message or "").strip()
        first_line = message.splitlines()[0] if message else ""
        # Dagster's wrapper around the step's own exception says nothing of its own.
        if first_line and "DagsterExecutionStepExecutionError" not in first_line.split(":")[0]:
            parts.append(first_line)
        error = error.cause
        depth += 1
    return " <- ".join(parts)


def run_errors(instance: dg.DagsterInstance, run_id: str, limit: int = 5) -> list[str]:
    """The error text of a failed run: one line per failed step (a Failure's description, else the
    exception and its causes), or the run failure's message when no step failed (a crashed run
    worker, a run the monitor gave up on). Secrets are redacted; each line is bounded."""
    errors: list[str] = []
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.STEP_FAILURE, limit=limit
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event else None
        text = ""
        if data is not None and getattr(data, "user_failure_data", None) is not None:
            text = data.user_failure_data.description or ""
        if not text and data is not None and getattr(data, "error", None) is not None:
            text = _error_chain(data.error)
        if text:
            step = event.step_key if event else None
            errors.append(_bounded(f"{step}: {text}" if step else text))
    if errors:
        return errors
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.RUN_FAILURE, limit=1
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event else None
        text = _error_chain(data.error) if data is not None and getattr(data, "error", None) else ""
        errors.append(_bounded(text or (event.message if event else "") or "run failed"))
    return errors


def _bounded(text: str) -> str:
    text = redact(" ".join(text.split()))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
