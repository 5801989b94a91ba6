"""The Dagster UI as an operator sees it: a real `dagster-webserver` and `dagster-daemon` on a
temporary DAGSTER_HOME and the built-in ACE simulator, walked in Debian's Chromium by Playwright.

`ui_stack` starts everything (each process in its own process group, ended by id), `Walk` holds
the browser page, the screenshots and the timings, and each step of the operator's walk is one
function here (`open_site_group`, `read_partition_counts`, `launch_range_from_asset_page`,
`watch_backfill_run`, `open_partition`, `open_site_checks`, `read_automation`), so that they can
be adapted when the definitions change without touching the test. The `graphql_*` readers ask the
webserver what a page should have shown; the steps themselves only use the browser.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from vitals_pipeline.windows import PARTITION, PARTITION_FMT, floor_to_partition, partition_key

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# Process logs one folder per test module, screenshots one folder per test below it; `.ci/run`
# prints where they are when the tests fail.
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (CI runs as root), and nothing that phones home: this machine has no network, and
# Chromium's background connections would only fail (many at a time) and slow it down.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = (
    f"{CHROMIUM} is missing: the UI test drives Debian's Chromium. Install it with "
    "`apt-get update && apt-get install -y chromium` (as root; .ci/run does this on CI). "
    "Do not run `playwright install`: it downloads a browser build, which fails here."
)

SIM_KEY = "sim-key-ui-4d2e"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the seeded history ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The history the walk starts from, for the first site (`site`); the other sites get only
    the last 65 minutes. Times are partition starts (UTC); every stretch is [first, end).

    start ........ +1 h ......... +1 h 30 ...................... closed - 65 min ... closed
    | materialized | failed (key revoked) | missing (the walk launches 6 of them) | materialized |

    The last 65 minutes are stored for every site so that the catch-up sensor
    (VITALS_CATCHUP_HOURS=1) has nothing to launch while the walk reads the counts; the schedule
    still ticks and stores each new partition (one run for both sites, which also fetches their
    weather on the quarter hours and their points at :05: neither changes the timeseries'
    counts). The fleet_rollups sensor may roll up the complete hours meanwhile, in runs of
    their own.
    """

    sites: tuple[str, ...]
    start: datetime  # VITALS_PARTITIONS_START
    closed: datetime  # end of the newest closed partition when the history was written

    @classmethod
    def now(cls, sites: tuple[str, ...]) -> Plan:
        closed = floor_to_partition(datetime.now(UTC))
        start = closed.replace(minute=0) - timedelta(hours=4)
        return cls(sites=sites, start=start, closed=closed)

    @property
    def site(self) -> str:
        return self.sites[0]

    @property
    def materialized(self) -> tuple[datetime, datetime]:
        return self.start, self.start + timedelta(hours=1)

    @property
    def failed(self) -> tuple[datetime, datetime]:
        return self.start + timedelta(hours=1), self.start + timedelta(minutes=90)

    @property
    def recent(self) -> tuple[datetime, datetime]:
        # The catch-up sensor watches the hour before the newest closed partition (the
        # schedule's), so an hour and one partition: with less it would launch a run at once.
        return self.closed - timedelta(minutes=65), self.closed

    @property
    def launch(self) -> tuple[str, str]:
        """The 6 partitions the walk launches from the asset page: 2 h after the start, inside
        the missing stretch."""
        first = self.start + timedelta(hours=2)
        return partition_key(first), partition_key(first + 5 * PARTITION)

    def count(self, stretch: tuple[datetime, datetime]) -> int:
        return int((stretch[1] - stretch[0]) / PARTITION)


