"""`vitals status`: healthy / degraded / down from a real instance and DuckDB file, a writer holding
the file, the CLI's exit codes and JSON, and no enumeration of partition keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.pause import pause_sites
from vitals_pipeline.automation.settings import AutomationSettings
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline.status import (
    DEGRADED,
    DOWN,
    HEALTHY,
    PAUSED,
    Thresholds,
    collect_status,
    duckdb_figures,
    render_text,
    run_status,
)
from vitals_pipeline.windows import PARTITION, floor_to_partition, partition_key
from vitals_pipeline_tests.conftest import SIM_KEY, SITE

REPO = Path(__file__).resolve().parent.parent
VITALS = Path(sys.executable).parent / "vitals"
THRESHOLDS = Thresholds(degraded_minutes=15, down_minutes=60)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def key(t: datetime) -> str:
    return partition_key(t)


def make_home(base: Path, monkeypatch) -> Path:
    """A DAGSTER_HOME with the shipped dagster.yaml, initialised once, as `vitals status` finds it."""
    from vitals_pipeline.cli import ensure_dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(base / "dagster_home"))
    return ensure_dagster_home()


def load_last_hour(monkeypatch) -> dict:
    """An hour up to the newest closed partition, loaded in one run on the real clock."""
    end = floor_to_partition(datetime.now(UTC))
    start = end - timedelta(hours=1)
    monkeypatch.setenv("VITALS_PARTITIONS_START", key(start))
    with dg.DagsterInstance.get() as instance:
        result = run(instance, key(start), key(end - PARTITION))
        assert result.success
    return {"start": start, "end": end, "now": end + timedelta(minutes=1), "run_id": result.run_id}


@pytest.fixture
def home(tmp_path, monkeypatch):
    return make_home(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One loaded instance and DuckDB file for the tests that only read them (a run costs
    seconds): its own simulator on the real clock, its environment kept for the module."""
    base = tmp_path_factory.mktemp("status")
    simulator = Simulator(SimulatorConfig(sites=[SiteSpec(SITE, points=60, seed=3)], api_key=SIM_KEY))
    with SimulatorServer(simulator) as server, pytest.MonkeyPatch.context() as mp:
        env = {
            "ACE_API_URL": server.url,
            "ACE_API_KEY": SIM_KEY,
            "ACE_SITES": SITE,
            "VITALS_DUCKDB_PATH": str(base / "vitals.duckdb"),
        }
        for name, value in env.items():
            mp.setenv(name, value)
        make_home(base, mp)
        state = load_last_hour(mp)
        env.update(
            DAGSTER_HOME=os.environ["DAGSTER_HOME"],
            VITALS_PARTITIONS_START=os.environ["VITALS_PARTITIONS_START"],
        )
        yield {**state, "env": env}


@pytest.fixture
def loaded(shared, monkeypatch):
    """The shared loaded instance, its environment in place (read it, do not run into it)."""
    for name, value in shared["env"].items():
        monkeypatch.setenv(name, value)
    return shared


@pytest.fixture
def loaded_own(sim, pipeline_env, home, monkeypatch):
    """A loaded instance of this test's own, to add runs to."""
    sim.set_now(None)
    return load_last_hour(monkeypatch)


def run(instance, first, last, **env):
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def(FLEET_JOB)
    with _env(env):
        return job.execute_in_process(
            instance=instance,
            asset_selection=[timeseries_key(SITE)],  # as the schedule asks for it
            tags=range_tags(first, last),
            raise_on_error=False,
            run_config=QUIET,
        )


class _env:
    def __init__(self, values):
        self.values, self.saved = values, {}

    def __enter__(self):
        for name, value in self.values.items():
            self.saved[name] = os.environ.get(name)
            os.environ[name] = value

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def status_at(now, **kwargs):
    with dg.DagsterInstance.get() as instance:
        return collect_status(instance, Settings.from_env(), THRESHOLDS, now=now, **kwargs)


