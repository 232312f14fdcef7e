"""Classification in the evaluation loop: predictions are class ids, the truth is the dataset's label.

The script :mod:`hf_sparse_attack.evaluation.eval_classification` runs it through :func:`..loop.run_evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..metrics import ClassificationRobustness
from ..pictures import Panel, perturbed_pixels, perturbed_title
from ..task_spec import TaskSpec


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

    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict, target: Any) -> list[Panel]:
        names = objective.model.config.id2label

        def name(i: int) -> str:
            return str(names.get(i, i))

        return [
            Panel(clean, f"clean: {name(record['clean_prediction'])}\n(label {name(record['label'])})"),
            Panel(adversarial, f"adversarial: {name(record['adversarial_prediction'])}"),
            Panel(perturbed_pixels(clean, adversarial), perturbed_title(record), kind="mask"),
        ]
