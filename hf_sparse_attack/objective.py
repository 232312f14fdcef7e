"""The seam between attacks and tasks: the :class:`Objective` protocol and the core's classifier objective.

An attack asks an objective three things about a batch of images ``x (B, C, H, W)`` in ``[0, 1]``, per sample:

- ``loss``: what the gradient (or the random search) climbs;
- ``success``: the attack's goal is reached, so the sample may stop;
- ``score``: how close the sample is to that goal *in the terms of the metric the user reports* (higher is
  closer). The loss steers; the score judges: every attack keeps, per sample, the iterate with the best score
  (success first), never merely the highest loss. An objective offers it through ``loss_success_score``; one that
  does not is scored by its loss.

``targets`` is opaque to the attack (a tensor or a list with one entry per sample); the attack only selects rows of
it with :func:`select`.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
>>> objective = as_objective(model)
>>> x, y = torch.rand(2, 3, 2, 2), torch.tensor([0, 2])
>>> loss, success, score = measure(objective, x, y)
>>> loss.shape, success.dtype, bool((score > 0).eq(success).all())  # a classifier's score: the margin
(torch.Size([2]), torch.bool, True)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .losses import classification_loss, margin
from .value_checks import check_loss_name


@runtime_checkable
class Objective(Protocol):
    """What an attack needs from a task. Both methods work per sample and hold no cross-sample state."""

    def loss(self, x: Tensor, targets: Any) -> Tensor:
        """``(B,)`` loss to be maximised (differentiable w.r.t. ``x`` for gradient attacks)."""
        ...

    def success(self, x: Tensor, targets: Any) -> Tensor:
        """``(B,)`` bool: the attack goal is reached for this sample."""
        ...


class Measurement(NamedTuple):
    """One forward pass's per-sample verdict, each ``(B,)``: see the module docstring."""

    loss: Tensor
    success: Tensor
    score: Tensor


def classifier_measurement(loss_name: str, logits: Tensor, labels: Tensor, targeted: bool = False) -> Measurement:
    """A classifier's verdict from its ``logits (B, C)``: the loss ``loss_name``, success (prediction differs from
    ``labels``; targeted: equals them) and the margin towards the goal as the score (positive when fooled).

    Half-precision logits are promoted to float32 first, so the loss (and its gradient) keep float32 precision."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    loss = classification_loss(loss_name, logits, labels, targeted)
    detached = logits.detach().float()
    hit = detached.argmax(dim=1) == labels
    return Measurement(loss, hit if targeted else ~hit, margin(detached, labels, targeted))


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class ClassifierObjective:
    """Objective for any ``nn.Module`` mapping ``[0, 1]`` images to logits ``(B, num_classes)``.

    ``targets`` are the true labels (untargeted: success when the prediction differs) or the target classes
    (``targeted=True``: success when the prediction equals the target). The score is the logit margin towards the
    goal: ``max other logit - true logit`` (targeted: ``target logit - max other logit``), positive when fooled.
    """

    model: nn.Module
    loss_name: str = "ce"
    targeted: bool = False

    def __post_init__(self) -> None:
        check_loss_name(self.loss_name)

    def logits(self, x: Tensor) -> Tensor:
        """The model's logits for ``x``, cast first to the dtype of the model's weights (a bfloat16 model takes
        float32 images)."""
        dtype = weights_dtype(self.model)
        out = self.model(x if dtype is None else x.to(dtype))
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

    def loss_success_score(self, x: Tensor, targets: Tensor) -> Measurement:
        return classifier_measurement(self.loss_name, self.logits(x), targets.long(), self.targeted)

    def loss_and_success(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return self.loss_success_score(x, targets)[:2]

    def loss(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.loss_success_score(x, targets).loss

    def success(self, x: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            return self.loss_success_score(x, targets).success


def weights_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (or buffer): the dtype it takes its input in;
    ``None`` when it has none.

    >>> weights_dtype(nn.Linear(2, 2).to(torch.bfloat16)), weights_dtype(nn.ReLU())
    (torch.bfloat16, None)
    """
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


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


def measure(objective: Objective, x: Tensor, targets: Any) -> Measurement:
    """Per-sample ``(loss, success, score)``, in one forward pass when the objective offers ``loss_success_score``
    (or ``loss_and_success``; the score is then the loss).

    ``success`` is ``False`` wherever the loss is NaN or infinite: a model that breaks down is never "fooled"; such
    a sample's score is ``-inf`` (never the best). ``score`` is float32, detached. The shapes are checked, so an
    objective returning anything but ``(B,)`` per-sample values raises ``ValueError``.
    """
    three = getattr(objective, "loss_success_score", None)
    both = getattr(objective, "loss_and_success", None)
    if three is not None:
        loss, success, score = three(x, targets)
    elif both is not None:
        loss, success = both(x, targets)
        score = loss
    else:
        loss = objective.loss(x, targets)
        with torch.no_grad():
            success = objective.success(x, targets)
        score = loss
    for name, value in (("loss", loss), ("success", success), ("score", score)):
        if not isinstance(value, Tensor) or value.shape != (x.shape[0],):
            raise ValueError(f"the objective's {name} must be a tensor of shape ({x.shape[0]},), one value per "
                             f"sample, got {getattr(value, 'shape', type(value).__name__)}")
    finite = torch.isfinite(loss.detach())
    score = score.detach().float()
    score = torch.where(finite & ~torch.isnan(score), score, float("-inf"))
    return Measurement(loss, success.bool() & finite, score)


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
