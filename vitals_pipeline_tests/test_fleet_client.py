"""Many sites fetched at once through one AceSession, against the simulator over loopback HTTP
with real threads: the gate's cap seen from the server, a 429 that slows every site, a slow
site that runs out of budget while the others finish, a failing site that fails alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from vitals_pipeline.ace.client import (
    PERMANENT_ERRORS,
    AceBudgetExceeded,
    AceClient,
    AceError,
    AceNotFoundError,
    AceUnavailableError,
    RetrySettings,
)
from vitals_pipeline.ace.session import AceSession
from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline.resources import AceResource
from vitals_pipeline_tests.conftest import SIM_KEY

START = datetime(2026, 3, 9, 10, 0, tzinfo=UTC)
END = START + timedelta(minutes=15)
SITES = [f"s{i:04d}" for i in range(8)]
FAST_RETRY = RetrySettings(max_attempts=3, budget_seconds=30, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def fleet():
    sim = Simulator(SimulatorConfig(
        sites=[SiteSpec(name, points=20, seed=i) for i, name in enumerate(SITES)], api_key=SIM_KEY
    ))
    sim.set_now(START + timedelta(hours=1))
    with SimulatorServer(sim) as server:
        yield sim, server


def truth(sim: Simulator, site: str) -> list[tuple]:
    return [tuple(row) for row in sim.ground_truth(site, START, END)]


def rows_of(client: AceClient, site: str) -> list[tuple]:
    table = client.fetch_timeseries(site, START, END)
    return list(zip(*(table.column(c).to_pylist() for c in ("name", "time", "value")), strict=True))


def fetch_all_sites(session: AceSession, sites, *, budget: float | None = None, workers=None):
    """Fetch every site in its own thread, all starting together: {site: (rows or error, seconds)}."""
    barrier = threading.Barrier(len(sites))

    def fetch(site: str):
        barrier.wait()
        began = time.monotonic()
        try:
            with session.client(budget_seconds=budget) as client:
                return site, (rows_of(client, site), time.monotonic() - began)
        except AceError as exc:
            return site, (exc, time.monotonic() - began)

    with ThreadPoolExecutor(max_workers=workers or len(sites)) as pool:
        return dict(pool.map(fetch, sites))


def test_the_gate_caps_requests_in_flight_across_all_sites(fleet):
    sim, server = fleet
    sim.faults.slow_seconds = 0.05  # each request takes a while: the sites' requests overlap
    with AceSession(server.url, SIM_KEY, max_in_flight=3, page_size=50) as session:
        results = fetch_all_sites(session, SITES)
        gate = session.gate_stats
    stats = server.stats
    for site in SITES:
        assert results[site][0] == truth(sim, site)
    # Many pages per site, eight sites at once: the server saw exactly the cap at most.
    assert stats["requests"] >= 4 * len(SITES)
    assert stats["max_in_flight"] == 3, stats
    assert gate.peak_in_flight == 3 and gate.requests == stats["requests"]
    assert gate.slot_wait_seconds > 0
    # One pool sized to the gate: connections are reused from site to site.
    assert stats["connections"] <= 3
    assert set(stats["sites"]) == set(SITES)


def test_without_a_cap_the_same_fetch_goes_wider(fleet):
    """The control for the test above: the cap, not the simulator, limited the concurrency."""
    sim, server = fleet
    sim.faults.slow_seconds = 0.05
    with AceSession(server.url, SIM_KEY, max_in_flight=None, page_size=50) as session:
        fetch_all_sites(session, SITES)
    assert server.stats["max_in_flight"] > 3


def test_a_429_on_one_site_pauses_every_site_of_the_session(fleet):
    sim, server = fleet
    sim.faults.retry_after = 2.0
    sim.faults.script = ["429"]  # whichever site asks first gets it
    with AceSession(server.url, SIM_KEY, max_in_flight=8, page_size=10) as session:
        results = fetch_all_sites(session, SITES)
        gate = session.gate_stats
    assert server.stats["statuses"].get(429) == 1
    for site in SITES:
        rows, seconds = results[site]
        assert rows == truth(sim, site)
        # ~15 pages a site (~0.2 s unpaused): every site has pages left after the first answer,
        # so every site waited the ~2 s.
        assert 1.8 <= seconds < 5.0, (site, seconds)
    assert gate.rate_limits == 1 and gate.paused_seconds == pytest.approx(2.0)
    assert gate.pause_wait_seconds > 1.5 * (len(SITES) - 1)


def test_without_a_shared_gate_a_429_slows_only_the_site_that_got_it(fleet):
    """The control for the test above: independent clients, one per site, no gate."""
    sim, server = fleet
    sim.faults.retry_after = 2.0
    sim.faults.script = ["429"]
    barrier = threading.Barrier(len(SITES))

    def fetch(site: str) -> float:
        with AceClient(server.url, SIM_KEY, page_size=10) as client:
            barrier.wait()
            began = time.monotonic()
            rows_of(client, site)
            return time.monotonic() - began

    with ThreadPoolExecutor(len(SITES)) as pool:
        seconds = sorted(pool.map(fetch, SITES))
    assert seconds[-1] >= 1.8  # the site that got the 429
    assert sum(s >= 1.8 for s in seconds) == 1, seconds


def test_a_slow_site_runs_out_of_budget_while_the_others_finish(fleet):
    sim, server = fleet
    slow = SITES[3]
    sim.faults.site_slow_seconds = {slow: 3.0}
    with AceSession(server.url, SIM_KEY, max_in_flight=4, page_size=50, retry=FAST_RETRY) as session:
        results = fetch_all_sites(session, SITES, budget=1.0)
    error, seconds = results[slow]
    assert isinstance(error, AceBudgetExceeded) and isinstance(error, PERMANENT_ERRORS)
    assert 0.9 <= seconds < 1.8, seconds  # at its deadline, not after the slow answer (3 s)
    message = str(error)
    assert f"site {slow!r}" in message and "2026-03-09T10:00:00" in message
    assert "budget of 1.0s" in message and "0 page(s) and 1 request(s)" in message
    assert "ReadTimeout" in message and "next tick" in message and SIM_KEY not in message
    for site in SITES:
        if site != slow:
            assert results[site][0] == truth(sim, site)


def test_a_retry_that_would_pass_the_deadline_is_not_slept(fleet):
    sim, server = fleet
    sim.faults.site_status = {SITES[0]: 503}
    retry = RetrySettings(max_attempts=8, budget_seconds=60, initial_backoff=4.0, max_backoff=8.0)
    with AceSession(server.url, SIM_KEY, retry=retry) as session:
        client = session.client(budget_seconds=1.5)
        began = time.monotonic()
        with pytest.raises(AceBudgetExceeded, match="last error: HTTP 503") as err:
            rows_of(client, SITES[0])
    assert time.monotonic() - began < 1.0  # the 2-4 s backoff would pass the deadline: fail now
    assert "next retry would start after the deadline" in str(err.value)
    assert server.stats["sites"] == {SITES[0]: 1}


def test_a_pause_past_a_site_s_deadline_fails_that_site_at_once(fleet):
    sim, server = fleet
    with AceSession(server.url, SIM_KEY) as session:
        session.gate.slow_down(5.0)
        client = session.client(budget_seconds=1.0)
        began = time.monotonic()
        with pytest.raises(AceBudgetExceeded, match="the run.s 429 pause"):
            rows_of(client, SITES[1])
        assert time.monotonic() - began < 0.5
    assert server.stats["requests"] == 0


@pytest.mark.parametrize(
    ("status", "error", "says"),
    [
        (503, AceUnavailableError, "last: HTTP 503"),
        (500, AceUnavailableError, "last: HTTP 500"),
        (403, AceNotFoundError, "HTTP 403"),
    ],
)
def test_a_site_that_always_fails_fails_alone(fleet, status, error, says):
    sim, server = fleet
    bad = SITES[5]
    sim.faults.site_status = {bad: status}
    with AceSession(server.url, SIM_KEY, max_in_flight=4, retry=FAST_RETRY, page_size=50) as session:
        results = fetch_all_sites(session, SITES)
    failure = results[bad][0]
    assert type(failure) is error and says in str(failure) and f"site {bad!r}" in str(failure)
    # 5xx are retried (3 attempts), a 403 is not.
    assert server.stats["sites"][bad] == (1 if status == 403 else 3)
    for site in SITES:
        if site != bad:
            assert results[site][0] == truth(sim, site)


def test_clients_of_a_session_share_its_pool_and_do_not_close_it(fleet):
    sim, server = fleet
    with AceSession(server.url, SIM_KEY, max_in_flight=2) as session:
        for site in SITES[:3]:
            with session.client() as client:  # closing a site's client leaves the pool open
                assert rows_of(client, site) == truth(sim, site)
        assert session.clients == 3
        assert SIM_KEY not in repr(session) and SIM_KEY not in str(vars(session))
    assert server.stats["connections"] == 1
    with pytest.raises(RuntimeError, match="closed"):
        session.client()


def test_fetch_pieces_of_a_session_client_stop_at_the_deadline(fleet):
    sim, server = fleet
    sim.faults.site_slow_seconds = {SITES[2]: 0.4}
    with AceSession(server.url, SIM_KEY, page_size=10) as session:
        client = session.client(budget_seconds=1.0)
        began = time.monotonic()
        with pytest.raises(AceBudgetExceeded, match=f"site '{SITES[2]}'") as err:
            client.fetch_pieces(
                SITES[2], START, START + timedelta(hours=4), lambda page: page.num_rows,
                lambda pages, lo, hi: sum(pages),
            )
    assert time.monotonic() - began < 1.8
    assert "page(s)" in str(err.value)


def test_the_resource_opens_a_session_with_its_settings(fleet, monkeypatch):
    sim, server = fleet
    sim.faults.slow_seconds = 0.05
    monkeypatch.setenv("ACE_API_KEY", SIM_KEY)
    resource = AceResource(api_url=server.url, page_size=50, max_in_flight=2)
    with resource.session() as session:
        results = fetch_all_sites(session, SITES[:4])
        assert session.gate.max_in_flight == 2 and session.gate_stats.peak_in_flight == 2
    assert all(results[site][0] == truth(sim, site) for site in SITES[:4])
    assert server.stats["max_in_flight"] == 2
    with resource.session(max_in_flight=5) as session:
        assert session.gate.max_in_flight == 5
    with resource.client() as client:  # single calls: its own pool, no gate
        assert client.gate is None and rows_of(client, SITES[0]) == truth(sim, SITES[0])
    monkeypatch.delenv("ACE_API_KEY")
    with pytest.raises(dg.Failure, match="ACE_API_KEY is not set"), resource.session():
        pass
