"""An httpx client for the ACE IoT API, built to its real (observed) behaviour.

- The cursor is computed here, never taken from the server (ACE's cursor repeats a page forever
  when a page starts and ends inside one timestamp).
- Reads are retried with exponential backoff + jitter inside a total time budget, on connection
  and read errors, truncated or non-JSON bodies, 429 (Retry-After honoured) and 5xx; never on
  400/401/403/404. ACE answers an invalid key with a 500: retried once, then reported as a key
  problem.
- The API key travels only in the Authorization header: it is never put in a message.
- Fleets: the clients of one run (`AceSession`) share one connection pool and one
  `RequestGate` (a cap on requests in flight, and a 429 pauses every site); each client may have
  a deadline (the site's time budget), after which it raises AceBudgetExceeded.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from urllib.parse import quote

import httpx
import orjson
import pyarrow as pa
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from vitals_pipeline.ace import wire
from vitals_pipeline.ace.gate import RequestGate
from vitals_pipeline.ace.parse import WIRE_SCHEMA, Page, PageFormatError, parse_page

log = logging.getLogger("vitals_pipeline.ace")
T = TypeVar("T")
U = TypeVar("U")

INVALID_KEY_MESSAGE = "An unhandled exception occurred."
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# After this many truncated bodies in a row the page size is stepped down.
TRUNCATIONS_BEFORE_SHRINK = 2
# Attempts when no connection can be made at all (refused, unknown host), ~1 s in all.
CONNECT_ATTEMPTS = 3
MISSING_KEY_MESSAGE = "no ACE API key: set ACE_API_KEY to your ACE token (Flightdeck > API keys)"


class AceError(Exception):
    """Something ACE answered (or failed to answer) that a retry will not fix."""


class AceAuthError(AceError):
    """Missing, invalid or expired API key."""


class AceNotFoundError(AceError):
    """Unknown site (ACE answers 403) or unknown point/route (404)."""


class AceRequestError(AceError):
    """ACE refused the request's parameters (400)."""


class AceUnavailableError(AceError):
    """Transient failures persisted through every retry within the time budget."""


class AceUnreachableError(AceUnavailableError):
    """No connection at all (refused, unknown host): a wrong ACE_API_URL or no network. Not
    worth minutes of retries: a few quick attempts, then this."""


class AceProtocolError(AceError):
    """ACE broke its own paging contract (e.g. the same page twice)."""


class AceBudgetExceeded(AceError):
    """The site's time budget (`AceClient(deadline=...)`) ran out before its fetch finished.

    Permanent for this run only: the next tick or the catch-up fetches the window again.
    """


class _Transient(Exception):
    """One attempt failed in a way a retry may fix."""

    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        truncated: bool = False,
        unreachable: bool = False,
        status: int | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.truncated = truncated
        self.unreachable = unreachable


