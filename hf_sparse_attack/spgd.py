"""Sparse-PGD (Zhong & Liu, arXiv 2405.05075): a white-box L0 (or group-L0) attack.

The perturbation is ``delta = p * m``: a magnitude ``p`` kept inside the box (and an optional L-inf bound) and a
binary mask ``m = top_k(sigmoid(m_tilde))``. Each iteration takes one forward+backward pass of the objective, a
sign step on ``p`` (gradient through ``sigmoid(m_tilde)`` when ``unprojected``, through the binary mask otherwise)
and a normalised step on ``m_tilde``. A sample whose top-k support is stuck for ``patience`` iterations gets a new
random ``m_tilde``; each sample keeps its best iterate and leaves the batch as soon as it succeeds.

The state (magnitude, mask logits, gradients, losses, scores) is float32 whatever the images' dtype (float64 for
float64 images); the objective sees images of the images' dtype. An iteration makes one host synchronisation (the
success and restart flags), and one more where samples finish (the index of those kept): best tracking and restarts
stay on the device.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
>>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
>>> result = SparsePGD(k=5, steps=20)(model, x, y)
>>> bool((result.l0 <= 5).all()), result.adversarial.shape
(True, torch.Size([4, 3, 8, 8]))
>>> SparsePGD(k=5, steps=20)(model, x.half(), y).adversarial.dtype  # the state stays float32
torch.float16
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


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the attack's state for images of ``dtype``: float32, or float64 for float64 images.

    A float16 state breaks the attack: with a small gradient, the mask step ``beta * sqrt(positions) / ||g||``
    overflows to inf and ``0 * inf`` turns the mask logits into NaN (sPGD then fooled nothing on 112x112 images);
    bfloat16 keeps 3 significant digits. So the magnitude, mask logits, gradients, losses and the best-iterate
    bookkeeping stay in this dtype; only the images the objective sees (and the attack returns) keep the images'.

    >>> state_dtype(torch.float16), state_dtype(torch.bfloat16), state_dtype(torch.float64)
    (torch.float32, torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)


def topk_mask(scores: Tensor, k: int, out: Tensor | None = None) -> Tensor:
    """Binary mask (same shape as ``scores (B, 1, h, w)``) of the ``k`` largest scores of each sample.

    >>> topk_mask(torch.tensor([[[[0.1, 0.9], [0.5, 0.2]]]]), 2)
    tensor([[[[0., 1.],
              [1., 0.]]]])
    """
    flat = scores.flatten(1)
    out = torch.zeros_like(scores) if out is None else out.zero_()
    out.view(flat.shape).scatter_(1, flat.topk(k, dim=1, sorted=False).indices, 1.0)
    return out


def quantize_8bit(values: Tensor) -> Tensor:
    """Round ``[0, 1]`` values to the 8-bit grid ``i / 255``, so that saving as PNG changes nothing.

    float16 and bfloat16 cannot hold ``i / 255`` exactly: there the grid is the nearest value of the dtype to each
    ``i / 255`` (what casting this float32 result gives), still in ``[0, 1]`` and still read back as ``i`` by
    ``round(v * 255)`` (the float16 error is 0.06 of a grid step, the bfloat16 one under 0.5).

    >>> torch.equal(quantize_8bit(torch.tensor([0.1, 0.5, 1.0])), torch.tensor([26.0, 128.0, 255.0]) / 255)
    True
    """
    return values.mul(255).round_().div_(255)


def _uniform(gens: list, shape: tuple, dtype: torch.dtype, eps: float) -> Tensor:
    """Per-sample magnitudes uniform in ``[-eps, eps)``."""
    return (rng.rand(gens, shape, dtype) * 2 - 1).mul_(eps)


@dataclass(frozen=True)
class SparsePGD:
    """Sparse-PGD configuration; call it as ``attack(model_or_objective, x, targets, ids=None)``.

    Images may be float16, bfloat16, float32 or float64: the objective sees, and the result holds, images of that
    dtype, while the attack's own state is float32 (float64 for float64 images; see :func:`state_dtype`). With
    ``quantize`` the perturbed pixels of half-precision images take the dtype's nearest values to the 8-bit grid.

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
        b, (h, w) = x.shape[0], x.shape[-2:]
        structure = build_structure(self.kernel, self.stride, h, w)
        grid = structure.grid_shape if structure else (h, w)
        positions = grid[0] * grid[1]
        check_positive_int("k", self.k, positions, "kernel placements" if structure else "pixels of the image")
        gens = rng.sample_generators(self.seed, rng.sample_ids(ids, b), x.device)

        with torch.no_grad():
            clean_loss, clean_success, clean_score = measure(objective, x, targets)
        clean_loss = clean_loss.to(state_dtype(x.dtype))
        require_finite(clean_loss)
        out = _Outcome(x, clean_loss, clean_success, clean_score, grid if structure else None)
        todo = [i for i, fooled in enumerate(clean_success.tolist()) if not fooled]
        if todo:
            self._run(objective, x, targets, todo, gens, structure, grid, out)
        return out.result(x, self.k, structure)

    def _run(self, objective, x, targets, todo, gens, structure, grid, out) -> None:
        """The iterations on the samples ``todo``; each one's best iterate lands in ``out``. One host sync per
        iteration (the success and restart flags), one more on an iteration where samples finish."""
        s = _Active(x, targets, todo, gens, out, self.epsilon)
        v = _Variables(s, grid, self.k, self.epsilon)
        to_pixels = structure.to_pixels if structure else (lambda support: support)
        to_grid = structure.to_grid if structure else (lambda g: g)
        for step in range(self.steps):
            last = step == self.steps - 1  # the last iterate's gradient would steer nothing: no backward
            pixels = to_pixels(v.support)
            x_adv = s.candidate(v.p, pixels, self.quantize)
            loss, success, score, grad = _evaluate(objective, x_adv, s.targets, s.dtype, want_grad=not last)
            s.record(x_adv, loss, success, score, v.support)
            if last:
                break
            restart = (v.unchanged >= self.patience) & ~success
            done, restarts = torch.stack((success, restart)).tolist()  # the one host sync per iteration
            if any(done):
                keep = s.finish(out, done)
                if keep is None:
                    return
                v.compact(keep)
                grad, pixels, restart = (t.index_select(0, keep) for t in (grad, pixels, restart))
                restarts = [r for r, d in zip(restarts, done) if not d]
            restart_gens = [gen for gen, r in zip(s.gens, restarts) if r]
            self._step(v, s, grad, pixels, to_grid, restart, restart_gens)
        s.write(out, torch.arange(len(s.gens), device=x.device))

    def _step(self, v: _Variables, s: _Active, grad: Tensor, pixels: Tensor, to_grid, restart: Tensor,
              restart_gens: list) -> None:
        """One step on the magnitude and the mask logits of every active sample (``grad`` is consumed). The rows
        flagged in ``restart`` (``restart_gens``: their generators; none restarts when empty) first get a new random
        mask (see the class docstring); this iteration's steps apply to their fresh mask too (as the authors' code).
        """
        sig = torch.sigmoid(v.m_tilde)
        grad_m = to_grid(torch.linalg.vecdot(grad, v.p, dim=1).unsqueeze(1)).mul_(sig * (1 - sig))
        # Magnitude step direction: sign(grad * sigmoid(m_tilde)) = sign(grad) since the sigmoid is positive
        # (unprojected); sign(grad * m) with the binary mask m (projected).
        direction = grad.sign_() if self.unprojected else grad.sign_().mul_(pixels)
        if restart_gens:
            v.restart(restart, restart_gens, s, None if self.unprojected else self.epsilon)
        torch.clamp(v.p.add_(direction, alpha=self.alpha * self.epsilon), s.lo, s.hi, out=v.p)
        # m_tilde += beta * sqrt(positions) * g / ||g||, no step where the gradient vanishes.
        mask_step = self.beta * math.sqrt(math.prod(grad_m.shape[2:]))
        norm = grad_m.flatten(1).norm(dim=1)
        scale = (norm > 2e-10) * norm.add_(1e-10).reciprocal_().mul_(mask_step)  # as mask_step / (norm + 1e-10)
        v.m_tilde.add_(grad_m.mul_(scale.view(-1, 1, 1, 1)))
        v.update_support(self.k)


