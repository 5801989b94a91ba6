"""Runs on the Celery executor across separate worker processes, for the tests.

- `Worker`: one `celery -A dagster_celery.app worker` process (one step at a time), with its own
  working directory, its own DAGSTER_HOME and an environment built from scratch: it shares with
  the test only what several machines would share (the Dagster instance on PostgreSQL, the Redis
  broker, the warehouse, the ACE API). Its settings module is the shipped
  deploy/celery/dagster_celery_config.py. Killed with its whole process group, as a machine dies.
- `DuckDBFileWarehouse`: the warehouse every process writes, and how the test reads it back.
  Until the shared warehouse exists this is the DuckDB file on this one host (both workers open
  the same path; the `duckdb` pool of 1 lets one step write at a time). A shared warehouse
  replaces this object: its `env()` and `stored()` are all the tests use of it.
- `run_on_celery`: one run of the fleet job (as a schedule tick or catch-up RunRequest asks for
  it) orchestrated in the calling process, its steps executed by the workers.
- `step_executions`: from the run's event log, which process (pid) and which worker started and
  finished each step.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import dagster as dg
import psutil

from vitals_pipeline_tests.helpers import QUIET, Row, stored_rows

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CELERY_SETTINGS_DIR = REPO / "deploy" / "celery"
SHIPPED_PG_SETTINGS = REPO / "deploy" / "postgres" / "dagster.yaml"
READY_TIMEOUT_SECONDS = 120
# The engine event a worker records when it takes a step names it under this metadata label.
WORKER_LABEL = "Celery worker"


@dataclass
class DuckDBFileWarehouse:
    """The DuckDB file on this host, opened by every worker at the same path."""

    path: Path

    def env(self) -> dict[str, str]:
        return {"VITALS_DUCKDB_PATH": str(self.path)}

    def stored(self, site: str, start: datetime, end: datetime) -> list[Row]:
        return stored_rows(self.path, site, start, end)


@dataclass(eq=False)  # compared and hashed by identity: one object per worker
class Worker:
    name: str
    workdir: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None
    pids_seen: set[int] = field(default_factory=set)

    @property
    def log_path(self) -> Path:
        return self.workdir / "worker.log"

    @property
    def node(self) -> str:
        """Celery's name of the worker, as its engine events carry it."""
        return f"{self.name}@{socket.gethostname()}"

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "celery"),
                    "-A",
                    "dagster_celery.app",
                    "worker",
                    "-n",
                    self.node,
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            if f"{self.node} ready." in self.log_path.read_text(errors="replace"):
                self.note_pids()
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"worker {self.name} not ready in {READY_TIMEOUT_SECONDS} s:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def note_pids(self) -> set[int]:
        """The worker's processes now (its main process and the pool process that runs steps);
        remembered, so that steps are attributed after the worker is gone too."""
        if self.alive():
            main = psutil.Process(self.process.pid)
            self.pids_seen |= {main.pid, *(child.pid for child in main.children(recursive=True))}
        return self.pids_seen

    def kill(self) -> None:
        """SIGKILL to every process of the worker at once: a machine that dies."""
        self.note_pids()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (what a service manager sends), SIGKILL if it hangs."""
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def new_worker(name: str, base: Path, shared_env: Mapping[str, str]) -> Worker:
    """A worker in a folder of its own, with an environment of its own: nothing inherited from
    the test process but the shared settings (instance, broker, warehouse, API, sites)."""
    workdir = base / name
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(SHIPPED_PG_SETTINGS, home / "dagster.yaml")
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "DAGSTER_HOME": str(home),
        # The workers' settings module (deploy/celery/dagster_celery_config.py).
        "PYTHONPATH": str(CELERY_SETTINGS_DIR),
        **shared_env,
    }
    return Worker(name, workdir, env)


def start_workers(workers: Sequence[Worker]) -> None:
    """Start them all, then wait for each: their start-ups (seconds each) overlap."""
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    for worker in workers:
        worker.wait_ready(deadline)


def stop_workers(workers: Sequence[Worker]) -> None:
    for worker in workers:
        if worker.alive():
            os.killpg(worker.process.pid, signal.SIGTERM)  # all at once: their shutdowns overlap
    for worker in workers:
        worker.stop()


def run_on_celery(
    instance: dg.DagsterInstance, request: dg.RunRequest, **tags: str
) -> dg.ExecuteJobResult:
    """One run of the fleet job for `request` (its sites and partition range), orchestrated here,
    each step sent to the Celery workers (the job's executor, VITALS_EXECUTOR=celery)."""
    job = dg.build_reconstructable_job(
        "vitals_pipeline_tests.celery_job", "fleet_job", reconstructor_working_directory=str(REPO)
    )
    return dg.execute_job(
        job,
        instance,
        run_config=QUIET,
        tags={**request.tags, **tags},
        asset_selection=list(request.asset_selection),
        raise_on_error=False,
    )


@dataclass
class StepEvent:
    kind: str  # "start", "success", "failure", "taken" (a worker's engine event)
    pid: int | None
    worker: str | None = None  # Celery's node name, on "taken"


def step_executions(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[StepEvent]]:
    """Per step key, in order: which process started / finished it, which worker took it."""
    kinds = {
        dg.DagsterEventType.STEP_START: "start",
        dg.DagsterEventType.STEP_SUCCESS: "success",
        dg.DagsterEventType.STEP_FAILURE: "failure",
    }
    found: dict[str, list[StepEvent]] = {}
    for entry in instance.all_logs(run_id, of_type={*kinds, dg.DagsterEventType.ENGINE_EVENT}):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type in kinds:
            found.setdefault(event.step_key, []).append(
                StepEvent(kinds[event.event_type], event.pid)
            )
        else:
            metadata = event.engine_event_data.metadata if event.engine_event_data else {}
            if WORKER_LABEL in metadata:
                found.setdefault(event.step_key, []).append(
                    StepEvent("taken", event.pid, str(metadata[WORKER_LABEL].value))
                )
    return found


def owner(event: StepEvent, workers: Sequence[Worker]) -> Worker | None:
    """The worker an event came from: by its process, or by the name the worker recorded."""
    return next(
        (
            w
            for w in workers
            if event.pid in w.pids_seen or (event.worker and event.worker == w.node)
        ),
        None,
    )


def attributed(
    events: Sequence[StepEvent], workers: Sequence[Worker]
) -> list[tuple[str, str | None]]:
    """(kind, worker name) of each event of a step, in order."""
    return [(e.kind, getattr(owner(e, workers), "name", None)) for e in events]
