"""The DuckDB IO manager against real DuckDB files and real Dagster runs.

Each test names the problem of the stock dagster-duckdb IO manager it guards against (its store is
delete-the-slice, then insert positionally, in separate autocommits):
1. a failed insert after the delete leaves the partition empty;
2. naive window literals follow the process time zone (a re-run under TZ != UTC duplicated rows);
3. an empty frame deletes the slice and the run succeeds;
4. rows outside the window are inserted and never cleaned up;
5. a new or reordered column breaks the positional insert;
6. a database file whose stem equals the schema name fails every write ("Ambiguous reference");
7. another process holding the file blocks writers ("Could not set lock on file");
8. no upsert and no primary key.
"""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from vitals_pipeline.storage import (
    TIMESERIES_SCHEMA,
    CompanionTable,
    DuckDBFileLockedError,
    DuckDBWarehouse,
    StoreCounts,
    VitalsDuckDBIOManager,
    WindowBundle,
    connect_duckdb,
    duckdb_io,
    duckdb_type,
    load_slice,
    schema_name,
    store_slice,
)

SITE = "demo_office"
T0 = datetime(2025, 10, 12, 14, 0)  # naive UTC, a 5-minute boundary
WINDOW = (T0, T0 + timedelta(minutes=5))
KEYS = ["point", "ts"]

PARTITIONS = dg.TimeWindowPartitionsDefinition(
    cron_schedule="*/5 * * * *",
    start=datetime(2025, 10, 12),
    fmt="%Y-%m-%d-%H:%M",
    timezone="UTC",
)
TS_METADATA = {"schema": SITE, "partition_expr": "ts", "merge_keys": KEYS}


def samples(*rows: tuple[str, datetime, float | None, str | None], dictionary: bool = True):
    """A timeseries frame as the asset returns it (point dictionary-encoded by default)."""
    frame = pa.Table.from_pylist(
        [dict(zip(TIMESERIES_SCHEMA.names, row, strict=True)) for row in rows],
        schema=TIMESERIES_SCHEMA,
    )
    if dictionary:
        frame = frame.set_column(0, "point", frame.column("point").dictionary_encode())
    return frame


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stored(conn: duckdb.DuckDBPyConnection, table: str = "timeseries") -> list[tuple]:
    catalog = conn.execute("SELECT current_database()").fetchall()[0][0]
    return conn.execute(f'SELECT * FROM "{catalog}"."{SITE}"."{table}" ORDER BY ALL').fetchall()


def store(conn, frame, **kwargs) -> StoreCounts:
    options = {"merge_keys": KEYS, "time_column": "ts", "window": WINDOW, **kwargs}
    return store_slice(conn, schema=SITE, table="timeseries", rows=frame, **options)["timeseries"]


