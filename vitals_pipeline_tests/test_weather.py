"""`<site>/weather`: current conditions over real HTTP from the simulator, keyed by the reading's
own time; unpartitioned, refreshed by the schedule's tick run every VITALS_WEATHER_MINUTES for
every site in one step; a site without a feed is skipped, an unknown site fails alone."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from vitals_pipeline.ace.client import AceClient, AceNotFoundError
from vitals_pipeline.ace.simulator import Simulator, SiteSpec
from vitals_pipeline.assets.weather import NO_FEED, weather_key, weather_rows
from vitals_pipeline.automation.jobs import FLEET_JOB
from vitals_pipeline.automation.schedules import SCHEDULE_NAME
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
from vitals_pipeline_tests.conftest import SIM_KEY, SIM_NOW, SITE, simulator
from vitals_pipeline_tests.helpers import QUIET

NO_FEED_SITE = "no_feed_site"
METRICS = ["clouds", "dew_point", "feels_like", "humidity", "pressure", "temp", "wet_bulb", "wind_deg", "wind_speed"]


@pytest.fixture
def sim() -> Simulator:
    return simulator(SiteSpec(SITE, points=40, seed=3), SiteSpec(NO_FEED_SITE, points=40, seed=4, weather=False))


pytestmark = pytest.mark.usefixtures("derived_env")


def run(sites, instance):
    """One run of the weather of `sites` (unpartitioned: no partition key)."""
    job = build_definitions(Settings.from_env()).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, asset_selection=[weather_key(site) for site in sites], run_config=QUIET,
        raise_on_error=False,
    )


def stored(path, site=SITE):
    with duckdb.connect(path, read_only=True) as con:
        return con.execute(f"SELECT metric, ts, value, name FROM {site}.weather ORDER BY ts, metric").fetchall()


def materialization_metadata(result, site=SITE):
    [materialization] = [
        m for m in result.asset_materializations_for_node("weather") if m.asset_key == weather_key(site)
    ]
    return {k: v.value for k, v in materialization.metadata.items()}


def test_current_conditions_are_stored_once_per_reading_time(sim, pipeline_env):
    instance = dg.DagsterInstance.ephemeral()
    path = pipeline_env["VITALS_DUCKDB_PATH"]
    # The tick at 12:00 reads the 12:00 reading, stored under its own time.
    result = run([SITE], instance)
    assert result.success
    truth = sim.weather(SITE)
    rows = stored(path)
    assert rows == [
        (m, datetime(2026, 3, 10, 12, 0), float(truth[m]["value"]), f"{SITE}/weather/{m}") for m in METRICS
    ]
    assert materialization_metadata(result) == {"readings": 9, "reading_time": "2026-03-10T12:00:00"}

    # The next tick reads the same reading: stored once (the merge over the table on (metric, ts)).
    result = run([SITE], instance)
    assert result.success and stored(path) == rows
    assert materialization_metadata(result) == {"readings": 9, "reading_time": "2026-03-10T12:00:00"}

    sim.set_now(SIM_NOW + timedelta(minutes=5, seconds=20))
    assert run([SITE], instance).success
    later = stored(path)
    assert len(later) == 18 and {r[1] for r in later} == {datetime(2026, 3, 10, 12, 0), datetime(2026, 3, 10, 12, 5)}
    assert [r for r in later if r[1] == datetime(2026, 3, 10, 12, 0)] == rows, "the older reading is kept"


def schedule_ticks(defs, minutes, hour=12):
    """The assets each tick of the fleet schedule asks for (at HH:MM for each of `minutes`)."""
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    asked = []
    with dg.instance_for_test() as instance:
        for minute in minutes:
            tick = datetime(2026, 3, 10, hour, minute, tzinfo=UTC)
            with dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as context:
                [request] = schedule.evaluate_tick(context).run_requests
            asked.append(request)
    return asked


def test_weather_is_unpartitioned_and_refreshed_by_the_tick_run_every_fifteen_minutes(
    sim, pipeline_env, monkeypatch
):
    """ACE has current conditions only: no 5-minute partition of the past could ever be filled,
    so the asset has no partitions. It has no automation condition either: the schedule's tick
    run fetches it for every site, as its own step, on the ticks whose window closes on a
    multiple of VITALS_WEATHER_MINUTES (15 by default), and stores it with that tick's samples."""
    monkeypatch.setenv("ACE_SITES", f"{SITE},{NO_FEED_SITE}")
    defs = build_definitions(Settings.from_env())
    graph = defs.resolve_asset_graph()
    keys = [weather_key(SITE), weather_key(NO_FEED_SITE)]
    for key in keys:
        assert graph.get(key).partitions_def is None, key
        assert graph.get(key).automation_condition is None, key
    with pytest.raises(Exception, match="(?i)partition"):
        defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), asset_selection=keys, partition_key="2026-03-10-11:55",
        )

    # Ticks a minute after each boundary: windows closing at 12:00, 12:05, ..., 12:30.
    ticks = schedule_ticks(defs, range(1, 32, 5))
    with_weather = [
        request.tags["dagster/asset_partition_range_end"] for request in ticks
        if set(keys) <= set(request.asset_selection)
    ]
    assert with_weather == ["2026-03-10-11:55", "2026-03-10-12:10", "2026-03-10-12:25"]
    for request in ticks:  # never for one site without the other: both or neither
        assert len(set(keys) & set(request.asset_selection)) in (0, 2)

    # The 12:01 tick's run, as the daemon launches it: the samples and the weather of both sites
    # in one run, the weather in its own step; the site without a feed is skipped, not failed.
    request = ticks[0]
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(FLEET_JOB).execute_in_process(
        instance=instance, asset_selection=request.asset_selection, tags=request.tags,
        run_config=QUIET, raise_on_error=False,
    )
    assert result.success
    steps = {e.step_key for e in result.all_events if e.is_step_success}
    assert steps == {"timeseries", "weather"}
    assert materialization_metadata(result) == {"readings": 9, "reading_time": "2026-03-10T12:00:00"}
    assert materialization_metadata(result, NO_FEED_SITE) == {"skipped": NO_FEED}
    assert len(stored(pipeline_env["VITALS_DUCKDB_PATH"])) == 9
    # An unpartitioned materialization in a range run: recorded without a partition.
    [event] = instance.fetch_materializations(weather_key(SITE), limit=5).records
    assert event.asset_materialization.partition is None


