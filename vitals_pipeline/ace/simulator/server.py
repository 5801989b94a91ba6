"""The simulator's HTTP server: the ACE API over real sockets, with its quirks and faults.

Standard library only (`http.server`): it gives full control over the socket, which the
transport faults need (a TCP reset, a body cut off under a full Content-Length).
"""

from __future__ import annotations

import logging
import queue
import socket
import struct
import sys
import threading
import time
from collections import Counter
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from vitals_pipeline.ace.simulator.model import Simulator, UnknownSite, to_us
from vitals_pipeline.ace.wire import PAGE_SIZE_CHOICES, PER_PAGE_CHOICES, Cursor, format_wire_time

log = logging.getLogger(__name__)

JSON = "application/json"
HTML = "text/html; charset=utf-8"
VALIDATION_FAILED = "Input payload validation failed"
UNHANDLED = {"message": "An unhandled exception occurred."}
NOT_FOUND_HTML = (
    b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    b"<p>The requested URL was not found on the server. If you entered the URL manually please "
    b"check your spelling and try again.</p>\n"
)
METHOD_NOT_ALLOWED_HTML = (
    b"<!doctype html>\n<html lang=en>\n<title>405 Method Not Allowed</title>\n"
    b"<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n"
)
REDIRECT_HTML = (
    b"<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n"
)
GATEWAY_HTML = {
    502: b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
         b"</h1></center><hr><center>nginx</center></body></html>\n",
    503: b"<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
         b"<h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center>"
         b"</body></html>\n",
    504: b"<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway "
         b"Time-out</h1></center><hr><center>nginx</center></body></html>\n",
}
SITE_FIELDS = ("id", "name", "nice_name", "client", "address", "latitude", "longitude",
               "vtron_ip", "vtron_user", "archived", "created", "updated")
WEATHER_FIELDS = ("temp", "feels_like", "pressure", "humidity", "dew_point", "clouds",
                  "wind_speed", "wind_deg", "wet_bulb")
# Route kinds that transport faults apply to (the data routes).
DATA_ROUTES = frozenset({"timeseries", "site_timeseries", "point_timeseries", "points"})


