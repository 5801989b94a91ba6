"""Process-wide memory settings (memory.py), each in a fresh interpreter: they change globals."""

from __future__ import annotations

import os
import subprocess
import sys


def python(code: str, **env: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env={**os.environ, "ACE_SITES": "test_site", **env},
        capture_output=True, text=True, timeout=120, check=True,
    )
    return done.stdout.split()


def test_runs_use_the_system_allocator_unless_the_environment_chose_one():
    code = (
        "import pyarrow as pa; from vitals_pipeline.memory import use_system_allocator; "
        "use_system_allocator(); print(pa.default_memory_pool().backend_name)"
    )
    assert python(code, ARROW_DEFAULT_MEMORY_POOL="") == ["system"]
    # mimalloc is the wheels' default: an explicit choice of it is kept.
    assert python(code, ARROW_DEFAULT_MEMORY_POOL="mimalloc") == ["mimalloc"]


def test_released_memory_goes_back_and_the_heap_is_frozen_at_exit():
    # The check is registered before the definitions are imported, so it runs after their
    # exit hook (atexit is last-in, first-out).
    code = (
        "import atexit, gc; atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
        "import vitals_pipeline.definitions; from vitals_pipeline.memory import release_freed_memory; "
        "release_freed_memory(); print('frozen-before-exit', gc.get_freeze_count() > 0)"
    )
    assert python(code) == ["frozen-before-exit", "False", "frozen", "True"]


def test_pyarrow_runs_without_importing_pandas_until_a_conversion_needs_it():
    code = """
import sys
import numpy as np, pyarrow as pa, pyarrow.compute as pc
from vitals_pipeline.lazy import defer_pandas_in_pyarrow
defer_pandas_in_pyarrow()
a = pa.array(np.array([1.0, np.nan]), from_pandas=True)
pc.greater(a, 0.5); a.to_numpy(zero_copy_only=False); pa.scalar(1.0)
print('after-arrow', 'pandas' in sys.modules)
import pandas as pd
table = pa.Table.from_pandas(pd.DataFrame({'x': [1.0, None]}))
print('from-pandas-nulls', table.column('x').null_count)
print('series-nulls', pa.array(pd.Series([1.0, None])).null_count)
print('roundtrip', table.to_pandas()['x'].isna().sum())
"""
    # Without the deferral, the first pa.array() imports pandas; with it, pandas is imported
    # only by the conversion, after which pyarrow treats pandas objects as before (NaN -> null).
    assert python(code) == [
        "after-arrow", "False", "from-pandas-nulls", "1", "series-nulls", "1", "roundtrip", "1"
    ]
    undeferred = code.replace("defer_pandas_in_pyarrow()", "pass")
    assert python(undeferred)[:2] == ["after-arrow", "True"]
