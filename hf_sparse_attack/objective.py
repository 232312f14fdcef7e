"""The seam between attacks and tasks: the :class:`Objective` protocol and the core's classifier objective.

An attack only ever asks an objective two things about a batch of images ``x (B, C, H, W)`` in ``[0, 1]``: a
per-sample loss to maximise and a per-sample success flag. ``targets`` is opaque to the attack (a tensor or a list
with one entry per sample); the attack only selects rows of it with :func:`select`.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
>>> objective = as_objective(model)
>>> x, y = torch.rand(2, 3, 2, 2), torch.tensor([0, 2])
>>> loss, success = evaluate(objective, x, y)
>>> loss.shape, success.dtype
(torch.Size([2]), torch.bool)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .losses import check_loss_name, classification_loss


@runtime_checkable
class Objective(Protocol):
    """What an attack needs from a task. Both methods work per sample and hold no cross-sample state."""

    def loss(self, x: Tensor, targets: Any) -> Tensor:
        """``(B,)`` loss to be maximised (differentiable w.r.t. ``x`` for gradient attacks)."""
        ...

    def success(self, x: Tensor, targets: Any) -> Tensor:
        """``(B,)`` bool: the attack goal is reached for this sample."""
        ...


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class ClassifierObjective:
    """Objective for any ``nn.Module`` mapping ``[0, 1]`` images to logits ``(B, num_classes)``.

    ``targets`` are the true labels (untargeted: success when the prediction differs) or the target classes
    (``targeted=True``: success when the prediction equals the target).
    """

    model: nn.Module
    loss_name: str = "ce"
    targeted: bool = False

    def __post_init__(self) -> None:
        check_loss_name(self.loss_name)

    def logits(self, x: Tensor) -> Tensor:
        out = self.model(x)
        out = getattr(out, "logits", out)
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise ValueError(
                f"the model must return logits of shape (batch, classes), got {getattr(out, 'shape', type(out))}"
            )
        return out

    def check_targets(self, x: Tensor, targets: Any) -> None:
        """``targets`` must be integer class indices ``(B,)`` within the model's classes (one forward of ``x[:1]``)."""
        if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.dtype not in _INTEGER_DTYPES:
            raise ValueError(f"targets of a classifier must be a 1-D integer tensor of class indices, got "
                             f"{getattr(targets, 'dtype', type(targets).__name__)} of shape "
                             f"{tuple(getattr(targets, 'shape', ()))}")
        with torch.no_grad():
            classes = self.logits(x[:1]).shape[1]
        low, high = targets.min().item(), targets.max().item()
        if low < 0 or high >= classes:
            raise ValueError(f"targets must be class indices in [0, {classes}) for this model's {classes} "
                             f"classes, got values from {low} to {high}")

    def loss_and_success(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.logits(x)
        targets = targets.long()
        loss = classification_loss(self.loss_name, logits, targets, self.targeted)
        hit = logits.detach().argmax(dim=1) == targets
        return loss, hit if self.targeted else ~hit

    def loss(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.loss_and_success(x, targets)[0]

    def success(self, x: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            return self.loss_and_success(x, targets)[1]


def as_objective(model_or_objective: Any, loss: str | None = None, targeted: bool = False) -> Objective:
    """Return an :class:`Objective`: wrap a plain ``nn.Module`` classifier, pass an objective through.

    ``loss`` and ``targeted`` configure the wrapper for plain classifiers; an objective defines its own loss and
    goal, so setting them for one raises ``ValueError`` instead of being silently ignored.
    """
    if isinstance(model_or_objective, nn.Module):
        return ClassifierObjective(model_or_objective, loss or "ce", targeted)
    if isinstance(model_or_objective, Objective):
        if loss is not None or targeted:
            raise ValueError(
                "loss= and targeted= configure plain nn.Module classifiers; this objective "
                f"({type(model_or_objective).__name__}) defines its own loss and goal, so configure it instead"
            )
        return model_or_objective
    raise ValueError(
        f"expected an nn.Module returning logits or an Objective with loss() and success(), "
        f"got {type(model_or_objective).__name__}"
    )


class NonFiniteModelError(ValueError):
    """The model gave a NaN or infinite loss on the clean images: the attack cannot tell whether it was fooled."""


def evaluate(objective: Objective, x: Tensor, targets: Any) -> tuple[Tensor, Tensor]:
    """Per-sample ``(loss, success)`` in one forward pass when the objective offers ``loss_and_success``.

    ``success`` is ``False`` wherever the loss is NaN or infinite: a model that breaks down is never "fooled". The
    shapes are checked, so an objective returning anything but ``(B,)`` per-sample values raises ``ValueError``.
    """
    both = getattr(objective, "loss_and_success", None)
    if both is not None:
        loss, success = both(x, targets)
    else:
        loss = objective.loss(x, targets)
        with torch.no_grad():
            success = objective.success(x, targets)
    for name, value in (("loss", loss), ("success", success)):
        if not isinstance(value, Tensor) or value.shape != (x.shape[0],):
            raise ValueError(f"the objective's {name} must be a tensor of shape ({x.shape[0]},), one value per "
                             f"sample, got {getattr(value, 'shape', type(value).__name__)}")
    return loss, success.bool() & torch.isfinite(loss.detach())


def require_finite(loss: Tensor) -> None:
    """Raise :class:`NonFiniteModelError` unless every clean-image loss is finite (one host sync)."""
    bad = int((~torch.isfinite(loss)).sum())
    if bad:
        raise NonFiniteModelError(
            f"the model gave a NaN or infinite loss on {bad} of {loss.shape[0]} clean images, before any "
            "perturbation; check the model and its inputs (dtype, normalisation) before attacking"
        )


def select(targets: Any, index: Tensor | Sequence[int]) -> Any:
    """Rows ``index`` of ``targets``: a tensor is indexed, a list/tuple gives the list of those entries."""
    if isinstance(targets, Tensor):
        index = torch.as_tensor(index, device=targets.device, dtype=torch.long)
        return targets.index_select(0, index)
    if isinstance(targets, (list, tuple)):
        positions = index.tolist() if isinstance(index, Tensor) else list(index)
        return [targets[i] for i in positions]
    raise ValueError(f"targets must be a tensor or a list with one entry per sample, got {type(targets).__name__}")


def batch_len(targets: Any) -> int:
    """Number of samples described by ``targets`` (tensor rows or list entries)."""
    if isinstance(targets, Tensor):
        if targets.dim() == 0:
            raise ValueError("targets must have one entry per sample, got a 0-d tensor")
        return targets.shape[0]
    if isinstance(targets, (list, tuple)):
        return len(targets)
    raise ValueError(f"targets must be a tensor or a list with one entry per sample, got {type(targets).__name__}")
