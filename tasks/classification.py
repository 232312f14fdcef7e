"""Image classification adapter: any ``AutoModelForImageClassification`` as an attack objective.

Targets are class ids ``LongTensor (B,)``: the true labels (untargeted: success when the prediction differs) or
the target classes (``targeted=True``: success when the prediction equals them). Losses come from
:func:`hf_sparse_attack.classification_loss`: ``"ce"``, ``"margin"`` or ``"dlr"``.

>>> import numpy as np, torch
>>> from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil
>>> config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
...                    intermediate_size=16, num_labels=3)
>>> objective = ClassificationObjective(
...     ViTForImageClassification(config).eval(),
...     ViTImageProcessorPil(size={"height": 32, "width": 32}),
...     options=ClassificationOptions(loss="margin"),
... )
>>> x, labels = objective.prepare([np.zeros((40, 30, 3), dtype=np.uint8)])
>>> tuple(x.shape), bool(torch.equal(labels, objective.predict(x)))
((1, 3, 32, 32), True)
>>> objective.success(x, labels)  # the clean prediction is not an adversarial success
tensor([False])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hf_sparse_attack.objective import Measurement, classifier_measurement

from .base import TaskObjective
from .options import ClassificationOptions
from .pixels import image_list, processor_pixels


class ClassificationObjective(TaskObjective):
    """Classifier objective over pixels in ``[0, 1]`` (see :class:`hf_sparse_attack.tasks.base.TaskObjective`)."""

    task = "classification"
    options_class = ClassificationOptions

    def logits(self, x: Tensor) -> Tensor:
        """``(B, num_labels)`` float32 logits of pixels ``x`` in ``[0, 1]``."""
        return self.model(pixel_values=self.normalize(x)).logits.float()

    def loss_success_score(self, x: Tensor, targets: Tensor) -> Measurement:
        """The loss, success and the logit margin towards the goal as the score (positive when fooled)."""
        return classifier_measurement(self.options.loss, self.logits(x), targets, self.options.targeted)

    def predict(self, x: Tensor) -> Tensor:
        """``LongTensor (B,)`` predicted class ids."""
        with torch.no_grad():
            return self.logits(x).argmax(dim=1)

    def clean_targets(self, x: Tensor) -> Tensor:
        """The predicted classes (untargeted attacks then aim to change the model's own decision)."""
        return self.predict(x)

    def prepare(self, images: Any, annotations: Any = None) -> tuple[Tensor, Tensor]:
        """Pixels ``(B, 3, H, W)`` in ``[0, 1]`` after the processor's resize/crop, and labels ``LongTensor (B,)``.

        ``annotations``: one class id per image (ints, array or tensor; a single int for a single image), the true
        labels, or the target classes when ``targeted``. Without them the targets are the clean predictions
        (untargeted only).
        """
        images = image_list(images)
        x = processor_pixels(self.processor, images)["pixel_values"].to(self.device)
        if annotations is None:
            if self.options.targeted:
                raise ValueError("a targeted attack needs target classes: pass them as annotations")
            return x, self.clean_targets(x)
        labels = torch.as_tensor(annotations, dtype=torch.long, device=self.device).reshape(-1)
        if labels.numel() != len(images):
            raise ValueError(f"got {labels.numel()} labels for {len(images)} images")
        num_labels = self.model.config.num_labels
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"labels must be class ids in [0, {num_labels}), got {labels.tolist()}")
        return x, labels

    def to_original(self, predictions: Tensor, original_sizes: Any) -> Tensor:
        """Class ids do not depend on the image size: ``predictions`` unchanged."""
        return predictions
