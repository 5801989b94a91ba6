"""The warehouse benchmark: the DuckDB file against the shared PostgreSQL warehouse, side by side
in one invocation, through the pipeline's own store (`store_slice` on the warehouse's connection:
the same merge the IO manager runs, in one transaction per site's window).

Measured, per warehouse:
- tick:        one process stores a tick of N sites (120 points, 15 minutes at one sample a minute:
               1,800 samples each), one after another on one session; seconds and samples/s;
- day:         one process stores a day of one big site (4,500 points at one sample a minute,
               6.48M samples) in one store;
- writers:     W writer processes store W disjoint groups of the tick's sites at the same time
               (the shard steps of one tick on several workers); wall time of all of them, and
               failed writers;
- reader:      the tick stored while a reader process keeps a connection open the whole time
               (DuckDB: read-only, as a notebook holds it; PostgreSQL: querying every 0.25 s and
               one connection idle inside a transaction): the writer's wall time and whether it
               failed, and the reader's slowest query;
- bytes/sample of the stored timeseries of the day (DuckDB: the file; PostgreSQL: table + index).

PostgreSQL runs as a server of its own (Debian's binaries, as the tests use them), durable:
fsync and synchronous commit on. Prints a Markdown table; --results appends it to
bench/RESULTS.md under "Shared warehouse".

    .venv/bin/python bench/warehouse.py [--sites 100] [--writers 4] [--day-points 4500] [--results]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

START = datetime(2026, 3, 9, 0, 0)


def samples(site: int, points: int, minutes: int, start: datetime = START) -> pa.Table:
    """A window of a site as the pipeline's frames are: sorted by (ts, point), point names
    dictionary-encoded, microsecond times, a few text readings."""
    names = [f"site{site:04d}/device-{p // 20:03d}/analogInput/{p:05d}" for p in range(points)]
    rng = np.random.default_rng(site)
    base = np.datetime64(start, "us")
    offsets = rng.integers(0, 999_999, points)  # each point's reading time within its minute
    ts = (base + (np.arange(minutes)[:, None] * 60_000_000 + offsets[None, :]).astype("timedelta64[us]")).ravel()
    code = np.tile(np.arange(points, dtype=np.int32), minutes)
    order = np.argsort(ts, kind="stable")
    value = np.round(rng.normal(70, 5, points * minutes), 4)
    text = rng.random(points * minutes) < 0.001
    raw = pa.array(np.where(text, "offline", None)[order], pa.string())
    value = pa.array(np.where(text, np.nan, value)[order], pa.float64(), from_pandas=True)
    return pa.table({
        "point": pa.DictionaryArray.from_arrays(pa.array(code[order]), pa.array(names)),
        "ts": pa.array(ts[order], pa.timestamp("us")),
        "value": value,
        "raw_value": raw,
    })


def warehouse(kind: str, target: str):
    from vitals_pipeline.storage.postgres_warehouse import PostgresWarehouse
    from vitals_pipeline.storage.warehouse import DuckDBWarehouse

    if kind == "duckdb":
        return DuckDBWarehouse(database=target, lock_timeout_seconds=60)
    return PostgresWarehouse(url=target)


def store_sites(kind: str, target: str, sites: list[int], points: int, minutes: int) -> tuple[float, int]:
    """Store each site's window (one transaction each) on one session: (seconds, samples)."""
    from vitals_pipeline.storage.duckdb_io import store_slice

    frames = {site: samples(site, points, minutes) for site in sites}
    window = (START, START + timedelta(minutes=minutes))
    began = time.perf_counter()
    rows = 0
    wh = warehouse(kind, target)
    with wh.session() as conn:
        for site, frame in frames.items():
            store_slice(conn, schema=f"s{site:04d}", table="timeseries", rows=frame,
                        merge_keys=["point", "ts"], time_column="ts", window=window)
            rows += frame.num_rows
    return time.perf_counter() - began, rows


