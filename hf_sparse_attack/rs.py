"""Sparse-RS (Croce, Andriushchenko, Singh, Flammarion & Hein, AAAI 2022): a black-box L0 attack by random search.

Each sample holds a set of ``k`` perturbed pixels (``k`` kernel placements with a ``kernel``, or one square patch
with ``mode="patch"``) coloured at corners of the colour cube. Every query tries a candidate: a fraction of the set,
``p_init`` shrinking on the paper's schedule, moves to new random positions with new random corner colours. The
candidate replaces the current set when its loss is higher or the attack succeeds; a sample that succeeds stops
querying. The result is, per sample, the queried image with the best score (the objective's measure of the goal in
the metric's terms; success first), which need not be the highest-loss one. No gradient is used.

All samples of a batch advance together in tensor operations. Their random draws come from a counter-based hash of
(seed, sample id, step), so a sample's result does not depend on the batch it is in. Losses are compared in float32
whatever the images' dtype, and a query step reads one number on the host (how many samples still search), so the
attack keeps a GPU busy.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
>>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
>>> result = SparseRS(k=5, queries=50)(model, x, y)
>>> bool((result.l0 <= 5).all()), bool((result.iterations <= 50).all())
(True, True)
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import rng
from .config import KernelSpec, build_structure, check_config
from .objective import as_objective, measure, require_finite, select
from .result import AttackResult, assemble
from .structure import Structure
from .validation import check_images, check_targets
from .value_checks import check_range

MODES = ("pixels", "patch")

#: ``(bound, divisor)``: the fraction resampled is ``p_init / divisor`` while the step, rescaled to a budget of 10000
#: queries, is at most ``bound`` (the schedules of the authors' code for L0 pixels and for patches).
SCHEDULES = {
    "pixels": ((0, 1), (50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10), (6000, 12), (8000, 15)),
    "patch": ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)),
}
FINAL_DIVISOR = {"pixels": 20, "patch": 512}

MAX_CHANNELS = 16  # colours are codes of C bits, drawn from 32-bit hashes

_M32 = 0xFFFFFFFF
_STREAM = 1  # rng stream of Sparse-RS sample keys (Sparse-PGD draws from stream 0)
_SLOTS, _POSITIONS, _COLOURS, _WINDOW, _SHIFT = range(5)  # what a draw is for, mixed into its hash
_PURPOSES = 8  # the hash tag of a draw is ``step * 8 + purpose``
_BLOCK = 32  # steps whose per-sample hash bases are computed together


def resample_fraction(step: int, queries: int, p_init: float, mode: str = "pixels") -> float:
    """Fraction of the ``k`` pixels (``mode="patch"``: of the patch area) resampled at ``step`` of ``queries``.

    >>> resample_fraction(0, 10000, 0.8), resample_fraction(100, 1000, 0.8), resample_fraction(9999, 10000, 0.8)
    (0.8, 0.13333333333333333, 0.04)
    """
    scaled = int(step / queries * 10000)
    for bound, divisor in SCHEDULES[mode]:
        if scaled <= bound:
            return p_init / divisor
    return p_init / FINAL_DIVISOR[mode]


@dataclass(frozen=True)
class SparseRS:
    """Sparse-RS configuration; call it as ``attack(model_or_objective, x, targets, ids=None)``.

    Args:
        k: budget: pixels (a perturbed pixel may change all its channels), kernel placements with ``kernel``, or
            the patch area with ``mode="patch"`` (a square of side ``floor(sqrt(k))``, so the area stays <= k).
        queries: objective evaluations per sample at most, the clean check included; the result's ``iterations``
            are the queries each sample used.
        p_init: fraction of the set resampled at the start, shrunk on the paper's schedule (:data:`SCHEDULES`)
            rescaled to ``queries``.
        loss: plain classifiers only: ``"ce"`` (default), ``"margin"`` or ``"dlr"``. An :class:`Objective` brings
            its own loss.
        targeted: plain classifiers only; ``targets`` are then target classes and success means hitting them.
        seed: base seed; each sample's draws come from ``(seed, sample id)``.
        kernel: binary 2-D kernel for structured sparsity; ``k`` then counts placements on a grid of step
            ``stride``, and the search swaps placements instead of pixels.
        stride: placement grid step for ``kernel``.
        mode: ``"pixels"`` (a set of k pixels or placements) or ``"patch"`` (one square patch, searched over its
            corner colours and its position).
        check_every: query steps between two looks at which samples succeeded (each look is one host sync). With
            1 (default) a sample that succeeds is never sent to the objective again. With more, it may be sent up
            to ``check_every - 1`` more times before it leaves the batch, but those evaluations are discarded:
            the result (its best query, its query count) is the same whatever ``check_every``.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    >>> x, y = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3])
    >>> often, rarely = SparseRS(k=4, queries=40)(model, x, y), SparseRS(k=4, queries=40, check_every=8)(model, x, y)
    >>> torch.equal(often.adversarial, rarely.adversarial), torch.equal(often.iterations, rarely.iterations)
    (True, True)
    """

    k: int = 10
    queries: int = 1000
    p_init: float = 0.8
    loss: str | None = None
    targeted: bool = False
    seed: int = 0
    kernel: KernelSpec | None = None
    stride: int = 1
    mode: str = "pixels"
    check_every: int = 1

    def __post_init__(self) -> None:
        check_config(self, positive=("k", "queries", "stride", "check_every"), flags=("targeted",))
        check_range("p_init", self.p_init, 0.0, 1.0, low_open=True)
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; allowed: {list(MODES)}")
        if self.mode == "patch" and self.kernel is not None:
            raise ValueError("mode='patch' searches one square patch; it takes no kernel (use mode='pixels')")

    def __call__(self, model: Any, x: Tensor, targets: Any, ids: Sequence[int] | Tensor | None = None) -> AttackResult:
        """Attack the batch ``x (B, C, H, W)`` in ``[0, 1]``; ``ids`` (default positions) seed each sample."""
        objective = as_objective(model, self.loss, self.targeted)
        x = check_images(x).detach()
        check_targets(x, targets, objective)
        structure = build_structure(self.kernel, self.stride, *x.shape[-2:])
        self._check_fits(x, structure)
        draws = _Draws.for_samples(self.seed, rng.sample_ids(ids, x.shape[0]), x.device)
        with torch.no_grad():
            loss, success, score = measure(objective, x, targets)
            loss = loss.float()
            require_finite(loss)
            out = _Outcome(x, loss, success, score, structure)
            todo = (~success).nonzero().flatten()
            if todo.numel() and self.queries > 1:
                self._search(objective, x, targets, todo, draws, structure, out)
        return out.result(x, self.k, structure)

    def _check_fits(self, x: Tensor, structure: Structure | None) -> None:
        c, h, w = x.shape[1:]
        if c > MAX_CHANNELS:
            raise ValueError(f"Sparse-RS colours pixels at corners of the colour cube of at most {MAX_CHANNELS} "
                             f"channels; the images have {c}")
        if self.mode == "patch":
            side = math.isqrt(self.k)
            if side > min(h, w):
                raise ValueError(f"a patch of area k={self.k} (side {side}) does not fit in images of size {h}x{w}")
            return
        positions = structure.placements if structure else h * w
        if self.k >= positions:
            what = "kernel placements" if structure else "pixels"
            raise ValueError(f"k={self.k} must be below the {positions} {what} of the image: Sparse-RS swaps "
                             f"perturbed {what} with unperturbed ones")

    def _search(self, objective, x, targets, rows, draws, structure, out) -> None:
        """Query steps on the samples at batch positions ``rows`` until each succeeds or spends its queries."""
        targets, active = select(targets, rows), x.index_select(0, rows)
        if self.mode == "patch":
            search = _PatchSearch(active, self.k, draws.select(rows), self.queries, self.targeted)
        else:
            search = _SetSearch(active, self.k, structure, draws.select(rows))
        kept = _Best(active, out, rows)
        last = self.queries - 2
        for step in range(last + 1):
            if step == 0:
                candidate = search.start()
            else:
                candidate = search.propose(step, resample_fraction(step, self.queries, self.p_init, self.mode))
            search.accept(kept.update(candidate, *_query(objective, candidate, targets), search.trial_groups()))
            if step == last:
                out.write(rows, kept)
            elif (step + 1) % self.check_every == 0:
                active = _look(rows, targets, search, kept, out)
                if active is None:
                    return
                rows, targets = active


def _look(rows: Tensor, targets: Any, search, kept: _Best, out: _Outcome) -> tuple[Tensor, Any] | None:
    """Write out the samples that stopped searching and drop them from the batch (one host sync): the batch
    positions and targets of the samples left, ``None`` when none is."""
    searching = int(kept.searching.sum())
    if searching == len(rows):
        return rows, targets
    keep, done = _partition(kept.searching, searching)
    out.write(rows, kept, done)
    if not searching:
        return None
    search.compact(keep)
    kept.compact(keep)
    return rows.index_select(0, keep), select(targets, keep)


def _query(objective, candidate: Tensor, targets: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, success, score)`` of one query, the loss in float32; a NaN or infinite loss counts as ``-inf``:
    never better than a finite one, and never a success."""
    loss, success, score = measure(objective, candidate, targets)
    loss = loss.float()
    finite = torch.isfinite(loss)
    return torch.where(finite, loss, float("-inf")), success & finite, score


