"""The sparse adversarial training run behind ``evaluation/train_sparse_adversarial.py`` (its flags and the
layout of ``output_dir``: that script's docstring).
"""


from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from hf_sparse_attack import tasks
from hf_sparse_attack.rng import sample_seed
from hf_sparse_attack.tasks.loading import WrongTaskError
from hf_sparse_attack.training import SparseAdversarialTraining

from .batch import load_samples, prepare_batch
from .command_line import UsageError
from .data import Columns, DataError, EvalDataset, load_hf
from .device_flags import torch_dtype
from .processes import check_shared_dir, setup, start_logging
from .records import (
    RESULTS_FILE,
    RunDirectory,
    atomic_write,
    guard_output_dir,
    remove,
    remove_outputs,
    write_json,
)

STATE_DIR = "training_state"  # accelerate's state (optimizer, scheduler, RNG) inside a checkpoint directory
TRAINER_STATE = "trainer_state.json"  # the step reached and the per-step history
CURVES_FILE = "training_curves.png"
CHECKPOINT = re.compile(r"step_\d+")
#: What a training writes in ``output_dir``: what ``--overwrite`` removes (nothing else in the directory is touched).
#: Besides these names: checkpoints ``step_N``, their temporary directories, and sharded weights.
OUTPUTS = (RESULTS_FILE, TRAINER_STATE, CURVES_FILE, STATE_DIR, "config.json", "preprocessor_config.json",
           "model.safetensors", "model.safetensors.index.json")
OUTPUT_PATTERN = re.compile(r"step_\d+|\.step_\d+(\.old)?\.tmp|model-\d+-of-\d+\.safetensors")

logger = get_logger(__name__)


