"""The evaluation loop shared by the scripts: :func:`run_evaluation`.

1. Every process checks, cheapest first, the flags, the model's config (:func:`hf_sparse_attack.tasks.check_model`),
   the output directory (see :mod:`hf_sparse_attack.evaluation.harness.records`) and the dataset
   (:mod:`hf_sparse_attack.evaluation.harness.data`), so that a bad input is one error line before anything heavy or
   any log line; then it loads the model with :func:`hf_sparse_attack.tasks.load_task`. The samples, in dataset
   order, are cut into batches of ``--per_device_eval_batch_size``; process ``r`` of ``n`` takes batches
   ``r, r + n, ...``. A batch's content never depends on the number of processes and a sample's attack is seeded
   by its id, so one and two processes produce the same records; no sample is attacked twice or padded in.
2. Per batch (:func:`hf_sparse_attack.evaluation.harness.batch.attack_batch`): the task's processor prepares the
   images (a sample it rejects is skipped, with the reason), the clean predictions are taken, each attack (one per
   ``k``) runs, the adversarial predictions are taken, and the batch's records are written atomically. Batches
   finished by an earlier run with the same settings are skipped.
3. At the end each process feeds the records of its batches, read back from disk (this run's and an earlier
   run's alike), into torchmetrics metrics, which sync across processes; the main process writes
   ``records.jsonl``, ``all_results.json`` and the pictures.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from accelerate.logging import get_logger
from tqdm.auto import tqdm

from hf_sparse_attack.config import to_dict

from .attack_configs import attack_configs
from .batch import (
    attack_batch,
    batches,
    check_budgets,
    check_task_model,
    load_data,
    load_objective,
    load_samples,
    log_skipped,
    prepare_batch,
)
from .data import DataError, EvalDataset, Sample
from .device_flags import autocast
from .metrics import CONVENTIONS
from .pictures import save_curve, save_grid
from .processes import check_shared_dir, compute_all, metric_group, setup, start_logging
from .progress import attack_length
from .records import RECORDS_FILE, RESULTS_FILE, RunDirectory, load_png
from .report import RunningMetric, metric_table
from .script_flags import check_args, settings
from .sharing import check_sharing, share_results
from .task_spec import TaskSpec

logger = get_logger(__name__)


def open_run(accelerator: Any, args: argparse.Namespace) -> tuple[RunDirectory, bool]:
    """Every process: check the output directory and probe that it is writable (before anything heavy)."""
    run = RunDirectory(args.output_dir, settings(args))
    resume = run.check(args.overwrite)
    accelerator.wait_for_everyone()
    run.probe()
    check_shared_dir(accelerator, run.path)
    return run, resume


def start_run(accelerator: Any, run: RunDirectory, resume: bool) -> set[str]:
    """Main process records the settings (clearing an old run unless resuming); all get the finished units."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.start(resume)
    accelerator.wait_for_everyone()
    return run.finished()


def process_units(accelerator: Any, names: list[str], done: set[str], work: Callable[[int, Any], list[dict]],
                  run: RunDirectory, args: argparse.Namespace, description: str, passes: int,
                  running: RunningMetric) -> tuple[list[int], bool]:
    """Run ``work(unit, bar)`` for this process's units not yet done, writing each one's records; returns this
    process's units and whether it stopped early (``--stop_after_batches``). The bar counts forward passes: at
    most ``passes`` per unit, advanced by ``work`` as its attacks run (:mod:`.progress`); its postfix shows the
    ``running`` metric."""
    mine = list(range(accelerator.process_index, len(names), accelerator.num_processes))
    todo = [u for u in mine if names[u] not in done]
    if len(todo) < len(mine):
        logger.info("resuming: %d of %d batches of this process already done", len(mine) - len(todo), len(mine))
    bar = tqdm(total=len(mine) * passes, initial=(len(mine) - len(todo)) * passes, desc=description,
               unit="pass", disable=not accelerator.is_local_main_process)
    with bar as progress:  # closed before an error is reported, so that the error is the last line
        for count, unit in enumerate(todo):
            if args.stop_after_batches is not None and count >= args.stop_after_batches:
                progress.close()
                logger.info("stopped after %d batches (--stop_after_batches); run the same command to continue",
                            count)
                return mine, True
            with autocast(accelerator.device, args.mixed_precision):
                records = work(unit, progress)
            log_skipped(records)
            run.write_unit(names[unit], records)
            running.add(records)
            progress.update((len(mine) - len(todo) + count + 1) * passes - progress.n)  # a unit's full share
            progress.set_postfix(running.postfix())
    return mine, False


