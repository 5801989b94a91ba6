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
from concurrent.futures import ThreadPoolExecutor
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
        sys.stderr.write(measured.stdout[-4000:] + measured.stderr[-4000:])
        raise SystemExit(f"{' '.join(args[:4])} ... failed with exit code {proc.returncode} "
                         "(its output is above)")
    return measured


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