def _evaluate(objective, x_adv: Tensor, targets: Any, dtype: torch.dtype, want_grad: bool):
    """``(loss, success, score, gradient w.r.t. x_adv)`` of one forward (and backward) pass; loss and gradient in
    ``dtype``, the gradient ``None`` unless ``want_grad``, and zero where the model breaks down (NaN, Inf)."""
    grad = None
    with torch.enable_grad() if want_grad else torch.no_grad():
        loss, success, score = measure(objective, x_adv.requires_grad_(want_grad), targets)
        if want_grad:
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0).to(dtype)
    loss = loss.detach()
    if loss.dtype.itemsize > dtype.itemsize:  # measure checked the loss; its cast (float64 to 32) may overflow
        success = success & torch.isfinite(loss.to(dtype))
    return loss.to(dtype), success, score, grad


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
    """The samples still being attacked, with their best iterate so far: success first, then the best score.

    Images (clean ``x``, the best iterate) are in the images' dtype; the box ``[lo, hi]`` of the magnitude, the
    losses and ``x_state`` (the clean images to build candidates from) in the state dtype ``dtype``.
    """

    def __init__(self, x: Tensor, targets: Any, todo: list[int], gens: list, out: _Outcome, eps: float) -> None:
        self.dtype = out.loss.dtype
        self.index = torch.tensor(todo, device=x.device)
        self.x = x.index_select(0, self.index)
        self.x_state = self.x.to(self.dtype)
        self.lo, self.hi = (-self.x_state).clamp_(min=-eps), (1 - self.x_state).clamp_(max=eps)  # box, L-inf bound
        self.targets = select(targets, self.index if isinstance(targets, Tensor) else todo)  # lists: on the host
        self.gens = [gens[i] for i in todo]
        self.iterations = torch.zeros(len(todo), dtype=torch.long, device=x.device)
        self.best = self.x.clone()
        self.loss = out.loss.index_select(0, self.index)
        self.score = out.score.index_select(0, self.index)
        self.success = torch.zeros(len(todo), dtype=torch.bool, device=x.device)
        self.groups = None if out.groups is None else out.groups.index_select(0, self.index)

    def candidate(self, p: Tensor, pixels: Tensor, quantize: bool) -> Tensor:
        """The images for magnitude ``p`` on the mask ``pixels``, in the images' dtype: built in the state dtype and
        cast, so the unperturbed pixels are bit-identical to the clean ones and the perturbed ones stay in [0, 1]."""
        values = torch.add(self.x_state, p)  # inside [0, 1] up to rounding: p is kept in [-x, 1 - x]
        values = (quantize_8bit(values) if quantize else values.clamp_(0, 1)).to(self.x.dtype)
        return torch.where(pixels.bool(), values, self.x, out=values)

    def record(self, x_adv: Tensor, loss: Tensor, success: Tensor, score: Tensor, support: Tensor) -> None:
        """Count the iteration and keep, per sample, the iterate if it is better (a success, or a higher score).

        An iterate with a NaN or infinite loss is never better (its score is -inf and it was denied success).
        """
        self.iterations += 1
        better = success | (score > self.score)
        rows = better.view(-1, 1, 1, 1)
        torch.where(better, loss, self.loss, out=self.loss)
        torch.where(better, score, self.score, out=self.score)
        torch.where(rows, x_adv.detach(), self.best, out=self.best)
        self.success |= success
        if self.groups is not None:
            torch.where(rows, support.bool(), self.groups, out=self.groups)

    def finish(self, out: _Outcome, done: list[bool]) -> Tensor | None:
        """Write the rows flagged in ``done`` (on the host) to ``out`` and drop them; return the index of the kept
        rows on the device, ``None`` when none is left."""
        finished = [i for i, d in enumerate(done) if d]
        kept = [i for i, d in enumerate(done) if not d]
        order = torch.tensor(finished + kept, device=self.index.device)  # the one host-to-device copy
        self.write(out, order[: len(finished)])
        if not kept:
            return None
        keep = order[len(finished) :]
        self._compact(keep, kept)
        return keep

    def write(self, out: _Outcome, rows: Tensor) -> None:
        """Store the active ``rows`` (a device index) in the full-batch ``out``."""
        index = self.index.index_select(0, rows)
        for name in ("adversarial", "loss", "score", "success", "iterations", "groups"):
            mine = getattr(self, "best" if name == "adversarial" else name)
            if mine is not None:
                getattr(out, name)[index] = mine.index_select(0, rows)

    def _compact(self, keep: Tensor, kept: list[int]) -> None:
        for name in ("index", "x", "lo", "hi", "iterations", "best", "loss", "score", "success", "groups"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, keep))
        self.x_state = self.x.to(self.dtype)
        self.targets = select(self.targets, keep if isinstance(self.targets, Tensor) else kept)
        self.gens = [self.gens[i] for i in kept]


