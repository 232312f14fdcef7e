"""Robustness metrics against references: hand counts, pycocotools COCOeval called directly, a confusion matrix."""

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hf_sparse_attack.evaluation.harness.metrics import (
    COCO_ALIASES,
    COCO_STATS,
    ClassificationRobustness,
    DetectionRobustness,
    SegmentationRobustness,
    TransferMatrix,
    classification_robustness,
    expand_counts,
    joint_counts,
)


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_against_hand_counts(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (50,), generator=gen)
    clean = torch.where(torch.rand(50, generator=gen) < 0.7, labels, torch.randint(0, 3, (50,), generator=gen))
    adversarial = torch.where(torch.rand(50, generator=gen) < 0.4, clean, (clean + 1) % 3)
    l0 = torch.randint(1, 20, (50,), generator=gen)
    metric = ClassificationRobustness()
    for chunk in torch.arange(50).split(7):  # several updates = one
        metric.update(labels[chunk], clean[chunk], adversarial[chunk], l0[chunk])
    result = metric.compute()
    correct = (clean == labels).numpy()
    fooled = correct & (adversarial != labels).numpy()
    assert result["clean_accuracy"] == pytest.approx(correct.mean())
    assert result["robust_accuracy"] == pytest.approx((correct & (adversarial == labels).numpy()).mean())  # AutoAttack
    assert result["attack_success_rate"] == pytest.approx(fooled.sum() / correct.sum())
    assert result["mean_l0"] == pytest.approx(l0.numpy()[fooled].mean())
    assert result["median_l0"] == pytest.approx(np.median(l0.numpy()[fooled]))
    assert result == classification_robustness(labels, clean, adversarial, l0)


def test_classification_undefined_values_are_nan():
    y = torch.tensor([0, 1])
    result = classification_robustness(y, 1 - y, 1 - y, torch.zeros(2, dtype=torch.long))
    assert result["clean_accuracy"] == 0.0
    assert all(math.isnan(result[key]) for key in ("attack_success_rate", "mean_l0", "median_l0"))


def random_detections(gen, n, image_size=60):
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * image_size * 0.7
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 20 + 1
    return torch.cat([xy, wh], 1)


def detection_data(seed):
    gen = torch.Generator().manual_seed(seed)
    ids, truth, clean, adversarial = [13, 2, 7, 40, 5], [], [], []
    for i in range(len(ids)):
        n = [3, 0, 4, 2, 1][i]
        boxes = random_detections(gen, n)
        labels = torch.randint(1, 4, (n,), generator=gen)
        crowd = (torch.rand(n, generator=gen) < 0.2).long()
        truth.append({"boxes": boxes, "labels": labels, "area": boxes[:, 2] * boxes[:, 3] * 0.8, "iscrowd": crowd})
        for out, noise in ((clean, 1.0), (adversarial, 8.0)):
            found = torch.cat([boxes + noise * torch.randn(n, 4, generator=gen, dtype=torch.float64).abs(),
                               random_detections(gen, 3)])
            out.append({"boxes": found, "scores": torch.rand(n + 3, generator=gen),
                        "labels": torch.cat([labels, torch.randint(1, 4, (3,), generator=gen)])})
    return ids, truth, clean, adversarial


def cocoeval_directly(ids, truth, detections):
    """The reference: COCO objects built from the json-style dicts, results through COCO.loadRes."""
    annotations, categories = [], set()
    for image_id, t in zip(ids, truth):
        for box, label, area, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(), t["area"].tolist(),
                                           t["iscrowd"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": box,
                                "category_id": label, "area": area, "iscrowd": crowd})
            categories.add(label)
    results = [{"image_id": image_id, "bbox": box, "score": score, "category_id": label}
               for image_id, d in zip(ids, detections)
               for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in ids], "annotations": annotations,
                      "categories": [{"id": c} for c in sorted(categories)]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [s if s >= 0 else math.nan for s in evaluation.stats.tolist()]


