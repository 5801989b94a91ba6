"""Imports deferred until they are needed.

- Package namespaces whose names are imported on first use (PEP 562): `vitals status`, the
  daemon and the webserver import small parts of the storage and automation packages; their
  `__init__` modules must not drag in the rest (DuckDB, pyarrow, the sensors).
- pandas, which pyarrow imports on its first check for pandas objects (`defer_pandas_in_pyarrow`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: str, sources: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` resolving each name of `sources` (name -> submodule)
    on first access, then keeping it in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sources[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


class _PandasDeferred:
    """A meta path finder that makes `import pandas` fail (installed only for one probe)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas":
            raise ImportError("pandas deferred by vitals_pipeline.lazy")
        return None


def defer_pandas_in_pyarrow() -> None:
    """Stop pyarrow from importing pandas for runs that never use it.

    pyarrow's first check whether an argument is a pandas object (pa.array, pa.scalar,
    Array.to_numpy, a compute call with a Python number...) imports pandas: ~0.4 s of CPU in
    every timeseries run, a third of a live tick. Here that first check finds pandas missing, so
    the checks answer "not pandas" without importing it. pyarrow imports pandas for real, and
    from then on recognizes pandas objects again, as soon as a conversion needs it
    (Table.from_pandas, which the IO manager uses for a DataFrame output, or to_pandas). Until
    then a pandas Series given straight to pa.array is read as a plain sequence: none of this
    project's code does that. Does nothing once pandas is imported.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    sys.meta_path.insert(0, _PandasDeferred)
    try:
        pa.array([0])  # pyarrow's first pandas check, now finding none
    finally:
        sys.meta_path.remove(_PandasDeferred)
