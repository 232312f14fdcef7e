"""Sparse-PGD benchmark: cost per iteration against the forward+backward floor, and attack strength on digits.

    python evaluation/benchmarks/bench_spgd.py            # full tables (about 5 minutes on one CPU thread)
    python evaluation/benchmarks/bench_spgd.py --quick    # a smoke run
    python evaluation/benchmarks/bench_spgd.py --device cuda --batch 64 --vit base   # the GPU row

Table 1: time of one sPGD iteration divided by one forward+backward pass of the same objective on the same batch
(the floor of any gradient attack). Every sample stays active (success is masked out) so the ratio is not flattered
by early stopping. Table 2: robust accuracy of the digits CNN for k = 1..4, both gradient modes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.evaluation.testdata.digits import digits_split, train_digits_cnn
from hf_sparse_attack.objective import Measurement, measure

VITS = {
    "micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


class NeverSucceeds:
    """Wraps an objective so that no sample leaves the batch early: measures the full per-iteration cost."""

    def __init__(self, objective):
        self.objective = objective

    def loss_success_score(self, x, targets):
        loss, success, score = measure(self.objective, x, targets)
        return Measurement(loss, torch.zeros_like(success), score)

    def loss(self, x, targets):
        return self.objective.loss(x, targets)

    def success(self, x, targets):
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_seconds(objective, x, targets, repeats):
    """Median time of one forward+backward of the objective w.r.t. the input pixels."""
    times = []
    for _ in range(repeats + 1):
        _sync(x.device)
        start = time.perf_counter()
        leaf = x.clone().requires_grad_(True)
        loss = measure(objective, leaf, targets).loss
        torch.autograd.grad(loss.sum(), leaf)
        _sync(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def iteration_seconds(objective, x, targets, steps, unprojected=True):
    """Time per sPGD iteration with every sample active (the clean evaluation is timed and subtracted)."""
    wrapped = NeverSucceeds(objective)
    SparsePGD(k=10, steps=2, unprojected=unprojected)(wrapped, x, targets)  # warm-up
    _sync(x.device)
    start = time.perf_counter()
    with torch.no_grad():
        measure(wrapped, x, targets)
    _sync(x.device)
    clean = time.perf_counter() - start
    start = time.perf_counter()
    SparsePGD(k=10, steps=steps, unprojected=unprojected)(wrapped, x, targets)
    _sync(x.device)
    return (time.perf_counter() - start - clean) / steps


def vit_objective(size, device, image_size=224):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from hf_sparse_attack import tasks
    config = ViTConfig(image_size=image_size, patch_size=16, num_labels=10, **VITS[size])
    with tempfile.TemporaryDirectory() as tmp:
        ViTForImageClassification(config).save_pretrained(tmp)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(tmp)
        return tasks.load_task(tmp, device=device)


def small_cnn_objective(device):
    from hf_sparse_attack import as_objective

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
    ).to(device)
    return as_objective(net)


def speed_table(args, device):
    print(f"\n## Cost of one sPGD iteration vs one forward+backward ({device}, batch {args.batch}, 224x224, "
          f"{torch.get_num_threads()} thread(s))\n")
    print("| model | forward+backward (ms) | sPGD unprojected iteration (ms) | ratio | projected (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    models = [("small CNN (3 conv)", lambda: small_cnn_objective(device))]
    models += [(f"ViT-{name} /16", lambda name=name: vit_objective(name, device)) for name in args.vit]
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, 3, 224, 224, generator=gen) * 255).round().div(255).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    for name, build in models:
        objective = build()
        # Floor and iterations are timed alternately, and medians are taken, so that load from other processes
        # on a shared machine hits both alike.
        floors, iterations = [], {True: [], False: []}
        for _ in range(args.rounds):
            floors.append(floor_seconds(objective, x, y, args.repeats))
            for unprojected in (True, False):
                iterations[unprojected].append(iteration_seconds(objective, x, y, args.steps, unprojected))
        base = statistics.median(floors)
        cells = [f"{base * 1e3:.1f}"]
        for unprojected in (True, False):
            it = statistics.median(iterations[unprojected])
            cells += [f"{it * 1e3:.1f}", f"{it / base:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def strength_table(args):
    model, accuracy = train_digits_cnn()
    (_, _), (x, y) = digits_split()
    x, y = x[: args.samples], y[: args.samples]
    print(f"\n## Robust accuracy of the digits CNN (clean test accuracy {accuracy:.4f}, {len(y)} test images)\n")
    steps_list = [100] if args.quick else [100, 1000]
    print("| k | " + " | ".join(f"{s} steps {m}" for s in steps_list for m in ("unprojected", "projected")) + " |")
    print("|---:|" + "---:|" * (2 * len(steps_list)))
    for k in range(1, 5):
        cells = []
        for steps in steps_list:
            for unprojected in (True, False):
                result = SparsePGD(k=k, steps=steps, unprojected=unprojected)(model, x, y)
                cells.append(f"{result.robust_accuracy:.4f}")
        print(f"| {k} | " + " | ".join(cells) + " |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="iterations timed per round")
    parser.add_argument("--repeats", type=int, default=5, help="forward+backward passes timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of floor and iteration timing")
    parser.add_argument("--vit", nargs="+", default=["micro", "tiny"], choices=sorted(VITS))
    parser.add_argument("--samples", type=int, default=450, help="digits test images attacked")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip_strength", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.repeats, args.rounds, args.vit, args.samples = 3, 2, 1, ["micro"], 100
    speed_table(args, torch.device(args.device))
    if not args.skip_strength:
        strength_table(args)


if __name__ == "__main__":
    main()
