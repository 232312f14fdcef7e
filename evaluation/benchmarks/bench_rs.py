"""Sparse-RS and Sparse-AutoAttack benchmark on the digits CNN.

    python evaluation/benchmarks/bench_rs.py            # full tables (5 to 8 minutes on one CPU thread)
    python evaluation/benchmarks/bench_rs.py --quick    # a smoke run (under a minute)

Table 1: time of one Sparse-RS query step on a batch of 300 digits divided by one forward pass of the CNN on the same
batch (the floor of any black-box attack: one query costs one forward pass), both timed in the same run, and the host
syncs per query step (counted on CPU as a GPU would pay them, :mod:`evaluation.benchmarks.host_syncs`). Every
sample stays active (success is masked out), so the ratio is not flattered by early stopping. Table 2: robust
accuracy for k = 1..4 at budgets of 1000 and 10000 queries (and, within each run, after 10, 100, 1000, ... queries),
the median queries of the fooled samples and the queries per second. Table 3: Sparse-AutoAttack robust accuracy
after each stage, and its time.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from hf_sparse_attack import Measurement, as_objective, kernels, measure
from hf_sparse_attack.evaluation.benchmarks.host_syncs import HostSyncCounter
from hf_sparse_attack.evaluation.testdata.digits import digits_split, train_digits_cnn
from hf_sparse_attack.rs import SparseRS
from hf_sparse_attack.saa import SparseAutoAttack


class TimedNeverSucceeds:
    """Wraps an objective so that no sample leaves the batch early (the full cost of every query step is measured)
    and records the seconds spent evaluating it, i.e. in the forward passes of the queries."""

    def __init__(self, objective):
        self.objective = objective
        self.seconds = 0.0

    def loss_success_score(self, x, targets):
        start = time.perf_counter()
        loss, success, score = measure(self.objective, x, targets)
        self.seconds += time.perf_counter() - start
        return Measurement(loss, torch.zeros_like(success), score)

    def loss(self, x, targets):
        return self.loss_success_score(x, targets).loss

    def success(self, x, targets):
        return self.loss_success_score(x, targets).success


def syncs_per_step(attack, model, x, y) -> float:
    """Host syncs per query step: the difference between the counts of two budgets, so that the one-off syncs (the
    checks of the inputs, the audit of the result) drop out."""
    counts = []
    for queries in (11, 31):
        with HostSyncCounter() as syncs:
            dataclasses.replace(attack, queries=queries)(TimedNeverSucceeds(as_objective(model, "margin")), x, y)
        counts.append(syncs.count)
    return (counts[1] - counts[0]) / 20


def speed_table(model, x, y, args):
    print(f"\n## Cost of one Sparse-RS query step vs one forward pass (digits CNN, batch {len(y)}, "
          f"{torch.get_num_threads()} thread, {args.steps} queries per sample, fastest of {args.rounds} runs)\n")
    print("The forward pass (logits and margin loss of the batch) is timed inside the same run, query by query, so "
          "that the ratio holds on a machine shared with other work.\n")
    print("| attack | forward (ms) | query step (ms) | ratio | host syncs per step |")
    print("|---|---:|---:|---:|---:|")
    attacks = [(f"pixels, k={k}", SparseRS(k=k, queries=args.steps)) for k in (1, 4, 20)]
    attacks += [("2x2 kernel, stride 1, k=4", SparseRS(k=4, queries=args.steps, kernel=kernels.square(2))),
                ("patch, k=16", SparseRS(k=16, queries=args.steps, mode="patch")),
                ("pixels, k=4, check_every=8", SparseRS(k=4, queries=args.steps, check_every=8))]
    for name, attack in attacks:
        runs = []
        for _ in range(args.rounds):
            objective = TimedNeverSucceeds(as_objective(model, "margin"))
            start = time.perf_counter()
            attack(objective, x, y)  # every sample spends all its queries, one forward pass each
            runs.append((time.perf_counter() - start, objective.seconds))
        total, forward = min(runs)
        print(f"| {name} | {forward / args.steps * 1e3:.1f} | {total / args.steps * 1e3:.1f} | "
              f"{total / forward:.2f} | {syncs_per_step(attack, model, x, y):.2f} |", flush=True)


def strength_table(model, x, y, args):
    marks = [q for q in (10, 100, 1000, 10000) if q <= max(args.budgets)]
    print(f"\n## Sparse-RS on the digits CNN ({len(y)} test images, clean accuracy "
          f"{(model(x).argmax(1) == y).float().mean().item():.4f})\n")
    print("| k | budget | " + " | ".join(f"robust @ {q}" for q in marks)
          + " | median queries (fooled) | queries/s | seconds |")
    print("|---:|---:|" + "---:|" * (len(marks) + 3))
    for k in range(1, 5):
        for budget in args.budgets:
            start = time.perf_counter()
            result = SparseRS(k=k, queries=budget)(model, x, y)
            seconds = time.perf_counter() - start
            fooled = result.iterations[result.success].float()
            cells = [f"{1 - (result.success & (result.iterations <= q)).float().mean().item():.2f}"
                     if q <= budget else "" for q in marks]
            median = f"{fooled.median().item():.0f}" if len(fooled) else "-"
            rate = result.iterations.sum().item() / seconds
            print(f"| {k} | {budget} | " + " | ".join(cells) + f" | {median} | {rate:.0f} | {seconds:.1f} |",
                  flush=True)


def cascade_table(model, x, y, args):
    print(f"\n## Sparse-AutoAttack on the digits CNN ({len(y)} test images): robust accuracy after each stage\n")
    print("| k | version | clean | sPGD unprojected | + sPGD projected | + Sparse-RS | seconds |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    runs = [(k, "fast") for k in range(1, 5)] + [(k, "standard") for k in args.standard]
    for k, version in runs:
        start = time.perf_counter()
        result = SparseAutoAttack(k=k, version=version)(model, x, y)
        seconds = time.perf_counter() - start
        cells = " | ".join(f"{a:.2f}" for a in result.robust_accuracy_per_stage)
        print(f"| {k} | {version} | {cells} | {seconds:.1f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--samples", type=int, default=100, help="digits test images attacked")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 10000], help="query budgets of table 2")
    parser.add_argument("--standard", type=int, nargs="*", default=[2], help="k of the 'standard' sAA runs")
    parser.add_argument("--batch", type=int, default=300, help="batch of the speed table")
    parser.add_argument("--steps", type=int, default=200, help="query steps timed per row of the speed table")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per row of the speed table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.samples, args.budgets, args.standard, args.steps, args.rounds = 50, [100, 1000], [], 30, 1
    model, _ = train_digits_cnn()
    model.requires_grad_(False)
    (_, _), (x_test, y_test) = digits_split()
    speed_table(model, x_test[: args.batch], y_test[: args.batch], args)
    x, y = x_test[: args.samples], y_test[: args.samples]
    strength_table(model, x, y, args)
    cascade_table(model, x, y, args)


if __name__ == "__main__":
    main()
