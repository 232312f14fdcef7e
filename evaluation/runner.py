"""What the evaluation scripts share: flags, attack construction, accelerate setup and the attack/evaluate loop.

A script is a :class:`TaskSpec` (how its task's predictions become records, metrics and pictures) and a
``main(argv)`` that calls :func:`run_script`. The loop, :func:`evaluate`:

1. Every process checks, cheapest first, the flags, the model's config (:func:`tasks.check_model`), the output
   directory (see :mod:`evaluation.records`) and the dataset (:mod:`evaluation.data`), so that a bad input is one
   error line before anything heavy or any log line; then it loads the model with :func:`tasks.load_task`.
   The samples, in dataset order,
   are cut into batches of ``--per_device_eval_batch_size``; process ``r`` of ``n`` takes batches ``r, r + n, ...``.
   A batch's content never depends on the number of processes and a sample's attack is seeded by its id, so one
   and two processes produce the same records; no sample is attacked twice or padded in.
2. Per batch: the task's processor prepares the images (a sample it rejects is skipped, with the reason), the
   clean predictions are taken, each attack (one per ``k``) runs, the adversarial predictions are taken, and the
   batch's records are written atomically. Batches finished by an earlier run with the same settings are skipped.
3. At the end each process feeds the records of its batches, read back from disk (this run's and an earlier
   run's alike), into torchmetrics metrics, which sync across processes; the main process writes
   ``records.jsonl``, ``all_results.json`` and the pictures.

>>> parse_kernel("line:3:vertical")
tensor([[1.],
        [1.],
        [1.]])
>>> [type(a).__name__ + f"(k={a.k})" for a in attack_configs(build_parser(None).parse_args(
...     ["--model_name_or_path", "m", "--output_dir", "o", "--attack", "rs", "--k", "1", "4"]))]
['SparseRS(k=1)', 'SparseRS(k=4)']
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import logging
import os
import platform
import sys
import time
import warnings
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from accelerate.logging import get_logger
from torch import Tensor
from torchmetrics import Metric
from tqdm.auto import tqdm

from hf_sparse_attack import SparseAutoAttack, SparsePGD, SparseRS, kernels
from hf_sparse_attack.config import to_dict
from hf_sparse_attack.saa import PRESETS

from .data import BBOX_FORMATS, BadSample, CocoDataset, Columns, DataError, EvalDataset, Sample, load_hf
from .pictures import Panel, save_curve, save_grid
from .records import RECORDS_FILE, OutputDirError, RunDirectory, load_png, save_png

logger = get_logger(__name__)

#: Flags that do not change any result: a run may be resumed with other values of them.
RUNTIME_FLAGS = ("output_dir", "overwrite", "num_threads", "stop_after_batches")


class UsageError(ValueError):
    """A bad command line or configuration: reported as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are one line (exit code 2)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ----------------------------------------------------------------------------------------------------- attacks
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _shape(name: str) -> Callable[[str], Tensor]:
    return lambda size: kernels.shape(name, _int(size))


#: ``--kernel`` name -> builder from the ``:``-separated parameters.
KERNELS: dict[str, Callable[..., Tensor]] = {
    "square": lambda size: kernels.square(_int(size)),
    "line": lambda length, orientation="horizontal": kernels.line(_int(length), orientation),
    "letter": lambda char, size: kernels.letter(char, _int(size)),
    **{name: _shape(name) for name in kernels.SHAPES},
}


