"""One batch of an evaluation: the model and data from the flags, the processor's pixels, the attacks, the records."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate.logging import get_logger

from .command_line import UsageError
from .data import BadSample, CocoDataset, Columns, EvalDataset, Sample, load_hf
from .device_flags import torch_dtype
from .labels import class_mapping
from .progress import AttackProgress
from .records import RunDirectory, save_png
from .task_flags import task_options
from .task_spec import TaskSpec, frame_image

logger = get_logger(__name__)


def check_task_model(spec: TaskSpec, name: str, args: argparse.Namespace) -> Any:
    """:func:`tasks.check_model` with the task's options from the flags: a bad model or option is reported before
    anything heavy (no weights are read); a model of another task names the script that evaluates it."""
    from hf_sparse_attack.tasks.loading import WrongTaskError, check_model

    try:
        return check_model(name, task=spec.task, trust_remote_code=args.trust_remote_code, **task_options(args))
    except WrongTaskError as err:
        raise UsageError(f"{err}: evaluate it with evaluation/eval_{err.found}.py, or with hf-sparse-attack eval, "
                         "which picks the script of the model's task") from None


def input_size(checked: Any) -> tuple[int, int] | None:
    """The ``(height, width)`` of the model's input as its processor makes it (a fixed resize or crop); for a
    processor that keeps the aspect ratio (detection), the largest square it can produce; ``None`` if unknown."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(checked.source, local_files_only=checked.offline)
    except (OSError, ValueError):
        return None  # reported with its cause when the model loads
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    edge = size.get("longest_edge") or size.get("shortest_edge")
    return (int(edge), int(edge)) if edge else None


def check_budgets(attacks: list, checked: Any) -> None:
    """Refuse a budget ``k`` larger than the model's input has pixels (or kernel placements), before any data or
    weights load: :class:`UsageError` naming ``k`` and the input size."""
    from hf_sparse_attack.config import build_structure

    size = input_size(checked)
    if size is None:
        return
    for attack in attacks:
        structure = build_structure(attack.kernel, attack.stride, *size) if attack.kernel is not None else None
        positions = structure.grid_shape[0] * structure.grid_shape[1] if structure else size[0] * size[1]
        if attack.k > positions:
            what = "kernel placements" if structure else "pixels"
            raise UsageError(f"--k {attack.k} is more than the {positions} {what} of the model's {size[0]}x{size[1]} "
                             "input")


def load_objective(spec: TaskSpec, name: str, args: argparse.Namespace, device: torch.device):
    """``tasks.load_task`` with the task's options from the flags."""
    from hf_sparse_attack import tasks
    return tasks.load_task(name, task=spec.task, device=device, dtype=torch_dtype(args),
                           trust_remote_code=args.trust_remote_code, **task_options(args))


def load_data(spec: TaskSpec, args: argparse.Namespace, label2id: dict[str, int]) -> EvalDataset:
    """The dataset named by the data flags, its classes in the model's label space ``label2id`` (by name or id:
    ``--category_mapping``, ``--label_mapping``; see :mod:`.labels`)."""
    id2label = {i: name for name, i in label2id.items()}
    if getattr(args, "coco_annotation_file", None):
        return CocoDataset(args.coco_annotation_file, args.coco_image_dir, args.max_eval_samples, id2label,
                           args.category_mapping)
    names = {"image": args.image_column_name}
    if spec.task == "detection":
        names.update(objects=args.objects_column_name, bbox=args.bbox_key, category=args.category_key,
                     bbox_format=args.bbox_format)
    else:
        names["label"] = args.label_column_name
    dataset = load_hf(spec.task, args.dataset_name, args.dataset_split, args.dataset_config_name, Columns(**names),
                      args.max_eval_samples, args.cache_dir)
    if spec.task == "classification":
        dataset.label_map = class_mapping(dataset.class_names(), id2label, args.label_mapping, "classes",
                                          "--label_mapping")
    return dataset


