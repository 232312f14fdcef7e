"""An analytic two-class model whose optimal sparse attack is known in closed form (adv_lib's style of test).

``logit_1(x) = sum(w * x) - bias`` and ``logit_0 = 0``. Setting pixel ``j`` to its best corner raises ``logit_1`` by
``gain_j = sum_c max(w_cj * (1 - x_cj), -w_cj * x_cj)``, independently of the other pixels, so the best k-pixel
attack picks the k largest gains: it flips the class iff their sum exceeds the margin ``bias - sum(w * x)``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class LinearTwoClass(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weight).flatten(1).sum(1) - self.bias
        return torch.stack((torch.zeros_like(score), score), dim=1)

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias - (x * self.weight).flatten(1).sum(1)

    def gains(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)``: the most each pixel can raise the class-1 score."""
        w = self.weight
        return torch.maximum(w * (1 - x), -w * x).sum(1)


def make_model(channels=3, size=8, sensitive=12, seed=0) -> LinearTwoClass:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.zeros(channels, size * size)
    positions = torch.randperm(size * size, generator=gen)[:sensitive]
    signs = torch.randint(0, 2, (channels, sensitive), generator=gen) * 2 - 1
    weight[:, positions] = signs * (0.5 + torch.rand(channels, sensitive, generator=gen))
    return LinearTwoClass(weight.view(channels, size, size), bias=3.0)


def needing_exactly(model: LinearTwoClass, k: int, n: int, seed=0, structure_k=None) -> torch.Tensor:
    """``n`` clean images (class 0, on the 8-bit grid) that a k-pixel attack can flip but no (k-1)-pixel one can."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = model.weight.shape
    found = []
    while sum(len(f) for f in found) < n:
        x = torch.randint(0, 256, (256, c, h, w), generator=gen).float() / 255
        margin = model.margin(x)
        top = model.gains(x).flatten(1).topk(k, dim=1).values
        ok = (margin > 0) & (top.sum(1) > margin + 0.05) & (top[:, : k - 1].sum(1) < margin - 0.05)
        found.append(x[ok])
    return torch.cat(found)[:n]


def class_zero_batch(model: LinearTwoClass, k: int, n: int, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`needing_exactly` images and their label 0."""
    return needing_exactly(model, k, n, seed=seed), torch.zeros(n, dtype=torch.long)


def best_placements_gain(model: LinearTwoClass, x: torch.Tensor, kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Exhaustive best gain of ``k`` overlapping placements (stride 1) of ``kernel``: the union counts once."""
    gains = model.gains(x)  # (B, H, W)
    kh, kw = kernel.shape
    h, w = gains.shape[-2:]
    windows = []
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            cover = torch.zeros(h, w, dtype=torch.bool)
            cover[i : i + kh, j : j + kw] = kernel.bool()
            windows.append(cover)
    best = torch.zeros(x.shape[0])
    for combo in itertools.combinations(range(len(windows)), k):
        union = torch.stack([windows[t] for t in combo]).any(0)
        best = torch.maximum(best, (gains * union).flatten(1).sum(1))
    return best


def assert_no_cheaper_attack(model, x, k):
    """Sanity of the construction: even the exhaustive optimum with k-1 pixels fails."""
    assert (model.gains(x).flatten(1).topk(k - 1, dim=1).values.sum(1) < model.margin(x)).all()
    assert (F.softmax(model(x), 1).argmax(1) == 0).all()