def parse_kernel(spec: str) -> Tensor:
    """A structure kernel from ``square:N``, ``line:N[:orientation]``, a shape ``cross:N`` (``diamond``, ``heart``,
    ``star``), ``letter:C:N``, or the path of a binary image (see :mod:`hf_sparse_attack.kernels`)."""
    if os.path.isfile(spec):
        try:
            return kernels.from_image(spec)
        except (OSError, ValueError) as err:
            raise UsageError(f"bad kernel image {spec!r}: {err}") from None
    name, *params = spec.split(":")
    if name not in KERNELS:
        raise UsageError(f"unknown kernel {spec!r}: use square:N, line:N[:orientation], {':N, '.join(kernels.SHAPES)}"
                         ":N, letter:C:N or the path of a binary image")
    try:
        return KERNELS[name](*params)
    except TypeError:
        raise UsageError(f"bad kernel {spec!r}: wrong number of ':'-separated parameters") from None
    except (ValueError, RuntimeError) as err:  # RuntimeError: a size too large to allocate
        raise UsageError(f"bad kernel {spec!r}: {str(err).splitlines()[0]}") from None


def _spgd(args: argparse.Namespace, k: int, shared: dict) -> SparsePGD:
    return SparsePGD(k=k, steps=args.steps, epsilon=args.epsilon, unprojected=args.unprojected, **shared)


def _rs(args: argparse.Namespace, k: int, shared: dict) -> SparseRS:
    return SparseRS(k=k, queries=args.queries, p_init=args.p_init, **shared)


def _saa(args: argparse.Namespace, k: int, shared: dict) -> SparseAutoAttack:
    if args.preset != "custom":
        return SparseAutoAttack(k=k, version=args.preset, **shared)
    stages = (
        SparsePGD(k=k, steps=args.steps, epsilon=args.epsilon, unprojected=True, **shared),
        SparsePGD(k=k, steps=args.steps, epsilon=args.epsilon, unprojected=False, **shared),
        SparseRS(k=k, queries=args.queries, p_init=args.p_init, **shared),
    )
    return SparseAutoAttack(k=k, version="custom", attacks=stages, **shared)


#: ``--attack`` name -> builder of the attack config for one budget ``k``.
ATTACKS: dict[str, Callable[[argparse.Namespace, int, dict], Any]] = {"spgd": _spgd, "rs": _rs, "saa": _saa}


def attack_configs(args: argparse.Namespace) -> list:
    """One attack config per ``--k``, built from the attack flags; :class:`UsageError` for bad values."""
    if len(set(args.k)) != len(args.k):
        raise UsageError(f"--k lists a budget twice: {args.k}")
    shared = {"seed": args.seed, "kernel": parse_kernel(args.kernel) if args.kernel else None, "stride": args.stride}
    try:
        return [ATTACKS[args.attack](args, k, shared) for k in args.k]
    except ValueError as err:
        raise UsageError(f"bad attack setting: {err}") from None


# ------------------------------------------------------------------------------------------------------- flags
def add_attack_arguments(attack: argparse._ArgumentGroup) -> None:
    """The attack flags (``--attack --k --steps --queries --preset ... --seed``) that :func:`attack_configs` reads."""
    attack.add_argument("--attack", default="spgd", choices=sorted(ATTACKS),
                        help="spgd: Sparse-PGD; rs: Sparse-RS; saa: Sparse-AutoAttack")
    attack.add_argument("--k", type=int, nargs="+", default=[10],
                        help="budgets (pixels, or kernel placements with --kernel); several give a curve")
    attack.add_argument("--steps", type=int, default=100, help="sPGD iterations (spgd; saa --preset custom)")
    attack.add_argument("--queries", type=int, default=1000, help="Sparse-RS queries (rs; saa --preset custom)")
    attack.add_argument("--preset", default="standard", choices=(*PRESETS, "custom"),
                        help="saa cascade (its version): standard, fast, or custom: sPGD unprojected then projected "
                             "(--steps each), then Sparse-RS (--queries)")
    attack.add_argument("--epsilon", type=float, default=1.0, help="sPGD L-inf bound of a perturbed pixel")
    attack.add_argument("--p_init", type=float, default=0.8, help="Sparse-RS initial resampled fraction")
    attack.add_argument("--kernel", help="structured sparsity: square:N, line:N[:vertical|diagonal|antidiagonal], "
                        "cross:N, diamond:N, heart:N, star:N, letter:C:N, or a binary image path")
    attack.add_argument("--stride", type=int, default=1, help="kernel placement grid step")
    attack.add_argument("--unprojected", dest="unprojected", action="store_true", default=True,
                        help="sPGD magnitude step with the unprojected gradient (default)")
    attack.add_argument("--projected", dest="unprojected", action="store_false",
                        help="sPGD magnitude step with the projected (sparse) gradient")
    attack.add_argument("--seed", type=int, default=0, help="attack seed; each sample's from (seed, sample id)")


