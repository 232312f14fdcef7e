"""Wall time of our attacks against the authors' published code, at equal steps, on the digits CNN (CPU, 1 thread).

    python evaluation/benchmarks/bench_speed.py --authors_code DIR             # k=2, 100 steps, 297 images, 7 rounds
    python evaluation/benchmarks/bench_speed.py --authors_code DIR --quick     # a smoke run (seconds)

DIR holds the authors' ``spgd.py`` (see :mod:`evaluation.benchmarks.bench_authors` for where it comes from and the
``skimage`` stub it needs). Each row times one attack setting on the same images, as one batch (as the authors' code
takes it), with the same hyper-parameters and seeds; rounds alternate ours, theirs, ours, theirs ... so that load on
a shared machine hits both alike, and the table reports the medians. "ours" runs with ``quantize=False`` like theirs.
"model alone" replays the model's forward (and backward) passes of our run, at the same batch sizes, with nothing
else: no attack at equal steps can take less, and theirs over it bounds the ratio any attack could reach.
The model's parameters are frozen (``requires_grad_(False)``): their code calls ``backward()``, which would otherwise
also compute parameter gradients (``--trainable`` measures that case too).

Each attack contributes its rows through one function of :data:`ROWS` (name -> function returning its rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.evaluation.benchmarks.bench_authors import load_authors
from hf_sparse_attack.evaluation.testdata.digits import digits_split, train_digits_cnn


def train_digits_linear(epochs: int = 30, seed: int = 0) -> torch.nn.Module:
    """Softmax regression on the digits (about 95% test accuracy): a model so cheap that the attack's own work
    dominates."""
    (x, y), _ = digits_split()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


MODELS: dict[str, Callable[[], torch.nn.Module]] = {"cnn": lambda: train_digits_cnn()[0], "linear": train_digits_linear}


@dataclass(frozen=True)
class Row:
    """One line of the table: an attack setting, our call and theirs (``None`` without their code)."""

    attack: str
    setting: str
    ours: Callable[[], object]
    theirs: Callable[[], object] | None


def model_alone(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, run: Callable[[], object]):
    """A function replaying the model's passes of ``run()`` on ``x, y``: the same batch sizes, a backward pass to
    the input where the run had one.

    >>> model = torch.nn.Linear(4, 2)
    >>> x, y = torch.rand(3, 4), torch.tensor([0, 1, 0])
    >>> replay = model_alone(model, x, y, lambda: model(x[:2]))
    >>> replay()  # one forward pass of 2 images, no backward
    """
    passes = []
    hook = model.register_forward_pre_hook(lambda _, args: passes.append((len(args[0]), args[0].requires_grad)))
    try:
        run()
    finally:
        hook.remove()

    def replay():
        for n, backward in passes:
            leaf = x[:n].clone().requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                loss = torch.nn.functional.cross_entropy(model(leaf), y[:n], reduction="none")
                if backward:
                    torch.autograd.grad(loss.sum(), leaf)

    return replay


def spgd_rows(args: argparse.Namespace, authors, model, x, y) -> list[Row]:
    """Sparse-PGD, unprojected and projected gradient, against the authors' ``SparsePGD`` (module ``authors``).

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    >>> rows = spgd_rows(argparse.Namespace(k=2, steps=5, seed=0), None, model, x, y)
    >>> [row.setting for row in rows], bool((rows[0].ours().l0 <= 2).all())
    (['unprojected, k=2, 5 steps', 'projected, k=2, 5 steps'], True)
    """
    rows = []
    for unprojected in (True, False):
        ours = SparsePGD(k=args.k, steps=args.steps, unprojected=unprojected, seed=args.seed, quantize=False)

        def theirs(unprojected=unprojected):
            attack = authors.SparsePGD(model, epsilon=1, k=args.k, t=args.steps, patience=3, classes=10, alpha=0.25,
                                       beta=0.25, unprojected_gradient=unprojected)
            torch.manual_seed(args.seed)
            return attack(x, y)

        setting = f"{'unprojected' if unprojected else 'projected'}, k={args.k}, {args.steps} steps"
        rows.append(Row("sPGD", setting, lambda ours=ours: ours(model, x, y), theirs if authors else None))
    return rows


ROWS: dict[str, Callable[..., list[Row]]] = {"spgd": spgd_rows}


def seconds(run: Callable[[], object]) -> float:
    """Wall time of one call of ``run``."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def time_runs(runs: list[Callable[[], object]], rounds: int) -> list[float]:
    """Median seconds of each run over ``rounds`` interleaved rounds, after one untimed warm-up each.

    >>> [t < 1 for t in time_runs([lambda: None, lambda: sum(range(10))], rounds=3)]
    [True, True]
    """
    for run in runs:
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for spent, run in zip(times, runs):
            spent.append(seconds(run))
    return [statistics.median(spent) for spent in times]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors_code", help="folder with the authors' spgd.py (without it: our column only)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds per row")
    parser.add_argument("--samples", type=int, default=297, help="digits test images, one batch")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--model", default="cnn", choices=list(MODELS), help="the digits CNN or softmax regression")
    parser.add_argument("--trainable", action="store_true", help="keep the model's parameters trainable")
    parser.add_argument("--quick", action="store_true", help="50 images, 20 steps, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.steps, args.rounds = 50, 20, 3
    torch.set_num_threads(1)
    authors = load_authors(args.authors_code) if args.authors_code else None
    model = MODELS[args.model]().requires_grad_(args.trainable)
    _, (x, y) = digits_split()
    x, y = x[: args.samples], y[: args.samples]

    load = os.getloadavg()[0]
    print(f"\n## Wall time at equal steps: digits {args.model}, {len(y)} test images, one batch, "
          f"{torch.get_num_threads()} CPU thread, medians of {args.rounds} interleaved rounds, parameters {'trainable' if args.trainable else 'frozen'}"
          f", torch {torch.__version__}\n")
    print("| attack | setting | ours (s) | theirs (s) | theirs / ours | model alone (s) | theirs / model alone |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.attacks:
        for row in ROWS[name](args, authors, model, x, y):
            runs = [row.ours, model_alone(model, x, y, row.ours)] + ([row.theirs] if row.theirs else [])
            ours, alone, *theirs = time_runs(runs, args.rounds)
            versus = [f"{theirs[0]:.3f}", f"{theirs[0] / ours:.2f}"] if theirs else ["-", "-"]
            bound = f"{theirs[0] / alone:.2f}" if theirs else "-"
            print(f"| {row.attack} | {row.setting} | {ours:.3f} | " + " | ".join(versus) + f" | {alone:.3f} | {bound} |",
                  flush=True)
    print(f"\nLoad average (1 min) {load:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
