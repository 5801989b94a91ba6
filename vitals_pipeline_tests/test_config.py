"""Settings from the environment: defaults, and one clear error per bad value."""

from datetime import UTC, datetime

import pytest

from vitals_pipeline.config import ConfigError, Settings

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def settings(**env):
    return Settings.from_env({"ACE_SITES": "demo_office", **env}, now=NOW)


def test_defaults():
    s = settings()
    assert s.api_url == "https://flightdeck.aceiot.cloud/api"
    assert s.sites == ("demo_office",)
    assert s.page_size == 50000
    assert s.duckdb_path == "data/vitals.duckdb"
    assert s.lookback_minutes == 10
    assert s.partitions_start == datetime(2026, 11, 22, tzinfo=UTC)
    # Fleets: sites fetched at once, a site's budget per hour of window, sites per scheduled run,
    # how often an unchanged check result is recorded again.
    assert (s.fetch_concurrency, s.site_budget_seconds, s.shard_size, s.check_repeat_minutes) == (16, 30, 500, 60)
    # The tick run refreshes the weather every 15 minutes.
    assert s.weather_minutes == 15


def test_fleet_settings_are_read():
    s = settings(
        VITALS_FETCH_CONCURRENCY="4", VITALS_SITE_BUDGET_SECONDS="90", VITALS_SHARD_SIZE="250",
        VITALS_CHECK_REPEAT_MINUTES="0", VITALS_WEATHER_MINUTES="0",
    )
    assert (s.fetch_concurrency, s.site_budget_seconds, s.shard_size, s.check_repeat_minutes) == (4, 90, 250, 0)
    assert s.weather_minutes == 0


def test_sites_are_split_and_trimmed():
    assert settings(ACE_SITES=" a , b-c ").sites == ("a", "b-c")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACE_SITES": ""}, "ACE_SITES is not set"),
        ({"ACE_SITES": "a,,b"}, "empty name"),
        ({"ACE_SITES": "North-Campus,north_campus"}, "both map"),
        ({"ACE_PAGE_SIZE": "30000"}, "not one ACE accepts"),
        ({"ACE_PAGE_SIZE": "100000"}, "cut off"),
        ({"ACE_PAGE_SIZE": "lots"}, "whole number"),
        ({"VITALS_PARTITIONS_START": "2027-01-01-00:00"}, "in the future"),
        ({"VITALS_PARTITIONS_START": "2026-01-01"}, "YYYY-MM-DD-HH:MM"),
        ({"VITALS_PARTITIONS_START": "2026-01-01-00:02"}, "5-minute"),
        ({"VITALS_LOOKBACK_MINUTES": "7"}, "multiple of 5"),
        ({"ACE_API_URL": "flightdeck.aceiot.cloud"}, "not an http"),
        ({"VITALS_FETCH_CONCURRENCY": "0"}, "between 1 and 256"),
        ({"VITALS_FETCH_CONCURRENCY": "many"}, "not a whole number"),
        ({"VITALS_SITE_BUDGET_SECONDS": "2"}, "between 5 and 3600"),
        ({"VITALS_SHARD_SIZE": "20000"}, "between 1 and 10000"),
        ({"VITALS_CHECK_REPEAT_MINUTES": "7"}, "multiple of 5"),
        ({"VITALS_CHECK_REPEAT_MINUTES": "2880"}, "up to 1440"),
        ({"VITALS_CHECK_REPEAT_MINUTES": "hourly"}, "not a whole number"),
        ({"VITALS_WEATHER_MINUTES": "7"}, "one of 5, 10, 15, 20, 30, 60"),
        ({"VITALS_WEATHER_MINUTES": "45"}, "one of 5, 10, 15, 20, 30, 60"),
        ({"VITALS_WEATHER_MINUTES": "-5"}, "one of 5, 10, 15, 20, 30, 60"),
        ({"VITALS_WEATHER_MINUTES": "soon"}, "not a whole number"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message) as error:
        settings(**env)
    [variable] = env
    assert variable in str(error.value) and "\n" not in str(error.value)
