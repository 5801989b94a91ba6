"""What the benchmarks share: the simulator in its own process, a fresh Dagster home, measured
child processes, the download floor, and the tables of bench/RESULTS.md."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEY = "bench-key"
sys.path.insert(0, str(ROOT))

from vitals_pipeline.ace import wire  # noqa: E402
from vitals_pipeline.ace.client import AceClient  # noqa: E402

# Server states of the simulator (its --cache-mb): `render` renders every page on request, as
# ACE does; `warm` serves a window from memory after a first pass has rendered it.
RENDER, WARM = "render", "warm"
WARM_CACHE_MB = 1500  # a day of a 4,500-point/60 s site takes ~720 MB


class Simulator:
    """`vitals simulate` in its own process (its own core, as the real API would have). The key
    goes by environment, not on the command line."""

    def __init__(self, sites: str, points: int, cache_mb: int, now: datetime | None = None,
                 extra: list[str] | None = None) -> None:
        args = [str(BIN / "vitals"), "simulate", "--port", "0", "--sites", sites,
                "--points", str(points), "--interval", "60", "--cache-mb", str(cache_mb)]
        if now is not None:
            args += ["--now", now.strftime("%Y-%m-%dT%H:%M:%S")]
        self.proc = subprocess.Popen(
            args + (extra or []), stdout=subprocess.PIPE, text=True,
            env={**os.environ, "ACE_SIM_API_KEY": KEY},
        )
        line = self.proc.stdout.readline().strip()
        if "listening on" not in line:
            self.proc.kill()
            raise SystemExit(f"the simulator did not start (it printed {line!r}); run "
                             f"`{' '.join(args)}` by hand to see why")
        self.url = line.rsplit(" ", 1)[-1]
        self._ps = psutil.Process(self.proc.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU the simulator process has used so far (all its threads)."""
        times = self._ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bench_home(prefix: str, url: str, sites: str, partitions_start: datetime,
               page_size: int = wire.DEFAULT_PAGE_SIZE, base: str | None = None,
               dagster_yaml: str | None = None) -> tuple[Path, dict[str, str]]:
    """A fresh DAGSTER_HOME (the shipped dagster.yaml unless given) and DuckDB file in a new
    temporary folder, and the environment that points the pipeline at them and the simulator."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    home = work / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(dagster_yaml or (ROOT / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ACE_API_URL": url,
        "ACE_API_KEY": KEY,
        "ACE_SITES": sites,
        "ACE_PAGE_SIZE": str(page_size),
        "VITALS_DUCKDB_PATH": str(work / "vitals.duckdb"),
        "VITALS_PARTITIONS_START": partitions_start.strftime("%Y-%m-%d-%H:%M"),
    }
    return home, env


# The Dagster instance a benchmark measures: `sqlite` = the shipped dagster.yaml (SQLite files under
# DAGSTER_HOME), `postgres` = deploy/postgres/dagster.yaml (runs, event logs and schedules in a
# PostgreSQL database on a server this process starts; see PgInstances).
SQLITE_INSTANCE, PG_INSTANCE = "sqlite", "postgres"
INSTANCES = (SQLITE_INSTANCE, PG_INSTANCE)
PG_DAGSTER_YAML = ROOT / "deploy" / "postgres" / "dagster.yaml"


class PgInstances:
    """A PostgreSQL server for the benchmark's Dagster instances (vitals_pipeline_tests/postgres.py,
    durable: fsync and synchronous commit on, as in production), a fresh database per instance.

    The server runs on the same machine, outside the measured processes: `server_cpu_seconds` is
    its CPU (the postmaster and every backend, those it has reaped included), to count beside
    theirs. Its URLs hold the password: nothing here prints one (redact_pg_password for anything
    that may)."""

    def __init__(self, server) -> None:
        self.server = server
        # initdb's data folder beside the server's log (running_postgres's layout): its first
        # line of postmaster.pid is the postmaster's pid.
        pid_file = Path(server.log_path).parent / "data" / "postmaster.pid"
        self.postmaster = psutil.Process(int(pid_file.read_text().split()[0]))

    def new_database(self, prefix: str = "dagster") -> tuple[str, str]:
        """(name, URL as DAGSTER_PG_URL takes it, password included) of a new, empty database."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.server.admin(f"CREATE DATABASE {name}")
        return name, self.server.url(name)

    def database_bytes(self, name: str) -> int:
        """pg_database_size of `name`: the files of its relations (pages allocated), not the
        cluster's write-ahead log."""
        con = self.server.connect(name)
        try:
            with con.cursor() as cur:
                cur.execute("SELECT pg_database_size(current_database())")
                return int(cur.fetchone()[0])
        finally:
            con.close()

    def server_cpu_seconds(self) -> float:
        """User + system CPU of the server so far: the postmaster's own and reaped children's
        (every backend that ended), plus the live backends' own."""
        total = 0.0
        for proc in [self.postmaster, *self.postmaster.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total += times.user + times.system
            if proc.pid == self.postmaster.pid:
                total += times.children_user + times.children_system
        return total

    def version(self) -> str:
        con = self.server.connect()
        try:
            with con.cursor() as cur:
                cur.execute("SHOW server_version")
                return str(cur.fetchone()[0]).split()[0]
        finally:
            con.close()


@contextmanager
def pg_instances() -> Iterator[PgInstances]:
    """A PostgreSQL server for the run of a benchmark (Debian's `postgresql` binaries, see
    scripts/system-packages.sh), stopped and removed on the way out."""
    from vitals_pipeline_tests.postgres import INSTALL_HINT, find_bindir, running_postgres

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit(INSTALL_HINT)
    with running_postgres(bindir, durable=True) as server:
        yield PgInstances(server)


def pg_instance_env(env: dict[str, str], url: str) -> dict[str, str]:
    """`env` for an instance on PostgreSQL: DAGSTER_PG_URL, and DAGSTER_EVENT_BATCH_SIZE=1000 as
    deploy/postgres/README.md asks (the SQLite event log of dagster.yaml sets it for itself),
    unless already set. Also set in this process, which reads the instance too."""
    extra = {"DAGSTER_PG_URL": url,
             "DAGSTER_EVENT_BATCH_SIZE": os.environ.get("DAGSTER_EVENT_BATCH_SIZE", "1000")}
    os.environ.update(extra)
    env.update(extra)
    return env


@dataclass
class Measured:
    """One child process, measured by the kernel when it was reaped (os.wait4): its own figures
    and those of the children it waited for, nothing of other processes."""

    wall: float
    cpu: float  # user + system seconds
    peak_rss: int  # bytes: the largest resident set of the process (or of a child it reaped)
    stdout: str
    stderr: str


def run_measured(args: list[str], env: dict[str, str], check: bool = True) -> Measured:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        measured = Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024,
                            out.read(), err.read())
    if check and proc.returncode != 0:
        sys.stderr.write(redact_pg_password(measured.stdout[-4000:] + measured.stderr[-4000:], env))
        raise SystemExit(f"{' '.join(args[:4])} ... failed with exit code {proc.returncode} "
                         "(its output is above)")
    return measured


