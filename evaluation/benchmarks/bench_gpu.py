"""The GPU table: attack iteration time against the model's forward+backward, images per second, host syncs.

    python evaluation/benchmarks/bench_gpu.py                 # on a GPU: about 3 minutes
    python evaluation/benchmarks/bench_gpu.py --tiny          # any machine, tiny models (the test runs this)

Models are built from configs (random weights) and loaded through ``tasks.load_task`` as a Hub model is:
ViT-B/16 (batch 64, 224x224), DETR with a ResNet-50 backbone (batch 8, images resized to 512-800 px) and
SegFormer-b0 (batch 8, 512x512), each in float32 and bfloat16 weights. Per row: one forward+backward of the task's
objective on the batch (the floor of any gradient attack), one sPGD iteration and one Sparse-RS query with every
sample kept active (success masked out, so early stopping flatters nothing), their ratios to the floor, images per
second through sPGD, and host synchronisations per sPGD iteration and per Sparse-RS query
(:class:`~.host_syncs.HostSyncCounter`). Targets: sPGD iteration <= 1.05x forward+backward for ViT-B, <= 1.2x for
detection.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hf_sparse_attack import SparsePGD, SparseRS
from hf_sparse_attack.evaluation.benchmarks.bench_spgd import NeverSucceeds, floor_seconds
from hf_sparse_attack.evaluation.benchmarks.host_syncs import HostSyncCounter


@dataclass(frozen=True)
class Case:
    """One model of the table: how to build it, the batch, the input images' size and the budget k."""

    name: str
    build: Callable[[str, bool], tuple]  # (directory, tiny) -> saved model directory
    batch: int
    image: tuple[int, int]
    k: int


def _save(directory: str, model, processor) -> str:
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def vit(directory: str, tiny: bool) -> str:
    import transformers as hf

    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64} if tiny \
        else {}
    size = 32 if tiny else 224
    config = hf.ViTConfig(image_size=size, patch_size=16, num_labels=1000, **sizes)
    return _save(directory, hf.ViTForImageClassification(config), hf.ViTImageProcessorPil(
        size={"height": size, "width": size}))


def detr(directory: str, tiny: bool) -> str:
    import transformers as hf

    if tiny:
        backbone = hf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
                                   layer_type="basic", out_features=["stage4"])
        sizes = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_ffn_dim": 16,
                 "decoder_ffn_dim": 16, "encoder_attention_heads": 2, "decoder_attention_heads": 2}
        edges = {"shortest_edge": 32, "longest_edge": 48}
    else:  # DETR-R50: bottleneck ResNet-50, 6+6 layers, d_model 256, 100 queries
        backbone = hf.ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                                   layer_type="bottleneck", out_features=["stage4"])
        sizes = {}
        edges = {"shortest_edge": 512, "longest_edge": 800}
    config = hf.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                           backbone_config=backbone, num_labels=91, **sizes)
    return _save(directory, hf.DetrForObjectDetection(config), hf.DetrImageProcessorPil(size=edges))


def segformer(directory: str, tiny: bool) -> str:
    import transformers as hf

    sizes = {"hidden_sizes": [8, 8, 16, 16], "depths": [1, 1, 1, 1], "decoder_hidden_size": 16} if tiny else {}
    size = 32 if tiny else 512
    config = hf.SegformerConfig(num_labels=150, **sizes)  # the defaults are SegFormer-b0
    return _save(directory, hf.SegformerForSemanticSegmentation(config), hf.SegformerImageProcessorPil(
        size={"height": size, "width": size}))


CASES = (
    Case("ViT-B/16", vit, 64, (224, 224), 10),
    Case("DETR-R50", detr, 8, (600, 800), 50),
    Case("SegFormer-b0", segformer, 8, (512, 512), 100),
)
TINY = {"ViT-B/16": (2, (32, 32), 2), "DETR-R50": (2, (40, 48), 2), "SegFormer-b0": (2, (32, 32), 2)}


