"""A run's adversarial examples as a ``datasets`` dataset (the Hugging Face way to share them; see also
:mod:`.model_card`).

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

The model card of a run: :mod:`.model_card`; the flags and the end of a run: :mod:`.sharing`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.logging import get_logger
from PIL import Image

from .records import (
    RECORDS_FILE,
    RESULTS_FILE,
    guard_output_dir,
    remove,
)

logger = get_logger(__name__)

#: What marks a directory as an exported dataset (``DatasetDict.save_to_disk``): ``--overwrite`` may replace it.
DATASET_MARK = "dataset_dict.json"


class ExportError(ValueError):
    """The results cannot be exported or pushed as asked; the message says why and what to do."""


def _png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _uint8(x: Any) -> np.ndarray:
    """A ``(3, H, W)`` tensor in ``[0, 1]`` as an ``(H, W, 3)`` uint8 array, as :func:`.records.save_png` saves it."""
    return x.detach().cpu().mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


class TaskExport(ABC):
    """What one task puts in the exported dataset: its truth and predictions."""

    @abstractmethod
    def fields(self, objective: Any, sample: Any, targets: Any, record: dict, clean: np.ndarray,
               adversarial: np.ndarray) -> dict:
        """The truth and prediction columns of one row; ``clean`` and ``adversarial`` are the model-frame
        ``(h, w, 3)`` uint8 images."""

    @abstractmethod
    def features(self, objective: Any, columns: dict[str, list]) -> dict:
        """The ``datasets`` features of the columns of :meth:`fields` (``columns``: their values, all rows)."""


class ClassificationExport(TaskExport):
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


#: Task (of the evaluation scripts) -> what its exported dataset holds.
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
        check_replaceable(path, "the export directory", overwrite=True)
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


def check_replaceable(path: Path, what: str, overwrite: bool) -> None:
    """``path`` is new, empty, or an earlier export (then only with ``overwrite``): what an export may replace."""
    found = guard_output_dir(path, lambda p: list(p.iterdir()), True, str)
    if found and not (path / DATASET_MARK).is_file():
        raise ExportError(f"{what} {str(path)!r} is not empty and holds no exported dataset; choose another directory")
    if found and not overwrite:
        raise ExportError(f"{what} {str(path)!r} already holds a dataset; pass --overwrite to replace it")