@pytest.mark.parametrize(("minutes", "closing"), [("5", [0, 5, 10, 15]), ("30", [0]), ("0", [])])
def test_weather_minutes_setting(pipeline_env, monkeypatch, minutes, closing):
    monkeypatch.setenv("VITALS_WEATHER_MINUTES", minutes)
    ticks = schedule_ticks(build_definitions(Settings.from_env()), (1, 6, 11, 16))
    got = [i * 5 for i, request in enumerate(ticks) if weather_key(SITE) in request.asset_selection]
    assert got == closing


def test_site_without_weather_feed_is_skipped_not_failed(sim, pipeline_env, monkeypatch):
    monkeypatch.setenv("ACE_SITES", f"{SITE},{NO_FEED_SITE}")
    result = run([SITE, NO_FEED_SITE], dg.DagsterInstance.ephemeral())
    assert result.success
    assert materialization_metadata(result, NO_FEED_SITE) == {"skipped": NO_FEED}
    assert materialization_metadata(result, SITE)["readings"] == 9
    # No reading is stored for it. (The IO manager stores the empty frame as it stores any empty
    # frame of known types: the site's weather table may exist, empty; see test_storage.)
    with duckdb.connect(pipeline_env["VITALS_DUCKDB_PATH"], read_only=True) as con:
        tables = {
            r[0] for r in con.execute("SELECT schema_name FROM duckdb_tables() WHERE table_name = 'weather'").fetchall()
        }
        no_feed_rows = (
            con.execute(f"SELECT count(*) FROM {NO_FEED_SITE}.weather").fetchone()[0] if NO_FEED_SITE in tables else 0
        )
    assert SITE in tables and len(stored(pipeline_env["VITALS_DUCKDB_PATH"])) == 9
    assert no_feed_rows == 0


def test_unknown_site_fails_alone_with_the_403_explained(sim, pipeline_env, monkeypatch):
    """One run for both sites: the one ACE refuses fails the step (named, with why); the other's
    weather is stored and materialized all the same."""
    monkeypatch.setenv("ACE_SITES", f"ghost_site,{SITE}")
    result = run(["ghost_site", SITE], dg.DagsterInstance.ephemeral())
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.event_specific_data
    description = data.user_failure_data.description
    assert "HTTP 403" in description and "ACE_SITES" in description and SIM_KEY not in description
    assert [entry["site"] for entry in data.user_failure_data.metadata["failed_sites"].value] == ["ghost_site"]
    assert [m.asset_key for m in result.asset_materializations_for_node("weather")] == [weather_key(SITE)]
    assert len(stored(pipeline_env["VITALS_DUCKDB_PATH"])) == 9


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