def seed(plan: Plan) -> None:
    """Run in a child process with the stack's environment (see `ui_stack`): initialise
    DAGSTER_HOME once, before the webserver and the daemon open it, then write the plan's
    history with in-process runs of the real definitions."""
    import dagster as dg

    from vitals_pipeline.assets.keys import points_key, range_tags, timeseries_key
    from vitals_pipeline.cli import ensure_dagster_home
    from vitals_pipeline.config import Settings
    from vitals_pipeline.definitions import build_definitions

    ensure_dagster_home()
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_implicit_global_asset_job_def()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def run(keys, stretch=None, must_succeed=True):
        tags = (
            range_tags(partition_key(stretch[0]), partition_key(stretch[1] - PARTITION))
            if stretch
            else {}
        )
        result = job.execute_in_process(
            instance=instance,
            asset_selection=keys,
            tags=tags,
            run_config=quiet,
            raise_on_error=False,
        )
        if result.success != must_succeed:
            raise SystemExit(
                f"seeding {keys} {stretch}: run {result.run_id} success={result.success}"
            )

    with dg.DagsterInstance.get() as instance:
        run([points_key(s) for s in plan.sites])
        run([timeseries_key(s) for s in plan.sites], plan.recent)
        run([timeseries_key(plan.site)], plan.materialized)
        # ACE answers a revoked key with a 500; the run fails after one retry (no step retries).
        os.environ["ACE_API_KEY"] = "revoked-key"
        run([timeseries_key(plan.site)], plan.failed, must_succeed=False)


# --- the processes -----------------------------------------------------------------------------


@dataclass
class UiStack:
    """The running webserver + daemon on one DAGSTER_HOME, the simulator, and their logs."""

    url: str
    home: Path
    env: dict[str, str]
    plan: Plan
    artifacts: Path
    logs: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)  # webserver, daemon
    behind: str = ""  # a configured site ACE refuses: never stored, the fleet's site that is behind
    location: str = ""  # the code location's name, as the UI shows it
    repository: str = "__repository__"
    started_in: float = 0.0  # seconds from nothing to a loaded code location

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Ask the webserver's GraphQL endpoint, to check what a page showed (never to act)."""
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def assert_running(self) -> None:
        """Fail at once, naming it, when the webserver or the daemon has exited (a wait for
        what the daemon launches would otherwise only time out)."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"the {name} exited ({process.returncode}) during the walk:\n{self.log_tail()}"
                )

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for name, path in self.logs.items():
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name} ({path}) ---\n{text[-chars:]}")
        return "\n".join(parts)


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group this test started (the daemon's code server and run workers
    are in it), then SIGKILL what is left."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # Children (a run worker, a code server) may outlive their parent for a moment.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    tail: Callable[[], str] = str,
    interval: float = 0.5,
):
    """Poll `condition` until it returns something true; fail after `timeout` s saying what."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail()}")
        time.sleep(interval)


