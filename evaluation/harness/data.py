"""Evaluation data: images with their annotations and stable integer sample ids, from two kinds of source.

- A Hugging Face dataset, by Hub name (``load_dataset``) or local path: a directory written by ``save_to_disk``
  (``load_from_disk``) or an image folder (``imagefolder``, annotations in ``metadata.jsonl``). Column names are
  configurable (:class:`Columns`).
- COCO detection: an annotation json and an image directory, read with pycocotools.

Each gives an :class:`EvalDataset`: ``dataset[position]`` is a :class:`Sample` (``id``, RGB PIL ``image``,
``annotation``). Annotations by task:

- classification: the class id (``int``);
- detection: a dict of numpy arrays, ``boxes`` ``(n, 4)`` COCO ``[x, y, width, height]`` in pixels of the image,
  ``labels`` ``(n,)`` class ids of the model, ``area`` and ``iscrowd`` (COCO's, else ``w * h`` and 0), every box
  as in the dataset: this is what mAP scores, so the numbers are COCOeval's on the same files. The attack aims at
  the sample's ``fitted`` annotation instead (:func:`fit_boxes`): boxes reaching out of the image clipped to it,
  boxes with no area inside it (outside the image, zero width or height) dropped; each such change is listed, in
  words, in the sample's ``changes`` (reported in ``all_results.json``);
- segmentation: the label map, an ``(H, W)`` uint8 array of the image's size (255: unlabelled).

Sample ids are the row index in the split (Hugging Face) or the COCO image id; ``max_eval_samples`` keeps the
first rows (images in id order). Ids seed each sample's attack and name its records, so they never depend on
batching or on the number of processes. A sample that cannot be used (corrupt image file, malformed annotation)
raises :class:`BadSample` when read; the evaluation skips it, counts it and reports why. A dataset that cannot be
used at all (missing, offline, wrong split or columns, empty) raises :class:`DataError` when loaded.

>>> import datasets, numpy as np
>>> rows = datasets.Dataset.from_dict(
...     {"image": [np.zeros((4, 6, 3), np.uint8)] * 3, "label": [2, 0, -1]},
...     features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
>>> data = HFDataset(rows, "classification", max_eval_samples=2)
>>> len(data), data[1].id, data[1].image.size, data[1].annotation
(2, 1, (6, 4), 0)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TASKS = ("classification", "detection", "segmentation")
BBOX_FORMATS = ("xywh", "xyxy")


class DataError(ValueError):
    """The dataset cannot be used at all; the message says why and what to pass instead."""


class BadSample(Exception):
    """One sample cannot be used (its image does not decode, its annotation is malformed); the reason is the text."""


@dataclass(frozen=True)
class Columns:
    """Column names of a Hugging Face dataset.

    ``label`` holds the class id (classification) or the label-map image (segmentation). Detection reads the
    ``objects`` column: a dict of lists or a list of dicts with keys ``bbox`` (COCO xywh, or xyxy with
    ``bbox_format="xyxy"``) and ``category`` (class ids of the model), and optionally ``area`` and ``iscrowd``.
    """

    image: str = "image"
    label: str = "label"
    objects: str = "objects"
    bbox: str = "bbox"
    category: str = "category"
    bbox_format: str = "xywh"

    def __post_init__(self) -> None:
        if self.bbox_format not in BBOX_FORMATS:
            raise DataError(f"unknown bbox format {self.bbox_format!r}; allowed: {list(BBOX_FORMATS)}")

    def needed(self, task: str) -> tuple[str, ...]:
        """The top-level columns ``task`` reads."""
        return (self.image, self.objects if task == "detection" else self.label)


@dataclass
class Sample:
    """One image to evaluate: its stable ``id``, the RGB ``image`` and the task's ``annotation``, the dataset's own,
    which the metrics score. A detection sample also has ``fitted``, its annotation fitted to the image for the
    attack's targets, and ``changes``, what fitting changed (in words; see :func:`fit_boxes`)."""

    id: int
    image: Image.Image
    annotation: Any
    changes: list[str] = field(default_factory=list)
    fitted: Any = None

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the image."""
        return self.image.height, self.image.width


class EvalDataset(ABC):
    """Samples in a fixed order; ``ids[position]`` is the id of ``self[position]``; ``description`` is for reports."""

    ids: list[int]
    description: dict

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def __getitem__(self, position: int) -> Sample:
        """The sample at ``position``; raises :class:`BadSample` if it cannot be used."""


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; allowed: {list(TASKS)}")
    return task


def _first(ids: list[int], max_eval_samples: int | None) -> list[int]:
    if max_eval_samples is not None:
        if not isinstance(max_eval_samples, int) or isinstance(max_eval_samples, bool) or max_eval_samples < 1:
            raise DataError(f"max_eval_samples must be a positive integer, got {max_eval_samples!r}")
        ids = ids[:max_eval_samples]
    if not ids:
        raise DataError("the dataset has no samples")
    return ids


def rgb(image: Any) -> Image.Image:
    """A decoded PIL image (any mode) as RGB; raises :class:`BadSample` for anything else."""
    if not isinstance(image, Image.Image):
        raise BadSample(f"expected an image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def label_map(value: Any, size: tuple[int, int]) -> np.ndarray:
    """A segmentation label image (PIL mode L, P or I, or an integer array) of ``size`` as a uint8 array."""
    if isinstance(value, Image.Image):
        if value.mode not in ("L", "P", "I", "I;16"):
            raise BadSample(f"a label map must be a single-channel image (mode L, P or I), got mode {value.mode}")
    array = np.asarray(value)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise BadSample(f"a label map must be an (H, W) integer image, got shape {array.shape} dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BadSample(f"label map values must lie in [0, 255], got [{array.min()}, {array.max()}]")
    if array.shape != size:
        raise BadSample(f"the label map has size {array.shape} but its image has size {size}")
    return array.astype(np.uint8)


def objects(boxes: Any, labels: Any, area: Any = None, iscrowd: Any = None, bbox_format: str = "xywh") -> dict:
    """A detection annotation: boxes as float64 COCO xywh, int64 labels, area and iscrowd; validated.

    >>> objects([[0, 0, 4, 2]], [1], bbox_format="xyxy")["boxes"]
    array([[0., 0., 4., 2.]])
    >>> objects([[0, 0, -1, 2]], [1])
    Traceback (most recent call last):
    ...
    hf_sparse_attack.evaluation.harness.data.BadSample: box 0 has a negative width or height: [0.0, 0.0, -1.0, 2.0]
    """
    try:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise BadSample(f"boxes must be (n, 4) numbers and labels n integers: {err}") from None
    if len(boxes) != len(labels):
        raise BadSample(f"{len(boxes)} boxes but {len(labels)} labels")
    if not np.isfinite(boxes).all():
        raise BadSample("a box has a NaN or infinite coordinate")
    if bbox_format == "xyxy":
        boxes = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    negative = np.nonzero((boxes[:, 2] < 0) | (boxes[:, 3] < 0))[0]
    if len(negative):
        raise BadSample(f"box {negative[0]} has a negative width or height: {boxes[negative[0]].tolist()}")
    if len(labels) and labels.min() < 0:
        raise BadSample(f"labels must be class ids >= 0, got {labels.tolist()}")
    area = boxes[:, 2] * boxes[:, 3] if area is None else np.asarray(area, dtype=np.float64).reshape(-1)
    iscrowd = np.zeros(len(labels), np.int64) if iscrowd is None else np.asarray(iscrowd, np.int64).reshape(-1)
    if len(area) != len(labels) or len(iscrowd) != len(labels):
        raise BadSample("area and iscrowd must have one entry per box")
    return {"boxes": boxes, "labels": labels, "area": area, "iscrowd": iscrowd}


#: Pixels a box corner may lie outside its image and still count as inside (:func:`fit_boxes`): a tenth of the
#: precision of COCO's annotations (0.01 px), and more than the rounding of coordinates stored as float32 (half a
#: float32 step is below 5e-4 px up to 8192 px) or of ``x + width`` in float64 (about 1e-13 px).
BOX_TOLERANCE = 1e-3


def fit_boxes(annotation: dict, size: tuple[int, int]) -> tuple[dict, list[str]]:
    """A detection annotation (from :func:`objects`) fitted to the image of ``size`` ``(height, width)``, and the
    changes made, in words: a box with a corner more than :data:`BOX_TOLERANCE` pixels outside the image is
    clipped to it, and a box with no area inside the image is dropped.

    Every other box keeps its values exactly (no round trip through corners, whose float rounding would change the
    width of boxes well inside the image by about 1e-14 px). The evaluation aims its attacks at the fitted
    annotation and scores the dataset's own.

    >>> annotation, changes = fit_boxes(objects([[2, 1, 4, 4], [8, 0, 3, 3], [1, 1, 0, 2]], [0, 1, 2]), (4, 6))
    >>> annotation["boxes"].tolist(), annotation["labels"].tolist(), annotation["area"].tolist()
    ([[2.0, 1.0, 4.0, 3.0]], [0], [12.0])
    >>> changes  # doctest: +NORMALIZE_WHITESPACE
    ['box 0 [2.0, 1.0, 4.0, 4.0] clipped to the 4x6 image: [2.0, 1.0, 4.0, 3.0]',
     'box 1 [8.0, 0.0, 3.0, 3.0] dropped: no area inside the 4x6 image',
     'box 2 [1.0, 1.0, 0.0, 2.0] dropped: zero width or height']
    >>> fit_boxes(objects([[473.07, 395.93, 38.65, 28.67], [600.5, 0, 39.5000001, 5]], [0, 0]), (480, 640))[1]
    []
    """
    height, width = size
    boxes = annotation["boxes"]
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    clipped = np.clip(corners, 0, [width, height, width, height])
    moved = (np.abs(clipped - corners) > BOX_TOLERANCE).any(axis=1)
    fitted = np.where(moved[:, None], np.concatenate([clipped[:, :2], clipped[:, 2:] - clipped[:, :2]], axis=1), boxes)
    keep = (fitted[:, 2] > 0) & (fitted[:, 3] > 0)
    changes = []
    for i in np.nonzero(~keep | moved)[0]:
        box = boxes[i].tolist()
        if keep[i]:
            changes.append(f"box {i} {box} clipped to the {height}x{width} image: {fitted[i].tolist()}")
        elif box[2] > 0 and box[3] > 0:
            changes.append(f"box {i} {box} dropped: no area inside the {height}x{width} image")
        else:
            changes.append(f"box {i} {box} dropped: zero width or height")
    area = np.where(moved, np.minimum(annotation["area"], fitted[:, 2] * fitted[:, 3]), annotation["area"])
    fitted_annotation = {"boxes": fitted, "labels": annotation["labels"], "area": area,
                         "iscrowd": annotation["iscrowd"]}
    return {key: value[keep] for key, value in fitted_annotation.items()}, changes


def detection_sample(sample_id: int, image: Image.Image, annotation: dict) -> Sample:
    """A detection :class:`Sample`: the dataset's ``annotation`` as it is, and fitted to the image (:func:`fit_boxes`).

    >>> sample = detection_sample(3, Image.new("RGB", (6, 4)), objects([[2, 1, 4, 4]], [0]))
    >>> sample.annotation["boxes"].tolist(), sample.fitted["boxes"].tolist(), len(sample.changes)
    ([[2.0, 1.0, 4.0, 4.0]], [[2.0, 1.0, 4.0, 3.0]], 1)
    """
    fitted, changes = fit_boxes(annotation, (image.height, image.width))
    return Sample(sample_id, image, annotation, changes, fitted)


def _check_label_feature(dataset: Any, task: str, column: str) -> None:
    """A label column whose declared type cannot hold the task's labels is a :class:`DataError` (not every sample
    skipped): class ids are integers, label maps are images."""
    import datasets

    feature = (getattr(dataset, "features", None) or {}).get(column)
    if task == "detection" or not isinstance(feature, (datasets.Value, datasets.ClassLabel, datasets.Image)):
        return
    dtype = str(feature.dtype)
    if dtype == "null":  # no values to tell the type from (an empty column)
        return
    usable = isinstance(feature, datasets.Image) if task == "segmentation" else "int" in dtype
    if not usable:
        needed = "label-map images" if task == "segmentation" else "integer class ids"
        raise DataError(f"column {column!r} holds {type(feature).__name__}({dtype}) values, but {task} needs "
                        f"{needed}; name the right column with --label_column_name")


class HFDataset(EvalDataset):
    """A Hugging Face ``datasets.Dataset`` read row by row (images decoded on access, failures are bad samples)."""

    def __init__(
        self,
        dataset: Any,
        task: str,
        columns: Columns = Columns(),
        max_eval_samples: int | None = None,
        description: dict | None = None,
    ) -> None:
        self.task = _check_task(task)
        self.columns = columns
        missing = [c for c in columns.needed(task) if c not in dataset.column_names]
        if missing:
            option = {columns.image: "--image_column_name", columns.label: "--label_column_name",
                      columns.objects: "--objects_column_name"}
            raise DataError(
                f"the dataset has no column {missing[0]!r} (columns: {dataset.column_names}); name the right one "
                f"with {option[missing[0]]}"
            )
        _check_label_feature(dataset, task, columns.label)
        self.dataset = dataset
        self.label_map: dict[int, int] | None = None  # dataset class id -> model class id (set by the loader)
        self.ids = _first(list(range(len(dataset))), max_eval_samples)
        self.description = description or {"source": "datasets.Dataset"}

    def __getitem__(self, position: int) -> Sample:
        sample_id = self.ids[position]
        try:
            row = self.dataset[sample_id]
        except Exception as err:  # noqa: BLE001 - any decoding failure makes a bad sample, reported with its cause
            cause = re.sub(r" at 0x[0-9a-fA-F]+", "", str(err))  # the same reason in every run
            raise BadSample(f"row {sample_id} could not be read: {type(err).__name__}: {cause}") from None
        image = rgb(row[self.columns.image])
        annotation = self._annotation(row, (image.height, image.width))
        if self.task != "detection":
            return Sample(sample_id, image, annotation)
        return detection_sample(sample_id, image, annotation)

    def class_names(self) -> dict[int, str] | None:
        """The names of the classification label column's classes (a ``ClassLabel``), else ``None``."""
        feature = self.dataset.features.get(self.columns.label) if self.task == "classification" else None
        names = getattr(feature, "names", None)
        return dict(enumerate(names)) if names else None

    def _annotation(self, row: dict, size: tuple[int, int]) -> Any:
        c = self.columns
        if self.task == "segmentation":
            return label_map(row[c.label], size)
        if self.task == "classification":
            label = row[c.label]
            if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
                raise BadSample(f"the label must be a class id, got {label!r}")
            if label < 0:
                raise BadSample(f"label {label} (unlabelled)")
            return int(label) if self.label_map is None else self.label_map[int(label)]
        found = row[c.objects]
        if isinstance(found, list):  # a list of dicts instead of a dict of lists
            keys = (c.bbox, c.category, "area", "iscrowd")
            found = {key: [o[key] for o in found] for key in keys if all(key in o for o in found)}
        if not isinstance(found, dict) or c.bbox not in found or c.category not in found:
            raise BadSample(f"objects must hold {c.bbox!r} and {c.category!r}, got {found!r}")
        return objects(found[c.bbox], found[c.category], found.get("area"), found.get("iscrowd"), c.bbox_format)


