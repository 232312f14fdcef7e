"""The example grids: detection panels draw the ground truth and give the verdict in the metric's terms (objects still
detected, counted as ``objective.found`` counts them), segmentation panels show the ground-truth map and the fraction
of labelled pixels whose class changed, and a grid of label maps gets a legend of the classes it shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_sparse_attack.evaluation.embedded import model_path
from hf_sparse_attack.evaluation.harness.metrics import joint_counts
from hf_sparse_attack.evaluation.harness.pictures import GRID_PIXELS, Panel, counted, save_grid
from hf_sparse_attack.evaluation.harness.specs.detection import DetectionSpec
from hf_sparse_attack.evaluation.harness.specs.segmentation import SegmentationSpec
from hf_sparse_attack.evaluation.testdata.shapes import TEST_SEED, shapes_sample
from hf_sparse_attack.tasks import load_task

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scene():
    """A generated scene of 3 objects: its image and annotation (boxes pixel xyxy, labels, label map)."""
    sample = shapes_sample(TEST_SEED, 0)
    return sample.image, sample.annotation()


def test_counted_nouns():
    assert [counted(n, "detection") for n in (0, 1, 2)] == ["0 detections", "1 detection", "2 detections"]


def test_detection_panels_draw_the_truth_and_count_the_objects_still_detected(scene):
    image, annotation = scene
    objective = load_task(model_path("detector"))
    x, (target,) = objective.prepare([image], [{"boxes": annotation["boxes"], "labels": annotation["labels"]}])
    clean = x[0]
    options, names = objective.options, objective.model.config.id2label
    criterion = f"(its class, IoU >= {options.iou_threshold}, score >= {options.score_threshold})"
    truth = [(box, names[label]) for box, label in zip(target["boxes"].tolist(), target["labels"].tolist())]

    # the clean image as "adversarial": every object the model finds is still detected
    still = int((objective.found(clean[None], [target]) > 0).sum())
    assert still > 0
    before, after, perturbed = DetectionSpec().panels(objective, clean, clean, {"success": False, "l0": 0}, target)
    assert before.truth == truth and [text for _, text in after.truth] == ["", "", ""]
    assert before.title.startswith(f"clean: {counted(len(before.boxes), 'detection')}, score >= "
                                   f"{options.target_threshold}\nground truth: 3 objects (dashed)")
    assert after.title.endswith(f"attack failed: {still} of 3 objects still detected\n{criterion}")
    assert all(score >= options.target_threshold for _, text in before.boxes for score in [float(text.split()[-1])])
    assert perturbed.kind == "mask" and perturbed.title == "perturbed: 0 pixels"

    _, won, _ = DetectionSpec().panels(objective, clean, clean, {"success": True, "l0": 1}, target)
    assert won.title.endswith(f"attack won: no object detected any more\n{criterion}")
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "size": target["size"]}
    first, nothing, _ = DetectionSpec().panels(objective, clean, clean, {"success": True, "l0": 1}, empty)
    assert "ground truth: 0 objects" in first.title and nothing.title.endswith("no object to remove")


def test_segmentation_panels_show_the_truth_and_the_pixels_that_changed_class(scene):
    image, annotation = scene
    objective = load_task(model_path("segmenter"))
    x, target = objective.prepare([image], [annotation["label_map"]])
    clean, target = x[0], target[0]
    truth = target.clone()
    truth[:4] = 255  # unlabelled rows are left out of the fraction
    before = objective.predict(clean[None])[0].cpu()
    after = before.clone()
    after[8:24, 8:24] = (after[8:24, 8:24] + 1) % objective.model.config.num_labels  # 256 pixels change class
    record = {"pixel_accuracy_clean": 1.0, "pixel_accuracy_adversarial": None, "l0": 1,
              "counts": joint_counts(truth, before, after)}
    labelled = int((truth != 255).sum())
    panels = SegmentationSpec().panels(objective, clean, clean, record, truth)
    assert [p.kind for p in panels] == ["rgb", "labels", "labels", "rgb", "labels", "mask"]
    assert panels[1].title == "ground truth" and torch.equal(panels[1].image, truth)
    assert panels[2].title == "clean prediction\npixel accuracy 1.00"
    assert panels[4].title == (f"adversarial prediction\npixel accuracy n/a\n{256 / labelled:.1%} of the labelled "
                               "pixels changed class")
    assert panels[5].title == "perturbed: 1 pixel"


def test_a_grid_of_label_maps_gets_a_legend_and_fits_a_page(tmp_path):
    labels = torch.zeros(8, 8, dtype=torch.long)
    labels[2:5, 2:5] = 2
    labels[0] = 255
    rows = [[Panel(torch.rand(3, 8, 8), "image"), Panel(labels, "map", kind="labels")] * 3]
    heights = {}
    for name, class_names in (("plain", None), ("legend", {0: "background", 1: "circle", 2: "square"})):
        save_grid(rows, tmp_path / f"{name}.png", title="t", num_classes=3, class_names=class_names)
        with Image.open(tmp_path / f"{name}.png") as grid:
            heights[name] = grid.height
            assert grid.width <= GRID_PIXELS + 40
    assert heights["legend"] > heights["plain"]
    # the legend's patches: the colours of classes 0 and 2 and black (unlabelled), class 1 not shown
    legend = np.asarray(Image.open(tmp_path / "legend.png").convert("RGB"))[-60:]
    colours = {tuple(int(v) for v in c) for c in legend.reshape(-1, 3)}
    assert {(31, 119, 180), (44, 160, 44)} <= colours and (255, 127, 14) not in colours
