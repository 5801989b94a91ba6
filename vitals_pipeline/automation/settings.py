"""Settings of the automation (schedule, catch-up, alerts) and of `vitals status`, read once from
the environment and checked up front, in the style of `config.py`: every error names the variable,
says what was wrong and what to set instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from vitals_pipeline.config import ConfigError

# Four minutes of grace after every 5-minute boundary is too much; one is enough for the
# scrapes of the closing partition to reach ACE. `1-59/5`: 00:01, 00:06, ... UTC.
DEFAULT_SCHEDULE_CRON = "1-59/5 * * * *"
# Eight days: back to the first partition of a new deployment with the default
# VITALS_PARTITIONS_START (7 days before today's midnight), so that no partition stays missing.
MAX_CATCHUP_HOURS = 8 * 24  # 2,304 partitions: still a handful of queries per site and tick
DEFAULT_CATCHUP_HOURS = MAX_CATCHUP_HOURS
DEFAULT_CATCHUP_INTERVAL_SECONDS = 120
DEFAULT_UI_URL = "http://127.0.0.1:3000"
DEFAULT_STATUS_DEGRADED_MINUTES = 15
DEFAULT_STATUS_DOWN_MINUTES = 60
DEFAULT_RETENTION_DAYS = 14


@dataclass(frozen=True)
class AutomationSettings:
    schedule_cron: str
    catchup_hours: int
    catchup_interval_seconds: int
    alert_webhook_url: str | None  # may carry a token (Slack): never logged in full
    ui_url: str
    status_degraded_minutes: int
    status_down_minutes: int
    retention_days: int = DEFAULT_RETENTION_DAYS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AutomationSettings:
        env = os.environ if environ is None else environ
        degraded = _positive_int(env, "VITALS_STATUS_DEGRADED_MINUTES", DEFAULT_STATUS_DEGRADED_MINUTES)
        down = _positive_int(env, "VITALS_STATUS_DOWN_MINUTES", DEFAULT_STATUS_DOWN_MINUTES)
        if down <= degraded:
            raise ConfigError(
                f"VITALS_STATUS_DOWN_MINUTES={down} must be greater than "
                f"VITALS_STATUS_DEGRADED_MINUTES={degraded} (down is the worse state)"
            )
        hours = _positive_int(env, "VITALS_CATCHUP_HOURS", DEFAULT_CATCHUP_HOURS)
        if hours > MAX_CATCHUP_HOURS:
            raise ConfigError(
                f"VITALS_CATCHUP_HOURS={hours} is more than {MAX_CATCHUP_HOURS} (8 days); older gaps "
                "are a backfill: launch one from the asset page or with `dagster asset materialize "
                "--partition-range`"
            )
        interval = _positive_int(
            env, "VITALS_CATCHUP_INTERVAL_SECONDS", DEFAULT_CATCHUP_INTERVAL_SECONDS
        )
        if interval < 5:
            raise ConfigError(
                f"VITALS_CATCHUP_INTERVAL_SECONDS={interval} is below 5: the sensor daemon does not "
                "evaluate sensors more often than every 5 seconds"
            )
        webhook = (env.get("VITALS_ALERT_WEBHOOK_URL") or "").strip() or None
        if webhook is not None:
            # The value is not echoed: a webhook URL usually embeds its token.
            _http_url("VITALS_ALERT_WEBHOOK_URL", webhook, "https://hooks.slack.com/services/...", echo=False)
        return cls(
            schedule_cron=parse_cron(env.get("VITALS_SCHEDULE_CRON")),
            catchup_hours=hours,
            catchup_interval_seconds=interval,
            alert_webhook_url=webhook,
            ui_url=_http_url("VITALS_UI_URL", env.get("VITALS_UI_URL") or DEFAULT_UI_URL, DEFAULT_UI_URL),
            status_degraded_minutes=degraded,
            status_down_minutes=down,
            retention_days=_retention_days(env.get("VITALS_RETENTION_DAYS")),
        )


def parse_cron(value: str | None) -> str:
    if value is None or not value.strip():
        return DEFAULT_SCHEDULE_CRON
    cron = " ".join(value.split())
    if not _is_cron(cron):
        raise ConfigError(
            f"VITALS_SCHEDULE_CRON={value!r} is not a cron expression (5 fields, UTC); "
            f"the default is {DEFAULT_SCHEDULE_CRON!r}"
        )
    return cron


def _retention_days(value: str | None) -> int:
    if value is None or not value.strip():
        return DEFAULT_RETENTION_DAYS
    try:
        days = int(value)
    except ValueError:
        raise ConfigError(f"VITALS_RETENTION_DAYS={value!r} is not a whole number of days") from None
    if days < 0:
        raise ConfigError(
            f"VITALS_RETENTION_DAYS={value!r} must be 0 (keep everything) or a number of days "
            f"(default {DEFAULT_RETENTION_DAYS})"
        )
    return days


def _is_cron(cron: str) -> bool:
    """Whether Dagster takes `cron` as a schedule's cron string (it validates on definition)."""
    if len(cron.split()) != 5:
        return False
    try:
        dg.ScheduleDefinition(name="cron_probe", cron_schedule=cron, job_name="cron_probe")
    except dg.DagsterInvalidDefinitionError:
        return False
    return True


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number (default {default})") from None
    if number <= 0:
        raise ConfigError(f"{name}={value!r} must be positive (default {default})")
    return number


def _http_url(name: str, value: str, example: str, echo: bool = True) -> str:
    url = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        shown = f"{name}={value!r}" if echo else name
        raise ConfigError(f"{shown} is not an http(s) URL; expected e.g. {example}")
    return url
