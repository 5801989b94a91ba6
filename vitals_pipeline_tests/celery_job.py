"""The fleet job as a reconstructable target for runs on the Celery executor in the tests.

A run on the Celery executor names its job by where to rebuild it; each worker rebuilds it from
that, with its own environment (which must have the same sites and shard size as the run's). A
deployment names `vitals_pipeline.definitions` (the code location); a test builds the definitions
from the environment of the moment instead (`defs` of an already imported module may have been
built for another test's sites), hence this function. It imports nothing of the tests.
"""

from __future__ import annotations

import dagster as dg


def fleet_job() -> dg.JobDefinition:
    from vitals_pipeline.automation.jobs import FLEET_JOB
    from vitals_pipeline.config import Settings
    from vitals_pipeline.definitions import build_definitions

    return build_definitions(Settings.from_env()).resolve_job_def(FLEET_JOB)