def redact_pg_password(text: str, env: dict[str, str] | None = None) -> str:
    """`text` without the password of DAGSTER_PG_URL (of `env`, else of this process), which a
    child's error may show."""
    url = (env if env is not None else os.environ).get("DAGSTER_PG_URL", "")
    password = url.split("@", 1)[0].rsplit(":", 1)[-1] if "@" in url else ""
    return text.replace(password, "***") if password else text


@dataclass
class Floor:
    seconds: float
    pages: int
    samples: int
    bytes: int


def pipeline_fetch_shape() -> tuple[int, timedelta]:
    """The sub-window length and the number of threads a site's window is fetched with: the
    defaults of `AceClient.fetch_pieces`, which the timeseries step uses."""
    parameters = inspect.signature(AceClient.fetch_pieces).parameters
    return parameters["workers"].default, parameters["chunk"].default


_NEXT_CURSOR = re.compile(rb'"next_cursor":\s*"([^"]+)"')


def download_floor(url: str, site: str, start: datetime, end: datetime,
                   page_size: int = wire.DEFAULT_PAGE_SIZE) -> Floor:
    """The download floor of [start, end): the requests the pipeline makes for it (the same
    sub-windows, each by the same number of threads, the same page size), bodies discarded.

    Nothing is parsed: the samples are counted by their `"name"` keys and the server's
    next_cursor is read off the end of the body (it is right whenever a page crosses into a new
    timestamp, as every page of 50,000 rows does; the sample count would show otherwise).
    """
    workers, chunk = pipeline_fetch_shape()
    bounds = [start]
    while bounds[-1] + chunk < end:
        bounds.append(bounds[-1] + chunk)
    bounds.append(end)
    pieces = list(zip(bounds, bounds[1:], strict=False))
    path = f"sites/{site}/timeseries/paginated"

    def fetch(piece: tuple[datetime, datetime]) -> tuple[int, int, int]:
        lo, hi = piece
        params = {"start_time": wire.format_wire_time(lo), "end_time": wire.format_wire_time(hi),
                  "page_size": page_size, "raw_data": "true"}
        cursor = None
        pages = samples = size = 0
        while True:
            query = dict(params) if cursor is None else {**params, "cursor": cursor}
            response = http.get(path, params=query)
            response.raise_for_status()
            body = response.content
            count = body.count(b'"name"')
            if count == 0:
                break
            pages += 1
            samples += count
            size += len(body)
            tail = body[-400:]
            found = _NEXT_CURSOR.search(tail)
            if b'"has_more":true' not in tail.replace(b" ", b"") or not found:
                break
            cursor = found.group(1).decode()
        return pages, samples, size

    with httpx.Client(base_url=url + "/", headers={"Authorization": f"Bearer {KEY}"},
                      timeout=120) as http:
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(fetch, pieces))
        seconds = time.perf_counter() - began
    return Floor(seconds, *(sum(part[i] for part in done) for i in range(3)))


