"""Share a run's results the Hugging Face way: its adversarial examples as a ``datasets`` dataset, and its numbers as
a model card's ``model-index``.

    python evaluation/eval_classification.py --model_name_or_path ./my-vit --dataset_name ./val --k 10 20 \\
        --output_dir runs/vit --export_dataset runs/vit-adversarial [--push_to_hub me/vit-sparse-adversarial] \\
        [--push_model_card me/my-vit]
    python evaluation/eval_classification.py --model_name_or_path ./other-model \\
        --dataset_name runs/vit-adversarial --dataset_split k10 --image_column_name adversarial --output_dir runs/t

**The dataset** (``--export_dataset DIR``, which implies ``--save_adversarial``; :func:`export_dataset`) is a
``DatasetDict`` written with ``save_to_disk``, one split per budget, ``k{K}``, one row per evaluated sample
(skipped samples have none). Everything is in the *model frame*, the pixels the attack worked on (after the
processor's resize/crop, padding left out), because an adversarial example exists only there: resizing it back to
the original image would smear the sparse perturbation over its neighbours. Columns:

- ``id``, ``k``, ``success`` (the attack's goal reached), ``l0`` (the run's record);
- ``image``: the clean pixels, ``adversarial``: the adversarial ones, byte for byte the run's lossless PNG
  (``output_dir/adversarial/k{K}/{id}.png``), ``mask``: the pixels that differ (PNG mode ``1``);
- the truth in the model frame, under the column names the evaluation scripts read by default: classification
  ``label`` (``ClassLabel`` with the model's names); detection ``objects`` with ``bbox`` (COCO xywh pixels),
  ``category``, ``area`` and ``iscrowd``; segmentation ``label``, a mode ``L`` label map in the dataset's classes
  (the processor's ``do_reduce_labels`` undone, so the model's processor reduces it again);
- ``clean_prediction`` and ``adversarial_prediction``: class ids (classification); ``bbox``/``score``/``category``
  lists (detection, the run's detections scaled to the model frame); label maps in the model's classes
  (segmentation, recomputed on the exported images in the model's dtype, without mixed precision).

The dataset is a ready ``--dataset_name`` for the evaluation scripts: ``--dataset_split k10`` with
``--image_column_name adversarial`` evaluates any model on the adversarial images (its *clean* metrics there are
its accuracy / mAP / mIoU under the transferred attack), the default ``image`` column on the clean ones. Fed to
the attacked model itself it reproduces the run's adversarial numbers (``tests/test_export.py``) when the model frame
is a fixed point of the model's processor (a resize to a fixed size, as ViT's and SegFormer's processors do, or
DETR's shortest/longest edge); mIoU moreover needs images already at the model's size, as it is computed in the
image's frame (accuracy does not depend on the frame, nor mAP: IoU does not change when both axes are scaled). A
processor that crops (ResNet's and ConvNeXt's ``crop_pct``) rescales the images again. ``--push_to_hub REPO_ID``
pushes the dataset to that Hub dataset repository.

**The model card** (always written, ``output_dir/model_card.md``; :func:`model_card`) holds the run's results as
``model-index`` metadata (:class:`huggingface_hub.EvalResult`): task type ``image-classification``,
``object-detection`` or ``image-segmentation``; the dataset (Hub name, else the folder's name, with the path as
its name; split, config); one clean value per metric and one adversarial value per attack, whose ``args`` are the
attack's config (``None`` values left out, as model cards do) and the task options. Metric types: ``accuracy``,
``mAP`` and ``mAP@50``, ``mean_iou``. Paste it into a card, or pass ``--push_model_card REPO_ID``, which opens a
pull request on that model repository adding the results to its card (``huggingface_hub.metadata_update``, never
overwriting the card or a different value already there).

The Hub flags are checked before the attack runs (:func:`check_sharing`): offline mode (``HF_HUB_OFFLINE``), no
token, a bad token or an unreachable Hub is one error line then, not after hours of attacks.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
from accelerate.logging import get_logger
from PIL import Image

from .records import (
    OUTPUTS,
    RECORDS_FILE,
    RESULTS_FILE,
    OutputDirError,
    RunDirectory,
    atomic_write,
    guard_output_dir,
    remove,
)

logger = get_logger(__name__)

MODEL_CARD_FILE = "model_card.md"
#: What marks a directory as an exported dataset (``DatasetDict.save_to_disk``): ``--overwrite`` may replace it.
DATASET_MARK = "dataset_dict.json"


class ExportError(ValueError):
    """The results cannot be exported or pushed as asked; the message says why and what to do."""


class CardMetric(NamedTuple):
    """One metric of a task in the model card: its ``model-index`` type, its keys in ``all_results.json`` and the
    names of its clean and adversarial values."""

    metric_type: str
    clean_key: str
    adversarial_key: str
    clean_name: str
    adversarial_name: str


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _uint8(x: Any) -> np.ndarray:
    """A ``(3, H, W)`` tensor in ``[0, 1]`` as an ``(H, W, 3)`` uint8 array, as :func:`.records.save_png` saves it."""
    return x.detach().cpu().mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


class TaskExport(ABC):
    """What one task puts in the exported dataset (truth and predictions) and in the model card."""

    task_type: ClassVar[str]
    task_name: ClassVar[str]
    metrics: ClassVar[tuple[CardMetric, ...]]

    @abstractmethod
    def fields(self, objective: Any, sample: Any, targets: Any, record: dict, clean: np.ndarray,
               adversarial: np.ndarray) -> dict:
        """The truth and prediction columns of one row; ``clean`` and ``adversarial`` are the model-frame
        ``(h, w, 3)`` uint8 images."""

    @abstractmethod
    def features(self, objective: Any, columns: dict[str, list]) -> dict:
        """The ``datasets`` features of the columns of :meth:`fields` (``columns``: their values, all rows)."""


class ClassificationExport(TaskExport):
    task_type, task_name = "image-classification", "Image Classification"
    metrics = (CardMetric("accuracy", "clean_accuracy", "robust_accuracy", "clean accuracy", "robust accuracy"),)

    def fields(self, objective, sample, targets, record, clean, adversarial) -> dict:
        return {key: record[key] for key in ("label", "clean_prediction", "adversarial_prediction")}

    def features(self, objective: Any, columns: dict[str, list]) -> dict:
        import datasets

        config = objective.model.config
        names = datasets.ClassLabel(names=[str(config.id2label.get(i, i)) for i in range(config.num_labels)])
        in_range = all(0 <= label < config.num_labels for label in columns["label"])
        return {"label": names if in_range else datasets.Value("int64"), "clean_prediction": names,
                "adversarial_prediction": names}


def _detections(found: dict, scale: np.ndarray, keys: dict[str, str]) -> dict:
    """A detection dict of the run's records (xywh boxes in the original image) in the model frame, its keys renamed
    by ``keys``."""
    boxes = np.asarray(found["boxes"], dtype=np.float64).reshape(-1, 4) * np.tile(scale, 2)
    out = {keys["boxes"]: boxes.tolist()}
    for key, name in keys.items():
        if key == "area":
            out[name] = (np.asarray(found[key], dtype=np.float64) * scale.prod()).tolist()
        elif key != "boxes":
            out[name] = list(found[key])
    return out


class DetectionExport(TaskExport):
    task_type, task_name = "object-detection", "Object Detection"
    metrics = (CardMetric("mAP", "map_clean", "map_adversarial", "clean mAP", "adversarial mAP"),
               CardMetric("mAP@50", "map50_clean", "map50_adversarial", "clean mAP@50", "adversarial mAP@50"))

    def fields(self, objective, sample, targets, record, clean, adversarial) -> dict:
        scale = np.array(clean.shape[1::-1], dtype=np.float64) / np.array(sample.size[::-1], dtype=np.float64)
        truth = {"boxes": "bbox", "labels": "category", "area": "area", "iscrowd": "iscrowd"}
        found = {"boxes": "bbox", "scores": "score", "labels": "category"}
        return {"objects": _detections(record["ground_truth"], scale, truth),
                **{f"{v}_prediction": _detections(record[f"{v}_prediction"], scale, found)
                   for v in ("clean", "adversarial")}}

    def features(self, objective: Any, columns: dict[str, list]) -> dict:
        from datasets import List, Value

        boxes, floats, ints = List(List(Value("float64"), length=4)), List(Value("float64")), List(Value("int64"))
        found = {"bbox": boxes, "score": floats, "category": ints}
        return {"objects": {"bbox": boxes, "category": ints, "area": floats, "iscrowd": ints},
                "clean_prediction": found, "adversarial_prediction": found}


class SegmentationExport(TaskExport):
    task_type, task_name = "image-segmentation", "Image Segmentation"
    metrics = (CardMetric("mean_iou", "miou_clean", "miou_adversarial", "clean mIoU", "adversarial mIoU"),)

    def fields(self, objective, sample, targets, record, clean, adversarial) -> dict:
        import torch

        if objective.model.config.num_labels > 256:
            raise ExportError(f"the model has {objective.model.config.num_labels} classes; exported label maps "
                              "are 8-bit (at most 256 classes)")
        truth = targets[0].cpu().numpy()
        if getattr(objective.processor, "do_reduce_labels", False):  # back to the dataset's classes
            truth = np.where(truth == 255, 0, truth + 1)
        x = torch.from_numpy(np.stack([clean, adversarial])).permute(0, 3, 1, 2).float().div(255)
        maps = objective.predict(x.to(objective.device)).cpu().numpy().astype(np.uint8)
        return {"label": _png(Image.fromarray(truth.astype(np.uint8), mode="L")),
                "clean_prediction": _png(Image.fromarray(maps[0], mode="L")),
                "adversarial_prediction": _png(Image.fromarray(maps[1], mode="L"))}

    def features(self, objective: Any, columns: dict[str, list]) -> dict:
        from datasets import Image as ImageFeature

        return {key: ImageFeature() for key in ("label", "clean_prediction", "adversarial_prediction")}


#: Task (of the evaluation scripts) -> what its export and model card hold.
EXPORTS: dict[str, TaskExport] = {"classification": ClassificationExport(), "detection": DetectionExport(),
                                  "segmentation": SegmentationExport()}


def _export_of(task: str) -> TaskExport:
    if task not in EXPORTS:
        raise ExportError(f"unknown task {task!r}; allowed: {sorted(EXPORTS)}")
    return EXPORTS[task]


def _row(spec: Any, objective: Any, sample: Any, record: dict, adversarial_path: Path) -> dict:
    """One row of the exported dataset: the sample's model-frame clean image, the run's adversarial PNG, the mask,
    the truth and the predictions."""
    from .task_spec import frame_image

    x, targets = objective.prepare([sample.image], [spec.annotation(objective, sample)])
    clean = _uint8(frame_image(x[0], spec.valid_size(x, targets, 0)))
    if not adversarial_path.is_file():
        raise ExportError(f"the adversarial image {str(adversarial_path)!r} of sample {record['id']} is missing; "
                          "rerun with --save_adversarial (or --export_dataset) and --overwrite")
    data = adversarial_path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        adversarial = np.array(image.convert("RGB"))
    if adversarial.shape != clean.shape:
        raise ExportError(f"{str(adversarial_path)!r} is {adversarial.shape[0]}x{adversarial.shape[1]} but the "
                          f"model frame of sample {record['id']} is {clean.shape[0]}x{clean.shape[1]}: it is not "
                          "this run's image")
    mask = Image.fromarray((clean != adversarial).any(-1))
    return {"id": record["id"], "k": record["k"], "image": _png(Image.fromarray(clean)),
            "adversarial": {"bytes": data, "path": None}, "mask": _png(mask), "success": record["success"],
            "l0": record["l0"], **_export_of(spec.task).fields(objective, sample, targets, record, clean, adversarial)}


def export_dataset(spec: Any, objective: Any, dataset: Any, run_dir: str | os.PathLike,
                   path: str | os.PathLike | None = None) -> Any:
    """The adversarial examples of the finished run in ``run_dir`` as a ``datasets.DatasetDict`` (one split
    ``k{K}`` per budget; the columns are in the module docstring), written with ``save_to_disk`` to ``path`` if
    given (replacing an earlier export there; any other non-empty directory is refused). ``spec``, ``objective``
    and ``dataset`` are the run's task spec, loaded model and data (:func:`~.loop.run_evaluation` passes its own);
    the run must have saved its adversarial images (``--save_adversarial``). The script flag ``--export_dataset
    DIR`` calls it at the end of a run::

        python evaluation/eval_segmentation.py --model_name_or_path ./segformer --dataset_name ./val --k 40 \\
            --output_dir runs/seg --export_dataset runs/seg-adversarial
        python -c "import datasets; print(datasets.load_from_disk('runs/seg-adversarial'))"
    """
    import datasets

    run_dir = Path(run_dir)
    with open(run_dir / RESULTS_FILE) as f:
        results = json.load(f)
    if results.get("task") != spec.task:
        raise ExportError(f"{str(run_dir)!r} holds a {results.get('task')!r} run, not a {spec.task!r} one")
    task = _export_of(spec.task)
    by_id = defaultdict(list)
    for line in (run_dir / RECORDS_FILE).read_text().splitlines():
        record = json.loads(line)
        if "skipped" not in record:
            by_id[record["id"]].append(record)
    positions = {sample_id: position for position, sample_id in enumerate(dataset.ids)}
    unknown = sorted(set(by_id) - set(positions))
    if unknown:
        raise ExportError(f"records of samples {unknown[:5]} are not in the dataset given: export with the run's "
                          "dataset")
    splits: dict[int, dict[str, list]] = {}
    for sample_id in sorted(by_id):
        sample = dataset[positions[sample_id]]
        for record in by_id[sample_id]:
            png = run_dir / "adversarial" / f"k{record['k']}" / f"{sample_id}.png"
            row = _row(spec, objective, sample, record, png)
            columns = splits.setdefault(record["k"], defaultdict(list))
            for key, value in row.items():
                columns[key].append(value)
    description = (f"Sparse (L0) adversarial examples of {results['model_name_or_path']} on "
                   f"{results['dataset'].get('source')}, by hf-sparse-attack; one split per budget k; images in the "
                   "model's input frame.")
    out = datasets.DatasetDict()
    for k, columns in sorted(splits.items()):
        features = datasets.Features({
            "id": datasets.Value("int64"), "k": datasets.Value("int64"), "image": datasets.Image(),
            "adversarial": datasets.Image(), "mask": datasets.Image(), "success": datasets.Value("bool"),
            "l0": datasets.Value("int64"), **task.features(objective, columns)})
        info = datasets.DatasetInfo(description=description, features=features)
        out[f"k{k}"] = datasets.Dataset.from_dict(dict(columns), features=features, info=info)
    if path is not None:
        path = Path(path)
        _check_replaceable(path, "the export directory", overwrite=True)
        _save(out, path)
    return out


def _save(dataset: Any, path: Path) -> None:
    """``save_to_disk`` into a temporary sibling of ``path``, then put in its place: an interrupted export leaves the
    previous one (or nothing) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        dataset.save_to_disk(str(temporary))
        remove(path)
        os.replace(temporary, path)
    finally:
        remove(temporary)