def test_healthy(loaded):
    report = status_at(loaded["now"])
    assert report["health"] == HEALTHY and report["exit_code"] == 0
    [site] = report["sites"]
    assert site["newest_partition"] == key(loaded["end"] - PARTITION)
    assert site["lag_minutes"] == 1.0
    assert site["missing_partitions"] == site["failed_partitions"] == 0 and site["gaps"] == []
    last = site["last_run"]
    assert last["run_id"] == loaded["run_id"] and last["status"] == last["site_status"] == "SUCCESS"
    assert last["partitions"] == 12 and last["sites"] == 1 and last["duration_seconds"] > 0
    assert last["error"] is None and site["paused"] is False
    assert report["fleet"] == {"sites": 1, HEALTHY: 1, DEGRADED: 0, DOWN: 0, PAUSED: 0}
    db = report["duckdb"]
    assert db["state"] == "ok" and db["size_bytes"] > 0
    assert db["sites"][SITE]["samples"] > 0 and db["sites"][SITE]["points"] == 60
    text = render_text(report)
    assert "HEALTHY (exit 0)" in text and SITE in text and "1 healthy" in text


def test_degraded_when_lagging_and_down_when_stale(loaded):
    report = status_at(loaded["now"] + timedelta(minutes=20))
    assert report["health"] == DEGRADED and report["exit_code"] == 1
    [site] = report["sites"]
    assert site["lag_minutes"] == 21.0
    assert any("degraded above 15 min" in r for r in site["reasons"])
    # The partitions closed since are missing (the schedule did not run them).
    assert site["missing_partitions"] == 3 and site["gaps"] == [
        f"{key(loaded['end'])}...{key(loaded['end'] + 2 * PARTITION)}"
    ]

    report = status_at(loaded["now"] + timedelta(hours=2))
    assert report["health"] == DOWN and report["exit_code"] == 2
    assert "down above 60 min" in report["sites"][0]["reasons"][0]


def test_degraded_by_a_failed_run_with_its_error(loaded_own):
    loaded = loaded_own
    failed_key = key(loaded["end"] - 4 * PARTITION)
    with dg.DagsterInstance.get() as instance:
        failure = run(instance, failed_key, failed_key, ACE_API_KEY="not-the-key")
    assert not failure.success
    report = status_at(loaded["now"])
    [site] = report["sites"]
    assert report["health"] == DEGRADED
    last = site["last_run"]
    assert last["status"] == last["site_status"] == "FAILURE" and last["run_id"] == failure.run_id
    assert site["failed_partitions"] == 1 and site["gaps"] == [f"{failed_key}...{failed_key}"]
    assert last["window"].startswith(f"[{failed_key}")
    assert "key" in last["error"].lower()  # the site's own error (ACE refused the key)
    assert any(failure.run_id[:8] in reason for reason in site["reasons"])
    text = render_text(report)
    assert failure.run_id[:8] in text and "not-the-key" not in text and SIM_KEY not in text
    # The data from before is still there: the newest partition did not go back.
    assert site["newest_partition"] == key(loaded["end"] - PARTITION)


def test_a_paused_site_is_shown_paused_and_does_not_degrade_the_fleet(loaded_own):
    with dg.DagsterInstance.get() as instance:
        pause_sites(instance, [SITE])
    report = status_at(loaded_own["now"] + timedelta(hours=3))  # long behind, but paused
    [site] = report["sites"]
    assert site["health"] == PAUSED and site["paused"] and "vitals resume" in site["reasons"][0]
    assert report["health"] == HEALTHY and report["fleet"][PAUSED] == 1
    assert "1 paused" in render_text(report)


def test_down_when_nothing_was_ever_materialized(sim, pipeline_env, home):
    report = status_at(datetime.now(UTC))
    assert report["health"] == DOWN and report["exit_code"] == 2
    assert report["sites"][0]["newest_partition"] is None
    assert report["duckdb"]["state"] == "absent"
    assert "DOWN (exit 2)" in render_text(report)


def test_thresholds_come_from_the_environment():
    settings = AutomationSettings.from_env(
        {"VITALS_STATUS_DEGRADED_MINUTES": "30", "VITALS_STATUS_DOWN_MINUTES": "240"}
    )
    assert Thresholds.from_settings(settings) == Thresholds(30, 240)


