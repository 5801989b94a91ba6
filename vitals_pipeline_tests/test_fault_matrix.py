"""The fault matrix: every simulator fault, one real range run each, DuckDB == ground truth.

Each case materializes `test_site/timeseries` for 2026-03-09 11:00-11:15 UTC (three 5-minute
partitions, ~305 samples of a 60-point site, with NaN, JSON null, zero readings and point names
with spaces, `%` and `°`) through the real definitions, in-process, over loopback HTTP, into a
fresh DuckDB file, and compares the whole table with `Simulator.ground_truth` for the window:
zero missing, zero duplicated, zero altered (value == Python float() of the wire string, raw_value
== the wire string when it is not a finite number), nothing stored outside the window. Each case
also proves its fault really happened (server fault counters, the run's fetch figures), so a fault
that silently stopped firing fails the test instead of passing it.

The fetch figures (pages, requests, retries, page size, what the cleaning dropped per partition)
are no longer materialization metadata (a fleet keeps that lean): they are read from the step's
own fetch of the site (`fetch_site_window`, wrapped to keep its result, run unchanged), and the
step's summary log line must report the same pages, requests and retries.

README "Reliability" has the table of what was tried.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from vitals_pipeline.ace import client as client_module
from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline.assets import timeseries as timeseries_module
from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.windows import window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, SIM_NOW, SITE
from vitals_pipeline_tests.helpers import (
    ace_run_config,
    assert_exact,
    diff,
    expected_rows,
    materialized_partitions,
    run_assets,
    step_failures,
    stored_rows,
)

FIRST, LAST = "2026-03-09-11:00", "2026-03-09-11:10"
WINDOW = window_for_keys(FIRST, LAST)
KEY = timeseries_key(SITE)


@dataclass(frozen=True)
class Case:
    faults: dict[str, Any] = field(default_factory=dict)
    page_size: int | None = None  # ACE_PAGE_SIZE
    resource: dict[str, Any] = field(default_factory=dict)  # AceResource run config
    scenario: str = "once"  # once | late (fetch early, re-fetch later) | empty_refetch
    # Proof that the fault happened: (server stats, run metadata, simulator) -> assertion.
    proof: Callable[[dict, dict, Simulator], None] | None = None


def _faults_served(name: str, n: int = 1):
    def proof(stats, meta, sim):
        assert stats["faults"].get(name, 0) >= n, stats["faults"]
        assert meta["run_retries"] >= n, meta

    return proof


def _page_size_stepped_down(stats, meta, sim):
    assert stats["faults"] == {} and meta["run_page_size"] == 10000, meta


def _paging_faults(stats, meta, sim):
    assert stats["faults"].get("429", 0) >= 2 and stats["faults"].get("503", 0) >= 1, stats
    assert meta["run_pages"] >= 5, meta


def _cursor_defect_bites(stats, meta, sim):
    truth = sim.ground_truth(SITE, WINDOW.start, WINDOW.end)
    biggest = max(Counter(t for _, t, _ in truth).values())
    # A timestamp holding more than two pages: some page starts and ends inside it, where ACE's
    # own next_cursor repeats the page forever.
    assert biggest > 2 * 3, biggest
    assert meta["run_pages"] == math.ceil(len(truth) / 3), meta


def _repeats_inside_big_timestamps(stats, meta, sim):
    # Pages of 3 and a timestamp holding more than two pages (proved below), every page after the
    # first repeating the row before it: a page that starts and ends inside one timestamp then
    # holds 4 rows of it but 3 new names. A cursor counting rows (not distinct names) skips one
    # row of the timestamp after each such page; the simulator's repeated row is the one just
    # before the page it serves, i.e. the skipped one, so the store still ends up complete, but
    # that row is then new rather than a repeat. Hence: every page after the first must repeat a
    # row the run already had (one duplicate dropped per page), and no page may be saved.
    assert meta["run_duplicates_dropped"] == meta["run_pages"] - 1, meta
    _cursor_defect_bites(stats, meta, sim)


def _sum(meta_by_partition: dict, name: str) -> int:
    return sum(m[name] for m in meta_by_partition.values())


def _values_present(stats, meta, sim):
    values = [v for _, _, v in sim.ground_truth(SITE, WINDOW.start, WINDOW.end)]
    assert None in values, "a JSON null"
    assert {"NaN", "nan"} & set(values), "a NaN"
    assert any(v is not None and v.replace(".", "").strip("0") == "" for v in values), "a zero"
    assert {"fault", "offline"} & set(values), "text"


def _data_gaps(stats, meta, sim):
    points = {p["name"] for p in sim.points(SITE)}
    seen = {n for n, _, _ in sim.ground_truth(SITE, WINDOW.start, WINDOW.end)}
    assert len(seen) < len(points), "the dead device's points send nothing"


CASES: dict[str, Case] = {
    "429 Retry-After (seconds, then an HTTP date)": Case(
        {"script": ["429", "429-date"], "retry_after": 0.2},
        proof=lambda stats, meta, sim: (
            _faults_served("429")(stats, meta, sim),
            _faults_served("429-date")(stats, meta, sim),
        ),
    ),
    "500, 502, 503, 504 in a row (JSON body, HTML gateway pages)": Case(
        {"script": ["500", "502", "503", "504"]},
        proof=lambda stats, meta, sim: [
            _faults_served(code)(stats, meta, sim) for code in ("500", "502", "503", "504")
        ],
    ),
    "connection reset": Case({"script": ["reset"]}, proof=_faults_served("reset")),
    "read timeout": Case(
        {"script": ["timeout"], "hang_seconds": 1.0},
        resource={"timeout_seconds": 0.3},
        proof=_faults_served("timeout"),
    ),
    "truncated body": Case({"script": ["truncate"]}, proof=_faults_served("truncate")),
    "invalid JSON (200 + HTML)": Case(
        {"script": ["invalid_json"]}, proof=_faults_served("invalid_json")
    ),
    "every page truncated at 50000: page size stepped down": Case(
        {"truncate_min_page_size": 50000}, page_size=50000, proof=_page_size_stepped_down
    ),
    "429 and 503 while paging (cursor re-sent)": Case(
        {"rate_limit_every": 3, "server_error_every": 5, "retry_after": 0.2},
        page_size=50,
        proof=_paging_faults,
    ),
    "cursor defect, page size 3": Case(page_size=3, proof=_cursor_defect_bites),
    "late samples, re-fetched": Case({"late_devices": 3, "late_seconds": 600}, scenario="late"),
    "gateway outage on a re-fetch (empty 200)": Case(scenario="empty_refetch"),
    "duplicate rows across pages": Case(
        {"duplicate_across_pages": True},
        page_size=50,
        proof=lambda stats, meta, sim: None,  # duplicates_dropped checked per partition below
    ),
    "duplicate rows inside a big timestamp, page size 3": Case(
        {"duplicate_across_pages": True}, page_size=3, proof=_repeats_inside_big_timestamps
    ),
    "samples outside the window": Case({"outside_window_rows": 5}),
    "NaN, null, zero and text values": Case({"text_points": 2}, proof=_values_present),
    "data outage and a dead device (truth has gaps)": Case(
        {
            "outages": [["2026-03-09T11:03:00", "2026-03-09T11:06:00"]],
            "dead_devices": 1,
            "dead_after": None,
        },
        proof=_data_gaps,
    ),
    "all at once": Case(
        {
            "script": ["reset", "truncate", "503"],
            "rate_limit_every": 4,
            "retry_after": 0.05,
            "duplicate_across_pages": True,
            "outside_window_rows": 3,
            "text_points": 1,
        },
        page_size=10,
        proof=_faults_served("reset"),
    ),
}


def _figures(fetched) -> dict[str, Any]:
    """What one run's fetch of the site cost and cleaned (the figures that were run metadata)."""
    return {
        "run_samples": fetched.result.samples.num_rows,
        "run_pages": fetched.stats.pages,
        "run_requests": fetched.stats.requests,
        "run_retries": fetched.stats.retries,
        "run_page_size": fetched.stats.page_size,
        "run_duplicates_dropped": fetched.result.duplicates_dropped,
    }


