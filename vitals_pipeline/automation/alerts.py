"""Alerts that follow each site's state, not the runs: one when a site's asset starts failing (with
the error), one when it recovers. A site broken for a day pages once, not 288 times.

The `vitals_site_alerts` sensor reads the runs of this code location that finished since its last
tick, in order, and works out what each run did to each `<site>/<asset>` it was asked for:

- a successful run: each of them is healthy;
- a failed run: the sites its fleet step names (the step's `failed_sites` metadata, with each
  site's own error) are failing; with no such list (a crashed run, a per-site asset's step) every
  requested asset the run did not materialize is failing, with the run's error.

It keeps the failing ones in its cursor (bounded by the number of sites), logs every change and,
when VITALS_ALERT_WEBHOOK_URL is set, POSTs one message per tick that has changes:
`{"text", "started_failing": [{"site", "asset", "error", "window", "run_id", "run_url"}],
"recovered": [{"site", "asset", "failing_since", "failed_runs", "run_id", "run_url"}]}`
(`text` is Slack-compatible). Texts never carry the ACE key (redacted).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import dagster as dg
import httpx

from vitals_pipeline.automation.runs import redact, run_errors, run_window_text
from vitals_pipeline.automation.settings import AutomationSettings

ALERT_SENSOR_NAME = "vitals_site_alerts"
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT_SECONDS = 10.0
# Runs read per tick (the rest next tick, in order).
RUNS_PER_TICK = 100
# A fresh sensor looks this far back, not at the whole run history.
FIRST_LOOK_BACK = timedelta(minutes=15)
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
MAX_ERROR_CHARS = 500

log = logging.getLogger(__name__)


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept the alert after a few attempts."""


@dataclass
class Failing:
    since: float  # timestamp of the run that started the failure
    error: str
    runs: int = 1

    def to_json(self) -> dict:
        return {"since": self.since, "error": self.error, "runs": self.runs}


@dataclass
class AlertState:
    """The sensor's cursor: where it is in the run history, and what is failing."""

    updated_after: float
    seen: list[str] = field(default_factory=list)  # run ids already read at `updated_after`
    failing: dict[str, Failing] = field(default_factory=dict)  # "site/asset" -> since when, why

    @classmethod
    def from_cursor(cls, cursor: str | None, now: float) -> AlertState:
        if not cursor:
            return cls(updated_after=now - FIRST_LOOK_BACK.total_seconds())
        data = json.loads(cursor)
        return cls(
            updated_after=data["updated_after"],
            seen=data.get("seen", []),
            failing={k: Failing(**v) for k, v in data.get("failing", {}).items()},
        )

    def to_cursor(self) -> str:
        return json.dumps(
            {
                "updated_after": self.updated_after,
                "seen": self.seen,
                "failing": {k: v.to_json() for k, v in sorted(self.failing.items())},
            }
        )


@dataclass
class Change:
    key: str  # "site/asset"
    started: bool  # True: started failing; False: recovered
    run_id: str
    window: str
    error: str = ""
    since: float | None = None
    runs: int = 0

    @property
    def site(self) -> str:
        return self.key.split("/")[0]

    @property
    def asset(self) -> str:
        return self.key.split("/", 1)[1]


def run_outcomes(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, str | None]:
    """`site/asset` -> None (healthy) or the error, for each site asset the run was asked for."""
    keys = [key for key in _requested_assets(instance, run) if len(key.path) == 2]
    if not keys:
        return {}
    names = {key: "/".join(key.path) for key in keys}
    if run.status == dg.DagsterRunStatus.SUCCESS:
        return dict.fromkeys(names.values())
    failed: dict[str, str] = {}
    generic = False
    for record in instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=20
    ).records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event else None
        user = getattr(data, "user_failure_data", None)
        listed = user.metadata.get("failed_sites") if user is not None else None
        if listed is None:
            generic = True
            continue
        step = event.step_key or ""
        for entry in listed.value:
            for key, name in names.items():
                if key.path[0] == entry["site"] and key.path[-1] == step:
                    failed[name] = _bounded(entry["error"])
    outcomes: dict[str, str | None] = {name: failed.get(name) for name in names.values()}
    if generic or not failed:
        # The run failed as a whole (or a step without a site list): whatever it did not
        # materialize failed with the run's error.
        materialized = {
            "/".join(record.event_log_entry.dagster_event.asset_key.path)
            for record in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=100_000
            ).records
            if record.event_log_entry.dagster_event and record.event_log_entry.dagster_event.asset_key
        }
        error = " | ".join(run_errors(instance, run.run_id, limit=3)) or f"run {run.status.value.lower()}"
        for name in names.values():
            if name not in materialized and outcomes[name] is None:
                outcomes[name] = _bounded(error)
    return outcomes


def _requested_assets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[dg.AssetKey]:
    """The assets a run was asked for: its asset selection, or (a whole job launched without
    one) the assets of its execution plan."""
    if run.asset_selection:
        return set(run.asset_selection)
    if run.execution_plan_snapshot_id:
        snapshot = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
        if snapshot is not None and snapshot.asset_selection:
            return set(snapshot.asset_selection)
    return set()


