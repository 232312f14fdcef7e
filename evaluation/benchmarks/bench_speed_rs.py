"""Our Sparse-RS against the authors' published code (fra31/sparse-rs, ``rs_attacks.py``, ``RSAttack`` with
``norm='L0'``): time and robust accuracy at equal queries on the digits CNN, on one CPU thread.

    python evaluation/benchmarks/bench_speed_rs.py --authors_code DIR            # full table (about 5 minutes)
    python evaluation/benchmarks/bench_speed_rs.py --authors_code DIR --quick    # a smoke run (under a minute)
    python evaluation/benchmarks/bench_speed_rs.py                               # our columns only
    python evaluation/benchmarks/bench_speed_rs.py --authors_code DIR --model linear   # softmax regression

DIR is a folder holding their ``rs_attacks.py`` and ``utils.py`` (``git show HEAD:rs_attacks.py`` and
``HEAD:utils.py`` of their repository); they are imported from there, never copied into this repository. They run
unchanged on CPU (``device`` is the images' device).

Both attacks get the same images (the first ``--samples`` of the digits test split), the same budget ``k`` in
pixels (their L0 ``eps``: a perturbed pixel takes a corner colour on all its channels, as ours), the margin loss,
``p_init`` 0.8 and the same number of model evaluations per sample: their ``n_queries=Q`` is Q candidates after
their (uncounted) clean check, our ``queries=Q + 1`` counts the clean check as a query. Rounds alternate ours and
theirs (ours, theirs, ours, theirs, ...), round ``r`` with seed ``r`` for both (ours ``seed=r``, theirs
``RSAttack(seed=r)``); a cell is the median over the rounds. Robust accuracy is judged alike for both: the model's
prediction on the returned images equals the label. "in the model" is the part of the time spent in the model's
forward passes, the same work for both: no implementation of the search can be faster than that. ``--model linear``
(softmax regression on the digits) makes the model nearly free, so the table then compares the searches themselves.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from hf_sparse_attack.evaluation.benchmarks.bench_speed import MODELS
from hf_sparse_attack.evaluation.testdata.digits import digits_split
from hf_sparse_attack.rs import SparseRS


class TimedModel(nn.Module):
    """The model, with the seconds spent in its forward passes.

    >>> timed = TimedModel(nn.Identity())
    >>> timed(torch.zeros(1)).tolist(), timed.seconds > 0
    ([0.0], True)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seconds = model, 0.0

    def forward(self, x):
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        return out


def load_authors(folder: str):
    """Import the authors' ``rs_attacks.py`` from ``folder`` (with their ``utils.py`` beside it)."""
    path = Path(folder) / "rs_attacks.py"
    if not path.is_file() or not (path.parent / "utils.py").is_file():
        raise SystemExit(f"--authors_code: no rs_attacks.py and utils.py in {folder}")
    sys.path.insert(0, str(path.parent))  # their ``from utils import Logger``
    try:
        spec = importlib.util.spec_from_file_location("authors_rs_attacks", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def robust_accuracy(model: nn.Module, adversarial, y) -> float:
    """Fraction of the images the model still classifies as their label.

    >>> robust_accuracy(nn.Identity(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
    0.5
    """
    with torch.no_grad():
        return (model(adversarial).argmax(1) == y).float().mean().item()


def ours(model, x, y, k: int, queries: int, seed: int):
    """``(adversarial images, seconds, seconds in the model)`` of our Sparse-RS."""
    timed = TimedModel(model)
    start = time.perf_counter()
    result = SparseRS(k=k, queries=queries + 1, p_init=0.8, loss="margin", seed=seed)(timed, x, y)
    return result.adversarial, time.perf_counter() - start, timed.seconds


def theirs(module, model, x, y, k: int, queries: int, seed: int):
    """``(adversarial images, seconds, seconds in the model)`` of the authors' L0 Sparse-RS."""
    timed = TimedModel(model)
    start = time.perf_counter()
    attack = module.RSAttack(timed, norm="L0", eps=k, n_queries=queries, p_init=0.8, loss="margin", seed=seed,
                             verbose=False, device=x.device)
    _, adversarial = attack.perturb(x, y)
    seconds = time.perf_counter() - start
    l0 = (adversarial != x).any(1).flatten(1).sum(1)
    if int(l0.max()) > k or float(adversarial.min()) < 0 or float(adversarial.max()) > 1:
        raise AssertionError("the authors' result breaks the budget or the box")
    return adversarial, seconds, timed.seconds


def row(authors, model, x, y, k: int, queries: int, rounds: int) -> list[str]:
    """The cells of one setting: median seconds (total and in the model) and robust accuracy per attack."""
    runs = {"ours": ours} if authors is None else {"ours": ours, "theirs": lambda *a: theirs(authors, *a)}
    cells = {name: {"seconds": [], "model": [], "robust": []} for name in runs}
    for seed in range(rounds):
        for name, run in runs.items():  # interleaved: load on a shared machine hits both alike
            adversarial, seconds, in_model = run(model, x, y, k, queries, seed)
            for key, value in (("seconds", seconds), ("model", in_model),
                               ("robust", robust_accuracy(model, adversarial, y))):
                cells[name][key].append(value)
    median = {name: {key: statistics.median(v) for key, v in c.items()} for name, c in cells.items()}
    if authors is None:
        return [f"{median['ours']['seconds']:.2f}", f"{median['ours']['model']:.2f}", f"{median['ours']['robust']:.4f}"]
    ratio = median["ours"]["seconds"] / median["theirs"]["seconds"]
    return [f"{median['ours']['seconds']:.2f}", f"{median['theirs']['seconds']:.2f}", f"{ratio:.3f} ({1 / ratio:.1f}x)",
            f"{median['ours']['model']:.2f}", f"{median['theirs']['model']:.2f}",
            f"{median['ours']['robust']:.4f}", f"{median['theirs']['robust']:.4f}"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors_code", help="folder with the authors' rs_attacks.py and utils.py")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (seeds 0..rounds-1)")
    parser.add_argument("--samples", type=int, default=297, help="digits test images attacked")
    parser.add_argument("--queries", type=int, default=1000, help="model evaluations per sample after the clean one")
    parser.add_argument("--k", type=int, nargs="+", default=[2], help="budgets in pixels")
    parser.add_argument("--model", default="cnn", choices=list(MODELS), help="the digits CNN or softmax regression")
    parser.add_argument("--quick", action="store_true", help="50 images, 100 queries, 2 rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.samples, args.queries, args.rounds = 50, 100, 2
    authors = load_authors(args.authors_code) if args.authors_code else None
    model = MODELS[args.model]().requires_grad_(False)
    _, (x, y) = digits_split()
    x, y = x[: args.samples], y[: args.samples]
    versus = " vs the authors' code" if authors is not None else ""
    print(f"\n## Sparse-RS (L0 pixels){versus}: digits {args.model}, {len(y)} test images, {args.queries} queries, margin loss, "
          f"median of {args.rounds} interleaved rounds, {torch.get_num_threads()} CPU thread; clean accuracy "
          f"{robust_accuracy(model, x, y):.4f}\n")
    if authors is None:
        columns = ["ours (s)", "ours: in the model (s)", "ours robust"]
    else:
        columns = ["ours (s)", "theirs (s)", "ours / theirs", "ours: in the model (s)", "theirs: in the model (s)",
                   "ours robust", "theirs robust"]
    print("| setting | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for k in args.k:
        cells = row(authors, model, x, y, k, args.queries, args.rounds)
        print(f"| k={k}, {args.queries} queries | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