def build_parser(spec: TaskSpec | None, description: str = "", transfer: bool = False) -> Parser:
    """The shared flags (transformers' ``run_*_no_trainer.py`` names where they exist) plus the task's own."""
    task = spec.task if spec else None
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    if transfer:
        model.add_argument("--model_name_or_path", nargs="+", required=True,
                           help="source models: Hub names or local directories; each is attacked white-box")
        model.add_argument("--target_models", nargs="+", help="models the adversarial images are evaluated on "
                           "(default: the source models)")
    else:
        model.add_argument("--model_name_or_path", required=True, help="Hub name or local directory")
    model.add_argument("--trust_remote_code", action="store_true", help="allow model code from the repository")
    model.add_argument("--loss", help=f"the attack loss of the model's task; {loss_help()}")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub name, save_to_disk directory, or image folder with metadata.jsonl")
    data.add_argument("--dataset_config_name")
    data.add_argument("--dataset_split", default="validation")
    data.add_argument("--image_column_name", default="image")
    if task != "detection":
        data.add_argument("--label_column_name", default="label",
                          help="class id (classification) or label-map image (segmentation) column")
    if task == "detection":
        data.add_argument("--objects_column_name", default="objects")
        data.add_argument("--bbox_key", default="bbox", help="key of the boxes in the objects column")
        data.add_argument("--category_key", default="category", help="key of the class ids in the objects column")
        data.add_argument("--bbox_format", default="xywh", choices=BBOX_FORMATS, help="COCO xywh or xyxy pixels")
        data.add_argument("--coco_annotation_file", help="COCO json (instead of --dataset_name)")
        data.add_argument("--coco_image_dir", help="directory of the COCO json's file_name entries")
        data.add_argument("--category_mapping", default="id", choices=("id", "name"),
                          help="COCO category -> model label: the category id itself, or by name (config.label2id)")
    data.add_argument("--max_eval_samples", type=int, help="evaluate the first N samples only")
    data.add_argument("--cache_dir", help="datasets cache directory")

    add_attack_arguments(parser.add_argument_group("attack"))
    if spec is not None:
        spec.add_arguments(parser.add_argument_group(f"{task} options"))

    run = parser.add_argument_group("run")
    run.add_argument("--per_device_eval_batch_size", type=int, default=8)
    run.add_argument("--output_dir", required=True, help="results, records and pictures (resumed if unfinished)")
    run.add_argument("--overwrite", action="store_true", help="replace the results of a finished or other run")
    run.add_argument("--save_adversarial", action="store_true",
                     help="save every adversarial image as a lossless PNG under output_dir/adversarial/")
    run.add_argument("--num_pictures", type=int, default=4, help="examples drawn in the pictures")
    run.add_argument("--num_threads", type=int, help="torch CPU threads (default 1 on CPU)")
    run.add_argument("--stop_after_batches", type=int,
                     help="stop after N batches per process (a time-sliced job); rerun the command to continue")
    return parser


