"""The day benchmark: a 4,500-point site at one sample a minute, 6.48M samples, end to end.

For each server state (`--server render`, `warm`, or `both`, the default), on a fresh simulator
process serving the site:

- floor: the requests the pipeline makes for the day (2-hour sub-windows, fetched by 2 threads,
  50,000-row pages: `AceClient.fetch_pieces`' defaults), every body discarded unparsed. Wall
  seconds in this process.
- pipeline: `dagster asset materialize --select big/timeseries --partition-range` over the day's
  288 partitions, checks included, in a new process on a fresh DAGSTER_HOME (the shipped
  dagster.yaml) and a fresh DuckDB file. CLI wall = from starting the command to its exit; run =
  the run's start -> end in its run record; CPU and peak RSS of that process (os.wait4); its pages
  from the step's log line (they must equal the floor's).
- ratio = pipeline CLI wall / floor, both against the same server state.

Server states: `render` = no cache in the simulator (`--cache-mb 0`): every page is rendered when
it is asked for, the floor's as the pipeline's, as ACE renders its pages. `warm` = the simulator
holds the day in memory after a first, untimed pass (`--cache-mb 1500`): floor and pipeline time
the client's side alone. The simulator runs on the same 2 cores as the client, so in `render` its
work competes with the pipeline's; the simulator's CPU seconds during each are printed.

Then, on the `render` server: a live tick (3 partitions: the newest and 10 minutes of lookback,
the same CLI, checks included: CLI wall and run start -> end), and the old design (the stored day
written as the old Worker did: SQLite, INSERT OR REPLACE, 1,000-row batches, from parsed rows).
Prints the figures and adds a row per server state to bench/RESULTS.md.

Instance (`--instance`): `sqlite` (default) = the shipped dagster.yaml, runs and event logs in
SQLite files under DAGSTER_HOME; `postgres` = deploy/postgres/dagster.yaml, on a PostgreSQL server
this process starts for the benchmark (Debian's binaries; fsync and synchronous commit on), a fresh
database per measured pipeline, DAGSTER_PG_URL and DAGSTER_EVENT_BATCH_SIZE=1000 in the pipeline's
environment as deploy/postgres/README.md asks. The server shares the 2 cores and is not in the CLI
process's CPU: its own CPU seconds during the pipeline are printed and recorded beside it
(`+N server`). The row's site x window cell says `pg-instance`.

    .venv/bin/python bench/run.py [--points 4500] [--hours 24] [--server both] [--skip-old]
        [--instance sqlite|postgres]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BIN,
    INSTANCES,
    PG_DAGSTER_YAML,
    PG_INSTANCE,
    RENDER,
    SQLITE_INSTANCE,
    WARM,
    WARM_CACHE_MB,
    Floor,
    Measured,
    PgInstances,
    Simulator,
    bench_home,
    commit,
    download_floor,
    load_average,
    pg_instance_env,
    pg_instances,
    record,
    run_measured,
    step_log_figures,
)
from vitals_pipeline.windows import PARTITION, partition_key

SITE = "big"
TARGET_DAY_SECONDS = 30.0
TARGET_PEAK_RSS = 1 << 30


@dataclass
class DayResult:
    server: str
    floor: Floor
    floor_sim_cpu: float
    pipeline: Measured
    pipeline_sim_cpu: float
    figures: dict[str, float]
    stored: int
    table_bytes: int
    duckdb_path: str
    tick: tuple[float, float] | None = None  # (run seconds, CLI wall)
    instance_server_cpu: float | None = None  # the PostgreSQL server's CPU s during the pipeline


def materialize(env: dict[str, str], first: str, last: str) -> Measured:
    return run_measured(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "vitals_pipeline.definitions",
         "--select", f"{SITE}/timeseries", "--partition-range", f"{first}...{last}"],
        env,
    )


def measure_day(server: str, args, start: datetime, end: datetime, pg: PgInstances | None = None) -> DayResult:
    cache_mb = 0 if server == RENDER else WARM_CACHE_MB
    with Simulator(SITE, args.points, cache_mb) as sim:
        if server == WARM:
            warm_up = download_floor(sim.url, SITE, start, end, args.page_size)
            print(f"[{server}] untimed first pass (the simulator renders the window into its "
                  f"cache): {warm_up.seconds:.2f}s")
        cpu = sim.cpu_seconds()
        floor = download_floor(sim.url, SITE, start, end, args.page_size)
        floor_sim_cpu = sim.cpu_seconds() - cpu
        print(f"[{server}] floor: {floor.seconds:.2f}s for {floor.pages} pages, "
              f"{floor.samples:,} samples, {floor.bytes / 1e6:.0f} MB "
              f"(simulator CPU {floor_sim_cpu:.2f}s)")

        home, env = bench_home(f"vitals-day-{server}-", sim.url, SITE, start - timedelta(days=1),
                               args.page_size, args.home_base,
                               PG_DAGSTER_YAML.read_text() if pg else None)
        if pg:
            # A fresh database for this pipeline; the URL (password included) goes by environment
            # to the CLI and to this process (step_log_figures reads the instance).
            database, url = pg.new_database(f"day_{server}")
            pg_instance_env(env, url)
            print(f"[{server}] instance: PostgreSQL {pg.version()}, database {database}")
        if args.code:
            # Another checkout's pipeline (its package ahead of the installed one), measured
            # against the same simulator as this one: an A/B of two commits in one session.
            env["PYTHONPATH"] = str(Path(args.code).resolve())
        run_measured([str(BIN / "dagster"), "instance", "migrate"], env, check=False)
        cpu = sim.cpu_seconds()
        server_cpu = pg.server_cpu_seconds() if pg else 0.0
        pipeline = materialize(env, partition_key(start), partition_key(end - PARTITION))
        pipeline_sim_cpu = sim.cpu_seconds() - cpu
        instance_server_cpu = pg.server_cpu_seconds() - server_cpu if pg else None
        figures = step_log_figures(home)
        with duckdb.connect(env["VITALS_DUCKDB_PATH"], read_only=True) as con:
            stored = con.execute(f"SELECT count(*) FROM {SITE}.timeseries").fetchone()[0]
            table_bytes = con.execute(
                "SELECT count(DISTINCT block_id) * 262144 FROM "
                f"pragma_storage_info('{SITE}.timeseries') WHERE block_id IS NOT NULL"
            ).fetchone()[0] or 0
        result = DayResult(server, floor, floor_sim_cpu, pipeline, pipeline_sim_cpu, figures,
                           stored, table_bytes, env["VITALS_DUCKDB_PATH"],
                           instance_server_cpu=instance_server_cpu)
        print(
            f"[{server}] pipeline: {pipeline.wall:.2f}s CLI wall, {figures['run_seconds']:.2f}s "
            f"run (step {figures.get('step_seconds', float('nan')):.1f}s), {pipeline.cpu:.1f} CPU s, "
            f"peak RSS {pipeline.peak_rss / 2**20:.0f} MiB; {stored:,} samples stored in "
            f"{figures.get('pages', '?')} pages (simulator CPU {pipeline_sim_cpu:.2f}s"
            + (f", PostgreSQL server CPU {instance_server_cpu:.2f}s" if pg else "") + "); "
            f"ratio {pipeline.wall / floor.seconds:.2f} (run/floor "
            f"{figures['run_seconds'] / floor.seconds:.2f})"
        )
        # (A --code checkout older than the step's summary line reports no pages.)
        if figures.get("pages", floor.pages) != floor.pages or stored != floor.samples:
            raise SystemExit(
                f"[{server}] the pipeline did not make the floor's requests or store its samples: "
                f"{figures.get('pages')} pages and {stored:,} samples against {floor.pages} and "
                f"{floor.samples:,}; the floor no longer mirrors the pipeline's fetch"
            )
        if server == RENDER:
            # The newest partition and 10 minutes of lookback, re-fetched over the stored day.
            tick = materialize(env, partition_key(end - 3 * PARTITION), partition_key(end - PARTITION))
            result.tick = (step_log_figures(home)["run_seconds"], tick.wall)
            print(f"[{server}] live tick (3 partitions): {result.tick[0]:.2f}s run, "
                  f"{result.tick[1]:.2f}s CLI wall")
    return result


def old_design_seconds(db_path: str, start: datetime, end: datetime) -> tuple[float, int]:
    """The old Worker's write path: SQLite, INSERT OR REPLACE, 1,000-row batches."""
    with duckdb.connect(db_path, read_only=True) as con:
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
    parser.add_argument("--hours", type=float, default=24.0, help="length of the window")
    parser.add_argument("--server", choices=[RENDER, WARM, "both"], default="both")
    parser.add_argument("--skip-old", action="store_true", help="leave out the old design (~10 min)")
    parser.add_argument(
        "--home-base", default=None,
        help="folder for DAGSTER_HOME and the DuckDB file (e.g. /dev/shm: no disk fsyncs)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not add to RESULTS.md")
    parser.add_argument(
        "--code", default=None, metavar="DIR",
        help="measure the pipeline of another checkout (e.g. `git worktree add /tmp/old <commit>`)",
    )
    parser.add_argument(
        "--instance", choices=INSTANCES, default=SQLITE_INSTANCE,
        help="the Dagster instance's storage: the shipped SQLite files, or PostgreSQL "
             "(deploy/postgres/dagster.yaml, on a server started for the benchmark)",
    )
    args = parser.parse_args()

    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=args.hours)
    expected = args.points * int((end - start).total_seconds() // 60)
    servers = [RENDER, WARM] if args.server == "both" else [args.server]
    load_before = load_average()
    print(f"site {SITE!r}: {args.points} points x 1/min, {start:%Y-%m-%d %H:%M} .. "
          f"{end:%Y-%m-%d %H:%M} UTC, {expected:,} samples; load {load_before:.1f}")
    with pg_instances() if args.instance == PG_INSTANCE else nullcontext() as pg:
        results = [measure_day(server, args, start, end, pg) for server in servers]
    old = None
    if not args.skip_old:
        old = old_design_seconds(results[0].duckdb_path, start, end)
        print(f"old design (SQLite INSERT OR REPLACE, 1,000-row batches): {old[0]:.2f}s for "
              f"{old[1]:,} rows")
    load = max(load_before, load_average())

    window = (f"{args.points}x{args.hours:g}h" + (" pg-instance" if args.instance == PG_INSTANCE else "")
              + (f" ({args.home_base})" if args.home_base else ""))
    lines = []
    for r in results:
        ratio = r.pipeline.wall / r.floor.seconds
        old_cell = "-"
        if old is not None and r.server == RENDER:
            old_cell = f"{old[0]:.1f} ({old[0] / r.pipeline.wall:.1f}x)"
        tick = f"{r.tick[0]:.1f} / {r.tick[1]:.1f}" if r.tick else "-"
        cpu = f"{r.pipeline.cpu:.1f}" + (
            f" (+{r.instance_server_cpu:.1f} server)" if r.instance_server_cpu is not None else ""
        )
        lines.append(
            f"| {datetime.now(UTC):%Y-%m-%d} | {commit(args.code)} | {window} | {r.server} | "
            f"{r.floor.seconds:.2f} | {r.pipeline.wall:.1f} ({r.figures['run_seconds']:.1f}) | "
            f"{ratio:.2f} | {r.stored / r.pipeline.wall:,.0f} | {cpu} | "
            f"{r.pipeline.peak_rss / 2**20:.0f} | {r.table_bytes / max(r.stored, 1):.1f} | "
            f"{r.floor_sim_cpu:.1f} / {r.pipeline_sim_cpu:.1f} | {old_cell} | {tick} | {load:.1f} |"
        )
        verdicts = [
            f"day {'ok' if r.pipeline.wall < TARGET_DAY_SECONDS else 'OVER'} (< 30 s)",
            f"peak RSS {'ok' if r.pipeline.peak_rss < TARGET_PEAK_RSS else 'OVER'} (< 1 GiB)",
            f"stored {'ok' if r.stored == expected else 'WRONG'} ({r.stored:,} of {expected:,})",
        ]
        print(f"[{r.server}] " + "; ".join(verdicts))
    print()
    print(HEADER)
    print("\n".join(lines))
    if not args.no_record:
        for line in lines:
            record(HEADER, PREAMBLE, line)
    if any(r.stored != expected for r in results):
        raise SystemExit("the pipeline did not store every sample of the window")


PREAMBLE = """## The day, floor and pipeline against the same server state

Measured by bench/run.py (see its docstring). server: `render` = the simulator renders every page
on request (no cache, as ACE), `warm` = it serves the day from memory after an untimed first pass.
floor = the pipeline's requests (2-hour sub-windows by 2 threads, 50,000-row pages), bodies
discarded (s); pipeline = `dagster asset materialize --partition-range` of the day, checks
included, fresh DAGSTER_HOME and DuckDB: CLI wall, process start to exit (run start -> end in
brackets); ratio = pipeline CLI wall / floor, same server state; samples/s = stored / CLI wall;
CPU s and peak RSS of the CLI process (os.wait4); B/sample = timeseries table blocks / samples;
simulator CPU s during the floor / the pipeline (the simulator shares the 2 cores); old design =
SQLite INSERT OR REPLACE in 1,000-row batches from parsed rows (s, and old / pipeline); live tick
= 3 partitions on the stored day, run start -> end / CLI wall (s); load = highest 1-min load
average seen (2 cores, shared). `pg-instance` in site x window: the Dagster instance on PostgreSQL
(deploy/postgres/dagster.yaml, `--instance postgres`; a server on the same cores, fsync on), the
shipped SQLite one otherwise; its CPU s cell adds the server's CPU during the pipeline
(`+N server`).

"""
HEADER = (
    "| date | commit | site x window | server | floor s | pipeline s (run) | ratio | samples/s "
    "| CPU s | peak RSS MiB | B/sample | simulator CPU s floor / pipeline | old design s "
    "| live tick s | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
