"""The fleet benchmark: N sites under a real `dagster-daemon` with the shipped dagster.yaml, one
scheduled tick measured from the tick time until every run it created has finished.

For each size of `--sites` (default 50,100,300,500,1000):
1. The simulator in its own process (`vitals simulate`), N sites of `--points` points, every data
   response delayed `--latency` s. With `--broken-site` one site always fails: a 503 for that site
   where the simulator has the `site_status` fault, else a site the simulator does not serve
   (ACE answers 403). Which one was used is printed and recorded.
2. A fresh DAGSTER_HOME (initialised once by `ensure_dagster_home`: the shipped dagster.yaml) and
   DuckDB file; ACE_SITES = the N sites; VITALS_PARTITIONS_START `--history-hours` before the
   tick. The history up to the tick's partition (and each site's points) is loaded first,
   untimed, by `dagster asset materialize` (latency off meanwhile), so that the catch-up sensors
   find no gap and the measured tick is a steady-state one.
3. `dagster-daemon run` in its own process group, started `--warmup` + `--quiet` s before the
   next tick of the schedules' cron (read from `dagster schedule list`). Ticks in the first ten
   minutes of an hour are passed over (`--any-minute` to allow them): the hour's roll-ups and
   the points refresh run then, on top of the tick.
4. Measured: over the quiet window before the tick, the CPU of the daemon and its code server
   (% of one core: the cost of idling with N sites' schedules and sensors). For the tick: drain
   seconds (tick time -> the last of its runs ended), its runs (those of the schedules that
   ticked then: `dagster/schedule_name` and the scheduled-time tag; no job names assumed), the
   sites whose newest closed partition is materialized, the CPU seconds of the whole process tree
   (daemon, code servers, run workers; see bench/proctree.py for how and the error bound),
   DAGSTER_HOME growth per site, peak RSS. A tick that has not drained `--cap` s after it (one
   tick period + 60 s by default) is reported as such, with how far it got.
5. After the daemon stopped: the newest closed partition in DuckDB of every site that stored it
   against the simulator's ground truth (its /_sim/ground_truth route); the sites that did not
   store it hold none of its rows; the broken site holds nothing.

Instance (`--instance`): `sqlite` (default) = the shipped dagster.yaml, SQLite files under
DAGSTER_HOME; `postgres` = deploy/postgres/dagster.yaml on a PostgreSQL server this process starts
for the run (Debian's binaries; fsync and synchronous commit on), a fresh database per size,
DAGSTER_PG_URL and DAGSTER_EVENT_BATCH_SIZE=1000 in the environment of every child and of this
process (it reads the instance), as deploy/postgres/README.md asks. Then the instance's growth is
the database's (pg_database_size: its relations' pages, not the cluster's write-ahead log) during
the tick, DAGSTER_HOME's beside it (compute logs only); the server is outside the daemon's process
tree, so its CPU during the tick is measured apart (the postmaster and its backends, reaped ones
included) and recorded beside the tree's (`+N server`); the design reads `... (pg)`.

Prints a table, writes JSON (`--out`) and appends a row per size to the "Fleet" section of
bench/RESULTS.md.

Cost: a size takes up to a tick period of waiting for a tick it can prepare, the history load,
the warm-up and quiet window (~3 min) and the tick itself (at most `--cap`): with the per-site
design 9.5 min for 50 sites and 16 min for 100 on this project's 2 cores; up to 10 min more when
the next ticks fall in the first 10 minutes of an hour.

    .venv/bin/python bench/fleet.py [--sites 50,100] [--points 120] [--latency 0.15]
        [--broken-site] [--ticks 1] [--out bench/out/fleet.json] [--no-record]
        [--instance sqlite|postgres]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    INSTANCES,
    PG_DAGSTER_YAML,
    PG_INSTANCE,
    SQLITE_INSTANCE,
    PgInstances,
    pg_instance_env,
    pg_instances,
    redact_pg_password,
)
from bench.proctree import CpuWindow, TreeSampler  # noqa: E402
from vitals_pipeline.ace.wire import format_wire_time  # noqa: E402
from vitals_pipeline.storage.names import schema_name  # noqa: E402
from vitals_pipeline.windows import PARTITION, floor_to_partition, partition_key  # noqa: E402

KEY = "fleet-bench-key"  # the simulator's key: a benchmark value, never printed all the same
BROKEN_STATUS = 503
# The simulator serves samples up to its clock: the partition that closes at P is complete at P.
CLOSED_GRACE = timedelta(seconds=3)
SCHEDULE_TAG = "dagster/schedule_name"
SCHEDULED_TIME_TAG = ".dagster/scheduled_execution_time"  # set by Dagster on every schedule run
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


# ---------------------------------------------------------------------------------------------
# Cron: when the schedules tick (no cron library in the project; Dagster's own is private)


class Cron:
    """A 5-field cron expression (numbers, `*`, ranges, lists, steps; UTC) and its fire times."""

    _BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))

    def __init__(self, text: str) -> None:
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"cron {text!r}: expected 5 fields (minute hour day month weekday)")
        self.text = " ".join(fields)
        self.sets = [self._field(f, lo, hi, text) for f, (lo, hi) in zip(fields, self._BOUNDS)]
        self.sets[4] = {d % 7 for d in self.sets[4]}  # 7 is Sunday too
        self.any_day, self.any_weekday = fields[2] == "*", fields[4] == "*"

    @staticmethod
    def _field(field: str, lo: int, hi: int, text: str) -> set[int]:
        values: set[int] = set()
        for part in field.split(","):
            span, slash, step_text = part.partition("/")
            try:
                step = int(step_text) if slash else 1
                if span == "*":
                    first, last = lo, hi
                elif "-" in span:
                    first, last = (int(x) for x in span.split("-", 1))
                else:
                    first = int(span)
                    last = hi if slash else first
            except ValueError:
                raise ValueError(
                    f"cron {text!r}: {part!r} is not supported here (numbers, *, a-b, lists, /step)"
                ) from None
            if not (lo <= first <= last <= hi) or step < 1:
                raise ValueError(f"cron {text!r}: {part!r} is out of range {lo}-{hi}")
            values.update(range(first, last + 1, step))
        return values

    def fires_at(self, t: datetime) -> bool:
        minutes, hours, days, months, weekdays = self.sets
        if t.second or t.microsecond or t.minute not in minutes or t.hour not in hours:
            return False
        if t.month not in months:
            return False
        day_ok, weekday_ok = t.day in days, (t.weekday() + 1) % 7 in weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok  # cron's rule when both are restricted

    def next_after(self, t: datetime) -> datetime:
        """The first fire time strictly after `t`."""
        candidate = t.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(366 * 24 * 60):
            if self.fires_at(candidate):
                return candidate
            candidate += timedelta(minutes=1)
        raise ValueError(f"cron {self.text!r} does not fire within a year")


def newest_closed(tick: datetime) -> datetime:
    """The start of the newest closed 5-minute partition at `tick`: the one its runs fetch."""
    return floor_to_partition(tick) - PARTITION


# ---------------------------------------------------------------------------------------------
# Processes: everything started here is ended on any exit


_STARTED: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float) -> None:
    """Until something accepts connections on the loopback port (a code server loading)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s (see code_server.log)")


