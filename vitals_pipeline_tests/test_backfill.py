"""Long backfills run as bounded chunks, each a normal range run on the instance."""

from datetime import UTC, datetime

import dagster as dg
import duckdb

from vitals_pipeline.backfill import backfill
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import Window, split_window, window_for_keys
from vitals_pipeline_tests.conftest import SITE


def test_split_window_covers_exactly_in_whole_partitions():
    w = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, 5, tzinfo=UTC))
    pieces = split_window(w, 24)
    assert [p.partitions for p in pieces] == [288, 288, 60]
    assert pieces[0].start == w.start and pieces[-1].end == w.end
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))


def test_backfill_runs_one_run_per_chunk_and_stores_everything(sim, pipeline_env, monkeypatch):
    monkeypatch.setenv("VITALS_CHECKS", "off")
    window = window_for_keys("2026-03-09-10:00", "2026-03-09-11:55")
    lines: list[str] = []
    instance = dg.DagsterInstance.ephemeral()
    results = backfill(build_definitions(Settings.from_env()), instance, [SITE], window, 1, lines.append)
    assert [r.success for r in results] == [True, True]
    assert len(lines) == 2 and lines[0].startswith("[1/2]")
    assert len({r.run_id for r in results}) == 2
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        stored = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchone()[0]
    assert stored == len(sim.ground_truth(SITE, window.start, window.end)) == sum(r.samples for r in results)


def test_backfill_keeps_no_run_frame_alive_between_chunks(sim, pipeline_env):
    """With checks on (the first check evaluation is where Dagster pins a step's context), no
    run's output frame survives its chunk: a week's backfill peaks like a day's."""
    import gc

    from vitals_pipeline.storage.duckdb_io import WindowBundle

    def frames_alive() -> int:
        gc.collect()
        return sum(type(o) is WindowBundle for o in gc.get_objects())

    before = frames_alive()
    window = window_for_keys("2026-03-09-10:00", "2026-03-09-11:55")
    with dg.DagsterInstance.ephemeral() as instance:
        results = backfill(build_definitions(Settings.from_env()), instance, [SITE], window, 1, lambda _: None)
        assert [r.success for r in results] == [True, True]
        assert frames_alive() == before
        # Backfill runs judge the window before storing it (not while): same rows and figures.
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey([SITE, "timeseries"]), asset_partitions=["2026-03-09-11:55"]),
            limit=1,
        ).records[0]
        figures = record.asset_materialization.metadata
        assert figures["points_reporting"].value > 0 and figures["samples"].value > 0
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        partitions = con.execute(f"SELECT count(DISTINCT window_start) FROM {SITE}.quality").fetchone()[0]
    assert partitions == 24