def _dataset_card_fields(description: dict) -> dict:
    """``model-index`` dataset fields of ``all_results.json``'s ``dataset``: the Hub name as type when it is one,
    else the folder's (or COCO annotation file's) name, with the path as given for name."""
    if description.get("source") == "coco":
        return {"dataset_type": "coco", "dataset_name": description["annotation_file"]}
    source = str(description["source"])
    local = Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
    fields = {"dataset_type": Path(source).name if local else source, "dataset_name": source,
              "dataset_split": description.get("split"), "dataset_config": description.get("config_name")}
    if description.get("max_eval_samples") is not None:
        fields["dataset_args"] = {"max_eval_samples": description["max_eval_samples"]}
    return fields


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def eval_results(results: dict) -> list:
    """The ``model-index`` entries (:class:`huggingface_hub.EvalResult`) of a run's ``all_results.json``: per metric
    of the task, the clean value once (it does not depend on the attack) and the adversarial value of each attack,
    with the attack's config and the task options as ``metric_args``. Undefined values (``null``/NaN) are left out.

    >>> results = {"task": "classification", "task_options": {"loss": "ce"},
    ...            "dataset": {"source": "ylecun/mnist", "split": "test", "config_name": None},
    ...            "results": [{"k": 10, "attack": {"attack": "SparsePGD", "k": 10, "steps": 100},
    ...                         "metrics": {"clean_accuracy": 0.75, "robust_accuracy": 0.25}}]}
    >>> [(r.task_type, r.dataset_type, r.metric_type, r.metric_name, r.metric_value) for r in eval_results(results)]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('image-classification', 'ylecun/mnist', 'accuracy', 'clean accuracy', 0.75),
     ('image-classification', 'ylecun/mnist', 'accuracy', 'robust accuracy (SparsePGD, k=10)', 0.25)]
    >>> eval_results(results)[1].metric_args
    {'attack': 'SparsePGD', 'k': 10, 'steps': 100, 'task_options': {'loss': 'ce'}}
    """
    from huggingface_hub import EvalResult

    task = _export_of(results.get("task"))
    if not results.get("results"):
        raise ExportError("the results hold no attack (an empty 'results' list)")
    common = {"task_type": task.task_type, "task_name": task.task_name,
              **_dataset_card_fields(results["dataset"])}
    out = []
    for metric in task.metrics:
        clean = _value(results["results"][0]["metrics"], metric.clean_key)
        if clean is not None:
            out.append(EvalResult(**common, metric_type=metric.metric_type, metric_name=metric.clean_name,
                                  metric_value=clean))
        for entry in results["results"]:
            value = _value(entry["metrics"], metric.adversarial_key)
            if value is not None:
                args = {**entry["attack"], "task_options": results.get("task_options")}
                out.append(EvalResult(**common, metric_type=metric.metric_type, metric_value=value,
                                      metric_name=f"{metric.adversarial_name} ({entry['attack']['attack']}, "
                                                  f"k={entry['k']})", metric_args=args))
    return out


