"""An ACE session: what the clients of every site of one run share.

    with AceSession(url, key, max_in_flight=16) as session:         # one per run
        client = session.client(deadline=time.monotonic() + 30)     # one per site (any thread)
        pieces = client.fetch_pieces(site, start, end, convert, finish, stats)
        session.gate_stats                                          # figures for the run

Shared: one connection pool (sized to the gate, so connections are reused from site to site
instead of opened per site) and one `RequestGate` (a cap on requests in flight, and a 429 pauses
every site). Per site: the client's retries, cursor, page size and deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from vitals_pipeline.ace import wire
from vitals_pipeline.ace.client import (
    MISSING_KEY_MESSAGE,
    AceAuthError,
    AceClient,
    RetrySettings,
    http_pool,
)
from vitals_pipeline.ace.gate import GateStats, RequestGate


class AceSession:
    """One connection pool and one `RequestGate` for all the sites of a run. Thread-safe: any
    number of threads may call `client()` and use their clients at once.

    max_in_flight: requests in flight at once across every client (None: no cap). Ignored when
    a `gate` is given (its own cap counts).
    page_size, timeout, retry, sleep: what every client starts with (see AceClient).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_in_flight: int | None = 16,
        page_size: int = wire.DEFAULT_PAGE_SIZE,
        timeout: float = 60.0,
        retry: RetrySettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        gate: RequestGate | None = None,
    ) -> None:
        if not api_key:
            raise AceAuthError(MISSING_KEY_MESSAGE)
        self.base_url = base_url.rstrip("/")
        self.page_size = wire.check_page_size(page_size)
        self.timeout = timeout
        self.retry = retry or RetrySettings()
        self.gate = gate if gate is not None else RequestGate(max_in_flight)
        self._sleep = sleep
        cap = self.gate.max_in_flight
        # The gate never lets more than `cap` requests out, so `cap` connections are enough
        # and all of them are worth keeping alive for the next site.
        limits = (
            httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
            if cap is not None
            else httpx.Limits(max_connections=None, max_keepalive_connections=64)
        )
        self._http = http_pool(self.base_url, api_key, timeout, limits)
        self._lock = threading.Lock()
        self._clients = 0
        self._closed = False

    def __repr__(self) -> str:  # never show the key
        return f"AceSession({self.base_url!r}, gate={self.gate!r})"

    def client(
        self,
        *,
        deadline: float | None = None,
        budget_seconds: float | None = None,
        page_size: int | None = None,
        seed: int | None = None,
    ) -> AceClient:
        """A client for one site: own retry state, cursor and page size; the session's pool and
        gate. `deadline` (a `time.monotonic()` value) or `budget_seconds` (from now) is the
        site's time budget; neither means none. Closing the client leaves the pool open."""
        if deadline is not None and budget_seconds is not None:
            raise ValueError("give a client a deadline or a budget_seconds, not both")
        if budget_seconds is not None:
            deadline = time.monotonic() + budget_seconds
        with self._lock:
            if self._closed:
                raise RuntimeError("AceSession.client() after the session was closed")
            self._clients += 1
        return AceClient(
            self.base_url,
            page_size=page_size or self.page_size,
            timeout=self.timeout,
            retry=self.retry,
            sleep=self._sleep,
            seed=seed,
            deadline=deadline,
            gate=self.gate,
            http=self._http,
        )

    @property
    def clients(self) -> int:
        """How many clients the session has handed out."""
        with self._lock:
            return self._clients

    @property
    def gate_stats(self) -> GateStats:
        """The gate's figures so far (requests, waits, 429 pauses, peak in flight)."""
        return self.gate.stats

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._http.close()

    def __enter__(self) -> AceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
