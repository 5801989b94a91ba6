"""`<site>/points` for every site: the configured points, one multi_asset for the fleet.

Units and collect intervals drive the quality checks, so a site's points are loaded by its first
timeseries run (assets/timeseries.py) and refreshed once an hour by a step of the fleet's tick
run (automation/schedules.py). One step refreshes every site, fetching them concurrently; a site
ACE refuses fails alone.
"""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from vitals_pipeline.ace.client import AceError
from vitals_pipeline.ace.parse import points_table
from vitals_pipeline.assets.fleet import SiteFailures, fetch_sites, output_name, selected_sites
from vitals_pipeline.assets.keys import points_key
from vitals_pipeline.config import Settings
from vitals_pipeline.resources import AceResource
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.storage.schema import POINTS_MERGE_KEYS
from vitals_pipeline.storage.warehouse import Warehouse


def build_points_asset(settings: Settings) -> dg.AssetsDefinition:
    sites = list(settings.sites)
    outs = {
        output_name(site, "points"): dg.AssetOut(
            key=points_key(site),
            group_name=schema_name(site),
            is_required=False,
            kinds={"duckdb"},
            tags={"site": schema_name(site)},
            metadata={"site": site, "schema": schema_name(site), "merge_keys": list(POINTS_MERGE_KEYS)},
            description=(
                f"The configured points of site {site!r} (table {schema_name(site)}.points): unit "
                "(BACnet engineering unit), collect interval, hisMode (sampled / cov), device, tags. "
                "Points no longer listed are kept."
            ),
        )
        for site in sites
    }

    @dg.multi_asset(name="points", outs=outs, can_subset=True, pool="duckdb")
    def points(
        context: dg.AssetExecutionContext, ace: AceResource, warehouse: Warehouse
    ) -> Iterator[dg.Output]:
        """The selected sites' configured points, fetched concurrently, stored site by site."""
        chosen = selected_sites(context, settings.sites, points_key)
        failures = SiteFailures("configured points")
        fetched_at = datetime.now(UTC)

        def fetch(site: str, deadline: float) -> list[dict]:
            with session.client(deadline=deadline) as client:
                return client.configured_points(site)

        def describe(site: str, exc: BaseException) -> str:
            if isinstance(exc, AceError | TimeoutError):
                return f"site {site!r}: {exc}"
            return f"site {site!r}: {type(exc).__name__}: {exc}"

        with ace.session(max_in_flight=settings.fetch_concurrency) as session:
            fetched = list(fetch_sites(
                chosen, fetch, concurrency=settings.fetch_concurrency,
                budget_seconds=settings.site_budget_seconds, describe_error=describe,
            ))
        # One DuckDB connection for every site's store (see weather.py).
        with warehouse.session():
            for outcome in fetched:
                if outcome.error is not None:
                    failures.add(outcome.site, outcome.error)
                    continue
                table = points_table(outcome.value, fetched_at)
                yield dg.Output(
                    table,
                    output_name=output_name(outcome.site, "points"),
                    metadata={
                        "points": table.num_rows,
                        "points_without_unit": table.column("unit").null_count,
                        "points_without_interval": table.column("collect_interval").null_count,
                    },
                )
        failures.raise_if_any(len(chosen))

    return points