def _body(results: dict) -> str:
    """The card's text: what was evaluated, and a table of clean and adversarial values."""
    task = _export_of(results["task"])
    samples = results.get("samples", {})
    head = ["attack", "k"] + [name for m in task.metrics for name in (m.clean_name, m.adversarial_name)]
    rows = []
    for entry in results["results"]:
        values = [_value(entry["metrics"], key) for m in task.metrics for key in (m.clean_key, m.adversarial_key)]
        rows.append([entry["attack"]["attack"], str(entry["k"]), *("n/a" if v is None else f"{v:.4f}" for v in values)])
    table = "\n".join("| " + " | ".join(row) + " |" for row in [head, ["---"] * len(head), *rows])
    version = results.get("versions", {}).get("hf-sparse-attack") or "(version unknown)"
    dataset = results["dataset"]
    return (f"# Sparse adversarial robustness of {results['model_name_or_path']}\n\n"
            f"{task.task_name}, evaluated with hf-sparse-attack {version} on "
            f"`{dataset.get('source')}` (split {dataset.get('split')}): {samples.get('evaluated')} samples evaluated, "
            f"{samples.get('skipped')} skipped. k counts perturbed pixels (L0); each attack's configuration is in "
            f"the `args` of its metrics above.\n\n{table}\n")


