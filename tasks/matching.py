"""Per-image Hungarian matching of predicted boxes to target boxes, as in DETR (scipy's linear_sum_assignment).

The matching cost of query ``q`` and target ``j`` is
``class_weight * class_cost[q, j] + bbox_weight * L1(box_q, box_j) - giou_weight * GIoU(box_q, box_j)``, with
boxes normalised ``cxcywh``. The class cost depends on the head (see :mod:`tasks.detection`) and is given.

>>> import torch
>>> pred = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]])
>>> target = torch.tensor([[0.7, 0.7, 0.2, 0.2]])
>>> match_queries(torch.zeros(2, 1), pred, target, class_weight=1, bbox_weight=5, giou_weight=2)
(tensor([1]), tensor([0]))
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .boxes import cxcywh_to_xyxy, generalized_box_iou


@torch.no_grad()
def match_queries(
    class_cost: Tensor,
    pred_boxes: Tensor,
    target_boxes: Tensor,
    class_weight: float,
    bbox_weight: float,
    giou_weight: float,
) -> tuple[Tensor, Tensor]:
    """Optimal one-to-one assignment for one image: ``(query indices, target indices)``, sorted by query.

    Args:
        class_cost: ``(Q, n)`` classification cost of assigning query ``q`` to target ``j``.
        pred_boxes: ``(Q, 4)`` predicted boxes, normalised cxcywh.
        target_boxes: ``(n, 4)`` target boxes, normalised cxcywh.

    NaN or infinite costs are replaced by the largest float, as DETR's matcher does, so that such pairs are used
    only when nothing else is left.
    """
    bbox_cost = torch.cdist(pred_boxes.float(), target_boxes.float(), p=1)
    giou = generalized_box_iou(cxcywh_to_xyxy(pred_boxes.float())[:, None], cxcywh_to_xyxy(target_boxes.float())[None])
    cost = class_weight * class_cost.float() + bbox_weight * bbox_cost - giou_weight * giou
    big = torch.finfo(cost.dtype).max
    cost = torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    device = pred_boxes.device
    return torch.as_tensor(rows, dtype=torch.long, device=device), torch.as_tensor(
        cols, dtype=torch.long, device=device
    )
