"""Sparse adversarial training on real data: the digits CNN trained standard vs sAT vs sTRADES at k=2, then
attacked at k=2 with Sparse-AutoAttack on the 449 held-out images.

    python evaluation/benchmarks/bench_training.py                    # about 10 minutes on one CPU thread
    python evaluation/benchmarks/bench_training.py --version standard # the authors' 10000-step cascade (slow)
    python evaluation/benchmarks/bench_training.py --quick            # a smoke run

Every model has the same architecture (:func:`evaluation.testdata.digits.digits_cnn`), initialisation, optimiser (Adam,
learning rate 2e-3, batch 64) and number of epochs; sAT and sTRADES attack each batch with sPGD (k=2, 20 steps,
patience 10, projected or unprojected gradient at random per batch) as in the authors' training recipe.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from hf_sparse_attack.evaluation.testdata.digits import digits_cnn, digits_split
from hf_sparse_attack.saa import SparseAutoAttack
from hf_sparse_attack.training import SparseAdversarialTraining


def train(training: SparseAdversarialTraining | None, epochs: int, seed: int = 0, batch_size: int = 64):
    """Train the digits CNN (standard cross-entropy when ``training`` is None); return it in eval mode and the
    seconds it took."""
    (x, y), _ = digits_split()
    torch.manual_seed(seed)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y), generator=order).split(batch_size):
            if training is None:
                loss = F.cross_entropy(model(x[batch]), y[batch])
            else:
                loss = training(model, x[batch], y[batch], step, ids=batch.tolist()).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return model.eval(), time.perf_counter() - start


def evaluate(model, attack: SparseAutoAttack, x, y) -> tuple[float, tuple[float, ...], float]:
    """Clean accuracy, robust accuracy after each stage of the cascade, and the seconds the attack took."""
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    start = time.perf_counter()
    result = attack(model, x, y)
    return clean, result.robust_accuracy_per_stage, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=2, help="budget of training and of the evaluation")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs of every model")
    parser.add_argument("--steps", type=int, default=20, help="sPGD steps per training batch")
    parser.add_argument("--version", default="fast", choices=["fast", "standard"], help="Sparse-AutoAttack preset")
    parser.add_argument("--samples", type=int, default=449, help="held-out images attacked")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 epochs, 50 images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.epochs, args.samples = 2, 50
    _, (x, y) = digits_split()
    x, y = x[: args.samples], y[: args.samples]
    attack = SparseAutoAttack(k=args.k, version=args.version, seed=args.seed)
    runs = {
        "standard": None,
        "sAT": SparseAdversarialTraining(k=args.k, steps=args.steps, loss="sat", seed=args.seed),
        "sTRADES (beta 6)": SparseAdversarialTraining(k=args.k, steps=args.steps, loss="strades", seed=args.seed),
    }
    stages = " | ".join(f"after {s}" for s in ("sPGD unprojected", "sPGD projected", "Sparse-RS"))
    print(f"\n## Digits CNN, {args.epochs} epochs; Sparse-AutoAttack ({args.version}) at k={args.k} on {len(y)} "
          f"held-out images, {torch.get_num_threads()} CPU thread(s)\n")
    print(f"| training | clean accuracy | robust accuracy (sAA) | {stages} | training time (s) | attack time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, training in runs.items():
        model, train_seconds = train(training, args.epochs, args.seed)
        clean, per_stage, attack_seconds = evaluate(model, attack, x, y)
        cells = [f"{clean:.4f}", f"**{per_stage[-1]:.4f}**", *(f"{r:.4f}" for r in per_stage[1:]),
                 f"{train_seconds:.0f}", f"{attack_seconds:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