@pytest.fixture
def conn(tmp_path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect_duckdb(str(tmp_path / "vitals.duckdb"))
    yield connection
    connection.close()


@pytest.fixture
def new_york_time() -> Iterator[None]:
    """The process in America/New_York, as a developer's laptop might be (problem 2)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_schema_name_keeps_lowercase_digits_underscore():
    assert schema_name("Demo-Office 2") == "demo_office_2"
    assert schema_name("HQ.North/Wing_B") == "hq_north_wing_b"
    assert schema_name("Café") == "caf_"


@pytest.mark.parametrize(
    ("arrow_type", "expected"),
    [
        (pa.dictionary(pa.int32(), pa.string()), "VARCHAR"),
        (pa.timestamp("us"), "TIMESTAMP"),
        (pa.float64(), "DOUBLE"),
        (pa.string(), "VARCHAR"),
        (pa.int64(), "BIGINT"),
        (pa.bool_(), "BOOLEAN"),
        (pa.list_(pa.string()), "VARCHAR[]"),
        (pa.map_(pa.string(), pa.string()), "MAP(VARCHAR, VARCHAR)"),
    ],
)
def test_arrow_to_duckdb_types(arrow_type, expected):
    assert duckdb_type(arrow_type) == expected


# ---------------------------------------------------------------------------------------------
# The merge (problems 1, 3, 4, 5, 8)


def test_table_is_typed_from_arrow_and_has_no_primary_key(conn):
    store(conn, samples(("p1", at(1), 1.0, "1.0")))
    types = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        f"WHERE table_schema = '{SITE}' AND table_name = 'timeseries' ORDER BY ordinal_position"
    ).fetchall()
    assert types == [
        ("point", "VARCHAR"),
        ("ts", "TIMESTAMP"),
        ("value", "DOUBLE"),
        ("raw_value", "VARCHAR"),
    ]
    assert conn.execute("SELECT count(*) FROM duckdb_constraints()").fetchall() == [(0,)]


def test_merge_inserts_new_updates_changed_keeps_absent(conn):
    first = samples(("p1", at(1), 1.0, None), ("p2", at(1), 2.0, None), ("p3", at(1), 3.0, None))
    assert store(conn, first) == StoreCounts(inserted=3)

    # p1 changed, p2 same, p3 absent (kept), p4 new
    again = samples(("p1", at(1), 1.5, None), ("p2", at(1), 2.0, None), ("p4", at(1), 4.0, "x"))
    assert store(conn, again) == StoreCounts(inserted=1, updated=1, unchanged=1)
    assert stored(conn) == [
        ("p1", at(1), 1.5, None),
        ("p2", at(1), 2.0, None),
        ("p3", at(1), 3.0, None),
        ("p4", at(1), 4.0, "x"),
    ]
    # A raw_value change alone is a change; NaN against NaN is not.
    nan = samples(("p1", at(2), float("nan"), "nan"))
    store(conn, nan)
    assert store(conn, nan) == StoreCounts(unchanged=1)
    assert store(conn, samples(("p4", at(1), 4.0, "y"))) == StoreCounts(updated=1)


def test_empty_frame_changes_nothing(conn):
    store(conn, samples(("p1", at(1), 1.0, None)))
    assert store(conn, TIMESERIES_SCHEMA.empty_table()) == StoreCounts()
    assert stored(conn) == [("p1", at(1), 1.0, None)]


def test_empty_frame_creates_a_typed_table_but_never_guesses_types(conn):
    # An empty pandas frame has untyped (object) columns: no table is created from it.
    assert store(conn, pd.DataFrame(columns=TIMESERIES_SCHEMA.names)) == StoreCounts()
    assert conn.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]
    store(conn, TIMESERIES_SCHEMA.empty_table())
    assert load_slice(conn, schema=SITE, table="timeseries").schema == TIMESERIES_SCHEMA


def test_partial_refetch_keeps_stored_rows(conn):
    full = samples(*[(f"p{i}", at(i), float(i), None) for i in range(10)])
    store(conn, full)
    # An API outage returned only two rows of the window, one of them changed.
    counts = store(conn, samples(("p0", at(0), 0.0, None), ("p5", at(5), 55.0, None)))
    assert counts == StoreCounts(updated=1, unchanged=1)
    assert len(stored(conn)) == 10
    assert ("p5", at(5), 55.0, None) in stored(conn)


def test_failure_between_update_and_insert_leaves_old_slice(conn, monkeypatch):
    store(conn, samples(("p1", at(1), 1.0, None), ("p2", at(1), 2.0, None)))
    before = stored(conn)
    seen_mid_merge = []

    def failing_insert(connection, target, *args, **kwargs):
        # The update step has run inside the transaction: the change is visible here...
        seen_mid_merge.extend(stored(connection))
        raise RuntimeError("injected failure before the insert")

    monkeypatch.setattr(duckdb_io, "_insert_new_rows", failing_insert)
    changed = samples(
        ("p1", at(1), 100.0, None), ("p3", at(1), 3.0, None), dictionary=False
    ).append_column("quality", pa.array(["good", "good"]))
    with pytest.raises(RuntimeError, match="injected failure"):
        store(conn, changed)

    assert ("p1", at(1), 100.0, None, "good") in seen_mid_merge
    # ...and rolled back, with the column the merge added: the old slice is intact.
    assert stored(conn) == before
    assert "quality" not in load_slice(conn, schema=SITE, table="timeseries").column_names
    # The connection is usable afterwards (no transaction left open).
    monkeypatch.undo()
    assert store(conn, samples(("p3", at(1), 3.0, None))) == StoreCounts(inserted=1)


def test_new_column_is_added_and_reordered_frame_is_matched_by_name(conn):
    store(conn, samples(("p1", at(1), 1.0, "1.0")))
    wider = (
        samples(("p1", at(1), 1.0, "1.0"), ("p2", at(2), 2.0, "2.0"))
        .append_column("unit", pa.array(["degF", "percent"]))
        .select(["unit", "raw_value", "ts", "value", "point"])
    )
    assert store(conn, wider) == StoreCounts(inserted=1, updated=1)
    assert stored(conn) == [("p1", at(1), 1.0, "1.0", "degF"), ("p2", at(2), 2.0, "2.0", "percent")]


def test_rows_outside_the_window_are_refused(conn):
    end = WINDOW[1]
    frame = samples(("p1", at(1), 1.0, None), ("p2", end, 2.0, None), ("p3", at(-1), 3.0, None))
    with pytest.raises(ValueError, match=r"2 of 3 rows fall outside the run's window") as error:
        store(conn, frame)
    assert "point='p2'" in str(error.value)
    assert conn.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]


@pytest.mark.parametrize("sorted_frame", [True, False])
def test_duplicate_keys_are_refused(conn, sorted_frame):
    rows = [("p1", at(1), 1.0, None), ("p1", at(1), 2.0, None), ("p0", at(2), 3.0, None)]
    frame = samples(*(rows if sorted_frame else reversed(rows)))
    with pytest.raises(ValueError, match=r"1 keys \(point, ts\) occur more than once"):
        store(conn, frame)


def test_microseconds_are_kept(conn):
    # Two readings of one point within one second (the old Worker truncated them into one).
    frame = samples(("p1", at(1.000001), 1.0, None), ("p1", at(1.999999), 2.0, None))
    assert store(conn, frame) == StoreCounts(inserted=2)
    assert [row[1] for row in stored(conn)] == [at(1.000001), at(1.999999)]
    assert store(conn, frame) == StoreCounts(unchanged=2)


def test_pandas_and_zone_aware_frames_store_the_same_instants(conn):
    frame = pd.DataFrame(
        {
            "point": ["p1"],
            "ts": pd.to_datetime([at(1.5)]).tz_localize("UTC").tz_convert("America/New_York"),
            "value": [1.0],
            "raw_value": [None],
        }
    )
    store(conn, frame)
    assert store(conn, samples(("p1", at(1.5), 1.0, None))) == StoreCounts(unchanged=1)


def test_database_file_named_like_the_schema(tmp_path):
    # Problem 6: "demo_office.duckdb" has catalog demo_office, as the schema is named.
    connection = connect_duckdb(str(tmp_path / f"{SITE}.duckdb"))
    try:
        store(connection, samples(("p1", at(1), 1.0, None)))
        assert store(connection, samples(("p1", at(1), 2.0, None))) == StoreCounts(updated=1)
        assert load_slice(connection, schema=SITE, table="timeseries").num_rows == 1
    finally:
        connection.close()


def test_unpartitioned_merge_keeps_absent_rows(conn):
    kv_tags = pa.map_(pa.string(), pa.string())
    points = pa.table(
        {
            "name": ["p1", "p2"],
            "marker_tags": [["temp", "sensor"], []],
            "kv_tags": pa.array([[("unit", "degF")], []], kv_tags),
            "collect_enabled": [True, False],
        }
    )
    first = store_slice(conn, schema=SITE, table="points", rows=points, merge_keys=["name"])
    assert first["points"] == StoreCounts(inserted=2)
    again = pa.table(  # p1 is no longer listed: kept
        {
            "name": ["p2", "p3"],
            "marker_tags": [["fan"], []],
            "kv_tags": pa.array([[], []], kv_tags),
            "collect_enabled": [False, True],
        }
    )
    counts = store_slice(conn, schema=SITE, table="points", rows=again, merge_keys=["name"])
    assert counts["points"] == StoreCounts(inserted=1, updated=1)
    assert stored(conn, "points") == [
        ("p1", ["temp", "sensor"], {"unit": "degF"}, True),
        ("p2", ["fan"], {}, False),
        ("p3", [], {}, True),
    ]
    unchanged = store_slice(conn, schema=SITE, table="points", rows=points, merge_keys=["name"])
    assert unchanged["points"] == StoreCounts(updated=1, unchanged=1)


def _quality(*rows: tuple[str, datetime, int]) -> CompanionTable:
    table = pa.table(
        {
            "point": [r[0] for r in rows],
            "window_start": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "samples": [r[2] for r in rows],
        }
    )
    return CompanionTable(
        rows=table, merge_keys=("point", "window_start"), time_column="window_start"
    )


def test_companion_table_shares_the_transaction(conn, monkeypatch):
    companions = {"quality": _quality(("p1", T0, 1))}
    store_slice(
        conn, schema=SITE, table="timeseries", rows=samples(("p1", at(1), 1.0, None)),
        merge_keys=KEYS, time_column="ts", window=WINDOW, companions=companions,
    )  # fmt: skip
    assert stored(conn, "quality") == [("p1", T0, 1)]

    real_insert = duckdb_io._insert_new_rows

    def failing_on_quality(connection, target, *args, **kwargs):
        if target.table == "quality":
            raise RuntimeError("injected failure in the companion")
        return real_insert(connection, target, *args, **kwargs)

    monkeypatch.setattr(duckdb_io, "_insert_new_rows", failing_on_quality)
    with pytest.raises(RuntimeError, match="companion"):
        store_slice(
            conn, schema=SITE, table="timeseries",
            rows=samples(("p1", at(1), 9.0, None), ("p2", at(1), 2.0, None)),
            merge_keys=KEYS, time_column="ts", window=WINDOW,
            companions={"quality": _quality(("p1", T0, 2), ("p2", T0, 1))},
        )  # fmt: skip
    assert stored(conn) == [("p1", at(1), 1.0, None)]
    assert stored(conn, "quality") == [("p1", T0, 1)]


def test_companion_rows_outside_the_window_are_refused(conn):
    with pytest.raises(ValueError, match="quality: 1 of 1 rows fall outside"):
        store_slice(
            conn, schema=SITE, table="timeseries", rows=samples(("p1", at(1), 1.0, None)),
            merge_keys=KEYS, time_column="ts", window=WINDOW,
            companions={"quality": _quality(("p1", WINDOW[1], 1))},
        )  # fmt: skip


def test_companions_from_a_callable_join_the_transaction_after_the_rows(conn):
    """The callable runs inside the transaction, after the rows are merged (the asset computes the
    quality rows meanwhile); if it fails, neither table changes."""
    seen_inside: list[int] = []

    def quality_rows():
        # Another connection of the same database sees no new row yet: the transaction is open.
        other = conn.cursor()
        try:
            seen_inside.append(other.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchone()[0])
        finally:
            other.close()
        return {"quality": _quality(("p1", T0, 1), ("p2", T0, 1))}

    store_slice(
        conn, schema=SITE, table="timeseries", rows=samples(("p1", at(1), 1.0, None)),
        merge_keys=KEYS, time_column="ts", window=WINDOW,
    )  # fmt: skip
    counts = store_slice(
        conn, schema=SITE, table="timeseries",
        rows=samples(("p1", at(1), 1.0, None), ("p2", at(1), 2.0, None)),
        merge_keys=KEYS, time_column="ts", window=WINDOW, companions=quality_rows,
    )  # fmt: skip
    assert seen_inside == [1]
    assert counts["timeseries"] == StoreCounts(inserted=1, unchanged=1)
    assert stored(conn, "quality") == [("p1", T0, 1), ("p2", T0, 1)]

    def failing():
        raise RuntimeError("the quality grid failed")

    with pytest.raises(RuntimeError, match="quality grid"):
        store_slice(
            conn, schema=SITE, table="timeseries", rows=samples(("p3", at(2), 3.0, None)),
            merge_keys=KEYS, time_column="ts", window=WINDOW, companions=failing,
        )  # fmt: skip
    assert [row[0] for row in stored(conn)] == ["p1", "p2"]
    with pytest.raises(ValueError, match="name of the asset's own table"):
        store_slice(
            conn, schema=SITE, table="timeseries", rows=samples(("p3", at(2), 3.0, None)),
            merge_keys=KEYS, time_column="ts", window=WINDOW,
            companions=lambda: {"timeseries": _quality(("p3", T0, 1))},
        )  # fmt: skip
    assert [row[0] for row in stored(conn)] == ["p1", "p2"]


# ---------------------------------------------------------------------------------------------
# Locks (problem 7)

HOLDER = """
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1])
connection.execute("CREATE TABLE IF NOT EXISTS holder (x INTEGER)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
connection.close()
"""


def hold_file(path, seconds: float) -> subprocess.Popen:
    """Another process with a write connection on `path`, for `seconds`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_locked_file_fails_with_an_error_naming_the_file(tmp_path):
    path = tmp_path / "vitals.duckdb"
    holder = hold_file(path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(DuckDBFileLockedError) as error:
            connect_duckdb(str(path), lock_timeout_seconds=0.5)
        assert 0.5 <= time.monotonic() - started < 5
        message = str(error.value)
        assert str(path) in message
        assert "another process" in message
        assert "Wait for that process to finish, or stop it" in message
    finally:
        holder.kill()
        holder.wait()


def test_locked_file_is_waited_for(tmp_path):
    path = tmp_path / "vitals.duckdb"
    holder = hold_file(path, 1.0)
    try:
        connection = connect_duckdb(str(path), lock_timeout_seconds=30)
        assert connection.execute("SELECT count(*) FROM holder").fetchall() == [(0,)]
        connection.close()
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------
# The warehouse: one session (connection) per run, shared by the step's threads


def test_a_session_holds_one_connection_that_the_runs_threads_share(tmp_path):
    warehouse = DuckDBWarehouse(database=str(tmp_path / "vitals.duckdb"))
    with warehouse.session() as conn:
        with warehouse.connect() as same, warehouse.session() as inner:
            assert same is conn and inner is conn  # the session's, and re-entrant
        conn.execute("SELECT 1")  # the inner session's end left it open
        assert not duckdb_io.table_exists(conn, SITE, "timeseries")
        store(conn, samples(("p1", at(1), 1.0, None)))
        # The catalog the session keeps saw the table the store created.
        assert duckdb_io.table_exists(conn, SITE, "timeseries")

        seen = []

        def fetch_thread() -> None:
            # A fetch thread reads on its own cursor of the session: committed rows, no lock.
            with warehouse.connect() as cursor:
                seen.append((cursor is conn, cursor.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchone()[0]))

        reader = threading.Thread(target=fetch_thread)
        reader.start()
        reader.join()
        assert seen == [(False, 1)]
    # The session is over: its connection is closed, and connect() opens (and closes) its own.
    with pytest.raises(duckdb.ConnectionException):
        conn.execute("SELECT 1")
    with warehouse.connect() as own:
        assert own is not conn and stored(own) == [("p1", at(1), 1.0, None)]
    with pytest.raises(duckdb.ConnectionException):
        own.execute("SELECT 1")


# ---------------------------------------------------------------------------------------------
# Real Dagster runs


def timeseries_asset(rows_for_window: Callable[[datetime, datetime], pa.Table | WindowBundle]):
    @dg.asset(
        key=[SITE, "timeseries"],
        partitions_def=PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        metadata=TS_METADATA,
    )
    def timeseries(context: dg.AssetExecutionContext):
        start, end = context.partition_time_window
        return rows_for_window(duckdb_io.naive_utc(start), duckdb_io.naive_utc(end))

    return timeseries


def reader_asset(loaded: list[pa.Table]):
    @dg.asset(
        key=[SITE, "reader"],
        partitions_def=PARTITIONS,
        backfill_policy=dg.BackfillPolicy.single_run(),
        ins={"timeseries": dg.AssetIn(key=[SITE, "timeseries"])},
    )
    def reader(timeseries: pa.Table) -> None:
        loaded.append(timeseries)

    return reader


# Every store the IO manager made in a test's runs: (table, window, counts per table). Recorded by
# overriding `store`, the IO manager's seam for tests; the merge itself is the real one.
STORES: list[tuple[str, tuple | None, dict[str, StoreCounts]]] = []


class RecordingIOManager(VitalsDuckDBIOManager):
    def store(self, conn, **kwargs) -> dict[str, StoreCounts]:
        counts = super().store(conn, **kwargs)
        STORES.append((kwargs["table"], kwargs["window"], counts))
        return counts


@pytest.fixture(autouse=True)
def _fresh_stores():
    STORES.clear()
    yield
    STORES.clear()


def run(assets, database, *, partition_key=None, tags=None, **warehouse_options):
    return dg.materialize(
        assets,
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "io_manager": RecordingIOManager(
                warehouse=DuckDBWarehouse(database=str(database), **warehouse_options)
            )
        },
        partition_key=partition_key,
        tags=tags,
        raise_on_error=False,
    )


def materialization_metadata(
    result: dg.ExecuteInProcessResult, node: str = "demo_office__timeseries"
) -> list[dict]:
    return [
        {key: value.value for key, value in m.metadata.items()}
        for m in result.asset_materializations_for_node(node)
    ]


def one_sample_per_minute(start: datetime, end: datetime) -> pa.Table:
    minutes = int((end - start).total_seconds() // 60)
    return samples(
        *[
            ("p1", start + timedelta(minutes=m, microseconds=123456), float(m), None)
            for m in range(minutes)
        ]
    )


def test_single_partition_run_stores_and_a_downstream_asset_loads_the_slice(tmp_path):
    database = tmp_path / "data" / f"{SITE}.duckdb"  # parent folder created; stem == schema
    loaded: list[pa.Table] = []
    assets = [timeseries_asset(one_sample_per_minute), reader_asset(loaded)]
    key = "2025-10-12-14:00"
    result = run(assets, database, partition_key=key)
    assert result.success
    assert STORES == [("timeseries", WINDOW, {"timeseries": StoreCounts(inserted=5)})]
    # The IO manager adds no metadata of its own: a range run would copy it onto every
    # partition's materialization (see test_range_run_...).
    assert materialization_metadata(result) == [{}]
    assert loaded[0].sort_by("ts") == one_sample_per_minute(*WINDOW).cast(loaded[0].schema)

    # The next partition's run loads only its own window.
    later = run(assets, database, partition_key="2025-10-12-14:05")
    assert later.success
    assert loaded[1].num_rows == 5
    assert min(loaded[1].column("ts").to_pylist()) == at(300.123456)


def test_range_run_merges_the_whole_range_and_keeps_rows_on_a_partial_refetch(tmp_path):
    database = tmp_path / "vitals.duckdb"
    range_tags = {
        "dagster/asset_partition_range_start": "2025-10-12-14:00",
        "dagster/asset_partition_range_end": "2025-10-12-14:10",
    }
    result = run([timeseries_asset(one_sample_per_minute)], database, tags=range_tags)
    assert result.success
    # ONE merge over the run's whole window (15 minutes, 15 samples), and one materialization
    # per partition, none carrying IO manager figures.
    whole = (T0, T0 + timedelta(minutes=15))
    assert STORES == [("timeseries", whole, {"timeseries": StoreCounts(inserted=15)})]
    assert materialization_metadata(result) == [{}, {}, {}]
    assert [m.partition for m in result.asset_materializations_for_node("demo_office__timeseries")] == [
        "2025-10-12-14:00", "2025-10-12-14:05", "2025-10-12-14:10"
    ]  # fmt: skip

    def outage(start: datetime, end: datetime) -> pa.Table:
        return one_sample_per_minute(start, end).slice(0, 2)

    STORES.clear()
    refetch = run([timeseries_asset(outage)], database, tags=range_tags)
    assert refetch.success
    assert STORES == [("timeseries", whole, {"timeseries": StoreCounts(unchanged=2)})]
    connection = connect_duckdb(str(database))
    try:
        assert len(stored(connection)) == 15
    finally:
        connection.close()


def test_rerun_under_new_york_time_yields_no_duplicates(tmp_path, new_york_time):
    database = tmp_path / "vitals.duckdb"
    assets = [timeseries_asset(one_sample_per_minute)]
    key = "2025-10-12-14:00"
    assert run(assets, database, partition_key=key).success
    STORES.clear()
    again = run(assets, database, partition_key=key)
    assert again.success
    # The window bound in UTC whatever the process zone: the same 5 rows, unchanged.
    assert STORES == [("timeseries", WINDOW, {"timeseries": StoreCounts(unchanged=5)})]
    connection = connect_duckdb(str(database))
    try:
        assert [row[1] for row in stored(connection)] == one_sample_per_minute(*WINDOW).column(
            "ts"
        ).to_pylist()
    finally:
        connection.close()


def test_bundle_output_writes_the_companion_in_the_same_run(tmp_path):
    def bundle(start: datetime, end: datetime) -> WindowBundle:
        rows = one_sample_per_minute(start, end)
        quality = _quality(("p1", start, rows.num_rows))
        return WindowBundle(rows=rows, companions={"quality": quality})

    database = tmp_path / "vitals.duckdb"
    result = run([timeseries_asset(bundle)], database, partition_key="2025-10-12-14:00")
    assert result.success
    assert STORES == [
        ("timeseries", WINDOW, {"timeseries": StoreCounts(inserted=5), "quality": StoreCounts(inserted=1)})
    ]
    connection = connect_duckdb(str(database))
    try:
        assert stored(connection, "quality") == [("p1", T0, 5)]
    finally:
        connection.close()


def test_unpartitioned_asset_run(tmp_path):
    names = [["p1", "p2"]]

    @dg.asset(key=[SITE, "points"], metadata={"schema": SITE, "merge_keys": ["name"]})
    def points() -> pa.Table:
        return pa.table({"name": names[0], "point_type": ["analog"] * len(names[0])})

    database = tmp_path / "vitals.duckdb"
    assert run([points], database).success
    names[0] = ["p2", "p3"]
    STORES.clear()
    result = run([points], database)
    assert result.success
    # No window: the merge covers the whole table (p1, no longer listed, is kept).
    assert STORES == [("points", None, {"points": StoreCounts(inserted=1, unchanged=1)})]
    assert materialization_metadata(result, "demo_office__points") == [{}]
    connection = connect_duckdb(str(database))
    try:
        assert [row[0] for row in stored(connection, "points")] == ["p1", "p2", "p3"]
    finally:
        connection.close()


def test_run_against_a_locked_file_fails_with_the_lock_error(tmp_path):
    database = tmp_path / "vitals.duckdb"
    holder = hold_file(database, 30)
    try:
        result = run(
            [timeseries_asset(one_sample_per_minute)], database,
            partition_key="2025-10-12-14:00", lock_timeout_seconds=0.3,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    error = failure.step_failure_data.error
    text = error.to_string() + (error.cause.to_string() if error.cause else "")
    assert "DuckDBFileLockedError" in text
    assert str(database) in text
