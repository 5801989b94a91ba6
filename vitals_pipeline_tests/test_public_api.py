"""The package uses Dagster's public API, except in the one module that cannot."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vitals_pipeline"
# The batching SQLite event log extends Dagster's storage class: no public twin exists.
ALLOWED = {"storage/event_log.py"}
PRIVATE = re.compile(r"dagster\._")


def test_only_the_event_log_storage_touches_private_dagster_modules():
    users = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if PRIVATE.search(path.read_text(encoding="utf-8"))
    )
    assert set(users) <= ALLOWED, f"private dagster modules used outside {ALLOWED}: {users}"


def test_the_check_would_notice_a_private_import(tmp_path):
    sample = "from dagster._core.events import DagsterEventType\n"
    assert PRIVATE.search(sample)
    assert not PRIVATE.search("import dagster as dg\nfrom dagster import DagsterEventType\n")
