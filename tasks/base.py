"""What the three task adapters share: model, processor, in-forward normalisation and the Objective protocol.

Every adapter (:mod:`tasks.classification`, :mod:`tasks.detection`, :mod:`tasks.segmentation`) is an
:class:`hf_sparse_attack.Objective` over pixels ``x (B, C, H, W)`` in ``[0, 1]`` at model resolution, plus what an
evaluation needs around an attack:

- ``prepare(images, annotations=None) -> (x, targets)``: processor resize/crop/pad, targets in that frame (from
  ``clean_targets(x)`` when no annotations are given);
- ``loss_success_score`` (one forward pass: loss, success and the score in the metric's terms, see
  :mod:`hf_sparse_attack.objective`), and ``loss``, ``success``, ``loss_and_success`` from it;
- ``predict(x)``: what metrics consume; ``to_original(predictions, original_sizes)``: back to the image's size;
- ``clean_targets(x)``: the model's own prediction, used as targets when there is no ground truth.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from hf_sparse_attack.objective import Measurement

from .pixels import Normalizer


class TaskObjective(ABC):
    """Base of the adapters. Subclasses set ``task`` and ``options_class`` and implement the abstract methods.

    Attributes:
        task: ``"classification"``, ``"detection"`` or ``"segmentation"``.
        model: the Hugging Face model (eval mode, frozen parameters when built by :func:`tasks.load_task`).
        processor: its image processor (used for resize/crop/pad only; see :mod:`hf_sparse_attack.tasks.pixels`).
        name_or_path: where the model came from (Hub name or directory), for reports.
        options: the adapter's frozen options dataclass (loss, thresholds, ...), printable and comparable.
        normalize: the processor's rescale and normalisation in torch, applied in every forward pass.
    """

    task: ClassVar[str]
    options_class: ClassVar[type]

    def __init__(self, model: Any, processor: Any, name_or_path: str = "", options: Any = None) -> None:
        if options is None:
            options = self.options_class()
        if not isinstance(options, self.options_class):
            raise ValueError(f"options must be a {self.options_class.__name__}, got {type(options).__name__}")
        self.model = model
        self.processor = processor
        self.name_or_path = str(name_or_path)
        self.options = options
        parameter = next(model.parameters())
        self.device = parameter.device
        self.normalize = Normalizer.from_processor(processor, parameter.device, parameter.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name_or_path!r}, {self.options})"

    @abstractmethod
    def loss_success_score(self, x: Tensor, targets: Any) -> Measurement:
        """``(loss, success, score)``, each ``(B,)``, from one forward pass; the loss is to be maximised, the score
        says how close each sample is to the goal in the terms of the task's metric (higher is closer)."""

    def loss_and_success(self, x: Tensor, targets: Any) -> tuple[Tensor, Tensor]:
        """``(loss (B,), success (B,) bool)`` from one forward pass."""
        measurement = self.loss_success_score(x, targets)
        return measurement.loss, measurement.success

    def loss(self, x: Tensor, targets: Any) -> Tensor:
        """``(B,)`` per-sample loss, differentiable with respect to ``x``."""
        return self.loss_success_score(x, targets).loss

    def success(self, x: Tensor, targets: Any) -> Tensor:
        """``(B,)`` bool: the attack goal is reached for this sample."""
        with torch.no_grad():
            return self.loss_success_score(x, targets).success

    @abstractmethod
    def prepare(self, images: Any, annotations: Any = None) -> tuple[Tensor, Any]:
        """Pixels in ``[0, 1]`` at model resolution and targets in that frame."""

    @abstractmethod
    def predict(self, x: Tensor) -> Any:
        """Predictions on ``x`` in the prepared frame."""

    @abstractmethod
    def clean_targets(self, x: Tensor) -> Any:
        """The model's prediction on ``x`` in the format of targets."""

    @abstractmethod
    def to_original(self, predictions: Any, original_sizes: Any) -> Any:
        """``predictions`` (or targets) mapped back to the original image sizes ``[(height, width), ...]``."""
