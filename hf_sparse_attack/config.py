"""Helpers shared by the attack configs: kernel storage and serialisation."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from .structure import Structure, check_kernel
from .value_checks import check_loss_name, check_positive_int

KernelSpec = tuple[tuple[int, ...], ...]


def freeze_kernel(kernel: Any) -> KernelSpec | None:
    """Store a kernel (tensor, array or nested lists of 0/1) as a hashable, comparable tuple of tuples."""
    if kernel is None:
        return None
    if isinstance(kernel, tuple) and all(isinstance(row, tuple) for row in kernel):
        kernel = torch.tensor(kernel)
    if not isinstance(kernel, Tensor):
        try:
            kernel = torch.as_tensor(kernel)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"kernel must be a binary 2-D tensor, got {type(kernel).__name__}") from None
    checked = check_kernel(kernel)
    return tuple(tuple(int(v) for v in row) for row in checked.tolist())


def check_config(config: Any, positive: tuple[str, ...], flags: tuple[str, ...]) -> None:
    """The checks every attack config shares, in ``__post_init__``: the ``positive`` fields are positive integers,
    the ``flags`` are booleans, ``seed`` is an integer, ``loss`` (when the config has one and it is set) is a known
    classification loss, and ``kernel`` is stored frozen. Each raises ``ValueError`` naming the field.

    >>> from hf_sparse_attack import SparseRS
    >>> SparseRS(k=0)
    Traceback (most recent call last):
    ...
    ValueError: k must be a positive integer, got 0
    """
    for name in positive:
        check_positive_int(name, getattr(config, name))
    if not isinstance(config.seed, int) or isinstance(config.seed, bool):
        raise ValueError(f"seed must be an integer, got {config.seed!r}")
    for name in flags:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(config, name)!r}")
    if getattr(config, "loss", None) is not None:
        check_loss_name(config.loss)
    object.__setattr__(config, "kernel", freeze_kernel(config.kernel))


def build_structure(kernel: KernelSpec | None, stride: int, height: int, width: int) -> Structure | None:
    """The :class:`Structure` for images of ``height x width``, or ``None`` for unstructured (pixel) sparsity."""
    if kernel is None:
        return None
    return Structure(torch.tensor(kernel, dtype=torch.float32), stride, height, width)


def to_dict(config: Any) -> dict:
    """A JSON-ready dict of an attack config, with its class name under ``"attack"``."""
    out = {"attack": type(config).__name__}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, tuple):
            value = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in value]
        out[f.name] = value
    return out
