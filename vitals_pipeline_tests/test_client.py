"""The ACE client against the simulator over real loopback HTTP: paging, faults, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vitals_pipeline.ace.client import (
    AceAuthError,
    AceClient,
    AceNotFoundError,
    AceRequestError,
    AceUnavailableError,
    FetchStats,
    RetrySettings,
    parse_retry_after,
)
from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline_tests.conftest import SIM_KEY, SITE

START = datetime(2026, 3, 9, 10, 0, tzinfo=UTC)
END = START + timedelta(minutes=15)


def client_for(server, *, key=SIM_KEY, page_size=50000, sleeps=None, timeout=5.0, attempts=6):
    return AceClient(
        server.url,
        key,
        page_size=page_size,
        timeout=timeout,
        retry=RetrySettings(max_attempts=attempts, budget_seconds=60),
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)),
        seed=1,
    )


def fetched_rows(client, site=SITE, start=START, end=END, stats=None):
    table = client.fetch_timeseries(site, start, end, stats)
    return list(zip(table.column("name").to_pylist(), table.column("time").to_pylist(),
                    table.column("value").to_pylist(), strict=True))


@pytest.mark.parametrize("page_size", [3, 10, 500, 50000])
@pytest.mark.parametrize("defect", [True, False])
def test_paging_returns_ground_truth_at_any_page_size(page_size, defect):
    sim = Simulator(SimulatorConfig(sites=[SiteSpec(SITE, points=60, seed=3)], api_key=SIM_KEY, cursor_defect=defect))
    sim.set_now(START + timedelta(hours=1))
    with SimulatorServer(sim) as server, client_for(server, page_size=page_size) as client:
        stats = FetchStats()
        rows = fetched_rows(client, stats=stats)
    truth = sim.ground_truth(SITE, START, END)
    assert rows == [tuple(r) for r in truth]
    assert len(rows) > 100
    assert stats.pages == -(-len(rows) // page_size)


@pytest.mark.parametrize(
    "fault", ["429", "429-date", "500", "502", "503", "504", "reset", "truncate", "invalid_json", "timeout"]
)
def test_each_transient_fault_is_retried_and_loses_nothing(sim, server, fault):
    sim.faults.hang_seconds = 3
    sim.faults.retry_after = 2
    sim.faults.script = [fault]
    sleeps: list[float] = []
    with client_for(server, sleeps=sleeps, timeout=1.0) as client:
        stats = FetchStats()
        rows = fetched_rows(client, stats=stats)
    assert rows == [tuple(r) for r in sim.ground_truth(SITE, START, END)]
    assert stats.retries == 1 and len(sleeps) == 1
    if fault.startswith("429"):
        assert 0.5 <= sleeps[0] <= 2.0  # Retry-After honoured (the date form has 1 s resolution)


def test_invalid_key_500_is_retried_once_then_named(server):
    sleeps: list[float] = []
    with client_for(server, key="not-the-key", sleeps=sleeps) as client, pytest.raises(AceAuthError) as err:
        client.fetch_timeseries(SITE, START, END)
    assert "ACE_API_KEY" in str(err.value) and "not-the-key" not in str(err.value)
    assert len(sleeps) == 1
    assert server.stats["statuses"].get(500) == 2


def test_missing_key_fails_before_any_request():
    with pytest.raises(AceAuthError, match="ACE_API_KEY"):
        AceClient("http://127.0.0.1:9/api", "")


def test_unknown_site_is_not_retried(server):
    sleeps: list[float] = []
    with client_for(server, sleeps=sleeps) as client, pytest.raises(AceNotFoundError, match="ACE_SITES"):
        client.fetch_timeseries("no_such_site", START, END)
    assert sleeps == [] and server.stats["statuses"].get(403) == 1


def test_a_400_is_reported_with_ace_s_reason_and_not_retried(server):
    with client_for(server) as client:
        client.page_size = 30000  # bypass the local check to see what ACE says
        with pytest.raises(AceRequestError, match="page_size"):
            client.fetch_timeseries(SITE, START, END)
    assert server.stats["statuses"].get(400) == 1


def test_persistent_5xx_gives_up_within_the_attempt_budget(sim, server):
    sim.faults.server_error_every = 1
    sleeps: list[float] = []
    with (
        client_for(server, sleeps=sleeps, attempts=4) as client,
        pytest.raises(AceUnavailableError, match="ACE_API_URL"),
    ):
        client.fetch_timeseries(SITE, START, END)
    assert len(sleeps) == 3
    assert all(0 < s <= RetrySettings().max_backoff for s in sleeps)


def test_repeatedly_truncated_pages_shrink_the_page_size(sim, server):
    sim.faults.truncate_min_page_size = 50000
    with client_for(server, page_size=50000) as client:
        stats = FetchStats()
        rows = fetched_rows(client, stats=stats)
        assert client.page_size == 10000 and stats.page_size == 10000
    assert rows == [tuple(r) for r in sim.ground_truth(SITE, START, END)]


def test_unreachable_host_is_reported_after_retries():
    sleeps: list[float] = []
    client = AceClient("http://127.0.0.1:9/api", "k", retry=RetrySettings(max_attempts=3, budget_seconds=10),
                       sleep=sleeps.append)
    with client, pytest.raises(AceUnavailableError, match="ConnectError"):
        client.fetch_timeseries(SITE, START, END)
    assert len(sleeps) == 2


def test_configured_points_walk_every_page_and_names_keep_their_slashes(sim, server):
    with client_for(server) as client:
        points = client.configured_points(SITE, per_page=10)
    assert [p["name"] for p in points] == [p["name"] for p in sim.points(SITE)]
    assert any("/" in p["name"] for p in points)


def test_site_names_are_one_percent_encoded_segment():
    odd = "north campus/bldg %1 ü"
    sim = Simulator(SimulatorConfig(sites=[SiteSpec(odd, points=20, seed=1)], api_key=SIM_KEY))
    sim.set_now(START + timedelta(hours=1))
    with SimulatorServer(sim) as server, client_for(server) as client:
        assert client.site(odd)["name"] == odd
        assert fetched_rows(client, site=odd) == [tuple(r) for r in sim.ground_truth(odd, START, END)]


def test_retry_after_forms():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:05 GMT", now=now) == 5.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


def test_client_repr_hides_the_key(server):
    with client_for(server) as client:
        assert SIM_KEY not in repr(client) and SIM_KEY not in str(vars(client))
