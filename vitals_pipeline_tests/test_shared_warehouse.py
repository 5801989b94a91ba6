"""The shared warehouse (VITALS_WAREHOUSE_URL, PostgreSQL) against a real PostgreSQL server.

1. The storage contract and the merge semantics there: column types, naive UTC microseconds,
   value/raw_value, an empty or partial re-fetch deleting nothing, changed values updated, bad
   frames refused, one transaction with the companion tables; a real run of the pipeline exact
   against the simulator's ground truth, its checks passing; read back with psql.
2. Writer PROCESSES storing different sites at the same time, not serialised (their write
   transactions overlap in time), while a reader process holds its connections open the whole
   time, one of them idle inside a transaction: no writer blocked or failed, the reader never
   waited, and its next query after the writes sees their rows; every site exact.
3. SIGKILL of a writer process at seeded points of its write: each partition old or new, never
   a mix, no transaction left behind on the server, and a re-run exact.
4. VITALS_WAREHOUSE_URL chooses the warehouse in one place, and its password shows nowhere.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow as pa
import pytest

from vitals_pipeline.ace.simulator import SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.config import ConfigError, Settings
from vitals_pipeline.definitions import build_definitions, choose_warehouse
from vitals_pipeline.storage.duckdb_io import CompanionTable, store_slice
from vitals_pipeline.storage.postgres_warehouse import PostgresWarehouse
from vitals_pipeline.storage.warehouse import DuckDBWarehouse
from vitals_pipeline.windows import floor_to_partition, partition_key, window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, SIM_NOW, SITE, simulator
from vitals_pipeline_tests.helpers import diff, expected_rows, run_assets, step_failures
from vitals_pipeline_tests.postgres import find_bindir, postgres_server  # noqa: F401  (fixture)
from vitals_pipeline_tests.shared_warehouse import (
    READER,
    WRITER,
    PostgresWarehouseForTests,
    environment,
    read_until,
    shared_warehouse,  # noqa: F401  (fixture)
    start_python,
)

FIRST, LAST = "2026-03-09-10:00", "2026-03-09-10:10"
WINDOW = window_for_keys(FIRST, LAST)


def _ts(minute: int, micro: int = 0) -> datetime:
    return datetime(2026, 3, 9, 10, minute, 0, micro)


def _frame(rows: list[tuple]) -> pa.Table:
    point, ts, value, raw = zip(*rows) if rows else ([], [], [], [])
    return pa.table(
        {"point": pa.array(point, pa.string()), "ts": pa.array(ts, pa.timestamp("us")),
         "value": pa.array(value, pa.float64()), "raw_value": pa.array(raw, pa.string())}
    )


def test_storage_contract_and_merge_semantics(shared_warehouse: PostgresWarehouseForTests):  # noqa: F811
    wh = PostgresWarehouse(url=shared_warehouse.url)
    window = (_ts(0), _ts(5))
    store = dict(schema="site_a", table="timeseries", merge_keys=["point", "ts"], time_column="ts",
                 window=window)
    first = [("a/1", _ts(0, 1), 1.6100000143051147, None), ("a/1", _ts(1, 999999), 0.0, None),
             ("a/2", _ts(0, 1), None, "NaN"), ("a/2", _ts(2), None, "offline"), ("b", _ts(3), None, None),
             ("c", _ts(4), -24.8571, None), ("d", _ts(4, 5), None, "")]
    with wh.connect() as conn:
        counts = store_slice(conn, rows=_frame(first), **store)
        assert counts["timeseries"].inserted == len(first)
        # A re-fetch that lost part of the window (an API outage): nothing deleted, one value
        # changed, one new sample.
        second = [("a/1", _ts(1, 999999), 0.5, None), ("e", _ts(4, 7), 7.0, None)]
        counts = store_slice(conn, rows=_frame(second), **store)["timeseries"]
        assert (counts.inserted, counts.updated, counts.unchanged) == (1, 1, 0)
        # An empty re-fetch deletes nothing; the same frame again changes nothing.
        assert store_slice(conn, rows=_frame([]), **store)["timeseries"].inserted == 0
        again = store_slice(conn, rows=_frame(second), **store)["timeseries"]
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
        # Refused before anything is written: duplicate keys, rows outside the window.
        with pytest.raises(ValueError, match="more than once"):
            store_slice(conn, rows=_frame([("z", _ts(1), 1.0, None), ("z", _ts(1), 2.0, None)]), **store)
        with pytest.raises(ValueError, match="outside the run's window"):
            store_slice(conn, rows=_frame([("z", _ts(6), 1.0, None)]), **store)

        # Companions are in the same transaction: one that fails takes the samples back.
        def broken():
            raise RuntimeError("quality rows could not be computed")

        with pytest.raises(RuntimeError, match="quality rows"):
            store_slice(conn, rows=_frame([("z", _ts(2), 1.0, None)]), companions=broken, **store)
        quality = pa.table({"window_start": pa.array([_ts(0)], pa.timestamp("us")), "point": ["a/1"],
                            "status": ["ok"], "flatline": [False]})
        counts = store_slice(
            conn, rows=_frame([("f", _ts(2), 2.0, None)]), **store,
            companions={"quality": CompanionTable(quality, ("point", "window_start"), "window_start")},
        )
        assert counts["quality"].inserted == 1 and counts["timeseries"].inserted == 1

    expected = {(p, t): (v, r) for p, t, v, r in first}
    expected |= {("a/1", _ts(1, 999999)): (0.5, None), ("e", _ts(4, 7)): (7.0, None), ("f", _ts(2)): (2.0, None)}
    stored = shared_warehouse.stored("site_a")
    assert {(p, t): (v, r) for p, t, v, r in stored} == expected
    assert len(stored) == len(expected)  # no key twice
    # Exact doubles, microseconds, NULL apart from the empty string, naive UTC types.
    assert ("a/1", _ts(0, 1), 1.6100000143051147, None) in stored and ("d", _ts(4, 5), None, "") in stored
    types = shared_warehouse.query(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'site_a' AND table_name = 'timeseries' ORDER BY ordinal_position"
    )
    assert types == [("point", "text"), ("ts", "timestamp without time zone"),
                     ("value", "double precision"), ("raw_value", "text")]
    assert shared_warehouse.query(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'site_a.timeseries'::regclass AND i.indisprimary"
    ) and shared_warehouse.query("SELECT count(*) FROM site_a.quality") == [(1,)]
    # Read back through the IO manager's path (load_slice), as Arrow, in the window only.
    from vitals_pipeline.storage.duckdb_io import load_slice

    with wh.connect() as conn:
        loaded = load_slice(conn, schema="site_a", table="timeseries", time_column="ts",
                            window=(_ts(4), _ts(5)))
    assert loaded.schema.field("ts").type == pa.timestamp("us")
    assert sorted(loaded.column("point").to_pylist()) == ["c", "d", "e"]


def test_a_real_run_lands_exactly_and_psql_reads_it(shared_warehouse, monkeypatch, tmp_path):  # noqa: F811
    sim = simulator(SiteSpec(SITE, points=40, seed=3))
    sim.faults.text_points = 2  # readings that are text on the wire: value NULL, raw_value kept
    with SimulatorServer(sim) as server:
        for name, value in {
            "ACE_API_URL": server.url, "ACE_API_KEY": SIM_KEY, "ACE_SITES": SITE,
            "VITALS_PARTITIONS_START": "2026-03-01-00:00",
            "VITALS_DUCKDB_PATH": str(tmp_path / "unused.duckdb"), **shared_warehouse.env(),
        }.items():
            monkeypatch.setenv(name, value)
        result = run_assets([timeseries_key(SITE)], tags=range_tags(FIRST, LAST))
        assert result.success, step_failures(result)
        evaluations = [e.event_specific_data for e in result.all_events
                       if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
        blocking = {"no_duplicate_samples", "no_future_samples", "samples_inside_window"}
        assert {e.check_name for e in evaluations if e.passed} >= blocking
        # A re-run of an overlapping window reads the stored rows back (quality inputs) and
        # changes nothing that was right.
        again = run_assets([timeseries_key(SITE)], tags=range_tags("2026-03-09-10:05", "2026-03-09-10:15"))
        assert again.success, step_failures(again)
    whole = window_for_keys(FIRST, "2026-03-09-10:15")
    found = diff(shared_warehouse.stored(SITE), expected_rows(sim, whole.start, whole.end))
    assert found.clean, str(found)
    assert not (tmp_path / "unused.duckdb").exists(), "the DuckDB file was not the warehouse"
    stored = shared_warehouse.stored(SITE)
    assert any(v is None and r not in (None, "NaN", "nan") for _, _, v, r in stored), "text readings"
    assert any(t.microsecond for _, t, _, _ in stored), "microseconds kept"
    assert shared_warehouse.query(f"SELECT count(*) FROM {SITE}.quality")[0][0] > 0

    # An analyst's plain SQL, with psql (PostgreSQL's own client).
    server_ = shared_warehouse.server
    psql = subprocess.run(
        [str(find_bindir() / "psql"), "-h", server_.host, "-p", str(server_.port), "-U", server_.user,
         "-d", shared_warehouse.database, "-At", "-F", ",", "-c",
         f"SELECT count(*), count(DISTINCT point), min(ts), max(ts) FROM {SITE}.timeseries"],
        env={**os.environ, "PGPASSWORD": server_.password}, capture_output=True, text=True, timeout=60,
    )
    assert psql.returncode == 0, psql.stderr
    count, points, first_ts, last_ts = psql.stdout.strip().split(",")
    assert int(count) == len(stored) and int(points) == len({r[0] for r in stored})
    assert first_ts == str(min(r[1] for r in stored)) and last_ts == str(max(r[1] for r in stored))


SITES = ["north_office", "south_lab", "east_depot"]
PREFILL = ("2026-03-09-10:00", "2026-03-09-10:10")
WRITES = (("2026-03-09-10:15", "2026-03-09-10:25"), ("2026-03-09-10:30", "2026-03-09-10:40"))
HOLD_SECONDS = 3.0  # each writer keeps its transaction open this long after merging its samples


@pytest.mark.slow
def test_writer_processes_store_sites_side_by_side_while_a_reader_stays_connected(
    shared_warehouse, monkeypatch, tmp_path,  # noqa: F811
):
    sim = simulator(*(SiteSpec(site, points=30, seed=i) for i, site in enumerate(SITES)))
    with SimulatorServer(sim) as server:
        env = {
            "ACE_API_URL": server.url, "ACE_API_KEY": SIM_KEY, "ACE_SITES": ",".join(SITES),
            "VITALS_PARTITIONS_START": "2026-03-01-00:00", **shared_warehouse.env(),
            "VITALS_DUCKDB_PATH": str(tmp_path / "unused.duckdb"),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        prefill = run_assets([timeseries_key(s) for s in SITES], tags=range_tags(*PREFILL))
        assert prefill.success, step_failures(prefill)
        before = {s: len(shared_warehouse.stored(s)) for s in SITES}

        stop = tmp_path / "stop-reader"
        reader = start_python(READER, ",".join(SITES), str(stop), env=environment(**env))
        spans: list[dict[str, tuple[float, float]]] = []
        try:
            read_until(reader, "ready", timeout=60)
            # Two rounds of writers while the reader stays connected (tens of seconds).
            for round_, window in enumerate(WRITES):
                spans.append(write_side_by_side(env, window, tmp_path / f"go-{round_}"))
            stop.touch()
            reader_out, reader_err = reader.communicate(timeout=60)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.communicate()
    assert reader.returncode == 0, reader_err[-3000:]

    # The reader: one connection the whole time, never waiting, new rows on its next query.
    counts = [(float(t), float(took), json.loads(c)) for _, t, took, c in
              (line.split(" ", 3) for line in reader_out.splitlines() if line.startswith("count"))]
    held = counts[-1][0] - counts[0][0]
    assert held > 10, f"the reader was connected for {held:.1f} s only"
    assert max(took for _, took, _ in counts) < 2.0, "a reader query waited"
    assert counts[0][2] == before
    after = {s: len(shared_warehouse.stored(s)) for s in SITES}
    assert all(after[s] > before[s] for s in SITES)
    assert counts[-1][2] == after, "the reader's next query sees what the writers committed"
    # Between the rounds, its queries saw the first round's rows and not yet the second's.
    first_done = max(e for _, e in spans[0].values())
    second_began = min(s for s, _ in spans[1].values())
    between = [c for t, _, c in counts if first_done < t < second_began]
    assert between and all(before[s] < between[-1][s] < after[s] for s in SITES), between[-1:]
    assert "idle-transaction-status 2" in reader_out  # still inside its transaction (INTRANS)
    print(f"reader connected {held:.1f} s, {len(counts)} queries")

    whole = window_for_keys(PREFILL[0], WRITES[-1][1])
    for site in SITES:
        found = diff(shared_warehouse.stored(site), expected_rows(sim, whole.start, whole.end, site))
        assert found.clean, f"{site}: {found}"


def write_side_by_side(env: dict, window: tuple[str, str], go) -> dict[str, tuple[float, float]]:
    """One writer process per site for `window`, released at once; asserts that each succeeded
    and that their write transactions overlapped. Returns (write start, write end) per site."""
    writers = {}
    try:
        for site in SITES:
            writers[site] = start_python(WRITER, *window, env=environment(**{
                **env, "ACE_SITES": site, "WH_HOLD": str(HOLD_SECONDS), "WH_GO_FILE": str(go)}))
        for writer in writers.values():
            read_until(writer, "ready", timeout=120)
        go.touch()
        outputs = {}
        for site, writer in writers.items():
            out, err = writer.communicate(timeout=180)
            outputs[site] = out.splitlines()
            assert writer.returncode == 0 and "run-end True" in out, f"{site}: {out[-2000:]} {err[-3000:]}"
    finally:
        for proc in writers.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    spans = {}
    for site, lines in outputs.items():
        start = [float(line.split()[1]) for line in lines if line.startswith("write-start")]
        end = [float(line.split()[1]) for line in lines if line.startswith("write-end")]
        assert len(start) == len(end) == 1, lines
        spans[site] = (start[0], end[0])
        # Nothing held it up: its own transaction plus a few seconds of work on a busy machine.
        assert end[0] - start[0] < HOLD_SECONDS + 20, (site, end[0] - start[0])
    # Every writer had started its write before the first one finished: not serialised.
    latest_start = max(s for s, _ in spans.values())
    earliest_end = min(e for _, e in spans.values())
    assert latest_start < earliest_end, f"writes were serialised: {spans}"
    print(f"{window}: all writers overlapped for {earliest_end - latest_start:.2f} s")
    return spans


# (seed, stratum): where in the write each kill lands. Mid-transaction kills first (the content
# stays old), the kill after the commit last.
KILLS = ((7, 0), (19, 1), (30, 2))
STRATA = (
    ("write-start", "begin _stage", "end _stage"),
    ("begin _upsert", "end _upsert"),
    ("write-end",),
)
PAUSE = 0.05


def by_partition(rows) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for row in rows:
        out[partition_key(floor_to_partition(row[1].replace(tzinfo=UTC)))].append(row)
    return {k: out.get(k, []) for k in WINDOW.partition_keys()}


@pytest.mark.slow
def test_sigkill_of_a_writer_leaves_old_or_new_content_then_a_rerun_is_exact(
    shared_warehouse, monkeypatch, tmp_path,  # noqa: F811
):
    sim = simulator(SiteSpec(SITE, points=40, seed=3))
    with SimulatorServer(sim) as server:
        env = {
            "ACE_API_URL": server.url, "ACE_API_KEY": SIM_KEY, "ACE_SITES": SITE,
            "VITALS_PARTITIONS_START": "2026-03-01-00:00", **shared_warehouse.env(),
            "VITALS_DUCKDB_PATH": str(tmp_path / "unused.duckdb"),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        # Old content: fetched before three devices' samples arrived, then some values altered,
        # so that the re-run both inserts and updates.
        sim.faults.late_devices = 3
        sim.faults.late_seconds = 600
        sim.set_now(WINDOW.end + timedelta(minutes=1))
        first = run_assets([timeseries_key(SITE)], tags=range_tags(FIRST, LAST))
        assert first.success, step_failures(first)
        shared_warehouse.query(
            f"UPDATE {SITE}.timeseries SET value = value + 1 WHERE value IS NOT NULL AND point IN "
            f"(SELECT DISTINCT point FROM {SITE}.timeseries ORDER BY point LIMIT 5)"
        )
        old = by_partition(shared_warehouse.stored(SITE))
        sim.set_now(SIM_NOW)
        new = by_partition(expected_rows(sim, WINDOW.start, WINDOW.end))
        for key in WINDOW.partition_keys():
            assert old[key] != new[key], f"partition {key} must change in the re-run"

        outcomes = []
        for seed, stratum in KILLS:
            proc = start_python(WRITER, FIRST, LAST, env=environment(**env, WH_PAUSE=str(PAUSE)))
            rng = random.Random(seed)
            target = rng.choice(STRATA[stratum])
            try:
                seen = read_until(proc, target, timeout=120)
                delay = rng.uniform(0, 1.5 * PAUSE)
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            assert proc.returncode == -signal.SIGKILL
            seen += [line.strip() for line in out.splitlines()]
            assert not any(line.startswith("run-end") for line in seen), "killed too late"
            # The server ends the dead client's session and rolls its transaction back.
            deadline = time.monotonic() + 30
            while shared_warehouse.query(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'vitals-pipeline' "
                "AND state <> 'idle'"
            )[0][0] and time.monotonic() < deadline:
                time.sleep(0.1)
            now = by_partition(shared_warehouse.stored(SITE))
            states = set()
            for key in WINDOW.partition_keys():
                assert now[key] in (old[key], new[key]), f"seed {seed}: partition {key} neither old nor new"
                states.add("new" if now[key] == new[key] else "old")
            assert len(states) == 1, f"seed {seed}: one transaction, yet partitions differ: {states}"
            if any(line.startswith("write-end") for line in seen):
                assert states == {"new"}, f"seed {seed}: write reported done, content old"
            outcomes.append((seed, target, states.pop()))
        print("kill points:", outcomes)
        assert [state for *_, state in outcomes] == ["old", "old", "new"], outcomes

        rerun = run_assets([timeseries_key(SITE)], tags=range_tags(FIRST, LAST))
        assert rerun.success, step_failures(rerun)
    found = diff(shared_warehouse.stored(SITE), expected_rows(sim, WINDOW.start, WINDOW.end))
    assert found.clean, str(found)
    # The quality rows of the window: one per point and partition, none twice.
    assert shared_warehouse.query(
        f"SELECT count(*) = count(DISTINCT (point, window_start)) FROM {SITE}.quality"
    ) == [(True,)]


def test_vitals_warehouse_url_chooses_the_warehouse_and_hides_its_password(shared_warehouse, monkeypatch):  # noqa: F811
    settings = Settings.from_env({"ACE_SITES": SITE})
    assert isinstance(choose_warehouse(settings, {}), DuckDBWarehouse)
    chosen = choose_warehouse(settings, shared_warehouse.env())
    assert isinstance(chosen, PostgresWarehouse)
    with pytest.raises(ConfigError, match="scheme is 'mysql'") as raised:
        choose_warehouse(settings, {"VITALS_WAREHOUSE_URL": "mysql://u:hunter2@db/x"})
    assert "hunter2" not in str(raised.value)

    # The definitions' one warehouse: the assets' resource and the IO manager's are the same,
    # configured by the variable's name (what the UI shows), never its value.
    monkeypatch.setenv("ACE_SITES", SITE)
    for name, value in shared_warehouse.env().items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(Settings.from_env())
    resources = defs.resources
    assert isinstance(resources["warehouse"], PostgresWarehouse)
    assert resources["io_manager"].warehouse is resources["warehouse"]
    password = shared_warehouse.server.password
    assert password not in repr(resources["warehouse"]) and password not in repr(resources["io_manager"])
    assert password not in resources["warehouse"].describe()

    # A wrong password: the error says where and what to check, without any password.
    bad = shared_warehouse.url.replace(password, "wrong-" + password[:6])
    with pytest.raises(ConnectionError, match="cannot connect to the shared warehouse") as failed:
        with PostgresWarehouse(url=bad).connect():
            pass
    assert password[:6] not in str(failed.value) and "VITALS_WAREHOUSE_URL" in str(failed.value)