def precision(accelerator: Any, args: argparse.Namespace) -> str:
    """Where and how the run computes, for its first log line."""
    return (f"device {accelerator.device}, weights {args.torch_dtype}, mixed precision {args.mixed_precision} "
            "(attack state float32)")


def environment(accelerator: Any, args: argparse.Namespace) -> dict:
    """Versions, processes, device and precision, for ``all_results.json``."""
    packages = ("hf-sparse-attack", "torch", "transformers", "datasets", "accelerate", "torchmetrics", "pycocotools",
                "numpy")
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"versions": versions, "num_processes": accelerator.num_processes, "device": str(accelerator.device),
            "torch_dtype": args.torch_dtype, "mixed_precision": args.mixed_precision}


def split_records(records: list[dict]) -> tuple[dict[int, list[dict]], list[dict]]:
    """Records grouped by k, and the skipped ones."""
    by_k, skipped = defaultdict(list), []
    for record in records:
        if "skipped" in record:
            skipped.append(record)
        else:
            by_k[record["k"]].append(record)
    return by_k, skipped


def finish_records(run: RunDirectory, names: list[str]) -> list[dict]:
    """Main process: every unit's records, sorted by sample id, written to ``records.jsonl``."""
    records = sorted((r for name in names for r in run.read_unit(name)),
                     key=lambda r: (r["id"], r.get("k", 0), r.get("source", ""), r.get("target", "")))
    run.write_records(records)
    return records


def summary(dataset: EvalDataset, args: argparse.Namespace, records: list[dict], run: RunDirectory, resumed: int,
            started: float, accelerator: Any) -> dict:
    """What every ``all_results.json`` holds besides the metrics: data, sample counts, skipped samples and why,
    the run's settings, time, versions; the samples whose annotation was changed, and how (e.g. boxes clipped to
    the image). :class:`DataError` when every sample was skipped."""
    skipped = list({r["id"]: r for r in split_records(records)[1]}.values())
    evaluated = len({r["id"] for r in records if "skipped" not in r})
    if not evaluated:
        raise DataError(f"all {len(dataset)} samples were skipped (first reason: {skipped[0]['skipped']})")
    changed = {r["id"]: r["annotation_changes"] for r in records if "annotation_changes" in r}
    return {
        "dataset": {**dataset.description, "max_eval_samples": args.max_eval_samples},
        "samples": {"total": len(dataset), "evaluated": evaluated, "skipped": len(skipped),
                    "annotation_changed": len(changed)},
        "skipped_samples": [{"id": r["id"], "reason": r["skipped"]} for r in skipped],
        "annotation_changes": [{"id": i, "changes": changes} for i, changes in sorted(changed.items())],
        "records": RECORDS_FILE,
        "time_seconds": time.time() - started,
        "resumed_batches": resumed,
        "settings": run.settings,
        **environment(accelerator, args),
    }


@dataclasses.dataclass
class Opened:
    """A run past its checks, with its models loaded (:func:`open_evaluation`)."""

    attacks: list
    accelerator: Any
    run: RunDirectory
    dataset: EvalDataset
    objectives: dict[str, Any]  # model name -> objective
    done: set[str]  # the units an earlier run finished


def open_evaluation(spec: TaskSpec, args: argparse.Namespace, models: list[str], attacked: list[str],
                    check_models: Callable[[dict[str, Any]], None] = lambda checked: None) -> Opened:
    """Every check, cheapest first, then the heavy part (the module docstring's step 1): the flags, the ``models``'
    configs (``check_models`` may add checks across them), each ``attacked`` model's input against the budgets, the
    output directory, the data; then the models load and the run starts (resuming what an earlier run finished)."""
    check_args(args)
    check_sharing(args)
    attacks = attack_configs(args)
    checked = {name: check_task_model(spec, name, args) for name in models}
    for name in attacked:
        check_budgets(attacks, checked[name])
    check_models(checked)
    accelerator = setup(args)
    run, resume = open_run(accelerator, args)
    dataset = load_data(spec, args, checked[attacked[0]].label2id)
    start_logging()
    objectives = {name: load_objective(spec, name, args, accelerator.device) for name in models}
    return Opened(attacks, accelerator, run, dataset, objectives, start_run(accelerator, run, resume))


