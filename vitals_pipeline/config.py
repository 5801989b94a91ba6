"""The pipeline's settings, read once from the environment and checked up front.

Every error here names the variable, what was wrong and what to set instead. The API key is not
a setting of this object: it is read by the ACE resource when a run starts (EnvVar), so that
definitions load without it and it is never copied into anything that gets displayed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from vitals_pipeline.ace import wire
from vitals_pipeline.storage.names import schema_name
from vitals_pipeline.windows import PARTITION_FMT, floor_to_partition

DEFAULT_API_URL = "https://flightdeck.aceiot.cloud/api"
DEFAULT_DUCKDB_PATH = "data/vitals.duckdb"
DEFAULT_ARCHIVE_URI = "data/archive"
DEFAULT_LOOKBACK_MINUTES = 10
# Without VITALS_PARTITIONS_START the partitions begin this long before today (UTC midnight).
DEFAULT_HISTORY_DAYS = 7
# Fleet runs: sites fetched at once (also the cap on requests in flight to ACE), a site's time
# budget per hour of window, sites per step of a run, how often an unchanged check is re-recorded.
DEFAULT_FETCH_CONCURRENCY = 16
DEFAULT_SITE_BUDGET_SECONDS = 30
DEFAULT_SHARD_SIZE = 500
DEFAULT_CHECK_REPEAT_MINUTES = 60
DEFAULT_WEATHER_MINUTES = 15
_SITE = re.compile(r"^[^\s,][^,]*$")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and what to do."""


@dataclass(frozen=True)
class Settings:
    api_url: str
    sites: tuple[str, ...]
    page_size: int
    duckdb_path: str
    partitions_start: datetime  # aware UTC, on a 5-minute boundary
    lookback_minutes: int
    # Where `<site>/archive` writes Parquet: a local folder or an s3:// URI (DuckDB httpfs).
    archive_uri: str = DEFAULT_ARCHIVE_URI
    fetch_concurrency: int = DEFAULT_FETCH_CONCURRENCY
    site_budget_seconds: float = DEFAULT_SITE_BUDGET_SECONDS
    shard_size: int = DEFAULT_SHARD_SIZE
    check_repeat_minutes: int = DEFAULT_CHECK_REPEAT_MINUTES
    weather_minutes: int = DEFAULT_WEATHER_MINUTES

    @property
    def site_shards(self) -> list[tuple[str, ...]]:
        """The sites in consecutive groups of at most `shard_size`: one step of a run each."""
        return [self.sites[i : i + self.shard_size] for i in range(0, len(self.sites), self.shard_size)]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, now: datetime | None = None) -> Settings:
        env = os.environ if environ is None else environ
        now = now or datetime.now(UTC)
        return cls(
            api_url=parse_api_url(env.get("ACE_API_URL") or DEFAULT_API_URL),
            sites=parse_sites(env.get("ACE_SITES", "")),
            page_size=parse_page_size(env.get("ACE_PAGE_SIZE")),
            duckdb_path=env.get("VITALS_DUCKDB_PATH") or DEFAULT_DUCKDB_PATH,
            partitions_start=parse_partitions_start(env.get("VITALS_PARTITIONS_START"), now),
            lookback_minutes=parse_lookback(env.get("VITALS_LOOKBACK_MINUTES")),
            archive_uri=parse_archive_uri(env.get("VITALS_ARCHIVE_URI")),
            fetch_concurrency=parse_int(
                env, "VITALS_FETCH_CONCURRENCY", DEFAULT_FETCH_CONCURRENCY, low=1, high=256,
                why="sites fetched at once and requests in flight to ACE",
            ),
            site_budget_seconds=parse_int(
                env, "VITALS_SITE_BUDGET_SECONDS", DEFAULT_SITE_BUDGET_SECONDS, low=5, high=3600,
                why="a site's time budget per hour of window, after which the site fails and is retried",
            ),
            shard_size=parse_int(
                env, "VITALS_SHARD_SIZE", DEFAULT_SHARD_SIZE, low=1, high=10_000,
                why="sites per step of a run: one process stores a step's sites one after another",
            ),
            check_repeat_minutes=parse_check_repeat(env.get("VITALS_CHECK_REPEAT_MINUTES")),
            weather_minutes=parse_weather_minutes(env.get("VITALS_WEATHER_MINUTES")),
        )


def parse_api_url(value: str) -> str:
    url = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(
            f"ACE_API_URL={value!r} is not an http(s) URL; expected e.g. {DEFAULT_API_URL}"
        )
    return url


def parse_sites(value: str) -> tuple[str, ...]:
    """`ACE_SITES`: comma-separated site names, at least one, no two mapping to one schema."""
    if not value.strip():
        raise ConfigError(
            "ACE_SITES is not set: set it to the comma-separated ACE site names to collect, "
            "e.g. ACE_SITES=demo_office,demo_lab"
        )
    sites = tuple(s.strip() for s in value.split(","))
    if any(not s for s in sites):
        raise ConfigError(f"ACE_SITES={value!r} has an empty name (a stray comma?)")
    for site in sites:
        if not _SITE.match(site) or not schema_name(site).strip("_"):
            raise ConfigError(f"ACE_SITES: {site!r} is not a usable site name")
    seen: dict[str, str] = {}
    for site in sites:
        schema = schema_name(site)
        if schema in seen:
            raise ConfigError(
                f"ACE_SITES: {seen[schema]!r} and {site!r} both map to the DuckDB schema and asset "
                f"prefix {schema!r}; list each site once"
            )
        seen[schema] = site
    return sites


