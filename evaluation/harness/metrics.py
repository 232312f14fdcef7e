"""Robustness metrics as torchmetrics ``Metric`` s: states declared in ``__init__``, synced across processes.

- :class:`ClassificationRobustness`: clean accuracy, robust accuracy (AutoAttack's convention: correct on the clean
  *and* on the adversarial image), attack success rate (fooled among the samples classified correctly), mean and
  median L0 of the successful examples.
- :class:`DetectionRobustness`: the twelve COCO statistics (AP, AP50, AP75, AP and AR by object size, AR at 1, 10 and
  100 detections) on clean and adversarial images and their drop, computed by pycocotools' ``COCOeval`` on the
  states gathered from every process (torchmetrics' own ``MeanAveragePrecision`` needs torchvision), so the
  numbers are exactly COCO's.
- :class:`SegmentationRobustness`: mIoU (``MulticlassJaccardIndex(ignore_index=255)``) and pixel accuracy, clean and
  adversarial, and their drop.
- :class:`TransferMatrix`: one such metric per (source model, target model) cell and the matrix of one value.

:data:`CONVENTIONS` says in words, per task, what each number counts (for ``all_results.json``).

``compute()`` returns a dict of Python floats, ``nan`` where a value is undefined (a success rate with no
correctly classified sample, a mean over nothing, mAP without ground truth). Functional twins compute the same
from whole tensors: :func:`classification_robustness`, :func:`coco_map`, :func:`segmentation_robustness`.

Every state of the classification and detection metrics is float64 (and ``set_dtype`` says so): a process that
received no sample sends torchmetrics' empty placeholder of the metric's dtype, which must match the other
processes' states in the all-gather. Float64 holds box coordinates, scores, counts and ids exactly. Keep these
metrics on the CPU (``.to(device)`` resets a metric's dtype to the default); with NCCL, sync them over a gloo
group (``process_group=torch.distributed.new_group(backend="gloo")``), as the evaluation scripts do.

>>> import torch
>>> metric = ClassificationRobustness()
>>> metric.update(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 2, 1, 0]),
...               torch.tensor([0, 3, 5, 0]))
>>> {key: round(value, 4) for key, value in metric.compute().items()}  # doctest: +NORMALIZE_WHITESPACE
{'samples': 4.0, 'clean_accuracy': 0.75, 'robust_accuracy': 0.25, 'attack_success_rate': 0.6667,
 'mean_l0': 4.0, 'median_l0': 4.0}
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.wrappers.abstract import WrapperMetric

_F64 = torch.float64
_GT_COLUMNS = 8  # image id, x, y, w, h, label, area, iscrowd
_DT_COLUMNS = 7  # image id, x, y, w, h, score, label


def _cat(state: Tensor | list[Tensor], columns: int = 1) -> Tensor:
    """A ``cat`` state (a list before syncing, a tensor after) as one float64 CPU tensor of ``columns`` columns."""
    if isinstance(state, list):
        state = dim_zero_cat(state) if state else torch.zeros(0, dtype=_F64)
    state = state.to("cpu", _F64)
    return state.reshape(-1, columns) if columns > 1 else state.reshape(-1)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


#: What the numbers of each task count, in words, for ``all_results.json`` (``"conventions"``).
CONVENTIONS: dict[str, dict[str, str]] = {
    "classification": {
        "robust_accuracy": "correct on the clean and on the adversarial image (AutoAttack); a sample misclassified "
                           "on its clean image is never robust",
        "attack_success_rate": "fooled (correct on the clean image, wrong on the adversarial one) among the samples "
                               "classified correctly on the clean image: 1 - robust_accuracy / clean_accuracy",
        "mean_l0, median_l0": "perturbed pixels (kernel placements for a structured attack) of the fooled samples",
        "transfer cell": "attack_success_rate of the target model, among the samples it classifies correctly",
    },
    "detection": {
        "metrics": "pycocotools COCOeval (bbox) on every image evaluated: map, map_50, map_75, map_small, map_medium, "
                   "map_large, mar_1, mar_10, mar_100, mar_small, mar_medium, mar_large are its stats[0..11] "
                   "(torchmetrics' names; map50 and map75 repeat map_50 and map_75); nan where COCOeval gives -1",
        "ground truth": "the dataset's own annotations, as in the file: every box, its area (w * h where the "
                        "dataset has none) and crowd flag, so the numbers equal COCOeval called on the same files",
        "annotation_changes": "boxes reaching out of the image clipped, and boxes with no area inside it dropped, "
                              "for the attack's targets only (crowd boxes are not targets); mAP scores the boxes as "
                              "given",
        "detections": "every detection (score threshold 0, COCOeval keeps the 100 best per image) in the original "
                      "image's pixels",
    },
    "segmentation": {
        "prediction": "at the original image size as transformers' post_process_semantic_segmentation(outputs, "
                      "target_sizes) gives it: the model's logits resized bilinearly (align_corners=False), then "
                      "argmax",
        "miou": "MulticlassJaccardIndex(average='macro', ignore_index): one confusion matrix over every labelled "
                "pixel of every image, IoU averaged over the classes present in the prediction or the truth",
        "pixel_accuracy": "labelled pixels predicted right, over all images",
        "ground truth": "the dataset's label maps at their own size, with the processor's do_reduce_labels applied",
    },
}


class ClassificationRobustness(Metric):
    """Clean and robust accuracy, attack success rate and L0 of the successful examples.

    ``update(labels, clean_predictions, adversarial_predictions, l0)`` with ``(B,)`` tensors. A sample is *robust*
    when both its clean image and its adversarial example are classified correctly (AutoAttack's robust accuracy: a
    sample misclassified on its clean image never counts, even where the adversarial image, e.g. one crafted on
    another model, is classified correctly); it is *fooled* when it is classified correctly and its adversarial
    example is not. The success rate is fooled / correctly classified; mean and median L0 are over the fooled
    samples.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("total", "clean_correct", "robust_correct"):
            self.add_state(name, torch.tensor(0.0, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("fooled_l0", [], dist_reduce_fx="cat")
        self.set_dtype(_F64)

    def update(self, labels: Tensor, clean_predictions: Tensor, adversarial_predictions: Tensor, l0: Tensor) -> None:
        labels, clean_predictions, adversarial_predictions, l0 = (
            t.to(self.device) for t in (labels, clean_predictions, adversarial_predictions, l0)
        )
        clean_ok = clean_predictions == labels
        robust_ok = clean_ok & (adversarial_predictions == labels)
        self.total += labels.numel()
        self.clean_correct += clean_ok.sum()
        self.robust_correct += robust_ok.sum()
        self.fooled_l0.append(l0[clean_ok & ~robust_ok].to(_F64))

    def compute(self) -> dict[str, float]:
        return _classification_summary(self.total, self.clean_correct, self.robust_correct, _cat(self.fooled_l0))


def _classification_summary(total: Tensor, clean: Tensor, robust: Tensor, fooled_l0: Tensor) -> dict[str, float]:
    total, clean, robust = float(total), float(clean), float(robust)
    return {
        "samples": total,
        "clean_accuracy": _ratio(clean, total),
        "robust_accuracy": _ratio(robust, total),
        "attack_success_rate": _ratio(len(fooled_l0), clean),
        "mean_l0": float(fooled_l0.mean()) if len(fooled_l0) else math.nan,
        "median_l0": float(fooled_l0.quantile(0.5)) if len(fooled_l0) else math.nan,
    }


def classification_robustness(
    labels: Tensor, clean_predictions: Tensor, adversarial_predictions: Tensor, l0: Tensor
) -> dict[str, float]:
    """Functional :class:`ClassificationRobustness`.

    >>> import torch
    >>> classification_robustness(torch.tensor([1, 1]), torch.tensor([1, 0]), torch.tensor([1, 0]),
    ...                           torch.tensor([0, 0]))["attack_success_rate"]
    0.0
    >>> classification_robustness(torch.tensor([1, 1]), torch.tensor([1, 0]), torch.tensor([1, 1]),
    ...                           torch.tensor([0, 0]))["robust_accuracy"]  # sample 1: wrong on its clean image
    0.5
    """
    clean_ok = clean_predictions == labels
    robust_ok = clean_ok & (adversarial_predictions == labels)
    return _classification_summary(
        torch.tensor(labels.numel()), clean_ok.sum(), robust_ok.sum(), l0[clean_ok & ~robust_ok].to(_F64)
    )


def _detection_rows(image_id: int, found: dict, ground_truth: bool) -> Tensor:
    boxes = torch.as_tensor(np.asarray(found["boxes"], dtype=np.float64)).reshape(-1, 4)
    n = len(boxes)
    ids = torch.full((n, 1), float(image_id), dtype=_F64)

    def column(key: str, default: Callable[[], Tensor]) -> Tensor:
        value = found.get(key)
        return default() if value is None else torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(n, 1)

    labels = column("labels", lambda: torch.zeros(n, 1, dtype=_F64))
    if ground_truth:
        area = column("area", lambda: (boxes[:, 2] * boxes[:, 3]).reshape(n, 1))
        iscrowd = column("iscrowd", lambda: torch.zeros(n, 1, dtype=_F64))
        return torch.cat([ids, boxes, labels, area, iscrowd], dim=1).flatten()
    return torch.cat([ids, boxes, column("scores", lambda: torch.ones(n, 1, dtype=_F64)), labels], dim=1).flatten()


def _coco(image_ids: list[int], categories: list[int], annotations: list[dict]):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {
        "images": [{"id": i} for i in image_ids],
        "categories": [{"id": c} for c in categories],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


#: Names of COCOeval's twelve ``stats`` (bbox), in their order: torchmetrics' ``MeanAveragePrecision`` keys.
COCO_STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
#: Earlier names kept in the results: ``map50`` is ``map_50``, ``map75`` is ``map_75``.
COCO_ALIASES = {"map50": "map_50", "map75": "map_75"}


def _by_image(rows: Tensor) -> Tensor:
    """Rows in image id order (column 0), each image's rows in their order."""
    return rows[torch.argsort(rows[:, 0], stable=True)]


def _named_stats(stats: Sequence[float]) -> dict[str, float]:
    named = {key: float(s) if s >= 0 else math.nan for key, s in zip(COCO_STATS, stats, strict=True)}
    return {**named, **{alias: named[key] for alias, key in COCO_ALIASES.items()}}


def coco_map(image_ids: Sequence[int], ground_truth: Tensor, detections: Tensor) -> dict[str, float]:
    """The twelve COCO statistics by pycocotools' ``COCOeval`` (bbox) on in-memory annotations.

    Keys: :data:`COCO_STATS` (``stats[0..11]``: AP, AP50, AP75, AP small/medium/large, AR at 1/10/100 detections,
    AR small/medium/large) and the aliases :data:`COCO_ALIASES`; ``nan`` where COCOeval gives -1 (e.g. no object of
    a size) and everywhere without ground truth. ``ground_truth`` rows: ``[image_id, x, y, w, h, label, area,
    iscrowd]``; ``detections`` rows: ``[image_id, x, y, w, h, score, label]`` (boxes COCO xywh). Images are
    evaluated in id order and each image's rows keep their order, so the numbers do not depend on how rows of
    different images interleave (e.g. after gathering from several processes). Detection results are built as
    ``COCO.loadRes`` builds them (area ``w * h``, ids from 1 in row order).

    >>> import torch
    >>> gt = torch.tensor([[1, 0, 0, 10, 10, 3, 100, 0]], dtype=torch.float64)
    >>> result = coco_map([1], gt, torch.tensor([[1, 0, 0, 10, 9, 0.9, 3]], dtype=torch.float64))  # IoU 0.9
    >>> {key: round(value, 4) for key, value in result.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'map': 0.9, 'map_50': 1.0, 'map_75': 1.0, 'map_small': 0.9, 'map_medium': nan, 'map_large': nan,
     'mar_1': 0.9, 'mar_10': 0.9, 'mar_100': 0.9, 'mar_small': 0.9, 'mar_medium': nan, 'mar_large': nan,
     'map50': 1.0, 'map75': 1.0}
    """
    from pycocotools.cocoeval import COCOeval

    images = sorted({int(i) for i in image_ids})
    ground_truth = _by_image(ground_truth.reshape(-1, _GT_COLUMNS))
    detections = _by_image(detections.reshape(-1, _DT_COLUMNS))
    if len(ground_truth) == 0:
        return _named_stats([-1.0] * len(COCO_STATS))
    gt_annotations = [
        {"id": n, "image_id": int(r[0]), "bbox": r[1:5].tolist(), "category_id": int(r[5]), "area": float(r[6]),
         "iscrowd": int(r[7])}
        for n, r in enumerate(ground_truth, start=1)
    ]
    dt_annotations = [
        {"id": n, "image_id": int(r[0]), "bbox": r[1:5].tolist(), "score": float(r[5]), "category_id": int(r[6]),
         "area": float(r[3] * r[4]), "iscrowd": 0}
        for n, r in enumerate(detections, start=1)
    ]
    categories = sorted({a["category_id"] for a in gt_annotations})
    evaluation = COCOeval(_coco(images, categories, gt_annotations), _coco(images, categories, dt_annotations), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return _named_stats(evaluation.stats)


class DetectionRobustness(Metric):
    """The twelve COCO statistics of clean and adversarial detections, and their drop (clean minus adversarial).

    ``update(image_ids, ground_truth, clean, adversarial)``: one entry per image of each list; ground truth dicts
    hold ``boxes`` ``(n, 4)`` COCO xywh and ``labels`` (optionally ``area``, else ``w * h``, and ``iscrowd``, else
    0), detection dicts hold ``boxes`` xywh, ``scores`` and ``labels``. The ground truth is scored as given: pass
    the dataset's own annotations for COCO's numbers. Keys of the result: each key of :func:`coco_map` (``map``,
    ``map_50``, ..., ``mar_large``, ``map50``, ``map75``) with ``_clean``, ``_adversarial`` and ``_drop``, and
    ``images``.

    >>> metric = DetectionRobustness()
    >>> truth = {"boxes": [[0, 0, 10, 10]], "labels": [1]}
    >>> metric.update([7], [truth], [{**truth, "scores": [0.9]}], [{"boxes": [], "scores": [], "labels": []}])
    >>> round(metric.compute()["map_drop"], 4)
    1.0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("image_ids", "ground_truth", "clean", "adversarial"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.set_dtype(_F64)

    def update(self, image_ids: Sequence[int], ground_truth: Sequence[dict], clean: Sequence[dict],
               adversarial: Sequence[dict]) -> None:
        if not len(image_ids) == len(ground_truth) == len(clean) == len(adversarial):
            raise ValueError("image_ids, ground_truth, clean and adversarial need one entry per image each")
        self.image_ids.append(torch.tensor([float(i) for i in image_ids], dtype=_F64, device=self.device))
        for name, entries, truth in (("ground_truth", ground_truth, True), ("clean", clean, False),
                                     ("adversarial", adversarial, False)):
            rows = [_detection_rows(i, entry, truth) for i, entry in zip(image_ids, entries)]
            getattr(self, name).append((torch.cat(rows) if rows else torch.zeros(0, dtype=_F64)).to(self.device))

    def compute(self) -> dict[str, float]:
        ids = _cat(self.image_ids).long().tolist()
        truth = _cat(self.ground_truth, _GT_COLUMNS)
        clean = coco_map(ids, truth, _cat(self.clean, _DT_COLUMNS))
        adversarial = coco_map(ids, truth, _cat(self.adversarial, _DT_COLUMNS))
        out = {"images": float(len(set(ids)))}
        for key in clean:
            out[f"{key}_clean"] = clean[key]
            out[f"{key}_adversarial"] = adversarial[key]
            out[f"{key}_drop"] = clean[key] - adversarial[key]
        return out


def joint_counts(target: Tensor, clean: Tensor, adversarial: Tensor, ignore_index: int = 255) -> list[list[int]]:
    """Compact per-image record of two label maps against the truth: ``[[label, clean, adversarial, pixels], ...]``.

    Pixels labelled ``ignore_index`` are left out. :func:`expand_counts` gives back pixel lists with the same
    confusion matrices, so metrics computed from the record equal those computed from the maps.

    >>> import torch
    >>> joint_counts(torch.tensor([0, 0, 1, 255]), torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 0]))
    [[0, 0, 0, 1], [0, 0, 1, 1], [1, 1, 1, 1]]
    """
    labelled = target != ignore_index
    t, c, a = (v[labelled].long().flatten() for v in (target, clean, adversarial))
    base = int(max(t.max(), c.max(), a.max())) + 1 if t.numel() else 1
    codes, counts = torch.unique((t * base + c) * base + a, return_counts=True)
    return [[int(v // (base * base)), int(v // base % base), int(v % base), int(n)]
            for v, n in zip(codes.tolist(), counts.tolist())]


def expand_counts(counts: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """``(target, clean, adversarial)`` pixel lists with the joint counts of :func:`joint_counts`.

    >>> [v.tolist() for v in expand_counts([[0, 0, 1, 2], [1, 1, 1, 1]])]
    [[0, 0, 1], [0, 0, 1], [1, 1, 1]]
    """
    table = torch.tensor(counts, dtype=torch.long).reshape(-1, 4)
    return tuple(table[:, i].repeat_interleave(table[:, 3]) for i in range(3))


class SegmentationRobustness(Metric):
    """mIoU and pixel accuracy of clean and adversarial label maps, and their drop.

    ``update(clean_predictions, adversarial_predictions, target)``: label maps (any shape, flattened) with
    ``ignore_index`` marking unlabelled pixels of ``target``. mIoU is ``MulticlassJaccardIndex(average="macro")``:
    the mean IoU over the classes present in the prediction or the truth; pixel accuracy is the fraction of
    labelled pixels predicted right. Keys: ``miou_clean``, ``miou_adversarial``, ``miou_drop``,
    ``pixel_accuracy_clean``, ``pixel_accuracy_adversarial``, ``pixel_accuracy_drop``.

    >>> import torch
    >>> metric = SegmentationRobustness(num_classes=2)
    >>> metric.update(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 1]), torch.tensor([0, 1, 255]))
    >>> {key: round(value, 4) for key, value in metric.compute().items()}  # doctest: +NORMALIZE_WHITESPACE
    {'miou_clean': 1.0, 'miou_adversarial': 0.25, 'miou_drop': 0.75, 'pixel_accuracy_clean': 1.0,
     'pixel_accuracy_adversarial': 0.5, 'pixel_accuracy_drop': 0.5}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        options = {"num_classes": num_classes, "ignore_index": ignore_index, "validate_args": False, **kwargs}
        self.iou = nn.ModuleDict({v: MulticlassJaccardIndex(average="macro", **options) for v in _VERSIONS})
        self.accuracy = nn.ModuleDict({v: MulticlassAccuracy(average="micro", **options) for v in _VERSIONS})

    def update(self, clean_predictions: Tensor, adversarial_predictions: Tensor, target: Tensor) -> None:
        target = target.flatten().to(self.device)
        for version, predictions in zip(_VERSIONS, (clean_predictions, adversarial_predictions)):
            predictions = predictions.flatten().to(self.device)
            self.iou[version].update(predictions, target)
            self.accuracy[version].update(predictions, target)

    def compute(self) -> dict[str, float]:
        out = {}
        for name, metrics in (("miou", self.iou), ("pixel_accuracy", self.accuracy)):
            values = {v: float(metrics[v].compute()) for v in _VERSIONS}
            out.update({f"{name}_{v}": values[v] for v in _VERSIONS})
            out[f"{name}_drop"] = values["clean"] - values["adversarial"]
        return out

    def reset(self) -> None:
        super().reset()
        for metrics in (self.iou, self.accuracy):
            for metric in metrics.values():
                metric.reset()


