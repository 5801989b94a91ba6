"""The `vitals` command: `init`, `simulate`, `demo`, `dev`, `status`, `backfill`, `pause`, `resume`, `prune`,
`query`."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from vitals_pipeline.config import ConfigError

DEMO_SITES = "demo_office,demo_lab"
DEMO_KEY = "sim-key"
REPO_ROOT = Path(__file__).resolve().parent.parent


@click.group()
def main() -> None:
    """vitals-pipeline: ACE IoT building timeseries into DuckDB, every five minutes."""


def dagster_home() -> Path:
    """Where the instance lives: $DAGSTER_HOME; else `.dagster_home` in the checkout (where the
    Makefile puts it), or in the current folder when installed from a wheel, not a checkout."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"]).resolve()
    checkout = REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path.cwd()
    return (checkout / ".dagster_home").resolve()


def ensure_dagster_home() -> Path:
    """Make DAGSTER_HOME exist, with the shipped (SQLite) settings unless it has a dagster.yaml,
    and initialise its storage.

    The settings come from package data (`vitals_pipeline/instance/`), so a wheel installed
    outside the checkout gets them too. Done once by one process before any run: several
    processes meeting a fresh SQLite instance at once can race in Dagster's schema migration.
    """
    from vitals_pipeline.instance import SQLITE, shipped_settings

    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    settings = home / "dagster.yaml"
    if not settings.exists():
        _write_atomically(settings, shipped_settings(SQLITE))
    _initialise_storage()
    return home


def _write_atomically(path: Path, text: str) -> None:
    # Another process starting at the same moment reads the whole file or none of it.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _initialise_storage() -> None:
    """Create or migrate the storage of the instance at DAGSTER_HOME (SQLite files or the tables
    in PostgreSQL)."""
    from dagster import DagsterInstance

    # Dagster's migration prints a line per storage it looks at: noise for whoever runs `vitals`.
    with DagsterInstance.get() as instance, contextlib.redirect_stdout(io.StringIO()):
        instance.upgrade()


@main.command()
@click.option(
    "--postgres",
    is_flag=True,
    help="Storage in the PostgreSQL database at $DAGSTER_PG_URL instead of SQLite files in DAGSTER_HOME.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a dagster.yaml that differs from the shipped one (the old one is kept as dagster.yaml.bak).",
)
def init(postgres: bool, force: bool) -> None:
    """Write the shipped instance settings into DAGSTER_HOME/dagster.yaml and create the storage.

    The settings: one DuckDB writer at a time (pool `duckdb`), run retries and monitoring, tick
    retention; storage in SQLite files under DAGSTER_HOME, or with --postgres in PostgreSQL.
    Safe to run again: an identical dagster.yaml is left as it is and the storage is migrated.
    """
    from vitals_pipeline.instance import PG_URL_SCHEME, PG_URL_VARIABLE, POSTGRES, SQLITE, shipped_settings

    variant = POSTGRES if postgres else SQLITE
    pg_url = os.environ.get(PG_URL_VARIABLE, "")
    example = f"{PG_URL_VARIABLE}={PG_URL_SCHEME}://vitals:PASSWORD@db-host:5432/dagster"
    if postgres and not pg_url:
        raise click.ClickException(
            f"--postgres: {PG_URL_VARIABLE} is not set. Set it to the database's address, e.g. "
            f"{example}, here and for every process that opens the instance (dagster-daemon, "
            "dagster-webserver, dagster and vitals commands), then run `vitals init --postgres` "
            "again. Nothing was written."
        )
    scheme = pg_url.partition("://")[0] if "://" in pg_url else ""
    if postgres and scheme != PG_URL_SCHEME:
        raise click.ClickException(
            f"--postgres: {PG_URL_VARIABLE} must start with {PG_URL_SCHEME}:// "
            f"(it starts with {scheme + '://' if scheme else 'no scheme'}): Dagster's PostgreSQL "
            "storage needs the psycopg2 driver, and SQLAlchemy opens a plain postgresql:// URL "
            f"with psycopg 3. E.g. {example}. Nothing was written."
        )
    named = bool(os.environ.get("DAGSTER_HOME"))
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    settings = home / "dagster.yaml"
    shipped = shipped_settings(variant)
    if settings.exists() and settings.read_text(encoding="utf-8") == shipped:
        click.echo(f"{settings} already holds the shipped {variant} settings.")
    else:
        if settings.exists():
            if not force:
                raise click.ClickException(
                    f"{settings} exists and differs from the shipped {variant} settings: not "
                    f"overwritten. Run `vitals init{' --postgres' if postgres else ''} --force` to "
                    "replace it (yours is kept as dagster.yaml.bak), or merge the changes by hand. "
                    "Switching between SQLite and PostgreSQL does not carry the run history over."
                )
            shutil.copy2(settings, settings.with_name("dagster.yaml.bak"))
            click.echo(f"Kept the previous settings as {settings.with_name('dagster.yaml.bak')}.")
        _write_atomically(settings, shipped)
        click.echo(f"Wrote the shipped {variant} settings to {settings}.")
    where = _pg_address(pg_url) if postgres else f"SQLite files in {home}"
    try:
        if postgres:
            # One attempt with the driver's own words, before Dagster's ~12 s of retries that
            # end in "too many retries for DB connection".
            _check_pg_connection(pg_url)
        _initialise_storage()
    except Exception as exc:  # noqa: BLE001 - the operator gets what failed and what to do, not a traceback
        message = _without_password(_describe(exc), pg_url)
        hint = (
            f"Check that the server is up, that the database exists and that {PG_URL_VARIABLE} "
            "names it with the right user and password"
            if postgres
            else "Check that the folder is writable and not on a network file system"
        )
        raise click.ClickException(
            f"could not create the instance storage for DAGSTER_HOME={home} in {where}: "
            f"{message[:2000]}\n{hint}; then run `vitals init{' --postgres' if postgres else ''}` "
            "again (the settings file is written)."
        ) from None
    click.echo(f"Instance storage ready: {where}.")
    if postgres and not os.environ.get("DAGSTER_EVENT_BATCH_SIZE"):
        click.echo(
            "Recommended: DAGSTER_EVENT_BATCH_SIZE=1000 for every process that opens the instance: "
            "Dagster then stores a run's asset events in batches (see the comments in dagster.yaml)."
        )
    if not named:
        click.echo(
            f"DAGSTER_HOME is not set: set DAGSTER_HOME={home} for every process that uses this "
            "instance (Dagster uses a throw-away instance without it)."
        )


