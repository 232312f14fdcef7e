"""Train the embedded segmenter: a small SegFormer on 64x64 generated shapes (background + 3 classes), from scratch.

    python -m evaluation.embedded.train_segmenter           # writes evaluation/embedded/models/segmenter

Recipe (measured in ENVIRONMENT.md to converge fast on CPU): hidden sizes 16/32/64/128, one block per stage,
heads 1/1/2/4, strides 4/2/2/2, reduction ratios 8/4/2/1, decoder 64 (0.46 M parameters); AdamW lr 1e-3, weight
decay 0.01, batch 32, 100 warm-up steps, learning rate x0.1 at 80% of the steps. The loss is the model's own
pixel cross-entropy (logits upsampled to the label map). Label maps: 0 background, ``1 + class id`` (see
:mod:`evaluation.testdata.shapes`). Checkpoints go to ``--checkpoint_dir`` and a rerun resumes from them.
"""

from __future__ import annotations

import numpy as np
import torch

from hf_sparse_attack.evaluation.embedded.common import Recipe, images_to_tensor, label_config, run_recipe
from hf_sparse_attack.evaluation.embedded.quality import segmentation_quality
from hf_sparse_attack.evaluation.testdata.shapes import SEGMENTATION_CLASSES, TRAIN_SEED, shapes_sample
from hf_sparse_attack.tasks import SegmentationObjective

IMAGE_SIZE = 64


def build_model():
    """A randomly initialised SegFormer and its image processor (resize to 64x64)."""
    import transformers as hf

    config = hf.SegformerConfig(
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 4],
        strides=[4, 2, 2, 2],
        sr_ratios=[8, 4, 2, 1],
        decoder_hidden_size=64,
        **label_config(SEGMENTATION_CLASSES),
    )
    model = hf.SegformerForSemanticSegmentation(config)
    processor = hf.SegformerImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, processor


def training_batch(step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in ``[0, 1]`` and label maps ``(B, 64, 64)`` of training step ``step``."""
    samples = [shapes_sample(TRAIN_SEED, step * batch_size + i, IMAGE_SIZE) for i in range(batch_size)]
    maps = torch.from_numpy(np.stack([s.label_map for s in samples])).long()
    return images_to_tensor([s.image for s in samples]), maps


def loss(model: torch.nn.Module, pixels: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixels, labels=maps).loss


RECIPE = Recipe("segmenter", steps=10000, batch_size=32, learning_rate=1e-3, weight_decay=0.01,
                build_model=build_model, training_batch=training_batch, loss=loss, quality=segmentation_quality,
                objective_class=SegmentationObjective)


def main(argv: list[str] | None = None) -> dict:
    """Train the segmenter (flags: ``--help``); returns the training summary."""
    return run_recipe(RECIPE, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
