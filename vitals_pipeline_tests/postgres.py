"""A real PostgreSQL server for the tests of the instance on PostgreSQL.

`postgres_server` (session-scoped: one server per pytest process, so one per xdist worker that
runs such a test) runs `initdb` in a new temporary folder and starts `postgres` on a free
loopback port, TCP only, with password authentication. `pg_url` creates a fresh database per
test and gives its URL (password included, as DAGSTER_PG_URL takes it).

The server binaries come from Debian's `postgresql` package (/usr/lib/postgresql/*/bin), which
.ci/run installs. Without them the tests fail and say how to install them: no silent skip.
PostgreSQL refuses to run as root, so as root (CI) initdb and the server run as the `postgres`
user that the package creates (`nobody` where it does not exist). The server is stopped when the
session ends, after failures too, and dies with the pytest process if that is killed.

Durability is off (fsync, synchronous_commit, full_page_writes): the cluster is thrown away.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from vitals_pipeline.instance import PG_URL_SCHEME

BINARIES = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, postgres) were not found under "
    f"{BINARIES}: the tests of the Dagster instance on PostgreSQL start a real server. Install "
    "Debian's package: `sudo apt-get install postgresql` (`.ci/run` installs it on CI). No cluster "
    "or service is needed: the tests start a server of their own."
)
SUPERUSER = "vitals_test"
START_TIMEOUT_SECONDS = 60


def find_bindir(pattern: str = BINARIES) -> Path | None:
    """The newest PostgreSQL version's bin folder holding initdb and postgres, if any."""
    found = [
        d for d in Path("/").glob(pattern.lstrip("/")) if (d / "initdb").exists() and (d / "postgres").exists()
    ]

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", d.parent.name)) or (0,)

    return max(found, key=version, default=None)


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    log_path: Path

    def url(self, database: str) -> str:
        """The URL as DAGSTER_PG_URL takes it (SQLAlchemy's, with the psycopg2 driver)."""
        return f"{PG_URL_SCHEME}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database,
            connect_timeout=5,
        )

    def admin(self, sql: str) -> None:
        """Run `sql` outside a transaction (CREATE/DROP DATABASE need that)."""
        con = self.connect()
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(sql)
        finally:
            con.close()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _server_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root and there is no `postgres` or `nobody` user to run PostgreSQL as")


def _die_with_parent() -> None:
    # Runs in the child after its user switch (which would clear it): if the pytest process is
    # killed without running its finalizers, the server gets SIGQUIT (immediate shutdown).
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_postgres(bindir: Path, *, durable: bool = False) -> Iterator[PostgresServer]:
    """initdb in a new temporary folder, start the server, yield it; stop it and remove the
    folder on the way out. `durable`: fsync and synchronous commit on, as in production (the
    benchmarks); off by default (the tests throw the cluster away)."""
    owner = _server_user()
    as_owner = {"user": owner[0], "group": owner[1], "extra_groups": []} if owner else {}
    # Under the system's temporary folder (world-traversable), not pytest's (root-only): the
    # server's user must reach its data folder.
    base = Path(tempfile.mkdtemp(prefix="vitals-pg-"))
    password = uuid.uuid4().hex
    process: subprocess.Popen | None = None
    try:
        if owner:
            os.chown(base, *owner)
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        if owner:
            os.chown(pwfile, *owner)
        data = base / "data"
        log_path = base / "postgres.log"
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=base, capture_output=True, text=True, timeout=120, **as_owner,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {init.returncode}):\n{init.stdout}\n{init.stderr}")
        pwfile.unlink()
        for attempt in range(3):  # another process may take the free port before the server does
            port = _free_port()
            with open(log_path, "ab") as log:
                process = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                     "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                     *([] if durable else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                                           "-c", "full_page_writes=off"]),
                     "-c", "max_connections=200"],
                    cwd=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent, **as_owner,
                )
            server = PostgresServer("127.0.0.1", port, SUPERUSER, password, log_path)
            if _wait_until_accepting(server, process):
                break
            process.wait(timeout=10)
            if "could not bind" not in server.log_tail() or attempt == 2:
                raise RuntimeError(f"PostgreSQL did not start (exit {process.returncode}):\n{server.log_tail()}")
        yield server
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(base, ignore_errors=True)


def _wait_until_accepting(server: PostgresServer, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            server.connect().close()
            return True
        except psycopg2.OperationalError:
            time.sleep(0.1)
    _stop(process)
    raise RuntimeError(f"PostgreSQL accepted no connection in {START_TIMEOUT_SECONDS} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, no waiting for clients
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with running_postgres(bindir) as server:
        yield server


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the test server (dropped after the test)."""
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    postgres_server.admin(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)
    # FORCE: a daemon's or run worker's connection may outlive the test's processes by a moment.
    postgres_server.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