def _check_pg_connection(url: str) -> None:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _describe(exc: BaseException) -> str:
    """The error and its causes, one line each, without SQLAlchemy's link to its docs."""
    lines, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(getattr(current, "orig", None) or current).split("(Background on this error")[0]
        line = f"{type(current).__name__}: {' '.join(text.split())}"
        if line not in lines:  # SQLAlchemy's error repeats the driver's, its cause
            lines.append(line)
        current = current.__cause__ or current.__context__
    return " <- ".join(lines)


def _pg_address(url: str) -> str:
    """`PostgreSQL database D on H:P`, never the user or password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"PostgreSQL database {parts.path.lstrip('/') or '?'} on {parts.hostname}:{parts.port or 5432}"
    except ValueError:
        return "the PostgreSQL database of DAGSTER_PG_URL (which does not parse as a URL)"


def _without_password(text: str, url: str) -> str:
    """`text` with the password of `url` (raw and percent-decoded) blanked out."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")
    return text


@main.command()
@click.option("--hours", default=2.0, show_default=True, help="How much recent history to load.")
@click.option("--sites", default=DEMO_SITES, show_default=True, help="Simulated site names.")
@click.option("--points", default=150, show_default=True, help="Points per simulated site.")
def demo(hours: float, sites: str, points: int) -> None:
    """Start the built-in ACE simulator and load the last HOURS of its sites into DuckDB."""
    import dagster as dg

    from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec
    from vitals_pipeline.assets.hourly import complete_hours, hourly_key, hourly_summary
    from vitals_pipeline.assets.keys import points_key, range_tags, timeseries_key, window_keys
    from vitals_pipeline.config import Settings
    from vitals_pipeline.storage.summary import summarize
    from vitals_pipeline.windows import Window, floor_to_partition

    home = ensure_dagster_home()
    names = [s.strip() for s in sites.split(",") if s.strip()]
    sim = Simulator(
        SimulatorConfig(sites=[SiteSpec(n, points=points, seed=i) for i, n in enumerate(names)], api_key=DEMO_KEY)
    )
    now = datetime.now(UTC)
    end = floor_to_partition(now)
    window = Window(end - timedelta(hours=hours), end)
    with SimulatorServer(sim) as server:
        click.echo(f"ACE simulator on {server.url} serving {len(names)} sites x {points} points")
        os.environ.update(
            {
                "ACE_API_URL": server.url,
                "ACE_API_KEY": DEMO_KEY,
                "ACE_SITES": ",".join(names),
            }
        )
        os.environ.setdefault(
            "VITALS_PARTITIONS_START", (end - timedelta(days=1)).strftime("%Y-%m-%d-00:00")
        )
        try:
            settings = Settings.from_env()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        # Imported only now: the module builds `defs` from the environment set just above.
        from vitals_pipeline.definitions import build_definitions

        defs = build_definitions(settings)
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        with dg.DagsterInstance.get() as instance:
            click.echo("Loading configured points ...")
            job = defs.resolve_implicit_global_asset_job_def()
            first, last = window_keys(window)
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[points_key(s) for s in names],
                run_config=quiet,
                raise_on_error=False,
            )
            _require_success(result, "points")
            click.echo(f"Loading {window} ({window.partitions} partitions) in one run ...")
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[timeseries_key(s) for s in names],
                tags=range_tags(first, last),
                run_config=quiet,
                raise_on_error=False,
            )
            _require_success(result, "timeseries")
            run_id = result.run_id
            hours_loaded = complete_hours(window.start, window.end)
            if hours_loaded is not None:
                span = " .. ".join(dict.fromkeys(hours_loaded))
                click.echo(f"Rolling up the whole hours loaded ({span}) into timeseries_hourly ...")
                result = job.execute_in_process(
                    instance=instance,
                    asset_selection=[hourly_key(s) for s in names],
                    tags=range_tags(*hours_loaded),
                    run_config=quiet,
                    raise_on_error=False,
                )
                _require_success(result, "hourly roll-up")
    click.echo("")
    for line in summarize(settings.duckdb_path, names):
        click.echo(line)
    for line in hourly_summary(settings.duckdb_path, names):
        click.echo(line)
    click.echo("")
    click.echo(f"Run {run_id} is recorded in DAGSTER_HOME={home}.")
    click.echo("Open the Dagster UI on the same instance: make dev  (then http://127.0.0.1:3000)")


