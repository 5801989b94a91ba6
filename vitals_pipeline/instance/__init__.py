"""The Dagster instance settings this project ships, as package data, so that `vitals init` and
`vitals demo|dev|status` find them after any install (a wheel outside the checkout included).

- `sqlite.yaml`: storage in SQLite files under DAGSTER_HOME (one machine); the repository's
  root `dagster.yaml` is a byte-for-byte copy.
- `postgres.yaml`: storage in PostgreSQL, its address from DAGSTER_PG_URL; copied to
  `deploy/postgres/dagster.yaml`.

Both carry the same pools, run retries, run monitoring and retention; only the storage differs.
"""

from __future__ import annotations

from importlib import resources

SQLITE = "sqlite"
POSTGRES = "postgres"
VARIANTS = (SQLITE, POSTGRES)
# The environment variable the PostgreSQL settings read the server's address from, and the
# scheme its URL must have: SQLAlchemy 2.1 opens a plain `postgresql://` URL with psycopg 3, and
# Dagster's PostgreSQL event log fails on it (`NOTIFY run_events, $1`: a syntax error).
PG_URL_VARIABLE = "DAGSTER_PG_URL"
PG_URL_SCHEME = "postgresql+psycopg2"


def shipped_settings(variant: str = SQLITE) -> str:
    """The text of the shipped dagster.yaml of `variant` (`sqlite` or `postgres`)."""
    if variant not in VARIANTS:
        raise ValueError(f"no shipped instance settings named {variant!r}; choose one of {', '.join(VARIANTS)}")
    return resources.files(__name__).joinpath(f"{variant}.yaml").read_text(encoding="utf-8")
