"""Box utilities in plain torch (no torchvision): format conversion, IoU and generalised IoU.

Boxes are ``(..., 4)`` tensors, either corners ``(x0, y0, x1, y1)`` ("xyxy") or centre and size
``(cx, cy, w, h)`` ("cxcywh"). :func:`box_iou` and :func:`generalized_box_iou` broadcast over the leading
dimensions like arithmetic does: aligned pairs with equal shapes, all pairs with ``a[:, None]`` and ``b[None]``.

>>> import torch
>>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
>>> b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 5.0, 5.0]])
>>> box_iou(a[:, None], b[None])
tensor([[0.1429, 0.0000]])
>>> generalized_box_iou(a, b[:1])
tensor([-0.0794])
>>> xyxy_to_cxcywh(cxcywh_to_xyxy(torch.tensor([0.5, 0.5, 0.2, 0.4])))
tensor([0.5000, 0.5000, 0.2000, 0.4000])
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-7


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` to ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x0, y0, x1, y1)`` to ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes (zero for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _intersection_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter, box_area(a) + box_area(b) - inter


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of xyxy boxes ``a`` and ``b`` (broadcast); 0 where both boxes are empty."""
    inter, union = _intersection_union(a, b)
    return inter / union.clamp(min=_EPS)


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al., 2019) of xyxy boxes (broadcast), in ``[-1, 1]``: the loss DETR uses."""
    inter, union = _intersection_union(a, b)
    top_left = torch.minimum(a[..., :2], b[..., :2])
    bottom_right = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter / union.clamp(min=_EPS) - (hull - union) / hull.clamp(min=_EPS)
