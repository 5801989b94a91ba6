"""`vitals simulate`: serve the ACE simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

import click
import orjson

from vitals_pipeline.ace.simulator import Simulator, SimulatorConfig, SimulatorServer, SiteSpec


def _parse_pairs(values: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint=what)
        pairs.append((key.strip(), value))
    return pairs


def fleet_site_names(count: int) -> list[str]:
    """s0000 ... s{count-1}: zero-padded (to 4 digits or more) so that they sort in order."""
    width = max(4, len(str(count - 1)))
    return [f"s{i:0{width}d}" for i in range(count)]


def _fault_value(text: str) -> object:
    """JSON if it parses (numbers, true, lists, objects), else the text itself."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=int,
              help="Port to listen on (0 picks a free one; the line printed at start says which).")
@click.option("--sites", default=None,
              help="Comma-separated site names [default: demo_office,demo_lab, unless "
                   "--site-count is given].")
@click.option("--site-count", default=0, type=click.IntRange(min=0), metavar="N",
              help="Add N sites named s0000, s0001, ... (a fleet; sites are built on first use, "
                   "so 1,000 start at once).")
@click.option("--points", default=150, show_default=True, type=click.IntRange(min=1),
              help="Points per site.")
@click.option("--site-points", multiple=True, metavar="SITE=N",
              help="Points for one site, e.g. big=4500 (adds the site if it is not in --sites).")
@click.option("--interval", default=0, show_default=True, type=click.IntRange(min=0),
              help="Collect interval of every point in seconds; 0 = a realistic 60/300/900 s mix.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed; site i gets seed + i.")
@click.option("--api-key", default="sim-key", show_default=True, envvar="ACE_SIM_API_KEY",
              help="The bearer token the simulator accepts.")
@click.option("--end-inclusive", is_flag=True, help="Also return rows at exactly end_time.")
@click.option("--cursor-defect/--no-cursor-defect", default=True, show_default=True,
              help="Send ACE's real (defective) next_cursor, or a correct one.")
@click.option("--no-weather", is_flag=True, help="Sites have no weather feed (404).")
@click.option("--now", "now", default=None, metavar="ISO",
              help="Pin the simulator's clock (default: real time).")
@click.option("--cache-mb", default=256, show_default=True, type=click.IntRange(min=0),
              help="Memory for rendered minutes; ~720 MB holds a day of a 4,500-point/60 s site. "
                   "0: no cache, every request renders the minutes it reads (as ACE does).")
@click.option("--fault", "faults", multiple=True, metavar="NAME=VALUE",
              help='Set a Faults field, e.g. --fault rate_limit_every=5 --fault script=\'["429"]\' '
                   '--fault site_status=\'{"s0007": 503}\' --fault site_slow_seconds=\'{"s0003": 5}\'.')
def simulate(host: str, port: int, sites: str | None, site_count: int, points: int,
             site_points: tuple[str, ...],
             interval: int, seed: int, api_key: str, end_inclusive: bool, cursor_defect: bool,
             no_weather: bool, now: str | None, cache_mb: int, faults: tuple[str, ...]) -> None:
    """Serve a simulated ACE IoT API (deterministic buildings, ACE's quirks, injectable faults)."""
    if sites is None:
        sites = "" if site_count else "demo_office,demo_lab"
    names = [s.strip() for s in sites.split(",") if s.strip()]
    names += [name for name in fleet_site_names(site_count) if name not in names]
    overrides: dict[str, int] = {}
    for name, value in _parse_pairs(site_points, "--site-points"):
        try:
            overrides[name] = int(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a number of points",
                                     param_hint="--site-points") from None
        if name not in names:
            names.append(name)
    if not names:
        raise click.BadParameter("no site names", param_hint="--sites")
    specs = [
        SiteSpec(name, points=overrides.get(name, points), seed=seed + i,
                 interval=interval or None, weather=not no_weather)
        for i, name in enumerate(names)
    ]
    sim = Simulator(SimulatorConfig(specs, api_key=api_key, end_inclusive=end_inclusive,
                                    cursor_defect=cursor_defect, cache_mb=cache_mb))
    try:
        sim.faults.update({k: _fault_value(v) for k, v in _parse_pairs(faults, "--fault")})
        if now:
            sim.set_now(now)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None

    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server = SimulatorServer(sim, host=host, port=port).start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        click.echo(f"ACE simulator listening on {server.url}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


if __name__ == "__main__":
    simulate()
