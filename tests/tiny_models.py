"""Tiny random-weight Hugging Face models with their image processors, saved for ``from_pretrained(path)``.

Every builder takes a directory, saves a model of one family (config, safetensors weights, processor config) into
``directory/<name>`` with ``save_pretrained``, and returns that path. Nothing touches the Hub: the models are
built from configs with random weights (seeded, so the same builder always saves the same weights). They are
small enough for CPU tests: a forward+backward pass on a batch of 8 at the resolution in :data:`RESOLUTION` takes
a few milliseconds to a few tens of milliseconds with one thread.

The processors are the PIL ones (torchvision is not used) and resize to the resolution in :data:`RESOLUTION`.
DETR-family processors keep the aspect ratio (shortest edge 64, longest 96) and pad batches; the ResNet and
ConvNeXt processors resize then center-crop as the real checkpoints do. The detectors are initialised with
``init_std=0.3`` instead of 0.02: with the default, every query of a random DETR predicts the same score and box
whatever the image, which leaves nothing to attack.

Two helpers serve the task tests: :func:`photo_crops` (real photographs, no download) and
:func:`random_sparse_noise` (the random baseline an attack must beat).

>>> import tempfile
>>> from transformers import AutoModelForImageClassification
>>> with tempfile.TemporaryDirectory() as tmp:
...     model = AutoModelForImageClassification.from_pretrained(tiny_vit(tmp))
>>> model.config.model_type, model.config.num_labels
('vit', 10)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers as hf
from torch import Tensor

NUM_CLASSES = 10  # classification labels
NUM_DETECTION_CLASSES = 3  # detection labels, without DETR's no-object class
NUM_SEGMENTATION_CLASSES = 4

#: The side of the square images each family's processor produces (detection: shortest edge; see module doc).
RESOLUTION = {
    "vit": 32,
    "resnet": 32,
    "convnext": 32,
    "swin": 32,
    "detr": 64,
    "conditional_detr": 64,
    "segformer": 64,
}


def _labels(n: int, prefix: str) -> dict:
    return {"id2label": {i: f"{prefix}{i}" for i in range(n)}, "label2id": {f"{prefix}{i}": i for i in range(n)}}


def _save(directory: str | Path, name: str, model_class, config, processor) -> Path:
    torch.manual_seed(0)
    model = model_class(config).eval()
    path = Path(directory) / name
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _resnet_backbone(out_features: list[str]) -> hf.ResNetConfig:
    return hf.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=out_features,
    )


def tiny_vit(directory: str | Path) -> Path:
    """ViT, 32x32 input, 8x8 patches, 2 layers of width 32; ``ViTImageProcessor`` resizing to 32x32."""
    config = hf.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **_labels(NUM_CLASSES, "class_"),
    )
    processor = hf.ViTImageProcessorPil(size={"height": 32, "width": 32})
    return _save(directory, "vit", hf.ViTForImageClassification, config, processor)


def tiny_resnet(directory: str | Path) -> Path:
    """ResNet with basic blocks 16/32 wide; ``ConvNextImageProcessor`` (resize to 36, center-crop 32)."""
    config = hf.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", **_labels(NUM_CLASSES, "class_")
    )
    processor = hf.ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875)
    return _save(directory, "resnet", hf.ResNetForImageClassification, config, processor)


def tiny_convnext(directory: str | Path) -> Path:
    """ConvNeXt with stages 16/32 wide; ``ConvNextImageProcessor`` (resize to 36, center-crop 32)."""
    config = hf.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], **_labels(NUM_CLASSES, "class_"))
    processor = hf.ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875)
    return _save(directory, "convnext", hf.ConvNextForImageClassification, config, processor)


def tiny_swin(directory: str | Path) -> Path:
    """Swin, 32x32 input, 4x4 patches, windows of 4, stages 16/32 wide; ``ViTImageProcessor`` to 32x32."""
    config = hf.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        **_labels(NUM_CLASSES, "class_"),
    )
    processor = hf.ViTImageProcessorPil(size={"height": 32, "width": 32})
    return _save(directory, "swin", hf.SwinForImageClassification, config, processor)


def _detr_sizes() -> dict:
    """What the tiny DETR and Conditional DETR share: ResNet basic backbone without timm, d_model 32, 1+1 layers,
    10 queries, 3 classes; ``init_std`` 0.3 so that queries differ between images even untrained."""
    return dict(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        backbone_config=_resnet_backbone(["stage4"]),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=10,
        dropout=0.0,
        init_std=0.3,
        **_labels(NUM_DETECTION_CLASSES, "object_"),
    )


def tiny_detr(directory: str | Path) -> Path:
    """DETR without timm: ResNet basic backbone (stride 32), d_model 32, 1+1 layers, 10 queries, 3 classes, no
    auxiliary loss (so that ``outputs.loss`` is the final layer's set loss).

    ``DetrImageProcessor`` with shortest edge 64 and longest edge 96 (aspect ratio kept, batches padded).
    """
    config = hf.DetrConfig(
        **_detr_sizes(),
    )
    processor = hf.DetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    return _save(directory, "detr", hf.DetrForObjectDetection, config, processor)


def tiny_conditional_detr(directory: str | Path) -> Path:
    """Conditional DETR (sigmoid class scores, focal loss), same backbone and sizes as :func:`tiny_detr`."""
    config = hf.ConditionalDetrConfig(
        **_detr_sizes(),
    )
    processor = hf.ConditionalDetrImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96})
    return _save(directory, "conditional_detr", hf.ConditionalDetrForObjectDetection, config, processor)


def tiny_segformer(directory: str | Path) -> Path:
    """SegFormer with stages 8/16/32/32 wide, decoder 32, 4 classes; ``SegformerImageProcessor`` to 64x64."""
    config = hf.SegformerConfig(
        hidden_sizes=[8, 16, 32, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32,
        **_labels(NUM_SEGMENTATION_CLASSES, "region_"),
    )
    processor = hf.SegformerImageProcessorPil(size={"height": 64, "width": 64})
    return _save(directory, "segformer", hf.SegformerForSemanticSegmentation, config, processor)


#: Builders by family name, grouped by task.
CLASSIFIERS: dict[str, Callable[[str | Path], Path]] = {
    "vit": tiny_vit,
    "resnet": tiny_resnet,
    "convnext": tiny_convnext,
    "swin": tiny_swin,
}
DETECTORS: dict[str, Callable[[str | Path], Path]] = {"detr": tiny_detr, "conditional_detr": tiny_conditional_detr}
SEGMENTERS: dict[str, Callable[[str | Path], Path]] = {"segformer": tiny_segformer}


def photo_crops(n: int, height: int, width: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """``n`` random ``(height, width, 3)`` uint8 crops of scikit-learn's two bundled photographs (427x640)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    width = height if width is None else width
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - height + 1)
        left = rng.integers(0, photo.shape[1] - width + 1)
        crops.append(np.ascontiguousarray(photo[top : top + height, left : left + width]))
    return crops


def random_sparse_noise(x: Tensor, k: int, seed: int = 0) -> Tensor:
    """``x`` with ``k`` random pixels per image set to random corners of the colour cube (Sparse-RS's colours)."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    positions = torch.rand(b, h * w, generator=gen).argsort(dim=1)[:, :k]
    mask = torch.zeros(b, h * w).scatter_(1, positions, 1.0).view(b, 1, h, w).bool()
    colours = torch.randint(0, 2, (b, c, h, w), generator=gen).float()
    return torch.where(mask.to(x.device), colours.to(x), x)
