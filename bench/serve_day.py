"""How fast does the ACE simulator serve one full day of the 4,500-point / 60 s site?

Starts `vitals simulate` in a subprocess (so the server has its own core, as the real API would),
then downloads 2025-10-12 [00:00, 24:00) through /timeseries/paginated with one httpx client that
follows the cursor page after page (one stream, unlike bench/run.py's floor, which makes the
pipeline's requests) and discards the bodies (or parses them with --parse). 6.48M samples. Each
pass is timed from its first request to its last response, in this process.

With a cache (--cache-mb, default 1500: the day takes ~720 MB) the first pass renders every
minute, the server rendering the next page's minutes ahead while the client reads one ("cold"),
and later passes (--passes 2) are served from memory ("cache"). With --cache-mb 0 every pass
renders every page on request, as ACE does ("render").

    .venv/bin/python bench/serve_day.py [--page-size 50000] [--parse] [--in-process] [--passes 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import httpx
import orjson

from vitals_pipeline.ace.wire import Cursor, next_cursor, parse_wire_time

DAY_START = "2025-10-12T00:00:00"
DAY_END = "2025-10-13T00:00:00"
NOW = "2025-10-13T01:00:00"


def _start_subprocess(points: int, cache_mb: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "vitals_pipeline.cli_simulate", "--port", "0", "--sites", "big",
           "--points", str(points), "--interval", "60", "--now", NOW, "--cache-mb", str(cache_mb)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("ACE simulator listening on "):
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def download(url: str, page_size: int, parse: bool) -> tuple[int, int, int]:
    """Fetch the day; returns (pages, rows, bytes)."""
    pages = rows = size = 0
    cursor: Cursor | None = None
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer sim-key"},
                      timeout=60) as client:
        while True:
            params = {"start_time": DAY_START, "end_time": DAY_END, "page_size": page_size,
                      "raw_data": "true"}
            if cursor is not None:
                params["cursor"] = cursor.encode()
            r = client.get("/sites/big/timeseries/paginated", params=params)
            r.raise_for_status()
            body = r.content
            pages += 1
            size += len(body)
            if parse:
                samples = orjson.loads(body)["point_samples"]
                if not samples:
                    break
                rows += len(samples)
                last = samples[-1]["time"]
                at_last = sum(1 for s in samples[-200:] if s["time"] == last)
                cursor = next_cursor(cursor, parse_wire_time(last), at_last)
            else:
                n = body.count(b'{"name":')
                if n == 0:
                    break
                rows += n
                # The server's cursor is right whenever a page crosses a timestamp (it always
                # does at 50,000 rows); read it off the tail without parsing the page.
                tail = orjson.loads(b"{" + body[body.rindex(b'"next_cursor"'):])
                cursor = Cursor.decode(tail["next_cursor"])
    return pages, rows, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page-size", type=int, default=50000)
    ap.add_argument("--points", type=int, default=4500)
    ap.add_argument("--parse", action="store_true", help="parse every page with orjson")
    ap.add_argument("--in-process", action="store_true",
                    help="run the server in a thread of this process (shares the GIL)")
    ap.add_argument("--passes", type=int, default=1, help="download the day this many times")
    ap.add_argument("--cache-mb", type=int, default=1500)
    args = ap.parse_args()

    proc = server = None
    if args.in_process:
        from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec

        sim = Simulator(SimulatorConfig([SiteSpec("big", points=args.points, interval=60)],
                                        cache_mb=args.cache_mb))
        sim.set_now(NOW)
        server = SimulatorServer(sim).start()
        url = server.url
    else:
        proc, url = _start_subprocess(args.points, args.cache_mb)
    mode = "in-process" if args.in_process else "subprocess"
    try:
        for n in range(1, args.passes + 1):
            t0 = time.perf_counter()
            pages, rows, size = download(url, args.page_size, args.parse)
            seconds = time.perf_counter() - t0
            state = "render" if args.cache_mb == 0 else "cold" if n == 1 else "cache"
            print(f"pass {n} ({state}): served {rows:,} samples in {pages} "
                  f"pages ({size / 1e6:,.0f} MB) at page_size {args.page_size} ({mode}, "
                  f"{'parsed' if args.parse else 'discarded'}): {seconds:.2f} s, "
                  f"{rows / seconds / 1e6:.2f} M samples/s", flush=True)
    finally:
        if server is not None:
            server.stop()
        if proc is not None:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
