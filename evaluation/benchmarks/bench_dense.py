"""Attack strength where users measure it: mAP and mIoU of the embedded detector and segmenter under attack.

    python evaluation/benchmarks/bench_dense.py                   # the README's tables (about an hour per task)
    python evaluation/benchmarks/bench_dense.py --full            # every (k, attack, loss): several hours
    python evaluation/benchmarks/bench_dense.py --quick           # a smoke run (seconds)
    python evaluation/benchmarks/bench_dense.py --tasks detection --budgets 0.5 --attacks spgd100 \\
        --losses hungarian targets

Held-out generated images (:mod:`evaluation.testdata.shapes`, seed ``--seed``, default the embedded models' test
seed) are
prepared by each model's processor, attacked in batches, and scored exactly as the evaluation scripts score them:
COCO mAP@50 and mAP by pycocotools on the detections in the original image (every detection, score threshold 0),
mIoU and pixel accuracy by torchmetrics. ``k`` is a percentage of the pixels of the model's input (64x64: 0.5% =
20 pixels). One row per (task, k, attack, loss), with the wall time of the attack. Without ``--full`` (and
without ``--losses``), every loss is compared at the first budget with the first two attacks, and the other
budgets and attacks run with the task's default loss.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from hf_sparse_attack import SparseAutoAttack, SparsePGD, SparseRS
from hf_sparse_attack.evaluation.embedded import load
from hf_sparse_attack.evaluation.harness.metrics import DetectionRobustness, SegmentationRobustness
from hf_sparse_attack.evaluation.harness.specs.detection import xyxy_to_xywh
from hf_sparse_attack.evaluation.testdata.shapes import TEST_SEED, shapes_batch
from hf_sparse_attack.tasks.options import DETECTION_LOSSES, SEGMENTATION_LOSSES

#: ``--attacks`` name -> attack config for a budget k.
ATTACKS: dict[str, Callable[[int, int], object]] = {
    "spgd100": lambda k, seed: SparsePGD(k=k, steps=100, seed=seed),
    "spgd100-projected": lambda k, seed: SparsePGD(k=k, steps=100, unprojected=False, seed=seed),
    "spgd300": lambda k, seed: SparsePGD(k=k, steps=300, seed=seed),
    "spgd300-projected": lambda k, seed: SparsePGD(k=k, steps=300, unprojected=False, seed=seed),
    "rs1000": lambda k, seed: SparseRS(k=k, queries=1000, seed=seed),
    "saa-fast": lambda k, seed: SparseAutoAttack(k=k, version="fast", seed=seed),
}
LOSSES = {"detection": DETECTION_LOSSES, "segmentation": SEGMENTATION_LOSSES}
MODELS = {"detection": "detector", "segmentation": "segmenter"}


def prepared(task: str, samples: int, seed: int, batch: int) -> list[tuple]:
    """Batches of ``(x, targets, original sizes)`` for the held-out images (targets: the generator's truth)."""
    objective = load(MODELS[task])
    out = []
    for start in range(0, samples, batch):
        images, annotations = shapes_batch(min(batch, samples - start), seed=seed, start=start)
        if task == "detection":
            x, targets = objective.prepare(images, [{"boxes": a["boxes"], "labels": a["labels"]} for a in annotations])
        else:
            x, targets = objective.prepare(images, [a["label_map"] for a in annotations])
        out.append((x, targets, [a["size"] for a in annotations], annotations))
    return out


def _coco(objective, x, targets, sizes) -> list[dict]:
    found = objective.predict(x, [t["size"] for t in targets], score_threshold=0.0)
    return [{"boxes": xyxy_to_xywh(d["boxes"]).tolist(), "scores": d["scores"].tolist(), "labels": d["labels"].tolist()}
            for d in objective.to_original(found, sizes)]


def measure_row(task: str, loss: str, attack, data: list[tuple], start_id: int = 0) -> dict:
    """Clean and adversarial metrics of ``attack`` with ``loss`` over the prepared batches, and the attack time."""
    objective = load(MODELS[task], loss=loss)
    if task == "detection":
        metric = DetectionRobustness()
    else:
        metric = SegmentationRobustness(num_classes=objective.model.config.num_labels)
    seconds, sample_id = 0.0, start_id
    for x, targets, sizes, truth_boxes in data:
        ids = list(range(sample_id, sample_id + len(x)))
        sample_id += len(x)
        started = time.perf_counter()
        adversarial = x if attack is None else attack(objective, x, targets, ids=ids).adversarial
        seconds += time.perf_counter() - started
        if task == "detection":
            truth = [{"boxes": xyxy_to_xywh(torch.as_tensor(a["boxes"], dtype=torch.float64)).tolist(),
                      "labels": list(a["labels"])} for a in truth_boxes]
            clean, attacked = (_coco(objective, v, targets, sizes) for v in (x, adversarial))
            metric.update(ids, truth, clean, attacked)
        else:
            metric.update(objective.predict(x), objective.predict(adversarial), targets)
    values = metric.compute()
    if task == "detection":
        keys = ("map50_clean", "map50_adversarial", "map_clean", "map_adversarial")
    else:
        keys = ("miou_clean", "miou_adversarial", "pixel_accuracy_clean", "pixel_accuracy_adversarial")
    return {**{key: values[key] for key in keys}, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["detection", "segmentation"], choices=sorted(MODELS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.25, 1.0, 2.0],
                        help="k as a percentage of the input's pixels")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--losses", nargs="+", help="only these losses (of any task; each task takes its own)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="stream of the generated held-out images")
    parser.add_argument("--attack_seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="4 images, k=0.5%%, sPGD 100 steps, default losses")
    parser.add_argument("--full", action="store_true", help="every loss with every budget and attack")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.samples, args.budgets, args.attacks = 4, [0.5], ["spgd100"]
    print(f"\n## Embedded models under attack ({args.samples} held-out images of seed {args.seed}, 64x64)\n")
    print("| task | k (% / pixels) | attack | loss | clean mAP@50 / mIoU | adv. mAP@50 / mIoU | clean mAP / pix. acc. "
          "| adv. mAP / pix. acc. | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        data = prepared(task, args.samples, args.seed, args.batch)
        pixels = data[0][0].shape[-2] * data[0][0].shape[-1]
        default = load(MODELS[task]).options.loss
        for first_k, percent in enumerate(args.budgets):
            k = max(1, round(percent / 100 * pixels))
            for position, name in enumerate(args.attacks):
                if args.losses:
                    losses = [loss for loss in args.losses if loss in LOSSES[task]]
                elif args.full or (first_k == 0 and position < 2 and not args.quick):
                    losses = LOSSES[task]
                else:
                    losses = [default]
                for loss in losses:
                    row = measure_row(task, loss, ATTACKS[name](k, args.attack_seed), data)
                    values = list(row.values())
                    mark = " (default)" if loss == default else ""
                    print(f"| {task} | {percent:g} / {k} | {name} | {loss}{mark} | {values[0]:.3f} | {values[1]:.3f} | "
                          f"{values[2]:.3f} | {values[3]:.3f} | {row['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
