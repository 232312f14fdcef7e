"""Checks of scalar settings (torch-free, so that option classes import nothing heavy): each raises
``ValueError`` naming the bad value and what is allowed.

>>> check_range("alpha", 0.5, 0.0, 1.0)
0.5
>>> check_choice("loss", "hinge", ("ce", "margin"))
Traceback (most recent call last):
    ...
ValueError: unknown loss 'hinge'; allowed: ['ce', 'margin']
"""

from __future__ import annotations

import math
from typing import Any

from .vocabulary import CLASSIFICATION_LOSS_NAMES


def check_positive_int(name: str, value: Any, maximum: int | None = None, what: str = "") -> int:
    """``value`` must be an int in ``[1, maximum]``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value} exceeds the {maximum} {what or 'available'}")
    return value


def check_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    """``value`` must be a finite real number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        left = "(" if low_open else "["
        raise ValueError(f"{name} must be in {left}{low}, {high}], got {value!r}")
    return float(value)


def check_choice(what: str, value: Any, allowed: tuple) -> Any:
    """``value`` must be one of ``allowed``; ``what`` names it in the message (e.g. ``"detection loss"``)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {list(allowed)}")
    return value


def check_flag(name: str, value: Any) -> None:
    """``value`` must be ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_loss_name(name: Any) -> None:
    """``name`` must be a classification loss (:data:`~.vocabulary.CLASSIFICATION_LOSS_NAMES`)."""
    check_choice("loss", name, CLASSIFICATION_LOSS_NAMES)