def loss_help() -> str:
    """The losses of each task and their defaults, for ``--loss`` help texts."""
    from hf_sparse_attack.losses import CLASSIFICATION_LOSSES
    from tasks.classification import ClassificationOptions
    from tasks.detection import DETECTION_LOSSES, DetectionOptions
    from tasks.segmentation import SEGMENTATION_LOSSES, SegmentationOptions

    return "; ".join(f"{task}: {', '.join(names)} (default {options().loss})" for task, names, options in (
        ("classification", CLASSIFICATION_LOSSES, ClassificationOptions),
        ("detection", DETECTION_LOSSES, DetectionOptions),
        ("segmentation", SEGMENTATION_LOSSES, SegmentationOptions)))


def check_args(args: argparse.Namespace) -> None:
    """Value checks argparse cannot express; :class:`UsageError` on the first problem."""
    for name in ("per_device_eval_batch_size", "max_eval_samples", "stop_after_batches", "num_threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be a positive integer, got {value}")
    if args.num_pictures < 0:
        raise UsageError(f"--num_pictures must be >= 0, got {args.num_pictures}")
    coco = getattr(args, "coco_annotation_file", None), getattr(args, "coco_image_dir", None)
    if (coco[0] is None) != (coco[1] is None):
        raise UsageError("--coco_annotation_file and --coco_image_dir go together")
    if (args.dataset_name is None) == (coco[0] is None):
        raise UsageError("pass either --dataset_name or --coco_annotation_file with --coco_image_dir")


def settings(args: argparse.Namespace) -> dict:
    """The flags that decide the results (all but :data:`RUNTIME_FLAGS`): a run resumes only with equal settings."""
    return {key: value for key, value in sorted(vars(args).items()) if key not in RUNTIME_FLAGS}


# -------------------------------------------------------------------------------------------------- task specs
class TaskSpec(ABC):
    """How a task's predictions become per-sample records, metrics and pictures (one subclass per script).

    Predictions (:meth:`predict`) are in the frame of the *original* image, so that models of any resolution are
    compared on the same ground truth (the metrics and the transferability matrix rely on it).
    """

    task: ClassVar[str]
    #: ``(metric key, legend)`` pairs plotted against k when several k are given, and the plot's y label.
    curve: ClassVar[tuple[tuple[str, str], ...]]
    curve_label: ClassVar[str]
    #: The metric key that fills a cell of the transferability matrix.
    transfer_key: ClassVar[str]

    def add_arguments(self, group: argparse._ArgumentGroup) -> None:
        """Add the task's own flags."""

    def options(self, args: argparse.Namespace) -> dict:
        """Options for :func:`tasks.load_task` from the task's flags."""
        return {}

    def annotation(self, objective: Any, sample: Sample) -> Any:
        """The sample's annotation as the objective's ``prepare`` takes it; :class:`BadSample` if unusable."""
        return sample.annotation

    @abstractmethod
    def neutral_annotation(self, size: tuple[int, int]) -> Any:
        """An annotation ``prepare`` accepts for an image of ``size`` whose truth is not needed (transfer)."""

    @abstractmethod
    def predict(self, objective: Any, x: Tensor, targets: Any, samples: Sequence[Sample]) -> list:
        """One prediction per sample, in its original image's frame."""

    @abstractmethod
    def record(self, objective: Any, sample: Sample, clean: Any, adversarial: Any) -> dict:
        """The task's fields of a per-sample record (JSON types): the truth and both predictions."""

    @abstractmethod
    def new_metric(self, objective: Any, **kwargs: Any) -> Metric:
        """A fresh metric for this task and model; ``kwargs`` go to torchmetrics (e.g. ``process_group``)."""

    @abstractmethod
    def update(self, metric: Metric, records: list[dict]) -> None:
        """Feed records (from :meth:`record` plus the attack fields) to the metric."""

    @abstractmethod
    def panels(self, objective: Any, clean: Tensor, adversarial: Tensor, record: dict) -> list[Panel]:
        """One picture row for an example: ``(C, H, W)`` clean and adversarial images in the model's frame."""

    def valid_size(self, x: Tensor, targets: Any, i: int) -> tuple[int, int]:
        """``(height, width)`` of sample ``i``'s image inside ``x`` (detection batches are padded)."""
        return int(x.shape[-2]), int(x.shape[-1])


