"""Sparse-PGD (Zhong & Liu, arXiv 2405.05075): a white-box L0 (or group-L0) attack.

The perturbation is ``delta = p * m``: a magnitude ``p`` kept inside the box (and an optional L-inf bound) and a
binary mask ``m = top_k(sigmoid(m_tilde))``. Each iteration takes one forward+backward pass of the objective, a
sign step on ``p`` (gradient through ``sigmoid(m_tilde)`` when ``unprojected``, through the binary mask otherwise)
and a normalised step on ``m_tilde``. A sample whose top-k support is stuck for ``patience`` iterations gets a new
random ``m_tilde``; each sample keeps its best iterate and leaves the batch as soon as it succeeds.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
>>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
>>> result = SparsePGD(k=5, steps=20)(model, x, y)
>>> bool((result.l0 <= 5).all()), result.adversarial.shape
(True, torch.Size([4, 3, 8, 8]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import rng
from .config import KernelSpec, build_structure, check_config
from .objective import as_objective, measure, require_finite, select
from .result import AttackResult, assemble
from .validation import check_images, check_targets
from .value_checks import check_positive_int, check_range


def topk_mask(scores: Tensor, k: int, out: Tensor | None = None) -> Tensor:
    """Binary mask (same shape as ``scores (B, 1, h, w)``) of the ``k`` largest scores of each sample."""
    flat = scores.flatten(1)
    out = torch.zeros_like(scores) if out is None else out.zero_()
    out.view(flat.shape).scatter_(1, flat.topk(k, dim=1, sorted=False).indices, 1.0)
    return out


def quantize_8bit(values: Tensor) -> Tensor:
    """Round ``[0, 1]`` values to the 8-bit grid ``i / 255``, so that saving as PNG changes nothing."""
    return values.mul(255).round_().div_(255)


@dataclass(frozen=True)
class SparsePGD:
    """Sparse-PGD configuration; call it as ``attack(model_or_objective, x, targets, ids=None)``.

    Args:
        k: budget, pixels (a perturbed pixel may change all its channels) or kernel placements with ``kernel``.
        steps: forward+backward passes per sample at most.
        epsilon: L-inf bound on the magnitude of perturbed pixels (1.0: only the [0, 1] box).
        alpha: step on the magnitude, as a fraction of ``epsilon``.
        beta: step on the mask logits, times ``sqrt(number of mask positions)``.
        patience: iterations with an unchanged top-k support before the mask is re-initialised. With the projected
            gradient the magnitude is re-drawn too: it only moves under the mask, so outside it the initial random
            draw would otherwise steer every later mask (the authors' code keeps it; re-drawing lowers robust
            accuracy of the digits CNN at k=2 from 47.7% to 37.9% in 100 steps).
        unprojected: step the magnitude with the unprojected gradient (through ``sigmoid(m_tilde)``); ``False`` uses
            the projected (sparse) gradient through the binary mask.
        targeted: plain classifiers only; ``targets`` are then target classes and success means hitting them.
        loss: plain classifiers only: ``"ce"`` (default), ``"margin"`` or ``"dlr"``. An :class:`Objective` brings
            its own loss.
        seed: base seed; each sample's randomness comes from ``(seed, sample id)``.
        kernel: binary 2-D kernel for structured sparsity (see :mod:`hf_sparse_attack.kernels`); ``k`` then counts
            placements on a grid of step ``stride``.
        stride: placement grid step for ``kernel``.
        quantize: perturbed pixels take values on the 8-bit grid; success is judged on the quantized image.
    """

    k: int = 10
    steps: int = 100
    epsilon: float = 1.0
    alpha: float = 0.25
    beta: float = 0.25
    patience: int = 3
    unprojected: bool = True
    targeted: bool = False
    loss: str | None = None
    seed: int = 0
    kernel: KernelSpec | None = None
    stride: int = 1
    quantize: bool = True

    def __post_init__(self) -> None:
        check_config(self, positive=("k", "steps", "patience", "stride"), flags=("unprojected", "targeted", "quantize"))
        check_range("epsilon", self.epsilon, 0.0, 1.0, low_open=True)
        check_range("alpha", self.alpha, 0.0, 1.0, low_open=True)
        check_range("beta", self.beta, 0.0, float("inf"), low_open=True)

    def __call__(self, model: Any, x: Tensor, targets: Any, ids: Sequence[int] | Tensor | None = None) -> AttackResult:
        """Attack the batch ``x (B, C, H, W)`` in ``[0, 1]``; ``ids`` (default positions) seed each sample."""
        objective = as_objective(model, self.loss, self.targeted)
        x = check_images(x).detach()
        check_targets(x, targets, objective)
        b, c, h, w = x.shape
        structure = build_structure(self.kernel, self.stride, h, w)
        grid = structure.grid_shape if structure else (h, w)
        positions = grid[0] * grid[1]
        check_positive_int("k", self.k, positions, "kernel placements" if structure else "pixels of the image")
        gens = rng.sample_generators(self.seed, rng.sample_ids(ids, b), x.device)

        with torch.no_grad():
            clean_loss, clean_success, clean_score = measure(objective, x, targets)
        clean_loss = clean_loss.to(x.dtype)
        require_finite(clean_loss)
        out = _Outcome(x, clean_loss, clean_success, clean_score, grid if structure else None)
        todo = (~clean_success).nonzero().flatten().tolist()
        if todo:
            self._run(objective, x, targets, todo, gens, structure, grid, out)
        return out.result(x, self.k, structure)

    def _run(self, objective, x, targets, todo, gens, structure, grid, out) -> None:
        to_pixels = structure.to_pixels if structure else (lambda v: v)
        to_grid = structure.to_grid if structure else (lambda g: g)
        eps, k = self.epsilon, self.k
        mask_step = self.beta * math.sqrt(grid[0] * grid[1])

        s = _Active(x, targets, todo, gens, out, eps)
        p = torch.clamp((rng.rand(s.gens, x.shape[1:], x.dtype) * 2 - 1).mul_(eps), s.lo, s.hi)
        m_tilde = rng.randn(s.gens, (1, *grid), x.dtype)
        support = topk_mask(m_tilde, k)
        previous = torch.empty_like(support)
        unchanged = torch.zeros(len(todo), dtype=torch.long, device=x.device)

        for _ in range(self.steps):
            pixels = to_pixels(support)
            x_adv = torch.add(s.x, p)  # inside [0, 1] up to rounding: p is kept in [-x, 1 - x]
            x_adv = quantize_8bit(x_adv) if self.quantize else x_adv.clamp_(0, 1)
            x_adv = torch.where(pixels.bool(), x_adv, s.x, out=x_adv).requires_grad_(True)
            with torch.enable_grad():
                loss, success, score = measure(objective, x_adv, s.targets)
                (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # a model breaking down steers nothing
            loss = loss.detach().to(x.dtype)
            success &= torch.isfinite(loss)  # measure checked before the cast to the images' dtype
            better = s.record(loss, success, score, support)

            stuck = unchanged >= self.patience
            flags = torch.stack((success, stuck & ~success, better)).cpu()  # the one host sync per iteration
            done, restart, better = flags.unbind(0)
            s.keep_best(x_adv.detach(), better)
            if done.any():
                s.write(out, done)
                keep = (~done).nonzero().flatten()
                if keep.numel() == 0:
                    return
                s.compact(keep)
                keep = keep.to(x.device)
                p, m_tilde, support, grad, unchanged, pixels = (
                    t.index_select(0, keep) for t in (p, m_tilde, support, grad, unchanged, pixels)
                )
                previous = torch.empty_like(support)
                restart = restart[~done]
            restart = restart.nonzero().flatten().tolist()

            sig = torch.sigmoid(m_tilde)
            grad_m = to_grid(torch.linalg.vecdot(grad, p, dim=1).unsqueeze(1)).mul_(sig * (1 - sig))
            # Magnitude step direction: sign(grad * sigmoid(m_tilde)) = sign(grad) since the sigmoid is positive
            # (unprojected); sign(grad * m) with the binary mask m (projected).
            direction = grad.sign() if self.unprojected else grad.sign().mul_(pixels)
            if restart:  # a stuck sample restarts from a new random mask (and magnitude, see the class docstring)
                rows = torch.tensor(restart, device=x.device)
                m_tilde[rows] = rng.randn([s.gens[i] for i in restart], (1, *grid), x.dtype)
                if not self.unprojected:
                    fresh = (rng.rand([s.gens[i] for i in restart], x.shape[1:], x.dtype) * 2 - 1).mul_(eps)
                    p[rows] = torch.clamp(fresh, s.lo[rows], s.hi[rows])
                unchanged.index_fill_(0, rows, 0)

            # This iteration's steps apply to every sample, a restarted one's fresh mask too (as the authors' code).
            p = torch.clamp(p.add_(direction, alpha=self.alpha * eps), s.lo, s.hi, out=p)
            norm = grad_m.flatten(1).norm(dim=1)
            step = torch.where(norm > 2e-10, mask_step / (norm + 1e-10), torch.zeros_like(norm))
            m_tilde.add_(grad_m.mul_(step.view(-1, 1, 1, 1)))

            previous, support = support, topk_mask(m_tilde, k, out=previous)
            # Unchanged supports count up since the sample's last restart, not consecutively (the authors' rule:
            # a support that keeps returning to the same pixels restarts too).
            unchanged += (support == previous).flatten(1).all(1)
        s.write(out, torch.ones(len(s.gens), dtype=torch.bool))


class _Outcome:
    """Full-batch results, filled in as samples finish (clean successes are final from the start)."""

    def __init__(self, x: Tensor, loss: Tensor, success: Tensor, score: Tensor, grid: tuple[int, int] | None) -> None:
        self.adversarial = x.clone()
        self.loss = loss
        self.success = success.clone()
        self.score = score.clone()
        self.iterations = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.groups = None if grid is None else torch.zeros(x.shape[0], 1, *grid, dtype=torch.bool, device=x.device)

    def result(self, x: Tensor, k: int, structure) -> AttackResult:
        return assemble(x, k, structure, adversarial=self.adversarial, success=self.success, loss=self.loss,
                        iterations=self.iterations, groups=self.groups, score=self.score)


class _Active:
    """The samples still being attacked, with their best iterate so far: success first, then the best score."""

    def __init__(self, x: Tensor, targets: Any, todo: list[int], gens: list, out: _Outcome, eps: float) -> None:
        self.index = torch.tensor(todo, device=x.device)
        self.x = x.index_select(0, self.index)
        self.lo, self.hi = (-self.x).clamp_(min=-eps), (1 - self.x).clamp_(max=eps)  # box and L-inf bound
        self.targets = select(targets, self.index)
        self.gens = [gens[i] for i in todo]
        self.iterations = torch.zeros(len(todo), dtype=torch.long, device=x.device)
        self.best = self.x.clone()
        self.loss = out.loss.index_select(0, self.index)
        self.score = out.score.index_select(0, self.index)
        self.success = torch.zeros(len(todo), dtype=torch.bool, device=x.device)
        self.groups = None if out.groups is None else out.groups.index_select(0, self.index)

    def record(self, loss: Tensor, success: Tensor, score: Tensor, support: Tensor) -> Tensor:
        """Update scores, losses, success and placements; return which samples improved (images: keep_best).

        An iterate with a NaN or infinite loss is never better (its score is -inf and it was denied success).
        """
        self.iterations += 1
        better = success | (score > self.score)
        torch.where(better, loss, self.loss, out=self.loss)
        torch.where(better, score, self.score, out=self.score)
        self.success |= success
        if self.groups is not None:
            torch.where(better.view(-1, 1, 1, 1), support.bool(), self.groups, out=self.groups)
        return better

    def keep_best(self, x_adv: Tensor, better: Tensor) -> None:
        """Copy the images of the improved samples only (``better`` is on the host)."""
        if better.all():
            self.best.copy_(x_adv)
        elif better.any():
            rows = better.nonzero().flatten().to(x_adv.device)
            self.best.index_copy_(0, rows, x_adv.index_select(0, rows))

    def write(self, out: _Outcome, rows: Tensor) -> None:
        rows = rows.to(self.index.device).nonzero().flatten()
        index = self.index.index_select(0, rows)
        for name in ("adversarial", "loss", "score", "success", "iterations", "groups"):
            mine = getattr(self, "best" if name == "adversarial" else name)
            if mine is not None:
                getattr(out, name)[index] = mine.index_select(0, rows)

    def compact(self, keep: Tensor) -> None:
        kept = keep.tolist()
        keep = keep.to(self.x.device)
        for name in ("index", "x", "lo", "hi", "iterations", "best", "loss", "score", "success", "groups"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, keep))
        self.targets = select(self.targets, keep)
        self.gens = [self.gens[i] for i in kept]
