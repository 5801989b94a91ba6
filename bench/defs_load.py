"""What loading the definitions costs as the fleet grows: every Dagster process that serves or
runs the pipeline (code server, run worker, CLI) pays it before doing anything.

For each fleet size (`--sites`, default 1,20,100,500: ACE_SITES of that many names), each a new
process, measured by the kernel when reaped (wall, start to exit, and user + system CPU):
- import: `python -c 'import vitals_pipeline.definitions'` (imports, settings, building `defs`);
- validate: `dagster definitions validate -m vitals_pipeline.definitions` (the CLI's start-up,
  loading the definitions and Dagster's checks of them).
The sizes are interleaved over `--rounds` rounds; medians are printed and recorded.

    .venv/bin/python bench/defs_load.py [--sites 1,20,100,500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BIN, ROOT, commit, load_average, record, run_measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="1,20,100,500")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not add to RESULTS.md")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sites.split(",")]
    commands = {
        "import": [sys.executable, "-c", "import vitals_pipeline.definitions"],
        "validate": [str(BIN / "dagster"), "definitions", "validate", "-m",
                     "vitals_pipeline.definitions"],
    }
    home = Path(tempfile.mkdtemp(prefix="vitals-defs-"))
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    load = load_average()
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    try:
        for round_no in range(args.rounds):
            for n in sizes if round_no % 2 == 0 else sizes[::-1]:
                env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore",
                       "ACE_SITES": ",".join(f"s{i:04d}" for i in range(n))}
                for what, command in commands.items():
                    m = run_measured(command, env)
                    results.setdefault((n, what), []).append((m.wall, m.cpu))
                    print(f"round {round_no + 1}: {n:>4} sites {what:<8} {m.wall:6.2f}s wall, "
                          f"{m.cpu:6.2f} CPU s", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    load = max(load, load_average())
    lines = []
    for n in sizes:
        cells = []
        for what in commands:
            walls, cpus = zip(*results[(n, what)], strict=True)
            cells.append(f"{statistics.median(walls):.2f} / {statistics.median(cpus):.2f}")
        lines.append(f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {n} | {' | '.join(cells)} | "
                     f"{args.rounds} | {load:.1f} |")
    print(HEADER)
    print("\n".join(lines))
    if not args.no_record:
        for line in lines:
            record(HEADER, PREAMBLE, line)


PREAMBLE = """## Loading the definitions, by fleet size (bench/defs_load.py)

Each a new process: `python -c 'import vitals_pipeline.definitions'` and `dagster definitions
validate -m vitals_pipeline.definitions` with ACE_SITES of that many sites; medians over the
rounds of wall (start to exit) / user + system CPU, seconds. load = highest 1-min load average
seen (2 cores, shared).

"""
HEADER = (
    "| date | commit | sites | import wall / CPU s | validate wall / CPU s | rounds | load |\n"
    "|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
