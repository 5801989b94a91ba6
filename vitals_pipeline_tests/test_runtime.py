"""The process tweaks (runtime.py), each in a fresh interpreter: they change process globals.

A process that runs the timeseries step applies the tweaks VITALS_PROCESS_TWEAKS chooses; one
that only loads the definitions (the webserver, the daemon, a code server) is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vitals_pipeline.config import ConfigError
from vitals_pipeline.runtime import TWEAKS, chosen_tweaks

from .conftest import SITE

# What a process reports about itself at the end: Arrow's pool, whether pandas was imported,
# and (from an exit hook registered first, so run last) whether the heap was frozen at exit.
REPORT = """
import atexit, gc, sys
atexit.register(lambda: print('frozen-at-exit', gc.get_freeze_count() > 0))
{body}
import pyarrow as pa
print('pool', pa.default_memory_pool().backend_name)
print('pandas-imported', 'pandas' in sys.modules)
"""

LOAD_ONLY = "import vitals_pipeline.definitions; import pyarrow as pa; pa.array([0])"

RUN_STEP = """
import dagster as dg
from vitals_pipeline.assets.keys import range_tags, timeseries_key
from vitals_pipeline.config import Settings
from vitals_pipeline.definitions import build_definitions
defs = build_definitions(Settings.from_env())
result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
    asset_selection=[timeseries_key('{site}')], instance=dg.DagsterInstance.ephemeral(),
    tags=range_tags('2026-03-09-10:00', '2026-03-09-10:10'))
print('run-success', result.success)
"""


def report(body: str, env: dict[str, str], **extra: str) -> dict[str, str]:
    environ = {**os.environ, **env, **extra}
    environ.pop("ARROW_DEFAULT_MEMORY_POOL", None)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", REPORT.format(body=body)],
        env=environ, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


@pytest.mark.slow
def test_a_process_that_only_loads_the_definitions_is_left_alone(pipeline_env):
    state = report(LOAD_ONLY, pipeline_env)
    assert state == {"pool": "mimalloc", "pandas-imported": "True", "frozen-at-exit": "False"}


@pytest.mark.slow
def test_a_process_that_runs_the_step_applies_the_chosen_tweaks(pipeline_env):
    body = RUN_STEP.format(site=SITE)
    every = report(body, pipeline_env)
    assert every == {"run-success": "True", "pool": "system", "pandas-imported": "False",
                     "frozen-at-exit": "True"}
    none = report(body, pipeline_env, VITALS_PROCESS_TWEAKS="none")
    assert none == {"run-success": "True", "pool": "mimalloc", "pandas-imported": "True",
                    "frozen-at-exit": "False"}
    one = report(body, pipeline_env, VITALS_PROCESS_TWEAKS="defer-pandas")
    assert one == {"run-success": "True", "pool": "mimalloc", "pandas-imported": "False",
                   "frozen-at-exit": "False"}


def test_the_switch_names_the_tweaks():
    assert chosen_tweaks({}) == set(TWEAKS)
    assert chosen_tweaks({"VITALS_PROCESS_TWEAKS": "ALL"}) == set(TWEAKS)
    assert chosen_tweaks({"VITALS_PROCESS_TWEAKS": " none "}) == set()
    assert chosen_tweaks({"VITALS_PROCESS_TWEAKS": "freeze-at-exit, defer-pandas"}) == {
        "freeze-at-exit", "defer-pandas"}
    # malloc-trim was measured and dropped: naming it is an error, not silently nothing.
    with pytest.raises(ConfigError, match="unknown malloc-trim; expected `all`.*system-allocator"):
        chosen_tweaks({"VITALS_PROCESS_TWEAKS": "malloc-trim,defer-pandas"})


FRAGMENTED_HEAP = """
import sys
from vitals_pipeline.runtime import after_big_fetch
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
buffers = [bytearray(1000) for _ in range(300_000)]
kept = buffers[::64]  # a few live blocks pin the freed heap between them
del buffers
before = rss()
after_big_fetch(int(sys.argv[1]))
print('released-mb', (before - rss()) // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_big_fetch_hands_its_freed_heap_back_when_chosen():
    def released(choice: str, samples: int) -> int:
        done = subprocess.run(
            [sys.executable, "-c", FRAGMENTED_HEAP, str(samples)],
            env={**os.environ, "VITALS_PROCESS_TWEAKS": choice},
            capture_output=True, text=True, timeout=60, check=True,
        )
        return int(done.stdout.split()[-1])

    assert released("trim-after-fetch", 6_480_000) > 100  # of ~290 MB freed
    assert released("trim-after-fetch", 10_000) < 10  # a small window: not worth a trim
    assert released("none", 6_480_000) < 10


def test_pyarrow_converts_pandas_once_a_conversion_imports_it():
    code = """
import sys
import numpy as np, pyarrow as pa, pyarrow.compute as pc
from vitals_pipeline.runtime import prepare_step_process
prepare_step_process()
a = pa.array(np.array([1.0, np.nan]), from_pandas=True)
pc.greater(a, 0.5); a.to_numpy(zero_copy_only=False); pa.scalar(1.0)
print('after-arrow', 'pandas' in sys.modules)
import pandas as pd
table = pa.Table.from_pandas(pd.DataFrame({'x': [1.0, None]}))
print('from-pandas-nulls', table.column('x').null_count)
print('series-nulls', pa.array(pd.Series([1.0, None])).null_count)
print('roundtrip', table.to_pandas()['x'].isna().sum())
"""

    def run(choice: str) -> list[str]:
        return subprocess.run(
            [sys.executable, "-W", "ignore", "-c", code],
            env={**os.environ, "VITALS_PROCESS_TWEAKS": choice},
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout.split()

    # Deferred, pandas is imported only by the conversion, after which pyarrow treats pandas
    # objects as before (NaN -> null).
    assert run("defer-pandas") == [
        "after-arrow", "False", "from-pandas-nulls", "1", "series-nulls", "1", "roundtrip", "1"
    ]
    assert run("none")[:2] == ["after-arrow", "True"]