def _require_success(result, what: str) -> None:
    if result.success:
        return
    messages = [
        e.event_specific_data.error.message.strip()
        for e in result.all_events
        if e.is_step_failure and e.event_specific_data and e.event_specific_data.error
    ]
    raise click.ClickException(f"the {what} run failed: " + (" | ".join(messages) or "see the run's logs"))


@main.command()
@click.option("--port", default=3000, show_default=True, help="Dagster UI port.")
@click.option("--sim-port", default=8765, show_default=True, help="ACE simulator port.")
@click.option("--sites", default=DEMO_SITES, show_default=True)
def dev(port: int, sim_port: int, sites: str) -> None:
    """The Dagster UI (webserver + daemon) on the built-in simulator, with a persistent DAGSTER_HOME."""
    home = ensure_dagster_home()
    sim = subprocess.Popen(
        [sys.executable, "-m", "vitals_pipeline.cli", "simulate", "--port", str(sim_port), "--sites", sites],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = sim.stdout.readline().strip() if sim.stdout else ""
        if "listening on" not in line:
            raise click.ClickException(f"the simulator did not start: {line or 'no output'}")
        url = line.rsplit(" ", 1)[-1]
        env = {
            **os.environ,
            "ACE_API_URL": url,
            "ACE_API_KEY": DEMO_KEY,
            "ACE_SITES": sites,
            "DAGSTER_HOME": str(home),
        }
        logs = home / "logs"
        logs.mkdir(exist_ok=True)
        bin_dir = Path(sys.executable).parent
        module = ["-m", "vitals_pipeline.definitions"]
        # The webserver and the daemon as a deployment runs them (`dagster dev` would start the
        # same two); their output, every run's events included, goes to files, not the terminal.
        with open(logs / "webserver.log", "a") as web_log, open(logs / "daemon.log", "a") as daemon_log:
            services = [
                subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", *module], env=env,
                                 stdout=daemon_log, stderr=subprocess.STDOUT),
                subprocess.Popen([str(bin_dir / "dagster-webserver"), *module, "-h", "127.0.0.1",
                                  "-p", str(port)], env=env, stdout=web_log, stderr=subprocess.STDOUT),
            ]
            click.echo(
                f"{line}\nDagster UI: http://127.0.0.1:{port}  (webserver and daemon; Ctrl-C stops all)\n"
                f"Logs: {logs}/webserver.log, {logs}/daemon.log"
            )
            try:
                while all(service.poll() is None for service in services):
                    time.sleep(1)
                ended = next(s for s in services if s.poll() is not None)
                click.echo(f"{Path(ended.args[0]).name} stopped (exit {ended.returncode}); see {logs}", err=True)
            finally:
                for service in services:
                    if service.poll() is None:
                        service.terminate()
                for service in services:
                    try:
                        service.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        service.kill()
    except KeyboardInterrupt:
        pass
    finally:
        sim.terminate()
        sim.wait(timeout=10)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (same exit codes).")