def model_card(results: dict, model_name: str | None = None) -> Any:
    """A :class:`huggingface_hub.ModelCard` of a run's ``all_results.json``: :func:`eval_results` as its
    ``model-index`` (named ``model_name``, default the run's ``model_name_or_path``) and a table of the values.

    >>> results = {"task": "segmentation", "model_name_or_path": "nvidia/mit-b0", "task_options": {},
    ...            "dataset": {"source": "scene_parse_150", "split": "validation", "config_name": None},
    ...            "samples": {"evaluated": 8, "skipped": 0},
    ...            "results": [{"k": 40, "attack": {"attack": "SparsePGD", "k": 40},
    ...                         "metrics": {"miou_clean": 0.5, "miou_adversarial": 0.125}}]}
    >>> card = model_card(results)
    >>> [(r.metric_type, r.metric_value) for r in card.data.eval_results]
    [('mean_iou', 0.5), ('mean_iou', 0.125)]
    >>> print(str(card).split("---")[1].strip().splitlines()[0:3])
    ['model-index:', '- name: nvidia/mit-b0', '  results:']
    """
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(model_name=model_name or results["model_name_or_path"], eval_results=eval_results(results))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(results)}")


def _offline() -> bool:
    from huggingface_hub import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _check_hub(flag: str, repo_id: str, repo_type: str) -> None:
    """The Hub can take a push to ``repo_id`` now: a valid id, online, a valid token (and, for a model card, the
    model repository exists); :class:`ExportError` naming ``flag`` otherwise."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ExportError(f"{flag} {repo_id!r} is not a Hub repository id ('name' or 'owner/name'): {err}") from None
    if _offline():
        raise ExportError(f"{flag} {repo_id}: the Hugging Face Hub is in offline mode (HF_HUB_OFFLINE); unset it to "
                          "push, or drop the flag (the results are written to the output dir either way)")
    if not huggingface_hub.get_token():
        raise ExportError(f"{flag} {repo_id}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    api = huggingface_hub.HfApi()
    try:
        api.whoami()
        if repo_type == "model":
            api.model_info(repo_id)
    except Exception as err:  # noqa: BLE001 - network errors, HTTP errors and bad tokens alike stop the run here
        raise ExportError(f"{flag} {repo_id}: cannot use the Hugging Face Hub ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); check the network, your token and the "
                          "repository, or drop the flag") from None


def check_sharing(args: argparse.Namespace) -> None:
    """Check the sharing flags before anything heavy and turn on ``--save_adversarial`` for ``--export_dataset``;
    :class:`ExportError` (or :class:`~.records.OutputDirError`) on the first problem.

    >>> check_sharing(argparse.Namespace(export_dataset=None, push_to_hub="me/adv", push_model_card=None))
    Traceback (most recent call last):
    ...
    hf_sparse_attack.evaluation.harness.export.ExportError: --push_to_hub pushes the dataset of ...
    """
    export, push, card = (getattr(args, name, None) for name in ("export_dataset", "push_to_hub", "push_model_card"))
    if push is not None and export is None:
        raise ExportError("--push_to_hub pushes the dataset of --export_dataset: pass --export_dataset DIR too")
    if export is not None:
        _check_export_dir(Path(export).expanduser(), Path(args.output_dir).expanduser(), args.overwrite)
        args.save_adversarial = True
    if push is not None:
        _check_hub("--push_to_hub", push, "dataset")
    if card is not None:
        _check_hub("--push_model_card", card, "model")


def _check_replaceable(path: Path, what: str, overwrite: bool) -> None:
    """``path`` is new, empty, or an earlier export (then only with ``overwrite``): what an export may replace."""
    found = guard_output_dir(path, lambda p: list(p.iterdir()), True, str)
    if found and not (path / DATASET_MARK).is_file():
        raise ExportError(f"{what} {str(path)!r} is not empty and holds no exported dataset; choose another directory")
    if found and not overwrite:
        raise ExportError(f"{what} {str(path)!r} already holds a dataset; pass --overwrite to replace it")


def _check_export_dir(path: Path, output_dir: Path, overwrite: bool) -> None:
    """``path`` can take the exported dataset: not the run's output dir, above it or inside its outputs; empty, new,
    or an earlier export with ``overwrite``; its parent writable."""
    resolved, out = path.resolve(), output_dir.resolve()
    if out.is_relative_to(resolved) or (resolved.is_relative_to(out) and resolved.relative_to(out).parts[0] in OUTPUTS):
        raise ExportError(f"--export_dataset {str(path)!r} is or holds the run's output dir or its outputs; choose "
                          "another directory")
    _check_replaceable(path, "--export_dataset", overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise OutputDirError(f"--export_dataset {str(path)!r}: its directory is not writable: {err}") from err


def share_results(spec: Any, objective: Any, dataset: Any, run: RunDirectory, args: argparse.Namespace) -> None:
    """Main process, after ``all_results.json``: write ``model_card.md``; with ``--export_dataset`` export the
    adversarial examples (:func:`export_dataset`); push them (``--push_to_hub``) and the results
    (``--push_model_card``) when asked. A failed push says how to push what was written."""
    import huggingface_hub

    results = json.loads((run.path / RESULTS_FILE).read_text())
    atomic_write(run.path / MODEL_CARD_FILE, str(model_card(results)))
    logger.info("model card (model-index) in %s", run.path / MODEL_CARD_FILE)
    export = getattr(args, "export_dataset", None)
    if export is not None:
        exported = export_dataset(spec, objective, dataset, run.path, Path(export).expanduser())
        logger.info("adversarial examples exported to %s: %s", export,
                    {split: len(rows) for split, rows in exported.items()})
        if args.push_to_hub is not None:
            try:
                exported.push_to_hub(args.push_to_hub)
            except Exception as err:  # noqa: BLE001 - any failure of the upload: the dataset is on disk
                raise ExportError(f"--push_to_hub {args.push_to_hub}: the upload failed ({type(err).__name__}: {err}); "
                                  f"the dataset is in {export}: push it with datasets.load_from_disk({export!r})."
                                  f"push_to_hub({args.push_to_hub!r})") from None
            logger.info("dataset pushed to https://huggingface.co/datasets/%s", args.push_to_hub)
    card = getattr(args, "push_model_card", None)
    if card is not None:
        metadata = model_card(results, model_name=card).data.to_dict()
        try:
            url = huggingface_hub.metadata_update(card, {"model-index": metadata["model-index"]}, create_pr=True,
                                                  commit_message="Add sparse adversarial robustness results")
        except Exception as err:  # noqa: BLE001 - any failure of the upload: the card is on disk
            raise ExportError(f"--push_model_card {card}: the pull request failed ({type(err).__name__}: {err}); "
                              f"the card is in {run.path / MODEL_CARD_FILE}") from None
        logger.info("pull request with the results on %s: %s", card, url)
