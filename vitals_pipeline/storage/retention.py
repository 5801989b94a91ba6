"""Retention for the Dagster instance: keep what the UI's partition status needs, drop the rest.

A fleet tick materializes each site's newest partition and re-materializes the two before it
(the lookback): every partition collects three materializations and three planned events, each
about 2 KB and, on SQLite, stored twice (the run's shard and the index). Partition status needs
only the newest materialization of each partition, and the newest attempt when that one failed.
After `keep_days`:

- superseded asset events: a partition's materializations and planned materializations older
  than its newest materialization are deleted (the newest one stays, however old);
- old check history: evaluations and planned evaluations of a check except its newest one;
- old runs' event logs: on SQLite a run's shard file (step events, logs, its copy of the asset
  events; the index keeps the asset events); on PostgreSQL the run's non-asset events. The run
  records stay (the runs list, their tags and times), their logs do not.

What partition status is derived from is untouched, so the UI shows the same partitions
materialized and failed, even if Dagster rebuilds its cached status from the events (a test
rebuilds it). SQLite files do not shrink: freed pages are reused, so the instance stops growing
once the window is full (`vacuum=True` gives the space back, locking the index for the while).

This reads and deletes rows of Dagster's event log tables (`event_logs`, `asset_event_tags`,
`asset_check_executions`) with plain SQL on the storage's own connections: their layout is
Dagster's, not a public API (checked against dagster 1.13; test_retention.py runs it on both
storages).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as db

# Events a run writes that partition status and the asset pages read (kept with the run's asset
# history, never deleted as part of an old run's log).
ASSET_EVENT_TYPES = (
    "ASSET_MATERIALIZATION",
    "ASSET_MATERIALIZATION_PLANNED",
    "ASSET_OBSERVATION",
    "ASSET_FAILED_TO_MATERIALIZE",
    "ASSET_CHECK_EVALUATION",
    "ASSET_CHECK_EVALUATION_PLANNED",
)
CHUNK = 500  # rows per delete: short transactions, so a running daemon waits milliseconds
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dataclass
class PruneReport:
    cutoff: datetime
    superseded_events: int = 0
    check_rows: int = 0
    check_events: int = 0
    run_logs: int = 0  # runs whose event log was dropped
    run_log_bytes: int = 0  # SQLite shard files removed
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"pruned events before {self.cutoff:%Y-%m-%d %H:%M} UTC: {self.superseded_events} "
            f"superseded asset events, {self.check_rows} old check executions "
            f"({self.check_events} events), the logs of {self.run_logs} runs "
            f"({self.run_log_bytes / 1e6:.1f} MB of run shards) in {self.seconds:.1f} s"
        )


def prune_instance(
    instance: dg.DagsterInstance,
    keep: timedelta,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    vacuum: bool = False,
) -> PruneReport:
    """Delete what partition status does not need and is older than `keep` (see the module)."""
    started = time.monotonic()
    cutoff = (now or datetime.now(UTC)).astimezone(UTC) - keep
    report = PruneReport(cutoff=cutoff)
    storage = instance.event_log_storage
    naive_cutoff = cutoff.replace(tzinfo=None)
    with _index(storage) as conn:
        superseded = _ids(
            conn,
            """SELECT e.id FROM event_logs e
               WHERE e.dagster_event_type IN ('ASSET_MATERIALIZATION', 'ASSET_MATERIALIZATION_PLANNED')
                 AND e.partition IS NOT NULL AND e.timestamp < :cutoff
                 AND e.id < (SELECT max(m.id) FROM event_logs m
                             WHERE m.asset_key = e.asset_key AND m.partition = e.partition
                               AND m.dagster_event_type = 'ASSET_MATERIALIZATION')""",
            cutoff=naive_cutoff,
        )
        old_checks = _ids(
            conn,
            """SELECT c.id FROM asset_check_executions c
               WHERE c.create_timestamp < :cutoff
                 AND c.id < (SELECT max(n.id) FROM asset_check_executions n
                             WHERE n.asset_key = c.asset_key AND n.check_name = c.check_name)""",
            cutoff=naive_cutoff,
        )
    report.superseded_events = len(superseded)
    report.check_rows = len(old_checks)
    if not dry_run:
        _delete_events(storage, superseded)
        _delete_rows(storage, "asset_check_executions", old_checks)
        # Check events no execution row refers to any more (the history page reads the rows).
        with _index(storage) as conn:
            orphans = _ids(
                conn,
                """SELECT e.id FROM event_logs e
                   WHERE e.dagster_event_type IN ('ASSET_CHECK_EVALUATION', 'ASSET_CHECK_EVALUATION_PLANNED')
                     AND e.timestamp < :cutoff
                     AND NOT EXISTS (SELECT 1 FROM asset_check_executions c
                                     WHERE c.evaluation_event_storage_id = e.id)""",
                cutoff=naive_cutoff,
            )
        report.check_events = len(orphans)
        _delete_events(storage, orphans)
    old_runs = [
        record.dagster_run.run_id
        for record in instance.get_run_records(
            dg.RunsFilter(statuses=FINISHED, updated_before=cutoff), limit=100_000
        )
    ]
    report.run_logs, report.run_log_bytes = _drop_run_logs(storage, old_runs, dry_run)
    if vacuum and not dry_run:
        with _index(storage) as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("VACUUM")
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def _index(storage) -> Iterator[db.engine.Connection]:
    with storage.index_connection() as conn:
        yield conn


def _ids(conn, sql: str, **params) -> list[int]:
    return [row[0] for row in conn.execute(db.text(sql), params).fetchall()]


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i : i + CHUNK])


def _delete_rows(storage, table: str, ids: Sequence[int]) -> None:
    for chunk in _chunks(ids):
        with _index(storage) as conn:
            conn.execute(db.text(f"DELETE FROM {table} WHERE id IN :ids").bindparams(
                db.bindparam("ids", expanding=True)), {"ids": chunk})


def _delete_events(storage, ids: Sequence[int]) -> None:
    for chunk in _chunks(ids):
        with _index(storage) as conn:
            for statement in (
                "DELETE FROM asset_event_tags WHERE event_id IN :ids",
                "DELETE FROM event_logs WHERE id IN :ids",
            ):
                conn.execute(db.text(statement).bindparams(db.bindparam("ids", expanding=True)),
                             {"ids": chunk})


def _drop_run_logs(storage, run_ids: Sequence[str], dry_run: bool) -> tuple[int, int]:
    """The event logs of finished runs: SQLite run shards removed, else non-asset events."""
    if not run_ids:
        return 0, 0
    if hasattr(storage, "path_for_shard"):  # SQLite: one file per run beside the index
        dropped, freed = 0, 0
        for run_id in run_ids:
            path = storage.path_for_shard(run_id)
            if not os.path.exists(path):
                continue
            dropped += 1
            for file in (path, f"{path}-wal", f"{path}-shm"):
                if os.path.exists(file):
                    freed += os.path.getsize(file)
                    if not dry_run:
                        os.remove(file)
        return dropped, freed
    dropped = 0
    for chunk in _chunks(list(run_ids)):
        with _index(storage) as conn:
            statement = db.text(
                "DELETE FROM event_logs WHERE run_id IN :runs AND "
                "(dagster_event_type IS NULL OR dagster_event_type NOT IN :kept)"
            ).bindparams(db.bindparam("runs", expanding=True), db.bindparam("kept", expanding=True))
            if not dry_run:
                conn.execute(statement, {"runs": chunk, "kept": list(ASSET_EVENT_TYPES)})
        dropped += len(chunk)
    return dropped, 0