def frame_image(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Sample ``x (C, H, W)`` cropped to its image ``size`` (the padding left out)."""
    return x[:, : size[0], : size[1]]


# ---------------------------------------------------------------------------------------------------- the loop
def setup(args: argparse.Namespace):
    """The accelerator (CPU processes when there is no CUDA, see ENVIRONMENT.md) and torch threads; the libraries'
    messages and progress bars on the local main process only."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if not accelerator.is_local_main_process:
        import datasets
        import transformers

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if accelerator.device.type == "cpu":
        torch.set_num_threads(args.num_threads or 1)
    elif args.num_threads:
        torch.set_num_threads(args.num_threads)
    return accelerator


def start_logging() -> None:
    """INFO messages on stderr, once the checks have passed (until then an error is the only line printed)."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)


def compute_all(metrics: dict[Any, Any]) -> dict[Any, Any]:
    """``metric.compute()`` of each value (syncing across processes). A process that fed no record (an idle
    process, or a run whose samples were all skipped, which :func:`summary` reports) computes silently."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* before the ``update``")
        return {key: metric.compute() for key, metric in metrics.items()}


def metric_group(accelerator: Any) -> Any:
    """The process group metrics sync over. Metrics stay on the CPU in float64 (exact counts, boxes and ids;
    COCOeval runs there anyway), so with a non-gloo backend (NCCL on GPUs) they get a gloo group of their own.
    Every process must call this at the same point (creating a group is collective)."""
    import torch.distributed as dist

    if accelerator.num_processes == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def _model_options(spec: TaskSpec, args: argparse.Namespace) -> dict:
    options = spec.options(args)
    if args.loss is not None:
        options["loss"] = args.loss
    return options


def check_model(spec: TaskSpec, name: str, args: argparse.Namespace) -> Any:
    """:func:`tasks.check_model` with the task's options from the flags: a bad model or option is reported before
    anything heavy (no weights are read)."""
    import tasks

    return tasks.check_model(name, task=spec.task, trust_remote_code=args.trust_remote_code,
                             **_model_options(spec, args))


def load_objective(spec: TaskSpec, name: str, args: argparse.Namespace, device: torch.device):
    """``tasks.load_task`` with the task's options from the flags."""
    import tasks

    return tasks.load_task(name, task=spec.task, device=device, trust_remote_code=args.trust_remote_code,
                           **_model_options(spec, args))


def load_data(spec: TaskSpec, args: argparse.Namespace, label2id: dict[str, int]) -> EvalDataset:
    """The dataset named by the data flags; ``label2id`` is the model's (for ``--category_mapping name``)."""
    if getattr(args, "coco_annotation_file", None):
        mapping = label2id if args.category_mapping == "name" else None
        return CocoDataset(args.coco_annotation_file, args.coco_image_dir, args.max_eval_samples, mapping)
    names = {"image": args.image_column_name}
    if spec.task == "detection":
        names.update(objects=args.objects_column_name, bbox=args.bbox_key, category=args.category_key,
                     bbox_format=args.bbox_format)
    else:
        names["label"] = args.label_column_name
    return load_hf(spec.task, args.dataset_name, args.dataset_split, args.dataset_config_name, Columns(**names),
                   args.max_eval_samples, args.cache_dir)


def batches(count: int, size: int) -> list[list[int]]:
    """Positions ``0..count-1`` in consecutive batches of ``size``.

    >>> batches(5, 2)
    [[0, 1], [2, 3], [4]]
    """
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def prepare(objective: Any, samples: list[Sample], annotate: Callable[[Sample], Any]):
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
    """The attack's per-sample record fields: success, l0, iterations, loss, score (and the cascade stage)."""
    fields = {
        "success": bool(result.success[i]),
        "l0": int(result.l0[i]),
        "iterations": int(result.iterations[i]),
        "loss": float(result.loss[i]),
        "score": float(result.score[i]),
    }
    if hasattr(result, "stage"):
        fields["stage"] = int(result.stage[i])
    return fields


