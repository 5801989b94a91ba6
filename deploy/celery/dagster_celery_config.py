"""Settings of the Celery workers that execute this project's steps (VITALS_EXECUTOR=celery).

`celery -A dagster_celery.app worker` reads a module named `dagster_celery_config` when one is
importable (dagster_celery.make_app): put this folder on the worker's PYTHONPATH. Everything comes
from the worker's environment, so the broker's password is written into no file (unlike
`dagster-celery worker start -y`, which writes the resolved settings under DAGSTER_HOME).

    VITALS_CELERY_BROKER_URL                  redis://:PASSWORD@redis-host:6379/0 (required): the
                                              queue of steps and the store of their results; the
                                              runs' VITALS_CELERY_BROKER_URL must be the same
    VITALS_CELERY_VISIBILITY_TIMEOUT_SECONDS  default 3600: a step that a worker took and did not
                                              finish (the worker died) is handed to another worker
                                              after this long; must exceed the longest step
"""

from __future__ import annotations

import os

DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600


def _visibility_timeout() -> int:
    value = os.environ.get("VITALS_CELERY_VISIBILITY_TIMEOUT_SECONDS") or str(
        DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    )
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 10:
        raise RuntimeError(
            f"VITALS_CELERY_VISIBILITY_TIMEOUT_SECONDS={value!r}: expected whole seconds, at least "
            f"10 and longer than the longest step (default {DEFAULT_VISIBILITY_TIMEOUT_SECONDS})"
        )
    return seconds


broker_url = os.environ.get("VITALS_CELERY_BROKER_URL")
if not broker_url:
    raise RuntimeError(
        "VITALS_CELERY_BROKER_URL is not set: set it to the Redis that the runs send their steps "
        "to (the same value as the runs' VITALS_CELERY_BROKER_URL), e.g. "
        "redis://:PASSWORD@redis-host:6379/0"
    )
result_backend = broker_url
broker_connection_retry_on_startup = True

# A step is acknowledged once it has finished, not when a worker takes it. A worker that dies
# mid-step (machine lost, kill -9, out of memory) leaves its step unacknowledged, and Redis hands
# it to another worker after the visibility timeout: the run goes on instead of waiting forever
# for a result that never comes (Celery's default acknowledges on receipt and loses the step).
# Re-running a step is safe: every store merges the step's window (no duplicate samples).
task_acks_late = True
task_reject_on_worker_lost = True
# One step at a time per worker process, none reserved behind it: a reserved step would wait for
# this worker while another stands idle.
worker_prefetch_multiplier = 1

_VISIBILITY_TIMEOUT = _visibility_timeout()
broker_transport_options = {
    "visibility_timeout": _VISIBILITY_TIMEOUT,
    # Look for abandoned steps every tenth of the timeout (at most every 60 s): Kombu's default
    # sweep runs once in 100 s.
    "unacked_restore_interval": max(1, min(60, _VISIBILITY_TIMEOUT // 10)),
    "unacked_restore_throttle": 1,
    # dagster_celery's defaults for sending (this dict replaces theirs).
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
