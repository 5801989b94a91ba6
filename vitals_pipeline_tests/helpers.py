"""Shared by the reliability tests: the storage contract applied to the simulator's ground truth,
a diff of DuckDB against it, and in-process runs of the real definitions.

`expected_rows` is the contract written out in plain Python (no Arrow, no pipeline code):
`value` = Python `float()` of the wire string when that is finite, else NULL; `raw_value` = the
wire string when it is not a finite number (NULL for JSON null and for numbers).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from vitals_pipeline_tests.conftest import SITE

BIN = Path(sys.executable).parent
# Console logs of in-process runs only at WARNING: DEBUG events cost time and flood the output.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

Row = tuple[str, datetime, float | None, str | None]


def typed(name: str, wire_time: str, wire_value: str | None) -> Row:
    """One wire sample as the storage contract says it is stored."""
    ts = datetime.fromisoformat(wire_time)
    assert ts.tzinfo is None, "wire times are naive UTC"
    number: float | None
    try:
        number = None if wire_value is None else float(wire_value)
    except ValueError:
        number = None
    if number is not None and not math.isfinite(number):
        number = None
    raw = wire_value if number is None and wire_value is not None else None
    return (name, ts, number, raw)


def expected_rows(sim, start, end, site: str = SITE) -> list[Row]:
    """The simulator's ground truth for [start, end), typed, ordered by (ts, point)."""
    rows = [typed(*r) for r in sim.ground_truth(site, start, end)]
    return sorted(rows, key=lambda r: (r[1], r[0]))


def stored_rows(path: str | os.PathLike, schema: str = SITE, start=None, end=None) -> list[Row]:
    """Every stored sample of `<schema>.timeseries` (in [start, end) when given), ordered."""
    if not Path(path).exists():
        return []
    with duckdb.connect(str(path), read_only=True) as con:
        where, params = "", []
        if start is not None:
            where = "WHERE ts >= ? AND ts < ?"
            params = [_naive(start), _naive(end)]
        return con.execute(
            f"SELECT point, ts, value, raw_value FROM {schema}.timeseries {where} "
            "ORDER BY ts, point",
            params,
        ).fetchall()


def _naive(t: datetime) -> datetime:
    from vitals_pipeline.storage.duckdb_io import naive_utc

    return naive_utc(t)


@dataclass
class Diff:
    """DuckDB against the ground truth, by (point, ts)."""

    missing: list = field(default_factory=list)  # in the truth, not stored
    duplicated: list = field(default_factory=list)  # stored more than once
    altered: list = field(default_factory=list)  # stored with another value / raw_value
    unexpected: list = field(default_factory=list)  # stored, not in the truth (e.g. outside)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.duplicated or self.altered or self.unexpected)

    def __str__(self) -> str:
        parts = []
        for name in ("missing", "duplicated", "altered", "unexpected"):
            items = getattr(self, name)
            if items:
                parts.append(f"{len(items)} {name}, e.g. {items[:3]}")
        return "; ".join(parts) or "identical"


def diff(stored: Iterable[Row], truth: Iterable[Row]) -> Diff:
    stored, truth = list(stored), list(truth)
    counts = Counter((r[0], r[1]) for r in stored)
    by_key = {(r[0], r[1]): (r[2], r[3]) for r in stored}
    want = {(r[0], r[1]): (r[2], r[3]) for r in truth}
    assert len(want) == len(truth), "the ground truth itself has duplicate keys"
    out = Diff()
    out.duplicated = [k for k, n in counts.items() if n > 1]
    out.missing = [k for k in want if k not in by_key]
    out.unexpected = [k for k in by_key if k not in want]
    out.altered = [
        (k, by_key[k], v) for k, v in want.items() if k in by_key and not _same(by_key[k], v)
    ]
    return out


def _same(a: tuple, b: tuple) -> bool:
    # Exact float equality on purpose (a one-ulp change is an altered sample); NaN is never stored.
    return a[0] == b[0] and a[1] == b[1] and type(a[0]) is type(b[0])


def assert_exact(path, sim, start, end, site: str = SITE, schema: str | None = None) -> list[Row]:
    """The whole table equals the ground truth of [start, end): nothing missing, duplicated,
    altered or stored outside it. Returns the stored rows."""
    rows = stored_rows(path, schema or site)
    found = diff(rows, expected_rows(sim, start, end, site))
    assert found.clean, str(found)
    return rows


# ---------------------------------------------------------------------------------------------
# Running the real definitions


def build_job(environ: Mapping[str, str] | None = None):
    from vitals_pipeline.config import Settings
    from vitals_pipeline.definitions import build_definitions

    return build_definitions(Settings.from_env(environ)).resolve_implicit_global_asset_job_def()


def run_assets(
    selection,
    *,
    tags: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    instance: dg.DagsterInstance | None = None,
    run_config: Mapping[str, Any] | None = None,
):
    """One in-process run of the definitions built from the environment, like test_assets."""
    job = build_job()
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        asset_selection=list(selection),
        partition_key=partition_key,
        tags=dict(tags or {}),
        run_config={**QUIET, **(run_config or {})},
        raise_on_error=False,
    )


def ace_run_config(**overrides) -> dict:
    """Run config for the `ace` resource. Resource run config replaces every constructor value,
    so the URL and page size from the environment are repeated here."""
    from vitals_pipeline.config import Settings

    settings = Settings.from_env()
    config = {"api_url": settings.api_url, "page_size": settings.page_size, **overrides}
    return {"resources": {"ace": {"config": config}}}


def step_failures(result) -> list[str]:
    """The error message of every step failure of an in-process run."""
    return [
        e.event_specific_data.error.message.strip()
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
    ]


def materialized_partitions(result, key: dg.AssetKey) -> list[str]:
    return sorted(
        e.event_specific_data.materialization.partition
        for e in result.all_events
        if e.is_step_materialization and e.asset_key == key
    )


def dagster_cli(*args: str, env: Mapping[str, str], timeout: float = 180, **popen) -> subprocess.Popen:
    """Start `dagster ARGS` (the venv's executable) in its own process."""
    return subprocess.Popen(
        [str(BIN / "dagster"), *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that records what it is sent."""

    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/SECRET"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
