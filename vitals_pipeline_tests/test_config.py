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
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        settings(**env)
