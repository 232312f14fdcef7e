"""Binary kernels for structured sparsity: patches, lines, drawn shapes, letters and arbitrary binary images.

All builders return a ``float32`` tensor of 0/1 values, ready for ``SparsePGD(kernel=..., stride=...)``.

>>> square(2)
tensor([[1., 1.],
        [1., 1.]])
>>> line(3, "diagonal")
tensor([[1., 0., 0.],
        [0., 1., 0.],
        [0., 0., 1.]])
>>> shape("cross", 3)
tensor([[0., 1., 0.],
        [1., 1., 1.],
        [0., 1., 0.]])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from matplotlib.path import Path
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .structure import check_kernel


def _check_size(size: Any, minimum: int = 1) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < minimum:
        raise ValueError(f"kernel size must be an integer >= {minimum}, got {size!r}")
    return size


def square(size: int) -> Tensor:
    """A ``size x size`` patch of ones."""
    return torch.ones(_check_size(size), _check_size(size))


def line(length: int, orientation: str = "horizontal") -> Tensor:
    """A one-pixel-wide line: ``horizontal``, ``vertical``, ``diagonal`` or ``antidiagonal``."""
    n = _check_size(length)
    eye = torch.eye(n)
    lines = {
        "horizontal": torch.ones(1, n),
        "vertical": torch.ones(n, 1),
        "diagonal": eye,
        "antidiagonal": eye.flip(1),
    }
    if orientation not in lines:
        raise ValueError(f"unknown line orientation {orientation!r}; allowed: {sorted(lines)}")
    return lines[orientation]


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [-1, 1], y pointing up."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(-c, c, indexing="ij")
    return xx, yy


def _cross(size: int) -> Tensor:
    xx, yy = _grid(size)
    half = max(1, size // 3) / size
    return ((xx.abs() <= half) | (yy.abs() <= half)).float()


def _diamond(size: int) -> Tensor:
    xx, yy = _grid(size)
    return (xx.abs() + yy.abs() <= 1.0 + 1e-6).float()


def _heart(size: int) -> Tensor:
    xx, yy = _grid(size)
    x, y = xx * 1.25, yy * 1.25 + 0.15
    return ((x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0).float()


def _star(size: int) -> Tensor:
    xx, yy = _grid(size)
    angles = [math.pi / 2 + i * math.pi / 5 for i in range(10)]
    radii = [1.0 if i % 2 == 0 else 0.45 for i in range(10)]
    vertices = [(r * math.cos(a), r * math.sin(a) - 0.1) for r, a in zip(radii, angles)]
    inside = Path(vertices).contains_points(torch.stack((xx, yy), -1).reshape(-1, 2).numpy(), radius=1e-9)
    return torch.from_numpy(inside.reshape(size, size).astype(np.float32))


SHAPES: dict[str, Callable[[int], Tensor]] = {"cross": _cross, "diamond": _diamond, "heart": _heart, "star": _star}


def shape(name: str, size: int) -> Tensor:
    """A named shape drawn procedurally on a ``size x size`` grid: one of ``SHAPES`` (cross, diamond, heart, star)."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; allowed: {sorted(SHAPES)}")
    return from_image(SHAPES[name](_check_size(size, 3)))


def letter(char: str, size: int, font: str | None = None) -> Tensor:
    """A character rendered with ``font`` (a TrueType file; Pillow's default font when ``None``), cropped."""
    if not isinstance(char, str) or len(char) != 1 or char.isspace():
        raise ValueError(f"letter needs exactly one visible character, got {char!r}")
    size = _check_size(size, 3)
    face = ImageFont.truetype(font, size) if font else ImageFont.load_default(size=size)
    img = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(img).text((size // 2, size // 2), char, fill=255, font=face)
    return from_image(img, threshold=0.5)


def from_image(image: Any, threshold: float = 0.5) -> Tensor:
    """Any binary image (path, PIL image, array or tensor; values in [0, 1] or [0, 255]) cropped to its support.

    Pixels brighter than ``threshold`` (relative to the maximum value range) become 1.
    """
    if isinstance(image, str):
        image = Image.open(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    arr = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if arr.dim() != 2:
        raise ValueError(f"a kernel image must be 2-D (a single channel), got shape {tuple(arr.shape)}")
    if arr.numel() and arr.max() > 1:
        arr = arr / 255.0
    binary = (arr > threshold).float()
    rows, cols = binary.any(1).nonzero(), binary.any(0).nonzero()
    if rows.numel() == 0:
        raise ValueError(f"the kernel image has no pixel above threshold {threshold}")
    cropped = binary[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return check_kernel(cropped)
