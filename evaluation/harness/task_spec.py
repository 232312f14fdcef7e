"""The seam between the evaluation loop and a task: how predictions become records, metrics and pictures."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor
from torchmetrics import Metric

from .data import Sample
from .pictures import Panel


class TaskSpec(ABC):
    """How a task's predictions become per-sample records, metrics and pictures (one subclass per script).

    Predictions (:meth:`predict`) are in the frame of the *original* image, so that models of any resolution are
    compared on the same ground truth (the metrics and the transferability matrix rely on it).
    """

    task: ClassVar[str]
    #: ``(metric key, legend)`` pairs plotted against k when several k are given, and the plot's y label.
    curve: ClassVar[tuple[tuple[str, str], ...]]
    curve_label: ClassVar[str]
    #: The metric key that fills a cell of the transferability matrix.
    transfer_key: ClassVar[str]

    def annotation(self, objective: Any, sample: Sample) -> Any:
        """The sample's annotation as the objective's ``prepare`` takes it; :class:`BadSample` if unusable."""
        return sample.annotation

    @abstractmethod
    def neutral_annotation(self, size: tuple[int, int]) -> Any:
        """An annotation ``prepare`` accepts for an image of ``size`` whose truth is not needed (transfer)."""

    @abstractmethod
    def predict(self, objective: Any, x: Tensor, targets: Any, samples: Sequence[Sample]) -> list:
        """One prediction per sample, in its original image's frame."""

    @abstractmethod
    def record(self, objective: Any, sample: Sample, clean: Any, adversarial: Any) -> dict:
        """The task's fields of a per-sample record (JSON types): the truth and both predictions."""

    @abstractmethod
    def new_metric(self, objective: Any, **kwargs: Any) -> Metric:
        """A fresh metric for this task and model; ``kwargs`` go to torchmetrics (e.g. ``process_group``)."""

    @abstractmethod
    def update(self, metric: Metric, records: list[dict]) -> None:
        """Feed records (from :meth:`record` plus the attack fields) to the metric."""

    @abstractmethod
    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict, target: Any) -> list[Panel]:
        """One picture row for an example: ``(C, H, W)`` clean and adversarial images in the model's frame, its
        record, and its ``target`` as the objective's ``prepare`` gives it (the truth in the model's frame)."""

    def valid_size(self, x: Tensor, targets: Any, i: int) -> tuple[int, int]:
        """``(height, width)`` of sample ``i``'s image inside ``x`` (detection batches are padded)."""
        return int(x.shape[-2]), int(x.shape[-1])


def frame_image(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Sample ``x (C, H, W)`` cropped to its image ``size`` (the padding left out)."""
    return x[:, : size[0], : size[1]]
