"""A simulated ACE IoT API: deterministic buildings served over real HTTP, with ACE's quirks.

    from vitals_pipeline.ace.simulator import SiteSpec, SimulatorConfig, Simulator, SimulatorServer
    sim = Simulator(SimulatorConfig([SiteSpec("demo_office")]))
    sim.set_now(datetime(2025, 10, 13, tzinfo=UTC))
    with SimulatorServer(sim) as server:
        ...  # server.url is the API base; sim.ground_truth(...) is what a correct client stores

- model.py: sites, devices, points and their samples; pure (a function of site seed, point and
  time), rendered straight to wire bytes a minute at a time and cached.
- faults.py: transport faults (the ground truth does not change) and data faults (it does).
- server.py: the standard library's threaded HTTP server speaking the ACE routes, plus admin
  routes without auth under /_sim (faults, clock, stats, reset, ground_truth, fault_points).
  Stats count requests per site and the most in flight at once, for fleet tests and benchmarks.
- Sites are built on first use, so a fleet of 1,000 sites (`vitals simulate --site-count 1000`)
  starts at once; `Faults.site_status` / `site_slow_seconds` make one site fail or lag.
- `vitals simulate` (vitals_pipeline/cli_simulate.py) serves it from the command line.
"""

from vitals_pipeline.ace.simulator.faults import Faults
from vitals_pipeline.ace.simulator.model import Simulator, SimulatorConfig, SiteSpec, UnknownSite
from vitals_pipeline.ace.simulator.server import SimulatorServer

__all__ = ["Faults", "SiteSpec", "SimulatorConfig", "Simulator", "SimulatorServer", "UnknownSite"]