@contextlib.contextmanager
def ui_stack(
    artifacts: Path,
    tmp: Path,
    sites: tuple[str, ...] = ("ui_office", "ui_lab"),
    points: int = 40,
    behind: str = "ui_annex",
) -> Iterator[UiStack]:
    """Simulator (real clock) -> seeded DAGSTER_HOME -> dagster-webserver + dagster-daemon.

    Everything runs as the operator would run it: separate processes, the shipped dagster.yaml,
    the environment the README gives. Logs go to `artifacts` (the ACE key is a test key, and the
    test checks that it is in no log anyway).
    """
    artifacts.mkdir(parents=True, exist_ok=True)
    plan = Plan.now(sites)
    started: list[subprocess.Popen] = []
    logs: dict[str, Path] = {}

    def spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        logs[name] = artifacts / f"{name}.log"
        with open(logs[name], "w") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    try:
        sim_env = {**os.environ, "ACE_SIM_API_KEY": SIM_KEY}
        sim = spawn(
            "simulator",
            [
                str(BIN / "vitals"),
                "simulate",
                "--port",
                "0",
                "--sites",
                ",".join((*sites, behind)),
                "--points",
                str(points),
                # ACE refuses the third site (403, not retried): every run fails it at once, and
                # it is never stored, the fleet's site that is behind (step 6 of the walk).
                "--fault",
                f"site_status={json.dumps({behind: 403})}",
            ],
            sim_env,
        )
        line = wait_until(
            lambda: _listening(logs["simulator"], sim),
            30,
            "the ACE simulator to listen",
            lambda: logs["simulator"].read_text(),
        )
        env = {
            **os.environ,
            "DAGSTER_HOME": str(tmp / "dagster_home"),
            "ACE_API_URL": line.rsplit(" ", 1)[-1],
            "ACE_API_KEY": SIM_KEY,
            "ACE_SITES": ",".join((*sites, behind)),
            "VITALS_DUCKDB_PATH": str(tmp / "vitals.duckdb"),
            "VITALS_ARCHIVE_URI": str(tmp / "archive"),
            "VITALS_PARTITIONS_START": partition_key(plan.start),
            "VITALS_CATCHUP_HOURS": "1",
            # Every minute instead of 1-59/5, so that each schedule ticks while the walk runs and
            # "no tick errors" is a statement about real ticks.
            "VITALS_SCHEDULE_CRON": "* * * * *",
            "PYTHONUNBUFFERED": "1",
        }
        # Seed before any long-running process opens the instance (see `seed`).
        seeder = spawn(
            "seed",
            [
                sys.executable,
                "-m",
                "vitals_pipeline_tests.ui",
                ",".join(sites),
                plan.start.isoformat(),
                plan.closed.isoformat(),
            ],
            env,
        )
        if seeder.wait(timeout=180) != 0:
            raise AssertionError(f"seeding the history failed:\n{logs['seed'].read_text()[-4000:]}")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        webserver = spawn(
            "webserver",
            [
                str(BIN / "dagster-webserver"),
                "-m",
                "vitals_pipeline.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env,
        )
        daemon = spawn(
            "daemon", [str(BIN / "dagster-daemon"), "run", "-m", "vitals_pipeline.definitions"], env
        )
        stack = UiStack(
            url=url,
            home=Path(env["DAGSTER_HOME"]),
            env=env,
            plan=plan,
            behind=behind,
            artifacts=artifacts,
            logs=logs,
            processes={"webserver": webserver, "daemon": daemon},
        )
        wait_until(
            lambda: _code_location_loaded(stack, started),
            120,
            "the webserver to answer and load the code location",
            stack.log_tail,
        )
        yield stack
    finally:
        for process in reversed(started):
            _end_group(process)


def _listening(log: Path, process: subprocess.Popen) -> str | None:
    if process.poll() is not None:
        raise AssertionError(f"the simulator exited ({process.returncode}):\n{log.read_text()}")
    for line in log.read_text().splitlines():
        if "listening on" in line:
            return line.strip()
    return None


def _code_location_loaded(stack: UiStack, started: list[subprocess.Popen]) -> bool:
    for process in started[-2:]:
        if process.poll() is not None:
            raise AssertionError(
                f"{process.args[0]} exited ({process.returncode}):\n{stack.log_tail()}"
            )
    try:
        httpx.get(f"{stack.url}/server_info", timeout=5).raise_for_status()
        data = stack.graphql(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
    except (httpx.HTTPError, AssertionError):
        return False
    entries = data["workspaceOrError"].get("locationEntries") or []
    if not entries or any(e["loadStatus"] != "LOADED" for e in entries):
        return False
    for entry in entries:
        loaded = entry["locationOrLoadError"] or {}
        if loaded.get("__typename") == "PythonError":
            raise AssertionError(
                f"code location {entry['name']} failed to load: {loaded.get('message')}\n"
                + stack.log_tail()
            )
    stack.location = entries[0]["name"]
    return True


# --- what the webserver knows (to check what a page showed) ------------------------------------


@dataclass(frozen=True)
class PartitionCounts:
    """The status filters of an asset's partitions view: `Failed (6)`, `Materialized (25)`, ..."""

    selected: int
    failed: int
    materialized: int
    materializing: int
    missing: int


def graphql_partition_counts(stack: UiStack, site: str) -> PartitionCounts:
    data = stack.graphql(
        "query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode {"
        " partitionStats { numMaterialized numMaterializing numFailed numPartitions } } } }",
        {"path": [site, "timeseries"]},
    )
    stats = data["assetNodeOrError"]["partitionStats"]
    done = stats["numMaterialized"] + stats["numMaterializing"] + stats["numFailed"]
    return PartitionCounts(
        selected=stats["numPartitions"],
        failed=stats["numFailed"],
        materialized=stats["numMaterialized"],
        materializing=stats["numMaterializing"],
        missing=stats["numPartitions"] - done,
    )


def graphql_group_assets(stack: UiStack, group: str) -> list[str]:
    data = stack.graphql(
        "query($group: AssetGroupSelector!) { assetNodes(group: $group) { assetKey { path } } }",
        {
            "group": {
                "groupName": group,
                "repositoryName": stack.repository,
                "repositoryLocationName": stack.location,
            }
        },
    )
    return sorted("/".join(node["assetKey"]["path"]) for node in data["assetNodes"])


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str
    created: float
    started: float | None
    ended: float | None
    tags: dict[str, str]
    assets: list[str] = field(default_factory=list)  # its asset selection, `site/name`


@dataclass(frozen=True)
class Backfill:
    backfill_id: str
    status: str
    created: float
    runs: list[RunRecord]


def graphql_backfill(stack: UiStack, backfill_id: str) -> Backfill:
    data = stack.graphql(
        "query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename"
        " ... on PartitionBackfill { status timestamp runs(limit: 50) { runId status creationTime"
        " startTime endTime tags { key value } assetSelection { path } } }"
        " ... on PythonError { message } } }",
        {"id": backfill_id},
    )["partitionBackfillOrError"]
    if data["__typename"] != "PartitionBackfill":
        raise AssertionError(f"backfill {backfill_id}: {data}")
    runs = [
        RunRecord(
            r["runId"],
            r["status"],
            r["creationTime"],
            r["startTime"],
            r["endTime"],
            {t["key"]: t["value"] for t in r["tags"]},
            sorted("/".join(k["path"]) for k in r["assetSelection"] or []),
        )
        for r in data["runs"]
    ]
    return Backfill(backfill_id, data["status"], data["timestamp"], runs)


def graphql_latest_materialization_run(stack: UiStack, site: str) -> RunRecord | None:
    """The run of the newest materialization of `<site>/timeseries` (None: never materialized)."""
    node = stack.graphql(
        "query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode {"
        " assetMaterializations(limit: 1) { runId } } } }",
        {"path": [site, "timeseries"]},
    )["assetNodeOrError"]
    latest = node.get("assetMaterializations") or []
    if not latest:
        return None
    r = stack.graphql(
        "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { runId status"
        " creationTime startTime endTime tags { key value } assetSelection { path } } } }",
        {"id": latest[0]["runId"]},
    )["runOrError"]
    if r["__typename"] != "Run":
        raise AssertionError(f"run {latest[0]['runId']}: {r}")
    return RunRecord(
        r["runId"],
        r["status"],
        r["creationTime"],
        r["startTime"],
        r["endTime"],
        {t["key"]: t["value"] for t in r["tags"]},
        sorted("/".join(k["path"]) for k in r["assetSelection"] or []),
    )


def graphql_check_history(stack: UiStack, site: str, check: str, limit: int = 50) -> list[dict]:
    """The check's executions, newest first: status and run id."""
    return stack.graphql(
        "query($path: [String!]!, $check: String!, $limit: Int!) {"
        " assetCheckExecutions(assetKey: {path: $path}, checkName: $check, limit: $limit)"
        " { status runId timestamp } }",
        {"path": [site, "timeseries"], "check": check, "limit": limit},
    )["assetCheckExecutions"]


def graphql_latest_checks(stack: UiStack, site: str) -> dict[str, str | None]:
    """Each check of `<site>/timeseries` and the status of its evaluation for the latest
    materialization (None: never evaluated)."""
    data = stack.graphql(
        "query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode {"
        " assetChecksOrError { ... on AssetChecks { checks { name"
        " executionForLatestMaterialization { status } } } } } } }",
        {"path": [site, "timeseries"]},
    )
    checks = data["assetNodeOrError"]["assetChecksOrError"]["checks"]
    return {c["name"]: (c["executionForLatestMaterialization"] or {}).get("status") for c in checks}


@dataclass(frozen=True)
class Instigator:
    """A schedule or sensor as the daemon left it: on or off, and its recent ticks."""

    name: str
    kind: str  # "schedules" | "sensors": also the UI's route segment
    status: str
    ticks: list[str]  # newest first
    errors: list[str]


def graphql_instigators(stack: UiStack, ticks: int = 20) -> dict[str, Instigator]:
    data = stack.graphql(
        "query($repo: RepositorySelector!, $ticks: Int!) {"
        " repositoryOrError(repositorySelector: $repo)"
        " { ... on Repository {"
        " schedules { name scheduleState { status"
        " ticks(limit: $ticks) { status error { message } } } }"
        " sensors { name sensorState { status ticks(limit: $ticks) { status error { message } } } }"
        " } } }",
        {
            "repo": {"repositoryLocationName": stack.location, "repositoryName": stack.repository},
            "ticks": ticks,
        },
    )["repositoryOrError"]
    found = {}
    for kind, state_field in (("schedules", "scheduleState"), ("sensors", "sensorState")):
        for item in data[kind]:
            state = item[state_field]
            found[item["name"]] = Instigator(
                name=item["name"],
                kind=kind,
                status=state["status"],
                ticks=[t["status"] for t in state["ticks"]],
                errors=[
                    (t["error"] or {}).get("message", "")
                    for t in state["ticks"]
                    if t["status"] == "FAILURE"
                ],
            )
    return found


# --- the browser -------------------------------------------------------------------------------


def require_chromium() -> None:
    import pytest

    if not CHROMIUM.exists():
        pytest.fail(INSTALL_HINT, pytrace=False)


@dataclass
class Walk:
    """One browser page walking the UI: numbered screenshots, step timings, what the browser's
    console reported, and notes of what the walk saw (written to `walk.md` at the end)."""

    page: Any  # playwright.sync_api.Page
    stack: UiStack
    folder: Path
    timings: dict[str, float] = field(default_factory=dict)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    def settle(self, timeout: float = 30) -> bool:
        """Wait (bounded) until nothing on the page says it is loading; False if it still does."""
        from playwright.sync_api import expect

        try:
            expect(self.page.get_by_text(re.compile(r"^Loading"))).to_have_count(
                0, timeout=timeout * 1000
            )
            return True
        except AssertionError:
            return False

    def shot(self, name: str, settle: bool = True) -> Path:
        """A numbered screenshot of the page once it has loaded its data (or 30 s have passed,
        which the notes then say)."""
        if settle and not self.settle():
            self.note(f"screenshot {name}: the page was still loading after 30 s")
        path = self.folder / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        self.shots.append(path)
        return path

    def goto(self, path: str) -> None:
        self.page.goto(self.stack.url + path, wait_until="domcontentloaded")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time a step; on failure keep a screenshot of where it stopped."""
        started = time.monotonic()
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.shot(f"{name}-FAILED", settle=False)
            raise
        finally:
            self.timings[name] = time.monotonic() - started

    def report(self) -> str:
        lines = ["# The operator's walk through the Dagster UI", ""]
        lines += ["## Step timings", ""] + [f"- {k}: {v:.1f} s" for k, v in self.timings.items()]
        lines += ["", "## What the walk saw", ""] + [f"- {n}" for n in self.notes]
        lines += ["", "## Browser console errors", ""] + (
            [f"- {e}" for e in self.console_errors] or ["- none"]
        )
        lines += ["", "## Uncaught page errors", ""] + (
            [f"- {e}" for e in self.page_errors] or ["- none"]
        )
        lines += ["", "## Screenshots", ""] + [f"- {p.name}" for p in self.shots]
        return "\n".join(lines) + "\n"


@contextlib.contextmanager
def browser_walk(stack: UiStack, folder: Path) -> Iterator[Walk]:
    """Debian's Chromium under Playwright (never a downloaded browser), one page, UTC clock."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": 1600, "height": 1000}, timezone_id="UTC"
            )
            page = context.new_page()
            # Generous but bounded: a busy 2-core machine serves some GraphQL queries slowly.
            page.set_default_timeout(30_000)
            walk = Walk(page=page, stack=stack, folder=folder)
            page.on(
                "console", lambda m: m.type == "error" and walk.console_errors.append(m.text[:500])
            )
            page.on("pageerror", lambda e: walk.page_errors.append(str(e)[:500]))
            # A new instance greets its first visitor with a newsletter dialog over any page;
            # an operator skips it, whenever it shows up.
            community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
            page.add_locator_handler(
                community, lambda dialog: dialog.get_by_role("button", name="Skip").click()
            )
            try:
                yield walk
            finally:
                (folder / "walk.md").write_text(walk.report())
        finally:
            browser.close()


# --- the steps ---------------------------------------------------------------------------------


def open_site_group(walk: Walk, site: str) -> list[str]:
    """Step 1: the catalog lists the site's assets, the code location is loaded (no error), and
    the site's asset group shows them. Returns the asset keys the catalog links to."""
    page = walk.page
    walk.goto("/assets")
    page.locator(f'a[href="/assets/{site}/timeseries"]').first.wait_for()
    hrefs = page.locator(f'a[href^="/assets/{site}/"]').evaluate_all(
        "links => links.map(a => a.getAttribute('href'))"
    )
    walk.shot("catalog")

    walk.goto("/deployment/locations")
    row = page.locator(f'a[href^="/locations/{walk.stack.location}"]').first
    row.wait_for()
    page.get_by_text("Loaded", exact=True).first.wait_for()
    walk.shot("code-location-loaded")

    walk.goto(f"/locations/{walk.stack.location}/asset-groups/{site}")
    page.get_by_text("Asset Group in", exact=False).first.wait_for()
    page.get_by_text("timeseries", exact=True).first.wait_for()
    walk.shot("site-asset-group")
    return sorted({href.removeprefix("/assets/") for href in hrefs})


def asset_group_shows(walk: Walk, names: list[str]) -> list[str]:
    """The asset names (last key component) of `names` that the open group page does not show."""
    return [n for n in names if walk.page.get_by_text(n, exact=True).count() == 0]


_COUNT_LABELS = {
    "failed": "Failed",
    "materialized": "Materialized",
    "materializing": "Materializing",
    "missing": "Missing",
}


def read_partition_counts(walk: Walk, site: str, name: str = "partitions") -> PartitionCounts:
    """Step 2: `<site>/timeseries`, Partitions tab: `N Partitions Selected` and the status
    filters `Failed (n)`, `Materialized (n)`, `Materializing (n)`, `Missing (n)`."""
    page = walk.page
    walk.goto(f"/assets/{site}/timeseries?view=partitions")
    selected = page.get_by_text(re.compile(r"^\d+ Partitions? Selected$")).first
    selected.wait_for()
    counts = {"selected": int(selected.inner_text().split()[0])}
    for field_name, label in _COUNT_LABELS.items():
        text = page.get_by_text(re.compile(rf"^{label} \(\d+\)$")).first.inner_text()
        counts[field_name] = int(re.search(r"\((\d+)\)", text).group(1))
    walk.shot(name)
    return PartitionCounts(**counts)


def launch_range_from_asset_page(walk: Walk, site: str, first: str, last: str) -> str:
    """Step 3a: on the asset page, Materialize... -> the partition range -> Launch backfill.
    Checks that the dialog says it will be ONE run. Returns the backfill id from the toast."""
    page = walk.page
    walk.goto(f"/assets/{site}/timeseries?view=partitions")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    dialog.wait_for()
    selection = dialog.locator("input[type=text]").first
    selection.fill(f"[{first}...{last}]")
    selection.press("Enter")
    count = int(_partition_count(first, last))
    dialog.get_by_text(f"{count} partitions", exact=True).wait_for()
    # The asset's single-run backfill policy, as the dialog states it.
    dialog.get_by_text("Backfills all partitions in a single run.").wait_for()
    walk.shot("launch-dialog")
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"^Created backfill \w+$")).first
    toast.wait_for()
    backfill_id = toast.inner_text().split()[-1]
    walk.shot("backfill-created")
    return backfill_id


