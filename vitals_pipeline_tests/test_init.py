"""`vitals init` and the shipped instance settings.

- One source for each variant: the package data `vitals_pipeline/instance/{sqlite,postgres}.yaml`,
  copied byte for byte to `dagster.yaml` and `deploy/postgres/dagster.yaml`; the two variants
  differ in their storage only.
- `vitals init [--postgres] [--force]` writes them into DAGSTER_HOME and creates the storage
  (SQLite files, or Dagster's tables in a real PostgreSQL server); it never overwrites a different
  dagster.yaml without --force, and its errors name what failed without the database password.
- `ensure_dagster_home` (demo, dev, status) takes the same package data, also where no checkout is.
- A wheel installed into a fresh virtualenv outside the checkout: `vitals init`, then `vitals demo`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from click.testing import CliRunner

from vitals_pipeline import cli
from vitals_pipeline.instance import PG_URL_VARIABLE, POSTGRES, SQLITE, shipped_settings
from vitals_pipeline_tests.postgres import pg_url, postgres_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parent.parent
PACKAGE_SETTINGS = REPO / "vitals_pipeline" / "instance"
# Each shipped file outside the package and the package file it is a copy of.
COPIES = {
    REPO / "dagster.yaml": PACKAGE_SETTINGS / "sqlite.yaml",
    REPO / "deploy" / "postgres" / "dagster.yaml": PACKAGE_SETTINGS / "postgres.yaml",
}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A DAGSTER_HOME that does not exist yet (init creates it), no PostgreSQL URL set."""
    path = tmp_path / "deploy" / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(path))
    monkeypatch.delenv(PG_URL_VARIABLE, raising=False)
    return path


def init(*args: str):
    return CliRunner().invoke(cli.main, ["init", *args], catch_exceptions=False)


def test_the_shipped_settings_have_one_source_and_differ_only_in_storage():
    for copy, source in COPIES.items():
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}, its source: edit the "
            f"source and copy it (cp {source.relative_to(REPO)} {copy.relative_to(REPO)})"
        )
    sqlite = yaml.safe_load(shipped_settings(SQLITE))
    postgres = yaml.safe_load(shipped_settings(POSTGRES))
    assert sqlite["event_log_storage"]["class"] == "VitalsSqliteEventLogStorage"
    assert postgres.pop("storage") == {"postgres": {"postgres_url": {"env": PG_URL_VARIABLE}}}
    assert not {"run_storage", "event_log_storage", "schedule_storage"} & set(postgres)
    del sqlite["event_log_storage"]
    assert postgres == sqlite
    # The settings every deployment relies on (see the comments in the files).
    assert postgres["telemetry"] == {"enabled": False}
    assert postgres["concurrency"]["pools"]["default_limit"] == 1
    assert postgres["run_retries"]["enabled"] and not postgres["run_retries"]["retry_on_asset_or_op_failure"]
    assert postgres["run_monitoring"]["enabled"]
    assert postgres["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
    assert set(postgres["retention"]) == {"schedule", "sensor", "auto_materialize"}


def test_init_writes_the_shipped_settings_and_creates_the_storage(home):
    result = init()
    assert result.exit_code == 0, result.output
    assert (home / "dagster.yaml").read_text() == shipped_settings(SQLITE)
    assert (home / "history" / "runs.db").exists()
    with dg.DagsterInstance.get() as instance:
        assert type(instance.event_log_storage).__name__ == "VitalsSqliteEventLogStorage"
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    # Again: nothing to write, the storage is migrated (a no-op), exit 0.
    again = init()
    assert again.exit_code == 0, again.output
    assert "already holds the shipped sqlite settings" in again.output
    assert not (home / "dagster.yaml.bak").exists()


def test_init_does_not_overwrite_different_settings_without_force(home, monkeypatch):
    home.mkdir(parents=True)
    mine = "# tuned by hand\ntelemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(mine)
    for args in (["init"], ["init", "--postgres"]):
        with monkeypatch.context() as env:
            env.setenv(PG_URL_VARIABLE, "postgresql+psycopg2://vitals:pw@127.0.0.1:1/dagster")
            refused = CliRunner().invoke(cli.main, args)
        assert refused.exit_code != 0
        assert "differs from the shipped" in refused.output and "--force" in refused.output
        assert (home / "dagster.yaml").read_text() == mine
        assert not (home / "dagster.yaml.bak").exists()

    forced = init("--force")
    assert forced.exit_code == 0, forced.output
    assert (home / "dagster.yaml").read_text() == shipped_settings(SQLITE)
    assert (home / "dagster.yaml.bak").read_text() == mine


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (None, f"{PG_URL_VARIABLE} is not set"),
        ("postgresql://vitals:pw@db-host:5432/dagster", "must start with postgresql+psycopg2://"),
    ],
)
def test_init_postgres_needs_a_psycopg2_url_and_writes_nothing_without_one(home, monkeypatch, url, said):
    if url:
        monkeypatch.setenv(PG_URL_VARIABLE, url)
    result = CliRunner().invoke(cli.main, ["init", "--postgres"])
    assert result.exit_code != 0
    assert said in result.output and "Nothing was written" in result.output
    assert not (home / "dagster.yaml").exists()


