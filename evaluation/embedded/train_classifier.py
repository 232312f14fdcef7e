"""Train the embedded classifier: a small ResNet that names the one shape in a 64x64 generated image.

    python -m evaluation.embedded.train_classifier          # writes evaluation/embedded/models/classifier

Data: :func:`evaluation.testdata.shapes.classification_sample` (one circle, square or triangle on a textured
background),
the same visual world as the detector and segmenter, so the demo needs no other data. Model:
``ResNetForImageClassification`` with basic blocks, embedding 16, stages 16/32/64 of one block each; processor
``ViTImageProcessor`` resizing to 64x64 (no crop, which could cut the object) with ImageNet mean/std. AdamW lr 2e-3,
weight decay 1e-4, batch 64, 100 warm-up steps, learning rate x0.1 at 80% of the steps. Checkpoints go to
``--checkpoint_dir`` and a rerun resumes from them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hf_sparse_attack.evaluation.embedded.common import Recipe, images_to_tensor, label_config, run_recipe
from hf_sparse_attack.evaluation.embedded.quality import classification_quality
from hf_sparse_attack.evaluation.testdata.shapes import CLASSES, TRAIN_SEED, classification_sample
from hf_sparse_attack.tasks import ClassificationObjective

IMAGE_SIZE = 64
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_model():
    """A randomly initialised ResNet classifier and its image processor (resize to 64x64)."""
    import transformers as hf

    config = hf.ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        **label_config(CLASSES),
    )
    model = hf.ResNetForImageClassification(config)
    processor = hf.ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=IMAGENET_MEAN,
                                        image_std=IMAGENET_STD)
    return model, processor


def training_batch(step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in ``[0, 1]`` and class ids of training step ``step``."""
    samples = [classification_sample(TRAIN_SEED, step * batch_size + i, IMAGE_SIZE) for i in range(batch_size)]
    labels = torch.from_numpy(np.array([s.labels[0] for s in samples], dtype=np.int64))
    return images_to_tensor([s.image for s in samples]), labels


def loss(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(pixel_values=pixels).logits, labels)


RECIPE = Recipe("classifier", steps=1500, batch_size=64, learning_rate=2e-3, weight_decay=1e-4,
                build_model=build_model, training_batch=training_batch, loss=loss, quality=classification_quality,
                objective_class=ClassificationObjective)


def main(argv: list[str] | None = None) -> dict:
    """Train the classifier (flags: ``--help``); returns the training summary."""
    return run_recipe(RECIPE, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
