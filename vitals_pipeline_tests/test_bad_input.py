"""Bad input and configuration: each fails fast with one line that names the problem and what to
do, makes no retry storm (counted on the simulator), and writes nothing. Odd names (spaces, `%`,
unicode) are not bad input: they round-trip exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import UTC, datetime

import duckdb
import pytest

from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import points_key, range_tags, timeseries_key
from vitals_pipeline.config import ConfigError, Settings
from vitals_pipeline.storage.schema import schema_name
from vitals_pipeline.windows import window_for_keys
from vitals_pipeline_tests.conftest import SIM_KEY, SIM_NOW, SITE
from vitals_pipeline_tests.helpers import (
    BIN,
    ace_run_config,
    assert_exact,
    run_assets,
    step_failures,
)

FIRST, LAST = "2026-03-09-11:00", "2026-03-09-11:10"
WINDOW = window_for_keys(FIRST, LAST)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# name -> (environment changes (None deletes), run config for `ace`, words the message must
# hold, simulator statuses expected (None: the simulator is never reached))
RUN_CASES = {
    "missing key": ({"ACE_API_KEY": None}, None, ["ACE_API_KEY is not set"], {}),
    "wrong key (ACE's 500)": (
        {"ACE_API_KEY": "wrong-key-0d2f"},
        None,
        ["invalid or expired API key", "ACE_API_KEY"],
        {500: 2},  # retried once, then named
    ),
    "unknown site (403)": (
        {"ACE_SITES": "no_such_site"},
        None,
        ["HTTP 403", "ACE_SITES"],
        {403: 1},
    ),
    "wrong base URL (HTML 404)": (
        {"ACE_API_URL": "{url}/v2"},
        None,
        ["HTTP 404", "ACE_API_URL"],
        {404: 1},
    ),
    "unreachable host (closed port)": (
        {"ACE_API_URL": "http://127.0.0.1:{closed}/api"},
        None,
        ["cannot connect to ACE", "ACE_API_URL"],
        None,
    ),
    "page size outside the allowed set (run config)": (
        {},
        {"page_size": 30000},
        ["page size 30000", "ACE_PAGE_SIZE"],
        {},
    ),
}


def site_error(result, site: str) -> str | None:
    """The error of `site` in the fleet step's `failed_sites`, if the step failed site by site."""
    for event in result.all_events:
        user = getattr(event.event_specific_data, "user_failure_data", None) if event.is_step_failure else None
        listed = user.metadata.get("failed_sites") if user is not None else None
        if listed is not None:
            [entry] = listed.value
            assert entry["site"] == schema_name(site) or entry["site"] == site, entry
            return entry["error"]
    return None


@pytest.mark.parametrize("name", list(RUN_CASES))
def test_bad_input_fails_fast_with_one_line_and_writes_nothing(
    name, sim, server, pipeline_env, monkeypatch
):
    changes, ace_config, words, statuses = RUN_CASES[name]
    for var, value in changes.items():
        if value is None:
            monkeypatch.delenv(var)
        else:
            monkeypatch.setenv(var, value.format(url=server.url, closed=closed_port()))
    site = os.environ["ACE_SITES"]
    server.reset_stats()
    started = time.monotonic()
    result = run_assets(
        [timeseries_key(site)],
        tags=range_tags(FIRST, LAST),
        run_config=ace_run_config(**ace_config) if ace_config else None,
    )
    elapsed = time.monotonic() - started
    assert not result.success
    [message] = step_failures(result)  # one failure: no step retries
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    # A fleet step lists its failed sites, one line each (the whole message has a header and
    # what to do next); a failure before any site is fetched is one line itself.
    message = site_error(result, site) or message
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    assert SIM_KEY not in message and "wrong-key-0d2f" not in message
    if statuses is not None:
        assert server.stats["statuses"] == statuses, server.stats
    assert elapsed < 20, f"took {elapsed:.1f}s: not failing fast"
    assert stored_tables(pipeline_env["VITALS_DUCKDB_PATH"]) == [], "nothing may be written"