def _partition_count(first: str, last: str) -> int:
    start = datetime.strptime(first, PARTITION_FMT)
    end = datetime.strptime(last, PARTITION_FMT)
    return int((end - start) / PARTITION) + 1


def watch_backfill_run(walk: Walk, backfill_id: str, timeout: float = 120) -> None:
    """Step 3b: the backfill's Runs tab until its run shows Success (fails on Failure)."""
    page = walk.page
    walk.goto(f"/runs/b/{backfill_id}?tab=runs")
    page.get_by_text("Partition selection").first.wait_for()
    deadline = time.monotonic() + timeout
    shown_running = False
    while True:
        statuses = page.get_by_text(
            re.compile(r"^(Queued|Starting|Started|Success|Failure|Canceled)$")
        )
        seen = {statuses.nth(i).inner_text() for i in range(statuses.count())}
        if "Success" in seen:
            break
        if seen & {"Failure", "Canceled"}:
            walk.shot("backfill-run-failed")
            raise AssertionError(
                f"backfill {backfill_id}: its run ended {seen}\n{walk.stack.log_tail()}"
            )
        if seen and not shown_running:
            walk.shot("backfill-run-in-progress")
            shown_running = True
        if time.monotonic() > deadline:
            raise AssertionError(
                f"backfill {backfill_id}: no successful run after {timeout:.0f} s "
                f"(seen {seen or 'no run'})"
                f"\n{walk.stack.log_tail()}"
            )
        # The page polls by itself, but only every ~15 s.
        page.wait_for_timeout(2000)
        page.reload(wait_until="domcontentloaded")
        page.get_by_text("Partition selection").first.wait_for()
    walk.shot("backfill-run-succeeded")