def _log_skipped(records: list[dict]) -> None:
    for record in records:
        if "skipped" in record:
            logger.warning("skipping sample %s: %s", record["id"], record["skipped"], main_process_only=False)


def attack_batch(spec: TaskSpec, objective: Any, samples: list[Sample], attacks: list, run: RunDirectory,
                 args: argparse.Namespace, examples: set[int]) -> list[dict]:
    """Attack one batch with every config; the records (skipped samples included) and the requested PNGs."""
    samples, x, targets, records = prepare(objective, samples, lambda s: spec.annotation(objective, s))
    if not samples:
        return records
    clean = spec.predict(objective, x, targets, samples)
    for i, sample in enumerate(samples):
        if sample.id in examples:
            save_png(run.path / "examples" / f"{sample.id}.png", frame_image(x[i], spec.valid_size(x, targets, i)))
    for attack in attacks:
        result = attack(objective, x, targets, ids=[s.id for s in samples])
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


class Running:
    """Robust accuracy (1 - attack success rate) per k over the records seen so far, for the progress bar (of a
    transfer run: on the diagonal)."""

    def __init__(self) -> None:
        self.seen: dict[int, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, records: list[dict]) -> None:
        for record in records:
            if "k" in record and record.get("source") == record.get("target"):
                counts = self.seen[record["k"]]
                counts[0] += 1
                counts[1] += not record["success"]

    def postfix(self) -> dict[str, str]:
        return {f"robust@k={k}": f"{robust / total:.3f}" for k, (total, robust) in sorted(self.seen.items())}


def open_run(accelerator: Any, args: argparse.Namespace) -> tuple[RunDirectory, bool]:
    """Every process: check the output directory and probe that it is writable (before anything heavy)."""
    run = RunDirectory(args.output_dir, settings(args))
    resume = run.check(args.overwrite)
    accelerator.wait_for_everyone()
    run.probe()
    return run, resume


def start_run(accelerator: Any, run: RunDirectory, resume: bool) -> set[str]:
    """Main process records the settings (clearing an old run unless resuming); all get the finished units."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run.start(resume)
    accelerator.wait_for_everyone()
    return run.finished()


def process_units(accelerator: Any, names: list[str], done: set[str], work: Callable[[int], list[dict]],
                  run: RunDirectory, args: argparse.Namespace, description: str) -> tuple[list[int], bool]:
    """Run ``work(unit)`` for this process's units not yet done, writing each one's records; returns this
    process's units and whether it stopped early (``--stop_after_batches``)."""
    mine = list(range(accelerator.process_index, len(names), accelerator.num_processes))
    todo = [u for u in mine if names[u] not in done]
    if len(todo) < len(mine):
        logger.info("resuming: %d of %d batches of this process already done", len(mine) - len(todo), len(mine))
    running = Running()
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=description,
               disable=not accelerator.is_local_main_process)
    with bar as progress:  # closed before an error is reported, so that the error is the last line
        for count, unit in enumerate(todo):
            if args.stop_after_batches is not None and count >= args.stop_after_batches:
                progress.close()
                logger.info("stopped after %d batches (--stop_after_batches); run the same command to continue",
                            count)
                return mine, True
            records = work(unit)
            _log_skipped(records)
            run.write_unit(names[unit], records)
            running.add(records)
            progress.update(1)
            progress.set_postfix(running.postfix())
    return mine, False


def environment(accelerator: Any) -> dict:
    """Versions and processes, for ``all_results.json``."""
    packages = ("hf-sparse-attack", "torch", "transformers", "datasets", "accelerate", "torchmetrics", "pycocotools",
                "numpy")
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"versions": versions, "num_processes": accelerator.num_processes, "device": str(accelerator.device)}


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
        **environment(accelerator),
    }


