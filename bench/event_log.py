"""What the project's event log storage buys: the shipped dagster.yaml (vitals_pipeline/storage/
event_log.py) against the same file without its `event_log_storage` lines (Dagster's stock SQLite
event log), A/B in alternating rounds.

Per variant and round, on a fresh DAGSTER_HOME and DuckDB file, against one simulator process
(a 5-point site, served from memory), each command a new process measured when reaped (wall,
start to exit; user + system CPU), and the run's start -> end from its run record:
- day: `dagster asset materialize --partition-range` over a day, 288 partitions with the checks:
  the event log's share dominates (288 materializations, planned rows, check results, little
  data);
- tick: then the same command over the day's last 3 partitions.

    .venv/bin/python bench/event_log.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BIN,
    ROOT,
    Simulator,
    bench_home,
    commit,
    download_floor,
    load_average,
    record,
    run_measured,
    step_log_figures,
)
from vitals_pipeline.windows import PARTITION, partition_key

SITE = "small"
DAY = datetime(2025, 10, 12, tzinfo=UTC)
SHIPPED, STOCK = "shipped (storage/event_log.py)", "stock SQLite event log"


def stock_yaml() -> str:
    """The shipped dagster.yaml without its event_log_storage section."""
    text = (ROOT / "dagster.yaml").read_text()
    stock = re.sub(r"(?m)^event_log_storage:\n(?:[ \t]+.*\n)+", "", text)
    if stock == text or "VitalsSqliteEventLogStorage" in stock:
        raise SystemExit("dagster.yaml has no event_log_storage section to take out")
    return stock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not add to RESULTS.md")
    args = parser.parse_args()

    end = DAY + timedelta(days=1)
    yamls = {SHIPPED: None, STOCK: stock_yaml()}
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    load = load_average()
    with Simulator(SITE, args.points, cache_mb=64, now=end + timedelta(hours=1)) as sim:
        download_floor(sim.url, SITE, DAY, end)  # into the simulator's cache, untimed
        for round_no in range(args.rounds):
            for variant in list(yamls) if round_no % 2 == 0 else list(yamls)[::-1]:
                home, env = bench_home("vitals-eventlog-", sim.url, SITE, DAY - timedelta(days=1),
                                       dagster_yaml=yamls[variant])
                try:
                    run_measured([str(BIN / "dagster"), "instance", "migrate"], env, check=False)
                    for what, first in (("day", DAY), ("tick", end - 3 * PARTITION)):
                        m = run_measured(
                            [str(BIN / "dagster"), "asset", "materialize", "-m",
                             "vitals_pipeline.definitions", "--select", f"{SITE}/timeseries",
                             "--partition-range",
                             f"{partition_key(first)}...{partition_key(end - PARTITION)}"],
                            env,
                        )
                        run = step_log_figures(home)["run_seconds"]
                        results.setdefault((variant, what), []).append((m.wall, m.cpu, run))
                        print(f"round {round_no + 1} {variant:<31} {what:<4} {m.wall:6.2f}s wall, "
                              f"{m.cpu:6.2f} CPU s, run {run:6.2f}s", flush=True)
                finally:
                    shutil.rmtree(home.parent, ignore_errors=True)
    load = max(load, load_average())
    lines = []
    for what in ("day", "tick"):
        cells = []
        for variant in yamls:
            walls, cpus, runs = zip(*results[(variant, what)], strict=True)
            cells.append(f"{statistics.median(walls):.2f} / {statistics.median(cpus):.2f} / "
                         f"{statistics.median(runs):.2f}")
        label = "day, 288 partitions" if what == "day" else "tick, 3 partitions"
        lines.append(f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {label} ({args.points} points) | "
                     f"{' | '.join(cells)} | {args.rounds} | {load:.1f} |")
    print(HEADER)
    print("\n".join(lines))
    if not args.no_record:
        for line in lines:
            record(HEADER, PREAMBLE, line)


PREAMBLE = """## Event log storage, shipped against stock (bench/event_log.py)

`dagster asset materialize` (checks included) on a fresh DAGSTER_HOME, the shipped dagster.yaml
against the same file without its event_log_storage lines (Dagster's stock SQLite event log);
alternating rounds; medians of CLI wall / CPU / run start -> end, seconds. load = highest 1-min
load average seen (2 cores, shared).

"""
HEADER = (
    "| date | commit | run | shipped: wall / CPU / run s | stock: wall / CPU / run s | rounds "
    "| load |\n"
    "|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