def open_partition(walk: Walk, site: str, key: str) -> list[str]:
    """Step 3c: the partitions view filtered to one key, opened: returns the run ids (short,
    as the page shows them) its detail pane links to."""
    page = walk.page
    walk.goto(f"/assets/{site}/timeseries?view=partitions")
    page.get_by_placeholder(re.compile("^Filter by name")).fill(key)
    page.get_by_text(key, exact=True).first.click()
    page.get_by_text("Latest materialization").first.wait_for()
    page.locator('a[href^="/runs/"]').first.wait_for()
    links = page.locator('a[href^="/runs/"]').evaluate_all(
        "links => links.map(a => a.innerText.trim())"
    )
    walk.shot(f"partition-{key.replace(':', '')}")
    return links


@dataclass(frozen=True)
class ChecksView:
    header_count: int  # "Checks (n)"
    statuses: dict[str, str]  # check name -> the status under it in the list
    history: list[tuple[str, str]]  # the opened check's Execution history: (result, description)


_CHECK_STATUSES = {
    "Succeeded",
    "Failed",
    "Not evaluated",
    "Not Evaluated",  # the list's spelling; the check's own page says "Not evaluated"
    "Skipped",
    "Execution failed",
    "In progress",
    "Warning",
    "Passed",
}


# A check's latest status as the webserver has it -> as the Checks tab's list shows it.
CHECK_STATUS_LABELS = {
    None: "Not Evaluated",
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "EXECUTION_FAILED": "Execution failed",
    "SKIPPED": "Skipped",
    "IN_PROGRESS": "In progress",
}