def worker_main(args: list[str]) -> None:
    kind, target, sites, points, minutes = args[0], args[1], json.loads(args[2]), int(args[3]), int(args[4])
    try:
        seconds, rows = store_sites(kind, target, sites, points, minutes)
        print(json.dumps({"ok": True, "seconds": seconds, "rows": rows}), flush=True)
    except Exception as exc:  # noqa: BLE001 - reported as a failed writer
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}), flush=True)


READER = r"""
import sys, time, json
kind, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
slowest, queries = 0.0, 0
end = time.time() + seconds
if kind == "duckdb":
    import duckdb
    while True:  # a notebook: opened read-only once, then kept open
        try:
            con = duckdb.connect(target, read_only=True)
            break
        except duckdb.Error:
            time.sleep(0.05)
    print("ready", flush=True)
    while time.time() < end:
        t = time.time(); con.execute("SELECT count(*) FROM information_schema.tables").fetchall()
        slowest = max(slowest, time.time() - t); queries += 1; time.sleep(0.25)
else:
    import psycopg2
    dsn = "postgresql://" + target.split("://", 1)[1]
    con = psycopg2.connect(dsn); con.autocommit = True
    idle = psycopg2.connect(dsn); icur = idle.cursor(); icur.execute("SELECT count(*) FROM s0000.timeseries")
    print("ready", flush=True)
    while time.time() < end:
        t = time.time(); cur = con.cursor(); cur.execute("SELECT count(*) FROM s0000.timeseries"); cur.fetchall()
        slowest = max(slowest, time.time() - t); queries += 1; time.sleep(0.25)
print(json.dumps({"slowest": slowest, "queries": queries}), flush=True)
"""


def run_writers(kind: str, target: str, groups: list[list[int]], points: int, minutes: int) -> tuple[float, list[dict]]:
    began = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, target, json.dumps(group), str(points), str(minutes)],
            stdout=subprocess.PIPE, text=True,
        )
        for group in groups
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return time.perf_counter() - began, results


def bytes_per_sample(kind: str, target: str) -> float:
    if kind == "duckdb":
        import duckdb

        with duckdb.connect(target, read_only=True) as con:
            rows = con.execute("SELECT sum(estimated_size) FROM duckdb_tables()").fetchall()[0][0]
        return os.path.getsize(target) / rows
    import psycopg2

    con = psycopg2.connect("postgresql://" + target.split("://", 1)[1])
    with con.cursor() as cur:
        cur.execute(
            "SELECT sum(pg_total_relation_size(c.oid)), sum(c.reltuples) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'timeseries' AND c.relkind = 'r'"
        )
        size, _ = cur.fetchone()
        cur.execute(
            "SELECT string_agg(format('SELECT count(*) FROM %I.timeseries', nspname), ' UNION ALL ') "
            "FROM pg_namespace WHERE nspname ~ '^s[0-9]{4}$'"
        )
        cur.execute(f"SELECT sum(count) FROM ({cur.fetchone()[0]}) AS t")
        rows = cur.fetchone()[0]
    con.close()
    return float(size) / float(rows)


