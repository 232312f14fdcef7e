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

from hf_sparse_attack.evaluation.embedded.common import base_parser, held_out, images_to_tensor, setup, train
from hf_sparse_attack.evaluation.testdata.shapes import SEGMENTATION_CLASSES, TRAIN_SEED, shapes_sample

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
        id2label=dict(enumerate(SEGMENTATION_CLASSES)),
        label2id={name: i for i, name in enumerate(SEGMENTATION_CLASSES)},
    )
    model = hf.SegformerForSemanticSegmentation(config)
    processor = hf.SegformerImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, processor


def training_batch(step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in ``[0, 1]`` and label maps ``(B, 64, 64)`` of training step ``step``."""
    samples = [shapes_sample(TRAIN_SEED, step * batch_size + i, IMAGE_SIZE) for i in range(batch_size)]
    maps = torch.from_numpy(np.stack([s.label_map for s in samples])).long()
    return images_to_tensor([s.image for s in samples]), maps


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], "segmenter", steps=10000, batch_size=32, lr=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    args = parser.parse_args(argv)
    setup(args)
    from hf_sparse_attack.evaluation.embedded.quality import segmentation_quality
    from hf_sparse_attack.tasks import SegmentationObjective
    from hf_sparse_attack.tasks.pixels import Normalizer

    model, processor = build_model()
    model.train()
    normalize = Normalizer.from_processor(processor)

    def step_loss(step: int) -> torch.Tensor:
        x, maps = training_batch(step, args.per_device_train_batch_size)
        return model(pixel_values=normalize(x), labels=maps).loss

    def evaluate(n: int) -> dict:
        return held_out(segmentation_quality, SegmentationObjective, model, processor, n)

    return train("segmenter", args, model, processor, step_loss, evaluate, args.weight_decay)


if __name__ == "__main__":
    main()
