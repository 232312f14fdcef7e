"""Per-sample classification losses, all to be *maximised* by an attack.

Each loss takes ``logits (B, C)`` and ``labels (B,)`` and returns ``(B,)``. In targeted mode ``labels`` are the
target classes and the loss grows as the target class wins.

>>> import torch
>>> logits = torch.tensor([[2.0, 1.0, 0.0]])
>>> classification_loss("margin", logits, torch.tensor([0]))
tensor([-1.])
>>> classification_loss("margin", logits, torch.tensor([1]), targeted=True)
tensor([-1.])
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from .value_checks import check_loss_name


def _true_and_best_other(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true, others.amax(dim=1)


def cross_entropy(logits: Tensor, labels: Tensor, targeted: bool = False) -> Tensor:
    """Cross-entropy; negated in targeted mode so that maximising it pulls towards the target."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    return -ce if targeted else ce


def margin(logits: Tensor, labels: Tensor, targeted: bool = False) -> Tensor:
    """Carlini-Wagner margin: ``max_other - z_label`` (untargeted), ``z_target - max_other`` (targeted)."""
    true, other = _true_and_best_other(logits, labels)
    return true - other if targeted else other - true


def dlr(logits: Tensor, labels: Tensor, targeted: bool = False) -> Tensor:
    """Difference of logits ratio (Croce & Hein, 2020): the margin divided by the spread of the top logits.

    Untargeted: ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``; targeted (no true label known):
    ``(z_t - max_{j!=t} z_j) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs at least 3 (4 when targeted) classes.
    """
    needed = 4 if targeted else 3
    if logits.shape[1] < needed:
        raise ValueError(f"the dlr loss needs at least {needed} classes, got {logits.shape[1]}; use 'ce' or 'margin'")
    top = logits.topk(needed, dim=1).values
    spread = top[:, 0] - (0.5 * (top[:, 2] + top[:, 3]) if targeted else top[:, 2])
    return margin(logits, labels, targeted) / (spread + 1e-12)


CLASSIFICATION_LOSSES: dict[str, Callable[..., Tensor]] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def classification_loss(name: str, logits: Tensor, labels: Tensor, targeted: bool = False) -> Tensor:
    """Look up the loss ``name`` (one of ``CLASSIFICATION_LOSSES``) and apply it per sample."""
    check_loss_name(name)
    return CLASSIFICATION_LOSSES[name](logits, labels, targeted)