def stored_tables(path: str) -> list[tuple]:
    """Every table of the DuckDB file. A fleet step opens the file before its sites are fetched
    (the run's one session), so a run that fails on every site may leave an empty file: no
    schema, no table, no row."""
    if not os.path.exists(path):
        return []
    with duckdb.connect(path, read_only=True) as con:
        return con.execute("SELECT schema_name, table_name FROM duckdb_tables()").fetchall()


NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

CONFIG_CASES = {
    "ACE_SITES unset": ({"ACE_SITES": ""}, "ACE_SITES", "set it"),
    "ACE_SITES stray comma": ({"ACE_SITES": "a,,b"}, "ACE_SITES", "stray comma"),
    "ACE_SITES two names, one schema": (
        {"ACE_SITES": "North-Campus,north_campus"},
        "ACE_SITES",
        "list each site once",
    ),
    "partitions start in the future": (
        {"VITALS_PARTITIONS_START": "2026-03-11-00:00"},
        "VITALS_PARTITIONS_START",
        "set a start in the past",
    ),
    "page size ACE refuses": ({"ACE_PAGE_SIZE": "30000"}, "ACE_PAGE_SIZE", "use one of"),
    "page size that gets cut off": ({"ACE_PAGE_SIZE": "100000"}, "ACE_PAGE_SIZE", "50000 or less"),
    "API URL without a scheme": (
        {"ACE_API_URL": "flightdeck.aceiot.cloud/api"},
        "ACE_API_URL",
        "expected e.g. https://",
    ),
}


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_bad_config_stops_definitions_loading_with_one_line(name):
    env, variable, advice = CONFIG_CASES[name]
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"ACE_SITES": SITE, **env}, now=NOW)
    message = str(err.value)
    assert "\n" not in message and variable in message and advice in message, message


@pytest.mark.slow
def test_dagster_definitions_validate_exits_non_zero_naming_the_variable(tmp_path):
    env = {**os.environ, "ACE_SITES": "a,,b", "DAGSTER_HOME": str(tmp_path)}
    proc = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "vitals_pipeline.definitions"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "ACE_SITES='a,,b' has an empty name (a stray comma?)" in proc.stdout + proc.stderr


ODD_POINTS = (
    "Drivers/BacnetNetwork/AHU 1/points/Supply Air Temp",
    "Drivers/BacnetNetwork/AHU 1/points/Fan Speed %",
    "Drivers/BacnetNetwork/AHU 1/points/Zone Temp °F",
)


@pytest.mark.parametrize("site", [SITE, "north campus/bldg %1 ü"])
def test_names_with_spaces_percent_and_unicode_round_trip(site, monkeypatch, tmp_path):
    """Point names (and a site name) with spaces, `%`, `/` and unicode are stored exactly, in
    `timeseries` and in `points`."""
    sim = Simulator(SimulatorConfig(sites=[SiteSpec(site, points=60, seed=3)], api_key=SIM_KEY))
    sim.set_now(SIM_NOW)
    db = tmp_path / "vitals.duckdb"
    with SimulatorServer(sim) as server:
        for var, value in {
            "ACE_API_URL": server.url,
            "ACE_API_KEY": SIM_KEY,
            "ACE_SITES": site,
            "VITALS_DUCKDB_PATH": str(db),
            "VITALS_PARTITIONS_START": "2026-03-01-00:00",
        }.items():
            monkeypatch.setenv(var, value)
        result = run_assets([timeseries_key(site), points_key(site)], tags=range_tags(FIRST, LAST))
    assert result.success, step_failures(result)
    schema = schema_name(site)
    rows = assert_exact(db, sim, WINDOW.start, WINDOW.end, site=site, schema=schema)
    odd = {f"{site}/{suffix}" for suffix in ODD_POINTS}
    assert odd <= {r[0] for r in rows}
    with duckdb.connect(str(db), read_only=True) as con:
        names = {n for (n,) in con.execute(f'SELECT name FROM "{schema}".points').fetchall()}
        sites = {s for (s,) in con.execute(f'SELECT DISTINCT site FROM "{schema}".points').fetchall()}
    assert odd <= names and names == {p["name"] for p in sim.points(site)}
    assert sites == {site}