def _bounded(text: str) -> str:
    text = redact(" ".join(str(text).split()))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def apply_run(state: AlertState, run: dg.DagsterRun, outcomes: dict[str, str | None], at: float) -> list[Change]:
    """Fold one run's outcomes into `state`; the changes it made."""
    changes = []
    window = run_window_text(run)
    for name, error in sorted(outcomes.items()):
        was = state.failing.get(name)
        if error is None:
            if was is not None:
                del state.failing[name]
                changes.append(Change(name, False, run.run_id, window, since=was.since, runs=was.runs))
        elif was is None:
            state.failing[name] = Failing(since=at, error=error)
            changes.append(Change(name, True, run.run_id, window, error=error))
        else:
            was.runs += 1
            was.error = error
    return changes


def alert_message(changes: list[Change], ui_url: str) -> dict:
    """The webhook body for one tick's changes."""
    def url(run_id: str) -> str:
        return f"{ui_url.rstrip('/')}/runs/{run_id}"

    started = [c for c in changes if c.started]
    recovered = [c for c in changes if not c.started]
    lines = []
    if started:
        lines.append(f":rotating_light: vitals-pipeline: {len(started)} site asset(s) started failing")
        lines += [f"- {c.key}, window {c.window} UTC: {redact(c.error)} ({url(c.run_id)})" for c in started[:20]]
        if len(started) > 20:
            lines.append(f"- ... and {len(started) - 20} more")
    if recovered:
        lines.append(f":white_check_mark: vitals-pipeline: {len(recovered)} site asset(s) recovered")
        lines += [
            f"- {c.key}: failing since {_utc(c.since)} UTC ({c.runs} failed runs), healthy in "
            f"{url(c.run_id)}"
            for c in recovered[:20]
        ]
        if len(recovered) > 20:
            lines.append(f"- ... and {len(recovered) - 20} more")
    return {
        "text": redact("\n".join(lines)),
        "started_failing": [
            {"site": c.site, "asset": c.asset, "error": redact(c.error), "window": c.window,
             "run_id": c.run_id, "run_url": url(c.run_id)}
            for c in started
        ],
        "recovered": [
            {"site": c.site, "asset": c.asset, "failing_since": _utc(c.since), "failed_runs": c.runs,
             "run_id": c.run_id, "run_url": url(c.run_id)}
            for c in recovered
        ],
    }


def _utc(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def post_alert(url: str, payload: dict, attempts: int = WEBHOOK_ATTEMPTS) -> None:
    """POST `payload` as JSON; retries connection errors and 5xx/429 with a short backoff."""
    host = urlsplit(url).hostname or "?"  # the path of a webhook URL is its secret
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}"
        else:
            if response.status_code < 300:
                return
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                break  # the receiver refuses this message: sending it again will not help
        if attempt < attempts:
            time.sleep(attempt)
    raise AlertDeliveryError(
        f"the alert webhook at {host} did not accept the alert ({problem}); check "
        "VITALS_ALERT_WEBHOOK_URL and that the receiver is up"
    )


def evaluate_alerts(
    instance: dg.DagsterInstance, cursor: str | None, now: float
) -> tuple[list[Change], AlertState]:
    """Read the runs finished since `cursor`; the changes of state and the new state."""
    state = AlertState.from_cursor(cursor, now)
    records = instance.get_run_records(
        dg.RunsFilter(
            statuses=FINISHED,
            updated_after=datetime.fromtimestamp(state.updated_after, UTC) - timedelta(seconds=1),
        ),
        order_by="update_timestamp",
        ascending=True,
        limit=RUNS_PER_TICK + len(state.seen),
    )
    changes: list[Change] = []
    processed = 0
    for record in records:
        updated = record.update_timestamp.timestamp()
        if updated < state.updated_after or (
            updated == state.updated_after and record.dagster_run.run_id in state.seen
        ):
            continue
        if processed >= RUNS_PER_TICK:
            break
        processed += 1
        outcomes = run_outcomes(instance, record.dagster_run)
        changes += apply_run(state, record.dagster_run, outcomes, record.create_timestamp.timestamp())
        if updated > state.updated_after:
            state.updated_after, state.seen = updated, []
        state.seen.append(record.dagster_run.run_id)
    return changes, state


def build_site_alert_sensor(automation: AutomationSettings) -> dg.SensorDefinition:
    @dg.sensor(
        name=ALERT_SENSOR_NAME,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Follows each site's assets through the finished runs: logs (and posts to "
            "VITALS_ALERT_WEBHOOK_URL, Slack-compatible) once when a site's asset starts failing, "
            "with the error and the run, and once when it recovers."
        ),
    )
    def vitals_site_alerts(context: dg.SensorEvaluationContext):
        changes, state = evaluate_alerts(context.instance, context.cursor, time.time())
        if changes:
            payload = alert_message(changes, automation.ui_url)
            for change in changes:
                if change.started:
                    context.log.error(redact(f"{change.key} started failing: {change.error}"))
                else:
                    context.log.info(f"{change.key} recovered")
            if automation.alert_webhook_url:
                # Raises when undeliverable: the tick fails (visible in the UI) and the cursor
                # stays, so the same changes are sent again next tick.
                post_alert(automation.alert_webhook_url, payload)
        context.update_cursor(state.to_cursor())
        if not changes:
            return dg.SkipReason(f"no change ({len(state.failing)} site asset(s) failing)")
        return None

    return vitals_site_alerts
