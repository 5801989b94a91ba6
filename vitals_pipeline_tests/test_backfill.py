"""Long backfills run as bounded chunks, each one normal range run for all the chosen sites."""

from datetime import UTC, datetime

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.simulator import SiteSpec
from vitals_pipeline.backfill import backfill
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.windows import PARTITION, Window, partition_start, split_window, window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, SITE, simulator

OTHER = "other_site"
GHOST = "ghost_site"  # unknown to ACE: every route answers 403


def test_split_window_covers_exactly_in_whole_partitions():
    w = Window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 3, 5, tzinfo=UTC))
    pieces = split_window(w, 24)
    assert [p.partitions for p in pieces] == [288, 288, 60]
    assert pieces[0].start == w.start and pieces[-1].end == w.end
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))


@pytest.fixture
def sim():
    return simulator(SiteSpec(SITE, points=60, seed=3), SiteSpec(OTHER, points=30, seed=5))


def test_backfill_runs_one_run_per_chunk_for_all_sites_and_stores_everything(sim, pipeline_env, monkeypatch):
    """Two chunks, each ONE run for every chosen site; a site ACE refuses fails its first chunk
    and is left out of the later ones, the others go on."""
    monkeypatch.setenv("VITALS_CHECKS", "off")
    monkeypatch.setenv("ACE_SITES", f"{SITE},{GHOST},{OTHER}")
    window = window_for_keys("2026-03-09-10:00", "2026-03-09-11:55")
    lines: list[str] = []
    instance = dg.DagsterInstance.ephemeral()
    defs = build_definitions(Settings.from_env())
    results = backfill(defs, instance, [SITE, GHOST, OTHER], window, 1, lines.append)
    assert [(r.site, r.success) for r in results] == [
        (SITE, True), (GHOST, False), (OTHER, True), (SITE, True), (OTHER, True)
    ]
    assert len(lines) == 2 and lines[0].startswith("[1/2]") and lines[1].startswith("[2/2]")
    assert f"FAILED: {GHOST}:" in lines[0] and GHOST not in lines[1]
    [ghost] = [r for r in results if r.site == GHOST]
    assert "HTTP 403" in ghost.error and SIM_KEY not in ghost.error
    run_ids = [r.run_id for r in results]
    assert len(set(run_ids[:3])) == 1 and len(set(run_ids[3:])) == 1 and run_ids[0] != run_ids[3]
    runs = instance.get_run_records()
    assert len(runs) == 2, "one run per chunk, whatever the number of sites"
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        for site in (SITE, OTHER):
            stored = con.execute(f"SELECT count(*) FROM {site}.timeseries").fetchone()[0]
            truth = len(sim.ground_truth(site, window.start, window.end))
            assert stored == truth == sum(r.samples for r in results if r.site == site), site
        schemas = {r[0] for r in con.execute("SELECT schema_name FROM duckdb_tables()").fetchall()}
    assert GHOST not in schemas


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
        # The lean per-partition figures (a range run writes one materialization per partition);
        # null values are counted in the quality table, not here.
        figures = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert set(figures) == {"samples", "points", "completeness_pct"}
        start = partition_start("2026-03-09-11:55")
        assert figures["samples"] == len(sim.ground_truth(SITE, start, start + PARTITION)) > 0
        assert figures["points"] > 0 and figures["completeness_pct"] == 100.0
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        partitions = con.execute(f"SELECT count(DISTINCT window_start) FROM {SITE}.quality").fetchone()[0]
    assert partitions == 24
