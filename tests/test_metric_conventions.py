"""What users see: each metric's convention against its reference, on the paths the evaluation scripts take.

- Box fitting reports only real changes (no float noise from a round trip through corners) and keeps unchanged boxes
  bit for bit.
- Detection: mAP (all twelve COCO statistics) of the dataset's own annotations, boxes reaching out of the image
  included, equals pycocotools' COCOeval run directly on the same json and detections; the attack aims at the
  fitted boxes.
- Segmentation: predictions at the original size equal transformers' ``post_process_semantic_segmentation``.
- Classification: robust accuracy by AutoAttack's convention (correct on the clean and on the adversarial image),
  in the metric, its functional twin and the transfer matrix's cells.
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tiny_models import photo_crops, tiny_segformer

from hf_sparse_attack.evaluation.harness.data import (
    BOX_TOLERANCE,
    TASKS,
    CocoDataset,
    HFDataset,
    Sample,
    fit_boxes,
    objects,
)
from hf_sparse_attack.evaluation.harness.metrics import (
    COCO_ALIASES,
    COCO_STATS,
    CONVENTIONS,
    ClassificationRobustness,
    TransferMatrix,
    classification_robustness,
)
from hf_sparse_attack.evaluation.harness.specs.detection import DetectionSpec
from hf_sparse_attack.evaluation.harness.specs.segmentation import SegmentationSpec
from hf_sparse_attack.tasks import load_task

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ box fitting
def coco_like_boxes(rng, n, height, width):
    """Boxes inside the image with COCO's two decimals; every fourth one touches the right or bottom edge."""
    w, h = np.round(rng.uniform(1, width / 2, n), 2), np.round(rng.uniform(1, height / 2, n), 2)
    x, y = np.round(rng.uniform(0, width - w), 2), np.round(rng.uniform(0, height - h), 2)
    x[::4], y[1::4] = np.round(width - w[::4], 2), np.round(height - h[1::4], 2)
    return np.stack([x, y, w, h], axis=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # json floats, or a datasets Value("float32") column
def test_boxes_inside_the_image_are_not_changed_by_float_noise(dtype):
    rng = np.random.default_rng(0)
    for height, width in [(480, 640), (427, 640), (640, 480), (333, 500), (4000, 6000)]:
        boxes = coco_like_boxes(rng, 200, height, width).astype(dtype)
        annotation = objects(boxes, np.zeros(200, np.int64), np.full(200, 5.0))
        corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1).astype(np.float64)
        fitted, changes = fit_boxes(annotation, (height, width))
        assert changes == []
        assert np.array_equal(fitted["boxes"], annotation["boxes"]) and np.array_equal(fitted["area"], [5.0] * 200)
        # the old round trip through corners changed most of these widths and heights by about 1e-14 px
        assert (corners[:, 2:] - corners[:, :2] != annotation["boxes"][:, 2:]).any()


def test_only_a_real_change_is_reported_and_unchanged_boxes_keep_their_values():
    boxes = [
        [473.07, 395.93, 38.65, 28.67],                   # inside
        [600.5, 10.0, 39.5 + BOX_TOLERANCE / 2, 5.0],     # out by half the tolerance: unchanged
        [600.5, 10.0, 39.5 + 2 * BOX_TOLERANCE, 5.0],     # out by twice the tolerance: clipped
        [-12.5, 400.0, 50.0, 100.0],                      # out left and bottom: clipped
        [650.0, 10.0, 5.0, 5.0],                          # wholly outside: dropped
        [10.0, 10.0, 0.0, 5.0],                           # zero width: dropped
    ]
    annotation = objects(boxes, [0, 1, 2, 3, 4, 5], [1.0, 2.0, 3.0, 4000.0, 5.0, 6.0], [0, 0, 1, 0, 0, 0])
    fitted, changes = fit_boxes(annotation, (480, 640))
    assert fitted["boxes"][:2].tolist() == boxes[:2]  # bit for bit
    assert fitted["boxes"][2].tolist() == [600.5, 10.0, 39.5, 5.0]
    assert fitted["boxes"][3].tolist() == [0.0, 400.0, 37.5, 80.0]
    assert fitted["labels"].tolist() == [0, 1, 2, 3] and fitted["iscrowd"].tolist() == [0, 0, 1, 0]
    assert fitted["area"].tolist() == [1.0, 2.0, 3.0, 3000.0]  # a clipped box's area is at most its new w * h
    assert [change.split(" [")[0] for change in changes] == ["box 2", "box 3", "box 4", "box 5"]
    assert changes[1] == "box 3 [-12.5, 400.0, 50.0, 100.0] clipped to the 480x640 image: [0.0, 400.0, 37.5, 80.0]"