def step_log_figures(home: Path, run_id: str | None = None) -> dict[str, float]:
    """The timeseries step's summary line of a run (the newest when `run_id` is None): samples,
    pages, requests and the step's own seconds, and the run's start -> end seconds."""
    import dagster as dg

    # The shipped event log storage finds its folder through DAGSTER_HOME.
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        [record] = (instance.get_run_records(dg.RunsFilter(run_ids=[run_id]), limit=1) if run_id
                    else instance.get_run_records(limit=1))
        figures = {"run_seconds": record.end_time - record.start_time}
        for entry in instance.all_logs(record.dagster_run.run_id):
            found = _STEP_LINE.search(entry.user_message or "")
            if found:
                figures.update(samples=int(found[1]), pages=int(found[2]),
                               requests=int(found[3]), step_seconds=float(found[4]))
    return figures


_STEP_LINE = re.compile(r"(\d+) samples in (\d+) pages \((\d+) requests, \d+ retries\) in ([\d.]+) s")


def load_average() -> float:
    return os.getloadavg()[0]


def record(header: str, preamble: str, line: str) -> None:
    """Add `line` as the last row of the table under `header` in bench/RESULTS.md (the section,
    `preamble` + `header`, is added at the end of the file when it is not there yet)."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    if header not in text:
        text = (text.rstrip("\n") + "\n\n" if text else "") + preamble + header + "\n"
    head, _, rest = text.partition(header + "\n")
    rows = []
    lines = rest.split("\n")
    while lines and lines[0].startswith("|"):
        rows.append(lines.pop(0))
    path.write_text(head + header + "\n" + "\n".join([*rows, line, *lines]).rstrip("\n") + "\n")
    print(f"recorded in {path}")


def commit(checkout: str | Path | None = None) -> str:
    """The commit measured (this checkout's, or `checkout`'s), `+dirty` when tracked files differ
    from it."""
    root = Path(checkout) if checkout else ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        # The results file itself does not count: each benchmark of `make bench` adds to it.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             ":!bench/RESULTS.md"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
