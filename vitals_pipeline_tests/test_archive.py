"""`<site>/archive`: real runs export a day of simulator samples to zstd Parquet (Hive layout),
read back by DuckDB and pyarrow; re-exports replace the file atomically and never shrink it."""

import os
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from vitals_pipeline.ace.simulator import Simulator, SiteSpec
from vitals_pipeline.assets.archive import ARCHIVE_CHECK, archive_key
from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.config import ConfigError, Settings, parse_archive_uri
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline_tests.conftest import SITE, simulator
from vitals_pipeline_tests.helpers import run_assets, step_failures

DAY = "2026-03-09"
FIRST, LAST = "2026-03-09-10:00", "2026-03-09-11:55"


@pytest.fixture
def sim() -> Simulator:
    return simulator(SiteSpec(SITE, points=40, seed=3))


@pytest.fixture(autouse=True)
def archive_root(derived_env):
    return derived_env


def run(selection, *, instance, **kwargs):
    return run_assets(selection, instance=instance, **kwargs)


def failure_messages(result) -> str:
    return " ".join(step_failures(result))


def day_rows(path):
    with duckdb.connect(path, read_only=True) as con:
        return con.execute(
            f"SELECT point, ts, value, raw_value FROM {SITE}.timeseries "
            "WHERE ts >= TIMESTAMP '2026-03-09' AND ts < TIMESTAMP '2026-03-10' ORDER BY ts, point"
        ).fetchall()


def failed_site(result) -> dict:
    """The one site the fleet step `archive` names in its failure: the failure's description
    lists it under the step's summary line, its `failed_sites` metadata holds its error."""
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "archive"
    user = failure.event_specific_data.user_failure_data
    [entry] = user.metadata["failed_sites"].value
    assert user.description.startswith(f"1 of 1 sites failed (archive of {DAY}):\n- {SITE}: {entry['error']}\n")
    return entry


def archive_materialization(result):
    """The run's one materialization of `<site>/archive` (the fleet step `archive` yields one per
    site it exported)."""
    [materialization] = result.asset_materializations_for_node("archive")
    assert materialization.asset_key == archive_key(SITE)
    return materialization


def check_evaluation(result):
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == ARCHIVE_CHECK
    return evaluation


def test_day_exported_to_zstd_parquet_readable_by_duckdb_and_pyarrow(sim, pipeline_env, archive_root):
    instance = dg.DagsterInstance.ephemeral()
    db = pipeline_env["VITALS_DUCKDB_PATH"]
    assert run([timeseries_key(SITE)], instance=instance, tags=range_tags(FIRST, LAST)).success
    # A sample of the next day must stay out of this day's file.
    assert run([timeseries_key(SITE)], instance=instance, partition_key="2026-03-10-00:00").success
    result = run([archive_key(SITE)], instance=instance, partition_key=DAY)
    assert result.success, failure_messages(result)

    path = archive_root / f"site={SITE}" / f"date={DAY}" / "part-0.parquet"
    expected = day_rows(db)
    assert expected and any(r[2] == 0.0 for r in expected)

    # pyarrow: the exact rows, zstd.
    table = pq.read_table(path)
    assert table.column_names == ["point", "ts", "value", "raw_value"]
    assert [tuple(r.values()) for r in table.to_pylist()] == expected
    metadata = pq.ParquetFile(path).metadata
    assert {metadata.row_group(0).column(i).compression for i in range(4)} == {"ZSTD"}
    # pyarrow and DuckDB read site and date from the Hive layout.
    dataset = ds.dataset(archive_root, format="parquet", partitioning="hive")
    assert dataset.to_table(filter=ds.field("site") == SITE).num_rows == len(expected)
    with duckdb.connect() as con:
        got = con.execute(
            "SELECT site, date::VARCHAR, count(*), min(ts), max(ts) FROM read_parquet(?, hive_partitioning = true) "
            "GROUP BY ALL",
            [str(archive_root / "**" / "*.parquet")],
        ).fetchall()
    assert got == [(SITE, DAY, len(expected), expected[0][1], expected[-1][1])]

    meta = archive_materialization(result).metadata
    assert meta["rows"].value == len(expected)
    assert meta["bytes"].value == os.path.getsize(path)
    assert meta["path"].value == str(path)
    evaluation = check_evaluation(result)
    assert evaluation.passed
    assert evaluation.metadata["parquet_rows"].value == evaluation.metadata["duckdb_rows"].value == len(expected)


