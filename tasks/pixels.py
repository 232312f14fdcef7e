"""Pixels in ``[0, 1]`` at model resolution, and the model's normalisation done in torch.

A Hugging Face image processor does two different things. The geometric part (resize, crop, pad) runs once per
image *outside* the attack, in :func:`processor_pixels`, which calls the processor with normalisation switched off
so that it returns the very pixels the model sees, in ``[0, 1]`` on the 8-bit grid. The photometric part
(rescale and ``(x - mean) / std``) runs *inside* every forward pass, in :class:`Normalizer`, so gradients reach the
pixels and an L0 budget counts real pixels.

>>> import numpy as np
>>> from transformers import ViTImageProcessorPil
>>> processor = ViTImageProcessorPil(size={"height": 4, "width": 4})
>>> batch = processor_pixels(processor, [np.full((6, 8, 3), 255, dtype=np.uint8)])
>>> x = batch["pixel_values"]
>>> tuple(x.shape), float(x.min()), float(x.max())
((1, 3, 4, 4), 1.0, 1.0)
>>> Normalizer.from_processor(processor)(x)[0, :, 0, 0]  # ViT: mean 0.5, std 0.5
tensor([1., 1., 1.])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def image_list(images: Any) -> list:
    """``images`` as a list of RGB PIL images or ``(H, W, 3)`` uint8 arrays; a single image becomes a list of one.

    PIL images of other modes are converted to RGB. Arrays must be uint8 with 3 channels last, as loaded from
    image files; anything else raises ``ValueError`` (float arrays would be ambiguous about their range).
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    out = []
    for i, image in enumerate(items):
        if isinstance(image, Image.Image):
            out.append(image if image.mode == "RGB" else image.convert("RGB"))
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"image {i}: arrays must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}"
                )
            out.append(image)
        else:
            raise ValueError(f"image {i}: expected a PIL image or an (H, W, 3) uint8 array, got {type(image).__name__}")
    return out


def image_size(image: Image.Image | np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or an ``(H, W, ...)`` array."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return int(image.shape[0]), int(image.shape[1])


def processor_pixels(processor: Any, images: list, **kwargs: Any):
    """Run ``processor`` on ``images`` without normalisation: ``pixel_values`` in ``[0, 1]``, and what else it gives.

    ``kwargs`` go to the processor (e.g. ``segmentation_maps``). Rescaling is forced to ``1/255`` so that the output
    is in ``[0, 1]`` whatever the processor's own rescale settings; :class:`Normalizer` applies those settings.
    """
    return processor(
        images=images, do_normalize=False, do_rescale=True, rescale_factor=1 / 255, return_tensors="pt", **kwargs
    )


class Normalizer:
    """Map pixels ``x`` in ``[0, 1]`` to the model input exactly as the processor would: rescale, then normalise.

    ``x * 255`` is the 8-bit image; the processor multiplies it by ``rescale_factor`` when ``do_rescale`` and then
    computes ``(v - image_mean) / image_std`` when ``do_normalize``. The result is cast to the model's dtype.
    """

    def __init__(self, scale: float, mean: Tensor | None, std: Tensor | None, dtype: torch.dtype) -> None:
        self.scale, self.mean, self.std, self.dtype = scale, mean, std, dtype

    @classmethod
    def from_processor(
        cls, processor: Any, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Normalizer:
        scale = 255.0 * processor.rescale_factor if getattr(processor, "do_rescale", True) else 255.0
        mean = std = None
        if getattr(processor, "do_normalize", False):
            mean = torch.as_tensor(processor.image_mean, dtype=torch.float32, device=device).reshape(-1, 1, 1)
            std = torch.as_tensor(processor.image_std, dtype=torch.float32, device=device).reshape(-1, 1, 1)
        return cls(scale, mean, std, dtype)

    def __call__(self, x: Tensor) -> Tensor:
        out = x * self.scale
        if self.mean is not None:
            out = (out - self.mean) / self.std
        return out.to(self.dtype)
