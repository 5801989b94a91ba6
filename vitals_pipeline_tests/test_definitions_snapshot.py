"""What users see of the definitions, as a reviewed text file: asset keys, groups, partitions,
checks, dependencies, jobs, schedules and sensors for a fixed two-site environment. A change to
any of them fails this test until the snapshot is regenerated and the diff reviewed:

    UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest vitals_pipeline_tests/test_definitions_snapshot.py
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "definitions.json"
ENVIRONMENT = {
    "ACE_SITES": "Demo Office,lab-2",
    "VITALS_PARTITIONS_START": "2026-01-01-00:00",
    "VITALS_SHARD_SIZE": "1",  # two shards: the shard steps show
}


def _partitions(partitions_def) -> str | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return (
            f"time window {partitions_def.cron_schedule} from "
            f"{partitions_def.start.astimezone(UTC):%Y-%m-%d %H:%M} ({partitions_def.fmt}, "
            f"{partitions_def.timezone})"
        )
    return type(partitions_def).__name__


def describe(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets_def = defs.resolve_assets_def(key)
        if not assets_def.is_executable:  # an observed asset (fleet/status)
            assets[key.to_user_string()] = {"group": node.group_name, "observed": True}
            continue
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted(check.name for check in node.check_keys),
            "op": defs.resolve_assets_def(key).node_def.name,
            "pool": defs.resolve_assets_def(key).op.pool,
            "backfill_policy": str(defs.resolve_assets_def(key).backfill_policy or "multi-run"),
            "freshness": bool(node.freshness_policy),
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
        }
    jobs = {}
    for job in sorted(defs.jobs or [], key=lambda j: j.name):
        resolved = defs.resolve_job_def(job.name)
        keys = resolved.asset_layer.executable_asset_keys if resolved.asset_layer else set()
        jobs[job.name] = sorted(k.to_user_string() for k in keys) or [
            "(ops) " + ", ".join(sorted(resolved.graph.node_names()))
        ]
    schedules = {
        s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone,
                 "default": s.default_status.value, "job": s.job_name}
        for s in sorted(defs.schedules or [], key=lambda s: s.name)
    }
    sensors = {
        s.name: {"interval_seconds": s.minimum_interval_seconds, "default": s.default_status.value,
                 "jobs": sorted(j.name for j in s.jobs) if s.has_jobs else []}
        for s in sorted(defs.sensors or [], key=lambda s: s.name)
    }
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors,
            "resources": sorted(defs.resources or {})}


def test_the_definitions_match_the_reviewed_snapshot(monkeypatch):
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(now=datetime(2026, 3, 1, tzinfo=UTC))
    current = json.dumps(describe(build_definitions(settings)), indent=1, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), f"no snapshot yet: run with UPDATE_SNAPSHOTS=1 to write {SNAPSHOT}"
    expected = SNAPSHOT.read_text()
    assert current == expected, (
        "the definitions changed; review the diff and regenerate the snapshot with "
        f"UPDATE_SNAPSHOTS=1 (file {SNAPSHOT.name})"
    )
