"""The day benchmark (issue 5): a 4,500-point site at one sample a minute, 6.48M samples.

Side by side, in one invocation, on one machine:
- floor:     download every page of the day with httpx and discard it (same page size);
- pipeline:  `dagster asset materialize --partition-range` of the whole day (288 partitions) into
             a fresh DuckDB, checks included;
- old design: the same samples written as the old Worker did (SQLite, INSERT OR REPLACE,
             1,000-row batches), from already-parsed rows;
- live tick: one scheduled-style run: the newest partition plus the 10-minute lookback.
Prints a table and appends a dated row to bench/RESULTS.md.

The simulator runs in its own process and serves from a warm cache (a warm-up pass renders the
day once), so what is timed is the client's side.

    .venv/bin/python bench/run.py [--points 4500] [--page-size 50000] [--skip-old]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SITE = "big"
KEY = "bench-key"
sys.path.insert(0, str(ROOT))

from vitals_pipeline.ace import wire  # noqa: E402
from vitals_pipeline.windows import PARTITION, partition_key  # noqa: E402


def start_simulator(points: int, cache_mb: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            str(BIN / "vitals"), "simulate", "--port", "0", "--sites", SITE,
            "--points", str(points), "--interval", "60", "--api-key", KEY,
            "--cache-mb", str(cache_mb),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1]


def download_day(url: str, start: datetime, end: datetime, page_size: int) -> tuple[float, int, int]:
    """The floor: fetch every page of [start, end) and discard it; return (seconds, bytes, pages).

    Nothing is parsed: the server's next_cursor is read off the end of the body. (It is right
    whenever a page crosses into a new timestamp, as every page of this site does at this size.)
    """
    params = {
        "start_time": wire.format_wire_time(start),
        "end_time": wire.format_wire_time(end),
        "page_size": page_size,
        "raw_data": "true",
    }
    cursor: str | None = None
    total_bytes = pages = 0
    began = time.perf_counter()
    with httpx.Client(base_url=url + "/", headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as http:
        while True:
            query = dict(params)
            if cursor is not None:
                query["cursor"] = cursor
            response = http.get(f"sites/{SITE}/timeseries/paginated", params=query)
            response.raise_for_status()
            body = response.content
            total_bytes += len(body)
            pages += 1
            tail = body[-400:]
            found = _NEXT_CURSOR.search(tail)
            if b'"has_more":true' not in tail.replace(b" ", b"") or not found:
                break
            cursor = found.group(1).decode()
    return time.perf_counter() - began, total_bytes, pages


_NEXT_CURSOR = re.compile(rb'"next_cursor":\s*"([^"]+)"')


def bench_home(
    prefix: str, url: str, start: datetime, page_size: int, base: str | None = None
) -> tuple[Path, dict[str, str]]:
    """A fresh DAGSTER_HOME (the shipped dagster.yaml) and DuckDB file in a new temporary folder,
    and the environment that points the pipeline at them and at the simulator."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    home = work / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ACE_API_URL": url,
        "ACE_API_KEY": KEY,
        "ACE_SITES": SITE,
        "ACE_PAGE_SIZE": str(page_size),
        "VITALS_DUCKDB_PATH": str(work / "vitals.duckdb"),
        "VITALS_PARTITIONS_START": (start - timedelta(days=1)).strftime("%Y-%m-%d-%H:%M"),
    }
    return home, env


def run_cli(args: list[str], env: dict) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run a command; return (wall seconds, peak RSS bytes of the largest child so far, result)."""
    began = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"command failed: {' '.join(args[:4])} ...")
    return wall, peak, proc


def latest_run_seconds(home: Path) -> float:
    """Start-to-end of the newest run, from Dagster's run record."""
    os.environ["DAGSTER_HOME"] = str(home)
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        [record] = instance.get_run_records(limit=1)
        return record.end_time - record.start_time


