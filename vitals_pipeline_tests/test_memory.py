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