class CocoDataset(EvalDataset):
    """COCO detection from an annotation json and an image directory (pycocotools); ids are the COCO image ids.

    Categories become the model's classes (``id2label``) as :func:`~.labels.class_mapping` says with ``mapping``
    (auto: the category ids themselves when they fit the model's names, as for Hugging Face's COCO detectors whose
    labels are COCO category ids; by name otherwise); ids that the model does not have are a :class:`DataError`.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        max_eval_samples: int | None = None,
        id2label: dict[int, str] | None = None,
        mapping: str = "auto",
    ) -> None:
        from pycocotools.coco import COCO

        annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        for path, what in ((annotation_file, "annotation file"), (self.image_dir, "image directory")):
            if not path.exists():
                raise DataError(f"COCO {what} {str(path)!r} does not exist")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(annotation_file))
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as err:
            raise DataError(f"could not read the COCO annotation file {str(annotation_file)!r}: {err}") from err
        self.labels = self._category_labels(id2label or {}, mapping)
        self.ids = _first(sorted(self.coco.getImgIds()), max_eval_samples)
        self.description = {
            "source": "coco",
            "annotation_file": str(annotation_file),
            "image_dir": str(self.image_dir),
            "category_mapping": "id" if all(c == m for c, m in self.labels.items()) else "name",
        }

    def _category_labels(self, id2label: dict[int, str], mapping: str) -> dict[int, int]:
        from .labels import class_mapping

        names = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}
        by_name = class_mapping(names, id2label, mapping, "COCO categories", "--category_mapping") if id2label \
            else None
        labels = by_name or {i: i for i in names}
        missing = sorted(i for i in labels.values() if id2label and i not in id2label)
        if missing:
            raise DataError(f"COCO category ids {missing} are not class ids of the model (0..{max(id2label)}); its "
                            f"labels are {sorted(id2label.values())}: pass --category_mapping name to match the "
                            "categories by name")
        return labels

    def __getitem__(self, position: int) -> Sample:
        image_id = self.ids[position]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as opened:
                opened.load()
                image = rgb(opened)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise BadSample(f"image {str(path)!r} could not be read: {type(err).__name__}: {err}") from None
        expected = (info.get("height"), info.get("width"))
        if None not in expected and expected != (image.height, image.width):
            raise BadSample(f"image {info['file_name']!r} is {image.height}x{image.width} but the annotation file "
                            f"says {expected[0]}x{expected[1]}")
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        unknown = sorted({a["category_id"] for a in anns} - set(self.labels))
        if unknown:
            raise BadSample(f"annotations use category ids {unknown} missing from the categories list")
        annotation = objects(
            [a["bbox"] for a in anns],
            [self.labels[a["category_id"]] for a in anns],
            [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns],
            [a.get("iscrowd", 0) for a in anns],
        )
        return detection_sample(image_id, image, annotation)


def load_hf(
    task: str,
    dataset_name: str,
    split: str = "validation",
    config_name: str | None = None,
    columns: Columns = Columns(),
    max_eval_samples: int | None = None,
    cache_dir: str | None = None,
) -> HFDataset:
    """A Hugging Face dataset by Hub name, ``save_to_disk`` directory or image folder (see the module docstring)."""
    import datasets

    path = Path(dataset_name).expanduser()
    description = {"source": dataset_name, "split": split, "config_name": config_name}
    try:
        if path.is_dir() and (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if split not in loaded:
                raise DataError(f"split {split!r} is not in {dataset_name!r}; its splits: {sorted(loaded)}")
            dataset = loaded[split]
        elif path.is_dir() and (path / "state.json").is_file():
            dataset = datasets.load_from_disk(str(path))
            description["split"] = None
        elif path.is_dir():
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache_dir)
            if split not in loaded and len(loaded) != 1:
                raise DataError(f"split {split!r} is not in the image folder {dataset_name!r}; its splits: "
                                f"{sorted(loaded)}")
            description["split"] = split if split in loaded else next(iter(loaded))  # a folder of one split: that
            dataset = loaded[description["split"]]
        elif path.exists() or dataset_name.startswith((".", "/", "~")):
            raise DataError(f"dataset path {dataset_name!r} is not a directory (resolved to {path.resolve()})")
        else:
            dataset = datasets.load_dataset(dataset_name, config_name, split=split, cache_dir=cache_dir)
    except ConnectionError as err:
        raise DataError(
            f"{dataset_name!r} is not a local directory and the Hugging Face Hub cannot be reached ({err}); pass a "
            "local copy (save_to_disk or an image folder) or check the network and HF_DATASETS_OFFLINE"
        ) from err
    except DataError:
        raise
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"could not load {dataset_name!r} (split {split!r}): {err}") from err
    except Exception as err:  # e.g. datasets' IndexError on an empty save_to_disk split
        raise DataError(f"could not load {dataset_name!r} (split {split!r}): {type(err).__name__}: {err} (is the "
                        "dataset empty or damaged?)") from err
    return HFDataset(dataset, task, columns, max_eval_samples, description)

