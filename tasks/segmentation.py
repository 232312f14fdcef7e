"""Semantic segmentation adapter: SegFormer and other ``AutoModelForSemanticSegmentation`` models.

The model's ``logits (B, C, h, w)`` are upsampled bilinearly to the label map's size (the input resolution).
Targets are label maps ``LongTensor (B, H, W)`` at the input resolution, ``ignore_index`` (255) marking unlabelled
pixels.

- Untargeted (default): the loss is the pixel cross-entropy to the true labels, averaged over each sample's
  labelled pixels; success when the fraction of labelled pixels predicted wrong is ``>= adv_threshold``.
- ``targeted=True``: targets are target label maps; the loss is minus the cross-entropy to them; success when the
  fraction of labelled pixels predicted as the target is ``>= adv_threshold``.

A sample without labelled pixels has loss 0 and is vacuously successful.

>>> import numpy as np
>>> from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessorPil
>>> config = SegformerConfig(hidden_sizes=[8, 8, 8, 8], num_attention_heads=[1, 1, 1, 1], depths=[1, 1, 1, 1],
...                          decoder_hidden_size=8, num_labels=3)
>>> objective = SegmentationObjective(
...     SegformerForSemanticSegmentation(config).eval().requires_grad_(False),
...     SegformerImageProcessorPil(size={"height": 32, "width": 32}),
... )
>>> image, labels = np.zeros((48, 40, 3), dtype=np.uint8), np.full((48, 40), 255, dtype=np.uint8)
>>> x, targets = objective.prepare(image, labels)
>>> tuple(x.shape), tuple(targets.shape), objective.loss(x, targets), objective.success(x, targets)
((1, 3, 32, 32), (1, 32, 32), tensor([0.]), tensor([True]))
>>> [tuple(m.shape) for m in objective.to_original(objective.predict(x), [(48, 40)])]
[(48, 40)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from hf_sparse_attack.validation import check_range

from .base import TaskObjective, check_flag
from .pixels import image_list, image_size, processor_pixels

SEGMENTATION_LOSSES = ("ce",)


@dataclass(frozen=True)
class SegmentationOptions:
    """``loss``: ``"ce"``; ``targeted``: targets are target maps; ``adv_threshold``: fraction of labelled pixels
    to fool (or to turn into the target) for success; ``ignore_index``: label of unlabelled pixels."""

    loss: str = "ce"
    targeted: bool = False
    adv_threshold: float = 0.99
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.loss not in SEGMENTATION_LOSSES:
            raise ValueError(f"unknown segmentation loss {self.loss!r}; allowed: {list(SEGMENTATION_LOSSES)}")
        check_flag("targeted", self.targeted)
        check_range("adv_threshold", self.adv_threshold, 0.0, 1.0, low_open=True)
        if not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool):
            raise ValueError(f"ignore_index must be an integer, got {self.ignore_index!r}")


class SegmentationObjective(TaskObjective):
    """Semantic segmentation objective over pixels in ``[0, 1]`` (see :class:`tasks.base.TaskObjective`)."""

    task = "segmentation"
    options_class = SegmentationOptions

    def logits(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` float32 logits upsampled bilinearly to the size of ``x``."""
        logits = self.model(pixel_values=self.normalize(x)).logits.float()
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss_and_success(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if targets.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"label maps {tuple(targets.shape)} must have the input's size {tuple(x.shape[-2:])}")
        logits = self.logits(x)
        ignore = self.options.ignore_index
        labelled = targets != ignore
        count = labelled.flatten(1).sum(1)
        ce = F.cross_entropy(logits, targets, ignore_index=ignore, reduction="none")
        loss = ce.flatten(1).sum(1) / count.clamp(min=1)
        hit = (logits.detach().argmax(1) == targets) & labelled
        if self.options.targeted:
            loss, goal = -loss, hit
        else:
            goal = labelled & ~hit
        fraction = goal.flatten(1).sum(1) / count.clamp(min=1)
        return loss, (fraction >= self.options.adv_threshold) | (count == 0)

    def predict(self, x: Tensor) -> Tensor:
        """``LongTensor (B, H, W)`` label maps at the input resolution."""
        with torch.no_grad():
            return self.logits(x).argmax(1)

    def clean_targets(self, x: Tensor) -> Tensor:
        """The clean label maps (every pixel labelled)."""
        return self.predict(x)

    def prepare(self, images: Any, annotations: Any = None) -> tuple[Tensor, Tensor]:
        """Resized pixels ``(B, 3, H, W)`` in ``[0, 1]`` and label maps ``LongTensor (B, H, W)``.

        ``annotations``: one label map per image at the image's size, a PIL image (mode ``L`` or ``P``) or an
        ``(H, W)`` integer array with values < 256, resized by the processor (nearest neighbour, and its
        ``do_reduce_labels`` if set). Without annotations the targets are the clean label maps (untargeted only).
        The processor should resize without cropping (as SegFormer's does) for :meth:`to_original` to invert it.
        """
        images = image_list(images)
        if annotations is None:
            if self.options.targeted:
                raise ValueError("a targeted attack needs target label maps: pass them as annotations")
            x = processor_pixels(self.processor, images)["pixel_values"].to(self.device)
            return x, self.clean_targets(x)
        maps = [annotations] if isinstance(annotations, (Image.Image, np.ndarray)) else list(annotations)
        if len(maps) != len(images):
            raise ValueError(f"got {len(maps)} label maps for {len(images)} images")
        maps = [_label_map(m, image_size(image), i) for i, (m, image) in enumerate(zip(maps, images))]
        batch = processor_pixels(self.processor, images, segmentation_maps=maps)
        labels = batch["labels"].long().to(self.device)
        num_labels, ignore = self.model.config.num_labels, self.options.ignore_index
        unknown = sorted(set(labels.unique().tolist()) - set(range(num_labels)) - {ignore})
        if unknown:
            raise ValueError(f"label maps hold {unknown}, neither class ids in [0, {num_labels}) nor {ignore}")
        return batch["pixel_values"].to(self.device), labels

    def to_original(self, predictions: Tensor | Sequence[Tensor], original_sizes: Sequence) -> list[Tensor]:
        """Label maps resized to ``original_sizes[i] = (height, width)`` by nearest neighbour, as a list."""
        return [
            F.interpolate(m[None, None].float(), size=tuple(int(s) for s in size), mode="nearest-exact")[0, 0].long()
            for m, size in zip(predictions, original_sizes, strict=True)
        ]


def _label_map(label_map: Any, size: tuple[int, int], index: int) -> np.ndarray:
    array = np.asarray(label_map)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
        raise ValueError(f"label map {index}: expected (H, W) integers in [0, 255], got {array.shape} {array.dtype}")
    if array.shape != size:
        raise ValueError(f"label map {index} has size {array.shape} but its image has size {size}")
    return array.astype(np.uint8)