def _partition(searching: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Row indices ``(keep, done)`` of the ``count`` rows still searching and of the others, each in batch order,
    computed on the device from a count already on the host (a stable sort puts the searching rows first)."""
    order = torch.argsort((~searching).to(torch.uint8), stable=True)
    return order[:count], order[count:]


class _Best:
    """Per active sample: the queried image with the best score so far (success first), with its loss, score and
    groups (the clean image until a query beats the clean score); the loss of the set the search holds, the queries
    used, and whether the sample still searches (a sample that succeeded takes no later query into account)."""

    def __init__(self, x: Tensor, out: _Outcome, rows: Tensor) -> None:
        self.image, self.success = x, torch.zeros(len(rows), dtype=torch.bool, device=x.device)  # never in place
        self.loss, self.score = out.loss.index_select(0, rows), out.score.index_select(0, rows)
        self.groups = None if out.groups is None else out.groups.index_select(0, rows)
        self.used = out.iterations.index_select(0, rows)
        self.searching = torch.ones_like(self.success)
        self.held: Tensor | None = None  # loss of the set the search holds; the first random set is taken as is

    def update(self, image: Tensor, loss: Tensor, success: Tensor, score: Tensor, groups: Tensor | None) -> Tensor:
        """Take one query of every row into account; return where the search should accept its candidate."""
        searching = self.searching
        success = success & searching
        accept = searching if self.held is None else (success | (loss > self.held)) & searching
        self.held = loss if self.held is None else torch.where(accept, loss, self.held)
        better = success | ((score > self.score) & searching)
        self.image = torch.where(better.view(-1, 1, 1, 1), image, self.image)
        self.loss, self.score = torch.where(better, loss, self.loss), torch.where(better, score, self.score)
        if groups is not None:
            self.groups = torch.where(better.view(-1, 1, 1, 1), groups, self.groups)
        self.success = self.success | success
        self.used += searching
        self.searching = searching & ~success
        return accept

    def compact(self, keep: Tensor) -> None:
        for name in ("image", "loss", "score", "success", "groups", "used", "searching", "held"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, keep))


_MIX_FACTORS = (0x7FEB352D, 0x846CA68B - (1 << 32))  # lowbias32's factors, the second as a negative int32


def _mix32_(v: Tensor) -> Tensor:
    """Wellons' "lowbias32", a bijective 32-bit hash with full avalanche, in place on the int64 ``v`` in
    ``[0, 2^32)``. Each factor has magnitude below 2^31, so no product leaves int64, and ``& (2^32 - 1)`` of a
    negative product is its residue mod 2^32 (two's complement): exact on every device.

    >>> int(_mix32_(torch.tensor([1]))[0]), int(_mix32_(torch.tensor([2 ** 32 - 1]))[0])
    (1753845952, 1734902346)
    """
    v ^= v >> 16
    v.mul_(_MIX_FACTORS[0]).bitwise_and_(_M32)
    v ^= v >> 15
    v.mul_(_MIX_FACTORS[1]).bitwise_and_(_M32)
    v ^= v >> 16
    return v


class _Draws:
    """Counter-based per-sample random integers: a hash of (sample key, step, purpose, index).

    Pure int64 tensor arithmetic on the batch's device, so a whole step is drawn without a loop over samples, and a
    sample's draws depend on its key only: never on the batch it is in, nor on the device. Each sample's hash base
    per (step, purpose) is computed for blocks of steps at once.
    """

    def __init__(self, lo: Tensor, hi: Tensor) -> None:
        self.lo, self.hi = lo, hi  # the low and high 32 bits of each sample's key
        self._block, self._bases = -1, None

    @classmethod
    def for_samples(cls, seed: int, ids: Sequence[int], device: torch.device) -> _Draws:
        keys = [rng.sample_seed(seed, sample_id, _STREAM) for sample_id in ids]  # 63-bit keys
        halves = torch.tensor([[key & _M32, key >> 32] for key in keys], dtype=torch.long, device=device)
        return cls(halves[:, 0], halves[:, 1])

    def _base(self, step: int, purpose: int) -> Tensor:
        """``(B, 1)``: each sample's hash of ``(key, step * 8 + purpose)``."""
        block = step // _BLOCK
        if block != self._block:
            steps = torch.arange(block * _BLOCK, (block + 1) * _BLOCK, device=self.lo.device)
            tags = (steps[:, None] * _PURPOSES + torch.arange(_PURPOSES, device=steps.device)) & _M32
            self._bases = _mix32_(self.lo[:, None, None] ^ _mix32_(self.hi[:, None, None] ^ tags))
            self._block = block
        return self._bases[:, step % _BLOCK, purpose, None]

    def draw(self, step: int, *requests: tuple[int, Tensor]) -> list[Tensor]:
        """Uniform integers in ``[0, 2^32)`` for each ``(purpose, index)``: ``(B, n)`` for an ``index`` ``(1, n)`` or
        ``(B, n)`` in ``[0, 2^32)``; several requests are hashed in one pass."""
        parts = [self._base(step, purpose) ^ index for purpose, index in requests]
        mixed = _mix32_(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        mixed ^= self.hi[:, None]
        return list(_mix32_(mixed).split([part.shape[1] for part in parts], dim=1))

    def bits(self, step: int, purpose: int, index: Tensor) -> Tensor:
        """:meth:`draw` of a single request."""
        return self.draw(step, (purpose, index))[0]

    def below(self, n: int | Tensor, step: int, purpose: int, index: Tensor) -> Tensor:
        """Uniform integers in ``[0, n)`` (``n`` below 2^31, or a tensor of such bounds broadcast with the draws)."""
        return (self.bits(step, purpose, index) * n) >> 32

    def select(self, rows: Tensor) -> _Draws:
        draws = _Draws(self.lo.index_select(0, rows), self.hi.index_select(0, rows))
        if self._bases is not None:
            draws._block, draws._bases = self._block, self._bases.index_select(0, rows)
        return draws


def _corners(codes: Tensor, shifts: Tensor, dtype: torch.dtype) -> Tensor:
    """Corner codes ``(B, m)`` in ``[0, 2^C)`` -> colours ``(B, C, m)`` with each channel 0 or 1 (``shifts`` is
    ``arange(C)``)."""
    return ((codes[:, None, :] >> shifts[None, :, None]) & 1).to(dtype)


def _corner_codes(colours: Tensor, shifts: Tensor) -> Tensor:
    """``(B, m)``: the code of each colour of ``colours (B, C, m)`` that is a corner of the colour cube, else -1."""
    on_corner = ((colours == 0) | (colours == 1)).all(1)
    return torch.where(on_corner, (colours.long() << shifts[None, :, None]).sum(1), -1)


def _other_corners(bits: Tensor, current: Tensor, channels: int) -> Tensor:
    """Random corner codes ``(B, m)`` from random ``bits (B, m)``, each unlike its ``current`` code (-1: any).

    Uniform over the ``2^C - 1`` other corners where the current colour is a corner, over all ``2^C`` elsewhere
    (any corner then differs), so a newly perturbed pixel never keeps its value.
    """
    n = 1 << channels
    return torch.where(current >= 0, current ^ (1 + bits % (n - 1)), bits % n)


class _SetSearch:
    """Search over sets of ``k`` placements: single pixels, or a kernel's placements on its stride grid.

    State: ``chosen (B, k)`` placement indices and ``paint (B, C, H*W)``, the colours of the covered pixels. A step
    swaps a fraction of the placements for unchosen ones with new colours (the authors' L0 move). With a kernel,
    every other step instead recolours a fraction of the covered pixels in place (an extension: a new placement
    colours all its pixels at once, so without it a good placement rarely gets its best colours).
    """

    def __init__(self, x: Tensor, k: int, structure: Structure | None, draws: _Draws) -> None:
        c, h, w = x.shape[1:]
        device = x.device
        self.grid = None if structure is None else structure.grid_shape
        positions = torch.arange(h * w if structure is None else structure.placements, device=device)
        if structure is not None:
            grid, stride = structure.grid_shape, structure.stride
            ky, kx = structure.kernel.nonzero(as_tuple=True)
            self.origins = (positions // grid[1]) * (stride * w) + (positions % grid[1]) * stride
            self.offsets = (ky * w + kx).to(device)
            self.covered = torch.arange(k * len(ky), device=device)[None]
        self.positions, self.slots = positions[None], torch.arange(k, device=device)[None]
        self.shape, self.k, self.draws = x.shape, k, draws
        self.x = x.flatten(2)
        self.shifts = torch.arange(c, device=device)
        self.x_codes = _corner_codes(self.x, self.shifts)

    def _pixels(self, placements: Tensor) -> Tensor:
        """Pixel indices ``(B, n * kernel pixels)`` covered by the placements ``(B, n)`` (single pixels: the same)."""
        if self.grid is None:
            return placements
        return (self.origins[placements][..., None] + self.offsets).flatten(1)

    def _recolour(self, paint: Tensor, pixels: Tensor, step: int, codes: Tensor) -> Tensor:
        """``paint`` with fresh corner colours on ``pixels (B, m)``, each unlike its current colour code ``codes``."""
        fresh = _other_corners(self.draws.bits(step, _COLOURS, pixels), codes, self.x.shape[1])
        index = pixels[:, None].expand(-1, self.x.shape[1], -1)
        return paint.scatter(2, index, _corners(fresh, self.shifts, paint.dtype))  # a pixel listed twice: same hash

    def _image(self, chosen: Tensor, paint: Tensor) -> Tensor:
        cover = torch.zeros_like(self.x[:, :1], dtype=torch.bool).scatter_(2, self._pixels(chosen)[:, None], True)
        return torch.where(cover, paint, self.x).view(-1, *self.shape[1:])

    def start(self) -> Tensor:
        self.chosen = self.draws.bits(0, _POSITIONS, self.positions).topk(self.k, dim=1).indices
        pixels = self._pixels(self.chosen)
        self.paint = self._recolour(self.x, pixels, 0, self.x_codes.gather(1, pixels))
        self.trial = self.chosen, self.paint
        return self._image(self.chosen, self.paint)

    def propose(self, step: int, fraction: float) -> Tensor:
        if self.grid is not None and step % 2 == 1:
            self.trial = self.chosen, self._recolour_covered(step, fraction)
        else:
            moved = min(max(int(fraction * self.k), 1), self.positions.shape[1] - self.k)
            slots, free = self.draws.draw(step, (_SLOTS, self.slots), (_POSITIONS, self.positions))
            slots = slots.topk(moved, dim=1).indices
            new = free.scatter_(1, self.chosen, -1).topk(moved, dim=1).indices
            pixels = self._pixels(new)
            paint = self._recolour(self.paint, pixels, step, self.x_codes.gather(1, pixels))
            self.trial = self.chosen.scatter(1, slots, new), paint
        return self._image(*self.trial)

    def _recolour_covered(self, step: int, fraction: float) -> Tensor:
        """New colours for a ``fraction`` of the pixels the placements cover, each unlike its current colour."""
        covered = self._pixels(self.chosen)
        count = max(int(fraction * covered.shape[1]), 1)
        picked = covered.gather(1, self.draws.bits(step, _SLOTS, self.covered).topk(count, dim=1).indices)
        current = self.paint.gather(2, picked[:, None].expand(-1, self.x.shape[1], -1))
        return self._recolour(self.paint, picked, step, _corner_codes(current, self.shifts))

    def accept(self, better: Tensor) -> None:
        chosen, paint = self.trial
        self.chosen = torch.where(better[:, None], chosen, self.chosen)
        self.paint = torch.where(better[:, None, None], paint, self.paint)

    def trial_groups(self) -> Tensor | None:
        """The placement grid of the last proposed candidate (``None`` for single pixels)."""
        if self.grid is None:
            return None
        chosen = self.trial[0]
        placed = torch.zeros(chosen.shape[0], self.positions.shape[1], dtype=torch.bool, device=self.x.device)
        return placed.scatter_(1, chosen, True).view(-1, 1, *self.grid)

    def compact(self, keep: Tensor) -> None:
        self.x, self.x_codes, self.chosen, self.paint = (
            t.index_select(0, keep) for t in (self.x, self.x_codes, self.chosen, self.paint))
        self.draws = self.draws.select(keep)


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _shift_reaches(step: int, queries: int, side: int) -> bool:
    """Whether ``(0.75 * (1 - step / queries) * size).long()`` is positive for an axis of ``size`` pixels, as
    torch computes it on an integer tensor (in float32), worked out on the host.

    >>> _shift_reaches(0, 100, 2), _shift_reaches(60, 100, 2), _shift_reaches(60, 100, 4)
    (True, False, True)
    """
    return _float32(_float32(0.75 * (1 - step / queries)) * side) >= 1


class _PatchSearch:
    """Search over one square patch per image: square windows of it recoloured, and moves of its position.

    As in the authors' code: the patch starts as random vertical stripes at a random position; every
    ``4`` (``10`` targeted) steps the position moves by up to ``0.75 * (1 - step / queries)`` of the image side,
    otherwise a random window of side ``sqrt(fraction) * side`` takes one random corner colour.
    """

    def __init__(self, x: Tensor, k: int, draws: _Draws, queries: int, targeted: bool) -> None:
        self.x, self.draws, self.queries = x, draws, queries
        self.side = math.isqrt(k)
        c, h, w = x.shape[1:]
        self.size = torch.tensor([[h, w]], device=x.device)
        self.longest = max(h, w)
        self.span = self.size - self.side + 1  # possible positions of the top-left corner per axis
        self.move_every = 10 if targeted else 4
        self.axes = torch.arange(2, device=x.device)[None]
        self.range = torch.arange(self.side, device=x.device)
        self.offsets = (self.range[:, None] * w + self.range).flatten()  # the patch's pixels from its top-left
        self.shifts = torch.arange(c, device=x.device)

    def _image(self, loc: Tensor, patch: Tensor) -> Tensor:
        pixels = loc[:, :1] * self.x.shape[-1] + loc[:, 1:] + self.offsets
        index = pixels[:, None].expand(-1, self.x.shape[1], -1)
        return self.x.flatten(2).scatter(2, index, patch.flatten(2)).view_as(self.x)

    def start(self) -> Tensor:
        c = self.x.shape[1]
        self.loc = self.draws.below(self.span, 0, _SHIFT, self.axes)
        stripes = _corners(self.draws.bits(0, _COLOURS, self.range[None]) % (1 << c), self.shifts, self.x.dtype)
        self.patch = stripes[:, :, None, :].expand(-1, -1, self.side, -1).contiguous()
        self.trial = self.loc, self.patch
        return self._image(self.loc, self.patch)

    def propose(self, step: int, fraction: float) -> Tensor:
        if step % self.move_every == 0 and _shift_reaches(step, self.queries, self.longest):
            shift = (0.75 * (1 - step / self.queries) * self.size).long()
            move = self.draws.below(2 * shift + 1, step, _SHIFT, self.axes) - shift
            loc, patch = torch.minimum((self.loc + move).clamp_(min=0), self.span - 1), self.patch
        else:
            loc, patch = self.loc, self._recolour_window(step, fraction)
        self.trial = loc, patch
        return self._image(loc, patch)

    def _recolour_window(self, step: int, fraction: float) -> Tensor:
        c, side = self.x.shape[1], self.side
        window = max(int(math.sqrt(fraction) * side), 1)
        corner = self.draws.below(side - window + 1, step, _WINDOW, self.axes)  # (B, 2) top-left in the patch
        inside = (self.range >= corner[:, :, None]) & (self.range < corner[:, :, None] + window)  # (B, 2, side)
        inside = (inside[:, 0, :, None] & inside[:, 1, None, :])[:, None]
        bits = self.draws.bits(step, _COLOURS, self.axes[:, :1])
        if window == 1:  # a single pixel: make sure its colour changes
            at = (corner[:, :1] * side + corner[:, 1:])[:, None].expand(-1, c, -1)
            codes = _other_corners(bits, _corner_codes(self.patch.flatten(2).gather(2, at), self.shifts), c)
        else:
            codes = bits % (1 << c)
        return torch.where(inside, _corners(codes, self.shifts, self.x.dtype)[..., None], self.patch)

    def accept(self, better: Tensor) -> None:
        loc, patch = self.trial
        self.loc = torch.where(better[:, None], loc, self.loc)
        self.patch = torch.where(better[:, None, None, None], patch, self.patch)

    def trial_groups(self) -> None:
        return None

    def compact(self, keep: Tensor) -> None:
        self.x, self.loc, self.patch = (t.index_select(0, keep) for t in (self.x, self.loc, self.patch))
        self.draws = self.draws.select(keep)


class _Outcome:
    """Full-batch results, filled in as samples finish; the clean check is every sample's first query."""

    def __init__(self, x: Tensor, loss: Tensor, success: Tensor, score: Tensor, structure: Structure | None) -> None:
        b = x.shape[0]
        self.adversarial, self.loss, self.success, self.score = x.clone(), loss, success.clone(), score.clone()
        self.iterations = torch.ones(b, dtype=torch.long, device=x.device)
        grid = None if structure is None else structure.grid_shape
        self.groups = None if grid is None else torch.zeros(b, 1, *grid, dtype=torch.bool, device=x.device)

    def write(self, rows: Tensor, kept: _Best, done: Tensor | None = None) -> None:
        """Store rows ``done`` (default: all) of the active batch, whose batch positions are ``rows``: each one's
        best image, and the queries it used.

        A sample whose every query gave a NaN or infinite loss (score -inf) keeps its clean image and loss.
        """
        pick = (lambda t: t) if done is None else (lambda t: t.index_select(0, done))
        index = pick(rows)
        self.iterations[index] = pick(kept.used)
        for name in ("adversarial", "loss", "score", "success", "groups"):
            value = getattr(kept, "image" if name == "adversarial" else name)
            if value is not None:
                getattr(self, name)[index] = pick(value)

    def result(self, x: Tensor, k: int, structure: Structure | None) -> AttackResult:
        return assemble(x, k, structure, adversarial=self.adversarial, success=self.success, loss=self.loss,
                        iterations=self.iterations, groups=self.groups, score=self.score)
