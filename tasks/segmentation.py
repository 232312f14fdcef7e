"""Semantic segmentation adapter: SegFormer and other ``AutoModelForSemanticSegmentation`` models.

The model's ``logits (B, C, h, w)`` are upsampled bilinearly to the label map's size (the input resolution).
Targets are label maps ``LongTensor (B, H, W)`` at the input resolution, ``ignore_index`` (255) marking unlabelled
pixels. Predictions for the metrics are taken at each image's original size as transformers'
``post_process_semantic_segmentation(outputs, target_sizes)`` takes them (:meth:`SegmentationObjective.predict`).

- Untargeted (default): success when the fraction of labelled pixels predicted wrong is ``>= adv_threshold``;
  the score (what the attacks keep the best of) is that fraction, the per-image share of what mIoU counts.
- ``targeted=True``: targets are target label maps; success and score count the labelled pixels predicted as the
  target instead.

Losses (:data:`SEGMENTATION_LOSSES`), per image over its labelled pixels; a pixel is *done* when it is fooled
(untargeted) or predicted as its target (targeted). The default was chosen by measuring mIoU under attack
(``evaluation/benchmarks/bench_dense.py``):

- ``"ce"``: cross-entropy to the labels (targeted: minus the cross-entropy to the targets), every pixel.
- ``"ce_correct"``: the same on the pixels not yet done only, so no gradient is spent on pixels already fooled.
- ``"ce_balanced"`` (default): ``"ce_correct"`` with each class weighted equally, as mIoU weighs classes: the mean
  over the classes of the image of their pixels' cross-entropy (pixels done count 0), so the few pixels of a small
  object weigh as much as the background.
- ``"segpgd"``: SegPGD's weighting (Gu et al., 2022): ``(1 - w)`` on pixels not done and ``w`` on done ones, with
  ``w = 0.25``, the mean of SegPGD's schedule over a run (the objective does not see the attack's iteration).
- ``"margin"``: the logit margin towards the goal, ``min(max other logit - true logit, 0)`` per pixel (targeted:
  ``min(target logit - max other logit, 0)``): zero, and no gradient, once a pixel is done.

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
>>> [tuple(m.shape) for m in objective.predict(x, [(48, 40)])]
[(48, 40)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from hf_sparse_attack.objective import Measurement

from .base import TaskObjective
from .options import SegmentationOptions
from .pixels import image_list, image_size, processor_pixels

_SEGPGD_WEIGHT = 0.25


class SegmentationObjective(TaskObjective):
    """Semantic segmentation objective over pixels in ``[0, 1]`` (see :class:`tasks.base.TaskObjective`)."""

    task = "segmentation"
    options_class = SegmentationOptions

    def logits(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` float32 logits upsampled bilinearly to the size of ``x``."""
        logits = self.model(pixel_values=self.normalize(x)).logits.float()
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def loss_success_score(self, x: Tensor, targets: Tensor) -> Measurement:
        if targets.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"label maps {tuple(targets.shape)} must have the input's size {tuple(x.shape[-2:])}")
        logits = self.logits(x)
        ignore, targeted, name = self.options.ignore_index, self.options.targeted, self.options.loss
        labelled = targets != ignore
        count = labelled.flatten(1).sum(1).clamp(min=1)
        hit = (logits.detach().argmax(1) == targets) & labelled
        done = hit if targeted else labelled & ~hit
        if name == "margin":
            safe = targets.masked_fill(~labelled, 0)[:, None]
            chosen = logits.gather(1, safe).squeeze(1)
            others = logits.scatter(1, safe, float("-inf")).amax(1)
            per_pixel = (chosen - others if targeted else others - chosen).clamp(max=0) * labelled
        else:
            ce = F.cross_entropy(logits, targets, ignore_index=ignore, reduction="none")
            per_pixel = -ce if targeted else ce
            if name == "ce_correct":
                per_pixel = per_pixel * (labelled & ~done)
            elif name == "ce_balanced":
                per_pixel = per_pixel * (labelled & ~done) * _class_weights(targets, labelled, logits.shape[1])
            elif name == "segpgd":
                per_pixel = per_pixel * torch.where(done, _SEGPGD_WEIGHT, 1 - _SEGPGD_WEIGHT)
        loss = per_pixel.flatten(1).sum(1) / count
        fraction = done.flatten(1).sum(1) / count
        return Measurement(loss, (fraction >= self.options.adv_threshold) | ~labelled.flatten(1).any(1), fraction)

    def predict(self, x: Tensor, original_sizes: Sequence | None = None) -> Tensor | list[Tensor]:
        """``LongTensor (B, H, W)`` label maps at the input resolution; with ``original_sizes`` (one
        ``(height, width)`` per image), a list of label maps at those sizes.

        Either is the argmax of the model's logits resized bilinearly (``align_corners=False``) to the size, as
        transformers' ``processor.post_process_semantic_segmentation(outputs, target_sizes)`` computes it (and
        mmsegmentation): at the original size the logits are resized from the model's output straight to it, not
        through the input resolution, and never a label map resized.
        """
        with torch.no_grad():
            if original_sizes is None:
                return self.logits(x).argmax(1)
            logits = self.model(pixel_values=self.normalize(x)).logits.float()
            return [
                F.interpolate(m[None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0]
                .argmax(0)
                for m, size in zip(logits, original_sizes, strict=True)
            ]

    def clean_targets(self, x: Tensor) -> Tensor:
        """The clean label maps (every pixel labelled)."""
        return self.predict(x)

    def prepare(self, images: Any, annotations: Any = None) -> tuple[Tensor, Tensor]:
        """Resized pixels ``(B, 3, H, W)`` in ``[0, 1]`` and label maps ``LongTensor (B, H, W)``.

        ``annotations``: one label map per image at the image's size, a PIL image (mode ``L`` or ``P``) or an
        ``(H, W)`` integer array with values < 256, resized by the processor (nearest neighbour, and its
        ``do_reduce_labels`` if set). Without annotations the targets are the clean label maps (untargeted only).
        The processor should resize without cropping or padding (as SegFormer's does): :meth:`predict` at the
        original size, like transformers' post-processing, and :meth:`to_original` stretch the whole input frame
        over the original image.
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
        """Label maps (e.g. targets) resized to ``original_sizes[i] = (height, width)`` by nearest neighbour, as a
        list. For predictions at the original size take :meth:`predict` with ``original_sizes``, which resizes the
        logits as transformers' post-processing does."""
        return [
            F.interpolate(m[None, None].float(), size=tuple(int(s) for s in size), mode="nearest-exact")[0, 0].long()
            for m, size in zip(predictions, original_sizes, strict=True)
        ]


def _class_weights(targets: Tensor, labelled: Tensor, num_classes: int) -> Tensor:
    """``(B, H, W)`` per-pixel weight ``n / (m * n_c)``: ``n`` labelled pixels, ``m`` classes present and ``n_c``
    pixels of the pixel's class in its image; summed over pixels, ``w * v / n`` is the mean over classes of the
    mean of ``v`` over each class's pixels."""
    safe = targets.masked_fill(~labelled, 0)
    counts = torch.zeros(targets.shape[0], num_classes, device=targets.device)
    counts.scatter_add_(1, safe.flatten(1), labelled.flatten(1).float())
    present = (counts > 0).sum(1).clamp(min=1)
    total = labelled.flatten(1).sum(1)
    per_class = total[:, None] / (present[:, None] * counts.clamp(min=1))
    return per_class.gather(1, safe.flatten(1)).view_as(targets) * labelled


def _label_map(label_map: Any, size: tuple[int, int], index: int) -> np.ndarray:
    array = np.asarray(label_map)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
        raise ValueError(f"label map {index}: expected (H, W) integers in [0, 255], got {array.shape} {array.dtype}")
    if array.shape != size:
        raise ValueError(f"label map {index} has size {array.shape} but its image has size {size}")
    return array.astype(np.uint8)
