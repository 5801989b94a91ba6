"""Package namespaces whose names are imported on first use (PEP 562): `vitals status`, the
daemon and the webserver import small parts of the storage and automation packages; their
`__init__` modules must not drag in the rest (DuckDB, pyarrow, the sensors). (pyarrow's import of
pandas is deferred by runtime.py, in the processes that run steps.)
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
