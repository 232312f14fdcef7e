"""Hungarian matching of predicted boxes to target boxes, as in DETR (scipy's linear_sum_assignment), per batch.

The matching cost of query ``q`` and target ``j`` is
``class_weight * class_cost[q, j] + bbox_weight * L1(box_q, box_j) - giou_weight * GIoU(box_q, box_j)``, with
boxes normalised ``cxcywh``. The class cost depends on the head (see :mod:`tasks.detection`) and is given.

A batch is matched in three steps, so that it costs one transfer each way whatever its size, and one host wait:
:func:`matching_costs` computes every image's cost matrix on the device in one batched op, over targets padded
to the batch's most; :func:`assign` moves them to the host at once, solves each image's assignment there (only
its first ``counts[i]`` targets) and moves all the matched indices back to the device at once (a non-blocking
copy from pinned memory on CUDA: the host does not wait for it).
:func:`match_queries` does the same for one image.

>>> import torch
>>> pred = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]] * 2)  # (B=2, Q=2, 4)
>>> target = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]], [[0.2, 0.2, 0.1, 0.1], [0, 0, 0, 0]]])
>>> costs = matching_costs(torch.zeros(2, 2, 2), pred, target, class_weight=1, bbox_weight=5, giou_weight=2)
>>> assign(costs, [2, 1])  # image 1 has one target (the second is padding): rows image, query, target
tensor([[0, 0, 1],
        [0, 1, 0],
        [1, 0, 0]])
>>> match_queries(torch.zeros(2, 1), pred[0], target[0, :1], class_weight=1, bbox_weight=5, giou_weight=2)
(tensor([1]), tensor([0]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .boxes import cxcywh_to_xyxy, generalized_box_iou


@torch.no_grad()
def matching_costs(
    class_cost: Tensor,
    pred_boxes: Tensor,
    target_boxes: Tensor,
    class_weight: float,
    bbox_weight: float,
    giou_weight: float,
) -> Tensor:
    """``(B, Q, T)`` float32 matching costs of a batch, computed on its device.

    Args:
        class_cost: ``(B, Q, T)`` classification cost of assigning query ``q`` to target ``j``.
        pred_boxes: ``(B, Q, 4)`` predicted boxes, normalised cxcywh.
        target_boxes: ``(B, T, 4)`` target boxes, normalised cxcywh (padding: anything finite).

    NaN or infinite costs are replaced by the largest float, as DETR's matcher does, so that such pairs are used
    only when nothing else is left.
    """
    pred, target = pred_boxes.float(), target_boxes.float()
    bbox_cost = torch.cdist(pred, target, p=1)
    giou = generalized_box_iou(cxcywh_to_xyxy(pred)[:, :, None], cxcywh_to_xyxy(target)[:, None])
    cost = class_weight * class_cost.float() + bbox_weight * bbox_cost - giou_weight * giou
    big = torch.finfo(cost.dtype).max
    return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)


def assign(costs: Tensor, counts: Sequence[int]) -> Tensor:
    """Optimal one-to-one assignment per image of ``costs (B, Q, T)``, using the first ``counts[i]`` targets of image
    ``i``: a ``(3, M)`` long tensor on the device of ``costs``, whose rows are the image, query and target indices
    of the ``M`` matched pairs, image by image and sorted by query within an image.

    One device-to-host transfer (the costs) and one host-to-device transfer (the indices, from pinned memory and
    non-blocking on CUDA); nothing is transferred when no image has a target.
    """
    if not any(counts):
        return torch.zeros(3, 0, dtype=torch.long, device=costs.device)
    host = np.asarray(costs.cpu())
    pairs = []
    for i, n in enumerate(counts):
        if n:
            rows, cols = linear_sum_assignment(host[i, :, :n])
            pairs.append(np.stack((np.full_like(rows, i), rows, cols)))
    indices = torch.from_numpy(np.concatenate(pairs, axis=1).astype(np.int64, copy=False))
    if costs.is_cuda:
        indices = indices.pin_memory()
    return indices.to(costs.device, non_blocking=True)


def match_queries(
    class_cost: Tensor, pred_boxes: Tensor, target_boxes: Tensor, **weights: float
) -> tuple[Tensor, Tensor]:
    """Optimal one-to-one assignment for one image: ``(query indices, target indices)``, sorted by query.

    ``class_cost (Q, n)``, ``pred_boxes (Q, 4)``, ``target_boxes (n, 4)`` and the ``weights`` (``class_weight``,
    ``bbox_weight``, ``giou_weight``) as for one image of :func:`matching_costs`.
    """
    costs = matching_costs(class_cost[None], pred_boxes[None], target_boxes[None], **weights)
    _, rows, cols = assign(costs, [target_boxes.shape[0]])
    return rows, cols