def test_init_postgres_creates_dagsters_tables_in_postgres(home, monkeypatch, pg_url):  # noqa: F811
    monkeypatch.setenv(PG_URL_VARIABLE, pg_url)
    result = init("--postgres")
    assert result.exit_code == 0, result.output
    assert (home / "dagster.yaml").read_text() == shipped_settings(POSTGRES)
    with psycopg2.connect(pg_url.replace("postgresql+psycopg2://", "postgresql://", 1)) as con:
        with con.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            tables = {name for name, in cur.fetchall()}
    con.close()
    assert {"runs", "event_logs", "job_ticks", "alembic_version", "concurrency_limits"} <= tables
    # Nothing but the settings under DAGSTER_HOME: the storage is the database.
    assert sorted(p.name for p in home.iterdir()) == ["dagster.yaml"]
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    again = init("--postgres")
    assert again.exit_code == 0 and "already holds the shipped postgres settings" in again.output


@pytest.mark.parametrize(
    ("change", "said"),
    [("password", "password authentication failed"), ("database", "does not exist")],
)
def test_init_postgres_says_what_failed_without_the_password(home, monkeypatch, postgres_server, change, said):  # noqa: F811
    wrong = "Wr0ng-s3cret-pw"
    if change == "password":
        url = postgres_server.url("postgres").replace(postgres_server.password, wrong)
        secrets = (wrong,)
    else:
        url = postgres_server.url("no_such_database")
        secrets = (postgres_server.password,)
    monkeypatch.setenv(PG_URL_VARIABLE, url)
    started = time.monotonic()
    result = CliRunner().invoke(cli.main, ["init", "--postgres"])
    assert result.exit_code == 1
    assert said in result.output, result.output
    assert f"{PG_URL_VARIABLE} names it" in result.output and "run `vitals init --postgres` again" in result.output
    assert f"127.0.0.1:{postgres_server.port}" in result.output
    for secret in secrets:
        assert secret not in result.output
    # One attempt, not Dagster's ~12 s of connection retries.
    assert time.monotonic() - started < 8


def test_ensure_dagster_home_takes_the_package_data_outside_a_checkout(home, monkeypatch, tmp_path):
    # As installed from a wheel: no checkout (no dagster.yaml, no pyproject.toml) around the package.
    monkeypatch.setattr(cli, "REPO_ROOT", tmp_path / "site-packages")
    assert cli.ensure_dagster_home() == home.resolve()
    assert (home / "dagster.yaml").read_text() == shipped_settings(SQLITE)
    assert (home / "history" / "runs.db").exists()
    # A dagster.yaml of the operator's own is kept.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    cli.ensure_dagster_home()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
    # Without DAGSTER_HOME, outside a checkout: the current folder, not the package's.
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.chdir(tmp_path)
    assert cli.dagster_home() == (tmp_path / ".dagster_home").resolve()


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_inits_and_runs_the_demo(tmp_path, monkeypatch):
    """The wheel of this project in a fresh virtualenv in a temporary folder (its dependencies
    taken from this virtualenv through a .pth line instead of being installed again): `vitals
    init` writes the shipped settings from package data, and `vitals demo` runs on them."""
    started = time.monotonic()
    source = tmp_path / "source"  # built from a copy: the build writes build/ and *.egg-info
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "vitals_pipeline", source / "vitals_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True, timeout=300)
    [wheel] = wheels.glob("vitals_pipeline-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # Appended after the new venv's own site-packages: the wheel's vitals_pipeline comes first;
    # the editable install's finder in this venv is not loaded (a .pth path is no site dir).
    Path(purelib, "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    installed = time.monotonic()

    work = tmp_path / "elsewhere"
    work.mkdir()
    dagster_home = tmp_path / "x"
    env = {
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(dagster_home),
        "LANG": "C.UTF-8",
    }
    where = subprocess.run(
        [str(python), "-c", "import vitals_pipeline; print(vitals_pipeline.__file__)"],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"vitals_pipeline imported from {where}, not the wheel"

    vitals = str(venv / "bin" / "vitals")
    done = subprocess.run([vitals, "init"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (dagster_home / "dagster.yaml").read_bytes() == (PACKAGE_SETTINGS / "sqlite.yaml").read_bytes()
    assert (dagster_home / "history" / "runs.db").exists()
    initialised = time.monotonic()

    demo = subprocess.run(
        [vitals, "demo", "--hours", "0.25", "--sites", "demo_office", "--points", "10"],
        cwd=work, env=env, capture_output=True, text=True, timeout=240,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert f"is recorded in DAGSTER_HOME={dagster_home.resolve()}" in demo.stdout
    assert (work / "data" / "vitals.duckdb").exists()  # the default DuckDB path, under the current folder
    assert (dagster_home / "dagster.yaml").read_bytes() == (PACKAGE_SETTINGS / "sqlite.yaml").read_bytes()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records()
    assert len(records) >= 2 and {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
    print(
        f"wheel: built and installed {installed - started:.1f} s, init {initialised - installed:.1f} s, "
        f"demo {time.monotonic() - initialised:.1f} s"
    )
