"""Packages whose public names load on first use (PEP 562), so that importing them stays cheap.

>>> import sys, types
>>> package = types.ModuleType("demo")
>>> package.__getattr__, package.__dir__ = attach("json", {"dumps": "decoder", "decoder": "decoder"})
>>> package.decoder.__name__
'json.decoder'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def attach(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``exports`` is imported from the submodule it
    maps to on first use (a name mapped to itself is that submodule) and then cached in the package."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{exports[name]}")
        value = module if exports[name] == name else getattr(module, name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
