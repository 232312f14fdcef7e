"""Detection in the evaluation loop: COCO-format detections in the original image, scored by COCO mAP.

The script :mod:`hf_sparse_attack.evaluation.eval_detection` runs it through :func:`..loop.run_evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..metrics import DetectionRobustness
from ..pictures import Panel, perturbed_pixels
from ..task_spec import TaskSpec


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Corner boxes to COCO ``[x, y, width, height]``.

    >>> xyxy_to_xywh(torch.tensor([[1.0, 2.0, 4.0, 6.0]]))
    tensor([[1., 2., 3., 4.]])
    """
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


class DetectionSpec(TaskSpec):
    """Detection: predictions are COCO-format detections in the original image; the truth is the dataset's boxes."""

    task = "detection"
    curve = (("map_clean", "clean mAP"), ("map_adversarial", "adversarial mAP"))
    curve_label = "COCO mAP"
    transfer_key = "map_drop"

    def annotation(self, objective: Any, sample: Any) -> dict:
        truth = sample.annotation
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
        truth = {key: value.tolist() for key, value in sample.annotation.items()}
        return {"ground_truth": truth, "clean_prediction": clean, "adversarial_prediction": adversarial}

    def new_metric(self, objective: Any, **kwargs: Any) -> DetectionRobustness:
        return DetectionRobustness(**kwargs)

    def update(self, metric: DetectionRobustness, records: list[dict]) -> None:
        metric.update(*([r[key] for r in records]
                        for key in ("id", "ground_truth", "clean_prediction", "adversarial_prediction")))

    def valid_size(self, x: Tensor, targets: Any, i: int) -> tuple[int, int]:
        return tuple(int(v) for v in targets[i]["size"])

    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict) -> list[Panel]:
        names = objective.model.config.id2label
        shown = []
        threshold = objective.options.target_threshold
        for image in (clean, adversarial):
            (found,) = objective.predict(image[None].to(objective.device), score_threshold=threshold)
            shown.append([(box.tolist(), f"{names.get(int(label), int(label))} {score:.2f}")
                          for box, label, score in zip(found["boxes"], found["labels"], found["scores"])])
        return [
            Panel(clean, f"clean: {len(shown[0])} detections\n(score >= {threshold})", boxes=shown[0]),
            Panel(adversarial, f"adversarial: {len(shown[1])}\n(attack {'won' if record['success'] else 'failed'})",
                  boxes=shown[1]),
            Panel(perturbed_pixels(clean, adversarial), f"perturbed (L0 {record['l0']})", kind="mask"),
        ]