@click.option(
    "--duckdb-wait",
    default=5.0,
    show_default=True,
    help="Seconds to wait for a run writing DuckDB before reporting it busy.",
)
def status(as_json: bool, duckdb_wait: float) -> None:
    """Health of every site from the Dagster instance (DAGSTER_HOME) and DuckDB.

    Exit code 0 healthy, 1 degraded, 2 down (thresholds: VITALS_STATUS_DEGRADED_MINUTES,
    VITALS_STATUS_DOWN_MINUTES). Initialises DAGSTER_HOME if it is new.
    """
    from vitals_pipeline.status import run_status

    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home").resolve()
    try:
        if (home / "history" / "runs.db").exists():
            # Not upgraded on every call: on SQLite that touches every run's event log.
            os.environ["DAGSTER_HOME"] = str(home)
        else:
            with contextlib.redirect_stdout(sys.stderr):  # keep --json output clean
                ensure_dagster_home()
    except Exception as exc:  # noqa: BLE001 - a status command reports, it does not crash
        click.echo(f"vitals status: DOWN (exit 2): cannot open DAGSTER_HOME: {type(exc).__name__}: {exc}")
        sys.exit(2)
    code = run_status(as_json=as_json, duckdb_wait_seconds=duckdb_wait, echo=click.echo)
    if _console_entry:
        # Everything is printed and closed: skip the interpreter's teardown of Dagster's
        # thousands of modules (~0.4 s of a ~3 s command that monitors call every minute).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


@main.command()
@click.option("--from", "first", required=True, help="First partition key, YYYY-MM-DD-HH:MM (UTC).")
@click.option("--to", "last", required=True, help="Last partition key, included.")
@click.option("--sites", default=None, help="Comma-separated sites (default: all of ACE_SITES).")
@click.option("--chunk-hours", default=24.0, show_default=True, help="Hours per run (bounds memory).")
def backfill(first: str, last: str, sites: str | None, chunk_hours: float) -> None:
    """Load a long range as consecutive runs of at most CHUNK-HOURS each, with progress.

    Uses the environment's settings (ACE_*, VITALS_*) and DAGSTER_HOME, like the Dagster CLI.
    """
    from vitals_pipeline.backfill import backfill as run_backfill
    from vitals_pipeline.config import Settings
    from vitals_pipeline.windows import window_for_keys

    try:
        settings = Settings.from_env()
        window = window_for_keys(first, last)
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    chosen = [s.strip() for s in sites.split(",")] if sites else list(settings.sites)
    unknown = sorted(set(chosen) - set(settings.sites))
    if unknown:
        raise click.ClickException(f"not in ACE_SITES: {', '.join(unknown)}")
    if window.start < settings.partitions_start:
        raise click.ClickException(
            f"--from {first} is before VITALS_PARTITIONS_START "
            f"({settings.partitions_start:%Y-%m-%d-%H:%M}): no such partition"
        )
    ensure_dagster_home()
    import dagster as dg

    from vitals_pipeline.definitions import build_definitions

    with dg.DagsterInstance.get() as instance:
        results = run_backfill(build_definitions(settings), instance, chosen, window, chunk_hours, click.echo)
    failed = [r for r in results if not r.success]
    total = sum(r.samples for r in results)
    click.echo(f"{len(results) - len(failed)} runs succeeded, {len(failed)} failed; {total:,} samples")
    if failed:
        raise SystemExit(1)



def _switch_sites(sites: tuple[str, ...], pause: bool) -> None:
    from vitals_pipeline.automation.pause import pause_sites, paused_sites, resume_sites
    from vitals_pipeline.config import Settings
    from vitals_pipeline.storage.names import schema_name

    try:
        configured = Settings.from_env().sites
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    known = {schema_name(site) for site in configured}
    unknown = [site for site in sites if schema_name(site) not in known]
    if unknown:
        raise click.ClickException(
            f"not in ACE_SITES: {', '.join(unknown)} (configured: {', '.join(sorted(known))})"
        )
    ensure_dagster_home()
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        changed = pause_sites(instance, sites) if pause else resume_sites(instance, sites)
        now_paused = sorted(paused_sites(instance))
    verb = "paused" if pause else "resumed"
    untouched = [schema_name(site) for site in sites if schema_name(site) not in changed]
    if changed:
        click.echo(f"{verb}: {', '.join(changed)}")
    if untouched:
        click.echo(f"already {'paused' if pause else 'active'}: {', '.join(untouched)}")
    click.echo(f"paused sites now: {', '.join(now_paused) or 'none'}")


