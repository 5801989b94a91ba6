"""The API key appears nowhere, after runs that succeed and runs that fail.

Runs on a real DAGSTER_HOME (SQLite storage, captured compute logs) with two distinctive keys: the
right one (a run that succeeds, with retried faults including ACE's invalid-key 500) and a wrong
one (a run that fails on it), plus a run for an unknown site. Then every place a key could leak
to is searched for both: every event record of the instance (serialized: messages, metadata,
errors with their stack traces), run tags and run config, the compute log files, every byte
under DAGSTER_HOME (the SQLite files themselves), the DuckDB file and its WAL, every Python log
record emitted at DEBUG and above, and the output of `vitals status` (plain and --json).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dagster as dg
from click.testing import CliRunner

from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
from vitals_pipeline.assets.keys import points_key, range_tags, timeseries_key
from vitals_pipeline_tests.conftest import SIM_NOW, SITE
from vitals_pipeline_tests.helpers import run_assets, step_failures

GOOD_KEY = "sk-live-7Qe9xDISTINCTIVEx1f3b"
BAD_KEY = "sk-test-4Zp2xDISTINCTIVEx9c1d"
SECRETS = (GOOD_KEY, BAD_KEY, "DISTINCTIVE")


def leaks(text: str | bytes, where: str) -> list[str]:
    if isinstance(text, bytes):
        return [f"{where}: {s}" for s in SECRETS if s.encode() in text]
    return [f"{where}: {s}" for s in SECRETS if s in text]


def test_the_key_appears_nowhere(monkeypatch, tmp_path, caplog):
    from vitals_pipeline.cli import ensure_dagster_home, main

    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    db = tmp_path / "vitals.duckdb"
    sim = Simulator(SimulatorConfig(sites=[SiteSpec(SITE, points=40, seed=5)], api_key=GOOD_KEY))
    sim.set_now(SIM_NOW)
    with SimulatorServer(sim) as server:
        for var, value in {
            "DAGSTER_HOME": str(home),
            "ACE_API_URL": server.url,
            "ACE_API_KEY": GOOD_KEY,
            "ACE_SITES": SITE,
            "VITALS_DUCKDB_PATH": str(db),
            "VITALS_PARTITIONS_START": "2026-03-01-00:00",
        }.items():
            monkeypatch.setenv(var, value)
        ensure_dagster_home()
        tags = range_tags("2026-03-09-11:00", "2026-03-09-11:05")
        with dg.DagsterInstance.get() as instance:
            # Succeeds, after retrying a 503, ACE's invalid-key 500 and a connection reset.
            sim.faults.script = ["503", "badkey", "reset"]
            ok = run_assets([timeseries_key(SITE), points_key(SITE)], tags=tags, instance=instance)
            assert ok.success, step_failures(ok)
            monkeypatch.setenv("ACE_API_KEY", BAD_KEY)
            wrong = run_assets([timeseries_key(SITE)], tags=tags, instance=instance)
            assert not wrong.success and "invalid or expired" in step_failures(wrong)[0]
            monkeypatch.setenv("ACE_API_KEY", GOOD_KEY)
            monkeypatch.setenv("ACE_SITES", "no_such_site")
            unknown = run_assets([timeseries_key("no_such_site")], tags=tags, instance=instance)
            assert not unknown.success and "HTTP 403" in step_failures(unknown)[0]
            monkeypatch.setenv("ACE_SITES", SITE)

            found: list[str] = []
            runs = instance.get_runs()
            assert len(runs) == 3
            for run in runs:
                found += leaks(dg.serialize_value(run), f"run {run.run_id} (tags, config)")
                for entry in instance.all_logs(run.run_id):
                    found += leaks(dg.serialize_value(entry), f"event log of run {run.run_id}")
            materializations = instance.fetch_materializations(
                timeseries_key(SITE), limit=100
            ).records
            assert materializations
            for record in materializations:
                found += leaks(dg.serialize_value(record), "materialization metadata")

        status_plain = CliRunner().invoke(main, ["status"])
        status_json = CliRunner().invoke(main, ["status", "--json"])

    assert "test_site" in status_plain.output and status_json.output.lstrip().startswith("{")
    found += leaks(status_plain.output, "vitals status") + leaks(status_json.output, "status --json")
    compute_logs = [p for p in (home / "storage").rglob("*") if p.is_file()]
    assert any(p.stat().st_size for p in compute_logs), "compute logs were captured"
    for path in sorted(home.rglob("*")):
        if path.is_file():
            found += leaks(path.read_bytes(), str(path.relative_to(home)))
    for path in (db, Path(f"{db}.wal")):
        if path.exists():
            found += leaks(path.read_bytes(), path.name)
    assert db.exists()
    assert any(r.name == "vitals_pipeline.ace" for r in caplog.records), "retry logs were seen"
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        found += leaks(text, f"log record {record.name}")
    found += leaks(os.linesep.join(step_failures(wrong) + step_failures(unknown)), "exceptions")
    assert not found, found