class _Reply(Exception):
    """Raised inside a route to answer at once (validation errors, unknown sites, ...)."""

    def __init__(self, status: int, body: Any, content_type: str = JSON,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _invalid(field: str, message: str) -> _Reply:
    return _Reply(400, {"errors": {field: message}, "message": VALIDATION_FAILED})


class SimulatorServer:
    """Serve a `Simulator` over HTTP on `host:port` (port 0 picks a free one).

    `url` is the API base (`http://127.0.0.1:PORT/api`); `stats` counts requests by route kind,
    by site and by status, the transport faults injected, and the most API requests in flight at
    once. Every connection has its own thread: requests of different connections are served (and
    delayed by `slow_seconds`) concurrently. Use as a context manager, or start()/stop().
    """

    def __init__(self, sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._data_requests = 0
        self._warm_queue: queue.Queue = queue.Queue(maxsize=2)
        self._warm_thread: threading.Thread | None = None
        self.reset_stats()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SimulatorServer:
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.app = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"ace-sim-{self.port}", daemon=True,
        )
        self._thread.start()
        self._warm_thread = threading.Thread(target=self._warm_loop, name="ace-sim-warm",
                                             daemon=True)
        self._warm_thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        # Keep-alive connections would otherwise hold their handler threads forever.
        with self._lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._warm_queue.put_nowait(None)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API base URL the client uses."""
        host = self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.port}/api"

    # -- stats -----------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """{"requests": n, "routes": {kind: n}, "sites": {site: n}, "statuses": {code: n},
        "faults": {name: n}, "bytes_sent": n, "in_flight": n, "max_in_flight": n,
        "connections": n, "sites_built": n}.

        Route kinds: sites, points, timeseries (paginated), site_timeseries, point_timeseries,
        weather, redirect, unknown. `sites` counts the requests about one site (its routes and
        its points' timeseries). A request is in flight from its arrival until its response is
        handed to the socket (or the connection is dropped). `connections`: TCP connections
        accepted (admin ones included). `sites_built`: site models built so far (they are built
        on first use). Admin routes are not counted otherwise."""
        with self._lock:
            return {
                "requests": self._requests,
                "routes": dict(self._routes),
                "sites": dict(self._sites),
                "statuses": dict(self._statuses),
                "faults": dict(self._faults),
                "bytes_sent": self._bytes_sent,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "connections": self._connections_opened,
                "sites_built": self.sim.sites_built,
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._requests = 0
            self._routes: Counter[str] = Counter()
            self._sites: Counter[str] = Counter()
            self._statuses: Counter[int] = Counter()
            self._faults: Counter[str] = Counter()
            self._bytes_sent = 0
            self._data_requests = 0
            # Requests in flight now are still counted out when they end: keep the current
            # figure, start the peak from it.
            self._in_flight = getattr(self, "_in_flight", 0)
            self._max_in_flight = self._in_flight
            self._connections_opened = 0

    def _count(self, kind: str | None = None, status: int | None = None,
               fault: str | None = None, sent: int = 0) -> None:
        with self._lock:
            if kind is not None:
                self._requests += 1
                self._routes[kind] += 1
            if status is not None:
                self._statuses[status] += 1
            if fault is not None:
                self._faults[fault] += 1
            self._bytes_sent += sent

    def _arrived(self, site: str | None) -> None:
        with self._lock:
            if site is not None:
                self._sites[site] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _answered(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_fault(self) -> str | None:
        """The transport fault for this data request, if any (consumes one scripted fault)."""
        faults = self.sim.faults
        with self._lock:
            self._data_requests += 1
            n = self._data_requests
            if faults.script:
                return faults.script.pop(0)
        if faults.rate_limit_every and n % int(faults.rate_limit_every) == 0:
            return "429"
        if faults.server_error_every and n % int(faults.server_error_every) == 0:
            return "503"
        return None

    # -- prefetch --------------------------------------------------------------------------------

    def _warm_later(self, site: str, from_us: int, rows: int) -> None:
        try:
            self._warm_queue.put_nowait((site, from_us, rows))
        except queue.Full:
            pass

    def _warm_loop(self) -> None:
        while True:
            job = self._warm_queue.get()
            if job is None or self._httpd is None:
                return
            try:
                self.sim.warm(*job)
            except Exception:  # prefetching is best effort
                log.debug("prefetch failed", exc_info=True)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # The listen backlog. The stdlib default (5) refuses connections when a fleet's clients
    # open many at once; the kernel caps it at net.core.somaxconn anyway.
    request_queue_size = 1024
    app: SimulatorServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that go away mid-response (timeouts, resets) are part of the job.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ace-simulator"
    sys_version = ""
    server: _HTTPServer
    _admin_request = False
    _in_flight = False  # this request is counted in the server's in-flight figure

    # -- plumbing --------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib signature
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle + delayed ACK add
        # ~40 ms to every small response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.app._lock:
            self.server.app._connections.add(self.connection)
            self.server.app._connections_opened += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.app._lock:
                self.server.app._connections.discard(self.connection)

    @property
    def app(self) -> SimulatorServer:
        return self.server.app

    @property
    def sim(self) -> Simulator:
        return self.server.app.sim

    def _send(self, status: int, body: Any, content_type: str = JSON,
              headers: dict[str, str] | None = None, truncate: bool = False) -> None:
        if not isinstance(body, bytes):
            body = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        payload = body[: len(body) // 2] if truncate else body
        # Counted before the bytes go out: a client that reads stats right after its response
        # must see it counted, and a client that sends its next request as soon as it has read
        # this one must not find this one still in flight.
        if not self._admin_request:
            self.app._count(status=status, sent=len(payload))
        self._done()
        if len(payload) < 65536:  # one write, one segment
            self._headers_buffer.append(b"\r\n" + payload)
            self.flush_headers()
        else:
            self.end_headers()
            self.wfile.write(payload)

    def _reset(self) -> None:
        """Close the TCP connection with a reset and no response (SO_LINGER 0, then close)."""
        self.close_connection = True
        conn = self.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for f in (self.rfile, self.wfile):
            try:
                f.close()
            except OSError:
                pass
        conn.close()

    def _done(self) -> None:
        """Count this request out of the in-flight figure (once)."""
        if self._in_flight:
            self._in_flight = False
            self.app._answered()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        raw_path, _, query = self.path.partition("?")
        # Split before decoding: names carry "/" as %2F inside one segment.
        segments = [unquote(s) for s in raw_path.split("/")]
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        self._admin_request = len(segments) >= 2 and segments[0] == "" and segments[1] == "_sim"
        body = b""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length)
        try:
            if self._admin_request:
                self._admin(segments[2:], params, body)
            elif len(segments) >= 3 and segments[0] == "" and segments[1] == "api":
                self._api(segments[2:], params, body, query)
            else:
                self.app._count(kind="unknown")
                self._send(404, NOT_FOUND_HTML, HTML)
        except _Handled:
            pass
        except _Reply as reply:
            self._send(reply.status, reply.body, reply.content_type, reply.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # answer like ACE does, and say why in the log
            log.exception("simulator error on %s %s", self.command, self.path)
            try:
                self._send(500, UNHANDLED)
            except OSError:
                self.close_connection = True
        finally:
            self._done()  # no response (a reset, a dropped connection)

    # -- the ACE API -----------------------------------------------------------------------------

    def _route(self, route: list[str]) -> tuple[str, str, Any]:
        """(kind, method, handler) for a path under /api, or raise a 404/405/308 reply."""
        n = len(route)
        if route == ["sites"]:
            return "redirect", "GET", None
        if route[0] == "sites":
            if n == 2:
                return "sites", "GET", (self._sites if route[1] == "" else self._site)
            if n == 3 and route[2] in ("configured_points", "points"):
                return "points", "GET", self._points
            if n == 3 and route[2] == "timeseries":
                return "site_timeseries", "GET", self._site_timeseries
            if n == 4 and route[2:] == ["timeseries", "paginated"]:
                return "timeseries", "GET", self._paginated
            if n == 3 and route[2] == "weather":
                return "weather", "GET", self._weather
        if route[0] == "points":
            if route == ["points", ""]:
                return "points", "GET", self._all_points
            if route == ["points", "get_timeseries"]:
                return "point_timeseries", "POST", self._get_timeseries
            if n == 3 and route[2] == "timeseries":
                return "point_timeseries", "GET", self._point_timeseries
        return "unknown", "", None

    def _api(self, route: list[str], params: dict[str, str], body: bytes, query: str) -> None:
        kind, method, handler = self._route(route)
        site = self._site_of(route, kind)
        self.app._count(kind=kind)
        self._in_flight = True
        self.app._arrived(site)
        if handler is None and kind == "unknown":
            raise _Reply(404, NOT_FOUND_HTML, HTML)
        if self.command != method:
            raise _Reply(405, METHOD_NOT_ALLOWED_HTML, HTML)
        if kind == "redirect":  # Flask's strict slashes: /sites -> /sites/
            location = "/api/sites/" + (f"?{query}" if query else "")
            raise _Reply(308, REDIRECT_HTML, HTML, {"Location": location})
        self._authorize()
        faults = self.sim.faults
        # Latency first, whatever the answer: a slow network or a slow site delays errors too.
        # Only this connection's thread sleeps.
        delay = float(faults.slow_seconds or 0)
        if site is not None:
            delay += float(faults.site_slow_seconds.get(site, 0) or 0)
        if delay > 0:
            time.sleep(delay)
        if site is not None and site in faults.site_status:
            raise _status_reply(int(faults.site_status[site]), faults)
        truncate = False
        if kind in DATA_ROUTES:
            truncate = self._next_fault_reply() == "truncate"
        status, payload, truncate_page = handler(route, params, body)
        self._send(status, payload, truncate=truncate or truncate_page)

    def _site_of(self, route: list[str], kind: str) -> str | None:
        """The site a request is about: /sites/{site}/..., or the site of /points/{point}/... ."""
        if route[0] == "sites" and len(route) >= 2 and route[1] != "":
            return route[1]
        if kind == "point_timeseries" and len(route) == 3:
            return self.sim.point_site(route[1])
        return None

    def _authorize(self) -> None:
        header = self.headers.get("Authorization")
        if not header:
            raise _Reply(401, {"message": "Missing Authorization Header"})
        kind, _, token = header.partition(" ")
        if kind != "Bearer" or not token:
            raise _Reply(401, {"message": "Missing 'Bearer' type in 'Authorization' header. "
                                          "Expected 'Authorization: Bearer <JWT>'"})
        if token.strip() != self.sim.config.api_key:
            raise _Reply(500, UNHANDLED)

    def _next_fault_reply(self) -> str | None:
        """Apply this request's transport fault: raise the reply, reset, hang, or flag truncation."""
        fault = self.app._next_fault()
        if fault is None:
            return None
        self.app._count(fault=fault)
        faults = self.sim.faults
        if fault == "429-date":
            retry_at = formatdate(time.time() + float(faults.retry_after), usegmt=True)
            raise _Reply(429, {"message": "Too Many Requests"}, headers={"Retry-After": retry_at})
        if fault in ("429", "500", "502", "503", "504"):
            raise _status_reply(int(fault), faults)
        if fault == "badkey":
            raise _Reply(500, UNHANDLED)
        if fault == "invalid_json":
            raise _Reply(200, b"<html>Bad gateway</html>", JSON)
        if fault == "reset":
            self._reset()
            raise _Handled
        if fault == "timeout":
            time.sleep(float(faults.hang_seconds))
        return fault

    # -- routes ----------------------------------------------------------------------------------

    def _site_or_403(self, name: str) -> str:
        if not self.sim.has_site(name):
            raise _Reply(403, dict.fromkeys(SITE_FIELDS))
        return name

    def _envelope(self, items: list[Any], params: dict[str, str]) -> dict[str, Any]:
        per_page = _int_param(params, "per_page", 10, "Results per page {error_msg}")
        if per_page not in PER_PAGE_CHOICES:
            raise _invalid("per_page", f"Results per page {{error_msg}} The value '{per_page}' "
                                       f"is not a valid choice for 'per_page'.")
        page = _int_param(params, "page", 1, "Page number {error_msg}")
        if page < 1:
            raise _Reply(404, NOT_FOUND_HTML, HTML)
        total = len(items)
        pages = -(-total // per_page)
        return {"items": items[(page - 1) * per_page: page * per_page], "page": page,
                "pages": pages, "per_page": per_page, "total": total}

    def _sites(self, route, params, body):
        return 200, self._envelope(self.sim.sites(), params), False

    def _site(self, route, params, body):
        return 200, self.sim.site(self._site_or_403(route[1])), False

    def _points(self, route, params, body):
        site = self._site_or_403(route[1])
        return 200, self._envelope(self.sim.site_model(site).api_points(), params), False

    def _all_points(self, route, params, body):
        items = [p for site in self.sim.site_names for p in self.sim.site_model(site).api_points()]
        return 200, self._envelope(items, params), False

    def _paginated(self, route, params, body):
        site = self._site_or_403(route[1])
        start, end = _window(params)
        page_size = _int_param(params, "page_size", 10000, "Number of records per page {error_msg}")
        if page_size not in PAGE_SIZE_CHOICES:
            raise _invalid("page_size", f"Number of records per page {{error_msg}} The value "
                                        f"'{page_size}' is not a valid choice for 'page_size'.")
        cursor = None
        if params.get("cursor"):
            try:
                cursor = Cursor.decode(params["cursor"])
            except ValueError:
                raise _invalid("cursor", "Pagination cursor {error_msg} Invalid cursor") from None
        page = self.sim.timeseries_page(site, start, end, page_size, cursor, _raw(params))
        if page.more and page.last_us is not None and self.sim.config.cache_mb > 0:
            # Prefetch the next page's minutes (not without a cache: they would be dropped).
            self.app._warm_later(site, page.last_us, 2 * page_size)
        limit = int(self.sim.faults.truncate_min_page_size or 0)
        return 200, page.body, bool(limit and page_size >= limit)

    def _site_timeseries(self, route, params, body):
        site = self._site_or_403(route[1])
        start, end = _window(params)
        samples = self.sim.samples(site, start, end, raw=_raw(params))
        return 200, {"point_samples": samples}, False

    def _point_timeseries(self, route, params, body):
        name = route[1]
        site = self.sim.point_site(name)
        if site is None:
            raise _Reply(404, {"message": "A database result was required but none was found."})
        start, end = _window(params)
        samples = self.sim.samples(site, start, end, raw=_raw(params), names=[name])
        return 200, {"point_samples": samples}, False

    def _get_timeseries(self, route, params, body):
        start, end = _window(params)
        try:
            names = [p["name"] for p in orjson.loads(body or b"{}")["points"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise _invalid("points", "A list of {\"name\": ...} objects {error_msg} "
                                     "Missing required parameter in the JSON body") from None
        by_site: dict[str, list[str]] = {}
        for name in names:
            site = self.sim.point_site(name)
            if site is not None:
                by_site.setdefault(site, []).append(name)
        samples = []
        for site, wanted in by_site.items():
            samples += self.sim.samples(site, start, end, raw=_raw(params), names=wanted)
        samples.sort(key=lambda s: (s["time"], s["name"]))
        return 200, {"point_samples": samples}, False

    def _weather(self, route, params, body):
        site = self._site_or_403(route[1])
        weather = self.sim.weather(site)
        if weather is None:
            return 404, {"weather": dict.fromkeys(WEATHER_FIELDS)}, False
        return 200, {"weather": weather}, False

    # -- admin (no auth) -------------------------------------------------------------------------

    def _admin(self, route: list[str], params: dict[str, str], body: bytes) -> None:
        sim = self.sim
        name = route[0] if route else ""
        data = orjson.loads(body) if body else {}
        if name == "faults":
            if self.command == "POST":
                if not isinstance(data, dict):
                    raise _Reply(400, {"message": "expected a JSON object of Faults fields"})
                try:
                    sim.faults.update(data)
                except (ValueError, TypeError) as exc:
                    raise _Reply(400, {"message": str(exc)}) from None
            self._send(200, sim.faults.to_json())
        elif name == "clock":
            if self.command == "POST":
                try:
                    sim.set_now(data.get("now") if isinstance(data, dict) else None)
                except ValueError as exc:
                    raise _Reply(400, {"message": str(exc)}) from None
            self._send(200, {"now": format_wire_time(sim.now()), "pinned": sim._now is not None})
        elif name == "stats":
            self._send(200, self.app.stats)
        elif name == "reset" and self.command == "POST":
            sim.reset()
            self.app.reset_stats()
            self._send(200, {"faults": sim.faults.to_json(), "stats": self.app.stats})
        elif name == "ground_truth":
            site = params.get("site", "")
            try:
                rows = sim.ground_truth(site, params["start_time"], params["end_time"])
            except UnknownSite:
                raise _Reply(404, {"message": f"unknown site {site!r}"}) from None
            except (KeyError, ValueError) as exc:
                raise _Reply(400, {"message": f"need site, start_time, end_time: {exc}"}) from None
            self._send(200, rows)
        elif name == "fault_points":
            try:
                self._send(200, sim.fault_points(params.get("site", "")))
            except UnknownSite:
                raise _Reply(404, {"message": f"unknown site {params.get('site')!r}"}) from None
        else:
            self._send(404, NOT_FOUND_HTML, HTML)


class _Handled(_Reply):
    """The response (or the lack of one) has already been sent."""

    def __init__(self) -> None:
        super().__init__(0, None)


def _status_reply(status: int, faults: Any) -> _Reply:
    """The answer ACE (or the gateway in front of it) gives with `status`."""
    if status == 429:
        wait = float(faults.retry_after)
        value = str(int(wait)) if wait.is_integer() else repr(wait)
        return _Reply(429, {"message": "Too Many Requests"}, headers={"Retry-After": value})
    if status in GATEWAY_HTML:
        return _Reply(status, GATEWAY_HTML[status], HTML)
    if status == 500:
        return _Reply(500, {"message": "Internal Server Error"})
    if status == 403:  # what ACE answers for a site that does not exist
        return _Reply(403, dict.fromkeys(SITE_FIELDS))
    if status == 404:
        return _Reply(404, {"message": "A database result was required but none was found."})
    if status == 401:
        return _Reply(401, {"message": "Missing Authorization Header"})
    if status == 400:
        return _Reply(400, {"message": VALIDATION_FAILED})
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _Reply(status, {"message": phrase})


def _int_param(params: dict[str, str], name: str, default: int, help_text: str) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise _invalid(name, f"{help_text} {exc}") from None


def _window(params: dict[str, str]) -> tuple[int, int]:
    """(start_us, end_us) from start_time / end_time, validated like ACE does."""
    out = []
    for name, label in (("start_time", "start"), ("end_time", "end")):
        raw = params.get(name)
        if raw is None:
            raise _invalid(name, f"ISO format {label} time Missing required parameter in the "
                                 f"query string")
        try:
            out.append(to_us(raw))
        except ValueError:
            try:  # an unencoded "+00:00" arrives as " 00:00"
                out.append(to_us(raw.replace(" ", "+")))
            except ValueError as exc:
                raise _invalid(name, f"ISO format {label} time {exc}") from None
    return out[0], out[1]


def _raw(params: dict[str, str]) -> bool:
    return params.get("raw_data", "") in ("true", "True", "1")
