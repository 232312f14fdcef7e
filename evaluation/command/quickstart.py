"""Quick start with no network and no GPU: train the digits CNN, then measure its robustness to k-pixel attacks.

    python -m hf_sparse_attack.evaluation.command.quickstart            # about 30 s on one CPU core
    python -m hf_sparse_attack.evaluation.command.quickstart --k 1 2 --steps 300
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.evaluation.testdata.digits import digits_split, train_digits_cnn


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 4], help="pixel budgets to attack with")
    parser.add_argument("--steps", type=int, default=100, help="sPGD iterations per sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    start = time.perf_counter()
    model, accuracy = train_digits_cnn(seed=args.seed)
    (_, _), (x, y) = digits_split()
    print(f"digits CNN trained in {time.perf_counter() - start:.1f} s: clean accuracy {accuracy:.4f} "
          f"on {len(y)} held-out 8x8 images")
    print("| k | robust accuracy (unprojected) | robust accuracy (projected) | mean L0 of successes | time (s) |")
    print("|---:|---:|---:|---:|---:|")
    for k in args.k:
        start = time.perf_counter()
        runs = [SparsePGD(k=k, steps=args.steps, unprojected=u, seed=args.seed)(model, x, y) for u in (True, False)]
        fooled = runs[0].success & (runs[0].iterations > 0)  # not the ones misclassified already
        mean_l0 = runs[0].l0[fooled].float().mean().item() if fooled.any() else float("nan")
        print(f"| {k} | {runs[0].robust_accuracy:.4f} | {runs[1].robust_accuracy:.4f} | {mean_l0:.2f} | "
              f"{time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