def start_group(args: list[str], **popen) -> subprocess.Popen:
    """Start a process in its own session/process group (its children stay in it); ended at exit."""
    proc = subprocess.Popen(args, start_new_session=True, **popen)
    _STARTED.append(proc)
    return proc


def end_group(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the process group of `proc` (started by start_group), SIGKILL after `grace` s."""
    if proc in _STARTED:
        _STARTED.remove(proc)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        proc.poll()
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        # Children (run workers) may outlive the leader: end whatever is left of the group.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@atexit.register
def _end_all() -> None:
    for proc in list(_STARTED):
        end_group(proc, grace=10)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}: ending the simulator and the daemon")


# ---------------------------------------------------------------------------------------------
# The simulator


@dataclass
class SimulatorFeatures:
    site_count: bool  # `vitals simulate --site-count N`
    site_status: bool  # the `site_status` fault: a status code per site


def simulator_features() -> SimulatorFeatures:
    help_text = subprocess.run(
        [str(BIN / "vitals"), "simulate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    return SimulatorFeatures(site_count="--site-count" in help_text, site_status="site_status" in help_text)


class SimulatorProcess:
    """`vitals simulate` in its own process; `url` is the API base, `admin` the /_sim routes."""

    def __init__(self, sites: int, points: int, latency: float, broken: bool, features: SimulatorFeatures,
                 log_path: Path) -> None:
        self.features = features
        names = [f"s{i:04d}" for i in range(sites)]
        self.broken: str | None = None
        self.broken_mode = "none"
        args = [str(BIN / "vitals"), "simulate", "--port", "0", "--points", str(points),
                "--fault", f"slow_seconds={latency}"]
        served = names
        if broken:
            self.broken = names[min(7, sites - 1)]
            if features.site_status:
                args += ["--fault", "site_status=" + json.dumps({self.broken: BROKEN_STATUS})]
                self.broken_mode = f"site_status {BROKEN_STATUS}"
            else:
                # No per-site fault in this simulator: it does not serve the site at all, which ACE
                # answers with 403 (a permanent error for the client: no retries).
                served = [n for n in names if n != self.broken]
                self.broken_mode = "site not served (403)"
        self.used_site_count = features.site_count and served is names
        if self.used_site_count:
            args += ["--site-count", str(sites)]
        else:
            args += ["--sites", ",".join(served)]
        self.log = open(log_path, "w")  # closed in stop()
        # The key by environment, not on the command line that `ps` shows.
        self.proc = start_group(args, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
                                env={**os.environ, "ACE_SIM_API_KEY": KEY})
        line = self.proc.stdout.readline().strip()
        if "listening on" not in line:
            self.stop()
            raise SystemExit(f"the simulator did not start ({line!r}); its log: {log_path}")
        self.url = line.rsplit(" ", 1)[-1]
        self.admin = self.url.rsplit("/api", 1)[0] + "/_sim"
        self.http = httpx.Client(timeout=60)
        self.sites = self._served_sites() if self.used_site_count else names
        if broken and features.site_status:
            faults = self.http.get(f"{self.admin}/faults").json()
            if self.broken not in (faults.get("site_status") or {}):
                self.stop()
                raise SystemExit(
                    "`vitals simulate --help` mentions site_status but the simulator's faults do not "
                    f"hold it ({sorted(faults)}): run without --broken-site or fix the simulator"
                )

    def _served_sites(self) -> list[str]:
        """The names `--site-count` gave the sites, from the API's site list."""
        reply = self.http.get(
            f"{self.url}/sites/", params={"per_page": 100000}, headers={"Authorization": f"Bearer {KEY}"}
        )
        reply.raise_for_status()
        return [item["name"] for item in reply.json()["items"]]

    def set_latency(self, seconds: float) -> None:
        self.http.post(f"{self.admin}/faults", json={"slow_seconds": seconds}).raise_for_status()

    def ground_truth(self, site: str, start: datetime, end: datetime) -> list[list]:
        reply = self.http.get(
            f"{self.admin}/ground_truth",
            params={"site": site, "start_time": format_wire_time(start), "end_time": format_wire_time(end)},
        )
        reply.raise_for_status()
        return reply.json()

    def stop(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.close()
        end_group(self.proc, grace=10)
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Dagster: the instance, the schedules, the runs of a tick


def dagster(args: list[str], env: dict[str, str], log_path: Path, what: str, timeout: float) -> float:
    """Run `dagster ARGS` to completion (its own process group); return its wall seconds."""
    began = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"\n$ dagster {' '.join(args)}\n")
        log.flush()
        proc = start_group([str(BIN / "dagster"), *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_group(proc)
            raise SystemExit(f"{what}: no result after {timeout:.0f} s; its output is in {log_path}") from None
    _STARTED.remove(proc)
    if code != 0:
        tail = redact_pg_password(log_path.read_text()[-3000:])
        raise SystemExit(f"{what} failed (exit {code}); the end of {log_path}:\n{tail}")
    return time.monotonic() - began


def list_schedules(env: dict[str, str], log_path: Path) -> list[tuple[str, str, str]]:
    """(name, cron, status) of every schedule of the code location, from `dagster schedule list`."""
    out = subprocess.run(
        [str(BIN / "dagster"), "schedule", "list", "-m", "vitals_pipeline.definitions"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    log_path.write_text(out.stdout + out.stderr)
    found = re.findall(r"Schedule: (\S+) \[(\w+)\]\s*\nCron Schedule: ([^\n]+)", out.stdout)
    if out.returncode != 0 or not found:
        raise SystemExit(f"`dagster schedule list` found no schedule (exit {out.returncode}); see {log_path}")
    return [(name, cron.strip(), status) for name, status, cron in found]


def list_assets(selection: str, env: dict[str, str], log_path: Path) -> list[str]:
    """The asset keys `selection` matches, from `dagster asset list` (an empty selection given to
    `dagster asset materialize` would run every asset instead)."""
    out = subprocess.run(
        [str(BIN / "dagster"), "asset", "list", "-m", "vitals_pipeline.definitions", "--select", selection],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    with open(log_path, "a") as log:
        log.write(f"$ dagster asset list --select {selection}\n{out.stdout}{out.stderr}\n")
    if out.returncode != 0:
        raise SystemExit(f"`dagster asset list --select {selection}` failed (exit {out.returncode}); see {log_path}")
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def tick_of(run_tags: dict[str, str]) -> datetime | None:
    """The scheduled time of a schedule's run, or None for a run no schedule made."""
    if SCHEDULE_TAG not in run_tags or SCHEDULED_TIME_TAG not in run_tags:
        return None
    return datetime.fromisoformat(run_tags[SCHEDULED_TIME_TAG]).astimezone(UTC)


def run_kind(run_tags: dict[str, str]) -> str:
    if SCHEDULE_TAG in run_tags:
        return "schedule"
    if "dagster/sensor_name" in run_tags:
        sensor = run_tags["dagster/sensor_name"]
        return "catch-up" if "catchup" in sensor or run_tags.get("vitals/trigger") == "catchup" else "automation"
    if "dagster/backfill" in run_tags:
        return "backfill"
    return "other"


@dataclass
class RunView:
    run_id: str
    status: str
    kind: str
    tick: datetime | None
    created: float
    start: float | None
    end: float | None


def runs_since(instance, since: datetime) -> list[RunView]:
    import dagster as dg

    views = []
    for record in instance.get_run_records(dg.RunsFilter(created_after=since)):
        run = record.dagster_run
        views.append(RunView(
            run_id=run.run_id,
            status=run.status.value,
            kind=run_kind(run.tags),
            tick=tick_of(run.tags),
            created=record.create_timestamp.timestamp(),
            start=record.start_time,
            end=record.end_time,
        ))
    return views


def schedule_ticks(instance, tick: datetime) -> dict[str, tuple[str, list[str]]]:
    """Per schedule that has a tick at `tick`: (tick status, its run ids)."""
    at = tick.timestamp()
    found = {}
    for state in instance.all_instigator_state():
        if state.instigator_type.value != "SCHEDULE":
            continue
        for record in instance.get_ticks(state.instigator_origin_id, state.selector_id, after=at - 0.5,
                                         before=at + 0.5):
            found[state.instigator_name] = (record.status.value, list(record.run_ids))
    return found


def home_bytes(home: Path) -> tuple[int, int]:
    """Bytes under DAGSTER_HOME: (every file, SQLite write-ahead logs included; every file but the
    write-ahead logs, after a passive checkpoint of each database).

    A write-ahead log is not truncated after a checkpoint: it keeps its largest size, up to ~4 MB
    a database, whatever was written. So the first figure counts a log's growth once as if it were
    data; the second counts what is in the databases, without blocking the daemon's writers.
    """
    total = 0
    databases = []
    for folder, _, files in os.walk(home):
        for name in files:
            path = os.path.join(folder, name)
            try:
                total += os.lstat(path).st_size
            except FileNotFoundError:
                continue  # a -journal or -wal file gone between the listing and the stat
            if name.endswith("-wal") and os.path.exists(path[: -len("-wal")]):
                databases.append(path[: -len("-wal")])
    for database in databases:
        try:
            with closing(sqlite3.connect(database, timeout=5)) as con:
                con.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # busy or gone: its log stays out of the second figure all the same
    checkpointed = 0
    for folder, _, files in os.walk(home):
        for name in files:
            if name.endswith(("-wal", "-shm")):
                continue
            try:
                checkpointed += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total, checkpointed


# ---------------------------------------------------------------------------------------------
# One size


def say(n: int, text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S} {n} sites] {text}", flush=True)


def wait_until(t: datetime, n: int, what: str, alive: subprocess.Popen | None = None,
               log: Path | None = None) -> None:
    last = 0.0
    while (left := (t - datetime.now(UTC)).total_seconds()) > 0:
        if alive is not None and alive.poll() is not None:
            tail = redact_pg_password(log.read_text()[-3000:]) if log else ""
            raise SystemExit(f"the daemon exited (code {alive.returncode}) while waiting for {what}:\n{tail}")
        if time.monotonic() - last >= 30:
            say(n, f"{what} at {t:%H:%M:%S} (in {left:.0f} s)")
            last = time.monotonic()
        time.sleep(min(left, 1.0))


def plan_tick(cron: Cron, now: datetime, lead: float, prefill_s: float, any_minute: bool) -> datetime:
    """The first tick whose history can be loaded (its partitions closed, `prefill_s` estimated)
    with the daemon then started `lead` s before it. An estimate that fits no tick is dropped: the
    caller moves to a later tick when loading takes too long."""
    for estimate in (prefill_s, 0.0):
        tick = now
        while (tick := cron.next_after(tick)) < now + timedelta(days=1):
            if not any_minute and tick.minute < 10:
                continue
            ready = max(now, newest_closed(tick) + CLOSED_GRACE)
            if ready + timedelta(seconds=estimate) <= tick - timedelta(seconds=lead):
                return tick
    raise ValueError(
        f"no tick of {cron.text!r} leaves {lead:.0f} s (--warmup + --quiet + 5) between the close of "
        "the partitions before it and the tick: lower --warmup or --quiet"
    )


def load_history(sim: SimulatorProcess, healthy: list[str], cron: Cron, lead: float, env: dict[str, str],
                 logs: Path, n: int, args: argparse.Namespace) -> tuple[datetime, datetime, float]:
    """Plan the measured tick and load every partition before it into DuckDB and the instance, with
    the latency off: the catch-up sensors then find no gap when the daemon starts. Sets
    VITALS_PARTITIONS_START in `env`. Returns (tick, history start, seconds spent loading)."""
    # The broken site gets no history: its catch-up sensor finds gaps, as it would in life.
    skip = f' and not key:"{schema_name(sim.broken)}/*"' if sim.broken else ""
    # Weather is not partitioned (the fleet design refreshes it in the tick run): not prefilled.
    partitioned, unpartitioned = f'key:"*/timeseries"{skip}', f'key:"*/points"{skip}'
    if not any(key.endswith("/timeseries") for key in list_assets(partitioned, env, logs / "assets.txt")):
        raise SystemExit("no <site>/timeseries asset in vitals_pipeline.definitions: this benchmark reads "
                         "each site's newest partition from the asset <site>/timeseries")
    # A design without per-site points assets loads none (an empty selection would run everything).
    load_points = bool(list_assets(unpartitioned, env, logs / "assets.txt"))
    # Seconds to load the history: ~1 s a site for the per-site design's steps on 2 busy cores.
    # Too low costs a tick period; plan_tick drops an estimate no tick fits.
    estimate = 20 + 1.0 * n
    tick = plan_tick(cron, datetime.now(UTC), lead, estimate, args.any_minute)
    history_start = newest_closed(tick) - timedelta(hours=args.history_hours)
    env["VITALS_PARTITIONS_START"] = os.environ["VITALS_PARTITIONS_START"] = partition_key(history_start)
    materialize = ["asset", "materialize", "-m", "vitals_pipeline.definitions"]
    loaded_until, spent, load_s = history_start, 0.0, 0.0
    for attempt in range(3):
        say(n, f"tick {tick:%H:%M} UTC planned: history [{loaded_until:%H:%M}, {newest_closed(tick):%H:%M}) "
               f"loaded once closed, daemon from {tick - timedelta(seconds=lead):%H:%M:%S}")
        wait_until(newest_closed(tick) + CLOSED_GRACE, n, "history load")
        sim.set_latency(0)
        began = time.monotonic()
        if attempt == 0 and load_points:
            dagster([*materialize, "--select", unpartitioned], env, logs / "prefill.log",
                    "loading the sites' points", timeout=3600)
        first, last = partition_key(loaded_until), partition_key(newest_closed(tick) - PARTITION)
        dagster([*materialize, "--select", partitioned, "--partition-range", f"{first}...{last}"],
                env, logs / "prefill.log", f"loading the history {first}...{last}", timeout=3600)
        load_s = time.monotonic() - began
        spent += load_s
        loaded_until = newest_closed(tick)
        sim.set_latency(args.latency)
        say(n, f"history loaded ({len(healthy)} sites, {load_s:.0f} s)")
        if datetime.now(UTC) <= tick - timedelta(seconds=lead):
            return tick, history_start, spent
        # Too slow for this tick: the next one needs only the partitions closed meanwhile.
        tick = plan_tick(cron, datetime.now(UTC), lead, load_s, args.any_minute)
        say(n, f"the history took longer than planned: moved to the tick at {tick:%H:%M}")
    raise SystemExit(
        f"loading the history of {n} sites took {load_s:.0f} s the last time, three times too long to "
        f"start the daemon {lead:.0f} s (--warmup + --quiet + 5) before the tick: lower --warmup, "
        "--quiet or --history-hours, or leave this size out"
    )


def measure_quiet(sampler: TreeSampler, tick: datetime, daemon: subprocess.Popen, daemon_log: Path, n: int,
                  args: argparse.Namespace, pg: PgInstances | None = None) -> dict:
    """The daemon's and code servers' own CPU over the `args.quiet` s before the tick (5 s short
    of it), and the runs that were active meanwhile (those make the window less quiet)."""
    import dagster as dg

    wait_until(tick - timedelta(seconds=args.quiet + 5), n, "quiet window", daemon, daemon_log)
    window = CpuWindow(sampler.snapshot(), args.poll)
    pg_cpu_before = pg.server_cpu_seconds() if pg else 0.0
    began = time.time()
    poll_until(tick - timedelta(seconds=5), sampler, window, daemon, daemon_log, args.poll, "quiet window")
    measured = window.close(sampler.snapshot())
    pg_cpu = pg.server_cpu_seconds() - pg_cpu_before if pg else None
    own = measured["cpu_polled_by_role_s"]
    idle_cpu = own.get("daemon", 0.0) + own.get("code server", 0.0)
    with dg.DagsterInstance.get() as instance:
        active = [r for r in runs_since(instance, datetime.fromtimestamp(began - 900, UTC))
                  if r.end is None or r.end >= began]
    quiet = {
        "seconds": measured["seconds"],
        "daemon_cpu_s": round(own.get("daemon", 0.0), 2),
        "code_server_cpu_s": round(own.get("code server", 0.0), 2),
        "pct_of_one_core": round(100 * idle_cpu / measured["seconds"], 1),
        "runs_active": dict(Counter(r.kind for r in active)),
        "load_1min": os.getloadavg()[0],
        **({"server_cpu_s": round(pg_cpu, 2),
            "server_pct_of_one_core": round(100 * pg_cpu / measured["seconds"], 1)} if pg else {}),
    }
    say(n, f"quiet window: daemon + code server {idle_cpu:.1f} CPU s in {measured['seconds']:.0f} s "
           f"({quiet['pct_of_one_core']} % of a core"
           + (f"; PostgreSQL server {pg_cpu:.1f} CPU s, {quiet['server_pct_of_one_core']} %" if pg else "")
           + f"); runs active meanwhile: {quiet['runs_active'] or 'none'}")
    return quiet


def bench_size(n: int, args: argparse.Namespace, features: SimulatorFeatures, pg: PgInstances | None = None) -> dict:
    import dagster as dg

    from vitals_pipeline.cli import ensure_dagster_home

    work = Path(tempfile.mkdtemp(prefix=f"vitals-fleet-{n}-", dir=args.work_dir))
    home = work / "dagster_home"
    logs = work / "logs"
    logs.mkdir()
    result: dict = {"sites": n, "points": args.points, "latency_s": args.latency, "work_dir": str(work),
                    "instance": args.instance}
    sim = SimulatorProcess(n, args.points, args.latency, args.broken_site, features, logs / "simulator.log")
    daemon: subprocess.Popen | None = None
    try:
        sites = sim.sites
        result.update(
            broken_site=sim.broken, broken_mode=sim.broken_mode,
            simulator={"site_count_option": sim.used_site_count, "site_status_fault": features.site_status},
        )
        say(n, f"simulator {sim.url}: {len(sites)} sites x {args.points} points, {args.latency} s a data "
               f"request; broken site: {sim.broken or '-'} ({sim.broken_mode})")
        now = datetime.now(UTC)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "ACE_API_URL": sim.url,
            "ACE_API_KEY": KEY,
            "ACE_SITES": ",".join(sites),
            "VITALS_DUCKDB_PATH": str(work / "vitals.duckdb"),
            # Provisional, for listing the schedules; set from the tick below.
            "VITALS_PARTITIONS_START": partition_key(floor_to_partition(now) - timedelta(hours=args.history_hours)),
        }
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "ACE_API_URL", "ACE_SITES", "VITALS_DUCKDB_PATH")})
        database = None
        if pg:
            # deploy/postgres/dagster.yaml in DAGSTER_HOME (ensure_dagster_home keeps it and creates
            # Dagster's tables in the new database); the URL by environment, here and in children.
            home.mkdir(parents=True)
            (home / "dagster.yaml").write_text(PG_DAGSTER_YAML.read_text())
            database, url = pg.new_database(f"fleet_{n}")
            pg_instance_env(env, url)
            result["postgres"] = {"version": pg.version(), "database": database}
            say(n, f"instance: PostgreSQL {pg.version()}, database {database}")
        ensure_dagster_home()
        schedules = [s for s in list_schedules(env, logs / "schedules.txt") if s[2] == "RUNNING"]
        crons = Counter(cron for _, cron, _ in schedules)
        cron = Cron(args.cron or crons.most_common(1)[0][0])
        result["schedules"] = len(schedules)
        result["cron"] = cron.text

        lead = args.warmup + args.quiet + 5
        healthy = [s for s in sites if s != sim.broken]
        tick, history_start, prefill_s = load_history(sim, healthy, cron, lead, env, logs, n, args)
        result["history"] = {"start": partition_key(history_start), "seconds": round(prefill_s, 1)}

        expected = {name for name, c, _ in schedules if Cron(c).fires_at(tick)}
        wait_until(tick - timedelta(seconds=lead), n, "daemon start")
        daemon_log = logs / "daemon.log"
        target = ["-m", "vitals_pipeline.definitions"]
        code_server = None
        if args.code_server:
            # A code server that stays up (docs/operations.md, "A code server of its own"): the
            # daemon started with -m replaces its own with a new process every 60 s.
            port = free_port()
            with open(logs / "code_server.log", "w") as log:
                code_server = start_group(
                    [str(BIN / "dagster"), "api", "grpc", *target, "-h", "127.0.0.1", "-p", str(port)],
                    env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                )
            workspace = work / "workspace.yaml"
            workspace.write_text(
                "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
                f"      port: {port}\n      location_name: vitals_pipeline.definitions\n"
            )
            wait_for_port(port, 120)
            target = ["-w", str(workspace)]
        with open(daemon_log, "w") as log:
            daemon = start_group([str(BIN / "dagster-daemon"), "run", *target],
                                 env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        say(n, f"dagster-daemon started (pid {daemon.pid}{', own code server' if code_server else ''}); "
               f"tick at {tick:%H:%M:%S}")
        sampler = TreeSampler(daemon.pid, code_server.pid if code_server else None)
        sim_proc = psutil.Process(sim.proc.pid)

        result["quiet"] = measure_quiet(sampler, tick, daemon, daemon_log, n, args, pg)

        result["ticks"] = []
        with dg.DagsterInstance.get() as instance:
            for index in range(args.ticks):
                if index:
                    tick = cron.next_after(tick)
                    if datetime.now(UTC) > tick - timedelta(seconds=2):
                        say(n, f"the tick at {tick:%H:%M} began before the last one drained: not measured")
                        break
                    expected = {name for name, c, _ in schedules if Cron(c).fires_at(tick)}
                    wait_until(tick - timedelta(seconds=2), n, "next tick", daemon, daemon_log)
                measured = measure_tick(instance, tick, cron, expected, healthy, sampler, sim_proc, daemon,
                                        daemon_log, home, n, args, pg, database)
                result["ticks"].append(measured)
                if not measured["drained"]:
                    break
        result["design"] = (args.design or design_of(result["ticks"][0]["runs"], n)) + (
            " +code server" if args.code_server else ""
        )
        if pg and "(pg)" not in result["design"]:
            result["design"] += " (pg)"
        say(n, "stopping the daemon")
        end_group(daemon)
        daemon = None
        if code_server is not None:
            end_group(code_server)
        checks = [(m["newest_partition"], [s for s in healthy if s not in m["sites_not_stored"]],
                   m["sites_not_stored"]) for m in result["ticks"]]
        result["correctness"] = c = verify(sim, work / "vitals.duckdb", sim.broken, checks, args.verify)
        say(n, f"DuckDB against the ground truth: {c['sites_exact']}/{c['sites_checked']} stored sites exact "
               f"({c['rows_compared']:,} samples); sites not stored holding rows of the partition: "
               f"{c['not_stored_with_rows']}/{c['not_stored_checked']}; broken site rows: {c['broken_site_rows']}")
        result["daemon_log_errors"] = sum(" - ERROR - " in line for line in daemon_log.read_text().splitlines())
    finally:
        if daemon is not None:
            end_group(daemon)
        sim.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def poll_until(t: datetime, sampler: TreeSampler, window: CpuWindow, daemon: subprocess.Popen, log: Path,
               poll: float, what: str) -> None:
    while datetime.now(UTC) < t:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited (code {daemon.returncode}) during the {what}:\n"
                             + redact_pg_password(log.read_text()[-3000:]))
        window.update(sampler.snapshot())
        time.sleep(poll)


def measure_tick(instance, tick: datetime, cron: Cron, expected: set[str], healthy: list[str],
                 sampler: TreeSampler, sim_proc, daemon: subprocess.Popen, daemon_log: Path, home: Path,
                 n: int, args: argparse.Namespace, pg: PgInstances | None = None,
                 database: str | None = None) -> dict:
    """From just before `tick` until every run it created has ended, or `args.cap` s after it."""
    import dagster as dg

    cap = args.cap or (cron.next_after(tick) - tick).total_seconds() + 60
    wait_until(tick - timedelta(seconds=1), n, "tick", daemon, daemon_log)
    size_before = home_bytes(home)
    db_before = pg.database_bytes(database) if pg else 0
    pg_cpu_before = pg.server_cpu_seconds() if pg else 0.0
    sim_cpu_before = sum(sim_proc.cpu_times()[:2])
    load_at_tick = os.getloadavg()[0]
    window = CpuWindow(sampler.snapshot(), args.poll)
    deadline = tick + timedelta(seconds=cap)
    since = tick - timedelta(seconds=1)
    drained, last_report, last_check, tick_runs, others = False, 0.0, 0.0, [], []
    ticks: dict[str, tuple[str, list[str]]] = {}
    while datetime.now(UTC) < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited (code {daemon.returncode}) during the tick:\n"
                             + redact_pg_password(daemon_log.read_text()[-3000:]))
        window.update(sampler.snapshot())
        if time.monotonic() - last_check >= 2 and datetime.now(UTC) >= tick:
            last_check = time.monotonic()
            runs = runs_since(instance, since)
            tick_runs = [r for r in runs if r.tick == tick]
            others = [r for r in runs if r.tick != tick]
            if all(r.status in FINISHED for r in tick_runs) and datetime.now(UTC) > tick + timedelta(seconds=5):
                # Every run seen so far has ended: has every schedule finished its tick?
                ticks = schedule_ticks(instance, tick)
                done = {name for name, (status, _) in ticks.items() if status != "STARTED"}
                ids = {run_id for _, run_ids in ticks.values() for run_id in run_ids}
                if expected <= done and ids <= {r.run_id for r in tick_runs}:
                    drained = True
                    break
            if time.monotonic() - last_report >= args.progress:
                last_report = time.monotonic()
                status = Counter(r.status for r in tick_runs)
                say(n, f"tick +{(datetime.now(UTC) - tick).total_seconds():.0f} s: {len(tick_runs)} runs, "
                       f"{status['SUCCESS']} ok, {status['FAILURE']} failed, {status['STARTED']} running, "
                       f"{status['QUEUED'] + status['NOT_STARTED'] + status['STARTING']} waiting; "
                       f"other runs since the tick: {dict(Counter(r.kind for r in others)) or 0}")
        time.sleep(args.poll)
    cpu = window.close(sampler.snapshot())
    size_after = home_bytes(home)
    sim_cpu = sum(sim_proc.cpu_times()[:2]) - sim_cpu_before
    pg_cpu = pg.server_cpu_seconds() - pg_cpu_before if pg else None
    db_after = pg.database_bytes(database) if pg else 0
    if not drained:
        runs = runs_since(instance, since)
        tick_runs = [r for r in runs if r.tick == tick]
        others = [r for r in runs if r.tick != tick]
        ticks = schedule_ticks(instance, tick)
    ended = [r for r in tick_runs if r.status in FINISHED and r.end is not None]
    newest = partition_key(newest_closed(tick))
    not_stored = [
        site for site in healthy
        if newest not in instance.get_materialized_partitions(dg.AssetKey([schema_name(site), "timeseries"]))
    ]
    stored = len(healthy) - len(not_stored)
    status = Counter(r.status for r in tick_runs)
    measured = {
        "tick": tick.isoformat(),
        "newest_partition": newest,
        "drained": drained,
        "drain_s": round(max(r.end for r in ended) - tick.timestamp(), 1) if drained and ended else None,
        "cap_s": cap,
        "schedules_expected": len(expected),
        "schedules_ticked": sum(status != "STARTED" for status, _ in ticks.values()),
        "runs": len(tick_runs),
        "runs_succeeded": status["SUCCESS"],
        "runs_failed": status["FAILURE"],
        "runs_unfinished": len(tick_runs) - status["SUCCESS"] - status["FAILURE"] - status["CANCELED"],
        "last_run_created_s": round(
            max((r.created for r in tick_runs), default=tick.timestamp()) - tick.timestamp(), 1
        ),
        "run_seconds_median": round(statistics.median(r.end - r.start for r in ended if r.start), 2) if ended else None,
        "other_runs": dict(Counter(r.kind for r in others)),
        "sites_stored": stored,
        "sites_healthy": len(healthy),
        "sites_not_stored": not_stored,
        **{k: v for k, v in cpu.items() if k != "seconds"},
        "window_s": cpu["seconds"],
        "simulator_cpu_s": round(sim_cpu, 2),
        "instance_bytes": size_after[0] - size_before[0],
        "instance_kb_per_site": round((size_after[0] - size_before[0]) / n / 1024, 1),
        "instance_bytes_checkpointed": size_after[1] - size_before[1],
        "instance_kb_per_site_checkpointed": round((size_after[1] - size_before[1]) / n / 1024, 1),
        **({
            "instance_db_bytes_before": db_before,
            "instance_db_bytes": db_after - db_before,
            "instance_db_kb_per_site": round((db_after - db_before) / n / 1024, 1),
            "instance_server_cpu_s": round(pg_cpu, 2),
        } if pg else {}),
        "load_at_tick": load_at_tick,
        "load_at_end": os.getloadavg()[0],
    }
    if pg:
        say(n, f"PostgreSQL: the database grew {measured['instance_db_kb_per_site']} KB/site "
               f"({measured['instance_db_bytes']:,} bytes; DAGSTER_HOME {measured['instance_kb_per_site']} "
               f"KB/site); the server used {pg_cpu:.2f} CPU s")
    if drained:
        say(n, f"tick {tick:%H:%M} drained in {measured['drain_s']} s: {len(tick_runs)} runs "
               f"({status['SUCCESS']} ok, {status['FAILURE']} failed), {stored}/{len(healthy)} sites stored "
               f"{newest}, {cpu['cpu_s']} CPU s, {measured['instance_kb_per_site']} KB/site")
    else:
        say(n, f"tick {tick:%H:%M} did NOT drain within {cap:.0f} s: {status['SUCCESS'] + status['FAILURE']}"
               f"/{len(tick_runs)} runs ended, {stored}/{len(healthy)} sites stored {newest}")
    return measured


