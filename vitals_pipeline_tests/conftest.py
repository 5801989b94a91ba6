"""Shared fixtures: a simulator over real loopback HTTP, a clean pipeline environment."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

# `vitals_pipeline.definitions` builds `defs` from the environment on import; tests that build
# their own definitions set the real values per test (pipeline_env).
os.environ.setdefault("ACE_SITES", "test_site")

from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec

SIM_KEY = "sim-key-7f3a9c"  # the key tests give the simulator; asserted absent from outputs
SITE = "test_site"
# A fixed clock well after every window the tests read, so the data is complete and repeatable.
SIM_NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def simulator(*sites: SiteSpec) -> Simulator:
    """A simulator of `sites` that accepts SIM_KEY, its clock pinned at SIM_NOW."""
    made = Simulator(SimulatorConfig(sites=list(sites), api_key=SIM_KEY))
    made.set_now(SIM_NOW)
    return made


@pytest.fixture
def sim() -> Simulator:
    return simulator(SiteSpec(SITE, points=60, seed=3))


@pytest.fixture
def server(sim):
    with SimulatorServer(sim) as running:
        yield running


@pytest.fixture
def pipeline_env(monkeypatch, tmp_path, server):
    """Environment variables for the pipeline pointed at the simulator and a fresh DuckDB file."""
    env = {
        "ACE_API_URL": server.url,
        "ACE_API_KEY": SIM_KEY,
        "ACE_SITES": SITE,
        "VITALS_DUCKDB_PATH": str(tmp_path / "vitals.duckdb"),
        "VITALS_PARTITIONS_START": "2026-03-01-00:00",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def derived_env(monkeypatch, tmp_path):
    """For the tests of the derived assets (roll-up, archive, weather): the quality checks on
    `<site>/timeseries` off (not what they test), the Parquet archive in the test's folder."""
    monkeypatch.setenv("VITALS_CHECKS", "off")
    monkeypatch.setenv("VITALS_ARCHIVE_URI", str(tmp_path / "archive"))
    return tmp_path / "archive"


@pytest.fixture(autouse=True)
def _keep_ephemeral_instances_alive(monkeypatch):
    """A run result holds only a weak reference to its instance: when a test passes
    `DagsterInstance.ephemeral()` inline and the garbage collector runs before it reads the
    result's events, Dagster raises "Attempted to resolve undefined DagsterInstance weakref"
    (seen under `-n 2` load). Keep every ephemeral instance alive until the test ends."""
    import dagster as dg

    kept: list = []
    original = dg.DagsterInstance.ephemeral

    def ephemeral(*args, **kwargs):
        instance = original(*args, **kwargs)
        kept.append(instance)
        return instance

    monkeypatch.setattr(dg.DagsterInstance, "ephemeral", staticmethod(ephemeral))
    yield
    kept.clear()
