"""Tests of the fleet benchmark's own logic: its cron arithmetic and its CPU accounting of a real,
short-lived process tree. Not part of `make test` (the benchmark is not the product):

    .venv/bin/python -m pytest bench/test_fleet.py -q -p no:cacheprovider
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from bench.fleet import Cron, newest_closed, plan_tick, row, tick_of
from bench.proctree import CpuWindow, TreeSampler


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_the_shipped_cron_fires_a_minute_after_each_five_minute_boundary():
    cron = Cron("1-59/5 * * * *")
    assert cron.next_after(at("2026-12-04 17:00:30")) == at("2026-12-04 17:01:00")
    assert cron.next_after(at("2026-12-04 17:01:00")) == at("2026-12-04 17:06:00")
    assert cron.next_after(at("2026-12-04 23:57:10")) == at("2026-12-05 00:01:00")
    assert [t.minute for t in _fires(cron, at("2026-12-04 17:00:00"), 60)] == list(range(1, 60, 5))


def test_cron_fields_lists_ranges_and_days():
    assert Cron("*/15 2,4 * * *").next_after(at("2026-12-04 02:50:00")) == at("2026-12-04 04:00:00")
    # 2026-12-04 is a Friday; cron weekday 1 = Monday, 0 and 7 = Sunday.
    assert Cron("0 0 * * 1").next_after(at("2026-12-04 00:00:00")) == at("2026-12-07 00:00:00")
    assert Cron("0 0 * * 7").next_after(at("2026-12-04 00:00:00")) == at("2026-12-06 00:00:00")
    # Day of month and weekday both restricted: either one fires (cron's rule).
    assert Cron("0 0 10 * 1").next_after(at("2026-12-04 00:00:00")) == at("2026-12-07 00:00:00")
    with pytest.raises(ValueError, match="not supported"):
        Cron("0 0 * * MON")
    with pytest.raises(ValueError, match="5 fields"):
        Cron("* * * *")


def test_the_tick_fetches_the_newest_closed_partition_and_is_planned_after_it_closed():
    tick = at("2026-12-04 17:06:00")
    assert newest_closed(tick) == at("2026-12-04 17:00:00")
    cron = Cron("1-59/5 * * * *")
    # At 17:03, 17:06 is passed over (minute < 10, and its history - closed at 17:00 - cannot load
    # from 17:03 in 30 s and still leave the daemon 170 s); 17:11's history closes at 17:05.
    assert plan_tick(cron, at("2026-12-04 17:03:00"), lead=170, prefill_s=30, any_minute=True) == at(
        "2026-12-04 17:11:00"
    )
    # Ticks in the first 10 minutes of an hour are passed over unless asked for.
    assert plan_tick(cron, at("2026-12-04 16:55:00"), 170, 30, any_minute=False) == at("2026-12-04 17:11:00")
    assert plan_tick(cron, at("2026-12-04 16:55:00"), 170, 30, any_minute=True) == at("2026-12-04 17:01:00")
    # A history estimate that fits no tick (170 + 200 s > the 6 min from a partition's close to
    # its tick) plans as if loading took no time, and the caller moves on if it takes longer.
    assert plan_tick(cron, at("2026-12-04 17:03:00"), 170, 200, any_minute=True) == at("2026-12-04 17:06:00")
    with pytest.raises(ValueError, match="--warmup"):
        plan_tick(cron, at("2026-12-04 17:03:00"), 400, 0, any_minute=True)


def test_runs_of_a_tick_are_told_by_dagsters_schedule_tags_not_by_job_names():
    tags = {"dagster/schedule_name": "anything", ".dagster/scheduled_execution_time": "2026-12-04T17:06:00+00:00"}
    assert tick_of(tags) == at("2026-12-04 17:06:00")
    assert tick_of({"dagster/sensor_name": "s0001_catchup"}) is None


# A parent that starts short-lived children one after another, each burning ~0.4 s of CPU, and
# waits for each (as the code server joins its run workers), then idles.
_TREE = """
import subprocess, sys, time
sys.stdin.readline()  # start when the window is open
burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass"
for _ in range(5):
    subprocess.run([sys.executable, "-c", burn], check=True)
open(sys.argv[1], "w").close()  # all children ended and reaped
time.sleep(60)
"""


def test_cpu_of_a_tree_of_short_lived_processes_is_counted_in_full(tmp_path):
    done = tmp_path / "done"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    parent = subprocess.Popen([sys.executable, "-c", _TREE, str(done)], stdin=subprocess.PIPE, text=True)
    try:
        sampler = TreeSampler(parent.pid)
        window = CpuWindow(sampler.snapshot(), poll_seconds=1.0)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        started = time.monotonic()
        while not done.exists():  # polls too rare to see most children whole
            assert time.monotonic() - started < 120, "the children did not finish"
            window.update(sampler.snapshot())
            time.sleep(1.0)
        result = window.close(sampler.snapshot())
    finally:
        parent.kill()
        parent.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The kernel's own count for the whole tree over its whole life (parent start-up included).
    lifetime = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Five children of >= 0.4 s each, all ended and reaped inside the window: counted in full.
    assert result["cpu_s"] >= 5 * 0.4
    assert result["cpu_s"] <= lifetime + 0.05
    # Polling alone sees a fraction of them at best: the reason for the conservation figure.
    assert result["cpu_polled_s"] <= result["cpu_s"] + 0.05


def test_a_results_row_says_when_a_tick_did_not_drain():
    tick = {
        "drained": False, "drain_s": None, "cap_s": 360.0, "runs": 50, "runs_succeeded": 40,
        "runs_failed": 1, "sites_stored": 40, "sites_healthy": 49, "cpu_s": 300.0,
        "instance_kb_per_site": 800.0, "instance_kb_per_site_checkpointed": 500.0,
        "peak_rss_single_mib": 250, "peak_rss_sum_mib": 900, "load_at_tick": 3.0,
    }
    result = {
        "ticks": [tick], "design": "per-site", "sites": 50, "quiet": {"pct_of_one_core": 20.0},
        "correctness": {"sites_exact": 40, "sites_checked": 40, "not_stored_with_rows": 0},
        "simulator": {"site_status_fault": False},
        "broken_mode": "site not served (403)",
    }
    line = row(result, "abc1234")
    assert "not within 360 (41/50 runs ended)" in line and "| 40/49 |" in line and "| 40/40 |" in line


def _fires(cron: Cron, start: datetime, minutes: int) -> list[datetime]:
    out, t = [], start
    while (t := cron.next_after(t)) < start + timedelta(minutes=minutes):
        out.append(t)
    return out
