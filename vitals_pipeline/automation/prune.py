"""The daily retention run: `vitals_prune` at 03:17 UTC (storage/retention.py says what it keeps).

On by default with VITALS_RETENTION_DAYS=14: a fleet's instance then stops growing after two
weeks instead of growing by the gigabyte every month. VITALS_RETENTION_DAYS=0 keeps everything
(the schedule then skips). The same from the command line: `vitals prune --keep-days N`.
"""

from datetime import timedelta

import dagster as dg

from vitals_pipeline.automation.settings import AutomationSettings

PRUNE_JOB = "vitals_prune"
PRUNE_CRON = "17 3 * * *"


class PruneConfig(dg.Config):
    keep_days: int = 14
    vacuum: bool = False


def build_prune(automation: AutomationSettings) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    @dg.op(name="prune_instance")
    def prune_op(context: dg.OpExecutionContext, config: PruneConfig) -> None:
        # Imported here: it pulls in SQLAlchemy (~0.15 s), which loading the definitions (every
        # code server and run) does not need.
        from vitals_pipeline.storage.retention import prune_instance

        report = prune_instance(
            context.instance, timedelta(days=config.keep_days), vacuum=config.vacuum
        )
        context.log.info(report.summary())

    @dg.job(
        name=PRUNE_JOB,
        description="Drop what the partition status does not need from the Dagster instance: "
        "superseded materializations, old check history, old runs' logs (run records stay).",
    )
    def prune_job():
        prune_op()

    @dg.schedule(
        name="vitals_prune_schedule",
        cron_schedule=PRUNE_CRON,
        execution_timezone="UTC",
        job=prune_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Daily retention of the instance: {automation.retention_days} days "
        "(VITALS_RETENTION_DAYS; 0 keeps everything).",
    )
    def prune_schedule(context: dg.ScheduleEvaluationContext):
        if automation.retention_days == 0:
            return dg.SkipReason("VITALS_RETENTION_DAYS=0: the instance keeps everything")
        return dg.RunRequest(
            run_key=None,
            run_config={"ops": {"prune_instance": {"config": {"keep_days": automation.retention_days}}}},
        )

    return prune_job, prune_schedule
