"""Held-out quality of the embedded models, measured through the :mod:`tasks` adapters (what the library sees).

Each function takes an objective from :func:`tasks.load_task` (or an adapter built around a model being trained),
generates ``n`` fresh images of the :mod:`evaluation.testdata.shapes` stream ``seed`` (default the held-out
:data:`~evaluation.testdata.shapes.TEST_SEED`), runs ``objective.prepare`` and ``objective.predict`` in batches, and
returns a dict of metrics:

- :func:`classification_quality`: ``accuracy``.
- :func:`detection_quality`: ``map`` (COCO mAP@[.5:.95]) and ``map_50`` (mAP@0.5) from pycocotools' ``COCOeval``
  on the detections mapped back to the original image size (``to_original``) with score threshold 0, against the
  generator's boxes; ``detections_50``: the fraction of ground-truth objects detected at the adapter's IoU
  threshold with a score from its ``target_threshold`` (0.5 by default).
- :func:`segmentation_quality`: ``miou``, the mean over the ``C + 1`` classes (background included) of
  ``TP / (TP + FP + FN)`` from the confusion matrix summed over all pixels, and ``pixel_accuracy``.

>>> confusion = np.array([[3, 1], [0, 2]])
>>> round(miou_from_confusion(confusion), 4)  # (3/4 + 2/3) / 2
0.7083
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch

from hf_sparse_attack.evaluation.testdata.shapes import TEST_SEED, classification_batch, shapes_batch


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(batch_size, n - start)


def classification_quality(objective: Any, n: int = 100, seed: int = TEST_SEED, batch_size: int = 50) -> dict:
    """Accuracy of ``objective.predict`` on ``n`` one-object images of stream ``seed``."""
    correct = 0
    for start, size in _batches(n, batch_size):
        images, labels = classification_batch(size, seed=seed, start=start)
        x, _ = objective.prepare(images)
        correct += int((objective.predict(x).cpu() == torch.as_tensor(labels)).sum())
    return {"accuracy": correct / n, "images": n}


def detection_quality(objective: Any, n: int = 100, seed: int = TEST_SEED, batch_size: int = 50) -> dict:
    """COCO mAP and mAP@0.5 (pycocotools) of ``objective.predict`` on ``n`` images of stream ``seed``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_images, gt_annotations, results = [], [], []
    found = total = 0
    for start, size in _batches(n, batch_size):
        images, annotations = shapes_batch(size, seed=seed, start=start)
        x, targets = objective.prepare(images, [{"boxes": a["boxes"], "labels": a["labels"]} for a in annotations])
        sizes = torch.stack([t["size"] for t in targets])
        predictions = objective.predict(x, sizes, score_threshold=0.0)
        total += sum(len(t["labels"]) for t in targets)
        found += int((objective.found(x, targets) >= objective.options.target_threshold).sum())
        predictions = objective.to_original(predictions, [a["size"] for a in annotations])
        for i, (annotation, prediction) in enumerate(zip(annotations, predictions)):
            image_id = start + i + 1
            height, width = annotation["size"]
            gt_images.append({"id": image_id, "height": int(height), "width": int(width)})
            for box, label in zip(annotation["boxes"], annotation["labels"]):
                x0, y0, x1, y1 = (float(v) for v in box)
                gt_annotations.append({"id": len(gt_annotations) + 1, "image_id": image_id, "category_id": int(label),
                                       "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                       "iscrowd": 0})
            for box, score, label in zip(prediction["boxes"].tolist(), prediction["scores"].tolist(),
                                         prediction["labels"].tolist()):
                x0, y0, x1, y1 = box
                results.append({"image_id": image_id, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "score": float(score)})
    num_labels = objective.model.config.num_labels
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": gt_images, "annotations": gt_annotations,
                        "categories": [{"id": c} for c in range(num_labels)]}
        coco.createIndex()
        detections = coco.loadRes(results) if results else COCO()
        evaluator = COCOeval(coco, detections, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"map": float(stats[0]), "map_50": float(stats[1]), "detections_50": found / max(total, 1), "images": n}


def miou_from_confusion(confusion: np.ndarray) -> float:
    """Mean over classes with a non-empty union of ``TP / (TP + FP + FN)``; rows true, columns predicted."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean())


def segmentation_quality(objective: Any, n: int = 100, seed: int = TEST_SEED, batch_size: int = 50) -> dict:
    """Confusion-matrix mIoU and pixel accuracy of ``objective.predict`` on ``n`` images of stream ``seed``."""
    num_labels = objective.model.config.num_labels
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    for start, size in _batches(n, batch_size):
        images, annotations = shapes_batch(size, seed=seed, start=start)
        x, targets = objective.prepare(images, [a["label_map"] for a in annotations])
        predictions = objective.predict(x).cpu().numpy().ravel()
        truth = targets.cpu().numpy().ravel()
        keep = truth != objective.options.ignore_index
        confusion += np.bincount(num_labels * truth[keep] + predictions[keep], minlength=num_labels**2).reshape(
            num_labels, num_labels
        )
    return {
        "miou": miou_from_confusion(confusion),
        "pixel_accuracy": float(np.trace(confusion) / confusion.sum()),
        "images": n,
    }