def test_status_never_lists_all_partition_keys(loaded, monkeypatch):
    monkeypatch.setenv("VITALS_PARTITIONS_START", key(loaded["end"] - timedelta(days=400)))

    def refuse(*args, **kwargs):
        raise AssertionError("listed every partition key")

    monkeypatch.setattr(dg.TimeWindowPartitionsDefinition, "get_partition_keys", refuse)
    started = time.perf_counter()
    report = status_at(loaded["now"])
    elapsed = time.perf_counter() - started
    [site] = report["sites"]
    assert site["newest_partition"] == key(loaded["end"] - PARTITION)
    # 24 h back, only the last hour was loaded.
    assert site["missing_partitions"] == 288 - 11
    assert elapsed < 3


def test_configuration_error_is_a_message_not_a_traceback(monkeypatch):
    monkeypatch.delenv("ACE_SITES", raising=False)
    lines: list[str] = []
    assert run_status(as_json=False, duckdb_wait_seconds=0, echo=lines.append) == 2
    assert "ACE_SITES" in lines[0] and "Traceback" not in lines[0]
    lines.clear()
    assert run_status(as_json=True, duckdb_wait_seconds=0, echo=lines.append) == 2
    assert json.loads(lines[0])["health"] == DOWN


# --------------------------------------------------------------------------------------------
# DuckDB while a run writes


HOLD_WRITE_LOCK = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS writer_probe (x INTEGER)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold_write_lock(path: str, seconds: float) -> subprocess.Popen:
    """Another process with the DuckDB file open for writing, as a run's IO manager has it."""
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, path, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "locked"
    return writer


def test_duckdb_busy_while_a_writer_holds_the_file(loaded):
    path = loaded["env"]["VITALS_DUCKDB_PATH"]
    writer = hold_write_lock(path, 30)
    try:
        started = time.monotonic()
        figures = duckdb_figures(path, [SITE], wait_seconds=1.0)
        assert figures["state"] == "busy" and "waited 1 s" in figures["detail"]
        assert 1.0 <= time.monotonic() - started < 3
        assert figures["size_bytes"] > 0
    finally:
        writer.kill()
        writer.wait()


def test_duckdb_waits_for_a_short_write(loaded):
    path = loaded["env"]["VITALS_DUCKDB_PATH"]
    writer = hold_write_lock(path, 1.5)
    try:
        figures = duckdb_figures(path, [SITE], wait_seconds=10.0)
        assert figures["state"] == "ok" and figures["sites"][SITE]["samples"] > 0
    finally:
        writer.wait()


def cli_status(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VITALS), "status", *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


@pytest.mark.slow
def test_cli_json_exit_code_and_a_concurrent_writer(loaded):
    """The command as an operator runs it, while a run holds DuckDB: JSON, exit 0, no traceback."""
    writer = hold_write_lock(loaded["env"]["VITALS_DUCKDB_PATH"], 60)
    try:
        started = time.monotonic()
        result = cli_status("--json", "--duckdb-wait", "1")
        elapsed = time.monotonic() - started
    finally:
        writer.kill()
        writer.wait()
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert result.returncode == 0 == report["exit_code"], result.stdout
    assert report["duckdb"]["state"] == "busy"
    assert report["sites"][0]["newest_partition"] == key(loaded["end"] - PARTITION)
    assert elapsed < 15

    text = cli_status()
    assert text.returncode == 0 and "HEALTHY (exit 0)" in text.stdout and "samples from 60 points" in text.stdout


@pytest.mark.parametrize("checks", ["on", "off"])
def test_status_knows_the_check_keys_the_definitions_define(monkeypatch, checks):
    """`vitals status` lists the checks without building the definitions: same keys."""
    from vitals_pipeline.status import site_check_keys

    monkeypatch.setenv("ACE_SITES", "Main Office,lab-2")
    monkeypatch.setenv("VITALS_CHECKS", checks)
    settings = Settings.from_env()
    graph = build_definitions(settings).resolve_asset_graph()
    defined = {
        site: sorted(k for k in graph.asset_check_keys if k.asset_key == timeseries_key(site))
        for site in settings.sites
    }
    assert {site: sorted(keys) for site, keys in site_check_keys(settings).items()} == defined
    assert (len(defined["Main Office"]) > 0) == (checks == "on")