class _Variables:
    """What sPGD optimises for the active samples, in the state dtype: the magnitude ``p`` (kept in the box
    ``[lo, hi]``), the mask logits ``m_tilde``, their top-k ``support``, and per sample the number of unchanged
    supports since its last restart."""

    def __init__(self, s: _Active, grid: tuple[int, int], k: int, eps: float) -> None:
        self.p = torch.clamp(_uniform(s.gens, s.x.shape[1:], s.dtype, eps), s.lo, s.hi)
        self.m_tilde = rng.randn(s.gens, (1, *grid), s.dtype)
        self.support = topk_mask(self.m_tilde, k)
        self.spare = torch.empty_like(self.support)  # the next support's buffer
        self.unchanged = torch.zeros(len(s.gens), dtype=torch.long, device=s.x.device)

    def update_support(self, k: int) -> None:
        """The new top-k support; unchanged supports count up since the sample's last restart, not consecutively
        (the authors' rule: a support that keeps returning to the same pixels restarts too)."""
        self.spare, self.support = self.support, topk_mask(self.m_tilde, k, out=self.spare)
        self.unchanged += (self.support == self.spare).flatten(1).all(1)

    def restart(self, rows: Tensor, gens: list, s: _Active, magnitude_eps: float | None) -> None:
        """New random mask logits for the rows flagged in ``rows`` (``(B,)`` bool on the device; ``gens``: their
        generators), and new magnitudes unless ``magnitude_eps`` is ``None``. The draws land in place with a
        device-side gather (row -> its draw), so no index crosses from the host."""
        slot = rows.cumsum(0).sub_(1).clamp_(min=0)
        flagged = rows.view(-1, 1, 1, 1)
        fresh = rng.randn(gens, self.m_tilde.shape[1:], self.m_tilde.dtype).index_select(0, slot)
        torch.where(flagged, fresh, self.m_tilde, out=self.m_tilde)
        if magnitude_eps is not None:
            fresh = _uniform(gens, self.p.shape[1:], self.p.dtype, magnitude_eps).index_select(0, slot)
            torch.where(flagged, torch.clamp(fresh, s.lo, s.hi, out=fresh), self.p, out=self.p)
        self.unchanged.masked_fill_(rows, 0)

    def compact(self, keep: Tensor) -> None:
        self.p, self.m_tilde, self.support, self.unchanged = (
            t.index_select(0, keep) for t in (self.p, self.m_tilde, self.support, self.unchanged)
        )
        self.spare = torch.empty_like(self.support)
