"""Transferability: adversarial examples crafted white-box on each source model, evaluated on every target model.

For each source model the attack runs exactly as in :func:`~.harness.loop.run_evaluation`; every target model then
predicts on the clean and on the adversarial images of that source:

- a target equal to the source (the diagonal) predicts on the very images the attack produced: the white-box
  result, identical to the evaluation script's;
- another target gets the source's images (clean and adversarial alike, 8-bit exact, cropped to the image inside
  any padding) through its own image processor, which resizes them to its input resolution (and crops them if it
  crops). Clean and adversarial images take the same path, so a cell measures the perturbation, not the resizing.

Predictions are mapped back to the original image and scored by the task's metric (:class:`TaskSpec`); the cell
holds ``spec.transfer_key``: for classification the attack success rate on the target among the samples it
classifies correctly, for detection the mAP drop, for segmentation the mIoU drop. Every cell's robust accuracy
follows AutoAttack (a sample counts when the target classifies its clean and its adversarial image correctly);
``all_results.json`` states these conventions (:data:`~.metrics.CONVENTIONS`). All models must share one label
space. Units of work are (source, batch) pairs, split across processes and resumed like the evaluation's batches;
records carry ``source`` and ``target`` model names.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any

import numpy as np
from torch import Tensor

from hf_sparse_attack.config import to_dict

from .batch import (
    attack_fields,
    batches,
    load_samples,
    prepare_batch,
    sample_fields,
)
from .command_line import UsageError
from .loop import finish_records, open_evaluation, process_units, split_records, summary
from .metrics import CONVENTIONS, TransferMatrix
from .pictures import save_heatmap
from .processes import compute_all, metric_group
from .progress import AttackProgress, attack_length
from .records import RECORDS_FILE, RESULTS_FILE
from .report import RunningMetric, matrix_table
from .task_spec import TaskSpec, frame_image

NOTE = ("Rows: source models (attacked white-box); columns: target models. Diagonal: white-box, on the source's own "
        "images. Off the diagonal the source's clean and adversarial images (at the source's input resolution) are "
        "resized to the target's input resolution by the target's image processor.")


def to_arrays(x: Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Each sample of ``x (B, 3, H, W)`` in ``[0, 1]``, cropped to its size, as an ``(h, w, 3)`` uint8 array.

    >>> import torch
    >>> [a.shape for a in to_arrays(torch.ones(2, 3, 4, 5), [(4, 5), (2, 3)])]
    [(4, 5, 3), (2, 3, 3)]
    """
    return [frame_image(x[i], size).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
            for i, size in enumerate(sizes)]


def predict_resized(spec: TaskSpec, objective: Any, images: list[np.ndarray], samples: list) -> list:
    """The target ``objective``'s predictions on images from another model's frame, via its own processor."""
    x, targets = objective.prepare(images, [spec.neutral_annotation(image.shape[:2]) for image in images])
    return spec.predict(objective, x, targets, samples)


def _geometry(processor: Any) -> dict:
    """The resize and crop settings of an image processor: the input resolution it gives a model."""
    settings = processor.to_dict()
    return {key: settings[key] for key in ("size", "do_center_crop", "crop_size", "crop_pct") if key in settings}


def _check_label_spaces(checked: dict[str, Any]) -> None:
    counts = {name: model.num_labels for name, model in checked.items()}
    if len(set(counts.values())) > 1:
        raise UsageError(f"transfer needs models with one label space; their numbers of labels differ: {counts}")


