"""Robustness of a DETR-family detector to sparse attacks: COCO mAP, mAP@50 and mAP@75 on clean and adversarial
images and the drop, per budget k (pycocotools COCOeval: exactly COCO's numbers).

    python evaluation/eval_detection.py --model_name_or_path facebook/detr-resnet-50 \\
        --coco_annotation_file annotations/instances_val2017.json --coco_image_dir val2017 \\
        --max_eval_samples 200 --attack spgd --k 50 --steps 100 --output_dir runs/detr
    accelerate launch evaluation/eval_detection.py ...same flags...
    python evaluation/eval_detection.py --model_name_or_path ./my-detr --dataset_name ./cppe5 \\
        --dataset_split test --objects_column_name objects --bbox_key bbox --category_key category ...

The attack aims to make every ground-truth object undetected: no detection of its label at IoU >=
``--iou_threshold`` with a score from ``--score_threshold`` (default 0.001, the floor of what mAP counts, so a sample
stops early only when mAP can no longer see its objects); crowd boxes are kept for mAP only. mAP uses every
detection (score threshold 0, at most 100 per image) in the original image's pixels. Records: ``id``, ``k``,
``success``, ``l0``, ``iterations``, ``loss``, ``ground_truth``, ``clean_prediction``, ``adversarial_prediction``
(boxes COCO xywh, ``scores``, ``labels``).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hf_sparse_attack.evaluation.harness.command_line import run_script
from hf_sparse_attack.evaluation.harness.loop import run_evaluation
from hf_sparse_attack.evaluation.harness.metrics import DetectionRobustness
from hf_sparse_attack.evaluation.harness.pictures import Panel, perturbed_pixels
from hf_sparse_attack.evaluation.harness.script_flags import build_parser
from hf_sparse_attack.evaluation.harness.task_spec import TaskSpec
from hf_sparse_attack.tasks.detection import METRIC_FLOOR


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

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--score_threshold", type=float, default=METRIC_FLOOR,
                           help="a detection counts (for the attack's success and score) from this score; default: "
                           "what mAP counts (raise it if you report detections at a threshold)")
        group.add_argument("--iou_threshold", type=float, default=0.5,
                           help="a ground-truth object is still detected by a detection of its label at this IoU")
        group.add_argument("--target_threshold", type=float, default=0.5,
                           help="detections drawn in the pictures from this score")

    def options(self, args: argparse.Namespace) -> dict:
        return {"score_threshold": args.score_threshold, "iou_threshold": args.iou_threshold,
                "target_threshold": args.target_threshold}

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


SPEC = DetectionSpec()


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the evaluation; returns the results on the main process (see :func:`~.harness.loop.run_evaluation`)."""
    return run_script(build_parser(SPEC, __doc__), functools.partial(run_evaluation, SPEC), argv)


if __name__ == "__main__":
    main()
