"""Process-wide tweaks for the processes that run the timeseries step, each behind a switch.

Only a process that runs the step applies them, when the step starts (`prepare_step_process`):
run workers, `dagster asset materialize`, `vitals backfill` and `vitals demo`. The webserver, the
daemon and the code servers load the definitions but never run a step, and are left as they are.

VITALS_PROCESS_TWEAKS chooses them: unset or `all` = every tweak below, `none` = none, or a
comma-separated list of names. Each was kept for a gain measured by bench/tweaks.py in
interleaved A/B pairs (bench/RESULTS.md, "Process tweaks"):

- `system-allocator`: the C library's malloc as Arrow's default pool instead of the wheels'
  mimalloc, which keeps the pages it frees for reuse: a range run allocates hundreds of MB of
  short-lived buffers (each page's columns, the combined and the cleaned frame). Measured:
  `vitals backfill` of two days 1.1-3.1 CPU s cheaper, a tick's peak RSS 24-40 MiB lower, in
  every round; a day's peak RSS was higher with it in 3 of 4 rounds (median 126 MiB, within that
  session's noise).
- `freeze-at-exit`: skip the garbage collector's pass over every object while the interpreter
  shuts down (gc.freeze at exit): a process that loaded Dagster holds millions of objects, and
  that pass comes after the run is recorded. Python does not promise `__del__` for objects still
  alive at exit anyway; files and the instance are closed by then. Measured: 0.2-0.9 CPU s less
  per `dagster asset materialize` (a day or a tick) in every round.
- `defer-pandas`: pyarrow imports pandas on its first check whether an argument is a pandas
  object (pa.array, pa.scalar, to_numpy, a compute call with a Python number); here that first
  check finds none, so a run that never converts to pandas never imports it. pyarrow imports
  pandas for real, and recognizes pandas objects again, as soon as a conversion needs it
  (Table.from_pandas, to_pandas). Until then a pandas Series given straight to pa.array is read
  as a plain sequence: none of this project's code does that. Measured: peak RSS 20-40 MiB lower
  for a day and a tick in every round (pandas' modules); its CPU gain was within noise.

- `trim-after-fetch`: glibc's malloc_trim once a big window (`BIG_WINDOW_SAMPLES`) is fetched,
  combined and cleaned, before it is stored: glibc keeps the freed page buffers (~200 MB for a
  day) and raises its mmap threshold after large frees, so without it the store and the quality
  grid allocate on top of them. Called by the fetch (`after_big_fetch`), not at step start.

Measured and dropped (bench/RESULTS.md, "Process tweaks"): malloc_trim *after* a big window was
stored and between the runs of `vitals backfill` (after the peak) lowered no peak RSS and saved no
CPU; `vitals backfill`'s peak was 5-93 MiB higher with it in every round.
"""

from __future__ import annotations

import os
import sys
import threading

from vitals_pipeline.config import ConfigError

SWITCH = "VITALS_PROCESS_TWEAKS"
SYSTEM_ALLOCATOR = "system-allocator"
FREEZE_AT_EXIT = "freeze-at-exit"
DEFER_PANDAS = "defer-pandas"
TRIM_AFTER_FETCH = "trim-after-fetch"
TWEAKS = (SYSTEM_ALLOCATOR, FREEZE_AT_EXIT, DEFER_PANDAS, TRIM_AFTER_FETCH)
# A window this big frees hundreds of MB of page buffers once it is combined (a day of a
# 4,500-point site is 6.48M samples): worth handing back before it is stored.
BIG_WINDOW_SAMPLES = 1_000_000

_prepared: set[str] = set()
_lock = threading.Lock()


def chosen_tweaks(environ=os.environ) -> frozenset[str]:
    """The tweaks VITALS_PROCESS_TWEAKS selects (all of them when it is unset)."""
    value = (environ.get(SWITCH) or "all").strip().lower()
    if value == "all":
        return frozenset(TWEAKS)
    if value == "none":
        return frozenset()
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(TWEAKS))
    if unknown:
        raise ConfigError(
            f"{SWITCH}={environ.get(SWITCH)!r}: unknown {', '.join(unknown)}; expected `all` "
            f"(the default), `none`, or a comma-separated list of {', '.join(TWEAKS)}"
        )
    return frozenset(names)


def prepare_step_process() -> None:
    """Apply the chosen process-wide tweaks once in this process; the step calls it first."""
    chosen = chosen_tweaks()
    with _lock:
        todo = [name for name in (SYSTEM_ALLOCATOR, FREEZE_AT_EXIT, DEFER_PANDAS)
                if name in chosen and name not in _prepared]
        for name in todo:
            _APPLY[name]()
            _prepared.add(name)


def after_big_fetch(samples: int) -> None:
    """Hand the heap that fetching a big window freed back to the OS before it is stored
    (`trim-after-fetch`; ~10 ms; a no-op for small windows, off the C library glibc, or when not
    chosen)."""
    if samples < BIG_WINDOW_SAMPLES or TRIM_AFTER_FETCH not in chosen_tweaks():
        return
    try:
        import ctypes

        trim = getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)


def _use_system_allocator() -> None:
    """The system allocator as Arrow's default pool, unless ARROW_DEFAULT_MEMORY_POOL chose one.
    Buffers allocated before keep their own pool (each remembers it): safe at any time."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


def _freeze_at_exit() -> None:
    import atexit
    import gc

    atexit.register(gc.freeze)


class _PandasDeferred:
    """A meta path finder that makes `import pandas` fail (installed only for one probe)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas":
            raise ImportError("pandas deferred by vitals_pipeline.runtime")
        return None


def _defer_pandas_in_pyarrow() -> None:
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    sys.meta_path.insert(0, _PandasDeferred)
    try:
        pa.array([0])  # pyarrow's first pandas check, now finding none
    finally:
        sys.meta_path.remove(_PandasDeferred)


_APPLY = {
    SYSTEM_ALLOCATOR: _use_system_allocator,
    FREEZE_AT_EXIT: _freeze_at_exit,
    DEFER_PANDAS: _defer_pandas_in_pyarrow,
}
