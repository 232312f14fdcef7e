"""What the three training scripts of the embedded models share: arguments, batches, schedule, checkpoints.

Training data is the :mod:`evaluation.testdata.shapes` stream :data:`~evaluation.testdata.shapes.TRAIN_SEED`, an endless
supply of
fresh images: step ``s`` uses samples ``s * batch_size`` to ``(s + 1) * batch_size - 1``, so a run is a function
of its arguments (seeded initialisation, no shuffling state) and resumes exactly from a checkpoint. Threads
default to 1 (on small shared CPUs more threads were measured to be slower, see ENVIRONMENT.md).

>>> [round(learning_rate_factor(s, total=100, warmup=10), 2) for s in (0, 9, 50, 79, 80, 99)]
[0.1, 1.0, 1.0, 1.0, 0.1, 0.1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("hf_sparse_attack.evaluation.embedded")

#: Where the shipped models live.
MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class Recipe:
    """What one embedded model's training is made of; :func:`run_recipe` runs it.

    ``training_batch(step, batch_size)`` gives pixels in ``[0, 1]`` and labels, ``loss(model, pixels, labels)`` the
    loss on normalised pixels, ``quality(objective, n=...)`` held-out metrics of ``objective_class(model,
    processor)``; ``trainable(model, on)`` switches layers that train differently from how they are saved.
    """

    name: str
    steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    build_model: Callable[[], tuple[torch.nn.Module, Any]]
    training_batch: Callable[[int, int], tuple[torch.Tensor, Any]]
    loss: Callable[[torch.nn.Module, torch.Tensor, Any], torch.Tensor]
    quality: Callable[..., dict]
    objective_class: type
    max_grad_norm: float | None = None
    trainable: Callable[[torch.nn.Module, bool], None] | None = None


def base_parser(description: str, recipe: Recipe) -> argparse.ArgumentParser:
    """The flags of a training script, with the recipe's defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output_dir", default=str(MODELS_DIR / recipe.name),
                        help="where save_pretrained writes the model")
    parser.add_argument("--checkpoint_dir", default=f"/tmp/embedded_train/{recipe.name}",
                        help="training checkpoints (resumed from when present) and the log of evaluations")
    parser.add_argument("--max_train_steps", type=int, default=recipe.steps)
    parser.add_argument("--per_device_train_batch_size", type=int, default=recipe.batch_size)
    parser.add_argument("--learning_rate", type=float, default=recipe.learning_rate)
    parser.add_argument("--weight_decay", type=float, default=recipe.weight_decay)
    parser.add_argument("--max_grad_norm", type=float, default=recipe.max_grad_norm, help="gradient clipping")
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--eval_every", type=int, default=500, help="held-out evaluation every N steps (0: never)")
    parser.add_argument("--checkpoint_every", type=int, default=100)
    parser.add_argument("--eval_images", type=int, default=200, help="held-out images of the final evaluation")
    parser.add_argument("--no_resume", action="store_true", help="ignore an existing checkpoint")
    return parser


def run_recipe(recipe: Recipe, description: str, argv: list[str] | None = None) -> dict:
    """Parse the flags, build the model and train it (:func:`train`); returns the training summary."""
    from hf_sparse_attack.tasks.pixels import Normalizer

    args = base_parser(description, recipe).parse_args(argv)
    setup(args)
    model, processor = recipe.build_model()
    if recipe.trainable is not None:
        recipe.trainable(model, True)
    model.requires_grad_(True).train()
    normalize = Normalizer.from_processor(processor)

    def step_loss(step: int) -> torch.Tensor:
        x, labels = recipe.training_batch(step, args.per_device_train_batch_size)
        return recipe.loss(model, normalize(x), labels)

    def evaluate(n: int) -> dict:
        return held_out(recipe.quality, recipe.objective_class, model, processor, n)

    def before_save() -> None:
        if recipe.trainable is not None:
            recipe.trainable(model, False)

    return train(recipe.name, args, model, processor, step_loss, evaluate, before_save)


def setup(args: argparse.Namespace) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def learning_rate_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from ``1/warmup`` over ``warmup`` steps, then 1, then 0.1 from 80% of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 if step >= int(0.8 * total) else 1.0


