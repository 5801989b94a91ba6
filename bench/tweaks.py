"""The process tweaks (vitals_pipeline/runtime.py), A/B: each one's gain, measured in interleaved
pairs in one session.

Variants: `all` (every tweak, the default) and, for each tweak, every tweak but that one
(VITALS_PROCESS_TWEAKS). Each round runs every variant once, the order rotated from round to
round, all against one simulator process that serves from memory (warmed by an untimed pass, its
clock pinned), so that the server adds no noise. Per variant and round:

- day: `dagster asset materialize --partition-range` of one day of the 4,500-point site (288
  partitions, 6.48M samples, checks included) on a fresh DAGSTER_HOME (shipped dagster.yaml) and
  DuckDB file;
- tick: then `--ticks` times, the same command over the day's last 3 partitions (the newest and
  10 minutes of lookback) on that stored day;
- backfill: `vitals backfill --chunk-hours 24` over `--backfill-days` days, fresh home and file.

Each command is a new process, measured by the kernel when reaped (os.wait4): wall (start to
exit), CPU (user + system), peak RSS. A tweak's effect in a round = the variant without it minus
`all` in that round (positive: the tweak saves that much). Printed and recorded: the median of
those paired differences and their range over the rounds; a tweak gains on a measure when every
round's difference is positive ("gain"), loses when every one is negative ("loss"), else the
difference is within the noise of the session ("noise").

    .venv/bin/python bench/tweaks.py [--rounds 4] [--ticks 3] [--backfill-days 2] [--points 4500]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BIN,
    Measured,
    Simulator,
    bench_home,
    commit,
    download_floor,
    load_average,
    record,
    run_measured,
)
from vitals_pipeline.runtime import SWITCH, TWEAKS
from vitals_pipeline.windows import PARTITION, partition_key

SITE = "big"
DAY = datetime(2025, 10, 12, tzinfo=UTC)  # the day; the backfill takes the days up to its end
ALL = "all"
MEASURES = ("wall", "cpu", "rss")


def variants(tested: list[str]) -> dict[str, str]:
    """Variant name -> VITALS_PROCESS_TWEAKS: every tweak, and every tweak but one of `tested`."""
    chosen = {ALL: ALL}
    for tweak in tested:
        chosen[f"without {tweak}"] = ",".join(t for t in TWEAKS if t != tweak) or "none"
    return chosen


def figures(m: Measured) -> dict[str, float]:
    return {"wall": m.wall, "cpu": m.cpu, "rss": m.peak_rss / 2**20}


def materialize(env: dict, first: datetime, last: datetime) -> Measured:
    return run_measured(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "vitals_pipeline.definitions",
         "--select", f"{SITE}/timeseries", "--partition-range",
         f"{partition_key(first)}...{partition_key(last)}"],
        env,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4500)
    parser.add_argument("--hours", type=float, default=24.0, help="the day scenario's window")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=3, help="ticks per variant and round")
    parser.add_argument("--backfill-days", type=int, default=2, help="0 leaves the backfill out")
    parser.add_argument("--tweaks", default=",".join(TWEAKS), help="the tweaks to test")
    parser.add_argument("--no-record", action="store_true", help="do not add to RESULTS.md")
    args = parser.parse_args()
    tested = [name.strip() for name in args.tweaks.split(",") if name.strip()]
    if unknown := sorted(set(tested) - set(TWEAKS)):
        parser.error(f"unknown tweaks {unknown}; the tweaks are {', '.join(TWEAKS)}")

    end = DAY + timedelta(hours=args.hours)
    backfill_start = end - timedelta(days=args.backfill_days)
    oldest = min(DAY, backfill_start)
    chosen = variants(tested)
    names = list(chosen)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {}  # scenario -> variant -> rounds
    load = load_average()
    # Enough cache for every day read, so that every run is served from memory.
    days = max(1, round((end - oldest) / timedelta(days=1)))
    with Simulator(SITE, args.points, cache_mb=800 * days + 200, now=end + timedelta(hours=1)) as sim:
        warm = download_floor(sim.url, SITE, oldest, end)
        print(f"simulator {sim.url}: {args.points} points, {oldest:%Y-%m-%d %H:%M} .. "
              f"{end:%Y-%m-%d %H:%M} UTC rendered into its cache in {warm.seconds:.1f}s; "
              f"load {load:.1f}")
        # Untimed: one command of each kind first, so that no variant pays for reading the
        # installed packages from disk into the page cache.
        home, env = bench_home("vitals-tweaks-", sim.url, SITE, oldest - timedelta(days=1))
        try:
            run_measured([str(BIN / "dagster"), "instance", "migrate"], env, check=False)
            materialize(env, end - 3 * PARTITION, end - PARTITION)
            run_measured([str(BIN / "vitals"), "backfill", "--from", partition_key(end - PARTITION),
                          "--to", partition_key(end - PARTITION)], env)
        finally:
            shutil.rmtree(home.parent, ignore_errors=True)
        for round_no in range(args.rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                home, env = bench_home("vitals-tweaks-", sim.url, SITE, oldest - timedelta(days=1))
                env[SWITCH] = chosen[name]
                try:
                    run_measured([str(BIN / "dagster"), "instance", "migrate"], env, check=False)
                    day = figures(materialize(env, DAY, end - PARTITION))
                    samples.setdefault("day", {}).setdefault(name, []).append(day)
                    ticks = [figures(materialize(env, end - 3 * PARTITION, end - PARTITION))
                             for _ in range(args.ticks)]
                    # Per round, the median tick: a round is one paired sample.
                    tick = {m: statistics.median(t[m] for t in ticks) for m in MEASURES}
                    samples.setdefault("tick", {}).setdefault(name, []).append(tick)
                finally:
                    shutil.rmtree(home.parent, ignore_errors=True)
                line = f"round {round_no + 1} {name:<28} day {fmt(day)}; tick {fmt(tick)}"
                if args.backfill_days:
                    home, env = bench_home("vitals-tweaks-", sim.url, SITE,
                                           oldest - timedelta(days=1))
                    env[SWITCH] = chosen[name]
                    try:
                        backfill = figures(run_measured(
                            [str(BIN / "vitals"), "backfill", "--from", partition_key(backfill_start),
                             "--to", partition_key(end - PARTITION), "--chunk-hours", "24"], env))
                    finally:
                        shutil.rmtree(home.parent, ignore_errors=True)
                    samples.setdefault("backfill", {}).setdefault(name, []).append(backfill)
                    line += f"; backfill {fmt(backfill)}"
                print(line, flush=True)
    load = max(load, load_average())

    labels = {"day": f"day ({args.points}x{args.hours:g}h, CLI)",
              "tick": f"tick (3 partitions, CLI, median of {args.ticks})",
              "backfill": f"vitals backfill ({args.backfill_days} days)"}
    lines = []
    print()
    print(HEADER)
    for scenario, by_variant in samples.items():
        base = by_variant[ALL]
        for name in names[1:]:
            tweak = name.removeprefix("without ")
            cells = []
            verdicts = []
            for m in MEASURES:
                diffs = [b[m] - a[m] for a, b in zip(base, by_variant[name], strict=True)]
                unit = "MiB" if m == "rss" else "s"
                digits = 0 if m == "rss" else 2
                cells.append(f"{statistics.median(diffs):+.{digits}f} [{min(diffs):+.{digits}f} .. "
                             f"{max(diffs):+.{digits}f}] {unit}")
                verdicts.append(f"{m} {verdict(diffs)}")
            with_cell = " / ".join(fmt_cell(base, m) for m in MEASURES)
            lines.append(
                f"| {datetime.now(UTC):%Y-%m-%d} | {commit()} | {labels[scenario]} | {tweak} | "
                f"{len(base)} | {with_cell} | {' | '.join(cells)} | {', '.join(verdicts)} | "
                f"{load:.1f} |"
            )
    print("\n".join(lines))
    if not args.no_record:
        for line in lines:
            record(HEADER, PREAMBLE, line)


def verdict(diffs: list[float]) -> str:
    if all(d > 0 for d in diffs):
        return "gain"
    if all(d < 0 for d in diffs):
        return "loss"
    return "noise"


def fmt(f: dict[str, float]) -> str:
    return f"{f['wall']:.2f}s wall, {f['cpu']:.2f} CPU s, {f['rss']:.0f} MiB"


def fmt_cell(rounds: list[dict[str, float]], m: str) -> str:
    value = statistics.median(r[m] for r in rounds)
    return f"{value:.0f}" if m == "rss" else f"{value:.2f}"


PREAMBLE = """## Process tweaks, A/B (bench/tweaks.py)

Interleaved rounds in one session, each command a new process, the simulator serving from memory.
with all = medians over the rounds with every tweak: wall s / CPU s / peak RSS MiB. The three
effect columns: the variant without the tweak minus `all`, paired by round (positive = the tweak
saves that much): median [min .. max]. verdict per measure: gain = positive in every round, loss
= negative in every round, noise = otherwise. load = highest 1-min load average seen (2 cores,
shared): wall times on a loaded machine carry seconds of noise, CPU and RSS much less.

"""
HEADER = (
    "| date | commit | scenario | tweak | rounds | with all: wall / CPU / RSS | effect on wall "
    "| effect on CPU | effect on peak RSS | verdict | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


if __name__ == "__main__":
    main()