@pytest.mark.parametrize("seed", [0, 1])
def test_detection_map_is_cocoeval_exactly(seed):
    ids, truth, clean, adversarial = detection_data(seed)
    metric = DetectionRobustness()
    metric.update(ids[3:], truth[3:], clean[3:], adversarial[3:])  # in two parts, out of id order
    metric.update(ids[:3], truth[:3], clean[:3], adversarial[:3])
    result = metric.compute()
    for version, detections in (("clean", clean), ("adversarial", adversarial)):
        reference = cocoeval_directly(ids, truth, detections)  # all twelve statistics
        assert np.array_equal([result[f"{key}_{version}"] for key in COCO_STATS], reference, equal_nan=True)
        for alias, key in COCO_ALIASES.items():
            assert result[f"{alias}_{version}"] == result[f"{key}_{version}"]
    assert result["map_drop"] == result["map_clean"] - result["map_adversarial"]
    assert result["images"] == 5.0


def test_detection_without_ground_truth_is_nan():
    metric = DetectionRobustness()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}
    metric.update([1], [empty], [empty], [empty])
    result = metric.compute()
    assert all(math.isnan(result[f"{key}_{version}"]) for key in (*COCO_STATS, *COCO_ALIASES)
               for version in ("clean", "adversarial", "drop"))


def confusion_reference(predictions, target, num_classes, ignore_index=255):
    keep = target != ignore_index
    matrix = np.bincount(target[keep] * num_classes + predictions[keep], minlength=num_classes**2)
    matrix = matrix.reshape(num_classes, num_classes)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    return np.nanmean(iou), tp.sum() / matrix.sum()


def test_segmentation_against_confusion_matrix_and_joint_counts():
    gen = torch.Generator().manual_seed(0)
    num_classes = 5
    target = torch.randint(0, num_classes - 1, (3, 20, 24), generator=gen)  # class 4 never in the truth
    target[:, :3] = 255
    clean = torch.where(torch.rand(target.shape, generator=gen) < 0.8, target.clamp(max=3),
                        torch.randint(0, num_classes, target.shape, generator=gen))
    adversarial = torch.where(torch.rand(target.shape, generator=gen) < 0.3, clean,
                              torch.randint(0, num_classes, target.shape, generator=gen))
    metric = SegmentationRobustness(num_classes)
    from_counts = SegmentationRobustness(num_classes)
    for i in range(3):
        metric.update(clean[i], adversarial[i], target[i])
        t, c, a = expand_counts(joint_counts(target[i], clean[i], adversarial[i]))
        from_counts.update(c, a, t)
    result = metric.compute()
    for version, predictions in (("clean", clean), ("adversarial", adversarial)):
        miou, accuracy = confusion_reference(predictions.numpy().ravel(), target.numpy().ravel(), num_classes)
        assert result[f"miou_{version}"] == pytest.approx(miou, abs=1e-6)
        assert result[f"pixel_accuracy_{version}"] == pytest.approx(accuracy, abs=1e-6)
    assert from_counts.compute() == result
    metric.reset()
    metric.update(target.clamp(max=3), target.clamp(max=3), target)
    assert metric.compute()["miou_clean"] == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # cells without samples are nan, as they should be
def test_transfer_matrix_cells():
    y = torch.tensor([0, 1, 2, 0])
    cells = [[ClassificationRobustness() for _ in range(3)] for _ in range(2)]
    matrix = TransferMatrix(cells, "attack_success_rate")
    l0 = torch.ones(4, dtype=torch.long)
    matrix.update(0, 0, y, y, (y + 1) % 3, l0)  # every correct sample fooled
    matrix.update(0, 1, y, torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 0, 1]), l0)  # 2 correct, 1 fooled
    matrix.update(1, 2, y, y, y, l0)
    result = matrix.compute()
    expected = torch.tensor([[1.0, 0.5, math.nan], [math.nan, math.nan, 0.0]], dtype=torch.float64)
    assert torch.allclose(result["matrix"], expected, equal_nan=True)
    assert result["cells"][0][1]["clean_accuracy"] == 0.5
    matrix.reset()
    assert torch.isnan(matrix.compute()["matrix"]).all()