def run_evaluation(spec: TaskSpec, args: argparse.Namespace) -> dict | None:
    """Run the evaluation of ``args`` (see the module docstring); the results on the main process (``None``
    elsewhere, or when stopped early by ``--stop_after_batches``)."""
    started = time.time()
    opened = open_evaluation(spec, args, [args.model_name_or_path], [args.model_name_or_path])
    attacks, accelerator, run, dataset = opened.attacks, opened.accelerator, opened.run, opened.dataset
    done = opened.done
    objective = opened.objectives[args.model_name_or_path]

    units = batches(len(dataset), args.per_device_eval_batch_size)
    names = [f"b{u:06d}" for u in range(len(units))]
    examples = set(dataset.ids[: args.num_pictures])
    logger.info("%s: %d samples in %d batches on %d process(es), %s; attacks: %s", args.model_name_or_path,
                len(dataset), len(units), accelerator.num_processes, precision(accelerator, args),
                ", ".join(map(str, attacks)))

    def work(unit: int, bar: Any) -> list[dict]:
        samples, skipped = load_samples(dataset, units[unit])
        return skipped + attack_batch(spec, objective, samples, attacks, run, args, examples, bar)

    passes = sum(attack_length(a) for a in attacks)
    mine, stopped = process_units(accelerator, names, done, work, run, args, f"attacking {spec.task}", passes,
                                  RunningMetric(spec, objective))
    if stopped:
        return None
    accelerator.wait_for_everyone()
    group = metric_group(accelerator)
    metrics = {attack.k: spec.new_metric(objective, process_group=group) for attack in attacks}
    for unit in mine:
        by_k, _ = split_records(run.read_unit(names[unit]))
        for k, records in by_k.items():
            spec.update(metrics[k], records)
    computed = compute_all(metrics)
    results = None
    if accelerator.is_main_process:
        records = finish_records(run, names)
        results = {
            "task": spec.task,
            "model_name_or_path": args.model_name_or_path,
            "task_options": dataclasses.asdict(objective.options),
            "conventions": CONVENTIONS[spec.task],
            "results": [{"k": a.k, "attack": to_dict(a), "metrics": computed[a.k]} for a in attacks],
            **summary(dataset, args, records, run, len(done), started, accelerator),
        }
        drawn = load_samples(dataset, range(len(examples)))[0]  # the first --num_pictures samples
        results["pictures"] = write_pictures(spec, objective, run, split_records(records)[0], attacks, computed,
                                             drawn)
        run.write_results(results)
        print(f"\n{metric_table(spec.task, computed)}\n\nresults in {run.path / RESULTS_FILE}, records in "
              f"{run.path / RECORDS_FILE}, pictures in {run.path / 'pictures'}", flush=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # after the barrier: the other processes need not wait for an export or push
        share_results(spec, objective, dataset, run, args)
    return results


def write_pictures(spec: TaskSpec, objective: Any, run: RunDirectory, by_k: dict[int, list[dict]], attacks: list,
                   computed: dict[int, dict], examples: list[Sample]) -> list[str]:
    """The example grid of each k (the ``examples`` prepared again, for their targets) and, for several k, the
    metric against k; returns the files written."""
    written, targets = [], {}
    if examples:
        kept, _, prepared, _ = prepare_batch(objective, examples, lambda s: spec.annotation(objective, s))
        targets = dict(zip([s.id for s in kept], prepared)) if kept else {}
    clean_paths = {i: run.path / "examples" / f"{i}.png" for i in targets}
    for attack in attacks:
        records = {r["id"]: r for r in by_k.get(attack.k, [])}
        rows = [
            spec.panels(objective, load_png(clean_paths[i]), load_png(run.path / "examples" / f"{i}_k{attack.k}.png"),
                        records[i], targets[i])
            for i in sorted(targets) if i in records and clean_paths[i].exists()
        ]
        if rows:
            name = f"pictures/examples_k{attack.k}.png"
            save_grid(rows, run.path / name, title=f"{objective.name_or_path}: {type(attack).__name__} k={attack.k}",
                      num_classes=objective.model.config.num_labels, class_names=objective.model.config.id2label)
            written.append(name)
    if len(attacks) > 1:
        ks = [a.k for a in attacks]
        name = f"pictures/{spec.curve[-1][0]}_vs_k.png"
        save_curve(ks, {label: [computed[k][key] for k in ks] for key, label in spec.curve}, run.path / name,
                   spec.curve_label, title=f"{objective.name_or_path}: {type(attacks[0]).__name__}")
        written.append(name)
    return written