def transfer(spec: TaskSpec, args: argparse.Namespace) -> dict | None:
    """Run the transfer evaluation of ``args``; the results on the main process (``None`` elsewhere, or when stopped
    early by ``--stop_after_batches``)."""
    started = time.time()
    sources = list(dict.fromkeys(args.model_name_or_path))
    targets = list(dict.fromkeys(args.target_models or sources))
    opened = open_evaluation(spec, args, list(dict.fromkeys(sources + targets)), sources, _check_label_spaces)
    attacks, accelerator, run, dataset = opened.attacks, opened.accelerator, opened.run, opened.dataset
    done = opened.done
    objectives = opened.objectives
    units = batches(len(dataset), args.per_device_eval_batch_size)
    names = [f"s{s:03d}-b{b:06d}" for s in range(len(sources)) for b in range(len(units))]

    def work(unit: int, bar: Any) -> list[dict]:
        source_name = sources[unit // len(units)]
        source = objectives[source_name]
        samples, records = load_samples(dataset, units[unit % len(units)])
        samples, x, source_targets, skipped = prepare_batch(source, samples, lambda s: spec.annotation(source, s))
        records += skipped
        if not samples:
            return records
        sizes = [spec.valid_size(x, source_targets, i) for i in range(len(samples))]

        def predictions(target_name: str, images: Tensor) -> list:
            if target_name == source_name:
                return spec.predict(source, images, source_targets, samples)
            return predict_resized(spec, objectives[target_name], to_arrays(images, sizes), samples)

        clean = {t: predictions(t, x) for t in targets}
        for attack in attacks:
            watched = AttackProgress(source, bar)
            with watched.running(attack):
                result = attack(watched, x, source_targets, ids=[s.id for s in samples])
            for target_name in targets:
                adversarial = predictions(target_name, result.adversarial)
                for i, sample in enumerate(samples):
                    record = {**sample_fields(sample), "k": attack.k, "source": source_name, "target": target_name,
                              **attack_fields(result, i)}
                    records.append({**record, **spec.record(objectives[target_name], sample, clean[target_name][i],
                                                            adversarial[i])})
        return records

    diagonal = RunningMetric(spec, objectives[sources[0]], only=lambda r: r["source"] == r["target"])
    mine, stopped = process_units(accelerator, names, done, work, run, args, "transfer",
                                  sum(attack_length(a) for a in attacks), diagonal)
    if stopped:
        return None
    accelerator.wait_for_everyone()
    group = metric_group(accelerator)
    matrices = {a.k: TransferMatrix([[spec.new_metric(objectives[t], process_group=group) for t in targets]
                                     for _ in sources], spec.transfer_key) for a in attacks}
    for unit in mine:
        by_k, _ = split_records(run.read_unit(names[unit]))
        for k, records in by_k.items():
            cells = defaultdict(list)
            for r in records:
                cells[sources.index(r["source"]), targets.index(r["target"])].append(r)
            for (s, t), cell_records in cells.items():
                spec.update(matrices[k].cells[s][t], cell_records)
    computed = compute_all(matrices)
    results = None
    if accelerator.is_main_process:
        records = finish_records(run, names)
        common = summary(dataset, args, records, run, len(done), started, accelerator)
        pictures = []
        for attack in attacks:
            name = f"pictures/transfer_matrix_k{attack.k}.png"
            save_heatmap(computed[attack.k]["matrix"], sources, targets, run.path / name,
                         title=f"{spec.transfer_key.replace('_', ' ')}: {type(attack).__name__} k={attack.k}",
                         note=NOTE)
            pictures.append(name)
        results = {
            "task": spec.task,
            "sources": sources,
            "targets": targets,
            "cell": spec.transfer_key,
            "note": NOTE,
            "conventions": CONVENTIONS[spec.task],
            "processors": {name: _geometry(o.processor) for name, o in objectives.items()},
            "results": [{"k": a.k, "attack": to_dict(a), "matrix": computed[a.k]["matrix"],
                         "cells": computed[a.k]["cells"]} for a in attacks],
            "pictures": pictures,
            **common,
        }
        run.write_results(results)
        for attack in attacks:
            print(f"\n{spec.transfer_key} at k={attack.k} (source attacked white-box, evaluated on target):\n"
                  f"{matrix_table(sources, targets, computed[attack.k]['matrix'])}", flush=True)
        print(f"\nresults in {run.path / RESULTS_FILE}, records in {run.path / RECORDS_FILE}, pictures in "
              f"{run.path / 'pictures'}", flush=True)
    accelerator.wait_for_everyone()
    return results