def old_design_seconds(db_path: Path, start: datetime, end: datetime) -> tuple[float, int]:
    """The old Worker's write path: SQLite, INSERT OR REPLACE, 1,000-row batches."""
    with duckdb.connect(str(db_path), read_only=True) as con:
        rows = con.execute(
            f"SELECT point, strftime(ts, '%Y-%m-%dT%H:%M:%S.%f'), value FROM {SITE}.timeseries "
            "WHERE ts >= ? AND ts < ?",
            [start.replace(tzinfo=None), end.replace(tzinfo=None)],
        ).fetchall()
    with tempfile.TemporaryDirectory() as tmp:
        lite = sqlite3.connect(Path(tmp) / "old.sqlite")
        lite.execute(
            "CREATE TABLE timeseries (point TEXT, ts TEXT, value REAL, PRIMARY KEY (point, ts))"
        )
        began = time.perf_counter()
        for i in range(0, len(rows), 1000):
            lite.executemany("INSERT OR REPLACE INTO timeseries VALUES (?, ?, ?)", rows[i : i + 1000])
            lite.commit()
        seconds = time.perf_counter() - began
        lite.close()
    return seconds, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4500)
    parser.add_argument("--page-size", type=int, default=50000)
    parser.add_argument("--hours", type=float, default=24.0, help="length of the benchmarked window")
    parser.add_argument("--cache-mb", type=int, default=1500)
    parser.add_argument("--skip-old", action="store_true")
    parser.add_argument(
        "--home-base",
        default=None,
        help="folder for DAGSTER_HOME and the DuckDB file (e.g. /dev/shm to take the disk's fsync cost out)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    end = today
    start = end - timedelta(hours=args.hours)
    partitions = int((end - start) / PARTITION)
    samples_expected = args.points * int((end - start).total_seconds() // 60)
    sim, url = start_simulator(args.points, args.cache_mb)
    results: dict[str, object] = {}
    try:
        print(f"simulator {url}: site {SITE!r}, {args.points} points x 1/min, {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC")
        # The floor as the issue defines it: the same pages downloaded and discarded, the server's
        # own work included (first pass, cold cache). The pipeline then reads from a warm cache,
        # so its figure is, if anything, flattered; the warm floor is printed for reference.
        floor, nbytes, pages = download_day(url, start, end, args.page_size)
        warm, _, _ = download_day(url, start, end, args.page_size)
        results["floor"] = floor
        print(f"floor: {floor:.2f}s for {pages} pages, {nbytes / 1e6:.0f} MB (warm cache: {warm:.2f}s)")

        home, env = bench_home("vitals-bench-", url, start, args.page_size, args.home_base)
        subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=env, capture_output=True, check=False)
        first, last = partition_key(start), partition_key(end - PARTITION)
        wall, peak, _ = run_cli(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "vitals_pipeline.definitions",
             "--select", f"{SITE}/timeseries", "--partition-range", f"{first}...{last}"],
            env,
        )
        run_seconds = latest_run_seconds(home)
        with duckdb.connect(env["VITALS_DUCKDB_PATH"], read_only=True) as con:
            stored = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchone()[0]
            table_bytes = con.execute(
                "SELECT sum(block_size) FROM (SELECT DISTINCT block_id, 262144 AS block_size "
                "FROM pragma_storage_info('big.timeseries') WHERE block_id IS NOT NULL)"
            ).fetchone()[0] or 0
        file_bytes = Path(env["VITALS_DUCKDB_PATH"]).stat().st_size
        results.update(pipeline=wall, pipeline_run=run_seconds, rss=peak, stored=stored)
        print(
            f"pipeline: {wall:.2f}s CLI wall ({run_seconds:.2f}s run), {stored:,} samples stored "
            f"(expected {samples_expected:,}), peak RSS {peak / 2**20:.0f} MiB, "
            f"table {table_bytes / max(stored, 1):.1f} B/sample, file {file_bytes / max(stored, 1):.1f} B/sample"
        )
        if not args.skip_old:
            old, old_rows = old_design_seconds(Path(env["VITALS_DUCKDB_PATH"]), start, end)
            results["old"] = old
            print(f"old design (SQLite INSERT OR REPLACE, 1,000-row batches): {old:.2f}s for {old_rows:,} rows")

        # Live tick: the newest closed partition of the window plus 10 minutes of lookback.
        tick_first, tick_last = partition_key(end - 3 * PARTITION), partition_key(end - PARTITION)
        tick_wall, _, _ = run_cli(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "vitals_pipeline.definitions",
             "--select", f"{SITE}/timeseries", "--partition-range", f"{tick_first}...{tick_last}"],
            env,
        )
        tick_run = latest_run_seconds(home)
        results.update(tick_run=tick_run, tick_wall=tick_wall)
        print(f"live tick (3 partitions): {tick_run:.2f}s run start->success, {tick_wall:.2f}s CLI wall")
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    ratio = results["pipeline"] / results["floor"]
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {args.points}x{partitions * 5 // 60}h"
        f"{' (' + args.home_base + ')' if args.home_base else ''} | "
        f"{results['floor']:.1f} | {results['pipeline']:.1f} ({results['pipeline_run']:.1f} run) | "
        f"{ratio:.2f} | {results['stored'] / results['pipeline']:,.0f} | {results['rss'] / 2**20:.0f} | "
        f"{table_bytes / max(results['stored'], 1):.1f} | "
        + (f"{results['old']:.1f} ({results['old'] / results['pipeline']:.1f}x)" if "old" in results else "-")
        + f" | {results['tick_run']:.1f} / {results['tick_wall']:.1f} |"
    )
    print()
    print(HEADER)
    print(line)
    if not args.no_record:
        record(HEADER, PREAMBLE, line)


PREAMBLE = """# Benchmark results

Measured by `make bench` (bench/run.py) on this project's 2-core machine. Columns: floor =
download every page and discard (s); pipeline = `dagster asset materialize --partition-range`
of the window, CLI wall (run record); ratio = pipeline / floor; samples/s of the pipeline;
peak RSS of the run process (MiB); DuckDB bytes per sample of the timeseries table; old design
= SQLite INSERT OR REPLACE in 1,000-row batches from parsed rows (s, and old/pipeline); live
tick = newest partition + 10 min lookback: run start->success / CLI wall (s).

"""
HEADER = (
    "| date | commit | site x window | floor s | pipeline s | ratio | samples/s | peak RSS MiB | B/sample | old design s | live tick s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def record(header: str, preamble: str, line: str) -> None:
    """Add `line` as the last row of the table under `header` in bench/RESULTS.md (the section,
    `preamble` + `header`, is added at the end of the file when it is not there yet)."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    if header not in text:
        text = (text.rstrip("\n") + "\n\n" if text else "") + preamble + header + "\n"
    head, _, rest = text.partition(header + "\n")
    rows = []
    lines = rest.split("\n")
    while lines and lines[0].startswith("|"):
        rows.append(lines.pop(0))
    path.write_text(head + header + "\n" + "\n".join([*rows, line, *lines]).rstrip("\n") + "\n")
    print(f"recorded in {path}")


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