def check_args(args: argparse.Namespace) -> SparseAdversarialTraining:
    """The training configuration of ``args``; :class:`UsageError` for a bad value."""
    for name in ("per_device_train_batch_size", "num_train_epochs", "max_train_steps", "max_train_samples",
                 "checkpointing_steps", "num_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value}")
    schedulers = [t.value for t in SchedulerType]
    if args.lr_scheduler_type not in schedulers:
        raise UsageError(f"--lr_scheduler_type {args.lr_scheduler_type!r} is not one of {', '.join(schedulers)}")
    if args.num_warmup_steps < 0:
        raise UsageError(f"--num_warmup_steps must be >= 0, got {args.num_warmup_steps}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise UsageError(f"--learning_rate must be a finite number > 0, got {args.learning_rate}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UsageError(f"--weight_decay must be a finite number >= 0, got {args.weight_decay}")
    if Path(args.output_dir).resolve() == Path(args.model_name_or_path).resolve():
        raise UsageError("--output_dir must not be the --model_name_or_path directory")
    try:
        return SparseAdversarialTraining(k=args.k, steps=args.steps, patience=args.patience, loss=args.loss,
                                         beta=args.beta, gradient=args.gradient, seed=args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None


def load_batch(objective: Any, dataset: EvalDataset, positions: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels, labels and sample ids of ``positions``; a sample that cannot be used is skipped with a warning."""
    samples, skipped = load_samples(dataset, positions)
    samples, x, y, rejected = prepare_batch(objective, samples, lambda sample: sample.annotation)
    for record in skipped + rejected:
        logger.warning("skipping sample %s: %s", record["id"], record["skipped"], main_process_only=False)
    if not samples:
        raise DataError(f"no usable sample in the batch of dataset positions {positions}")
    return x, y, torch.tensor([sample.id for sample in samples])


class PixelClassifier(nn.Module):
    """A Hugging Face classifier on pixels in ``[0, 1]``: normalises as its processor would, returns the logits."""

    def __init__(self, model: nn.Module, normalize: Any) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=self.normalize(x)).logits


class EpochShuffle(Sampler):
    """A permutation of ``range(n)`` seeded by ``(seed, epoch)``: an epoch's order never depends on the history.

    Set ``epoch`` before iterating. (No ``set_epoch`` method on purpose: accelerate would call it with its own
    count of iterations, which restarts at 0 when a run resumes.)
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=gen).tolist())


def previous_outputs(output_dir: Path) -> list[Path]:
    """The outputs of a previous training in ``output_dir`` (see :data:`OUTPUTS`), sorted by name.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> for name in ("notes.txt", "all_results.json", "step_2/", ".step_4.tmp/", "step_x/"):
    ...     (out / name).mkdir() if name.endswith("/") else (out / name).touch()
    >>> [p.name for p in previous_outputs(out)]
    ['.step_4.tmp', 'all_results.json', 'step_2']
    """
    return sorted(p for p in output_dir.iterdir() if p.name in OUTPUTS or OUTPUT_PATTERN.fullmatch(p.name))


def open_output_dir(accelerator: Any, args: argparse.Namespace) -> list[Path]:
    """Every process: refuse an output directory holding a previous training's outputs (unless resuming or
    ``--overwrite``) and probe that it is writable with free space; returns those outputs (for
    :func:`remove_previous`). :class:`OutputDirError` for a directory that cannot be used."""
    output_dir = Path(args.output_dir)

    def refusal(found: list[Path]) -> str:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        return (f"holds the outputs of a previous training ({names}); pass --overwrite to replace them or "
                "--resume_from_checkpoint latest to continue it")

    previous = guard_output_dir(output_dir, previous_outputs, bool(args.overwrite or args.resume_from_checkpoint),
                                refusal)
    accelerator.wait_for_everyone()  # every process has looked before anything is removed
    RunDirectory(output_dir, {}).probe()
    check_shared_dir(accelerator, output_dir)
    return previous


def remove_previous(accelerator: Any, previous: list[Path]) -> None:
    """Main process, under ``--overwrite``: remove a previous training's outputs (once every check has passed)."""
    if accelerator.is_main_process:
        remove_outputs(previous)
    accelerator.wait_for_everyone()


def checkpoint_path(output_dir: Path, spec: str) -> Path:
    """The checkpoint ``spec`` names: a directory, or ``latest`` (the highest ``step_N`` in ``output_dir``; the
    temporary directory of a checkpoint cut short is not one)."""
    if spec == "latest":
        found = [(int(p.name[5:]), p) for p in output_dir.glob("step_*")
                 if CHECKPOINT.fullmatch(p.name) and (p / STATE_DIR).is_dir()]
        if not found:
            raise UsageError(f"--resume_from_checkpoint latest: no checkpoint step_N in {output_dir}")
        return max(found)[1]
    path = Path(spec)
    if not (path / STATE_DIR).is_dir() or not (path / TRAINER_STATE).is_file():
        raise UsageError(f"{spec} is not a checkpoint of this script (no {STATE_DIR}/ and {TRAINER_STATE} in it)")
    return path


def save_training(accelerator: Any, model: nn.Module, processor: Any, directory: Path, state: dict) -> None:
    """Every process: ``save_pretrained`` of the model and processor, accelerate's training state (collective),
    and ``trainer_state.json``."""
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).model.save_pretrained(directory, save_function=accelerator.save)
        processor.save_pretrained(directory)
    accelerator.save_state(str(directory / STATE_DIR))
    if accelerator.is_main_process:
        write_json(directory / TRAINER_STATE, state)
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Any, model: nn.Module, processor: Any, output_dir: Path, state: dict) -> None:
    """Every process: the checkpoint ``output_dir/step_N`` (see :func:`save_training`), written into
    ``.step_N.tmp`` and renamed once complete; a ``step_N`` of an earlier run is replaced."""
    name = f"step_{state['step']}"
    directory, tmp, old = output_dir / name, output_dir / f".{name}.tmp", output_dir / f".{name}.old.tmp"
    if accelerator.is_main_process:  # left by a run killed while saving
        remove(tmp)
        remove(old)
    accelerator.wait_for_everyone()
    save_training(accelerator, model, processor, tmp, state)
    if accelerator.is_main_process:
        if directory.exists():
            os.replace(directory, old)  # never a partly removed step_N
        os.replace(tmp, directory)
        remove(old)
    accelerator.wait_for_everyone()


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values (fewer at the start).

    >>> moving_average([1.0, 3.0, 5.0, 7.0], 2)
    [1.0, 2.0, 4.0, 6.0]
    """
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and clean / adversarial training accuracy per step (moving average over 2% of the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    window = max(1, len(history) // 50)
    curve = lambda key: moving_average([h[key] for h in history], window)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(steps, curve("loss"), color="tab:red")
    left.set(xlabel="step", ylabel="training loss", title="loss")
    right.plot(steps, curve("clean_accuracy"), label="clean")
    right.plot(steps, curve("adversarial_accuracy"), label="adversarial (training attack)")
    right.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="training batches (eval mode, before the step)")
    right.legend()
    fig.suptitle(f"moving average over {window} step(s)" if window > 1 else "")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def train(args: argparse.Namespace) -> dict:
    """Train as ``args`` say (see the module docstring); the results, also in ``output_dir/all_results.json``."""
    training = check_args(args)
    try:
        tasks.check_model(args.model_name_or_path, task="classification", trust_remote_code=args.trust_remote_code)
    except WrongTaskError as err:
        raise UsageError(f"sparse adversarial training takes image classifiers; {err}") from None
    accelerator = setup(args, training=True)
    output_dir = Path(args.output_dir)
    previous = open_output_dir(accelerator, args)
    resume_from = checkpoint_path(output_dir, args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    columns = Columns(image=args.image_column_name, label=args.label_column_name)
    dataset = load_hf("classification", args.dataset_name, args.dataset_split, args.dataset_config_name, columns,
                      args.max_train_samples, args.cache_dir)
    if args.overwrite:
        remove_previous(accelerator, previous)
    start_logging()
    objective = tasks.load_task(args.model_name_or_path, task="classification", device=accelerator.device,
                                dtype=torch_dtype(args), trust_remote_code=args.trust_remote_code)
    objective.model.requires_grad_(True)  # load_task freezes the parameters for attacks
    model = PixelClassifier(objective.model, objective.normalize)

    sampler = EpochShuffle(len(dataset), args.seed)
    # The loader has a generator of its own: starting an epoch then draws nothing from the global RNG (dropout's,
    # saved in checkpoints), so a resumed run makes the same draws as an uninterrupted one.
    loader = DataLoader(range(len(dataset)), batch_size=args.per_device_train_batch_size, sampler=sampler,
                        collate_fn=lambda positions: load_batch(objective, dataset, positions),
                        generator=torch.Generator())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = len(loader)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    # Not prepared: accelerate would step it once per process at every step.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps,
                              num_training_steps=max_steps)
    accelerator.register_for_checkpointing(scheduler)

    step, history = 0, []
    if resume_from is None:
        set_seed(args.seed, device_specific=True)  # the processes draw different dropout masks
    else:
        accelerator.load_state(str(resume_from / STATE_DIR))
        saved = json.loads((resume_from / TRAINER_STATE).read_text())
        step, history = saved["step"], saved["history"]
        logger.info("resumed from %s at step %d", resume_from, step)
    logger.info("%s; %d images, %d process(es), %d steps per epoch, %d steps; device %s, weights %s, mixed "
                "precision %s", training, len(dataset), accelerator.num_processes, steps_per_epoch, max_steps,
                accelerator.device, args.torch_dtype, args.mixed_precision)

    attacked = accelerator.unwrap_model(model)  # the attack's forward passes must not reach the DDP wrapper
    bar = tqdm(total=max_steps, initial=step, desc="training", disable=not accelerator.is_local_main_process)
    with bar as progress:  # closed before an error is reported, so that the error is the last line
        model.train()
        for epoch in range(step // steps_per_epoch, math.ceil(max_steps / steps_per_epoch)):
            sampler.epoch = epoch
            done = step - epoch * steps_per_epoch
            for x, y, ids in accelerator.skip_first_batches(loader, done) if done else loader:
                if step >= max_steps:
                    break
                out = training(model, x, y, step, ids=ids.tolist(), attack_model=attacked)
                accelerator.backward(out.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                counts = torch.stack((out.loss.detach() * len(y), out.clean_correct.sum(),
                                      out.adversarial_correct.sum(), torch.tensor(len(y), device=y.device))).float()
                loss, clean, adversarial, n = accelerator.reduce(counts, reduction="sum").tolist()
                step += 1
                history.append({"step": step, "loss": loss / n, "clean_accuracy": clean / n,
                                "adversarial_accuracy": adversarial / n,
                                "learning_rate": scheduler.get_last_lr()[0]})
                progress.update(1)
                progress.set_postfix(loss=f"{loss / n:.4f}", clean=f"{clean / n:.3f}",
                                     adv=f"{adversarial / n:.3f}")
                if args.checkpointing_steps and step % args.checkpointing_steps == 0 and step < max_steps:
                    save_checkpoint(accelerator, model, objective.processor, output_dir,
                                    {"step": step, "history": history})

    if accelerator.is_main_process:  # an earlier run's, until this run's final save is complete
        remove(output_dir / RESULTS_FILE)
    save_training(accelerator, model, objective.processor, output_dir, {"step": step, "history": history})
    results = {
        "model_name_or_path": args.model_name_or_path,
        "training": dataclasses.asdict(training),
        "dataset": dataset.description,
        "train_images": len(dataset),
        "num_processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "torch_dtype": args.torch_dtype,
        "mixed_precision": args.mixed_precision,
        "steps": step,
        "resumed_from": None if resume_from is None else str(resume_from),
        "final": history[-1] if history else None,
        "settings": vars(args),
    }
    if accelerator.is_main_process:
        plot_curves(history, output_dir / CURVES_FILE)
        write_json(output_dir / RESULTS_FILE, results)  # last: it marks the training as finished
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results
