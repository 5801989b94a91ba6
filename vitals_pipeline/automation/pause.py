"""Sites an operator has paused (a building offline for works): the automation leaves them alone.

The paused set lives in the Dagster instance, so the daemon, the webserver, `vitals` commands and
every host of a PostgreSQL deployment see the same set. It is kept as Dagster dynamic partitions
named `vitals_paused_sites` (the instance's public, shared set-of-strings API), one key per paused
site's schema name. Pause and resume from the CLI (`vitals pause SITE`, `vitals resume SITE`) or
from the UI (the `vitals_pause_site` / `vitals_resume_site` jobs in the Launchpad).

A paused site gets no scheduled and no catch-up runs; a run asked for by hand still runs.
"""


from collections.abc import Iterable

import dagster as dg

from vitals_pipeline.storage.names import schema_name

PAUSED_SITES = "vitals_paused_sites"


def paused_sites(instance: dg.DagsterInstance) -> set[str]:
    """The schema names of the paused sites."""
    return set(instance.get_dynamic_partitions(PAUSED_SITES))


def pause_sites(instance: dg.DagsterInstance, sites: Iterable[str]) -> list[str]:
    """Pause `sites` (names or schema names); returns the schema names newly paused."""
    wanted = [schema_name(site) for site in sites]
    already = paused_sites(instance)
    new = [slug for slug in dict.fromkeys(wanted) if slug not in already]
    if new:
        instance.add_dynamic_partitions(PAUSED_SITES, new)
    return new


def resume_sites(instance: dg.DagsterInstance, sites: Iterable[str]) -> list[str]:
    """Resume `sites`; returns the schema names that were paused."""
    already = paused_sites(instance)
    resumed = []
    for slug in dict.fromkeys(schema_name(site) for site in sites):
        if slug in already:
            instance.delete_dynamic_partition(PAUSED_SITES, slug)
            resumed.append(slug)
    return resumed


class SiteConfig(dg.Config):
    site: str
    reason: str = ""


def build_pause_jobs(sites: Iterable[str]) -> list[dg.JobDefinition]:
    """`vitals_pause_site` / `vitals_resume_site`: the same switch from the UI's Launchpad. Their
    runs are the record of who paused what, when and why."""
    known = {schema_name(site): site for site in sites}

    def check(site: str) -> str:
        slug = schema_name(site)
        if slug not in known:
            raise dg.Failure(
                description=f"{site!r} is not a configured site (ACE_SITES has: "
                f"{', '.join(sorted(known)) or 'none'})",
                allow_retries=False,
            )
        return slug

    @dg.op(name="pause_site")
    def pause_op(context: dg.OpExecutionContext, config: SiteConfig) -> None:
        slug = check(config.site)
        pause_sites(context.instance, [slug])
        context.log.info(f"site {slug} paused" + (f": {config.reason}" if config.reason else ""))

    @dg.op(name="resume_site")
    def resume_op(context: dg.OpExecutionContext, config: SiteConfig) -> None:
        slug = check(config.site)
        resume_sites(context.instance, [slug])
        context.log.info(f"site {slug} resumed" + (f": {config.reason}" if config.reason else ""))

    @dg.job(name="vitals_pause_site", description="Pause one site's scheduled and catch-up runs.")
    def pause_job():
        pause_op()

    @dg.job(name="vitals_resume_site", description="Resume a paused site.")
    def resume_job():
        resume_op()

    return [pause_job, resume_job]