def open_site_checks(walk: Walk, site: str, names: list[str], check: str) -> ChecksView:
    """Step 4: `<site>/timeseries`, Checks tab: the list of checks with their latest result, then
    one check's Execution history."""
    page = walk.page
    walk.goto(f"/assets/{site}/timeseries?view=checks")
    header = page.get_by_text(re.compile(r"^Checks \(\d+\)$")).first
    header.wait_for()
    header_count = int(re.search(r"\d+", header.inner_text()).group(0))
    page.get_by_placeholder("Filter checks").wait_for()
    # The list: each check's name, then the status line under it.
    pane = page.get_by_placeholder("Filter checks").locator(
        "xpath=ancestor::div[.//*[starts-with(normalize-space(.), 'Checks (')]][1]"
    )
    lines = [line.strip() for line in pane.inner_text().splitlines() if line.strip()]
    statuses: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line in names and line not in statuses:
            following = [x for x in lines[i + 1 : i + 4] if x in _CHECK_STATUSES]
            statuses[line] = following[0] if following else "?"
    walk.shot("checks")

    page.get_by_text(check, exact=True).first.click()
    page.get_by_role("tab", name="Execution history").or_(
        page.get_by_text("Execution history", exact=True)
    ).first.click()
    rows = page.locator("table tbody tr")
    rows.first.wait_for()
    history = []
    for i in range(rows.count()):
        cells = rows.nth(i).locator("td")
        if cells.count() < 4:
            continue
        history.append((cells.nth(0).inner_text().strip(), cells.nth(3).inner_text().strip()))
    walk.shot(f"check-history-{check}")
    return ChecksView(header_count, statuses, history)