def design_of(runs: int, sites: int) -> str:
    if sites > 1 and runs == 1:
        return "fleet"
    if runs >= sites - 1:
        return "per-site"
    return f"unknown ({runs} runs)"


# ---------------------------------------------------------------------------------------------
# Correctness


def stored_form(wire_time: str, wire_value: str | None) -> tuple:
    """A wire sample as the pipeline stores it: `value` the finite float of the wire string (else
    NULL), `raw_value` the wire string when it is not a finite number (NULL for JSON null)."""
    import math

    ts = datetime.fromisoformat(wire_time)
    try:
        number = None if wire_value is None else float(wire_value)
    except ValueError:
        number = None
    if number is not None and not math.isfinite(number):
        number = None
    return ts, number, (wire_value if number is None and wire_value is not None else None)


def verify(sim: SimulatorProcess, db_path: Path, broken: str | None, checks: list[tuple[str, list[str], list[str]]],
           limit: int) -> dict:
    """Per (partition key, sites that stored it, sites that did not): the stored sites' rows of the
    partition equal the ground truth; the others hold none of it; the broken site holds nothing.
    `limit` > 0 checks that many sites of each kind, spread over the list."""
    import duckdb

    from vitals_pipeline.windows import partition_start

    def sample(sites: list[str]) -> list[str]:
        return sites if limit <= 0 else sites[:: max(1, len(sites) // limit)][:limit]

    exact = rows = checked = unstored_checked = unstored_with_rows = 0
    mismatches: list[str] = []
    with duckdb.connect(str(db_path), read_only=True) as con:
        tables = {r[0] for r in con.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'timeseries'"
        ).fetchall()}

        def stored_rows(site: str, start: datetime, end: datetime) -> Counter:
            slug = schema_name(site)
            if slug not in tables:
                return Counter()
            return Counter(con.execute(
                f'SELECT point, ts, value, raw_value FROM "{slug}".timeseries WHERE ts >= ? AND ts < ?',
                [start.replace(tzinfo=None), end.replace(tzinfo=None)],
            ).fetchall())

        for key, stored_sites, other_sites in checks:
            start = partition_start(key)
            end = start + PARTITION
            for site in sample(stored_sites):
                truth = Counter((name, *stored_form(t, v)) for name, t, v in sim.ground_truth(site, start, end))
                stored = stored_rows(site, start, end)
                checked += 1
                rows += sum(truth.values())
                if stored == truth and truth:
                    exact += 1
                elif len(mismatches) < 10:
                    mismatches.append(
                        f"{site} {key}: {sum((truth - stored).values())} of {sum(truth.values())} samples "
                        f"missing or altered, {sum((stored - truth).values())} unexpected"
                    )
            for site in sample(other_sites):
                unstored_checked += 1
                unstored_with_rows += bool(stored_rows(site, start, end))
        broken_rows = None
        if broken is not None:
            slug = schema_name(broken)
            broken_rows = (
                con.execute(f'SELECT count(*) FROM "{slug}".timeseries').fetchone()[0] if slug in tables else 0
            )
    return {"sites_checked": checked, "sites_exact": exact, "rows_compared": rows, "mismatches": mismatches,
            "not_stored_checked": unstored_checked, "not_stored_with_rows": unstored_with_rows,
            "broken_site_rows": broken_rows}


# ---------------------------------------------------------------------------------------------
# Report


PREAMBLE = """## Fleet: one scheduled tick of N sites under a real daemon

Measured by bench/fleet.py: `dagster-daemon run` with the shipped dagster.yaml on a fresh
DAGSTER_HOME, the simulator in its own process (120 points a site, 0.15 s a data request, one
site failing), the history loaded beforehand so that the tick is a steady-state one. drain =
tick time -> the last of its runs ended (or how far it got when it did not drain within one tick
period + 60 s); stored = sites whose newest closed partition is materialized; CPU = the daemon's
whole process tree during the tick (daemon, code servers, run workers); idle = daemon + code
server CPU over a quiet window before the tick, % of one core; instance = DAGSTER_HOME growth
during the tick per site (every file, write-ahead logs included / the databases after a
checkpoint, without the logs); RSS = largest process / sum of the tree; exact = of the sites that
stored the newest partition, those whose rows of it in DuckDB equal the simulator's ground truth
(the others are checked to hold none of it); load = 1-min load average at the tick
(2 cores, shared). Design `(pg)`: the instance on PostgreSQL (deploy/postgres/dagster.yaml,
`--instance postgres`; a server on the same cores, fsync on, a fresh database per size); instance =
the database's growth during the tick per site (pg_database_size), DAGSTER_HOME's in brackets; CPU
and idle add the server's CPU during the tick and the quiet window (`+N server`), outside the
daemon's tree and its RSS.

"""
HEADER = (
    "| date | commit | design | sites | drain s | runs ok/failed | stored | CPU s | idle % core | "
    "instance KB/site | peak RSS MiB (max / sum) | exact | load | simulator |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(result: dict, commit: str) -> str:
    t = result["ticks"][0]
    drain = f"{t['drain_s']}" if t["drained"] else (
        f"not within {t['cap_s']:.0f} ({t['runs_succeeded'] + t['runs_failed']}/{t['runs']} runs ended)"
    )
    c = result["correctness"]
    sim = "site_status" if result["simulator"]["site_status_fault"] else "no site_status"
    unstored = f", {c['not_stored_with_rows']} not stored hold rows" if c["not_stored_with_rows"] else ""
    cpu, instance = f"{t['cpu_s']}", f"{t['instance_kb_per_site']} / {t['instance_kb_per_site_checkpointed']}"
    idle = f"{result['quiet']['pct_of_one_core']}"
    if "instance_db_kb_per_site" in t:
        # On PostgreSQL: the database's growth, DAGSTER_HOME's beside it; the server's CPU apart.
        cpu += f" (+{t['instance_server_cpu_s']} server)"
        instance = f"{t['instance_db_kb_per_site']} db (home {t['instance_kb_per_site']})"
        idle += f" (+{result['quiet']['server_pct_of_one_core']} server)"
    return (
        f"| {datetime.now(UTC):%Y-%m-%d} | {commit} | {result['design']} | {result['sites']} | {drain} | "
        f"{t['runs_succeeded']}/{t['runs_failed']} | {t['sites_stored']}/{t['sites_healthy']} | {cpu} | "
        f"{idle} | {instance} | "
        f"{t['peak_rss_single_mib']} / {t['peak_rss_sum_mib']} | {c['sites_exact']}/{c['sites_checked']}"
        f"{unstored} | "
        f"{t['load_at_tick']:.1f} | {sim}; broken: {result['broken_mode']} |"
    )


def kb_per_site(t: dict) -> str:
    if "instance_db_kb_per_site" in t:
        return f"{t['instance_db_kb_per_site']} db"
    return f"{t['instance_kb_per_site']} / {t['instance_kb_per_site_checkpointed']}"


def print_table(results: list[dict]) -> None:
    print()
    print(f"{'sites':>6} {'design':>9} {'drain s':>9} {'runs':>6} {'ok/fail':>8} {'stored':>10} {'CPU s':>7} "
          f"{'idle %':>7} {'KB/site':>15} {'RSS max/sum MiB':>16} {'exact':>10} {'load':>5}")
    for r in results:
        t = r["ticks"][0]
        drain = f"{t['drain_s']}" if t["drained"] else f">{t['cap_s']:.0f}"
        c = r["correctness"]
        print(f"{r['sites']:>6} {r['design']:>9} {drain:>9} {t['runs']:>6} "
              f"{t['runs_succeeded']:>4}/{t['runs_failed']:<3} {t['sites_stored']:>5}/{t['sites_healthy']:<4} "
              f"{t['cpu_s']:>7} {r['quiet']['pct_of_one_core']:>7} "
              f"{kb_per_site(t):>15} "
              f"{t['peak_rss_single_mib']:>7}/{t['peak_rss_sum_mib']:<8} "
              f"{c['sites_exact']:>5}/{c['sites_checked']:<4} {t['load_at_tick']:>5.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="50,100,300,500,1000", help="comma-separated fleet sizes")
    parser.add_argument("--points", type=int, default=120, help="points per site")
    parser.add_argument("--latency", type=float, default=0.15, help="seconds the simulator waits per data request")
    parser.add_argument("--broken-site", action="store_true", help="one site always fails")
    parser.add_argument("--ticks", type=int, default=1, help="consecutive ticks to measure per size")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "fleet.json"))
    parser.add_argument("--history-hours", type=float, default=3.0,
                        help="VITALS_PARTITIONS_START this long before the tick; loaded before the daemon starts")
    parser.add_argument("--warmup", type=float, default=45.0, help="seconds the daemon runs before the quiet window")
    parser.add_argument("--quiet", type=float, default=120.0,
                        help="seconds of the quiet window before the tick (one catch-up sensor interval)")
    parser.add_argument("--cap", type=float, default=None,
                        help="give up on a tick this long after it (default: one tick period + 60 s)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls of the process tree")
    parser.add_argument("--progress", type=float, default=15.0, help="seconds between progress lines")
    parser.add_argument("--verify", type=int, default=0, help="check this many sites against the ground truth (0: all)")
    parser.add_argument("--cron", default=None, help="VITALS_SCHEDULE_CRON for the pipeline (default: as shipped)")
    parser.add_argument("--any-minute", action="store_true",
                        help="also measure ticks in the first 10 minutes of an hour")
    parser.add_argument("--design", default=None, help="label of the design (default: from the runs of a tick)")
    parser.add_argument("--work-dir", default=None, help="folder for the DAGSTER_HOMEs and DuckDB files")
    parser.add_argument(
        "--code-server", action="store_true",
        help="the daemon uses a code server of its own (`dagster api grpc`, workspace.yaml) instead of "
             "starting one, which it replaces every 60 s",
    )
    parser.add_argument("--keep", action="store_true", help="keep each size's DAGSTER_HOME, DuckDB file and logs")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--instance", choices=INSTANCES, default=SQLITE_INSTANCE,
                        help="the Dagster instance's storage: the shipped SQLite files, or PostgreSQL "
                             "(deploy/postgres/dagster.yaml, a server started for the run, a database per size)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sites.split(",") if s.strip()]
    if args.cron:
        os.environ["VITALS_SCHEDULE_CRON"] = args.cron
        Cron(args.cron)  # fail here, not after the first prefill

    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    from bench.run import commit, record

    features = simulator_features()
    print(f"simulator: --site-count {'yes' if features.site_count else 'no (--sites)'}, site_status fault "
          f"{'yes' if features.site_status else 'no (the broken site is one the simulator does not serve)'}")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {os.cpu_count()} cores; {uptime}")
    meta = {"commit": commit(), "date": f"{datetime.now(UTC):%Y-%m-%d}", "cores": os.cpu_count(),
            "uptime_at_start": uptime, "args": vars(args)}
    results = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with pg_instances() if args.instance == PG_INSTANCE else nullcontext() as pg:
        for n in sizes:
            result = bench_size(n, args, features, pg)
            result["uptime_at_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            results.append(result)
            out.write_text(json.dumps({**meta, "results": results}, indent=2, default=str))
            if not args.no_record:
                record(HEADER, PREAMBLE, row(result, meta["commit"]))
    print_table(results)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
