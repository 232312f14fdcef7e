"""Train the embedded classifier: a small ResNet that names the one shape in a 64x64 generated image.

    python -m evaluation.embedded.train_classifier          # writes evaluation/embedded/models/classifier

Data: :func:`evaluation.shapes.classification_sample` (one circle, square or triangle on a textured background),
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

from evaluation.embedded.common import (
    Checkpointer,
    Timer,
    base_parser,
    images_to_tensor,
    learning_rate_factor,
    logger,
    setup,
    write_summary,
)
from evaluation.shapes import CLASSES, TRAIN_SEED, classification_sample

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


def evaluate(model, processor, n: int) -> dict:
    from evaluation.embedded.quality import classification_quality
    from tasks import ClassificationObjective

    model.eval()
    try:
        return classification_quality(ClassificationObjective(model, processor), n=n)
    finally:
        model.train()


def main(argv: list[str] | None = None) -> dict:
    parser = base_parser(__doc__.splitlines()[0], "classifier", steps=1500, batch_size=64, lr=2e-3)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    args = parser.parse_args(argv)
    setup(args)
    from tasks.pixels import Normalizer

    model, processor = build_model()
    model.train()
    normalize = Normalizer.from_processor(processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    checkpoints = Checkpointer(args.checkpoint_dir)
    step, elapsed = (0, 0.0) if args.no_resume else checkpoints.load(model, optimizer)
    timer = Timer(elapsed)
    logger.info("classifier: %.2f M parameters, %d steps", sum(p.numel() for p in model.parameters()) / 1e6,
                args.max_train_steps)
    while step < args.max_train_steps:
        with timer:
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * learning_rate_factor(step, args.max_train_steps, args.warmup_steps)
            x, labels = training_batch(step, args.per_device_train_batch_size)
            loss = F.cross_entropy(model(pixel_values=normalize(x)).logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if step % 20 == 0:
            logger.info("step %d loss %.4f (%.0f s)", step, loss.item(), timer.elapsed)
        if step % args.checkpoint_every == 0 or step == args.max_train_steps:
            checkpoints.save(model, optimizer, step, timer.elapsed)
        if args.eval_every and step % args.eval_every == 0 and step < args.max_train_steps:
            metrics = evaluate(model, processor, n=200)
            logger.info("step %d held-out (200 images): %s", step, metrics)
            checkpoints.record(step=step, seconds=timer.elapsed, **metrics)
    metrics = evaluate(model, processor, n=args.eval_images)
    logger.info("final held-out (%d images): %s", args.eval_images, metrics)
    checkpoints.record(step=step, seconds=timer.elapsed, final=True, **metrics)
    model.eval()
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    summary = {"model": "classifier", "steps": step, "train_seconds": round(timer.elapsed, 1),
               "threads": args.threads, "arguments": vars(args), "held_out": metrics}
    write_summary(args.output_dir, summary)
    return summary


if __name__ == "__main__":
    main()
