"""Checks of the attacks' tensor arguments (images, targets): each raises ``ValueError`` naming the bad value and
what is allowed. Scalar settings: :mod:`.value_checks`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .objective import batch_len


def check_images(x: Any) -> Tensor:
    """``x`` must be a floating ``(B, C, H, W)`` tensor with finite values in ``[0, 1]`` and ``B >= 1``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"images must hold at least one non-empty image, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or Inf; pixel values must be finite and in [0, 1]")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"images must have values in [0, 1] (before normalisation), got min {lo:.4g}, max {hi:.4g}")
    return x


def check_targets(x: Tensor, targets: Any, objective: Any = None) -> None:
    """``targets`` must describe exactly one entry per image, and suit ``objective`` when it can tell.

    An objective may offer ``check_targets(x, targets)`` raising ``ValueError`` for targets it cannot use; it is
    called once per attack, before any perturbation.
    """
    n = batch_len(targets)
    if n != x.shape[0]:
        raise ValueError(f"targets describe {n} samples but the image batch has {x.shape[0]}")
    if isinstance(targets, Tensor) and targets.is_floating_point() and not bool(torch.isfinite(targets).all()):
        raise ValueError("targets contain NaN or Inf")
    own_check = getattr(objective, "check_targets", None)
    if own_check is not None:
        own_check(x, targets)
