"""CPU time and memory of a process tree (a root and every descendant), polled with psutil.

Run workers live for seconds, so a poll misses the end of their lives. Two figures per window:

- `cpu_s`, by conservation: over every process in the tree, own CPU plus the CPU of the children
  it has reaped (`cutime`/`cstime`). A child that exits and is waited for by a process of the tree
  moves its whole CPU time into its parent's reaped figure, so the tree's sum only grows by the
  CPU actually spent. Exact for every process reaped inside the tree (run workers are joined by
  the code server that spawned them); a process reaped outside it (re-parented to init) drops out.
- `cpu_polled_s`, the last value seen per process (own CPU only): a lower bound. A process that
  exits loses at most one poll interval of CPU (it cannot use more than a core), one that starts
  and ends between two polls is not seen at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psutil

# (pid, create_time): a pid can be reused within a run of the benchmark.
ProcKey = tuple[int, float]


@dataclass(frozen=True)
class ProcSample:
    own: float  # user + system CPU seconds of the process itself
    reaped: float  # user + system CPU seconds of its children it has waited for
    rss: int
    role: str


def role_of(cmdline: list[str], is_root: bool) -> str:
    """What a process of a `dagster-daemon run` tree is, from its command line."""
    if is_root:
        return "daemon"
    text = " ".join(cmdline)
    if "api grpc" in text or "resource_tracker" in text:
        # The code server and its multiprocessing helper: both serve the daemon, not a run.
        return "code server"
    if "spawn_main" in text or "execute_run" in text or "execute_step" in text:
        return "run worker"
    if "watch_orphans" in text or (cmdline and cmdline[0].endswith("tail")):
        return "run worker"  # a run worker's compute-log helpers
    return "other"


class TreeSampler:
    """Polls the tree under `root_pid`; `snapshot()` is the state of every live process now."""

    def __init__(self, root_pid: int, code_server_pid: int | None = None) -> None:
        self.root = psutil.Process(root_pid)
        # A code server the daemon did not start (`dagster api grpc`, bench/fleet.py
        # --code-server): its tree is sampled too, as the daemon's code server.
        self.code_server = psutil.Process(code_server_pid) if code_server_pid else None
        self._roles: dict[ProcKey, str] = {}

    def snapshot(self) -> dict[ProcKey, ProcSample]:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return {}
        if self.code_server is not None:
            try:
                procs += [self.code_server, *self.code_server.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        found: dict[ProcKey, ProcSample] = {}
        for proc in procs:
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    rss = proc.memory_info().rss
                    role = self._roles.get(key)
                    if role is None:
                        role = self._roles[key] = role_of(proc.cmdline(), proc.pid == self.root.pid)
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            found[key] = ProcSample(
                own=times.user + times.system,
                reaped=times.children_user + times.children_system,
                rss=rss,
                role=role,
            )
        return found


@dataclass
class CpuWindow:
    """One measured interval: open it with the snapshot at its start, feed it every poll, close it
    with the snapshot at its end."""

    start: dict[ProcKey, ProcSample]
    poll_seconds: float
    began: float = field(default_factory=time.monotonic)
    last: dict[ProcKey, ProcSample] = field(default_factory=dict)
    peak_rss_single: int = 0
    peak_rss_single_role: str = ""
    peak_rss_sum: int = 0

    def __post_init__(self) -> None:
        self.update(self.start)

    def update(self, snapshot: dict[ProcKey, ProcSample]) -> None:
        self.last.update(snapshot)
        total = 0
        for sample in snapshot.values():
            total += sample.rss
            if sample.rss > self.peak_rss_single:
                self.peak_rss_single, self.peak_rss_single_role = sample.rss, sample.role
        self.peak_rss_sum = max(self.peak_rss_sum, total)

    def close(self, end: dict[ProcKey, ProcSample]) -> dict[str, float | int | str]:
        self.update(end)
        seconds = time.monotonic() - self.began
        conserved = sum(s.own + s.reaped for s in end.values()) - sum(
            s.own + s.reaped for s in self.start.values()
        )
        polled: dict[str, float] = {}
        for key, sample in self.last.items():
            before = self.start.get(key)
            spent = sample.own - (before.own if before else 0.0)
            polled[sample.role] = polled.get(sample.role, 0.0) + spent
        exited = sum(1 for key in self.last if key not in end)
        return {
            "seconds": round(seconds, 1),
            "cpu_s": round(conserved, 2),
            "cpu_polled_s": round(sum(polled.values()), 2),
            "cpu_polled_by_role_s": {role: round(v, 2) for role, v in sorted(polled.items())},
            "processes_seen": len(self.last),
            "processes_exited": exited,
            # What the polled figure may miss for the processes it saw end (one core each).
            "cpu_polled_missed_at_most_s": round(exited * self.poll_seconds, 1),
            "peak_rss_single_mib": round(self.peak_rss_single / 2**20),
            "peak_rss_single_role": self.peak_rss_single_role,
            "peak_rss_sum_mib": round(self.peak_rss_sum / 2**20),
        }


def own_cpu(snapshot: dict[ProcKey, ProcSample], roles: set[str]) -> float:
    """Own CPU seconds of the processes of `snapshot` with one of `roles`."""
    return sum(s.own for s in snapshot.values() if s.role in roles)