def label_config(classes) -> dict:
    """The ``id2label`` and ``label2id`` config fields for class names ``classes``.

    >>> label_config(["a", "b"])
    {'id2label': {0: 'a', 1: 'b'}, 'label2id': {'a': 0, 'b': 1}}
    """
    return {"id2label": dict(enumerate(classes)), "label2id": {name: i for i, name in enumerate(classes)}}


def images_to_tensor(images: list) -> torch.Tensor:
    """``(B, 3, H, W)`` float pixels in ``[0, 1]`` from ``(H, W, 3)`` uint8 arrays (what ``prepare`` gives for
    images already at the model's resolution)."""
    import numpy as np

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)


class Checkpointer:
    """Saves ``{model, optimizer, step, elapsed}`` atomically to ``directory/checkpoint.pt`` and appends evaluation
    records to ``directory/log.jsonl``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "checkpoint.pt"

    def load(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
        if not self.path.exists():
            return 0, 0.0
        state = torch.load(self.path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        logger.info("resumed from %s at step %d", self.path, state["step"])
        return int(state["step"]), float(state["elapsed"])

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, elapsed: float) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed}, tmp)
        tmp.replace(self.path)

    def record(self, **fields: Any) -> None:
        with open(self.directory / "log.jsonl", "a") as f:
            f.write(json.dumps(fields) + "\n")


class Timer:
    """Training seconds, excluding evaluations; continues from ``elapsed`` of a resumed checkpoint."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.elapsed, self._start = elapsed, None

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed += time.perf_counter() - self._start


def write_summary(output_dir: str | Path, summary: dict) -> None:
    """``training_summary.json`` next to the weights: arguments, steps, training time, held-out metrics."""
    with open(Path(output_dir) / "training_summary.json", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")


def held_out(quality: Callable, objective_class: type, model: torch.nn.Module, processor: Any, n: int) -> dict:
    """``quality(objective_class(model, processor), n=n)`` in eval mode, back in train mode after."""
    model.eval()
    try:
        return quality(objective_class(model, processor), n=n)
    finally:
        model.train()


def train(name: str, args: argparse.Namespace, model: torch.nn.Module, processor: Any,
          step_loss: Callable[[int], torch.Tensor], evaluate: Callable[[int], dict],
          before_save: Callable[[], None]) -> dict:
    """The shared loop: AdamW with :func:`learning_rate_factor`, checkpoints, held-out evaluations, then
    ``save_pretrained`` of model and processor into ``args.output_dir`` with ``training_summary.json``.

    ``step_loss(step)`` builds that step's batch and returns its loss; ``evaluate(n)`` gives held-out metrics on
    ``n`` images; ``before_save`` prepares the model for saving (after the final evaluation). AdamW's weight decay,
    gradient clipping and the schedule come from ``args``.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    checkpoints = Checkpointer(args.checkpoint_dir)
    step, elapsed = (0, 0.0) if args.no_resume else checkpoints.load(model, optimizer)
    timer = Timer(elapsed)
    logger.info("%s: %.2f M parameters, %d steps", name, sum(p.numel() for p in model.parameters()) / 1e6,
                args.max_train_steps)
    while step < args.max_train_steps:
        with timer:
            for group in optimizer.param_groups:
                group["lr"] = args.learning_rate * learning_rate_factor(step, args.max_train_steps, args.warmup_steps)
            loss = step_loss(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            step += 1
        if step % 20 == 0:
            logger.info("step %d loss %.4f (%.0f s)", step, loss.item(), timer.elapsed)
        if step % args.checkpoint_every == 0 or step == args.max_train_steps:
            checkpoints.save(model, optimizer, step, timer.elapsed)
        if args.eval_every and step % args.eval_every == 0 and step < args.max_train_steps:
            metrics = evaluate(100)
            logger.info("step %d held-out (100 images): %s", step, metrics)
            checkpoints.record(step=step, seconds=timer.elapsed, **metrics)
    metrics = evaluate(args.eval_images)
    logger.info("final held-out (%d images): %s", args.eval_images, metrics)
    checkpoints.record(step=step, seconds=timer.elapsed, final=True, **metrics)
    model.eval()
    before_save()
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    summary = {"model": name, "steps": step, "train_seconds": round(timer.elapsed, 1),
               "threads": args.threads, "arguments": vars(args), "held_out": metrics}
    write_summary(args.output_dir, summary)
    return summary
