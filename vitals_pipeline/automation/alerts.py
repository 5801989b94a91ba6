"""Failure alerts: every failed run of this code location is logged and, when
VITALS_ALERT_WEBHOOK_URL is set, posted as JSON with a Slack-compatible `text` field.

The message names the site, the window (partition range, UTC), the error and a link to the run in
the UI. It never carries the ACE key: the error text is redacted before it leaves the process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import dagster as dg
import httpx

from vitals_pipeline.automation.runs import (
    redact,
    run_errors,
    run_partition_range,
    run_sites,
    run_window_text,
)
from vitals_pipeline.automation.settings import AutomationSettings

ALERT_SENSOR_NAME = "vitals_failure_alert"
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT_SECONDS = 10.0

log = logging.getLogger(__name__)


class AlertDeliveryError(RuntimeError):
    """The webhook did not accept the alert after a few attempts."""


@dataclass(frozen=True)
class FailureAlert:
    run_id: str
    job_name: str
    sites: list[str]
    window: str
    partition_range: tuple[str, str] | None
    errors: list[str]
    run_url: str

    @property
    def text(self) -> str:
        site = ", ".join(self.sites) or "unknown site"
        error = " | ".join(self.errors) or "no error text recorded (see the run's logs)"
        return redact(
            f":rotating_light: vitals-pipeline run failed for site {site}, window {self.window} "
            f"UTC.\nError: {error}\nRun: {self.run_url}"
        )

    def payload(self) -> dict:
        """The JSON body: Slack reads `text`; the other fields are for any other receiver."""
        return {
            "text": self.text,
            "run_id": self.run_id,
            "job": self.job_name,
            "sites": self.sites,
            "window": self.window,
            "partition_range": list(self.partition_range) if self.partition_range else None,
            "errors": self.errors,
            "run_url": self.run_url,
        }


def describe_failure(instance: dg.DagsterInstance, run: dg.DagsterRun, ui_url: str) -> FailureAlert:
    return FailureAlert(
        run_id=run.run_id,
        job_name=run.job_name,
        sites=run_sites(run),
        window=run_window_text(run),
        partition_range=run_partition_range(run),
        errors=run_errors(instance, run.run_id, limit=3),
        run_url=f"{ui_url.rstrip('/')}/runs/{run.run_id}",
    )


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


def build_failure_alert_sensor(automation: AutomationSettings) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=ALERT_SENSOR_NAME,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Logs every failed run of this code location and, when VITALS_ALERT_WEBHOOK_URL is "
            "set, posts it there (JSON, Slack-compatible `text`): site, window, error, run link."
        ),
    )
    def failure_alert(context: dg.RunFailureSensorContext) -> None:
        alert = describe_failure(context.instance, context.dagster_run, automation.ui_url)
        context.log.error(alert.text)
        if automation.alert_webhook_url:
            post_alert(automation.alert_webhook_url, alert.payload())
            context.log.info(f"alert for run {alert.run_id} delivered to the webhook")

    return failure_alert
