"""Robustness of a semantic segmentation model (SegFormer family) to sparse attacks: mIoU and pixel accuracy on
clean and adversarial images and the drop, per budget k.

    python evaluation/eval_segmentation.py --model_name_or_path nvidia/segformer-b0-finetuned-ade-512-512 \\
        --dataset_name ./ade20k-val --dataset_split validation --label_column_name label --max_eval_samples 100 \\
        --attack spgd --k 200 --steps 100 --adv_threshold 0.9 --output_dir runs/segformer
    accelerate launch evaluation/eval_segmentation.py ...same flags...

Metrics are computed on the original image size (predictions resized back by nearest neighbour) against the
dataset's label maps, with the processor's label reduction (``do_reduce_labels``) applied and 255 ignored. Records:
``id``, ``k``, ``success``, ``l0``, ``iterations``, ``loss``, per-image ``pixel_accuracy_clean`` and
``pixel_accuracy_adversarial``, and ``counts``: ``[label, clean prediction, adversarial prediction, pixels]``
rows, the joint confusion counts from which every metric is computed.
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
from hf_sparse_attack.evaluation.harness.data import BadSample
from hf_sparse_attack.evaluation.harness.loop import run_evaluation
from hf_sparse_attack.evaluation.harness.metrics import SegmentationRobustness, expand_counts, joint_counts
from hf_sparse_attack.evaluation.harness.pictures import Panel, perturbed_pixels
from hf_sparse_attack.evaluation.harness.script_flags import build_parser
from hf_sparse_attack.evaluation.harness.task_spec import TaskSpec


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

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--adv_threshold", type=float, default=0.99,
                           help="the attack succeeds when this fraction of the labelled pixels is misclassified")

    def options(self, args: argparse.Namespace) -> dict:
        return {"adv_threshold": args.adv_threshold}

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
        return [m.cpu() for m in objective.to_original(objective.predict(x), [s.size for s in samples])]

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

    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict) -> list[Panel]:
        maps = objective.predict(torch.stack([clean, adversarial]).to(objective.device)).cpu()
        accuracy = [record[f"pixel_accuracy_{v}"] for v in ("clean", "adversarial")]
        accuracy = ["n/a" if a is None else f"{a:.2f}" for a in accuracy]
        return [
            Panel(clean, "clean"),
            Panel(maps[0], f"clean prediction\n(pixel acc. {accuracy[0]})", kind="labels"),
            Panel(adversarial, "adversarial"),
            Panel(maps[1], f"adversarial prediction\n(pixel acc. {accuracy[1]})", kind="labels"),
            Panel(perturbed_pixels(clean, adversarial), f"perturbed (L0 {record['l0']})", kind="mask"),
        ]


SPEC = SegmentationSpec()


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the evaluation; returns the results on the main process (see :func:`~.harness.loop.run_evaluation`)."""
    return run_script(build_parser(SPEC, __doc__), functools.partial(run_evaluation, SPEC), argv)


if __name__ == "__main__":
    main()