def parse_page_size(value: str | None) -> int:
    if value is None or not value.strip():
        return wire.DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except ValueError:
        raise ConfigError(f"ACE_PAGE_SIZE={value!r} is not a whole number") from None
    try:
        return wire.check_page_size(size)
    except wire.PageSizeError as exc:
        raise ConfigError(f"ACE_PAGE_SIZE: {exc}") from None


def parse_partitions_start(value: str | None, now: datetime) -> datetime:
    if value is None or not value.strip():
        today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=DEFAULT_HISTORY_DAYS)
    try:
        start = datetime.strptime(value.strip(), PARTITION_FMT).replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(
            f"VITALS_PARTITIONS_START={value!r} is not YYYY-MM-DD-HH:MM (UTC), e.g. 2026-01-01-00:00"
        ) from None
    if start != floor_to_partition(start):
        raise ConfigError(f"VITALS_PARTITIONS_START={value!r} is not on a 5-minute boundary")
    if start > now:
        raise ConfigError(
            f"VITALS_PARTITIONS_START={value!r} is in the future (now {now:%Y-%m-%d-%H:%M} UTC): "
            "no partition would exist yet; set a start in the past"
        )
    return start


def parse_archive_uri(value: str | None) -> str:
    """`VITALS_ARCHIVE_URI`: a local folder, or `s3://bucket/prefix` (read by DuckDB's httpfs)."""
    if value is None or not value.strip():
        return DEFAULT_ARCHIVE_URI
    uri = value.strip()
    scheme = re.match(r"^([A-Za-z0-9+]+)://", uri)
    if scheme and scheme.group(1) not in ("s3", "file"):
        raise ConfigError(
            f"VITALS_ARCHIVE_URI={value!r}: only a local folder or an s3:// URI is supported "
            "(s3:// also serves S3-compatible stores through DuckDB's httpfs)"
        )
    if scheme and scheme.group(1) == "s3" and not re.match(r"^s3://[^/]+", uri):
        raise ConfigError(f"VITALS_ARCHIVE_URI={value!r} names no bucket; expected s3://bucket/prefix")
    return uri.removeprefix("file://").rstrip("/") or "/"


def parse_lookback(value: str | None) -> int:
    if value is None or not value.strip():
        return DEFAULT_LOOKBACK_MINUTES
    try:
        minutes = int(value)
    except ValueError:
        raise ConfigError(f"VITALS_LOOKBACK_MINUTES={value!r} is not a whole number") from None
    if minutes < 0 or minutes % 5:
        raise ConfigError(
            f"VITALS_LOOKBACK_MINUTES={value!r} must be a non-negative multiple of 5 (partitions are 5 minutes)"
        )
    return minutes


def parse_int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int, why: str) -> int:
    """A whole-number setting in [low, high]; the error says what the setting is for."""
    value = env.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number ({why}; default {default})") from None
    if not low <= number <= high:
        raise ConfigError(f"{name}={value!r} must be between {low} and {high} ({why}; default {default})")
    return number


def parse_weather_minutes(value: str | None) -> int:
    """`VITALS_WEATHER_MINUTES`: how often the tick refreshes the weather; 0 never, else a divisor
    of 60 that is a multiple of 5 (the tick closing that minute of the hour fetches it)."""
    if value is None or not value.strip():
        return DEFAULT_WEATHER_MINUTES
    try:
        minutes = int(value)
    except ValueError:
        raise ConfigError(f"VITALS_WEATHER_MINUTES={value!r} is not a whole number") from None
    # Listed, not computed: `60 % -5 == 0` in Python, so a divisibility test let negatives through.
    if minutes not in (0, 5, 10, 15, 20, 30, 60):
        raise ConfigError(
            f"VITALS_WEATHER_MINUTES={value!r} must be 0 (no weather) or one of 5, 10, 15, 20, 30, 60 "
            f"(default {DEFAULT_WEATHER_MINUTES})"
        )
    return minutes


def parse_check_repeat(value: str | None) -> int:
    """`VITALS_CHECK_REPEAT_MINUTES`: 0 (every run records every check) or a multiple of 5."""
    if value is None or not value.strip():
        return DEFAULT_CHECK_REPEAT_MINUTES
    try:
        minutes = int(value)
    except ValueError:
        raise ConfigError(f"VITALS_CHECK_REPEAT_MINUTES={value!r} is not a whole number") from None
    if minutes < 0 or minutes % 5 or minutes > 24 * 60:
        raise ConfigError(
            f"VITALS_CHECK_REPEAT_MINUTES={value!r} must be 0 (record every check of every run) or "
            "a multiple of 5 up to 1440 (an unchanged check result is recorded again that often)"
        )
    return minutes