def _summary_line(instance, run_id: str) -> str:
    [line] = [
        entry.user_message for entry in instance.all_logs(run_id)
        if not entry.is_dagster_event and " samples in " in entry.user_message
    ]
    return line


@pytest.mark.parametrize("name", list(CASES))
def test_fault_loses_nothing(name, monkeypatch, tmp_path):
    import dagster as dg

    # Backoff waits a tenth of the real ones (Retry-After stays honoured as sent): the retry logic
    # under test is unchanged, the suite just does not sleep for seconds.
    real_backoff = client_module.backoff_seconds
    monkeypatch.setattr(
        client_module, "backoff_seconds", lambda *args: real_backoff(*args) / 10
    )
    case = CASES[name]
    sim = Simulator(SimulatorConfig(sites=[SiteSpec(SITE, points=60, seed=3)], api_key=SIM_KEY))
    sim.set_now(SIM_NOW)
    db = tmp_path / "vitals.duckdb"
    with SimulatorServer(sim) as server:
        env = {
            "ACE_API_URL": server.url,
            "ACE_API_KEY": SIM_KEY,
            "ACE_SITES": SITE,
            "VITALS_DUCKDB_PATH": str(db),
            "VITALS_PARTITIONS_START": "2026-03-01-00:00",
        }
        if case.page_size:
            env["ACE_PAGE_SIZE"] = str(case.page_size)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        # The data-quality checks are not under test here (and could fail a run by design on a
        # data fault): off, for isolation and speed. The crash and concurrency tests run with
        # them on, so the quality rows' write in the same transaction is covered there.
        monkeypatch.setenv("VITALS_CHECKS", "off")
        sim.faults.update(case.faults)
        instance = dg.DagsterInstance.ephemeral()
        run_config = ace_run_config(**case.resource) if case.resource else None
        fetches = []  # the site's fetch of each run, as the step got it
        real_fetch = timeseries_module.fetch_site_window

        def kept_fetch(*args, **kwargs):
            fetched = real_fetch(*args, **kwargs)
            fetches.append(fetched)
            return fetched

        monkeypatch.setattr(timeseries_module, "fetch_site_window", kept_fetch)

        def materialize():
            result = run_assets(
                [KEY], tags=range_tags(FIRST, LAST), instance=instance, run_config=run_config
            )
            assert result.success, step_failures(result)
            assert materialized_partitions(result, KEY) == WINDOW.partition_keys()
            return result

        if case.scenario == "late":
            sim.set_now(WINDOW.end + timedelta(minutes=1))
            materialize()
            early = diff(stored_rows(db), expected_rows(sim, WINDOW.start, WINDOW.end))
            assert early.missing and not (early.duplicated or early.altered or early.unexpected)
            sim.set_now(SIM_NOW)
        elif case.scenario == "empty_refetch":
            materialize()
            before = assert_exact(db, sim, WINDOW.start, WINDOW.end)
            sim.faults.empty_responses = True
        result = materialize()
        stats = server.stats

    assert_exact(db, sim, WINDOW.start, WINDOW.end)
    assert len(fetches) == (2 if case.scenario in ("late", "empty_refetch") else 1)
    fetched = fetches[-1]
    meta = _figures(fetched)
    # The step reports the same figures in its summary line.
    line = _summary_line(instance, result.run_id)
    assert (
        f"{meta['run_samples']} samples in {meta['run_pages']} pages "
        f"({meta['run_requests']} requests, {meta['run_retries']} retries)"
    ) in line, (line, meta)
    if case.scenario == "empty_refetch":
        assert meta["run_samples"] == 0 and stored_rows(db) == before
    per_partition = {key: figures.as_metadata() for key, figures in fetched.result.partitions.items()}
    assert sorted(per_partition) == WINDOW.partition_keys()
    if case.faults.get("duplicate_across_pages"):
        assert _sum(per_partition, "duplicates_dropped") > 0, per_partition
    if case.faults.get("outside_window_rows"):
        assert _sum(per_partition, "out_of_window_dropped") == 2 * case.faults["outside_window_rows"]
    if case.proof is not None:
        case.proof(stats, meta, sim)