@dataclass
class FetchStats:
    """What talking to ACE cost for one fetch (becomes Dagster metadata)."""

    pages: int = 0
    requests: int = 0
    retries: int = 0
    api_seconds: float = 0.0  # sending and reading, not waiting at the gate
    bytes: int = 0
    page_size: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    gate_wait_seconds: float = 0.0  # waiting at the run's RequestGate (a slot, a 429 pause)

    def merge(self, other: FetchStats) -> None:
        self.pages += other.pages
        self.requests += other.requests
        self.retries += other.retries
        self.api_seconds += other.api_seconds
        self.gate_wait_seconds += other.gate_wait_seconds
        self.bytes += other.bytes
        for reason, n in other.retry_reasons.items():
            self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + n


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 8
    budget_seconds: float = 300.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff_seconds(attempt: int, settings: RetrySettings, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2**(attempt-1))]."""
    ceiling = min(settings.max_backoff, settings.initial_backoff * 2 ** max(0, attempt - 1))
    return rng.uniform(ceiling / 2, ceiling)


class CursorTracker:
    """The next cursor, computed from the rows seen rather than taken from ACE.

    Rows sharing one time are ordered by name and unique per point, so the number of distinct
    names seen so far at the newest time is exactly how many rows of that time to skip. Counting
    distinct names (not rows) also survives a server that repeats a row across pages.
    """

    def __init__(self) -> None:
        self._time: str | None = None
        self._names: set[str] = set()

    def advance(self, columns: pa.RecordBatch) -> wire.Cursor:
        times = columns.column(1)
        names = columns.column(0)
        last = times[len(times) - 1].as_py()
        if last != self._time:
            self._time, self._names = last, set()
        i = len(times) - 1
        while i >= 0 and times[i].as_py() == last:
            self._names.add(names[i].as_py())
            i -= 1
        return wire.Cursor(wire.parse_wire_time(last), len(self._names))


def http_pool(
    base_url: str, api_key: str, timeout: float, limits: httpx.Limits | None = None
) -> httpx.Client:
    """The httpx client (connection pool) that carries the key in its Authorization header."""
    return httpx.Client(
        base_url=base_url.rstrip("/") + "/",
        headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=True,
        limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )


class AceClient:
    """A synchronous ACE API client for one site's fetches. Use as a context manager, or call
    close().

    Alone (`AceClient(url, key)`) it has its own connection pool and no gate. For a fleet, an
    `AceSession` hands out one client per site that share the session's pool and `RequestGate`
    (`http=` and `gate=`); such a client does not close the pool.

    deadline: a `time.monotonic()` value: the site's time budget. Every request's timeout is
    capped by the time left, no retry sleeps past it, a gate wait stops at it, and once it is
    reached the client raises `AceBudgetExceeded`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        page_size: int = wire.DEFAULT_PAGE_SIZE,
        timeout: float = 60.0,
        retry: RetrySettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
        deadline: float | None = None,
        gate: RequestGate | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        if http is not None and api_key:
            raise ValueError(
                "give AceClient an api_key or a shared http pool (which carries it), not both"
            )
        if http is None and not api_key:
            raise AceAuthError(MISSING_KEY_MESSAGE)
        self.page_size = wire.check_page_size(page_size)
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetrySettings()
        self.timeout = timeout
        self.deadline = deadline
        self.gate = gate
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._owns_http = http is None
        self._http = http if http is not None else http_pool(self.base_url, api_key or "", timeout)
        # How far this client got, for the message when its budget runs out (several threads
        # of fetch_pieces report here).
        self._started = time.monotonic()
        self._progress_lock = threading.Lock()
        self._pages = 0
        self._requests = 0
        self._last_error: str | None = None

    def __repr__(self) -> str:  # never show the key
        return f"AceClient({self.base_url!r}, page_size={self.page_size})"

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------

    def _get(
        self,
        path: str,
        params: dict | Callable[[], dict],
        what: str,
        stats: FetchStats,
        parse: Callable[[bytes], object] = orjson.loads,
    ):
        """GET `path` with retries; `parse` turns the body into a result or raises PageFormatError.

        `params` may be a callable so that an attempt after a page-size shrink asks for the
        smaller size. The attempts and their retry decisions are `_Call`'s.
        """
        call = _Call(self, path, params, what, stats, parse)
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.max_attempts)
            | stop_after_delay(self.retry.budget_seconds)
            | call.stop,
            wait=call.delay,
            retry=retry_if_exception_type(_Transient),
            before_sleep=call.before_retry,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(call.attempt)
        except _Transient as exc:
            if call.out_of_time:
                raise self._budget_exceeded(
                    what, "its next retry would start after the deadline"
                ) from None
            if exc.unreachable:
                raise AceUnreachableError(
                    f"{what}: cannot connect to ACE at {self.base_url} ({exc.reason}; "
                    f"{stats.retries + 1} attempts). Check ACE_API_URL (host and port) and that "
                    "this machine can reach it, then re-run the window."
                ) from None
            raise AceUnavailableError(
                f"{what}: ACE did not answer usably after {stats.retries + 1} attempts within "
                f"{self.retry.budget_seconds:.0f}s (last: {exc.reason}). Check ACE_API_URL "
                f"({self.base_url}) and ACE's status, then re-run the window."
            ) from None

    def _request(
        self, path: str, query: dict, what: str, stats: FetchStats | None = None
    ) -> httpx.Response:
        """One GET through the gate, its body read, its timeout capped by the time left.

        The gate slot is held from send until the body is read: that is what loads ACE. `stats`
        gets the time waited at the gate and the time the request took, apart.
        """
        self._time_left_or_raise(what)
        if self.gate is not None:
            waited = time.perf_counter()
            admitted = self.gate.acquire(self.deadline)
            if stats is not None:
                stats.gate_wait_seconds += time.perf_counter() - waited
            if not admitted:
                raise self._budget_exceeded(
                    what, "waiting for a request slot or for the end of the run's 429 pause"
                )
        started = time.perf_counter()
        try:
            timeout = self._request_timeout(what)
            with self._progress_lock:
                self._requests += 1
            return self._http.get(path, params=query, timeout=timeout)
        finally:
            if stats is not None:
                stats.api_seconds += time.perf_counter() - started
            if self.gate is not None:
                self.gate.release()

    def _request_timeout(self, what: str) -> httpx.Timeout:
        limit = self.timeout
        if self.deadline is not None:
            limit = min(limit, self._time_left_or_raise(what))
        return httpx.Timeout(limit, connect=min(limit, 10.0))

    def _time_left_or_raise(self, what: str) -> float:
        """Seconds left before the deadline (inf without one); AceBudgetExceeded when none."""
        if self.deadline is None:
            return float("inf")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._budget_exceeded(what, "no time left to send the next request")
        return left

    def _note_page(self) -> None:
        with self._progress_lock:
            self._pages += 1

    def _note_error(self, reason: str) -> None:
        with self._progress_lock:
            self._last_error = reason

    def _budget_exceeded(self, what: str, why: str) -> AceBudgetExceeded:
        budget = (self.deadline or self._started) - self._started
        with self._progress_lock:
            pages, requests, last = self._pages, self._requests, self._last_error
        return AceBudgetExceeded(
            f"{what}: the site's time budget of {budget:.1f}s ran out ({why}) after "
            f"{pages} page(s) and {requests} request(s) (last error: {last or 'none'}). "
            "The window is fetched again by the next tick (or the catch-up run); if the site "
            "is always this slow, give it a larger budget."
        )

    # -- endpoints ----------------------------------------------------------------------------

    def site(self, site: str) -> dict:
        return self._get(f"sites/{_segment(site)}", {}, f"site {site!r}", FetchStats())

    def configured_points(self, site: str, per_page: int = 1000) -> list[dict]:
        """Every point configured for collection at `site`, across all pages."""
        wire.check_per_page(per_page)
        points: list[dict] = []
        page = 1
        stats = FetchStats()
        while True:
            doc = self._get(
                f"sites/{_segment(site)}/configured_points",
                {"page": page, "per_page": per_page},
                f"configured points of site {site!r} (page {page})",
                stats,
            )
            items = doc.get("items") or []
            points.extend(items)
            pages = doc.get("pages")
            if not items or len(items) < per_page or (pages is not None and page >= pages):
                return points
            page += 1

    def iter_timeseries_pages(
        self, site: str, start: datetime, end: datetime, stats: FetchStats | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Raw readings of `site` for [start, end), page by page, as wire columns.

        Rows may include ones outside the window and duplicates (filtered later, once per run).
        """
        stats = stats if stats is not None else FetchStats()
        stats.page_size = self.page_size
        path = f"sites/{_segment(site)}/timeseries/paginated"
        window = f"[{wire.format_wire_time(start)}, {wire.format_wire_time(end)})"
        base = {
            "start_time": wire.format_wire_time(start),
            "end_time": wire.format_wire_time(end),
            "raw_data": "true",
        }
        tracker = CursorTracker()
        cursor: wire.Cursor | None = None
        previous_signature = None
        while True:
            query = dict(base)
            if cursor is not None:
                query["cursor"] = cursor.encode()
            page: Page = self._get(
                path,
                lambda q=query: {**q, "page_size": self.page_size},
                f"timeseries of site {site!r} for {window} (page {stats.pages + 1})",
                stats,
                parse=parse_page,
            )
            if page.rows == 0:
                return
            signature = _signature(page.columns)
            if signature == previous_signature:
                raise AceProtocolError(
                    f"timeseries of site {site!r} for {window}: ACE returned the same page twice "
                    f"(cursor {cursor}); stopping rather than looping. Report it to ACE; a smaller "
                    "ACE_PAGE_SIZE may avoid it."
                )
            previous_signature = signature
            stats.pages += 1
            self._note_page()
            yield page.columns
            if not page.has_more:
                return
            cursor = tracker.advance(page.columns)

    def weather(self, site: str, stats: FetchStats | None = None) -> dict | None:
        """The site's current weather: `{"weather": {"temp": {"name", "value", "time"}, ...}}`.

        None when the site has no weather feed: ACE then answers 404 with the same shape and every
        member null. Any other 404 (an HTML page: a wrong ACE_API_URL) and the 403 of an unknown
        site raise AceNotFoundError as usual. `_get` keeps no error body, so a 404 is confirmed by
        reading the body once more (one extra request, only for sites without a feed; through the
        gate and within the deadline like any other).
        """
        path = f"sites/{_segment(site)}/weather"
        stats = stats if stats is not None else FetchStats()
        try:
            return self._get(path, {}, f"weather of site {site!r}", stats)
        except AceNotFoundError:
            try:
                stats.requests += 1
                response = self._request(path, {}, f"weather of site {site!r}", stats)
                doc = orjson.loads(response.content) if response.status_code == 404 else None
            except (httpx.HTTPError, orjson.JSONDecodeError):
                doc = None
            members = doc.get("weather") if isinstance(doc, dict) else None
            if isinstance(members, dict) and all(v is None for v in members.values()):
                return None
            raise

    def fetch_timeseries(
        self, site: str, start: datetime, end: datetime, stats: FetchStats | None = None
    ) -> pa.Table:
        """All raw readings of `site` for [start, end) as one wire table (WIRE_SCHEMA)."""
        batches = list(self.iter_timeseries_pages(site, start, end, stats))
        return pa.Table.from_batches(batches, schema=WIRE_SCHEMA)

    def fetch_pieces(
        self,
        site: str,
        start: datetime,
        end: datetime,
        convert: Callable[[pa.RecordBatch], T],
        finish: Callable[[list[T], datetime, datetime], U],
        stats: FetchStats | None = None,
        *,
        workers: int = 2,
        chunk: timedelta = timedelta(hours=2),
    ) -> list[U]:
        """[start, end) cut into `chunk`-sized sub-windows, in time order: for each, `finish` of
        its pages (each passed through `convert` as it arrives) and its [lo, hi).

        The sub-windows are fetched by `workers` threads, each with its own cursor: while one
        thread parses a page (holding the GIL), another waits on the network (not holding it).
        Measured on a 2-core machine: this overlap, not a faster parser, is what brings a day's
        fetch close to the download floor. `finish` runs in the fetching thread too, so a
        sub-window's pages can be combined and cleaned while the next ones download.
        """
        stats = stats if stats is not None else FetchStats()
        bounds = [start]
        while bounds[-1] + chunk < end:
            bounds.append(bounds[-1] + chunk)
        bounds.append(end)
        pieces = list(zip(bounds, bounds[1:], strict=False))
        piece_stats = [FetchStats() for _ in pieces]

        def fetch(i: int) -> U:
            lo, hi = pieces[i]
            pages = [convert(page) for page in self.iter_timeseries_pages(site, lo, hi, piece_stats[i])]
            return finish(pages, lo, hi)

        if len(pieces) == 1 or workers <= 1:
            results = [fetch(i) for i in range(len(pieces))]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ace-fetch") as pool:
                results = list(pool.map(fetch, range(len(pieces))))
        for part in piece_stats:
            stats.merge(part)
        stats.page_size = self.page_size
        return results


class _Call:
    """One GET of an `AceClient` with its retries: the state they share, and the hooks the
    retry loop (tenacity) calls: `attempt`, `delay`, `stop`, `before_retry`."""

    def __init__(
        self,
        client: AceClient,
        path: str,
        params: dict | Callable[[], dict],
        what: str,
        stats: FetchStats,
        parse: Callable[[bytes], object],
    ) -> None:
        self.client = client
        self.path = path
        self.params = params
        self.what = what
        self.stats = stats
        self.parse = parse
        self.bad_key_answers = 0
        self.truncations = 0  # truncated bodies in a row
        self.out_of_time = False  # stopped because the next retry would pass the deadline

    def attempt(self):
        """One request; its result, or _Transient (retry) or an AceError (do not)."""
        query = self.params() if callable(self.params) else self.params
        self.stats.requests += 1
        try:
            response = self.client._request(self.path, query, self.what, self.stats)
            body = response.content
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            # RemoteProtocolError (body cut off mid-stream) is a TransportError too.
            raise self._failed(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                truncated=isinstance(exc, httpx.RemoteProtocolError),
                unreachable=isinstance(exc, httpx.ConnectError),
            ) from exc
        self.stats.bytes += len(body)
        return self._result(response, body)

    def _result(self, response: httpx.Response, body: bytes):
        status = response.status_code
        if status == 200:
            try:
                return self.parse(body)
            except (PageFormatError, orjson.JSONDecodeError) as exc:
                raise self._failed(f"unreadable 200 body: {exc}", truncated=True) from exc
        message = _message_of(body)
        if status == 500 and message == INVALID_KEY_MESSAGE:
            # ACE's answer to an invalid key, but also (rarely) a real server error: once more.
            self.bad_key_answers += 1
            if self.bad_key_answers >= 2:
                raise AceAuthError(
                    f"ACE answered {self.what} with HTTP 500 '{INVALID_KEY_MESSAGE}' twice: this "
                    "is how ACE answers an invalid or expired API key. Check ACE_API_KEY."
                )
            raise self._failed("HTTP 500 (possibly an invalid API key)", status=status)
        if status in RETRY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise self._failed(f"HTTP {status}", retry_after=retry_after, status=status)
        raise _classify(status, message, self.what)

    def _failed(self, reason: str, **details) -> _Transient:
        self.client._note_error(reason)
        return _Transient(reason, **details)

    def delay(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: ACE's Retry-After if it sent one, else backoff."""
        exc = state.outcome.exception() if state.outcome else None
        delay = backoff_seconds(state.attempt_number, self.client.retry, self.client._rng)
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            delay = min(max(exc.retry_after, 0.0), self.client.retry.max_backoff * 2)
        if isinstance(exc, _Transient) and exc.status == 429 and self.client.gate is not None:
            # A 429 is about the key, not this site: every client of the gate waits it out.
            self.client.gate.slow_down(delay)
        return delay

    def stop(self, state: RetryCallState) -> bool:
        """Stop early: a host that refuses connections, or a retry that would pass the deadline
        (sleeping up to it only to fail there would hold a worker for nothing)."""
        exc = state.outcome.exception() if state.outcome else None
        if getattr(exc, "unreachable", False) and state.attempt_number >= CONNECT_ATTEMPTS:
            return True
        deadline = self.client.deadline
        if deadline is not None and time.monotonic() + (state.upcoming_sleep or 0) >= deadline:
            self.out_of_time = True
            return True
        return False

    def before_retry(self, state: RetryCallState) -> None:
        """Count the retry and its reason; step the page size down after repeated truncation."""
        exc = state.outcome.exception()
        stats, client = self.stats, self.client
        stats.retries += 1
        reason = exc.reason.split(":")[0] if isinstance(exc, _Transient) else type(exc).__name__
        stats.retry_reasons[reason] = stats.retry_reasons.get(reason, 0) + 1
        self.truncations = self.truncations + 1 if getattr(exc, "truncated", False) else 0
        if self.truncations >= TRUNCATIONS_BEFORE_SHRINK:
            smaller = wire.smaller_page_size(client.page_size)
            if smaller is not None:
                log.warning(
                    "%s: %d truncated responses in a row at page_size %d; stepping down to %d",
                    self.what, self.truncations, client.page_size, smaller,
                )
                client.page_size = smaller
                stats.page_size = smaller
            self.truncations = 0
        log.info(
            "%s: attempt %d failed (%s); retrying in %.1fs",
            self.what, state.attempt_number, exc, state.upcoming_sleep,
        )


def _segment(name: str) -> str:
    """Percent-encode a site or point name as ONE path segment (`/` -> %2F)."""
    return quote(name, safe="")


def _signature(columns: pa.RecordBatch) -> tuple:
    n = columns.num_rows
    names, times = columns.column(0), columns.column(1)
    return (n, names[0].as_py(), times[0].as_py(), names[n - 1].as_py(), times[n - 1].as_py())


def _message_of(body: bytes) -> str | None:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    message = doc.get("message")
    errors = doc.get("errors")
    if isinstance(errors, dict) and errors:
        details = "; ".join(f"{k}: {v}" for k, v in errors.items())
        return f"{message} ({details})" if message else details
    return message


def _classify(status: int, message: str | None, what: str) -> AceError:
    if status == 401:
        return AceAuthError(
            f"ACE refused {what} with HTTP 401 ({message or 'no message'}): the request carried no "
            "usable Authorization header. Set ACE_API_KEY."
        )
    if status == 403:
        return AceNotFoundError(
            f"ACE answered {what} with HTTP 403: ACE says this for a site that does not exist or "
            "that the key may not read. Check the site name in ACE_SITES."
        )
    if status == 404:
        return AceNotFoundError(
            f"ACE answered {what} with HTTP 404 ({message or 'not found'}). Check ACE_API_URL "
            "(it should end in /api) and the names used."
        )
    if status == 400:
        return AceRequestError(f"ACE refused {what} with HTTP 400: {message or ''}".rstrip())
    return AceError(f"ACE answered {what} with HTTP {status}: {message or 'no message'}")


# Errors a retry cannot fix: the assets fail their step at once on these, without step retries.
# (The site/window context is added by the asset that catches them.)
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    AceAuthError,
    AceNotFoundError,
    AceRequestError,
    AceUnreachableError,
    AceBudgetExceeded,
    wire.PageSizeError,
)
