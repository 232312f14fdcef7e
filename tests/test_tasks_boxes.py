"""Box utilities and Hungarian matching of the tasks package, against brute force and transformers' reference."""

import itertools

import pytest
import torch
from transformers.loss.loss_for_object_detection import generalized_box_iou as reference_giou

from hf_sparse_attack.tasks.boxes import box_area, box_iou, cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh
from hf_sparse_attack.tasks.matching import match_queries

torch.set_num_threads(1)


def random_boxes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=gen) * 0.7
    size = torch.rand(n, 2, generator=gen) * 0.3 + 0.01
    return torch.cat((corner, corner + size), dim=1)


def iou_by_hand(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_conversions_round_trip():
    boxes = random_boxes(20, 0)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-6)
    assert torch.allclose(box_area(boxes), xyxy_to_cxcywh(boxes)[:, 2:].prod(1), atol=1e-6)


def test_iou_matches_brute_force_and_broadcasts():
    a, b = random_boxes(6, 1), random_boxes(5, 2)
    pairwise = box_iou(a[:, None], b[None])
    assert pairwise.shape == (6, 5)
    for i, j in itertools.product(range(6), range(5)):
        assert pairwise[i, j].item() == pytest.approx(iou_by_hand(a[i].tolist(), b[j].tolist()), abs=1e-6)
    assert torch.allclose(box_iou(a[:5], b), pairwise[torch.arange(5), torch.arange(5)])
    assert torch.allclose(box_iou(a, a), torch.ones(6))


def test_giou_matches_transformers_reference():
    a, b = random_boxes(7, 3), random_boxes(4, 4)
    assert torch.allclose(generalized_box_iou(a[:, None], b[None]), reference_giou(a, b), atol=1e-6)
    far = torch.tensor([[0.0, 0.0, 0.1, 0.1]]), torch.tensor([[0.9, 0.9, 1.0, 1.0]])
    assert generalized_box_iou(*far).item() < -0.9


def test_matching_is_optimal():
    gen = torch.Generator().manual_seed(5)
    pred, target = xyxy_to_cxcywh(random_boxes(5, 6)), xyxy_to_cxcywh(random_boxes(3, 7))
    class_cost = torch.rand(5, 3, generator=gen)
    rows, cols = match_queries(class_cost, pred, target, class_weight=1, bbox_weight=5, giou_weight=2)
    total = (
        class_cost
        + 5 * torch.cdist(pred, target, p=1)
        - 2 * reference_giou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(target))
    )
    best = min(sum(total[q, j] for j, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3))
    assert len(rows) == 3 and sorted(cols.tolist()) == [0, 1, 2]
    assert total[rows, cols].sum().item() == pytest.approx(best.item(), abs=1e-5)


def test_matching_avoids_nan_costs():
    pred, target = xyxy_to_cxcywh(random_boxes(3, 8)), xyxy_to_cxcywh(random_boxes(1, 9))
    class_cost = torch.tensor([[float("nan")], [0.0], [float("inf")]])
    rows, cols = match_queries(class_cost, pred, target, class_weight=1, bbox_weight=0, giou_weight=0)
    assert rows.tolist() == [1] and cols.tolist() == [0]
