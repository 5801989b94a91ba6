"""What parsing one page costs: a 50,000-sample page of the 4,500-point site (~5 MB, as the
simulator writes ACE's layout), parsed in this process, one thread, by each path of
vitals_pipeline/ace/parse.py, and typed into sample columns as the fetch threads do.

Timed, `--repeat` times each (the median and the fastest printed, milliseconds per page):
- parse_page: the path the client takes (the scanned path for this page);
- scanned: cutting the strings out where the quotes are (`_parse_scanned`);
- Arrow JSON: Arrow's JSON reader (`_parse_columnar`, the second path);
- orjson objects: orjson into Python lists (`_parse_objects`, the exact path for any page);
- typed: wire columns -> sample columns (`to_sample_batch`: names dictionary-encoded, times and
  values parsed).
Pages come from the simulator's model directly (no HTTP). The paths' results are compared.

    .venv/bin/python bench/parse_page.py [--repeat 15] [--points 4500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import commit, load_average, record
from vitals_pipeline.ace import parse
from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SiteSpec

START = datetime(2025, 10, 12, 10, 0, tzinfo=UTC)


def timed(fn, body, repeat: int) -> tuple[float, float, object]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn(body)
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times), 1000 * min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4500)
    parser.add_argument("--page-size", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-record", action="store_true", help="do not add to RESULTS.md")
    args = parser.parse_args()

    sim = Simulator(SimulatorConfig([SiteSpec("big", points=args.points, interval=60)]))
    sim.set_now(START + timedelta(days=1))
    body = sim.timeseries_page("big", START, START + timedelta(hours=2), args.page_size, None).body
    load = load_average()
    paths = {
        "parse_page": parse.parse_page,
        "scanned": parse._parse_scanned,  # each path of our own parser
        "Arrow JSON": parse._parse_columnar,
        "orjson objects": parse._parse_objects,
    }
    figures = {}
    pages = {}
    for name, fn in paths.items():
        median, best, page = timed(fn, body, args.repeat)
        if page is None:
            raise SystemExit(f"the {name} path declined the simulator's page")
        figures[name], pages[name] = (median, best), page
    reference = pages["orjson objects"].columns
    for name, page in pages.items():
        if not page.columns.equals(reference):
            raise SystemExit(f"the {name} path read the page differently from the exact path")
    median, best, _ = timed(parse.to_sample_batch, reference, args.repeat)
    figures["typed"] = (median, best)
    rows = reference.num_rows
    print(f"page: {rows:,} samples, {len(body) / 1e6:.1f} MB; load {load:.1f}")
    for name, (median, best) in figures.items():
        print(f"{name:<16} {median:7.1f} ms median, {best:7.1f} ms fastest")
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {rows:,} samples, {len(body) / 1e6:.1f} MB | "
        + " | ".join(f"{figures[name][0]:.1f}" for name in [*paths, "typed"])
        + f" | {max(load, load_average()):.1f} |"
    )
    print(line)
    if not args.no_record:
        record(HEADER, PREAMBLE, line)


PREAMBLE = """## Parsing a page (bench/parse_page.py)

One page of the 4,500-point site as the simulator writes ACE's layout, parsed in one thread:
median milliseconds per page over 15 repeats, by the client's path (parse_page), each path on its
own, and the typing into sample columns. load = 1-min load average (2 cores, shared).

"""
HEADER = (
    "| date | commit | page | parse_page ms | scanned ms | Arrow JSON ms | orjson objects ms "
    "| typed ms | load |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
