"""Dagster's SQLite event log, made cheap per event and lean per fleet tick (the shipped
dagster.yaml selects it; drop its `event_log_storage` lines for the stock class).

Same files, tables and schema migrations as the stock `SqliteEventLogStorage`, which reads what
this class wrote (vitals_pipeline_tests/test_event_log.py). How it writes:
- one engine per shard file, kept (SQLAlchemy's compiled-statement cache lives on the engine),
  each keeping one idle connection: the stock class built an engine per connection and closed
  it after every transaction, and closing the last connection of a file checkpoints its
  write-ahead log with an fsync. An idle connection holds no lock in WAL mode;
- a run's asset events and planned check evaluations in one transaction per shard (Dagster hands
  them over in batches: DAGSTER_EVENT_BATCH_SIZE, set here), the asset-key row written once per
  key and kind;
- `PRAGMA synchronous=NORMAL` (SQLite's setting for WAL: consistent, nothing lost when a process
  dies; an OS crash can roll back the last commits);
- a new run's shard is a copy of an empty shard the stock code initialized once, not a fresh
  initialization (alembic's ~90 migration scripts per run);
- a run's shard is checkpointed and its write-ahead log dropped when the run ends.
What it stores differently, on purpose (each keeps what the UI and the pipeline read):
- planned materializations and planned check evaluations go to the index shard only, not also
  to the run's shard (nothing reads them there; see store_event_batch);
- a run plans each (unpartitioned) check with one row, not one per partition of the run (see
  _planned_check_rows: the stock rows are never completed and show as skipped).
What it buys is measured by bench/ (docs/performance.md).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as db
from dagster import DagsterEventType, EventLogEntry, Field, StringSource, serialize_value
from dagster import __version__ as dagster_version

# What this module needs of Dagster that has no public twin: the SQLite event log it extends
# (its engines, shards and row builders), its table definitions, the asset event types and the
# check execution status it writes. The only module of the package that imports `dagster._`
# (vitals_pipeline_tests/test_public_api.py holds that); dropping it is dropping the
# `event_log_storage` lines of dagster.yaml (docs/operations.md says what that costs).
from dagster._core.events import ASSET_EVENTS
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

# Dagster hands events to store_event_batch only when this is > 0 (read at each event, in the
# process that logs it). Every process that opens this storage (CLI, run worker, daemon,
# webserver) imports this module, so batching is on wherever the storage is; an explicit
# setting in the environment wins.
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")

_RUN_ENDED = frozenset(
    {DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED}
)

# Engines of the most recently used run shards kept besides the index's: a run writes its own
# shard; the webserver reads a few at a time. Each kept engine holds one idle connection.
RUN_SHARD_ENGINES = 16


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def default_base_dir() -> str:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ValueError(
            "VitalsSqliteEventLogStorage (event_log_storage in dagster.yaml) keeps the event log "
            "in $DAGSTER_HOME/history/runs, and DAGSTER_HOME is not set: set it to the folder "
            "that holds this dagster.yaml, or give the storage a `config: base_dir:`"
        )
    return os.path.join(home, "history", "runs")


def _planned(event: EventLogEntry) -> bool:
    return event.dagster_event_type in (
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
    )


def _batchable(event: EventLogEntry) -> bool:
    """An asset event (materialization, observation, planned materialization) with its asset key,
    or a planned check evaluation: what store_event_batch writes itself."""
    if not event.is_dagster_event:
        return False
    if event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED:
        return True
    return event.dagster_event_type in ASSET_EVENTS and bool(event.get_dagster_event().asset_key)


class VitalsSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event log storage with kept engines and WAL-appropriate syncing."""

    def __init__(self, base_dir: str | None = None, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._tables_seen: set[str] = set()
        super().__init__(base_dir or default_base_dir(), inst_data=inst_data)

    @classmethod
    def config_type(cls):
        # base_dir defaults to $DAGSTER_HOME/history/runs, where the stock storage keeps it.
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            return self._cached_engine(shard)

    def _cached_engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = db.create_engine(
            self.conn_string_for_shard(shard),
            # One connection kept; more only while threads overlap (closed when returned). Any
            # thread may take the kept one, one at a time (the pool hands it out).
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=8,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )
        db.event.listen(engine, "connect", _on_connect)
        self._engines[shard] = engine
        run_shards = [name for name in self._engines if name != INDEX_SHARD_NAME]
        for name in run_shards[:-RUN_SHARD_ENGINES]:
            self._engines.pop(name).dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                if shard == INDEX_SHARD_NAME or not self._create_from_template(shard):
                    self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def _create_from_template(self, shard: str) -> bool:
        """Create a run's missing shard as a copy of the template; False to initialize it the
        stock way (it exists already, or the copy could not be made)."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return False
        template = os.path.join(self._base_dir, f".run-shard-template-{dagster_version}.sqlite")
        partial = f"{path}.{os.getpid()}-{threading.get_ident()}.partial"  # not *.db: no shard
        try:
            if not os.path.exists(template):
                self._write_template(template)
            shutil.copyfile(template, partial)
            # link() fails if the shard appeared meanwhile (another process): never overwrite.
            os.link(partial, path)
        except Exception:  # noqa: BLE001 - only a shortcut: the stock initialization follows
            return False
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return True

    def _write_template(self, template: str) -> None:
        """An empty run shard, initialized by the stock code (tables, WAL, migration stamp)."""
        partial = f"{template}.{os.getpid()}-{threading.get_ident()}.partial"
        engine = db.create_engine(f"sqlite:///{partial}", poolclass=NullPool)
        try:
            self._initdb(engine)
        finally:
            engine.dispose()  # closing the last connection checkpoints the log into the file
        try:
            if os.path.exists(f"{partial}-wal"):  # not checkpointed into the file: not usable
                raise OSError(f"{partial}: write-ahead log left behind")
            os.replace(partial, template)  # whoever writes last, the template is the same
        finally:
            for leftover in (partial, f"{partial}-wal", f"{partial}-shm"):
                if os.path.exists(leftover):
                    os.unlink(leftover)

    def has_table(self, table_name: str) -> bool:
        # Asked once per stored materialization (for the tags table); a table, once there, stays.
        # Called while an index connection is open, so it must not take _db_lock.
        if table_name in self._tables_seen:
            return True
        engine = self._engine(INDEX_SHARD_NAME)
        with engine.connect() as conn:
            found = bool(engine.dialect.has_table(conn, table_name))
        if found:
            self._tables_seen.add(table_name)
        return found

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Store a batch of asset and planned-check events in one transaction per shard.

        Dagster hands over batches (DAGSTER_EVENT_BATCH_SIZE > 0): the planned events at run
        creation (a materialization per partition, a check evaluation per check) and the
        per-partition materializations of a range run. The stock class stores them one by one,
        two or three commits each. Rows and index entries are the same as `store_event` writes;
        anything but asset and planned-check events of one run takes the stock path.
        """
        batched = [event for event in events if _batchable(event)]
        run_ids = {event.run_id for event in batched}
        if len(batched) < 2 or len(run_ids) != 1:
            batched = []
        # The others first: should one fail, Dagster's fallback stores the whole batch one event
        # at a time, and nothing of the batch is stored yet.
        stored = {id(event) for event in batched}
        for event in events:
            if id(event) not in stored:
                self.store_event(event)
        if batched:
            rows = [self._event_to_row(event) for event in batched]
            insert = SqlEventLogStorageTable.insert()
            # Planned events go to the index only: partition status, the asset pages and the
            # catch-up read them there, and a run's own record says what it planned (its asset
            # selection and plan snapshot). The stock class writes them to the run's shard as
            # well: a fleet tick's three per site, ~3.6 KB a site a tick of nothing read.
            logged = [row for event, row in zip(batched, rows) if not _planned(event)]
            if logged:
                with self.run_connection(batched[0].run_id) as conn:
                    conn.execute(insert, logged)
            # The run's shard has the rows now: if the index transaction fails, Dagster's own
            # fallback (store_event one by one) would store them there a second time, so the
            # index entries are retried one event at a time here instead.
            try:
                self._index_events(batched, rows)
            except Exception:  # noqa: BLE001 - e.g. "database is locked" after the busy timeout
                for event, row in zip(batched, rows):
                    self._index_events([event], [row])

    def _index_events(self, events: Sequence[EventLogEntry], rows: list[dict]) -> None:
        """The index shard's part of storing a batch, in one transaction."""
        insert = SqlEventLogStorageTable.insert()
        with self.index_transaction() as conn:
            event_ids = [conn.execute(insert, row).inserted_primary_key[0] for row in rows]
            assets = [i for i, event in enumerate(events) if event.dagster_event_type in ASSET_EVENTS]
            self._store_asset_event_tags(conn, [events[i] for i in assets], [event_ids[i] for i in assets])
            # The asset key row keeps the latest event of each kind (last materialization, last
            # run): writing only the last of each kind per key, in order, leaves the row as
            # writing all of them would, without serializing every record again.
            last: dict[tuple[str, str], int] = {}
            for index in assets:
                event = events[index]
                kind = (event.get_dagster_event().asset_key.to_string(), event.dagster_event_type)
                last[kind] = index
            for index in sorted(last.values()):
                self._store_asset_event(conn, events[index], event_ids[index])
            checks = [
                row
                for event, event_row, event_id in zip(events, rows, event_ids)
                if event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
                for row in self._planned_check_rows(event, event_id, event_row["event"])
            ]
            if checks:
                conn.execute(AssetCheckExecutionsTable.insert(), checks)

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id) -> None:
        """The PLANNED row(s) of a check a run will evaluate (see _planned_check_rows)."""
        with self.index_connection() as conn:
            conn.execute(
                AssetCheckExecutionsTable.insert(),
                self._planned_check_rows(event, event_id, serialize_value(event)),
            )

    def _planned_check_rows(self, event: EventLogEntry, event_id, serialized: str) -> list[dict]:
        """One PLANNED row per run, where the stock class writes one per partition of the run.

        This project's checks are not partitioned: a run evaluates each check once, and Dagster
        records that evaluation with no partition, in a range run and in a single-partition run
        alike. The stock class plans one row per partition of the run, which no evaluation ever
        completes: the UI lists them as skipped (a day's run left 288 per check) and they cost
        ~2 KB each. One row with no partition is what the run's evaluation then completes."""
        planned = event.get_dagster_event().event_specific_data
        partition_keys = [None]
        common = dict(
            asset_key=planned.asset_key.to_string(),
            check_name=planned.check_name,
            run_id=event.run_id,
            execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
            evaluation_event=serialized,
            evaluation_event_timestamp=self._event_insert_timestamp(event),
            evaluation_event_storage_id=event_id,
        )
        return [{**common, "partition": key} for key in partition_keys]

    def store_event(self, event: EventLogEntry) -> None:
        super().store_event(event)
        if event.is_dagster_event and event.dagster_event_type in _RUN_ENDED:
            self._close_run_shard(event.run_id)

    def _close_run_shard(self, run_id: str) -> None:
        """A run's shard is complete once its run ended: fold its write-ahead log into the file
        and drop the log (else it stays beside the shard, as large as the run's events, until
        something opens the shard again) and let its engine go."""
        with self._engines_lock:
            engine = self._engines.pop(run_id, None)
        if engine is None:
            return
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # noqa: BLE001 - a reader holds it: SQLite checkpoints later
            pass
        finally:
            engine.dispose()

    def dispose(self) -> None:
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
        super().dispose()
