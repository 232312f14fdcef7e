"""Detection in the evaluation loop: COCO-format detections in the original image, scored by COCO mAP.

The attack aims at the sample's boxes fitted to the image (:func:`..data.fit_boxes`), crowd boxes left out; mAP
scores the dataset's own annotation, every box as given, so the numbers equal COCOeval's on the same files.

The script :mod:`hf_sparse_attack.evaluation.eval_detection` runs it through :func:`..loop.run_evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..metrics import DetectionRobustness
from ..pictures import Panel, counted, perturbed_pixels, perturbed_title
from ..task_spec import TaskSpec


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Corner boxes to COCO ``[x, y, width, height]``.

    >>> xyxy_to_xywh(torch.tensor([[1.0, 2.0, 4.0, 6.0]]))
    tensor([[1., 2., 3., 4.]])
    """
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


class DetectionSpec(TaskSpec):
    """Detection: predictions are COCO-format detections in the original image; the truth is the dataset's boxes
    (as given for the metric, fitted to the image for the attack)."""

    task = "detection"
    curve = (("map_clean", "clean mAP"), ("map_adversarial", "adversarial mAP"))
    curve_label = "COCO mAP"
    transfer_key = "map_drop"

    def annotation(self, objective: Any, sample: Any) -> dict:
        truth = sample.fitted
        keep = truth["iscrowd"] == 0
        boxes = truth["boxes"][keep]
        return {"boxes": np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1),
                "labels": truth["labels"][keep]}

    def neutral_annotation(self, size: tuple[int, int]) -> dict:
        return {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, dtype=np.int64)}

    def predict(self, objective: Any, x: Tensor, targets: Any, samples: Sequence) -> list[dict]:
        found = objective.predict(x, [t["size"] for t in targets], score_threshold=0.0)
        found = objective.to_original(found, [s.size for s in samples])
        return [{"boxes": xyxy_to_xywh(d["boxes"].cpu()).tolist(), "scores": d["scores"].tolist(),
                 "labels": d["labels"].tolist()} for d in found]

    def record(self, objective: Any, sample: Any, clean: dict, adversarial: dict) -> dict:
        truth = {key: value.tolist() for key, value in sample.annotation.items()}  # as given: what mAP scores
        return {"ground_truth": truth, "clean_prediction": clean, "adversarial_prediction": adversarial}

    def new_metric(self, objective: Any, **kwargs: Any) -> DetectionRobustness:
        return DetectionRobustness(**kwargs)

    def update(self, metric: DetectionRobustness, records: list[dict]) -> None:
        metric.update(*([r[key] for r in records]
                        for key in ("id", "ground_truth", "clean_prediction", "adversarial_prediction")))

    def valid_size(self, x: Tensor, targets: Any, i: int) -> tuple[int, int]:
        return tuple(int(v) for v in targets[i]["size"])

    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict, target: Any) -> list[Panel]:
        """The clean image with its ground truth (dashed green) and detections from ``target_threshold`` (red),
        the adversarial image likewise and the perturbed pixels. The verdict is the record's ``success``, in the
        metric's terms: an object still counts as detected when a detection has its label, IoU >= ``iou_threshold``
        and score >= ``score_threshold`` (``objective.found``), however low that score is to draw."""
        names = objective.model.config.id2label
        options = objective.options
        truth = [(box, str(names.get(label, label)))
                 for box, label in zip(target["boxes"].tolist(), target["labels"].tolist())]
        shown = []
        for image in (clean, adversarial):
            (found,) = objective.predict(image[None].to(objective.device), score_threshold=options.target_threshold)
            shown.append([(box, f"{names.get(label, label)} {score:.2f}") for box, label, score in
                          zip(found["boxes"].tolist(), found["labels"].tolist(), found["scores"].tolist())])
        still = int((objective.found(adversarial[None].to(objective.device), [target]) > 0).sum())
        criterion = f"(its class, IoU >= {options.iou_threshold}, score >= {options.score_threshold})"
        if not truth:
            verdict = "no object to remove"
        elif record["success"]:
            verdict = f"attack won: no object detected any more\n{criterion}"
        else:
            verdict = f"attack failed: {still} of {counted(len(truth), 'object')} still detected\n{criterion}"
        return [
            Panel(clean, f"clean: {counted(len(shown[0]), 'detection')}, score >= {options.target_threshold}\n"
                  f"ground truth: {counted(len(truth), 'object')} (dashed)", boxes=shown[0], truth=truth),
            Panel(adversarial, f"adversarial: {counted(len(shown[1]), 'detection')}\n{verdict}", boxes=shown[1],
                  truth=[(box, "") for box, _ in truth]),
            Panel(perturbed_pixels(clean, adversarial), perturbed_title(record), kind="mask"),
        ]