def evaluate(spec: TaskSpec, args: argparse.Namespace) -> dict | None:
    """Run the evaluation of ``args`` (see the module docstring); the results on the main process (``None``
    elsewhere, or when stopped early by ``--stop_after_batches``)."""
    started = time.time()
    check_args(args)
    attacks = attack_configs(args)
    checked = check_model(spec, args.model_name_or_path, args)
    accelerator = setup(args)
    run, resume = open_run(accelerator, args)
    dataset = load_data(spec, args, checked.label2id)
    start_logging()
    objective = load_objective(spec, args.model_name_or_path, args, accelerator.device)
    done = start_run(accelerator, run, resume)

    units = batches(len(dataset), args.per_device_eval_batch_size)
    names = [f"b{u:06d}" for u in range(len(units))]
    examples = set(dataset.ids[: args.num_pictures])
    logger.info("%s: %d samples in %d batches on %d process(es); attacks: %s", args.model_name_or_path,
                len(dataset), len(units), accelerator.num_processes, ", ".join(map(str, attacks)))

    def work(unit: int) -> list[dict]:
        samples, skipped = load_samples(dataset, units[unit])
        return skipped + attack_batch(spec, objective, samples, attacks, run, args, examples)

    mine, stopped = process_units(accelerator, names, done, work, run, args, f"attacking {spec.task}")
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
            "results": [{"k": a.k, "attack": to_dict(a), "metrics": computed[a.k]} for a in attacks],
            **summary(dataset, args, records, run, len(done), started, accelerator),
        }
        results["pictures"] = write_pictures(spec, objective, run, split_records(records)[0], attacks, computed,
                                             sorted(examples))
        run.write_results(results)
        logger.info("results in %s: %s", run.path, {k: _short(v) for k, v in computed.items()})
    accelerator.wait_for_everyone()
    return results


def _short(metrics: dict) -> dict:
    return {key: round(value, 4) for key, value in metrics.items()}


def write_pictures(spec: TaskSpec, objective: Any, run: RunDirectory, by_k: dict[int, list[dict]], attacks: list,
                   computed: dict[int, dict], example_ids: list[int]) -> list[str]:
    """The example grid of each k and, for several k, the metric against k; returns the files written."""
    written = []
    clean_paths = {i: run.path / "examples" / f"{i}.png" for i in example_ids}
    for attack in attacks:
        records = {r["id"]: r for r in by_k.get(attack.k, [])}
        rows = [
            spec.panels(objective, load_png(clean_paths[i]), load_png(run.path / "examples" / f"{i}_k{attack.k}.png"),
                        records[i])
            for i in example_ids if i in records and clean_paths[i].exists()
        ]
        if rows:
            name = f"pictures/examples_k{attack.k}.png"
            save_grid(rows, run.path / name, title=f"{objective.name_or_path}: {type(attack).__name__} k={attack.k}",
                      num_classes=objective.model.config.num_labels)
            written.append(name)
    if len(attacks) > 1:
        ks = [a.k for a in attacks]
        name = f"pictures/{spec.curve[-1][0]}_vs_k.png"
        save_curve(ks, {label: [computed[k][key] for k in ks] for key, label in spec.curve}, run.path / name,
                   spec.curve_label, title=f"{objective.name_or_path}: {type(attacks[0]).__name__}")
        written.append(name)
    return written


def run_script(parser: Parser, body: Callable[[argparse.Namespace], dict | None],
               argv: Sequence[str] | None = None) -> dict | None:
    """Parse ``argv`` with ``parser`` and run ``body``; a usage, data, model or output-directory problem is one
    line on stderr and exit code 2 (``SystemExit``)."""
    import tasks

    args = parser.parse_args(argv)
    try:
        return body(args)
    except (UsageError, DataError, OutputDirError, tasks.TaskLoadError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
