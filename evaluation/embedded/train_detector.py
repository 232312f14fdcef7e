"""Train the embedded detector: a small Conditional DETR on 64x64 generated shapes (3 classes), from scratch.

    python -m evaluation.embedded.train_detector            # writes evaluation/embedded/models/detector

Why Conditional DETR: plain DETR from scratch does not converge in useful CPU time (ENVIRONMENT.md: mAP@0.5
about 0.01 after 20 minutes), Conditional DETR's conditional cross-attention does, and the same detection adapter
(sigmoid head) serves it. Recipe (measured in ENVIRONMENT.md): ResNet basic backbone (embedding 32, stages 64/128,
2 blocks each, stride 8 output), d_model 128, FFN 512, 4 heads, 3 encoder + 3 decoder layers, 10 queries,
auxiliary losses, no dropout; AdamW lr 2e-4 on everything, weight decay 1e-4, gradient clipping 0.1, batch 16,
100 warm-up steps, learning rate x0.1 at 80% of the steps.

Two traps of Hugging Face's DETR-family conv encoder are undone for training: it freezes every backbone
parameter whose name lacks ``stage.1/2/3`` (all of an HF ResNet's, so the backbone would stay random) and it
replaces every BatchNorm by a frozen one. Training re-enables all gradients and swaps trainable
``nn.BatchNorm2d`` in; before saving, the frozen norms are put back with the learned statistics, so the saved
model is an ordinary ``ConditionalDetrForObjectDetection`` checkpoint.

The loss is the model's own (``labels=``; there is no Accelerator here, so no collective). Checkpoints go to
``--checkpoint_dir`` every ``--checkpoint_every`` steps and a rerun resumes from them.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_sparse_attack.evaluation.embedded.common import Recipe, images_to_tensor, label_config, run_recipe
from hf_sparse_attack.evaluation.embedded.quality import detection_quality
from hf_sparse_attack.evaluation.testdata.shapes import CLASSES, TRAIN_SEED, shapes_sample
from hf_sparse_attack.tasks import DetectionObjective

IMAGE_SIZE = 64


def build_model():
    """A randomly initialised detector and its image processor (``shortest_edge = longest_edge = 64``)."""
    import transformers as hf

    backbone = hf.ResNetConfig(embedding_size=32, hidden_sizes=[64, 128], depths=[2, 2], layer_type="basic",
                               out_features=["stage2"])
    config = hf.ConditionalDetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        backbone_config=backbone,
        d_model=128,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_layers=3,
        decoder_layers=3,
        num_queries=10,
        auxiliary_loss=True,
        dropout=0.0,
        **label_config(CLASSES),
    )
    model = hf.ConditionalDetrForObjectDetection(config)
    processor = hf.ConditionalDetrImageProcessorPil(size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE})
    return model, processor


def swap_norms(module: nn.Module, trainable: bool) -> None:
    """Replace frozen batch norms by trainable ``nn.BatchNorm2d`` (``trainable=True``) or back, keeping the
    affine parameters and running statistics."""
    from transformers.models.conditional_detr.modeling_conditional_detr import ConditionalDetrFrozenBatchNorm2d

    for name, child in module.named_children():
        if trainable and isinstance(child, ConditionalDetrFrozenBatchNorm2d):
            new = nn.BatchNorm2d(child.weight.shape[0], eps=1e-5)
        elif not trainable and isinstance(child, nn.BatchNorm2d):
            new = ConditionalDetrFrozenBatchNorm2d(child.weight.shape[0])
        else:
            swap_norms(child, trainable)
            continue
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).copy_(getattr(child, key))
        module._modules[name] = new


def training_batch(step: int, batch_size: int) -> tuple[torch.Tensor, list[dict]]:
    """Pixels in ``[0, 1]`` and DETR labels (class ids, normalised cxcywh boxes) of training step ``step``."""
    samples = [shapes_sample(TRAIN_SEED, step * batch_size + i, IMAGE_SIZE) for i in range(batch_size)]
    labels = []
    for s in samples:
        boxes = torch.from_numpy(s.boxes) / IMAGE_SIZE
        cxcywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
        labels.append({"class_labels": torch.from_numpy(s.labels), "boxes": cxcywh})
    return images_to_tensor([s.image for s in samples]), labels


def loss(model: nn.Module, pixels: torch.Tensor, labels: list[dict]) -> torch.Tensor:
    return model(pixel_values=pixels, pixel_mask=torch.ones_like(pixels[:, 0], dtype=torch.long), labels=labels).loss


RECIPE = Recipe("detector", steps=6000, batch_size=16, learning_rate=2e-4, weight_decay=1e-4,
                build_model=build_model, training_batch=training_batch, loss=loss, quality=detection_quality,
                objective_class=DetectionObjective, max_grad_norm=0.1, trainable=swap_norms)


def main(argv: list[str] | None = None) -> dict:
    """Train the detector (flags: ``--help``); returns the training summary."""
    return run_recipe(RECIPE, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