# ---------------------------------------------------------------------------------------------- detection
def cocoeval_stats(annotation_file, detections):
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotation_file))
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [s if s >= 0 else math.nan for s in evaluation.stats.tolist()]


@pytest.fixture(scope="module")
def coco_sticking_out(tmp_path_factory):
    """A COCO json whose boxes reach out of their images (and one wholly outside, one of zero width), crowd boxes,
    areas that are not w * h, objects of every COCO size, an image without objects; and detections near the truth,
    some wrong."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(3)
    images, annotations, detections = [], [], []
    for i, (height, width) in enumerate([(300, 400), (400, 300), (256, 256), (200, 450), (450, 200), (64, 64)]):
        Image.new("RGB", (width, height)).save(root / f"{i}.png")
        images.append({"id": 10 + i, "file_name": f"{i}.png", "height": height, "width": width})
        boxes = coco_like_boxes(rng, 0 if i == 5 else 6, height, width)
        if i < 5:
            boxes[0, 0] = width - boxes[0, 2] / 2  # reaches out on the right
            boxes[1, 1] = -round(boxes[1, 3] / 3, 2)  # reaches out at the top
        if i == 0:
            boxes[2] = [width + 3, 5.0, 10.0, 10.0]  # wholly outside
            boxes[3, 2] = 0.0  # zero width
        for j, box in enumerate(boxes.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "bbox": box, "category_id": j % 3,
                                "area": round(box[2] * box[3] * 0.6, 2), "iscrowd": int(j == 5 and i % 2 == 0)})
            for _ in range(2):
                found = (np.asarray(box) + rng.normal(0, 2, 4)).tolist()
                found[2:] = [max(v, 1.0) for v in found[2:]]
                detections.append({"image_id": 10 + i, "bbox": found, "score": float(rng.random()),
                                   "category_id": j % 3 if rng.random() < 0.8 else (j + 1) % 3})
        detections.append({"image_id": 10 + i, "bbox": [5.0, 5.0, 20.0, 20.0], "score": 0.3, "category_id": 1})
    categories = [{"id": c, "name": f"object_{c}"} for c in range(3)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, root, detections


def test_detection_scores_the_files_own_boxes_exactly_as_cocoeval(coco_sticking_out):
    path, image_dir, detections = coco_sticking_out
    data, spec = CocoDataset(path, image_dir), DetectionSpec()
    weaker = [{**d, "score": d["score"] * (0.5 if d["category_id"] == 0 else 1.0),
               "bbox": [d["bbox"][0] + 3, *d["bbox"][1:]]} for d in detections]
    records, changed = [], 0
    for position in range(len(data)):
        sample = data[position]
        changed += len(sample.changes)
        found = [[d for d in version if d["image_id"] == sample.id] for version in (detections, weaker)]
        clean, adversarial = ({"boxes": [d["bbox"] for d in f], "scores": [d["score"] for d in f],
                               "labels": [d["category_id"] for d in f]} for f in found)
        records.append({"id": sample.id, **spec.record(None, sample, clean, adversarial)})
        target = spec.annotation(None, sample)  # the attack aims at the fitted, non-crowd boxes (xyxy)
        height, width = sample.size
        inside = (target["boxes"] >= -BOX_TOLERANCE) & (target["boxes"] <= np.add([width, height] * 2, BOX_TOLERANCE))
        assert inside.all()
    assert changed == 5 * 2 + 2  # every box reaching out, the one outside, the zero-width one
    records = json.loads(json.dumps(records))  # as read back from records.jsonl
    metric = spec.new_metric(None)
    spec.update(metric, records[3:])
    spec.update(metric, records[:3])
    result = metric.compute()
    for version, found in (("clean", detections), ("adversarial", weaker)):
        reference = cocoeval_stats(path, found)
        assert np.array_equal([result[f"{key}_{version}"] for key in COCO_STATS], reference, equal_nan=True)
        assert [result[f"{alias}_{version}"] for alias in COCO_ALIASES] == [reference[1], reference[2]]
    assert result["map_clean"] != result["map_adversarial"]
    assert not any(math.isnan(result[f"{key}_clean"]) for key in COCO_STATS)  # every size is present


def test_hf_dataset_boxes_are_scored_as_given():
    import datasets

    rows = datasets.Dataset.from_dict(
        {"image": [np.zeros((20, 30, 3), np.uint8)], "objects": [{"bbox": [[25.0, 2.0, 10.0, 5.0]], "category": [1]}]},
        features=datasets.Features({"image": datasets.Image(), "objects": {
            "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
            "category": datasets.Sequence(datasets.Value("int64"))}}))
    sample = HFDataset(rows, "detection")[0]
    assert sample.annotation["boxes"].tolist() == [[25.0, 2.0, 10.0, 5.0]]
    assert sample.annotation["area"].tolist() == [50.0]
    assert sample.fitted["boxes"].tolist() == [[25.0, 2.0, 5.0, 5.0]] and len(sample.changes) == 1
    assert DetectionSpec().record(None, sample, {}, {})["ground_truth"]["boxes"] == [[25.0, 2.0, 10.0, 5.0]]


# ------------------------------------------------------------------------------------------- segmentation
@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return load_task(tiny_segformer(tmp_path_factory.mktemp("segmenter")))


def test_segmentation_predictions_at_the_original_size_are_transformers_post_processing(segmenter):
    sizes = [(48, 40), (37, 61), (64, 64), (100, 70), (20, 90)]  # smaller and larger than the 64x64 input
    images = [photo_crops(1, h, w, seed=i)[0] for i, (h, w) in enumerate(sizes)]
    samples = [Sample(i, Image.fromarray(image), np.zeros(image.shape[:2], np.uint8)) for i, image in
               enumerate(images)]
    x, targets = segmenter.prepare(images, [s.annotation for s in samples])
    predicted = SegmentationSpec().predict(segmenter, x, targets, samples)
    with torch.no_grad():
        outputs = segmenter.model(pixel_values=segmenter.normalize(x))
    reference = segmenter.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    nearest = segmenter.to_original(segmenter.predict(x), sizes)  # the label map resized: not what users get
    for mine, theirs, resized, size in zip(predicted, reference, nearest, sizes):
        assert mine.shape == size and mine.dtype == torch.long and torch.equal(mine, theirs)
    assert any(not torch.equal(a, b) for a, b in zip(predicted, nearest))
    assert torch.equal(segmenter.predict(x), torch.stack(segmenter.processor.post_process_semantic_segmentation(
        outputs, target_sizes=[x.shape[-2:]] * len(x))))  # at the input resolution, too
    with pytest.raises(ValueError):
        segmenter.predict(x, sizes[:2])


# ------------------------------------------------------------------------------------------ classification
def test_robust_accuracy_is_autoattacks_everywhere():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    clean = torch.tensor([0, 1, 2, 0, 1, 2, 1, 2, 0, 1])  # the last four wrong on their clean images
    adversarial = torch.tensor([0, 2, 2, 1, 1, 0, 0, 1, 2, 2])  # three of those right on the adversarial images
    l0 = torch.arange(10)
    expected = {"clean_accuracy": 0.6, "robust_accuracy": 0.3, "attack_success_rate": 0.5, "mean_l0": 3.0}
    metric = ClassificationRobustness()
    metric.update(labels, clean, adversarial, l0)
    matrix = TransferMatrix([[ClassificationRobustness()]], "robust_accuracy")
    matrix.update(0, 0, labels, clean, adversarial, l0)
    computed = matrix.compute()
    for result in (metric.compute(), classification_robustness(labels, clean, adversarial, l0),
                   computed["cells"][0][0]):
        assert {key: pytest.approx(result[key]) for key in expected} == expected
        assert result["attack_success_rate"] == pytest.approx(1 - result["robust_accuracy"] / result["clean_accuracy"])
    assert computed["matrix"].item() == pytest.approx(0.3)


def test_conventions_name_every_task():
    assert sorted(CONVENTIONS) == sorted(TASKS)
    assert "AutoAttack" in CONVENTIONS["classification"]["robust_accuracy"]
    assert all(isinstance(v, str) for entries in CONVENTIONS.values() for v in entries.values())
    json.dumps(CONVENTIONS)