@dataclass(frozen=True)
class AutomationRow:
    enabled: bool
    # The latest-tick icon: "done" (succeeded), "status" (skipped), "warning" (failed),
    # "missing" (no tick yet).
    latest_tick: str


_TICK_ICONS = {"done", "status", "warning", "missing"}


def read_automation(walk: Walk, instigators: dict[str, Instigator]) -> dict[str, AutomationRow]:
    """Step 5: the Automation page: each schedule and sensor's switch and latest-tick icon.

    Rows are found by their link (`/locations/<location>/<schedules|sensors>/<name>`). The page
    is a virtualized list: with hundreds of per-site sensors the rows below the fold are not in
    the page; filter by name first then.
    """
    page = walk.page
    walk.goto("/automation")
    found: dict[str, AutomationRow] = {}
    for name, instigator in instigators.items():
        link = page.locator(f'a[href="/locations/{walk.stack.location}/{instigator.kind}/{name}"]')
        link.wait_for()
        row = link.locator("xpath=..")
        # The row's first checkbox selects it; the second is the on/off switch, drawn once the
        # instigator's state has loaded (as is the latest-tick button).
        switch = row.locator("input[type=checkbox]").nth(1)
        switch.wait_for(state="attached")
        row.locator("button [role=img]").first.wait_for()
        # A switch can be drawn off for a moment before the state arrives: give it 10 s to be on.
        deadline = time.monotonic() + 10
        while not (enabled := switch.is_checked()) and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        icons = row.locator("button [role=img]").evaluate_all(
            "icons => icons.map(i => i.getAttribute('aria-label'))"
        )
        tick = next((i for i in icons if i in _TICK_ICONS), "?")
        found[name] = AutomationRow(enabled, tick)
    walk.shot("automation")
    return found