@main.command()
@click.argument("sites", nargs=-1, required=True)
def pause(sites: tuple[str, ...]) -> None:
    """Stop the schedule and the catch-up sensor from running SITES (e.g. a building offline for
    works). The other sites go on; runs launched by hand still run. Undo with `vitals resume`."""
    _switch_sites(sites, pause=True)


@main.command()
@click.argument("sites", nargs=-1, required=True)
def resume(sites: tuple[str, ...]) -> None:
    """Let the automation run SITES again; the catch-up sensor fills what they missed (within
    VITALS_CATCHUP_HOURS)."""
    _switch_sites(sites, pause=False)


@main.command()
@click.option("--keep-days", default=14, show_default=True, type=click.IntRange(min=0),
              help="Keep everything of the last KEEP_DAYS days.")
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--vacuum", is_flag=True,
              help="Give the freed space back to the disk (SQLite; locks the index meanwhile).")
def prune(keep_days: int, dry_run: bool, vacuum: bool) -> None:
    """Drop what partition status does not need from the Dagster instance (DAGSTER_HOME):
    superseded materializations, old check history, old runs' logs. Partition status in the UI
    stays as it is; run records stay. The daemon does it daily (VITALS_RETENTION_DAYS)."""
    from datetime import timedelta

    import dagster as dg

    from vitals_pipeline.storage.retention import prune_instance

    ensure_dagster_home()
    with dg.DagsterInstance.get() as instance:
        report = prune_instance(instance, timedelta(days=keep_days), dry_run=dry_run, vacuum=vacuum)
    click.echo(("(dry run) " if dry_run else "") + report.summary())


@main.command()
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per row instead of CSV.")
@click.option("--max-seconds", default=20.0, show_default=True,
              help="Stop the query after this long (the DuckDB file is held only meanwhile).")
@click.option("--wait-seconds", default=30.0, show_default=True,
              help="How long to wait for a run that is writing the DuckDB file.")
def query(sql: str, as_json: bool, max_seconds: float, wait_seconds: float) -> None:
    """Run SQL on the warehouse while the pipeline writes it, without ever making a write fail:
    the DuckDB file (VITALS_DUCKDB_PATH) is opened read-only for this query only, and the query
    stopped after --max-seconds; the shared warehouse (VITALS_WAREHOUSE_URL) is simply queried.
    Tables are `<site>.timeseries`, `<site>.quality`, ... (times in UTC)."""
    import json

    from vitals_pipeline.storage.reading import QueryError, query_duckdb, query_postgres

    url = (os.environ.get("VITALS_WAREHOUSE_URL") or "").strip()
    try:
        if url:
            table = query_postgres(url, sql, max_seconds=max_seconds)
        else:
            path = os.environ.get("VITALS_DUCKDB_PATH") or "data/vitals.duckdb"
            if not Path(path).exists():
                raise QueryError(f"no DuckDB file at {path} (VITALS_DUCKDB_PATH): nothing stored yet?")
            table = query_duckdb(path, sql, wait_seconds=wait_seconds, max_seconds=max_seconds)
    except (QueryError, ConnectionError) as exc:
        click.echo(f"vitals query: {exc}", err=True)
        sys.exit(1)
    if as_json:
        for row in table.to_pylist():
            click.echo(json.dumps(row, default=str))
        return
    import io

    import pyarrow.csv as pacsv

    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    click.echo(buffer.getvalue().decode(), nl=False)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}
)
@click.pass_context
def simulate(ctx: click.Context) -> None:
    """Serve the built-in ACE simulator (see `vitals simulate --help`)."""
    # Imported here: the simulator's modules cost every other command's start-up time.
    from vitals_pipeline.cli_simulate import simulate as command

    command.main(args=ctx.args, prog_name="vitals simulate", standalone_mode=True)

# Set when the process was started as the `vitals` command, not when the CLI is invoked from
# Python (tests use click's CliRunner, which must keep its process).
_console_entry = False


def entry() -> None:
    """The `vitals` console script."""
    global _console_entry
    _console_entry = True
    main()


if __name__ == "__main__":
    entry()
