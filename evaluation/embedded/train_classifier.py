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

from hf_sparse_attack.evaluation.embedded.common import base_parser, held_out, images_to_tensor, setup, train
from hf_sparse_attack.evaluation.testdata.shapes import CLASSES, TRAIN_SEED, classification_sample

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
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
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


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], "classifier", steps=1500, batch_size=64, lr=2e-3)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    args = parser.parse_args(argv)
    setup(args)
    from hf_sparse_attack.evaluation.embedded.quality import classification_quality
    from hf_sparse_attack.tasks import ClassificationObjective
    from hf_sparse_attack.tasks.pixels import Normalizer

    model, processor = build_model()
    model.train()
    normalize = Normalizer.from_processor(processor)

    def step_loss(step: int) -> torch.Tensor:
        x, labels = training_batch(step, args.per_device_train_batch_size)
        return F.cross_entropy(model(pixel_values=normalize(x)).logits, labels)

    def evaluate(n: int) -> dict:
        return held_out(classification_quality, ClassificationObjective, model, processor, n)

    return train("classifier", args, model, processor, step_loss, evaluate, args.weight_decay)


if __name__ == "__main__":
    main()