if __name__ == "__main__":
    # `python -m vitals_pipeline_tests.ui SITES START CLOSED`: the seeding child of `ui_stack`.
    names, start_at, closed_at = sys.argv[1:4]
    seed(
        Plan(
            tuple(names.split(",")),
            datetime.fromisoformat(start_at),
            datetime.fromisoformat(closed_at),
        )
    )


def graphql_fleet_status(stack: UiStack) -> dict[str, str]:
    """The metadata of the newest observation of `fleet/status`, label -> text ({}: none yet)."""
    node = stack.graphql(
        "{ assetNodeOrError(assetKey: {path: [\"fleet\", \"status\"]}) { ... on AssetNode {"
        " assetObservations(limit: 1) { metadataEntries { label"
        " ... on MarkdownMetadataEntry { mdStr } ... on TextMetadataEntry { text }"
        " ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } } } }"
    )["assetNodeOrError"]
    observations = node.get("assetObservations") or []
    if not observations:
        return {}
    return {
        e["label"]: str(next((e[k] for k in ("mdStr", "text", "intValue", "floatValue") if k in e), ""))
        for e in observations[0]["metadataEntries"]
    }


def open_fleet_status(walk: Walk, site: str) -> str:
    """Step 6: the `fleet/status` asset page, where the sites that are behind are listed; waits
    until it names `site` and returns the page's text."""
    page = walk.page
    walk.goto("/assets/fleet/status")
    page.get_by_text(site, exact=False).first.wait_for()
    walk.shot("fleet-status")
    return page.inner_text("body")