_VERSIONS = ("clean", "adversarial")


def segmentation_robustness(
    clean_predictions: Tensor, adversarial_predictions: Tensor, target: Tensor, num_classes: int,
    ignore_index: int = 255,
) -> dict[str, float]:
    """Functional :class:`SegmentationRobustness`.

    >>> import torch
    >>> segmentation_robustness(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2)["miou_drop"]
    0.75
    """
    metric = SegmentationRobustness(num_classes, ignore_index)
    metric.update(clean_predictions, adversarial_predictions, target)
    return metric.compute()


class TransferMatrix(WrapperMetric):
    """Adversarial examples crafted on each source model, evaluated on each target model: one metric per cell.

    ``cells[s][t]`` is the metric of source ``s`` on target ``t``, updated with ``update(s, t, ...)`` (the rest of
    the arguments go to that cell); each cell syncs its own states. ``compute()`` gives ``{"matrix": (S, T) float64
    tensor of the cells' value under key, "cells": their full results}``. For classification the cell value is
    the attack success rate on the target among the samples it classifies correctly (the diagonal: white-box).

    >>> import torch
    >>> matrix = TransferMatrix([[ClassificationRobustness() for _ in range(2)]], "attack_success_rate")
    >>> y = torch.tensor([0, 1])
    >>> matrix.update(0, 0, y, y, torch.tensor([1, 0]), torch.tensor([2, 2]))
    >>> matrix.update(0, 1, y, y, torch.tensor([1, 1]), torch.tensor([2, 2]))
    >>> matrix.compute()["matrix"]
    tensor([[1.0000, 0.5000]], dtype=torch.float64)
    """

    def __init__(self, cells: Sequence[Sequence[Metric]], key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not cells or not all(len(row) == len(cells[0]) and len(row) for row in cells):
            raise ValueError("cells must be a non-empty rectangular list of lists of metrics")
        self.cells = nn.ModuleList(nn.ModuleList(row) for row in cells)
        self.key = key

    def update(self, source: int, target: int, *args: Any, **kwargs: Any) -> None:
        self.cells[source][target].update(*args, **kwargs)

    def compute(self) -> dict[str, Any]:
        results = [[cell.compute() for cell in row] for row in self.cells]
        matrix = torch.tensor([[cell[self.key] for cell in row] for row in results], dtype=_F64)
        return {"matrix": matrix, "cells": results}

    def reset(self) -> None:
        for row in self.cells:
            for cell in row:
                cell.reset()
