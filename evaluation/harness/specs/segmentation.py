"""Segmentation in the evaluation loop: label maps at the original size, scored by mIoU and pixel accuracy.

The label maps are those transformers' ``post_process_semantic_segmentation(outputs, target_sizes)`` gives: the
model's logits resized bilinearly to the original size, then argmax (see ``SegmentationObjective.predict``), so a
clean mIoU is what users of transformers get.

The script :mod:`hf_sparse_attack.evaluation.eval_segmentation` runs it through :func:`..loop.run_evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import BadSample
from ..metrics import SegmentationRobustness, expand_counts, joint_counts
from ..pictures import Panel, perturbed_pixels, perturbed_title
from ..task_spec import TaskSpec


def reference_labels(objective: Any, label_map: np.ndarray) -> np.ndarray:
    """A dataset label map in the model's classes: the processor's ``do_reduce_labels`` (0 becomes 255, the
    unlabelled value, and every other class ``c`` becomes ``c - 1``) applied as the processor applies it."""
    if not getattr(objective.processor, "do_reduce_labels", False):
        return label_map
    reduced = label_map.astype(np.int16) - 1
    reduced[(label_map == 0) | (label_map == 255)] = 255
    return reduced.astype(np.uint8)


class SegmentationSpec(TaskSpec):
    """Segmentation: predictions are label maps at the original size; the truth is the dataset's label map."""

    task = "segmentation"
    curve = (("miou_clean", "clean mIoU"), ("miou_adversarial", "adversarial mIoU"))
    curve_label = "mIoU"
    transfer_key = "miou_drop"

    def annotation(self, objective: Any, sample: Any) -> np.ndarray:
        classes, ignore = objective.model.config.num_labels, objective.options.ignore_index
        unknown = sorted(set(np.unique(reference_labels(objective, sample.annotation)).tolist())
                         - set(range(classes)) - {ignore})
        if unknown:
            raise BadSample(f"the label map holds {unknown}, neither class ids in [0, {classes}) nor {ignore}")
        return sample.annotation

    def neutral_annotation(self, size: tuple[int, int]) -> np.ndarray:
        return np.full(size, 255, dtype=np.uint8)

    def predict(self, objective: Any, x: Tensor, targets: Any, samples: Sequence) -> list[Tensor]:
        return [m.cpu() for m in objective.predict(x, [s.size for s in samples])]

    def record(self, objective: Any, sample: Any, clean: Tensor, adversarial: Tensor) -> dict:
        truth = torch.from_numpy(reference_labels(objective, sample.annotation).astype(np.int64))
        counts = joint_counts(truth, clean, adversarial, objective.options.ignore_index)
        labelled = sum(n for *_, n in counts)
        right = [sum(n for t, *predicted, n in counts if predicted[v] == t) for v in (0, 1)]
        accuracy = [r / labelled if labelled else None for r in right]
        return {"pixel_accuracy_clean": accuracy[0], "pixel_accuracy_adversarial": accuracy[1], "counts": counts}

    def new_metric(self, objective: Any, **kwargs: Any) -> SegmentationRobustness:
        return SegmentationRobustness(objective.model.config.num_labels, objective.options.ignore_index, **kwargs)

    def update(self, metric: SegmentationRobustness, records: list[dict]) -> None:
        truth, clean, adversarial = expand_counts([row for r in records for row in r["counts"]])
        metric.update(clean, adversarial, truth)

    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict, target: Any) -> list[Panel]:
        """The clean image, its ground truth (``target``), the clean prediction, the adversarial image and
        prediction, and the perturbed pixels. Pixel accuracy and the fraction of labelled pixels whose predicted
        class changed are the record's (the original image's labelled pixels, as the metric counts them)."""
        maps = objective.predict(torch.stack([clean, adversarial]).to(objective.device)).cpu()
        accuracy = [record[f"pixel_accuracy_{v}"] for v in ("clean", "adversarial")]
        accuracy = ["n/a" if a is None else f"{a:.2f}" for a in accuracy]
        labelled = sum(n for *_, n in record["counts"])
        changed = sum(n for _, before, after, n in record["counts"] if before != after)
        changed = f"{changed / labelled:.1%}" if labelled else "n/a"
        return [
            Panel(clean, "clean"),
            Panel(target.cpu(), "ground truth", kind="labels"),
            Panel(maps[0], f"clean prediction\npixel accuracy {accuracy[0]}", kind="labels"),
            Panel(adversarial, "adversarial"),
            Panel(maps[1], f"adversarial prediction\npixel accuracy {accuracy[1]}\n{changed} of the labelled "
                  "pixels changed class", kind="labels"),
            Panel(perturbed_pixels(clean, adversarial), perturbed_title(record), kind="mask"),
        ]
