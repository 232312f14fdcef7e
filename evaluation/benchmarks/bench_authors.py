"""Our Sparse-PGD against the authors' published code (CityU-MLO/sPGD, ``autoattack/spgd.py``), side by side on
the scikit-learn digits test split.

    python evaluation/benchmarks/bench_authors.py --authors_code DIR           # full table (about 35 minutes)
    python evaluation/benchmarks/bench_authors.py --authors_code DIR --quick   # a smoke run (under a minute)
    python evaluation/benchmarks/bench_authors.py                              # our columns only

DIR is a folder holding their ``spgd.py`` (``git show HEAD:autoattack/spgd.py`` of their repository); it is imported
from there, never copied into this repository. Their file imports ``skimage.util.random_noise`` without using it in
the attack: install scikit-image, or put a stub ``skimage/util.py`` (``random_noise = None``) in DIR.

Models: the standard digits CNN (:func:`evaluation.testdata.digits.train_digits_cnn`) and the same CNN trained with
our sAT at k=2 (:func:`evaluation.benchmarks.bench_training.train`, 40 epochs, about 2 minutes). Both attacks get
the same hyper-parameters (epsilon 1, alpha 0.25, beta 0.25, patience 3, CE loss) and the same seeds: ours ``seed=s``, theirs
``torch.manual_seed(s)`` before the call, run alternately per seed. A cell is the median over the seeds of the robust
accuracy (correct on the clean image and not fooled, over all test images; theirs is judged by classifying their
returned images), with the seeds' range in brackets. "ours" uses ``quantize=False`` like theirs (no 8-bit rounding);
"ours 8-bit" is our default ``quantize=True``. Seconds are medians of the whole call, on one CPU thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.evaluation.benchmarks.bench_training import train
from hf_sparse_attack.evaluation.testdata.digits import digits_split, train_digits_cnn
from hf_sparse_attack.training import SparseAdversarialTraining


def load_authors(folder: str):
    """Import the authors' ``spgd.py`` from ``folder`` (which may also hold the ``skimage`` stub)."""
    path = Path(folder) / "spgd.py"
    if not path.is_file():
        raise SystemExit(f"--authors_code: no spgd.py in {folder}")
    sys.path.append(str(path.parent))  # after site-packages: a real scikit-image wins over a stub
    spec = importlib.util.spec_from_file_location("authors_spgd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ours(model, x, y, k, steps, unprojected, seed, quantize):
    result = SparsePGD(k=k, steps=steps, unprojected=unprojected, seed=seed, quantize=quantize)(model, x, y)
    return 1 - result.success.float().mean().item()


def theirs(module, model, x, y, k, steps, unprojected, seed):
    attack = module.SparsePGD(model, epsilon=1, k=k, t=steps, patience=3, classes=10, alpha=0.25, beta=0.25,
                              unprojected_gradient=unprojected)
    torch.manual_seed(seed)
    x_adv, _, _ = attack(x, y)  # their accuracy vector covers only the samples still attacked at the end
    l0 = (x_adv != x).flatten(1).sum(1)  # one channel: pixels
    assert int(l0.max()) <= k and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1, "authors' budget broken"
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def cell(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.median(values):.4f} [{min(values):.3f}, {max(values):.3f}]"


def row(authors, model, x, y, k, steps, unprojected, seeds) -> list[str]:
    """The cells of one setting. Ours and theirs alternate per seed, so that load on a shared machine hits both
    alike."""
    robust, seconds = defaultdict(list), defaultdict(list)
    for seed in seeds:
        setting = (model, x, y, k, steps, unprojected, seed)
        runs = {"ours": partial(ours, *setting, quantize=False)}
        if authors is not None:
            runs["theirs"] = partial(theirs, authors, *setting)
        runs["ours 8-bit"] = partial(ours, *setting, quantize=True)
        for key, run in runs.items():
            start = time.perf_counter()
            robust[key].append(run())
            seconds[key].append(time.perf_counter() - start)
    cells = [cell(robust["ours"])]
    if authors is not None:
        gap = statistics.median(robust["ours"]) - statistics.median(robust["theirs"])
        cells += [cell(robust["theirs"]), f"{round(gap, 4) + 0.0:+.4f}"]
    cells.append(cell(robust["ours 8-bit"]))
    return cells + [f"{statistics.median(seconds[key]):.1f}" for key in ("ours", "theirs") if key in seconds]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors_code", help="folder with the authors' spgd.py (without it: our columns only)")
    parser.add_argument("--samples", type=int, default=449, help="digits test images attacked")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--epochs", type=int, default=40, help="sAT training epochs")
    parser.add_argument("--quick", action="store_true", help="k=2, 20 steps, 50 images, one seed, 2 sAT epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    budgets = {"standard": [1, 2, 3], "sAT (k=2)": [2, 3]}
    if args.quick:
        args.samples, args.seeds, args.steps, args.epochs = 50, [0], [20], 2
        budgets = {name: [2] for name in budgets}
    authors = load_authors(args.authors_code) if args.authors_code else None

    _, (x, y) = digits_split()
    x, y = x[: args.samples], y[: args.samples]
    start = time.perf_counter()
    models = {"standard": train_digits_cnn()[0],
              "sAT (k=2)": train(SparseAdversarialTraining(k=2, steps=20, loss="sat"), args.epochs)[0]}
    versus = ", ours vs the authors' code" if authors is not None else ""
    print(f"\n## Sparse-PGD{versus}: robust accuracy on {len(y)} digits test images, "
          f"seeds {args.seeds}, {torch.get_num_threads()} CPU thread(s)\n")
    for name, model in models.items():
        model.requires_grad_(False)  # their code calls backward(): no parameter gradients for either attack
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        print(f"- {name}: clean accuracy {clean:.4f}")
    print(f"- models trained in {time.perf_counter() - start:.0f} s\n")

    columns = ["ours", "theirs", "ours - theirs", "ours 8-bit", "ours (s)", "theirs (s)"]
    if authors is None:
        columns = ["ours", "ours 8-bit", "ours (s)"]
    print("| model | k | steps | gradient | " + " | ".join(columns) + " |")
    print("|---|---:|---:|---|" + "---:|" * len(columns))
    for name, model in models.items():
        for k in budgets[name]:
            for steps in args.steps:
                for unprojected in (True, False):
                    cells = row(authors, model, x, y, k, steps, unprojected, args.seeds)
                    gradient = "unprojected" if unprojected else "projected"
                    print(f"| {name} | {k} | {steps} | {gradient} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