def batches(count: int, size: int) -> list[list[int]]:
    """Positions ``0..count-1`` in consecutive batches of ``size``.

    >>> batches(5, 2)
    [[0, 1], [2, 3], [4]]
    """
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def prepare_batch(objective: Any, samples: list[Sample], annotate: Callable[[Sample], Any]):
    """``(samples kept, x, targets, skipped records)``: the processor's pixels and targets for ``samples``.

    A sample the task rejects (``ValueError`` from ``prepare``, :class:`BadSample` from ``annotate``) is left out
    and returned as a skipped record with the reason; ``x`` is ``None`` when none is left.
    """

    def attempt(group: list[Sample]):
        return objective.prepare([s.image for s in group], [annotate(s) for s in group])

    try:
        return samples, *attempt(samples), []
    except (ValueError, BadSample):
        pass
    kept, skipped = [], []
    for sample in samples:
        try:
            attempt([sample])
            kept.append(sample)
        except (ValueError, BadSample) as err:
            skipped.append({"id": sample.id, "skipped": str(err)})
    if not kept:
        return [], None, None, skipped
    return kept, *attempt(kept), skipped


def load_samples(dataset: EvalDataset, positions: Sequence[int]) -> tuple[list[Sample], list[dict]]:
    """The samples at ``positions`` and skipped records for those that cannot be read."""
    samples, skipped = [], []
    for position in positions:
        try:
            samples.append(dataset[position])
        except BadSample as err:
            skipped.append({"id": dataset.ids[position], "skipped": str(err)})
    return samples, skipped


def sample_fields(sample: Sample) -> dict:
    """The record fields of the sample itself: its id, and the changes made to its annotation if any."""
    return {"id": sample.id, **({"annotation_changes": sample.changes} if sample.changes else {})}


def attack_fields(result: Any, i: int) -> dict:
    """The attack's per-sample record fields: success, l0 (pixels, or kernel placements with a kernel),
    pixels_changed, iterations, loss, score (and the cascade stage)."""
    fields = {
        "success": bool(result.success[i]),
        "l0": int(result.l0[i]),
        "pixels_changed": int(result.mask[i].sum()),
        "iterations": int(result.iterations[i]),
        "loss": float(result.loss[i]),
        "score": float(result.score[i]),
    }
    if hasattr(result, "stage"):
        fields["stage"] = int(result.stage[i])
    return fields


def log_skipped(records: list[dict]) -> None:
    for record in records:
        if "skipped" in record:
            logger.warning("skipping sample %s: %s", record["id"], record["skipped"], main_process_only=False)


def attack_batch(spec: TaskSpec, objective: Any, samples: list[Sample], attacks: list, run: RunDirectory,
                 args: argparse.Namespace, examples: set[int], bar: Any) -> list[dict]:
    """Attack one batch with every config; the records (skipped samples included) and the requested PNGs. Each
    attack's forward passes advance ``bar`` (:class:`~.progress.AttackProgress`)."""
    samples, x, targets, records = prepare_batch(objective, samples, lambda s: spec.annotation(objective, s))
    if not samples:
        return records
    clean = spec.predict(objective, x, targets, samples)
    for i, sample in enumerate(samples):
        if sample.id in examples:
            save_png(run.path / "examples" / f"{sample.id}.png", frame_image(x[i], spec.valid_size(x, targets, i)))
    watched = AttackProgress(objective, bar)
    for attack in attacks:
        with watched.running(attack):
            result = attack(watched, x, targets, ids=[s.id for s in samples])
        adversarial = spec.predict(objective, result.adversarial, targets, samples)
        for i, sample in enumerate(samples):
            record = {**sample_fields(sample), "k": attack.k, **attack_fields(result, i)}
            records.append({**record, **spec.record(objective, sample, clean[i], adversarial[i])})
            image = frame_image(result.adversarial[i], spec.valid_size(x, targets, i))
            if args.save_adversarial:
                save_png(run.path / "adversarial" / f"k{attack.k}" / f"{sample.id}.png", image)
            if sample.id in examples:
                save_png(run.path / "examples" / f"{sample.id}_k{attack.k}.png", image)
    return records
