"""The simulator without a cache (`--cache-mb 0`): every request renders the minutes it reads, as
ACE renders every page it is asked for. bench/run.py measures the download floor and the pipeline
against this server state, so both pay the same rendering."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec, model
from vitals_pipeline.ace.wire import format_wire_time, parse_wire_time

KEY = "no-cache-key"
NOW = datetime(2025, 10, 12, 18, 0, tzinfo=UTC)
START = datetime(2025, 10, 12, 14, 0, tzinfo=UTC)
END = START + timedelta(hours=1)
PAGE_SIZE = 500
SITE = SiteSpec("office", points=60, seed=3, interval=60)


def first_page(url: str) -> bytes:
    params = {"start_time": format_wire_time(START), "end_time": format_wire_time(END),
              "page_size": PAGE_SIZE, "raw_data": "true"}
    response = httpx.get(f"{url}/sites/office/timeseries/paginated", params=params,
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    response.raise_for_status()
    return response.content


@pytest.fixture
def counted_renders(monkeypatch):
    """How many minutes the simulator renders (a spy on the real function, which still runs)."""
    calls = []
    real = model.build_block

    def spy(site, minute, plan):
        calls.append(minute)
        return real(site, minute, plan)

    monkeypatch.setattr(model, "build_block", spy)
    return calls


def serve(cache_mb: int) -> SimulatorServer:
    sim = Simulator(SimulatorConfig([SITE], api_key=KEY, cache_mb=cache_mb))
    sim.set_now(NOW)
    return SimulatorServer(sim)


def test_without_a_cache_each_request_renders_its_minutes_and_none_ahead(counted_renders):
    with serve(cache_mb=0) as server:
        page = first_page(server.url)
        time.sleep(0.3)  # a prefetch, if one were queued, would have run by now
        once = len(counted_renders)
        assert first_page(server.url) == page
        time.sleep(0.3)
        twice = len(counted_renders)
    assert b'"has_more":true' in page  # a next page exists: a cached server would prefetch it
    times = [parse_wire_time(part.split(b'"')[0].decode()) for part in page.split(b'"time":"')[1:]]
    spanned = int((max(times) - min(times)).total_seconds() // 60) + 1
    # The minutes of this page (and the one holding the row read to learn that more remain),
    # rendered again for the same request: nothing kept, nothing rendered ahead.
    assert 0 < once <= spanned + 1
    assert twice == 2 * once


def test_a_cached_server_renders_a_minute_once_and_serves_the_same_bytes(counted_renders):
    with serve(cache_mb=0) as server:
        uncached = first_page(server.url)
    counted_renders.clear()
    with serve(cache_mb=64) as server:
        page = first_page(server.url)
        time.sleep(0.3)
        rendered = len(counted_renders)
        assert first_page(server.url) == page
        time.sleep(0.3)
    assert page == uncached
    # The second request is served from the cache (what it rendered more is the prefetch of the
    # pages after it, at most once each).
    assert rendered > 0
    assert len(counted_renders) == rendered


def test_the_command_accepts_cache_mb_0():
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitals_pipeline.cli_simulate", "--port", "0", "--sites", "office",
         "--points", "60", "--interval", "60", "--cache-mb", "0",
         "--now", NOW.strftime("%Y-%m-%dT%H:%M:%S")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "ACE_SIM_API_KEY": KEY},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("ACE simulator listening on "), line
        assert b'"point_samples":[{' in first_page(line.rsplit(" ", 1)[1])
    finally:
        proc.terminate()
        proc.wait(10)
