"""Structured (group) sparsity: a budget on placements of a binary kernel on a stride grid.

A placement grid ``v (B, 1, Hg, Wg)`` becomes a pixel mask by ``clamp(conv_transpose2d(v, kernel, stride), 0, 1)``;
only placements that lie fully inside the image are on the grid.

>>> import torch
>>> s = Structure(torch.ones(2, 2), stride=2, height=4, width=4)
>>> s.grid_shape, s.placements
((2, 2), 4)
>>> v = torch.zeros(1, 1, 2, 2); v[0, 0, 1, 0] = 1
>>> s.to_pixels(v)[0, 0]
tensor([[0., 0., 0., 0.],
        [0., 0., 0., 0.],
        [1., 1., 0., 0.],
        [1., 1., 0., 0.]])
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def check_kernel(kernel: Tensor) -> Tensor:
    """Validate a structure kernel: a non-empty binary 2-D tensor. Returns it as float32."""
    if not isinstance(kernel, Tensor):
        raise ValueError(f"kernel must be a 2-D torch.Tensor of 0/1 values, got {type(kernel).__name__}")
    if kernel.dim() != 2 or kernel.numel() == 0:
        raise ValueError(f"kernel must be a non-empty 2-D tensor, got shape {tuple(kernel.shape)}")
    if not bool(((kernel == 0) | (kernel == 1)).all()):
        bad = kernel[(kernel != 0) & (kernel != 1)].flatten()[0].item()
        raise ValueError(f"kernel must be binary (values 0 or 1), found {bad}")
    if not bool(kernel.any()):
        raise ValueError("kernel must contain at least one 1")
    return kernel.float()


class Structure:
    """Maps a placement grid to pixels (and gradients back) for images of size ``height x width``."""

    def __init__(self, kernel: Tensor, stride: int, height: int, width: int) -> None:
        self.kernel = check_kernel(kernel)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"stride must be a positive integer, got {stride!r}")
        kh, kw = self.kernel.shape
        if kh > height or kw > width:
            raise ValueError(f"kernel of size {kh}x{kw} does not fit in images of size {height}x{width}")
        self.stride = stride
        self.height, self.width = height, width
        self.grid_shape = ((height - kh) // stride + 1, (width - kw) // stride + 1)
        self.placements = self.grid_shape[0] * self.grid_shape[1]
        self._covered = ((self.grid_shape[0] - 1) * stride + kh, (self.grid_shape[1] - 1) * stride + kw)
        self._weights: dict[tuple, Tensor] = {}

    def _weight(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._weights:
            self._weights[key] = self.kernel.to(device=like.device, dtype=like.dtype)[None, None]
        return self._weights[key]

    def to_pixels(self, groups: Tensor) -> Tensor:
        """``(B, 1, Hg, Wg)`` placement weights -> ``(B, 1, H, W)`` pixel mask in ``[0, 1]``."""
        covered = F.conv_transpose2d(groups, self._weight(groups), stride=self.stride)
        pad = (0, self.width - self._covered[1], 0, self.height - self._covered[0])
        return F.pad(covered, pad).clamp_(0, 1)

    def to_grid(self, pixel_grad: Tensor) -> Tensor:
        """Adjoint of :meth:`to_pixels` (without the clamp): ``(B, 1, H, W)`` -> ``(B, 1, Hg, Wg)``."""
        cropped = pixel_grad[..., : self._covered[0], : self._covered[1]]
        return F.conv2d(cropped, self._weight(pixel_grad), stride=self.stride)