def batch_and_targets(objective, batch: int, image: tuple[int, int]):
    """Random photos-like pixels prepared by the processor, and the clean prediction as targets (for detection the
    5 best detections whatever their score, so that a model with random weights still has objects to remove)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*image, 3), dtype=np.uint8) for _ in range(batch)]
    x, _ = objective.prepare(images)
    x = x.to(objective.device)
    if objective.task == "detection":
        found = objective.predict(x, score_threshold=0.0)
        return x, [{"labels": d["labels"][:5], "boxes": d["boxes"][:5], "size": d["size"]} for d in found]
    return x, objective.clean_targets(x)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_step(run: Callable[[int], object], device: torch.device, steps: int) -> float:
    """Seconds per step of ``run(steps)``, the fixed cost (the clean check) taken out by a run of one step."""
    times = {}
    for n in (1, steps + 1):
        _synchronize(device)
        start = time.perf_counter()
        run(n)
        _synchronize(device)
        times[n] = time.perf_counter() - start
    return (times[steps + 1] - times[1]) / steps


def syncs_per_step(run: Callable[[int], object], steps: int) -> float:
    """Host syncs per step of ``run(steps)`` (the fixed ones taken out by a run of one step)."""
    counts = {}
    for n in (1, steps + 1):
        with HostSyncCounter() as counter:
            run(n)
        counts[n] = counter.count
    return (counts[steps + 1] - counts[1]) / steps


def measure_row(case: Case, dtype: torch.dtype, device: torch.device, args: argparse.Namespace) -> list[str]:
    from hf_sparse_attack.tasks import load_task

    batch, image, k = TINY[case.name] if args.tiny else (case.batch, case.image, case.k)
    with tempfile.TemporaryDirectory() as tmp:
        objective = load_task(case.build(tmp, args.tiny), device=device, dtype=dtype)
    x, targets = batch_and_targets(objective, batch, image)
    wrapped = NeverSucceeds(objective)
    attacks = {
        "spgd": lambda n: SparsePGD(k=k, steps=n)(wrapped, x, targets),
        "rs": lambda n: SparseRS(k=k, queries=n)(wrapped, x, targets),
    }
    for run in attacks.values():
        run(2)  # warm-up (kernels, allocator)
    floors, times = [], {name: [] for name in attacks}
    for _ in range(args.rounds):  # alternated, medians: load from elsewhere hits every column alike
        floors.append(floor_seconds(objective, x, targets, args.repeats))
        for name, run in attacks.items():
            times[name].append(per_step(run, device, args.steps))
    floor = statistics.median(floors)
    spgd, rs = statistics.median(times["spgd"]), statistics.median(times["rs"])
    syncs = {name: syncs_per_step(run, 3) for name, run in attacks.items()}
    return [case.name, str(dtype).removeprefix("torch."), f"{batch}x{tuple(x.shape[-2:])}", f"{floor * 1e3:.1f}",
            f"{spgd * 1e3:.1f}", f"{spgd / floor:.3f}", f"{batch / spgd:.1f}", f"{rs * 1e3:.1f}",
            f"{rs / floor:.3f}", f"{syncs['spgd']:.1f}", f"{syncs['rs']:.1f}"]


HEADER = ["model", "weights", "batch", "fwd+bwd (ms)", "sPGD iter (ms)", "sPGD / fwd+bwd", "sPGD images/s",
          "RS query (ms)", "RS / fwd+bwd", "syncs / sPGD iter", "syncs / RS query"]


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and images (any machine; the test)")
    parser.add_argument("--steps", type=int, default=10, help="attack steps timed per round")
    parser.add_argument("--repeats", type=int, default=5, help="forward+backward passes timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--models", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread"
    print(f"## Attack cost on {name} (torch {torch.__version__}; random weights, every sample active)\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * 3 + "---:|" * (len(HEADER) - 3))
    rows = []
    for case in CASES:
        if case.name in args.models:
            for dtype in args.dtypes:
                rows.append(measure_row(case, getattr(torch, dtype), device, args))
                print("| " + " | ".join(rows[-1]) + " |", flush=True)
    return rows


if __name__ == "__main__":
    main()
