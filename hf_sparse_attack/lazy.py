"""Packages whose public names load on first use (PEP 562), so that importing them stays cheap.

>>> import sys, types
>>> package = types.ModuleType("demo")
>>> package.__all__, package.__getattr__, package.__dir__ = attach("json", {"decoder": ("decoder", "JSONDecoder")})
>>> package.__all__, package.decoder.__name__
(['JSONDecoder', 'decoder'], 'json.decoder')
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def attach(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[list[str], Callable[[str], Any],
                                                                      Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each submodule to the names
    it defines, imported on first use (a name equal to its submodule's is the submodule) and then cached."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{where[name]}")
        value = module if where[name] == name else getattr(module, name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return sorted(where), __getattr__, __dir__