def test_reexport_replaces_the_file_with_late_samples_and_leaves_no_temp_file(
    sim, pipeline_env, archive_root
):
    instance = dg.DagsterInstance.ephemeral()
    db = pipeline_env["VITALS_DUCKDB_PATH"]
    sim.faults.late_devices = 3
    sim.faults.late_seconds = 1800
    sim.set_now(datetime(2026, 3, 9, 12, 1, tzinfo=UTC))
    assert run([timeseries_key(SITE)], instance=instance, tags=range_tags(FIRST, LAST)).success
    assert run([archive_key(SITE)], instance=instance, partition_key=DAY).success
    path = archive_root / f"site={SITE}" / f"date={DAY}" / "part-0.parquet"
    first = pq.read_metadata(path).num_rows

    sim.set_now(datetime(2026, 3, 9, 14, tzinfo=UTC))  # the late samples have arrived
    assert run([timeseries_key(SITE)], instance=instance, tags=range_tags(FIRST, LAST)).success
    result = run([archive_key(SITE)], instance=instance, partition_key=DAY)
    assert result.success
    assert pq.read_metadata(path).num_rows == len(day_rows(db)) > first
    assert check_evaluation(result).passed
    assert archive_materialization(result).metadata["replaced_rows"].value == first
    assert sorted(os.listdir(path.parent)) == ["part-0.parquet"]

    # The same day again: the same rows (idempotent).
    assert run([archive_key(SITE)], instance=instance, partition_key=DAY).success
    assert [tuple(r.values()) for r in pq.read_table(path).to_pylist()] == day_rows(db)

    # A damaged file is replaced, not a reason to stop exporting the day.
    path.write_bytes(b"not parquet")
    assert run([archive_key(SITE)], instance=instance, partition_key=DAY).success
    assert pq.read_metadata(path).num_rows == len(day_rows(db))


def test_reexport_with_fewer_rows_is_refused_unless_allowed(sim, pipeline_env, archive_root):
    instance = dg.DagsterInstance.ephemeral()
    db = pipeline_env["VITALS_DUCKDB_PATH"]
    assert run([timeseries_key(SITE)], instance=instance, tags=range_tags(FIRST, LAST)).success
    assert run([archive_key(SITE)], instance=instance, partition_key=DAY).success
    path = archive_root / f"site={SITE}" / f"date={DAY}" / "part-0.parquet"
    before = path.read_bytes()
    with duckdb.connect(db) as con:  # e.g. VITALS_DUCKDB_PATH now names another, newer file
        con.execute(f"DELETE FROM {SITE}.timeseries WHERE ts >= TIMESTAMP '2026-03-09 11:00'")

    result = run([archive_key(SITE)], instance=instance, partition_key=DAY)
    assert not result.success
    entry = failed_site(result)
    assert entry["site"] == SITE and "refusing to replace it with fewer" in entry["error"]
    assert "allow_fewer_rows: true" in entry["error"], "says how to override"
    assert not result.asset_materializations_for_node("archive")
    assert path.read_bytes() == before

    config = {"ops": {"archive": {"config": {"allow_fewer_rows": True}}}}
    result = run([archive_key(SITE)], instance=instance, partition_key=DAY, run_config=config)
    assert result.success, failure_messages(result)
    assert pq.read_metadata(path).num_rows == len(day_rows(db))


def test_without_stored_samples_it_fails_saying_what_to_do(pipeline_env, archive_root):
    result = run([archive_key(SITE)], instance=dg.DagsterInstance.ephemeral(), partition_key=DAY)
    assert not result.success
    entry = failed_site(result)
    assert entry["site"] == SITE
    assert f"no {SITE}.timeseries table: materialize {SITE}/timeseries for {DAY} first" in entry["error"]
    assert not archive_root.exists()


def test_archive_partitions_are_utc_days_from_the_partitions_start(pipeline_env, monkeypatch):
    monkeypatch.setenv("VITALS_PARTITIONS_START", "2026-03-01-07:35")
    defs = build_definitions(Settings.from_env())
    partitions = defs.resolve_assets_def(archive_key(SITE)).partitions_def
    keys = partitions.get_partition_keys(current_time=datetime(2026, 3, 4, 0, 5, tzinfo=UTC))
    assert keys == ["2026-03-01", "2026-03-02", "2026-03-03"]
    window = partitions.time_window_for_partition_key("2026-03-02")
    assert (window.start, window.end - window.start) == (datetime(2026, 3, 2, tzinfo=UTC), timedelta(days=1))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "data/archive"),
        ("  ", "data/archive"),
        ("/srv/archive/", "/srv/archive"),
        ("file:///srv/archive", "/srv/archive"),
        ("s3://bucket/vitals/", "s3://bucket/vitals"),
    ],
)
def test_archive_uri_setting(value, expected):
    assert parse_archive_uri(value) == expected


@pytest.mark.parametrize(("value", "says"), [("gs://bucket/x", "only a local folder"), ("s3://", "names no bucket")])
def test_archive_uri_setting_refuses_what_it_cannot_write(value, says):
    with pytest.raises(ConfigError, match=says):
        parse_archive_uri(value)