def measure(kind: str, target_for, args) -> dict:
    """All measurements of one warehouse; `target_for(name)` gives a fresh database."""
    tick_minutes, tick_points = 15, 120
    row: dict = {"warehouse": kind}
    sites = list(range(args.sites))

    target = target_for("tick")
    seconds, rows = store_sites(kind, target, sites, tick_points, tick_minutes)
    row["tick_s"], row["tick_rows"] = seconds, rows
    # The same tick again (the next tick's lookback re-stores the same window: merges, not inserts).
    seconds, _ = store_sites(kind, target, sites, tick_points, tick_minutes)
    row["tick_again_s"] = seconds
    row["bytes_per_sample"] = bytes_per_sample(kind, target)  # 100 small tables: overheads dominate

    target = target_for("writers")
    groups = [sites[i:: args.writers] for i in range(args.writers)]
    wall, results = run_writers(kind, target, groups, tick_points, tick_minutes)
    row["writers"] = args.writers
    row["writers_wall_s"] = wall
    row["writers_failed"] = sum(not r["ok"] for r in results)
    row["writers_errors"] = sorted({r.get("error", "")[:160] for r in results if not r["ok"]})

    target = target_for("alone")
    wall, results = run_writers(kind, target, [sites[1:]], tick_points, tick_minutes)
    row["alone_wall_s"] = wall  # the baseline of the next: one writer process, no reader

    target = target_for("reader")
    store_sites(kind, target, [0], tick_points, tick_minutes)  # the table the reader reads
    hold = 20.0
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, kind, target, str(hold)], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout.readline().strip() == "ready"
    wall, results = run_writers(kind, target, [sites[1:]], tick_points, tick_minutes)
    reader_result = json.loads(reader.communicate()[0].strip().splitlines()[-1])
    row["with_reader_wall_s"] = wall
    row["with_reader_failed"] = sum(not r["ok"] for r in results)
    row["with_reader_errors"] = sorted({r.get("error", "")[:160] for r in results if not r["ok"]})
    row["reader_slowest_s"] = reader_result["slowest"]

    if args.day_points:
        target = target_for("day")
        seconds, rows = store_sites(kind, target, [9999], args.day_points, 1440)
        row["day_s"], row["day_rows"] = seconds, rows
        row["bytes_per_sample"] = bytes_per_sample(kind, target)  # one big table: the real figure
    return row


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--day-points", type=int, default=4500, help="0 skips the day")
    parser.add_argument("--only", choices=["duckdb", "postgres"])
    parser.add_argument("--results", action="store_true", help="append the rows to bench/RESULTS.md")
    args = parser.parse_args()

    from vitals_pipeline_tests.postgres import find_bindir, running_postgres

    rows = []
    with tempfile.TemporaryDirectory(prefix="vitals-bench-wh-") as folder:
        if args.only != "postgres":
            rows.append(measure("duckdb", lambda name: str(Path(folder) / f"{name}.duckdb"), args))
            print(json.dumps(rows[-1]), flush=True)
        if args.only != "duckdb":
            with running_postgres(find_bindir(), durable=True) as server:
                def database(name: str) -> str:
                    server.admin(f"CREATE DATABASE {name}")
                    return server.url(name)

                rows.append(measure("postgres", database, args))
                print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()[0]
    lines = []
    for r in rows:
        day = f"{r['day_s']:.1f} ({r['day_rows'] / r['day_s']:,.0f}/s)" if "day_s" in r else "-"
        writers = f"{r['writers_wall_s']:.1f}" + (f" ({r['writers_failed']} failed)" if r["writers_failed"] else "")
        reader = f"{r['with_reader_wall_s']:.1f} (alone {r['alone_wall_s']:.1f})" + (
            f" ({r['with_reader_failed']} failed)" if r["with_reader_failed"] else ""
        )
        lines.append(
            f"| {datetime.now():%Y-%m-%d} | {commit} | {r['warehouse']} | {args.sites} | "
            f"{r['tick_s']:.2f} ({r['tick_rows'] / r['tick_s']:,.0f}/s) | {r['tick_again_s']:.2f} | {day} | "
            f"{r['writers']}: {writers} | {reader} | {r['reader_slowest_s']:.3f} | "
            f"{r['bytes_per_sample']:.1f} | {load:.1f} |"
        )
        for error in r["writers_errors"] + r["with_reader_errors"]:
            print(f"  {r['warehouse']}: {error}")
    header = (
        "| date | commit | warehouse | sites | tick s (samples/s) | same tick again s | day of 4,500 points s "
        "(samples/s) | W writer processes: wall s | a writer process with a reader connected (alone) s | "
        "reader's slowest query s | "
        "B/sample | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    print(header)
    print("\n".join(lines))
    if args.results:
        results = ROOT / "bench" / "RESULTS.md"
        text = results.read_text()
        marker = "## Shared warehouse"
        if marker not in text:
            text += f"\n{marker}\n\nMeasured by bench/warehouse.py (see its docstring).\n\n{header}\n"
        results.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
