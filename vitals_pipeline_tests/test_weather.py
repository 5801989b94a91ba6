"""`<site>/weather`: current conditions over real HTTP from the simulator, keyed by the reading's
own time; a site without a feed is skipped, an unknown site fails."""

from datetime import datetime, timedelta

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.client import AceClient, AceNotFoundError
from vitals_pipeline.ace.simulator import Simulator, SiteSpec
from vitals_pipeline.assets.weather import NO_FEED, weather_key, weather_rows
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline_tests.conftest import SIM_KEY, SIM_NOW, SITE, simulator

NO_FEED_SITE = "no_feed_site"
METRICS = ["clouds", "dew_point", "feels_like", "humidity", "pressure", "temp", "wet_bulb", "wind_deg", "wind_speed"]


@pytest.fixture
def sim() -> Simulator:
    return simulator(SiteSpec(SITE, points=40, seed=3), SiteSpec(NO_FEED_SITE, points=40, seed=4, weather=False))


pytestmark = pytest.mark.usefixtures("derived_env")


def run(site, partition_key, instance):
    job = build_definitions(Settings.from_env()).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, asset_selection=[weather_key(site)], partition_key=partition_key, raise_on_error=False
    )


def stored(path, site=SITE):
    with duckdb.connect(path, read_only=True) as con:
        return con.execute(f"SELECT metric, ts, value, name FROM {site}.weather ORDER BY ts, metric").fetchall()


def materialization_metadata(result, site=SITE):
    [materialization] = result.asset_materializations_for_node(f"{site}__weather")
    return {k: v.value for k, v in materialization.metadata.items()}


def test_current_conditions_are_stored_once_per_reading_time(sim, pipeline_env):
    instance = dg.DagsterInstance.ephemeral()
    path = pipeline_env["VITALS_DUCKDB_PATH"]
    # The tick for the partition that closed at 12:00 runs at 12:00: the reading (12:00) is
    # outside that partition's window [11:55, 12:00), and is stored under its own time.
    result = run(SITE, "2026-03-10-11:55", instance)
    assert result.success
    truth = sim.weather(SITE)
    rows = stored(path)
    assert rows == [
        (m, datetime(2026, 3, 10, 12, 0), float(truth[m]["value"]), f"{SITE}/weather/{m}") for m in METRICS
    ]
    assert materialization_metadata(result)["store_rows_inserted"] == 9

    # The next tick reads the same reading: nothing new.
    result = run(SITE, "2026-03-10-12:00", instance)
    assert result.success and stored(path) == rows
    assert materialization_metadata(result)["store_rows_unchanged"] == 9

    sim.set_now(SIM_NOW + timedelta(minutes=5, seconds=20))
    assert run(SITE, "2026-03-10-12:05", instance).success
    later = stored(path)
    assert len(later) == 18 and {r[1] for r in later} == {datetime(2026, 3, 10, 12, 0), datetime(2026, 3, 10, 12, 5)}


def test_an_old_partition_stores_todays_reading(sim, pipeline_env):
    """ACE has current conditions only: a backfill cannot give old weather (documented)."""
    assert run(SITE, "2026-03-01-00:00", dg.DagsterInstance.ephemeral()).success
    assert {r[1] for r in stored(pipeline_env["VITALS_DUCKDB_PATH"])} == {datetime(2026, 3, 10, 12, 0)}


def test_site_without_weather_feed_is_skipped_not_failed(sim, pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", f"{SITE},{NO_FEED_SITE}")
    result = run(NO_FEED_SITE, "2026-03-10-11:55", dg.DagsterInstance.ephemeral())
    assert result.success
    assert materialization_metadata(result, NO_FEED_SITE) == {"skipped": NO_FEED}
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"]) as con:
        assert con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'weather'"
        ).fetchall() == [(0,)]


def test_unknown_site_fails_with_the_403_explained(sim, pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", f"{SITE},ghost_site")
    result = run("ghost_site", "2026-03-10-11:55", dg.DagsterInstance.ephemeral())
    assert not result.success
    message = " ".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)
    assert "HTTP 403" in message and "ACE_SITES" in message and SIM_KEY not in message


def test_client_tells_no_feed_from_a_wrong_route(sim, server):
    with AceClient(server.url, SIM_KEY) as client:
        assert client.weather(NO_FEED_SITE) is None
        assert set(client.weather(SITE)["weather"]) == set(METRICS)
    with AceClient(server.url.removesuffix("/api") + "/not-the-api", SIM_KEY) as client:
        with pytest.raises(AceNotFoundError, match="404"):
            client.weather(SITE)


def test_weather_rows_tolerate_strings_gaps_and_zones():
    doc = {
        "weather": {
            "temp": {"name": "s/weather/temp", "value": "41.5", "time": "2026-03-10T12:00:00"},
            "humidity": {"name": "s/weather/humidity", "value": 0, "time": "2026-03-10T12:00:00Z"},
            "pressure": {"name": "s/weather/pressure", "value": "NaN", "time": "2026-03-10T07:00:00-05:00"},
            "clouds": {"name": "s/weather/clouds", "value": None, "time": None},
            "wind_deg": None,
        }
    }
    rows = weather_rows(doc).to_pylist()
    noon = datetime(2026, 3, 10, 12, 0)
    assert rows == [
        {"metric": "humidity", "ts": noon, "value": 0.0, "name": "s/weather/humidity"},
        {"metric": "pressure", "ts": noon, "value": None, "name": "s/weather/pressure"},
        {"metric": "temp", "ts": noon, "value": 41.5, "name": "s/weather/temp"},
    ]
    assert weather_rows({"weather": None}).num_rows == 0
