"""A real Redis server for the tests of the Celery executor: the broker and result backend.

`redis_server` (session-scoped: one server per pytest process that runs such a test) starts
Debian's `redis-server` on a free loopback port with a password and no persistence, in a new
temporary folder, and stops it when the session ends (after failures too); it dies with the
pytest process if that is killed. The password is in a config file readable by the server only,
not on its command line.

`redis-server` comes from Debian's `redis-server` package, which .ci/run installs. Without it the
tests fail and say how to install it: no silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

# Redis shuts down on SIGINT as PostgreSQL does (nothing to save here): the same stop.
from vitals_pipeline_tests.postgres import _die_with_parent, _free_port, _stop

INSTALL_HINT = (
    "redis-server was not found on PATH or in /usr/bin: the tests of the Celery executor start a "
    "real Redis as the Celery broker. Install Debian's package: `sudo apt-get install "
    "redis-server` (`.ci/run` installs it on CI). No service is needed: the tests start a "
    "server of their own."
)
START_TIMEOUT_SECONDS = 30


def find_redis_server() -> Path | None:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    return Path(found) if found else None


@dataclass
class RedisServer:
    host: str
    port: int
    password: str
    log_path: Path

    def url(self, db: int = 0) -> str:
        """The URL as Celery takes it (VITALS_CELERY_BROKER_URL), password included."""
        return f"redis://:{self.password}@{self.host}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, password=self.password, db=db, socket_timeout=5
        )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@contextmanager
def running_redis(binary: Path) -> Iterator[RedisServer]:
    base = Path(tempfile.mkdtemp(prefix="vitals-redis-"))
    password = uuid.uuid4().hex
    log_path = base / "redis.log"
    process: subprocess.Popen | None = None
    try:
        for attempt in range(3):  # another process may take the free port before the server does
            port = _free_port()
            conf = base / "redis.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode yes\nrequirepass {password}\n"
                f"dir {base}\nlogfile {log_path}\n"
                # Thrown away after the session: no snapshots, no append-only file.
                'save ""\nappendonly no\n'
            )
            conf.chmod(0o600)
            process = subprocess.Popen(
                [str(binary), str(conf)],
                cwd=base,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            server = RedisServer("127.0.0.1", port, password, log_path)
            if _wait_until_answering(server, process):
                break
            process.wait(timeout=10)
            if "Address already in use" not in server.log_tail() or attempt == 2:
                raise RuntimeError(
                    f"redis-server did not start (exit {process.returncode}):\n{server.log_tail()}"
                )
        yield server
    finally:
        if process is not None:
            _stop(process)
        shutil.rmtree(base, ignore_errors=True)


def _wait_until_answering(server: RedisServer, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    client = server.client()
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
    _stop(process)
    raise RuntimeError(
        f"redis-server answered no PING in {START_TIMEOUT_SECONDS} s:\n{server.log_tail()}"
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with running_redis(binary) as server:
        yield server
