"""Robustness of an image classifier to sparse attacks on a dataset: clean and robust accuracy, attack success rate,
mean and median L0 of the successful examples, per budget k.

    python evaluation/eval_classification.py --model_name_or_path google/vit-base-patch16-224 \\
        --dataset_name ./imagenet-val-1k --dataset_split validation --max_eval_samples 500 \\
        --attack spgd --k 10 20 --steps 300 --per_device_eval_batch_size 16 --output_dir runs/vit-spgd
    accelerate launch evaluation/eval_classification.py ...same flags...

Records (``records.jsonl``): ``id``, ``k``, ``success``, ``l0``, ``iterations``, ``loss``, ``label``,
``clean_prediction``, ``adversarial_prediction``. The flags: :mod:`.harness.script_flags`; the run:
:mod:`.harness.loop`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hf_sparse_attack.evaluation.harness.command_line import run_script
from hf_sparse_attack.evaluation.harness.loop import run_evaluation
from hf_sparse_attack.evaluation.harness.metrics import ClassificationRobustness
from hf_sparse_attack.evaluation.harness.pictures import Panel, perturbed_pixels
from hf_sparse_attack.evaluation.harness.script_flags import build_parser
from hf_sparse_attack.evaluation.harness.task_spec import TaskSpec


class ClassificationSpec(TaskSpec):
    """Classification: predictions are class ids; the truth is the dataset's label."""

    task = "classification"
    curve = (("clean_accuracy", "clean accuracy"), ("robust_accuracy", "robust accuracy"))
    curve_label = "accuracy"
    transfer_key = "attack_success_rate"

    def neutral_annotation(self, size: tuple[int, int]) -> int:
        return 0

    def predict(self, objective: Any, x: Tensor, targets: Any, samples: Sequence) -> list[int]:
        return objective.predict(x).tolist()

    def record(self, objective: Any, sample: Any, clean: int, adversarial: int) -> dict:
        return {"label": sample.annotation, "clean_prediction": clean, "adversarial_prediction": adversarial}

    def new_metric(self, objective: Any, **kwargs: Any) -> ClassificationRobustness:
        return ClassificationRobustness(**kwargs)

    def update(self, metric: ClassificationRobustness, records: list[dict]) -> None:
        keys = ("label", "clean_prediction", "adversarial_prediction", "l0")
        metric.update(*(torch.tensor([r[key] for r in records]) for key in keys))

    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict) -> list[Panel]:
        names = objective.model.config.id2label
        name = lambda i: str(names.get(i, i))
        return [
            Panel(clean, f"clean: {name(record['clean_prediction'])}\n(label {name(record['label'])})"),
            Panel(adversarial, f"adversarial: {name(record['adversarial_prediction'])}"),
            Panel(perturbed_pixels(clean, adversarial), f"perturbed (L0 {record['l0']})", kind="mask"),
        ]


SPEC = ClassificationSpec()


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Run the evaluation; returns the results on the main process (see :func:`~.harness.loop.run_evaluation`)."""
    return run_script(build_parser(SPEC, __doc__), functools.partial(run_evaluation, SPEC), argv)


if __name__ == "__main__":
    main()
