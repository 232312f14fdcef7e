"""What every attack returns, and the audit every result passes before it is returned."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .structure import Structure


class AuditError(AssertionError):
    """An attack produced a result that breaks its own contract. This is a bug in the attack, never user error."""


@dataclass(frozen=True)
class AttackResult:
    """Outcome of an attack on a batch.

    Attributes:
        adversarial: ``(B, C, H, W)`` adversarial images in ``[0, 1]`` (the clean image where nothing was found).
        success: ``(B,)`` bool, the objective's goal is reached on ``adversarial``.
        mask: ``(B, 1, H, W)`` bool, pixels whose value differs from the clean image.
        l0: ``(B,)`` long, perturbed pixels, or kernel placements used for a structured attack.
        loss: ``(B,)`` objective loss of ``adversarial``.
        iterations: ``(B,)`` long, iterations (gradient attacks) or queries (black-box attacks) spent.
        groups: ``(B, 1, Hg, Wg)`` bool placement grid for structured attacks, else ``None``.
        score: ``(B,)`` float32, the objective's score of ``adversarial`` (how close to the goal in the metric's
            terms, higher is closer; see :mod:`hf_sparse_attack.objective`): the attacks return, per sample, the
            iterate with the best score, success first.
    """

    adversarial: Tensor
    success: Tensor
    mask: Tensor
    l0: Tensor
    loss: Tensor
    iterations: Tensor
    groups: Tensor | None = None
    score: Tensor | None = None

    @property
    def robust_accuracy(self) -> float:
        """Fraction of samples the attack did not fool."""
        return 1.0 - self.success.float().mean().item()


def changed_pixels(x: Tensor, adversarial: Tensor) -> Tensor:
    """``(B, 1, H, W)`` bool: positions where any channel differs between ``x`` and ``adversarial``."""
    return (adversarial != x).any(dim=1, keepdim=True)


def assemble(x: Tensor, k: int, structure: Structure | None, *, adversarial: Tensor, success: Tensor, loss: Tensor,
             iterations: Tensor, score: Tensor, groups: Tensor | None = None) -> AttackResult:
    """The audited :class:`AttackResult` of ``adversarial`` against the clean ``x``: mask and L0 derived here.

    >>> x = torch.zeros(1, 3, 2, 2)
    >>> adv = x.clone(); adv[0, :, 0, 1] = 1.0
    >>> r = assemble(x, 1, None, adversarial=adv, success=torch.tensor([True]), loss=torch.zeros(1),
    ...              iterations=torch.ones(1, dtype=torch.long), score=torch.zeros(1))
    >>> r.l0.tolist(), r.mask[0, 0].tolist()
    ([1], [[False, True], [False, False]])
    """
    mask = changed_pixels(x, adversarial)
    l0 = (mask if groups is None else groups).flatten(1).sum(1)
    return audit(AttackResult(adversarial, success, mask, l0, loss, iterations, groups, score), x, k, structure)


def audit(result: AttackResult, x: Tensor, k: int, structure: Structure | None = None) -> AttackResult:
    """Check ``result`` against the clean batch ``x`` and the budget ``k``; return it unchanged or raise AuditError.

    Checks: shapes, no NaN/Inf, values in ``[0, 1]``, ``mask`` equals the changed pixels, L0 (or the number of
    kernel placements, whose union must cover every changed pixel) within ``k``.
    """
    adv = result.adversarial
    b = x.shape[0]
    if adv.shape != x.shape:
        raise AuditError(f"adversarial shape {tuple(adv.shape)} != input shape {tuple(x.shape)}")
    for name in ("success", "l0", "loss", "iterations", "score"):
        value = getattr(result, name)
        if value is None or value.shape != (b,):
            raise AuditError(f"{name} has shape {tuple(getattr(value, 'shape', ()))}, expected ({b},)")
    if not torch.isfinite(adv).all():
        raise AuditError("adversarial images contain NaN or Inf")
    if adv.min() < 0 or adv.max() > 1:
        raise AuditError(f"adversarial values leave [0, 1]: min {adv.min().item()}, max {adv.max().item()}")
    changed = changed_pixels(x, adv)
    if not torch.equal(changed, result.mask):
        raise AuditError("mask does not match the pixels that changed")
    if structure is None:
        counted = changed.flatten(1).sum(1)
        if not torch.equal(counted, result.l0.to(counted.device)):
            raise AuditError("l0 does not match the number of changed pixels")
    else:
        if result.groups is None:
            raise AuditError("a structured attack must return its placement grid")
        counted = result.groups.flatten(1).sum(1)
        if not torch.equal(counted, result.l0.to(counted.device)):
            raise AuditError("l0 does not match the number of kernel placements")
        covered = structure.to_pixels(result.groups.to(x.dtype)) > 0
        if (changed & ~covered).any():
            raise AuditError("pixels changed outside the union of the kernel placements")
    if (counted > k).any():
        raise AuditError(f"budget exceeded: {counted.max().item()} > k={k}")
    return result
